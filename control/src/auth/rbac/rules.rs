//! One RBAC rule against one request, and one set of rules against
//! another (escalation prevention), with Kubernetes' matching rules:
//! `*` matches everything, `*/<subresource>` a subresource of any resource,
//! `resourceNames` only requests that name an object, and a
//! `nonResourceURLs` entry ending in `*` a path prefix.

use k8s_openapi::api::rbac::v1::PolicyRule;

use crate::auth::attributes::{Attributes, ResourceAttributes};

const ALL: &str = "*";

fn has(values: &[String], value: &str) -> bool {
    values.iter().any(|v| v == value)
}

fn has_or_all(values: &[String], value: &str) -> bool {
    values.iter().any(|v| v == ALL || v == value)
}

fn list(values: &Option<Vec<String>>) -> &[String] {
    values.as_deref().unwrap_or_default()
}

/// Whether `rule` allows the request.
pub fn allows(rule: &PolicyRule, attributes: &Attributes) -> bool {
    match attributes {
        Attributes::Resource(resource) => allows_resource(rule, resource),
        Attributes::NonResource { verb, path } => {
            has_or_all(&rule.verbs, verb) && url_matches(list(&rule.non_resource_urls), path)
        }
    }
}

fn allows_resource(rule: &PolicyRule, request: &ResourceAttributes) -> bool {
    has_or_all(&rule.verbs, &request.verb)
        && has_or_all(list(&rule.api_groups), &request.group)
        && resource_matches(list(&rule.resources), request)
        && name_matches(list(&rule.resource_names), &request.name)
}

fn resource_matches(resources: &[String], request: &ResourceAttributes) -> bool {
    let combined;
    let wanted = if request.subresource.is_empty() {
        request.resource.as_str()
    } else {
        combined = format!("{}/{}", request.resource, request.subresource);
        combined.as_str()
    };
    resources.iter().any(|resource| {
        resource == ALL
            || resource == wanted
            || (!request.subresource.is_empty()
                && resource.strip_prefix("*/") == Some(request.subresource.as_str()))
    })
}

/// A rule with names applies only to requests that name one of them: a
/// list, a watch of everything or a create does not.
fn name_matches(names: &[String], name: &str) -> bool {
    names.is_empty() || (!name.is_empty() && has(names, name))
}

fn url_matches(urls: &[String], path: &str) -> bool {
    urls.iter().any(|url| url_covers(url, path))
}

fn url_covers(owner: &str, path: &str) -> bool {
    if owner == ALL || owner == path {
        return true;
    }
    owner
        .strip_suffix('*')
        .is_some_and(|prefix| path.starts_with(prefix))
}

/// The rules of `servant` that `owner` does not cover, broken down into
/// single-verb, single-resource pieces (Kubernetes' `Covers`): empty when
/// whoever holds `owner` may grant all of `servant`.
pub fn uncovered(owner: &[PolicyRule], servant: &[PolicyRule]) -> Vec<PolicyRule> {
    servant
        .iter()
        .flat_map(breakdown)
        .filter(|piece| !owner.iter().any(|rule| rule_covers(rule, piece)))
        .collect()
}

/// One rule as rules of one verb and one resource (or URL) each.
fn breakdown(rule: &PolicyRule) -> Vec<PolicyRule> {
    let mut pieces = Vec::new();
    for verb in &rule.verbs {
        for group in list(&rule.api_groups) {
            for resource in list(&rule.resources) {
                let names = list(&rule.resource_names);
                if names.is_empty() {
                    pieces.push(piece(verb, Some(group), Some(resource), None, None));
                }
                for name in names {
                    pieces.push(piece(verb, Some(group), Some(resource), Some(name), None));
                }
            }
        }
        for url in list(&rule.non_resource_urls) {
            pieces.push(piece(verb, None, None, None, Some(url)));
        }
    }
    pieces
}

fn piece(
    verb: &str,
    group: Option<&String>,
    resource: Option<&String>,
    name: Option<&String>,
    url: Option<&String>,
) -> PolicyRule {
    let one = |value: Option<&String>| value.map(|value| vec![value.clone()]);
    PolicyRule {
        verbs: vec![verb.to_string()],
        api_groups: one(group),
        resources: one(resource),
        resource_names: one(name),
        non_resource_urls: one(url),
    }
}

fn rule_covers(owner: &PolicyRule, piece: &PolicyRule) -> bool {
    let verbs = has(&owner.verbs, ALL) || all_in(&owner.verbs, &piece.verbs);
    let groups = has(list(&owner.api_groups), ALL)
        || all_in(list(&owner.api_groups), list(&piece.api_groups));
    let resources = resources_cover(list(&owner.resources), list(&piece.resources));
    let urls = list(&piece.non_resource_urls).iter().all(|path| {
        list(&owner.non_resource_urls)
            .iter()
            .any(|url| url_covers(url, path))
    });
    let owner_names = list(&owner.resource_names);
    let names = owner_names.is_empty()
        || all_in(owner_names, list(&piece.resource_names))
            && !list(&piece.resource_names).is_empty();
    verbs && groups && resources && urls && names
}

fn all_in(owner: &[String], wanted: &[String]) -> bool {
    wanted.iter().all(|value| has(owner, value))
}

fn resources_cover(owner: &[String], wanted: &[String]) -> bool {
    if has(owner, ALL) {
        return true;
    }
    wanted.iter().all(|resource| {
        has(owner, resource)
            || resource
                .split_once('/')
                .is_some_and(|(_, sub)| has(owner, &format!("*/{sub}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
        let strings = |values: &[&str]| values.iter().map(|v| v.to_string()).collect::<Vec<_>>();
        PolicyRule {
            api_groups: Some(strings(groups)),
            resources: Some(strings(resources)),
            verbs: strings(verbs),
            ..PolicyRule::default()
        }
    }

    fn named(mut rule: PolicyRule, names: &[&str]) -> PolicyRule {
        rule.resource_names = Some(names.iter().map(|n| n.to_string()).collect());
        rule
    }

    fn urls(urls: &[&str], verbs: &[&str]) -> PolicyRule {
        PolicyRule {
            non_resource_urls: Some(urls.iter().map(|u| u.to_string()).collect()),
            verbs: verbs.iter().map(|v| v.to_string()).collect(),
            ..PolicyRule::default()
        }
    }

    fn request(verb: &str, group: &str, resource: &str, sub: &str, name: &str) -> Attributes {
        Attributes::Resource(ResourceAttributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            name: name.into(),
            ..ResourceAttributes::default()
        })
    }

    #[test]
    fn rules_match_requests() {
        let cases = [
            (
                rule(&[""], &["pods"], &["get"]),
                request("get", "", "pods", "", "p"),
                true,
            ),
            (
                rule(&[""], &["pods"], &["get"]),
                request("list", "", "pods", "", ""),
                false,
            ),
            (
                rule(&[""], &["pods"], &["get"]),
                request("get", "apps", "pods", "", "p"),
                false,
            ),
            (
                rule(&[""], &["pods"], &["get"]),
                request("get", "", "pods", "log", "p"),
                false,
            ),
            (
                rule(&[""], &["pods/log"], &["get"]),
                request("get", "", "pods", "log", "p"),
                true,
            ),
            (
                rule(&[""], &["*/scale"], &["*"]),
                request("patch", "", "pods", "scale", "p"),
                true,
            ),
            (
                rule(&["*"], &["*"], &["*"]),
                request("escalate", "x", "y", "z", ""),
                true,
            ),
            (
                named(rule(&[""], &["secrets"], &["get"]), &["a"]),
                request("get", "", "secrets", "", "a"),
                true,
            ),
            (
                named(rule(&[""], &["secrets"], &["get"]), &["a"]),
                request("get", "", "secrets", "", "b"),
                false,
            ),
            (
                named(rule(&[""], &["secrets"], &["list"]), &["a"]),
                request("list", "", "secrets", "", ""),
                false,
            ),
        ];
        for (rule, request, expected) in cases {
            assert_eq!(allows(&rule, &request), expected, "{rule:?} {request:?}");
        }
    }

    #[test]
    fn non_resource_urls_match_exactly_or_by_prefix() {
        let rule = urls(&["/healthz", "/apis/*"], &["get"]);
        let get = |path: &str| Attributes::NonResource {
            verb: "get".into(),
            path: path.into(),
        };
        assert!(allows(&rule, &get("/healthz")));
        assert!(allows(&rule, &get("/apis/apps/v1")));
        assert!(!allows(&rule, &get("/healthz/x")));
        assert!(!allows(
            &rule,
            &Attributes::NonResource {
                verb: "put".into(),
                path: "/healthz".into()
            }
        ));
        // A resource rule never matches a path, and the reverse.
        assert!(!allows(&rule, &request("get", "", "pods", "", "")));
    }

    #[test]
    fn coverage_is_checked_piece_by_piece() {
        let owner = [
            rule(&[""], &["pods", "services"], &["get", "list"]),
            rule(&["apps"], &["*"], &["*"]),
            rule(&[""], &["*/status"], &["update"]),
            named(rule(&[""], &["secrets"], &["get"]), &["a"]),
            urls(&["/logs/*"], &["get"]),
        ];
        let covered = [
            rule(&[""], &["pods"], &["get"]),
            rule(&[""], &["pods", "services"], &["list"]),
            rule(&["apps"], &["deployments/scale"], &["patch"]),
            rule(&[""], &["pods/status"], &["update"]),
            named(rule(&[""], &["secrets"], &["get"]), &["a"]),
            urls(&["/logs/app"], &["get"]),
        ];
        assert!(uncovered(&owner, &covered).is_empty());
        let not_covered = [
            rule(&[""], &["pods"], &["delete"]),
            rule(&[""], &["secrets"], &["get"]),
            named(rule(&[""], &["secrets"], &["get"]), &["b"]),
            rule(&["batch"], &["jobs"], &["get"]),
            urls(&["/metrics"], &["get"]),
        ];
        for servant in not_covered {
            assert_eq!(
                uncovered(&owner, std::slice::from_ref(&servant)).len(),
                1,
                "{servant:?}"
            );
        }
    }
}
