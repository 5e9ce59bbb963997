//! Kubernetes' `audit.k8s.io/v1` Policy: which requests are recorded and at
//! what level, read from a YAML or JSON file and checked once, at start.
//!
//! Rules are tried in order and the first that matches decides, as in
//! kube-apiserver; a request no rule matches is not recorded. A rule
//! matches on the requester (not whom it impersonates), the verb, and
//! either resources (by group, plural, subresource and name, and
//! namespace) or non-resource paths, never both.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::auth::{Attributes, UserInfo};

/// The largest policy file read. Real policies are a few KiB (GKE's
/// default is about 4); a larger file is a mistake, not a policy.
pub const POLICY_BYTES_MAX: u64 = 1024 * 1024;
/// The most rules a policy may hold: every request is matched against
/// them in turn, so their number is a cost on every request. Published
/// policies have tens.
pub const POLICY_RULES_MAX: usize = 1_000;

const API_VERSION: &str = "audit.k8s.io/v1";
const KIND: &str = "Policy";

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read the audit policy {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the audit policy {} is {size_bytes} bytes; at most {POLICY_BYTES_MAX} are read",
        path.display()
    )]
    TooLarge { path: PathBuf, size_bytes: u64 },
    #[error("the audit policy {} is invalid: {problem}", path.display())]
    Invalid { path: PathBuf, problem: Problem },
}

/// What is wrong with a policy document, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Problem {
    /// The field at fault, as Kubernetes names it: `rules[2].verbs`; the
    /// document itself when it does not parse.
    pub field: String,
    pub message: String,
}

impl Problem {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// How much of a request is recorded, from nothing to both bodies.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize,
)]
pub enum Level {
    /// Not recorded.
    #[default]
    None,
    /// Who, what, when, and the answer's code: no bodies.
    Metadata,
    /// Metadata and the request's object.
    Request,
    /// Metadata and both the request's and the response's objects.
    RequestResponse,
}

/// When during a request an event is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum Stage {
    /// As soon as the request is received, before it is served.
    RequestReceived,
    /// When a long-running request (a watch, logs) has sent its headers.
    ResponseStarted,
    /// When the answer is complete.
    ResponseComplete,
    /// When serving the request panicked; Flotilla's handlers do not.
    Panic,
}

impl Stage {
    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of stages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stages(u8);

impl Stages {
    pub fn contains(self, stage: Stage) -> bool {
        self.0 & stage.bit() != 0
    }

    fn union(self, other: Stages) -> Stages {
        Stages(self.0 | other.0)
    }
}

impl FromIterator<Stage> for Stages {
    fn from_iter<I: IntoIterator<Item = Stage>>(stages: I) -> Self {
        Stages(stages.into_iter().fold(0, |bits, stage| bits | stage.bit()))
    }
}

/// A checked policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    rules: Vec<Rule>,
    omit_stages: Stages,
    omit_managed_fields: bool,
}

/// What the policy decides for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub level: Level,
    /// The index of the rule that decided; none when no rule matched.
    pub rule: Option<usize>,
    /// The policy's and the rule's `omitStages` together.
    pub omit_stages: Stages,
    /// Whether `metadata.managedFields` is left out of recorded objects.
    pub omit_managed_fields: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    level: Level,
    users: Vec<String>,
    user_groups: Vec<String>,
    verbs: Vec<String>,
    resources: Vec<GroupResources>,
    namespaces: Vec<String>,
    non_resource_urls: Vec<String>,
    omit_stages: Stages,
    omit_managed_fields: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GroupResources {
    /// The API group; empty is the core group.
    #[serde(default)]
    group: String,
    /// `pods`, `pods/log`, `*`, `pods/*`, `*/scale`; none: all of the
    /// group's.
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
}

/// The document as written. Unknown fields are refused: a misspelt
/// `verb:` would otherwise widen a rule to every verb without a word.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Document {
    api_version: String,
    kind: String,
    #[serde(default)]
    #[allow(dead_code, reason = "accepted as Kubernetes accepts it, unused")]
    metadata: Option<serde_yaml::Value>,
    #[serde(default)]
    rules: Vec<RuleDocument>,
    #[serde(default)]
    omit_stages: Vec<Stage>,
    #[serde(default)]
    omit_managed_fields: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RuleDocument {
    level: Level,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    user_groups: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resources: Vec<GroupResources>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
    #[serde(default)]
    omit_stages: Vec<Stage>,
    #[serde(default)]
    omit_managed_fields: Option<bool>,
}

impl Policy {
    /// Reads and checks the policy in `path` (YAML, or JSON, which is
    /// YAML too).
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let read = |source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        };
        let size_bytes = std::fs::metadata(path).map_err(read)?.len();
        if size_bytes > POLICY_BYTES_MAX {
            return Err(PolicyError::TooLarge {
                path: path.to_path_buf(),
                size_bytes,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Policy::parse(&text).map_err(|problem| PolicyError::Invalid {
            path: path.to_path_buf(),
            problem,
        })
    }

    /// Parses and checks a policy document.
    pub fn parse(text: &str) -> Result<Policy, Problem> {
        let document: Document = serde_yaml::from_str(text).map_err(|error| {
            // serde_yaml puts the path first (`rules[0].level: unknown
            // variant …`) and the line and column last.
            let text = error.to_string();
            match text.split_once(": ") {
                Some((path, message)) if !path.contains(' ') => Problem::new(path, message),
                _ => Problem::new("the document", text),
            }
        })?;
        if document.api_version != API_VERSION {
            return Err(Problem::new(
                "apiVersion",
                format!("must be {API_VERSION}, not {:?}", document.api_version),
            ));
        }
        if document.kind != KIND {
            return Err(Problem::new(
                "kind",
                format!("must be {KIND}, not {:?}", document.kind),
            ));
        }
        if document.rules.is_empty() {
            return Err(Problem::new(
                "rules",
                "a policy needs at least one rule (without a policy nothing is recorded)",
            ));
        }
        if document.rules.len() > POLICY_RULES_MAX {
            return Err(Problem::new(
                "rules",
                format!(
                    "{} rules; at most {POLICY_RULES_MAX} are allowed",
                    document.rules.len()
                ),
            ));
        }
        let omit_stages: Stages = document.omit_stages.into_iter().collect();
        let rules = document
            .rules
            .into_iter()
            .enumerate()
            .map(|(index, rule)| Rule::checked(rule, &format!("rules[{index}]"), omit_stages))
            .collect::<Result<_, _>>()?;
        Ok(Policy {
            rules,
            omit_stages,
            omit_managed_fields: document.omit_managed_fields,
        })
    }

    /// The level and stages for a request by `requester` (none when its
    /// credential was refused) with `attributes`: the first matching
    /// rule's, else `None`.
    pub fn decide(&self, attributes: &Attributes, requester: Option<&UserInfo>) -> Decision {
        let rule = self
            .rules
            .iter()
            .enumerate()
            .find(|(_, rule)| rule.matches(attributes, requester));
        match rule {
            Some((index, rule)) => Decision {
                level: rule.level,
                rule: Some(index),
                omit_stages: rule.omit_stages,
                omit_managed_fields: rule.omit_managed_fields.unwrap_or(self.omit_managed_fields),
            },
            None => Decision {
                level: Level::None,
                rule: None,
                omit_stages: self.omit_stages,
                omit_managed_fields: self.omit_managed_fields,
            },
        }
    }
}

impl Rule {
    /// `rule` checked as Kubernetes' validation does; `at` names it in
    /// errors. Its stages include the policy's.
    fn checked(rule: RuleDocument, at: &str, policy_stages: Stages) -> Result<Rule, Problem> {
        let resource_rule = !rule.resources.is_empty() || !rule.namespaces.is_empty();
        if resource_rule && !rule.non_resource_urls.is_empty() {
            return Err(Problem::new(
                format!("{at}.nonResourceURLs"),
                "rules cannot apply to both regular resources and non-resource URLs",
            ));
        }
        for (index, url) in rule.non_resource_urls.iter().enumerate() {
            check_url(url).map_err(|message| {
                Problem::new(format!("{at}.nonResourceURLs[{index}]"), message)
            })?;
        }
        for (index, resources) in rule.resources.iter().enumerate() {
            check_group(resources).map_err(|(field, message)| {
                Problem::new(format!("{at}.resources[{index}].{field}"), message)
            })?;
        }
        Ok(Rule {
            level: rule.level,
            users: rule.users,
            user_groups: rule.user_groups,
            verbs: rule.verbs,
            resources: rule.resources,
            namespaces: rule.namespaces,
            non_resource_urls: rule.non_resource_urls,
            omit_stages: rule
                .omit_stages
                .into_iter()
                .collect::<Stages>()
                .union(policy_stages),
            omit_managed_fields: rule.omit_managed_fields,
        })
    }

    fn matches(&self, attributes: &Attributes, requester: Option<&UserInfo>) -> bool {
        if !self.users.is_empty() && !requester.is_some_and(|user| self.users.contains(&user.name))
        {
            return false;
        }
        if !self.user_groups.is_empty()
            && !requester
                .is_some_and(|user| user.groups.iter().any(|g| self.user_groups.contains(g)))
        {
            return false;
        }
        if !self.verbs.is_empty() && !self.verbs.iter().any(|verb| verb == attributes.verb()) {
            return false;
        }
        match attributes {
            // A rule naming paths is for non-resource requests only.
            Attributes::Resource(resource) => {
                self.non_resource_urls.is_empty() && self.matches_resource(resource)
            }
            Attributes::NonResource { path, .. } => {
                if self.is_resource_rule() {
                    return false;
                }
                self.non_resource_urls.is_empty()
                    || self
                        .non_resource_urls
                        .iter()
                        .any(|url| url_matches(url, path))
            }
        }
    }

    fn is_resource_rule(&self) -> bool {
        !self.resources.is_empty() || !self.namespaces.is_empty()
    }

    fn matches_resource(&self, request: &crate::auth::attributes::ResourceAttributes) -> bool {
        // A cluster-scoped resource's namespace is the empty string, which a
        // rule may list.
        if !self.namespaces.is_empty() && !self.namespaces.contains(&request.namespace) {
            return false;
        }
        self.resources.is_empty() || self.resources.iter().any(|group| group.matches(request))
    }
}

impl GroupResources {
    fn matches(&self, request: &crate::auth::attributes::ResourceAttributes) -> bool {
        if self.group != request.group {
            return false;
        }
        if self.resources.is_empty() {
            return true;
        }
        if !self.resource_names.is_empty() && !self.resource_names.contains(&request.name) {
            return false;
        }
        let (resource, subresource) = (&request.resource, &request.subresource);
        self.resources.iter().any(|pattern| {
            if pattern == "*" {
                return true;
            }
            // `pods/*` is pods and each of its subresources.
            if let Some(parent) = pattern.strip_suffix("/*") {
                return parent == resource;
            }
            if subresource.is_empty() {
                return pattern == resource;
            }
            // `*/scale` is every resource's scale subresource.
            if let Some(sub) = pattern.strip_prefix("*/") {
                return sub == subresource;
            }
            pattern
                .split_once('/')
                .is_some_and(|(parent, sub)| parent == resource && sub == subresource)
        })
    }
}

/// A non-resource URL pattern: `*`, a path, or a path ending in `*`.
fn check_url(url: &str) -> Result<(), String> {
    if url == "*" {
        return Ok(());
    }
    if !url.starts_with('/') {
        return Err(format!(
            "{url:?}: non-resource URL rules must begin with a '/' character"
        ));
    }
    if url[..url.len() - 1].contains('*') {
        return Err(format!(
            "{url:?}: non-resource URL wildcards '*' must be the final character of the rule"
        ));
    }
    Ok(())
}

fn url_matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => pattern == path,
    }
}

/// A group and its resources as Kubernetes' validation checks them; the
/// error names the field.
fn check_group(resources: &GroupResources) -> Result<(), (&'static str, String)> {
    let group = &resources.group;
    // "" is the core group.
    if !group.is_empty() {
        crate::api::validation::dns1123_subdomain(group)
            .map_err(|why| ("group", format!("{group:?}: {why}")))?;
    }
    if !resources.resource_names.is_empty() && resources.resources.is_empty() {
        return Err((
            "resourceNames",
            "using resourceNames requires at least one resource".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::attributes::ResourceAttributes;
    use axum::http::Method;

    const POLICY: &str = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    users: ["system:kube-proxy"]
  - level: None
    userGroups: ["system:nodes"]
    verbs: ["get"]
  - level: Metadata
    resources:
      - group: ""
        resources: ["secrets", "configmaps/status"]
  - level: RequestResponse
    resources:
      - group: ""
        resources: ["pods/log", "*/scale"]
  - level: Request
    resources:
      - group: ""
        resources: ["pods/*"]
  - level: Metadata
    resources:
      - group: apps
        resources: ["deployments"]
        resourceNames: ["web"]
  - level: Request
    namespaces: ["team-a"]
    verbs: ["create", "update", "patch"]
  - level: None
    nonResourceURLs: ["/healthz*", "/version"]
  - level: Metadata
    omitStages: [ResponseStarted]
"#;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo::authenticated(name, groups.iter().map(|g| g.to_string()).collect())
    }

    fn resource(verb: &str, group: &str, plural: &str, namespace: &str) -> Attributes {
        Attributes::Resource(ResourceAttributes {
            verb: verb.into(),
            group: group.into(),
            version: "v1".into(),
            resource: plural.into(),
            namespace: namespace.into(),
            ..ResourceAttributes::default()
        })
    }

    fn with(attributes: Attributes, edit: impl FnOnce(&mut ResourceAttributes)) -> Attributes {
        let Attributes::Resource(mut resource) = attributes else {
            panic!("not a resource");
        };
        edit(&mut resource);
        Attributes::Resource(resource)
    }

    /// One check: which rule of `POLICY` decides the request (its index;
    /// none: no rule matched).
    fn check(attributes: Attributes, requester: Option<&UserInfo>, expected: Option<usize>) {
        let policy = Policy::parse(POLICY).unwrap();
        let decision = policy.decide(&attributes, requester);
        assert_eq!(decision.rule, expected, "{attributes:?} as {requester:?}");
    }

    /// The index of `POLICY`'s last rule, which matches everything.
    const CATCH_ALL: Option<usize> = Some(8);

    #[test]
    fn users_and_groups_match_the_requester() {
        let alice = user("alice", &[]);
        let proxy = user("system:kube-proxy", &[]);
        let node = user("system:node:n1", &["system:nodes"]);
        let services = resource("get", "", "services", "default");
        check(services.clone(), Some(&proxy), Some(0));
        check(services.clone(), Some(&node), Some(1));
        check(services.clone(), Some(&alice), CATCH_ALL);
        // The nodes' rule names `get` only.
        check(
            resource("list", "", "services", "default"),
            Some(&node),
            CATCH_ALL,
        );
        // A refused credential has no user: user rules pass it by.
        check(services, None, CATCH_ALL);
    }

    #[test]
    fn resources_subresources_and_names() {
        let alice = user("alice", &[]);
        let secrets = resource("get", "", "secrets", "default");
        check(secrets.clone(), Some(&alice), Some(2));
        // `secrets` is not its subresources.
        let sub = with(secrets, |r| r.subresource = "status".into());
        check(sub, Some(&alice), CATCH_ALL);
        // `configmaps/status` is not configmaps.
        let configmaps = resource("update", "", "configmaps", "default");
        check(configmaps.clone(), Some(&alice), CATCH_ALL);
        let status = with(configmaps, |r| r.subresource = "status".into());
        check(status, Some(&alice), Some(2));
        let logs = with(resource("get", "", "pods", "default"), |r| {
            r.subresource = "log".into()
        });
        check(logs, Some(&alice), Some(3));
        // `*/scale` is in the core group's entry: apps' scale is not.
        let scale = with(resource("update", "apps", "deployments", "x"), |r| {
            r.subresource = "scale".into()
        });
        check(scale, Some(&alice), CATCH_ALL);
        let core_scale = with(resource("get", "", "replicationcontrollers", "x"), |r| {
            r.subresource = "scale".into()
        });
        check(core_scale, Some(&alice), Some(3));
        // `pods/*`: the pods and all their subresources.
        let exec = with(resource("create", "", "pods", "x"), |r| {
            r.subresource = "exec".into()
        });
        check(exec, Some(&alice), Some(4));
        check(resource("delete", "", "pods", "x"), Some(&alice), Some(4));
        // resourceNames narrow the entry to those names.
        let deployment = resource("get", "apps", "deployments", "x");
        let web = with(deployment.clone(), |r| r.name = "web".into());
        check(web, Some(&alice), Some(5));
        let api = with(deployment, |r| r.name = "api".into());
        check(api, Some(&alice), CATCH_ALL);
    }

    #[test]
    fn namespaces_and_verbs() {
        let alice = user("alice", &[]);
        let in_team = |verb: &str| resource(verb, "", "configmaps", "team-a");
        check(in_team("create"), Some(&alice), Some(6));
        check(in_team("patch"), Some(&alice), Some(6));
        check(in_team("delete"), Some(&alice), CATCH_ALL);
        check(
            resource("create", "", "configmaps", "team-b"),
            Some(&alice),
            CATCH_ALL,
        );
        // Cluster-scoped objects are in the namespace "".
        let nodes = resource("create", "", "nodes", "");
        let policy = "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Request\n  namespaces: [\"\"]\n";
        let policy = Policy::parse(policy).unwrap();
        assert_eq!(policy.decide(&nodes, None).level, Level::Request);
        let pods = resource("create", "", "pods", "default");
        assert_eq!(policy.decide(&pods, None).level, Level::None);
        // A namespace rule is a resource rule: a path never matches it.
        let path = Attributes::non_resource(&Method::POST, "/flotilla/registry/v1/tags");
        assert_eq!(policy.decide(&path, None).level, Level::None);
    }

    #[test]
    fn non_resource_urls_with_a_trailing_star() {
        let alice = user("alice", &[]);
        let get = |path: &str| Attributes::non_resource(&Method::GET, path);
        check(get("/healthz"), Some(&alice), Some(7));
        check(get("/healthz/etcd"), Some(&alice), Some(7));
        check(get("/version"), Some(&alice), Some(7));
        check(get("/version/x"), Some(&alice), CATCH_ALL);
        check(get("/metrics"), Some(&alice), CATCH_ALL);
        // A path rule is for paths only.
        let text = "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Request\n  nonResourceURLs: [\"*\"]\n";
        let policy = Policy::parse(text).unwrap();
        assert_eq!(policy.decide(&get("/anything"), None).level, Level::Request);
        let pods = resource("get", "", "pods", "default");
        assert_eq!(policy.decide(&pods, None).level, Level::None);
    }

    #[test]
    fn the_first_matching_rule_decides_and_stages_add_up() {
        let policy = Policy::parse(POLICY).unwrap();
        let alice = user("alice", &[]);
        let decision = policy.decide(&resource("get", "", "nodes", ""), Some(&alice));
        assert_eq!(decision.level, Level::Metadata);
        assert!(decision.omit_stages.contains(Stage::RequestReceived));
        assert!(decision.omit_stages.contains(Stage::ResponseStarted));
        assert!(!decision.omit_stages.contains(Stage::ResponseComplete));
        let first = r#"{"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "rules": [
            {"level": "RequestResponse", "verbs": ["create"]},
            {"level": "None"}]}"#;
        let policy = Policy::parse(first).unwrap();
        let create = resource("create", "", "pods", "default");
        assert_eq!(policy.decide(&create, None).level, Level::RequestResponse);
        let get = resource("get", "", "pods", "default");
        assert_eq!(policy.decide(&get, None).level, Level::None);
    }

    #[test]
    fn managed_fields_follow_the_rule_then_the_policy() {
        let text = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitManagedFields: true
rules:
  - level: Request
    verbs: ["create"]
    omitManagedFields: false
  - level: Request
"#;
        let policy = Policy::parse(text).unwrap();
        let create = resource("create", "", "pods", "default");
        assert!(!policy.decide(&create, None).omit_managed_fields);
        let update = resource("update", "", "pods", "default");
        assert!(policy.decide(&update, None).omit_managed_fields);
    }

    #[test]
    fn bad_policies_name_the_field_at_fault() {
        let problem = |text: &str| Policy::parse(text).unwrap_err();
        let head = "apiVersion: audit.k8s.io/v1\nkind: Policy\n";
        let both = format!(
            "{head}rules:\n- level: None\n- level: Metadata\n  namespaces: [a]\n  nonResourceURLs: [/x]\n"
        );
        assert_eq!(problem(&both).field, "rules[1].nonResourceURLs");
        let star = format!("{head}rules:\n- level: None\n  nonResourceURLs: [/a, /b*/c]\n");
        assert_eq!(problem(&star).field, "rules[0].nonResourceURLs[1]");
        let relative = format!("{head}rules:\n- level: None\n  nonResourceURLs: [healthz]\n");
        assert_eq!(problem(&relative).field, "rules[0].nonResourceURLs[0]");
        let names = format!(
            "{head}rules:\n- level: None\n  resources:\n  - group: apps\n  - resourceNames: [x]\n"
        );
        assert_eq!(problem(&names).field, "rules[0].resources[1].resourceNames");
        let group = format!("{head}rules:\n- level: None\n  resources:\n  - group: Apps/v1\n");
        assert_eq!(problem(&group).field, "rules[0].resources[0].group");
        assert_eq!(problem(&format!("{head}rules: []\n")).field, "rules");
        let version = "apiVersion: audit.k8s.io/v1beta1\nkind: Policy\nrules: [{level: None}]\n";
        assert_eq!(problem(version).field, "apiVersion");

        // What serde refuses names the field and its line.
        let level = format!("{head}rules:\n- level: Everything\n");
        let refused = problem(&level);
        assert_eq!(refused.field, "rules[0].level", "{refused}");
        assert!(refused.message.contains("at line 4 column 10"), "{refused}");
        let typo = format!("{head}rules:\n- level: None\n  verb: [get]\n");
        let refused = problem(&typo);
        assert_eq!(refused.field, "rules[0]", "{refused}");
        assert!(
            refused.message.contains("unknown field `verb`"),
            "{refused}"
        );
        let refused = problem("kind: Policy\n");
        assert_eq!(refused.field, "the document", "{refused}");
        assert!(refused.message.contains("apiVersion"), "{refused}");
    }

    #[test]
    fn files_are_bounded_and_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, "kind: Policy\n").unwrap();
        let error = Policy::load(&path).unwrap_err().to_string();
        assert!(error.contains("policy.yaml"), "{error}");
        let large = " ".repeat(POLICY_BYTES_MAX as usize + 1);
        std::fs::write(&path, large).unwrap();
        assert!(matches!(
            Policy::load(&path),
            Err(PolicyError::TooLarge { .. })
        ));
        let missing = Policy::load(&dir.path().join("none")).unwrap_err();
        assert!(matches!(missing, PolicyError::Read { .. }));
    }
}
