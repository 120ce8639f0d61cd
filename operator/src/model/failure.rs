//! The failure types the operator itself writes to `status.lastFailure.type` (a worker may write
//! any type of its own; those stay strings).

use crate::model::reason::Reason;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureType {
    /// A deadline lapsed (`timeoutType` says which).
    Timeout,
    /// The worker exited non-zero without an outcome.
    ExitCode,
    OomKilled,
    /// The attempt was disrupted (eviction, preemption, node loss).
    Evicted,
    /// The pod failed without the worker container reporting.
    PodFailed,
    /// The pod disappeared while its worker ran.
    PodDeleted,
    /// The worker stopped on a cancellation the operator did not request.
    WorkerCanceled,
    /// The worker reported a failure without details.
    WorkerFailed,
    InvalidSpec,
    PodRejected,
    PayloadTooLarge,
}

impl FailureType {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureType::Timeout => "Timeout",
            FailureType::ExitCode => "ExitCode",
            FailureType::OomKilled => "OOMKilled",
            FailureType::Evicted => "Evicted",
            FailureType::PodFailed => "PodFailed",
            FailureType::PodDeleted => "PodDeleted",
            FailureType::WorkerCanceled => "WorkerCanceled",
            FailureType::WorkerFailed => "WorkerFailed",
            FailureType::InvalidSpec => Reason::InvalidSpec.as_str(),
            FailureType::PodRejected => Reason::PodRejected.as_str(),
            FailureType::PayloadTooLarge => Reason::PayloadTooLarge.as_str(),
        }
    }
}
