//! The runtime's paths against a scripted API: a refused write read afresh and planned again, a
//! pod the API server refuses, a pod the cache does not show yet, and the leadership fence.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use activity_crds::{Activity, FINALIZER, Phase};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::core::Status;
use kube::runtime::reflector;
use kube::runtime::watcher::Event as WatchEvent;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::model::planner;
use crate::model::pod_view::PodView;
use crate::runtime::api::{ActivityPatch, ClusterApi, StatusPatch};
use crate::runtime::context::{Context, ControllerSettings};
use crate::runtime::error::Error;
use crate::runtime::events::{EventQueue, Queued};
use crate::runtime::memory::{Memory, ReadyGate};
use crate::runtime::metrics::{KindLabel, Metrics};
use crate::runtime::reconcile::reconcile;
use crate::runtime::worker_pod::WorkerPod;

/// What the scripted API answers to one call.
#[allow(clippy::large_enum_variant)]
enum Reply {
    Activity(Option<Activity>),
    Pod(Option<WorkerPod>),
    Done,
    Refused(u16),
}

/// One call the runtime made: its operation, the object's name and what it carried.
#[derive(Debug, Clone)]
struct Call {
    op: &'static str,
    name: String,
    detail: String,
}

impl Call {
    fn is_write(&self) -> bool {
        !self.op.starts_with("get_")
    }
}

/// Answers a call the script does not cover.
type Responder = Box<dyn Fn(&Call) -> Reply + Send + Sync>;

/// Answers from a script, in order; a call the script does not expect fails the test. With
/// `fallback`, unscripted calls are answered by it instead. With `trip_after`, the fence is
/// cancelled as the n-th write is answered.
#[derive(Default)]
struct Scripted {
    calls: Mutex<Vec<Call>>,
    script: Mutex<VecDeque<Reply>>,
    fallback: Option<Responder>,
    trip_after: Option<(usize, CancellationToken)>,
}

impl Scripted {
    fn new(script: impl IntoIterator<Item = Reply>) -> Self {
        Scripted { script: Mutex::new(script.into_iter().collect()), ..Default::default() }
    }

    fn answer(&self, op: &'static str, name: &str, detail: String) -> Reply {
        let call = Call { op, name: name.into(), detail };
        let mut calls = self.calls.lock().expect("calls");
        calls.push(call.clone());
        let writes = calls.iter().filter(|c| c.is_write()).count();
        if let Some((n, fence)) = &self.trip_after
            && call.is_write()
            && writes == *n
        {
            fence.cancel();
        }
        let scripted = self.script.lock().expect("script").pop_front();
        match (scripted, &self.fallback) {
            (Some(reply), _) => reply,
            (None, Some(fallback)) => fallback(&call),
            (None, None) => panic!("a call the script does not expect: {call:?}"),
        }
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("calls").iter().map(|c| format!("{} {}", c.op, c.name)).collect()
    }

    fn details(&self) -> Vec<String> {
        self.calls.lock().expect("calls").iter().map(|c| c.detail.clone()).collect()
    }
}

fn refused(code: u16) -> kube::Error {
    kube::Error::Api(Status::failure("scripted refusal", "Scripted").with_code(code).boxed())
}

fn activity_of(reply: Reply) -> kube::Result<Activity> {
    match reply {
        Reply::Activity(Some(act)) => Ok(act),
        Reply::Refused(code) => Err(refused(code)),
        _ => panic!("this call answers with an Activity"),
    }
}

fn done(reply: Reply) -> kube::Result<()> {
    match reply {
        Reply::Done => Ok(()),
        Reply::Refused(code) => Err(refused(code)),
        _ => panic!("this call answers with nothing"),
    }
}

impl ClusterApi for Scripted {
    async fn get_activity(&self, _ns: &str, name: &str) -> kube::Result<Option<Activity>> {
        match self.answer("get_activity", name, String::new()) {
            Reply::Activity(act) => Ok(act),
            Reply::Refused(code) => Err(refused(code)),
            _ => panic!("get_activity answers with an Activity"),
        }
    }

    async fn get_pod(&self, _ns: &str, name: &str) -> kube::Result<Option<WorkerPod>> {
        match self.answer("get_pod", name, String::new()) {
            Reply::Pod(pod) => Ok(pod),
            Reply::Refused(code) => Err(refused(code)),
            _ => panic!("get_pod answers with a pod"),
        }
    }

    async fn patch_activity(&self, _ns: &str, name: &str, patch: ActivityPatch) -> kube::Result<Activity> {
        let detail = match patch {
            ActivityPatch::Merge(value) => format!("merge {value}"),
            ActivityPatch::Json(ops) => format!("json {}", serde_json::to_string(&ops).expect("patch")),
        };
        activity_of(self.answer("patch_activity", name, detail))
    }

    async fn patch_status(&self, _ns: &str, name: &str, patch: StatusPatch) -> kube::Result<Activity> {
        let detail = match patch {
            StatusPatch::Apply(apply) => {
                let status = apply.status();
                let failure = status.last_failure.as_ref().map(|f| f.type_.as_str());
                format!("apply over {:?}: {:?} {:?}", apply.precondition(), status.phase, failure)
            }
            StatusPatch::Json(ops) => format!("json {}", serde_json::to_string(&ops).expect("patch")),
        };
        activity_of(self.answer("patch_status", name, detail))
    }

    async fn delete_activity(&self, _ns: &str, name: &str, uid: &str) -> kube::Result<()> {
        done(self.answer("delete_activity", name, uid.into()))
    }

    async fn create_pod(&self, _ns: &str, pod: &Pod) -> kube::Result<()> {
        done(self.answer("create_pod", &pod.name_any(), String::new()))
    }

    async fn patch_pod(&self, _ns: &str, name: &str, patch: serde_json::Value) -> kube::Result<()> {
        done(self.answer("patch_pod", name, patch.to_string()))
    }

    async fn delete_pod(&self, _ns: &str, name: &str) -> kube::Result<()> {
        done(self.answer("delete_pod", name, String::new()))
    }

    async fn release_pod(&self, _ns: &str, name: &str) -> kube::Result<()> {
        done(self.answer("release_pod", name, String::new()))
    }
}

/// A context over `api` whose pod cache has listed (and holds `pods`), and the lanes of its
/// Event queue.
fn context(api: Scripted, fence: CancellationToken, pods: &[WorkerPod]) -> (Arc<Context<Scripted>>, Lanes) {
    let (store, mut writer) = reflector::store::<WorkerPod>();
    writer.apply_watcher_event(&WatchEvent::Init);
    for pod in pods {
        writer.apply_watcher_event(&WatchEvent::InitApply(pod.clone()));
    }
    writer.apply_watcher_event(&WatchEvent::InitDone);
    let metrics = Arc::new(Metrics::default());
    let (events, lanes) = EventQueue::detached(metrics.clone(), fence.clone());
    let settings =
        ControllerSettings { namespace: None, concurrency: 1, worker_service_account: "activity-worker".into(), fence };
    let ctx = Context {
        api,
        pods_ready: ReadyGate::of(&store),
        pods: store,
        events,
        metrics,
        settings,
        memory: Memory::default(),
    };
    (Arc::new(ctx), Lanes(lanes))
}

struct Lanes(Vec<mpsc::Receiver<Queued>>);

impl Lanes {
    /// The reasons of the Events queued so far.
    fn reasons(&mut self) -> Vec<&'static str> {
        let mut reasons = Vec::new();
        for lane in &mut self.0 {
            while let Ok(event) = lane.try_recv() {
                reasons.push(event.reason);
            }
        }
        reasons
    }
}

fn count(
    family: &prometheus_client::metrics::family::Family<KindLabel, prometheus_client::metrics::counter::Counter>,
    kind: &str,
) -> u64 {
    family.get_or_create(&KindLabel { kind: kind.into() }).get()
}

/// A new Activity `a` (resourceVersion 10), with or without our finalizer.
fn new_activity(finalizer: bool) -> Activity {
    let finalizers: Vec<&str> = if finalizer { vec![FINALIZER] } else { vec![] };
    serde_json::from_value(json!({
        "apiVersion": "heartbeat.dev/v1alpha1", "kind": "Activity",
        "metadata": {"name": "a", "namespace": "ns", "uid": "u1", "generation": 1, "resourceVersion": "10",
                     "finalizers": finalizers},
        "spec": {"startToCloseTimeout": "1m", "template": {"spec": {"containers": [{"name": "w", "image": "x"}]}}}
    }))
    .expect("activity")
}

/// `act` as the planner leaves it given `pods`, at `version`.
fn planned(act: &Activity, pods: &[PodView], version: &str) -> Activity {
    let mut next = act.clone();
    next.status = Some(planner::plan(act, pods, Timestamp::now()).status);
    next.metadata.resource_version = Some(version.into());
    next
}

/// The running pod of attempt 1, started a moment ago.
fn running_pod() -> WorkerPod {
    let started = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "a-1", "namespace": "ns", "labels": {"heartbeat.dev/attempt": "1"},
                     "ownerReferences": [{"apiVersion": "heartbeat.dev/v1alpha1", "kind": "Activity",
                                          "name": "a", "uid": "u1", "controller": true}]},
        "spec": {"containers": [{"name": "w", "image": "x"}]},
        "status": {"phase": "Running", "containerStatuses": [{"name": "w", "image": "x", "imageID": "",
            "ready": true, "restartCount": 0, "state": {"running": {"startedAt": started}}}]}
    }))
    .expect("pod")
}

/// An activity whose attempt 1 runs (its status as the planner wrote it).
fn running_activity() -> Activity {
    let pending = planned(&new_activity(true), &[], "11");
    planned(&pending, &[PodView::from_pod(&running_pod())], "12")
}

#[tokio::test]
async fn a_refused_finalizer_write_is_planned_again_on_a_fresh_read() {
    let cached = new_activity(false);
    // Meanwhile another pass added the finalizer and recorded attempt 1.
    let fresh = planned(&new_activity(true), &[], "12");
    let api = Scripted::new([Reply::Refused(409), Reply::Activity(Some(fresh)), Reply::Pod(None), Reply::Done]);
    let (ctx, mut lanes) = context(api, CancellationToken::new(), &[]);
    let result = reconcile(Arc::new(cached), ctx.clone()).await;
    assert!(result.is_ok(), "a conflict is no error: {result:?}");
    assert_eq!(ctx.api.calls(), ["patch_activity a", "get_activity a", "get_pod a-1", "create_pod a-1"]);
    assert_eq!(count(&ctx.metrics.fresh_reads, "finalizer"), 1);
    assert_eq!(count(&ctx.metrics.fresh_reads, "pod"), 1);
    assert_eq!(lanes.reasons(), ["AttemptStarted"]);
}

#[tokio::test]
async fn an_activity_refused_twice_is_left_to_the_error_policy() {
    let cached = new_activity(true);
    let fresh = Activity {
        metadata: kube::api::ObjectMeta { resource_version: Some("11".into()), ..cached.metadata.clone() },
        ..cached.clone()
    };
    let api = Scripted::new([Reply::Refused(409), Reply::Activity(Some(fresh)), Reply::Refused(409)]);
    let (ctx, _lanes) = context(api, CancellationToken::new(), &[]);
    let error = reconcile(Arc::new(cached), ctx.clone()).await.expect_err("refused twice");
    assert!(matches!(error, Error::ChangedTwice), "{error}");
    assert_eq!(error.kind(), "superseded");
    assert_eq!(ctx.api.calls(), ["patch_status a", "get_activity a", "patch_status a"]);
    assert_eq!(
        ctx.api.details()[2],
        r#"apply over Some("11"): Some(Pending) None"#,
        "the second write is guarded by the fresh version"
    );
}

#[tokio::test]
async fn an_activity_gone_by_the_fresh_read_is_left_alone() {
    let api = Scripted::new([Reply::Refused(409), Reply::Activity(None)]);
    let (ctx, mut lanes) = context(api, CancellationToken::new(), &[]);
    let result = reconcile(Arc::new(new_activity(true)), ctx.clone()).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(ctx.api.calls(), ["patch_status a", "get_activity a"]);
    assert!(lanes.reasons().is_empty());
}

#[tokio::test]
async fn a_pod_the_api_server_refuses_fails_the_activity_as_pod_rejected() {
    let cached = new_activity(true);
    let written = planned(&cached, &[], "11");
    let api = Scripted::new([
        Reply::Activity(Some(written.clone())),
        Reply::Refused(422),
        Reply::Activity(Some(written)),
        Reply::Activity(Some(new_activity(false))),
    ]);
    let (ctx, mut lanes) = context(api, CancellationToken::new(), &[]);
    let result = reconcile(Arc::new(cached), ctx.clone()).await;
    assert!(result.is_ok(), "a refused pod is a verdict, not an error: {result:?}");
    assert_eq!(ctx.api.calls(), ["patch_status a", "create_pod a-1", "patch_status a", "patch_activity a"]);
    let details = ctx.api.details();
    assert_eq!(details[0], r#"apply over Some("10"): Some(Pending) None"#);
    assert_eq!(details[2], r#"apply over Some("11"): Some(Failed) Some("PodRejected")"#, "over our own write");
    assert!(details[3].contains(r#""op":"remove""#), "the finalizer goes: {}", details[3]);
    assert_eq!(lanes.reasons(), ["PodRejected", "Failed"]);
}

#[tokio::test]
async fn a_pod_create_that_fails_for_now_is_retried_and_shown_as_stalled() {
    let cached = new_activity(true);
    let written = planned(&cached, &[], "11");
    let api = Scripted::new([
        Reply::Activity(Some(written.clone())),
        Reply::Refused(500),
        Reply::Activity(Some(written.clone())),
        Reply::Activity(Some(written)),
    ]);
    let (ctx, mut lanes) = context(api, CancellationToken::new(), &[]);
    let error = reconcile(Arc::new(cached), ctx.clone()).await.expect_err("retried with backoff");
    assert_eq!(error.kind(), "create pod");
    assert_eq!(ctx.api.calls(), ["patch_status a", "create_pod a-1", "get_activity a", "patch_status a"]);
    assert!(ctx.api.details()[3].contains(r#""type":"Stalled""#), "{:?}", ctx.api.details());
    assert!(ctx.api.details()[3].contains("PodCreateFailed"), "{:?}", ctx.api.details());
    assert_eq!(lanes.reasons(), ["PodCreateFailed"]);
}

#[tokio::test]
async fn a_running_pod_missing_from_the_cache_is_read_before_it_is_judged() {
    let api = Scripted::new([Reply::Pod(Some(running_pod()))]);
    let (ctx, mut lanes) = context(api, CancellationToken::new(), &[]);
    let result = reconcile(Arc::new(running_activity()), ctx.clone()).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(ctx.api.calls(), ["get_pod a-1"], "found: the attempt runs on, nothing is written");
    assert_eq!(count(&ctx.metrics.fresh_reads, "pod"), 1);
    assert!(lanes.reasons().is_empty());

    // Not there either: the pod was deleted while it ran.
    let api = Scripted::new([Reply::Pod(None), Reply::Activity(Some(running_activity()))]);
    let (ctx, mut lanes) = context(api, CancellationToken::new(), &[]);
    reconcile(Arc::new(running_activity()), ctx.clone()).await.expect("judged");
    assert_eq!(ctx.api.calls(), ["get_pod a-1", "patch_status a"]);
    assert_eq!(ctx.api.details()[1], r#"apply over Some("12"): Some(BackingOff) Some("PodDeleted")"#);
    assert_eq!(lanes.reasons(), ["AttemptFailed", "RetryScheduled"]);
}

#[tokio::test]
async fn a_pod_created_without_a_status_write_is_planned_from_a_fresh_read() {
    // Attempt 1 is recorded, its pod is in no cache: creating it again writes no status, so no
    // precondition would guard it.
    let recorded = planned(&new_activity(true), &[], "11");
    let api = Scripted::new([Reply::Pod(None), Reply::Activity(Some(recorded.clone())), Reply::Pod(None), Reply::Done]);
    let (ctx, _lanes) = context(api, CancellationToken::new(), &[]);
    reconcile(Arc::new(recorded), ctx.clone()).await.expect("created");
    assert_eq!(ctx.api.calls(), ["get_pod a-1", "get_activity a", "get_pod a-1", "create_pod a-1"]);
    assert_eq!(count(&ctx.metrics.fresh_reads, "pod_create"), 1);

    // The fresh read shows the attempt has ended meanwhile: no pod is started again.
    let recorded = planned(&new_activity(true), &[], "11");
    let mut canceled = recorded.clone();
    canceled.spec.cancel_requested = true;
    let ended = planned(&canceled, &[], "13");
    assert_eq!(ended.status.as_ref().and_then(|s| s.phase), Some(Phase::Canceled));
    let api = Scripted::new([Reply::Pod(None), Reply::Activity(Some(ended.clone())), Reply::Activity(Some(ended))]);
    let (ctx, _lanes) = context(api, CancellationToken::new(), &[]);
    reconcile(Arc::new(recorded), ctx.clone()).await.expect("judged");
    let calls = ctx.api.calls();
    assert!(!calls.iter().any(|c| c.starts_with("create_pod")), "{calls:?}");
}

/// Answers every call as a willing API server would.
fn willing(act: Activity) -> Responder {
    Box::new(move |call: &Call| match call.op {
        "get_pod" => Reply::Pod(None),
        "get_activity" | "patch_activity" | "patch_status" => Reply::Activity(Some(act.clone())),
        _ => Reply::Done,
    })
}

/// Activities whose pass writes several things: a new one (finalizer, status, pod), and a
/// finished one past its TTL with a stray pod (pod stop, finalizer removal, deletion).
fn busy_activities() -> Vec<(Activity, Vec<WorkerPod>)> {
    let mut finished = running_activity();
    finished.spec.ttl_seconds_after_finished = Some(0);
    let status = finished.status.as_mut().expect("status");
    status.outcome = serde_json::from_value(json!({"attempt": 1, "succeeded": true})).ok();
    let mut finished = planned(&finished, &[PodView::from_pod(&running_pod())], "13");
    assert_eq!(finished.status.as_ref().and_then(|s| s.phase), Some(Phase::Succeeded));
    // Its worker has not exited: its pod is stopped.
    finished.status.as_mut().expect("status").outcome = None;
    vec![(new_activity(false), vec![]), (finished, vec![running_pod()])]
}

#[tokio::test]
async fn no_write_goes_out_once_the_fence_has_tripped() {
    for (act, pods) in busy_activities() {
        // Every write this pass makes, with the lease held throughout.
        let api = Scripted { fallback: Some(willing(act.clone())), ..Default::default() };
        let (ctx, _lanes) = context(api, CancellationToken::new(), &pods);
        reconcile(Arc::new(act.clone()), ctx.clone()).await.expect("a pass as leader");
        let all: Vec<Call> = ctx.api.calls.lock().expect("calls").clone();
        let writes: Vec<&Call> = all.iter().filter(|c| c.is_write()).collect();
        assert!(writes.len() >= 3, "a pass that writes several things: {all:?}");

        // The lease is lost as the n-th write is answered: nothing is written or recorded after it.
        for n in 0..=writes.len() {
            let fence = CancellationToken::new();
            let api = Scripted {
                fallback: Some(willing(act.clone())),
                trip_after: (n > 0).then(|| (n, fence.clone())),
                ..Default::default()
            };
            if n == 0 {
                fence.cancel();
            }
            let (ctx, mut lanes) = context(api, fence, &pods);
            let result = reconcile(Arc::new(act.clone()), ctx.clone()).await;
            if n < writes.len() {
                assert!(matches!(result, Err(Error::NotLeader)), "write {n}: {result:?}");
            }
            let queued = lanes.reasons();
            let made: Vec<String> = ctx
                .api
                .calls
                .lock()
                .expect("calls")
                .iter()
                .filter(|c| c.is_write())
                .map(|c| c.op.to_string())
                .collect();
            let expected: Vec<String> = writes.iter().take(n).map(|c| c.op.to_string()).collect();
            assert_eq!(made, expected, "the lease was lost at write {n} of {}", act.name_any());
            if n == 0 {
                assert!(queued.is_empty(), "no Event from a replica that does not lead: {queued:?}");
            }
            let created_at = writes.iter().position(|c| c.op == "create_pod");
            if created_at.is_some_and(|i| n > i) {
                assert!(!queued.contains(&"AttemptStarted"), "an Event recorded after the lease was lost");
            }
            // Whatever was queued, the queue now takes nothing more.
            ctx.publish(&act, &[crate::model::plan::Event::normal(crate::model::reason::Reason::Paused, "x".into())]);
            assert!(lanes.reasons().is_empty(), "an Event queued after the fence tripped");
        }
    }
}
