//! The SDK against a scripted fake API server on loopback: retries of 5xx and 429 (Retry-After),
//! a refused `test` op (superseded), cancellation in the heartbeat reply, heartbeats that cannot
//! be delivered for longer than the heartbeat timeout, and what goes over the wire.
//!
//! The real API server is exercised by `tests/tests/worker.rs`; this covers the failure modes a
//! healthy local cluster cannot produce on demand.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use activity_worker::{ActivityContext, CancelReason, Error};
use kube::{Client, Config};
use serde_json::{Value, json};
use tokio::net::TcpListener;

mod common;
use common::Request;

const NS: &str = "ns";
const NAME: &str = "a";

/// A recorded PATCH.
#[derive(Debug, Clone)]
struct Recorded {
    at: Instant,
    path_and_query: String,
    content_type: String,
    body: Value,
}

type Responder = Box<dyn FnMut(usize, &Value) -> (u16, Value) + Send>;

struct State {
    activity: Value,
    patches: Vec<Recorded>,
    respond: Responder,
}

struct FakeApi {
    url: String,
    state: Arc<Mutex<State>>,
}

impl FakeApi {
    async fn start(spec: Value, respond: Responder) -> Self {
        let activity = json!({
            "apiVersion": "heartbeat.dev/v1alpha1",
            "kind": "Activity",
            "metadata": {"name": NAME, "namespace": NS},
            "spec": spec,
            "status": {"attempt": 1, "heartbeatDetails": {"lastItem": 4}},
        });
        let state = Arc::new(Mutex::new(State { activity, patches: Vec::new(), respond }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        common::spawn_server(listener, state.clone(), answer);
        Self { url, state }
    }

    async fn connect(&self) -> Result<ActivityContext, Error> {
        let mut config = Config::new(self.url.parse().unwrap());
        config.default_retry = false;
        let client = Client::try_from(config).unwrap();
        ActivityContext::connect(client, NS, NAME, 1).await
    }

    fn patches(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().patches.clone()
    }
}

/// The fake API's answer: the Activity to a GET; to a PATCH, what the test's responder says
/// (the Activity for a 200 without a body), after recording it.
fn answer(state: &Mutex<State>, request: Request) -> (u16, Value) {
    let mut st = state.lock().unwrap();
    if request.method == "GET" {
        return (200, st.activity.clone());
    }
    let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
    let n = st.patches.len();
    st.patches.push(Recorded {
        at: Instant::now(),
        path_and_query: request.target,
        content_type: request.content_type,
        body: body.clone(),
    });
    let (code, reply) = (st.respond)(n, &body);
    if code == 200 && reply.is_null() { (200, st.activity.clone()) } else { (code, reply) }
}

fn status(code: u16, message: &str, details: Value) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code, "details": details}),
    )
}

fn ok() -> (u16, Value) {
    (200, Value::Null)
}

fn spec(heartbeat_timeout: &str) -> Value {
    json!({
        "template": {"spec": {"containers": [{"name": "w", "image": "x"}]}},
        "startToCloseTimeout": "1m",
        "heartbeatTimeout": heartbeat_timeout,
        "input": {"n": 3},
    })
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn heartbeats_are_throttled_and_flushed_with_the_outcome() {
    let api = FakeApi::start(spec("10s"), Box::new(|_, _| ok())).await;
    let ctx = api.connect().await.unwrap();
    assert_eq!(ctx.input::<Value>().unwrap(), json!({"n": 3}));
    assert_eq!(ctx.heartbeat_details::<Value>().unwrap(), Some(json!({"lastItem": 4})));
    assert_eq!(ctx.heartbeat_interval(), Duration::from_secs(8));
    for i in 0..20 {
        ctx.heartbeat(&json!({"i": i})).unwrap();
        tokio::task::yield_now().await;
    }
    wait_until("the first heartbeat", || !api.patches().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // One heartbeat went at once; the rest wait for the 8 s interval…
    assert_eq!(api.patches().len(), 1, "{:?}", api.patches());
    // …and the latest is flushed with the outcome, in the same patch.
    ctx.complete(&json!({"done": true})).await.unwrap();
    let patches = api.patches();
    assert_eq!(patches.len(), 2);
    let first = &patches[0];
    assert_eq!(first.content_type, "application/json-patch+json");
    assert!(first.path_and_query.starts_with("/apis/heartbeat.dev/v1alpha1/namespaces/ns/activities/a/status?"));
    assert!(first.path_and_query.contains("fieldManager=activity-worker"), "{}", first.path_and_query);
    assert_eq!(first.body[0], json!({"op": "test", "path": "/status/attempt", "value": 1}));
    let last = &patches[1].body;
    assert_eq!(last[0], json!({"op": "test", "path": "/status/attempt", "value": 1}));
    assert_eq!(last[1]["path"], json!("/status/lastHeartbeatTime"));
    assert_eq!(last[2], json!({"op": "add", "path": "/status/heartbeatDetails", "value": {"i": 19}}));
    assert_eq!(
        last[3],
        json!({"op": "add", "path": "/status/outcome", "value": {"attempt": 1, "succeeded": true, "result": {"done": true}}})
    );
    assert!(matches!(ctx.complete(&1).await, Err(Error::AlreadyReported { .. })));
}

#[tokio::test]
async fn server_errors_and_conflicts_are_retried() {
    let api = FakeApi::start(
        spec("10s"),
        Box::new(|n, _| match n {
            0 => status(503, "unavailable", json!({})),
            1 => status(500, "oops", json!({})),
            2 => status(409, "conflict", json!({})),
            _ => ok(),
        }),
    )
    .await;
    let ctx = api.connect().await.unwrap();
    ctx.heartbeat(&json!({"x": 1})).unwrap();
    wait_until("the heartbeat to be delivered", || api.patches().len() == 4).await;
    let p = api.patches();
    assert!(p.iter().all(|r| r.body[2]["value"] == json!({"x": 1})));
    assert!(!ctx.is_cancelled());
    ctx.fail("Mine", "it broke", true).await.unwrap();
    let last = api.patches().pop().unwrap().body;
    assert_eq!(
        last.as_array().unwrap().last().unwrap()["value"],
        json!({"attempt": 1, "succeeded": false, "failure": {"type": "Mine", "message": "it broke", "nonRetryable": true}})
    );
}

#[tokio::test]
async fn too_many_requests_waits_for_retry_after() {
    let api = FakeApi::start(
        spec("10s"),
        Box::new(|n, _| match n {
            0 => status(429, "slow down", json!({"retryAfterSeconds": 1})),
            _ => ok(),
        }),
    )
    .await;
    let ctx = api.connect().await.unwrap();
    ctx.heartbeat(&json!(1)).unwrap();
    wait_until("the retry", || api.patches().len() == 2).await;
    let p = api.patches();
    let gap = p[1].at - p[0].at;
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}, not after Retry-After 1s");
    assert!(!ctx.is_cancelled());
}

#[tokio::test]
async fn a_failed_test_op_means_superseded_and_is_not_retried() {
    let api = FakeApi::start(
        spec("10s"),
        Box::new(|_, _| status(422, "the server rejected our request due to an error in our request", json!({}))),
    )
    .await;
    let ctx = api.connect().await.unwrap();
    ctx.heartbeat(&json!(1)).unwrap();
    tokio::time::timeout(Duration::from_secs(10), ctx.cancelled()).await.unwrap();
    assert_eq!(ctx.cancel_reason(), Some(CancelReason::Superseded));
    // No outcome is even tried: the attempt is not ours any more.
    assert!(matches!(ctx.report_canceled().await, Err(Error::Superseded { .. })));
    assert_eq!(api.patches().len(), 1);
}

#[tokio::test]
async fn a_validation_error_is_not_taken_for_superseded() {
    let api = FakeApi::start(
        spec("10s"),
        Box::new(|n, _| match n {
            0 => status(
                422,
                "Activity \"a\" is invalid",
                json!({"causes": [{"field": "status.outcome", "message": "bad"}]}),
            ),
            _ => ok(),
        }),
    )
    .await;
    let ctx = api.connect().await.unwrap();
    ctx.heartbeat(&json!(1)).unwrap();
    wait_until("the refused heartbeat", || api.patches().len() == 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!ctx.is_cancelled());
    ctx.complete(&json!(null)).await.unwrap();
}

#[tokio::test]
async fn cancel_requested_in_the_reply_cancels() {
    let api = FakeApi::start(spec("10s"), Box::new(|_, _| ok())).await;
    let ctx = api.connect().await.unwrap();
    {
        let mut st = api.state.lock().unwrap();
        st.activity["spec"]["cancelRequested"] = json!(true);
        st.activity["status"]["cancelRequestedTime"] = json!("2020-01-01T00:00:00Z");
    }
    assert!(!ctx.is_cancelled());
    ctx.heartbeat(&json!(1)).unwrap();
    tokio::time::timeout(Duration::from_secs(10), ctx.cancelled()).await.unwrap();
    assert_eq!(ctx.cancel_reason(), Some(CancelReason::CancelRequested));
    // The operator's cancel time is long past: no grace left.
    assert_eq!(ctx.grace_remaining(), Duration::ZERO);
    ctx.report_canceled().await.unwrap();
    let last = api.patches().pop().unwrap().body;
    assert_eq!(
        last.as_array().unwrap().last().unwrap()["value"],
        json!({"attempt": 1, "succeeded": false, "canceled": true, "cause": "Canceled"})
    );
}

#[tokio::test]
async fn deletion_in_the_reply_cancels() {
    let api = FakeApi::start(spec("10s"), Box::new(|_, _| ok())).await;
    let ctx = api.connect().await.unwrap();
    api.state.lock().unwrap().activity["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    ctx.heartbeat(&json!(1)).unwrap();
    tokio::time::timeout(Duration::from_secs(10), ctx.cancelled()).await.unwrap();
    assert_eq!(ctx.cancel_reason(), Some(CancelReason::Deleted));
}

#[tokio::test]
async fn undeliverable_heartbeats_stop_the_worker_after_the_heartbeat_timeout() {
    let api = FakeApi::start(spec("1s"), Box::new(|_, _| status(503, "down", json!({})))).await;
    let ctx = api.connect().await.unwrap();
    let start = Instant::now();
    ctx.heartbeat(&json!(1)).unwrap();
    tokio::time::timeout(Duration::from_secs(10), ctx.cancelled()).await.unwrap();
    assert!(start.elapsed() >= Duration::from_secs(1), "gave up after {:?}", start.elapsed());
    assert!(matches!(ctx.cancel_reason(), Some(CancelReason::HeartbeatUndeliverable(_))));
    assert!(api.patches().len() >= 3, "retried with backoff before giving up");
    assert!(matches!(ctx.report_canceled().await, Err(Error::HeartbeatUndeliverable { .. })));
}

#[tokio::test]
async fn forbidden_stops_the_worker_with_the_missing_permission() {
    let api = FakeApi::start(spec("10s"), Box::new(|_, _| status(403, "cannot patch resource", json!({})))).await;
    let ctx = api.connect().await.unwrap();
    ctx.heartbeat(&json!(1)).unwrap();
    tokio::time::timeout(Duration::from_secs(10), ctx.cancelled()).await.unwrap();
    assert!(matches!(ctx.cancel_reason(), Some(CancelReason::Forbidden(_))));
    let err = ctx.report_canceled().await.unwrap_err();
    assert!(err.to_string().contains("cannot patch activities/status"), "{err}");
    assert_eq!(api.patches().len(), 1);
}

#[tokio::test]
async fn oversized_details_are_refused() {
    let api = FakeApi::start(spec("10s"), Box::new(|_, _| ok())).await;
    let ctx = api.connect().await.unwrap();
    let big = "x".repeat(activity_crds::MAX_PAYLOAD_BYTES);
    let err = ctx.heartbeat(&json!({"blob": big})).unwrap_err();
    assert!(matches!(err, Error::PayloadTooLarge { .. }), "{err}");
    let err = ctx.complete(&json!({"blob": big})).await.unwrap_err();
    assert!(err.to_string().contains("more than the limit"), "{err}");
    // Refused before anything was sent; the outcome can still be reported.
    ctx.complete(&json!({"small": true})).await.unwrap();
    assert_eq!(api.patches().len(), 1);
}
