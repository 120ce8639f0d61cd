//! Helpers shared by the integration tests and the benchmark (`tests/bench`): a client for the
//! local cluster, a namespace per test, a bounded poll and waits on an Activity's phase, the
//! upstream `kubectl`/`helm` built by `deploy/local/build-binaries.sh`, the CRD and RBAC every run
//! needs ([`cluster`]) and an operator of its own ([`operator`]).
//!
//! The tests expect a running local cluster (`make cluster`, which `make test` starts itself).

pub mod cluster;
pub mod operator;
pub mod realnode;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use activity_crds::Phase;
use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub use cluster::LocalCluster;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

/// The running local cluster's state directory: `$ACTIVITY_LOCAL_DIR` as for
/// `deploy/local/cluster.sh` (a relative path is taken from the repository root), else `.local/`
/// of the repository.
pub fn local_dir() -> PathBuf {
    match std::env::var_os("ACTIVITY_LOCAL_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => repo_root().join(dir),
        None => repo_root().join(".local"),
    }
}

/// Path of the admin kubeconfig written by `deploy/local/cluster.sh up`.
pub fn kubeconfig_path() -> PathBuf {
    LocalCluster::from_env().kubeconfig()
}

/// Directory with the upstream binaries (kubectl, helm, ...), recorded by `cluster.sh up`.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    LocalCluster::from_env().bin_dir()
}

/// An admin client for the local cluster.
pub async fn client() -> anyhow::Result<Client> {
    LocalCluster::from_env().client().await
}

/// The local API server's port, from the kubeconfig (as kube parses its server URL).
pub async fn apiserver_port() -> anyhow::Result<u16> {
    let config =
        Config::from_custom_kubeconfig(Kubeconfig::read_from(kubeconfig_path())?, &KubeConfigOptions::default())
            .await?;
    config.cluster_url.port_u16().with_context(|| format!("no port in {}", config.cluster_url))
}

/// Runs an upstream tool from the pinned bin dir (`kubectl`, `helm`) against the local cluster.
pub fn tool(name: &str, args: &[&str]) -> anyhow::Result<Output> {
    LocalCluster::from_env().tool(name, args)
}

/// Runs `kubectl ARGS` and returns stdout, failing with stderr when it exits non-zero.
pub fn kubectl(args: &[&str]) -> anyhow::Result<String> {
    LocalCluster::from_env().kubectl(args)
}

/// Runs `helm ARGS` and returns stdout, failing with stderr when it exits non-zero.
pub fn helm(args: &[&str]) -> anyhow::Result<String> {
    LocalCluster::from_env().helm(args)
}

/// Polls `probe` every 100 ms until it returns `Some`, for at most `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last_err = None;
    loop {
        match probe().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() > timeout {
            match last_err {
                Some(e) => {
                    bail!("timed out after {timeout:?} waiting for {what}; last error: {e:#}")
                }
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until Activity `name` (read through `acts`: typed, or a `DynamicObject`) is in `phase`,
/// at most `timeout`; fails at once when it has ended in another phase.
pub async fn wait_phase<K>(acts: &Api<K>, name: &str, phase: Phase, timeout: Duration) -> anyhow::Result<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
{
    wait_for(timeout, &format!("activity {name} {}", phase.as_str()), || async {
        let obj = acts.get(name).await?;
        let status = serde_json::to_value(&obj)?["status"].take();
        let current: Option<Phase> = serde_json::from_value(status["phase"].clone()).ok();
        if current == Some(phase) {
            return Ok(Some(obj));
        }
        if let Some(ended) = current.filter(|p| p.is_terminal()) {
            bail!("activity {name} ended {}, not {}: {status}", ended.as_str(), phase.as_str());
        }
        Ok(None)
    })
    .await
}

/// A namespace of its own for one test. Call [`TestNs::delete`] at the end of a passing test; a
/// failing test leaves its namespace behind for inspection.
pub struct TestNs {
    pub name: String,
    pub client: Client,
}

impl TestNs {
    /// Creates a namespace named `<prefix>-<random>`, labelled `activity-tests=true`.
    pub async fn new(prefix: &str) -> anyhow::Result<Self> {
        Self::create(client().await?, prefix, "activity-tests").await
    }

    /// Creates a namespace named `<prefix>-<random>` with `client`, labelled `<label>=true`, and
    /// waits for its `default` service account.
    pub async fn create(client: Client, prefix: &str, label: &str) -> anyhow::Result<Self> {
        let name = format!("{prefix}-{:06x}", rand::random::<u32>() & 0xff_ffff);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {label: "true"}}
        }))?;
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await?;
        // The service account controller creates `default` shortly after; pods need it.
        let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), &name);
        wait_for(Duration::from_secs(30), "default service account", || async { Ok(sa.get_opt("default").await?) })
            .await?;
        Ok(Self { name, client })
    }

    /// A namespaced API in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Deletes the namespace (background; the cluster's namespace controller finishes it).
    pub async fn delete(self) -> anyhow::Result<()> {
        Api::<Namespace>::all(self.client).delete(&self.name, &DeleteParams::background()).await?;
        Ok(())
    }
}

/// A YAML file of its own under the system temp dir (for `kubectl -f`/`helm -f`), removed on drop.
pub struct TempFile(PathBuf);

impl TempFile {
    pub fn write(prefix: &str, content: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("{prefix}-{:08x}.yaml", rand::random::<u32>()));
        std::fs::write(&path, content)?;
        Ok(Self(path))
    }

    pub fn path(&self) -> anyhow::Result<&str> {
        self.0.to_str().context("temp file path is not UTF-8")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
