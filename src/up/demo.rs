//! `flotilla up --demo`: deploys `examples/hello-http` on the cluster just
//! started, with the very verbs a user would type (`flotilla push`,
//! `flotilla apply`, `flotilla rollout status`), then waits until its
//! Service has a ready endpoint and prints the URL to curl. The manifest is
//! compiled in, so the demo works from any directory; the module is the
//! built example, or is built from the source tree this binary came from.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser as _;
use k8s_openapi::api::core::v1::Endpoints;
use kube::api::Api;

/// The example's manifest: a 4-replica Deployment and a NodePort Service.
const MANIFEST: &str = include_str!("../../examples/hello-http/k8s.yaml");
/// The image the manifest names, which the module is pushed as.
const IMAGE: &str = "hello-http:0.1.0";
/// The Deployment and the Service the manifest makes.
const NAME: &str = "hello-http";
/// The Service's nodePort in the manifest; every node serves it.
pub const NODE_PORT: u16 = 30080;
/// The example crate's module, as cargo names it.
const MODULE_FILE: &str = "hello_http.wasm";
/// How long the rollout may take: the first start compiles the module
/// (seconds, more on a loaded machine) before the pods start in
/// milliseconds. Longer means something is wrong, not slow.
const ROLLOUT_TIMEOUT: &str = "5m";
/// How long the Service may go without a ready endpoint once the
/// rollout is complete: one pass of the Endpoints controller.
const ENDPOINTS_TIMEOUT: Duration = Duration::from_secs(60);

/// Deploys the demo through the admin `kubeconfig`; the manifest is left
/// in `data_dir` for the user to edit and apply again.
pub async fn deploy(kubeconfig: &Path, data_dir: &Path, client: &kube::Client) -> Result<()> {
    eprintln!("deploying the demo: examples/hello-http, 4 pods behind NodePort {NODE_PORT}");
    let module = tokio::task::spawn_blocking(module)
        .await
        .context("finding the demo's module")??;
    let manifest = data_dir.join("demo").join("hello-http.yaml");
    std::fs::create_dir_all(data_dir.join("demo"))
        .and_then(|()| std::fs::write(&manifest, MANIFEST))
        .with_context(|| format!("writing {}", manifest.display()))?;
    let kubeconfig = kubeconfig.display().to_string();
    let verbs: [&[&str]; 3] = [
        &["push", &module.display().to_string(), IMAGE],
        &["apply", "-f", &manifest.display().to_string()],
        &[
            "rollout",
            "status",
            &format!("deployment/{NAME}"),
            "--timeout",
            ROLLOUT_TIMEOUT,
        ],
    ];
    for verb in verbs {
        client_verb(verb, &kubeconfig).await?;
    }
    service_has_an_endpoint(client).await?;
    println!("the demo is ready: curl http://127.0.0.1:{NODE_PORT}/");
    Ok(())
}

/// Runs `flotilla <args> --kubeconfig <kubeconfig>` in this process, as
/// the CLI would, after showing it on stderr.
async fn client_verb(args: &[&str], kubeconfig: &str) -> Result<()> {
    eprintln!("$ flotilla {}", args.join(" "));
    let connection = ["--kubeconfig", kubeconfig];
    let line = ["flotilla"].iter().chain(args).chain(&connection);
    let parsed = crate::Cli::try_parse_from(line).context("the demo's own command line")?;
    let crate::Command::Client(verb) = parsed.command else {
        bail!("`flotilla {}` is not a client verb", args.join(" "));
    };
    // The verb has reported its own error, readably, on stderr.
    if crate::cli::run(verb).await != ExitCode::SUCCESS {
        bail!("`flotilla {}` failed", args.join(" "));
    }
    Ok(())
}

/// Waits until the Service lists a ready pod address: from then on a
/// node can route a request to it.
async fn service_has_an_endpoint(client: &kube::Client) -> Result<()> {
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let has_ready_address = |endpoints: Option<&Endpoints>| {
        endpoints
            .and_then(|endpoints| endpoints.subsets.as_ref())
            .is_some_and(|subsets| {
                subsets
                    .iter()
                    .any(|subset| subset.addresses.as_ref().is_some_and(|a| !a.is_empty()))
            })
    };
    let waited = tokio::time::timeout(
        ENDPOINTS_TIMEOUT,
        kube::runtime::wait::await_condition(endpoints, NAME, has_ready_address),
    )
    .await;
    match waited {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(error).context("watching the demo Service's endpoints"),
        Err(_) => bail!(
            "the Service {NAME} had no ready endpoint {}s after its pods were ready",
            ENDPOINTS_TIMEOUT.as_secs()
        ),
    }
}

/// The built example module, or the module built now: the copy built
/// for the tests (`<target>/guests`, see `flotilla_node::guests`), the
/// copy the README's command builds, else a new build of the first.
fn module() -> Result<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target"));
    let release = Path::new(flotilla_node::guests::GUEST_TARGET).join("release");
    let built = [
        target.join("guests").join(&release).join(MODULE_FILE),
        repo.join("examples/target")
            .join(&release)
            .join(MODULE_FILE),
    ];
    if let Some(found) = built.iter().find(|path| path.is_file()) {
        return Ok(found.clone());
    }
    if !repo.join("examples/Cargo.toml").is_file() {
        bail!(
            "the demo's module is built from Flotilla's source tree, which is no longer at {}; \
             build examples/hello-http for wasm32-wasip2 there, or push your own module",
            repo.display()
        );
    }
    eprintln!("building examples/hello-http for wasm32-wasip2 (the first time only)…");
    let guests = flotilla_node::guests::build_examples(repo, &target)?;
    Ok(guests.module(NAME)?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The constants above say what the manifest holds.
    #[test]
    fn the_manifest_is_what_the_demo_expects() {
        let documents: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(MANIFEST)
            .map(|document| serde::Deserialize::deserialize(document).unwrap())
            .collect();
        let deployment = documents
            .iter()
            .find(|d| d["kind"] == "Deployment")
            .unwrap();
        assert_eq!(deployment["metadata"]["name"], NAME);
        assert_eq!(deployment["spec"]["replicas"], 4);
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["image"], IMAGE);
        let service = documents.iter().find(|d| d["kind"] == "Service").unwrap();
        assert_eq!(service["metadata"]["name"], NAME);
        assert_eq!(service["spec"]["type"], "NodePort");
        assert_eq!(service["spec"]["ports"][0]["nodePort"], NODE_PORT);
    }
}
