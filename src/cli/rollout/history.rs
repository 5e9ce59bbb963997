//! `flotilla rollout history`: a Deployment's revisions, one per
//! ReplicaSet it controls, with the `kubernetes.io/change-cause` each
//! carries; or one revision's pod template. It reads; it changes nothing.

use anyhow::{Result, bail};
use k8s_openapi::api::apps::v1::ReplicaSet;

use super::{Target, replica_sets, revision};
use crate::cli::output::{self, print};
use crate::cli::session::ClientArgs;

/// The annotation `kubectl … --record` and people set to say why.
const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

/// List a Deployment's revisions, or show one.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  flotilla rollout history deployment/web
  flotilla rollout history deployment/web --revision 2")]
pub struct Args {
    /// deployment/NAME, or deployment NAME.
    #[arg(required = true, value_name = "deployment/NAME")]
    pub target: Vec<String>,
    /// Show this revision's pod template.
    #[arg(long)]
    pub revision: Option<i64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: Args) -> Result<()> {
    let target = Target::open(&args.client, &args.target).await?;
    let deployment = target.deployment().await?;
    let name = &target.name;
    let mut sets: Vec<(i64, ReplicaSet)> = replica_sets(&target.session, &deployment)
        .await?
        .into_iter()
        .filter_map(|set| Some((revision(&set)?, set)))
        .collect();
    sets.sort_by_key(|(number, _)| *number);
    let Some(wanted) = args.revision else {
        return print(format!("deployment.apps/{name}\n{}", table(&sets)));
    };
    let Some((_, set)) = sets.iter().find(|(number, _)| *number == wanted) else {
        bail!("unable to find revision {wanted} of deployment.apps/{name}");
    };
    let template = set.spec.template.as_ref();
    let yaml = serde_yaml::to_string(&template)?;
    let indented: String = yaml.lines().map(|line| format!("  {line}\n")).collect();
    print(format!(
        "deployment.apps/{name} with revision #{wanted}\nPod Template:\n{indented}"
    ))
}

fn table(sets: &[(i64, ReplicaSet)]) -> String {
    let header = ["REVISION", "CHANGE-CAUSE"];
    let rows: Vec<Vec<String>> = sets
        .iter()
        .map(|(number, set)| {
            let annotations = set.metadata.annotations.as_ref();
            let cause = annotations.and_then(|all| all.get(CHANGE_CAUSE));
            vec![
                number.to_string(),
                cause.cloned().unwrap_or_else(|| "<none>".into()),
            ]
        })
        .collect();
    output::table(&header, &rows)
}
