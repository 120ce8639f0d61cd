//! Running the operator for one test: the workspace's `activity-operator` binary as a host
//! process, watching only the test's namespace, so tests never share an operator, under the
//! chart's own service account and Role.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::{kubectl, local_dir, repo_root, wait_for};

/// Directory of the workspace's own debug binaries (`activity-operator`, `activity-worker`), the
/// ones the process node runs too: `$ACTIVITY_BIN_DIR`, else `$CARGO_TARGET_DIR/debug`, else
/// `<repo>/target/debug`.
pub fn workspace_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ACTIVITY_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
    let target = if target.is_absolute() { target } else { repo_root().join(target) };
    target.join("debug")
}

/// Path of one of the workspace's binaries; an error says how to build it when missing.
pub fn workspace_bin(name: &str) -> anyhow::Result<PathBuf> {
    let dir = workspace_bin_dir();
    let path = dir.join(name);
    if !path.exists() {
        bail!("{} does not exist: run `cargo build --workspace --bins` first", path.display());
    }
    Ok(path)
}

/// Applies the Activity CRD (server-side apply: idempotent and safe from parallel tests).
pub fn ensure_crd() -> anyhow::Result<()> {
    kubectl(&["apply", "--server-side", "--field-manager=activity-tests", "-f", "crds/activity.yaml"])?;
    kubectl(&["wait", "--for=condition=Established", "crd/activities.heartbeat.dev", "--timeout=60s"])?;
    Ok(())
}

/// Creates the worker service account and Role in `ns` (as the chart does for served namespaces).
pub fn worker_rbac(ns: &str) -> anyhow::Result<()> {
    kubectl(&["apply", "-n", ns, "-f", "worker-image/rbac/worker-role.yaml"])?;
    Ok(())
}

/// Service account of the operator, as the chart names it for release `activity-operator`.
pub const OPERATOR_ACCOUNT: &str = "activity-operator";

/// The operator's identity in `ns` exactly as the chart installs it: the chart's service account,
/// Role and RoleBinding (rendered with `watchNamespaces={ns}`) applied in `ns`, and a kubeconfig
/// that authenticates with a token of that account. Tests run the operator with it, so a call the
/// chart's RBAC does not allow fails in the tests as it would for users.
pub fn chart_kubeconfig(ns: &str) -> anyhow::Result<PathBuf> {
    let rendered = crate::tool(
        "helm",
        &[
            "template",
            "activity-operator",
            "charts/activity-operator",
            "--namespace",
            ns,
            "--set",
            &format!("watchNamespaces={{{ns}}}"),
            "--set",
            "leaderElection.enabled=false",
            "--set",
            "replicaCount=1",
            "--show-only",
            "templates/serviceaccount.yaml",
            "--show-only",
            "templates/rbac.yaml",
        ],
    )?;
    if !rendered.status.success() {
        bail!("helm template: {}", String::from_utf8_lossy(&rendered.stderr));
    }
    let manifest = crate::TempFile::write("chart-rbac", &String::from_utf8_lossy(&rendered.stdout))?;
    kubectl(&["apply", "-n", ns, "-f", manifest.path()?])?;
    let token = kubectl(&["create", "token", OPERATOR_ACCOUNT, "-n", ns, "--duration=4h"])?;
    let admin: serde_json::Value =
        serde_json::from_str(&kubectl(&["config", "view", "--raw", "--minify", "-o", "json"])?)?;
    let cluster = admin["clusters"][0]["cluster"].clone();
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "operator",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": "operator", "user": {"token": token.trim()}}],
        "contexts": [{"name": "operator", "context": {"cluster": "local", "user": "operator", "namespace": ns}}],
    });
    let path = local_dir().join("logs").join(format!("test-operator-{ns}.kubeconfig"));
    std::fs::create_dir_all(local_dir().join("logs"))?;
    std::fs::write(&path, serde_json::to_vec_pretty(&kubeconfig)?)?;
    Ok(path)
}

/// A running operator scoped to one namespace; killed on drop.
pub struct Operator {
    child: Child,
    pub namespace: String,
    pub metrics_port: u16,
    pub log: PathBuf,
    /// Arguments beyond the defaults (a flag given here replaces its default), kept across restarts.
    args: Vec<String>,
}

impl Operator {
    /// Starts the operator for `ns` and waits until `/readyz` answers.
    pub async fn start(ns: &str) -> anyhow::Result<Self> {
        Self::start_with(ns, &[]).await
    }

    /// Starts the operator for `ns` with `args`; a flag among them replaces its test default.
    pub async fn start_with(ns: &str, args: &[&str]) -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        Self::start_on(ns, port, args.iter().map(|a| a.to_string()).collect()).await
    }

    async fn start_on(ns: &str, port: u16, args: Vec<String>) -> anyhow::Result<Self> {
        let exe = workspace_bin("activity-operator")?;
        let logs = local_dir().join("logs");
        std::fs::create_dir_all(&logs)?;
        let log = logs.join(format!("test-operator-{ns}.log"));
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let kubeconfig = chart_kubeconfig(ns)?;
        let child = Command::new(&exe)
            .args(["--namespace", ns, "--metrics-bind-address", &format!("127.0.0.1:{port}")])
            .args(
                [["--concurrency", "4"], ["--log-level", "info,activity_operator=debug"]]
                    .iter()
                    .filter(|[flag, _]| !args.iter().any(|a| a == flag))
                    .flatten(),
            )
            .args(&args)
            .env("KUBECONFIG", kubeconfig)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let op = Operator { child, namespace: ns.to_string(), metrics_port: port, log, args };
        wait_for(Duration::from_secs(30), "operator /readyz", || async {
            Ok(op.get("/readyz").await.ok().filter(|b| b.trim() == "ok").map(|_| ()))
        })
        .await?;
        Ok(op)
    }

    /// Stops the operator (SIGKILL: like a crash) and starts a new one on the same port.
    pub async fn restart(mut self) -> anyhow::Result<Self> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (ns, port, args) = (self.namespace.clone(), self.metrics_port, std::mem::take(&mut self.args));
        drop(self);
        Self::start_on(&ns, port, args).await
    }

    /// Kills the operator and waits for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Freezes the operator (SIGSTOP): its timers and watches stand still while the API server
    /// goes on, as when the operator is starved of CPU or its watch lags.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal("-STOP")
    }

    /// Lets a paused operator go on (SIGCONT).
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, which: &str) -> anyhow::Result<()> {
        let status = Command::new("kill").args([which, &self.child.id().to_string()]).status()?;
        if !status.success() {
            bail!("kill {which} {}: {status}", self.child.id());
        }
        Ok(())
    }

    /// The operator's established TCP connections to `port` on 127.0.0.1 (from /proc: its socket
    /// file descriptors, looked up in the kernel's TCP tables).
    pub fn connections_to(&self, port: u16) -> anyhow::Result<usize> {
        let pid = self.child.id();
        let mut inodes = std::collections::HashSet::new();
        for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
            let target = std::fs::read_link(fd?.path()).unwrap_or_default();
            if let Some(inode) = target.to_str().and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']')) {
                inodes.insert(inode.to_string());
            }
        }
        let mut n = 0;
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
                // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
                let f: Vec<&str> = line.split_whitespace().collect();
                let (Some(remote), Some(state), Some(inode)) = (f.get(2), f.get(3), f.get(9)) else { continue };
                let remote_port = remote.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
                if *state == "01" && remote_port == Some(port) && inodes.contains(*inode) {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// GET on the operator's HTTP port.
    pub async fn get(&self, path: &str) -> anyhow::Result<String> {
        http_get(self.metrics_port, path).await
    }

    /// The sum of a counter family (e.g. `activity_operator_api_writes_total`) in `/metrics`.
    pub async fn counter(&self, name: &str) -> anyhow::Result<f64> {
        let text = self.get("/metrics").await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A plain HTTP/1.1 GET to `127.0.0.1:port` (the operator's metrics and health endpoints); the body
/// of a 200 response, an error otherwise.
pub async fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").context("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {head}");
    }
    Ok(body.to_string())
}
