//! Kubernetes Events, published off the reconcile path.
//!
//! An Event is a notification (the Activity's status is the record), so a reconcile only queues
//! it and goes on: with many deadlines lapsing at once, waiting for each Event's POST inside the
//! reconcile delayed the next activity's timeout by that round trip. Background tasks publish the
//! queue: a few lanes, each sequential, and an activity's events always take the same lane, so
//! they keep their order. When a lane is full (the API server is far behind), new Events are
//! dropped, logged, and counted in `activity_operator_events_dropped_total`.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::planner::Event;

/// Events waiting to be published in one lane, at most.
const QUEUE: usize = 2048;
/// Lanes, so event POSTs in flight, at most.
const LANES: usize = 4;
/// On shutdown, how long queued Events may still take to go out.
const DRAIN: Duration = Duration::from_secs(5);

type Queued = (KubeEvent, ObjectReference);

/// The sending side: cheap to clone, never waits.
#[derive(Clone)]
pub struct EventQueue {
    lanes: Vec<mpsc::Sender<Queued>>,
    metrics: Arc<Metrics>,
}

/// The publishing task; [`Publisher::drain`] waits for it once every [`EventQueue`] is dropped.
pub struct Publisher {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A queue and the tasks that publish it through `recorder`.
pub fn start(recorder: Recorder, metrics: Arc<Metrics>) -> (EventQueue, Publisher) {
    let (lanes, tasks) = (0..LANES)
        .map(|_| {
            let (tx, mut rx) = mpsc::channel::<Queued>(QUEUE);
            let recorder = recorder.clone();
            let task = tokio::spawn(async move {
                while let Some((event, reference)) = rx.recv().await {
                    if let Err(e) = recorder.publish(&event, &reference).await {
                        warn!(error = %e, reason = %event.reason, "could not record event");
                    }
                }
            });
            (tx, task)
        })
        .unzip();
    (EventQueue { lanes, metrics }, Publisher { tasks })
}

impl EventQueue {
    fn lane(&self, reference: &ObjectReference) -> &mpsc::Sender<Queued> {
        let mut hash = DefaultHasher::new();
        (&reference.namespace, &reference.name).hash(&mut hash);
        &self.lanes[hash.finish() as usize % self.lanes.len()]
    }

    /// Logs, counts and queues the events of one activity.
    pub fn send(&self, reference: &ObjectReference, events: &[Event]) {
        for event in events {
            self.metrics.count_event(event.reason);
            if event.warning {
                warn!(reason = event.reason, "{}", event.message);
            } else {
                info!(reason = event.reason, "{}", event.message);
            }
            let ev = KubeEvent {
                type_: if event.warning { EventType::Warning } else { EventType::Normal },
                reason: event.reason.into(),
                note: Some(event.message.chars().take(1000).collect()),
                action: "Reconcile".into(),
                secondary: None,
            };
            if self.lane(reference).try_send((ev, reference.clone())).is_err() {
                self.metrics.events_dropped.inc();
                warn!(reason = event.reason, "event queue full: event not recorded (the status has it)");
            }
        }
    }
}

impl Publisher {
    /// Waits (at most a few seconds) until the queued events are out. Call after every
    /// [`EventQueue`] of this publisher was dropped.
    pub async fn drain(self) {
        if tokio::time::timeout(DRAIN, futures::future::join_all(self.tasks)).await.is_err() {
            warn!("shutdown: events still queued were not recorded");
        }
    }
}
