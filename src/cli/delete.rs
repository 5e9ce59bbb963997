//! `flotilla delete`: objects by kind and name, by label selector, or as
//! named in manifests, with `--cascade` as the API's `propagationPolicy`.
//! It asks for deletion and reports it; it does not wait for finalizers or
//! for the garbage collector to remove dependents.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use kube::api::{DeleteParams, ListParams, PropagationPolicy};

use super::catalog::{self, Resource};
use super::errors::is_not_found;
use super::manifest;
use super::output::print;
use super::session::{ClientArgs, Session};

/// What happens to an object's dependents (`ownerReferences`).
#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum Cascade {
    /// Delete the object now; the garbage collector deletes dependents after.
    Background,
    /// Delete dependents first; the object goes once they are gone.
    Foreground,
    /// Leave dependents, without their owner.
    Orphan,
}

/// Delete objects by name, by label, or as named in manifests.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  flotilla delete deployment web
  flotilla delete svc/web deploy/web
  flotilla delete pods -l app=web
  flotilla delete -f web.yaml
  flotilla delete deployment web --cascade=orphan")]
pub struct Args {
    /// KIND NAME…, or KIND/NAME…, or KIND with -l.
    #[arg(value_name = "KIND NAME", required_unless_present = "files")]
    pub targets: Vec<String>,
    /// Delete the objects these manifests name (files, directories, `-`).
    #[arg(
        short,
        long = "filename",
        value_name = "FILE",
        conflicts_with = "targets"
    )]
    pub files: Vec<PathBuf>,
    /// Also read the directories' subdirectories.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Delete every object of the kind whose labels match.
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// What happens to the objects' dependents.
    #[arg(long, value_enum, default_value = "background")]
    pub cascade: Cascade,
    /// An object that is already gone is not an error.
    #[arg(long)]
    pub ignore_not_found: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: Args) -> Result<()> {
    let manifests = manifest::read(&args.files, args.recursive)?;
    let targets = if args.targets.is_empty() {
        Vec::new()
    } else {
        catalog::targets(&args.targets)?
    };
    let (session, catalog) = Session::with_catalog(&args.client).await?;
    let deleter = Deleter {
        session: &session,
        params: DeleteParams {
            propagation_policy: Some(match args.cascade {
                Cascade::Background => PropagationPolicy::Background,
                Cascade::Foreground => PropagationPolicy::Foreground,
                Cascade::Orphan => PropagationPolicy::Orphan,
            }),
            ..DeleteParams::default()
        },
        ignore_not_found: args.ignore_not_found,
    };
    for manifest in &manifests {
        let resource = catalog.for_kind(manifest.api_version(), manifest.kind())?;
        let namespace = manifest.namespace().unwrap_or(&session.namespace);
        deleter.delete(resource, namespace, manifest.name()).await?;
    }
    for (kind, names) in &targets {
        let resource = catalog.resolve(kind)?;
        let names = match (&args.selector, names.is_empty()) {
            (Some(selector), true) => deleter.selected(resource, selector).await?,
            (None, false) => names.clone(),
            (Some(_), false) => bail!("give names or -l, not both"),
            (None, true) => bail!(
                "name the {} to delete, or select them with -l",
                resource.api.plural
            ),
        };
        for name in &names {
            deleter.delete(resource, &session.namespace, name).await?;
        }
    }
    Ok(())
}

struct Deleter<'s> {
    session: &'s Session,
    params: DeleteParams,
    ignore_not_found: bool,
}

impl Deleter<'_> {
    async fn delete(&self, resource: &Resource, namespace: &str, name: &str) -> Result<()> {
        let api = resource.api(&self.session.client, Some(namespace));
        let plural = format!("{}{}", resource.api.plural, group_suffix(resource));
        match api.delete(name, &self.params).await {
            Ok(_) => print(format!("{plural} \"{name}\" deleted\n")),
            Err(error) if self.ignore_not_found && is_not_found(&error) => Ok(()),
            Err(error) => {
                Err(error).with_context(|| format!("deleting {}", resource.object_name(name)))
            }
        }
    }

    /// The names of the objects of `resource` whose labels match.
    async fn selected(&self, resource: &Resource, selector: &str) -> Result<Vec<String>> {
        let api = resource.api(&self.session.client, Some(&self.session.namespace));
        let listed = api
            .list(&ListParams::default().labels(selector))
            .await
            .with_context(|| format!("listing {} matching {selector}", resource.api.plural))?;
        Ok(listed
            .items
            .into_iter()
            .filter_map(|item| item.metadata.name)
            .collect())
    }
}

/// `.apps` for apps, nothing for the core group: kubectl's
/// `deployments.apps "web" deleted`.
fn group_suffix(resource: &Resource) -> String {
    match resource.api.group.as_str() {
        "" => String::new(),
        group => format!(".{group}"),
    }
}
