//! Worker pods as the runtime meets them: built from an Activity's template ([`build_pod`]),
//! cached as a slim projection ([`WorkerPod`]) and read into the planner's [`PodView`].

use std::collections::BTreeMap;

use activity_crds::{Activity, ENV_ATTEMPT, ENV_NAME, ENV_NAMESPACE, LABEL_ACTIVITY, LABEL_ATTEMPT};
use k8s_openapi::api::core::v1::{Container, ContainerState, EnvVar, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::{Resource, ResourceExt};
use serde::Deserialize;

use crate::model::pod_view::{Exit, PodView, TRACKING_FINALIZER, WorkerState, activity_label, pod_name};

/// Why a worker pod cannot be built from the template.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("spec.template.spec is missing")]
    NoPodSpec,
    #[error("spec.template is not a valid pod template: {0}")]
    Template(#[source] activity_crds::TemplateError),
    #[error("the Activity has no name, namespace or uid yet")]
    NoIdentity,
}

/// Builds the pod of `attempt`: the template with `restartPolicy: Never`, our labels, a controller
/// owner reference, the tracking finalizer, the ACTIVITY_* env in every container, and the worker
/// service account when the template names none.
pub fn build_pod(activity: &Activity, attempt: i32, default_service_account: &str) -> Result<Pod, BuildError> {
    let name = activity.metadata.name.clone().ok_or(BuildError::NoIdentity)?;
    let namespace = activity.metadata.namespace.clone().ok_or(BuildError::NoIdentity)?;
    let owner = activity.controller_owner_ref(&()).ok_or(BuildError::NoIdentity)?;
    let template = activity.spec.template.parse().map_err(BuildError::Template)?;
    let mut spec: PodSpec = template.spec.ok_or(BuildError::NoPodSpec)?;
    spec.restart_policy = Some("Never".into());
    if spec.service_account_name.as_deref().unwrap_or("").is_empty() {
        spec.service_account_name = Some(default_service_account.to_string());
    }
    let env = [(ENV_NAME, name.clone()), (ENV_NAMESPACE, namespace.clone()), (ENV_ATTEMPT, attempt.to_string())];
    let inject = |c: &mut Container| {
        let vars = c.env.get_or_insert_with(Vec::new);
        vars.retain(|v| !env.iter().any(|(k, _)| v.name == *k));
        vars.extend(env.iter().map(|(k, v)| EnvVar { name: (*k).into(), value: Some(v.clone()), value_from: None }));
    };
    spec.containers.iter_mut().for_each(inject);
    spec.init_containers.iter_mut().flatten().for_each(inject);

    let template_meta = template.metadata.clone().unwrap_or_default();
    let mut labels: BTreeMap<String, String> = template_meta.labels.unwrap_or_default();
    labels.insert(LABEL_ACTIVITY.into(), activity_label(&name));
    labels.insert(LABEL_ATTEMPT.into(), attempt.to_string());
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(&name, attempt)),
            namespace: Some(namespace),
            labels: Some(labels),
            annotations: template_meta.annotations,
            owner_references: Some(vec![OwnerReference { block_owner_deletion: Some(true), ..owner }]),
            finalizers: Some(vec![TRACKING_FINALIZER.into()]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    })
}

/// A worker pod as the operator watches and caches it: only what [`PodView`] reads. The rest of a
/// pod (its labels and annotations, managed fields, spec, the other containers' statuses, the
/// conditions other than `DisruptionTarget`…) is skipped while the watch event is decoded, never
/// allocated: a full `k8s_openapi` `Pod` would cost the cache several times as much.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(from = "PodDocument")]
pub struct WorkerPod {
    /// Name, namespace, uid, resourceVersion, deletionTimestamp and owner references; nothing else.
    pub metadata: ObjectMeta,
    /// The attempt label (`heartbeat.dev/attempt`), if it reads as a number.
    pub attempt: Option<i32>,
    /// When the operator stopped the pod (annotation [`STOPPED_AT`]).
    pub stopped_at: Option<Timestamp>,
    /// `spec.terminationGracePeriodSeconds`.
    pub grace_seconds: Option<i64>,
    /// It carries [`TRACKING_FINALIZER`].
    pub tracked: bool,
    pub status: WorkerPodStatus,
}

/// Annotation the operator sets, with the time, when it stops a pod without deleting it.
pub const STOPPED_AT: &str = "heartbeat.dev/stopped-at";
/// The kubelet's default grace period.
const DEFAULT_GRACE_SECONDS: i64 = 30;

#[derive(Clone, Debug, Default)]
pub struct WorkerPodStatus {
    pub phase: Option<String>,
    pub reason: Option<String>,
    pub message: Option<String>,
    /// The pod has the condition `DisruptionTarget` with status `True` (eviction, preemption).
    pub disruption_target: bool,
    /// The state of the worker: the first container of the pod's spec.
    pub worker: Option<ContainerState>,
    /// Another container (a sidecar) is running.
    pub others_running: bool,
}

/// A pod as the API server sends it, as far as [`WorkerPod`] reads it.
#[derive(Deserialize)]
struct PodDocument {
    #[serde(default)]
    metadata: PodMetadata,
    spec: Option<PodSpecNames>,
    status: Option<PodDocumentStatus>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodMetadata {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    deletion_timestamp: Option<Time>,
    owner_references: Option<Vec<OwnerReference>>,
    finalizers: Option<Vec<String>>,
    labels: Option<AttemptLabel>,
    annotations: Option<StoppedAnnotation>,
}

/// Of a pod's annotations, [`STOPPED_AT`]; the others are skipped.
#[derive(Default, Deserialize)]
struct StoppedAnnotation {
    #[serde(rename = "heartbeat.dev/stopped-at")]
    stopped_at: Option<String>,
}

/// Of a pod's labels, the attempt; the others are skipped.
#[derive(Default, Deserialize)]
struct AttemptLabel {
    // `LABEL_ATTEMPT`; a unit test checks they agree.
    #[serde(rename = "heartbeat.dev/attempt")]
    attempt: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpecNames {
    #[serde(default)]
    containers: Vec<Named>,
    termination_grace_period_seconds: Option<i64>,
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodDocumentStatus {
    phase: Option<String>,
    reason: Option<String>,
    message: Option<String>,
    conditions: Option<Vec<PodCondition>>,
    container_statuses: Option<Vec<NamedContainerState>>,
}

#[derive(Deserialize)]
struct PodCondition {
    #[serde(rename = "type")]
    type_: String,
    status: String,
}

#[derive(Deserialize)]
struct NamedContainerState {
    name: String,
    state: Option<ContainerState>,
}

impl From<PodDocument> for WorkerPod {
    fn from(doc: PodDocument) -> Self {
        let m = doc.metadata;
        let metadata = ObjectMeta {
            name: m.name,
            namespace: m.namespace,
            uid: m.uid,
            resource_version: m.resource_version,
            deletion_timestamp: m.deletion_timestamp,
            owner_references: m.owner_references,
            ..ObjectMeta::default()
        };
        let grace_seconds = doc.spec.as_ref().and_then(|s| s.termination_grace_period_seconds);
        let worker_name = doc.spec.and_then(|s| s.containers.into_iter().next()).map(|c| c.name);
        let status = doc
            .status
            .map(|s| WorkerPodStatus {
                others_running: s.container_statuses.iter().flatten().any(|c| {
                    Some(&c.name) != worker_name.as_ref() && c.state.as_ref().is_some_and(|s| s.running.is_some())
                }),
                disruption_target: s
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "DisruptionTarget" && c.status == "True"),
                worker: s
                    .container_statuses
                    .into_iter()
                    .flatten()
                    .find(|c| Some(&c.name) == worker_name.as_ref())
                    .and_then(|c| c.state),
                phase: s.phase,
                reason: s.reason,
                message: s.message,
            })
            .unwrap_or_default();
        WorkerPod {
            metadata,
            attempt: m.labels.and_then(|l| l.attempt?.parse().ok()),
            stopped_at: m.annotations.and_then(|a| a.stopped_at?.parse().ok()),
            grace_seconds,
            tracked: m.finalizers.iter().flatten().any(|f| f == TRACKING_FINALIZER),
            status,
        }
    }
}

impl k8s_openapi::Resource for WorkerPod {
    const API_VERSION: &'static str = <Pod as k8s_openapi::Resource>::API_VERSION;
    const GROUP: &'static str = <Pod as k8s_openapi::Resource>::GROUP;
    const KIND: &'static str = <Pod as k8s_openapi::Resource>::KIND;
    const VERSION: &'static str = <Pod as k8s_openapi::Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str = <Pod as k8s_openapi::Resource>::URL_PATH_SEGMENT;
    type Scope = <Pod as k8s_openapi::Resource>::Scope;
}

impl k8s_openapi::Metadata for WorkerPod {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl PodView {
    pub fn from_pod(pod: &WorkerPod) -> Self {
        let status = &pod.status;
        let disrupted = status.reason.as_deref() == Some("Evicted") || status.disruption_target;
        let pod_done = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
        let state = status.worker.clone().unwrap_or_default();
        let worker = if let Some(t) = state.terminated {
            WorkerState::Exited(Exit {
                exit_code: Some(t.exit_code),
                reason: if disrupted && status.reason.is_some() { status.reason.clone() } else { t.reason },
                message: t.message.or(status.message.clone()),
                disrupted,
                started_at: t.started_at.map(|t| t.0),
            })
        } else if pod_done {
            // The pod ended without the container reporting (e.g. evicted or rejected before start).
            WorkerState::Exited(Exit {
                exit_code: if status.phase.as_deref() == Some("Succeeded") { Some(0) } else { None },
                reason: status.reason.clone(),
                message: status.message.clone(),
                disrupted,
                started_at: None,
            })
        } else if let Some(r) = state.running {
            WorkerState::Running { started_at: r.started_at.map(|t| t.0) }
        } else {
            let waiting = state.waiting.unwrap_or_default();
            WorkerState::Waiting { reason: waiting.reason, message: waiting.message }
        };
        let grace = pod.grace_seconds.unwrap_or(DEFAULT_GRACE_SECONDS).max(0);
        let stopped_by = pod.stopped_at.and_then(|t| t.checked_add(SignedDuration::from_secs(grace)).ok());
        PodView {
            name: pod.name_any(),
            attempt: pod.attempt,
            deleting: pod.metadata.deletion_timestamp.is_some(),
            pod_live: !pod_done && (worker.is_live() || status.others_running),
            stop_by: pod.metadata.deletion_timestamp.as_ref().map(|t| t.0).or(stopped_by),
            disrupted,
            tracked: pod.tracked,
            worker,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn activity(name: &str, template: serde_json::Value) -> Activity {
        serde_json::from_value(json!({
            "apiVersion": "heartbeat.dev/v1alpha1", "kind": "Activity",
            "metadata": {"name": name, "namespace": "ns", "uid": "u-1"},
            "spec": {"startToCloseTimeout": "1m", "template": template}
        }))
        .unwrap()
    }

    #[test]
    fn a_template_that_is_no_pod_template_is_an_error_naming_the_field() {
        // It passes the CRD schema (unknown fields are kept) and the Activity itself reads fine …
        let a = activity("odd", json!({"spec": {"containers": [{"name": "w", "image": "x", "command": "sleep"}]}}));
        // … but no pod can be built from it, and the error says where.
        let err = build_pod(&a, 1, "activity-worker").expect_err("command must be a list").to_string();
        assert!(err.contains("spec.containers[0].command"), "{err}");
        assert!(err.starts_with("spec.template is not a valid pod template"), "{err}");
    }

    #[test]
    fn built_pod_forces_never_injects_env_and_owner() {
        let a = activity(
            "demo",
            json!({"metadata": {"labels": {"team": "x"}}, "spec": {
            "restartPolicy": "Always",
            "initContainers": [{"name": "init", "image": "busybox"}],
            "containers": [
                {"name": "w", "image": "worker", "env": [{"name": "ACTIVITY_ATTEMPT", "value": "bogus"}, {"name": "KEEP", "value": "1"}]},
                {"name": "side", "image": "busybox"}
            ]}}),
        );
        let pod = build_pod(&a, 2, "activity-worker").unwrap();
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.service_account_name.as_deref(), Some("activity-worker"));
        assert_eq!(pod.metadata.name.as_deref(), Some("demo-2"));
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels.get("team").map(String::as_str), Some("x"));
        assert_eq!(labels.get(LABEL_ACTIVITY).map(String::as_str), Some("demo"));
        assert_eq!(labels.get(LABEL_ATTEMPT).map(String::as_str), Some("2"));
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("Activity", "u-1", Some(true)));
        for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
            let env = c.env.as_ref().unwrap();
            let get =
                |k: &str| env.iter().filter(|v| v.name == k).map(|v| v.value.clone().unwrap()).collect::<Vec<_>>();
            assert_eq!(get(ENV_NAME), vec!["demo"]);
            assert_eq!(get(ENV_NAMESPACE), vec!["ns"]);
            assert_eq!(get(ENV_ATTEMPT), vec!["2"], "container {}", c.name);
        }
        assert_eq!(spec.containers[0].env.as_ref().unwrap()[0].name, "KEEP");
    }

    #[test]
    fn template_service_account_is_kept() {
        let a = activity(
            "demo",
            json!({"spec": {"serviceAccountName": "mine", "containers": [{"name": "w", "image": "x"}]}}),
        );
        let pod = build_pod(&a, 1, "activity-worker").unwrap();
        assert_eq!(pod.spec.unwrap().service_account_name.as_deref(), Some("mine"));
    }

    fn pod(status: serde_json::Value) -> WorkerPod {
        serde_json::from_value(json!({
            "metadata": {"name": "demo-1", "labels": {"heartbeat.dev/attempt": "1"}},
            "spec": {"containers": [{"name": "w", "image": "x"}, {"name": "side", "image": "y"}]},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn the_attempt_is_read_from_the_attempt_label() {
        let pod: WorkerPod = serde_json::from_value(json!({
            "metadata": {"name": "demo-3", "labels": {LABEL_ACTIVITY: "demo", LABEL_ATTEMPT: "3"}}
        }))
        .unwrap();
        assert_eq!(pod.attempt, Some(3));
        let unlabelled: WorkerPod = serde_json::from_value(json!({"metadata": {"name": "demo-3"}})).unwrap();
        assert_eq!(PodView::from_pod(&unlabelled).attempt, None);
        // Explicit nulls decode like absent fields.
        let nulls: WorkerPod = serde_json::from_value(json!({"metadata": {"name": "demo-3", "labels": null},
            "status": {"phase": "Pending", "conditions": null, "containerStatuses": null}}))
        .unwrap();
        assert_eq!((nulls.attempt, nulls.status.phase.as_deref()), (None, Some("Pending")));
    }

    #[test]
    fn pod_view_reads_the_worker_container() {
        let waiting = PodView::from_pod(&pod(json!({"phase": "Pending", "containerStatuses": [
            {"name": "w", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"waiting": {"reason": "ErrImagePull", "message": "no such image"}}}]})));
        assert_eq!(waiting.attempt, Some(1));
        assert_eq!(
            waiting.worker,
            WorkerState::Waiting { reason: Some("ErrImagePull".into()), message: Some("no such image".into()) }
        );
        let running = PodView::from_pod(&pod(json!({"phase": "Running", "containerStatuses": [
            {"name": "side", "image": "y", "imageID": "", "ready": true, "restartCount": 0,
             "state": {"terminated": {"exitCode": 1}}},
            {"name": "w", "image": "x", "imageID": "", "ready": true, "restartCount": 0,
             "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]})));
        assert!(matches!(running.worker, WorkerState::Running { started_at: Some(_) }));
        let oom = PodView::from_pod(&pod(json!({"phase": "Failed", "containerStatuses": [
            {"name": "w", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]})));
        let WorkerState::Exited(exit) = oom.worker else { panic!("not exited") };
        assert_eq!((exit.exit_code, exit.reason.as_deref(), exit.disrupted), (Some(137), Some("OOMKilled"), false));
        let evicted = PodView::from_pod(&pod(json!({"phase": "Failed", "reason": "Evicted", "message": "low memory"})));
        let WorkerState::Exited(exit) = evicted.worker else { panic!("not exited") };
        assert_eq!((exit.exit_code, exit.reason.as_deref(), exit.disrupted), (None, Some("Evicted"), true));
        let disrupted = PodView::from_pod(&pod(json!({"phase": "Running",
            "conditions": [{"type": "DisruptionTarget", "status": "True"}],
            "containerStatuses": [{"name": "w", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"terminated": {"exitCode": 143, "reason": "Error"}}}]})));
        let WorkerState::Exited(exit) = disrupted.worker else { panic!("not exited") };
        assert!(exit.disrupted);
    }
}
