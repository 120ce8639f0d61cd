//! What the planner knows of a worker pod ([`PodView`]) and how an attempt's pod is named. Pure;
//! the runtime reads pods into views (`runtime::worker_pod`).

use k8s_openapi::jiff::Timestamp;

/// Longest name of a pod (its hostname is a DNS label) and of a label value.
const MAX_NAME: usize = 63;

/// Shortens `value` to at most 63 characters with a stable hash suffix when it is longer.
fn shorten(value: &str, reserve: usize) -> String {
    if value.len() + reserve <= MAX_NAME {
        return value.to_string();
    }
    let hash = format!("{:08x}", fnv1a(value.as_bytes()) as u32);
    let keep = MAX_NAME.saturating_sub(reserve + hash.len() + 1);
    let prefix: String = value.chars().take(keep).collect();
    format!("{}-{hash}", prefix.trim_end_matches(['-', '.']))
}

/// FNV-1a: a stable hash (std's hasher may change between Rust releases; pod names must not).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// Name of the pod that runs `attempt` of `activity`: `<activity>-<attempt>`, shortened with a
/// hash when longer than 63 characters. Deterministic, so a restarted operator finds it again.
pub fn pod_name(activity: &str, attempt: i32) -> String {
    let suffix = format!("-{attempt}");
    format!("{}{suffix}", shorten(activity, suffix.len()))
}

/// Value of the `heartbeat.dev/activity` label (label values are limited to 63 characters too).
pub fn activity_label(activity: &str) -> String {
    shorten(activity, 0)
}

/// What the planner needs to know about one worker pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodView {
    pub name: String,
    /// From the `heartbeat.dev/attempt` label.
    pub attempt: Option<i32>,
    /// The pod has a deletionTimestamp.
    pub deleting: bool,
    /// Some container of the pod may still run (the pod has not reached Succeeded or Failed, and
    /// either the worker or another container has not exited).
    pub pod_live: bool,
    /// When the pod was asked to stop (deleted, or stopped by the operator), plus its grace
    /// period: by then its containers should be gone.
    pub stop_by: Option<Timestamp>,
    /// The pod is being disrupted (condition `DisruptionTarget`, or evicted): its worker is about
    /// to be stopped by the cluster, not by a failure of its own.
    pub disrupted: bool,
    /// The pod carries the operator's tracking finalizer ([`TRACKING_FINALIZER`]): it cannot be
    /// removed from the API server before the operator has released it.
    pub tracked: bool,
    pub worker: WorkerState,
}

/// Finalizer every worker pod is created with. A pod deleted before its worker started would
/// otherwise vanish unseen by an operator that was down, which would then run the same attempt
/// again under the same name; the Job controller tracks its pods the same way.
pub const TRACKING_FINALIZER: &str = "heartbeat.dev/attempt-tracking";

/// State of the worker (the pod's first container).
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerState {
    /// Not started: scheduling, image pull (`reason` e.g. `ErrImagePull`), container creation.
    Waiting {
        reason: Option<String>,
        message: Option<String>,
    },
    Running {
        started_at: Option<Timestamp>,
    },
    Exited(Exit),
}

/// How the worker ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    pub exit_code: Option<i32>,
    /// Kubernetes reason: `Completed`, `Error`, `OOMKilled`, `Evicted`, `DeadlineExceeded`…
    pub reason: Option<String>,
    pub message: Option<String>,
    /// Ended by a disruption (eviction, preemption): `DisruptionTarget` condition or reason `Evicted`.
    pub disrupted: bool,
    pub started_at: Option<Timestamp>,
}

impl WorkerState {
    pub fn is_live(&self) -> bool {
        !matches!(self, WorkerState::Exited(_))
    }

    pub fn is_started(&self) -> bool {
        !matches!(self, WorkerState::Waiting { .. })
    }

    /// When the worker's container started, as the kubelet reported it (whole seconds).
    pub fn started_at(&self) -> Option<Timestamp> {
        match self {
            WorkerState::Waiting { .. } => None,
            WorkerState::Running { started_at } => *started_at,
            WorkerState::Exited(exit) => exit.started_at,
        }
    }
}

impl PodView {
    /// A pod the operator has just created and its cache does not show yet: not started.
    pub fn created(name: String, attempt: i32) -> Self {
        PodView {
            name,
            attempt: Some(attempt),
            deleting: false,
            pod_live: true,
            stop_by: None,
            disrupted: false,
            tracked: true,
            worker: WorkerState::Waiting { reason: None, message: None },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_are_deterministic_and_at_most_63_chars() {
        assert_eq!(pod_name("batch", 3), "batch-3");
        let long = "a".repeat(80);
        let n1 = pod_name(&long, 12);
        assert!(n1.len() <= 63, "{n1}");
        assert!(n1.ends_with("-12"));
        assert_eq!(n1, pod_name(&long, 12));
        let other = format!("{}b", "a".repeat(79));
        assert_ne!(pod_name(&other, 12), n1, "different activities get different pods");
        assert_eq!(pod_name(&"x".repeat(61), 1).len(), 63);
        assert_eq!(activity_label(&long).len(), 63);
    }
}
