//! [`ActivityContext`]: what a worker needs to run one attempt of an Activity: its input, the
//! previous attempts' heartbeat details, throttled heartbeats, cancellation, and the outcome.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use activity_crds::{
    Activity, ENV_ATTEMPT, ENV_NAME, ENV_NAMESPACE, Outcome, RawJson, StopCause, WORKER_MANAGER, WorkerFailure,
    format_duration, parse_duration,
};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Config};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::error::{Error, Result};
use crate::request::{Request, bounded};
use crate::throttle::{AfterFailure, Due, Throttle};
use crate::wire::{self, ApiFailure};

/// Default `spec.cancellationGracePeriod`: the one the operator applies.
pub use activity_crds::resolved::DEFAULT_CANCELLATION_GRACE as DEFAULT_GRACE_PERIOD;
/// Longest wait for one API request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the worker keeps trying to read its Activity at start.
pub const STARTUP_BUDGET: Duration = Duration::from_secs(30);
/// How long the worker keeps trying to deliver its outcome (or a final flush).
pub const REPORT_BUDGET: Duration = Duration::from_secs(60);

/// Why the worker was told to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelReason {
    /// The Activity is being deleted (`metadata.deletionTimestamp` is set).
    Deleted,
    /// `spec.cancelRequested: true`.
    CancelRequested,
    /// `status.attempt` is no longer this worker's attempt: the operator has moved on; this
    /// worker's writes are refused.
    Superseded,
    /// `spec.paused: true`: the operator starts no new attempt until unpaused; this one must stop.
    /// The stopped attempt does not count toward `maximumAttempts`.
    Paused,
    /// A new `spec.reset.requestedAt` (≠ `status.lastReset.requestedAt`): this attempt must stop;
    /// a new one starts with a fresh retry budget.
    Reset,
    /// The Activity no longer exists.
    Gone,
    /// The process received a signal (SIGTERM when its pod is deleted).
    Signal(&'static str),
    /// Heartbeats could not be delivered for longer than the heartbeat timeout. Fatal.
    HeartbeatUndeliverable(String),
    /// The service account may not patch `activities/status`. Fatal.
    Forbidden(String),
}

impl CancelReason {
    /// Fatal reasons stop the worker with a non-zero exit and no outcome.
    pub fn is_fatal(&self) -> bool {
        matches!(self, CancelReason::HeartbeatUndeliverable(_) | CancelReason::Forbidden(_))
    }

    /// Whether the worker may still write its outcome.
    pub fn can_report(&self) -> bool {
        matches!(
            self,
            CancelReason::Deleted
                | CancelReason::CancelRequested
                | CancelReason::Paused
                | CancelReason::Reset
                | CancelReason::Signal(_)
        )
    }

    /// The contract's stop cause (docs/reference.md, "The worker protocol"): `Canceled` (deletion or
    /// `spec.cancelRequested`), `Paused`, `Reset`, `Superseded`; `None` for the worker's own
    /// reasons (a signal, the Activity gone, a missing permission, undeliverable heartbeats).
    pub fn stop_cause(&self) -> Option<StopCause> {
        match self {
            CancelReason::Deleted | CancelReason::CancelRequested => Some(StopCause::Canceled),
            CancelReason::Paused => Some(StopCause::Paused),
            CancelReason::Reset => Some(StopCause::Reset),
            CancelReason::Superseded => Some(StopCause::Superseded),
            CancelReason::Gone
            | CancelReason::Signal(_)
            | CancelReason::HeartbeatUndeliverable(_)
            | CancelReason::Forbidden(_) => None,
        }
    }

    /// The cause written as the canceled outcome's `cause`: only what the operator asked for
    /// (`Canceled`, `Paused`, `Reset`).
    pub fn outcome_cause(&self) -> Option<StopCause> {
        self.stop_cause().filter(|c| *c != StopCause::Superseded)
    }

    /// The reason a refused write stops the worker with: another attempt owns the Activity, it
    /// is gone, or the worker may not write it. `None` for a failure that does not end the attempt.
    fn of_refused_write(failure: &ApiFailure) -> Option<CancelReason> {
        match failure {
            ApiFailure::Superseded(_) => Some(CancelReason::Superseded),
            ApiFailure::NotFound(_) => Some(CancelReason::Gone),
            ApiFailure::Forbidden(message) => Some(CancelReason::Forbidden(message.clone())),
            ApiFailure::Retryable { .. } | ApiFailure::Fatal(_) => None,
        }
    }
}

impl std::fmt::Display for CancelReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CancelReason::Deleted => f.write_str("the Activity is being deleted"),
            CancelReason::CancelRequested => f.write_str("spec.cancelRequested is true"),
            CancelReason::Superseded => f.write_str("the attempt is superseded (status.attempt changed)"),
            CancelReason::Paused => f.write_str("the Activity is paused (spec.paused is true)"),
            CancelReason::Reset => f.write_str("a reset was requested (a new spec.reset.requestedAt)"),
            CancelReason::Gone => f.write_str("the Activity no longer exists"),
            CancelReason::Signal(s) => write!(f, "received {s}"),
            CancelReason::HeartbeatUndeliverable(m) => write!(f, "heartbeats undeliverable: {m}"),
            CancelReason::Forbidden(m) => write!(f, "forbidden: {m}"),
        }
    }
}

/// How an attempt ended, as the worker reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// Success, with an optional result (at most `MAX_PAYLOAD_BYTES` serialized).
    Completed(Option<Value>),
    /// Failure; `nonRetryable` asks the operator not to retry.
    Failed(WorkerFailure),
    /// The worker stopped because it was canceled.
    Canceled,
}

impl Report {
    /// The outcome written to `status.outcome`.
    pub fn to_outcome(&self, attempt: i32) -> Outcome {
        match self {
            Report::Completed(result) => Outcome {
                attempt,
                succeeded: true,
                // A `Value` always serializes; `None` is the "no result" it then stands for.
                result: result.as_ref().filter(|v| !v.is_null()).and_then(|v| RawJson::from_value(v).ok()),
                failure: None,
                canceled: false,
                cause: None,
            },
            Report::Failed(f) => Outcome {
                attempt,
                succeeded: false,
                result: None,
                failure: Some(f.clone()),
                canceled: false,
                cause: None,
            },
            Report::Canceled => {
                Outcome { attempt, succeeded: false, result: None, failure: None, canceled: true, cause: None }
            }
        }
    }
}

/// A failure as the activity reports it, shaped like Temporal's `ApplicationError`: a type
/// (matched exactly against `retryPolicy.nonRetryableErrorTypes`), a message, whether the
/// operator must not retry, and a next retry delay that replaces the retry policy's backoff for
/// the next attempt (not capped by `maximumInterval`, still bounded by schedule-to-close).
///
/// ```
/// use activity_worker::ApplicationError;
/// let e = ApplicationError::new("RateLimited", "the API said 429").next_retry_delay(std::time::Duration::from_secs(90));
/// let wire: activity_crds::WorkerFailure = e.into();
/// assert_eq!(wire.next_retry_delay.as_deref(), Some("1m30s"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplicationError {
    pub type_: String,
    pub message: String,
    pub non_retryable: bool,
    pub next_retry_delay: Option<Duration>,
}

impl ApplicationError {
    /// A retryable failure of type `type_`.
    pub fn new(type_: impl Into<String>, message: impl Into<String>) -> Self {
        Self { type_: type_.into(), message: message.into(), non_retryable: false, next_retry_delay: None }
    }

    /// The operator must not retry.
    pub fn non_retryable(mut self) -> Self {
        self.non_retryable = true;
        self
    }

    /// The next attempt starts after `delay` instead of the retry policy's backoff.
    pub fn next_retry_delay(mut self, delay: Duration) -> Self {
        self.next_retry_delay = Some(delay);
        self
    }
}

impl std::fmt::Display for ApplicationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.type_, self.message)
    }
}

impl std::error::Error for ApplicationError {}

impl From<ApplicationError> for WorkerFailure {
    fn from(e: ApplicationError) -> Self {
        WorkerFailure {
            type_: e.type_,
            message: e.message,
            non_retryable: e.non_retryable,
            // Go's format (`1m30s`), which the operator and the CRD schema read.
            next_retry_delay: e.next_retry_delay.map(format_duration),
        }
    }
}

impl From<ApplicationError> for Report {
    fn from(e: ApplicationError) -> Self {
        Report::Failed(e.into())
    }
}

/// The cancellation an Activity as read from the API server asks for, if any. Precedence as the
/// contract orders it: cancel (deletion, then `spec.cancelRequested`), then a changed
/// `status.attempt` (superseded), then a new `spec.reset.requestedAt`, then `spec.paused`.
pub fn cancel_in(activity: &Activity, attempt: i32) -> Option<CancelReason> {
    if activity.metadata.deletion_timestamp.is_some() {
        return Some(CancelReason::Deleted);
    }
    if activity.spec.cancel_requested {
        return Some(CancelReason::CancelRequested);
    }
    let status = activity.status.as_ref();
    if let Some(current) = status.and_then(|s| s.attempt)
        && current != attempt
    {
        return Some(CancelReason::Superseded);
    }
    let requested = activity.spec.reset.as_ref().and_then(|r| r.requested_at.as_deref()).filter(|r| !r.is_empty());
    let done = status.and_then(|s| s.last_reset.as_ref()).map(|l| l.requested_at.as_str());
    if let Some(requested) = requested
        && Some(requested) != done
    {
        return Some(CancelReason::Reset);
    }
    if activity.spec.paused {
        return Some(CancelReason::Paused);
    }
    None
}

/// When this attempt and the whole activity time out, as the operator computes them (docs/reference.md):
/// the attempt at `status.startedTime` (else `now`, for a worker that starts before the operator
/// saw its container run) + `startToCloseTimeout` (default `scheduleToCloseTimeout`); the activity
/// at (`status.lastReset.time`, else `metadata.creationTimestamp` + `startDelay`) +
/// `scheduleToCloseTimeout`. `None` when unlimited (or beyond what a timestamp holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Deadlines {
    pub attempt: Option<Timestamp>,
    pub schedule_to_close: Option<Timestamp>,
}

impl Deadlines {
    /// The deadlines of attempt `attempt` of `activity`, read at `now`.
    pub fn of(activity: &Activity, attempt: i32, now: Timestamp) -> Result<Self> {
        let spec = &activity.spec;
        let s2c = parse_opt("spec.scheduleToCloseTimeout", spec.schedule_to_close_timeout.as_deref())?
            .filter(|d| !d.is_zero());
        let s2cl = parse_opt("spec.startToCloseTimeout", spec.start_to_close_timeout.as_deref())?
            .filter(|d| !d.is_zero())
            .or(s2c);
        let delay = parse_opt("spec.startDelay", spec.start_delay.as_deref())?.unwrap_or_default();
        let status = activity.status.as_ref();
        // startedTime belongs to status.attempt: the operator clears it for each new attempt.
        let started = status
            .filter(|s| s.attempt == Some(attempt))
            .and_then(|s| s.started_time.as_ref())
            .map(|t| t.0)
            .unwrap_or(now);
        let clock_start = match status.and_then(|s| s.last_reset.as_ref()) {
            Some(reset) => Some(reset.time.0),
            None => activity.metadata.creation_timestamp.as_ref().and_then(|c| add(c.0, delay)),
        };
        Ok(Self {
            attempt: s2cl.and_then(|d| add(started, d)),
            schedule_to_close: s2c.and_then(|d| clock_start.and_then(|c| add(c, d))),
        })
    }
}

/// `t + d`, `None` past what a timestamp holds.
fn add(t: Timestamp, d: Duration) -> Option<Timestamp> {
    let d = k8s_openapi::jiff::SignedDuration::try_from(d).ok()?;
    t.checked_add(d).ok()
}

/// What is left of the cancellation grace period at `now`, when the cancel was requested at
/// `requested` (the operator's `status.cancelRequestedTime`).
pub fn grace_remaining(grace: Duration, requested: Timestamp, now: Timestamp) -> Duration {
    let elapsed = now.duration_since(requested);
    let elapsed = Duration::try_from(elapsed).unwrap_or(Duration::ZERO);
    grace.saturating_sub(elapsed)
}

/// One attempt of one Activity, seen from its worker. Cheap to clone (shared state).
#[derive(Clone)]
pub struct ActivityContext {
    inner: Arc<Inner>,
}

struct Inner {
    api: Api<Activity>,
    name: String,
    namespace: String,
    attempt: i32,
    input: Option<Value>,
    previous_details: Option<Value>,
    heartbeat_timeout: Option<Duration>,
    grace_period: Duration,
    maximum_attempts: i32,
    deadlines: Deadlines,
    began: Instant,
    throttle: Mutex<Throttle>,
    /// Wakes the heartbeat task when details are recorded.
    wake: Notify,
    /// Serializes the PATCHes: the heartbeat task's and the final flush/outcome.
    send_lock: tokio::sync::Mutex<()>,
    cancel: CancellationToken,
    reason: Mutex<Option<CancelReason>>,
    /// When the cancel was noticed, and the operator's `status.cancelRequestedTime`.
    cancel_noticed: Mutex<Option<(Instant, Option<Timestamp>)>>,
    /// Stops the heartbeat task.
    stop: CancellationToken,
    reported: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn env(name: &'static str) -> Result<String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => Err(Error::MissingEnv { name }),
    }
}

impl ActivityContext {
    /// The context of the attempt this process runs: reads `ACTIVITY_NAME`, `ACTIVITY_NAMESPACE`
    /// and `ACTIVITY_ATTEMPT`, connects like `kube::Client::try_default()` (`KUBECONFIG`, else the
    /// in-cluster service account), reads the Activity once, starts the background heartbeat
    /// sender and cancels the context on SIGTERM or SIGINT.
    pub async fn from_env() -> Result<Self> {
        let began = Instant::now();
        let name = env(ENV_NAME)?;
        let namespace = env(ENV_NAMESPACE)?;
        let raw_attempt = env(ENV_ATTEMPT)?;
        let attempt = raw_attempt.parse::<i32>().ok().filter(|a| *a >= 1).ok_or_else(|| Error::InvalidEnv {
            name: ENV_ATTEMPT,
            value: raw_attempt.clone(),
            reason: "expected an attempt number ≥ 1".into(),
        })?;
        let mut config = Config::infer().await.map_err(|e| Error::ClientConfig(e.to_string()))?;
        // The worker retries by itself, bounded by the heartbeat timeout; kube's built-in retry
        // layer could hold a single request for many minutes.
        config.default_retry = false;
        let client = Client::try_from(config).map_err(|e| Error::ClientConfig(e.to_string()))?;
        let ctx = Self::connect_since(client, &namespace, &name, attempt, began).await?;
        ctx.watch_signals();
        Ok(ctx)
    }

    /// The context of attempt `attempt` of Activity `namespace/name`, with the given client.
    /// Unlike [`ActivityContext::from_env`] it does not listen for signals.
    pub async fn connect(client: Client, namespace: &str, name: &str, attempt: i32) -> Result<Self> {
        Self::connect_since(client, namespace, name, attempt, Instant::now()).await
    }

    async fn connect_since(client: Client, namespace: &str, name: &str, attempt: i32, began: Instant) -> Result<Self> {
        let api: Api<Activity> = Api::namespaced(client, namespace);
        let activity = get_with_retries(&api, namespace, name).await?;
        let spec = &activity.spec;
        let heartbeat_timeout = parse_opt("spec.heartbeatTimeout", spec.heartbeat_timeout.as_deref())?;
        let grace_period = parse_opt("spec.cancellationGracePeriod", spec.cancellation_grace_period.as_deref())?
            .unwrap_or(DEFAULT_GRACE_PERIOD);
        let previous_details = activity
            .status
            .as_ref()
            .and_then(|s| s.heartbeat_details.as_ref())
            .map(RawJson::to_value)
            .transpose()
            .map_err(|source| Error::Deserialize { what: "status.heartbeatDetails", source })?
            .filter(|v| !v.is_null());
        let input = spec
            .input
            .as_ref()
            .map(RawJson::to_value)
            .transpose()
            .map_err(|source| Error::Deserialize { what: "spec.input", source })?;
        let maximum_attempts = spec.retry_policy.as_ref().and_then(|p| p.maximum_attempts).unwrap_or(0);
        let deadlines = Deadlines::of(&activity, attempt, Timestamp::now())?;
        let throttle = Throttle::for_heartbeat_timeout(heartbeat_timeout);
        info!(
            activity = %format!("{namespace}/{name}"),
            attempt,
            heartbeat_timeout = %heartbeat_timeout.map(format_duration).unwrap_or_else(|| "none".into()),
            heartbeat_interval = %format_duration(throttle.interval()),
            resume_from = %previous_details.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "none".into()),
            "starting attempt"
        );
        let ctx = Self {
            inner: Arc::new(Inner {
                api,
                name: name.to_string(),
                namespace: namespace.to_string(),
                attempt,
                input,
                previous_details,
                heartbeat_timeout: heartbeat_timeout.filter(|t| !t.is_zero()),
                grace_period,
                maximum_attempts,
                deadlines,
                began,
                throttle: Mutex::new(throttle),
                wake: Notify::new(),
                send_lock: tokio::sync::Mutex::new(()),
                cancel: CancellationToken::new(),
                reason: Mutex::new(None),
                cancel_noticed: Mutex::new(None),
                stop: CancellationToken::new(),
                reported: AtomicBool::new(false),
            }),
        };
        ctx.inspect(&activity);
        tokio::spawn(heartbeat_loop(ctx.clone()));
        Ok(ctx)
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// This worker's attempt number (from 1).
    pub fn attempt(&self) -> i32 {
        self.inner.attempt
    }

    /// `spec.heartbeatTimeout`, when set and not zero.
    pub fn heartbeat_timeout(&self) -> Option<Duration> {
        self.inner.heartbeat_timeout
    }

    /// At most one heartbeat is sent per this interval.
    pub fn heartbeat_interval(&self) -> Duration {
        lock(&self.inner.throttle).interval()
    }

    /// `spec.cancellationGracePeriod` (default 30 s).
    pub fn cancellation_grace_period(&self) -> Duration {
        self.inner.grace_period
    }

    /// When the worker began (before it read its Activity): the nearest this process knows of its
    /// container's start, from which the operator counts the first heartbeat gap.
    pub fn began(&self) -> Instant {
        self.inner.began
    }

    /// `spec.retryPolicy.maximumAttempts` (0: unlimited).
    pub fn maximum_attempts(&self) -> i32 {
        self.inner.maximum_attempts
    }

    /// When this attempt times out (start-to-close), `None` when unlimited: `status.startedTime`
    /// (or when the worker started) + `startToCloseTimeout` (default `scheduleToCloseTimeout`).
    pub fn attempt_deadline(&self) -> Option<Timestamp> {
        self.inner.deadlines.attempt
    }

    /// When the whole activity times out (schedule-to-close), `None` when unlimited:
    /// (`status.lastReset.time`, else `metadata.creationTimestamp` + `startDelay`) +
    /// `scheduleToCloseTimeout`.
    pub fn schedule_to_close_deadline(&self) -> Option<Timestamp> {
        self.inner.deadlines.schedule_to_close
    }

    /// `spec.input` as JSON (`None` when unset).
    pub fn raw_input(&self) -> Option<&Value> {
        self.inner.input.as_ref()
    }

    /// `spec.input` decoded as `T` (an unset input decodes from `null`).
    pub fn input<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.inner.input.clone().unwrap_or(Value::Null))
            .map_err(|source| Error::Deserialize { what: "spec.input", source })
    }

    /// The last heartbeat details of the previous attempts, as JSON (`None` when there are none).
    pub fn raw_heartbeat_details(&self) -> Option<&Value> {
        self.inner.previous_details.as_ref()
    }

    /// The last heartbeat details of the previous attempts decoded as `T`, to resume from
    /// (`None` when there are none).
    pub fn heartbeat_details<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        self.inner
            .previous_details
            .clone()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|source| Error::Deserialize { what: "status.heartbeatDetails", source })
    }

    /// Records a heartbeat with `details`. Never blocks: the details are sent by a background
    /// task at most once per [`ActivityContext::heartbeat_interval`] (the latest win), and always
    /// flushed before the outcome. Fails only for details that cannot be serialized or exceed
    /// `MAX_PAYLOAD_BYTES`.
    pub fn heartbeat<T: Serialize + ?Sized>(&self, details: &T) -> Result<()> {
        let value = wire::to_payload("heartbeat details", details)?;
        lock(&self.inner.throttle).record(value);
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Whether the worker was told to stop.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// Completes when the worker is told to stop: a heartbeat reply says the Activity is deleted
    /// or `cancelRequested`, a heartbeat was refused because the attempt is superseded, the
    /// process got SIGTERM/SIGINT, or heartbeats could not be delivered.
    pub async fn cancelled(&self) {
        self.inner.cancel.cancelled().await
    }

    /// A token that is cancelled together with this context.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.inner.cancel.child_token()
    }

    /// Why the worker was told to stop, once it was.
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        lock(&self.inner.reason).clone()
    }

    /// The contract's stop cause, once the worker was told to stop by its heartbeat reply or a
    /// refused write: `Canceled`, `Paused`, `Reset` or `Superseded` (`None` before, and for the
    /// worker's own reasons: see [`CancelReason::stop_cause`]).
    pub fn cause(&self) -> Option<StopCause> {
        self.cancel_reason().and_then(|r| r.stop_cause())
    }

    /// What is left of the cancellation grace period: counted from the operator's
    /// `status.cancelRequestedTime` when a heartbeat reply carried it, else from when this worker
    /// noticed the cancel. The full grace period before any cancel.
    pub fn grace_remaining(&self) -> Duration {
        let grace = self.inner.grace_period;
        match *lock(&self.inner.cancel_noticed) {
            None => grace,
            Some((_, Some(requested))) => grace_remaining(grace, requested, Timestamp::now()),
            Some((noticed, None)) => grace.saturating_sub(noticed.elapsed()),
        }
    }

    /// Cancels the context (as a signal would).
    pub fn cancel(&self, reason: CancelReason) {
        {
            let mut current = lock(&self.inner.reason);
            if current.is_none() {
                if reason.is_fatal() {
                    error!("stopping: {reason}");
                } else {
                    info!("canceled: {reason}");
                }
                *current = Some(reason);
            }
        }
        lock(&self.inner.cancel_noticed).get_or_insert((Instant::now(), None));
        self.inner.cancel.cancel();
    }

    /// Reports success with `result` (omitted when it serializes to `null`).
    pub async fn complete<T: Serialize + ?Sized>(&self, result: &T) -> Result<()> {
        let value = wire::to_payload("result", result)?;
        self.report(Report::Completed(Some(value))).await
    }

    /// Reports a failure of type `type_`; `non_retryable` asks the operator not to retry.
    pub async fn fail(&self, type_: impl Into<String>, message: impl Into<String>, non_retryable: bool) -> Result<()> {
        let failure =
            WorkerFailure { type_: type_.into(), message: message.into(), non_retryable, next_retry_delay: None };
        self.report(Report::Failed(failure)).await
    }

    /// Reports a failure built as an [`ApplicationError`] (e.g. with a next retry delay).
    pub async fn fail_with(&self, failure: ApplicationError) -> Result<()> {
        self.report(Report::Failed(failure.into())).await
    }

    /// Reports that the worker stopped because it was canceled.
    pub async fn report_canceled(&self) -> Result<()> {
        self.report(Report::Canceled).await
    }

    /// Flushes the pending heartbeat details (if any), then writes the attempt's outcome, in one
    /// PATCH. Retries 409/429/5xx for up to [`REPORT_BUDGET`]. Only one outcome per attempt.
    pub async fn report(&self, report: Report) -> Result<()> {
        if let Report::Completed(Some(result)) = &report {
            wire::check_size("result", result.to_string().len())?;
        }
        if self.inner.reported.swap(true, Ordering::SeqCst) {
            return Err(Error::AlreadyReported { attempt: self.inner.attempt });
        }
        self.inner.stop.cancel();
        let _send = self.inner.send_lock.lock().await;
        self.refuse_when_cannot_write()?;
        let flushed = lock(&self.inner.throttle).take_pending();
        let mut outcome = report.to_outcome(self.inner.attempt);
        if outcome.canceled {
            outcome.cause = self.cancel_reason().and_then(|r| r.outcome_cause());
        }
        let attempt = self.inner.attempt;
        self.send_with_retries("report the outcome of", || {
            wire::outcome_patch(attempt, Timestamp::now(), flushed.as_ref(), &outcome)
        })
        .await?;
        match &report {
            Report::Completed(_) => info!(attempt, "reported outcome: succeeded"),
            Report::Failed(f) => {
                info!(attempt, r#type = %f.type_, non_retryable = f.non_retryable, "reported outcome: failed: {}", f.message)
            }
            Report::Canceled => match outcome.cause {
                Some(cause) => info!(attempt, ?cause, "reported outcome: canceled"),
                None => info!(attempt, "reported outcome: canceled"),
            },
        }
        Ok(())
    }

    /// Sends the pending heartbeat details now, regardless of the interval (for a worker that
    /// stops without reporting an outcome). [`ActivityContext::report`] flushes by itself.
    pub async fn flush(&self) -> Result<()> {
        let _send = self.inner.send_lock.lock().await;
        self.refuse_when_cannot_write()?;
        let Some(details) = lock(&self.inner.throttle).take_pending() else { return Ok(()) };
        let attempt = self.inner.attempt;
        let sent_at = Instant::now();
        self.send_with_retries("flush the heartbeat of", || {
            Ok(wire::heartbeat_patch(attempt, Timestamp::now(), &details))
        })
        .await?;
        lock(&self.inner.throttle).delivered(sent_at);
        Ok(())
    }

    /// Fails when the cancel reason forbids further writes.
    fn refuse_when_cannot_write(&self) -> Result<()> {
        let refused = match self.cancel_reason() {
            Some(CancelReason::Superseded) => {
                ApiFailure::Superseded("the operator has moved on to another attempt".into())
            }
            Some(CancelReason::Gone) => ApiFailure::NotFound("it was deleted".into()),
            Some(CancelReason::Forbidden(message)) => ApiFailure::Forbidden(message),
            Some(CancelReason::HeartbeatUndeliverable(message)) => {
                let i = &self.inner;
                return Err(Error::HeartbeatUndeliverable {
                    namespace: i.namespace.clone(),
                    name: i.name.clone(),
                    undelivered_for: i.heartbeat_timeout.unwrap_or_default(),
                    timeout: i.heartbeat_timeout.unwrap_or_default(),
                    message,
                });
            }
            _ => return Ok(()),
        };
        Err(self.write("write").error(refused, Duration::ZERO))
    }

    /// A write of this attempt to `activities/status`, to `action` the Activity.
    fn write(&self, action: &'static str) -> Request<'_> {
        Request {
            action,
            verb: "patch",
            resource: "activities/status",
            namespace: &self.inner.namespace,
            name: &self.inner.name,
            attempt: Some(self.inner.attempt),
        }
    }

    /// One PATCH of `activities/status` with the worker's field manager, bounded by [`REQUEST_TIMEOUT`].
    async fn patch_once(&self, patch: Value) -> std::result::Result<Activity, ApiFailure> {
        let patch: json_patch::Patch =
            serde_json::from_value(patch).map_err(|e| ApiFailure::Fatal(format!("invalid JSON Patch: {e}")))?;
        let params = PatchParams { field_manager: Some(WORKER_MANAGER.to_string()), ..PatchParams::default() };
        let timeout =
            self.inner.heartbeat_timeout.map_or(REQUEST_TIMEOUT, |t| t.clamp(Duration::from_secs(1), REQUEST_TIMEOUT));
        let patch = Patch::Json::<()>(patch);
        bounded(timeout, self.inner.api.patch_status(&self.inner.name, &params, &patch)).await
    }

    /// Sends the patch built by `build` until it is accepted, refused for good, or
    /// [`REPORT_BUDGET`] has passed; a refused write stops the worker.
    async fn send_with_retries(&self, action: &'static str, build: impl Fn() -> Result<Value>) -> Result<Activity> {
        let send = || async { Ok(self.patch_once(build()?).await) };
        let activity = self.write(action).with_retries(REPORT_BUDGET, send, |f| self.stop_if_refused(f)).await?;
        self.inspect(&activity);
        Ok(activity)
    }

    /// Cancels the context when `failure` refuses this attempt's writes for good.
    fn stop_if_refused(&self, failure: &ApiFailure) {
        if let Some(reason) = CancelReason::of_refused_write(failure) {
            self.cancel(reason);
        }
    }

    /// Acts on an Activity read from the API server (a heartbeat reply or the first read).
    fn inspect(&self, activity: &Activity) {
        if let Some(reason) = cancel_in(activity, self.inner.attempt) {
            let requested = activity.status.as_ref().and_then(|s| s.cancel_requested_time.as_ref()).map(|t| t.0);
            {
                let mut noticed = lock(&self.inner.cancel_noticed);
                match noticed.as_mut() {
                    None => *noticed = Some((Instant::now(), requested)),
                    Some((_, r)) if r.is_none() => *r = requested,
                    Some(_) => {}
                }
            }
            self.cancel(reason);
        }
    }

    /// Watches SIGTERM (sent when the pod is deleted) and SIGINT; either cancels the context.
    fn watch_signals(&self) {
        use tokio::signal::unix::{SignalKind, signal};
        let (term, int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(t), Ok(i)) => (t, i),
            (Err(e), _) | (_, Err(e)) => {
                warn!("cannot watch SIGTERM/SIGINT: {e}");
                return;
            }
        };
        let ctx = self.clone();
        tokio::spawn(async move {
            let (mut term, mut int) = (term, int);
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            ctx.cancel(CancelReason::Signal(name));
        });
    }
}

fn parse_opt(field: &'static str, value: Option<&str>) -> Result<Option<Duration>> {
    value
        .map(|v| {
            parse_duration(v).map_err(|e| Error::InvalidSpec { field, value: v.to_string(), reason: e.to_string() })
        })
        .transpose()
}

/// Reads the Activity, retrying transient errors for up to [`STARTUP_BUDGET`].
async fn get_with_retries(api: &Api<Activity>, namespace: &str, name: &str) -> Result<Activity> {
    let read = Request { action: "read", verb: "get", resource: "activities", namespace, name, attempt: None };
    read.with_retries(STARTUP_BUDGET, || async { Ok(bounded(REQUEST_TIMEOUT, api.get(name)).await) }, |_| {}).await
}

/// The background sender: sends the pending details when the throttle says they are due,
/// retries failed sends, cancels the context on a cancel in the reply, a refused patch, or
/// heartbeats undeliverable for longer than the heartbeat timeout.
async fn heartbeat_loop(ctx: ActivityContext) {
    let inner = &ctx.inner;
    loop {
        let due = lock(&inner.throttle).due();
        let sleep = async {
            match due {
                Due::Idle => std::future::pending::<()>().await,
                Due::Now => {}
                Due::At(at) => tokio::time::sleep_until(at.into()).await,
            }
        };
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = inner.wake.notified() => continue,
            _ = sleep => {}
        }
        let _send = tokio::select! {
            _ = inner.stop.cancelled() => return,
            guard = inner.send_lock.lock() => guard,
        };
        if inner.stop.is_cancelled() {
            return;
        }
        let sent_at = Instant::now();
        let Some(details) = lock(&inner.throttle).take_due(sent_at) else { continue };
        let patch = wire::heartbeat_patch(inner.attempt, Timestamp::now(), &details);
        match ctx.patch_once(patch).await {
            Ok(activity) => {
                lock(&inner.throttle).delivered(sent_at);
                debug!(details = %details, "heartbeat delivered");
                ctx.inspect(&activity);
            }
            Err(refused @ (ApiFailure::Superseded(_) | ApiFailure::NotFound(_) | ApiFailure::Forbidden(_))) => {
                match &refused {
                    ApiFailure::Superseded(message) => {
                        warn!(
                            attempt = inner.attempt,
                            "heartbeat refused: status.attempt is no longer ours ({message})"
                        )
                    }
                    ApiFailure::NotFound(message) => warn!("heartbeat refused: the Activity is gone ({message})"),
                    _ => error!("{}", ctx.write("send the heartbeat of").error(refused.clone(), Duration::ZERO)),
                }
                ctx.stop_if_refused(&refused);
                return;
            }
            Err(ApiFailure::Fatal(message)) => {
                // Not retried (the same patch would be refused again); the next details may pass.
                error!(details = %details, "heartbeat refused by the API server, dropped: {message}");
            }
            Err(ApiFailure::Retryable { retry_after, message }) => {
                let now = Instant::now();
                let after = lock(&inner.throttle).failed(details, sent_at, now, retry_after);
                match after {
                    AfterFailure::RetryAt(at) => {
                        warn!(
                            "heartbeat not delivered (retrying in {:?}): {message}",
                            at.saturating_duration_since(now)
                        );
                    }
                    AfterFailure::GiveUp { undelivered_for } => {
                        let err = Error::HeartbeatUndeliverable {
                            namespace: inner.namespace.clone(),
                            name: inner.name.clone(),
                            undelivered_for,
                            timeout: inner.heartbeat_timeout.unwrap_or_default(),
                            message: message.clone(),
                        };
                        error!("{err}");
                        ctx.cancel(CancelReason::HeartbeatUndeliverable(format!(
                            "not delivered for {undelivered_for:?}: {message}"
                        )));
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use activity_crds::{ActivitySpec, ActivityStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
    use serde_json::json;

    fn activity(attempt: Option<i32>) -> Activity {
        let spec: ActivitySpec = serde_json::from_value(json!({
            "template": {"spec": {"containers": [{"name": "w", "image": "x"}]}},
            "startToCloseTimeout": "1m"
        }))
        .unwrap();
        let mut a = Activity::new("a", spec);
        a.status = Some(ActivityStatus { attempt, ..Default::default() });
        a
    }

    #[test]
    fn reply_tells_about_cancellation() {
        assert_eq!(cancel_in(&activity(Some(2)), 2), None);
        assert_eq!(cancel_in(&activity(None), 2), None);
        assert_eq!(cancel_in(&activity(Some(3)), 2), Some(CancelReason::Superseded));
        let mut a = activity(Some(2));
        a.spec.cancel_requested = true;
        assert_eq!(cancel_in(&a, 2), Some(CancelReason::CancelRequested));
        a.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        assert_eq!(cancel_in(&a, 2), Some(CancelReason::Deleted));
    }

    fn with_reset(mut a: Activity, requested: &str, done: Option<&str>) -> Activity {
        a.spec.reset =
            Some(activity_crds::ResetRequest { requested_at: Some(requested.into()), clear_heartbeat_details: false });
        if let Some(done) = done {
            let status = a.status.get_or_insert_with(Default::default);
            status.last_reset = Some(activity_crds::LastReset {
                requested_at: done.into(),
                time: MicroTime("2026-01-01T00:00:01Z".parse().unwrap()),
                attempt: 1,
            });
        }
        a
    }

    #[test]
    fn reply_tells_about_pause_and_reset_in_the_contracts_order() {
        let mut a = activity(Some(2));
        a.spec.paused = true;
        assert_eq!(cancel_in(&a, 2), Some(CancelReason::Paused));
        // A reset already done (same requestedAt as status.lastReset) is no stop; an empty one neither.
        let done = with_reset(a.clone(), "2026-01-01T00:00:00Z", Some("2026-01-01T00:00:00Z"));
        assert_eq!(cancel_in(&done, 2), Some(CancelReason::Paused));
        assert_eq!(cancel_in(&with_reset(a.clone(), "", None), 2), Some(CancelReason::Paused));
        // A new one beats pause.
        let new = with_reset(a.clone(), "2026-01-02T00:00:00Z", Some("2026-01-01T00:00:00Z"));
        assert_eq!(cancel_in(&new, 2), Some(CancelReason::Reset));
        assert_eq!(cancel_in(&with_reset(activity(Some(2)), "x", None), 2), Some(CancelReason::Reset));
        // A changed attempt beats both; cancel beats everything.
        assert_eq!(cancel_in(&new, 1), Some(CancelReason::Superseded));
        let mut canceled = new.clone();
        canceled.spec.cancel_requested = true;
        assert_eq!(cancel_in(&canceled, 1), Some(CancelReason::CancelRequested));
        // Causes as the contract names them; only the operator's requests go into the outcome.
        assert_eq!(CancelReason::Deleted.stop_cause(), Some(StopCause::Canceled));
        assert_eq!(CancelReason::Paused.outcome_cause(), Some(StopCause::Paused));
        assert_eq!(CancelReason::Reset.outcome_cause(), Some(StopCause::Reset));
        assert_eq!(CancelReason::Superseded.stop_cause(), Some(StopCause::Superseded));
        assert_eq!(CancelReason::Superseded.outcome_cause(), None);
        assert_eq!(CancelReason::Signal("SIGTERM").outcome_cause(), None);
        assert!(CancelReason::Paused.can_report() && CancelReason::Reset.can_report());
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn deadlines_follow_the_operators_clocks() {
        let now = ts("2026-01-01T10:00:00Z");
        let mut a = activity(Some(2));
        a.metadata.creation_timestamp = Some(Time(ts("2026-01-01T09:00:00Z")));
        // startToClose 1m from now (no startedTime yet); no scheduleToClose.
        assert_eq!(
            Deadlines::of(&a, 2, now).unwrap(),
            Deadlines { attempt: Some(ts("2026-01-01T10:01:00Z")), schedule_to_close: None }
        );
        a.status.as_mut().unwrap().started_time = Some(MicroTime(ts("2026-01-01T09:59:30Z")));
        a.spec.schedule_to_close_timeout = Some("2h".into());
        a.spec.start_delay = Some("30m".into());
        assert_eq!(
            Deadlines::of(&a, 2, now).unwrap(),
            Deadlines {
                attempt: Some(ts("2026-01-01T10:00:30Z")),
                schedule_to_close: Some(ts("2026-01-01T11:30:00Z"))
            }
        );
        // Another attempt's startedTime is not ours.
        assert_eq!(Deadlines::of(&a, 3, now).unwrap().attempt, Some(ts("2026-01-01T10:01:00Z")));
        // startToClose defaults to scheduleToClose; a reset restarts the schedule-to-close clock.
        a.spec.start_to_close_timeout = None;
        let a = with_reset(a, "r", Some("r"));
        assert_eq!(
            Deadlines::of(&a, 2, now).unwrap(),
            Deadlines {
                attempt: Some(ts("2026-01-01T11:59:30Z")),
                schedule_to_close: Some(ts("2026-01-01T02:00:01Z"))
            }
        );
        let mut bad = a.clone();
        bad.spec.start_delay = Some("soon".into());
        assert!(Deadlines::of(&bad, 2, now).unwrap_err().to_string().contains("spec.startDelay"));
        // Beyond what a timestamp holds: unlimited, not a panic.
        let mut huge = a;
        huge.status.as_mut().unwrap().last_reset.as_mut().unwrap().time = MicroTime(ts("9990-01-01T00:00:00Z"));
        huge.spec.schedule_to_close_timeout = Some("2562047h".into());
        assert_eq!(Deadlines::of(&huge, 2, now).unwrap().schedule_to_close, None);
    }

    #[test]
    fn application_errors_carry_the_next_retry_delay() {
        let e = ApplicationError::new("RateLimited", "slow").next_retry_delay(Duration::from_millis(1500));
        let f: WorkerFailure = e.clone().into();
        assert_eq!(f.next_retry_delay.as_deref(), Some("1.5s"));
        assert!(!f.non_retryable);
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        let f: WorkerFailure = ApplicationError::new("X", "m").non_retryable().into();
        assert!(f.non_retryable && f.next_retry_delay.is_none());
        assert_eq!(Report::from(e).to_outcome(1).failure.unwrap().next_retry_delay.as_deref(), Some("1.5s"));
    }

    #[test]
    fn grace_counts_from_the_operators_cancel_time() {
        let t0: Timestamp = "2026-11-21T20:40:00Z".parse().unwrap();
        let g = Duration::from_secs(30);
        assert_eq!(grace_remaining(g, t0, t0), g);
        let t10 = t0 + Duration::from_secs(10);
        assert_eq!(grace_remaining(g, t0, t10), Duration::from_secs(20));
        assert_eq!(grace_remaining(g, t0, t0 + Duration::from_secs(99)), Duration::ZERO);
        // A cancel time in the future (clock skew) leaves the whole grace period.
        assert_eq!(grace_remaining(g, t10, t0), g);
    }

    #[test]
    fn reports_become_outcomes() {
        assert_eq!(
            Report::Completed(Some(json!(null))).to_outcome(1),
            Outcome { attempt: 1, succeeded: true, result: None, failure: None, canceled: false, cause: None }
        );
        assert!(Report::Canceled.to_outcome(4).canceled);
        let f = WorkerFailure { type_: "X".into(), message: "m".into(), non_retryable: true, next_retry_delay: None };
        assert_eq!(Report::Failed(f.clone()).to_outcome(2).failure, Some(f));
    }

    #[test]
    fn fatal_reasons() {
        assert!(CancelReason::Forbidden("x".into()).is_fatal());
        assert!(CancelReason::HeartbeatUndeliverable("x".into()).is_fatal());
        assert!(!CancelReason::Deleted.is_fatal());
        assert!(CancelReason::Signal("SIGTERM").can_report());
        assert!(!CancelReason::Superseded.can_report());
    }
}
