//! Scale scenarios that keep many activities alive at once:
//! - `apply`: one activity at a time on an idle cluster, `kubectl apply` (a create) to its pod.
//! - `load`: activities grown in steps (e.g. 100 → 1,000 → 5,000 → 10,000) that all stay live
//!   (`Running`, or `Pending` with their pod unscheduled beyond the process node's 1,000 pods).
//!   Each live activity has a simulated worker ([`crate::workers`]) holding a token bound to the
//!   activity's pod, with the chart's admission policies installed for the namespace. At each step
//!   and heartbeat interval (10 s, 30 s) the workers alternately heartbeat (the SDK's status
//!   PATCH) and renew a Lease each (a kubelet's merge PATCH), in windows of equal length, while the
//!   CPU of every control-plane process, the operator, this driver and the machine is sampled; an
//!   idle window per step gives the control plane's CPU at rest. Each heartbeat/Lease pair gives
//!   API server and etcd CPU per request of both kinds, their ratio, rates and latencies. At the
//!   growth step, heartbeats run for a long while (15 min in `make bench`) and etcd's file and
//!   in-use sizes are sampled as the API server's compactions run. Once, at the first step with
//!   enough live activities, closed-loop bursts (K workers each sending its next heartbeat as soon
//!   as the last one returns) give PATCH latency at K = 1, 100, 500. At the last step the operator
//!   is killed and restarted: time until every deadline is armed again and peak RSS.
//! - `worker`: RSS and idle CPU of an `activity-worker exec` process whose child sleeps.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use activity_crds::{Activity, Phase};
use anyhow::{Context, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::json;

use crate::scenarios::{activity, create_all, patience, phase_of, shell};
use crate::workers::{Driven, Kind, Policies, Workers};
use crate::{Bench, Cluster, Dist, Operator, RunResult, cpu_seconds, now, wait_for};

const WRITES: &str = "activity_operator_api_writes_total";
const ARMED: &str = "activity_operator_deadlines_armed";
/// Pods the process node runs at most (its Node's `pods` capacity).
const NODE_PODS: usize = 1000;

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

    /// etcd's gauges: the database's size (`etcd_mvcc_db_total_size_in_bytes`, the file), its bytes
    /// in use (`..._in_use_in_bytes`: unlike the file it shrinks when a compaction frees pages),
    /// the current and the last compacted revision. `None` where etcd does not say.
    async fn etcd_gauges(&self) -> [Option<f64>; 4] {
        let Some(port) = self.etcd_port else { return [None; 4] };
        let Ok(text) = activity_tests::operator::http_get(port, "/metrics").await else { return [None; 4] };
        let gauge =
            |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok());
        [
            gauge("etcd_mvcc_db_total_size_in_bytes"),
            gauge("etcd_mvcc_db_total_size_in_use_in_bytes"),
            gauge("etcd_debugging_mvcc_current_revision"),
            gauge("etcd_debugging_mvcc_compact_revision"),
        ]
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
}

impl CpuWindow {
    pub(crate) fn start(op: &Operator, cp: &ControlPlane) -> anyhow::Result<Self> {
        Ok(Self { started: Instant::now(), operator: op.cpu_seconds()?, plane: cp.cpu()? })
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

/// CPU seconds so far of every process of interest, and of the whole machine.
struct Sample {
    at: Instant,
    /// (name, CPU seconds): the control plane's processes, the operator, this bench process.
    procs: Vec<(String, f64)>,
    /// Busy CPU seconds of the machine (all cores), from /proc/stat.
    machine: f64,
}

impl Sample {
    fn take(op: &Operator, cp: &ControlPlane) -> anyhow::Result<Self> {
        let mut procs: Vec<(String, f64)> = cp.pids.iter().map(|(n, _)| n.clone()).zip(cp.cpu()?).collect();
        procs.push(("operator".into(), op.cpu_seconds()?));
        procs.push(("bench driver (this process)".into(), cpu_seconds(std::process::id())?));
        Ok(Self { at: Instant::now(), procs, machine: machine_busy_seconds()? })
    }

    /// CPU used since `before`: (name, CPU seconds) per process, then the machine's busy seconds.
    fn since(&self, before: &Sample) -> (Vec<(String, f64)>, f64, f64) {
        let procs = self.procs.iter().zip(&before.procs).map(|((n, a), (_, b))| (n.clone(), a - b)).collect();
        (procs, self.machine - before.machine, self.at.duration_since(before.at).as_secs_f64())
    }
}

/// Busy CPU seconds of the machine since boot: every state of /proc/stat's `cpu` line but idle
/// and iowait (USER_HZ is 100 on Linux).
fn machine_busy_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let ticks: Vec<f64> = line.split_whitespace().skip(1).map(|v| v.parse::<f64>()).collect::<Result<_, _>>()?;
    let busy: f64 = ticks.iter().enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    Ok(busy / 100.0)
}

/// One measuring window of the driver: what it saw and what the processes used meanwhile.
struct Window {
    kind: Option<Kind>,
    driven: Driven,
    /// (name, CPU seconds) per process over the window.
    cpu: Vec<(String, f64)>,
    machine: f64,
    /// From the first request due to the last reply (or the idle window's length), seconds.
    wall: f64,
    /// The time requests were due in, seconds.
    window: f64,
    /// Operator API writes during the window.
    writes: f64,
}

impl Window {
    /// CPU seconds `process` used in the window.
    fn cpu_of(&self, process: &str) -> f64 {
        self.cpu.iter().find(|(n, _)| n == process).map_or(0.0, |(_, s)| *s)
    }

    /// Milliseconds of `process`'s CPU per request done; with `idle`, net of the CPU the process
    /// used at rest (its rate in the idle window, over this window's wall time).
    fn per_request_ms(&self, process: &str, idle: Option<&Window>) -> f64 {
        let rest = idle.map_or(0.0, |w| w.cpu_of(process) / w.wall * self.wall);
        (self.cpu_of(process) - rest) * 1e3 / (self.driven.latency.len().max(1) as f64)
    }

    /// Requests done over the time they were due in, or until the last reply when the API server
    /// fell behind.
    fn done_per_second(&self) -> f64 {
        self.driven.latency.len() as f64 / self.wall.max(self.window)
    }
}

/// Runs `kind` (or nothing, for `None`) for `window` and measures it.
async fn measure(
    bench: &Bench,
    cp: &ControlPlane,
    workers: &Arc<Workers>,
    kind: Option<Kind>,
    interval: Duration,
    window: Duration,
) -> anyhow::Result<Window> {
    let w0 = bench.op.counters(WRITES).await?.values().sum::<f64>();
    let before = Sample::take(&bench.op, cp)?;
    let driven = match kind {
        Some(kind) => workers.steady(kind, interval, window).await,
        None => {
            tokio::time::sleep(window).await;
            Driven::default()
        }
    };
    let (cpu, machine, wall) = Sample::take(&bench.op, cp)?.since(&before);
    let writes = bench.op.counters(WRITES).await?.values().sum::<f64>() - w0;
    Ok(Window { kind, driven, cpu, machine, wall, window: window.as_secs_f64(), writes })
}

/// Sizes and options of the `load` scenario.
pub struct LoadPlan {
    /// Live activities at each step, ascending.
    pub sizes: Vec<usize>,
    /// Heartbeat intervals driven at each step, seconds.
    pub intervals: Vec<u64>,
    /// Heartbeat/Lease window pairs at each step and interval.
    pub pairs: usize,
    /// Length of one heartbeat or Lease window; `None`: one interval, at least 20 s.
    pub window: Option<Duration>,
    /// Length of the idle window at each step (the control plane's CPU at rest).
    pub idle: Duration,
    /// Pause after each window, so one window's stragglers settle before the next.
    pub settle: Duration,
    /// Concurrent workers of the closed-loop bursts.
    pub bursts: Vec<usize>,
    /// Length of a closed-loop burst.
    pub burst_window: Duration,
    /// The etcd growth run, at the step of its size.
    pub growth: Option<Growth>,
    /// Restart the operator at the last step.
    pub restart: bool,
}

/// etcd's size sampled while heartbeats run for a long while (the API server compacts every 5 min).
pub struct Growth {
    /// Live activities: the step of this size runs it, after its windows.
    pub n: usize,
    pub interval: Duration,
    pub duration: Duration,
    /// Between two samples.
    pub every: Duration,
}

impl LoadPlan {
    /// The smoke-test sizes: every step of the scenario, seconds long.
    pub fn quick() -> Self {
        Self {
            sizes: vec![2, 4],
            intervals: vec![1],
            pairs: 2,
            window: Some(Duration::from_secs(2)),
            idle: Duration::from_secs(1),
            settle: Duration::from_millis(200),
            bursts: vec![1, 2],
            burst_window: Duration::from_secs(2),
            growth: Some(Growth {
                n: 4,
                interval: Duration::from_secs(1),
                duration: Duration::from_secs(4),
                every: Duration::from_secs(1),
            }),
            restart: true,
        }
    }

    fn window(&self, interval: u64) -> Duration {
        self.window.unwrap_or(Duration::from_secs(interval.max(20)))
    }
}

/// The result of one heartbeat window and the Lease window after it.
fn pair_result(n: usize, interval: u64, hb: &Window, lease: &Window, idle: &Window) -> RunResult {
    let mut res = RunResult::new(format!("heartbeat vs Lease renewal, N={n} live, every {interval}s"));
    let (api, etcd) = ("kube-apiserver", "etcd");
    let ratio = |p: &str, net: bool| {
        let idle = net.then_some(idle);
        hb.per_request_ms(p, idle) / lease.per_request_ms(p, idle)
    };
    res.push("ratio heartbeat/Lease: kube-apiserver CPU per request", ratio(api, false), "x");
    res.push("ratio heartbeat/Lease: kube-apiserver CPU per request, net of idle", ratio(api, true), "x");
    res.push("ratio heartbeat/Lease: etcd CPU per request", ratio(etcd, false), "x");
    res.push("ratio heartbeat/Lease: etcd CPU per request, net of idle", ratio(etcd, true), "x");
    for w in [hb, lease] {
        let k = w.kind.map_or("idle", Kind::label);
        res.push(format!("{k}: kube-apiserver CPU per request"), w.per_request_ms(api, None), "ms");
        res.push(format!("{k}: kube-apiserver CPU per request, net of idle"), w.per_request_ms(api, Some(idle)), "ms");
        res.push(format!("{k}: etcd CPU per request"), w.per_request_ms(etcd, None), "ms");
        res.push(format!("{k}: etcd CPU per request, net of idle"), w.per_request_ms(etcd, Some(idle)), "ms");
    }
    for w in [hb, lease] {
        let k = w.kind.map_or("idle", Kind::label);
        res.push(format!("{k}: offered per second"), n as f64 / interval as f64, "1/s");
        res.push(format!("{k}: done per second"), w.done_per_second(), "1/s");
        res.push_dist_ms(&format!("{k}: PATCH round trip"), &w.driven.latency);
        res.push(format!("{k}: sent late (after its due time) p99"), Dist::of(&w.driven.lag).p99 * 1e3, "ms");
        res.push(format!("{k}: errors"), w.driven.error_count() as f64, "");
        for (class, count) in &w.driven.errors {
            res.notes.push(format!("{k}: {count} errors: {class}"));
        }
    }
    res.push("operator writes per heartbeat", hb.writes / (hb.driven.latency.len().max(1) as f64), "writes");
    for w in [hb, lease] {
        let k = w.kind.map_or("idle", Kind::label);
        for (name, secs) in &w.cpu {
            res.push(format!("{k} window: {name} CPU"), secs / w.wall * 1e3, "millicores");
        }
        res.push(format!("{k} window: machine CPU busy (all processes)"), w.machine / w.wall * 1e3, "millicores");
    }
    res
}

/// `load`: see the module documentation. Per step a result with its setup and idle CPU, one per
/// heartbeat/Lease window pair and interval; the etcd growth run, the bursts, the restart.
pub async fn load(cluster: &Cluster, plan: &LoadPlan) -> anyhow::Result<Vec<RunResult>> {
    let mut bench = Bench::new(cluster, "bench-load").await?;
    let policies = Policies::install(cluster, &bench.ns)?;
    let cp = ControlPlane::of(cluster)?;
    let acts: Api<Activity> = bench.api();
    let pods: Api<Pod> = bench.api();
    let mut workers = Arc::new(Workers::new(cluster, &bench.ns).await?);
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
        let running = all_started(&acts, n).await?;
        let setup = t_setup.elapsed().as_secs_f64();
        wait_for(Duration::from_secs(60), "every deadline armed", || async {
            Ok((bench.op.counters(ARMED).await?.values().sum::<f64>() >= n as f64).then_some(()))
        })
        .await?;
        let t_workers = Instant::now();
        Arc::get_mut(&mut workers).context("workers still in use")?.add(&bench.client(), &names[live..]).await?;
        let workers_setup = t_workers.elapsed().as_secs_f64();
        if live == 0 {
            workers.probe_policy().await?;
        }
        let added = n - live;
        live = n;
        tokio::time::sleep(plan.settle.max(Duration::from_secs(1))).await;
        let (rss_n, _) = bench.op.rss_kib()?;
        eprintln!("bench: load N={n}: idle window {} s", plan.idle.as_secs());
        let idle = measure(&bench, &cp, &workers, None, Duration::ZERO, plan.idle).await?;

        let mut step = RunResult::new(format!("load step, N={n} live"));
        step.push(format!("setup: {added} more created -> all started"), setup, "s");
        step.push(format!("setup: tokens and Leases for {added} more workers"), workers_setup, "s");
        step.push("of which Running (the node runs at most 1,000 pods)", running as f64, "");
        step.push("operator RSS idle (before any activity)", rss_idle as f64 / 1024.0, "MiB");
        step.push(format!("operator RSS with {n} live"), rss_n as f64 / 1024.0, "MiB");
        step.push(
            "operator RSS per 1,000 live (over idle)",
            (rss_n as f64 - rss_idle as f64) / 1024.0 / n as f64 * 1000.0,
            "MiB",
        );
        for (name, secs) in &idle.cpu {
            step.push(format!("idle: {name} CPU"), secs / idle.wall * 1e3, "millicores");
        }
        step.push("idle: machine CPU busy (all processes)", idle.machine / idle.wall * 1e3, "millicores");
        out.push(step);

        for &interval in &plan.intervals {
            let window = plan.window(interval);
            let every = Duration::from_secs(interval);
            for pair in 0..plan.pairs {
                let mut w = Vec::new();
                // Alternating, so that whatever else the machine does hits both kinds alike.
                for kind in [Kind::Heartbeat, Kind::Lease] {
                    eprintln!(
                        "bench: load N={n} every {interval}s: {} window {}/{} ({} s)",
                        kind.label(),
                        pair + 1,
                        plan.pairs,
                        window.as_secs()
                    );
                    w.push(measure(&bench, &cp, &workers, Some(kind), every, window).await?);
                    tokio::time::sleep(plan.settle).await;
                }
                let (hb, lease) = (&w[0], &w[1]);
                for win in &w {
                    ensure!(win.driven.canceled == 0, "{} heartbeat replies said canceled", win.driven.canceled);
                    ensure!(win.writes == 0.0, "the operator wrote {} times during a window", win.writes);
                }
                out.push(pair_result(n, interval, hb, lease, &idle));
            }
        }

        if let Some(g) = plan.growth.as_ref().filter(|g| g.n == n) {
            out.push(growth(&bench, &cp, &workers, g).await?);
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
                let (driven, wall) = workers.closed(k, plan.burst_window).await;
                let mut part = RunResult::new("");
                cpu.finish_cpu(&bench.op, &cp, &mut part)?;
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
                tokio::time::sleep(plan.settle).await;
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
    if let Some(first) = out.iter_mut().find(|r| r.title.starts_with("load step")) {
        let prefix = format!("validatingadmissionpolicy.admissionregistration.k8s.io/{}-", bench.ns);
        let names: Vec<&str> = policies.names.iter().filter_map(|n| n.strip_prefix(&prefix)).collect();
        first.notes.push(format!(
            "the chart's admission policies were installed for the bench namespace ({}); a heartbeat \
             with another pod's token was refused by the worker policy",
            names.join(", ")
        ));
    }
    drop(policies);
    // Thousands of cancellations take minutes; the results are in, so wait only briefly.
    bench.finish(Duration::from_secs(30)).await?;
    Ok(out)
}

/// Waits until every one of the `n` activities has its attempt 1 recorded (its pod created) and
/// as many as the node can run are Running; returns how many run. Lists of thousands of
/// activities cost the API server seconds, so large steps look every few seconds only.
async fn all_started(acts: &Api<Activity>, n: usize) -> anyhow::Result<usize> {
    let pause = Duration::from_millis(u64::try_from(n / 2).unwrap_or(u64::MAX).min(5_000));
    let deadline = Instant::now() + patience(n, 60);
    loop {
        let list = acts.list(&ListParams::default()).await?;
        if let Some(a) = list.items.iter().find(|a| crate::scenarios::is_terminal(phase_of(a))) {
            anyhow::bail!("{} ended {:?} during setup", a.metadata.name.as_deref().unwrap_or("?"), phase_of(a));
        }
        let started = list.items.iter().filter(|a| a.status.as_ref().and_then(|s| s.attempt) == Some(1)).count();
        let running = list.items.iter().filter(|a| phase_of(a) == Some(Phase::Running)).count();
        if started == n && running >= n.min(NODE_PODS) {
            return Ok(running);
        }
        ensure!(
            Instant::now() < deadline,
            "{started} of {n} attempts started, {running} Running, in {:?}",
            patience(n, 60)
        );
        tokio::time::sleep(pause).await;
    }
}

/// etcd's size, sampled every `g.every` while `g.n` workers heartbeat every `g.interval` for
/// `g.duration`, with the API server compacting as it does by default (every 5 min).
async fn growth(bench: &Bench, cp: &ControlPlane, workers: &Arc<Workers>, g: &Growth) -> anyhow::Result<RunResult> {
    let n = workers.len();
    eprintln!("bench: etcd growth, {n} live every {:?}, {} s", g.interval, g.duration.as_secs());
    let mut res = RunResult::new(format!(
        "etcd size under heartbeats, N={n} live, every {}s, {} s",
        g.interval.as_secs(),
        g.duration.as_secs()
    ));
    let before = Sample::take(&bench.op, cp)?;
    let driver = {
        let (workers, interval, duration) = (workers.clone(), g.interval, g.duration);
        tokio::spawn(async move { workers.steady(Kind::Heartbeat, interval, duration).await })
    };
    let started = Instant::now();
    // (seconds since start, file bytes, in-use bytes, revision, compacted revision)
    let mut series: Vec<(f64, f64, f64, f64, f64)> = Vec::new();
    loop {
        let [file, in_use, rev, compacted] = cp.etcd_gauges().await;
        let file = file.unwrap_or(cp.db_bytes() as f64);
        series.push((
            started.elapsed().as_secs_f64(),
            file,
            in_use.unwrap_or(f64::NAN),
            rev.unwrap_or(f64::NAN),
            compacted.unwrap_or(f64::NAN),
        ));
        if started.elapsed() >= g.duration {
            break;
        }
        tokio::time::sleep(g.every.min(g.duration.saturating_sub(started.elapsed()))).await;
    }
    let driven = driver.await.context("the heartbeat driver failed")?;
    let (cpu, machine, wall) = Sample::take(&bench.op, cp)?.since(&before);
    let mib = |b: f64| b / (1024.0 * 1024.0);
    let stats = |pick: fn(&(f64, f64, f64, f64, f64)) -> f64| {
        let v: Vec<f64> = series.iter().map(pick).filter(|v| v.is_finite()).collect();
        (Dist::of(&v), v.first().copied().unwrap_or(f64::NAN), v.last().copied().unwrap_or(f64::NAN))
    };
    for (what, pick) in
        [("etcd db file size", (|s| s.1) as fn(&(f64, f64, f64, f64, f64)) -> f64), ("etcd db size in use", |s| s.2)]
    {
        let (d, first, last) = stats(pick);
        res.push(format!("{what}: first sample"), mib(first), "MiB");
        res.push(format!("{what}: min"), mib(d.min), "MiB");
        res.push(format!("{what}: median"), mib(d.p50), "MiB");
        res.push(format!("{what}: max"), mib(d.max), "MiB");
        res.push(format!("{what}: last sample"), mib(last), "MiB");
        // Bounded when the second half's peak is not above the first half's.
        let half = series.len() / 2;
        let peak = |s: &[(f64, f64, f64, f64, f64)]| s.iter().map(pick).fold(f64::NAN, f64::max);
        res.push(
            format!("{what}: max of the second half - max of the first half"),
            mib(peak(&series[half..]) - peak(&series[..half])),
            "MiB",
        );
    }
    let compactions = series.windows(2).filter(|w| w[1].4 > w[0].4).count();
    res.push("compactions seen (compacted revision moved)", compactions as f64, "");
    let (_, revs_first, revs_last) = stats(|s| s.3);
    res.push("revisions written per second", (revs_last - revs_first) / wall, "1/s");
    res.push("samples", series.len() as f64, "");
    res.push("heartbeats offered per second", n as f64 / g.interval.as_secs_f64(), "1/s");
    res.push("heartbeats done per second", driven.latency.len() as f64 / wall, "1/s");
    res.push_dist_ms("heartbeat PATCH round trip", &driven.latency);
    res.push("heartbeat errors", driven.error_count() as f64, "");
    for (name, secs) in &cpu {
        res.push(format!("{name} CPU"), secs / wall * 1e3, "millicores");
    }
    res.push("machine CPU busy (all processes)", machine / wall * 1e3, "millicores");
    for (class, count) in &driven.errors {
        res.notes.push(format!("{count} heartbeat errors: {class}"));
    }
    let points: Vec<String> = series.iter().map(|s| format!("{:.0} s: {:.1}/{:.1}", s.0, mib(s.1), mib(s.2))).collect();
    res.notes.push(format!("series (file/in use, MiB): {}", points.join(", ")));
    ensure!(driven.canceled == 0, "{} heartbeat replies said canceled", driven.canceled);
    Ok(res)
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
