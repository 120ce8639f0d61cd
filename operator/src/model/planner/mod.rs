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
    ATTEMPT_HISTORY, Activity, ActivityStatus, AttemptRecord, FINALIZER, Failure, Phase, RawJson, TimeoutType,
    format_duration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use activity_crds::resolved::ResolvedSpec;

use crate::model::failure::FailureType;
use crate::model::plan::{Effect, Event, Plan};
use crate::model::pod_view::PodView;
use crate::model::reason::Reason;

mod attempt;
mod conditions;
mod operations;

pub use attempt::AttemptOutcome;
use conditions::conditions;

/// Plans the next step for `activity` given its worker pods, at `now`.
pub fn plan(activity: &Activity, pods: &[PodView], now: Timestamp) -> Plan {
    let current = activity.status.clone().unwrap_or_default();
    let mut p = Planner::new(activity, pods, current.clone(), now);
    let deleting = activity.metadata.deletion_timestamp.is_some();
    let has_finalizer = activity.finalizers().iter().any(|f| f == FINALIZER);
    if deleting && !has_finalizer {
        // Not held by us: nothing to clean up, the object is going away; so are its pods.
        p.release_pods(true);
        return Plan { status: current, effects: p.effects, events: vec![], requeue_after: None };
    }
    let settings = ResolvedSpec::from_spec(&activity.spec);
    if !p.phase().is_some_and(Phase::is_terminal) || p.reset_pending(deleting) {
        if !deleting && !has_finalizer {
            p.effects.push(Effect::AddFinalizer);
        }
        match &settings {
            Ok(s) => p.advance(s, deleting),
            Err(e) => {
                let failure = p.failure(FailureType::InvalidSpec.as_str(), e.to_string(), true);
                p.events.push(Event { warning: true, reason: Reason::InvalidSpec, message: e.to_string() });
                p.finish(Phase::Failed, Some(failure), None);
            }
        }
    }
    p.stop_stray_pods(deleting);
    p.fill_late_start();
    p.release_pods(false);
    if p.phase().is_some_and(Phase::is_terminal) {
        let live = pods.iter().any(|pod| pod.pod_live);
        if has_finalizer && !(deleting && live) {
            p.effects.push(Effect::RemoveFinalizer);
        }
        let ttl = settings.as_ref().ok().and_then(|s| s.ttl_after_finished);
        if let (Some(ttl), Some(closed), false) = (ttl, p.status.closed_time.as_ref(), deleting) {
            let at = add(closed.0, ttl);
            if now >= at {
                p.effects.push(Effect::DeleteActivity);
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
    Plan { status: p.status, effects: p.effects, events: p.events, requeue_after }
}

/// The attempt's pod cannot be made: the API server refused it (e.g. an invalid template) or the
/// template does not read as a pod template. The activity fails at once with `message`, not
/// retried (the same template would be refused again).
pub fn pod_rejected(activity: &Activity, planned: &ActivityStatus, message: String, now: Timestamp) -> Plan {
    let mut p = Planner::new(activity, &[], planned.clone(), now);
    let failure = p.failure(FailureType::PodRejected.as_str(), message.clone(), true);
    p.events.push(Event { warning: true, reason: Reason::PodRejected, message });
    p.record_attempt_if_live(AttemptOutcome::Failed, Some(&failure));
    p.finish(Phase::Failed, Some(failure), None);
    let previous = activity.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    p.status.conditions = conditions(&previous, &p.status, None, activity.spec.paused, now);
    let effects =
        if activity.finalizers().iter().any(|f| f == FINALIZER) { vec![Effect::RemoveFinalizer] } else { vec![] };
    Plan { status: p.status, effects, events: p.events, requeue_after: None }
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
    effects: Vec<Effect>,
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
            effects: Vec::new(),
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
                self.record_attempt_if_live(AttemptOutcome::TimedOut, Some(&failure));
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

    /// Where scheduleToClose counts from: the last reset, else the end of the start delay.
    fn clock_start(&self, s: &ResolvedSpec) -> Timestamp {
        match &self.status.last_reset {
            Some(reset) => reset.time.0,
            None => s.start_delay.map(|d| add(self.created(), d)).unwrap_or_else(|| self.created()),
        }
    }

    /// Appends the current attempt to the history, once.
    fn record_attempt_if_live(&mut self, outcome: AttemptOutcome, failure: Option<&Failure>) {
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
            outcome: outcome.as_str().to_string(),
            failure: failure.cloned(),
        });
        let excess = self.status.attempts.len().saturating_sub(ATTEMPT_HISTORY);
        self.status.attempts.drain(..excess);
    }

    /// An attempt judged before its start was seen (a quick worker whose outcome came before the
    /// kubelet reported the container): its start is filled in once its pod says when.
    fn fill_late_start(&mut self) {
        if self.status.started_time.is_some() || matches!(self.phase(), None | Some(Phase::Pending | Phase::Running)) {
            return;
        }
        let Some(pod_name) = self.status.pod_name.clone() else { return };
        let Some(started) = self.pods.iter().find(|p| p.name == pod_name).and_then(|p| p.worker.started_at()) else {
            return;
        };
        self.status.started_time = Some(time(started));
        if let Some(record) = self.status.attempts.last_mut().filter(|r| r.pod_name == pod_name) {
            record.started_time.get_or_insert(time(started));
        }
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

#[cfg(test)]
mod tests;
