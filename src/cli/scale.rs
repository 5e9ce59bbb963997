//! `flotilla scale`: sets `spec.replicas` through the `scale` subresource,
//! which every scalable kind serves (Deployments, ReplicaSets,
//! StatefulSets). It knows that subresource, not how a controller then
//! reaches the count.

use anyhow::{Context, Result, bail};
use kube::api::{Patch, PatchParams};
use serde_json::json;

use super::catalog;
use super::output::print;
use super::session::{ClientArgs, Session};

/// Set the number of replicas of a Deployment, ReplicaSet or StatefulSet.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  flotilla scale deployment/web --replicas 5
  flotilla scale statefulset db --replicas 3
  flotilla scale deploy/web deploy/api --replicas 0")]
pub struct Args {
    /// KIND/NAME…, or KIND NAME…
    #[arg(required = true, value_name = "KIND/NAME")]
    pub targets: Vec<String>,
    /// The number of replicas wanted.
    #[arg(long)]
    pub replicas: u32,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: Args) -> Result<()> {
    let targets = catalog::targets(&args.targets)?;
    let (session, catalog) = Session::with_catalog(&args.client).await?;
    let patch = json!({"spec": {"replicas": args.replicas}});
    for (kind, names) in &targets {
        let resource = catalog.resolve(kind)?;
        if names.is_empty() {
            bail!("name the {} to scale: KIND/NAME", resource.api.plural);
        }
        let api = resource.api(&session.client, Some(&session.namespace));
        for name in names {
            let shown = resource.object_name(name);
            api.patch_scale(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .with_context(|| format!("scaling {shown}"))?;
            print(format!("{shown} scaled\n"))?;
        }
    }
    Ok(())
}
