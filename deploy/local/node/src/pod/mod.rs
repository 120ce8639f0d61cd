//! The pod worker: one task per pod bound to this node. It is level-triggered: after every event
//! (pod update, process exit, probe result, timer) [`PodWorker::step`] compares what is with what
//! should be, acts, and writes the pod status if it changed.

mod report;
mod slot;
mod start;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info};

use crate::ctx::NodeCtx;
use crate::ipam::{self, HOST_IP};
use crate::policy::{RestartPolicy, SlotKind};
use crate::probe::{ProbeEvent, ProbeKind};
use crate::process::{self, ExitEvent};
use crate::status::{ConditionClock, State, Terminated};

use slot::Slot;

/// Why the pod's containers are being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// `metadata.deletionTimestamp` is set: stop, report, delete the pod object.
    Deletion,
    /// `activeDeadlineSeconds` passed: stop, phase Failed.
    Deadline,
    /// The regular containers are done: stop the sidecars.
    Completed,
    /// The pod object is gone from the API: stop quickly, report nothing.
    Gone,
    /// The node shuts down: stop quickly, report nothing.
    Shutdown,
}

/// Grace period when the pod object is gone or the node stops.
const QUICK_GRACE: Duration = Duration::from_secs(2);
/// The kubelet never gives less than this.
const MIN_GRACE: Duration = Duration::from_secs(2);
/// Retry delay for failed API writes.
const RETRY: Duration = Duration::from_secs(2);

/// Credentials written for the pod.
#[derive(Debug)]
struct Creds {
    kubeconfig: PathBuf,
    refresh_at: Instant,
}

/// The worker of one pod.
pub struct PodWorker {
    ctx: Arc<NodeCtx>,
    pod: Arc<Pod>,
    rx: watch::Receiver<Arc<Pod>>,
    uid: String,
    namespace: String,
    name: String,
    policy: RestartPolicy,
    slots: Vec<Slot>,
    n_init: usize,
    exits_tx: mpsc::UnboundedSender<ExitEvent>,
    exits_rx: mpsc::UnboundedReceiver<ExitEvent>,
    probes_tx: mpsc::UnboundedSender<ProbeEvent>,
    probes_rx: mpsc::UnboundedReceiver<ProbeEvent>,
    generation: u64,
    pod_ip: Option<Ipv4Addr>,
    pooled_ip: bool,
    dir: PathBuf,
    sandbox_ready: bool,
    sandbox_retry: Option<(Instant, Duration)>,
    creds: Option<Creds>,
    start_time: Timestamp,
    ending: Option<Ending>,
    terminal: bool,
    deadline_exceeded: bool,
    /// Adopted in a terminal phase: the status is final, never rewritten.
    frozen: bool,
    deleted: bool,
    delete_retry: Option<Instant>,
    clock: ConditionClock,
    last_patch: Option<Value>,
    patch_retry: Option<Instant>,
    gone: bool,
}

impl PodWorker {
    /// A worker for `pod` (the latest version is in `rx`); `claimed_ip` is the pod's address from
    /// an earlier run of the node, already taken from the pool.
    pub fn new(ctx: Arc<NodeCtx>, rx: watch::Receiver<Arc<Pod>>, claimed_ip: Option<Ipv4Addr>) -> Self {
        let pod = rx.borrow().clone();
        let meta = &pod.metadata;
        let (uid, namespace, name) = (
            meta.uid.clone().unwrap_or_default(),
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        );
        let spec = pod.spec.clone().unwrap_or_default();
        let policy = RestartPolicy::parse(spec.restart_policy.as_deref());
        let now = Instant::now();
        let now_ts = Timestamp::now();
        let init = spec.init_containers.unwrap_or_default();
        let n_init = init.len();
        let regular_reason = if n_init > 0 { "PodInitializing" } else { "ContainerCreating" };
        let mut slots: Vec<Slot> = init
            .into_iter()
            .map(|c| {
                let kind =
                    if c.restart_policy.as_deref() == Some("Always") { SlotKind::Sidecar } else { SlotKind::Init };
                Slot::new(kind, c, "PodInitializing", now)
            })
            .chain(spec.containers.into_iter().map(|c| Slot::new(SlotKind::Regular, c, regular_reason, now)))
            .collect();
        let old = pod.status.as_ref();
        let phase = old.and_then(|s| s.phase.as_deref());
        let frozen = matches!(phase, Some("Succeeded" | "Failed"));
        let old_statuses: Vec<_> = old
            .into_iter()
            .flat_map(|s| s.init_container_statuses.iter().flatten().chain(s.container_statuses.iter().flatten()))
            .collect();
        for slot in &mut slots {
            if let Some(prev) = old_statuses.iter().find(|s| s.name == slot.spec.name) {
                slot.adopt(prev, policy, now, now_ts);
            }
        }
        if frozen {
            for slot in &mut slots {
                slot.next_start = None;
            }
        }
        let host_network = pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false);
        let pod_ip = if host_network { Some(HOST_IP) } else { claimed_ip };
        let start_time = old.and_then(|s| s.start_time.as_ref()).map_or(now_ts, |t| t.0);
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        let (probes_tx, probes_rx) = mpsc::unbounded_channel();
        let dir = ctx.pod_dir(&namespace, &name, &uid);
        Self {
            clock: ConditionClock::from_pod(&pod),
            ctx,
            rx,
            uid,
            namespace,
            name,
            policy,
            slots,
            n_init,
            exits_tx,
            exits_rx,
            probes_tx,
            probes_rx,
            generation: 0,
            pooled_ip: pod_ip.is_some() && !host_network,
            pod_ip,
            dir,
            sandbox_ready: false,
            sandbox_retry: None,
            creds: None,
            start_time,
            ending: None,
            terminal: frozen,
            deadline_exceeded: false,
            frozen,
            deleted: false,
            delete_retry: None,
            last_patch: None,
            patch_retry: None,
            gone: false,
            pod,
        }
    }

    fn label(&self) -> String {
        format!("{}_{}({})", self.name, self.namespace, self.uid)
    }

    /// Runs until the pod is gone from the API (or the node shuts down) and its processes ended.
    pub async fn run(mut self) {
        debug!(pod = %self.label(), "pod worker started");
        loop {
            self.step().await;
            if self.finished() {
                break;
            }
            let wake = self.next_wakeup();
            tokio::select! {
                changed = self.rx.changed(), if !self.gone => match changed {
                    Ok(()) => self.pod = self.rx.borrow_and_update().clone(),
                    Err(_) => self.gone = true,
                },
                Some(ev) = self.exits_rx.recv() => self.on_exit(ev),
                Some(ev) = self.probes_rx.recv() => self.on_probe(ev),
                () = self.ctx.shutdown.cancelled(), if self.ending != Some(Ending::Shutdown) => {
                    self.stop_all(Ending::Shutdown, QUICK_GRACE);
                }
                () = tokio::time::sleep_until(wake.into()) => {}
            }
        }
        self.cleanup();
        debug!(pod = %self.label(), "pod worker finished");
    }

    fn any_running(&self) -> bool {
        self.slots.iter().any(|s| s.run.is_some())
    }

    fn finished(&self) -> bool {
        matches!(self.ending, Some(Ending::Gone | Ending::Shutdown)) && !self.any_running()
            || (self.gone && self.terminal && !self.any_running())
    }

    fn cleanup(&mut self) {
        for slot in &self.slots {
            self.ctx.set_running(&format!("{}/{}/{}", self.namespace, self.name, slot.spec.name), false);
        }
        if self.pooled_ip
            && let Some(ip) = self.pod_ip
            && ipam::in_pool(ip)
            && let Ok(mut pool) = self.ctx.ips.lock()
        {
            pool.release(ip);
        }
        if self.gone {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// The grace period for stopping the pod's containers.
    fn pod_grace(&self) -> Duration {
        let spec_grace = self.pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds);
        let secs = self.pod.metadata.deletion_grace_period_seconds.or(spec_grace).unwrap_or(30);
        Duration::from_secs(u64::try_from(secs).unwrap_or(0)).max(MIN_GRACE)
    }

    /// Records why the pod stops; a weightier reason replaces a lesser one.
    fn raise_ending(&mut self, ending: Ending) {
        let weight = |e: Option<Ending>| match e {
            None => 0,
            Some(Ending::Completed | Ending::Deadline) => 1,
            Some(Ending::Deletion) => 2,
            Some(Ending::Gone) => 3,
            Some(Ending::Shutdown) => 4,
        };
        if weight(Some(ending)) > weight(self.ending) {
            if self.any_running() {
                info!(pod = %self.label(), ?ending, "stopping the pod's containers");
            }
            self.ending = Some(ending);
        }
    }

    /// SIGTERM to every running container; SIGKILL after `grace`. Cancels pending starts.
    fn stop_all(&mut self, ending: Ending, grace: Duration) {
        let now = Instant::now();
        self.raise_ending(ending);
        let kill_at = now + grace;
        let quiet = matches!(self.ending, Some(Ending::Gone | Ending::Shutdown));
        let mut stopping = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            slot.next_start = None;
            let Some(run) = slot.run.as_mut() else { continue };
            match run.kill_at {
                None => {
                    process::signal_group(run.pid, Signal::SIGTERM);
                    run.kill_at = Some(kill_at);
                    stopping.push((i, slot.spec.name.clone()));
                }
                Some(at) if kill_at < at => run.kill_at = Some(kill_at),
                Some(_) => {}
            }
            slot.update_readiness();
        }
        if !quiet {
            for (i, name) in stopping {
                self.event(i, false, "Killing", format!("Stopping container {name}"));
            }
        }
    }

    /// How long until `activeDeadlineSeconds` runs out (zero once it has).
    fn deadline_left(&self) -> Option<Duration> {
        let secs = self.pod.spec.as_ref()?.active_deadline_seconds?;
        let end_ms = self.start_time.as_millisecond().saturating_add(secs.saturating_mul(1000));
        let left_ms = end_ms.saturating_sub(Timestamp::now().as_millisecond());
        Some(Duration::from_millis(u64::try_from(left_ms).unwrap_or(0)))
    }

    async fn step(&mut self) {
        let now = Instant::now();
        if self.gone && !matches!(self.ending, Some(Ending::Gone | Ending::Shutdown)) {
            self.stop_all(Ending::Gone, QUICK_GRACE);
        }
        if !self.terminal {
            if self.pod.metadata.deletion_timestamp.is_some() {
                // Also shortens the grace period when the pod is deleted again with a shorter one.
                self.stop_all(Ending::Deletion, self.pod_grace());
            } else if self.ending.is_none() && self.deadline_left().is_some_and(|d| d.is_zero()) {
                self.deadline_exceeded = true;
                self.ctx.event(
                    &self.pod,
                    None,
                    true,
                    "DeadlineExceeded",
                    "Pod was active on the node longer than the specified deadline".into(),
                );
                self.stop_all(Ending::Deadline, self.pod_grace());
            }
        } else if self.pod.metadata.deletion_timestamp.is_some() {
            self.raise_ending(Ending::Deletion);
        }
        self.escalate(now);

        if self.ending.is_some() {
            if !self.any_running() && !self.terminal {
                self.enter_terminal();
            }
        } else if !self.terminal && self.ensure_sandbox(now).await {
            self.refresh_creds(now).await;
            self.advance(now).await;
            self.check_completion();
        }

        if matches!(self.ending, Some(Ending::Gone | Ending::Shutdown)) || self.gone {
            return;
        }
        self.write_status(now).await;
        if self.ending == Some(Ending::Deletion) && self.terminal && !self.deleted {
            self.final_delete(now).await;
        }
    }

    /// SIGKILL for containers whose grace period is over.
    fn escalate(&mut self, now: Instant) {
        for slot in &mut self.slots {
            if let Some(run) = slot.run.as_mut()
                && !run.killed
                && run.kill_at.is_some_and(|t| t <= now)
            {
                process::signal_group(run.pid, Signal::SIGKILL);
                run.killed = true;
            }
        }
    }

    fn enter_terminal(&mut self) {
        self.terminal = true;
        self.creds = None;
        let _ = std::fs::remove_dir_all(self.dir.join("serviceaccount"));
        let _ = std::fs::remove_file(self.dir.join("kubeconfig"));
    }

    /// Regular containers all done for good (or an init container failed for good): the pod
    /// completes; remaining sidecars are stopped first.
    fn check_completion(&mut self) {
        let regular_done = self.slots[self.n_init..].iter().all(Slot::is_final);
        let init_failed =
            self.slots[..self.n_init].iter().any(|s| s.kind == SlotKind::Init && s.is_final() && !s.succeeded());
        if !(regular_done || init_failed) {
            return;
        }
        if self.any_running() {
            self.stop_all(Ending::Completed, self.pod_grace());
        } else {
            for slot in &mut self.slots {
                slot.next_start = None;
            }
            self.enter_terminal();
        }
    }

    /// An init container that lets the next one start: completed, or a started sidecar.
    fn init_done(slot: &Slot) -> bool {
        match slot.kind {
            SlotKind::Sidecar => slot.view.started,
            _ => slot.succeeded(),
        }
    }

    /// The slots before this index may be started now: the init containers up to the first one
    /// not done, or all of them once initialization is done.
    fn startable_until(&self) -> usize {
        if self.slots[self.n_init..].iter().any(|s| s.ever_ran) {
            // Initialized before: a restarting sidecar does not hold the regular containers back.
            return self.slots.len();
        }
        match self.slots[..self.n_init].iter().position(|s| !Self::init_done(s)) {
            Some(first_pending) => first_pending + 1,
            None => self.slots.len(),
        }
    }

    /// Starts what is due: init containers in order (sidecars stay running), then the regular
    /// containers once initialization is done.
    async fn advance(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.startable_until() {
            if self.slots[i].due(now) {
                self.start(i, now).await;
            }
            i += 1;
        }
    }

    fn on_exit(&mut self, ev: ExitEvent) {
        let now = Instant::now();
        let terminating = self.ending.is_some();
        let label = self.label();
        let policy = self.policy;
        let Some(slot) = self.slots.get_mut(ev.slot) else { return };
        let Some(run) = slot.run.as_ref() else { return };
        if run.generation != ev.generation {
            return;
        }
        let started_at = match &slot.view.state {
            State::Running { started_at } => Some(*started_at),
            _ => None,
        };
        let term = Terminated {
            exit_code: ev.exit.code,
            // Like the kubelet (CRI), report the signal only through the exit code.
            signal: None,
            reason: Terminated::reason_for(ev.exit.code).into(),
            message: None,
            started_at,
            finished_at: Timestamp::now(),
            container_id: slot.view.container_id.clone(),
        };
        info!(pod = %label, container = %slot.spec.name, exit_code = ev.exit.code, "container exited");
        self.ctx.set_running(&format!("{}/{}/{}", self.namespace, self.name, slot.spec.name), false);
        slot.exited(term, policy, terminating, now, &label);
        self.event_if_backoff(ev.slot);
    }

    fn on_probe(&mut self, ev: ProbeEvent) {
        let now = Instant::now();
        let grace = self.pod_grace();
        let label = self.label();
        let Some(slot) = self.slots.get_mut(ev.slot) else { return };
        let Some(run) = slot.run.as_mut() else { return };
        if run.generation != ev.generation {
            return;
        }
        let mut events = Vec::new();
        let kind_name = match ev.kind {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        };
        if !ev.ok {
            events.push((true, "Unhealthy", format!("{kind_name} probe failed: {}", ev.message)));
        }
        match (ev.kind, ev.ok) {
            (ProbeKind::Readiness, ok) => run.readiness_ok = ok,
            (ProbeKind::Startup, true) => run.startup_ok = true,
            (ProbeKind::Startup | ProbeKind::Liveness, false) => {
                let probe =
                    if ev.kind == ProbeKind::Startup { &slot.spec.startup_probe } else { &slot.spec.liveness_probe };
                let grace = probe
                    .as_ref()
                    .and_then(|p| p.termination_grace_period_seconds)
                    .map_or(grace, |s| Duration::from_secs(u64::try_from(s).unwrap_or(0)).max(MIN_GRACE));
                info!(pod = %label, container = %slot.spec.name, kind = ?ev.kind, message = %ev.message,
                      "probe failed; container will be restarted");
                if run.kill_at.is_none() {
                    process::signal_group(run.pid, Signal::SIGTERM);
                    run.kill_at = Some(now + grace);
                    let what = kind_name.to_lowercase();
                    let note = format!("Container {} failed {what} probe, will be restarted", slot.spec.name);
                    events.push((false, "Killing", note));
                }
            }
            (ProbeKind::Liveness, true) => {}
        }
        let start_others = ev.kind == ProbeKind::Startup && ev.ok;
        slot.update_readiness();
        if start_others {
            self.spawn_probes(ev.slot, false);
        }
        for (warning, reason, note) in events {
            self.event(ev.slot, warning, reason, note);
        }
    }

    fn next_wakeup(&self) -> Instant {
        let mut times: Vec<Instant> = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            if i < self.startable_until() {
                times.extend(slot.next_start);
            }
            if let Some(run) = &slot.run
                && !run.killed
            {
                times.extend(run.kill_at);
            }
        }
        if self.ending.is_none() && !self.terminal {
            times.extend(self.deadline_left().map(|d| Instant::now() + d));
            times.extend(self.creds.as_ref().map(|c| c.refresh_at));
            times.extend(self.sandbox_retry.map(|r| r.0));
        }
        times.extend(self.patch_retry);
        times.extend(self.delete_retry);
        times.into_iter().min().unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
    }
}
