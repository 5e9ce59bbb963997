//! Manifests as `-f` names them: files, directories (their `.yaml`,
//! `.yml` and `.json` files, in name order) and `-` for stdin; each holding
//! one or more YAML documents or JSON objects, and `List` kinds whose items
//! are objects. It knows files and formats, not the API: kinds are checked
//! only for being present.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;

/// The most one file (or stdin) may hold: far more than any hand-written
/// manifest set, and a bound so that a wrong path (a device, a large log)
/// fails instead of filling memory.
pub const MANIFEST_BYTES_MAX: u64 = 32 * 1024 * 1024;

/// How deep `-R` descends: enough for any repository layout, and a stop
/// for symbolic-link loops.
pub const DIRECTORY_DEPTH_MAX: usize = 16;

/// One object read from a manifest.
#[derive(Debug)]
pub struct Manifest {
    /// Where it came from, for errors: `web.yaml`, `stdin`.
    pub source: String,
    pub object: Value,
}

impl Manifest {
    pub fn api_version(&self) -> &str {
        self.object["apiVersion"].as_str().unwrap_or_default()
    }

    pub fn kind(&self) -> &str {
        self.object["kind"].as_str().unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap_or_default()
    }

    pub fn namespace(&self) -> Option<&str> {
        self.object["metadata"]["namespace"].as_str()
    }
}

/// Every object the paths hold, in order. `recursive` descends into
/// subdirectories.
pub fn read(paths: &[PathBuf], recursive: bool) -> Result<Vec<Manifest>> {
    let mut manifests = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let text = read_bounded(std::io::stdin().lock(), "stdin")?;
            manifests.extend(parse(&text, "stdin")?);
            continue;
        }
        for file in files(path, recursive, 0)? {
            let source = file.display().to_string();
            let opened = std::fs::File::open(&file).with_context(|| format!("opening {source}"))?;
            let text = read_bounded(opened, &source)?;
            manifests.extend(parse(&text, &source)?);
        }
    }
    Ok(manifests)
}

/// The manifest files `path` names: itself, or a directory's manifests.
fn files(path: &Path, recursive: bool, depth: usize) -> Result<Vec<PathBuf>> {
    let metadata = std::fs::metadata(path)
        .with_context(|| format!("the path \"{}\" does not exist", path.display()))?;
    if !metadata.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    if depth > DIRECTORY_DEPTH_MAX {
        bail!(
            "{} is more than {DIRECTORY_DEPTH_MAX} directories deep (a link loop?)",
            path.display()
        );
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("reading the directory {}", path.display()))?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading the directory {}", path.display()))?;
    entries.sort();
    let mut found = Vec::new();
    for entry in entries {
        if entry.is_dir() {
            if recursive {
                found.extend(files(&entry, recursive, depth + 1)?);
            }
        } else if is_manifest_name(&entry) {
            found.push(entry);
        }
    }
    Ok(found)
}

fn is_manifest_name(path: &Path) -> bool {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    matches!(extension, "yaml" | "yml" | "json")
}

fn read_bounded(reader: impl Read, source: &str) -> Result<String> {
    let mut text = String::new();
    reader
        .take(MANIFEST_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("reading {source} (manifests are UTF-8 text)"))?;
    if text.len() as u64 > MANIFEST_BYTES_MAX {
        bail!("{source} is larger than {MANIFEST_BYTES_MAX} bytes");
    }
    Ok(text)
}

/// The objects in one file's text: JSON objects one after another, or YAML
/// documents separated by `---`. Empty documents are skipped; `List`s are
/// opened.
pub fn parse(text: &str, source: &str) -> Result<Vec<Manifest>> {
    let documents: Vec<Value> = if text.trim_start().starts_with('{') {
        serde_json::Deserializer::from_str(text)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .with_context(|| format!("{source} is not valid JSON"))?
    } else {
        serde_yaml::Deserializer::from_str(text)
            .map(Value::deserialize)
            .collect::<Result<_, _>>()
            .with_context(|| format!("{source} is not valid YAML"))?
    };
    let mut manifests = Vec::new();
    for (index, document) in documents.into_iter().enumerate() {
        if document.is_null() {
            continue;
        }
        let place = format!("{source} (document {})", index + 1);
        open(document, &place, &mut manifests)?;
    }
    Ok(manifests)
}

/// Adds `object`, or the items of a `List`, to `manifests`.
fn open(object: Value, place: &str, manifests: &mut Vec<Manifest>) -> Result<()> {
    let kind = object["kind"].as_str().unwrap_or_default();
    if kind.is_empty() || object["apiVersion"].as_str().unwrap_or_default().is_empty() {
        bail!("{place}: an object needs both `apiVersion` and `kind`");
    }
    if kind.ends_with("List")
        && let Some(items) = object["items"].as_array()
    {
        for item in items {
            open(item.clone(), place, manifests)?;
        }
        return Ok(());
    }
    if object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .is_empty()
    {
        bail!("{place}: a {kind} needs `metadata.name`");
    }
    manifests.push(Manifest {
        source: place.to_owned(),
        object,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_documents_json_objects_and_lists_are_opened() {
        let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n---\n\
                    apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Secret, metadata: {name: b}}\n";
        let names: Vec<_> = parse(yaml, "x")
            .unwrap()
            .iter()
            .map(|m| m.name().to_owned())
            .collect();
        assert_eq!(names, ["a", "b"]);
        let json = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"}}
                      {"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"d"}}"#;
        assert_eq!(parse(json, "x").unwrap().len(), 2);
    }

    #[test]
    fn objects_without_a_kind_or_name_are_refused_with_their_place() {
        let error = parse("metadata: {name: a}\n", "web.yaml")
            .unwrap_err()
            .to_string();
        assert!(error.contains("web.yaml (document 1)"), "{error}");
        let error = parse("apiVersion: v1\nkind: Pod\n", "p.yaml")
            .unwrap_err()
            .to_string();
        assert!(error.contains("metadata.name"), "{error}");
    }
}
