//! The HTTP side of the node benchmark: a loopback listener that hands each
//! request to the node runtime (as an agent's NodePort listener will),
//! `wasmtime serve` as the peer, and `hey` as the one load generator both
//! are measured with.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use flotilla_node::{NodeRuntime, ResponseBody};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::node_pods::SERVICE_PORT;

/// How long `wasmtime serve` may take to compile the module and listen.
const PEER_READY_TIMEOUT: Duration = Duration::from_secs(300);
/// Pause between readiness polls of the peer.
const PEER_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Largest response body the readiness check reads, in bytes.
const CHECK_BODY_BYTES_MAX: usize = 64 * 1024;

/// The peer and load-generator tools, found on `PATH`.
pub struct Tools {
    pub hey: PathBuf,
    pub wasmtime: PathBuf,
    pub wasmtime_version: String,
}

impl Tools {
    /// Finds `hey` and `wasmtime`, or says how to install them.
    pub fn find() -> Result<Self> {
        let hey = find_on_path("hey").context(
            "`hey` (the load generator) is not on PATH; install it with `apt-get install hey`",
        )?;
        let wasmtime = find_on_path("wasmtime").context(
            "`wasmtime` (the peer) is not on PATH; install it with \
             `cargo install wasmtime-cli --version 48.0.8 --locked`",
        )?;
        let output = Command::new(&wasmtime)
            .arg("--version")
            .output()
            .context("running `wasmtime --version`")?;
        let wasmtime_version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        Ok(Self {
            hey,
            wasmtime,
            wasmtime_version,
        })
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A TCP listener on loopback that serves every request from one pod's
/// service through [`NodeRuntime::serve_http`]. Stops when dropped.
pub struct PodListener {
    pub address: SocketAddr,
    accept_loop: JoinHandle<()>,
}

impl PodListener {
    pub async fn start(runtime: NodeRuntime, uid: String) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let accept_loop = tokio::spawn(async move {
            loop {
                let (stream, _) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        continue;
                    }
                };
                // As `wasmtime serve` does: small responses go out at once
                // instead of waiting on Nagle's algorithm.
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::warn!(%error, "cannot set TCP_NODELAY");
                }
                tokio::spawn(serve_connection(stream, runtime.clone(), uid.clone()));
            }
        });
        Ok(Self {
            address,
            accept_loop,
        })
    }
}

impl Drop for PodListener {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

/// One HTTP/1.1 connection, kept alive as long as the client wants, as
/// `wasmtime serve` does.
async fn serve_connection(stream: TcpStream, runtime: NodeRuntime, uid: String) {
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let runtime = runtime.clone();
        let uid = uid.clone();
        async move { Ok::<_, Infallible>(forward(&runtime, &uid, request).await) }
    });
    if let Err(error) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%error, "connection ended with an error");
    }
}

async fn forward(
    runtime: &NodeRuntime,
    uid: &str,
    request: hyper::Request<Incoming>,
) -> http::Response<ResponseBody> {
    let request = request.map(flotilla_node::request_body);
    match runtime.serve_http(uid, SERVICE_PORT, request).await {
        Ok(response) => response,
        Err(error) => {
            let body = Full::new(Bytes::from(format!("{error}\n")))
                .map_err(|never| match never {})
                .boxed_unsync();
            let mut response = http::Response::new(body);
            *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            response
        }
    }
}

/// `GET path` over a fresh TCP connection: the status and the body.
pub async fn http_get(address: SocketAddr, path: &str) -> Result<(u16, Bytes)> {
    let stream = TcpStream::connect(address).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let connection = tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, address.to_string())
        .body(Full::new(Bytes::new()))?;
    let response = sender.send_request(request).await?;
    let code = response.status().as_u16();
    let body = http_body_util::Limited::new(response.into_body(), CHECK_BODY_BYTES_MAX)
        .collect()
        .await
        .map_err(|error| anyhow::anyhow!("reading the body: {error}"))?
        .to_bytes();
    connection.abort();
    Ok((code, body))
}

/// `wasmtime serve` of a module on a loopback port, with the pooling
/// allocator and the environment the pod gets. Killed when dropped.
pub struct WasmtimeServe {
    pub address: SocketAddr,
    child: Child,
}

impl WasmtimeServe {
    pub async fn start(
        wasmtime: &Path,
        module: &Path,
        env: &[(String, String)],
        log: &Path,
    ) -> Result<Self> {
        let address = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let mut command = Command::new(wasmtime);
        command
            .arg("serve")
            .args(["-O", "pooling-allocator=y"])
            // The guest reads its environment through wasi:cli.
            .args(["-S", "cli=y"])
            .arg(format!("--addr={address}"));
        for (name, value) in env {
            command.arg(format!("--env={name}={value}"));
        }
        let log_file = std::fs::File::create(log)?;
        let child = command
            .arg(module)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .context("starting `wasmtime serve`")?;
        let mut serve = Self { address, child };
        serve.wait_ready(log).await?;
        Ok(serve)
    }

    async fn wait_ready(&mut self, log: &Path) -> Result<()> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("`wasmtime serve` exited ({status}); see {}", log.display());
            }
            if let Ok((200, _)) = http_get(self.address, "/").await {
                return Ok(());
            }
            if started.elapsed() > PEER_READY_TIMEOUT {
                bail!(
                    "`wasmtime serve` did not answer within {PEER_READY_TIMEOUT:?}; see {}",
                    log.display()
                );
            }
            tokio::time::sleep(PEER_POLL_INTERVAL).await;
        }
    }
}

impl Drop for WasmtimeServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one `hey` run measured.
#[derive(Debug, Clone)]
pub struct HeyResult {
    pub requests_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    /// Responses with status 200.
    pub ok: u64,
    /// Responses with another status, and requests that failed.
    pub failed: u64,
}

/// Runs `hey` against `address` for `duration` with `connections`
/// concurrent keep-alive connections.
pub async fn run_hey(
    hey: &Path,
    address: SocketAddr,
    connections: usize,
    duration: Duration,
) -> Result<HeyResult> {
    let output = tokio::process::Command::new(hey)
        .arg(format!("-z={}s", duration.as_secs()))
        .arg(format!("-c={connections}"))
        .arg(format!("http://{address}/"))
        .output()
        .await
        .context("running hey")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "hey failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_hey(&text).with_context(|| format!("cannot read hey's summary:\n{text}"))
}

/// Reads hey's text summary: `Requests/sec:`, the latency distribution
/// (`50% in 0.0004 secs`), and the status-code and error distributions.
fn parse_hey(text: &str) -> Result<HeyResult> {
    let mut requests_per_sec = None;
    let mut p50_us = None;
    let mut p99_us = None;
    let mut ok = 0;
    let mut failed = 0;
    let mut in_errors = false;
    for line in text.lines().map(str::trim) {
        if let Some(rate) = line.strip_prefix("Requests/sec:") {
            requests_per_sec = Some(rate.trim().parse::<f64>()?);
        } else if let Some(rest) = line.strip_prefix("50% in ") {
            p50_us = Some(seconds_to_us(rest)?);
        } else if let Some(rest) = line.strip_prefix("99% in ") {
            p99_us = Some(seconds_to_us(rest)?);
        } else if line.starts_with("Error distribution") {
            in_errors = true;
        } else if let Some(rest) = line.strip_prefix('[') {
            let (code, count) = rest.split_once(']').context("a bracketed count")?;
            let count: u64 = count
                .split_whitespace()
                .next()
                .context("a count")?
                .parse()?;
            if !in_errors && code == "200" {
                ok += count;
            } else {
                failed += count;
            }
        }
    }
    Ok(HeyResult {
        requests_per_sec: requests_per_sec.context("no Requests/sec")?,
        p50_us: p50_us.context("no 50% latency")?,
        p99_us: p99_us.context("no 99% latency")?,
        ok,
        failed,
    })
}

fn seconds_to_us(text: &str) -> Result<u64> {
    let seconds: f64 = text
        .split_whitespace()
        .next()
        .context("a latency")?
        .parse()?;
    Ok((seconds * 1_000_000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_heys_summary() {
        let text = "\nSummary:\n  Total:\t10.0010 secs\n  Requests/sec:\t4321.1234\n\n\
            Latency distribution:\n  10% in 0.0001 secs\n  50% in 0.0002 secs\n  \
            99% in 0.0125 secs\n\nStatus code distribution:\n  [200]\t43000 responses\n  \
            [503]\t12 responses\n\nError distribution:\n  [3]\tGet \"http://x/\": EOF\n";
        let result = parse_hey(text).unwrap_or_else(|error| panic!("{error:#}"));
        assert_eq!(result.requests_per_sec, 4321.1234);
        assert_eq!((result.p50_us, result.p99_us), (200, 12_500));
        assert_eq!((result.ok, result.failed), (43_000, 15));
    }
}
