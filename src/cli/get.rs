//! `flotilla get`: objects as the server's Table columns (what
//! `kubectl get` prints), or as YAML, JSON or names. The columns are the
//! server's (`control/src/api/table.rs`); this file only asks for them and
//! lays them out. It knows nothing of any kind's fields.
//!
//! `-w` prints the table, then a row for each change. The server serves
//! Tables for lists and gets but not for watches, so each change's row is
//! the server's Table of that one object, fetched when the watch reports
//! it; a deleted object's row is the last one printed for it.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::TryStreamExt;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::core::{DynamicObject, ObjectList};
use serde_json::Value;

use super::catalog::{self, Resource};
use super::output::{self, Format, print};
use super::session::{ClientArgs, Session};

/// Objects per list request: kubectl's chunk size, so a large collection
/// comes in bounded pieces.
pub const LIST_PAGE_OBJECTS: u32 = 500;

/// How long the server keeps one watch request open before it ends it and
/// the watch is made again from where it stopped (kube-rs's and client-go's
/// usual bound, under their 295 s limit).
const WATCH_TIMEOUT_SECS: u32 = 290;
/// How long a watch may stay silent past [`WATCH_TIMEOUT_SECS`] before its
/// connection is taken for lost (kube-rs sets no read timeout) and the
/// watch is made again.
const WATCH_SILENCE_GRACE: Duration = Duration::from_secs(30);

/// The media type that asks the API server for a Table.
const TABLE_ACCEPT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

/// List objects, or show some by name.
///
/// Kinds resolve by plural, singular, kind or short name (`pods`, `pod`,
/// `Pod`, `po`), optionally with their group (`deployments.apps`), or by
/// category (`all`: pods, services, deployments, …).
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  flotilla get pods
  flotilla get deploy web -o yaml
  flotilla get deploy,svc -l app=web
  flotilla get all
  flotilla get pods -A -o wide
  flotilla get deployment/web service/web -o name
  flotilla get pods -w")]
pub struct Args {
    /// KIND[,KIND…] [NAME…], or KIND/NAME…
    #[arg(required = true, value_name = "KIND [NAME]")]
    pub targets: Vec<String>,
    /// List across every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Only objects whose labels match, e.g. `app=web,tier!=db`.
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Output format; a table when not given.
    #[arg(short, long, value_enum)]
    pub output: Option<Format>,
    /// After the table, print a row for each change, until Ctrl-C.
    #[arg(short, long)]
    pub watch: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: Args) -> Result<()> {
    let targets = catalog::targets(&args.targets)?;
    let (session, catalog) = Session::with_catalog(&args.client).await?;
    let namespace = (!args.all_namespaces).then_some(session.namespace.as_str());
    let mut resolved = Vec::new();
    for (kind, names) in &targets {
        if namespace.is_none() && !names.is_empty() {
            bail!("an object cannot be fetched by name across all namespaces; drop -A");
        }
        for resource in catalog.resolve_many(kind)? {
            resolved.push((resource, names));
        }
    }
    let query = Query {
        session: &session,
        namespace,
        selector: args.selector.as_deref(),
    };
    match args.output {
        None | Some(Format::Wide) if args.watch => {
            let [(resource, names)] = resolved.as_slice() else {
                bail!("-w watches one kind; name one kind (`get pods -w`)");
            };
            if names.len() > 1 {
                bail!("-w watches one object or all of a kind; name at most one");
            }
            watch(&query, resource, names, args.output == Some(Format::Wide)).await
        }
        Some(_) if args.watch => bail!("-w prints table rows; leave out -o, or use -o wide"),
        None | Some(Format::Wide) => {
            let wide = args.output == Some(Format::Wide);
            let several = resolved.len() > 1;
            tables(&query, &resolved, wide, several).await
        }
        Some(format) => {
            let mut found = Vec::new();
            let mut single = true;
            for (resource, names) in &resolved {
                single &= names.len() == 1;
                found.extend(query.objects(resource, names).await?);
            }
            single &= resolved.len() == 1;
            print_objects(found, format, single)
        }
    }
}

/// Where a `get` looks.
struct Query<'s> {
    session: &'s Session,
    /// `None` for every namespace.
    namespace: Option<&'s str>,
    selector: Option<&'s str>,
}

impl Query<'_> {
    /// The named objects, or all that match the selector, each with its
    /// `apiVersion` and `kind` (list items come without them).
    async fn objects(&self, resource: &Resource, names: &[String]) -> Result<Vec<Value>> {
        let api = resource.api(&self.session.client, self.namespace);
        let mut found: Vec<DynamicObject> = Vec::new();
        if names.is_empty() {
            let mut params = self.list_params();
            loop {
                let page: ObjectList<DynamicObject> = api
                    .list(&params)
                    .await
                    .with_context(|| format!("listing {}", resource.api.plural))?;
                found.extend(page.items);
                match page.metadata.continue_ {
                    Some(token) if !token.is_empty() => params = params.continue_token(&token),
                    _ => break,
                }
            }
        }
        for name in names {
            let object = api
                .get(name)
                .await
                .with_context(|| format!("getting {}", resource.object_name(name)))?;
            found.push(object);
        }
        found
            .into_iter()
            .map(|mut object| {
                object.types = Some(kube::core::TypeMeta {
                    api_version: resource.api.api_version.clone(),
                    kind: resource.api.kind.clone(),
                });
                serde_json::to_value(object).context("encoding an object")
            })
            .collect()
    }

    /// The server's Table of the named objects, or of all that match.
    async fn table(&self, resource: &Resource, names: &[String]) -> Result<Vec<Value>> {
        let request = kube::core::Request::new(resource.url_path(self.namespace));
        let mut tables = Vec::new();
        if names.is_empty() {
            let mut params = self.list_params();
            loop {
                let table = self.table_request(request.list(&params)).await;
                let table = table.with_context(|| format!("listing {}", resource.api.plural))?;
                let token = table["metadata"]["continue"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                tables.push(table);
                if token.is_empty() {
                    break;
                }
                params = params.continue_token(&token);
            }
        }
        for name in names {
            let get = request.get(name, &Default::default());
            let table = self.table_request(get).await;
            tables.push(table.with_context(|| format!("getting {}", resource.object_name(name)))?);
        }
        Ok(tables)
    }

    /// The server's Table row of one object in `namespace`, laid out as
    /// `get` prints it; `None` when the object is gone.
    async fn row(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        name: &str,
        wide: bool,
    ) -> Result<Option<Vec<String>>> {
        let one = Query {
            session: self.session,
            namespace: namespace.or(self.namespace),
            selector: None,
        };
        let table = match one.table(resource, &[name.to_owned()]).await {
            Ok(table) => table,
            Err(error) if is_not_found(&error) => return Ok(None),
            Err(error) => return Err(error),
        };
        let across = self.namespace.is_none() && resource.namespaced;
        Ok(layout(&table, wide, across, None).and_then(|(_, rows)| rows.into_iter().next()))
    }

    async fn table_request(
        &self,
        request: Result<http::Request<Vec<u8>>, kube::core::request::Error>,
    ) -> Result<Value> {
        let mut request = request.context("building the request")?;
        request.headers_mut().insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static(TABLE_ACCEPT),
        );
        self.session
            .client
            .request::<Value>(request)
            .await
            .map_err(anyhow::Error::from)
    }

    fn list_params(&self) -> ListParams {
        let params = ListParams::default().limit(LIST_PAGE_OBJECTS);
        match self.selector {
            Some(selector) => params.labels(selector),
            None => params,
        }
    }
}

/// One table per kind, as kubectl prints them; names carry their kind
/// when several kinds are shown.
async fn tables(
    query: &Query<'_>,
    resolved: &[(&Resource, &Vec<String>)],
    wide: bool,
    several: bool,
) -> Result<()> {
    let mut printed = false;
    for (resource, names) in resolved {
        let pages = query.table(resource, names).await?;
        let across = query.namespace.is_none() && resource.namespaced;
        let prefix = several.then(|| resource.display());
        let Some((header, rows)) = layout(&pages, wide, across, prefix.as_deref()) else {
            continue;
        };
        if printed {
            print("\n")?;
        }
        print(output::table(&header, &rows))?;
        printed = true;
    }
    if !printed {
        match query.namespace {
            Some(namespace) => eprintln!("No resources found in {namespace} namespace."),
            None => eprintln!("No resources found"),
        }
    }
    Ok(())
}

/// `get -w`: the table (or nothing yet, when empty), then one row per
/// change as the watch reports it, until the user stops it. Each watch
/// request ends after [`WATCH_TIMEOUT_SECS`] and is made again from the
/// last version seen, so no change between two requests is missed.
async fn watch(query: &Query<'_>, resource: &Resource, names: &[String], wide: bool) -> Result<()> {
    let pages = query.table(resource, names).await?;
    let mut resource_version = pages
        .last()
        .and_then(|page| page["metadata"]["resourceVersion"].as_str())
        .unwrap_or_default()
        .to_owned();
    let across = query.namespace.is_none() && resource.namespaced;
    let first = pages.first().context("the server sent no Table")?;
    let mut rows = WatchRows::new(header(first, wide, across).1);
    match layout(&pages, wide, across, None) {
        Some((_, listed)) => {
            let keys = pages
                .iter()
                .flat_map(|page| page["rows"].as_array().into_iter().flatten())
                .map(|row| key_of(&row["object"]));
            rows.print_table(keys.zip(listed).collect())?;
        }
        None => match query.namespace {
            Some(namespace) => eprintln!("No resources found in {namespace} namespace."),
            None => eprintln!("No resources found"),
        },
    }
    let api = resource.api(&query.session.client, query.namespace);
    let mut params = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
    if let Some(selector) = query.selector {
        params = params.labels(selector);
    }
    if let Some(name) = names.first() {
        params = params.fields(&format!("metadata.name={name}"));
    }
    let what = || format!("watching {}", resource.api.plural);
    let silence = Duration::from_secs(WATCH_TIMEOUT_SECS.into()) + WATCH_SILENCE_GRACE;
    loop {
        let mut events = Box::pin(
            api.watch(&params, &resource_version)
                .await
                .with_context(what)?,
        );
        // Ended by the server at its timeout, or taken for lost when
        // silent past it: either way, watched again from where it stopped.
        while let Ok(event) = tokio::time::timeout(silence, events.try_next()).await {
            let Some(event) = event.with_context(what)? else {
                break;
            };
            let (object, deleted) = match event {
                WatchEvent::Added(object) | WatchEvent::Modified(object) => (object, false),
                WatchEvent::Deleted(object) => (object, true),
                WatchEvent::Bookmark(bookmark) => {
                    resource_version = bookmark.metadata.resource_version;
                    continue;
                }
                // Most often 410 Gone: the version to resume from was
                // compacted away, and only a new `get -w` can start over.
                WatchEvent::Error(status) => {
                    return Err(kube::Error::Api(status)).with_context(what);
                }
            };
            if let Some(version) = &object.metadata.resource_version {
                resource_version.clone_from(version);
            }
            let key = (object.metadata.namespace, object.metadata.name);
            let row = match (deleted, &key.1) {
                (false, Some(name)) => query.row(resource, key.0.as_deref(), name, wide).await?,
                _ => None,
            };
            rows.print_change(key, row)?;
        }
    }
}

/// An object's namespace and name, the key its last row is kept under.
type ObjectKey = (Option<String>, Option<String>);

fn key_of(object: &Value) -> ObjectKey {
    let field = |name: &str| object["metadata"][name].as_str().map(str::to_owned);
    (field("namespace"), field("name"))
}

/// What `get -w` has printed: the header (once), the column widths so far
/// (rows stay under their headers as cells widen), and the last row of
/// each object, which is what its deletion prints.
struct WatchRows {
    header: Vec<String>,
    header_printed: bool,
    widths: Vec<usize>,
    last: HashMap<ObjectKey, Vec<String>>,
}

impl WatchRows {
    fn new(header: Vec<String>) -> WatchRows {
        WatchRows {
            widths: header.iter().map(|cell| cell.chars().count()).collect(),
            header,
            header_printed: false,
            last: HashMap::new(),
        }
    }

    /// The header and the listed rows, aligned as `get` prints them.
    fn print_table(&mut self, rows: Vec<(ObjectKey, Vec<String>)>) -> Result<()> {
        let (keys, rows): (Vec<ObjectKey>, Vec<Vec<String>>) = rows.into_iter().unzip();
        for row in &rows {
            self.widen(row);
        }
        print(output::table(&self.header, &rows))?;
        self.header_printed = true;
        self.last.extend(keys.into_iter().zip(rows));
        Ok(())
    }

    /// Prints an object's row after a change: `row` when it was read,
    /// else (deleted, or gone before it was read) the last one printed.
    /// The first row of a watch that began empty comes under the header.
    fn print_change(&mut self, key: ObjectKey, row: Option<Vec<String>>) -> Result<()> {
        let Some(row) = row.or_else(|| self.last.remove(&key)) else {
            return Ok(());
        };
        if !self.header_printed {
            return self.print_table(vec![(key, row)]);
        }
        self.widen(&row);
        // The header padded to the widths so far stands in for the rows
        // printed before, so the table's own layout aligns the new row.
        let padded: Vec<String> = self
            .header
            .iter()
            .zip(&self.widths)
            .map(|(cell, &width)| format!("{cell:<width$}"))
            .collect();
        let text = output::table(&padded, std::slice::from_ref(&row));
        let line = text.lines().nth(1).unwrap_or_default();
        print(format!("{line}\n"))?;
        self.last.insert(key, row);
        Ok(())
    }

    fn widen(&mut self, row: &[String]) {
        for (width, cell) in self.widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
}

/// Whether the API answered 404: the object is gone.
fn is_not_found(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(cause.downcast_ref::<kube::Error>(), Some(kube::Error::Api(status)) if status.code == 404)
    })
}

/// The Table columns shown (their indices) and their header: priority 0
/// columns, or all of them when `wide`; NAMESPACE first when `across`.
fn header(page: &Value, wide: bool, across: bool) -> (Vec<usize>, Vec<String>) {
    let definitions = page["columnDefinitions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let shown: Vec<usize> = (0..definitions.len())
        .filter(|&index| wide || definitions[index]["priority"].as_i64().unwrap_or(0) == 0)
        .collect();
    let mut header: Vec<String> = shown
        .iter()
        .map(|&index| {
            definitions[index]["name"]
                .as_str()
                .unwrap_or_default()
                .to_uppercase()
        })
        .collect();
    if across {
        header.insert(0, "NAMESPACE".into());
    }
    (shown, header)
}

/// The header and rows of a kind's Table pages; `None` when there are no
/// rows. `across` adds the NAMESPACE column; `prefix` names rows
/// `kind.group/name`.
fn layout(
    pages: &[Value],
    wide: bool,
    across: bool,
    prefix: Option<&str>,
) -> Option<(Vec<String>, Vec<Vec<String>>)> {
    let (shown, header) = header(pages.first()?, wide, across);
    // The NAME column's place in a row before NAMESPACE goes in front.
    let name_column = header
        .iter()
        .skip(usize::from(across))
        .position(|name| name == "NAME");
    let mut rows = Vec::new();
    for row in pages
        .iter()
        .flat_map(|page| page["rows"].as_array().into_iter().flatten())
    {
        let cells = row["cells"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut line: Vec<String> = shown
            .iter()
            .map(|&index| cells.get(index).map(output::cell).unwrap_or_default())
            .collect();
        if let (Some(prefix), Some(column)) = (prefix, name_column) {
            line[column] = format!("{prefix}/{}", line[column]);
        }
        if across {
            let namespace = row["object"]["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default();
            line.insert(0, namespace.to_owned());
        }
        rows.push(line);
    }
    if rows.is_empty() {
        return None;
    }
    Some((header, rows))
}

fn print_objects(objects: Vec<Value>, format: Format, single: bool) -> Result<()> {
    if format == Format::Name {
        let names: String = objects
            .iter()
            .map(|object| format!("{}\n", name_of(object)))
            .collect();
        return print(&names);
    }
    print(&output::objects(objects, format, single)?)
}

/// `kind.group/name` of an object carrying its `apiVersion` and `kind`.
fn name_of(object: &Value) -> String {
    let kind = object["kind"].as_str().unwrap_or_default().to_lowercase();
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    match api_version.split_once('/') {
        Some((group, _)) => format!("{kind}.{group}/{name}"),
        None => format!("{kind}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn page() -> Value {
        json!({
            "columnDefinitions": [
                {"name": "Name", "priority": 0},
                {"name": "Ready", "priority": 0},
                {"name": "Node", "priority": 1},
            ],
            "rows": [
                {"cells": ["web-1", "1/1", "n1"], "object": {"metadata": {"namespace": "prod"}}},
            ],
        })
    }

    #[test]
    fn wide_columns_show_only_when_asked() {
        let (header, rows) = layout(&[page()], false, false, None).unwrap();
        assert_eq!(header, ["NAME", "READY"]);
        assert_eq!(rows, [["web-1", "1/1"]]);
        let (header, _) = layout(&[page()], true, false, None).unwrap();
        assert_eq!(header, ["NAME", "READY", "NODE"]);
    }

    #[test]
    fn all_namespaces_and_several_kinds_qualify_rows() {
        let (header, rows) = layout(&[page()], false, true, Some("pod")).unwrap();
        assert_eq!(header, ["NAMESPACE", "NAME", "READY"]);
        assert_eq!(rows, [["prod", "pod/web-1", "1/1"]]);
        let empty = json!({"columnDefinitions": [{"name": "Name"}], "rows": []});
        assert!(layout(&[empty], false, false, None).is_none());
    }

    #[test]
    fn names_carry_kind_and_group() {
        let deployment =
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}});
        assert_eq!(name_of(&deployment), "deployment.apps/web");
        let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}});
        assert_eq!(name_of(&service), "service/web");
    }
}
