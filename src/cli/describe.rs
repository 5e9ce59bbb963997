//! `flotilla describe`: one object for a person to read: who it is (name,
//! namespace, labels, owner, age), every field of its spec and status as
//! indented `Field Name: value` lines, and the Events about it (found by
//! `involvedObject.uid`). It is generic over kinds, as kubectl's describer
//! for custom resources is: it knows the shape of Kubernetes objects, not
//! the meaning of any kind's fields.

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::Value;

use super::catalog;
use super::merge::LAST_APPLIED;
use super::output::{self, print};
use super::session::{ClientArgs, Session};

/// Events shown per object: the newest, as a screen holds them.
pub const EVENTS_SHOWN_MAX: usize = 50;

/// Maps whose keys are the user's (label keys, resource names), printed as
/// `key=value` rather than turned into field names.
const KEYED_BY_USER: &[&str] = &[
    "labels",
    "annotations",
    "matchLabels",
    "selector",
    "nodeSelector",
    "data",
    "stringData",
    "binaryData",
    "capacity",
    "allocatable",
    "limits",
    "requests",
    "hard",
    "used",
];

/// Show an object's fields and the Events about it.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  flotilla describe deployment web
  flotilla describe po web-7d4b9c-x2x8q
  flotilla describe node/node-1")]
pub struct Args {
    /// KIND NAME…, or KIND/NAME…
    #[arg(required = true, num_args = 1.., value_name = "KIND NAME")]
    pub targets: Vec<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: Args) -> Result<()> {
    let targets = catalog::targets(&args.targets)?;
    let (session, catalog) = Session::with_catalog(&args.client).await?;
    let mut first = true;
    for (kind, names) in &targets {
        let resource = catalog.resolve(kind)?;
        if names.is_empty() {
            bail!("name the {} to describe: KIND NAME", resource.api.plural);
        }
        let api = resource.api(&session.client, Some(&session.namespace));
        for name in names {
            let object = api
                .get(name)
                .await
                .with_context(|| format!("getting {}", resource.object_name(name)))?;
            let mut object = serde_json::to_value(object).context("encoding the object")?;
            object["apiVersion"] = Value::String(resource.api.api_version.clone());
            object["kind"] = Value::String(resource.api.kind.clone());
            let events = events_of(&session, &object).await?;
            if !first {
                print("\n\n")?;
            }
            first = false;
            print(describe(&object, &events))?;
        }
    }
    Ok(())
}

/// The Events whose `involvedObject` is `object`, oldest first.
async fn events_of(session: &Session, object: &Value) -> Result<Vec<Event>> {
    let uid = object["metadata"]["uid"].as_str().unwrap_or_default();
    let api: Api<Event> = match object["metadata"]["namespace"].as_str() {
        Some(namespace) => Api::namespaced(session.client.clone(), namespace),
        None => Api::all(session.client.clone()),
    };
    let params = ListParams::default().fields(&format!("involvedObject.uid={uid}"));
    let mut events = api
        .list(&params)
        .await
        .context("listing the object's events")?
        .items;
    events.sort_by_key(last_seen);
    let skip = events.len().saturating_sub(EVENTS_SHOWN_MAX);
    Ok(events.split_off(skip))
}

fn last_seen(event: &Event) -> String {
    event
        .last_timestamp
        .as_ref()
        .map(|time| time.0.to_string())
        .or_else(|| event.event_time.as_ref().map(|time| time.0.to_string()))
        .or_else(|| {
            event
                .first_timestamp
                .as_ref()
                .map(|time| time.0.to_string())
        })
        .unwrap_or_default()
}

/// The whole description of one object.
pub fn describe(object: &Value, events: &[Event]) -> String {
    let metadata = &object["metadata"];
    let mut head: Vec<(String, String)> = vec![("Name".into(), text(&metadata["name"]))];
    if let Some(namespace) = metadata["namespace"].as_str() {
        head.push(("Namespace".into(), namespace.into()));
    }
    let kind = format!(
        "{} ({})",
        text(&object["kind"]),
        text(&object["apiVersion"])
    );
    head.push(("Kind".into(), kind));
    head.push(("Labels".into(), pairs(&metadata["labels"], "=")));
    head.push((
        "Annotations".into(),
        pairs(&without_last_applied(&metadata["annotations"]), ": "),
    ));
    let created = metadata["creationTimestamp"].as_str();
    let age = output::age(created);
    head.push((
        "Created".into(),
        format!("{} ({age} ago)", created.unwrap_or("<unknown>")),
    ));
    if let Some(owner) = controller(metadata) {
        head.push(("Controlled By".into(), owner));
    }
    if let Some(deleting) = metadata["deletionTimestamp"].as_str() {
        head.push(("Deleting Since".into(), deleting.into()));
    }
    let mut text = aligned(&head, 0);
    // Everything else: spec, status, and other top-level fields (ConfigMap
    // data, …), in key order (serde_json's maps are sorted).
    let rest: serde_json::Map<String, Value> = object
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(key, _)| !matches!(key.as_str(), "apiVersion" | "kind" | "metadata"))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    text.push_str(&fields(&rest, 0));
    text.push_str(&events_text(events));
    text
}

/// `Label: value` lines, values aligned two spaces past the longest label.
fn aligned(lines: &[(String, String)], indent: usize) -> String {
    let width = lines
        .iter()
        .map(|(label, _)| label.len())
        .max()
        .unwrap_or(0);
    lines
        .iter()
        .map(|(label, value)| line(label, value, width, indent))
        .collect()
}

fn line(label: &str, value: &str, width: usize, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let gap = " ".repeat(width.saturating_sub(label.len()) + 2);
    // Multi-line values (labels) continue under the first one.
    let continued = format!("\n{pad}{}", " ".repeat(width + 3));
    format!("{pad}{label}:{gap}{}\n", value.replace('\n', &continued))
}

/// A map's fields at `indent` spaces: the one-line ones aligned together,
/// the others as nested blocks; `name` first (it says which element of a
/// list this is), the rest in key order.
fn fields(map: &serde_json::Map<String, Value>, indent: usize) -> String {
    let width = map
        .iter()
        .filter(|(key, value)| inline(key, value).is_some())
        .map(|(key, _)| title(key).len())
        .max()
        .unwrap_or(0);
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_by_key(|(key, _)| key.as_str() != "name");
    entries
        .into_iter()
        .map(|(key, value)| match inline(key, value) {
            Some(text) => line(&title(key), &text, width, indent),
            None => nested(key, value, indent),
        })
        .collect()
}

/// The text of a field printed on its label's line, or `None` for one
/// printed as a block below it.
fn inline(key: &str, value: &Value) -> Option<String> {
    match value {
        Value::Object(map) if KEYED_BY_USER.contains(&key) && map.values().all(is_scalar) => {
            Some(pairs(value, "="))
        }
        Value::Object(map) if !map.is_empty() => None,
        Value::Array(items) if items.iter().any(|item| !is_scalar(item)) => None,
        Value::Array(items) if !items.is_empty() => {
            let joined: Vec<String> = items.iter().map(text).collect();
            Some(joined.join(", "))
        }
        scalar => Some(text(scalar)),
    }
}

/// A field with a block below its label: a map's fields, or a list's
/// elements marked `- `.
fn nested(key: &str, value: &Value, indent: usize) -> String {
    let mut block = format!("{}{}:\n", " ".repeat(indent), title(key));
    match value {
        Value::Object(map) => block.push_str(&fields(map, indent + 2)),
        Value::Array(items) => {
            for item in items {
                block.push_str(&list_item(item, indent + 2));
            }
        }
        _ => {}
    }
    block
}

/// One element of a list of objects: its fields, the first marked `- `.
fn list_item(item: &Value, indent: usize) -> String {
    let body = match item.as_object() {
        Some(map) => fields(map, indent + 2),
        None => format!("{}{}\n", " ".repeat(indent + 2), text(item)),
    };
    let pad = " ".repeat(indent);
    match body.strip_prefix(&format!("{pad}  ")) {
        Some(rest) => format!("{pad}- {rest}"),
        None => body,
    }
}

fn events_text(events: &[Event]) -> String {
    if events.is_empty() {
        return "Events:  <none>\n".into();
    }
    let header = ["Type", "Reason", "Age", "From", "Message"];
    let rule: Vec<String> = header.iter().map(|h| "-".repeat(h.len())).collect();
    let mut rows = vec![rule];
    for event in events {
        let seen = last_seen(event);
        let mut age = output::age(Some(&seen));
        let count = event.count.unwrap_or(1);
        if count > 1 {
            let first = event
                .first_timestamp
                .as_ref()
                .map(|time| time.0.to_string());
            age = format!("{age} (x{count} over {})", output::age(first.as_deref()));
        }
        let from = event
            .source
            .as_ref()
            .and_then(|source| source.component.clone())
            .or_else(|| event.reporting_component.clone())
            .unwrap_or_default();
        rows.push(vec![
            event.type_.clone().unwrap_or_default(),
            event.reason.clone().unwrap_or_default(),
            age,
            from,
            event.message.clone().unwrap_or_default().trim().to_owned(),
        ]);
    }
    let table = output::table(&header, &rows);
    let indented: String = table.lines().map(|line| format!("  {line}\n")).collect();
    format!("Events:\n{indented}")
}

/// `Kind/name` of the owner marked as controller.
fn controller(metadata: &Value) -> Option<String> {
    let owners = metadata["ownerReferences"].as_array()?;
    let owner = owners
        .iter()
        .find(|owner| owner["controller"] == Value::Bool(true))?;
    Some(format!("{}/{}", text(&owner["kind"]), text(&owner["name"])))
}

fn without_last_applied(annotations: &Value) -> Value {
    let mut annotations = annotations.clone();
    if let Some(map) = annotations.as_object_mut() {
        map.remove(LAST_APPLIED);
    }
    annotations
}

/// A map of scalars as `key=value` lines (sorted by key), or `<none>`.
fn pairs(map: &Value, separator: &str) -> String {
    let mut lines: Vec<String> = map
        .as_object()
        .into_iter()
        .flatten()
        .map(|(key, value)| format!("{key}{separator}{}", text(value)))
        .collect();
    lines.sort();
    if lines.is_empty() {
        return "<none>".into();
    }
    lines.join("\n")
}

fn is_scalar(value: &Value) -> bool {
    !matches!(value, Value::Object(_) | Value::Array(_))
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) if text.is_empty() => "\"\"".into(),
        Value::String(text) => text.clone(),
        Value::Null => "<none>".into(),
        Value::Object(map) if map.is_empty() => "<none>".into(),
        Value::Array(items) if items.is_empty() => "<none>".into(),
        other => other.to_string(),
    }
}

/// A field name for people: `matchLabels` is `Match Labels`, `podIP` is
/// `Pod IP`.
fn title(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    let mut words = String::new();
    for (index, &c) in chars.iter().enumerate() {
        let previous = index.checked_sub(1).map(|i| chars[i]);
        let next = chars.get(index + 1);
        // `IPs`: a lowercase `s` ending an acronym makes it plural; it
        // does not start a word.
        let plural = next == Some(&'s')
            && chars
                .get(index + 2)
                .is_none_or(|after| after.is_uppercase());
        let starts_word = c.is_uppercase()
            && previous.is_some_and(|p| {
                p.is_lowercase()
                    || (p.is_uppercase() && next.is_some_and(|n| n.is_lowercase()) && !plural)
            });
        if starts_word {
            words.push(' ');
        }
        if index == 0 {
            words.extend(c.to_uppercase());
        } else {
            words.push(c);
        }
    }
    words
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn field_names_read_as_words() {
        assert_eq!(title("matchLabels"), "Match Labels");
        assert_eq!(title("podIP"), "Pod IP");
        assert_eq!(title("hostIPs"), "Host IPs");
        assert_eq!(title("replicas"), "Replicas");
    }

    #[test]
    fn an_object_reads_as_fields_and_events() {
        let object = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {
                "name": "web", "namespace": "default", "labels": {"app": "web", "tier": "a"},
                "annotations": {LAST_APPLIED: "{}", "note": "x"},
                "creationTimestamp": "2020-01-01T00:00:00Z",
            },
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"spec": {"containers": [{"name": "web", "image": "a:1"}]}},
            },
        });
        let event = Event {
            type_: Some("Normal".into()),
            reason: Some("ScalingReplicaSet".into()),
            message: Some("Scaled up".into()),
            ..Event::default()
        };
        let text = describe(&object, &[event]);
        for expected in [
            "Name:         web\n",
            "Labels:       app=web\n              tier=a\n",
            "Annotations:  note: x\n",
            "Kind:         Deployment (apps/v1)\n",
            "Spec:\n  Replicas:  2\n",
            "    Match Labels:  app=web\n",
            "      Containers:\n        - Name:   web\n          Image:  a:1\n",
            "Events:\n  Type     Reason",
            "Normal   ScalingReplicaSet",
        ] {
            assert!(text.contains(expected), "{expected:?} missing from\n{text}");
        }
        assert!(!text.contains(LAST_APPLIED), "{text}");
    }
}
