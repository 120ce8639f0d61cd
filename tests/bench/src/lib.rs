//! Benchmarks of the operator on a local control plane, side by side with the Job controller of
//! the same cluster (`kube-controller-manager`). Each scenario run gets its own namespace and its
//! own operator process (`activity-operator --namespace <ns>`, started as the tests start theirs:
//! `activity_tests::operator::Launcher`, under the chart's RBAC), so runs never share an operator
//! or objects. The cluster is the one of the kubeconfig given (`KUBECONFIG`), in the state
//! directory `deploy/local/cluster.sh` made for it.
//!
//! Scenarios (see `docs/benchmarks.md` for the numbers and how to read them):
//! - `deadline`: activities whose workers never heartbeat, from each deadline to the watch showing
//!   `TimedOut`; Jobs with `activeDeadlineSeconds`, from `startTime + activeDeadlineSeconds` to the
//!   watch showing `FailureTarget`/`Failed` with reason `DeadlineExceeded`.
//! - `throughput`: N trivial activities (and N trivial Jobs) created at once: time until every
//!   pod exists and until every one succeeded.
//! - `writes`: the operator's API writes per attempt and per heartbeat (from its `/metrics`),
//!   heartbeat PATCH latency, the operator's RSS idle and with N live activities.
//!
//! Every scenario checks correctness (each object ends in the expected state) and fails otherwise;
//! the `--quick` sizes are what the smoke test (`tests/quick.rs`) runs.

pub mod load;
pub mod scenarios;
pub mod workers;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use activity_tests::operator::Launcher;
use activity_tests::{LocalCluster, TestNs};
use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Client, Config, Resource, ResourceExt};

pub use activity_tests::operator::{Operator, cpu_seconds};

/// The repository root.
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

/// Directory of the operator binary the benchmark runs: the workspace's debug build that the
/// process node runs too (`$ACTIVITY_BIN_DIR`, else `$CARGO_TARGET_DIR/debug`, else `<repo>/target/debug`).
pub fn bin_dir() -> PathBuf {
    activity_tests::operator::workspace_bin_dir()
}

/// The operator binary the benchmark runs: `$ACTIVITY_OPERATOR_BIN` (`make bench` sets the
/// release build, what the operator image ships), else the debug build of [`bin_dir`].
pub fn operator_exe() -> PathBuf {
    std::env::var_os("ACTIVITY_OPERATOR_BIN").map(PathBuf::from).unwrap_or_else(|| bin_dir().join("activity-operator"))
}

/// Seconds since the Unix epoch, now (microsecond resolution).
pub fn now() -> f64 {
    k8s_openapi::jiff::Timestamp::now().as_microsecond() as f64 / 1e6
}

/// Seconds since the Unix epoch of an API timestamp.
pub fn secs(t: &k8s_openapi::jiff::Timestamp) -> f64 {
    t.as_microsecond() as f64 / 1e6
}

/// The cluster of one kubeconfig.
#[derive(Clone)]
pub struct Cluster {
    pub kubeconfig: PathBuf,
    pub client: Client,
    /// Its state directory (the kubeconfig's): tools, logs, operators' identities.
    pub local: LocalCluster,
}

impl Cluster {
    /// A client for the kubeconfig at `path`.
    pub async fn connect(path: &Path) -> anyhow::Result<Self> {
        let kubeconfig =
            Kubeconfig::read_from(path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
        let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        config.read_timeout = Some(Duration::from_secs(300));
        Ok(Self {
            kubeconfig: path.to_path_buf(),
            client: Client::try_from(config)?,
            local: LocalCluster::of_kubeconfig(path),
        })
    }

    /// The cluster of `$KUBECONFIG`, else `<repo>/.local/kubeconfig`.
    pub async fn from_env() -> anyhow::Result<Self> {
        let path =
            std::env::var_os("KUBECONFIG").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".local/kubeconfig"));
        Self::connect(&path).await
    }

    /// Applies the Activity CRD and waits until it is Established.
    pub fn ensure_crd(&self) -> anyhow::Result<()> {
        self.local.ensure_crd()
    }

    /// How the benchmark starts its operators: [`operator_exe`] under the chart's RBAC, with the
    /// operator's own defaults, logging to `logs/bench-operator-<ns>.log`.
    pub fn launcher(&self) -> anyhow::Result<Launcher> {
        let exe = operator_exe();
        if !exe.exists() {
            bail!("{} does not exist: build it first (`make bench` does)", exe.display());
        }
        Ok(Launcher { cluster: self.local.clone(), exe, defaults: Vec::new(), log_prefix: "bench-operator".into() })
    }
}

pub use activity_tests::wait_for;

/// One scenario run's namespace (with the worker service account and Role) and its operator.
pub struct Bench {
    pub cluster: Cluster,
    pub ns: String,
    pub op: Operator,
}

impl Bench {
    /// Creates `<prefix>-<random>`, the worker RBAC in it, and starts an operator for it, after
    /// clearing what interrupted runs left behind ([`clear_leftovers`]).
    pub async fn new(cluster: &Cluster, prefix: &str) -> anyhow::Result<Self> {
        let launcher = cluster.launcher()?;
        cluster.ensure_crd()?;
        clear_leftovers(&cluster.client).await?;
        let ns = TestNs::create(cluster.client.clone(), prefix, "activity-bench").await?.name;
        cluster.local.worker_rbac(&ns)?;
        let op = launcher.start(&ns, &[]).await?;
        Ok(Self { cluster: cluster.clone(), ns, op })
    }

    pub fn client(&self) -> Client {
        self.cluster.client.clone()
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client(), &self.ns)
    }

    /// Deletes every Activity (the operator removes their finalizers), stops the operator and
    /// deletes the namespace (waiting for it to be gone, at most `wait`).
    pub async fn finish(mut self, wait: Duration) -> anyhow::Result<()> {
        let acts: Api<activity_crds::Activity> = self.api();
        let _ = acts.delete_collection(&DeleteParams::background(), &Default::default()).await;
        let _ = wait_for(Duration::from_secs(120), "activities deleted", || async {
            Ok(acts.list_metadata(&Default::default()).await?.items.is_empty().then_some(()))
        })
        .await;
        self.op.kill();
        let nss: Api<Namespace> = Api::all(self.client());
        nss.delete(&self.ns, &DeleteParams::background()).await?;
        let _ =
            wait_for(wait, "namespace deleted", || async { Ok(nss.get_opt(&self.ns).await?.is_none().then_some(())) })
                .await;
        Ok(())
    }
}

/// Deletes the namespaces of earlier runs (label `activity-bench=true`) that did not finish: a
/// failed or interrupted run skips [`Bench::finish`], and its pods would count against the process
/// node's 1,000 pods (a later `load` run then never gets all its attempts started). No operator
/// runs for them any more, so their Activities' and pods' finalizers are removed here. Waits until they are
/// gone. One bench runs on a cluster at a time: its measurements would mean little otherwise.
pub async fn clear_leftovers(client: &Client) -> anyhow::Result<()> {
    let nss: Api<Namespace> = Api::all(client.clone());
    let selector = kube::api::ListParams::default().labels("activity-bench=true");
    let left = nss.list_metadata(&selector).await?.items;
    if left.is_empty() {
        return Ok(());
    }
    let unfinalize = Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}}));
    for ns in &left {
        let name = ns.name_any();
        eprintln!("bench: deleting {name}, left by an earlier run that did not finish");
        if ns.metadata.deletion_timestamp.is_none() {
            nss.delete(&name, &DeleteParams::background()).await?;
        }
        let acts: Api<activity_crds::Activity> = Api::namespaced(client.clone(), &name);
        let names: Vec<String> =
            acts.list_metadata(&Default::default()).await?.items.iter().map(|a| a.name_any()).collect();
        futures::stream::iter(names)
            .map(|act| {
                let (acts, patch) = (&acts, &unfinalize);
                async move { acts.patch(&act, &PatchParams::default(), patch).await.map(|_| ()).or_else(ignore_gone) }
            })
            .buffer_unordered(32)
            .try_collect::<Vec<()>>()
            .await?;
        // The operator also holds each attempt's pod by a finalizer; gone, it releases none.
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &name);
        let held: Vec<String> = pods
            .list_metadata(&Default::default())
            .await?
            .items
            .iter()
            .filter(|p| p.metadata.finalizers.as_ref().is_some_and(|f| !f.is_empty()))
            .map(|p| p.name_any())
            .collect();
        futures::stream::iter(held)
            .map(|pod| {
                let (pods, patch) = (&pods, &unfinalize);
                async move { pods.patch(&pod, &PatchParams::default(), patch).await.map(|_| ()).or_else(ignore_gone) }
            })
            .buffer_unordered(32)
            .try_collect::<Vec<()>>()
            .await?;
    }
    wait_for(Duration::from_secs(600), "leftover bench namespaces deleted", || async {
        Ok(nss.list_metadata(&selector).await?.items.is_empty().then_some(()))
    })
    .await
}

/// A 404: the object is gone already.
fn ignore_gone(e: kube::Error) -> Result<(), kube::Error> {
    match e {
        kube::Error::Api(s) if s.code == 404 => Ok(()),
        e => Err(e),
    }
}

/// Records, for each object of a watch, the first time (local clock, seconds since the epoch) a
/// predicate held, with the object as it was then.
pub struct FirstSeen<K> {
    pub seen: Arc<Mutex<HashMap<String, (f64, K)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl<K> FirstSeen<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    <K as Resource>::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    /// Starts watching `api` and returns once the initial list is done.
    pub async fn start(api: Api<K>, pred: impl Fn(&K) -> bool + Send + 'static) -> anyhow::Result<Self> {
        let seen: Arc<Mutex<HashMap<String, (f64, K)>>> = Arc::default();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let map = seen.clone();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut stream = watcher(api, watcher::Config::default()).boxed();
            loop {
                let ev = match stream.try_next().await {
                    Ok(Some(ev)) => ev,
                    Ok(None) => break,
                    Err(e) => {
                        eprintln!("bench: watch error (retrying): {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                let t = now();
                match ev {
                    watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) if pred(&obj) => {
                        map.lock().unwrap().entry(obj.name_any()).or_insert((t, obj));
                    }
                    watcher::Event::InitDone => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                    }
                    _ => {}
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(30), ready_rx).await.context("watch not ready in 30s")??;
        Ok(Self { seen, task })
    }

    pub fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until `n` objects were seen, at most `timeout`.
    pub async fn wait(&self, n: usize, timeout: Duration, what: &str) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let last = Mutex::new(started);
        wait_for(timeout, what, || async {
            let seen = self.len();
            let mut last = last.lock().unwrap();
            if last.elapsed() >= Duration::from_secs(15) {
                *last = std::time::Instant::now();
                eprintln!("bench: {what}: {seen} of {n} after {:.0} s", started.elapsed().as_secs_f64());
            }
            Ok((seen >= n).then_some(()))
        })
        .await
        .with_context(|| format!("{} of {n} seen", self.len()))
    }

    pub fn snapshot(&self) -> HashMap<String, (f64, K)> {
        self.seen.lock().unwrap().clone()
    }
}

impl<K> Drop for FirstSeen<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// p50/p99/max of a sample (nearest rank), in the sample's unit.
#[derive(Clone, Copy, Debug, Default)]
pub struct Dist {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Dist {
    pub fn of(values: &[f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Self { n: v.len(), min: v[0], p50: rank(0.5), p99: rank(0.99), max: v[v.len() - 1] }
    }
}

/// One number of a scenario run.
#[derive(Clone, Debug)]
pub struct Metric {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
}

/// What a scenario run measured, plus remarks worth printing.
#[derive(Clone, Debug, Default)]
pub struct RunResult {
    pub title: String,
    pub metrics: Vec<Metric>,
    pub notes: Vec<String>,
}

impl RunResult {
    pub fn new(title: impl Into<String>) -> Self {
        Self { title: title.into(), ..Default::default() }
    }

    pub fn push(&mut self, name: impl Into<String>, value: f64, unit: &'static str) {
        self.metrics.push(Metric { name: name.into(), value, unit });
    }

    /// p50/p99/max of a latency sample in seconds, recorded in milliseconds.
    pub fn push_dist_ms(&mut self, name: &str, seconds: &[f64]) {
        let d = Dist::of(seconds);
        self.push(format!("{name} p50"), d.p50 * 1e3, "ms");
        self.push(format!("{name} p99"), d.p99 * 1e3, "ms");
        self.push(format!("{name} max"), d.max * 1e3, "ms");
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.metrics.iter().find(|m| m.name == name).map(|m| m.value)
    }

    /// The results [`RunResult::print`] wrote into `text` (a bench log), in order; other lines are
    /// skipped. Values keep the printed precision (three decimals).
    pub fn parse_printed(text: &str) -> Vec<RunResult> {
        let mut out: Vec<RunResult> = Vec::new();
        for line in text.lines() {
            if let Some(title) = line.strip_prefix("== ") {
                out.push(RunResult::new(title));
                continue;
            }
            let (Some(current), Some(body)) = (out.last_mut(), line.strip_prefix("  ")) else { continue };
            if let Some(note) = body.strip_prefix("note: ") {
                current.notes.push(note.to_string());
                continue;
            }
            // `{name:<58} {value:>12.3} {unit}`: the value is the last number on the line.
            let mut words: Vec<&str> = body.split_whitespace().collect();
            let unit = match words.last().map(|w| w.parse::<f64>().is_ok()) {
                Some(false) => words.pop().unwrap_or_default(),
                _ => "",
            };
            let Some(token) = words.pop() else { continue };
            let Ok(value) = token.parse::<f64>() else { continue };
            let name = body.rfind(&format!(" {token}")).map_or("", |at| body[..at].trim_end()).to_string();
            let unit: &'static str = match unit {
                "ms" => "ms",
                "s" => "s",
                "MiB" => "MiB",
                "MiB/h" => "MiB/h",
                "writes" => "writes",
                "millicores" => "millicores",
                "x" => "x",
                "1/s" => "1/s",
                _ => "",
            };
            current.push(name, value, unit);
        }
        out
    }

    /// The result as [`RunResult::print`] writes it.
    pub fn printed(&self) -> String {
        let mut out = format!("== {}\n", self.title);
        for m in &self.metrics {
            out.push_str(&format!("  {:<58} {:>12.3} {}\n", m.name, m.value, m.unit));
        }
        for n in &self.notes {
            out.push_str(&format!("  note: {n}\n"));
        }
        out
    }

    pub fn print(&self) {
        print!("{}", self.printed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_results_parse_back() {
        let mut a = RunResult::new("deadline (Heartbeat), N=1, timeout 3s");
        a.push("activities: deadline -> watch shows TimedOut p99", 12.345, "ms");
        a.push("heartbeats sent", 300.0, "");
        a.push("  of which {kind=\"status\"}", 3.0, "writes");
        a.notes.push("Job status.startTime has whole seconds".into());
        let mut b = RunResult::new("apply -> pod, one at a time, M=3");
        b.push("create sent -> pod seen (watch) p50", 51.8, "ms");
        b.push("ratio heartbeat/Lease: kube-apiserver CPU per request, net of idle", 1.4321, "x");
        let log = format!("cargo noise\n{}bench: progress line\n{}", a.printed(), b.printed());
        let parsed = RunResult::parse_printed(&log);
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].title, a.title);
        assert_eq!(parsed[0].get("activities: deadline -> watch shows TimedOut p99"), Some(12.345));
        assert_eq!(parsed[0].get("heartbeats sent"), Some(300.0));
        assert_eq!(parsed[0].get("  of which {kind=\"status\"}"), Some(3.0));
        assert_eq!(parsed[0].metrics[2].unit, "writes");
        assert_eq!(parsed[0].notes, a.notes);
        assert_eq!(parsed[1].get("create sent -> pod seen (watch) p50"), Some(51.8));
        assert_eq!(parsed[1].get("ratio heartbeat/Lease: kube-apiserver CPU per request, net of idle"), Some(1.432));
    }
}
