//! `flotilla logs`: a pod's container log through the `pods/{name}/log`
//! subresource, which the API server proxies to the pod's node; streamed
//! to stdout as it arrives with `-f`. It knows the subresource's
//! parameters, not where logs are kept.

use anyhow::{Context, Result};
use futures::AsyncBufReadExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams};

use super::output::print;
use super::session::{ClientArgs, Session};

/// Print a pod's container log.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  flotilla logs web-7d4b9c-x2x8q
  flotilla logs web-7d4b9c-x2x8q -c sidecar --tail 20
  flotilla logs -f worker-0
  flotilla logs --previous web-7d4b9c-x2x8q")]
pub struct Args {
    /// The pod.
    pub pod: String,
    /// The container; may be left out when the pod has one.
    #[arg(short, long)]
    pub container: Option<String>,
    /// Keep printing as the container writes, until it ends or Ctrl-C.
    #[arg(short, long)]
    pub follow: bool,
    /// The log of the container's previous instance (before its last restart).
    #[arg(short, long)]
    pub previous: bool,
    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    pub tail: Option<i64>,
    /// Prefix each line with its RFC 3339 time.
    #[arg(long)]
    pub timestamps: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: Args) -> Result<()> {
    let session = if args.follow {
        Session::connect_streaming(&args.client).await?
    } else {
        Session::connect(&args.client).await?
    };
    let pods: Api<Pod> = Api::namespaced(session.client.clone(), &session.namespace);
    let params = LogParams {
        container: args.container.clone(),
        follow: args.follow,
        previous: args.previous,
        tail_lines: args.tail,
        timestamps: args.timestamps,
        ..LogParams::default()
    };
    let what = format!("reading the log of pod/{}", args.pod);
    if !args.follow {
        let text = pods.logs(&args.pod, &params).await.context(what)?;
        return print(&text);
    }
    // Passed on chunk by chunk as the node sends it: bounded memory
    // whatever the lines' lengths.
    let mut stream = Box::pin(
        pods.log_stream(&args.pod, &params)
            .await
            .context(what.clone())?,
    );
    loop {
        let chunk = stream.fill_buf().await.context(what.clone())?;
        if chunk.is_empty() {
            return Ok(());
        }
        let length = chunk.len();
        print(chunk)?;
        stream.consume_unpin(length);
    }
}
