//! Prometheus metrics, all under `activity_operator_`. Labels never carry object names.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

use crate::model::freshness::FreshRead;
use crate::model::reason::Reason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

fn label(kind: &str) -> KindLabel {
    KindLabel { kind: kind.into() }
}

/// A write the operator made to the API (the `kind` label of `activity_operator_api_writes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    Status,
    PodCreate,
    PodStop,
    PodDelete,
    PodRelease,
    Finalizer,
    ActivityDelete,
}

impl WriteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteKind::Status => "status",
            WriteKind::PodCreate => "pod_create",
            WriteKind::PodStop => "pod_stop",
            WriteKind::PodDelete => "pod_delete",
            WriteKind::PodRelease => "pod_release",
            WriteKind::Finalizer => "finalizer",
            WriteKind::ActivityDelete => "activity_delete",
        }
    }
}

/// A watched resource (the `kind` label of `activity_operator_watch_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watched {
    Activities,
    Pods,
}

impl Watched {
    pub fn as_str(self) -> &'static str {
        match self {
            Watched::Activities => "activities",
            Watched::Pods => "pods",
        }
    }
}

/// The operator's metrics.
pub struct Metrics {
    pub registry: Registry,
    /// Attempts started (worker pods created for a new attempt).
    pub attempts: Counter,
    /// Activities that reached a terminal phase, by phase.
    pub outcomes: Family<KindLabel, Counter>,
    /// Deadlines that lapsed, by timeout type.
    pub timeouts: Family<KindLabel, Counter>,
    /// Retries scheduled.
    pub retries: Counter,
    pub reconcile_duration: Histogram,
    /// Failed reconciles, by error kind.
    pub reconcile_errors: Family<KindLabel, Counter>,
    /// Writes the operator made to the API, by kind (status, pod_create, pod_delete, finalizer, activity_delete).
    pub api_writes: Family<KindLabel, Counter>,
    /// From a heartbeat's timestamp to the operator seeing it.
    pub heartbeat_lag: Histogram,
    /// Events not recorded because the queue to the API server was full.
    pub events_dropped: Counter,
    /// Unfinished activities whose next deadline is armed as a timer.
    pub deadlines_armed: Gauge,
    /// Objects read afresh from the API server because the cache was behind, by why: a write
    /// judged on the cached Activity was refused (`exit`, `timeout`, `finalizer`, `status`), a
    /// plan would create a pod without writing the status (`pod_create`), or the current
    /// attempt's pod was missing from the pod cache (`pod`).
    pub fresh_reads: Family<KindLabel, Counter>,
    /// Failures of the Activity and pod watches (an object that does not decode, a list the API
    /// server refused), by resource: the watch is restarted with backoff.
    pub watch_errors: Family<KindLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("activity_operator");
        let counters = Family::<KindLabel, Counter>::default;
        Metrics {
            attempts: registered(&mut r, "attempts", "Attempts started", Counter::default()),
            outcomes: registered(&mut r, "outcomes", "Activities finished, by terminal phase", counters()),
            timeouts: registered(&mut r, "timeouts", "Deadlines that lapsed, by timeout type", counters()),
            retries: registered(&mut r, "retries", "Retries scheduled", Counter::default()),
            reconcile_duration: registered(
                &mut r,
                "reconcile_duration_seconds",
                "Time of one reconcile",
                Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            ),
            reconcile_errors: registered(&mut r, "reconcile_errors", "Failed reconciles, by error kind", counters()),
            api_writes: registered(&mut r, "api_writes", "Writes to the Kubernetes API, by kind", counters()),
            heartbeat_lag: registered(
                &mut r,
                "heartbeat_lag_seconds",
                "From a heartbeat's timestamp to the operator observing it",
                Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            ),
            events_dropped: registered(
                &mut r,
                "events_dropped",
                "Kubernetes Events not recorded because the queue to the API server was full",
                Counter::default(),
            ),
            deadlines_armed: registered(
                &mut r,
                "deadlines_armed",
                "Unfinished activities whose next deadline is armed as a timer (after a restart: all of them once the first pass is done)",
                Gauge::default(),
            ),
            fresh_reads: registered(
                &mut r,
                "fresh_reads",
                "Objects read afresh because the cache was behind, by why: exit, timeout, finalizer or status (a write judged on the cached Activity was refused: the Activity had changed since), pod_create (a plan would create a pod without writing the status), pod (the current attempt's pod was missing from the pod cache)",
                counters(),
            ),
            watch_errors: registered(
                &mut r,
                "watch_errors",
                "Failures of the Activity and pod watches (an object that does not decode, a refused list), by resource",
                counters(),
            ),
            registry: r,
        }
    }
}

/// Registers `metric` under `name` and hands it back.
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Metrics {
    pub fn write(&self, kind: WriteKind) {
        self.api_writes.get_or_create(&label(kind.as_str())).inc();
    }

    pub fn fresh_read(&self, why: FreshRead) {
        self.fresh_reads.get_or_create(&label(why.as_str())).inc();
    }

    /// A failed reconcile, by the error's kind.
    pub fn reconcile_error(&self, kind: &str) {
        self.reconcile_errors.get_or_create(&label(kind)).inc();
    }

    /// Counts what an event reason says happened.
    pub fn count_event(&self, reason: Reason) {
        match reason {
            Reason::AttemptStarted => self.attempts.inc(),
            Reason::RetryScheduled => self.retries.inc(),
            Reason::TimedOut(kind) => self.timeouts.get_or_create(&label(kind.as_str())).inc(),
            Reason::Finished(phase) => self.outcomes.get_or_create(&label(phase.as_str())).inc(),
            _ => return,
        };
    }

    /// A watch stream failed (its objects could not be listed or decoded); it is restarted.
    pub fn watch_error(&self, resource: Watched) {
        self.watch_errors.get_or_create(&label(resource.as_str())).inc();
    }

    pub fn observe_reconcile(&self, took: Duration) {
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
