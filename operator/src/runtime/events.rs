//! Kubernetes Events (`events.k8s.io/v1`), published off the reconcile path.
//!
//! An Event is a notification (the Activity's status is the record), so a reconcile only queues
//! it and goes on: waiting for each Event's POST would delay the next activity's deadline by that
//! round trip. Background tasks publish the queue: a few lanes, each sequential, and an
//! activity's events always take the same lane, so they keep their order. When a lane is full (the
//! API server is far behind), new Events are dropped, logged, and counted in
//! `activity_operator_events_dropped_total`. Once the fence trips (leadership lost), nothing is
//! queued or published.
//!
//! An Event that repeats one published shortly before (same object, type, reason and message,
//! within [`SERIES_WINDOW`]) is not created again: the earlier one's `series` count goes up, and
//! `kubectl describe` shows "(x3 over 5m)". Each lane remembers its last [`RECENT`] Events for this,
//! so the memory is bounded whatever the number of activities (kube-runtime's `Recorder` keeps
//! every Event of the last six minutes and scans them all on every publish).

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use activity_crds::Activity;
use kube::Resource;

use crate::model::plan::Event;
use crate::runtime::metrics::Metrics;

/// Events waiting to be published in one lane, at most.
const QUEUE: usize = 2048;
/// Lanes, so event POSTs in flight, at most.
const LANES: usize = 4;
/// On shutdown, how long queued Events may still take to go out.
const DRAIN: Duration = Duration::from_secs(5);
/// A repeat within this window of the last occurrence joins the earlier Event's series.
pub const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);
/// Published Events each lane remembers to find repeats.
pub const RECENT: usize = 256;
/// `action` of every Event (events.k8s.io requires one).
const ACTION: &str = "Reconcile";

/// Who publishes: `reportingController` and `reportingInstance` of every Event.
#[derive(Clone, Debug)]
pub struct Reporter {
    pub controller: String,
    pub instance: String,
}

/// One Event to publish, about `regarding` (in `namespace`).
#[derive(Clone, Debug)]
pub(crate) struct Queued {
    namespace: String,
    regarding: ObjectReference,
    warning: bool,
    pub(crate) reason: &'static str,
    note: String,
}

impl Queued {
    fn key(&self) -> u64 {
        let mut hash = DefaultHasher::new();
        let r = &self.regarding;
        (&r.uid, &r.namespace, &r.name, self.warning, self.reason, &self.note).hash(&mut hash);
        hash.finish()
    }
}

/// What to do with an Event, given the recent ones.
#[derive(Debug, PartialEq)]
pub enum Publish {
    /// A new Event object.
    Create,
    /// A repeat: patch the Event `name` (in the object's namespace) to this series count.
    Repeat { name: String, count: i32 },
}

/// A published Event: its key, its object's name, its series count and its last occurrence.
#[derive(Debug)]
struct Published {
    key: u64,
    name: String,
    count: i32,
    last: Timestamp,
}

/// The last [`RECENT`] Events of a lane. Pure (time injected).
#[derive(Default)]
pub struct Recent {
    entries: VecDeque<Published>,
}

impl Recent {
    /// Whether an Event with this key, occurring at `now`, repeats a recent one.
    pub fn decide(&self, key: u64, now: Timestamp) -> Publish {
        match self.entries.iter().find(|e| e.key == key) {
            Some(e) if now.duration_since(e.last) < SERIES_WINDOW => {
                Publish::Repeat { name: e.name.clone(), count: e.count + 1 }
            }
            _ => Publish::Create,
        }
    }

    /// Records that the Event `name` with this key now has `count` occurrences, the last at `now`.
    pub fn record(&mut self, key: u64, name: String, count: i32, now: Timestamp) {
        self.entries.retain(|e| e.key != key);
        if self.entries.len() >= RECENT {
            self.entries.pop_front();
        }
        self.entries.push_back(Published { key, name, count, last: now });
    }

    /// Forgets an Event (its series could not be patched: it is gone from the API server).
    fn forget(&mut self, key: u64) {
        self.entries.retain(|e| e.key != key);
    }
}

/// The sending side: cheap to clone, never waits.
#[derive(Clone)]
pub struct EventQueue {
    lanes: Vec<mpsc::Sender<Queued>>,
    metrics: Arc<Metrics>,
    fence: CancellationToken,
}

/// The publishing tasks; [`Publisher::drain`] waits for them once every [`EventQueue`] is dropped.
pub struct Publisher {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A queue and the tasks that publish it as `reporter`.
/// Once `fence` is cancelled (this replica no longer leads), queued Events are dropped unsent.
pub fn start(
    client: Client,
    reporter: Reporter,
    metrics: Arc<Metrics>,
    fence: CancellationToken,
) -> (EventQueue, Publisher) {
    let (lanes, tasks) = (0..LANES)
        .map(|_| {
            let (tx, mut rx) = mpsc::channel::<Queued>(QUEUE);
            let (client, reporter, fence) = (client.clone(), reporter.clone(), fence.clone());
            let task = tokio::spawn(async move {
                let mut recent = Recent::default();
                while let Some(event) = rx.recv().await {
                    if fence.is_cancelled() {
                        continue;
                    }
                    if let Err(e) = publish(&client, &reporter, &mut recent, &event).await {
                        warn!(error = %e, reason = event.reason, "could not record event");
                    }
                }
            });
            (tx, task)
        })
        .unzip();
    (EventQueue { lanes, metrics, fence }, Publisher { tasks })
}

async fn publish(client: &Client, reporter: &Reporter, recent: &mut Recent, event: &Queued) -> kube::Result<()> {
    let ns = event.namespace.as_str();
    let api: Api<K8sEvent> = Api::namespaced(client.clone(), ns);
    let key = event.key();
    let now = Timestamp::now();
    if let Publish::Repeat { name, count } = recent.decide(key, now) {
        let series = json!({"series": EventSeries { count, last_observed_time: MicroTime(now) }});
        match api.patch(&name, &PatchParams::default(), &Patch::Merge(&series)).await {
            Ok(_) => {
                recent.record(key, name, count, now);
                return Ok(());
            }
            // Expired (Events live an hour by default): start a new one.
            Err(kube::Error::Api(status)) if status.code == 404 => recent.forget(key),
            Err(e) => return Err(e),
        }
    }
    let name = format!("{}.{:x}", event.regarding.name.as_deref().unwrap_or("activity"), now.as_nanosecond());
    let object = K8sEvent {
        metadata: ObjectMeta { name: Some(name.clone()), namespace: Some(ns.to_owned()), ..Default::default() },
        action: Some(ACTION.into()),
        reason: Some(event.reason.into()),
        note: Some(event.note.clone()),
        type_: Some(if event.warning { "Warning" } else { "Normal" }.into()),
        event_time: Some(MicroTime(now)),
        regarding: Some(event.regarding.clone()),
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(reporter.instance.clone()),
        ..Default::default()
    };
    api.create(&PostParams::default(), &object).await?;
    recent.record(key, name, 1, now);
    Ok(())
}

impl EventQueue {
    fn lane(&self, reference: &ObjectReference) -> &mpsc::Sender<Queued> {
        let mut hash = DefaultHasher::new();
        (&reference.namespace, &reference.name).hash(&mut hash);
        &self.lanes[hash.finish() as usize % self.lanes.len()]
    }

    /// A queue whose lanes are `lanes` (the receiving ends are the caller's).
    #[cfg(test)]
    pub(crate) fn detached(metrics: Arc<Metrics>, fence: CancellationToken) -> (Self, Vec<mpsc::Receiver<Queued>>) {
        let (lanes, receivers) = (0..LANES).map(|_| mpsc::channel::<Queued>(QUEUE)).unzip();
        (EventQueue { lanes, metrics, fence }, receivers)
    }

    /// Logs, counts and queues the events of one activity. Nothing is queued once the fence has
    /// tripped, nor for an object without a namespace (Events are namespaced).
    pub fn send(&self, act: &Activity, events: &[Event]) {
        if self.fence.is_cancelled() {
            return;
        }
        let reference = act.object_ref(&());
        let Some(namespace) = reference.namespace.clone() else {
            warn!("an Activity without a namespace: its Events are not recorded");
            return;
        };
        for event in events {
            self.metrics.count_event(event.reason);
            let reason = event.reason.as_str();
            if event.warning {
                warn!(reason, "{}", event.message);
            } else {
                info!(reason, "{}", event.message);
            }
            let queued = Queued {
                namespace: namespace.clone(),
                regarding: reference.clone(),
                warning: event.warning,
                reason,
                // The API server refuses a note over 1 KiB.
                note: event.message.chars().take(1000).collect(),
            };
            if self.lane(&reference).try_send(queued).is_err() {
                self.metrics.events_dropped.inc();
                warn!(reason, "event queue full: event not recorded (the status has it)");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("time")
    }

    fn queued(name: &str, note: &str) -> Queued {
        Queued {
            namespace: "ns".into(),
            regarding: ObjectReference { name: Some(name.into()), namespace: Some("ns".into()), ..Default::default() },
            warning: true,
            reason: "PodCreateFailed",
            note: note.into(),
        }
    }

    #[test]
    fn a_repeat_within_the_window_joins_the_series() {
        let mut recent = Recent::default();
        let e = queued("a", "cannot create the worker pod");
        assert_eq!(recent.decide(e.key(), at(0)), Publish::Create);
        recent.record(e.key(), "a.1".into(), 1, at(0));
        assert_eq!(recent.decide(e.key(), at(60)), Publish::Repeat { name: "a.1".into(), count: 2 });
        recent.record(e.key(), "a.1".into(), 2, at(60));
        // The window counts from the last occurrence.
        assert_eq!(recent.decide(e.key(), at(60 + 359)), Publish::Repeat { name: "a.1".into(), count: 3 });
        assert_eq!(recent.decide(e.key(), at(60 + 360)), Publish::Create);
    }

    #[test]
    fn other_objects_messages_and_reasons_are_other_events() {
        let mut recent = Recent::default();
        let e = queued("a", "m");
        recent.record(e.key(), "a.1".into(), 1, at(0));
        for other in [queued("b", "m"), queued("a", "n"), Queued { reason: "Failed", ..queued("a", "m") }] {
            assert_eq!(recent.decide(other.key(), at(1)), Publish::Create, "{other:?}");
        }
        let recreated =
            Queued { regarding: ObjectReference { uid: Some("u2".into()), ..e.regarding.clone() }, ..e.clone() };
        assert_eq!(recent.decide(recreated.key(), at(1)), Publish::Create, "same name, another object");
    }

    #[test]
    fn the_memory_of_recent_events_is_bounded() {
        let mut recent = Recent::default();
        let first = queued("a0", "m");
        for i in 0..RECENT + 10 {
            let e = queued(&format!("a{i}"), "m");
            recent.record(e.key(), format!("a{i}.1"), 1, at(0));
        }
        assert_eq!(recent.entries.len(), RECENT);
        // The oldest were forgotten: a repeat of them starts a new Event.
        assert_eq!(recent.decide(first.key(), at(1)), Publish::Create);
        let last = queued(&format!("a{}", RECENT + 9), "m");
        assert!(matches!(recent.decide(last.key(), at(1)), Publish::Repeat { count: 2, .. }));
    }
}
