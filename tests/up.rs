//! `flotilla up --demo` as a newcomer runs it: the built binary starts a
//! whole cluster in one process and deploys `examples/hello-http`; kubectl
//! 1.37 sees its 4 pods Running, and the NodePort answers on
//! 127.0.0.1:30080. Ctrl-C (SIGINT) stops it cleanly, and `flotilla up`
//! on the same data directory resumes the same cluster.
//!
//! The nodePort is fixed by the manifest, so this is the one test that
//! runs `up --demo`. Every wait follows a line the process prints, bounded
//! by `WAIT`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../control/tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Bound on any one wait: generous for a loaded 2-core machine, where the
/// first start compiles the module.
const WAIT: Duration = Duration::from_secs(240);
/// How long the NodePort may refuse connections once the demo is ready:
/// the agent's listener follows the Service in another process, and
/// nothing the test can watch says when it is bound.
const NODE_PORT_WAIT: Duration = Duration::from_secs(30);
const NODE_PORT_RETRY: Duration = Duration::from_millis(200);
/// The demo's nodePort, from `examples/hello-http/k8s.yaml`.
const NODE_PORT: u16 = 30080;

/// A running `flotilla up`, whose stdout and stderr lines the test can wait
/// for; killed when dropped.
struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
}

impl Up {
    fn spawn(args: &[&str], log: PathBuf) -> Up {
        let mut child = Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .arg("up")
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let file = Arc::new(Mutex::new(std::fs::File::create(&log).unwrap()));
        let (send, lines) = mpsc::channel();
        let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [stdout, stderr] {
            let (file, send) = (file.clone(), send.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = writeln!(file.lock().unwrap(), "{line}");
                    let _ = send.send(line);
                }
            });
        }
        Up { child, lines, log }
    }

    /// Waits for a line containing `needle`.
    fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return,
                Ok(_) => {}
                Err(_) => panic!(
                    "`flotilla up` never printed {needle:?}; its output ({}):\n{}",
                    self.log.display(),
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ),
            }
        }
    }

    /// Ctrl-C, then waits until it has stopped and checks it exited well.
    fn interrupt(&mut self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("`kill` (procps or util-linux) is needed to send SIGINT");
        assert!(status.success());
        self.wait_for("flotilla stopped");
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "`flotilla up` exited with {exit}");
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_tcp() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let output = Command::new(support::kubectl())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(kubeconfig.with_file_name("kube-cache"))
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "kubectl {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// What curl would print for `GET http://127.0.0.1:<port>/`: the status
/// line and the body of a plain HTTP/1.1 exchange.
fn http_get(port: u16) -> std::io::Result<String> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// The NodePort's answer once it is a 200, retried only while the node
/// has not bound it yet (see `NODE_PORT_WAIT`).
fn node_port_answer() -> String {
    let deadline = Instant::now() + NODE_PORT_WAIT;
    loop {
        let answer = http_get(NODE_PORT);
        match &answer {
            Ok(response) if response.starts_with("HTTP/1.1 200") => return response.clone(),
            _ if Instant::now() < deadline => std::thread::sleep(NODE_PORT_RETRY),
            _ => panic!("GET http://127.0.0.1:{NODE_PORT}/ never answered 200: {answer:?}"),
        }
    }
}

#[test]
fn up_demo_serves_hello_http_and_resumes_after_ctrl_c() {
    // The module `up --demo` looks for first, built as the other tests
    // build it, so the deadline below covers the cluster and not cargo.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target"));
    flotilla_node::guests::build_examples(repo, &target).unwrap_or_else(|error| panic!("{error}"));
    let root = tempfile::tempdir().unwrap();
    let data_dir = root.path().join("data");
    let data = data_dir.display().to_string();
    let api = free_tcp().to_string();
    let args = ["--data-dir", &data, "--api-listen", &api];
    let kubeconfig = data_dir.join("kubeconfig");

    let mut up = Up::spawn(
        &[&["--demo"][..], &args].concat(),
        root.path().join("up-1.log"),
    );
    up.wait_for("the demo is ready: curl http://127.0.0.1:30080/");
    let pods = kubectl(&kubeconfig, &["get", "pods", "-l", "app=hello-http"]);
    let running = pods
        .lines()
        .filter(|line| line.contains(" Running "))
        .count();
    assert_eq!(running, 4, "{pods}");
    let answer = node_port_answer();
    assert!(answer.contains("hello, flotilla!"), "{answer}");
    up.interrupt();

    // The same data directory: the same cluster, the Deployment kept.
    let mut up = Up::spawn(&args, root.path().join("up-2.log"));
    up.wait_for("flotilla is up");
    let replicas = kubectl(
        &kubeconfig,
        &[
            "get",
            "deployment",
            "hello-http",
            "-o",
            "jsonpath={.spec.replicas}",
        ],
    );
    assert_eq!(replicas, "4");
    up.interrupt();
}
