//! The I/O side: watches Activities and their pods, asks the planner what to do, and does it.
//! Status is written with server-side apply (field manager `activity-operator`) and only when it
//! changed, so a heartbeat (which changes only worker-owned fields) causes no write at all.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use activity_crds::{ATTEMPT_HISTORY, Activity, ActivityStatus, FINALIZER, OPERATOR_MANAGER};
use futures::{Future, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action as Requeue, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument, warn};

use crate::events::{self, EventQueue};
use crate::metrics::Metrics;
use crate::planner::{self, Action, Event, Plan};
use crate::pods::{self, PodView, STOPPED_AT, WorkerPod, pod_name};
use crate::reason::Reason;

/// Status fields the worker owns; the operator never writes them (see `StatusApply`).
#[cfg(test)]
const WORKER_FIELDS: [&str; 3] = ["lastHeartbeatTime", "heartbeatDetails", "outcome"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action}: {source}")]
    Kube {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("serializing the status: {0}")]
    Serialize(#[source] serde_json::Error),
    #[error("the pod cache has not finished its first list")]
    PodCacheNotReady,
    #[error("the activity changed since the copy its attempt was judged on")]
    Superseded,
    #[error("this replica is no longer the leader: it writes nothing more")]
    NotLeader,
    #[error("the Activity has no namespace")]
    NoNamespace,
}

impl Error {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube { action, .. } => action,
            Error::Serialize(_) => "serialize",
            Error::PodCacheNotReady => "pod_cache",
            Error::Superseded => "superseded",
            Error::NotLeader => "not_leader",
            Error::NoNamespace => "no_namespace",
        }
    }
}

fn kube_err(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { action, source }
}

/// The API server's own message for API errors; the error itself otherwise.
fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Settings of one controller.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `None` watches every namespace.
    pub namespace: Option<String>,
    pub concurrency: u16,
    /// Service account of worker pods whose template names none.
    pub worker_service_account: String,
    /// Cancelled when this replica stops leading: from then on no write is sent.
    pub fence: CancellationToken,
}

/// Whether a reflector store has finished its first list, for any number of concurrent waiters.
///
/// kube-runtime's `Store::wait_until_ready` wakes only one of several tasks waiting at the same
/// time (its readiness is a oneshot receiver holding a single waker): after a restart, all but
/// one reconcile waited for their 30 s timeout. One task waits on the store here and publishes
/// the result on a watch channel, which wakes every waiter.
#[derive(Clone)]
pub struct ReadyGate(tokio::sync::watch::Receiver<bool>);

impl ReadyGate {
    pub fn of<K>(store: &Store<K>) -> Self
    where
        K: Resource + Clone + Send + Sync + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
    {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let store = store.clone();
        tokio::spawn(async move {
            if store.wait_until_ready().await.is_ok() {
                let _ = tx.send(true);
            }
        });
        Self(rx)
    }

    /// Waits until the store is ready, at most `limit`; whether it is.
    pub async fn wait(&self, limit: Duration) -> bool {
        let mut rx = self.0.clone();
        matches!(tokio::time::timeout(limit, rx.wait_for(|ready| *ready)).await, Ok(Ok(_)))
    }
}

/// Pods remembered for a short while, with when: at most [`RecentPods::KEEP`] each, and expired
/// entries are dropped once 1,024 are held (a deleted activity's pod is never looked up again).
/// The operator keeps two such sets:
/// - pods it created that its pod cache may not show yet. The pod watch and the Activity watch are
///   separate streams: the operator's own status write wakes a reconcile that can run before the
///   new pod reaches the cache, and it would plan the pod again only to be told AlreadyExists
///   (603 extra creates for 1,000 activities in `activity-bench deadline --n 1000`). After `KEEP`
///   the planner creates it again, which is harmless (same name);
/// - worker exits the cache shows with no outcome of that attempt, from when the operator first
///   saw each. A worker writes its outcome before it exits, but the pod watch may show the exit
///   before the Activity watch shows the outcome; such an exit is judged only
///   [`OUTCOME_GRACE`] after it was first seen (the outcome's event wakes the reconcile sooner).
#[derive(Default)]
struct RecentPods(Mutex<HashMap<PodKey, Instant>>);

/// A pod, and the uid of the activity it belongs to (a recreated activity of the same name has
/// its own).
type PodKey = (ObjectRef<WorkerPod>, String);

/// How long an exit without an outcome waits for the outcome to reach the cache before it is
/// judged (with a guarded write, so a late outcome is never lost either way).
const OUTCOME_GRACE: Duration = Duration::from_secs(1);

impl RecentPods {
    const KEEP: Duration = Duration::from_secs(30);

    fn prune(map: &mut HashMap<PodKey, Instant>, now: Instant) {
        prune_when_large(map, |at| now.saturating_duration_since(*at) < Self::KEEP);
    }

    fn record(&self, pod: PodKey, now: Instant) {
        let mut map = lock(&self.0);
        Self::prune(&mut map, now);
        map.insert(pod, now);
    }

    /// When `pod` was first recorded (now, if it was not, or if that was more than `KEEP` ago).
    fn first_seen(&self, pod: PodKey, now: Instant) -> Instant {
        let mut map = lock(&self.0);
        Self::prune(&mut map, now);
        let at = map.entry(pod).or_insert(now);
        if now.saturating_duration_since(*at) >= Self::KEEP {
            *at = now;
        }
        *at
    }

    /// Whether `pod` was recorded less than `KEEP` ago.
    fn holds(&self, pod: &PodKey, now: Instant) -> bool {
        let mut map = lock(&self.0);
        match map.get(pod) {
            Some(at) if now.saturating_duration_since(*at) < Self::KEEP => true,
            Some(_) => {
                map.remove(pod);
                false
            }
            None => false,
        }
    }

    fn forget(&self, pod: &PodKey) {
        let mut map = lock(&self.0);
        if !map.is_empty() {
            map.remove(pod);
        }
    }
}

/// How long the stale-cache guard believes a version is out of date. A saturated local control
/// plane (2 cores, 1,000 activities) delivered watch events up to about 80 s late
/// (`activity-bench deadline --n 1000`, 2026-11-22); the earlier 5 s let a reconcile plan from
/// such a copy.
const STALE_MARK_KEEP: Duration = Duration::from_secs(120);

/// Resource versions out of date after our own writes, and until when to believe so.
type Superseded = (Vec<String>, Instant);

/// Keeps a map of per-object memory bounded: once it holds 1,024 entries, those `alive` rejects
/// go. An entry is otherwise removed only when its object is looked at again, which a deleted
/// activity never is.
fn prune_when_large<K, V>(map: &mut HashMap<K, V>, alive: impl Fn(&V) -> bool) {
    if map.len() >= 1024 {
        map.retain(|_, v| alive(v));
    }
}

/// Drops the stale-cache marks that have expired, once the map is large.
fn prune_expired(stale: &mut HashMap<ObjectRef<Activity>, Superseded>, now: Instant) {
    prune_when_large(stale, |(_, until)| now < *until);
}

/// Shared state of the reconciler.
pub struct Context {
    pub client: Client,
    pub pods: Store<WorkerPod>,
    pods_ready: ReadyGate,
    pub events: EventQueue,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    /// Per-object count of consecutive reconcile errors, for the error backoff.
    failures: Mutex<HashMap<ObjectRef<Activity>, u32>>,
    /// Per-object: the resourceVersions our last writes replaced (the one we planned from, and the
    /// one our finalizer patch produced before the status write). While the cache still shows one
    /// of them, it has not caught up with our own writes; acting on it would repeat work.
    stale: Mutex<HashMap<ObjectRef<Activity>, Superseded>>,
    /// Per-object: the last heartbeat time seen, for the heartbeat lag histogram.
    heartbeats: Mutex<HashMap<ObjectRef<Activity>, Timestamp>>,
    /// Unfinished activities with an armed deadline timer (the `deadlines_armed` gauge).
    armed: Mutex<HashSet<ObjectRef<Activity>>>,
    /// Pods created and not yet in the cache; exits without an outcome in the cache.
    created: RecentPods,
    exits: RecentPods,
    /// Per-object: the problem last shown in the `Stalled` condition, so it is written once.
    problems: Mutex<HashMap<ObjectRef<Activity>, String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Context {
    /// The pods of the activity's recent attempts, from the cache, by their deterministic names;
    /// the current attempt's pod also when the operator has just created it and the cache does not
    /// show it yet.
    fn pods_of(&self, act: &Activity) -> Vec<PodView> {
        let (Some(ns), Some(uid)) = (act.namespace(), act.uid()) else {
            return vec![];
        };
        let current = act.status.as_ref().and_then(|s| s.attempt).unwrap_or(0);
        let first = (current - ATTEMPT_HISTORY as i32).max(1);
        let name = act.name_any();
        let mut views = Vec::new();
        for n in first..=current {
            let key = (ObjectRef::new(&pod_name(&name, n)).within(&ns), uid.clone());
            match self.pods.get(&key.0) {
                Some(pod) => {
                    self.created.forget(&key);
                    if pod.owner_references().iter().any(|o| o.uid == uid) {
                        views.push(PodView::from_pod(&pod));
                    }
                }
                None if n == current && self.created.holds(&key, Instant::now()) => {
                    views.push(PodView::created(key.0.name, n));
                }
                None => {}
            }
        }
        views
    }

    /// Heartbeat lag (receipt by the operator minus the worker's `lastHeartbeatTime`), once per
    /// heartbeat, from the watch stream: heartbeats wake no reconcile.
    fn observe_heartbeat(&self, act: &Activity, now: Timestamp) {
        let Some(status) = act.status.as_ref().filter(|s| !s.phase.is_some_and(|p| p.is_terminal())) else {
            return;
        };
        let Some(beat) = status.last_heartbeat_time.as_ref().map(|t| t.0) else {
            return;
        };
        let key = ObjectRef::from_obj(act);
        let mut seen = lock(&self.heartbeats);
        if seen.get(&key).is_some_and(|last| *last >= beat) {
            return;
        }
        seen.insert(key, beat);
        drop(seen);
        let lag = now.duration_since(beat).as_secs_f64().max(0.0);
        self.metrics.heartbeat_lag.observe(lag);
    }

    fn cache_is_behind(&self, key: &ObjectRef<Activity>, act: &Activity) -> bool {
        let mut stale = lock(&self.stale);
        match stale.get(key) {
            Some((rvs, until))
                if Instant::now() < *until && act.resource_version().is_some_and(|rv| rvs.contains(&rv)) =>
            {
                true
            }
            Some(_) => {
                stale.remove(key);
                false
            }
            None => false,
        }
    }

    /// Until the cache shows a version other than `versions`, it has not caught up with our writes.
    /// The mark only saves refused writes: the writes themselves are guarded by resourceVersion,
    /// so a cache that lags for longer than [`STALE_MARK_KEEP`] costs round trips, never a wrong
    /// status. It lasts that long, not for good, so the marks of deleted activities go.
    fn mark_stale(&self, key: &ObjectRef<Activity>, versions: Vec<String>) {
        let now = Instant::now();
        let mut stale = lock(&self.stale);
        prune_expired(&mut stale, now);
        stale.insert(key.clone(), (versions, now + STALE_MARK_KEEP));
    }

    /// Err([`Error::NotLeader`]) once this replica has stopped leading: checked before every write,
    /// so a deposed leader sends none while its reconciles wind down.
    fn may_write(&self) -> Result<(), Error> {
        if self.settings.fence.is_cancelled() { Err(Error::NotLeader) } else { Ok(()) }
    }

    /// Drops the per-object memory of a finished activity (the stale-cache guard expires by itself).
    fn forget(&self, key: &ObjectRef<Activity>) {
        lock(&self.failures).remove(key);
        lock(&self.problems).remove(key);
        lock(&self.heartbeats).remove(key);
        self.set_armed(key, false);
    }

    /// Records whether an unfinished activity has a deadline timer armed.
    fn set_armed(&self, key: &ObjectRef<Activity>, armed: bool) {
        let mut set = lock(&self.armed);
        let changed = if armed { set.insert(key.clone()) } else { set.remove(key) };
        if changed {
            self.metrics.deadlines_armed.set(set.len() as i64);
        }
    }
}

/// One pass over one Activity. What keeps it from moving on is shown on the Activity (the
/// `Stalled` condition and a Warning event), and cleared once a pass succeeds.
#[instrument(skip_all, fields(activity = %act.name_any(), namespace = act.namespace().unwrap_or_default()))]
pub async fn reconcile(act: Arc<Activity>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let key = ObjectRef::from_obj(act.as_ref());
    let result = reconcile_once(act.clone(), &ctx, &key).await;
    let outcome = match &result {
        Ok(_) => clear_stalled(&ctx, &act, &key).await,
        Err(error) => {
            let before = lock(&ctx.failures).get(&key).copied().unwrap_or(0);
            match problem_of(error, before) {
                Some((reason, message)) => set_stalled(&ctx, &act, &key, reason, message).await,
                None => Ok(()),
            }
        }
    };
    if let Err(e) = outcome {
        debug!(error = %e, "the Stalled condition was not updated; the next pass tries again");
    }
    result
}

async fn reconcile_once(act: Arc<Activity>, ctx: &Arc<Context>, key: &ObjectRef<Activity>) -> Result<Requeue, Error> {
    let started = Instant::now();
    let key = key.clone();
    let ctx = ctx.clone();
    if ctx.cache_is_behind(&key, &act) {
        debug!("cache has not seen our last status write yet");
        return Ok(Requeue::requeue(Duration::from_millis(100)));
    }
    // Judging an attempt needs its pod: never plan from a pod cache that has not listed yet
    // (right after a restart every pod would look deleted).
    if !ctx.pods_ready.wait(Duration::from_secs(30)).await {
        return Err(Error::PodCacheNotReady);
    }
    let pods = pods_confirmed(&ctx, &act).await?;
    // The cached copy may lag behind what the worker wrote (its outcome, its last heartbeat). An
    // attempt whose worker exited with no outcome in the cache waits a moment for the outcome.
    let exited = planner::exit_without_outcome(&act, &pods)
        .then(|| act.status.as_ref().and_then(|s| s.attempt))
        .flatten()
        .map(|attempt| pod_key(&act, attempt));
    if let Some(exit) = &exited {
        let waited = ctx.exits.first_seen(exit.clone(), Instant::now()).elapsed();
        if waited < OUTCOME_GRACE {
            return Ok(Requeue::requeue(OUTCOME_GRACE - waited));
        }
    }
    // Every write is made only over the version the plan was judged on: if the Activity changed
    // since (an outcome or a heartbeat the watch has not delivered yet, or, on a control plane
    // whose watch lags by a minute, our own earlier writes), the write is refused and the activity
    // is judged again on a fresh (quorum) read. That costs a round trip only when the cache was
    // behind. A plan that would create a pod and write nothing is made from a fresh read at once.
    let cached_version = act.resource_version();
    let plan = planner::plan(&act, &pods, Timestamp::now());
    let pod_only = planner::creates_a_pod_unguarded(&act, &plan);
    let why = if exited.is_some() {
        "exit"
    } else if planner::judges_a_timeout(&act, &plan) {
        "timeout"
    } else if pod_only {
        "pod_create"
    } else if plan.has(&Action::AddFinalizer) {
        "finalizer"
    } else {
        "status"
    };
    let mut result =
        if pod_only { Err(Error::Superseded) } else { execute(&act, cached_version.clone(), plan, &ctx, &key).await };
    if matches!(result, Err(Error::Superseded)) {
        ctx.metrics.fresh_read(why);
        let Some(read) = read_afresh(&ctx, &act).await? else { return Ok(Requeue::await_change()) };
        let pods = pods_confirmed(&ctx, &read).await?;
        let plan = planner::plan(&read, &pods, Timestamp::now());
        // Refused again: the activity is changing under us; the error policy retries with backoff.
        result = execute(&read, cached_version, plan, &ctx, &key).await;
    }
    if let (Some(exit), Ok(_)) = (&exited, &result) {
        ctx.exits.forget(exit);
    }
    ctx.metrics.observe_reconcile(started.elapsed());
    if result.is_ok() {
        lock(&ctx.failures).remove(&key);
    }
    result
}

fn pod_key(act: &Activity, attempt: i32) -> PodKey {
    let pod = ObjectRef::new(&pod_name(&act.name_any(), attempt)).within(&act.namespace().unwrap_or_default());
    (pod, act.uid().unwrap_or_default())
}

/// The activity's pods from the cache, and the current attempt's pod read from the API server
/// when the cache does not show it (see [`planner::pod_to_confirm`]): an attempt is never judged
/// on the absence of a pod that the pod watch has not delivered yet.
async fn pods_confirmed(ctx: &Context, act: &Activity) -> Result<Vec<PodView>, Error> {
    let mut pods = ctx.pods_of(act);
    let Some(name) = planner::pod_to_confirm(act, &pods) else { return Ok(pods) };
    ctx.metrics.fresh_read("pod");
    let api: Api<WorkerPod> = Api::namespaced(ctx.client.clone(), &namespace_of(act)?);
    let uid = act.uid().unwrap_or_default();
    let read = api.get_opt(&name).await.map_err(kube_err("get pod"))?;
    if let Some(pod) = read.filter(|p| p.owner_references().iter().any(|o| o.uid == uid)) {
        debug!(pod = %name, "the pod cache does not show the pod yet: read it");
        pods.push(PodView::from_pod(&pod));
    }
    Ok(pods)
}

/// The Activity as the API server has it now; `None` once it is gone.
async fn read_afresh(ctx: &Context, act: &Activity) -> Result<Option<Arc<Activity>>, Error> {
    let api: Api<Activity> = Api::namespaced(ctx.client.clone(), &namespace_of(act)?);
    Ok(api.get_opt(&act.name_any()).await.map_err(kube_err("get activity"))?.map(Arc::new))
}

/// Transient API errors: per-object exponential backoff with jitter (200 ms doubling to 2 min),
/// apart from the business retries, which live in status.
pub fn error_policy(act: Arc<Activity>, error: &Error, ctx: Arc<Context>) -> Requeue {
    let key = ObjectRef::from_obj(act.as_ref());
    let failures = {
        let mut map = lock(&ctx.failures);
        let n = map.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    ctx.metrics.reconcile_errors.get_or_create(&crate::metrics::KindLabel { kind: error.kind().into() }).inc();
    let base = 0.2 * 2f64.powi(failures.min(16) as i32 - 1);
    let jitter = 0.5 + rand::random::<f64>();
    let delay = Duration::from_secs_f64((base * jitter).min(120.0));
    warn!(activity = %act.name_any(), error = %error, failures, retry_in = ?delay, "reconcile failed");
    Requeue::requeue(delay)
}

/// Carries out `plan`, made from `act`. `cached_version` is the version the cache showed, when
/// `act` was read afresh instead: our writes make it out of date too. The finalizer and the status
/// are written only if the Activity is still at the version `act` shows (or the one our finalizer
/// patch made of it); otherwise nothing after that write is done and the result is
/// [`Error::Superseded`].
async fn execute(
    act: &Activity,
    cached_version: Option<String>,
    plan: Plan,
    ctx: &Context,
    key: &ObjectRef<Activity>,
) -> Result<Requeue, Error> {
    let ns = namespace_of(act)?;
    let name = act.name_any();
    let acts: Api<Activity> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);

    // Versions of the object that our writes below make out of date.
    let mut superseded: Vec<String> = act.resource_version().into_iter().chain(cached_version).collect();
    superseded.dedup();
    let mut finalized = None;
    ctx.may_write()?;
    if plan.has(&Action::AddFinalizer) {
        finalized = add_finalizer(&acts, act).await?.resource_version();
        ctx.metrics.write("finalizer");
    }
    let current = act.status.clone().unwrap_or_default();
    let mut written = None;
    if plan.status != current {
        let mut precondition = finalized.clone().or_else(|| act.resource_version());
        if current.outcome.is_some() && plan.status.outcome.is_none() {
            // A new attempt: the last one's outcome goes first (the operator's apply does not
            // carry the worker's fields, so it cannot remove it).
            ctx.may_write()?;
            let cleared = clear_outcome(&acts, &name, precondition.as_deref()).await?;
            ctx.metrics.write("status");
            superseded.extend(precondition.take());
            precondition = cleared.resource_version();
        }
        ctx.may_write()?;
        written = write_status(&acts, &name, &plan.status, precondition.as_deref()).await?.resource_version();
        ctx.metrics.write("status");
        // The finalizer patch's version is out of date too once the status is written.
        superseded.extend(finalized.clone());
        superseded.retain(|rv| written.as_ref() != Some(rv));
    } else if !plan.has(&Action::AddFinalizer) {
        superseded.clear();
    }
    if !superseded.is_empty() {
        ctx.mark_stale(key, superseded.clone());
    }
    publish(ctx, act, &plan.events);

    for action in &plan.actions {
        ctx.may_write()?;
        match action {
            Action::CreatePod { attempt } => {
                let params = PostParams { field_manager: Some(OPERATOR_MANAGER.into()), ..Default::default() };
                let refused = match pods::build_pod(act, *attempt, &ctx.settings.worker_service_account) {
                    Err(e) => Some(format!("cannot build the worker pod: {e}")),
                    Ok(pod) => match pods.create(&params, &pod).await {
                        Ok(_) => {
                            ctx.metrics.write("pod_create");
                            ctx.created.record(pod_key(act, *attempt), Instant::now());
                            let started = Event {
                                warning: false,
                                reason: Reason::AttemptStarted,
                                message: format!("attempt {attempt}: created pod {}", pod.name_any()),
                            };
                            publish(ctx, act, std::slice::from_ref(&started));
                            None
                        }
                        Err(e) if api_code(&e) == Some(409) => {
                            debug!("pod already exists");
                            ctx.created.record(pod_key(act, *attempt), Instant::now());
                            None
                        }
                        Err(kube::Error::Api(status)) if matches!(status.code, 400 | 422) => {
                            Some(format!("the API server refused the worker pod: {}", status.message))
                        }
                        // Transient or an install problem (missing service account, quota): retried
                        // with backoff, and shown on the Activity (see `problem_of`).
                        Err(e) => return Err(kube_err("create pod")(e)),
                    },
                };
                if let Some(message) = refused {
                    // Permanent: retrying the same template would be refused again.
                    ctx.may_write()?;
                    let rejected = planner::pod_rejected(act, &plan.status, message, Timestamp::now());
                    let version = written.clone().or_else(|| finalized.clone()).or_else(|| act.resource_version());
                    write_status(&acts, &name, &rejected.status, version.as_deref()).await?;
                    ctx.metrics.write("status");
                    publish(ctx, act, &rejected.events);
                    if rejected.has(&Action::RemoveFinalizer) && remove_finalizer(&acts, act).await? {
                        ctx.metrics.write("finalizer");
                    }
                    ctx.set_armed(key, false);
                    return Ok(Requeue::await_change());
                }
            }
            Action::DeletePod { name } => delete_pod(&pods, name, ctx).await?,
            Action::StopPod { name } => {
                let stop = json!({
                    "metadata": { "annotations": { STOPPED_AT: Timestamp::now().to_string() } },
                    "spec": { "activeDeadlineSeconds": 1 },
                });
                let params = PatchParams { field_manager: Some(OPERATOR_MANAGER.into()), ..Default::default() };
                match pods.patch(name, &params, &Patch::Merge(&stop)).await {
                    Ok(_) => ctx.metrics.write("pod_stop"),
                    Err(e) if api_code(&e) == Some(404) => {}
                    // A deadline the pod's spec cannot take (it has a shorter one already): delete.
                    Err(e) if api_code(&e) == Some(422) => delete_pod(&pods, name, ctx).await?,
                    Err(e) => return Err(kube_err("stop pod")(e)),
                }
            }
            Action::AddFinalizer | Action::RemoveFinalizer | Action::DeleteActivity => {}
        }
    }
    if plan.has(&Action::RemoveFinalizer) {
        ctx.may_write()?;
        if remove_finalizer(&acts, act).await? {
            ctx.metrics.write("finalizer");
            // Every version up to our status write still shows the finalizer: a reconcile woken
            // meanwhile (the pod's deletion, say) would try to remove it again.
            superseded.extend(act.resource_version());
            superseded.extend(written);
            ctx.mark_stale(key, superseded);
        }
        ctx.forget(key);
    }
    if plan.has(&Action::DeleteActivity) {
        ctx.may_write()?;
        let uid = act.uid();
        let params = DeleteParams {
            preconditions: Some(Preconditions { uid, resource_version: None }),
            ..DeleteParams::background()
        };
        match acts.delete(&name, &params).await {
            Ok(_) => info!("ttlSecondsAfterFinished passed: deleted"),
            Err(e) if matches!(api_code(&e), Some(404 | 409)) => {}
            Err(e) => return Err(kube_err("delete activity")(e)),
        }
        ctx.metrics.write("activity_delete");
        ctx.forget(key);
    }
    let unfinished = !plan.status.phase.is_some_and(|p| p.is_terminal());
    ctx.set_armed(key, unfinished && plan.requeue_after.is_some());
    Ok(match plan.requeue_after {
        Some(after) => Requeue::requeue(after),
        None => Requeue::await_change(),
    })
}

/// A write refused because its resourceVersion precondition no longer holds is
/// [`Error::Superseded`]: the plan is judged again on a fresh read.
fn guarded(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| match api_code(&source) {
        Some(409) => Error::Superseded,
        _ => Error::Kube { action, source },
    }
}

/// Deletes a pod with its own grace period; one that is gone already counts as deleted.
async fn delete_pod(pods: &Api<Pod>, name: &str, ctx: &Context) -> Result<(), Error> {
    match pods.delete(name, &DeleteParams::default()).await {
        Ok(_) => ctx.metrics.write("pod_delete"),
        Err(e) if api_code(&e) == Some(404) => {}
        Err(e) => return Err(kube_err("delete pod")(e)),
    }
    Ok(())
}

/// Removes `status.outcome` (the worker's field), over `precondition` when given: a JSON patch
/// that sets the resourceVersion, so the API server answers 409 if the Activity changed.
async fn clear_outcome(acts: &Api<Activity>, name: &str, precondition: Option<&str>) -> Result<Activity, Error> {
    let mut ops = vec![json!({ "op": "remove", "path": "/status/outcome" })];
    if let Some(rv) = precondition {
        ops.insert(0, json!({ "op": "replace", "path": "/metadata/resourceVersion", "value": rv }));
    }
    let patch: json_patch::Patch = serde_json::from_value(json!(ops)).map_err(Error::Serialize)?;
    let params = PatchParams { field_manager: Some(OPERATOR_MANAGER.into()), ..Default::default() };
    acts.patch_status(name, &params, &Patch::<()>::Json(patch)).await.map_err(guarded("clear outcome"))
}

/// The condition type that shows what keeps an activity from moving on.
pub const STALLED: &str = "Stalled";

/// What a failed pass means for the user, if it is worth showing: the reason and a message that
/// says what to do. `failures_before` is the number of failed passes before this one: a transient
/// error (the API server busy, a timeout) is shown only once it persists.
pub fn problem_of(error: &Error, failures_before: u32) -> Option<(Reason, String)> {
    let Error::Kube { action, source } = error else { return None };
    let code = api_code(source);
    let message = api_message(source);
    let missing_account = message.contains("serviceaccount") && message.contains("not found");
    // RBAC's refusals name the user; a quota's or an admission plugin's are 403s too.
    let rbac = message.contains("User \"") && message.contains(" cannot ");
    match code {
        Some(403) if *action == "create pod" && missing_account => Some((
            Reason::WorkerServiceAccountMissing,
            format!(
                "the attempt's worker pod names a service account that does not exist ({message}). Install the \
                 chart with this namespace in watchNamespaces (it creates the activity-worker account and its \
                 Role there), or name an existing serviceAccountName in spec.template.spec"
            ),
        )),
        Some(403) if rbac => Some((
            Reason::Forbidden,
            format!(
                "the operator may not {action}: {message}. Its service account lacks this permission: \
                 install the chart's RBAC for this namespace (rbac.create, watchNamespaces)"
            ),
        )),
        _ if *action == "create pod" => {
            Some((Reason::PodCreateFailed, format!("cannot create the worker pod (retrying): {message}")))
        }
        Some(400 | 404 | 422) => Some((Reason::ApiError, format!("{action}: {message} (retrying)"))),
        _ if failures_before >= 2 => Some((Reason::ApiError, format!("{action}: {message} (retrying)"))),
        _ => None,
    }
}

/// Shows `message` as a Warning event (each repeat joins the Event's series) and in the
/// activity's `Stalled` condition (a JSON patch over a fresh read, so no other condition is
/// touched; written once per distinct message).
async fn set_stalled(
    ctx: &Context,
    act: &Activity,
    key: &ObjectRef<Activity>,
    reason: Reason,
    message: String,
) -> Result<(), Error> {
    publish(ctx, act, &[Event { warning: true, reason, message: message.clone() }]);
    if lock(&ctx.problems).get(key) == Some(&message) {
        return Ok(());
    }
    ctx.may_write()?;
    let acts: Api<Activity> = Api::namespaced(ctx.client.clone(), &namespace_of(act)?);
    let Some(fresh) = acts.get_opt(&act.name_any()).await.map_err(kube_err("get activity"))? else { return Ok(()) };
    let now = Timestamp::now();
    let conditions = fresh.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let index = conditions.iter().position(|c| c.type_ == STALLED);
    let since = index.and_then(|i| conditions.get(i)).map(|c| c.last_transition_time.clone());
    let condition = json!({
        "type": STALLED, "status": "True", "reason": reason.as_str(), "message": message,
        "lastTransitionTime": since.unwrap_or(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now)),
        "observedGeneration": fresh.metadata.generation,
    });
    let ops = match (&fresh.status, index) {
        (None, _) => json!([{ "op": "add", "path": "/status", "value": { "conditions": [condition] } }]),
        (Some(s), None) if s.conditions.is_empty() => {
            json!([{ "op": "add", "path": "/status/conditions", "value": [condition] }])
        }
        (Some(_), None) => json!([{ "op": "add", "path": "/status/conditions/-", "value": condition }]),
        (Some(_), Some(i)) => json!([
            { "op": "test", "path": format!("/status/conditions/{i}/type"), "value": STALLED },
            { "op": "replace", "path": format!("/status/conditions/{i}"), "value": condition },
        ]),
    };
    patch_status_json(&acts, &act.name_any(), ops).await?;
    ctx.metrics.write("status");
    lock(&ctx.problems).insert(key.clone(), message);
    Ok(())
}

/// Removes the `Stalled` condition after a pass that succeeded, if the activity shows one.
async fn clear_stalled(ctx: &Context, act: &Activity, key: &ObjectRef<Activity>) -> Result<(), Error> {
    let remembered = lock(&ctx.problems).remove(key).is_some();
    let shown = act.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == STALLED));
    if !remembered && !shown {
        return Ok(());
    }
    ctx.may_write()?;
    let acts: Api<Activity> = Api::namespaced(ctx.client.clone(), &namespace_of(act)?);
    let Some(fresh) = acts.get_opt(&act.name_any()).await.map_err(kube_err("get activity"))? else { return Ok(()) };
    let conditions = fresh.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let Some(i) = conditions.iter().position(|c| c.type_ == STALLED) else { return Ok(()) };
    let ops = json!([
        { "op": "test", "path": format!("/status/conditions/{i}/type"), "value": STALLED },
        { "op": "remove", "path": format!("/status/conditions/{i}") },
    ]);
    patch_status_json(&acts, &act.name_any(), ops).await?;
    ctx.metrics.write("status");
    Ok(())
}

async fn patch_status_json(acts: &Api<Activity>, name: &str, ops: serde_json::Value) -> Result<(), Error> {
    let patch: json_patch::Patch = serde_json::from_value(ops).map_err(Error::Serialize)?;
    let params = PatchParams { field_manager: Some(OPERATOR_MANAGER.into()), ..Default::default() };
    acts.patch_status(name, &params, &Patch::<()>::Json(patch)).await.map_err(kube_err("write condition"))?;
    Ok(())
}

/// The activity's namespace; the operator only watches namespaced Activities, so one without is
/// an internal error, never silently the empty namespace.
fn namespace_of(act: &Activity) -> Result<String, Error> {
    act.namespace().ok_or(Error::NoNamespace)
}

/// Server-side apply of the operator's part of the status. With `precondition`, only over that
/// resourceVersion: [`Error::Superseded`] if the Activity has changed since.
async fn write_status(
    acts: &Api<Activity>,
    name: &str,
    status: &ActivityStatus,
    precondition: Option<&str>,
) -> Result<Activity, Error> {
    let patch = StatusApply::new(status, precondition);
    acts.patch_status(name, &PatchParams::apply(OPERATOR_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(guarded("write status"))
}

/// The body of the operator's status apply. Serialized directly, never through a
/// `serde_json::Value`: a result a worker wrote is raw JSON of any depth, which a `Value` cannot hold.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusApply<'a> {
    api_version: String,
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<VersionOnly<'a>>,
    status: ActivityStatus,
}

#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct VersionOnly<'a> {
    resource_version: &'a str,
}

impl<'a> StatusApply<'a> {
    /// The operator's part of `status`: without the fields the worker owns (see [`WORKER_FIELDS`]).
    fn new(status: &ActivityStatus, precondition: Option<&'a str>) -> Self {
        let status =
            ActivityStatus { last_heartbeat_time: None, heartbeat_details: None, outcome: None, ..status.clone() };
        StatusApply {
            api_version: Activity::api_version(&()).into_owned(),
            kind: Activity::kind(&()).into_owned(),
            metadata: precondition.map(|rv| VersionOnly { resource_version: rv }),
            status,
        }
    }
}

/// Adds our finalizer, guarded by the resourceVersion so no concurrent change is lost.
async fn add_finalizer(acts: &Api<Activity>, act: &Activity) -> Result<Activity, Error> {
    let mut finalizers = act.finalizers().to_vec();
    finalizers.push(FINALIZER.into());
    let patch = json!({ "metadata": { "finalizers": finalizers, "resourceVersion": act.resource_version() } });
    let params = PatchParams { field_manager: Some(OPERATOR_MANAGER.into()), ..Default::default() };
    acts.patch(&act.name_any(), &params, &Patch::Merge(&patch)).await.map_err(guarded("add finalizer"))
}

/// Removes our finalizer with a JSON patch that tests its position first: at the position `act`
/// (the cached copy) shows, and if that test fails, at the position a fresh read shows. Returns
/// whether it wrote.
async fn remove_finalizer(acts: &Api<Activity>, act: &Activity) -> Result<bool, Error> {
    let name = act.name_any();
    if let Some(index) = finalizer_index(act) {
        match patch_out_finalizer(acts, &name, index).await? {
            // The test failed: the finalizers changed since the cached copy.
            Err(e) if matches!(api_code(&e), Some(409 | 422)) => {}
            other => return other.map_err(kube_err("remove finalizer")),
        }
    }
    let Some(fresh) = acts.get_opt(&name).await.map_err(kube_err("get activity"))? else {
        return Ok(false);
    };
    let Some(index) = finalizer_index(&fresh) else {
        return Ok(false);
    };
    patch_out_finalizer(acts, &name, index).await?.map_err(kube_err("remove finalizer"))
}

fn finalizer_index(act: &Activity) -> Option<usize> {
    act.finalizers().iter().position(|f| f == FINALIZER)
}

/// Removes the finalizer at `index` if it is ours (a JSON patch `test` first): whether it wrote
/// (not if the Activity is gone), or the API's error.
async fn patch_out_finalizer(
    acts: &Api<Activity>,
    name: &str,
    index: usize,
) -> Result<Result<bool, kube::Error>, Error> {
    let path = format!("/metadata/finalizers/{index}");
    let patch: json_patch::Patch = serde_json::from_value(json!([
        { "op": "test", "path": path, "value": FINALIZER },
        { "op": "remove", "path": path },
    ]))
    .map_err(Error::Serialize)?;
    let params = PatchParams { field_manager: Some(OPERATOR_MANAGER.into()), ..Default::default() };
    Ok(match acts.patch(name, &params, &Patch::<()>::Json(patch)).await {
        Ok(_) => Ok(true),
        Err(e) if api_code(&e) == Some(404) => Ok(false),
        Err(e) => Err(e),
    })
}

/// Queues the events (published off the reconcile path, see [`crate::events`]).
fn publish(ctx: &Context, act: &Activity, events: &[Event]) {
    if !events.is_empty() {
        ctx.events.send(&act.object_ref(&()), events);
    }
}

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
    settings: Settings,
    metrics: Arc<Metrics>,
    reporter: events::Reporter,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let (acts, pods): (Api<Activity>, Api<WorkerPod>) = match &settings.namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let (act_store, act_writer) = reflector::store();
    let (pod_store, pod_writer) = reflector::store();
    let config = ControllerConfig::default().concurrency(settings.concurrency);
    let (events, publisher) = events::start(client.clone(), reporter, metrics.clone(), settings.fence.clone());
    let ctx = Arc::new(Context {
        client,
        pods_ready: ReadyGate::of(&pod_store),
        pods: pod_store,
        events,
        metrics,
        settings,
        failures: Mutex::default(),
        stale: Mutex::default(),
        heartbeats: Mutex::default(),
        armed: Mutex::default(),
        created: RecentPods::default(),
        exits: RecentPods::default(),
        problems: Mutex::default(),
    });
    let lag = ctx.clone();
    let (act_errors, pod_errors) = (ctx.metrics.clone(), ctx.metrics.clone());
    // A watch that fails (an object that does not decode, a list the API server refused) is
    // restarted with backoff; it is logged at warn and counted, never hidden.
    let act_stream = watcher(acts, watcher::Config::default().any_semantic())
        .inspect_err(move |e| {
            act_errors.watch_error("activities");
            warn!(error = %e, "the Activity watch failed; restarting it");
        })
        .default_backoff()
        .modify(slim_activity)
        .reflect(act_writer)
        .applied_objects()
        .inspect_ok(move |act| lag.observe_heartbeat(act, Timestamp::now()))
        .predicate_filter(planner_input, Default::default());
    let pod_stream = watcher(pods, watcher::Config::default().labels(activity_crds::LABEL_ACTIVITY).any_semantic())
        .inspect_err(move |e| {
            pod_errors.watch_error("pods");
            warn!(error = %e, "the worker pod watch failed; restarting it");
        })
        .default_backoff()
        .reflect(pod_writer)
        .touched_objects();
    Controller::for_stream(act_stream, act_store)
        .owns_stream(pod_stream)
        .with_config(config)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                debug!(error = %e, "controller stream");
            }
        })
        .await;
    // The controller (and with it every queue sender) is gone: let the last events out.
    publisher.drain().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
    use kube::runtime::watcher::Event as WatchEvent;

    #[test]
    fn a_created_pod_is_held_until_the_cache_shows_it_or_for_keep() {
        let created = RecentPods::default();
        let pod: PodKey = (ObjectRef::new("a-1").within("ns"), "uid-1".into());
        let t0 = Instant::now();
        assert!(!created.holds(&pod, t0), "never created");
        created.record(pod.clone(), t0);
        assert!(created.holds(&pod, t0 + Duration::from_secs(29)));
        let recreated: PodKey = (pod.0.clone(), "uid-2".into());
        assert!(!created.holds(&recreated, t0), "a recreated activity of the same name has its own pod");
        assert!(!created.holds(&pod, t0 + RecentPods::KEEP), "after KEEP it is created again");
        created.record(pod.clone(), t0);
        created.forget(&pod);
        assert!(!created.holds(&pod, t0), "the cache shows it: nothing left to wait for");
        // Entries the cache never showed (the activity was deleted) do not pile up.
        for i in 0..1024 {
            created.record((ObjectRef::new(&format!("old-{i}")).within("ns"), "u".into()), t0);
        }
        created.record(pod.clone(), t0 + RecentPods::KEEP);
        assert_eq!(lock(&created.0).len(), 1);
    }

    #[test]
    fn an_exit_is_timed_from_when_it_was_first_seen() {
        let exits = RecentPods::default();
        let pod: PodKey = (ObjectRef::new("a-1").within("ns"), "uid-1".into());
        let t0 = Instant::now();
        assert_eq!(exits.first_seen(pod.clone(), t0), t0);
        assert_eq!(exits.first_seen(pod.clone(), t0 + OUTCOME_GRACE), t0, "seen again: still the first time");
        exits.forget(&pod);
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(exits.first_seen(pod.clone(), t1), t1, "judged and forgotten: a new exit starts afresh");
        let t2 = t1 + RecentPods::KEEP;
        assert_eq!(exits.first_seen(pod, t2), t2, "an entry older than KEEP is not trusted");
    }

    #[test]
    fn expired_stale_marks_of_deleted_activities_do_not_pile_up() {
        let t0 = Instant::now();
        let mut stale = HashMap::new();
        for i in 0..1023 {
            stale.insert(ObjectRef::new(&format!("gone-{i}")).within("ns"), (vec!["1".into()], t0));
        }
        stale.insert(ObjectRef::new("live").within("ns"), (vec!["2".into()], t0 + Duration::from_secs(5)));
        prune_expired(&mut stale, t0 + Duration::from_secs(1));
        assert_eq!(stale.len(), 1, "only the mark that has not expired is kept");
        prune_expired(&mut stale, t0 + Duration::from_secs(10));
        assert_eq!(stale.len(), 1, "a small map is left alone");
    }

    /// Regression: with kube-runtime's own `wait_until_ready`, only one of several concurrent
    /// waiters woke up; the others sat out their timeout (30 s after every operator restart).
    /// Virtual time (paused clock): a waiter that was not woken shows 30 s elapsed.
    #[tokio::test(start_paused = true)]
    async fn every_concurrent_waiter_sees_the_store_ready() {
        let (store, mut writer) = reflector::store::<WorkerPod>();
        let gate = ReadyGate::of(&store);
        let start = tokio::time::Instant::now();
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let gate = gate.clone();
                tokio::spawn(async move { (gate.wait(Duration::from_secs(30)).await, start.elapsed()) })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        writer.apply_watcher_event(&WatchEvent::Init);
        writer.apply_watcher_event(&WatchEvent::InitDone);
        for w in waiters {
            let (ready, waited) = w.await.expect("waiter");
            assert!(ready, "the store is ready");
            assert!(waited < Duration::from_secs(1), "a waiter was not woken: it waited {waited:?}");
        }
        // And a store that never lists is reported as not ready after the limit.
        let (never, _writer) = reflector::store::<WorkerPod>();
        assert!(!ReadyGate::of(&never).wait(Duration::from_secs(30)).await);
    }

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
        assert!(matches!(view.worker, pods::WorkerState::Running { started_at: Some(_) }), "{view:?}");
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
