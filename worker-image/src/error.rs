//! The errors of the worker SDK and of the `activity-worker` binary's modes.

use std::time::Duration;

/// Everything that can go wrong in a worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("environment variable {name} is not set (the operator sets it on every container of a worker pod)")]
    MissingEnv { name: &'static str },

    #[error("environment variable {name}={value:?} is invalid: {reason}")]
    InvalidEnv { name: &'static str, value: String, reason: String },

    #[error("cannot configure the Kubernetes client (set KUBECONFIG, or run in a pod with a service account): {0}")]
    ClientConfig(String),

    #[error(
        "forbidden: cannot {verb} {resource} of Activity {namespace}/{name}: {message}. The worker's service account \
         needs the Role `activity-worker` (verbs: get on activities, patch on activities/status, apiGroup heartbeat.dev) \
         bound in namespace {namespace}: see worker-image/rbac/worker-role.yaml"
    )]
    Forbidden { verb: &'static str, resource: &'static str, namespace: String, name: String, message: String },

    #[error("Activity {namespace}/{name} does not exist: {message}")]
    NotFound { namespace: String, name: String, message: String },

    #[error("cannot {action} Activity {namespace}/{name}: {message}")]
    Api { action: &'static str, namespace: String, name: String, message: String },

    #[error("gave up after {elapsed:?} trying to {action} Activity {namespace}/{name}; last error: {message}")]
    Unavailable { action: &'static str, namespace: String, name: String, elapsed: Duration, message: String },

    #[error(
        "attempt {attempt} of Activity {namespace}/{name} is superseded (status.attempt is no longer {attempt}); \
         its writes are refused: {message}"
    )]
    Superseded { attempt: i32, namespace: String, name: String, message: String },

    #[error(
        "heartbeat of Activity {namespace}/{name} could not be delivered for {undelivered_for:?}, longer than the \
         heartbeat timeout {timeout:?}; stopping (last error: {message})"
    )]
    HeartbeatUndeliverable {
        namespace: String,
        name: String,
        undelivered_for: Duration,
        timeout: Duration,
        message: String,
    },

    #[error("the outcome of attempt {attempt} has already been reported")]
    AlreadyReported { attempt: i32 },

    #[error("{what} is {size} bytes serialized, more than the limit of {limit} bytes (MAX_PAYLOAD_BYTES)")]
    PayloadTooLarge { what: &'static str, size: usize, limit: usize },

    #[error("cannot serialize {what}: {source}")]
    Serialize { what: &'static str, source: serde_json::Error },

    #[error("cannot decode {what}: {source}")]
    Deserialize { what: &'static str, source: serde_json::Error },

    #[error("invalid {field} {value:?} in the Activity: {reason}")]
    InvalidSpec { field: &'static str, value: String, reason: String },

    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

impl Error {
    /// Whether the error means the worker's attempt is over because of a cancellation
    /// (superseded by another attempt, or the Activity is gone).
    pub fn is_cancellation(&self) -> bool {
        matches!(self, Error::Superseded { .. } | Error::NotFound { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
