//! Carries out a plan: finalizer, status, Events, then one small step per effect. Order matters:
//! the status is written before a pod is created, so a worker always finds its attempt recorded.

use std::time::Instant;

use activity_crds::{Activity, ActivityStatus};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use serde_json::json;
use tracing::{debug, info};

use crate::model::plan::{Effect, Event, Plan};
use crate::model::planner;
use crate::model::reason::Reason;
use crate::runtime::api::ClusterApi;
use crate::runtime::context::{ActivityId, Context};
use crate::runtime::error::{Error, api_code, kube_err};
use crate::runtime::metrics::WriteKind;
use crate::runtime::worker_pod::{self, STOPPED_AT};
use crate::runtime::writes::{self, Guarded};

/// How a plan's execution ended.
#[derive(Debug)]
pub enum Executed {
    /// Done: when to look again.
    Done(Action),
    /// A guarded write was refused: the Activity changed since the copy the plan was made from.
    /// Nothing after that write was done.
    Conflict,
}

/// One plan being carried out: what it was made from and the versions its writes replace.
struct Run<'a, A> {
    ctx: &'a Context<A>,
    act: &'a Activity,
    id: ActivityId,
    key: ObjectRef<Activity>,
    /// Versions of the Activity our writes make out of date (see `StaleVersions`).
    outdated: Vec<String>,
    /// The version our finalizer patch made, and our status write made.
    finalized: Option<String>,
    written: Option<String>,
}

/// Carries out `plan`, made from `act`. `cached_version` is the version the cache showed when
/// `act` was read afresh instead: our writes make it out of date too.
pub async fn execute<A: ClusterApi>(
    ctx: &Context<A>,
    act: &Activity,
    cached_version: Option<String>,
    plan: Plan,
) -> Result<Executed, Error> {
    let mut outdated: Vec<String> = act.resource_version().into_iter().chain(cached_version).collect();
    outdated.dedup();
    let id = ActivityId::of(act)?;
    let key = ObjectRef::from_obj(act);
    let mut run = Run { ctx, act, id, key, outdated, finalized: None, written: None };
    ctx.may_write()?;
    if plan.has(&Effect::AddFinalizer) && matches!(run.add_finalizer().await?, Guarded::Conflict) {
        return Ok(Executed::Conflict);
    }
    if let Guarded::Conflict = run.write_status(&plan).await? {
        return Ok(Executed::Conflict);
    }
    ctx.publish(act, &plan.events);
    for effect in &plan.effects {
        ctx.may_write()?;
        match effect {
            Effect::CreatePod { attempt } => {
                if let Some(refusal) = run.create_pod(*attempt).await? {
                    return run.reject_pod(&plan.status, refusal).await;
                }
            }
            Effect::DeletePod { name } => run.delete_pod(name).await?,
            Effect::StopPod { name } => run.stop_pod(name).await?,
            Effect::ReleasePod { name } => run.release_pod(name).await?,
            Effect::AddFinalizer | Effect::RemoveFinalizer | Effect::DeleteActivity => {}
        }
    }
    if plan.has(&Effect::RemoveFinalizer) {
        run.remove_finalizer().await?;
    }
    if plan.has(&Effect::DeleteActivity) {
        run.delete_activity().await?;
    }
    let unfinished = !plan.status.phase.is_some_and(|p| p.is_terminal());
    ctx.set_armed(&run.key, unfinished && plan.requeue_after.is_some());
    Ok(Executed::Done(match plan.requeue_after {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    }))
}

impl<A: ClusterApi> Run<'_, A> {
    async fn add_finalizer(&mut self) -> Result<Guarded<()>, Error> {
        let Guarded::Done(patched) = writes::add_finalizer(&self.ctx.api, &self.id, self.act).await? else {
            return Ok(Guarded::Conflict);
        };
        self.finalized = patched.resource_version();
        self.ctx.metrics.write(WriteKind::Finalizer);
        Ok(Guarded::Done(()))
    }

    /// Writes the planned status if it differs from `act`'s, over the version the plan was made
    /// from (or the one our finalizer patch made of it), then marks the versions it replaced.
    async fn write_status(&mut self, plan: &Plan) -> Result<Guarded<()>, Error> {
        let current = self.act.status.clone().unwrap_or_default();
        if plan.status == current {
            if !plan.has(&Effect::AddFinalizer) {
                self.outdated.clear();
            }
            self.mark_outdated();
            return Ok(Guarded::Done(()));
        }
        let mut precondition = self.finalized.clone().or_else(|| self.act.resource_version());
        if current.outcome.is_some() && plan.status.outcome.is_none() {
            // A new attempt: the last one's outcome goes first (the operator's apply does not
            // carry the worker's fields, so it cannot remove it).
            self.ctx.may_write()?;
            let cleared = writes::clear_outcome(&self.ctx.api, &self.id, precondition.as_deref()).await?;
            let Guarded::Done(cleared) = cleared else { return Ok(Guarded::Conflict) };
            self.ctx.metrics.write(WriteKind::Status);
            self.outdated.extend(precondition.take());
            precondition = cleared.resource_version();
        }
        self.ctx.may_write()?;
        let applied = writes::write_status(&self.ctx.api, &self.id, &plan.status, precondition.as_deref()).await?;
        let Guarded::Done(applied) = applied else { return Ok(Guarded::Conflict) };
        self.written = applied.resource_version();
        self.ctx.metrics.write(WriteKind::Status);
        // The finalizer patch's version is out of date too once the status is written.
        self.outdated.extend(self.finalized.clone());
        let written = self.written.clone();
        self.outdated.retain(|rv| written.as_ref() != Some(rv));
        self.mark_outdated();
        Ok(Guarded::Done(()))
    }

    fn mark_outdated(&self) {
        if !self.outdated.is_empty() {
            self.ctx.memory.stale.mark(&self.key, self.outdated.clone(), Instant::now());
        }
    }

    /// Creates the pod of `attempt`; the refusal's message when the pod can never be created (an
    /// invalid template). Other errors (transient, or an install problem such as a missing service
    /// account) are retried with backoff and shown on the Activity (see `runtime::stalled`).
    async fn create_pod(&self, attempt: i32) -> Result<Option<String>, Error> {
        let pod = match worker_pod::build_pod(self.act, attempt, &self.ctx.settings.worker_service_account) {
            Ok(pod) => pod,
            Err(e) => return Ok(Some(format!("cannot build the worker pod: {e}"))),
        };
        match self.ctx.api.create_pod(&self.id.namespace, &pod).await {
            Ok(()) => {
                self.ctx.metrics.write(WriteKind::PodCreate);
                self.ctx.memory.created.record(self.id.pod_key(attempt), Instant::now());
                let message = format!("attempt {attempt}: created pod {}", pod.name_any());
                self.ctx.publish(self.act, &[Event::normal(Reason::AttemptStarted, message)]);
                Ok(None)
            }
            Err(e) if api_code(&e) == Some(409) => {
                debug!("pod already exists");
                self.ctx.memory.created.record(self.id.pod_key(attempt), Instant::now());
                Ok(None)
            }
            Err(kube::Error::Api(status)) if matches!(status.code, 400 | 422) => {
                Ok(Some(format!("the API server refused the worker pod: {}", status.message)))
            }
            Err(e) => Err(kube_err("create pod")(e)),
        }
    }

    /// The attempt's pod can never be created: the activity fails at once (retrying the same
    /// template would be refused again).
    async fn reject_pod(&self, planned: &ActivityStatus, message: String) -> Result<Executed, Error> {
        self.ctx.may_write()?;
        let rejected = planner::pod_rejected(self.act, planned, message, Timestamp::now());
        let version = self.written.clone().or_else(|| self.finalized.clone()).or_else(|| self.act.resource_version());
        let failed = writes::write_status(&self.ctx.api, &self.id, &rejected.status, version.as_deref()).await?;
        if let Guarded::Conflict = failed {
            return Ok(Executed::Conflict);
        }
        self.ctx.metrics.write(WriteKind::Status);
        self.ctx.publish(self.act, &rejected.events);
        if rejected.has(&Effect::RemoveFinalizer) && writes::remove_finalizer(&self.ctx.api, &self.id, self.act).await?
        {
            self.ctx.metrics.write(WriteKind::Finalizer);
        }
        self.ctx.set_armed(&self.key, false);
        Ok(Executed::Done(Action::await_change()))
    }

    /// Stops the pod's containers but keeps the pod (and its logs): a deadline of one second, and
    /// an annotation that says when.
    async fn stop_pod(&self, name: &str) -> Result<(), Error> {
        let stop = json!({
            "metadata": { "annotations": { STOPPED_AT: Timestamp::now().to_string() } },
            "spec": { "activeDeadlineSeconds": 1 },
        });
        match self.ctx.api.patch_pod(&self.id.namespace, name, stop).await {
            Ok(()) => self.ctx.metrics.write(WriteKind::PodStop),
            Err(e) if api_code(&e) == Some(404) => {}
            // A deadline the pod's spec cannot take (it has a shorter one already): delete.
            Err(e) if api_code(&e) == Some(422) => self.delete_pod(name).await?,
            Err(e) => return Err(kube_err("stop pod")(e)),
        }
        Ok(())
    }

    /// Deletes a pod with its own grace period; one that is gone already counts as deleted.
    async fn delete_pod(&self, name: &str) -> Result<(), Error> {
        match self.ctx.api.delete_pod(&self.id.namespace, name).await {
            Ok(()) => self.ctx.metrics.write(WriteKind::PodDelete),
            Err(e) if api_code(&e) == Some(404) => {}
            Err(e) => return Err(kube_err("delete pod")(e)),
        }
        Ok(())
    }

    async fn release_pod(&self, name: &str) -> Result<(), Error> {
        release_pod(self.ctx, &self.id.namespace, name).await
    }

    async fn remove_finalizer(&mut self) -> Result<(), Error> {
        self.ctx.may_write()?;
        if writes::remove_finalizer(&self.ctx.api, &self.id, self.act).await? {
            self.ctx.metrics.write(WriteKind::Finalizer);
            // Every version up to our status write still shows the finalizer: a reconcile woken
            // meanwhile (the pod's deletion, say) would try to remove it again.
            self.outdated.extend(self.act.resource_version());
            self.outdated.extend(self.written.clone());
            self.ctx.memory.stale.mark(&self.key, self.outdated.clone(), Instant::now());
        }
        self.ctx.forget(&self.key);
        Ok(())
    }

    /// `ttlSecondsAfterFinished` has passed: deletes the Activity (if it is still the same one).
    async fn delete_activity(&self) -> Result<(), Error> {
        self.ctx.may_write()?;
        match self.ctx.api.delete_activity(&self.id.namespace, &self.id.name, &self.id.uid).await {
            Ok(()) => info!("ttlSecondsAfterFinished passed: deleted"),
            Err(e) if matches!(api_code(&e), Some(404 | 409)) => {}
            Err(e) => return Err(kube_err("delete activity")(e)),
        }
        self.ctx.metrics.write(WriteKind::ActivityDelete);
        self.ctx.forget(&self.key);
        Ok(())
    }
}

/// Lets a pod go: its tracking finalizer is removed (a pod that is gone already counts).
pub async fn release_pod<A: ClusterApi>(ctx: &Context<A>, namespace: &str, name: &str) -> Result<(), Error> {
    ctx.may_write()?;
    match ctx.api.release_pod(namespace, name).await {
        Ok(()) => ctx.metrics.write(WriteKind::PodRelease),
        Err(e) if api_code(&e) == Some(404) => {}
        Err(e) => return Err(kube_err("release pod")(e)),
    }
    Ok(())
}
