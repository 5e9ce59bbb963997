//! The connection every verb starts from: the flags that pick a cluster
//! (`--kubeconfig`, `--context`, `-n`), the kube-rs client built from them,
//! the namespace a verb works in, and the server's catalog of kinds for
//! verbs that name them. It knows kubeconfig files and nothing of what the
//! verbs do with the client.

use std::path::PathBuf;

use anyhow::{Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::catalog::Catalog;

/// The flags every client verb takes. Flattened into each verb's `Args`
/// rather than made global, because `flotilla agent` already has a
/// `--kubeconfig` of its own.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientArgs {
    /// The kubeconfig file. Without it: $KUBECONFIG, then ~/.kube/config.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use. Defaults to its current context.
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// The namespace. Defaults to the context's namespace, or `default`.
    #[arg(short, long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

/// A client for the chosen cluster and the namespace verbs default to.
pub struct Session {
    pub client: kube::Client,
    /// `-n`, or the context's namespace, or `default`.
    pub namespace: String,
    /// Whether `-n` was given, which makes a manifest naming another
    /// namespace an error (as in kubectl) instead of that namespace's.
    pub namespace_explicit: bool,
}

impl Session {
    pub async fn connect(args: &ClientArgs) -> Result<Session> {
        Session::connect_with(args, Timeouts::Bounded).await
    }

    /// A session and what the server serves, for verbs that resolve kinds.
    pub async fn with_catalog(args: &ClientArgs) -> Result<(Session, Catalog)> {
        let session = Session::connect(args).await?;
        let catalog = Catalog::discover(&session.client).await?;
        Ok((session, catalog))
    }

    /// A session whose reads never time out: for streams that may be
    /// silent for as long as the user watches them (`logs -f`).
    pub async fn connect_streaming(args: &ClientArgs) -> Result<Session> {
        Session::connect_with(args, Timeouts::None).await
    }

    async fn connect_with(args: &ClientArgs, timeouts: Timeouts) -> Result<Session> {
        let kubeconfig = match &args.kubeconfig {
            Some(path) => Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?,
            None => Kubeconfig::read().context(
                "reading the kubeconfig ($KUBECONFIG, then ~/.kube/config); \
                 pass --kubeconfig FILE (`flotilla server` writes one into its data directory)",
            )?,
        };
        let options = KubeConfigOptions {
            context: args.context.clone(),
            ..KubeConfigOptions::default()
        };
        let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .context("loading the kubeconfig")?;
        if matches!(timeouts, Timeouts::None) {
            config.read_timeout = None;
        }
        let namespace = args
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = kube::Client::try_from(config).context("building the API client")?;
        Ok(Session {
            client,
            namespace,
            namespace_explicit: args.namespace.is_some(),
        })
    }
}

enum Timeouts {
    /// kube-rs's defaults: a request that hears nothing for minutes fails.
    Bounded,
    None,
}
