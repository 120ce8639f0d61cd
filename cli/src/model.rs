//! What the plugin reads of an Activity, taken leniently from its JSON.
//!
//! The plugin reads the object as raw JSON rather than as `activity_crds::Activity`, so that it
//! keeps working against operators that are newer or older than itself: a phase it does not know
//! (`Paused`, `Scheduled`) or a field it does not know (`spec.paused`, `status.lastReset`) is shown
//! as it is, never a decoding error.

use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;

/// Phases after which nothing more happens to an activity.
pub const TERMINAL_PHASES: [&str; 4] = ["Succeeded", "Failed", "TimedOut", "Canceled"];

/// One Activity, as the plugin shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ActivityState {
    pub namespace: String,
    pub name: String,
    pub created: Option<Timestamp>,
    pub deleting: bool,
    pub paused: bool,
    pub cancel_requested: bool,
    pub maximum_attempts: Option<i64>,
    pub phase: Option<String>,
    pub attempt: Option<i64>,
    pub pod_name: Option<String>,
    pub scheduled_time: Option<Timestamp>,
    pub started_time: Option<Timestamp>,
    pub closed_time: Option<Timestamp>,
    pub last_heartbeat_time: Option<Timestamp>,
    pub heartbeat_details: Option<Value>,
    pub next_attempt_schedule_time: Option<Timestamp>,
    pub last_failure: Option<FailureView>,
    pub result: Option<Value>,
    pub attempts: Vec<AttemptView>,
}

/// A failure (`status.lastFailure`, or an attempt's).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FailureView {
    pub attempt: Option<i64>,
    #[serde(rename = "type")]
    pub type_: String,
    pub message: String,
    pub non_retryable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl FailureView {
    fn from_value(v: &Value) -> Option<Self> {
        v.as_object()?;
        Some(FailureView {
            attempt: v.get("attempt").and_then(Value::as_i64),
            type_: str_of(v, "type").unwrap_or_default(),
            message: str_of(v, "message").unwrap_or_default(),
            non_retryable: v.get("nonRetryable").and_then(Value::as_bool).unwrap_or(false),
            timeout_type: str_of(v, "timeoutType"),
            exit_code: v.get("exitCode").and_then(Value::as_i64),
            reason: str_of(v, "reason"),
        })
    }

    /// `Type: message`, with the timeout type or exit code when they add something.
    pub fn summary(&self) -> String {
        let mut s = match (self.type_.is_empty(), self.message.is_empty()) {
            (false, false) => format!("{}: {}", self.type_, self.message),
            (false, true) => self.type_.clone(),
            (true, _) => self.message.clone(),
        };
        if let Some(t) = &self.timeout_type
            && !s.contains(t.as_str())
        {
            s.push_str(&format!(" ({t})"));
        }
        if self.non_retryable {
            s.push_str(" [non-retryable]");
        }
        s
    }
}

/// One finished attempt (`status.attempts[]`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AttemptView {
    pub attempt: i64,
    pub pod_name: String,
    pub started_time: Option<Timestamp>,
    pub closed_time: Option<Timestamp>,
    pub outcome: String,
    pub failure: Option<FailureView>,
}

fn str_of(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

fn time_of(v: &Value, key: &str) -> Option<Timestamp> {
    v.get(key).and_then(Value::as_str).and_then(|s| s.parse::<Timestamp>().ok())
}

impl ActivityState {
    /// Reads an Activity object (as JSON); fields that are missing or of another shape are left empty.
    pub fn from_value(obj: &Value) -> Self {
        let meta = obj.get("metadata").unwrap_or(&Value::Null);
        let spec = obj.get("spec").unwrap_or(&Value::Null);
        let status = obj.get("status").unwrap_or(&Value::Null);
        let attempts = status
            .get("attempts")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|a| {
                        Some(AttemptView {
                            attempt: a.get("attempt").and_then(Value::as_i64)?,
                            pod_name: str_of(a, "podName").unwrap_or_default(),
                            started_time: time_of(a, "startedTime"),
                            closed_time: time_of(a, "closedTime"),
                            outcome: str_of(a, "outcome").unwrap_or_default(),
                            failure: a.get("failure").and_then(FailureView::from_value),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        ActivityState {
            namespace: str_of(meta, "namespace").unwrap_or_default(),
            name: str_of(meta, "name").unwrap_or_default(),
            created: time_of(meta, "creationTimestamp"),
            deleting: meta.get("deletionTimestamp").is_some_and(|d| !d.is_null()),
            paused: spec.get("paused").and_then(Value::as_bool).unwrap_or(false),
            cancel_requested: spec.get("cancelRequested").and_then(Value::as_bool).unwrap_or(false),
            maximum_attempts: spec.get("retryPolicy").and_then(|r| r.get("maximumAttempts")).and_then(Value::as_i64),
            phase: str_of(status, "phase"),
            attempt: status.get("attempt").and_then(Value::as_i64),
            pod_name: str_of(status, "podName"),
            scheduled_time: time_of(status, "scheduledTime"),
            started_time: time_of(status, "startedTime"),
            closed_time: time_of(status, "closedTime"),
            last_heartbeat_time: time_of(status, "lastHeartbeatTime"),
            heartbeat_details: status.get("heartbeatDetails").filter(|d| !d.is_null()).cloned(),
            next_attempt_schedule_time: time_of(status, "nextAttemptScheduleTime"),
            last_failure: status.get("lastFailure").and_then(FailureView::from_value),
            result: status.get("result").filter(|d| !d.is_null()).cloned(),
            attempts,
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether the activity has finished for good.
    pub fn is_finished(&self) -> bool {
        self.phase.as_deref().is_some_and(|p| TERMINAL_PHASES.contains(&p))
    }

    pub fn succeeded(&self) -> bool {
        self.phase.as_deref() == Some("Succeeded")
    }

    /// The progress in the heartbeat details, when the worker sends one.
    pub fn progress(&self) -> Option<Progress> {
        self.heartbeat_details.as_ref().and_then(Progress::from_details)
    }
}

/// `done` of `total` units, from the heartbeat details' `progress`: `"N/M"` or `{"done": N, "total": M}`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    pub done: f64,
    pub total: f64,
}

impl Progress {
    pub fn from_details(details: &Value) -> Option<Progress> {
        let p = details.get("progress")?;
        let (done, total) = match p {
            Value::String(s) => {
                let (d, t) = s.split_once('/')?;
                (d.trim().parse::<f64>().ok()?, t.trim().parse::<f64>().ok()?)
            }
            Value::Object(o) => (o.get("done")?.as_f64()?, o.get("total")?.as_f64()?),
            _ => return None,
        };
        (done.is_finite() && total.is_finite() && done >= 0.0 && total > 0.0).then_some(Progress { done, total })
    }

    /// Done as a fraction of total, within 0..=1.
    pub fn fraction(&self) -> f64 {
        (self.done / self.total).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn progress_forms() {
        let p = |v: Value| Progress::from_details(&json!({ "progress": v }));
        assert_eq!(p(json!("3/10")), Some(Progress { done: 3.0, total: 10.0 }));
        assert_eq!(p(json!(" 3 / 10 ")), Some(Progress { done: 3.0, total: 10.0 }));
        assert_eq!(p(json!({"done": 5, "total": 8})), Some(Progress { done: 5.0, total: 8.0 }));
        assert_eq!(p(json!("3/0")), None);
        assert_eq!(p(json!("-1/10")), None);
        assert_eq!(p(json!("three/ten")), None);
        assert_eq!(p(json!(0.5)), None);
        assert_eq!(Progress::from_details(&json!({"step": 3})), None);
        assert_eq!(Progress { done: 12.0, total: 10.0 }.fraction(), 1.0);
    }

    #[test]
    fn lenient_read() {
        let a = ActivityState::from_value(&json!({
            "metadata": {"name": "a", "namespace": "ns", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"paused": true, "retryPolicy": {"maximumAttempts": 3}},
            "status": {"phase": "Paused", "attempt": "not a number", "startedTime": "yesterday",
                       "lastFailure": {"attempt": 1, "type": "ExitCode", "message": "command exited with code 3", "exitCode": 3},
                       "attempts": [{"attempt": 1, "podName": "a-1", "closedTime": "2026-01-01T00:00:05.5Z", "outcome": "Failed"}, {"bogus": 1}]}
        }));
        assert_eq!(a.key(), "ns/a");
        assert!(a.paused);
        assert_eq!(a.phase.as_deref(), Some("Paused"));
        assert_eq!(a.attempt, None);
        assert_eq!(a.started_time, None);
        assert_eq!(a.maximum_attempts, Some(3));
        assert_eq!(a.attempts.len(), 1);
        assert!(!a.is_finished());
        assert_eq!(a.last_failure.map(|f| f.summary()).as_deref(), Some("ExitCode: command exited with code 3"));
        assert_eq!(ActivityState::from_value(&json!(null)), ActivityState::default());
    }
}
