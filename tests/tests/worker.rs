//! The worker side (`activity-worker`, worker-image/) against the local cluster.
//!
//! Most tests drive the protocol without the operator: they create an Activity, set
//! `status.attempt`/`podName` as admin through the status subresource, and run the worker in a pod
//! of their own (image `…/activity-worker`: on the real node the image `make images` built, on the
//! process node the workspace's `target/debug/activity-worker`) under the `activity-worker`
//! service account with the Role from `worker-image/rbac/worker-role.yaml`.
//!
//! The end-to-end tests of `deploy/examples/` and of `activity-worker exec` (what the child gets in
//! its environment and how its `::` lines are read) run with an operator of their own
//! (`activity_tests::operator::Operator`, the workspace's `target/debug/activity-operator` scoped
//! to the test's namespace): build it first (`cargo build --workspace --bins`).
//!
//! Pod logs are read through the API server (`kubectl logs`), so they work on either node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use activity_tests::operator::{Operator, ensure_crd, worker_rbac};
use activity_tests::realnode::REAL_NODE;
use activity_tests::{TestNs, kubectl, wait_for};
use futures::AsyncBufReadExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, LogParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(90);
const IMAGE: &str = "ghcr.io/heartbeat-dev/activity-worker:0.1.0";
/// The status code of a failed JSON Patch `test` op (activity_worker::wire::TEST_FAILED_STATUS).
const TEST_FAILED_STATUS: u16 = 422;
/// The worker's exit code when it stopped because it was canceled (activity_worker::EXIT_CANCELED).
const EXIT_CANCELED: i32 = 143;

/// The CRD (applied once per run; applying it again is harmless), the worker binary, and a
/// namespace with the worker's service account and Role.
async fn setup(prefix: &str) -> TestNs {
    activity_tests::operator::workspace_bin("activity-worker").expect("the activity-worker binary");
    // Once per test binary: eighteen tests applying the CRD at the same moment made one apply fail.
    static CRD: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    CRD.get_or_init(|| ensure_crd().unwrap());
    let ns = TestNs::new(prefix).await.unwrap();
    worker_rbac(&ns.name).unwrap();
    ns
}

/// [`setup`] plus an operator of the namespace's own (keep it until the end of the test).
async fn setup_with_operator(prefix: &str) -> (TestNs, Operator) {
    let ns = setup(prefix).await;
    let op = Operator::start(&ns.name).await.unwrap();
    (ns, op)
}

fn activities(ns: &TestNs) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("heartbeat.dev", "v1alpha1", "Activity");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "activities");
    Api::namespaced_with(ns.client.clone(), &ns.name, &ar)
}

/// Creates an Activity with `spec` (a template is added) and sets `status.attempt`/`podName` as
/// the operator would.
async fn create_activity(ns: &TestNs, name: &str, mut spec: Value, attempt: i32) {
    spec["template"] = json!({"spec": {"containers": [{"name": "worker", "image": IMAGE}]}});
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "heartbeat.dev/v1alpha1",
        "kind": "Activity",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap();
    activities(ns).create(&PostParams::default(), &obj).await.unwrap();
    set_attempt(ns, name, attempt).await;
}

/// Sets `status.attempt` and `status.podName` as admin (what the operator does per attempt).
async fn set_attempt(ns: &TestNs, name: &str, attempt: i32) {
    let patch = json!({"status": {"attempt": attempt, "podName": format!("{name}-{attempt}")}});
    activities(ns).patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

async fn status(ns: &TestNs, name: &str) -> Value {
    let obj = activities(ns).get(name).await.unwrap();
    obj.data.get("status").cloned().unwrap_or(Value::Null)
}

/// Starts the worker pod `<activity>-<attempt>` with `args`, as the operator would.
async fn start_worker(ns: &TestNs, activity: &str, attempt: i32, service_account: &str, args: &[&str]) -> String {
    let pod_name = format!("{activity}-{attempt}");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {
            "name": pod_name,
            "labels": {"heartbeat.dev/activity": activity, "heartbeat.dev/attempt": attempt.to_string()},
        },
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": service_account,
            "terminationGracePeriodSeconds": 30,
            "containers": [{
                "name": "worker",
                "image": IMAGE,
                "args": args,
                "env": [
                    {"name": "ACTIVITY_NAME", "value": activity},
                    {"name": "ACTIVITY_NAMESPACE", "value": ns.name},
                    {"name": "ACTIVITY_ATTEMPT", "value": attempt.to_string()},
                ],
            }],
        },
    }))
    .unwrap();
    ns.api::<Pod>().create(&PostParams::default(), &pod).await.unwrap();
    pod_name
}

/// Waits for the pod's worker container to terminate; returns its exit code.
async fn wait_exit(ns: &TestNs, pod: &str) -> i32 {
    let pods = ns.api::<Pod>();
    wait_for(TIMEOUT, &format!("pod {pod} to terminate"), || async {
        let p = pods.get(pod).await?;
        let terminated = p
            .status
            .and_then(|s| s.container_statuses)
            .and_then(|cs| cs.into_iter().next())
            .and_then(|c| c.state)
            .and_then(|s| s.terminated);
        Ok(terminated.map(|t| t.exit_code))
    })
    .await
    .unwrap()
}

/// Logs followed from the start (see [`follow_log`]), by namespace and pod.
type Followed = Mutex<HashMap<(String, String), Arc<Mutex<String>>>>;
static FOLLOWED: std::sync::LazyLock<Followed> = std::sync::LazyLock::new(Default::default);

/// The worker container's log, read through the API server (as `kubectl logs`); for a pod whose
/// log is followed ([`follow_log`]), what the follower has read (it outlives the pod).
async fn pod_log(ns: &TestNs, pod: &str) -> String {
    let followed = FOLLOWED.lock().unwrap().get(&(ns.name.clone(), pod.to_string())).cloned();
    let params = LogParams { container: Some("worker".into()), ..LogParams::default() };
    match ns.api::<Pod>().logs(pod, &params).await {
        Ok(log) => log,
        Err(_) => followed.map(|f| f.lock().unwrap().clone()).unwrap_or_default(),
    }
}

/// Follows the worker container's log from its first line until the container ends (the stream of
/// `kubectl logs -f`), so that the log can still be read once the pod is deleted. Waits until the
/// container has started.
async fn follow_log(ns: &TestNs, pod: &str) {
    let pods = ns.api::<Pod>();
    wait_for(TIMEOUT, &format!("{pod} running, to follow its log"), || async {
        let p = pods.get(pod).await?;
        let started = p
            .status
            .and_then(|s| s.container_statuses)
            .and_then(|cs| cs.into_iter().next())
            .and_then(|c| c.state)
            .is_some_and(|s| s.running.is_some() || s.terminated.is_some());
        Ok(started.then_some(()))
    })
    .await
    .unwrap();
    let params = LogParams { container: Some("worker".into()), follow: true, ..LogParams::default() };
    let stream = pods.log_stream(pod, &params).await.unwrap();
    let text = Arc::new(Mutex::new(String::new()));
    FOLLOWED.lock().unwrap().insert((ns.name.clone(), pod.to_string()), text.clone());
    tokio::spawn(async move {
        let mut lines = stream.lines();
        while let Some(Ok(line)) = futures::StreamExt::next(&mut lines).await {
            let mut t = text.lock().unwrap();
            t.push_str(&line);
            t.push('\n');
        }
    });
}

async fn wait_log(ns: &TestNs, pod: &str, needle: &str) -> String {
    wait_for(TIMEOUT, &format!("{needle:?} in the log of {pod}"), || async {
        let log = pod_log(ns, pod).await;
        Ok(log.contains(needle).then_some(log))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Waits until `status` satisfies `pred`; returns it. A timeout panics with the log of the
/// activity's current attempt.
async fn wait_status(ns: &TestNs, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let api = activities(ns);
    let found = wait_for(TIMEOUT, what, || async {
        let obj = api.get(name).await?;
        let status = obj.data.get("status").cloned().unwrap_or(Value::Null);
        Ok(pred(&status).then_some(status))
    })
    .await;
    match found {
        Ok(status) => status,
        Err(e) => {
            let attempt = status(ns, name).await["attempt"].as_i64().unwrap_or(1);
            panic!("{e}\nlog of {name}-{attempt}:\n{}", pod_log(ns, &format!("{name}-{attempt}")).await)
        }
    }
}

fn is_rfc3339_micros_utc(s: &str) -> bool {
    // 2026-11-21T20:40:00.123456Z
    let b = s.as_bytes();
    b.len() == 27
        && b[4] == b'-'
        && b[10] == b'T'
        && b[19] == b'.'
        && b[26] == b'Z'
        && b[20..26].iter().all(u8::is_ascii_digit)
}

/// The experiment behind the worker's "superseded" rule: the API server refuses a JSON Patch
/// whose `test` of `status.attempt` fails with 422 and no causes (a schema error names causes).
#[tokio::test]
async fn failed_test_op_is_422_without_causes() {
    let ns = setup("worker-422").await;
    create_activity(&ns, "probe", json!({"startToCloseTimeout": "1m"}), 2).await;
    let patch = json_patch(json!([
        {"op": "test", "path": "/status/attempt", "value": 1},
        {"op": "add", "path": "/status/heartbeatDetails", "value": {"zombie": true}},
    ]));
    let params = PatchParams { field_manager: Some("activity-worker".into()), ..PatchParams::default() };
    let err = activities(&ns).patch_status("probe", &params, &patch).await.unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, TEST_FAILED_STATUS, "{s:?}");
            assert!(s.details.is_none_or(|d| d.causes.is_empty()), "a failed test names no causes");
        }
        other => panic!("{other:?}"),
    }
    assert!(status(&ns, "probe").await.get("heartbeatDetails").is_none());
    ns.delete().await.unwrap();
}

/// A JSON Patch (`application/json-patch+json`) from its JSON.
fn json_patch(ops: Value) -> Patch<()> {
    Patch::Json(serde_json::from_value(ops).expect("a JSON Patch"))
}

#[tokio::test]
async fn heartbeats_land_with_details_then_the_outcome() {
    let ns = setup("worker-hb").await;
    let spec = json!({"startToCloseTimeout": "2m", "heartbeatTimeout": "2s", "input": {"n": 1}});
    create_activity(&ns, "batch", spec, 1).await;
    let pod = start_worker(
        &ns,
        "batch",
        1,
        "activity-worker",
        &["demo", "batch", "--total", "12", "--item-duration", "400ms"],
    )
    .await;

    // Heartbeats land while the worker runs (before any outcome).
    let s = wait_status(&ns, "batch", "a heartbeat before the outcome", |s| {
        s.get("heartbeatDetails").is_some() && s.get("outcome").is_none()
    })
    .await;
    let details = &s["heartbeatDetails"];
    assert!(details["lastItem"].is_u64(), "{details}");
    assert!(details["progress"].as_str().is_some_and(|p| p.ends_with("/12")), "{details}");
    let time = s["lastHeartbeatTime"].as_str().unwrap();
    assert!(is_rfc3339_micros_utc(time), "lastHeartbeatTime {time}");

    // The last details are flushed with the outcome.
    let s = wait_status(&ns, "batch", "the outcome", |s| s.get("outcome").is_some()).await;
    assert_eq!(s["outcome"], json!({"attempt": 1, "succeeded": true, "result": {"processed": 12}}));
    assert_eq!(s["heartbeatDetails"], json!({"lastItem": 11, "progress": "12/12"}));
    assert_eq!(wait_exit(&ns, &pod).await, 0);
    let log = pod_log(&ns, &pod).await;
    for i in 0..12 {
        assert!(log.contains(&format!("processed item {i}\n")), "item {i} in:\n{log}");
    }

    // Every write is the worker's, through the status subresource.
    let obj = activities(&ns).get("batch").await.unwrap();
    let managers: Vec<_> = obj
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.manager.as_deref() == Some("activity-worker"))
        .collect();
    assert!(!managers.is_empty(), "field manager activity-worker");
    assert!(managers.iter().all(|m| m.subresource.as_deref() == Some("status")));
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn a_retry_resumes_from_the_previous_details() {
    let ns = setup("worker-resume").await;
    let spec = json!({"startToCloseTimeout": "2m", "heartbeatTimeout": "3s"});
    create_activity(&ns, "batch", spec, 1).await;
    let args = ["demo", "batch", "--total", "6", "--fail-after", "3", "--item-duration", "200ms"];
    let pod = start_worker(&ns, "batch", 1, "activity-worker", &args).await;
    let s = wait_status(&ns, "batch", "attempt 1's outcome", |s| s.get("outcome").is_some()).await;
    assert_eq!(s["outcome"]["succeeded"], json!(false));
    assert_eq!(s["outcome"]["failure"]["type"], json!("BatchInterrupted"));
    assert_eq!(s["outcome"]["failure"]["nonRetryable"], json!(false));
    assert_eq!(s["heartbeatDetails"], json!({"lastItem": 2, "progress": "3/6"}));
    assert_eq!(wait_exit(&ns, &pod).await, 1);

    set_attempt(&ns, "batch", 2).await;
    let pod = start_worker(&ns, "batch", 2, "activity-worker", &args).await;
    let s = wait_status(&ns, "batch", "attempt 2's outcome", |s| s["outcome"]["attempt"] == json!(2)).await;
    assert_eq!(s["outcome"]["result"], json!({"processed": 6}));
    let log = pod_log(&ns, &pod).await;
    assert!(log.contains("resuming at item 3"), "{log}");
    assert!(!log.contains("processed item 2\n") && log.contains("processed item 3\n"), "{log}");
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn a_zombie_is_refused_and_stops_as_canceled() {
    let ns = setup("worker-zombie").await;
    let spec = json!({"startToCloseTimeout": "5m", "heartbeatTimeout": "2s"});
    create_activity(&ns, "z", spec, 1).await;
    let pod =
        start_worker(&ns, "z", 1, "activity-worker", &["demo", "batch", "--total", "1000", "--item-duration", "200ms"])
            .await;
    wait_status(&ns, "z", "a heartbeat of attempt 1", |s| s.get("heartbeatDetails").is_some()).await;

    // The operator moves on to attempt 2: attempt 1's next heartbeat is refused.
    set_attempt(&ns, "z", 2).await;
    assert_eq!(wait_exit(&ns, &pod).await, EXIT_CANCELED);
    let log = pod_log(&ns, &pod).await;
    assert!(log.contains("superseded"), "{log}");
    let s = status(&ns, "z").await;
    assert!(s.get("outcome").is_none(), "a zombie writes no outcome: {s}");
    assert_eq!(s["attempt"], json!(2));
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn cancel_requested_stops_an_exec_child_with_sigterm() {
    let ns = setup("worker-cancel").await;
    let spec = json!({"startToCloseTimeout": "5m", "heartbeatTimeout": "2s", "cancellationGracePeriod": "20s"});
    create_activity(&ns, "c", spec, 1).await;
    let script = r#"trap 'echo "child got SIGTERM-marker"; exit 0' TERM
i=0
while true; do i=$((i+1)); echo "::heartbeat {\"i\": $i}"; echo "tick $i"; sleep 0.2; done"#;
    let pod = start_worker(&ns, "c", 1, "activity-worker", &["exec", "--", "sh", "-c", script]).await;
    wait_status(&ns, "c", "a heartbeat", |s| s.get("heartbeatDetails").is_some()).await;
    wait_log(&ns, &pod, "tick 2\n").await; // plain lines pass through

    activities(&ns)
        .patch("c", &PatchParams::default(), &Patch::Merge(json!({"spec": {"cancelRequested": true}})))
        .await
        .unwrap();
    let s = wait_status(&ns, "c", "the canceled outcome", |s| s.get("outcome").is_some()).await;
    assert_eq!(s["outcome"], json!({"attempt": 1, "succeeded": false, "canceled": true, "cause": "Canceled"}));
    assert_eq!(wait_exit(&ns, &pod).await, EXIT_CANCELED);
    let log = wait_log(&ns, &pod, "child got SIGTERM-marker").await;
    assert!(log.contains("spec.cancelRequested is true"), "{log}");
    assert!(!log.contains("::heartbeat"), "commands are not passed through:\n{log}");
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn pod_deletion_sends_sigterm_through_to_the_exec_child() {
    let ns = setup("worker-sigterm").await;
    create_activity(&ns, "s", json!({"startToCloseTimeout": "5m"}), 1).await;
    let script = r#"trap 'echo "child got SIGTERM-marker"; exit 0' TERM
echo started; while true; do sleep 0.2; done"#;
    let pod = start_worker(&ns, "s", 1, "activity-worker", &["exec", "--", "sh", "-c", script]).await;
    wait_log(&ns, &pod, "started\n").await;
    follow_log(&ns, &pod).await; // the rest of the log is read after the pod is gone
    // What the operator does when a worker never heartbeats: delete its pod (SIGTERM to the worker).
    ns.api::<Pod>().delete(&pod, &Default::default()).await.unwrap();
    let s = wait_status(&ns, "s", "the canceled outcome", |s| s.get("outcome").is_some()).await;
    assert_eq!(s["outcome"], json!({"attempt": 1, "succeeded": false, "canceled": true}));
    let log = wait_log(&ns, &pod, "child got SIGTERM-marker").await;
    assert!(log.contains("received SIGTERM"), "{log}");
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn an_exec_child_ignoring_sigterm_is_killed_when_the_grace_period_runs_out() {
    let ns = setup("worker-sigkill").await;
    let spec = json!({"startToCloseTimeout": "5m", "heartbeatTimeout": "2s", "cancellationGracePeriod": "3s"});
    create_activity(&ns, "k", spec, 1).await;
    let script = r#"trap '' TERM
while true; do echo '::heartbeat {"alive": true}'; sleep 0.2; done"#;
    let pod = start_worker(&ns, "k", 1, "activity-worker", &["exec", "--", "sh", "-c", script]).await;
    wait_status(&ns, "k", "a heartbeat", |s| s.get("heartbeatDetails").is_some()).await;
    activities(&ns)
        .patch("k", &PatchParams::default(), &Patch::Merge(json!({"spec": {"cancelRequested": true}})))
        .await
        .unwrap();
    let s = wait_status(&ns, "k", "the canceled outcome", |s| s.get("outcome").is_some()).await;
    assert_eq!(s["outcome"]["canceled"], json!(true));
    assert_eq!(wait_exit(&ns, &pod).await, EXIT_CANCELED);
    let log = pod_log(&ns, &pod).await;
    assert!(log.contains("sending SIGKILL"), "{log}");
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn exec_reports_failures_results_and_resumes() {
    let ns = setup("worker-exec").await;
    let spec = json!({"startToCloseTimeout": "2m", "heartbeatTimeout": "5s", "input": {"word": "hi"}});
    create_activity(&ns, "e", spec, 1).await;
    let script = r#"echo "input=$ACTIVITY_INPUT attempt=$ACTIVITY_ATTEMPT details=${ACTIVITY_HEARTBEAT_DETAILS-unset}"
if [ "$ACTIVITY_ATTEMPT" = 1 ]; then
  echo '::heartbeat {"step": 1}'
  echo '::heartbeat {oops'
  echo '::heartbeat {"step": 2}'
  echo "to stderr" >&2
  exit 3
fi
echo '::result {"ok": true}'"#;
    let pod = start_worker(&ns, "e", 1, "activity-worker", &["exec", "--", "sh", "-c", script]).await;
    let s = wait_status(&ns, "e", "attempt 1's outcome", |s| s.get("outcome").is_some()).await;
    assert_eq!(s["outcome"]["failure"]["type"], json!("ExitCode"));
    assert!(s["outcome"]["failure"]["message"].as_str().unwrap().contains("code 3"), "{s}");
    assert_eq!(s["heartbeatDetails"], json!({"step": 2}), "the latest details, flushed with the outcome");
    assert_eq!(wait_exit(&ns, &pod).await, 3);
    let log = pod_log(&ns, &pod).await;
    assert!(log.contains(r#"input={"word":"hi"} attempt=1 details=unset"#), "{log}");
    assert!(log.contains("malformed ::heartbeat"), "{log}");
    assert!(log.contains("to stderr"), "{log}");

    set_attempt(&ns, "e", 2).await;
    let pod = start_worker(&ns, "e", 2, "activity-worker", &["exec", "--", "sh", "-c", script]).await;
    let s = wait_status(&ns, "e", "attempt 2's outcome", |s| s["outcome"]["attempt"] == json!(2)).await;
    assert_eq!(s["outcome"], json!({"attempt": 2, "succeeded": true, "result": {"ok": true}}));
    assert_eq!(wait_exit(&ns, &pod).await, 0);
    assert!(pod_log(&ns, &pod).await.contains(r#"attempt=2 details={"step":2}"#), "{}", pod_log(&ns, &pod).await);
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn missing_rbac_fails_with_a_clear_error() {
    let ns = setup("worker-rbac").await;
    create_activity(&ns, "r", json!({"startToCloseTimeout": "1m", "heartbeatTimeout": "2s"}), 1).await;
    // No permission at all: the first read is forbidden.
    kubectl(&["create", "serviceaccount", "-n", &ns.name, "nobody"]).unwrap();
    let pod = start_worker(&ns, "r", 1, "nobody", &["demo", "batch", "--total", "3", "--item-duration", "100ms"]).await;
    assert_ne!(wait_exit(&ns, &pod).await, 0);
    let log = pod_log(&ns, &pod).await;
    assert!(log.contains("forbidden: cannot get activities"), "{log}");
    assert!(log.contains("worker-role.yaml"), "{log}");

    // Read but no patch: the first heartbeat is forbidden.
    kubectl(&["create", "serviceaccount", "-n", &ns.name, "reader"]).unwrap();
    kubectl(&["create", "role", "-n", &ns.name, "reader", "--verb=get", "--resource=activities.heartbeat.dev"])
        .unwrap();
    let sa = format!("{}:reader", ns.name);
    kubectl(&["create", "rolebinding", "-n", &ns.name, "reader", "--role=reader", &format!("--serviceaccount={sa}")])
        .unwrap();
    set_attempt(&ns, "r", 2).await;
    let pod =
        start_worker(&ns, "r", 2, "reader", &["demo", "batch", "--total", "50", "--item-duration", "100ms"]).await;
    assert_eq!(wait_exit(&ns, &pod).await, 1);
    let log = pod_log(&ns, &pod).await;
    assert!(log.contains("forbidden: cannot patch activities/status"), "{log}");
    assert!(status(&ns, "r").await.get("outcome").is_none());
    ns.delete().await.unwrap();
}

// ------------------------------------------------------------------------------------------------
// End to end with the operator: the examples of deploy/examples reach their phases.

/// Starts an operator for the namespace and applies the example; keep the operator until the end.
async fn run_example(ns: &TestNs, file: &str) -> Operator {
    let op = Operator::start(&ns.name).await.unwrap();
    kubectl(&["apply", "-n", &ns.name, "-f", &format!("deploy/examples/{file}")]).unwrap();
    op
}

async fn wait_phase(ns: &TestNs, name: &str, phase: &str, timeout: Duration) -> Value {
    let api = activities(ns);
    wait_for(timeout, &format!("{name} to reach {phase}"), || async {
        let obj = api.get(name).await?;
        let status = obj.data.get("status").cloned().unwrap_or(Value::Null);
        Ok((status["phase"] == json!(phase)).then_some(status))
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn example_batch_succeeds_on_the_fourth_attempt() {
    let ns = setup("ex-batch").await;
    let _op = run_example(&ns, "batch.yaml").await;
    let s = wait_phase(&ns, "batch", "Succeeded", Duration::from_secs(120)).await;
    assert_eq!(s["attempt"], json!(4));
    assert_eq!(s["result"], json!({"processed": 10}));
    assert_eq!(s["heartbeatDetails"]["progress"], json!("10/10"));
    assert!(pod_log(&ns, "batch-2").await.contains("resuming at item 3"));
    // Across the four attempts every item was processed exactly once.
    let items = processed_items(&ns, "batch", 1..=4).await;
    assert_eq!(items, (0..10).collect::<Vec<_>>(), "items processed across attempts");
    ns.delete().await.unwrap();
}

/// Every `processed item N` line of the pods of attempts `attempts`, sorted.
async fn processed_items(ns: &TestNs, activity: &str, attempts: impl IntoIterator<Item = i32>) -> Vec<u64> {
    let mut items: Vec<u64> = Vec::new();
    for n in attempts {
        let log = pod_log(ns, &format!("{activity}-{n}")).await;
        items.extend(log.lines().filter_map(|l| l.split("processed item ").nth(1)?.trim().parse::<u64>().ok()));
    }
    items.sort_unstable();
    items
}

#[tokio::test]
async fn a_sigkilled_worker_resumes_from_its_last_heartbeat_without_repeating_or_skipping() {
    let ns = setup("ex-sigkill").await;
    let _op = Operator::start(&ns.name).await.unwrap();
    let manifest = json!({
        "apiVersion": "heartbeat.dev/v1alpha1", "kind": "Activity", "metadata": {"name": "kill"},
        "spec": {"startToCloseTimeout": "2m", "heartbeatTimeout": "3s",
                 "retryPolicy": {"initialInterval": "1s"},
                 "template": {"spec": {"containers": [{"name": "worker", "image": IMAGE,
                     "args": ["demo", "batch", "--total", "8", "--fail-after", "0", "--item-duration", "1s"]}]}}}
    });
    activities(&ns).create(&PostParams::default(), &serde_json::from_value(manifest).unwrap()).await.unwrap();
    wait_status(&ns, "kill", "three items heartbeated", |s| s["heartbeatDetails"]["lastItem"].as_u64() >= Some(2))
        .await;
    follow_log(&ns, "kill-1").await; // read after the pod is gone
    // SIGKILL: grace period 0 sends no SIGTERM, so the worker cannot flush or report anything.
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    pods.delete("kill-1", &kube::api::DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
        .await
        .unwrap();
    let at_kill = status(&ns, "kill").await;
    let last = at_kill["heartbeatDetails"]["lastItem"].as_u64().unwrap();
    let s = wait_phase(&ns, "kill", "Succeeded", Duration::from_secs(120)).await;
    let attempts = s["attempt"].as_i64().unwrap() as i32;
    assert!(attempts >= 2, "{s}");
    assert!(pod_log(&ns, "kill-2").await.contains(&format!("resuming at item {}", last + 1)));
    // Nothing heartbeated is done again; nothing is skipped. (Items the dead worker finished
    // after its last delivered heartbeat are redone: at-least-once, as in Temporal.)
    let first = processed_items(&ns, "kill", [1]).await;
    let retries = processed_items(&ns, "kill", 2..=attempts).await;
    assert_eq!(retries, (last + 1..8).collect::<Vec<_>>(), "the retries resume right after the last heartbeat");
    assert_eq!(first.iter().filter(|i| **i <= last).copied().collect::<Vec<_>>(), (0..=last).collect::<Vec<_>>());
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn example_records_succeeds_with_the_final_offset() {
    let ns = setup("ex-records").await;
    let _op = run_example(&ns, "records.yaml").await;
    let s = wait_phase(&ns, "records", "Succeeded", Duration::from_secs(120)).await;
    assert_eq!(s["result"], json!(50));
    assert_eq!(s["heartbeatDetails"], json!({"offset": 50, "progress": "50/50"}));
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn example_exec_shell_resumes_and_succeeds() {
    let ns = setup("ex-exec").await;
    let _op = run_example(&ns, "exec-shell.yaml").await;
    let s = wait_phase(&ns, "exec-shell", "Succeeded", Duration::from_secs(120)).await;
    assert_eq!(s["attempt"], json!(2));
    assert_eq!(s["result"], json!({"steps": 8, "input": "hello"}));
    assert!(pod_log(&ns, "exec-shell-2").await.contains("resuming after step 4"));
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn example_cancel_heartbeating_stops_through_the_heartbeat_reply() {
    let ns = setup("ex-cancel-hb").await;
    let _op = run_example(&ns, "cancel-heartbeating.yaml").await;
    wait_phase(&ns, "cancel-heartbeating", "Running", Duration::from_secs(60)).await;
    wait_status(&ns, "cancel-heartbeating", "a heartbeat", |s| s.get("heartbeatDetails").is_some()).await;
    activities(&ns)
        .patch(
            "cancel-heartbeating",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"cancelRequested": true}})),
        )
        .await
        .unwrap();
    // Well within the 30 s grace period: the worker stopped by itself.
    let s = wait_phase(&ns, "cancel-heartbeating", "Canceled", Duration::from_secs(20)).await;
    assert_eq!(s["outcome"]["canceled"], json!(true));
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn example_cancel_silent_is_stopped_by_deleting_its_pod() {
    let ns = setup("ex-cancel-silent").await;
    let _op = run_example(&ns, "cancel-silent.yaml").await;
    wait_phase(&ns, "cancel-silent", "Running", Duration::from_secs(60)).await;
    kubectl(&["delete", "-n", &ns.name, "activity", "cancel-silent", "--timeout=60s"]).unwrap();
    assert!(activities(&ns).get_opt("cancel-silent").await.unwrap().is_none());
    ns.delete().await.unwrap();
}

// ------------------------------------------------------------------------------------------------
// `activity-worker exec` with an operator: what the child gets in its environment and how its `::`
// lines are read. Python children run in the Python example's image on the real node (it carries
// python3 and activity-worker: deploy/local/images.sh), the host's python3 on the process node.

/// Whether the cluster has a Ready real node (then the process node is tainted and pods run there).
async fn real_node_ready(ns: &TestNs) -> bool {
    let node = Api::<Node>::all(ns.client.clone()).get_opt(REAL_NODE).await.unwrap();
    node.and_then(|n| n.status?.conditions).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The worker container of an `activity-worker exec -- COMMAND` activity.
async fn exec_container(ns: &TestNs, command: &[&str]) -> Value {
    let mut args = vec!["exec", "--"];
    args.extend_from_slice(command);
    if command.first() == Some(&"python3") && real_node_ready(ns).await {
        let image = format!(
            "ghcr.io/heartbeat-dev/activity-example-python:{}",
            activity_tests::realnode::chart_app_version().unwrap()
        );
        json!({"name": "worker", "image": image, "command": ["/usr/local/bin/activity-worker"], "args": args})
    } else {
        json!({"name": "worker", "image": IMAGE, "args": args})
    }
}

/// Creates an exec Activity running `command` with `spec` (the template is added).
async fn create_exec(ns: &TestNs, name: &str, mut spec: Value, command: &[&str]) -> DynamicObject {
    spec["template"] = json!({"spec": {"containers": [exec_container(ns, command).await]}});
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "heartbeat.dev/v1alpha1",
        "kind": "Activity",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap();
    activities(ns).create(&PostParams::default(), &obj).await.unwrap()
}

fn is_final(s: &Value) -> bool {
    ["Succeeded", "Failed", "TimedOut", "Canceled"].iter().any(|p| s["phase"] == json!(p))
}

/// A Python child started as plain `python3 -c` (no `-u`): its stdout is a pipe, which Python
/// buffers unless PYTHONUNBUFFERED is set. It heartbeats every second for 8 s, longer than the
/// heartbeat timeout (5 s): the attempt only survives when each `::heartbeat` arrives when printed.
#[tokio::test]
async fn a_python_childs_lines_arrive_when_printed() {
    let (ns, _op) = setup_with_operator("exec-python").await;
    let script = r#"import time
for i in range(8):
    print('::heartbeat {"i": %d}' % i)
    print('working on %d' % i)
    time.sleep(1)
print('::result {"done": 8}')
"#;
    let spec = json!({"startToCloseTimeout": "2m", "heartbeatTimeout": "5s", "retryPolicy": {"maximumAttempts": 1}});
    create_exec(&ns, "py", spec, &["python3", "-c", script]).await;
    // A heartbeat lands while the child still runs (buffered, it would come with the outcome).
    let running =
        wait_status(&ns, "py", "a heartbeat while running", |s| s.get("heartbeatDetails").is_some() || is_final(s))
            .await;
    assert!(running.get("outcome").is_none(), "the details came only with the outcome: {running}");
    // Not yet finished (on the real node the first heartbeat can land before the operator has
    // seen the pod running, so the phase may still be Pending).
    assert!(!is_final(&running), "{running}");
    let s = wait_status(&ns, "py", "the activity to finish", is_final).await;
    assert_eq!(s["phase"], json!("Succeeded"), "{s}\nlog:\n{}", pod_log(&ns, "py-1").await);
    assert_eq!(s["attempt"], json!(1));
    assert_eq!(s["result"], json!({"done": 8}));
    assert!(pod_log(&ns, "py-1").await.contains("working on 7"));
    ns.delete().await.unwrap();
}

/// A child that prints only a malformed heartbeat: exec fails the attempt itself before the
/// heartbeat timeout lapses, naming the line, instead of a bare heartbeat timeout.
#[tokio::test]
async fn malformed_lines_fail_the_attempt_with_the_line_named() {
    let (ns, _op) = setup_with_operator("exec-malformed").await;
    let script = r#"trap 'echo "child got SIGTERM-marker"; exit 0' TERM
echo '::heartbeat {oops'
echo '::heartbeet {"i": 1}'
while true; do sleep 0.2; done"#;
    let spec = json!({
        "startToCloseTimeout": "2m", "heartbeatTimeout": "6s", "cancellationGracePeriod": "5s",
        "retryPolicy": {"maximumAttempts": 1},
    });
    create_exec(&ns, "bad", spec, &["sh", "-c", script]).await;
    let s = wait_status(&ns, "bad", "the activity to finish", is_final).await;
    let log = pod_log(&ns, "bad-1").await;
    assert_eq!(s["phase"], json!("Failed"), "{s}\nlog:\n{log}");
    let failure = &s["lastFailure"];
    assert_eq!(failure["type"], json!("MalformedCommand"), "{s}\nlog:\n{log}");
    assert!(failure.get("timeoutType").is_none(), "not a heartbeat timeout: {failure}");
    let message = failure["message"].as_str().unwrap_or_default();
    for part in ["2 malformed command lines", "::heartbeat {oops", "heartbeat timeout (6s) would lapse"] {
        assert!(message.contains(part), "{part:?} not in {message:?}");
    }
    // Both lines were logged as malformed, and the child was stopped like on a cancel.
    let log = wait_log(&ns, "bad-1", "child got SIGTERM-marker").await;
    assert!(log.contains("malformed ::heartbeat line"), "{log}");
    assert!(log.contains("malformed ::heartbeet line"), "{log}");
    ns.delete().await.unwrap();
}

const ENV_PRINTER: &str = r#"import json, os
names = ["ACTIVITY_MAXIMUM_ATTEMPTS", "ACTIVITY_HEARTBEAT_TIMEOUT", "ACTIVITY_ATTEMPT_DEADLINE",
         "ACTIVITY_SCHEDULE_TO_CLOSE_DEADLINE", "PYTHONUNBUFFERED"]
print("::result " + json.dumps({n: os.environ.get(n) for n in names}))
"#;

fn time(v: &Value) -> Timestamp {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}")).parse().unwrap_or_else(|e| panic!("{v}: {e}"))
}

/// The limits of the activity reach the child as environment variables it can parse; the
/// unlimited ones are unset.
#[tokio::test]
async fn the_child_gets_its_limits_and_deadlines() {
    let (ns, _op) = setup_with_operator("exec-env").await;
    let spec = json!({
        "startToCloseTimeout": "2m", "scheduleToCloseTimeout": "1h", "heartbeatTimeout": "1m",
        "retryPolicy": {"maximumAttempts": 3},
    });
    let created = create_exec(&ns, "lim", spec, &["python3", "-c", ENV_PRINTER]).await;
    create_exec(&ns, "free", json!({"startToCloseTimeout": "90s"}), &["python3", "-c", ENV_PRINTER]).await;

    let s = wait_status(&ns, "lim", "the activity to finish", is_final).await;
    assert_eq!(s["phase"], json!("Succeeded"), "{s}");
    let env = &s["result"];
    assert_eq!(env["ACTIVITY_MAXIMUM_ATTEMPTS"], json!("3"), "{env}");
    assert_eq!(env["ACTIVITY_HEARTBEAT_TIMEOUT"], json!("1m0s"), "{env}");
    assert_eq!(env["PYTHONUNBUFFERED"], json!("1"), "{env}");
    let creation = created.metadata.creation_timestamp.clone().expect("a creation time").0;
    let finished = time(&s["closedTime"]);
    // Schedule-to-close counts from the creation (no start delay, no reset).
    assert_eq!(time(&env["ACTIVITY_SCHEDULE_TO_CLOSE_DEADLINE"]), creation + Duration::from_secs(3600), "{env}");
    // The attempt's: its start (after the creation, before the end) + startToCloseTimeout.
    let attempt_started = time(&env["ACTIVITY_ATTEMPT_DEADLINE"]) - Duration::from_secs(120);
    assert!(creation <= attempt_started && attempt_started <= finished, "{env} {s}");

    let s = wait_status(&ns, "free", "the activity to finish", is_final).await;
    assert_eq!(s["phase"], json!("Succeeded"), "{s}");
    let env = &s["result"];
    assert_eq!(env["ACTIVITY_MAXIMUM_ATTEMPTS"], json!("0"), "{env}");
    assert_eq!(env["ACTIVITY_HEARTBEAT_TIMEOUT"], Value::Null, "disabled: unset: {env}");
    assert_eq!(env["ACTIVITY_SCHEDULE_TO_CLOSE_DEADLINE"], Value::Null, "unlimited: unset: {env}");
    let attempt_started = time(&env["ACTIVITY_ATTEMPT_DEADLINE"]) - Duration::from_secs(90);
    assert!(attempt_started <= time(&s["closedTime"]), "{env} {s}");
    ns.delete().await.unwrap();
}
