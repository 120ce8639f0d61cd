//! Chaos against the local cluster (issue 16): bursts of `demo batch` activities while the
//! operator is SIGKILLed and restarted, SIGSTOPped and resumed, and workers are SIGSTOPped and
//! force-deleted; then the invariants, each round:
//!
//! - every activity reaches Succeeded with the batch's result (none lost or stuck);
//! - attempts are numbered without gaps and never doubled: `status.attempts` counts up by one to
//!   `status.attempt`, each naming pod `<name>-<n>`, and every pod seen is `<name>-<n>` with
//!   `n <= status.attempt` and one uid per name;
//! - never two live attempts: sampled every 200 ms, an activity has at most one pod with a running
//!   container; and in the workers' logs no attempt processes an item after a later attempt
//!   started (a force-deleted pod's process may outlive its API object by the node's 2 s: those
//!   are reported, not failed, since Kubernetes promises nothing for `--grace-period=0`);
//! - resumable items are never redone below a delivered heartbeat: once `status.heartbeatDetails`
//!   showed `lastItem: L` while attempt `a` was current, no attempt after `a` processes an item
//!   `<= L` (from the `processed item i` lines of the pod logs), and every item was processed.
//!
//! Also injected, once per round in turn: a SIGKILL and restart of kube-apiserver, of etcd or of
//! the process node, each started again exactly as `deploy/local/cluster.sh` started it (same
//! arguments, environment and directory, its own session, its pid recorded for `cluster.sh down`).
//! The activities run on the process node (its nodeSelector and toleration), whose pods are host
//! processes the test can SIGSTOP and whose logs it reads.
//!
//! Slow and disruptive, so ignored by plain `cargo test`:
//!
//! ```text
//! cargo test -p activity-tests --test chaos -- --ignored --nocapture
//! ```
//!
//! `CHAOS_ROUNDS` (default 5) sets the number of rounds.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use activity_crds::{Activity, LABEL_ACTIVITY, Phase};
use activity_tests::operator::{Operator, ensure_crd, worker_rbac};
use activity_tests::{TestNs, kubectl, local_dir, wait_for};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use rand::seq::SliceRandom;
use serde_json::{Value, json};

/// The process node's name.
const PROCESS_NODE: &str = "local-node";
/// The cluster components restarted in turn, one per round (their names under `pids/`).
const COMPONENTS: [&str; 3] = ["kube-apiserver", "etcd", "process-node"];

/// Activities per round.
const BURST: usize = 6;
/// Items of each batch.
const TOTAL: u64 = 15;
/// `--fail-after` of the activities of a burst, in turn (0: never fails by itself).
const FAIL_AFTER: [u64; BURST] = [0, 4, 6, 5, 0, 7];
/// The activities' heartbeat timeout, seconds: short, so a stopped worker times out within a round.
const HEARTBEAT_TIMEOUT: u64 = 3;
/// A worker stays SIGSTOPped from 3 s up to this (ms): around the heartbeat timeout and the
/// pod's stop that follows it (its 2 s grace period).
const WORKER_STOP_MAX_MS: u64 = 8000;
/// How long the operator stays SIGSTOPped.
const OPERATOR_STOP: Duration = Duration::from_secs(3);
/// Sampling period of pods and activities.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// Longest wait for a burst to finish.
const ROUND_TIMEOUT: Duration = Duration::from_secs(120);

fn spec(fail_after: u64) -> Value {
    json!({
        "startToCloseTimeout": "40s",
        "heartbeatTimeout": format!("{HEARTBEAT_TIMEOUT}s"),
        "retryPolicy": {"initialInterval": "500ms", "backoffCoefficient": 1.5, "maximumInterval": "2s",
                        "maximumAttempts": 40},
        "template": {"spec": {
            "terminationGracePeriodSeconds": 2,
            "nodeSelector": {"kubernetes.io/hostname": PROCESS_NODE},
            "tolerations": [{"key": activity_tests::realnode::PROCESS_NODE_TAINT, "operator": "Exists",
                             "effect": "NoSchedule"}],
            "containers": [{
                "name": "worker",
                "image": "ghcr.io/heartbeat-dev/activity-worker:0.1.0",
                "args": ["demo", "batch", "--total", TOTAL.to_string(), "--item-duration", "200ms",
                         "--fail-after", fail_after.to_string()],
            }],
        }},
    })
}

/// What the sampler saw during a round.
#[derive(Default, Debug)]
struct Observed {
    samples: usize,
    /// pod name → uids seen under that name.
    pod_uids: BTreeMap<String, BTreeSet<String>>,
    /// Moments when an activity had more than one pod with a running container.
    two_live: Vec<String>,
    /// activity → (attempt current at the time, highest `lastItem` seen in its heartbeatDetails).
    delivered: BTreeMap<String, BTreeMap<i32, u64>>,
    /// Failed list calls (the operator's faults do not touch the API server: should stay 0).
    list_errors: Vec<String>,
}

fn running_containers(pod: &Pod) -> usize {
    let statuses = pod.status.as_ref().and_then(|s| s.container_statuses.as_ref());
    let init = pod.status.as_ref().and_then(|s| s.init_container_statuses.as_ref());
    statuses.into_iter().chain(init).flatten().filter(|c| c.state.as_ref().is_some_and(|s| s.running.is_some())).count()
}

async fn sample_once(pods: &Api<Pod>, acts: &Api<Activity>, prefix: &str, obs: &Mutex<Observed>) {
    let lp = ListParams::default().labels(LABEL_ACTIVITY);
    let all = ListParams::default();
    let (pod_list, act_list) = tokio::join!(pods.list(&lp), acts.list(&all));
    let now = Timestamp::now();
    let mut obs = obs.lock().unwrap_or_else(|p| p.into_inner());
    obs.samples += 1;
    match pod_list {
        Ok(list) => {
            let mut live: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for pod in &list.items {
                let name = pod.metadata.name.clone().unwrap_or_default();
                let Some(activity) = pod.metadata.labels.as_ref().and_then(|l| l.get(LABEL_ACTIVITY)) else { continue };
                if !activity.starts_with(prefix) {
                    continue;
                }
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                obs.pod_uids.entry(name.clone()).or_default().insert(uid);
                if running_containers(pod) > 0 {
                    live.entry(activity.clone()).or_default().push(name);
                }
            }
            for (activity, pods) in live.into_iter().filter(|(_, p)| p.len() > 1) {
                obs.two_live.push(format!("{now}: {activity} has running containers in pods {pods:?}"));
            }
        }
        Err(e) => obs.list_errors.push(format!("{now}: list pods: {e}")),
    }
    match act_list {
        Ok(list) => {
            for a in &list.items {
                let name = a.metadata.name.clone().unwrap_or_default();
                let Some(st) = a.status.as_ref().filter(|_| name.starts_with(prefix)) else { continue };
                let (Some(attempt), Some(details)) = (st.attempt, st.heartbeat_details.as_ref()) else { continue };
                let Some(last) = details.to_value().ok().and_then(|v| v.get("lastItem")?.as_u64()) else { continue };
                let seen = obs.delivered.entry(name).or_default().entry(attempt).or_insert(last);
                *seen = (*seen).max(last);
            }
        }
        Err(e) => obs.list_errors.push(format!("{now}: list activities: {e}")),
    }
}

fn spawn_sampler(
    pods: Api<Pod>,
    acts: Api<Activity>,
    prefix: String,
) -> (Arc<AtomicBool>, Arc<Mutex<Observed>>, tokio::task::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let obs = Arc::new(Mutex::new(Observed::default()));
    let (s, o) = (stop.clone(), obs.clone());
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !s.load(Ordering::SeqCst) {
            tick.tick().await;
            sample_once(&pods, &acts, &prefix, &o).await;
        }
    });
    (stop, obs, task)
}

/// A worker container's host process, from the process node's `<state-dir>/pids/<pgid>` files
/// (`<start ticks> <ns>/<pod>/<container>`): its pid and start time (to tell it from a later
/// process that reuses the pid).
#[derive(Debug, Clone, Copy)]
struct HostProcess {
    pid: u32,
    ticks: u64,
}

fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22; fields after the command name (in parentheses, which may hold spaces).
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

fn host_process(ns: &str, pod: &str) -> Option<HostProcess> {
    let label = format!("{ns}/{pod}/worker");
    for entry in std::fs::read_dir(local_dir().join("node").join("pids")).ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        let mut words = text.split_whitespace();
        let (Some(ticks), Some(owner)) = (words.next().and_then(|t| t.parse::<u64>().ok()), words.next()) else {
            continue;
        };
        if owner == label && ticks != 0 && start_ticks(pid) == Some(ticks) {
            return Some(HostProcess { pid, ticks });
        }
    }
    None
}

/// Sends `signal` to that very process (by pid, after checking its start time); false when it is gone.
fn signal(p: HostProcess, signal: &str) -> bool {
    if start_ticks(p.pid) != Some(p.ticks) {
        return false;
    }
    Command::new("kill").args([signal, &p.pid.to_string()]).status().is_ok_and(|s| s.success())
}

/// A pod of this round whose worker container runs, with its host process; random among them.
async fn running_worker(
    pods: &Api<Pod>,
    ns: &str,
    prefix: &str,
    skip: &BTreeSet<String>,
) -> Option<(String, String, HostProcess)> {
    let list = pods.list(&ListParams::default().labels(LABEL_ACTIVITY)).await.ok()?;
    let mut candidates: Vec<(String, String, HostProcess)> = list
        .items
        .iter()
        .filter(|p| running_containers(p) > 0 && p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let activity = p.metadata.labels.as_ref()?.get(LABEL_ACTIVITY)?.clone();
            let name = p.metadata.name.clone()?;
            (activity.starts_with(prefix) && !skip.contains(&activity))
                .then(|| host_process(ns, &name).map(|h| (activity, name, h)))?
        })
        .collect();
    candidates.shuffle(&mut rand::rng());
    candidates.pop()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGKILL the operator and start it again.
    OperatorKill,
    /// SIGSTOP the operator, SIGCONT it after OPERATOR_STOP.
    OperatorStop,
    /// Delete a running worker's pod with grace period 0.
    WorkerKill,
    /// SIGSTOP a running worker's process; SIGCONT it 3–8 s later if it still lives.
    WorkerStop,
    /// SIGKILL a component of the cluster and start it again.
    ComponentRestart(&'static str),
}

/// The NUL-separated fields of a /proc file.
fn proc_fields(pid: u32, file: &str) -> anyhow::Result<Vec<OsString>> {
    let bytes = std::fs::read(format!("/proc/{pid}/{file}"))?;
    Ok(bytes.split(|b| *b == 0).filter(|f| !f.is_empty()).map(|f| OsString::from_vec(f.to_vec())).collect())
}

/// SIGKILLs the cluster's `component` and starts it again as `cluster.sh` had: the same argv,
/// environment and working directory, in a session of its own (`setsid`), its output appended to
/// `logs/<component>.log`, the new pid recorded in `pids/<component>.pid`.
async fn restart_component(component: &str) -> anyhow::Result<u32> {
    let dir = local_dir();
    let pid_file = dir.join("pids").join(format!("{component}.pid"));
    let pid: u32 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
    let argv = proc_fields(pid, "cmdline")?;
    let env: Vec<(OsString, OsString)> = proc_fields(pid, "environ")?
        .into_iter()
        .filter_map(|kv| {
            let kv = kv.into_vec();
            let eq = kv.iter().position(|b| *b == b'=')?;
            Some((OsString::from_vec(kv[..eq].to_vec()), OsString::from_vec(kv[eq + 1..].to_vec())))
        })
        .collect();
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))?;
    let (program, args) = argv.split_first().ok_or_else(|| anyhow::anyhow!("{component}: empty command line"))?;
    let killed = Command::new("kill").args(["-KILL", &pid.to_string()]).status()?;
    anyhow::ensure!(killed.success(), "kill -KILL {pid} ({component}) failed");
    // Gone, or a zombie waiting for its parent with no thread left. The leader thread of a Go
    // process turns zombie while its other threads still exit holding the listening sockets
    // (a restart then failed with "bind: address already in use").
    wait_for(Duration::from_secs(10), "the killed component gone", || async {
        let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0);
        Ok((threads <= 1).then_some(()))
    })
    .await?;
    let log_path = dir.join("logs").join(format!("{component}.log"));
    // Started again until it stays up: a port can still be in the kernel's hands for a moment.
    for _ in 0..5 {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let mut child = Command::new("setsid")
            .arg(program)
            .args(args)
            .env_clear()
            .envs(env.clone())
            .current_dir(&cwd)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        std::fs::write(&pid_file, format!("{}\n", child.id()))?;
        // The API server answers again (through it, etcd too), unless the new process died.
        let ready = wait_for(Duration::from_secs(60), "the API server ready after the restart", || {
            let exited = child.try_wait().ok().flatten().is_some();
            async move {
                if exited {
                    return Ok(Some(false));
                }
                Ok(kubectl(&["get", "--raw", "/readyz"]).ok().filter(|r| r.trim() == "ok").map(|_| true))
            }
        })
        .await?;
        if ready {
            return Ok(child.id());
        }
        eprintln!("chaos: {component} exited at once after its restart; starting it again");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    anyhow::bail!("{component} did not stay up after 5 restarts (see {})", log_path.display())
}

/// One attempt's worker log: when it started and the items it processed, with their times.
#[derive(Debug, Default)]
struct AttemptLog {
    started: Option<Timestamp>,
    items: Vec<(Timestamp, u64)>,
}

fn worker_log_path(ns: &str, pod: &str) -> PathBuf {
    local_dir().join("logs").join(format!("{ns}_{pod}_worker.log"))
}

/// Reads `<ts> INFO starting attempt …` and `<ts> INFO processed item <i>` lines.
fn read_attempt_log(ns: &str, pod: &str) -> Option<AttemptLog> {
    let text = std::fs::read_to_string(worker_log_path(ns, pod)).ok()?;
    let mut log = AttemptLog::default();
    for line in text.lines() {
        let Some((ts, rest)) = line.split_once(' ') else { continue };
        let Ok(ts) = ts.parse::<Timestamp>() else { continue };
        let rest = rest.trim_start();
        let msg = rest.strip_prefix("INFO").map(str::trim_start).unwrap_or(rest);
        if msg.starts_with("starting attempt") && log.started.is_none() {
            log.started = Some(ts);
        } else if let Some(i) = msg.strip_prefix("processed item ").and_then(|i| i.trim().parse::<u64>().ok()) {
            log.items.push((ts, i));
        }
    }
    Some(log)
}

/// The invariants of one activity at the end of its round; violations and notes as text.
fn check_activity(
    ns: &str,
    a: &Activity,
    obs: &Observed,
    force_deleted: &BTreeSet<String>,
    violations: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> (i32, usize) {
    let name = a.metadata.name.clone().unwrap_or_default();
    let st = a.status.clone().unwrap_or_default();
    let mut v = |s: String| violations.push(format!("{name}: {s}"));
    // Succeeded, with the batch's result.
    if st.phase != Some(Phase::Succeeded) {
        v(format!("phase {:?}, not Succeeded", st.phase));
    }
    let result = st.result.as_ref().and_then(|r| r.to_value().ok());
    if result != Some(json!({"processed": TOTAL})) {
        v(format!("result {result:?}, expected {{\"processed\": {TOTAL}}}"));
    }
    // Attempts without gaps, never doubled.
    let n = st.attempt.unwrap_or(0);
    let numbers: Vec<i32> = st.attempts.iter().map(|r| r.attempt).collect();
    let expected: Vec<i32> = ((n - numbers.len() as i32 + 1)..=n).collect();
    if numbers != expected || numbers.is_empty() {
        v(format!("status.attempts numbered {numbers:?} with status.attempt {n}, expected {expected:?}"));
    }
    if n <= 10 && numbers.first() != Some(&1) {
        v(format!("status.attempts {numbers:?} does not start at 1 though only {n} attempts ran"));
    }
    for r in &st.attempts {
        if r.pod_name != format!("{name}-{}", r.attempt) {
            v(format!("attempt {} recorded with pod {}", r.attempt, r.pod_name));
        }
        let last = r.attempt == n;
        if (r.outcome == "Succeeded") != last {
            v(format!("attempt {} recorded {} (the last attempt is {n})", r.attempt, r.outcome));
        }
    }
    for (pod, uids) in obs.pod_uids.range(format!("{name}-")..).take_while(|(p, _)| p.starts_with(&format!("{name}-")))
    {
        let Some(k) = pod.strip_prefix(&format!("{name}-")).and_then(|k| k.parse::<i32>().ok()) else {
            // A longer activity name sharing this prefix (r0-a1 vs r0-a10) is not this one's.
            continue;
        };
        if k < 1 || k > n {
            v(format!("pod {pod} exists, but the activity's last attempt is {n}"));
        }
        if uids.len() > 1 {
            v(format!("attempt {k} had {} pods named {pod} (uids {uids:?}): a doubled attempt", uids.len()));
        }
    }
    // The workers' logs.
    let logs: BTreeMap<i32, AttemptLog> =
        (1..=n).filter_map(|k| read_attempt_log(ns, &format!("{name}-{k}")).map(|l| (k, l))).collect();
    let mut processed: BTreeMap<u64, usize> = BTreeMap::new();
    for (k, log) in &logs {
        for (_, i) in &log.items {
            *processed.entry(*i).or_default() += 1;
        }
        // Items within an attempt go up one by one.
        if log.items.windows(2).any(|w| w[1].1 != w[0].1 + 1) {
            v(format!(
                "attempt {k} processed items out of order: {:?}",
                log.items.iter().map(|x| x.1).collect::<Vec<_>>()
            ));
        }
    }
    let missing: Vec<u64> = (0..TOTAL).filter(|i| !processed.contains_key(i)).collect();
    if !missing.is_empty() {
        v(format!("items {missing:?} never processed (logs of attempts {:?})", logs.keys().collect::<Vec<_>>()));
    }
    // Never redone below a delivered heartbeat.
    if let Some(delivered) = obs.delivered.get(&name) {
        for (&seen_in, &last) in delivered {
            for (k, log) in logs.range(seen_in + 1..) {
                let redone: Vec<u64> = log.items.iter().map(|x| x.1).filter(|i| *i <= last).collect();
                if !redone.is_empty() {
                    v(format!(
                        "attempt {k} redid items {redone:?} though lastItem {last} was delivered while attempt {seen_in} was current"
                    ));
                }
            }
        }
    }
    // No attempt works after a later one started.
    for (k, log) in &logs {
        for (later, next) in logs.range(k + 1..) {
            let Some(started) = next.started else { continue };
            let late: Vec<String> =
                log.items.iter().filter(|(ts, _)| *ts > started).map(|(ts, i)| format!("item {i} at {ts}")).collect();
            if late.is_empty() {
                continue;
            }
            let what =
                format!("attempt {k} processed {late:?} after attempt {later} started at {started}: two live attempts");
            if force_deleted.contains(&format!("{name}-{k}")) {
                notes.push(format!("{name}: {what} (its pod was force-deleted)"));
            } else {
                v(what);
            }
        }
    }
    let redone = processed.values().map(|c| c - 1).sum::<usize>();
    (n, redone)
}

struct RoundReport {
    attempts: i32,
    redone: usize,
    faults: Vec<String>,
    samples: usize,
    /// (activity, attempt) pairs with a delivered heartbeat seen, and pods seen.
    delivered: usize,
    pods: usize,
    secs: f64,
}

async fn round(
    r: usize,
    ns: &TestNs,
    op: Operator,
    violations: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> (Operator, RoundReport) {
    let mut op = op;
    let acts = ns.api::<Activity>();
    let pods = ns.api::<Pod>();
    let prefix = format!("r{r}-");
    let names: Vec<String> = (0..BURST).map(|i| format!("r{r}-a{i}")).collect();
    let started = Instant::now();
    let (stop, obs, sampler) = spawn_sampler(pods.clone(), acts.clone(), prefix.clone());
    for (name, fail_after) in names.iter().zip(FAIL_AFTER) {
        let act: Activity = serde_json::from_value(json!({
            "apiVersion": "heartbeat.dev/v1alpha1", "kind": "Activity",
            "metadata": {"name": name}, "spec": spec(fail_after)
        }))
        .expect("activity json");
        acts.create(&PostParams::default(), &act).await.expect("create activity");
    }
    let mut faults = vec![
        Fault::OperatorKill,
        Fault::OperatorStop,
        Fault::WorkerKill,
        Fault::WorkerStop,
        Fault::ComponentRestart(COMPONENTS[r % COMPONENTS.len()]),
    ];
    faults.shuffle(&mut rand::rng());
    let mut done = Vec::new();
    let mut force_deleted = BTreeSet::new();
    let mut resume: Option<tokio::task::JoinHandle<String>> = None;
    let mut hit: BTreeSet<String> = BTreeSet::new();
    for fault in faults {
        tokio::time::sleep(Duration::from_millis(rand::random_range(700..1500))).await;
        let at = started.elapsed().as_secs_f64();
        match fault {
            Fault::OperatorKill => {
                op = op.restart().await.expect("operator restart");
                done.push(format!("{at:.1}s operator SIGKILL+restart"));
            }
            Fault::ComponentRestart(component) => match restart_component(component).await {
                Ok(pid) => done.push(format!("{at:.1}s {component} SIGKILL+restart (pid {pid})")),
                Err(e) => violations.push(format!("round {r}: restarting {component}: {e:#}")),
            },
            Fault::OperatorStop => {
                op.pause().expect("SIGSTOP operator");
                tokio::time::sleep(OPERATOR_STOP).await;
                op.resume().expect("SIGCONT operator");
                done.push(format!("{at:.1}s operator SIGSTOP {OPERATOR_STOP:?}"));
            }
            Fault::WorkerKill => {
                // Wait a little for a running worker if none runs right now (between attempts).
                let found = wait_for(Duration::from_secs(10), "a running worker", || async {
                    Ok(running_worker(&pods, &ns.name, &prefix, &hit).await)
                })
                .await;
                match found {
                    Ok((activity, pod, _)) => {
                        let dp = DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() };
                        match pods.delete(&pod, &dp).await {
                            Ok(_) => {
                                force_deleted.insert(pod.clone());
                                hit.insert(activity);
                                done.push(format!("{at:.1}s force-deleted pod {pod}"));
                            }
                            Err(e) => done.push(format!("{at:.1}s force-delete of {pod} failed: {e}")),
                        }
                    }
                    Err(e) => done.push(format!("{at:.1}s no worker to kill: {e}")),
                }
            }
            Fault::WorkerStop => {
                let found = wait_for(Duration::from_secs(10), "a running worker", || async {
                    Ok(running_worker(&pods, &ns.name, &prefix, &hit).await)
                })
                .await;
                match found {
                    Ok((activity, pod, proc_)) => {
                        if signal(proc_, "-STOP") {
                            hit.insert(activity);
                            // Let go somewhere around the heartbeat timeout and the kill that
                            // follows it: before, while or after the operator stops its pod.
                            let after = Duration::from_millis(rand::random_range(3000..WORKER_STOP_MAX_MS));
                            done.push(format!("{at:.1}s SIGSTOP worker {pod} (pid {}) for {after:?}", proc_.pid));
                            resume = Some(tokio::spawn(async move {
                                tokio::time::sleep(after).await;
                                let state = if signal(proc_, "-CONT") { "resumed" } else { "already gone" };
                                format!("SIGCONT worker {pod} after {after:?}: {state}")
                            }));
                        } else {
                            done.push(format!("{at:.1}s worker {pod} gone before SIGSTOP"));
                        }
                    }
                    Err(e) => done.push(format!("{at:.1}s no worker to stop: {e}")),
                }
            }
        }
    }
    if let Some(cont) = resume.take() {
        done.push(cont.await.unwrap_or_else(|e| format!("SIGCONT task: {e}")));
    }
    // Every activity ends; a stuck one is a violation (reported with the namespace's state).
    let finished = wait_for(ROUND_TIMEOUT, "every activity of the round terminal", || async {
        let list = acts.list(&ListParams::default()).await?;
        let ours: Vec<&Activity> =
            list.items.iter().filter(|a| a.metadata.name.as_deref().is_some_and(|n| n.starts_with(&prefix))).collect();
        let terminal = ours.iter().filter(|a| a.status.as_ref().and_then(|s| s.phase).is_some_and(Phase::is_terminal));
        Ok((ours.len() == BURST && terminal.count() == BURST).then_some(()))
    })
    .await;
    // A few more samples after the end: a pod still running next to a finished attempt shows here.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let _ = sampler.await;
    let secs = started.elapsed().as_secs_f64();
    if let Err(e) = finished {
        violations.push(format!("round {r}: {e:#}"));
        for args in
            [vec!["get", "activities", "-n", &ns.name, "-o", "wide"], vec!["get", "pods", "-n", &ns.name, "-o", "wide"]]
        {
            eprintln!("--- kubectl {}\n{}", args.join(" "), kubectl(&args).unwrap_or_else(|e| e.to_string()));
        }
    }
    let obs = Arc::try_unwrap(obs).map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner())).unwrap_or_default();
    for two in &obs.two_live {
        violations.push(format!("round {r}: {two}"));
    }
    for e in &obs.list_errors {
        notes.push(format!("round {r}: sampler: {e}"));
    }
    let mut attempts = 0;
    let mut redone = 0;
    for name in &names {
        match acts.get(name).await {
            Ok(a) => {
                let mut v = Vec::new();
                let (n, re) = check_activity(&ns.name, &a, &obs, &force_deleted, &mut v, notes);
                attempts += n;
                redone += re;
                violations.extend(v.into_iter().map(|s| format!("round {r}: {s}")));
            }
            Err(e) => violations.push(format!("round {r}: {name}: lost: {e}")),
        }
    }
    let delivered = obs.delivered.values().map(BTreeMap::len).sum();
    let pods_seen = obs.pod_uids.len();
    (op, RoundReport { attempts, redone, faults: done, samples: obs.samples, delivered, pods: pods_seen, secs })
}

#[tokio::test]
#[ignore = "chaos against the local cluster: run with --ignored (make chaos)"]
async fn activities_survive_operator_and_worker_faults() {
    let rounds: usize = std::env::var("CHAOS_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    ensure_crd().expect("CRD");
    let ns = TestNs::new("chaos").await.expect("namespace");
    worker_rbac(&ns.name).expect("worker RBAC");
    let mut op = Operator::start(&ns.name).await.expect("operator");
    let mut violations = Vec::new();
    let mut notes = Vec::new();
    for r in 0..rounds {
        let before = violations.len();
        let (next, report) = round(r, &ns, op, &mut violations, &mut notes).await;
        op = next;
        eprintln!(
            "chaos round {r}: {:.1}s, {BURST} activities, {} attempts, {} items redone (above delivered heartbeats), {} samples ({} pods, {} delivered heartbeats seen), {} violations; faults: {}",
            report.secs,
            report.attempts,
            report.redone,
            report.samples,
            report.pods,
            report.delivered,
            violations.len() - before,
            report.faults.join("; ")
        );
    }
    for n in &notes {
        eprintln!("note: {n}");
    }
    if !violations.is_empty() {
        let log = std::fs::read_to_string(&op.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!("--- operator log (last lines)\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        panic!(
            "{} invariant violations in {rounds} rounds (namespace {} kept):\n{}",
            violations.len(),
            ns.name,
            violations.join("\n")
        );
    }
    drop(op);
    ns.delete().await.expect("delete namespace");
}
