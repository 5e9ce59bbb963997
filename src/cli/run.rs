//! `flotilla run`: a Deployment of one image in one step (labelled
//! `app=NAME`), and with `--port` a Service in front of it. It writes two
//! objects built from flags; the controllers do the rest.

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use super::output::print;
use super::session::{ClientArgs, Session};

/// Run an image as a Deployment, with a Service when it listens on a port.
///
/// The image names a Wasm component: `name:tag` from the cluster's
/// registry, an OCI reference, or a `file://` path for local agents.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  flotilla run hello --image hello-http:1.0 --port 8080
  flotilla run worker --image file:///srv/job.wasm --replicas 3 -n jobs")]
pub struct Args {
    /// The Deployment's name (and the Service's, and the `app` label).
    pub name: String,
    /// The Wasm component to run.
    #[arg(long)]
    pub image: String,
    /// How many pods.
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,
    /// The port the component listens on; also creates a Service on it.
    #[arg(long)]
    pub port: Option<u16>,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: Args) -> Result<()> {
    let session = Session::connect(&args.client).await?;
    let params = PostParams {
        field_manager: Some("flotilla".into()),
        ..PostParams::default()
    };
    let deployment: Deployment =
        serde_json::from_value(deployment(&args)).context("building the deployment")?;
    let deployments: Api<Deployment> = Api::namespaced(session.client.clone(), &session.namespace);
    deployments
        .create(&params, &deployment)
        .await
        .with_context(|| format!("creating deployment.apps/{}", args.name))?;
    print(format!("deployment.apps/{} created\n", args.name))?;
    let Some(port) = args.port else {
        return Ok(());
    };
    let service: Service =
        serde_json::from_value(service(&args.name, port)).context("building the service")?;
    let services: Api<Service> = Api::namespaced(session.client.clone(), &session.namespace);
    services
        .create(&params, &service)
        .await
        .with_context(|| format!("creating service/{}", args.name))?;
    print(format!("service/{} created\n", args.name))
}

fn deployment(args: &Args) -> Value {
    let labels = json!({"app": args.name});
    let ports = args.port.map(|port| json!([{"containerPort": port}]));
    let mut container = json!({"name": args.name, "image": args.image});
    if let Some(ports) = ports {
        container["ports"] = ports;
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": args.name, "labels": labels},
        "spec": {
            "replicas": args.replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [container]},
            },
        },
    })
}

fn service(name: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "selector": {"app": name},
            "ports": [{"port": port, "targetPort": port, "protocol": "TCP"}],
        },
    })
}
