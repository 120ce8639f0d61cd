//! The controller against the real local cluster: each test runs its own operator on its own
//! namespace. Workers here are plain shell processes (image `busybox` runs host commands on the
//! process node); where a test needs a worker's heartbeat or outcome it writes them through the
//! API exactly as a worker would (JSON Patch of the status subresource with a `test` of the attempt).

use std::time::Duration;

use activity_crds::{Activity, Phase, TimeoutType};
use activity_tests::operator::{Operator, ensure_crd, worker_rbac};
use activity_tests::{TestNs, kubectl, wait_for};
use k8s_openapi::api::core::v1::{Pod, ResourceQuota};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

struct Scenario {
    ns: TestNs,
    op: Operator,
    acts: Api<Activity>,
    pods: Api<Pod>,
}

impl Scenario {
    async fn new(prefix: &str) -> Scenario {
        Self::with_args(prefix, &[]).await
    }

    /// A scenario whose operator gets `args` after the test defaults.
    async fn with_args(prefix: &str, args: &[&str]) -> Scenario {
        ensure_crd().expect("CRD");
        let ns = TestNs::new(prefix).await.expect("namespace");
        worker_rbac(&ns.name).expect("worker RBAC");
        let op = Operator::start_with(&ns.name, args).await.expect("operator");
        let acts = ns.api::<Activity>();
        let pods = ns.api::<Pod>();
        Scenario { ns, op, acts, pods }
    }

    async fn create(&self, name: &str, spec: Value) -> Activity {
        let act: Activity = serde_json::from_value(json!({
            "apiVersion": "heartbeat.dev/v1alpha1", "kind": "Activity",
            "metadata": {"name": name}, "spec": spec
        }))
        .expect("activity json");
        self.acts.create(&PostParams::default(), &act).await.expect("create activity")
    }

    /// Waits until `check` accepts the activity; on timeout dumps the namespace and panics.
    async fn wait(&self, name: &str, secs: u64, what: &str, check: impl Fn(&Activity) -> bool) -> Activity {
        let res = wait_for(Duration::from_secs(secs), what, || async {
            Ok(self.acts.get_opt(name).await?.filter(|a| check(a)))
        })
        .await;
        match res {
            Ok(a) => a,
            Err(e) => {
                self.dump();
                panic!("{name}: {e:#}");
            }
        }
    }

    async fn wait_phase(&self, name: &str, phase: Phase, secs: u64) -> Activity {
        self.wait(name, secs, &format!("phase {phase:?}"), |a| phase_of(a) == Some(phase)).await
    }

    /// Creates a single-attempt activity whose worker sleeps (the test heartbeats for it) and waits
    /// until it runs.
    async fn start_silent_worker(&self, name: &str, heartbeat_timeout_secs: u64) {
        let spec = json!({"startToCloseTimeout": "5m", "heartbeatTimeout": format!("{heartbeat_timeout_secs}s"),
                          "retryPolicy": {"maximumAttempts": 1}, "template": shell("sleep 3600")});
        self.create(name, spec).await;
        self.wait_phase(name, Phase::Running, 60).await;
    }

    /// Waits for the activity to time out on its heartbeat and returns how long after `last_beat`
    /// the operator enforced it.
    async fn heartbeat_timeout_after(&self, name: &str, last_beat: Timestamp) -> SignedDuration {
        let a = self.wait_phase(name, Phase::TimedOut, 30).await;
        let f = status(&a).last_failure.expect("lastFailure");
        assert_eq!((f.attempt, f.timeout_type), (1, Some(TimeoutType::Heartbeat)));
        f.time.0.duration_since(last_beat)
    }

    async fn wait_gone(&self, name: &str, secs: u64) {
        let res = wait_for(Duration::from_secs(secs), "activity deleted", || async {
            Ok(self.acts.get_opt(name).await?.is_none().then_some(()))
        })
        .await;
        if let Err(e) = res {
            self.dump();
            panic!("{name}: {e:#}");
        }
    }

    fn dump(&self) {
        let ns = &self.ns.name;
        for args in [
            vec!["get", "activities", "-n", ns, "-o", "yaml"],
            vec!["get", "pods", "-n", ns, "-o", "wide"],
            vec!["get", "events", "-n", ns],
        ] {
            eprintln!("--- kubectl {}\n{}", args.join(" "), kubectl(&args).unwrap_or_else(|e| e.to_string()));
        }
        let log = std::fs::read_to_string(&self.op.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        eprintln!("--- operator log (last lines)\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }

    /// A heartbeat as the worker of `attempt` sends it.
    async fn heartbeat(&self, name: &str, attempt: i32, details: Value) -> Result<Activity, kube::Error> {
        let now = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        self.worker_patch(
            name,
            json!([
                {"op": "test", "path": "/status/attempt", "value": attempt},
                {"op": "add", "path": "/status/lastHeartbeatTime", "value": now},
                {"op": "add", "path": "/status/heartbeatDetails", "value": details},
            ]),
        )
        .await
    }

    async fn worker_patch(&self, name: &str, ops: Value) -> Result<Activity, kube::Error> {
        let patch: json_patch::Patch = serde_json::from_value(ops).expect("json patch");
        let params = PatchParams { field_manager: Some("activity-worker".into()), ..Default::default() };
        self.acts.patch_status(name, &params, &Patch::<()>::Json(patch)).await
    }

    async fn pods_of(&self, name: &str) -> Vec<Pod> {
        let lp = ListParams::default().labels(&format!("heartbeat.dev/activity={name}"));
        self.pods.list(&lp).await.expect("list pods").items
    }

    /// Waits until the operator's `deadlines_armed` gauge shows `n`.
    async fn wait_armed(&self, n: u32) {
        wait_for(Duration::from_secs(20), "deadlines_armed gauge", || async {
            let armed = self.op.counter("activity_operator_deadlines_armed").await?;
            Ok((armed == f64::from(n)).then_some(()))
        })
        .await
        .unwrap_or_else(|e| panic!("deadlines_armed never showed {n}: {e}"));
    }

    async fn finish(self) {
        drop(self.op);
        self.ns.delete().await.expect("delete namespace");
    }
}

fn status(a: &Activity) -> activity_crds::ActivityStatus {
    a.status.clone().unwrap_or_default()
}

fn phase_of(a: &Activity) -> Option<Phase> {
    a.status.as_ref().and_then(|s| s.phase)
}

/// A worker whose pod stays Pending: its node selector matches no node, so it never starts.
fn never_scheduled() -> Value {
    let mut template = shell("sleep 3600");
    template["spec"]["nodeSelector"] = json!({"heartbeat.dev/no-such-node": "true"});
    template
}

fn shell(script: &str) -> Value {
    json!({"spec": {"containers": [{"name": "worker", "image": "busybox", "command": ["sh", "-c", script]}]}})
}

#[tokio::test]
async fn hung_worker_times_out_on_heartbeat_and_is_retried() {
    let s = Scenario::new("op-heartbeat").await;
    s.create(
        "hung",
        json!({"startToCloseTimeout": "1m", "heartbeatTimeout": "2s",
               "retryPolicy": {"initialInterval": "1s", "maximumAttempts": 2},
               "template": shell("sleep 3600")}),
    )
    .await;
    let a = s.wait_phase("hung", Phase::TimedOut, 60).await;
    let st = status(&a);
    assert_eq!(st.attempt, Some(2));
    let f = st.last_failure.expect("lastFailure");
    assert_eq!(f.timeout_type, Some(TimeoutType::Heartbeat));
    assert_eq!(st.attempts.len(), 2);
    assert!(st.attempts.iter().all(|r| r.outcome == "TimedOut"));
    // Both hung workers were stopped: their pods end terminated, not running.
    wait_for(Duration::from_secs(60), "hung pods stopped", || async {
        let pods = s.pods_of("hung").await;
        let running = pods.iter().filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
        Ok((running.count() == 0).then_some(()))
    })
    .await
    .expect("pods stopped");
    s.finish().await;
}

#[test]
fn the_operator_allocates_with_jemalloc_returning_freed_pages_after_a_second() {
    // jemalloc prints its options and statistics at exit when asked through its environment.
    let exe = activity_tests::operator::workspace_bin("activity-operator").expect("operator binary");
    let out = std::process::Command::new(exe)
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .expect("run the operator");
    let stats = String::from_utf8_lossy(&out.stderr);
    assert!(stats.contains("jemalloc statistics"), "the operator does not run on jemalloc: {stats}");
    assert!(stats.contains("opt.dirty_decay_ms: 1000 "), "jemalloc runs without the operator's options: {stats}");
}

#[tokio::test]
async fn connections_a_burst_opened_close_once_idle_beyond_the_bound() {
    // Twenty-four activities reconciled at once: their finalizer, pod and status requests are in
    // flight together, each on a connection of its own (HTTP/1.1).
    let s = Scenario::with_args("op-idle", &["--concurrency", "32", "--idle-connections", "2"]).await;
    let spec = json!({"startToCloseTimeout": "5m", "template": shell("sleep 3600")});
    let names: Vec<String> = (0..24).map(|i| format!("b{i}")).collect();
    futures::future::join_all(names.iter().map(|name| s.create(name, spec.clone()))).await;
    for name in &names {
        s.wait_phase(name, Phase::Running, 60).await;
    }
    let port = activity_tests::apiserver_port().await.expect("the API server's port");
    // Once the burst is over: the two watches (Activities, pods) plus at most two idle.
    let settled = wait_for(Duration::from_secs(20), "at most 4 connections", || async {
        Ok(Some(s.op.connections_to(port)?).filter(|&n| n <= 4))
    })
    .await;
    let now = s.op.connections_to(port).expect("the operator's sockets");
    assert!(
        settled.is_ok(),
        "{now} connections to the API server stay open after the burst: more than 2 watches + 2 idle"
    );
    s.finish().await;
}

#[tokio::test]
async fn start_to_close_timeout_ends_the_attempt() {
    let s = Scenario::new("op-stc").await;
    s.create(
        "slow",
        json!({"startToCloseTimeout": "3s", "retryPolicy": {"maximumAttempts": 1}, "template": shell("sleep 3600")}),
    )
    .await;
    let a = s.wait_phase("slow", Phase::TimedOut, 60).await;
    let st = status(&a);
    assert_eq!(st.last_failure.and_then(|f| f.timeout_type), Some(TimeoutType::StartToClose));
    let started = st.started_time.expect("startedTime").0;
    let closed = st.closed_time.expect("closedTime").0;
    assert!(closed.duration_since(started) >= k8s_openapi::jiff::SignedDuration::from_secs(3), "never early");
    s.finish().await;
}

#[tokio::test]
async fn unknown_image_times_out_schedule_to_start_without_retry() {
    let s = Scenario::new("op-sts").await;
    s.create(
        "nopull",
        json!({"startToCloseTimeout": "1m", "scheduleToStartTimeout": "3s",
               "template": {"spec": {"containers": [{"name": "w", "image": "registry.invalid/none/such:1"}]}}}),
    )
    .await;
    let a = s.wait_phase("nopull", Phase::TimedOut, 60).await;
    let st = status(&a);
    assert_eq!(st.attempt, Some(1), "never retried");
    let f = st.last_failure.expect("lastFailure");
    assert_eq!((f.timeout_type, f.non_retryable), (Some(TimeoutType::ScheduleToStart), true));
    assert!(f.message.contains("ErrImagePull") || f.message.contains("ImagePullBackOff"), "{}", f.message);
    s.finish().await;
}

#[tokio::test]
async fn schedule_to_close_ends_the_retries() {
    let s = Scenario::new("op-s2c").await;
    s.create(
        "flaky",
        json!({"scheduleToCloseTimeout": "12s", "startToCloseTimeout": "5s",
               "retryPolicy": {"initialInterval": "1s", "backoffCoefficient": 1.0},
               "template": shell("exit 1")}),
    )
    .await;
    let a = s.wait_phase("flaky", Phase::TimedOut, 60).await;
    let st = status(&a);
    assert_eq!(st.last_failure.as_ref().and_then(|f| f.timeout_type), Some(TimeoutType::ScheduleToClose));
    assert!(st.attempts.len() >= 2, "retried before the deadline: {:?}", st.attempts);
    // Every attempt failed on its exit code, except one cut short by the deadline itself.
    let (last, earlier) = st.attempts.split_last().expect("attempts");
    assert!(earlier.iter().all(|r| r.failure.as_ref().is_some_and(|f| f.type_ == "ExitCode")), "{earlier:?}");
    let last = last.failure.as_ref().expect("last failure");
    assert!(last.type_ == "ExitCode" || last.timeout_type == Some(TimeoutType::ScheduleToClose), "{last:?}");
    s.finish().await;
}

#[tokio::test]
async fn non_retryable_failures_end_the_activity_at_once() {
    let s = Scenario::new("op-nonretry").await;
    s.create(
        "fatal",
        json!({"startToCloseTimeout": "1m", "retryPolicy": {"nonRetryableErrorTypes": ["BadInput"]},
               "template": shell("sleep 3600")}),
    )
    .await;
    s.wait_phase("fatal", Phase::Running, 60).await;
    s.worker_patch(
        "fatal",
        json!([
            {"op": "test", "path": "/status/attempt", "value": 1},
            {"op": "add", "path": "/status/outcome", "value": {"attempt": 1, "succeeded": false,
                "failure": {"type": "BadInput", "message": "record 7 is malformed", "nonRetryable": false}}},
        ]),
    )
    .await
    .expect("outcome");
    let a = s.wait_phase("fatal", Phase::Failed, 30).await;
    let st = status(&a);
    let f = st.last_failure.expect("lastFailure");
    assert_eq!((f.type_.as_str(), f.non_retryable, f.message.as_str()), ("BadInput", true, "record 7 is malformed"));
    assert_eq!(st.attempt, Some(1));
    // The worker's own nonRetryable flag does the same for an unlisted type.
    s.create("fatal2", json!({"startToCloseTimeout": "1m", "template": shell("sleep 3600")})).await;
    s.wait_phase("fatal2", Phase::Running, 60).await;
    s.worker_patch(
        "fatal2",
        json!([
            {"op": "test", "path": "/status/attempt", "value": 1},
            {"op": "add", "path": "/status/outcome", "value": {"attempt": 1, "succeeded": false,
                "failure": {"type": "Whatever", "message": "no", "nonRetryable": true}}},
        ]),
    )
    .await
    .expect("outcome");
    let a = s.wait_phase("fatal2", Phase::Failed, 30).await;
    assert_eq!(status(&a).attempt, Some(1));
    s.finish().await;
}

#[tokio::test]
async fn a_killed_worker_is_retried_without_waiting_for_the_heartbeat_timeout() {
    let s = Scenario::new("op-crash").await;
    s.create(
        "crash",
        json!({"startToCloseTimeout": "10m", "heartbeatTimeout": "5m",
               "retryPolicy": {"initialInterval": "1s"}, "template": shell("sleep 3600")}),
    )
    .await;
    s.wait_phase("crash", Phase::Running, 60).await;
    s.pods
        .delete("crash-1", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
        .await
        .expect("kill pod");
    let a = s
        .wait("crash", 30, "attempt 2 running", |a| status(a).attempt == Some(2) && phase_of(a) == Some(Phase::Running))
        .await;
    let first = &status(&a).attempts[0];
    let f = first.failure.as_ref().expect("attempt 1 failure");
    assert_eq!(f.timeout_type, None, "judged by the pod, not by a heartbeat timeout: {f:?}");
    s.finish().await;
}

#[tokio::test]
async fn successful_outcome_carries_the_result_and_details_survive_retries() {
    let s = Scenario::new("op-success").await;
    s.create(
        "ok",
        json!({"startToCloseTimeout": "1m", "heartbeatTimeout": "30s",
               "retryPolicy": {"initialInterval": "1s"}, "template": shell("sleep 3600")}),
    )
    .await;
    s.wait_phase("ok", Phase::Running, 60).await;
    s.heartbeat("ok", 1, json!({"offset": 41, "progress": "41/100"})).await.expect("heartbeat");
    // attempt 1 crashes; attempt 2 sees the details of attempt 1
    s.pods.delete("ok-1", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await.expect("kill");
    let a = s
        .wait("ok", 30, "attempt 2 running", |a| status(a).attempt == Some(2) && phase_of(a) == Some(Phase::Running))
        .await;
    assert_eq!(
        status(&a).heartbeat_details.and_then(|d| d.to_value().ok()),
        Some(json!({"offset": 41, "progress": "41/100"}))
    );
    let table = kubectl(&["get", "act", "ok", "-n", &s.ns.name]).expect("kubectl get act");
    assert!(table.contains("41/100") && table.contains("Running"), "{table}");
    s.worker_patch(
        "ok",
        json!([
            {"op": "test", "path": "/status/attempt", "value": 2},
            {"op": "add", "path": "/status/outcome", "value": {"attempt": 2, "succeeded": true, "result": {"offset": 100}}},
        ]),
    )
    .await
    .expect("outcome");
    let a = s.wait_phase("ok", Phase::Succeeded, 30).await;
    let st = status(&a);
    assert_eq!(st.result.and_then(|d| d.to_value().ok()), Some(json!({"offset": 100})));
    let succeeded = st.conditions.iter().find(|c| c.type_ == "Succeeded").expect("condition");
    assert_eq!(succeeded.status, "True");
    assert_eq!(st.attempts.iter().map(|r| r.outcome.as_str()).collect::<Vec<_>>(), vec!["Failed", "Succeeded"]);
    let events =
        kubectl(&["get", "events", "-n", &s.ns.name, "--field-selector", "involvedObject.name=ok"]).expect("events");
    for reason in ["AttemptStarted", "AttemptFailed", "RetryScheduled", "Succeeded"] {
        assert!(events.contains(reason), "event {reason} missing:\n{events}");
    }
    s.finish().await;
}

#[tokio::test]
async fn a_zombie_heartbeat_from_an_old_attempt_is_refused() {
    let s = Scenario::new("op-zombie").await;
    s.create(
        "z",
        json!({"startToCloseTimeout": "1m", "retryPolicy": {"initialInterval": "1s"}, "template": shell("sleep 3600")}),
    )
    .await;
    s.wait_phase("z", Phase::Running, 60).await;
    s.pods.delete("z-1", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await.expect("kill");
    s.wait("z", 30, "attempt 2", |a| status(a).attempt == Some(2)).await;
    let refused = s.heartbeat("z", 1, json!({"from": "zombie"})).await;
    match refused {
        Err(kube::Error::Api(e)) => assert!(e.code == 422 || e.code == 409, "{e:?}"),
        other => panic!("a heartbeat of attempt 1 must be refused, got {other:?}"),
    }
    let a = s.acts.get("z").await.expect("get");
    assert_ne!(status(&a).heartbeat_details.and_then(|d| d.to_value().ok()), Some(json!({"from": "zombie"})));
    s.heartbeat("z", 2, json!({"from": "attempt 2"})).await.expect("the current attempt may heartbeat");
    s.finish().await;
}

#[tokio::test]
async fn a_heartbeat_causes_no_operator_write() {
    let s = Scenario::new("op-zero").await;
    s.create("beat", json!({"startToCloseTimeout": "5m", "heartbeatTimeout": "1m", "template": shell("sleep 3600")}))
        .await;
    s.wait_phase("beat", Phase::Running, 60).await;
    // Let the operator settle on the Running status, then count its writes across 20 heartbeats.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = s.op.counter("activity_operator_api_writes_total").await.expect("metrics");
    let reconciles_before = s.op.counter("activity_operator_reconcile_duration_seconds_count").await.expect("metrics");
    let lag_before = s.op.counter("activity_operator_heartbeat_lag_seconds_count").await.expect("metrics");
    for i in 0..20 {
        s.heartbeat("beat", 1, json!({"i": i})).await.expect("heartbeat");
    }
    // The operator saw every one of them (the heartbeat lag is observed once per heartbeat) ...
    wait_for(Duration::from_secs(20), "heartbeat lag observed 20 times", || async {
        let n = s.op.counter("activity_operator_heartbeat_lag_seconds_count").await?;
        Ok((n >= lag_before + 20.0).then_some(()))
    })
    .await
    .expect("operator observed the heartbeats");
    tokio::time::sleep(Duration::from_secs(1)).await;
    // ... wrote nothing, and did not even reconcile: the heartbeat deadline is a minute away.
    let after = s.op.counter("activity_operator_api_writes_total").await.expect("metrics");
    assert_eq!(after, before, "operator writes during 20 heartbeats");
    let reconciles = s.op.counter("activity_operator_reconcile_duration_seconds_count").await.expect("metrics");
    assert_eq!(reconciles, reconciles_before, "reconciles woken by 20 heartbeats");
    s.finish().await;
}

#[tokio::test]
async fn heartbeats_keep_an_attempt_alive_and_the_timeout_counts_from_the_last_one() {
    let s = Scenario::new("op-alive").await;
    s.start_silent_worker("alive", 6).await;
    // Heartbeats wake no reconcile; the deadline timer must read each one from the cache and move on.
    // 14 heartbeats a second apart outlive two heartbeatTimeouts, with 5 s to spare for each PATCH.
    let mut last = None;
    for i in 0..14 {
        let a = s.heartbeat("alive", 1, json!({"i": i})).await.expect("heartbeat");
        assert_eq!(phase_of(&a), Some(Phase::Running), "killed while heartbeating (heartbeat {i})");
        last = status(&a).last_heartbeat_time.map(|t| t.0);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let gap = s.heartbeat_timeout_after("alive", last.expect("a heartbeat time")).await;
    assert!(gap >= SignedDuration::from_secs(6), "enforced {gap:?} after the last heartbeat, before heartbeatTimeout");
    // The cache held the last heartbeat long before the deadline: the timeout was written over
    // the version it was judged on, with no read afresh.
    let reads = s.op.counter(r#"activity_operator_fresh_reads_total{kind="timeout"}"#).await.expect("metrics");
    assert_eq!(reads, 0.0, "a timeout judged on a current cache was read afresh");
    s.finish().await;
}

#[tokio::test]
async fn a_pod_the_pod_cache_does_not_show_is_read_before_the_attempt_is_failed() {
    let s = Scenario::new("op-lost").await;
    s.start_silent_worker("lost", 60).await;
    // The pod leaves the operator's pod watch (it selects on the activity label) but keeps running:
    // to the operator's cache it is gone, as it is while a lagging watch has not delivered it yet.
    let pod_reads = r#"activity_operator_fresh_reads_total{kind="pod"}"#;
    let before = s.op.counter(pod_reads).await.expect("metrics");
    let label = json!({"metadata": {"labels": {"heartbeat.dev/activity": null}}});
    s.pods.patch("lost-1", &PatchParams::default(), &Patch::Merge(&label)).await.expect("unlabel the pod");
    wait_for(Duration::from_secs(20), "the operator reads the pod", || async {
        let reads = s.op.counter(pod_reads).await?;
        Ok((reads > before).then_some(()))
    })
    .await
    .unwrap_or_else(|e| {
        s.dump();
        panic!("the pod missing from the cache was never read: {e}")
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let a = s.acts.get("lost").await.expect("get activity");
    let st = status(&a);
    assert_eq!((st.phase, st.attempt), (Some(Phase::Running), Some(1)), "the running attempt was judged lost");
    assert_eq!(st.last_failure, None);
    s.finish().await;
}

#[tokio::test]
async fn a_heartbeat_in_time_keeps_the_attempt_even_when_the_operator_sees_it_late() {
    let s = Scenario::new("op-late").await;
    s.start_silent_worker("late", 8).await;
    s.heartbeat("late", 1, json!({"i": 0})).await.expect("heartbeat 0");
    let first = Timestamp::now();
    // The operator is frozen while the worker heartbeats in time, and wakes after the deadline
    // counted from the heartbeat it last saw: its cache has not seen the new one yet.
    s.op.pause().expect("SIGSTOP the operator");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let beat = s.heartbeat("late", 1, json!({"i": 1})).await;
    let late_by =
        (SignedDuration::from_millis(9_500) - Timestamp::now().duration_since(first)).max(SignedDuration::ZERO);
    tokio::time::sleep(late_by.unsigned_abs()).await;
    s.op.resume().expect("SIGCONT the operator");
    let beat = beat.expect("heartbeat 1");
    let last = status(&beat).last_heartbeat_time.expect("lastHeartbeatTime").0;
    // Only the heartbeat that was in time counts: the attempt times out 8 s after it, not at once.
    let gap = s.heartbeat_timeout_after("late", last).await;
    assert!(gap >= SignedDuration::from_secs(8), "timed out {gap:?} after a heartbeat that was in time");
    // The timeout judged on the stale copy was refused (the version had moved on) and judged again.
    let reads = s.op.counter(r#"activity_operator_fresh_reads_total{kind="timeout"}"#).await.expect("metrics");
    assert!(reads >= 1.0, "the timeout judged on the stale copy was never judged again on a fresh read");
    s.finish().await;
}

#[tokio::test]
async fn cancel_requested_stops_the_worker_and_keeps_the_object() {
    let s = Scenario::new("op-cancel").await;
    s.create(
        "c",
        json!({"startToCloseTimeout": "10m", "cancellationGracePeriod": "1s", "template": shell("sleep 3600")}),
    )
    .await;
    s.wait_phase("c", Phase::Running, 60).await;
    s.wait_armed(1).await; // its start-to-close timer
    let params = PatchParams::default();
    s.acts.patch("c", &params, &Patch::Merge(json!({"spec": {"cancelRequested": true}}))).await.expect("cancel");
    let a = s.wait_phase("c", Phase::Canceled, 60).await;
    s.wait_armed(0).await;
    let st = status(&a);
    assert!(st.cancel_requested_time.is_some());
    assert_eq!(st.attempts.last().map(|r| r.outcome.as_str()), Some("Canceled"));
    // The worker that never heartbeats was stopped after the grace period, not after start-to-close.
    let pods = s.pods_of("c").await;
    assert!(pods.iter().all(|p| p.metadata.deletion_timestamp.is_some()
        || matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Failed" | "Succeeded"))));
    // The finalizer is released right after the terminal status is written.
    s.wait("c", 30, "finalizer released", |a| a.metadata.finalizers.clone().unwrap_or_default().is_empty()).await;
    s.finish().await;
}

#[tokio::test]
async fn delete_waits_for_a_silent_worker_for_the_grace_period_then_removes_it() {
    let s = Scenario::new("op-delete").await;
    s.create(
        "d",
        json!({"startToCloseTimeout": "10m", "cancellationGracePeriod": "2s", "template": shell("sleep 3600")}),
    )
    .await;
    s.wait_phase("d", Phase::Running, 60).await;
    s.acts.delete("d", &DeleteParams::default()).await.expect("delete");
    let a = s.wait_phase("d", Phase::Canceling, 10).await;
    assert!(a.metadata.deletion_timestamp.is_some(), "held by the finalizer");
    s.wait_gone("d", 60).await;
    // The worker is gone too.
    wait_for(Duration::from_secs(60), "worker pod gone", || async {
        Ok(s.pods.get_opt("d-1").await?.is_none().then_some(()))
    })
    .await
    .expect("pod gone");
    // A Pending activity is canceled at once.
    s.create(
        "p",
        json!({"startToCloseTimeout": "1m", "template": {"spec": {"containers": [{"name": "w", "image": "registry.invalid/x:1"}]}}}),
    )
    .await;
    s.wait_phase("p", Phase::Pending, 30).await;
    s.acts.delete("p", &DeleteParams::default()).await.expect("delete");
    s.wait_gone("p", 30).await;
    s.finish().await;
}

#[tokio::test]
async fn a_restarted_operator_rearms_deadlines_and_never_duplicates_a_pod() {
    let s = Scenario::new("op-restart").await;
    s.create(
        "r",
        json!({"startToCloseTimeout": "8s", "retryPolicy": {"maximumAttempts": 1}, "template": shell("sleep 3600")}),
    )
    .await;
    s.wait_phase("r", Phase::Running, 60).await;
    let Scenario { ns, mut op, acts, pods } = s;
    op.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let op = op.restart().await.expect("restart operator");
    let s = Scenario { ns, op, acts, pods };
    let a = s.wait_phase("r", Phase::TimedOut, 60).await;
    let st = status(&a);
    assert_eq!(st.last_failure.and_then(|f| f.timeout_type), Some(TimeoutType::StartToClose));
    assert_eq!((st.attempt, st.attempts.len()), (Some(1), 1), "one attempt");
    // Its one pod is stopped by the timeout (it may already be gone); no other pod ever existed.
    let names: Vec<String> = s.pods_of("r").await.into_iter().filter_map(|p| p.metadata.name).collect();
    assert!(names.iter().all(|n| n == "r-1"), "{names:?}");
    s.finish().await;
}

#[tokio::test]
async fn a_template_the_api_server_refuses_fails_the_activity_with_its_message() {
    let s = Scenario::new("op-badpod").await;
    s.create(
        "bad",
        json!({"startToCloseTimeout": "1m",
               "template": {"spec": {"containers": [{"name": "Not_A_DNS_Label", "image": "busybox", "command": ["true"]}]}}}),
    )
    .await;
    let a = s.wait_phase("bad", Phase::Failed, 30).await;
    let f = status(&a).last_failure.expect("lastFailure");
    assert_eq!((f.type_.as_str(), f.non_retryable), ("PodRejected", true));
    assert!(f.message.contains("Not_A_DNS_Label"), "the API server's own message: {}", f.message);
    let events = kubectl(&["get", "events", "-n", &s.ns.name, "--field-selector", "type=Warning"]).expect("events");
    assert!(events.contains("PodRejected"), "{events}");
    s.finish().await;
}

#[tokio::test]
async fn a_pod_creation_refused_for_a_while_is_retried_and_its_event_becomes_a_series() {
    let s = Scenario::new("op-quota").await;
    // A quota of zero pods: every pod creation is refused (403, transient), until it is lifted.
    let quotas: Api<ResourceQuota> = s.ns.api();
    let quota: ResourceQuota =
        serde_json::from_value(json!({"metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}}))
            .expect("quota");
    quotas.create(&PostParams::default(), &quota).await.expect("create quota");
    s.create("q", json!({"startToCloseTimeout": "5m", "template": shell("sleep 3600")})).await;
    let events: Api<K8sEvent> = s.ns.api();
    let refused = || async {
        let list = events.list(&ListParams::default()).await.expect("events");
        list.items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("PodCreateFailed"))
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("q"))
            .collect::<Vec<_>>()
    };
    // The retries repeat one Event (a series), not one Event object per retry.
    wait_for(Duration::from_secs(60), "PodCreateFailed repeated 3 times", || async {
        let found = refused().await;
        Ok(found.iter().any(|e| e.series.as_ref().is_some_and(|r| r.count >= 3)).then_some(()))
    })
    .await
    .expect("a PodCreateFailed series");
    assert_eq!(refused().await.len(), 1, "one Event object for the repeated refusal");
    let a = s.acts.get("q").await.expect("activity");
    assert_eq!(phase_of(&a), Some(Phase::Pending), "a transient refusal does not fail the activity");
    // Lifted: the next retry creates the pod.
    quotas.delete("no-pods", &DeleteParams::default()).await.expect("delete quota");
    s.wait_phase("q", Phase::Running, 180).await;
    s.finish().await;
}

#[tokio::test]
async fn bad_manifests_are_refused_naming_the_field() {
    ensure_crd().expect("CRD");
    let cases = [
        // What the CRD's schema refuses by itself; the rules across fields (heartbeatTimeout at
        // most startToCloseTimeout, at least one timeout) are the chart's spec policy (spec.rs).
        (json!({"startToCloseTimeout": "2 minutes", "template": shell("true")}), "spec.startToCloseTimeout"),
        (
            json!({"startToCloseTimeout": "1m", "retryPolicy": {"backoffCoefficient": 0.5}, "template": shell("true")}),
            "spec.retryPolicy.backoffCoefficient",
        ),
        (
            json!({"startToCloseTimeout": "1m", "retryPolicy": {"maximumAttempts": -2}, "template": shell("true")}),
            "spec.retryPolicy.maximumAttempts",
        ),
        (json!({"startToCloseTimeout": "1m"}), "spec.template"),
        (
            json!({"startToCloseTimeout": "1m", "template": {"spec": {"containers": []}}}),
            "spec.template.spec.containers",
        ),
    ];
    /// Removed when the test ends, passed or failed.
    struct TempDir(std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let tmp = TempDir(std::env::temp_dir().join(format!("bad-manifests-{}", std::process::id())));
    let dir = &tmp.0;
    std::fs::create_dir_all(dir).expect("tmp");
    for (i, (spec, field)) in cases.into_iter().enumerate() {
        let manifest = json!({"apiVersion": "heartbeat.dev/v1alpha1", "kind": "Activity",
                              "metadata": {"name": format!("bad-{i}"), "namespace": "default"}, "spec": spec});
        let path = dir.join(format!("{i}.json"));
        std::fs::write(&path, manifest.to_string()).expect("write");
        let out = activity_tests::tool("kubectl", &["apply", "--dry-run=server", "-f", path.to_str().expect("utf8")])
            .expect("kubectl");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} was accepted");
        assert!(stderr.contains(field), "case {i}: the message names {field}: {stderr}");
    }
}

#[tokio::test]
async fn exit_zero_succeeds_and_ttl_deletes_the_finished_activity() {
    let s = Scenario::new("op-ttl").await;
    s.create("quick", json!({"startToCloseTimeout": "1m", "ttlSecondsAfterFinished": 2, "template": shell("true")}))
        .await;
    let a = s.wait_phase("quick", Phase::Succeeded, 60).await;
    let st = status(&a);
    assert_eq!(st.result, None, "exit 0 without an outcome is success with no result");
    let closed = st.closed_time.expect("closedTime").0;
    s.wait_gone("quick", 60).await;
    let gone_at = k8s_openapi::jiff::Timestamp::now();
    assert!(gone_at.duration_since(closed) >= k8s_openapi::jiff::SignedDuration::from_secs(2), "not before the TTL");
    s.finish().await;
}

fn conditions(a: &Activity) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    status(a).conditions
}

fn event_reasons(s: &Scenario, name: &str) -> Vec<String> {
    let out = kubectl(&[
        "get",
        "events",
        "-n",
        &s.ns.name,
        "--field-selector",
        &format!("involvedObject.name={name}"),
        "-o",
        "jsonpath={range .items[*]}{.reason}{\"\\n\"}{end}",
    ])
    .unwrap_or_default();
    out.lines().map(String::from).collect()
}

/// Under the chart's RBAC: a pod deleted by hand is read (get pods) before the attempt is judged,
/// then the activity is retried. With `get` missing from the chart's Role it stayed Running.
#[tokio::test]
async fn a_running_attempts_pod_deleted_by_hand_is_retried() {
    let s = Scenario::new("op-podgone").await;
    s.create(
        "gone",
        json!({"startToCloseTimeout": "5m", "retryPolicy": {"initialInterval": "1s"}, "template": shell("sleep 3600")}),
    )
    .await;
    s.wait_phase("gone", Phase::Running, 60).await;
    s.pods
        .delete("gone-1", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
        .await
        .expect("delete");
    let a = s
        .wait("gone", 90, "attempt 2 running", |a| status(a).attempt == Some(2) && phase_of(a) == Some(Phase::Running))
        .await;
    let first = status(&a).attempts.into_iter().next().expect("attempt 1 recorded");
    assert_eq!(first.failure.map(|f| f.type_), Some("PodDeleted".into()));
    let log = std::fs::read_to_string(&s.op.log).unwrap_or_default();
    assert!(!log.contains("forbidden"), "the operator hit a permission the chart does not grant:\n{log}");
    s.finish().await;
}

/// Without the worker service account no pod can be created: the Activity says so (condition and
/// event, naming the fix), says nothing of a pod started, and clears once the account exists.
#[tokio::test]
async fn a_missing_worker_service_account_is_shown_on_the_activity_until_it_exists() {
    ensure_crd().expect("CRD");
    let ns = TestNs::new("op-nosa").await.expect("namespace");
    let op = Operator::start(&ns.name).await.expect("operator");
    let s = Scenario { acts: ns.api(), pods: ns.api(), ns, op };
    s.create("nosa", json!({"startToCloseTimeout": "5m", "template": shell("sleep 3600")})).await;
    let a = s
        .wait("nosa", 60, "a Stalled condition", |a| {
            conditions(a).iter().any(|c| c.type_ == "Stalled" && c.status == "True")
        })
        .await;
    let stalled = conditions(&a).into_iter().find(|c| c.type_ == "Stalled").expect("condition");
    assert_eq!(stalled.reason, "WorkerServiceAccountMissing");
    assert!(
        stalled.message.contains("activity-worker") && stalled.message.contains("workerNamespaces"),
        "{}",
        stalled.message
    );
    let reasons = event_reasons(&s, "nosa");
    assert!(reasons.iter().any(|r| r == "WorkerServiceAccountMissing"), "{reasons:?}");
    assert!(!reasons.iter().any(|r| r == "AttemptStarted"), "no pod was created, none may be reported: {reasons:?}");
    worker_rbac(&s.ns.name).expect("worker RBAC");
    let a = s.wait_phase("nosa", Phase::Running, 120).await;
    let a = if conditions(&a).iter().any(|c| c.type_ == "Stalled") {
        s.wait("nosa", 30, "the Stalled condition cleared", |a| !conditions(a).iter().any(|c| c.type_ == "Stalled"))
            .await
    } else {
        a
    };
    assert!(conditions(&a).iter().any(|c| c.type_ == "Running" && c.status == "True"));
    assert!(event_reasons(&s, "nosa").iter().any(|r| r == "AttemptStarted"));
    s.finish().await;
}

/// A worker that heartbeats details deeper than serde_json's default limit (128) must not make
/// its Activity unreadable: a later cancel is still seen, and a restarted operator (whose first
/// list decodes every Activity) still runs new ones.
#[tokio::test]
async fn details_nested_too_deep_to_parse_do_not_blind_the_operator() {
    let s = Scenario::new("op-deep").await;
    // A silent worker is stopped by deleting its pod after the grace period; in a real container
    // `sh` is PID 1 and ignores SIGTERM, so the pod's own grace period is kept short as well.
    let mut template = shell("sleep 3600");
    template["spec"]["terminationGracePeriodSeconds"] = json!(1);
    s.create("deep", json!({"startToCloseTimeout": "5m", "cancellationGracePeriod": "2s", "template": template})).await;
    s.wait_phase("deep", Phase::Running, 60).await;
    // serde_json's Value cannot be built this deep, so the patch is written as text.
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let body = format!(
        r#"[{{"op":"test","path":"/status/attempt","value":1}},{{"op":"add","path":"/status/heartbeatDetails","value":{deep}}}]"#
    );
    let path = activity_tests::TempFile::write("deep", &body).expect("file");
    kubectl(&[
        "patch",
        "activity",
        "deep",
        "-n",
        &s.ns.name,
        "--subresource=status",
        "--type=json",
        "--patch-file",
        path.path().expect("path"),
    ])
    .expect("the API server accepts the deep details");
    s.acts
        .patch("deep", &PatchParams::default(), &Patch::Merge(json!({"spec": {"cancelRequested": true}})))
        .await
        .expect("cancel");
    s.wait_phase("deep", Phase::Canceled, 60).await;
    let s = Scenario { op: s.op.restart().await.expect("restart"), ..s };
    s.create("after", json!({"startToCloseTimeout": "1m", "template": shell("exit 0")})).await;
    s.wait_phase("after", Phase::Succeeded, 60).await;
    assert_eq!(s.op.counter("activity_operator_watch_errors_total").await.expect("metrics"), 0.0);
    s.finish().await;
}

/// Attempt 1's worker writes an outcome for attempt 2 (a valid `test` of attempt 1): attempt 2
/// must start without it and run, not end Succeeded with the forged result.
#[tokio::test]
async fn an_outcome_written_for_a_later_attempt_does_not_judge_it() {
    let s = Scenario::new("op-forge").await;
    s.create(
        "forge",
        json!({"startToCloseTimeout": "5m", "retryPolicy": {"initialInterval": "1s"}, "template": shell("sleep 3600")}),
    )
    .await;
    s.wait_phase("forge", Phase::Running, 60).await;
    s.worker_patch(
        "forge",
        json!([{"op": "test", "path": "/status/attempt", "value": 1},
               {"op": "add", "path": "/status/outcome", "value": {"attempt": 2, "succeeded": true, "result": "forged"}}]),
    )
    .await
    .expect("an admin may write it (the worker policy refuses it for workers)");
    s.pods
        .delete("forge-1", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
        .await
        .expect("kill");
    let a = s
        .wait("forge", 90, "attempt 2 running", |a| status(a).attempt == Some(2) && phase_of(a) == Some(Phase::Running))
        .await;
    let st = status(&a);
    assert!(st.outcome.is_none() && st.result.is_none(), "the forged outcome judged attempt 2: {st:?}");
    s.finish().await;
}

#[tokio::test]
async fn a_result_over_the_limit_fails_the_activity_naming_it() {
    let s = Scenario::new("op-bigresult").await;
    s.create("big", json!({"startToCloseTimeout": "5m", "template": shell("sleep 3600")})).await;
    s.wait_phase("big", Phase::Running, 60).await;
    let result = "x".repeat(activity_crds::MAX_PAYLOAD_BYTES + 1);
    s.worker_patch(
        "big",
        json!([{"op": "test", "path": "/status/attempt", "value": 1},
               {"op": "add", "path": "/status/outcome", "value": {"attempt": 1, "succeeded": true, "result": result}}]),
    )
    .await
    .expect("outcome");
    let a = s.wait_phase("big", Phase::Failed, 60).await;
    let f = status(&a).last_failure.expect("lastFailure");
    assert_eq!((f.type_.as_str(), f.non_retryable), ("PayloadTooLarge", true));
    assert!(status(&a).result.is_none());
    s.finish().await;
}

/// A timed-out worker that ignores SIGTERM: its pod is stopped, not deleted (its log stays
/// readable), and the next attempt's pod is created only after it has terminated.
#[tokio::test]
async fn a_timed_out_attempt_keeps_its_log_and_the_next_waits_until_it_has_stopped() {
    let s = Scenario::new("op-logs").await;
    let mut template = shell("echo \"hello from attempt $ACTIVITY_ATTEMPT\"; trap '' TERM; sleep 3600");
    template["spec"]["terminationGracePeriodSeconds"] = json!(3);
    s.create(
        "stuck",
        json!({"startToCloseTimeout": "1m", "heartbeatTimeout": "2s",
               "retryPolicy": {"initialInterval": "1s", "maximumAttempts": 2}, "template": template}),
    )
    .await;
    s.wait("stuck", 90, "attempt 2", |a| status(a).attempt == Some(2)).await;
    let first = s.pods.get("stuck-1").await.expect("attempt 1's pod is kept");
    let second = s.pods.get("stuck-2").await.expect("attempt 2's pod");
    let finished = first
        .status
        .as_ref()
        .and_then(|st| {
            st.container_statuses.as_ref()?.first()?.state.as_ref()?.terminated.as_ref()?.finished_at.clone()
        })
        .expect("attempt 1's worker has terminated");
    let created = second.metadata.creation_timestamp.expect("created");
    assert!(created.0 >= finished.0, "attempt 2 ({created:?}) started while attempt 1 ran (until {finished:?})");
    let log = kubectl(&["logs", "-n", &s.ns.name, "stuck-1"]).expect("kubectl logs of the timed-out attempt");
    assert!(log.contains("hello from attempt 1"), "{log}");
    s.finish().await;
}

/// The sidecar of a finished attempt is stopped.
#[tokio::test]
async fn the_sidecars_of_a_finished_attempt_are_stopped() {
    let s = Scenario::new("op-sidecar").await;
    let template = json!({"spec": {"containers": [
        {"name": "worker", "image": "busybox", "command": ["sh", "-c", "exit 0"]},
        {"name": "sidecar", "image": "busybox", "command": ["sh", "-c", "sleep 3600"]}]}});
    s.create("side", json!({"startToCloseTimeout": "1m", "template": template})).await;
    s.wait_phase("side", Phase::Succeeded, 60).await;
    wait_for(Duration::from_secs(60), "the pod's sidecar stopped", || async {
        let pod = s.pods.get("side-1").await?;
        let phase = pod.status.and_then(|st| st.phase);
        Ok(matches!(phase.as_deref(), Some("Failed" | "Succeeded")).then_some(()))
    })
    .await
    .expect("sidecar stopped");
    s.finish().await;
}

/// An operator that cannot serve /metrics and its probes does not run.
#[test]
fn a_metrics_address_in_use_stops_the_operator_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let exe = activity_tests::operator::workspace_bin("activity-operator").expect("operator binary");
    let out = std::process::Command::new(exe)
        .args(["--metrics-bind-address", &addr, "--namespace", "nothing-here"])
        .env("KUBECONFIG", activity_tests::kubeconfig_path())
        .output()
        .expect("run the operator");
    assert!(!out.status.success(), "it must exit with an error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--metrics-bind-address") && stderr.contains(&addr), "{stderr}");
}

fn batch(total: u32, fail_after: u32) -> Value {
    json!({"spec": {"containers": [{"name": "worker", "image": "ghcr.io/heartbeat-dev/activity-worker:0.1.0",
        "args": ["demo", "batch", "--total", total.to_string(), "--fail-after", fail_after.to_string(),
                 "--item-duration", "300ms"]}]}})
}

async fn set_spec(s: &Scenario, name: &str, spec: Value) {
    s.acts.patch(name, &PatchParams::default(), &Patch::Merge(json!({"spec": spec}))).await.expect("patch spec");
}

fn last_item(a: &Activity) -> Option<i64> {
    status(a).heartbeat_details?.to_value().ok()?["lastItem"].as_i64()
}

/// Pause a heartbeating worker: it stops on its next reply (cause Paused), nothing starts while
/// paused, the stopped attempt does not count; unpause resumes from the last details.
#[tokio::test]
async fn pause_stops_a_heartbeating_worker_and_unpause_resumes_from_its_details() {
    let s = Scenario::new("op-pause").await;
    s.create(
        "p",
        json!({"startToCloseTimeout": "2m", "heartbeatTimeout": "2s",
               "retryPolicy": {"initialInterval": "1s", "maximumAttempts": 1}, "template": batch(60, 100)}),
    )
    .await;
    s.wait("p", 60, "a few items done", |a| last_item(a).is_some_and(|i| i >= 2)).await;
    set_spec(&s, "p", json!({"paused": true})).await;
    let a = s.wait_phase("p", Phase::Paused, 60).await;
    let st = status(&a);
    assert_eq!(st.attempts.last().map(|r| r.outcome.as_str()), Some("Paused"), "{st:?}");
    let stopped_at = last_item(&a).expect("details");
    assert!(stopped_at < 59, "stopped before the end: {stopped_at}");
    // Nothing starts while paused.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let a = s.acts.get("p").await.expect("get");
    assert_eq!((phase_of(&a), status(&a).attempt), (Some(Phase::Paused), Some(1)));
    set_spec(&s, "p", json!({"paused": false})).await;
    // maximumAttempts 1: the paused attempt did not count, so attempt 2 may run and finish.
    let a = s.wait_phase("p", Phase::Succeeded, 90).await;
    assert_eq!(status(&a).attempt, Some(2));
    let log = kubectl(&["logs", "-n", &s.ns.name, "p-2"]).expect("logs");
    assert!(
        log.contains(&format!("resuming at item {}", stopped_at + 1)),
        "attempt 2 resumed from the details:\n{log}"
    );
    s.finish().await;
}

/// Reset a Failed activity that used all its attempts: it runs again with a fresh budget.
#[tokio::test]
async fn reset_reruns_a_failed_activity_with_a_fresh_budget() {
    let s = Scenario::new("op-reset").await;
    s.create(
        "r",
        json!({"startToCloseTimeout": "1m", "retryPolicy": {"initialInterval": "1s", "maximumAttempts": 1},
               "template": shell("test \"$ACTIVITY_ATTEMPT\" -ge 2")}),
    )
    .await;
    s.wait_phase("r", Phase::Failed, 60).await;
    set_spec(&s, "r", json!({"reset": {"requestedAt": "2026-11-27T00:00:00Z"}})).await;
    let a = s.wait_phase("r", Phase::Succeeded, 60).await;
    let st = status(&a);
    assert_eq!(st.attempt, Some(2));
    assert_eq!(st.last_reset.map(|r| (r.requested_at, r.attempt)), Some(("2026-11-27T00:00:00Z".into(), 2)));
    assert!(event_reasons(&s, "r").iter().any(|r| r == "Reset"));
    s.finish().await;
}

/// `::fail` with nextRetryDelay 7s and an initial interval of 1 s: the next attempt is 7 s later.
#[tokio::test]
async fn a_workers_next_retry_delay_schedules_the_next_attempt() {
    let s = Scenario::new("op-delay").await;
    let script = r#"if [ "$ACTIVITY_ATTEMPT" = 1 ]; then echo '::fail {"type":"RateLimited","message":"slow down","nextRetryDelay":"7s"}'; exit 1; fi"#;
    let template = json!({"spec": {"containers": [{"name": "worker", "image": "ghcr.io/heartbeat-dev/activity-worker:0.1.0",
        "args": ["exec", "--", "sh", "-c", script]}]}});
    s.create("d", json!({"startToCloseTimeout": "1m", "retryPolicy": {"initialInterval": "1s"}, "template": template}))
        .await;
    let a = s.wait_phase("d", Phase::BackingOff, 60).await;
    let st = status(&a);
    let failed_at = st.last_failure.clone().expect("failure").time.0;
    let next = st.next_attempt_schedule_time.expect("next").0;
    let delay = next.duration_since(failed_at).as_secs_f64();
    assert!((6.9..7.1).contains(&delay), "next attempt {delay} s after the failure");
    s.wait_phase("d", Phase::Succeeded, 60).await;
    s.finish().await;
}

#[tokio::test]
async fn a_non_retryable_exit_code_fails_on_the_first_attempt() {
    let s = Scenario::new("op-exitcode").await;
    s.create("e", json!({"startToCloseTimeout": "1m", "retryPolicy": {"nonRetryableExitCodes": [3]}, "template": shell("exit 3")}))
        .await;
    let a = s.wait_phase("e", Phase::Failed, 60).await;
    let f = status(&a).last_failure.expect("failure");
    assert_eq!((f.attempt, f.exit_code, f.non_retryable), (1, Some(3), true));
    s.finish().await;
}

#[tokio::test]
async fn start_delay_holds_the_first_pod_back() {
    let s = Scenario::new("op-delaystart").await;
    let created =
        s.create("late", json!({"startToCloseTimeout": "1m", "startDelay": "5s", "template": shell("exit 0")})).await;
    s.wait_phase("late", Phase::Scheduled, 30).await;
    s.wait_phase("late", Phase::Succeeded, 60).await;
    let pod = s.pods.get("late-1").await.expect("pod");
    let after =
        pod.metadata.creation_timestamp.expect("t").0.duration_since(created.metadata.creation_timestamp.expect("t").0);
    assert!(after.as_secs_f64() >= 5.0, "the pod was created {after:?} after the activity");
    s.finish().await;
}

/// A heartbeat timeout shortened on a live activity times it out by the new value.
#[tokio::test]
async fn a_heartbeat_timeout_shortened_on_a_live_activity_applies_at_once() {
    let s = Scenario::new("op-live").await;
    s.create(
        "h",
        json!({"startToCloseTimeout": "10m", "heartbeatTimeout": "5m", "retryPolicy": {"maximumAttempts": 1},
               "template": shell("sleep 3600")}),
    )
    .await;
    s.wait_phase("h", Phase::Running, 60).await;
    set_spec(&s, "h", json!({"heartbeatTimeout": "2s"})).await;
    let a = s.wait_phase("h", Phase::TimedOut, 60).await;
    let f = status(&a).last_failure.expect("failure");
    assert_eq!(f.timeout_type, Some(TimeoutType::Heartbeat));
    assert!(f.message.contains("heartbeatTimeout 2s"), "{}", f.message);
    s.finish().await;
}

/// An evicted pod (the Eviction API) is retried at once without using the budget.
#[tokio::test]
async fn an_evicted_attempt_is_retried_without_using_the_budget() {
    let s = Scenario::new("op-evict").await;
    s.create(
        "v",
        json!({"startToCloseTimeout": "5m", "retryPolicy": {"maximumAttempts": 1}, "template": shell("sleep 3600")}),
    )
    .await;
    s.wait_phase("v", Phase::Running, 60).await;
    s.pods.evict("v-1", &kube::api::EvictParams::default()).await.expect("evict");
    let a = s
        .wait("v", 120, "attempt 2 running", |a| status(a).attempt == Some(2) && phase_of(a) == Some(Phase::Running))
        .await;
    assert_eq!(status(&a).disruptions, Some(1));
    assert!(event_reasons(&s, "v").iter().any(|r| r == "Disrupted"));
    s.finish().await;
}

/// Pause a BackingOff activity: no retry while paused; unpaused, the retry starts.
#[tokio::test]
async fn a_paused_backing_off_activity_does_not_retry_until_unpaused() {
    let s = Scenario::new("op-pauseretry").await;
    s.create(
        "b",
        json!({"startToCloseTimeout": "1m", "retryPolicy": {"initialInterval": "4s"},
               "template": shell("test \"$ACTIVITY_ATTEMPT\" -ge 2")}),
    )
    .await;
    s.wait_phase("b", Phase::BackingOff, 60).await;
    set_spec(&s, "b", json!({"paused": true})).await;
    s.wait_phase("b", Phase::Paused, 30).await;
    // Past the 4 s backoff: still paused, no second pod.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let a = s.acts.get("b").await.expect("get");
    assert_eq!((phase_of(&a), status(&a).attempt), (Some(Phase::Paused), Some(1)));
    assert!(s.pods.get_opt("b-2").await.expect("get").is_none(), "no retry while paused");
    set_spec(&s, "b", json!({"paused": false})).await;
    let a = s.wait_phase("b", Phase::Succeeded, 60).await;
    assert_eq!(status(&a).attempt, Some(2));
    s.finish().await;
}

/// Reset a running activity: the worker stops with cause Reset and a new attempt starts.
#[tokio::test]
async fn a_reset_of_a_running_activity_stops_the_worker_and_starts_a_new_attempt() {
    let s = Scenario::new("op-resetrun").await;
    s.create(
        "rr",
        json!({"startToCloseTimeout": "2m", "heartbeatTimeout": "2s",
               "retryPolicy": {"initialInterval": "1s"}, "template": batch(60, 100)}),
    )
    .await;
    s.wait("rr", 60, "a few items done", |a| last_item(a).is_some_and(|i| i >= 2)).await;
    let now = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    set_spec(&s, "rr", json!({"reset": {"requestedAt": now}})).await;
    let a = s.wait("rr", 60, "attempt 2 after the reset", |a| status(a).attempt == Some(2)).await;
    let st = status(&a);
    assert_eq!(st.attempts.first().map(|r| r.outcome.as_str()), Some("Reset"), "{st:?}");
    assert_eq!(st.last_reset.map(|r| r.attempt), Some(2));
    let log = kubectl(&["logs", "-n", &s.ns.name, "rr-1"]).expect("attempt 1's log");
    assert!(log.contains("Reset"), "the worker logged why it stopped:\n{log}");
    s.finish().await;
}

/// A pod deleted before its worker started, while no operator was there to see it (the chaos
/// test's doubled attempt): the pod cannot vanish unseen (it carries the operator's tracking
/// finalizer until its start is recorded), so the restarted operator counts the attempt as
/// failed and starts the next one instead of running the same attempt again under the same name.
#[tokio::test]
async fn a_pod_deleted_before_it_started_while_the_operator_was_down_is_not_run_again() {
    let s = Scenario::new("op-unseen").await;
    s.create(
        "u",
        json!({"startToCloseTimeout": "5m", "retryPolicy": {"initialInterval": "1s", "maximumAttempts": 2},
               "template": never_scheduled()}),
    )
    .await;
    let first = wait_for(Duration::from_secs(60), "pod u-1", || async { Ok(s.pods.get_opt("u-1").await?) })
        .await
        .expect("pod u-1");
    let uid = first.metadata.uid.clone().expect("uid");
    let Scenario { ns, mut op, acts, pods } = s;
    op.kill();
    pods.delete("u-1", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await.expect("delete");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = pods.get_opt("u-1").await.expect("get u-1");
    assert!(
        held.as_ref().is_some_and(|p| p.metadata.deletion_timestamp.is_some()),
        "the deleted pod is held until the operator has seen it: {held:?}"
    );
    let op = op.restart().await.expect("restart operator");
    let s = Scenario { ns, op, acts, pods };
    let a = s.wait("u", 60, "attempt 2 pending", |a| status(a).attempt == Some(2)).await;
    let st = status(&a);
    let record = st.attempts.first().expect("attempt 1 recorded");
    assert_eq!(record.failure.as_ref().map(|f| f.type_.as_str()), Some("PodDeleted"), "{record:?}");
    wait_for(Duration::from_secs(30), "u-1 gone", || async {
        Ok(s.pods.get_opt("u-1").await?.is_none().then_some(()))
    })
    .await
    .expect("the held pod is released once its attempt is judged");
    // Attempt 1 never ran twice: no second pod under its name.
    let again = s.pods.get_opt("u-1").await.expect("get u-1");
    assert!(again.is_none_or(|p| p.metadata.uid.as_deref() == Some(uid.as_str())), "attempt 1 ran again");
    s.finish().await;
}

/// An Activity removed with its finalizer stripped by hand never passes through the operator:
/// its pod, held by the tracking finalizer, is still let go once the garbage collector deletes it.
#[tokio::test]
async fn the_held_pod_of_an_activity_removed_by_hand_is_released() {
    let s = Scenario::new("op-orphan").await;
    s.create("o", json!({"startToCloseTimeout": "5m", "template": never_scheduled()})).await;
    wait_for(Duration::from_secs(60), "pod o-1", || async { Ok(s.pods.get_opt("o-1").await?) }).await.expect("pod o-1");
    let strip = json!({"metadata": {"finalizers": null}});
    s.acts.patch("o", &PatchParams::default(), &Patch::Merge(&strip)).await.expect("strip finalizer");
    s.acts.delete("o", &DeleteParams::default()).await.expect("delete activity");
    let gone = wait_for(Duration::from_secs(60), "pod o-1 gone", || async {
        Ok(s.pods.get_opt("o-1").await?.is_none().then_some(()))
    })
    .await;
    if gone.is_err() {
        s.dump();
    }
    gone.expect("the garbage collector's delete completes: the operator released the pod");
    s.finish().await;
}
