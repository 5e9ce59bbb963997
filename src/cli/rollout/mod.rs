//! `flotilla rollout status|history|undo`: a Deployment's rollouts, read
//! and reverted the way kubectl does it, from the Deployment's status and
//! its ReplicaSets (one per template, each carrying its revision in the
//! `deployment.kubernetes.io/revision` annotation). One file per verb; what
//! they share (finding the Deployment and its ReplicaSets) is here. The
//! Deployment controller does the rolling; these only watch and ask.

mod history;
mod status;
mod undo;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::api::{Api, ListParams};

use super::catalog;
use super::session::{ClientArgs, Session};

/// The annotation the Deployment controller numbers templates with.
pub const REVISION: &str = "deployment.kubernetes.io/revision";

/// Manage a Deployment's rollouts.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    Status(status::Args),
    History(history::Args),
    Undo(undo::Args),
}

pub async fn run(command: Command) -> Result<()> {
    match command {
        Command::Status(args) => status::run(args).await,
        Command::History(args) => history::run(args).await,
        Command::Undo(args) => undo::run(args).await,
    }
}

/// The Deployment a rollout verb works on, and the session to reach it.
struct Target {
    session: Session,
    api: Api<Deployment>,
    name: String,
}

impl Target {
    /// Connects and resolves `deployment/NAME` (or `deployment NAME`).
    async fn open(client: &ClientArgs, words: &[String]) -> Result<Target> {
        let (session, catalog) = Session::with_catalog(client).await?;
        let targets = catalog::targets(words)?;
        let [(kind, names)] = targets.as_slice() else {
            bail!("name one deployment: deployment/NAME");
        };
        let resource = catalog.resolve(kind)?;
        if resource.api.group != "apps" || resource.api.kind != "Deployment" {
            bail!(
                "rollout works on deployments; {} has no rollouts here",
                resource.display()
            );
        }
        let [name] = names.as_slice() else {
            bail!("name one deployment: deployment/NAME");
        };
        let api = Api::namespaced(session.client.clone(), &session.namespace);
        Ok(Target {
            session,
            api,
            name: name.clone(),
        })
    }

    async fn deployment(&self) -> Result<Deployment> {
        self.api
            .get(&self.name)
            .await
            .with_context(|| format!("getting deployment.apps/{}", self.name))
    }
}

/// The ReplicaSets `deployment` controls, found by its selector and kept
/// only when their controller reference is the Deployment's uid.
async fn replica_sets(session: &Session, deployment: &Deployment) -> Result<Vec<ReplicaSet>> {
    let api: Api<ReplicaSet> = Api::namespaced(session.client.clone(), &session.namespace);
    let labels = deployment.spec.selector.match_labels.as_ref();
    let selector: Vec<String> = labels
        .into_iter()
        .flatten()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    let listed = api
        .list(&ListParams::default().labels(&selector.join(",")))
        .await
        .context("listing the deployment's replica sets")?;
    let uid = deployment.metadata.uid.as_deref();
    let owned = listed.items.into_iter().filter(|set| {
        set.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|owner| owner.controller == Some(true) && Some(owner.uid.as_str()) == uid)
    });
    Ok(owned.collect())
}

/// A ReplicaSet's revision; `None` when it carries none.
fn revision(set: &ReplicaSet) -> Option<i64> {
    set.metadata
        .annotations
        .as_ref()?
        .get(REVISION)?
        .parse()
        .ok()
}
