//! The reasons of the operator's Events and conditions: one variant per meaning, so the metrics
//! match on a type (a renamed reason is a compile error, not a counter silently at zero).

use activity_crds::{Phase, TimeoutType};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// An attempt's pod was created.
    AttemptStarted,
    /// An attempt failed and will be judged for a retry.
    AttemptFailed,
    /// The next attempt is scheduled after the backoff.
    RetryScheduled,
    /// A deadline lapsed.
    TimedOut(TimeoutType),
    /// A cancel was requested (deletion or `spec.cancelRequested`).
    CancelRequested,
    /// The worker did not stop within `cancellationGracePeriod`: its pod is deleted.
    CancellationGraceExpired,
    /// The API server did not create an attempt's pod this time; it is tried again.
    PodCreateFailed,
    /// The attempt's pod can never be created (an invalid template): the activity fails.
    PodRejected,
    /// The worker service account of the namespace does not exist: no pod can start.
    WorkerServiceAccountMissing,
    /// The operator's own credentials lack a permission it needs.
    Forbidden,
    /// Another API error keeps the operator from moving the activity on.
    ApiError,
    /// The spec cannot run (it got past the schema, e.g. stored under an older one).
    InvalidSpec,
    /// A worker wrote more than the payload limit (heartbeat details or a result).
    PayloadTooLarge,
    /// `spec.paused` took effect: no attempt starts.
    Paused,
    /// `spec.paused` was cleared: the next attempt starts.
    Unpaused,
    /// A reset was done: a fresh retry budget, backoff and scheduleToClose clock.
    Reset,
    /// An attempt was disrupted (eviction, preemption, node loss): retried at once, not counted.
    Disrupted,
    /// The activity reached a terminal phase.
    Finished(Phase),
}

impl Reason {
    /// The PascalCase text of Events and conditions.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::AttemptStarted => "AttemptStarted",
            Reason::AttemptFailed => "AttemptFailed",
            Reason::RetryScheduled => "RetryScheduled",
            Reason::TimedOut(TimeoutType::Heartbeat) => "HeartbeatTimedOut",
            Reason::TimedOut(TimeoutType::StartToClose) => "StartToCloseTimedOut",
            Reason::TimedOut(TimeoutType::ScheduleToStart) => "ScheduleToStartTimedOut",
            Reason::TimedOut(TimeoutType::ScheduleToClose) => "ScheduleToCloseTimedOut",
            Reason::CancelRequested => "CancelRequested",
            Reason::CancellationGraceExpired => "CancellationGraceExpired",
            Reason::PodCreateFailed => "PodCreateFailed",
            Reason::PodRejected => "PodRejected",
            Reason::WorkerServiceAccountMissing => "WorkerServiceAccountMissing",
            Reason::Forbidden => "Forbidden",
            Reason::ApiError => "APIError",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::PayloadTooLarge => "PayloadTooLarge",
            Reason::Paused => "Paused",
            Reason::Unpaused => "Unpaused",
            Reason::Reset => "Reset",
            Reason::Disrupted => "Disrupted",
            Reason::Finished(phase) => phase.as_str(),
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
