//! `LabelSelector`s as the controllers use them: matching an object's
//! labels, and the query string that asks the API for the same set.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

/// Whether `labels` satisfy `selector`. An empty selector matches
/// everything, as Kubernetes' `LabelSelectorAsSelector` does.
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let equal = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    equal
        && selector
            .match_expressions
            .iter()
            .flatten()
            .all(|requirement| requirement_holds(requirement, labels))
}

fn requirement_holds(
    requirement: &LabelSelectorRequirement,
    labels: &BTreeMap<String, String>,
) -> bool {
    let values = requirement.values.as_deref().unwrap_or_default();
    // Validation refuses other operators; nothing matches one.
    set_operator_holds(&requirement.operator, &requirement.key, values, labels).unwrap_or(false)
}

/// The set-based operators label and node selectors share (`In`, `NotIn`,
/// `Exists`, `DoesNotExist`); `None` for any other operator.
pub fn set_operator_holds(
    operator: &str,
    key: &str,
    values: &[String],
    labels: &BTreeMap<String, String>,
) -> Option<bool> {
    let value = labels.get(key);
    Some(match operator {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => return None,
    })
}

/// The `labelSelector` query for `selector`: `app=web,tier in (a,b),!x`.
pub fn to_query(selector: &LabelSelector) -> String {
    let mut terms: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    for requirement in selector.match_expressions.iter().flatten() {
        let key = &requirement.key;
        let values = requirement.values.as_deref().unwrap_or_default().join(",");
        terms.push(match requirement.operator.as_str() {
            "In" => format!("{key} in ({values})"),
            "NotIn" => format!("{key} notin ({values})"),
            "DoesNotExist" => format!("!{key}"),
            _ => key.clone(),
        });
    }
    terms.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_operator_matches_as_kubernetes_does() {
        let selector: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "env", "operator": "NotIn", "values": ["prod"]},
                {"key": "team", "operator": "Exists"},
                {"key": "legacy", "operator": "DoesNotExist"},
            ],
        }))
        .unwrap();
        let good = labels(&[("app", "web"), ("tier", "a"), ("team", "x")]);
        assert!(matches(&selector, &good));
        for bad in [
            labels(&[("app", "db"), ("tier", "a"), ("team", "x")]),
            labels(&[("app", "web"), ("tier", "c"), ("team", "x")]),
            labels(&[
                ("app", "web"),
                ("tier", "a"),
                ("team", "x"),
                ("env", "prod"),
            ]),
            labels(&[("app", "web"), ("tier", "a")]),
            labels(&[
                ("app", "web"),
                ("tier", "a"),
                ("team", "x"),
                ("legacy", "1"),
            ]),
        ] {
            assert!(!matches(&selector, &bad), "{bad:?}");
        }
        assert_eq!(
            to_query(&selector),
            "app=web,tier in (a,b),env notin (prod),team,!legacy"
        );
        assert!(matches(&LabelSelector::default(), &good));
    }
}
