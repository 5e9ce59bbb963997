//! What the verbs print: aligned tables (kubectl's tabwriter look: columns
//! padded to the widest cell, three spaces apart), objects as YAML or JSON,
//! ages as Kubernetes prints them. Everything goes to stdout through
//! [`print`], which returns write errors (a closed pipe) instead of
//! panicking as `println!` does. It knows text, not the API.

use std::io::Write;

use anyhow::{Context, Result};
use serde_json::Value;

/// `-o`: how `get` (and friends) print objects.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The server's columns, plus the ones it marks as wide.
    Wide,
    /// The objects as YAML (several as a `List`).
    Yaml,
    /// The objects as JSON (several as a `List`).
    Json,
    /// `kind.group/name`, one a line.
    Name,
}

/// Writes `text` to stdout and flushes it, so progress interleaves with
/// stderr in order.
pub fn print(text: impl AsRef<[u8]>) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_ref())
        .and_then(|()| stdout.flush())
        .context("writing to stdout")
}

/// Rows under a header, each column as wide as its widest cell; the last
/// column is not padded.
pub fn table(header: &[impl AsRef<str>], rows: &[Vec<String>]) -> String {
    let header: Vec<String> = header.iter().map(|h| h.as_ref().to_owned()).collect();
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in std::iter::once(header.as_slice()).chain(rows.iter().map(Vec::as_slice)) {
        let mut line = String::new();
        for (index, cell) in row.iter().enumerate().take(columns) {
            line.push_str(cell);
            if index + 1 < columns {
                let pad = widths[index] - cell.chars().count() + 3;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// One object, or several as a `v1` `List` (as kubectl prints them), in
/// YAML or JSON.
pub fn objects(objects: Vec<Value>, format: Format, single: bool) -> Result<String> {
    let value = match (single, objects.len()) {
        (true, 1) => objects.into_iter().next().unwrap_or_default(),
        _ => serde_json::json!({
            "apiVersion": "v1",
            "kind": "List",
            "items": objects,
            "metadata": {"resourceVersion": ""},
        }),
    };
    match format {
        Format::Json => {
            let mut text =
                serde_json::to_string_pretty(&value).context("encoding the objects as JSON")?;
            text.push('\n');
            Ok(text)
        }
        _ => serde_yaml::to_string(&value).context("encoding the objects as YAML"),
    }
}

/// How long ago a Kubernetes timestamp was, as kubectl prints ages
/// (`5m10s`, `3d`); `<unknown>` for a missing or malformed time.
pub fn age(timestamp: Option<&str>) -> String {
    use flotilla_control::api::{clock, table};
    match timestamp.and_then(clock::seconds_since) {
        Some(seconds) => table::human_duration(seconds.max(0)),
        None => "<unknown>".into(),
    }
}

/// A cell of a server Table, as kubectl prints it.
pub fn cell(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "<none>".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_padded_to_the_widest_cell() {
        let header = ["NAME", "READY", "AGE"];
        let rows = vec![
            vec!["web-1".to_owned(), "1/1".to_owned(), "5s".to_owned()],
            vec!["a".to_owned(), "0/1".to_owned(), "10m".to_owned()],
        ];
        assert_eq!(
            table(&header, &rows),
            "NAME    READY   AGE\nweb-1   1/1     5s\na       0/1     10m\n"
        );
    }

    #[test]
    fn several_objects_print_as_a_list() {
        let one = serde_json::json!({"kind": "Pod"});
        let text = objects(vec![one.clone(), one.clone()], Format::Yaml, false).unwrap();
        assert!(text.contains("kind: List"), "{text}");
        let text = objects(vec![one], Format::Json, true).unwrap();
        assert_eq!(text, "{\n  \"kind\": \"Pod\"\n}\n");
    }
}
