//! The operations a user asks for in the spec: cancel (deletion or `spec.cancelRequested`),
//! pause, reset; and the pods that must stop because of them.

use activity_crds::resolved::ResolvedSpec;
use activity_crds::{LastReset, Phase, format_duration};
use k8s_openapi::jiff::Timestamp;

use super::{AttemptOutcome, LOST_NODE_MARGIN, Planner, add, time};
use crate::model::freshness::{attempt_may_run, current_outcome};
use crate::model::plan::{Effect, Event};
use crate::model::pod_view::PodView;
use crate::model::reason::Reason;

impl Planner<'_> {
    /// Cancellation (deletion or `spec.cancelRequested`).
    pub(super) fn cancel(&mut self, s: &ResolvedSpec) {
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
            self.record_attempt_if_live(AttemptOutcome::Canceled, None);
            return self.finish(Phase::Canceled, None, None);
        }
        if let Some(outcome) = current_outcome(&self.status).filter(|o| o.succeeded).cloned() {
            // The worker finished before it heard of the cancel: its completion stands.
            self.record_attempt_if_live(AttemptOutcome::Succeeded, None);
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
                self.effects.push(Effect::DeletePod { name: pod.name });
            }
        } else {
            self.deadlines.push(grace_end);
        }
    }

    /// Stops every live pod that is not the current attempt's running worker. Pods are deleted only
    /// when the activity is: a stopped pod keeps its logs for `kubectl logs` until then.
    pub(super) fn stop_stray_pods(&mut self, deleting: bool) {
        // A canceled activity's pods go, as `kubectl delete` of the activity would take them.
        let canceled = deleting
            || self.activity.spec.cancel_requested
            || matches!(self.phase(), Some(Phase::Canceling | Phase::Canceled));
        let live_phase = attempt_may_run(self.phase());
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
                Effect::DeletePod { name: pod.name.clone() }
            } else if pod.stop_by.is_none() {
                Effect::StopPod { name: pod.name.clone() }
            } else {
                continue;
            };
            if !self.effects.contains(&action) && !self.effects.contains(&Effect::DeletePod { name: pod.name.clone() })
            {
                self.effects.push(action);
            }
        }
    }

    /// Releases every tracked pod but the current attempt's before its worker's start is written:
    /// that one's fate is not in the status yet (unless the Activity is going away). Runs on the
    /// planned status, which is written before any pod effect.
    pub(super) fn release_pods(&mut self, gone: bool) {
        let held = !gone && self.phase() == Some(Phase::Pending) && self.status.started_time.is_none();
        let unrecorded = held.then_some(self.status.pod_name.as_deref()).flatten();
        for pod in self.pods.iter().filter(|p| p.tracked) {
            if unrecorded != Some(pod.name.as_str()) {
                self.effects.push(Effect::ReleasePod { name: pod.name.clone() });
            }
        }
    }

    /// Whether a pod of an earlier attempt still runs, so the next attempt must wait for it: at
    /// most one attempt's worker is ever live. A pod asked to stop that is still live well past its
    /// grace period is on a node that no longer answers; it does not hold the next attempt back.
    pub(super) fn previous_attempt_still_runs(&mut self) -> bool {
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

    /// `spec.paused`: whether that decided this pass. An activity with no live worker becomes
    /// `Paused` at once; a running worker is told in its heartbeat reply and judged as usual.
    pub(super) fn pause(&mut self) -> bool {
        match self.phase() {
            Some(Phase::Running) => false,
            Some(Phase::Pending) => {
                // Not started yet: stopped (the pod is stopped as a stray), not counted.
                self.record_attempt_if_live(AttemptOutcome::Paused, None);
                self.enter_paused();
                true
            }
            _ => {
                self.enter_paused();
                true
            }
        }
    }

    pub(super) fn enter_paused(&mut self) {
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
    pub(super) fn paused_since(&self) -> Timestamp {
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
    pub(super) fn stop_when_told_and_grace_ran_out(&mut self, s: &ResolvedSpec, pod: &PodView, since: Timestamp) {
        let Some(told) = self.status.last_heartbeat_time.as_ref().map(|t| t.0).filter(|t| *t >= since) else {
            return;
        };
        let grace_end = add(told, s.cancellation_grace);
        if self.now < grace_end {
            return self.deadlines.push(grace_end);
        }
        if pod.stop_by.is_none() && !pod.deleting {
            self.effects.push(Effect::StopPod { name: pod.name.clone() });
        }
    }

    /// Whether a new `spec.reset.requestedAt` waits to be done (never while canceling or canceled).
    pub(super) fn reset_pending(&self, deleting: bool) -> bool {
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
    pub(super) fn reset(&mut self, s: &ResolvedSpec) -> bool {
        let Some(request) = self.activity.spec.reset.clone() else { return true };
        let requested_at = request.requested_at.unwrap_or_default();
        let attempt = self.attempt();
        let live = matches!(self.phase(), Some(Phase::Pending | Phase::Running));
        if live && let Some(pod) = self.current_pod().cloned().filter(|p| p.pod_live) {
            let requested = requested_at.parse::<Timestamp>().ok().filter(|t| *t <= self.now).unwrap_or(self.created());
            let grace_end = add(requested, s.cancellation_grace);
            if self.now >= grace_end {
                if pod.stop_by.is_none() && !pod.deleting {
                    self.effects.push(Effect::StopPod { name: pod.name });
                }
            } else {
                self.deadlines.push(grace_end);
            }
            return false;
        }
        if self.previous_attempt_still_runs() {
            return false;
        }
        self.record_attempt_if_live(AttemptOutcome::Reset, None);
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
}
