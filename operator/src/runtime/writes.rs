//! The Activity writes, each guarded so that no concurrent change is lost: the finalizer and the
//! status carry the resourceVersion the plan was made from, and a refusal (409) is a
//! [`Guarded::Conflict`] the reconcile answers with a fresh read, not an error.

use activity_crds::{Activity, ActivityStatus, FINALIZER};
use kube::ResourceExt;
use serde_json::json;

use crate::runtime::api::{ActivityPatch, ClusterApi, StatusApply, StatusPatch};
use crate::runtime::context::ActivityId;
use crate::runtime::error::{Error, api_code, kube_err};

/// A guarded write: done, or refused because the object changed since the copy it was made on.
#[derive(Debug)]
pub enum Guarded<T> {
    Done(T),
    Conflict,
}

fn guarded<T>(action: &'static str, result: kube::Result<T>) -> Result<Guarded<T>, Error> {
    match result {
        Ok(done) => Ok(Guarded::Done(done)),
        Err(e) if api_code(&e) == Some(409) => Ok(Guarded::Conflict),
        Err(e) => Err(kube_err(action)(e)),
    }
}

fn json_patch(ops: serde_json::Value) -> Result<json_patch::Patch, Error> {
    serde_json::from_value(ops).map_err(Error::Serialize)
}

/// Adds our finalizer over the version `act` shows.
pub async fn add_finalizer<A: ClusterApi>(
    api: &A,
    id: &ActivityId,
    act: &Activity,
) -> Result<Guarded<Activity>, Error> {
    let mut finalizers = act.finalizers().to_vec();
    finalizers.push(FINALIZER.into());
    let patch = json!({ "metadata": { "finalizers": finalizers, "resourceVersion": act.resource_version() } });
    guarded("add finalizer", api.patch_activity(&id.namespace, &id.name, ActivityPatch::Merge(patch)).await)
}

/// Server-side apply of the operator's part of the status, over `precondition` when given.
pub async fn write_status<A: ClusterApi>(
    api: &A,
    id: &ActivityId,
    status: &ActivityStatus,
    precondition: Option<&str>,
) -> Result<Guarded<Activity>, Error> {
    let patch = StatusPatch::Apply(Box::new(StatusApply::new(status, precondition)));
    guarded("write status", api.patch_status(&id.namespace, &id.name, patch).await)
}

/// Removes `status.outcome` (the worker's field, which the operator's apply cannot remove), over
/// `precondition` when given: a JSON patch that sets the resourceVersion.
pub async fn clear_outcome<A: ClusterApi>(
    api: &A,
    id: &ActivityId,
    precondition: Option<&str>,
) -> Result<Guarded<Activity>, Error> {
    let mut ops = vec![json!({ "op": "remove", "path": "/status/outcome" })];
    if let Some(rv) = precondition {
        ops.insert(0, json!({ "op": "replace", "path": "/metadata/resourceVersion", "value": rv }));
    }
    let patch = StatusPatch::Json(json_patch(json!(ops))?);
    guarded("clear outcome", api.patch_status(&id.namespace, &id.name, patch).await)
}

/// A JSON patch of the status (the `Stalled` condition), guarded by its own `test` operations.
pub async fn patch_status_json<A: ClusterApi>(api: &A, id: &ActivityId, ops: serde_json::Value) -> Result<(), Error> {
    let patch = StatusPatch::Json(json_patch(ops)?);
    api.patch_status(&id.namespace, &id.name, patch).await.map_err(kube_err("write condition"))?;
    Ok(())
}

/// Removes our finalizer with a JSON patch that tests its position first: at the position `act`
/// (the cached copy) shows, and if that test fails, at the position a fresh read shows. Returns
/// whether it wrote.
pub async fn remove_finalizer<A: ClusterApi>(api: &A, id: &ActivityId, act: &Activity) -> Result<bool, Error> {
    if let Some(index) = finalizer_index(act) {
        match patch_out_finalizer(api, id, index).await? {
            // The test failed: the finalizers changed since the cached copy.
            Err(e) if matches!(api_code(&e), Some(409 | 422)) => {}
            other => return other.map_err(kube_err("remove finalizer")),
        }
    }
    let fresh = api.get_activity(&id.namespace, &id.name).await.map_err(kube_err("get activity"))?;
    let Some(index) = fresh.as_ref().and_then(finalizer_index) else {
        return Ok(false);
    };
    patch_out_finalizer(api, id, index).await?.map_err(kube_err("remove finalizer"))
}

fn finalizer_index(act: &Activity) -> Option<usize> {
    act.finalizers().iter().position(|f| f == FINALIZER)
}

/// Removes the finalizer at `index` if it is ours (a JSON patch `test` first): whether it wrote
/// (not if the Activity is gone), or the API's error.
async fn patch_out_finalizer<A: ClusterApi>(
    api: &A,
    id: &ActivityId,
    index: usize,
) -> Result<Result<bool, kube::Error>, Error> {
    let path = format!("/metadata/finalizers/{index}");
    let patch = json_patch(json!([
        { "op": "test", "path": path, "value": FINALIZER },
        { "op": "remove", "path": path },
    ]))?;
    Ok(match api.patch_activity(&id.namespace, &id.name, ActivityPatch::Json(patch)).await {
        Ok(_) => Ok(true),
        Err(e) if api_code(&e) == Some(404) => Ok(false),
        Err(e) => Err(e),
    })
}
