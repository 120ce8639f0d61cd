//! What every reconcile shares: the API, the pod cache, the Event queue, the metrics, the
//! controller's settings and the per-object memory.

use std::sync::Arc;
use std::time::Instant;

use activity_crds::{ATTEMPT_HISTORY, Activity};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio_util::sync::CancellationToken;

use crate::model::plan::Event;
use crate::model::pod_view::{PodView, pod_name};
use crate::runtime::error::Error;
use crate::runtime::events::EventQueue;
use crate::runtime::memory::{Memory, PodKey, ReadyGate};
use crate::runtime::metrics::Metrics;
use crate::runtime::worker_pod::WorkerPod;

/// Settings of one controller (one watched namespace, or all).
#[derive(Clone, Debug)]
pub struct ControllerSettings {
    /// `None` watches every namespace.
    pub namespace: Option<String>,
    pub concurrency: u16,
    /// Service account of worker pods whose template names none.
    pub worker_service_account: String,
    /// Cancelled when this replica stops leading: from then on no write is sent.
    pub fence: CancellationToken,
}

/// Where an Activity is, checked: an object without a namespace or uid is an error, never
/// silently the empty string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityId {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl ActivityId {
    pub fn of(act: &Activity) -> Result<Self, Error> {
        Ok(ActivityId {
            namespace: act.namespace().ok_or(Error::NoNamespace)?,
            name: act.name_any(),
            uid: act.uid().ok_or(Error::NoUid)?,
        })
    }

    /// The key of this activity's pod of `attempt`.
    pub fn pod_key(&self, attempt: i32) -> PodKey {
        let pod = ObjectRef::new(&pod_name(&self.name, attempt)).within(&self.namespace);
        PodKey { pod, activity_uid: self.uid.clone() }
    }
}

/// Shared state of the reconciler, over the API `A`.
pub struct Context<A> {
    pub api: A,
    pub pods: Store<WorkerPod>,
    pub pods_ready: ReadyGate,
    pub events: EventQueue,
    pub metrics: Arc<Metrics>,
    pub settings: ControllerSettings,
    pub memory: Memory,
}

impl<A> Context<A> {
    /// The pods of the activity's recent attempts, from the cache, by their deterministic names;
    /// the current attempt's pod also when the operator has just created it and the cache does not
    /// show it yet.
    pub fn pods_of(&self, act: &Activity, id: &ActivityId) -> Vec<PodView> {
        let current = act.status.as_ref().and_then(|s| s.attempt).unwrap_or(0);
        let first = (current - ATTEMPT_HISTORY as i32).max(1);
        let mut views = Vec::new();
        for n in first..=current {
            let key = id.pod_key(n);
            match self.pods.get(&key.pod) {
                Some(pod) => {
                    self.memory.created.forget(&key);
                    if pod.owner_references().iter().any(|o| o.uid == id.uid) {
                        views.push(PodView::from_pod(&pod));
                    }
                }
                None if n == current && self.memory.created.holds(&key, Instant::now()) => {
                    views.push(PodView::created(key.pod.name, n));
                }
                None => {}
            }
        }
        views
    }

    /// Heartbeat lag (receipt by the operator minus the worker's `lastHeartbeatTime`), once per
    /// heartbeat, from the watch stream: heartbeats wake no reconcile.
    pub fn observe_heartbeat(&self, act: &Activity, now: Timestamp) {
        let Some(status) = act.status.as_ref().filter(|s| !s.phase.is_some_and(|p| p.is_terminal())) else {
            return;
        };
        let Some(beat) = status.last_heartbeat_time.as_ref().map(|t| t.0) else {
            return;
        };
        if self.memory.heartbeats.is_new(&ObjectRef::from_obj(act), beat) {
            let lag = now.duration_since(beat).as_secs_f64().max(0.0);
            self.metrics.heartbeat_lag.observe(lag);
        }
    }

    /// Err([`Error::NotLeader`]) once this replica has stopped leading: checked before every write,
    /// so a deposed leader sends none while its reconciles wind down.
    pub fn may_write(&self) -> Result<(), Error> {
        if self.settings.fence.is_cancelled() { Err(Error::NotLeader) } else { Ok(()) }
    }

    /// Drops the per-object memory of a finished activity (the stale-cache marks expire by themselves).
    pub fn forget(&self, key: &ObjectRef<Activity>) {
        self.memory.failures.clear(key);
        self.memory.problems.clear(key);
        self.memory.heartbeats.forget(key);
        self.set_armed(key, false);
    }

    /// Records whether an unfinished activity has a deadline timer armed.
    pub fn set_armed(&self, key: &ObjectRef<Activity>, armed: bool) {
        if let Some(count) = self.memory.armed.set(key, armed) {
            self.metrics.deadlines_armed.set(count as i64);
        }
    }

    /// Queues the events (published off the reconcile path, see [`crate::runtime::events`]).
    pub fn publish(&self, act: &Activity, events: &[Event]) {
        if !events.is_empty() {
            self.events.send(act, events);
        }
    }
}
