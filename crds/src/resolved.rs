//! The spec of an Activity resolved into typed values with every default applied (docs/reference.md,
//! "Spec"). Parsing is where a spec that passed the schema but still cannot run is caught. The
//! operator plans from it; a worker reads its own timeouts and grace period from it too.

use std::time::Duration;

use crate::{ActivitySpec, DurationError, MAX_DURATION, MAX_PAYLOAD_BYTES, parse_duration};

/// Every setting of one Activity, defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedSpec {
    pub start_to_close: Duration,
    /// `None` when disabled (unset or `0s`).
    pub heartbeat: Option<Duration>,
    pub schedule_to_start: Option<Duration>,
    pub schedule_to_close: Option<Duration>,
    pub retry: Retry,
    pub cancellation_grace: Duration,
    pub ttl_after_finished: Option<Duration>,
    /// `spec.startDelay`: the first attempt starts this long after creation.
    pub start_delay: Option<Duration>,
}

/// The retry policy, defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    pub initial_interval: Duration,
    pub backoff_coefficient: f64,
    pub maximum_interval: Duration,
    /// 0 = unlimited.
    pub maximum_attempts: i32,
    pub non_retryable_error_types: Vec<String>,
    pub non_retryable_exit_codes: Vec<i32>,
    /// Disrupted attempts retried at once without counting; 0 counts them as failures.
    pub maximum_disruptions: i32,
}

/// Why a spec cannot run; the message names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("spec.{field}: {source}")]
    Duration {
        field: &'static str,
        #[source]
        source: DurationError,
    },
    #[error("spec.{field}: {message}")]
    Invalid { field: &'static str, message: String },
}

/// `retryPolicy.initialInterval` when unset.
pub const DEFAULT_INITIAL_INTERVAL: Duration = Duration::from_secs(1);
/// `retryPolicy.backoffCoefficient` when unset.
pub const DEFAULT_BACKOFF: f64 = 2.0;
/// `cancellationGracePeriod` when unset.
pub const DEFAULT_CANCELLATION_GRACE: Duration = Duration::from_secs(30);
/// `retryPolicy.maximumDisruptions` when unset.
pub const DEFAULT_MAXIMUM_DISRUPTIONS: i32 = 10;

/// [`MAX_DURATION`], the longest duration a spec field accepts.
pub const MAX_SPEC_DURATION: Duration = Duration::from_secs(87_600 * 3_600);

/// A spec duration, at most [`MAX_SPEC_DURATION`]. The chart's spec policy refuses a longer one at
/// apply time; this is the same bound where no policy is installed.
fn duration(field: &'static str, value: Option<&String>) -> Result<Option<Duration>, SpecError> {
    let Some(v) = value else { return Ok(None) };
    let d = parse_duration(v).map_err(|source| SpecError::Duration { field, source })?;
    if d > MAX_SPEC_DURATION {
        return Err(invalid(field, format!("{v} is longer than {MAX_DURATION} (10 years)")));
    }
    Ok(Some(d))
}

fn invalid(field: &'static str, message: impl Into<String>) -> SpecError {
    SpecError::Invalid { field, message: message.into() }
}

impl ResolvedSpec {
    /// Resolves a spec. The CRD schema (grammar, ranges) and the chart's spec policy (the 87600h
    /// bound, the rules between fields) refuse these errors at `kubectl apply`; this is the same
    /// check for objects that got past them (no policy installed, or stored under an older schema).
    pub fn from_spec(spec: &ActivitySpec) -> Result<Self, SpecError> {
        let start_to_close = duration("startToCloseTimeout", spec.start_to_close_timeout.as_ref())?;
        let schedule_to_close =
            duration("scheduleToCloseTimeout", spec.schedule_to_close_timeout.as_ref())?.filter(|d| !d.is_zero());
        let start_to_close = start_to_close.filter(|d| !d.is_zero()).or(schedule_to_close).ok_or_else(|| {
            invalid(
                "startToCloseTimeout",
                "at least one of spec.startToCloseTimeout and spec.scheduleToCloseTimeout is required",
            )
        })?;
        let heartbeat = duration("heartbeatTimeout", spec.heartbeat_timeout.as_ref())?.filter(|d| !d.is_zero());
        if let Some(hb) = heartbeat
            && hb > start_to_close
        {
            return Err(invalid("heartbeatTimeout", "must be at most startToCloseTimeout"));
        }
        let schedule_to_start =
            duration("scheduleToStartTimeout", spec.schedule_to_start_timeout.as_ref())?.filter(|d| !d.is_zero());
        let cancellation_grace = duration("cancellationGracePeriod", spec.cancellation_grace_period.as_ref())?
            .unwrap_or(DEFAULT_CANCELLATION_GRACE);
        let ttl_after_finished = match spec.ttl_seconds_after_finished {
            Some(s) if s < 0 => {
                return Err(invalid("ttlSecondsAfterFinished", "must not be negative"));
            }
            Some(s) => Some(Duration::from_secs(s.unsigned_abs())),
            None => None,
        };
        let start_delay = duration("startDelay", spec.start_delay.as_ref())?.filter(|d| !d.is_zero());
        if let Some(input) = &spec.input {
            let size = input.len();
            if size > MAX_PAYLOAD_BYTES {
                return Err(invalid("input", format!("is {size} bytes serialized; at most {MAX_PAYLOAD_BYTES}")));
            }
        }
        let policy = spec.retry_policy.clone().unwrap_or_default();
        let initial_interval = duration("retryPolicy.initialInterval", policy.initial_interval.as_ref())?
            .unwrap_or(DEFAULT_INITIAL_INTERVAL);
        if initial_interval.is_zero() {
            return Err(invalid("retryPolicy.initialInterval", "must be greater than 0"));
        }
        let backoff_coefficient = policy.backoff_coefficient.unwrap_or(DEFAULT_BACKOFF);
        if !backoff_coefficient.is_finite() || backoff_coefficient < 1.0 {
            return Err(invalid("retryPolicy.backoffCoefficient", "must be at least 1"));
        }
        let maximum_interval = duration("retryPolicy.maximumInterval", policy.maximum_interval.as_ref())?
            .unwrap_or_else(|| initial_interval.saturating_mul(100));
        if maximum_interval < initial_interval {
            return Err(invalid("retryPolicy.maximumInterval", "must be at least retryPolicy.initialInterval"));
        }
        let maximum_attempts = policy.maximum_attempts.unwrap_or(0);
        if maximum_attempts < 0 {
            return Err(invalid("retryPolicy.maximumAttempts", "must not be negative"));
        }
        let maximum_disruptions = policy.maximum_disruptions.unwrap_or(DEFAULT_MAXIMUM_DISRUPTIONS);
        if maximum_disruptions < 0 {
            return Err(invalid("retryPolicy.maximumDisruptions", "must not be negative"));
        }
        Ok(ResolvedSpec {
            start_to_close,
            heartbeat,
            schedule_to_start,
            schedule_to_close,
            retry: Retry {
                initial_interval,
                backoff_coefficient,
                maximum_interval,
                maximum_attempts,
                non_retryable_error_types: policy.non_retryable_error_types,
                non_retryable_exit_codes: policy.non_retryable_exit_codes,
                maximum_disruptions,
            },
            cancellation_grace,
            ttl_after_finished,
            start_delay,
        })
    }
}

impl Retry {
    /// Delay before attempt `failed + 1`, after attempt `failed` (from 1) failed:
    /// min(initialInterval × backoffCoefficient^(failed−1), maximumInterval).
    pub fn delay_after(&self, failed: i32) -> Duration {
        let exponent = failed.saturating_sub(1).max(0);
        let factor = self.backoff_coefficient.powi(exponent);
        let secs = self.initial_interval.as_secs_f64() * factor;
        if !secs.is_finite() || secs >= self.maximum_interval.as_secs_f64() {
            self.maximum_interval
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// Whether another attempt may follow attempt `failed`.
    pub fn attempts_left_after(&self, failed: i32) -> bool {
        self.maximum_attempts == 0 || failed < self.maximum_attempts
    }

    /// Whether the worker's error type is listed as non-retryable.
    pub fn is_non_retryable_type(&self, error_type: &str) -> bool {
        self.non_retryable_error_types.iter().any(|t| t == error_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RetryPolicy;

    fn spec(json: serde_json::Value) -> ActivitySpec {
        let mut base = serde_json::json!({"template": {"spec": {"containers": [{"name": "w", "image": "x"}]}}});
        if let (Some(b), Some(extra)) = (base.as_object_mut(), json.as_object()) {
            b.extend(extra.clone());
        }
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn defaults_follow_the_design() {
        let s = ResolvedSpec::from_spec(&spec(serde_json::json!({"startToCloseTimeout": "2m"}))).unwrap();
        assert_eq!(s.start_to_close, Duration::from_secs(120));
        assert_eq!(s.heartbeat, None);
        assert_eq!(s.schedule_to_start, None);
        assert_eq!(s.schedule_to_close, None);
        assert_eq!(s.cancellation_grace, Duration::from_secs(30));
        assert_eq!(s.retry.initial_interval, Duration::from_secs(1));
        assert_eq!(s.retry.backoff_coefficient, 2.0);
        assert_eq!(s.retry.maximum_interval, Duration::from_secs(100));
        assert_eq!(s.retry.maximum_attempts, 0);
    }

    #[test]
    fn start_to_close_defaults_to_schedule_to_close() {
        let s = ResolvedSpec::from_spec(&spec(serde_json::json!({"scheduleToCloseTimeout": "1h"}))).unwrap();
        assert_eq!(s.start_to_close, Duration::from_secs(3600));
        assert_eq!(s.schedule_to_close, Some(Duration::from_secs(3600)));
    }

    #[test]
    fn durations_up_to_87600h_are_accepted() {
        let s = ResolvedSpec::from_spec(&spec(serde_json::json!({
            "scheduleToCloseTimeout": "87600h", "startToCloseTimeout": "0s", "heartbeatTimeout": "87599h59m",
            "retryPolicy": {"initialInterval": "87600h", "maximumInterval": "87600h"}})))
        .unwrap();
        assert_eq!(s.start_to_close, MAX_SPEC_DURATION, "0s falls back to scheduleToCloseTimeout");
        assert_eq!(s.retry.maximum_interval, MAX_SPEC_DURATION);
        assert_eq!(crate::parse_duration(MAX_DURATION), Ok(MAX_SPEC_DURATION));
    }

    #[test]
    fn zero_heartbeat_timeout_disables_it() {
        let s =
            ResolvedSpec::from_spec(&spec(serde_json::json!({"startToCloseTimeout": "1m", "heartbeatTimeout": "0s"})))
                .unwrap();
        assert_eq!(s.heartbeat, None);
    }

    #[test]
    fn invalid_specs_name_the_field() {
        let cases = [
            (serde_json::json!({}), "spec.startToCloseTimeout"),
            (serde_json::json!({"startToCloseTimeout": "2 minutes"}), "spec.startToCloseTimeout"),
            (serde_json::json!({"startToCloseTimeout": "1m", "heartbeatTimeout": "2m"}), "spec.heartbeatTimeout"),
            (
                serde_json::json!({"startToCloseTimeout": "1m", "retryPolicy": {"backoffCoefficient": 0.5}}),
                "spec.retryPolicy.backoffCoefficient",
            ),
            (
                serde_json::json!({"startToCloseTimeout": "1m", "retryPolicy": {"maximumAttempts": -1}}),
                "spec.retryPolicy.maximumAttempts",
            ),
            (
                serde_json::json!({"startToCloseTimeout": "1m", "retryPolicy": {"initialInterval": "0s"}}),
                "spec.retryPolicy.initialInterval",
            ),
            (
                serde_json::json!({"startToCloseTimeout": "1m", "retryPolicy": {"initialInterval": "10s", "maximumInterval": "1s"}}),
                "spec.retryPolicy.maximumInterval",
            ),
            (
                serde_json::json!({"startToCloseTimeout": "1m", "ttlSecondsAfterFinished": -3}),
                "spec.ttlSecondsAfterFinished",
            ),
            (serde_json::json!({"startToCloseTimeout": "1m", "input": "x".repeat(MAX_PAYLOAD_BYTES)}), "spec.input"),
            // Longer than 87600h: what the CRD's CEL refused before the rules moved to the chart's policy.
            (serde_json::json!({"startToCloseTimeout": "87600h1s"}), "spec.startToCloseTimeout: 87600h1s is longer"),
            (serde_json::json!({"startToCloseTimeout": "1m", "startDelay": "87601h"}), "spec.startDelay"),
            (
                serde_json::json!({"startToCloseTimeout": "1m", "retryPolicy": {"maximumInterval": "9000000h"}}),
                "spec.retryPolicy.maximumInterval",
            ),
            (
                serde_json::json!({"startToCloseTimeout": "1m", "retryPolicy": {"maximumInterval": "500ms"}}),
                "spec.retryPolicy.maximumInterval",
            ),
            (serde_json::json!({"startToCloseTimeout": "0s"}), "spec.startToCloseTimeout"),
        ];
        for (json, field) in cases {
            let err = ResolvedSpec::from_spec(&spec(json.clone())).expect_err(&json.to_string());
            assert!(err.to_string().starts_with(field), "{json}: {err}");
        }
    }

    fn retry(initial: u64, coefficient: f64, max: Option<u64>, attempts: i32) -> Retry {
        let policy = RetryPolicy {
            initial_interval: Some(format!("{initial}ms")),
            backoff_coefficient: Some(coefficient),
            maximum_interval: max.map(|m| format!("{m}ms")),
            maximum_attempts: Some(attempts),
            non_retryable_error_types: vec!["Fatal".into()],
            ..RetryPolicy::default()
        };
        let mut s = spec(serde_json::json!({"startToCloseTimeout": "1m"}));
        s.retry_policy = Some(policy);
        ResolvedSpec::from_spec(&s).unwrap().retry
    }

    #[test]
    fn delay_grows_exponentially_and_is_capped() {
        // (initial ms, coefficient, max ms, failed attempt, expected delay ms)
        let table = [
            (1000, 2.0, None, 1, 1000),
            (1000, 2.0, None, 2, 2000),
            (1000, 2.0, None, 3, 4000),
            (1000, 2.0, None, 8, 100_000), // 128 s capped at 100 × initial
            (1000, 2.0, Some(5000), 4, 5000),
            (500, 1.0, None, 50, 500),
            (1000, 1.5, None, 3, 2250),
            (1000, 2.0, None, i32::MAX, 100_000),
        ];
        for (initial, coefficient, max, failed, expected) in table {
            let r = retry(initial, coefficient, max, 0);
            assert_eq!(
                r.delay_after(failed),
                Duration::from_millis(expected),
                "{initial} {coefficient} {max:?} {failed}"
            );
        }
    }

    #[test]
    fn maximum_attempts_counts_every_attempt() {
        let unlimited = retry(1000, 2.0, None, 0);
        assert!(unlimited.attempts_left_after(1_000));
        let once = retry(1000, 2.0, None, 1);
        assert!(!once.attempts_left_after(1));
        let four = retry(1000, 2.0, None, 4);
        assert!(four.attempts_left_after(3));
        assert!(!four.attempts_left_after(4));
    }

    #[test]
    fn non_retryable_types_match_exactly() {
        let r = retry(1000, 2.0, None, 0);
        assert!(r.is_non_retryable_type("Fatal"));
        assert!(!r.is_non_retryable_type("fatal"));
        assert!(!r.is_non_retryable_type("FatalError"));
    }
}
