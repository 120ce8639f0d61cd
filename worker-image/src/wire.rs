//! The wire protocol between the worker and the API server: the JSON Patches of the
//! `activities/status` subresource a worker sends, and what an API error means to it.
//!
//! Every write starts with `{"op":"test","path":"/status/attempt","value":<my attempt>}`, so the
//! API server refuses the whole patch once the operator has moved on to another attempt: a zombie
//! pod of an old attempt can never write.

use std::time::Duration;

use activity_crds::{MAX_PAYLOAD_BYTES, Outcome};
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::Error;

/// HTTP status the API server answers when a JSON Patch `test` op fails, found by experiment
/// against kube-apiserver 1.36 (and checked by `tests/tests/worker.rs`): `422 Unprocessable Entity`,
/// reason `Invalid`, message "the server rejected our request due to an error in our request",
/// and empty `details` (no causes). For a worker this means "superseded": `status.attempt` is no
/// longer its attempt. A schema validation failure is also a 422, but names the invalid fields in
/// `details.causes`; it is not taken for a failed test.
pub const TEST_FAILED_STATUS: u16 = 422;

/// RFC 3339 UTC with microseconds, e.g. `2026-11-21T20:40:00.123456Z`.
pub fn format_time(ts: Timestamp) -> String {
    format!("{ts:.6}")
}

/// The `test` op that makes every write conditional on the attempt.
pub fn test_attempt(attempt: i32) -> Value {
    json!({"op": "test", "path": "/status/attempt", "value": attempt})
}

/// The ops of a heartbeat (without the leading `test`).
pub fn heartbeat_ops(time: Timestamp, details: &Value) -> [Value; 2] {
    [
        json!({"op": "add", "path": "/status/lastHeartbeatTime", "value": format_time(time)}),
        json!({"op": "add", "path": "/status/heartbeatDetails", "value": details}),
    ]
}

/// A heartbeat: test the attempt, set `lastHeartbeatTime` and `heartbeatDetails`.
pub fn heartbeat_patch(attempt: i32, time: Timestamp, details: &Value) -> Value {
    let [a, b] = heartbeat_ops(time, details);
    Value::Array(vec![test_attempt(attempt), a, b])
}

/// An outcome: test the attempt, the flushed heartbeat (when details were pending), the outcome.
pub fn outcome_patch(
    attempt: i32,
    time: Timestamp,
    flushed: Option<&Value>,
    outcome: &Outcome,
) -> Result<Value, Error> {
    let mut ops = vec![test_attempt(attempt)];
    if let Some(details) = flushed {
        ops.extend(heartbeat_ops(time, details));
    }
    let outcome = serde_json::to_value(outcome).map_err(|source| Error::Serialize { what: "outcome", source })?;
    ops.push(json!({"op": "add", "path": "/status/outcome", "value": outcome}));
    Ok(Value::Array(ops))
}

/// Serializes `value` to JSON, refusing more than [`MAX_PAYLOAD_BYTES`].
pub fn to_payload<T: Serialize + ?Sized>(what: &'static str, value: &T) -> Result<Value, Error> {
    let bytes = serde_json::to_vec(value).map_err(|source| Error::Serialize { what, source })?;
    check_size(what, bytes.len())?;
    serde_json::from_slice(&bytes).map_err(|source| Error::Serialize { what, source })
}

/// Refuses a payload of `size` serialized bytes when it exceeds [`MAX_PAYLOAD_BYTES`].
pub fn check_size(what: &'static str, size: usize) -> Result<(), Error> {
    if size > MAX_PAYLOAD_BYTES {
        return Err(Error::PayloadTooLarge { what, size, limit: MAX_PAYLOAD_BYTES });
    }
    Ok(())
}

/// What a failed API request means to the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiFailure {
    /// The `test` op failed: another attempt owns the activity now. Never retried.
    Superseded(String),
    /// 403: the service account lacks a permission.
    Forbidden(String),
    /// 404: the Activity is gone.
    NotFound(String),
    /// 409, 429, 5xx, timeouts and connection errors: retry after the given delay (the server's
    /// Retry-After for 429), or with backoff when `None`.
    Retryable { retry_after: Option<Duration>, message: String },
    /// Anything else (400, 401, 422 validation…): not retried.
    Fatal(String),
}

/// Default wait after a 429 that names no Retry-After.
pub const TOO_MANY_REQUESTS_WAIT: Duration = Duration::from_secs(1);

/// Classifies an API status code, with its message, the server's retry-after seconds, and
/// whether the status names causes (invalid fields).
pub fn classify_status(code: u16, message: &str, retry_after_seconds: u32, has_causes: bool) -> ApiFailure {
    let message = message.to_string();
    match code {
        TEST_FAILED_STATUS if !has_causes => ApiFailure::Superseded(message),
        403 => ApiFailure::Forbidden(message),
        404 => ApiFailure::NotFound(message),
        429 => ApiFailure::Retryable {
            retry_after: Some(match retry_after_seconds {
                0 => TOO_MANY_REQUESTS_WAIT,
                s => Duration::from_secs(u64::from(s)),
            }),
            message,
        },
        409 | 500..=599 => ApiFailure::Retryable { retry_after: None, message },
        _ => ApiFailure::Fatal(message),
    }
}

/// Classifies a client error: API statuses by code, transport errors as retryable.
pub fn classify(err: &kube::Error) -> ApiFailure {
    match err {
        kube::Error::Api(status) => {
            let retry_after = status.details.as_ref().map(|d| d.retry_after_seconds).unwrap_or(0);
            let has_causes = status.details.as_ref().is_some_and(|d| !d.causes.is_empty());
            let mut message = status.message.clone();
            if let Some(details) = &status.details {
                for cause in &details.causes {
                    message.push_str(&format!("; {}", cause.message));
                }
            }
            classify_status(status.code, &message, retry_after, has_causes)
        }
        other => ApiFailure::Retryable { retry_after: None, message: other.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use activity_crds::WorkerFailure;

    fn ts() -> Timestamp {
        "2026-11-21T20:40:00.123456789Z".parse().unwrap()
    }

    #[test]
    fn time_has_microseconds_in_utc() {
        assert_eq!(format_time(ts()), "2026-11-21T20:40:00.123456Z");
        let whole: Timestamp = "2026-11-21T20:40:00Z".parse().unwrap();
        assert_eq!(format_time(whole), "2026-11-21T20:40:00.000000Z");
    }

    #[test]
    fn heartbeat_patch_tests_the_attempt_first() {
        let p = heartbeat_patch(3, ts(), &json!({"lastItem": 2, "progress": "3/10"}));
        assert_eq!(
            p,
            json!([
                {"op": "test", "path": "/status/attempt", "value": 3},
                {"op": "add", "path": "/status/lastHeartbeatTime", "value": "2026-11-21T20:40:00.123456Z"},
                {"op": "add", "path": "/status/heartbeatDetails", "value": {"lastItem": 2, "progress": "3/10"}},
            ])
        );
        // It is a valid JSON Patch.
        let _: json_patch::Patch = serde_json::from_value(p).unwrap();
    }

    #[test]
    fn outcome_patch_flushes_pending_details() {
        let outcome = Outcome {
            attempt: 2,
            succeeded: false,
            result: None,
            failure: Some(WorkerFailure {
                type_: "BatchInterrupted".into(),
                message: "m".into(),
                non_retryable: false,
                next_retry_delay: None,
            }),
            canceled: false,
            cause: None,
        };
        let p = outcome_patch(2, ts(), Some(&json!({"lastItem": 5})), &outcome).unwrap();
        assert_eq!(
            p,
            json!([
                {"op": "test", "path": "/status/attempt", "value": 2},
                {"op": "add", "path": "/status/lastHeartbeatTime", "value": "2026-11-21T20:40:00.123456Z"},
                {"op": "add", "path": "/status/heartbeatDetails", "value": {"lastItem": 5}},
                {"op": "add", "path": "/status/outcome", "value": {
                    "attempt": 2, "succeeded": false,
                    "failure": {"type": "BatchInterrupted", "message": "m", "nonRetryable": false}}},
            ])
        );
        let ok = Outcome {
            attempt: 1,
            succeeded: true,
            result: activity_crds::RawJson::from_value(&json!({"processed": 10})).ok(),
            failure: None,
            canceled: false,
            cause: None,
        };
        let p = outcome_patch(1, ts(), None, &ok).unwrap();
        assert_eq!(
            p,
            json!([
                {"op": "test", "path": "/status/attempt", "value": 1},
                {"op": "add", "path": "/status/outcome", "value": {"attempt": 1, "succeeded": true, "result": {"processed": 10}}},
            ])
        );
        let canceled =
            Outcome { attempt: 1, succeeded: false, result: None, failure: None, canceled: true, cause: None };
        let p = outcome_patch(1, ts(), None, &canceled).unwrap();
        assert_eq!(p[1]["value"], json!({"attempt": 1, "succeeded": false, "canceled": true}));
    }

    #[test]
    fn payloads_over_the_limit_are_refused() {
        assert!(to_payload("details", &json!({"a": "x".repeat(100)})).is_ok());
        let big = "x".repeat(MAX_PAYLOAD_BYTES);
        let err = to_payload("heartbeat details", &json!({ "a": big })).unwrap_err();
        assert!(matches!(err, Error::PayloadTooLarge { size, .. } if size == MAX_PAYLOAD_BYTES + 8));
        assert!(err.to_string().contains("heartbeat details"), "{err}");
        assert!(err.to_string().contains("16384"), "{err}");
        // Exactly at the limit is fine.
        let exact = "x".repeat(MAX_PAYLOAD_BYTES - 2);
        assert!(to_payload("result", &json!(exact)).is_ok());
    }

    #[test]
    fn api_errors_are_classified() {
        assert!(matches!(classify_status(422, "test failed", 0, false), ApiFailure::Superseded(_)));
        assert!(matches!(classify_status(403, "no", 0, false), ApiFailure::Forbidden(_)));
        assert!(matches!(classify_status(404, "gone", 0, false), ApiFailure::NotFound(_)));
        assert_eq!(
            classify_status(429, "slow down", 7, false),
            ApiFailure::Retryable { retry_after: Some(Duration::from_secs(7)), message: "slow down".into() }
        );
        assert_eq!(
            classify_status(429, "slow down", 0, false),
            ApiFailure::Retryable { retry_after: Some(TOO_MANY_REQUESTS_WAIT), message: "slow down".into() }
        );
        for code in [409, 500, 503, 504] {
            assert!(
                matches!(classify_status(code, "", 0, false), ApiFailure::Retryable { retry_after: None, .. }),
                "{code}"
            );
        }
        // A schema validation failure names its causes: not a failed test.
        assert!(matches!(classify_status(422, "is invalid", 0, true), ApiFailure::Fatal(_)));
        for code in [400, 401, 415] {
            assert!(matches!(classify_status(code, "", 0, false), ApiFailure::Fatal(_)), "{code}");
        }
    }
}
