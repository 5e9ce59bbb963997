//! `flotilla apply -f`: client-side apply, interoperable with
//! `kubectl apply`. An object that is missing is created carrying the
//! last-applied annotation; one that exists is sent the three-way merge
//! patch from `merge`, and is `unchanged` when that patch is empty. (The
//! API server serves no server-side apply.) It knows the order of the
//! calls, not how a patch is computed or how manifests are read.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use serde_json::Value;

use super::catalog::Catalog;
use super::errors::is_not_found;
use super::manifest::{self, Manifest};
use super::merge;
use super::output::print;
use super::session::{ClientArgs, Session};

/// The field manager our writes are recorded under.
const FIELD_MANAGER: &str = "flotilla";

/// Create or update objects from manifests, as `kubectl apply` does.
///
/// Fields removed from a manifest since it was last applied (by flotilla
/// or kubectl) are removed from the object; fields others set are kept.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  flotilla apply -f web.yaml
  flotilla apply -f manifests/ -R
  cat web.yaml | flotilla apply -f -")]
pub struct Args {
    /// A manifest file, a directory of them, or `-` for stdin. Repeat for more.
    #[arg(short, long = "filename", value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    /// Also read the directories' subdirectories.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: Args) -> Result<()> {
    // Read everything first: a missing file fails before any write.
    let manifests = manifest::read(&args.files, args.recursive)?;
    let (session, catalog) = Session::with_catalog(&args.client).await?;
    for manifest in &manifests {
        let outcome = apply_one(&session, &catalog, manifest)
            .await
            .with_context(|| format!("applying {}", manifest.source))?;
        print(format!("{outcome}\n"))?;
    }
    Ok(())
}

/// Applies one object; returns what kubectl prints for it.
async fn apply_one(session: &Session, catalog: &Catalog, manifest: &Manifest) -> Result<String> {
    let resource = catalog.for_kind(manifest.api_version(), manifest.kind())?;
    let namespace = namespace_for(session, manifest)?;
    let api = resource.api(&session.client, Some(&namespace));
    let name = manifest.name();
    let shown = resource.object_name(name);
    let mut object = manifest.object.clone();
    if resource.namespaced {
        // Recorded in the annotation too, as kubectl records it.
        object["metadata"]["namespace"] = Value::String(namespace.clone());
    }
    let modified = merge::annotated(&object);
    let live = match api.get(name).await {
        Ok(live) => serde_json::to_value(live).context("reading the live object")?,
        Err(error) if is_not_found(&error) => {
            let object: DynamicObject =
                serde_json::from_value(modified).context("encoding the object")?;
            api.create(&post_params(), &object)
                .await
                .with_context(|| format!("creating {shown}"))?;
            return Ok(format!("{shown} created"));
        }
        Err(error) => return Err(error).with_context(|| format!("reading {shown}")),
    };
    let original = merge::last_applied(&live);
    if original.is_none() {
        eprintln!(
            "Warning: {shown} has no {} annotation (it was not made by apply); \
             it is being added now, and fields the manifest drops later will be removed",
            merge::LAST_APPLIED
        );
    }
    let patch = merge::three_way(original.as_ref(), &modified, &live);
    if patch.as_object().is_some_and(|fields| fields.is_empty()) {
        return Ok(format!("{shown} unchanged"));
    }
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    api.patch(name, &params, &Patch::Merge(&patch))
        .await
        .with_context(|| format!("patching {shown}"))?;
    Ok(format!("{shown} configured"))
}

/// The manifest's namespace, else the session's; a manifest naming
/// another namespace than an explicit `-n` is refused, as kubectl does.
fn namespace_for(session: &Session, manifest: &Manifest) -> Result<String> {
    match manifest.namespace() {
        Some(own) if session.namespace_explicit && own != session.namespace => bail!(
            "the namespace from the provided object \"{own}\" does not match the namespace \
             \"{}\"; pass --namespace={own} or drop -n",
            session.namespace
        ),
        Some(own) => Ok(own.to_owned()),
        None => Ok(session.namespace.clone()),
    }
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    }
}
