//! Running an operator for one test or benchmark run: an `activity-operator` binary as a host
//! process, watching only the run's namespace, so runs never share an operator, under the
//! chart's own service account and Role.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::cluster::LocalCluster;
use crate::{repo_root, wait_for};

pub use crate::cluster::OPERATOR_ACCOUNT;

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

/// Applies the Activity CRD to the local cluster ([`LocalCluster::ensure_crd`]).
pub fn ensure_crd() -> anyhow::Result<()> {
    LocalCluster::from_env().ensure_crd()
}

/// Creates the worker service account and Role in `ns` ([`LocalCluster::worker_rbac`]).
pub fn worker_rbac(ns: &str) -> anyhow::Result<()> {
    LocalCluster::from_env().worker_rbac(ns)
}

/// The operator's identity in `ns` on the local cluster ([`LocalCluster::chart_kubeconfig`]).
pub fn chart_kubeconfig(ns: &str) -> anyhow::Result<PathBuf> {
    LocalCluster::from_env().chart_kubeconfig(ns)
}

/// How operators are started: which binary, on which cluster, with which default flags, logging
/// where. Each runs as a host process under the chart's RBAC for its namespace.
#[derive(Clone, Debug)]
pub struct Launcher {
    pub cluster: LocalCluster,
    pub exe: PathBuf,
    /// Flags with their values given unless a start's own arguments give the flag.
    pub defaults: Vec<(String, String)>,
    /// The log is `<log_prefix>-<namespace>.log` in the cluster's `logs/`.
    pub log_prefix: String,
}

impl Launcher {
    /// The tests' launcher: the workspace's debug build on the cluster of `$ACTIVITY_LOCAL_DIR`,
    /// four workers and debug logs of the operator's own modules.
    pub fn for_tests() -> anyhow::Result<Self> {
        let defaults = [("--concurrency", "4"), ("--log-level", "info,activity_operator=debug")];
        Ok(Self {
            cluster: LocalCluster::from_env(),
            exe: workspace_bin("activity-operator")?,
            defaults: defaults.iter().map(|(f, v)| (f.to_string(), v.to_string())).collect(),
            log_prefix: "test-operator".into(),
        })
    }

    /// Starts an operator for `ns` with `args` (a flag among them replaces its default) under the
    /// chart's RBAC, on a free port, and waits until `/readyz` answers.
    pub async fn start(&self, ns: &str, args: &[&str]) -> anyhow::Result<Operator> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let kubeconfig = self.cluster.chart_kubeconfig(ns)?;
        let mut command = vec!["--namespace".to_string(), ns.to_string()];
        command.extend(["--metrics-bind-address".to_string(), format!("127.0.0.1:{port}")]);
        for (flag, value) in self.defaults.iter().filter(|(flag, _)| !args.contains(&flag.as_str())) {
            command.extend([flag.clone(), value.clone()]);
        }
        command.extend(args.iter().map(|a| a.to_string()));
        let log = self.cluster.log_dir().join(format!("{}-{ns}.log", self.log_prefix));
        let child = spawn(&self.exe, &command, &kubeconfig, &log)?;
        let op = Operator {
            child,
            namespace: ns.to_string(),
            metrics_port: port,
            log,
            exe: self.exe.clone(),
            command,
            kubeconfig,
        };
        op.wait_ready().await?;
        Ok(op)
    }
}

/// A running operator scoped to one namespace; killed on drop.
pub struct Operator {
    child: Child,
    pub namespace: String,
    pub metrics_port: u16,
    pub log: PathBuf,
    exe: PathBuf,
    /// The whole command line after the executable, kept across restarts.
    command: Vec<String>,
    kubeconfig: PathBuf,
}

impl Operator {
    /// Starts the operator for `ns` with the tests' launcher and waits until `/readyz` answers.
    pub async fn start(ns: &str) -> anyhow::Result<Self> {
        Self::start_with(ns, &[]).await
    }

    /// Starts the operator for `ns` with `args`; a flag among them replaces its test default.
    pub async fn start_with(ns: &str, args: &[&str]) -> anyhow::Result<Self> {
        Launcher::for_tests()?.start(ns, args).await
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        wait_for(Duration::from_secs(30), "operator /readyz", || async {
            Ok(self.get("/readyz").await.ok().filter(|b| b.trim() == "ok").map(|_| ()))
        })
        .await
    }

    /// Stops the operator (SIGKILL: like a crash) and starts a new one on the same port.
    pub async fn restart(mut self) -> anyhow::Result<Self> {
        self.relaunch().await?;
        Ok(self)
    }

    /// Stops the operator (SIGKILL: like a crash), starts it again on the same port with the same
    /// command line and identity, and waits until `/readyz` answers.
    pub async fn relaunch(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.child = spawn(&self.exe, &self.command, &self.kubeconfig, &self.log)?;
        self.wait_ready().await
    }

    /// Kills the operator and waits for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The operator's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
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
        let status = Command::new("kill").args([which, &self.pid().to_string()]).status()?;
        if !status.success() {
            bail!("kill {which} {}: {status}", self.pid());
        }
        Ok(())
    }

    /// The operator's established TCP connections to `port` on 127.0.0.1 (from /proc: its socket
    /// file descriptors, looked up in the kernel's TCP tables).
    pub fn connections_to(&self, port: u16) -> anyhow::Result<usize> {
        let pid = self.pid();
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

    /// `VmRSS` and `VmHWM` (peak) of the operator process, KiB.
    pub fn rss_kib(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let field = |key: &str| -> anyhow::Result<u64> {
            let line = status.lines().find(|l| l.starts_with(key)).with_context(|| format!("no {key}"))?;
            Ok(line.split_whitespace().nth(1).context("malformed")?.parse()?)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// CPU seconds (user + system) the operator process used so far.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        cpu_seconds(self.pid())
    }

    /// GET on the operator's HTTP port.
    pub async fn get(&self, path: &str) -> anyhow::Result<String> {
        http_get(self.metrics_port, path).await
    }

    /// The sum of a counter family (e.g. `activity_operator_api_writes_total`) in `/metrics`.
    pub async fn counter(&self, name: &str) -> anyhow::Result<f64> {
        Ok(self.counters(name).await?.values().sum())
    }

    /// The samples of a counter family in `/metrics`, by their label set (`{kind="pod"}`; `""`
    /// for none).
    pub async fn counters(&self, name: &str) -> anyhow::Result<HashMap<String, f64>> {
        let text = self.get("/metrics").await?;
        let mut out = HashMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(name) else { continue };
            if !rest.starts_with(['{', ' ']) {
                continue;
            }
            let (labels, value) = rest.rsplit_once(' ').context("malformed metrics line")?;
            out.insert(labels.trim().to_string(), value.parse::<f64>()?);
        }
        Ok(out)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `exe COMMAND` as `KUBECONFIG`'s user, its output appended to `log`.
fn spawn(exe: &Path, command: &[String], kubeconfig: &Path, log: &Path) -> anyhow::Result<Child> {
    std::fs::create_dir_all(log.parent().unwrap_or(Path::new(".")))?;
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    Command::new(exe)
        .args(command)
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))
}

/// CPU seconds (user + system) of a process, from /proc/<pid>/stat.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(") ").context("malformed stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: [0]=state ... [11]=utime [12]=stime, in clock ticks (100 Hz on Linux).
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    Ok(ticks / 100.0)
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
