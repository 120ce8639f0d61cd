//! The decisions: `(activity, its pods, now) -> plan`. Pure and clock-injected; the controller
//! executes the plan. Every call recomputes from the object and its pods alone, so a restarted
//! operator re-arms every deadline from status.
//!
//! Order of execution (the controller's): add finalizer, write status, pod actions, then finalizer
//! removal or TTL deletion. Status is written *before* a pod is created, so a worker always finds
//! its attempt recorded, and a crash between the two only leads to the same (deterministically
//! named) pod being created again.

use std::time::Duration;

use activity_crds::{
    ATTEMPT_HISTORY, Activity, ActivityStatus, AttemptRecord, FINALIZER, Failure, LastReset, MAX_PAYLOAD_BYTES, Phase,
    RawJson, StopCause, TimeoutType, format_duration, parse_duration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use crate::pods::{Exit, PodView, WorkerState, pod_name};
use crate::reason::Reason;
use activity_crds::resolved::ResolvedSpec;

/// What the controller should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    AddFinalizer,
    /// Create the pod of this attempt (AlreadyExists counts as done).
    CreatePod {
        attempt: i32,
    },
    /// Delete this pod with its own grace period (SIGTERM, then SIGKILL).
    DeletePod {
        name: String,
    },
    /// Stop this pod's containers but keep the pod, so its logs stay readable (SIGTERM, then
    /// SIGKILL after its grace period): an attempt that ended while its pod still runs.
    StopPod {
        name: String,
    },
    RemoveFinalizer,
    /// `ttlSecondsAfterFinished` has passed.
    DeleteActivity,
}

/// A Kubernetes Event to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub warning: bool,
    pub reason: Reason,
    pub message: String,
}

/// The result of planning.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The whole desired status (worker-owned fields carried over unchanged).
    pub status: ActivityStatus,
    pub actions: Vec<Action>,
    pub events: Vec<Event>,
    /// When to look again: the nearest deadline, if any.
    pub requeue_after: Option<Duration>,
}

impl Plan {
    pub fn has(&self, action: &Action) -> bool {
        self.actions.contains(action)
    }
}

/// Plans the next step for `activity` given its worker pods, at `now`.
pub fn plan(activity: &Activity, pods: &[PodView], now: Timestamp) -> Plan {
    let current = activity.status.clone().unwrap_or_default();
    let mut p = Planner::new(activity, pods, current.clone(), now);
    let deleting = activity.metadata.deletion_timestamp.is_some();
    let has_finalizer = activity.finalizers().iter().any(|f| f == FINALIZER);
    if deleting && !has_finalizer {
        // Not held by us: nothing to clean up, the object is going away.
        return Plan { status: current, actions: vec![], events: vec![], requeue_after: None };
    }
    let settings = ResolvedSpec::from_spec(&activity.spec);
    if !p.phase().is_some_and(Phase::is_terminal) || p.reset_pending(deleting) {
        if !deleting && !has_finalizer {
            p.actions.push(Action::AddFinalizer);
        }
        match &settings {
            Ok(s) => p.advance(s, deleting),
            Err(e) => {
                let failure = p.failure("InvalidSpec", e.to_string(), true);
                p.events.push(Event { warning: true, reason: Reason::InvalidSpec, message: e.to_string() });
                p.finish(Phase::Failed, Some(failure), None);
            }
        }
    }
    p.stop_stray_pods(deleting);
    if p.phase().is_some_and(Phase::is_terminal) {
        let live = pods.iter().any(|pod| pod.pod_live);
        if has_finalizer && !(deleting && live) {
            p.actions.push(Action::RemoveFinalizer);
        }
        let ttl = settings.as_ref().ok().and_then(|s| s.ttl_after_finished);
        if let (Some(ttl), Some(closed), false) = (ttl, p.status.closed_time.as_ref(), deleting) {
            let at = add(closed.0, ttl);
            if now >= at {
                p.actions.push(Action::DeleteActivity);
            } else {
                p.deadlines.push(at);
            }
        }
    }
    p.status.observed_generation = activity.metadata.generation;
    p.status.conditions = conditions(&current.conditions, &p.status, p.waiting.as_deref(), activity.spec.paused, now);
    let requeue_after = p.deadlines.iter().min().map(|d| {
        let wait = d.duration_since(now).unsigned_abs();
        // A timer never fires early, but one millisecond more keeps `now >= deadline` true on wake.
        wait + Duration::from_millis(1)
    });
    Plan { status: p.status, actions: p.actions, events: p.events, requeue_after }
}

/// Whether the current attempt's worker has exited while no outcome of that attempt is in
/// `activity`. A worker writes its outcome *before* it exits, but the pod watch and the Activity
/// watch are separate streams: the exit may be seen first. Before judging the attempt by its exit
/// code, the controller then waits a moment for the outcome, and writes its judgement only over the
/// version of the Activity it was made on (a changed Activity is read afresh and judged again).
pub fn exit_without_outcome(activity: &Activity, pods: &[PodView]) -> bool {
    let Some(status) = activity.status.as_ref() else { return false };
    let (Some(attempt), Some(pod)) = (status.attempt, status.pod_name.as_deref()) else { return false };
    let live = matches!(status.phase, Some(Phase::Pending | Phase::Running | Phase::Canceling));
    let reported = status.outcome.as_ref().is_some_and(|o| o.attempt == attempt);
    let exited = pods.iter().any(|p| p.name == pod && !p.worker.is_live());
    live && exited && !reported
}

/// Whether `plan` ends the current attempt on a timeout that it has just found lapsed. Every status
/// write is made only over the version of the Activity the plan was made from (a resourceVersion
/// precondition); this tells the metrics why a refused write was judged again on a fresh read.
pub fn judges_a_timeout(activity: &Activity, plan: &Plan) -> bool {
    let before = activity.status.as_ref().and_then(|s| s.last_failure.as_ref());
    let after = plan.status.last_failure.as_ref();
    after.is_some_and(|f| f.timeout_type.is_some()) && after != before
}

/// The name of the current attempt's pod when `pods` (from the controller's cache) lacks it while
/// the activity is live and the attempt has no outcome. The pod watch can lag the API server by a
/// minute on a saturated control plane, so a pod missing from the cache is read from the API
/// server before the attempt is judged on its absence (failed as `PodDeleted`, or its pod created
/// again).
pub fn pod_to_confirm(activity: &Activity, pods: &[PodView]) -> Option<String> {
    let status = activity.status.as_ref()?;
    let (attempt, name) = (status.attempt?, status.pod_name.as_deref()?);
    let live = matches!(status.phase, Some(Phase::Pending | Phase::Running | Phase::Canceling));
    let reported = status.outcome.as_ref().is_some_and(|o| o.attempt == attempt);
    let shown = pods.iter().any(|p| p.name == name);
    (live && !reported && !shown).then(|| name.to_string())
}

/// Whether `plan` creates a pod without writing the status. Such a plan changes nothing that a
/// resourceVersion precondition could guard, so the controller makes it only from a fresh read:
/// a cache that lags might show an attempt that has since ended, and its pod would be started again.
pub fn creates_a_pod_unguarded(activity: &Activity, plan: &Plan) -> bool {
    let current = activity.status.clone().unwrap_or_default();
    plan.status == current && plan.actions.iter().any(|a| matches!(a, Action::CreatePod { .. }))
}

/// The attempt's pod cannot be made: the API server refused it (e.g. an invalid template) or the
/// template does not read as a pod template. The activity fails at once with `message`, not
/// retried (the same template would be refused again).
pub fn pod_rejected(activity: &Activity, planned: &ActivityStatus, message: String, now: Timestamp) -> Plan {
    let mut p = Planner::new(activity, &[], planned.clone(), now);
    let failure = p.failure(Reason::PodRejected.as_str(), message.clone(), true);
    p.events.push(Event { warning: true, reason: Reason::PodRejected, message });
    p.record_attempt_if_live("Failed", Some(&failure));
    p.finish(Phase::Failed, Some(failure), None);
    let previous = activity.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    p.status.conditions = conditions(&previous, &p.status, None, activity.spec.paused, now);
    let actions =
        if activity.finalizers().iter().any(|f| f == FINALIZER) { vec![Action::RemoveFinalizer] } else { vec![] };
    Plan { status: p.status, actions, events: p.events, requeue_after: None }
}

/// How far ahead of the operator's clock a worker's heartbeat time may be.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5);
/// How long past its grace period a stopped pod may stay live before its node is taken for lost.
pub const LOST_NODE_MARGIN: Duration = Duration::from_secs(60);
/// The longest failure message and type the status keeps of what a worker wrote (the status also
/// keeps the last 10 attempts' failures, and the whole object must stay far below etcd's limit).
const MAX_MESSAGE_BYTES: usize = 2048;
const MAX_TYPE_BYTES: usize = 128;

/// `text` cut to at most `max` bytes on a character boundary, marked when cut.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Waiting reasons every container passes through on a normal start.
const ROUTINE_WAITING: [&str; 2] = ["ContainerCreating", "PodInitializing"];

struct Planner<'a> {
    activity: &'a Activity,
    pods: &'a [PodView],
    now: Timestamp,
    status: ActivityStatus,
    actions: Vec<Action>,
    events: Vec<Event>,
    deadlines: Vec<Timestamp>,
    /// Why the current attempt's worker is not running yet (for the Running condition).
    waiting: Option<String>,
    /// `spec.paused` is set: a failed attempt waits for the unpause instead of a retry.
    pausing: bool,
    /// The worker asked for this delay before the next attempt (`nextRetryDelay`).
    next_retry_delay: Option<Duration>,
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d).ok().and_then(|d| t.checked_add(d).ok()).unwrap_or(Timestamp::MAX)
}

/// A status timestamp: rounded *up* to the microsecond the API stores, so a deadline computed
/// from it is never earlier than the instant it records.
fn time(t: Timestamp) -> MicroTime {
    let nanos = t.subsec_nanosecond();
    let up = (1_000 - nanos.rem_euclid(1_000)) % 1_000;
    MicroTime(t.checked_add(SignedDuration::from_nanos(i64::from(up))).unwrap_or(t))
}

impl<'a> Planner<'a> {
    fn new(activity: &'a Activity, pods: &'a [PodView], status: ActivityStatus, now: Timestamp) -> Self {
        Planner {
            activity,
            pods,
            now,
            status,
            actions: Vec::new(),
            events: Vec::new(),
            deadlines: Vec::new(),
            waiting: None,
            pausing: false,
            next_retry_delay: None,
        }
    }

    fn phase(&self) -> Option<Phase> {
        self.status.phase
    }

    fn attempt(&self) -> i32 {
        self.status.attempt.unwrap_or(0)
    }

    fn name(&self) -> String {
        self.activity.name_any()
    }

    fn current_pod(&self) -> Option<&PodView> {
        let name = self.status.pod_name.as_deref()?;
        self.pods.iter().find(|p| p.name == name)
    }

    fn failure(&self, type_: &str, message: String, non_retryable: bool) -> Failure {
        Failure {
            attempt: self.attempt(),
            type_: truncate(type_, MAX_TYPE_BYTES),
            message: truncate(&message, MAX_MESSAGE_BYTES),
            non_retryable,
            timeout_type: None,
            exit_code: None,
            reason: None,
            time: time(self.now),
        }
    }

    /// Moves a live activity forward.
    fn advance(&mut self, s: &ResolvedSpec, deleting: bool) {
        let cancel = deleting || self.activity.spec.cancel_requested || self.phase() == Some(Phase::Canceling);
        if cancel {
            return self.cancel(s);
        }
        // Cancel beats reset, reset beats pause.
        if self.reset_pending(deleting) && !self.reset(s) {
            return;
        }
        if let Some(limit) = s.schedule_to_close {
            let deadline = add(self.clock_start(s), limit);
            if self.now >= deadline {
                let failure = self.timeout_failure(
                    TimeoutType::ScheduleToClose,
                    format!("the activity did not finish within scheduleToCloseTimeout {}", format_duration(limit)),
                );
                self.record_attempt_if_live("TimedOut", Some(&failure));
                return self.timed_out_for_good(failure);
            }
            self.deadlines.push(deadline);
        }
        self.pausing = self.activity.spec.paused;
        if self.pausing && self.pause() {
            return;
        }
        match self.phase() {
            None | Some(Phase::Scheduled) => match s.start_delay.map(|d| add(self.created(), d)) {
                Some(at) if self.now < at => {
                    self.status.phase = Some(Phase::Scheduled);
                    self.deadlines.push(at);
                }
                _ => self.start_attempt(s, 1),
            },
            Some(Phase::Paused) => {
                if !self.previous_attempt_still_runs() {
                    self.events.push(Event {
                        warning: false,
                        reason: Reason::Unpaused,
                        message: format!("unpaused: attempt {} starts", self.attempt() + 1),
                    });
                    self.start_attempt(s, self.attempt() + 1);
                }
            }
            Some(Phase::BackingOff) => match self.status.next_attempt_schedule_time.as_ref().map(|t| t.0) {
                Some(next) if self.now < next => self.deadlines.push(next),
                _ if self.previous_attempt_still_runs() => {}
                _ => self.start_attempt(s, self.attempt() + 1),
            },
            Some(_) if self.status.attempt.is_none() => self.start_attempt(s, 1),
            Some(_) => self.check_attempt(s),
        }
    }

    fn created(&self) -> Timestamp {
        self.activity.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or(self.now)
    }

    fn start_attempt(&mut self, s: &ResolvedSpec, attempt: i32) {
        let pod = pod_name(&self.name(), attempt);
        self.status.phase = Some(Phase::Pending);
        self.status.attempt = Some(attempt);
        self.status.pod_name = Some(pod.clone());
        self.status.scheduled_time = Some(time(self.now));
        self.status.started_time = None;
        self.status.next_attempt_schedule_time = None;
        // An outcome is only ever the current attempt's: one left from an earlier attempt (or
        // written for an attempt that had not started) must not judge this one.
        self.status.outcome = None;
        // The AttemptStarted Event is the controller's, once the API server has created the pod.
        self.actions.push(Action::CreatePod { attempt });
        if let Some(limit) = s.schedule_to_start {
            self.deadlines.push(add(self.now, limit));
        }
    }

    /// Pending or Running: judge the current attempt from the worker's outcome, its pod and the deadlines.
    fn check_attempt(&mut self, s: &ResolvedSpec) {
        let attempt = self.attempt();
        if let Some(failure) = self.oversized_payload() {
            return self.fail_attempt(s, failure);
        }
        if let Some(outcome) = self.status.outcome.clone().filter(|o| o.attempt == attempt) {
            if outcome.succeeded {
                self.record_attempt_if_live("Succeeded", None);
                return self.finish(Phase::Succeeded, None, outcome.result);
            }
            if outcome.canceled && outcome.cause == Some(StopCause::Paused) && self.pausing {
                // The worker stopped when its heartbeat reply said Paused: not counted.
                self.record_attempt_if_live("Paused", None);
                return self.enter_paused();
            }
            let failure = match outcome.failure {
                Some(f) => {
                    self.next_retry_delay = f.next_retry_delay.as_deref().and_then(|d| parse_duration(d).ok());
                    let non_retryable = f.non_retryable;
                    self.failure(&f.type_, f.message, non_retryable)
                }
                None if outcome.canceled => self.failure(
                    "WorkerCanceled",
                    "the worker stopped on a cancellation the operator did not request (its pod was deleted or sent SIGTERM)"
                        .into(),
                    false,
                ),
                None => self.failure("WorkerFailed", "the worker reported a failure without details".into(), false),
            };
            return self.fail_attempt(s, failure);
        }
        let Some(pod) = self.current_pod().cloned() else {
            if self.status.started_time.is_some() {
                let failure =
                    self.failure("PodDeleted", "the worker pod disappeared while it was running".into(), false);
                return self.fail_attempt(s, failure);
            }
            // Not seen yet (or deleted before it started): (re)create it under the same name.
            self.actions.push(Action::CreatePod { attempt });
            return self.arm_schedule_to_start(s);
        };
        if pod.disrupted && pod.worker.is_live() {
            // Evicted or preempted: the pod may be gone before its exit is seen.
            let failure = self.failure(
                "Evicted",
                format!("attempt {attempt}: the worker pod is being disrupted (eviction, preemption or node loss)"),
                false,
            );
            return if self.disruptions() < s.retry.maximum_disruptions {
                self.retry_disrupted(s, failure)
            } else {
                self.fail_attempt(s, failure)
            };
        }
        match pod.worker {
            WorkerState::Waiting { reason, message } => {
                // The routine steps of every start are not news: showing them in the Running
                // condition would cost a status write per attempt and tell the user nothing.
                // Reasons that mean trouble (ErrImagePull, CreateContainerConfigError…) are shown.
                let routine = |r: &str| ROUTINE_WAITING.contains(&r);
                self.waiting = reason.filter(|r| !routine(r)).map(|r| match message {
                    Some(m) => format!("{r}: {m}"),
                    None => r,
                });
                self.arm_schedule_to_start(s);
            }
            WorkerState::Running { started_at } => {
                if self.phase() != Some(Phase::Running) || self.status.started_time.is_none() {
                    self.status.phase = Some(Phase::Running);
                    // The API's startedAt has whole seconds; the true start lies within the second
                    // after it, and not after now: never count the start earlier than it was.
                    let started = started_at.map(|t| add(t, Duration::from_secs(1)).min(self.now)).unwrap_or(self.now);
                    self.status.started_time = Some(time(started));
                }
                self.arm_running_deadlines(s);
                if self.pausing && self.phase() == Some(Phase::Running) {
                    self.stop_when_told_and_grace_ran_out(s, &pod, self.paused_since());
                }
            }
            WorkerState::Exited(exit) => {
                if self.status.started_time.is_none() {
                    self.status.started_time = exit.started_at.map(time);
                }
                match self.judge_exit(&exit) {
                    None => {
                        self.record_attempt_if_live("Succeeded", None);
                        self.finish(Phase::Succeeded, None, None);
                    }
                    Some(failure) if exit.disrupted && self.disruptions() < s.retry.maximum_disruptions => {
                        self.retry_disrupted(s, failure)
                    }
                    Some(failure) if self.pausing && pod.stop_by.is_some() => {
                        // Stopped by the operator because the pause's grace ran out: not counted.
                        self.status.last_failure = Some(failure);
                        self.record_attempt_if_live("Paused", None);
                        self.enter_paused();
                    }
                    Some(failure) => self.fail_attempt(s, failure),
                }
            }
        }
    }

    fn arm_schedule_to_start(&mut self, s: &ResolvedSpec) {
        let (Some(limit), Some(scheduled)) = (s.schedule_to_start, self.status.scheduled_time.as_ref()) else {
            return;
        };
        let deadline = add(scheduled.0, limit);
        if self.now >= deadline {
            let why = self.waiting.clone().map(|w| format!(" ({w})")).unwrap_or_default();
            let failure = self.timeout_failure(
                TimeoutType::ScheduleToStart,
                format!(
                    "the worker of attempt {} did not start within scheduleToStartTimeout {}{why}",
                    self.attempt(),
                    format_duration(limit)
                ),
            );
            self.record_attempt_if_live("TimedOut", Some(&failure));
            self.timed_out_for_good(failure);
        } else {
            self.deadlines.push(deadline);
        }
    }

    /// A timeout that is never retried (schedule-to-start, schedule-to-close): its Event, then
    /// the end.
    fn timed_out_for_good(&mut self, failure: Failure) {
        if let Some(kind) = failure.timeout_type {
            self.events.push(Event { warning: true, reason: Reason::TimedOut(kind), message: failure.message.clone() });
        }
        self.finish(Phase::TimedOut, Some(failure), None);
    }

    fn arm_running_deadlines(&mut self, s: &ResolvedSpec) {
        let Some(started) = self.status.started_time.as_ref().map(|t| t.0) else {
            return;
        };
        let start_to_close = add(started, s.start_to_close);
        if self.now >= start_to_close {
            let failure = self.timeout_failure(
                TimeoutType::StartToClose,
                format!(
                    "attempt {} did not finish within startToCloseTimeout {}",
                    self.attempt(),
                    format_duration(s.start_to_close)
                ),
            );
            return self.fail_attempt(s, failure);
        }
        self.deadlines.push(start_to_close);
        if let Some(limit) = s.heartbeat {
            let last = self.heartbeat_since(started);
            let deadline = add(last.unwrap_or(started), limit);
            if self.now >= deadline {
                let since = if last.is_some() { "the last heartbeat" } else { "the worker started (no heartbeat yet)" };
                let failure = self.timeout_failure(
                    TimeoutType::Heartbeat,
                    format!(
                        "attempt {}: no heartbeat within heartbeatTimeout {} since {since}",
                        self.attempt(),
                        format_duration(limit)
                    ),
                );
                return self.fail_attempt(s, failure);
            }
            self.deadlines.push(deadline);
        }
    }

    /// Failed attempts counted before the current one (since the last reset).
    fn counted_before(&self) -> i32 {
        let base = self.status.last_reset.as_ref().map(|r| r.attempt).unwrap_or(1);
        self.status.counted_attempts.unwrap_or_else(|| self.attempt().saturating_sub(base).max(0))
    }

    fn disruptions(&self) -> i32 {
        self.status.disruptions.unwrap_or(0)
    }

    /// Where scheduleToClose counts from: the last reset, else the end of the start delay.
    fn clock_start(&self, s: &ResolvedSpec) -> Timestamp {
        match &self.status.last_reset {
            Some(reset) => reset.time.0,
            None => s.start_delay.map(|d| add(self.created(), d)).unwrap_or_else(|| self.created()),
        }
    }

    /// A disrupted attempt (eviction, preemption, node loss): the next starts at once and this one
    /// does not count toward maximumAttempts.
    fn retry_disrupted(&mut self, s: &ResolvedSpec, failure: Failure) {
        let n = self.disruptions().saturating_add(1);
        self.status.disruptions = Some(n);
        self.status.counted_attempts = Some(self.counted_before());
        self.events.push(Event {
            warning: true,
            reason: Reason::Disrupted,
            message: format!(
                "{}; retried at once, not counted toward maximumAttempts ({n} of {} disruptions)",
                failure.message, s.retry.maximum_disruptions
            ),
        });
        self.record_attempt_if_live("Failed", Some(&failure));
        self.status.last_failure = Some(failure);
        self.status.phase = Some(Phase::BackingOff);
        self.status.next_attempt_schedule_time = Some(time(self.now));
        self.deadlines.push(self.now);
    }

    /// `spec.paused`: whether that decided this pass. An activity with no live worker becomes
    /// `Paused` at once; a running worker is told in its heartbeat reply and judged as usual.
    fn pause(&mut self) -> bool {
        match self.phase() {
            Some(Phase::Running) => false,
            Some(Phase::Pending) => {
                // Not started yet: stopped (the pod is stopped as a stray), not counted.
                self.record_attempt_if_live("Paused", None);
                self.enter_paused();
                true
            }
            _ => {
                self.enter_paused();
                true
            }
        }
    }

    fn enter_paused(&mut self) {
        if self.phase() != Some(Phase::Paused) {
            self.events.push(Event {
                warning: false,
                reason: Reason::Paused,
                message: "paused (spec.paused): no attempt starts until it is unpaused".into(),
            });
        }
        self.status.phase = Some(Phase::Paused);
        self.status.next_attempt_schedule_time = None;
    }

    /// When the pause was first seen: the `Paused` condition's transition, else now.
    fn paused_since(&self) -> Timestamp {
        let previous = self.activity.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
        previous
            .iter()
            .find(|c| c.type_ == "Paused" && c.status == "True")
            .map(|c| c.last_transition_time.0)
            .unwrap_or(self.now)
    }

    /// A worker that heartbeated after `since` has been told to stop (its reply said so); once
    /// cancellationGracePeriod has passed from that heartbeat, its pod is stopped. A worker that
    /// never heartbeats was never told: it runs on.
    fn stop_when_told_and_grace_ran_out(&mut self, s: &ResolvedSpec, pod: &PodView, since: Timestamp) {
        let Some(told) = self.status.last_heartbeat_time.as_ref().map(|t| t.0).filter(|t| *t >= since) else {
            return;
        };
        let grace_end = add(told, s.cancellation_grace);
        if self.now < grace_end {
            return self.deadlines.push(grace_end);
        }
        if pod.stop_by.is_none() && !pod.deleting {
            self.actions.push(Action::StopPod { name: pod.name.clone() });
        }
    }

    /// Whether a new `spec.reset.requestedAt` waits to be done (never while canceling or canceled).
    fn reset_pending(&self, deleting: bool) -> bool {
        let Some(requested) = self.activity.spec.reset.as_ref().and_then(|r| r.requested_at.as_deref()) else {
            return false;
        };
        let done = self.status.last_reset.as_ref().map(|r| r.requested_at.as_str());
        let canceling = deleting
            || self.activity.spec.cancel_requested
            || matches!(self.phase(), Some(Phase::Canceling | Phase::Canceled));
        !requested.is_empty() && done != Some(requested) && !canceling
    }

    /// Does the reset: stops a live attempt first (the worker is told `Reset` in its heartbeat
    /// reply; its pod is stopped once cancellationGracePeriod from the request has passed), then
    /// starts the next attempt with a fresh budget, backoff and scheduleToClose clock. Returns
    /// whether the pass goes on (false: this pass waits for the worker to stop).
    fn reset(&mut self, s: &ResolvedSpec) -> bool {
        let Some(request) = self.activity.spec.reset.clone() else { return true };
        let requested_at = request.requested_at.unwrap_or_default();
        let attempt = self.attempt();
        let live = matches!(self.phase(), Some(Phase::Pending | Phase::Running));
        if live && let Some(pod) = self.current_pod().cloned().filter(|p| p.pod_live) {
            let requested = requested_at.parse::<Timestamp>().ok().filter(|t| *t <= self.now).unwrap_or(self.created());
            let grace_end = add(requested, s.cancellation_grace);
            if self.now >= grace_end {
                if pod.stop_by.is_none() && !pod.deleting {
                    self.actions.push(Action::StopPod { name: pod.name });
                }
            } else {
                self.deadlines.push(grace_end);
            }
            return false;
        }
        if self.previous_attempt_still_runs() {
            return false;
        }
        self.record_attempt_if_live("Reset", None);
        self.status.last_reset =
            Some(LastReset { requested_at: requested_at.clone(), time: time(self.now), attempt: attempt + 1 });
        self.status.counted_attempts = Some(0);
        self.status.closed_time = None;
        self.status.result = None;
        self.status.cancel_requested_time = None;
        if request.clear_heartbeat_details {
            self.status.heartbeat_details = None;
            self.status.last_heartbeat_time = None;
        }
        self.events.push(Event {
            warning: false,
            reason: Reason::Reset,
            message: format!(
                "reset (requestedAt {requested_at}): attempt {} starts with a fresh retry budget{}",
                attempt + 1,
                if request.clear_heartbeat_details { ", without heartbeat details" } else { "" }
            ),
        });
        if self.activity.spec.paused {
            self.enter_paused();
        } else {
            // Attempt `attempt + 1` starts below (phase BackingOff with no wait).
            self.status.phase = Some(Phase::BackingOff);
            self.status.next_attempt_schedule_time = None;
        }
        true
    }

    fn timeout_failure(&self, kind: TimeoutType, message: String) -> Failure {
        Failure {
            timeout_type: Some(kind),
            non_retryable: !kind.is_retryable(),
            ..self.failure("Timeout", message, false)
        }
    }

    /// `None` = success (exit 0 without an outcome counts as success with no result).
    fn judge_exit(&self, exit: &Exit) -> Option<Failure> {
        let attempt = self.attempt();
        let (type_, message) = if exit.disrupted {
            let why = exit.message.clone().unwrap_or_else(|| "evicted or preempted".into());
            ("Evicted", format!("attempt {attempt}: the worker pod was disrupted: {why}"))
        } else if exit.reason.as_deref() == Some("OOMKilled") {
            ("OOMKilled", format!("attempt {attempt}: the worker ran out of memory (OOMKilled)"))
        } else {
            match exit.exit_code {
                Some(0) => return None,
                Some(code) => ("ExitCode", format!("attempt {attempt}: the worker exited with code {code}")),
                None => {
                    let why = exit.message.clone().or(exit.reason.clone()).unwrap_or_else(|| "unknown reason".into());
                    ("PodFailed", format!("attempt {attempt}: the worker pod failed: {why}"))
                }
            }
        };
        let message = match (type_, exit.exit_code) {
            ("OOMKilled" | "Evicted", Some(code)) => format!("{message} (exit code {code})"),
            _ => message,
        };
        Some(Failure { exit_code: exit.exit_code, reason: exit.reason.clone(), ..self.failure(type_, message, false) })
    }

    /// The current attempt failed: retry after backoff, or finish.
    fn fail_attempt(&mut self, s: &ResolvedSpec, mut failure: Failure) {
        let attempt = self.attempt();
        let timed_out = failure.timeout_type.is_some();
        let outcome = if timed_out { "TimedOut" } else { "Failed" };
        if let Some(kind) = failure.timeout_type {
            self.events.push(Event { warning: true, reason: Reason::TimedOut(kind), message: failure.message.clone() });
        } else {
            self.events.push(Event {
                warning: true,
                reason: Reason::AttemptFailed,
                message: format!("{}: {}", failure.type_, failure.message),
            });
        }
        let final_phase = if timed_out { Phase::TimedOut } else { Phase::Failed };
        let exit_code_listed = failure.type_ == "ExitCode"
            && failure.exit_code.is_some_and(|code| s.retry.non_retryable_exit_codes.contains(&code));
        let counted = self.counted_before().saturating_add(1);
        self.status.counted_attempts = Some(counted);
        if failure.non_retryable || s.retry.is_non_retryable_type(&failure.type_) || exit_code_listed {
            failure.non_retryable = true;
            self.record_attempt_if_live(outcome, Some(&failure));
            return self.finish(final_phase, Some(failure), None);
        }
        self.record_attempt_if_live(outcome, Some(&failure));
        if !s.retry.attempts_left_after(counted) {
            failure.message = format!("{} (maximumAttempts {} reached)", failure.message, s.retry.maximum_attempts);
            return self.finish(final_phase, Some(failure), None);
        }
        if self.pausing {
            // No retry while paused: the unpause starts the next attempt.
            self.status.last_failure = Some(failure);
            return self.enter_paused();
        }
        let delay = self.next_retry_delay.unwrap_or_else(|| s.retry.delay_after(counted));
        let next = add(self.now, delay);
        if let Some(limit) = s.schedule_to_close {
            let deadline = add(self.clock_start(s), limit);
            if next >= deadline {
                let stop = self.timeout_failure(
                    TimeoutType::ScheduleToClose,
                    format!(
                        "no retry: attempt {} would start after the scheduleToCloseTimeout {} deadline; last failure: {}",
                        attempt + 1,
                        format_duration(limit),
                        failure.message
                    ),
                );
                self.events.push(Event {
                    warning: true,
                    reason: Reason::TimedOut(TimeoutType::ScheduleToClose),
                    message: stop.message.clone(),
                });
                return self.finish(Phase::TimedOut, Some(stop), None);
            }
        }
        self.status.last_failure = Some(failure);
        self.status.phase = Some(Phase::BackingOff);
        self.status.next_attempt_schedule_time = Some(time(next));
        self.deadlines.push(next);
        self.events.push(Event {
            warning: false,
            reason: Reason::RetryScheduled,
            message: format!("attempt {} starts in {}", attempt + 1, format_duration(delay)),
        });
    }

    /// Cancellation (deletion or `spec.cancelRequested`).
    fn cancel(&mut self, s: &ResolvedSpec) {
        if self.status.cancel_requested_time.is_none() {
            self.status.cancel_requested_time = Some(time(self.now));
            let how =
                if self.activity.metadata.deletion_timestamp.is_some() { "deleted" } else { "spec.cancelRequested" };
            self.events.push(Event {
                warning: false,
                reason: Reason::CancelRequested,
                message: format!("cancel requested ({how})"),
            });
        }
        let pod = self.current_pod().cloned();
        let worker_running = matches!(self.phase(), Some(Phase::Running | Phase::Canceling))
            && pod.as_ref().is_some_and(|p| p.worker.is_live());
        if !worker_running {
            // Pending, BackingOff, never started, or the worker is already gone: cancel at once.
            self.record_attempt_if_live("Canceled", None);
            return self.finish(Phase::Canceled, None, None);
        }
        let attempt = self.attempt();
        if let Some(outcome) = self.status.outcome.clone().filter(|o| o.attempt == attempt && o.succeeded) {
            // The worker finished before it heard of the cancel: its completion stands.
            self.record_attempt_if_live("Succeeded", None);
            return self.finish(Phase::Succeeded, None, outcome.result);
        }
        self.status.phase = Some(Phase::Canceling);
        self.status.next_attempt_schedule_time = None;
        let requested = self.status.cancel_requested_time.as_ref().map(|t| t.0).unwrap_or(self.now);
        let grace_end = add(requested, s.cancellation_grace);
        if self.now >= grace_end {
            if let Some(pod) = pod.filter(|p| !p.deleting) {
                self.events.push(Event {
                    warning: true,
                    reason: Reason::CancellationGraceExpired,
                    message: format!(
                        "the worker did not stop within cancellationGracePeriod {}: deleting pod {}",
                        format_duration(s.cancellation_grace),
                        pod.name
                    ),
                });
                self.actions.push(Action::DeletePod { name: pod.name });
            }
        } else {
            self.deadlines.push(grace_end);
        }
    }

    /// Stops every live pod that is not the current attempt's running worker. Pods are deleted only
    /// when the activity is: a stopped pod keeps its logs for `kubectl logs` until then.
    fn stop_stray_pods(&mut self, deleting: bool) {
        // A canceled activity's pods go, as `kubectl delete` of the activity would take them.
        let canceled = deleting
            || self.activity.spec.cancel_requested
            || matches!(self.phase(), Some(Phase::Canceling | Phase::Canceled));
        let live_phase = matches!(self.phase(), Some(Phase::Pending | Phase::Running | Phase::Canceling));
        let reported = self.status.outcome.as_ref().map(|o| o.attempt);
        for pod in self.pods {
            if !pod.pod_live || pod.deleting {
                continue;
            }
            let current = live_phase && self.status.pod_name.as_deref() == Some(pod.name.as_str());
            // A worker that reported its outcome is exiting by itself; leave it unless deleting.
            let exiting = pod.worker.is_live() && pod.attempt.is_some() && pod.attempt == reported && !deleting;
            if current || exiting {
                continue;
            }
            let action = if canceled {
                Action::DeletePod { name: pod.name.clone() }
            } else if pod.stop_by.is_none() {
                Action::StopPod { name: pod.name.clone() }
            } else {
                continue;
            };
            if !self.actions.contains(&action) && !self.actions.contains(&Action::DeletePod { name: pod.name.clone() })
            {
                self.actions.push(action);
            }
        }
    }

    /// Whether a pod of an earlier attempt still runs, so the next attempt must wait for it: at
    /// most one attempt's worker is ever live. A pod asked to stop that is still live well past its
    /// grace period is on a node that no longer answers; it does not hold the next attempt back.
    fn previous_attempt_still_runs(&mut self) -> bool {
        let mut waits = false;
        for pod in self.pods.iter().filter(|p| p.pod_live) {
            match pod.stop_by.map(|t| add(t, LOST_NODE_MARGIN)) {
                Some(given_up) if self.now >= given_up => {}
                Some(given_up) => {
                    self.deadlines.push(given_up);
                    waits = true;
                }
                None => waits = true,
            }
        }
        waits
    }

    /// The last heartbeat of the attempt that started at `started`. A heartbeat time is the
    /// worker's clock: one later than the operator's clock plus [`MAX_CLOCK_SKEW`] is not believed
    /// (it would hold the heartbeat deadline off, for this attempt and the next ones).
    fn heartbeat_since(&self, started: Timestamp) -> Option<Timestamp> {
        let latest = add(self.now, MAX_CLOCK_SKEW);
        self.status.last_heartbeat_time.as_ref().map(|t| t.0).filter(|t| *t > started && *t <= latest)
    }

    /// A failure when the worker wrote heartbeat details or a result over the payload limit: the
    /// operator could not copy such a result into the status (etcd refuses the object), and the
    /// next attempt would start from such details. Not retried: the same worker would do it again.
    fn oversized_payload(&self) -> Option<Failure> {
        let attempt = self.attempt();
        let result = self.status.outcome.as_ref().filter(|o| o.attempt == attempt).and_then(|o| o.result.as_ref());
        let (what, size) =
            [("status.heartbeatDetails", self.status.heartbeat_details.as_ref()), ("the result", result)]
                .into_iter()
                .find_map(|(what, json)| json.map(RawJson::len).filter(|n| *n > MAX_PAYLOAD_BYTES).map(|n| (what, n)))?;
        let message = format!(
            "attempt {attempt}: the worker wrote {what} of {size} bytes; at most {MAX_PAYLOAD_BYTES} are accepted"
        );
        Some(self.failure(Reason::PayloadTooLarge.as_str(), message, true))
    }

    /// Appends the current attempt to the history, once.
    fn record_attempt_if_live(&mut self, outcome: &str, failure: Option<&Failure>) {
        let (Some(attempt), Some(pod_name)) = (self.status.attempt, self.status.pod_name.clone()) else {
            return;
        };
        if self.status.attempts.last().is_some_and(|r| r.attempt == attempt) {
            return;
        }
        self.status.attempts.push(AttemptRecord {
            attempt,
            pod_name,
            started_time: self.status.started_time.clone(),
            closed_time: time(self.now),
            outcome: outcome.to_string(),
            failure: failure.cloned(),
        });
        let excess = self.status.attempts.len().saturating_sub(ATTEMPT_HISTORY);
        self.status.attempts.drain(..excess);
    }

    fn finish(&mut self, phase: Phase, failure: Option<Failure>, result: Option<RawJson>) {
        self.status.phase = Some(phase);
        self.status.closed_time = Some(time(self.now));
        self.status.next_attempt_schedule_time = None;
        if failure.is_some() {
            self.status.last_failure = failure;
        }
        if result.is_some() {
            self.status.result = result;
        }
        let message = match (&self.status.last_failure, phase) {
            (Some(f), Phase::Failed | Phase::TimedOut) => format!("{}: {}", f.type_, f.message),
            _ => format!("activity {} after {} attempt(s)", phase.as_str().to_lowercase(), self.attempt()),
        };
        self.events.push(Event {
            warning: matches!(phase, Phase::Failed | Phase::TimedOut),
            reason: Reason::Finished(phase),
            message,
        });
    }
}

/// The standard conditions for `status`: `Running`, `Finished` and `Succeeded`, keeping
/// `lastTransitionTime` of a condition whose status did not change.
fn conditions(
    previous: &[Condition],
    status: &ActivityStatus,
    waiting: Option<&str>,
    paused_spec: bool,
    now: Timestamp,
) -> Vec<Condition> {
    let Some(phase) = status.phase else {
        return previous.to_vec();
    };
    let reason = phase.as_str().to_string();
    let terminal = phase.is_terminal();
    let running_message = match (phase, waiting) {
        (Phase::Pending, Some(w)) => format!("attempt {}: waiting for the worker: {w}", status.attempt.unwrap_or(0)),
        (Phase::Running, _) => format!("attempt {} is running", status.attempt.unwrap_or(0)),
        _ => format!("phase {reason}"),
    };
    let finished_message = match (&status.last_failure, phase) {
        (Some(f), Phase::Failed | Phase::TimedOut) => f.message.clone(),
        _ if terminal => format!("phase {reason}"),
        _ => "not finished".to_string(),
    };
    let paused = phase == Phase::Paused || (paused_spec && !terminal);
    let mut wanted = vec![
        ("Running", if phase == Phase::Running { "True" } else { "False" }, running_message),
        ("Finished", if terminal { "True" } else { "False" }, finished_message.clone()),
        (
            "Succeeded",
            match phase {
                Phase::Succeeded => "True",
                _ if terminal => "False",
                _ => "Unknown",
            },
            finished_message,
        ),
    ];
    if paused {
        let message = if phase == Phase::Paused {
            "paused: no attempt starts until spec.paused is false".to_string()
        } else {
            format!("pause requested: attempt {} stops when its worker hears of it", status.attempt.unwrap_or(0))
        };
        wanted.push(("Paused", "True", message));
    }
    // `Paused` is present only while paused.
    let managed = ["Running", "Finished", "Succeeded", "Paused"];
    // Conditions the planner does not manage (`Stalled`, set and cleared by the controller) stay.
    let others = previous.iter().filter(|c| !managed.contains(&c.type_.as_str())).cloned().collect::<Vec<_>>();
    wanted
        .into_iter()
        .map(|(type_, state, message)| {
            let old = previous.iter().find(|c| c.type_ == type_);
            let last_transition_time = match old {
                Some(c) if c.status == state => c.last_transition_time.clone(),
                _ => Time(now),
            };
            Condition {
                type_: type_.to_string(),
                status: state.to_string(),
                reason: reason.clone(),
                message,
                last_transition_time,
                observed_generation: status.observed_generation,
            }
        })
        .chain(others)
        .collect()
}

#[cfg(test)]
#[path = "planner_tests.rs"]
mod tests;
