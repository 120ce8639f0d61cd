//! The controller: watches Activities and their worker pods, keeps slim caches of both, and runs
//! [`reconcile`] for each Activity that changed or whose deadline timer fired. Status is written
//! only when it changed, so a heartbeat (which changes only worker-owned fields) causes no write.

use std::hash::{DefaultHasher, Hasher};
use std::sync::Arc;

use activity_crds::{Activity, ActivityStatus};
use futures::{Future, StreamExt, TryStreamExt};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::Api;
use kube::runtime::controller::{self, Config as ControllerConfig, Controller};
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use tracing::{debug, warn};

use crate::runtime::api::KubeApi;
use crate::runtime::context::{Context, ControllerSettings};
use crate::runtime::events;
use crate::runtime::memory::{Memory, ReadyGate};
use crate::runtime::metrics::{Metrics, Watched};
use crate::runtime::reconcile::{error_policy, reconcile, release_orphans};
use crate::runtime::worker_pod::WorkerPod;

/// A hash of everything in an Activity the planner reads, apart from the worker's heartbeat
/// (`lastHeartbeatTime`, `heartbeatDetails`). Watch events that leave it unchanged wake no reconcile:
/// the armed deadline timer reads the latest heartbeat from the cache when it fires, so a heartbeat
/// costs the operator one decoded watch event and nothing more. The status is listed field by field
/// (no `..`), so a field added to the status that is not hashed here fails to compile.
fn planner_input(act: &Activity) -> Option<u64> {
    let meta = &act.metadata;
    let status = act.status.as_ref().map(|s| {
        let ActivityStatus {
            phase,
            attempt,
            pod_name,
            scheduled_time,
            started_time,
            closed_time,
            last_heartbeat_time: _,
            heartbeat_details: _,
            next_attempt_schedule_time,
            cancel_requested_time,
            last_failure,
            result,
            outcome,
            attempts,
            last_reset,
            disruptions,
            counted_attempts,
            conditions,
            observed_generation,
        } = s;
        (
            (phase, attempt, pod_name, scheduled_time, started_time, closed_time),
            (next_attempt_schedule_time, cancel_requested_time, last_failure, result, outcome),
            (attempts, last_reset, disruptions, counted_attempts, conditions, observed_generation),
        )
    });
    let mut hasher = HashWriter(DefaultHasher::new());
    let input = (&meta.uid, meta.generation, &meta.deletion_timestamp, &meta.finalizers, status);
    // Serializing these types into a hasher cannot fail; if it ever did, let the event through.
    serde_json::to_writer(&mut hasher, &input).ok()?;
    Some(hasher.0.finish())
}

/// Feeds serialized bytes to a hasher, without buffering them.
struct HashWriter(DefaultHasher);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The Activity cache keeps no managed fields and no annotations: the operator reads neither, and
/// `kubectl apply` puts the whole manifest, template included, in an annotation.
fn slim_activity(act: &mut Activity) {
    act.metadata.managed_fields = None;
    act.metadata.annotations = None;
}

/// Runs the controller for one namespace (or all) until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: ControllerSettings,
    metrics: Arc<Metrics>,
    reporter: events::Reporter,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let (act_store, act_writer) = reflector::store();
    let (pod_store, pod_writer) = reflector::store();
    let config = ControllerConfig::default().concurrency(settings.concurrency);
    let (events, publisher) = events::start(client.clone(), reporter, metrics.clone(), settings.fence.clone());
    let ctx = Arc::new(Context {
        api: KubeApi(client.clone()),
        pods_ready: ReadyGate::of(&pod_store),
        pods: pod_store,
        events,
        metrics,
        settings,
        memory: Memory::default(),
    });
    let activities = activity_stream(&client, &ctx, act_writer);
    let pods = pod_stream(&client, &ctx, pod_writer);
    let orphans = ctx.clone();
    Controller::for_stream(activities, act_store)
        .owns_stream(pods)
        .with_config(config)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            let ctx = orphans.clone();
            async move {
                match result {
                    Err(controller::Error::ObjectNotFound(obj)) => {
                        // Off the controller's stream: it is not held up by the read.
                        tokio::spawn(async move {
                            let (ns, name) = (obj.namespace.unwrap_or_default(), obj.name);
                            if let Err(e) = release_orphans(&ctx, &ns, &name).await {
                                warn!(error = %e, activity = %name, namespace = %ns, "releasing the pods of a gone Activity failed");
                            }
                        });
                    }
                    Err(e) => debug!(error = %e, "controller stream"),
                    Ok(_) => {}
                }
            }
        })
        .await;
    // The controller (and with it every queue sender) is gone: let the last events out.
    publisher.drain().await;
}

fn scope<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Activities, slimmed and cached; the heartbeat lag is observed before the filter that keeps
/// heartbeats from waking the planner. A watch that fails (an object that does not decode, a
/// list the API server refused) is restarted with backoff; it is logged and counted, never hidden.
fn activity_stream(
    client: &Client,
    ctx: &Arc<Context<KubeApi>>,
    writer: reflector::store::Writer<Activity>,
) -> impl futures::Stream<Item = Result<Activity, watcher::Error>> + Send + use<> {
    let api: Api<Activity> = scope(client, ctx.settings.namespace.as_deref());
    let (lag, errors) = (ctx.clone(), ctx.metrics.clone());
    watcher(api, watcher::Config::default().any_semantic())
        .inspect_err(move |e| {
            errors.watch_error(Watched::Activities);
            warn!(error = %e, "the Activity watch failed; restarting it");
        })
        .default_backoff()
        .modify(slim_activity)
        .reflect(writer)
        .applied_objects()
        .inspect_ok(move |act| lag.observe_heartbeat(act, Timestamp::now()))
        .predicate_filter(planner_input, Default::default())
}

/// The worker pods (by their label), cached as [`WorkerPod`] projections.
fn pod_stream(
    client: &Client,
    ctx: &Arc<Context<KubeApi>>,
    writer: reflector::store::Writer<WorkerPod>,
) -> impl futures::Stream<Item = Result<WorkerPod, watcher::Error>> + Send + use<> {
    let api: Api<WorkerPod> = scope(client, ctx.settings.namespace.as_deref());
    let errors = ctx.metrics.clone();
    watcher(api, watcher::Config::default().labels(activity_crds::LABEL_ACTIVITY).any_semantic())
        .inspect_err(move |e| {
            errors.watch_error(Watched::Pods);
            warn!(error = %e, "the worker pod watch failed; restarting it");
        })
        .default_backoff()
        .reflect(writer)
        .touched_objects()
}

#[cfg(test)]
mod tests {
    use super::*;
    use activity_crds::FINALIZER;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
    use kube::{Resource, ResourceExt};
    use serde_json::json;

    use crate::model::pod_view::{PodView, WorkerState};
    use crate::runtime::api::{StatusApply, WORKER_FIELDS};

    fn running() -> Activity {
        serde_json::from_value(json!({
            "apiVersion": "heartbeat.dev/v1alpha1", "kind": "Activity",
            "metadata": {"name": "a", "namespace": "ns", "uid": "u1", "generation": 1, "resourceVersion": "10",
                         "finalizers": [FINALIZER]},
            "spec": {"startToCloseTimeout": "1m", "heartbeatTimeout": "10s",
                     "template": {"spec": {"containers": [{"name": "w", "image": "x"}]}}},
            "status": {"phase": "Running", "attempt": 1, "podName": "a-1",
                       "startedTime": "2026-01-01T00:00:00.000000Z",
                       "lastHeartbeatTime": "2026-01-01T00:00:05.000000Z", "heartbeatDetails": {"i": 1}}
        }))
        .expect("activity")
    }

    #[test]
    fn the_status_apply_leaves_the_workers_fields_alone_and_carries_results_of_any_depth() {
        let mut status = running().status.expect("status");
        let deep = format!("{}1{}", "[".repeat(300), "]".repeat(300));
        status.result = serde_json::from_str(&deep).ok();
        status.outcome = serde_json::from_value(json!({"attempt": 1, "succeeded": true})).ok();
        assert!(status.result.is_some());
        let body = serde_json::to_string(&StatusApply::new(&status, Some("7"))).expect("serializes");
        assert!(body.contains(&deep), "the result is sent as it came");
        for field in WORKER_FIELDS {
            assert!(!body.contains(&format!("\"{field}\"")), "{field} is the worker's: {body}");
        }
        assert!(body.contains(r#""metadata":{"resourceVersion":"7"}"#), "{body}");
    }

    #[test]
    fn a_heartbeat_alone_does_not_wake_the_planner() {
        let before = running();
        let base = planner_input(&before);
        assert!(base.is_some());
        let mut beat = before.clone();
        beat.metadata.resource_version = Some("11".into());
        let st = beat.status.as_mut().expect("status");
        st.last_heartbeat_time = Some(MicroTime("2026-01-01T00:00:09Z".parse().expect("time")));
        st.heartbeat_details = activity_crds::RawJson::from_value(&json!({"i": 2})).ok();
        assert_eq!(planner_input(&beat), base, "heartbeat fields and resourceVersion are not planner input");

        // Everything else the planner reads does wake it.
        type Change = (&'static str, fn(&mut Activity));
        let changes: [Change; 7] = [
            ("outcome", |a| {
                a.status.as_mut().expect("status").outcome =
                    serde_json::from_value(json!({"attempt": 1, "succeeded": true})).ok()
            }),
            ("spec (generation)", |a| a.metadata.generation = Some(2)),
            ("deletion", |a| a.metadata.deletion_timestamp = Some(Time("2026-01-01T00:00:10Z".parse().expect("t")))),
            ("finalizers", |a| a.metadata.finalizers = None),
            ("uid (recreated)", |a| a.metadata.uid = Some("u2".into())),
            ("phase", |a| a.status.as_mut().expect("status").phase = Some(activity_crds::Phase::Canceling)),
            ("attempt", |a| a.status.as_mut().expect("status").attempt = Some(2)),
        ];
        for (what, change) in changes {
            let mut changed = before.clone();
            change(&mut changed);
            assert_ne!(planner_input(&changed), base, "a change of {what} must wake the planner");
        }
    }

    #[test]
    fn the_cached_activity_keeps_no_annotations_or_managed_fields() {
        let mut act = running();
        act.metadata.annotations =
            Some([("kubectl.kubernetes.io/last-applied-configuration".into(), "{}".into())].into());
        act.metadata.managed_fields = Some(vec![Default::default()]);
        let input = planner_input(&act);
        slim_activity(&mut act);
        assert!(act.metadata.annotations.is_none() && act.metadata.managed_fields.is_none());
        assert_eq!(planner_input(&act), input, "the planner reads neither");
        assert_eq!(act.finalizers(), [FINALIZER], "what the planner does read stays");
    }

    #[test]
    fn the_cached_pod_keeps_what_the_planner_reads() {
        let full = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "a-1", "namespace": "ns", "labels": {"heartbeat.dev/attempt": "1"},
                         "annotations": {"big": "x".repeat(4096)}, "managedFields": [{"manager": "x"}],
                         "ownerReferences": [{"apiVersion": "heartbeat.dev/v1alpha1", "kind": "Activity",
                                              "name": "a", "uid": "u1", "controller": true}]},
            "spec": {"containers": [
                {"name": "w", "image": "x", "command": ["sleep", "1"], "env": [{"name": "BIG", "value": "x".repeat(4096)}]},
                {"name": "side", "image": "y"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "containerStatuses": [
                {"name": "side", "image": "y", "imageID": "", "ready": true, "restartCount": 0,
                 "state": {"terminated": {"exitCode": 1}}},
                {"name": "w", "image": "x", "imageID": "", "ready": true, "restartCount": 0,
                 "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}
        });
        let pod: WorkerPod = serde_json::from_value(full).expect("pod");
        let view = PodView::from_pod(&pod);
        assert_eq!(view.attempt, Some(1));
        assert!(matches!(view.worker, WorkerState::Running { started_at: Some(_) }), "{view:?}");
        let meta = &pod.metadata;
        assert!(meta.managed_fields.is_none() && meta.annotations.is_none() && meta.labels.is_none());
        // The controller maps a pod to its Activity by this owner reference.
        assert_eq!(pod.owner_references().first().map(|o| o.uid.as_str()), Some("u1"));
        // It is watched as a Pod.
        assert_eq!(
            (WorkerPod::kind(&()), WorkerPod::plural(&()), WorkerPod::api_version(&())),
            ("Pod".into(), "pods".into(), "v1".into())
        );
    }
}
