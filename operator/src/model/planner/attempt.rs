//! Judging the current attempt: the worker's outcome, its pod, its deadlines, and what a failure
//! leads to (a retry after backoff, a disruption retried at once, or the end).

use std::time::Duration;

use activity_crds::resolved::ResolvedSpec;
use activity_crds::{
    Failure, MAX_PAYLOAD_BYTES, Outcome, Phase, RawJson, StopCause, TimeoutType, format_duration, parse_duration,
};
use k8s_openapi::jiff::Timestamp;

use super::{MAX_CLOCK_SKEW, Planner, ROUTINE_WAITING, add, time};
use crate::model::failure::FailureType;
use crate::model::freshness::current_outcome;
use crate::model::plan::{Effect, Event};
use crate::model::pod_view::{Exit, PodView, WorkerState, pod_name};
use crate::model::reason::Reason;

/// How an attempt ended, as its `status.attempts[].outcome` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Succeeded,
    Failed,
    TimedOut,
    Canceled,
    /// Stopped by a pause; not counted toward maximumAttempts.
    Paused,
    /// Stopped by a reset; not counted either.
    Reset,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Succeeded => Phase::Succeeded.as_str(),
            AttemptOutcome::Failed => Phase::Failed.as_str(),
            AttemptOutcome::TimedOut => Phase::TimedOut.as_str(),
            AttemptOutcome::Canceled => Phase::Canceled.as_str(),
            AttemptOutcome::Paused => Phase::Paused.as_str(),
            AttemptOutcome::Reset => "Reset",
        }
    }
}

/// The worker's waiting reason when it is news: the routine steps of every start (container
/// creation) would cost a status write per attempt and tell the user nothing; reasons that mean
/// trouble (ErrImagePull, CreateContainerConfigError…) are shown in the Running condition.
fn notable_waiting(reason: Option<String>, message: Option<String>) -> Option<String> {
    reason.filter(|r| !ROUTINE_WAITING.contains(&r.as_str())).map(|r| match message {
        Some(m) => format!("{r}: {m}"),
        None => r,
    })
}

impl Planner<'_> {
    /// Pending or Running: judge the current attempt from the worker's outcome, its pod and the deadlines.
    pub(super) fn check_attempt(&mut self, s: &ResolvedSpec) {
        if let Some(failure) = self.oversized_payload() {
            return self.fail_attempt(s, failure);
        }
        if let Some(outcome) = current_outcome(&self.status).cloned() {
            // An attempt can report before its start was ever seen (a quick worker): its pod
            // still says when it started, for the history and `kubectl activity describe`.
            if self.status.started_time.is_none() {
                let started = self.current_pod().and_then(|p| p.worker.started_at());
                self.status.started_time = started.map(time);
            }
            return self.judge_outcome(s, outcome);
        }
        let Some(pod) = self.current_pod().cloned() else {
            return self.pod_missing(s);
        };
        if pod.disrupted && pod.worker.is_live() {
            // Evicted or preempted: the pod may be gone before its exit is seen.
            let failure = self.failure(
                FailureType::Evicted.as_str(),
                format!(
                    "attempt {}: the worker pod is being disrupted (eviction, preemption or node loss)",
                    self.attempt()
                ),
                false,
            );
            return self.fail_disrupted(s, failure);
        }
        if pod.deleting && !pod.worker.is_started() && self.status.started_time.is_none() {
            // Deleted before its worker started (by hand, or its namespace going): the attempt is
            // spent, as a pod deleted while running is; running it again could run it twice.
            let failure = self.failure(
                FailureType::PodDeleted.as_str(),
                format!("attempt {}: the worker pod was deleted before its worker started", self.attempt()),
                false,
            );
            return self.fail_attempt(s, failure);
        }
        match pod.worker.clone() {
            WorkerState::Waiting { reason, message } => {
                self.waiting = notable_waiting(reason, message);
                self.arm_schedule_to_start(s);
            }
            WorkerState::Running { started_at } => self.worker_running(s, &pod, started_at),
            WorkerState::Exited(exit) => self.worker_exited(s, &pod, &exit),
        }
    }

    /// The worker reported how its attempt ended.
    pub(super) fn judge_outcome(&mut self, s: &ResolvedSpec, outcome: Outcome) {
        if outcome.succeeded {
            self.record_attempt_if_live(AttemptOutcome::Succeeded, None);
            return self.finish(Phase::Succeeded, None, outcome.result);
        }
        if outcome.canceled && outcome.cause == Some(StopCause::Paused) && self.pausing {
            // The worker stopped when its heartbeat reply said Paused: not counted.
            self.record_attempt_if_live(AttemptOutcome::Paused, None);
            return self.enter_paused();
        }
        let failure = match outcome.failure {
            Some(f) => {
                self.next_retry_delay = f.next_retry_delay.as_deref().and_then(|d| parse_duration(d).ok());
                let non_retryable = f.non_retryable;
                self.failure(&f.type_, f.message, non_retryable)
            }
            None if outcome.canceled => self.failure(
                FailureType::WorkerCanceled.as_str(),
                "the worker stopped on a cancellation the operator did not request (its pod was deleted or sent SIGTERM)"
                    .into(),
                false,
            ),
            None => self.failure(FailureType::WorkerFailed.as_str(), "the worker reported a failure without details".into(), false),
        };
        self.fail_attempt(s, failure)
    }

    /// The attempt's pod is not there: deleted while it ran, or not created (or not seen) yet.
    pub(super) fn pod_missing(&mut self, s: &ResolvedSpec) {
        if self.status.started_time.is_some() {
            let failure = self.failure(
                FailureType::PodDeleted.as_str(),
                "the worker pod disappeared while it was running".into(),
                false,
            );
            return self.fail_attempt(s, failure);
        }
        // Not seen yet (or deleted before it started): (re)create it under the same name.
        self.effects.push(Effect::CreatePod { attempt: self.attempt() });
        self.arm_schedule_to_start(s)
    }

    /// A disrupted attempt is retried at once while the budget of disruptions lasts.
    pub(super) fn fail_disrupted(&mut self, s: &ResolvedSpec, failure: Failure) {
        if self.disruptions() < s.retry.maximum_disruptions {
            self.retry_disrupted(s, failure)
        } else {
            self.fail_attempt(s, failure)
        }
    }

    pub(super) fn worker_running(&mut self, s: &ResolvedSpec, pod: &PodView, started_at: Option<Timestamp>) {
        if self.phase() != Some(Phase::Running) || self.status.started_time.is_none() {
            self.status.phase = Some(Phase::Running);
            // The API's startedAt has whole seconds; the true start lies within the second
            // after it, and not after now: never count the start earlier than it was.
            let started = started_at.map(|t| add(t, Duration::from_secs(1)).min(self.now)).unwrap_or(self.now);
            self.status.started_time = Some(time(started));
        }
        self.arm_running_deadlines(s);
        if self.pausing && self.phase() == Some(Phase::Running) {
            self.stop_when_told_and_grace_ran_out(s, pod, self.paused_since());
        }
    }

    pub(super) fn worker_exited(&mut self, s: &ResolvedSpec, pod: &PodView, exit: &Exit) {
        if self.status.started_time.is_none() {
            self.status.started_time = exit.started_at.map(time);
        }
        match self.judge_exit(exit) {
            None => {
                self.record_attempt_if_live(AttemptOutcome::Succeeded, None);
                self.finish(Phase::Succeeded, None, None);
            }
            Some(failure) if exit.disrupted && self.disruptions() < s.retry.maximum_disruptions => {
                self.retry_disrupted(s, failure)
            }
            Some(failure) if self.pausing && pod.stop_by.is_some() => {
                // Stopped by the operator because the pause's grace ran out: not counted.
                self.status.last_failure = Some(failure);
                self.record_attempt_if_live(AttemptOutcome::Paused, None);
                self.enter_paused();
            }
            Some(failure) => self.fail_attempt(s, failure),
        }
    }

    pub(super) fn arm_schedule_to_start(&mut self, s: &ResolvedSpec) {
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
            self.record_attempt_if_live(AttemptOutcome::TimedOut, Some(&failure));
            self.timed_out_for_good(failure);
        } else {
            self.deadlines.push(deadline);
        }
    }

    /// A timeout that is never retried (schedule-to-start, schedule-to-close): its Event, then
    /// the end.
    pub(super) fn timed_out_for_good(&mut self, failure: Failure) {
        if let Some(kind) = failure.timeout_type {
            self.events.push(Event { warning: true, reason: Reason::TimedOut(kind), message: failure.message.clone() });
        }
        self.finish(Phase::TimedOut, Some(failure), None);
    }

    pub(super) fn arm_running_deadlines(&mut self, s: &ResolvedSpec) {
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
    pub(super) fn counted_before(&self) -> i32 {
        let base = self.status.last_reset.as_ref().map(|r| r.attempt).unwrap_or(1);
        self.status.counted_attempts.unwrap_or_else(|| self.attempt().saturating_sub(base).max(0))
    }

    pub(super) fn disruptions(&self) -> i32 {
        self.status.disruptions.unwrap_or(0)
    }

    /// A disrupted attempt (eviction, preemption, node loss): the next starts at once and this one
    /// does not count toward maximumAttempts.
    pub(super) fn retry_disrupted(&mut self, s: &ResolvedSpec, failure: Failure) {
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
        self.record_attempt_if_live(AttemptOutcome::Failed, Some(&failure));
        self.status.last_failure = Some(failure);
        self.status.phase = Some(Phase::BackingOff);
        self.status.next_attempt_schedule_time = Some(time(self.now));
        self.deadlines.push(self.now);
    }

    /// `None` = success (exit 0 without an outcome counts as success with no result).
    pub(super) fn judge_exit(&self, exit: &Exit) -> Option<Failure> {
        let attempt = self.attempt();
        let (type_, message) = if exit.disrupted {
            let why = exit.message.clone().unwrap_or_else(|| "evicted or preempted".into());
            (FailureType::Evicted, format!("attempt {attempt}: the worker pod was disrupted: {why}"))
        } else if exit.reason.as_deref() == Some("OOMKilled") {
            (FailureType::OomKilled, format!("attempt {attempt}: the worker ran out of memory (OOMKilled)"))
        } else {
            match exit.exit_code {
                Some(0) => return None,
                Some(code) => (FailureType::ExitCode, format!("attempt {attempt}: the worker exited with code {code}")),
                None => {
                    let why = exit.message.clone().or(exit.reason.clone()).unwrap_or_else(|| "unknown reason".into());
                    (FailureType::PodFailed, format!("attempt {attempt}: the worker pod failed: {why}"))
                }
            }
        };
        let message = match (type_, exit.exit_code) {
            (FailureType::OomKilled | FailureType::Evicted, Some(code)) => format!("{message} (exit code {code})"),
            _ => message,
        };
        Some(Failure {
            exit_code: exit.exit_code,
            reason: exit.reason.clone(),
            ..self.failure(type_.as_str(), message, false)
        })
    }

    /// The current attempt failed: retry after backoff, or finish.
    pub(super) fn fail_attempt(&mut self, s: &ResolvedSpec, mut failure: Failure) {
        let timed_out = failure.timeout_type.is_some();
        let outcome = if timed_out { AttemptOutcome::TimedOut } else { AttemptOutcome::Failed };
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
        let exit_code_listed = failure.type_ == FailureType::ExitCode.as_str()
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
        self.schedule_retry(s, failure, counted);
    }

    /// The next attempt after the backoff (or the worker's `nextRetryDelay`), unless it would start
    /// after the scheduleToClose deadline.
    pub(super) fn schedule_retry(&mut self, s: &ResolvedSpec, failure: Failure, counted: i32) {
        let attempt = self.attempt();
        let delay = self.next_retry_delay.unwrap_or_else(|| s.retry.delay_after(counted));
        let next = add(self.now, delay);
        if let Some(limit) = s.schedule_to_close
            && next >= add(self.clock_start(s), limit)
        {
            let stop = self.timeout_failure(
                TimeoutType::ScheduleToClose,
                format!(
                    "no retry: attempt {} would start after the scheduleToCloseTimeout {} deadline; last failure: {}",
                    attempt + 1,
                    format_duration(limit),
                    failure.message
                ),
            );
            return self.timed_out_for_good(stop);
        }
        self.status.last_failure = Some(failure);
        self.status.phase = Some(Phase::BackingOff);
        self.status.next_attempt_schedule_time = Some(time(next));
        self.deadlines.push(next);
        self.events.push(Event::normal(
            Reason::RetryScheduled,
            format!("attempt {} starts in {}", attempt + 1, format_duration(delay)),
        ));
    }

    /// The last heartbeat of the attempt that started at `started`. A heartbeat time is the
    /// worker's clock: one later than the operator's clock plus [`MAX_CLOCK_SKEW`] is not believed
    /// (it would hold the heartbeat deadline off, for this attempt and the next ones).
    pub(super) fn heartbeat_since(&self, started: Timestamp) -> Option<Timestamp> {
        let latest = add(self.now, MAX_CLOCK_SKEW);
        self.status.last_heartbeat_time.as_ref().map(|t| t.0).filter(|t| *t > started && *t <= latest)
    }

    /// A failure when the worker wrote heartbeat details or a result over the payload limit: the
    /// operator could not copy such a result into the status (etcd refuses the object), and the
    /// next attempt would start from such details. Not retried: the same worker would do it again.
    pub(super) fn oversized_payload(&self) -> Option<Failure> {
        let attempt = self.attempt();
        let result = current_outcome(&self.status).and_then(|o| o.result.as_ref());
        let (what, size) =
            [("status.heartbeatDetails", self.status.heartbeat_details.as_ref()), ("the result", result)]
                .into_iter()
                .find_map(|(what, json)| json.map(RawJson::len).filter(|n| *n > MAX_PAYLOAD_BYTES).map(|n| (what, n)))?;
        let message = format!(
            "attempt {attempt}: the worker wrote {what} of {size} bytes; at most {MAX_PAYLOAD_BYTES} are accepted"
        );
        Some(self.failure(FailureType::PayloadTooLarge.as_str(), message, true))
    }

    pub(super) fn timeout_failure(&self, kind: TimeoutType, message: String) -> Failure {
        Failure {
            timeout_type: Some(kind),
            non_retryable: !kind.is_retryable(),
            ..self.failure(FailureType::Timeout.as_str(), message, false)
        }
    }

    pub(super) fn start_attempt(&mut self, s: &ResolvedSpec, attempt: i32) {
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
        self.effects.push(Effect::CreatePod { attempt });
        if let Some(limit) = s.schedule_to_start {
            self.deadlines.push(add(self.now, limit));
        }
    }
}
