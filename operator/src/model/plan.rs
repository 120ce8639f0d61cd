//! What the planner hands the runtime: the desired status, the effects to carry out, the Events
//! to record and when to look again. Plain data; nothing here talks to the API server.

use std::time::Duration;

use activity_crds::ActivityStatus;

use crate::model::reason::Reason;

/// One effect the runtime carries out after writing the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
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
    /// Remove the tracking finalizer from this pod: what the status must know of it is written.
    ReleasePod {
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

impl Event {
    pub fn normal(reason: Reason, message: String) -> Self {
        Event { warning: false, reason, message }
    }

    pub fn warning(reason: Reason, message: String) -> Self {
        Event { warning: true, reason, message }
    }
}

/// The result of planning.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The whole desired status (worker-owned fields carried over unchanged).
    pub status: ActivityStatus,
    pub effects: Vec<Effect>,
    pub events: Vec<Event>,
    /// When to look again: the nearest deadline, if any.
    pub requeue_after: Option<Duration>,
}

impl Plan {
    pub fn has(&self, effect: &Effect) -> bool {
        self.effects.contains(effect)
    }

    /// The pods this plan creates, by attempt.
    pub fn creates_a_pod(&self) -> bool {
        self.effects.iter().any(|e| matches!(e, Effect::CreatePod { .. }))
    }
}
