//! Label and field selectors, as `?labelSelector=` and `?fieldSelector=`
//! spell them: `app=web,tier!=db,env in (prod,staging),!canary,release`.

use std::collections::BTreeMap;

use serde_json::Value;

/// One requirement on a label.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Equals(key, value) => labels.get(key) == Some(value),
            // Kubernetes: `a!=b` also matches objects without `a`.
            Requirement::NotEquals(key, value) => labels.get(key) != Some(value),
            Requirement::In(key, values) => labels.get(key).is_some_and(|v| values.contains(v)),
            Requirement::NotIn(key, values) => labels.get(key).is_none_or(|v| !values.contains(v)),
            Requirement::Exists(key) => labels.contains_key(key),
            Requirement::DoesNotExist(key) => !labels.contains_key(key),
        }
    }
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for term in split_terms(text)? {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            requirements.push(parse_term(term)?);
        }
        Ok(LabelSelector { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, object: &Value) -> bool {
        if self.requirements.is_empty() {
            return true;
        }
        let labels = labels_of(object);
        self.requirements.iter().all(|req| req.matches(&labels))
    }
}

fn labels_of(object: &Value) -> BTreeMap<String, String> {
    object["metadata"]["labels"]
        .as_object()
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Splits on commas outside parentheses.
fn split_terms(text: &str) -> Result<Vec<&str>, String> {
    let mut terms = Vec::new();
    let mut depth = 0_i32;
    let mut start = 0;
    for (index, character) in text.char_indices() {
        match character {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&text[start..index]);
                start = index + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return Err(format!("unbalanced ')' in selector `{text}`"));
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced '(' in selector `{text}`"));
    }
    terms.push(&text[start..]);
    Ok(terms)
}

fn parse_term(term: &str) -> Result<Requirement, String> {
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(label_key(key.trim(), term)?));
    }
    if let Some((key, value)) = term.split_once("!=") {
        return Ok(Requirement::NotEquals(
            label_key(key.trim(), term)?,
            label_value(value.trim(), term)?,
        ));
    }
    if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(Requirement::Equals(
            label_key(key.trim(), term)?,
            label_value(value.trim(), term)?,
        ));
    }
    for (operator, notin) in [(" notin ", true), (" in ", false)] {
        if let Some((key, values)) = term.split_once(operator) {
            let values = values
                .trim()
                .strip_prefix('(')
                .and_then(|rest| rest.strip_suffix(')'))
                .ok_or_else(|| format!("`{term}`: the values of `in`/`notin` go in parentheses"))?;
            let values = values
                .split(',')
                .map(|value| label_value(value.trim(), term))
                .collect::<Result<Vec<_>, _>>()?;
            let key = label_key(key.trim(), term)?;
            return Ok(if notin {
                Requirement::NotIn(key, values)
            } else {
                Requirement::In(key, values)
            });
        }
    }
    Ok(Requirement::Exists(label_key(term, term)?))
}

fn label_key(key: &str, term: &str) -> Result<String, String> {
    crate::api::validation::label_key(key)
        .map(|()| key.to_string())
        .map_err(|why| format!("invalid label key in `{term}`: {why}"))
}

fn label_value(value: &str, term: &str) -> Result<String, String> {
    crate::api::validation::label_value(value)
        .map(|()| value.to_string())
        .map_err(|why| format!("invalid label value in `{term}`: {why}"))
}

/// A field selector over the fields Kubernetes supports for every resource
/// (`metadata.name`, `metadata.namespace`) and the ones it adds for pods
/// (`spec.nodeName`, `status.phase`) and a few others.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    /// (path, value, equal?)
    terms: Vec<(String, String, bool)>,
}

/// Fields a selector may name, as JSON paths into the object.
const SELECTABLE_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "status.phase",
    "status.podIP",
    "spec.unschedulable",
    "type",
    "involvedObject.name",
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.uid",
    "reason",
];

impl FieldSelector {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (path, value, equal) = if let Some((path, value)) = term.split_once("!=") {
                (path, value, false)
            } else if let Some((path, value)) =
                term.split_once("==").or_else(|| term.split_once('='))
            {
                (path, value, true)
            } else {
                return Err(format!(
                    "invalid field selector `{term}`: expected FIELD=VALUE"
                ));
            };
            let path = path.trim();
            if !SELECTABLE_FIELDS.contains(&path) {
                return Err(format!(
                    "field label not supported: {path} (supported: {})",
                    SELECTABLE_FIELDS.join(", ")
                ));
            }
            terms.push((path.to_string(), value.trim().to_string(), equal));
        }
        Ok(FieldSelector { terms })
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.terms.iter().all(|(path, value, equal)| {
            let mut current = object;
            for part in path.split('.') {
                current = &current[part];
            }
            let actual = match current {
                Value::String(text) => text.clone(),
                Value::Bool(flag) => flag.to_string(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (actual == *value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labelled(labels: Value) -> Value {
        json!({"metadata": {"name": "x", "labels": labels}})
    }

    #[test]
    fn every_operator() {
        let web = labelled(json!({"app": "web", "env": "prod"}));
        let db = labelled(json!({"app": "db", "canary": "true"}));
        let cases = [
            ("app=web", true, false),
            ("app==web", true, false),
            ("app!=web", false, true),
            ("env!=prod", false, true),
            ("env in (prod, staging)", true, false),
            ("env notin (prod)", false, true),
            ("canary", false, true),
            ("!canary", true, false),
            ("app in (web,db),!canary", true, false),
            ("", true, true),
        ];
        for (text, on_web, on_db) in cases {
            let selector = LabelSelector::parse(text).unwrap();
            assert_eq!(selector.matches(&web), on_web, "{text} on web");
            assert_eq!(selector.matches(&db), on_db, "{text} on db");
        }
    }

    #[test]
    fn malformed_selectors_say_what_is_wrong() {
        for text in ["env in prod", "app=(", "a b=c", "env in (prod"] {
            assert!(LabelSelector::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn field_selectors_on_names_nodes_and_phases() {
        let pod = json!({"metadata": {"name": "p", "namespace": "default"},
                         "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        for (text, expected) in [
            ("metadata.name=p", true),
            ("metadata.name!=p", false),
            ("spec.nodeName=n1,status.phase=Running", true),
            ("spec.nodeName=", false),
            ("status.phase!=Pending", true),
        ] {
            assert_eq!(
                FieldSelector::parse(text).unwrap().matches(&pod),
                expected,
                "{text}"
            );
        }
        let error = FieldSelector::parse("spec.replicas=1").unwrap_err();
        assert!(error.contains("not supported"), "{error}");
    }
}
