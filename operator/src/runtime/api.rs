//! The operator's calls to the API server behind one trait, [`ClusterApi`]: the runtime's
//! conflict, refused-pod, fresh-read and fence paths are unit-tested against a scripted API
//! (`runtime::tests`), and [`KubeApi`] is the real one. Every write names the operator's field
//! manager.

use std::future::Future;

use activity_crds::{Activity, ActivityStatus, OPERATOR_MANAGER};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Client, Resource};

use crate::model::pod_view::TRACKING_FINALIZER;
use crate::runtime::worker_pod::WorkerPod;

/// A patch of an Activity's metadata (its finalizers).
#[derive(Debug, Clone)]
pub enum ActivityPatch {
    Merge(serde_json::Value),
    Json(json_patch::Patch),
}

/// A patch of an Activity's status.
#[derive(Debug)]
pub enum StatusPatch {
    /// Server-side apply of the operator's fields.
    Apply(Box<StatusApply>),
    Json(json_patch::Patch),
}

/// The calls the runtime makes. Reads return `None` for an object that is gone.
pub trait ClusterApi: Send + Sync + 'static {
    fn get_activity(&self, ns: &str, name: &str) -> impl Future<Output = kube::Result<Option<Activity>>> + Send;
    fn get_pod(&self, ns: &str, name: &str) -> impl Future<Output = kube::Result<Option<WorkerPod>>> + Send;
    fn patch_activity(
        &self,
        ns: &str,
        name: &str,
        patch: ActivityPatch,
    ) -> impl Future<Output = kube::Result<Activity>> + Send;
    fn patch_status(
        &self,
        ns: &str,
        name: &str,
        patch: StatusPatch,
    ) -> impl Future<Output = kube::Result<Activity>> + Send;
    /// Deletes the Activity if it still has `uid`.
    fn delete_activity(&self, ns: &str, name: &str, uid: &str) -> impl Future<Output = kube::Result<()>> + Send;
    fn create_pod(&self, ns: &str, pod: &Pod) -> impl Future<Output = kube::Result<()>> + Send;
    /// A merge patch of a pod.
    fn patch_pod(
        &self,
        ns: &str,
        name: &str,
        patch: serde_json::Value,
    ) -> impl Future<Output = kube::Result<()>> + Send;
    /// Deletes a pod with its own grace period.
    fn delete_pod(&self, ns: &str, name: &str) -> impl Future<Output = kube::Result<()>> + Send;
    /// Removes the tracking finalizer from a pod, leaving any other finalizer.
    fn release_pod(&self, ns: &str, name: &str) -> impl Future<Output = kube::Result<()>> + Send;
}

/// The API server, through a kube client.
#[derive(Clone)]
pub struct KubeApi(pub Client);

fn manager() -> PatchParams {
    PatchParams { field_manager: Some(OPERATOR_MANAGER.into()), ..Default::default() }
}

impl ClusterApi for KubeApi {
    async fn get_activity(&self, ns: &str, name: &str) -> kube::Result<Option<Activity>> {
        Api::<Activity>::namespaced(self.0.clone(), ns).get_opt(name).await
    }

    async fn get_pod(&self, ns: &str, name: &str) -> kube::Result<Option<WorkerPod>> {
        Api::<WorkerPod>::namespaced(self.0.clone(), ns).get_opt(name).await
    }

    async fn patch_activity(&self, ns: &str, name: &str, patch: ActivityPatch) -> kube::Result<Activity> {
        let api = Api::<Activity>::namespaced(self.0.clone(), ns);
        match patch {
            ActivityPatch::Merge(value) => api.patch(name, &manager(), &Patch::Merge(&value)).await,
            ActivityPatch::Json(ops) => api.patch(name, &manager(), &Patch::<()>::Json(ops)).await,
        }
    }

    async fn patch_status(&self, ns: &str, name: &str, patch: StatusPatch) -> kube::Result<Activity> {
        let api = Api::<Activity>::namespaced(self.0.clone(), ns);
        match patch {
            StatusPatch::Apply(body) => {
                api.patch_status(name, &PatchParams::apply(OPERATOR_MANAGER).force(), &Patch::Apply(&*body)).await
            }
            StatusPatch::Json(ops) => api.patch_status(name, &manager(), &Patch::<()>::Json(ops)).await,
        }
    }

    async fn delete_activity(&self, ns: &str, name: &str, uid: &str) -> kube::Result<()> {
        let params = DeleteParams {
            preconditions: Some(Preconditions { uid: Some(uid.into()), resource_version: None }),
            ..DeleteParams::background()
        };
        Api::<Activity>::namespaced(self.0.clone(), ns).delete(name, &params).await.map(drop)
    }

    async fn create_pod(&self, ns: &str, pod: &Pod) -> kube::Result<()> {
        let params = PostParams { field_manager: Some(OPERATOR_MANAGER.into()), ..Default::default() };
        Api::<Pod>::namespaced(self.0.clone(), ns).create(&params, pod).await.map(drop)
    }

    async fn patch_pod(&self, ns: &str, name: &str, patch: serde_json::Value) -> kube::Result<()> {
        Api::<Pod>::namespaced(self.0.clone(), ns).patch(name, &manager(), &Patch::Merge(&patch)).await.map(drop)
    }

    async fn delete_pod(&self, ns: &str, name: &str) -> kube::Result<()> {
        Api::<Pod>::namespaced(self.0.clone(), ns).delete(name, &DeleteParams::default()).await.map(drop)
    }

    async fn release_pod(&self, ns: &str, name: &str) -> kube::Result<()> {
        // A strategic merge patch removes our entry alone, whatever else the list holds by then.
        let patch = serde_json::json!({"metadata": {"$deleteFromPrimitiveList/finalizers": [TRACKING_FINALIZER]}});
        Api::<Pod>::namespaced(self.0.clone(), ns).patch(name, &manager(), &Patch::Strategic(&patch)).await.map(drop)
    }
}

/// Status fields the worker owns; the operator never writes them (see [`StatusApply`]).
#[cfg(test)]
pub const WORKER_FIELDS: [&str; 3] = ["lastHeartbeatTime", "heartbeatDetails", "outcome"];

/// The body of the operator's status apply. Serialized directly, never through a
/// `serde_json::Value`: a result a worker wrote is raw JSON of any depth, which a `Value` cannot hold.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusApply {
    api_version: String,
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<VersionOnly>,
    status: ActivityStatus,
}

#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct VersionOnly {
    resource_version: String,
}

impl StatusApply {
    /// The operator's part of `status` (without the worker's fields), over `precondition` if given.
    pub fn new(status: &ActivityStatus, precondition: Option<&str>) -> Self {
        let status =
            ActivityStatus { last_heartbeat_time: None, heartbeat_details: None, outcome: None, ..status.clone() };
        StatusApply {
            api_version: Activity::api_version(&()).into_owned(),
            kind: Activity::kind(&()).into_owned(),
            metadata: precondition.map(|rv| VersionOnly { resource_version: rv.into() }),
            status,
        }
    }

    /// The resourceVersion the apply is guarded by.
    pub fn precondition(&self) -> Option<&str> {
        self.metadata.as_ref().map(|m| m.resource_version.as_str())
    }

    pub fn status(&self) -> &ActivityStatus {
        &self.status
    }
}
