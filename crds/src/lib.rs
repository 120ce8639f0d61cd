//! The `heartbeat.dev/v1alpha1` `Activity` API: a unit of long-running work (a pod template,
//! timeouts, a retry policy) that the operator runs as one worker pod per attempt.
//!
//! Every field's doc comment becomes its `kubectl explain` text. The contract these types
//! implement is `docs/reference.md`; the generated CRD is `crds/activity.yaml` (`cargo run -p activity-crds
//! --bin crdgen`).

pub mod duration;
pub mod resolved;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::{Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

pub use duration::{DURATION_PATTERN, DurationError, format_duration, parse_duration};

/// API group of the Activity resource.
pub const GROUP: &str = "heartbeat.dev";
/// Finalizer that holds a deleted Activity until its worker is gone.
pub const FINALIZER: &str = "heartbeat.dev/cancellation";
/// Label on every worker pod: the owning Activity's name.
pub const LABEL_ACTIVITY: &str = "heartbeat.dev/activity";
/// Label on every worker pod: the attempt number it runs.
pub const LABEL_ATTEMPT: &str = "heartbeat.dev/attempt";
/// Field manager of the operator's writes.
pub const OPERATOR_MANAGER: &str = "activity-operator";
/// Field manager of the worker's writes (heartbeats and outcomes).
pub const WORKER_MANAGER: &str = "activity-worker";
/// Environment variables given to every container of a worker pod.
pub const ENV_NAME: &str = "ACTIVITY_NAME";
pub const ENV_NAMESPACE: &str = "ACTIVITY_NAMESPACE";
pub const ENV_ATTEMPT: &str = "ACTIVITY_ATTEMPT";
/// Largest serialized size, in bytes, of `spec.input`, `status.heartbeatDetails` and a result that
/// the worker SDK and `activity-worker exec` accept (the CRD schema cannot measure arbitrary JSON).
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024;
/// How many finished attempts `status.attempts` keeps.
pub const ATTEMPT_HISTORY: usize = 10;

/// An Activity: one unit of long-running work, run as a worker pod per attempt, with heartbeats,
/// deadlines, retries with exponential backoff and cancellation.
// kube's `printcolumn(...)` repeats `type_ = …` per column by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "heartbeat.dev",
    version = "v1alpha1",
    kind = "Activity",
    plural = "activities",
    shortname = "act",
    namespaced,
    status = "ActivityStatus",
    doc = "An Activity is a unit of long-running work run as one worker pod per attempt, with heartbeats, deadlines, retries and cancellation.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase", description = "Where the activity is"),
    printcolumn(name = "Attempt", type_ = "integer", json_path = ".status.attempt", description = "Current attempt"),
    printcolumn(
        name = "Heartbeat",
        type_ = "date",
        json_path = ".status.lastHeartbeatTime",
        description = "Age of the last heartbeat"
    ),
    printcolumn(
        name = "Progress",
        type_ = "string",
        json_path = ".status.heartbeatDetails.progress",
        description = "The `progress` field of the last heartbeat details, when the worker sends one"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(
        name = "Pod",
        type_ = "string",
        json_path = ".status.podName",
        priority = 1,
        description = "The current attempt's pod"
    ),
    printcolumn(
        name = "Last Failure",
        type_ = "string",
        json_path = ".status.lastFailure.type",
        priority = 1,
        description = "Type of the most recent failure"
    ),
    printcolumn(
        name = "Next Retry",
        type_ = "date",
        json_path = ".status.nextAttemptScheduleTime",
        priority = 1,
        description = "When the next attempt starts, while BackingOff"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ActivitySpec {
    /// Pod template of each attempt's worker pod. `restartPolicy` is forced to `Never`; every
    /// container gets ACTIVITY_NAME, ACTIVITY_NAMESPACE and ACTIVITY_ATTEMPT. A template that names
    /// no serviceAccountName runs as `activity-worker`. It must have at least one container.
    /// A changed template applies from the next attempt.
    #[schemars(schema_with = "template_schema")]
    pub template: PodTemplate,

    /// Input of the activity: any JSON value, handed to the worker. At most 16 KiB serialized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_json_schema")]
    pub input: Option<RawJson>,

    /// Maximum duration of one attempt, counted from its worker container starting (e.g. `2m`).
    /// Retryable. Defaults to scheduleToCloseTimeout; at least one of the two is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_schema")]
    pub start_to_close_timeout: Option<String>,

    /// Maximum gap between heartbeats within an attempt; the first gap counts from the worker
    /// container starting. Unset or `0s` disables it. Must be at most startToCloseTimeout. Retryable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_schema")]
    pub heartbeat_timeout: Option<String>,

    /// Maximum time from an attempt's pod being created to its worker container running (image
    /// pull, scheduling). Never retried. Unset means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_schema")]
    pub schedule_to_start_timeout: Option<String>,

    /// Maximum time for the whole activity, retries and backoff included, counted from its
    /// creation. Never retried. Unset means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_schema")]
    pub schedule_to_close_timeout: Option<String>,

    /// How failed attempts are retried. Changed on a live activity, it applies to the next
    /// failure at once. (Every timeout changed on a live activity takes effect at once as well:
    /// deadlines are computed from the spec.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicy>,

    /// `true` cancels the activity but keeps the object, so its final phase stays visible.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,

    /// After a cancel is requested, how long the worker may take to stop before its pod is
    /// deleted (after a pause or a reset it told the worker of: before its pod is stopped).
    /// Default `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_schema")]
    pub cancellation_grace_period: Option<String>,

    /// Delete the finished Activity (and its pods) this many seconds after it finished. Unset keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i64>,

    /// The first attempt starts this long after the Activity's creation (phase `Scheduled`
    /// meanwhile); scheduleToCloseTimeout counts from the end of the delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_schema")]
    pub start_delay: Option<String>,

    /// `true` pauses: no new attempt starts. A Pending, BackingOff or Scheduled activity becomes
    /// `Paused` at once; a running worker is told `Paused` in its next heartbeat reply and stops
    /// (its pod is stopped after cancellationGracePeriod if it does not), and that attempt does not
    /// count toward maximumAttempts. `false` again starts the next attempt at once, resuming from
    /// the heartbeat details. scheduleToCloseTimeout keeps counting while paused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,

    /// A new `requestedAt` requests one reset: a live attempt is stopped, then a new attempt
    /// starts at once with a fresh retry budget, backoff and scheduleToClose clock (attempt numbers
    /// keep increasing). Also re-runs a finished Succeeded, Failed or TimedOut activity. Not done
    /// while canceling or canceled; a paused activity stays paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<ResetRequest>,
}

/// A reset request (see `spec.reset`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResetRequest {
    /// Any RFC 3339 time; each new value requests one reset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub requested_at: Option<String>,
    /// The reset also drops status.heartbeatDetails, so the next attempt starts from scratch.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clear_heartbeat_details: bool,
}

/// The last reset done (see `spec.reset`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastReset {
    /// The `spec.reset.requestedAt` it answered.
    pub requested_at: String,
    /// When it was done: the retry budget and the scheduleToClose clock count from here.
    pub time: MicroTime,
    /// The first attempt after it.
    pub attempt: i32,
}

/// How failed attempts are retried: delay before attempt n+1 =
/// min(initialInterval × backoffCoefficient^(n−1), maximumInterval).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Delay before the second attempt. Default `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_schema")]
    pub initial_interval: Option<String>,

    /// Multiplier of the delay per attempt; at least 1. Default 2.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0))]
    pub backoff_coefficient: Option<f64>,

    /// Cap on the delay between attempts. Default 100 × initialInterval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_schema")]
    pub maximum_interval: Option<String>,

    /// Total number of attempts: `0` means unlimited, `1` means no retries. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub maximum_attempts: Option<i32>,

    /// Worker error types (exact match) that fail the activity at once, without retrying.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub non_retryable_error_types: Vec<String>,

    /// Exit codes of the worker container (when it exits without an outcome) that fail the
    /// activity at once, without retrying.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub non_retryable_exit_codes: Vec<i32>,

    /// Disrupted attempts (pod condition DisruptionTarget: eviction, preemption, node loss or
    /// shutdown) are retried at once and do not count toward maximumAttempts, up to this many per
    /// activity; `0` counts them as ordinary failures. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub maximum_disruptions: Option<i32>,
}

/// Where an activity is. `Succeeded`, `Failed`, `TimedOut` and `Canceled` are terminal.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
pub enum Phase {
    /// Waiting for spec.startDelay before the first attempt.
    Scheduled,
    /// The attempt's pod exists but its worker is not running yet.
    Pending,
    /// The attempt's worker is running.
    Running,
    /// Waiting to start the next attempt (see nextAttemptScheduleTime).
    BackingOff,
    /// Paused (spec.paused): no attempt is live and none starts.
    Paused,
    /// A cancel was requested; waiting for the worker to stop.
    Canceling,
    Succeeded,
    Failed,
    TimedOut,
    Canceled,
}

impl Phase {
    /// Whether the activity has finished for good.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed | Phase::TimedOut | Phase::Canceled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Scheduled => "Scheduled",
            Phase::Pending => "Pending",
            Phase::Paused => "Paused",
            Phase::Running => "Running",
            Phase::BackingOff => "BackingOff",
            Phase::Canceling => "Canceling",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::TimedOut => "TimedOut",
            Phase::Canceled => "Canceled",
        }
    }
}

/// Which deadline lapsed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
pub enum TimeoutType {
    StartToClose,
    Heartbeat,
    ScheduleToStart,
    ScheduleToClose,
}

impl TimeoutType {
    pub fn as_str(self) -> &'static str {
        match self {
            TimeoutType::StartToClose => "StartToClose",
            TimeoutType::Heartbeat => "Heartbeat",
            TimeoutType::ScheduleToStart => "ScheduleToStart",
            TimeoutType::ScheduleToClose => "ScheduleToClose",
        }
    }

    /// Start-to-close and heartbeat timeouts are retried; the others end the activity.
    pub fn is_retryable(self) -> bool {
        matches!(self, TimeoutType::StartToClose | TimeoutType::Heartbeat)
    }
}

/// Observed state of an Activity. Timestamps have microseconds (deadlines are enforced to the
/// millisecond, which whole-second `metav1.Time` cannot express). The operator alone writes it, except `lastHeartbeatTime`,
/// `heartbeatDetails` and `outcome`, which the worker writes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActivityStatus {
    /// Scheduled · Pending · Running · BackingOff · Paused · Canceling · Succeeded · Failed · TimedOut · Canceled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Current attempt number, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i32>,
    /// Name of the current attempt's pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// When the current attempt's pod was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_time: Option<MicroTime>,
    /// When the current attempt's worker container started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_time: Option<MicroTime>,
    /// When the activity reached a terminal phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_time: Option<MicroTime>,
    /// Time of the last accepted heartbeat (written by the worker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<MicroTime>,
    /// Details of the last accepted heartbeat: any JSON, kept across attempts so a retry resumes
    /// where the previous attempt stopped (written by the worker; at most 16 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_json_schema")]
    pub heartbeat_details: Option<RawJson>,
    /// While BackingOff: when the next attempt starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_schedule_time: Option<MicroTime>,
    /// When the cancel was first seen (deletion or spec.cancelRequested); the grace period counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_requested_time: Option<MicroTime>,
    /// The most recent failure of an attempt or of the activity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<Failure>,
    /// The worker's result on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_json_schema")]
    pub result: Option<RawJson>,
    /// Written by the worker at the end of an attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Finished attempts, most recent last (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<AttemptRecord>,
    /// The last reset done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reset: Option<LastReset>,
    /// Disrupted attempts so far (see retryPolicy.maximumDisruptions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disruptions: Option<i32>,
    /// Failed attempts that count toward retryPolicy.maximumAttempts and the backoff, since the
    /// last reset (attempts stopped by a pause or a reset, and disruptions, do not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counted_attempts: Option<i32>,
    /// Standard conditions: `Running`, `Finished`, `Succeeded`, each with a reason; `Paused` while
    /// paused; `Stalled` while something keeps the operator from moving the activity on (its
    /// reason and message say what, e.g. WorkerServiceAccountMissing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The metadata.generation this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A failure of an attempt or of the whole activity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// The attempt that failed.
    pub attempt: i32,
    /// Error type: the worker's own type, `ExitCode`, `OOMKilled`, `Evicted`, `Timeout`,
    /// `PodRejected`, `InvalidSpec`, `PodDeleted`, `PayloadTooLarge`…
    #[serde(rename = "type")]
    pub type_: String,
    /// Human-readable description.
    pub message: String,
    /// Whether this failure ended the activity without retrying.
    #[serde(default)]
    pub non_retryable: bool,
    /// Which deadline lapsed, for timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_type: Option<TimeoutType>,
    /// Exit code of the worker container, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Kubernetes reason (`Error`, `OOMKilled`, `Evicted`, `ErrImagePull`…), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the failure was recorded.
    pub time: MicroTime,
}

/// What the worker reported at the end of an attempt.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// The attempt this outcome belongs to; outcomes of other attempts are ignored.
    pub attempt: i32,
    /// Whether the attempt succeeded.
    pub succeeded: bool,
    /// The result, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_json_schema")]
    pub result: Option<RawJson>,
    /// The failure, when not succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<WorkerFailure>,
    /// The worker stopped because it was canceled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub canceled: bool,
    /// Why a stopped worker stopped, as its heartbeat reply told it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<StopCause>,
}

/// Why a worker was told to stop (the cancellation's cause in the SDKs).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
pub enum StopCause {
    /// The activity was deleted or `spec.cancelRequested` was set.
    Canceled,
    /// `spec.paused` was set.
    Paused,
    /// A new `spec.reset.requestedAt` was set.
    Reset,
    /// The heartbeat was refused: the attempt timed out or a newer one runs.
    Superseded,
}

/// A failure as reported by the worker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerFailure {
    /// Error type, matched exactly against retryPolicy.nonRetryableErrorTypes.
    #[serde(rename = "type")]
    pub type_: String,
    /// Human-readable description.
    #[serde(default)]
    pub message: String,
    /// The worker says this failure must not be retried.
    #[serde(default)]
    pub non_retryable: bool,
    /// Start the next attempt after this delay instead of the backoff (not capped by
    /// retryPolicy.maximumInterval; still bounded by scheduleToCloseTimeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_schema")]
    pub next_retry_delay: Option<String>,
}

/// One finished attempt.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRecord {
    pub attempt: i32,
    pub pod_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_time: Option<MicroTime>,
    pub closed_time: MicroTime,
    /// `Succeeded`, `Failed`, `TimedOut`, `Canceled`, or `Paused`/`Reset` (stopped by a pause or a
    /// reset; not counted toward maximumAttempts).
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
}

/// The longest duration any spec field accepts: the operator fails an Activity whose spec has a
/// longer one (`InvalidSpec`), and the chart's spec policy refuses it at `kubectl apply` time.
pub const MAX_DURATION: &str = "87600h";

/// A duration field's schema: the grammar and a length, nothing that costs CEL. The CRD carries no
/// `x-kubernetes-validations` at all: the API server evaluates a CRD's CEL rules on every write,
/// status subresource included, so each rule was paid again by every heartbeat. The checks that
/// need CEL (the 87600h bound, the cross-field rules) are the chart's spec policy
/// (`charts/activity-operator/templates/spec-policy.yaml`), which sees creates and spec updates
/// only, and the operator's own [`resolved::ResolvedSpec::from_spec`].
fn duration_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": DURATION_PATTERN,
        "maxLength": 32,
    })
}

/// A pod template as the user wrote it: its JSON text, read into a [`PodTemplateSpec`] only when a
/// pod is built ([`PodTemplate::parse`]).
///
/// The CRD's schema for it is the `PodTemplateSpec`'s (see `template_schema`), but an Activity
/// stored under the earlier free-form schema may still not read as one (`command: "sleep"` instead
/// of a list, say). Kept typed, such an object would fail to decode in the operator's watch and
/// never run or get a status; kept as text, that activity fails, naming the problem. The text is
/// also a fraction of the memory of the typed template (over 4 KiB for a single container, most of
/// it empty optional fields) in an operator that caches thousands.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PodTemplate(Box<RawValue>);

impl PodTemplate {
    /// The template, typed. The error names the field that does not read
    /// (`spec.containers[0].command: invalid type: string "sleep", expected a sequence …`).
    pub fn parse(&self) -> Result<PodTemplateSpec, TemplateError> {
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(self.0.get()))
    }

    /// The template's JSON text.
    pub fn json(&self) -> &str {
        self.0.get()
    }
}

/// A JSON value written by a user or a worker (`spec.input`, `status.heartbeatDetails`, results),
/// kept as its text. serde_json builds a `Value` recursively and refuses nesting deeper than 128
/// levels; a worker that heartbeated deeper details made its Activity undecodable, and with it the
/// operator's watch and the new leader's first list. The text is read with an explicit stack, at
/// any depth, and is parsed only where a value is needed.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// Its size in bytes, as stored.
    pub fn len(&self) -> usize {
        self.0.get().len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.get().is_empty()
    }

    /// `null`, which the API treats like an absent field.
    pub fn is_null(&self) -> bool {
        self.0.get().trim() == "null"
    }

    /// The value typed as `T` (an error for nesting deeper than serde_json's limit, among others).
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }

    /// The value as a `serde_json::Value`.
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        self.parse()
    }

    /// The JSON text of `value`.
    pub fn from_value<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        Ok(Self(serde_json::value::to_raw_value(value)?))
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl PartialEq<Value> for RawJson {
    fn eq(&self, other: &Value) -> bool {
        self.to_value().is_ok_and(|v| &v == other)
    }
}

/// Why a [`PodTemplate`] does not read as a pod template; its `Display` starts with the field's path.
pub type TemplateError = serde_path_to_error::Error<serde_json::Error>;

impl PartialEq for PodTemplate {
    fn eq(&self, other: &Self) -> bool {
        self.json() == other.json()
    }
}

fn any_json_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

/// The pod template's schema is Kubernetes' own `PodTemplateSpec`, so `kubectl apply` refuses an
/// unknown field (`comand`) or a malformed quantity (`memory: lots`) naming it, and `kubectl explain`
/// documents the template. Descriptions are kept [`TEMPLATE_DOC_DEPTH`] fields deep: with all of them
/// the CRD would outgrow the 256 KiB `last-applied-configuration` of a client-side `kubectl apply`.
///
/// The template is `x-kubernetes-map-type: atomic`: field management (managedFields) treats it as
/// one value instead of walking its hundreds of typed fields on every write of the object, each
/// heartbeat included (`tests/bench/schema_cost.py`, atomic against not, two runs on a busy
/// machine: 0.34 ms of API-server CPU less per heartbeat PATCH, the paired median of 14 rounds, 10
/// of them lower). Validation, pruning and `kubectl explain` still use
/// the whole schema. What it changes: server-side apply owns the template as a whole, so two
/// managers that apply different fields of one template conflict on `.spec.template`.
fn template_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<PodTemplateSpec>();
    let mut value = schema.as_value().clone();
    shape_template_schema(&mut value, "", 0);
    value["x-kubernetes-map-type"] = Value::from("atomic");
    // A worker pod needs a spec with at least one container (the first is the worker).
    value["required"] = serde_json::json!(["spec"]);
    value["properties"]["spec"]["required"] = serde_json::json!(["containers"]);
    value["properties"]["spec"]["properties"]["containers"]["minItems"] = Value::from(1);
    if let Ok(shaped) = Schema::try_from(value) {
        schema = shaped;
    }
    schema
}

/// How many fields deep the template's schema keeps descriptions: template → `spec` → `containers`
/// → a container's fields (`command`, `resources`, …).
pub const TEMPLATE_DOC_DEPTH: usize = 3;

/// The grammar of a resource quantity (as the API server's parser reads it), checked on every
/// quantity of the template so a bad one is refused at apply time, not when the pod is created.
pub const QUANTITY_PATTERN: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// Drops descriptions deeper than [`TEMPLATE_DOC_DEPTH`] and gives every quantity its pattern.
/// `field` is the property name of `node` ("" for list items and map values).
fn shape_template_schema(node: &mut Value, field: &str, depth: usize) {
    match node {
        Value::Object(map) => {
            // In a pod template every int-or-string is a quantity but the probes' and handlers'
            // `port` (k8s-openapi marks quantities only by a description that field docs replace).
            let int_or_string = map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
            if int_or_string && field != "port" {
                map.insert("pattern".into(), Value::String(QUANTITY_PATTERN.into()));
            }
            let quantity_doc =
                map.get("description").and_then(Value::as_str).is_some_and(|d| d.starts_with("Quantity is"));
            if quantity_doc || depth > TEMPLATE_DOC_DEPTH {
                map.remove("description");
            }
            for (key, child) in map.iter_mut() {
                match (key.as_str(), child) {
                    ("properties", Value::Object(fields)) => {
                        for (name, schema) in fields.iter_mut() {
                            shape_template_schema(schema, name, depth + 1);
                        }
                    }
                    (_, child) => shape_template_schema(child, "", depth),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| shape_template_schema(i, "", depth)),
        _ => {}
    }
}

/// The CRD as YAML, exactly as committed in `crds/activity.yaml`.
pub fn crd_yaml() -> Result<String, serde_norway::Error> {
    let yaml = serde_norway::to_string(&Activity::crd())?;
    Ok(format!("# Generated by `cargo run -p activity-crds --bin crdgen`; do not edit.\n{yaml}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template_schema_of_the_crd() -> Value {
        let crd = serde_json::to_value(Activity::crd()).expect("CRD as JSON");
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["template"].clone()
    }

    /// Every quantity in the template: (its path, its schema).
    fn quantities(node: &Value, path: String, out: &mut Vec<(String, Value)>) {
        if let Value::Object(map) = node {
            if map.get("pattern").and_then(Value::as_str) == Some(QUANTITY_PATTERN) {
                out.push((path.clone(), node.clone()));
            }
            for (key, child) in map {
                quantities(child, format!("{path}.{key}"), out);
            }
        }
    }

    #[test]
    fn the_template_schema_is_the_pod_template_with_patterned_quantities() {
        let t = template_schema_of_the_crd();
        let container = &t["properties"]["spec"]["properties"]["containers"]["items"];
        assert_eq!(container["properties"]["command"]["items"]["type"], "string");
        assert_eq!(t["properties"]["spec"]["properties"]["containers"]["minItems"], 1, "a worker needs a container");
        assert!(
            container.get("x-kubernetes-preserve-unknown-fields").is_none(),
            "unknown container fields are refused, not kept"
        );
        assert_eq!(t["x-kubernetes-map-type"], "atomic", "field management treats the template as one value");
        let mut found = Vec::new();
        quantities(&t, "template".into(), &mut found);
        let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        for path in [
            "containers.items.properties.resources.properties.limits",
            "containers.items.properties.resources.properties.requests",
            "volumes.items.properties.emptyDir.properties.sizeLimit",
        ] {
            assert!(paths.iter().any(|p| p.contains(path)), "{path} has the quantity pattern: {paths:#?}");
        }
        assert!(
            found.iter().all(|(_, q)| q.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))),
            "quantities stay int-or-string (`cpu: 1`)"
        );
    }

    /// Every rule in a CRD's schema is evaluated on every write, the status subresource's included:
    /// a heartbeat paid 1.0 ms of API-server CPU for the 13 the CRD had. The rules are the chart's
    /// spec policy now, which sees creates and spec updates only.
    #[test]
    fn the_crd_has_no_cel_rules() {
        let json = serde_json::to_string(&Activity::crd()).expect("CRD as JSON");
        assert!(!json.contains("x-kubernetes-validations"), "a CEL rule in the CRD costs every heartbeat");
        // The grammar stays in the schema: `5min` is refused at apply time without any policy.
        let crd = serde_json::to_value(Activity::crd()).expect("CRD as JSON");
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        assert_eq!(spec["startToCloseTimeout"]["pattern"], DURATION_PATTERN);
        assert_eq!(spec["retryPolicy"]["properties"]["maximumInterval"]["pattern"], DURATION_PATTERN);
    }

    #[test]
    fn the_crd_fits_a_client_side_kubectl_apply() {
        // `kubectl apply` without --server-side stores the object's JSON in an annotation, and
        // annotations are limited to 256 KiB in total.
        let json = serde_json::to_string(&Activity::crd()).expect("CRD as JSON");
        assert!(json.len() < 200 * 1024, "CRD JSON is {} bytes", json.len());
        // Descriptions stop below a container's fields; the template keeps the first levels.
        let t = template_schema_of_the_crd();
        let fields = &t["properties"]["spec"]["properties"]["containers"]["items"]["properties"];
        assert!(fields["command"]["description"].is_string(), "a container's fields are documented");
        assert!(fields["resources"]["properties"]["claims"].get("description").is_none());
    }
}
