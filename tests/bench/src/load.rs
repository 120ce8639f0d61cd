//! Scale scenarios that keep many activities alive at once:
//! - `apply`: one activity at a time on an idle cluster, `kubectl apply` (a create) to its pod.
//! - `load`: activities grown in steps (e.g. 100 → 1,000 → 5,000) that all stay live (`Running`,
//!   or `Pending` with their pod unscheduled beyond the process node's 1,000 pods);
//!   at each step a simulated-worker driver sends heartbeats for every live activity at a steady
//!   interval (10 s, 30 s) through the real API with the worker's own wire format
//!   ([`activity_worker::wire`]), while the operator's CPU, RSS and API writes and every
//!   control-plane process's CPU and etcd's database file are sampled. Once, at the first step with
//!   enough live activities, closed-loop bursts (K workers each sending its next heartbeat as soon
//!   as the last one returns) give PATCH latency at K = 1, 100, 500 concurrent workers and the
//!   heartbeat rate the control plane sustains. At the last step the operator is killed and
//!   restarted: time until every deadline is armed again and peak RSS during the relist.
//! - `worker`: RSS and idle CPU of an `activity-worker exec` process whose child sleeps.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use activity_crds::{Activity, Phase};
use activity_worker::wire::{self, ApiFailure};
use anyhow::{Context, ensure};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::scenarios::{activity, create_all, patience, phase_of, shell};
use crate::{Bench, Cluster, Operator, RunResult, cpu_seconds, now, wait_for};

const WRITES: &str = "activity_operator_api_writes_total";
const ARMED: &str = "activity_operator_deadlines_armed";
/// Pods the process node runs at most (its Node's `pods` capacity).
const NODE_PODS: usize = 1000;
/// Heartbeat PATCHes the driver keeps in flight, at most (its connection pool).
const DRIVER_IN_FLIGHT: usize = 500;

/// `apply`: `m` activities created one after the other on an otherwise idle cluster; for each,
/// from sending the create to the watch showing its pod, and to the watch showing it `Running`.
pub async fn apply(cluster: &Cluster, m: usize) -> anyhow::Result<RunResult> {
    let bench = Bench::new(cluster, "bench-apply").await?;
    let mut res = RunResult::new(format!("apply -> pod, one at a time, M={m}"));
    let acts: Api<Activity> = bench.api();
    let pods: Api<Pod> = bench.api();
    let pod_watch = crate::FirstSeen::start(pods, |_: &Pod| true).await?;
    let run_watch = crate::FirstSeen::start(acts.clone(), |a: &Activity| phase_of(a) == Some(Phase::Running)).await?;
    let spec =
        json!({"startToCloseTimeout": "10m", "retryPolicy": {"maximumAttempts": 1}, "template": shell("sleep 3600")});
    let (mut to_pod, mut to_running) = (Vec::new(), Vec::new());
    for i in 0..m {
        let name = format!("act-{i}");
        let obj = activity(&name, spec.clone())?;
        let sent = now();
        acts.create(&Default::default(), &obj).await.with_context(|| format!("creating {name}"))?;
        run_watch.wait(i + 1, Duration::from_secs(60), "activity Running").await?;
        let pod_seen = pod_watch
            .snapshot()
            .get(&format!("{name}-1"))
            .map(|(t, _)| *t)
            .with_context(|| format!("{name} Running before its pod was seen"))?;
        let running = run_watch.snapshot().get(&name).map(|(t, _)| *t).context("not Running")?;
        to_pod.push(pod_seen - sent);
        to_running.push(running - sent);
        // Idle between applies: each create meets a quiet control plane.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    res.push_dist_ms("create sent -> pod seen (watch)", &to_pod);
    res.push_dist_ms("create sent -> Running seen (watch)", &to_running);
    drop((pod_watch, run_watch));
    bench.finish(patience(m, 0)).await?;
    Ok(res)
}

/// The control plane's processes, by the pids `cluster.sh` recorded, etcd's database file, and
/// etcd's client port (for its metrics).
pub(crate) struct ControlPlane {
    pids: Vec<(String, u32)>,
    db: PathBuf,
    etcd_port: Option<u16>,
}

impl ControlPlane {
    pub(crate) fn of(cluster: &Cluster) -> anyhow::Result<Self> {
        let dir = cluster.kubeconfig.parent().context("kubeconfig without a directory")?.to_path_buf();
        let mut pids = Vec::new();
        for c in ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "process-node"] {
            let text = std::fs::read_to_string(dir.join(format!("pids/{c}.pid")))
                .with_context(|| format!("no pid recorded for {c} in {}", dir.display()))?;
            pids.push((c.to_string(), text.trim().parse().with_context(|| format!("pid of {c}"))?));
        }
        let env = std::fs::read_to_string(dir.join("cluster.env")).unwrap_or_default();
        let etcd_port = env.lines().find_map(|l| l.strip_prefix("ETCD_PORT=")?.trim().parse().ok());
        Ok(Self { pids, db: dir.join("etcd/member/snap/db"), etcd_port })
    }

    /// The bytes of etcd's database in use (`etcd_mvcc_db_total_size_in_use_in_bytes`): unlike the
    /// file's size it grows while free pages (left by earlier deletions) are reused.
    async fn db_in_use(&self) -> Option<f64> {
        let text = activity_tests::operator::http_get(self.etcd_port?, "/metrics").await.ok()?;
        text.lines().find_map(|l| l.strip_prefix("etcd_mvcc_db_total_size_in_use_in_bytes ")?.trim().parse().ok())
    }

    fn cpu(&self) -> anyhow::Result<Vec<f64>> {
        self.pids.iter().map(|(_, pid)| cpu_seconds(*pid)).collect()
    }

    fn db_bytes(&self) -> u64 {
        std::fs::metadata(&self.db).map(|m| m.len()).unwrap_or(0)
    }
}

/// CPU of the operator and the control plane over a window, in millicores.
pub(crate) struct CpuWindow {
    started: Instant,
    operator: f64,
    plane: Vec<f64>,
    db: u64,
}

impl CpuWindow {
    pub(crate) fn start(op: &Operator, cp: &ControlPlane) -> anyhow::Result<Self> {
        Ok(Self { started: Instant::now(), operator: op.cpu_seconds()?, plane: cp.cpu()?, db: cp.db_bytes() })
    }

    /// CPU over the window, and the etcd database's growth per hour.
    fn finish(self, op: &Operator, cp: &ControlPlane, res: &mut RunResult) -> anyhow::Result<()> {
        let wall = self.started.elapsed().as_secs_f64();
        let grown = cp.db_bytes().saturating_sub(self.db) as f64;
        self.finish_cpu(op, cp, res)?;
        res.push("etcd db file growth, extrapolated per hour", grown / wall * 3600.0 / (1024.0 * 1024.0), "MiB/h");
        Ok(())
    }

    /// CPU over the window, in millicores.
    pub(crate) fn finish_cpu(self, op: &Operator, cp: &ControlPlane, res: &mut RunResult) -> anyhow::Result<()> {
        let wall = self.started.elapsed().as_secs_f64();
        res.push("operator CPU", (op.cpu_seconds()? - self.operator) / wall * 1e3, "millicores");
        for ((name, _), (after, before)) in cp.pids.iter().zip(cp.cpu()?.into_iter().zip(self.plane)) {
            res.push(format!("{name} CPU"), (after - before) / wall * 1e3, "millicores");
        }
        Ok(())
    }
}

/// What one driver run saw.
#[derive(Default)]
struct Driven {
    latency: Vec<f64>,
    errors: HashMap<String, u64>,
    canceled: u64,
}

impl Driven {
    fn merge(&mut self, other: Driven) {
        self.latency.extend(other.latency);
        self.canceled += other.canceled;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// What every driver task saw, together.
async fn gather(tasks: Vec<tokio::task::JoinHandle<Driven>>) -> Driven {
    let mut all = Driven::default();
    for t in tasks {
        if let Ok(d) = t.await {
            all.merge(d);
        }
    }
    all
}

/// One heartbeat of attempt 1 of `name`, exactly as the SDK sends it; returns the round trip.
async fn heartbeat(acts: &Api<Activity>, name: &str, seq: u64, out: &mut Driven) {
    let pp = PatchParams { field_manager: Some("activity-worker".into()), ..Default::default() };
    let details = json!({"progress": {"done": seq, "total": 1_000_000}});
    let patch = wire::heartbeat_patch(1, Timestamp::now(), &details);
    let patch: json_patch::Patch = match serde_json::from_value(patch) {
        Ok(p) => p,
        Err(e) => {
            *out.errors.entry(format!("building the patch: {e}")).or_default() += 1;
            return;
        }
    };
    let t = Instant::now();
    match acts.patch_status(name, &pp, &Patch::<()>::Json(patch)).await {
        Ok(a) => {
            out.latency.push(t.elapsed().as_secs_f64());
            if activity_worker::context::cancel_in(&a, 1).is_some() {
                out.canceled += 1;
            }
        }
        Err(e) => {
            let class = match wire::classify(&e) {
                ApiFailure::Superseded(_) => "superseded".to_string(),
                ApiFailure::Forbidden(_) => "403".to_string(),
                ApiFailure::NotFound(_) => "404".to_string(),
                ApiFailure::Retryable { retry_after: Some(_), .. } => "429".to_string(),
                ApiFailure::Retryable { message, .. } => {
                    format!("retryable: {}", message.chars().take(80).collect::<String>())
                }
                ApiFailure::Fatal(m) => format!("fatal: {}", m.chars().take(80).collect::<String>()),
            };
            *out.errors.entry(class).or_default() += 1;
        }
    }
}

/// Open loop: every one of `names` heartbeats every `interval` (phases spread evenly over the
/// interval) for `window`. A worker whose PATCH is still in flight when its next one is due sends
/// it on return (one in flight per worker, as with the SDK).
async fn steady(acts: &Api<Activity>, names: &[String], interval: Duration, window: Duration) -> Driven {
    let start = tokio::time::Instant::now();
    let end = start + window;
    let sem = Arc::new(Semaphore::new(DRIVER_IN_FLIGHT));
    let n = names.len().max(1) as u32;
    let tasks: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let (acts, name, sem) = (acts.clone(), name.clone(), sem.clone());
            tokio::spawn(async move {
                let mut out = Driven::default();
                let mut next = start + interval * i as u32 / n;
                let mut seq = 0;
                while next < end {
                    tokio::time::sleep_until(next).await;
                    let Ok(_permit) = sem.acquire().await else { break };
                    heartbeat(&acts, &name, seq, &mut out).await;
                    seq += 1;
                    next = (next + interval).max(tokio::time::Instant::now());
                }
                out
            })
        })
        .collect();
    gather(tasks).await
}

/// Closed loop: `k` workers each send their next heartbeat as soon as the last returns, for `window`.
async fn closed(acts: &Api<Activity>, names: &[String], window: Duration) -> (Driven, f64) {
    let end = Instant::now() + window;
    let started = Instant::now();
    let tasks: Vec<_> = names
        .iter()
        .map(|name| {
            let (acts, name) = (acts.clone(), name.clone());
            tokio::spawn(async move {
                let mut out = Driven::default();
                let mut seq = 0;
                while Instant::now() < end {
                    heartbeat(&acts, &name, seq, &mut out).await;
                    seq += 1;
                }
                out
            })
        })
        .collect();
    (gather(tasks).await, started.elapsed().as_secs_f64())
}

/// Sizes and options of the `load` scenario.
pub struct LoadPlan {
    /// Live activities at each step, ascending.
    pub sizes: Vec<usize>,
    /// Heartbeat intervals driven at each step, seconds.
    pub intervals: Vec<u64>,
    /// Concurrent workers of the closed-loop bursts.
    pub bursts: Vec<usize>,
    /// Length of a closed-loop burst.
    pub burst_window: Duration,
    /// Measuring window of one interval; `None`: six heartbeats per worker, at least a minute.
    pub window: Option<Duration>,
    /// Restart the operator at the last step.
    pub restart: bool,
}

impl LoadPlan {
    /// The smoke-test sizes: every step of the scenario, seconds long.
    pub fn quick() -> Self {
        Self {
            sizes: vec![2, 4],
            intervals: vec![1],
            bursts: vec![1, 2],
            burst_window: Duration::from_secs(2),
            window: Some(Duration::from_secs(3)),
            restart: true,
        }
    }

    fn window(&self, interval: u64) -> Duration {
        self.window.unwrap_or(Duration::from_secs((interval * 6).max(60)))
    }
}

/// `load`: see the module documentation. One [`RunResult`] per step and interval, one for the
/// bursts, one for the restart.
pub async fn load(cluster: &Cluster, plan: &LoadPlan) -> anyhow::Result<Vec<RunResult>> {
    let mut bench = Bench::new(cluster, "bench-load").await?;
    let cp = ControlPlane::of(cluster)?;
    let acts: Api<Activity> = bench.api();
    let pods: Api<Pod> = bench.api();
    let mut out = Vec::new();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_idle, _) = bench.op.rss_kib()?;
    // Long timeouts: nothing may lapse while the steps are set up, but every activity has a timer
    // armed (the restart measures its re-arming): schedule-to-close from creation, and heartbeat
    // and start-to-close once its worker runs. The process node runs at most 1,000 pods (its
    // Node's capacity), so beyond that the activities stay Pending with their pod unscheduled:
    // live all the same, heartbeating through the API like the rest.
    let spec = json!({"heartbeatTimeout": "20m", "startToCloseTimeout": "3h", "scheduleToCloseTimeout": "5h",
                      "retryPolicy": {"maximumAttempts": 1}, "template": shell("sleep 10800")});
    let mut live = 0;
    let mut bursts_done = false;
    for &n in &plan.sizes {
        let names: Vec<String> = (0..n).map(|i| format!("act-{i}")).collect();
        let t_setup = Instant::now();
        let objs = names[live..].iter().map(|name| activity(name, spec.clone())).collect::<anyhow::Result<Vec<_>>>()?;
        create_all(&acts, objs).await?;
        // Every activity's attempt 1 is recorded (its pod created), and as many as the node can
        // run are Running.
        let running = wait_for(patience(n, 60), "every attempt started", || async {
            let list = acts.list(&ListParams::default()).await?;
            if let Some(a) = list.items.iter().find(|a| crate::scenarios::is_terminal(phase_of(a))) {
                anyhow::bail!("{} ended {:?} during setup", a.metadata.name.as_deref().unwrap_or("?"), phase_of(a));
            }
            let started = list.items.iter().filter(|a| a.status.as_ref().and_then(|s| s.attempt) == Some(1)).count();
            let running = list.items.iter().filter(|a| phase_of(a) == Some(Phase::Running)).count();
            Ok((started == n && running >= n.min(NODE_PODS)).then_some(running))
        })
        .await?;
        let setup = t_setup.elapsed().as_secs_f64();
        let added = n - live;
        live = n;
        wait_for(Duration::from_secs(60), "every deadline armed", || async {
            Ok((bench.op.counters(ARMED).await?.values().sum::<f64>() >= n as f64).then_some(()))
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (rss_n, _) = bench.op.rss_kib()?;

        for &interval in &plan.intervals {
            let window = plan.window(interval);
            eprintln!("bench: load N={n} interval {interval}s for {}s", window.as_secs());
            let mut res = RunResult::new(format!("heartbeat load, N={n} live, every {interval}s"));
            res.push(format!("setup: {added} more created -> all started"), setup, "s");
            res.push("of which Running (the node runs at most 1,000 pods)", running as f64, "");
            res.push("operator RSS idle (before any activity)", rss_idle as f64 / 1024.0, "MiB");
            res.push(format!("operator RSS with {n} live"), rss_n as f64 / 1024.0, "MiB");
            res.push(
                "operator RSS per 1,000 live (over idle)",
                (rss_n as f64 - rss_idle as f64) / 1024.0 / n as f64 * 1000.0,
                "MiB",
            );
            let w0 = bench.op.counters(WRITES).await?.values().sum::<f64>();
            let in_use = cp.db_in_use().await;
            let cpu = CpuWindow::start(&bench.op, &cp)?;
            let driven = steady(&acts, &names, Duration::from_secs(interval), window).await;
            cpu.finish(&bench.op, &cp, &mut res)?;
            if let (Some(before), Some(after)) = (in_use, cp.db_in_use().await) {
                let per_hour = (after - before) / window.as_secs_f64() * 3600.0 / (1024.0 * 1024.0);
                res.push("etcd db in use growth, extrapolated per hour", per_hour, "MiB/h");
                if per_hour < 0.0 {
                    res.notes.push(
                        "etcd's in-use size fell in the window: a compaction (every 5 min) freed revisions".into(),
                    );
                }
            }
            let writes = bench.op.counters(WRITES).await?.values().sum::<f64>() - w0;
            let sent = driven.latency.len() as f64;
            res.push("heartbeats offered per second", n as f64 / interval as f64, "1/s");
            res.push("heartbeats done per second", sent / window.as_secs_f64(), "1/s");
            res.push_dist_ms("heartbeat PATCH round trip", &driven.latency);
            res.push("heartbeat errors", driven.error_count() as f64, "");
            res.push("operator writes per heartbeat", writes / sent.max(1.0), "writes");
            let (rss, hwm) = bench.op.rss_kib()?;
            res.push("operator RSS after the window", rss as f64 / 1024.0, "MiB");
            res.push("operator peak RSS so far (VmHWM)", hwm as f64 / 1024.0, "MiB");
            for (class, count) in &driven.errors {
                res.notes.push(format!("{count} heartbeat errors: {class}"));
            }
            ensure!(driven.canceled == 0, "{} heartbeat replies said canceled", driven.canceled);
            ensure!(writes == 0.0, "the operator wrote {writes} times during {sent} heartbeats");
            out.push(res);
        }

        if !bursts_done && plan.bursts.iter().all(|&k| k <= n) && !plan.bursts.is_empty() {
            bursts_done = true;
            let mut res = RunResult::new(format!(
                "heartbeat bursts, closed loop ({} s each), {n} live",
                plan.burst_window.as_secs()
            ));
            for &k in &plan.bursts {
                eprintln!("bench: closed-loop heartbeats, {k} workers");
                let w0 = bench.op.counters(WRITES).await?.values().sum::<f64>();
                let cpu = CpuWindow::start(&bench.op, &cp)?;
                let (driven, wall) = closed(&acts, &names[..k], plan.burst_window).await;
                let mut part = RunResult::new("");
                cpu.finish(&bench.op, &cp, &mut part)?;
                let writes = bench.op.counters(WRITES).await?.values().sum::<f64>() - w0;
                res.push(format!("K={k}: heartbeats per second"), driven.latency.len() as f64 / wall, "1/s");
                res.push_dist_ms(&format!("K={k}: PATCH round trip"), &driven.latency);
                res.push(format!("K={k}: errors"), driven.error_count() as f64, "");
                for m in part.metrics.into_iter().filter(|m| m.name.ends_with("CPU")) {
                    res.push(format!("K={k}: {}", m.name), m.value, m.unit);
                }
                for (class, count) in &driven.errors {
                    res.notes.push(format!("K={k}: {count} heartbeat errors: {class}"));
                }
                ensure!(writes == 0.0, "the operator wrote {writes} times during a heartbeat burst");
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            out.push(res);
        }
    }

    if plan.restart {
        let n = live;
        eprintln!("bench: restarting the operator with {n} live activities");
        let mut res = RunResult::new(format!("operator restart (SIGKILL) with {n} live activities"));
        let pods_before = pods.list_metadata(&ListParams::default()).await?.items.len();
        bench.op.kill();
        let t0 = Instant::now();
        bench.op.relaunch().await?;
        let ready = t0.elapsed().as_secs_f64();
        wait_for(patience(n, 60), "every deadline re-armed", || async {
            Ok((bench.op.counters(ARMED).await?.values().sum::<f64>() >= n as f64).then_some(()))
        })
        .await?;
        let armed = t0.elapsed().as_secs_f64();
        let (_, hwm) = bench.op.rss_kib()?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (rss, hwm_later) = bench.op.rss_kib()?;
        res.push("start -> /readyz", ready, "s");
        res.push(format!("start -> all {n} deadlines armed (first pass done)"), armed, "s");
        res.push("peak RSS during the relist (VmHWM at armed)", hwm as f64 / 1024.0, "MiB");
        res.push("peak RSS 5 s later (VmHWM)", hwm_later as f64 / 1024.0, "MiB");
        res.push("RSS 5 s later", rss as f64 / 1024.0, "MiB");
        let list = acts.list(&ListParams::default()).await?;
        let moved = list
            .items
            .iter()
            .filter(|a| {
                !matches!(phase_of(a), Some(Phase::Running | Phase::Pending))
                    || a.status.as_ref().and_then(|s| s.attempt) != Some(1)
            })
            .count();
        let pods_after = pods.list_metadata(&ListParams::default()).await?.items.len();
        ensure!(moved == 0, "{moved} activities left Pending/Running on attempt 1 across the restart");
        ensure!(pods_after == pods_before, "pods {pods_before} before the restart, {pods_after} after");
        res.notes.push(format!("every activity still on attempt 1, {pods_after} pods, as before the restart"));
        out.push(res);
    }
    // Thousands of cancellations take minutes; the results are in, so wait only briefly.
    bench.finish(Duration::from_secs(30)).await?;
    Ok(out)
}

/// `worker`: RSS and CPU of `activity-worker exec -- sleep` (the `ACTIVITY_WORKER_BIN` build,
/// else the debug build) attached to a live activity, idle for `idle`.
pub async fn worker(cluster: &Cluster, idle: Duration) -> anyhow::Result<RunResult> {
    let bench = Bench::new(cluster, "bench-worker").await?;
    let acts: Api<Activity> = bench.api();
    let exe = std::env::var_os("ACTIVITY_WORKER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::bin_dir().join("activity-worker"));
    let build = if exe.components().any(|c| c.as_os_str() == "release") { "release" } else { "debug" };
    let mut res = RunResult::new(format!("activity-worker exec ({build} build), idle child, {} s", idle.as_secs()));
    let spec = json!({"heartbeatTimeout": "10m", "startToCloseTimeout": "1h",
                      "retryPolicy": {"maximumAttempts": 1}, "template": shell("sleep 3600")});
    create_all(&acts, vec![activity("idle", spec)?]).await?;
    wait_for(Duration::from_secs(60), "activity Running", || async {
        Ok((phase_of(&acts.get("idle").await?) == Some(Phase::Running)).then_some(()))
    })
    .await?;
    // The worker of attempt 1, run here (the pod's own container only sleeps and never writes).
    let mut child = tokio::process::Command::new(&exe)
        .args(["exec", "--", "sh", "-c", "echo '::heartbeat {\"step\": 1}'; exec sleep 3600"])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env(activity_crds::ENV_NAME, "idle")
        .env(activity_crds::ENV_NAMESPACE, &bench.ns)
        .env(activity_crds::ENV_ATTEMPT, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let pid = child.id().context("worker exited at once")?;
    wait_for(Duration::from_secs(30), "the worker's first heartbeat", || async {
        let a = acts.get("idle").await?;
        Ok(a.status.and_then(|s| s.heartbeat_details?.to_value().ok()).filter(|d| d["step"] == 1).map(|_| ()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu0 = cpu_seconds(pid)?;
    let t0 = Instant::now();
    tokio::time::sleep(idle).await;
    let cpu = (cpu_seconds(pid)? - cpu0) / t0.elapsed().as_secs_f64() * 1e3;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |key: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
            / 1024.0
    };
    res.push("worker RSS (VmRSS)", field("VmRSS:"), "MiB");
    res.push("worker peak RSS (VmHWM)", field("VmHWM:"), "MiB");
    res.push("worker CPU while its child sleeps", cpu, "millicores");
    let _ = child.kill().await;
    bench.finish(Duration::from_secs(60)).await?;
    Ok(res)
}
