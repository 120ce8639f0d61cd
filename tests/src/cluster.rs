//! A local cluster as `deploy/local/cluster.sh up` leaves it in its state directory: the admin
//! kubeconfig, the upstream tools it was started with (`bin-dir`), and `logs/`. The tests use the
//! one of `$ACTIVITY_LOCAL_DIR` ([`LocalCluster::from_env`]); the benchmark the one of its
//! kubeconfig. What every test and bench run puts on a cluster first (the CRD, the worker's RBAC,
//! the operator's identity under the chart's RBAC) is written here once.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Service account of the operator, as the chart names it for release `activity-operator`.
pub const OPERATOR_ACCOUNT: &str = "activity-operator";

/// The state directory of a cluster started by `deploy/local/cluster.sh`.
#[derive(Clone, Debug)]
pub struct LocalCluster {
    dir: PathBuf,
}

impl LocalCluster {
    /// The cluster of `$ACTIVITY_LOCAL_DIR` (see [`crate::local_dir`]).
    pub fn from_env() -> Self {
        Self { dir: crate::local_dir() }
    }

    /// The cluster whose admin kubeconfig is `path` (`cluster.sh` writes it into the state dir).
    pub fn of_kubeconfig(path: &Path) -> Self {
        Self { dir: path.parent().unwrap_or(Path::new(".")).to_path_buf() }
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// Where the cluster's logs go, and the logs and kubeconfigs of the operators run on it.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// Directory with the upstream binaries (kubectl, helm, ...), recorded by `cluster.sh up`.
    pub fn bin_dir(&self) -> anyhow::Result<PathBuf> {
        let file = self.dir.join("bin-dir");
        let dir = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {} (is the local cluster up? run `make cluster`)", file.display()))?;
        Ok(PathBuf::from(dir.trim()))
    }

    /// An admin client.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let path = self.kubeconfig();
        let kubeconfig = Kubeconfig::read_from(&path)
            .with_context(|| format!("reading {} (is the local cluster up? run `make cluster`)", path.display()))?;
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }

    /// Runs an upstream tool from the pinned bin dir (`kubectl`, `helm`) against this cluster,
    /// in the repository root.
    pub fn tool(&self, name: &str, args: &[&str]) -> anyhow::Result<Output> {
        let exe = self.bin_dir()?.join(name);
        Command::new(&exe)
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .current_dir(crate::repo_root())
            .output()
            .with_context(|| format!("running {}", exe.display()))
    }

    /// Runs `kubectl ARGS` and returns stdout, failing with stderr when it exits non-zero.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.succeeding("kubectl", args)
    }

    /// Runs `helm ARGS` and returns stdout, failing with stderr when it exits non-zero.
    pub fn helm(&self, args: &[&str]) -> anyhow::Result<String> {
        self.succeeding("helm", args)
    }

    fn succeeding(&self, tool: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = self.tool(tool, args)?;
        if !out.status.success() {
            bail!("{tool} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Applies the Activity CRD and waits until it is Established (server-side apply under one
    /// field manager: idempotent, and safe from tests applying it at the same time).
    pub fn ensure_crd(&self) -> anyhow::Result<()> {
        self.kubectl(&["apply", "--server-side", "--field-manager=activity-tests", "-f", "crds/activity.yaml"])?;
        // On a fresh cluster `kubectl wait` can fail at once, before the new CRD has any status
        // condition ("accessor error"), instead of waiting: retried until the deadline.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match self.kubectl(&[
                "wait",
                "--for=condition=Established",
                "crd/activities.heartbeat.dev",
                "--timeout=60s",
            ]) {
                Ok(_) => return Ok(()),
                Err(e) if std::time::Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(500)),
            }
        }
    }

    /// Creates the worker service account and Role in `ns` (as the chart does for served namespaces).
    pub fn worker_rbac(&self, ns: &str) -> anyhow::Result<()> {
        self.kubectl(&["apply", "-n", ns, "-f", "worker-image/rbac/worker-role.yaml"])?;
        Ok(())
    }

    /// The chart as release `release` in namespace `ns`, watching `ns`, rendered for this
    /// cluster's version (the chart may require one newer than helm assumes without a cluster);
    /// `args` go to `helm template` after those.
    pub fn render_chart(&self, release: &str, ns: &str, args: &[&str]) -> anyhow::Result<String> {
        let version: serde_json::Value = serde_json::from_str(&self.kubectl(&["version", "-o", "json"])?)?;
        let version = version["serverVersion"]["gitVersion"].as_str().context("no server version")?.to_string();
        let watch = format!("watchNamespaces={{{ns}}}");
        let mut all =
            vec!["template", release, "charts/activity-operator", "--kube-version", &version, "--namespace", ns];
        all.extend(["--set", watch.as_str()]);
        all.extend_from_slice(args);
        self.helm(&all)
    }

    /// The operator's identity in `ns` exactly as the chart installs it: the chart's service
    /// account, Role and RoleBinding (rendered with `watchNamespaces={ns}`) applied in `ns`, and a
    /// kubeconfig that authenticates with a token of that account. Operators run with it, so a
    /// call the chart's RBAC does not allow fails here as it would for users.
    pub fn chart_kubeconfig(&self, ns: &str) -> anyhow::Result<PathBuf> {
        let rendered = self.render_chart(
            "activity-operator",
            ns,
            &[
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
        let manifest = crate::TempFile::write("chart-rbac", &rendered)?;
        self.kubectl(&["apply", "-n", ns, "-f", manifest.path()?])?;
        let token = self.kubectl(&["create", "token", OPERATOR_ACCOUNT, "-n", ns, "--duration=4h"])?;
        let admin: serde_json::Value =
            serde_json::from_str(&self.kubectl(&["config", "view", "--raw", "--minify", "-o", "json"])?)?;
        let cluster = admin["clusters"][0]["cluster"].clone();
        let kubeconfig = serde_json::json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "operator",
            "clusters": [{"name": "local", "cluster": cluster}],
            "users": [{"name": "operator", "user": {"token": token.trim()}}],
            "contexts": [{"name": "operator", "context": {"cluster": "local", "user": "operator", "namespace": ns}}],
        });
        std::fs::create_dir_all(self.log_dir())?;
        let path = self.log_dir().join(format!("test-operator-{ns}.kubeconfig"));
        std::fs::write(&path, serde_json::to_vec_pretty(&kubeconfig)?)?;
        Ok(path)
    }
}
