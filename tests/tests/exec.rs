//! `activity-worker exec` against the local cluster, with an operator of the test's own: what the
//! child gets in its environment and how its `::` lines are read.
//!
//! The worker runs as image `…/activity-worker`, which the process node maps to the workspace's
//! `activity-worker` binary (`cargo build -p activity-worker`); the operator is the workspace's
//! `activity-operator` (`cargo build --workspace --bins`). The children are `python3` and `sh`
//! from the host.

use std::time::Duration;

use activity_tests::operator::{Operator, ensure_crd, worker_rbac};
use activity_tests::{TestNs, local_dir, wait_for};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(120);
const IMAGE: &str = "ghcr.io/heartbeat-dev/activity-worker:0.1.0";

async fn setup(prefix: &str) -> (TestNs, Operator) {
    activity_tests::operator::workspace_bin("activity-worker").expect("the activity-worker binary");
    ensure_crd().unwrap();
    let ns = TestNs::new(prefix).await.unwrap();
    worker_rbac(&ns.name).unwrap();
    let op = Operator::start(&ns.name).await.unwrap();
    (ns, op)
}

fn activities(ns: &TestNs) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("heartbeat.dev", "v1alpha1", "Activity");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "activities");
    Api::namespaced_with(ns.client.clone(), &ns.name, &ar)
}

/// Creates an exec Activity running `command` with `spec` (the template is added).
async fn create_exec(ns: &TestNs, name: &str, mut spec: Value, command: &[&str]) -> DynamicObject {
    let mut args = vec!["exec", "--"];
    args.extend_from_slice(command);
    spec["template"] = json!({"spec": {"containers": [{"name": "worker", "image": IMAGE, "args": args}]}});
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "heartbeat.dev/v1alpha1",
        "kind": "Activity",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap();
    activities(ns).create(&PostParams::default(), &obj).await.unwrap()
}

/// Waits until `status` satisfies `pred`; returns it.
async fn wait_status(ns: &TestNs, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let api = activities(ns);
    wait_for(TIMEOUT, what, || async {
        let obj = api.get(name).await?;
        let status = obj.data.get("status").cloned().unwrap_or(Value::Null);
        Ok(pred(&status).then_some(status))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nlog of {name}-1:\n{}", pod_log(ns, &format!("{name}-1"))))
}

fn is_final(s: &Value) -> bool {
    ["Succeeded", "Failed", "TimedOut", "Canceled"].iter().any(|p| s["phase"] == json!(p))
}

/// The worker container's log, as the process node writes it.
fn pod_log(ns: &TestNs, pod: &str) -> String {
    let path = local_dir().join("logs").join(format!("{}_{pod}_worker.log", ns.name));
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A Python child started as plain `python3 -c` (no `-u`): its stdout is a pipe, which Python
/// buffers unless PYTHONUNBUFFERED is set. It heartbeats every second for 8 s, longer than the
/// heartbeat timeout (5 s): the attempt only survives when each `::heartbeat` arrives when printed.
#[tokio::test]
async fn a_python_childs_lines_arrive_when_printed() {
    let (ns, _op) = setup("exec-python").await;
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
    assert_eq!(running["phase"], json!("Running"), "{running}");
    let s = wait_status(&ns, "py", "the activity to finish", is_final).await;
    assert_eq!(s["phase"], json!("Succeeded"), "{s}\nlog:\n{}", pod_log(&ns, "py-1"));
    assert_eq!(s["attempt"], json!(1));
    assert_eq!(s["result"], json!({"done": 8}));
    assert!(pod_log(&ns, "py-1").contains("working on 7"));
    ns.delete().await.unwrap();
}

/// A child that prints only a malformed heartbeat: exec fails the attempt itself before the
/// heartbeat timeout lapses, naming the line, instead of a bare heartbeat timeout.
#[tokio::test]
async fn malformed_lines_fail_the_attempt_with_the_line_named() {
    let (ns, _op) = setup("exec-malformed").await;
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
    let log = pod_log(&ns, "bad-1");
    assert_eq!(s["phase"], json!("Failed"), "{s}\nlog:\n{log}");
    let failure = &s["lastFailure"];
    assert_eq!(failure["type"], json!("MalformedCommand"), "{s}\nlog:\n{log}");
    assert!(failure.get("timeoutType").is_none(), "not a heartbeat timeout: {failure}");
    let message = failure["message"].as_str().unwrap_or_default();
    for part in ["2 malformed command lines", "::heartbeat {oops", "heartbeat timeout (6s) would lapse"] {
        assert!(message.contains(part), "{part:?} not in {message:?}");
    }
    // Both lines were logged as malformed, and the child was stopped like on a cancel.
    let log = wait_for(TIMEOUT, "the child's SIGTERM marker", || async {
        let log = pod_log(&ns, "bad-1");
        Ok(log.contains("child got SIGTERM-marker").then_some(log))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", pod_log(&ns, "bad-1")));
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
    let (ns, _op) = setup("exec-env").await;
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
