//! The scenarios. Each one runs in a fresh [`Bench`] (namespace + operator), checks that every
//! object ended as expected (an error otherwise) and returns what it measured.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use activity_crds::{Activity, Phase, TimeoutType};
use anyhow::{Context, bail, ensure};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::load::{ControlPlane, CpuWindow};
use crate::{Bench, Cluster, Dist, FirstSeen, RunResult, now, secs, wait_for};

/// Concurrent creates/patches in flight (a client applying "at once", without flooding the
/// API server with thousands of parallel connections).
pub(crate) const PARALLEL: usize = 32;

/// Which deadline the `deadline` scenario lets lapse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeadlineKind {
    Heartbeat,
    StartToClose,
}

/// The benchmarks run on the process node (1,000+ pods on two cores). While a real node runs, the
/// process node carries this taint (deploy/local/cluster.sh): the benchmarks' pods tolerate it and
/// select that node; without a real node both are no-ops.
pub(crate) fn on_process_node(pod_spec: &mut Value) {
    pod_spec["tolerations"] =
        json!([{"key": "heartbeat.dev/process-node", "operator": "Exists", "effect": "NoSchedule"}]);
    pod_spec["nodeSelector"] = json!({"kubernetes.io/hostname": "local-node"});
}

pub(crate) fn shell(script: &str) -> Value {
    let mut spec = json!({"containers": [{"name": "worker", "image": "busybox", "command": ["sh", "-c", script]}]});
    on_process_node(&mut spec);
    json!({"spec": spec})
}

pub(crate) fn activity(name: &str, spec: Value) -> anyhow::Result<Activity> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "heartbeat.dev/v1alpha1", "kind": "Activity",
        "metadata": {"name": name}, "spec": spec
    }))?)
}

fn job(name: &str, script: &str, active_deadline: Option<u64>) -> anyhow::Result<Job> {
    let mut spec = json!({
        "backoffLimit": 0,
        "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "worker", "image": "busybox", "command": ["sh", "-c", script]}]}}
    });
    on_process_node(&mut spec["template"]["spec"]);
    if let Some(s) = active_deadline {
        spec["activeDeadlineSeconds"] = json!(s);
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec
    }))?)
}

/// Creates the objects with [`PARALLEL`] requests in flight; returns each one's create-return time.
pub(crate) async fn create_all<K>(api: &Api<K>, objs: Vec<K>) -> anyhow::Result<HashMap<String, f64>>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    stream::iter(objs)
        .map(|o| async move {
            let name = o.name_any();
            api.create(&PostParams::default(), &o).await.with_context(|| format!("creating {name}"))?;
            Ok::<_, anyhow::Error>((name, now()))
        })
        .buffer_unordered(PARALLEL)
        .try_collect()
        .await
}

pub(crate) fn phase_of(a: &Activity) -> Option<Phase> {
    a.status.as_ref().and_then(|s| s.phase)
}

pub(crate) fn is_terminal(p: Option<Phase>) -> bool {
    matches!(p, Some(Phase::Succeeded | Phase::Failed | Phase::TimedOut | Phase::Canceled))
}

fn job_condition(j: &Job, types: &[&str], reason: Option<&str>) -> bool {
    j.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| {
        cs.iter().any(|c| {
            types.contains(&c.type_.as_str())
                && c.status == "True"
                && reason.is_none_or(|r| c.reason.as_deref() == Some(r))
        })
    })
}

/// How long to wait for N objects to get through the local control plane.
pub(crate) fn patience(n: usize, base_secs: u64) -> Duration {
    Duration::from_secs(base_secs + 60 + n as u64 / 5)
}

/// Jobs take longer: kube-controller-manager's client is rate-limited (20 QPS by default), and
/// 1,000 deadline-exceeded Jobs took about 6 minutes to show it.
fn job_patience(n: usize, base_secs: u64) -> Duration {
    patience(n, base_secs) + Duration::from_secs(n as u64 / 2)
}

/// `deadline`: N activities whose workers never heartbeat (or never finish), then N Jobs with
/// `activeDeadlineSeconds`, one after the other in the same run and namespace (unless `!jobs`).
pub async fn deadline(
    cluster: &Cluster,
    n: usize,
    timeout_secs: u64,
    kind: DeadlineKind,
    jobs: bool,
) -> anyhow::Result<RunResult> {
    let bench = Bench::new(cluster, "bench-deadline").await?;
    let acts: Api<Activity> = bench.api();
    let mut res = RunResult::new(format!("deadline ({kind:?}), N={n}, timeout {timeout_secs}s"));

    // Activities.
    let watch = FirstSeen::start(acts.clone(), |a: &Activity| is_terminal(phase_of(a))).await?;
    let spec = match kind {
        DeadlineKind::Heartbeat => json!({
            "heartbeatTimeout": format!("{timeout_secs}s"), "startToCloseTimeout": "1m",
            "retryPolicy": {"maximumAttempts": 1}, "template": shell("sleep 3600")}),
        DeadlineKind::StartToClose => json!({
            "startToCloseTimeout": format!("{timeout_secs}s"),
            "retryPolicy": {"maximumAttempts": 1}, "template": shell("sleep 3600")}),
    };
    let objs = (0..n).map(|i| activity(&format!("act-{i}"), spec.clone())).collect::<anyhow::Result<Vec<_>>>()?;
    let cp = ControlPlane::of(cluster)?;
    let cpu = CpuWindow::start(&bench.op, &cp)?;
    let t0 = Instant::now();
    create_all(&acts, objs).await?;
    res.push("activities: create all", t0.elapsed().as_secs_f64() * 1e3, "ms");
    watch.wait(n, patience(n, timeout_secs), "every activity terminal").await?;
    res.push("activities: create -> every one terminal", t0.elapsed().as_secs_f64() * 1e3, "ms");
    cpu.finish_cpu(&bench.op, &cp, &mut res)?;
    let mut lat = Vec::new();
    let mut own = Vec::new();
    for (name, (seen, a)) in watch.snapshot() {
        let st = a.status.clone().unwrap_or_default();
        ensure!(st.phase == Some(Phase::TimedOut), "{name} ended {:?}, not TimedOut", st.phase);
        let failure = st.last_failure.clone().with_context(|| format!("{name}: TimedOut without lastFailure"))?;
        let want = match kind {
            DeadlineKind::Heartbeat => TimeoutType::Heartbeat,
            DeadlineKind::StartToClose => TimeoutType::StartToClose,
        };
        ensure!(failure.timeout_type == Some(want), "{name}: timeoutType {:?}, not {want:?}", failure.timeout_type);
        let started = st
            .started_time
            .as_ref()
            .map(|t| secs(&t.0))
            .or_else(|| st.attempts.last().and_then(|r| r.started_time.as_ref()).map(|t| secs(&t.0)))
            .with_context(|| format!("{name}: no startedTime in the TimedOut status"))?;
        let from = match kind {
            DeadlineKind::Heartbeat => {
                st.last_heartbeat_time.as_ref().map(|t| secs(&t.0)).filter(|t| *t > started).unwrap_or(started)
            }
            DeadlineKind::StartToClose => started,
        };
        let due = from + timeout_secs as f64;
        ensure!(secs(&failure.time.0) >= due, "{name}: enforced early ({} < deadline {due})", secs(&failure.time.0));
        lat.push(seen - due);
        own.push(secs(&failure.time.0) - due);
    }
    drop(watch);
    res.push_dist_ms("activities: deadline -> watch shows TimedOut", &lat);
    res.push_dist_ms("activities: deadline -> lastFailure.time (operator clock)", &own);
    if !jobs {
        bench.finish(patience(n, 0)).await?;
        return Ok(res);
    }

    // Jobs, the same N, after the activities are done.
    let jobs: Api<Job> = bench.api();
    let watch = FirstSeen::start(jobs.clone(), |j: &Job| {
        job_condition(j, &["FailureTarget", "Failed"], Some("DeadlineExceeded"))
            || job_condition(j, &["Complete"], None)
    })
    .await?;
    let script = "sleep 3600";
    let objs =
        (0..n).map(|i| job(&format!("job-{i}"), script, Some(timeout_secs))).collect::<anyhow::Result<Vec<_>>>()?;
    let t0 = Instant::now();
    create_all(&jobs, objs).await?;
    res.push("jobs: create all", t0.elapsed().as_secs_f64() * 1e3, "ms");
    watch.wait(n, job_patience(n, timeout_secs), "every job past its deadline").await?;
    let mut jlat = Vec::new();
    for (name, (seen, j)) in watch.snapshot() {
        ensure!(
            job_condition(&j, &["FailureTarget", "Failed"], Some("DeadlineExceeded")),
            "job {name} finished without DeadlineExceeded"
        );
        let start = j
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .with_context(|| format!("job {name}: no startTime"))?;
        jlat.push(seen - (secs(&start.0) + timeout_secs as f64));
    }
    drop(watch);
    res.push_dist_ms("jobs: deadline -> watch shows DeadlineExceeded", &jlat);
    let (a, j) = (Dist::of(&lat), Dist::of(&jlat));
    res.push("ratio jobs/activities p50", j.p50 / a.p50.max(1e-3), "x");
    res.push("ratio jobs/activities p99", j.p99 / a.p99.max(1e-3), "x");
    res.notes.push(
        "Job status.startTime has whole seconds (the Job controller computes its deadline from the same truncated value)"
            .into(),
    );
    bench.finish(patience(n, 0)).await?;
    Ok(res)
}

/// `throughput`: N trivial activities created at once, then N trivial Jobs (unless `!jobs`).
pub async fn throughput(cluster: &Cluster, n: usize, jobs: bool) -> anyhow::Result<RunResult> {
    let bench = Bench::new(cluster, "bench-throughput").await?;
    let mut res = RunResult::new(format!("throughput, N={n}"));
    let pods: Api<Pod> = bench.api();
    let owner_of = |p: &Pod| p.owner_references().first().map(|o| format!("{}/{}", o.kind, o.name));
    let pod_watch = FirstSeen::start(pods.clone(), |_: &Pod| true).await?;

    // Activities.
    let acts: Api<Activity> = bench.api();
    let watch = FirstSeen::start(acts.clone(), |a: &Activity| is_terminal(phase_of(a))).await?;
    let spec = json!({"startToCloseTimeout": "5m", "retryPolicy": {"maximumAttempts": 1}, "template": shell("true")});
    let objs = (0..n).map(|i| activity(&format!("act-{i}"), spec.clone())).collect::<anyhow::Result<Vec<_>>>()?;
    let cp = ControlPlane::of(cluster)?;
    let cpu = CpuWindow::start(&bench.op, &cp)?;
    let t0 = now();
    let created = create_all(&acts, objs).await?;
    res.push("activities: create all (client)", (now() - t0) * 1e3, "ms");
    watch.wait(n, patience(n, 0), "every activity terminal").await?;
    cpu.finish_cpu(&bench.op, &cp, &mut res)?;
    let done = watch.snapshot();
    for (name, (_, a)) in &done {
        ensure!(phase_of(a) == Some(Phase::Succeeded), "{name} ended {:?}, not Succeeded", phase_of(a));
    }
    let pod_seen: HashMap<String, f64> =
        pod_watch.snapshot().values().filter_map(|(t, p)| Some((owner_of(p)?, *t))).collect();
    let mut to_pod = Vec::new();
    for (name, t) in &created {
        let seen = pod_seen.get(&format!("Activity/{name}")).with_context(|| format!("no pod seen for {name}"))?;
        to_pod.push(seen - t);
    }
    let last_pod = created.keys().filter_map(|n| pod_seen.get(&format!("Activity/{n}"))).fold(0f64, |a, b| a.max(*b));
    let last_done = done.values().fold(0f64, |a, (t, _)| a.max(*t));
    res.push("activities: first create -> every pod exists", (last_pod - t0) * 1e3, "ms");
    res.push("activities: first create -> every activity Succeeded", (last_done - t0) * 1e3, "ms");
    res.push_dist_ms("activities: create returned -> its pod seen", &to_pod);
    drop(watch);
    if !jobs {
        drop(pod_watch);
        bench.finish(patience(n, 0)).await?;
        return Ok(res);
    }

    // Jobs.
    let jobs: Api<Job> = bench.api();
    let watch = FirstSeen::start(jobs.clone(), |j: &Job| job_condition(j, &["Complete", "Failed"], None)).await?;
    let objs = (0..n).map(|i| job(&format!("job-{i}"), "true", None)).collect::<anyhow::Result<Vec<_>>>()?;
    let t0 = now();
    let created = create_all(&jobs, objs).await?;
    res.push("jobs: create all (client)", (now() - t0) * 1e3, "ms");
    watch.wait(n, job_patience(n, 0), "every job finished").await?;
    let done = watch.snapshot();
    for (name, (_, j)) in &done {
        ensure!(job_condition(j, &["Complete"], None), "job {name} did not complete");
    }
    let pod_seen: HashMap<String, f64> =
        pod_watch.snapshot().values().filter_map(|(t, p)| Some((owner_of(p)?, *t))).collect();
    let mut to_pod = Vec::new();
    for (name, t) in &created {
        let seen = pod_seen.get(&format!("Job/{name}")).with_context(|| format!("no pod seen for job {name}"))?;
        to_pod.push(seen - t);
    }
    let last_pod = created.keys().filter_map(|n| pod_seen.get(&format!("Job/{n}"))).fold(0f64, |a, b| a.max(*b));
    let last_done = done.values().fold(0f64, |a, (t, _)| a.max(*t));
    res.push("jobs: first create -> every pod exists", (last_pod - t0) * 1e3, "ms");
    res.push("jobs: first create -> every job Complete", (last_done - t0) * 1e3, "ms");
    res.push_dist_ms("jobs: create returned -> its pod seen", &to_pod);
    drop(watch);
    drop(pod_watch);
    bench.finish(patience(n, 0)).await?;
    Ok(res)
}

/// `writes`: the operator's writes per attempt and per heartbeat, heartbeat PATCH latency, RSS.
pub async fn writes(cluster: &Cluster, n: usize, rounds: usize) -> anyhow::Result<RunResult> {
    const WRITES: &str = "activity_operator_api_writes_total";
    let bench = Bench::new(cluster, "bench-writes").await?;
    let mut res = RunResult::new(format!("writes, N={n}, {rounds} heartbeat rounds"));
    let total = |m: &HashMap<String, f64>| m.values().sum::<f64>();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_idle, _) = bench.op.rss_kib()?;
    res.push("operator RSS idle", rss_idle as f64 / 1024.0, "MiB");
    let w0 = bench.op.counters(WRITES).await?;

    let acts: Api<Activity> = bench.api();
    let spec = json!({"heartbeatTimeout": "2m", "startToCloseTimeout": "10m",
                      "retryPolicy": {"maximumAttempts": 1}, "template": shell("sleep 3600")});
    let objs = (0..n).map(|i| activity(&format!("act-{i}"), spec.clone())).collect::<anyhow::Result<Vec<_>>>()?;
    create_all(&acts, objs).await?;
    wait_for(patience(n, 0), "every activity Running", || async {
        let list = acts.list(&Default::default()).await?;
        let running = list.items.iter().filter(|a| phase_of(a) == Some(Phase::Running)).count();
        Ok((running == n).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let w1 = bench.op.counters(WRITES).await?;
    let (rss_n, _) = bench.op.rss_kib()?;
    res.push(format!("operator RSS with {n} running activities"), rss_n as f64 / 1024.0, "MiB");
    res.push("operator writes per attempt: create -> Running", (total(&w1) - total(&w0)) / n as f64, "writes");

    // Heartbeats, as workers send them.
    let pp = PatchParams { field_manager: Some("activity-worker".into()), ..Default::default() };
    let cpu0 = bench.op.cpu_seconds()?;
    let t0 = Instant::now();
    let mut lat = Vec::new();
    for round in 0..rounds {
        let mut l: Vec<f64> = stream::iter(0..n)
            .map(|i| {
                let (acts, pp) = (acts.clone(), pp.clone());
                async move {
                    let stamp = k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
                    let patch: json_patch::Patch = serde_json::from_value(json!([
                        {"op": "test", "path": "/status/attempt", "value": 1},
                        {"op": "add", "path": "/status/lastHeartbeatTime", "value": stamp},
                        {"op": "add", "path": "/status/heartbeatDetails", "value": {"progress": {"done": round + 1, "total": rounds}}},
                    ]))?;
                    let t = Instant::now();
                    acts.patch_status(&format!("act-{i}"), &pp, &Patch::<()>::Json(patch)).await?;
                    Ok::<_, anyhow::Error>(t.elapsed().as_secs_f64())
                }
            })
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await?;
        lat.append(&mut l);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hb_wall = t0.elapsed().as_secs_f64();
    let cpu = bench.op.cpu_seconds()? - cpu0;
    let w2 = bench.op.counters(WRITES).await?;
    let hb_writes = total(&w2) - total(&w1);
    res.push_dist_ms("heartbeat PATCH latency (client)", &lat);
    res.push("heartbeats sent", (n * rounds) as f64, "");
    res.push("operator writes per heartbeat", hb_writes / (n * rounds) as f64, "writes");
    res.push("operator CPU while heartbeating (incl. 2 s settle)", cpu / hb_wall * 1e3, "millicores");
    ensure!(hb_writes == 0.0, "the operator wrote {hb_writes} times for {} heartbeats", n * rounds);

    // Outcomes: every worker reports success; the operator closes the attempt.
    stream::iter(0..n)
        .map(|i| {
            let (acts, pp) = (acts.clone(), pp.clone());
            async move {
                let patch: json_patch::Patch = serde_json::from_value(json!([
                    {"op": "test", "path": "/status/attempt", "value": 1},
                    {"op": "add", "path": "/status/outcome", "value": {"attempt": 1, "succeeded": true, "result": {"ok": true}}},
                ]))?;
                acts.patch_status(&format!("act-{i}"), &pp, &Patch::<()>::Json(patch)).await?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(PARALLEL)
        .try_collect::<Vec<_>>()
        .await?;
    wait_for(patience(n, 0), "every activity Succeeded", || async {
        let list = acts.list(&Default::default()).await?;
        if let Some(a) = list.items.iter().find(|a| is_terminal(phase_of(a)) && phase_of(a) != Some(Phase::Succeeded)) {
            bail!("{} ended {:?}", a.name_any(), phase_of(a));
        }
        let done = list.items.iter().filter(|a| phase_of(a) == Some(Phase::Succeeded)).count();
        Ok((done == n).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let w3 = bench.op.counters(WRITES).await?;
    let (_, hwm) = bench.op.rss_kib()?;
    res.push("operator writes per attempt: Running -> Succeeded", (total(&w3) - total(&w2)) / n as f64, "writes");
    res.push("operator writes per attempt: whole attempt", (total(&w3) - total(&w0)) / n as f64, "writes");
    let mut kinds: Vec<_> = w3.iter().collect();
    kinds.sort_by(|a, b| a.0.cmp(b.0));
    for (labels, v) in kinds {
        let d = v - w0.get(labels).copied().unwrap_or(0.0);
        res.push(format!("  of which {labels}"), d / n as f64, "writes");
    }
    res.push("operator peak RSS (VmHWM)", hwm as f64 / 1024.0, "MiB");
    bench.finish(patience(n, 0)).await?;
    Ok(res)
}
