//! Freshness: what the runtime must confirm before it trusts its caches. The Activity watch and
//! the pod watch are separate streams and either may lag the API server (by a minute on a
//! saturated control plane), so some plans are made, or carried out, only from a fresh read.
//! Pure predicates; the runtime counts each fresh read by [`FreshRead`].

use activity_crds::{Activity, ActivityStatus, Outcome, Phase};

use crate::model::plan::Plan;
use crate::model::pod_view::PodView;

/// The current attempt while its worker may still run and has reported nothing: the activity is
/// Pending, Running or Canceling and holds no outcome of that attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnreportedAttempt<'a> {
    pub attempt: i32,
    pub pod_name: &'a str,
}

/// Whether `phase` is one in which the current attempt's worker may run.
pub fn attempt_may_run(phase: Option<Phase>) -> bool {
    matches!(phase, Some(Phase::Pending | Phase::Running | Phase::Canceling))
}

/// The worker's outcome of the current attempt, if the status holds one (an outcome of another
/// attempt judges nothing).
pub fn current_outcome(status: &ActivityStatus) -> Option<&Outcome> {
    let attempt = status.attempt?;
    status.outcome.as_ref().filter(|o| o.attempt == attempt)
}

/// The one "live and not reported" test: see [`UnreportedAttempt`].
pub fn live_unreported(status: &ActivityStatus) -> Option<UnreportedAttempt<'_>> {
    let (attempt, pod_name) = (status.attempt?, status.pod_name.as_deref()?);
    let reported = current_outcome(status).is_some();
    (attempt_may_run(status.phase) && !reported).then_some(UnreportedAttempt { attempt, pod_name })
}

/// Whether the current attempt's worker has exited while no outcome of it is in `activity`. A worker writes
/// its outcome *before* it exits, but the pod watch may show the exit first: the runtime then
/// waits a moment for the outcome, and writes its judgement only over the version of the Activity
/// it was made on (a changed Activity is read afresh and judged again).
pub fn exit_without_outcome(activity: &Activity, pods: &[PodView]) -> bool {
    let Some(current) = activity.status.as_ref().and_then(live_unreported) else { return false };
    pods.iter().any(|p| p.name == current.pod_name && !p.worker.is_live())
}

/// The name of the current attempt's pod when `pods` (from the runtime's cache) lacks it while
/// the attempt is live and unreported: a pod missing from the cache is read from the API server
/// before the attempt is judged on its absence (failed as `PodDeleted`, or its pod created again).
pub fn pod_to_confirm(activity: &Activity, pods: &[PodView]) -> Option<String> {
    let current = live_unreported(activity.status.as_ref()?)?;
    let shown = pods.iter().any(|p| p.name == current.pod_name);
    (!shown).then(|| current.pod_name.to_string())
}

/// Whether `plan` ends the current attempt on a timeout that it has just found lapsed.
pub fn judges_a_timeout(activity: &Activity, plan: &Plan) -> bool {
    let before = activity.status.as_ref().and_then(|s| s.last_failure.as_ref());
    let after = plan.status.last_failure.as_ref();
    after.is_some_and(|f| f.timeout_type.is_some()) && after != before
}

/// Whether `plan` creates a pod without writing the status. Such a plan changes nothing that a
/// resourceVersion precondition could guard, so the runtime makes it only from a fresh read: a
/// cache that lags might show an attempt that has since ended, and its pod would start again.
pub fn creates_a_pod_unguarded(activity: &Activity, plan: &Plan) -> bool {
    let current = activity.status.clone().unwrap_or_default();
    plan.status == current && plan.creates_a_pod()
}

/// Why an object was read afresh from the API server (the `kind` label of
/// `activity_operator_fresh_reads_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FreshRead {
    /// A judgement of an exit without an outcome was refused: the Activity had changed.
    Exit,
    /// A judgement of a lapsed timeout was refused.
    Timeout,
    /// The plan would create a pod without writing the status.
    PodCreate,
    /// The finalizer write was refused.
    Finalizer,
    /// Another status write was refused.
    Status,
    /// The current attempt's pod was missing from the pod cache.
    Pod,
}

impl FreshRead {
    pub fn as_str(self) -> &'static str {
        match self {
            FreshRead::Exit => "exit",
            FreshRead::Timeout => "timeout",
            FreshRead::PodCreate => "pod_create",
            FreshRead::Finalizer => "finalizer",
            FreshRead::Status => "status",
            FreshRead::Pod => "pod",
        }
    }

    /// Why a plan made from the cached `activity` would be, or was, judged again on a fresh read.
    pub fn of_plan(activity: &Activity, plan: &Plan, exit_judged: bool) -> Self {
        if exit_judged {
            FreshRead::Exit
        } else if judges_a_timeout(activity, plan) {
            FreshRead::Timeout
        } else if creates_a_pod_unguarded(activity, plan) {
            FreshRead::PodCreate
        } else if plan.has(&crate::model::plan::Effect::AddFinalizer) {
            FreshRead::Finalizer
        } else {
            FreshRead::Status
        }
    }
}
