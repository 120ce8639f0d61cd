//! One pass over one Activity: guard → plan → execute → on a conflict, read afresh and plan again.
//! Every write is made only over the version the plan was judged on, so a cache that lags costs a
//! round trip, never a wrong status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use activity_crds::Activity;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use tracing::{debug, instrument, warn};

use crate::model::freshness::{self, FreshRead};
use crate::model::planner;
use crate::model::pod_view::PodView;
use crate::runtime::api::ClusterApi;
use crate::runtime::context::{ActivityId, Context};
use crate::runtime::error::{Error, kube_err};
use crate::runtime::execute::{Executed, execute, release_pod};
use crate::runtime::memory::{OUTCOME_GRACE, PodKey};
use crate::runtime::stalled;

/// How long a pass waits for the pod cache's first list.
const POD_CACHE_WAIT: Duration = Duration::from_secs(30);
/// How soon to look again when the cache has not caught up with our own writes.
const CACHE_BEHIND_RETRY: Duration = Duration::from_millis(100);

/// One pass over one Activity. What keeps it from moving on is shown on the Activity (the
/// `Stalled` condition and a Warning event), and cleared once a pass succeeds.
#[instrument(skip_all, fields(activity = %act.name_any(), namespace = act.namespace().as_deref().unwrap_or("")))]
pub async fn reconcile<A: ClusterApi>(act: Arc<Activity>, ctx: Arc<Context<A>>) -> Result<Action, Error> {
    let key = ObjectRef::from_obj(act.as_ref());
    let result = pass(&ctx, &act, &key).await;
    if result.is_ok() {
        ctx.memory.failures.clear(&key);
    }
    stalled::report(&ctx, &act, &key, &result).await;
    result
}

/// What the guard lets through: the activity's pods, and the exit without an outcome being judged.
struct Judge {
    pods: Vec<PodView>,
    unreported_exit: Option<PodKey>,
}

/// The guard's answer: judge now, or look again later.
enum Guard {
    Judge(Judge),
    Wait(Action),
}

async fn pass<A: ClusterApi>(ctx: &Context<A>, act: &Activity, key: &ObjectRef<Activity>) -> Result<Action, Error> {
    let started = Instant::now();
    let judge = match guard(ctx, act, key).await? {
        Guard::Judge(judge) => judge,
        Guard::Wait(action) => return Ok(action),
    };
    let result = plan_and_execute(ctx, act, &judge).await;
    ctx.metrics.observe_reconcile(started.elapsed());
    if let (Some(exit), Ok(Some(_))) = (&judge.unreported_exit, &result) {
        ctx.memory.exits.forget(exit);
    }
    // `None`: the Activity is gone.
    result.map(|action| action.unwrap_or_else(Action::await_change))
}

/// Plans from the cached copy and carries the plan out; on a conflict, reads afresh and plans
/// again. `None` if the Activity turned out to be gone.
async fn plan_and_execute<A: ClusterApi>(
    ctx: &Context<A>,
    act: &Activity,
    judge: &Judge,
) -> Result<Option<Action>, Error> {
    let cached_version = act.resource_version();
    let plan = planner::plan(act, &judge.pods, Timestamp::now());
    let why = FreshRead::of_plan(act, &plan, judge.unreported_exit.is_some());
    let executed = if freshness::creates_a_pod_unguarded(act, &plan) {
        // No precondition would guard it: it is made from a fresh read at once, as if refused.
        Executed::Conflict
    } else {
        execute(ctx, act, cached_version.clone(), plan).await?
    };
    match executed {
        Executed::Done(action) => Ok(Some(action)),
        Executed::Conflict => {
            ctx.metrics.fresh_read(why);
            replan_afresh(ctx, act, cached_version).await
        }
    }
}

/// Whether the caches can be judged on now.
async fn guard<A: ClusterApi>(ctx: &Context<A>, act: &Activity, key: &ObjectRef<Activity>) -> Result<Guard, Error> {
    if ctx.memory.stale.shows_outdated(key, act.resource_version().as_deref(), Instant::now()) {
        debug!("cache has not seen our last status write yet");
        return Ok(Guard::Wait(Action::requeue(CACHE_BEHIND_RETRY)));
    }
    // Judging an attempt needs its pod: never plan from a pod cache that has not listed yet
    // (right after a restart every pod would look deleted).
    if !ctx.pods_ready.wait(POD_CACHE_WAIT).await {
        return Err(Error::PodCacheNotReady);
    }
    let id = ActivityId::of(act)?;
    let pods = pods_confirmed(ctx, act, &id).await?;
    // An attempt whose worker exited with no outcome in the cache waits a moment for the outcome.
    let attempt = act.status.as_ref().and_then(|s| s.attempt);
    let unreported_exit = attempt.filter(|_| freshness::exit_without_outcome(act, &pods)).map(|n| id.pod_key(n));
    if let Some(exit) = &unreported_exit {
        let waited = ctx.memory.exits.first_seen(exit.clone(), Instant::now()).elapsed();
        if waited < OUTCOME_GRACE {
            return Ok(Guard::Wait(Action::requeue(OUTCOME_GRACE - waited)));
        }
    }
    Ok(Guard::Judge(Judge { pods, unreported_exit }))
}

/// The plan was refused on the cached copy: judge the Activity as the API server has it now.
/// `None` once it is gone. Refused again, the activity is changing under us: the error policy
/// retries with backoff.
async fn replan_afresh<A: ClusterApi>(
    ctx: &Context<A>,
    act: &Activity,
    cached_version: Option<String>,
) -> Result<Option<Action>, Error> {
    let id = ActivityId::of(act)?;
    let read = ctx.api.get_activity(&id.namespace, &id.name).await.map_err(kube_err("get activity"))?;
    let Some(fresh) = read else { return Ok(None) };
    let pods = pods_confirmed(ctx, &fresh, &id).await?;
    let plan = planner::plan(&fresh, &pods, Timestamp::now());
    match execute(ctx, &fresh, cached_version, plan).await? {
        Executed::Done(action) => Ok(Some(action)),
        Executed::Conflict => Err(Error::ChangedTwice),
    }
}

/// The activity's pods from the cache, and the current attempt's pod read from the API server
/// when the cache does not show it (see [`freshness::pod_to_confirm`]): an attempt is never
/// judged on the absence of a pod that the pod watch has not delivered yet.
async fn pods_confirmed<A: ClusterApi>(
    ctx: &Context<A>,
    act: &Activity,
    id: &ActivityId,
) -> Result<Vec<PodView>, Error> {
    let mut pods = ctx.pods_of(act, id);
    let Some(name) = freshness::pod_to_confirm(act, &pods) else { return Ok(pods) };
    ctx.metrics.fresh_read(FreshRead::Pod);
    let read = ctx.api.get_pod(&id.namespace, &name).await.map_err(kube_err("get pod"))?;
    if let Some(pod) = read.filter(|p| p.owner_references().iter().any(|o| o.uid == id.uid)) {
        debug!(pod = %name, "the pod cache does not show the pod yet: read it");
        pods.push(PodView::from_pod(&pod));
    }
    Ok(pods)
}

/// Transient API errors: per-object exponential backoff with jitter (200 ms doubling to 2 min),
/// apart from the business retries, which live in status.
pub fn error_policy<A>(act: Arc<Activity>, error: &Error, ctx: Arc<Context<A>>) -> Action {
    let failures = ctx.memory.failures.add(&ObjectRef::from_obj(act.as_ref()));
    ctx.metrics.reconcile_error(error.kind());
    let base = 0.2 * 2f64.powi(failures.min(16) as i32 - 1);
    let jitter = 0.5 + rand::random::<f64>();
    let delay = Duration::from_secs_f64((base * jitter).min(120.0));
    warn!(activity = %act.name_any(), error = %error, failures, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// A pod event named an Activity the cache does not hold. If that Activity is really gone (its
/// finalizer removed by hand, say), the tracking finalizer of its pods would hold them for good:
/// release them. The API server is asked first, since a cache that has not listed yet lacks
/// live Activities too.
pub async fn release_orphans<A: ClusterApi>(ctx: &Context<A>, namespace: &str, name: &str) -> Result<(), Error> {
    let tracked: Vec<(String, String)> = ctx
        .pods
        .state()
        .iter()
        .filter(|p| p.tracked && p.namespace().as_deref() == Some(namespace))
        .filter_map(|p| {
            let owner = p.owner_references().iter().find(|o| o.controller == Some(true) && o.name == name)?;
            Some((p.name_any(), owner.uid.clone()))
        })
        .collect();
    if tracked.is_empty() {
        return Ok(());
    }
    let live = ctx.api.get_activity(namespace, name).await.map_err(kube_err("get activity"))?;
    let live_uid = live.and_then(|a| a.metadata.uid);
    for (pod, owner_uid) in tracked.iter().filter(|(_, uid)| live_uid.as_ref() != Some(uid)) {
        release_pod(ctx, namespace, pod).await?;
        debug!(pod = %pod, owner = %owner_uid, "released the pod of an Activity that is gone");
    }
    Ok(())
}
