//! What the runtime remembers of each object between passes, each kind a type with its own
//! pruning rule. Nothing here is needed for correctness after a restart: every memory only saves
//! round trips or keeps a metric honest.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use activity_crds::Activity;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::runtime::worker_pod::WorkerPod;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Keeps a map of per-object memory bounded: once it holds 1,024 entries, those `alive` rejects
/// go. An entry is otherwise removed only when its object is looked at again, which a deleted
/// activity never is.
fn prune_when_large<K, V>(map: &mut HashMap<K, V>, alive: impl Fn(&V) -> bool) {
    if map.len() >= 1024 {
        map.retain(|_, v| alive(v));
    }
}

/// Whether a reflector store has finished its first list, for any number of concurrent waiters.
///
/// kube-runtime's `Store::wait_until_ready` wakes only one of several tasks waiting at the same
/// time (its readiness is a oneshot receiver holding a single waker). One task waits on the store
/// here and publishes the result on a watch channel, which wakes every waiter.
#[derive(Clone)]
pub struct ReadyGate(tokio::sync::watch::Receiver<bool>);

impl ReadyGate {
    pub fn of<K>(store: &Store<K>) -> Self
    where
        K: Resource + Clone + Send + Sync + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
    {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let store = store.clone();
        tokio::spawn(async move {
            if store.wait_until_ready().await.is_ok() {
                let _ = tx.send(true);
            }
        });
        Self(rx)
    }

    /// Waits until the store is ready, at most `limit`; whether it is.
    pub async fn wait(&self, limit: Duration) -> bool {
        let mut rx = self.0.clone();
        matches!(tokio::time::timeout(limit, rx.wait_for(|ready| *ready)).await, Ok(Ok(_)))
    }
}

/// A pod, and the uid of the activity it belongs to (a recreated activity of the same name has
/// its own).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodKey {
    pub pod: ObjectRef<WorkerPod>,
    pub activity_uid: String,
}

/// Pods remembered for at most [`RecentPods::KEEP`] each, with when; expired entries are dropped
/// once 1,024 are held (a deleted activity's pod is never looked up again).
#[derive(Default)]
struct RecentPods(Mutex<HashMap<PodKey, Instant>>);

impl RecentPods {
    const KEEP: Duration = Duration::from_secs(30);

    fn prune(map: &mut HashMap<PodKey, Instant>, now: Instant) {
        prune_when_large(map, |at| now.saturating_duration_since(*at) < Self::KEEP);
    }

    fn record(&self, pod: PodKey, now: Instant) {
        let mut map = lock(&self.0);
        Self::prune(&mut map, now);
        map.insert(pod, now);
    }

    /// When `pod` was first recorded (now, if it was not, or if that was more than `KEEP` ago).
    fn first_seen(&self, pod: PodKey, now: Instant) -> Instant {
        let mut map = lock(&self.0);
        Self::prune(&mut map, now);
        let at = map.entry(pod).or_insert(now);
        if now.saturating_duration_since(*at) >= Self::KEEP {
            *at = now;
        }
        *at
    }

    /// Whether `pod` was recorded less than `KEEP` ago.
    fn holds(&self, pod: &PodKey, now: Instant) -> bool {
        let mut map = lock(&self.0);
        match map.get(pod) {
            Some(at) if now.saturating_duration_since(*at) < Self::KEEP => true,
            Some(_) => {
                map.remove(pod);
                false
            }
            None => false,
        }
    }

    fn forget(&self, pod: &PodKey) {
        let mut map = lock(&self.0);
        if !map.is_empty() {
            map.remove(pod);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.0).len()
    }
}

/// Pods the operator created that its pod cache may not show yet. The operator's own status write
/// wakes a reconcile that can run before the new pod reaches the cache; without this it would
/// plan the pod again only to be told AlreadyExists. After `KEEP` the pod is created again, which
/// is harmless (same name).
#[derive(Default)]
pub struct CreatedPods(RecentPods);

impl CreatedPods {
    pub const KEEP: Duration = RecentPods::KEEP;

    pub fn record(&self, pod: PodKey, now: Instant) {
        self.0.record(pod, now)
    }

    pub fn holds(&self, pod: &PodKey, now: Instant) -> bool {
        self.0.holds(pod, now)
    }

    /// The cache shows the pod: nothing left to wait for.
    pub fn forget(&self, pod: &PodKey) {
        self.0.forget(pod)
    }
}

/// How long an exit without an outcome waits for the outcome to reach the cache before it is
/// judged (with a guarded write, so a late outcome is never lost either way).
pub const OUTCOME_GRACE: Duration = Duration::from_secs(1);

/// Worker exits the cache shows with no outcome of that attempt, from when the operator first saw
/// each: such an exit is judged only [`OUTCOME_GRACE`] later (the outcome's event wakes the
/// reconcile sooner).
#[derive(Default)]
pub struct UnreportedExits(RecentPods);

impl UnreportedExits {
    pub const KEEP: Duration = RecentPods::KEEP;

    pub fn first_seen(&self, pod: PodKey, now: Instant) -> Instant {
        self.0.first_seen(pod, now)
    }

    /// Judged: a new exit of the same pod starts afresh.
    pub fn forget(&self, pod: &PodKey) {
        self.0.forget(pod)
    }
}

/// How long the stale-cache guard believes a version is out of date: a saturated control plane
/// can deliver watch events a minute or more late. The writes themselves are guarded by
/// resourceVersion, so a longer lag costs round trips, never a wrong status.
pub const STALE_MARK_KEEP: Duration = Duration::from_secs(120);

/// Resource versions made out of date by our own writes, and until when to believe so.
#[derive(Debug, Clone)]
struct StaleMark {
    versions: Vec<String>,
    until: Instant,
}

/// Per object: the resourceVersions our last writes replaced. While the cache still shows one of
/// them it has not caught up with our own writes, and acting on it would repeat work.
#[derive(Default)]
pub struct StaleVersions(Mutex<HashMap<ObjectRef<Activity>, StaleMark>>);

impl StaleVersions {
    /// Whether the cache's `version` of `key` is one our writes replaced (an expired mark goes).
    pub fn shows_outdated(&self, key: &ObjectRef<Activity>, version: Option<&str>, now: Instant) -> bool {
        let mut map = lock(&self.0);
        match map.get(key) {
            Some(mark) if now < mark.until && version.is_some_and(|v| mark.versions.iter().any(|m| m == v)) => true,
            Some(_) => {
                map.remove(key);
                false
            }
            None => false,
        }
    }

    /// Until the cache shows a version other than `versions`, it is behind our writes; the mark
    /// lasts [`STALE_MARK_KEEP`], not for good, so the marks of deleted activities go.
    pub fn mark(&self, key: &ObjectRef<Activity>, versions: Vec<String>, now: Instant) {
        let mut map = lock(&self.0);
        Self::prune(&mut map, now);
        map.insert(key.clone(), StaleMark { versions, until: now + STALE_MARK_KEEP });
    }

    /// Drops the marks that have expired, once the map is large.
    fn prune(map: &mut HashMap<ObjectRef<Activity>, StaleMark>, now: Instant) {
        prune_when_large(map, |mark| now < mark.until);
    }
}

/// Per object: consecutive failed passes, for the error backoff.
#[derive(Default)]
pub struct Failures(Mutex<HashMap<ObjectRef<Activity>, u32>>);

impl Failures {
    pub fn count(&self, key: &ObjectRef<Activity>) -> u32 {
        lock(&self.0).get(key).copied().unwrap_or(0)
    }

    /// One more failure; how many now.
    pub fn add(&self, key: &ObjectRef<Activity>) -> u32 {
        let mut map = lock(&self.0);
        let n = map.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    pub fn clear(&self, key: &ObjectRef<Activity>) {
        lock(&self.0).remove(key);
    }
}

/// Per object: the last heartbeat time seen, so the lag histogram counts each heartbeat once.
#[derive(Default)]
pub struct Heartbeats(Mutex<HashMap<ObjectRef<Activity>, Timestamp>>);

impl Heartbeats {
    /// Whether `beat` is newer than the last one seen of `key` (and remembers it if so).
    pub fn is_new(&self, key: &ObjectRef<Activity>, beat: Timestamp) -> bool {
        let mut seen = lock(&self.0);
        if seen.get(key).is_some_and(|last| *last >= beat) {
            return false;
        }
        seen.insert(key.clone(), beat);
        true
    }

    pub fn forget(&self, key: &ObjectRef<Activity>) {
        lock(&self.0).remove(key);
    }
}

/// Unfinished activities with an armed deadline timer (the `deadlines_armed` gauge).
#[derive(Default)]
pub struct ArmedDeadlines(Mutex<HashSet<ObjectRef<Activity>>>);

impl ArmedDeadlines {
    /// Records whether `key` has a timer armed; the new count when it changed.
    pub fn set(&self, key: &ObjectRef<Activity>, armed: bool) -> Option<usize> {
        let mut set = lock(&self.0);
        let changed = if armed { set.insert(key.clone()) } else { set.remove(key) };
        changed.then_some(set.len())
    }
}

/// Per object: the problem last shown in the `Stalled` condition, so it is written once.
#[derive(Default)]
pub struct ShownProblems(Mutex<HashMap<ObjectRef<Activity>, String>>);

impl ShownProblems {
    pub fn is_shown(&self, key: &ObjectRef<Activity>, message: &str) -> bool {
        lock(&self.0).get(key).is_some_and(|m| m == message)
    }

    pub fn shown(&self, key: &ObjectRef<Activity>, message: String) {
        lock(&self.0).insert(key.clone(), message);
    }

    /// Forgets the problem of `key`; whether there was one.
    pub fn clear(&self, key: &ObjectRef<Activity>) -> bool {
        lock(&self.0).remove(key).is_some()
    }
}

/// Everything the runtime remembers per object.
#[derive(Default)]
pub struct Memory {
    pub failures: Failures,
    pub stale: StaleVersions,
    pub heartbeats: Heartbeats,
    pub armed: ArmedDeadlines,
    pub created: CreatedPods,
    pub exits: UnreportedExits,
    pub problems: ShownProblems,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::watcher::Event as WatchEvent;

    fn key(name: &str, uid: &str) -> PodKey {
        PodKey { pod: ObjectRef::new(name).within("ns"), activity_uid: uid.into() }
    }

    #[test]
    fn a_created_pod_is_held_until_the_cache_shows_it_or_for_keep() {
        let created = CreatedPods::default();
        let pod = key("a-1", "uid-1");
        let t0 = Instant::now();
        assert!(!created.holds(&pod, t0), "never created");
        created.record(pod.clone(), t0);
        assert!(created.holds(&pod, t0 + Duration::from_secs(29)));
        let recreated = PodKey { activity_uid: "uid-2".into(), ..pod.clone() };
        assert!(!created.holds(&recreated, t0), "a recreated activity of the same name has its own pod");
        assert!(!created.holds(&pod, t0 + CreatedPods::KEEP), "after KEEP it is created again");
        created.record(pod.clone(), t0);
        created.forget(&pod);
        assert!(!created.holds(&pod, t0), "the cache shows it: nothing left to wait for");
        // Entries the cache never showed (the activity was deleted) do not pile up.
        for i in 0..1024 {
            created.record(key(&format!("old-{i}"), "u"), t0);
        }
        created.record(pod.clone(), t0 + CreatedPods::KEEP);
        assert_eq!(created.0.len(), 1);
    }

    #[test]
    fn an_exit_is_timed_from_when_it_was_first_seen() {
        let exits = UnreportedExits::default();
        let pod = key("a-1", "uid-1");
        let t0 = Instant::now();
        assert_eq!(exits.first_seen(pod.clone(), t0), t0);
        assert_eq!(exits.first_seen(pod.clone(), t0 + OUTCOME_GRACE), t0, "seen again: still the first time");
        exits.forget(&pod);
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(exits.first_seen(pod.clone(), t1), t1, "judged and forgotten: a new exit starts afresh");
        let t2 = t1 + UnreportedExits::KEEP;
        assert_eq!(exits.first_seen(pod, t2), t2, "an entry older than KEEP is not trusted");
    }

    #[test]
    fn expired_stale_marks_of_deleted_activities_do_not_pile_up() {
        let t0 = Instant::now();
        let mark = |version: &str, until| StaleMark { versions: vec![version.into()], until };
        let mut stale = HashMap::new();
        for i in 0..1023 {
            stale.insert(ObjectRef::new(&format!("gone-{i}")).within("ns"), mark("1", t0));
        }
        stale.insert(ObjectRef::new("live").within("ns"), mark("2", t0 + Duration::from_secs(5)));
        StaleVersions::prune(&mut stale, t0 + Duration::from_secs(1));
        assert_eq!(stale.len(), 1, "only the mark that has not expired is kept");
        StaleVersions::prune(&mut stale, t0 + Duration::from_secs(10));
        assert_eq!(stale.len(), 1, "a small map is left alone");
    }

    /// Regression: with kube-runtime's own `wait_until_ready`, only one of several concurrent
    /// waiters woke up; the others sat out their timeout (30 s after every operator restart).
    /// Virtual time (paused clock): a waiter that was not woken shows 30 s elapsed.
    #[tokio::test(start_paused = true)]
    async fn every_concurrent_waiter_sees_the_store_ready() {
        let (store, mut writer) = kube::runtime::reflector::store::<WorkerPod>();
        let gate = ReadyGate::of(&store);
        let start = tokio::time::Instant::now();
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let gate = gate.clone();
                tokio::spawn(async move { (gate.wait(Duration::from_secs(30)).await, start.elapsed()) })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        writer.apply_watcher_event(&WatchEvent::Init);
        writer.apply_watcher_event(&WatchEvent::InitDone);
        for w in waiters {
            let (ready, waited) = w.await.expect("waiter");
            assert!(ready, "the store is ready");
            assert!(waited < Duration::from_secs(1), "a waiter was not woken: it waited {waited:?}");
        }
        // And a store that never lists is reported as not ready after the limit.
        let (never, _writer) = kube::runtime::reflector::store::<WorkerPod>();
        assert!(!ReadyGate::of(&never).wait(Duration::from_secs(30)).await);
    }
}
