//! One container of a pod on this node: its spec, what the API sees of it (the
//! [`ContainerView`]), its live process, and its back-offs. The decisions here are pure.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Container, ContainerStateTerminated, ContainerStatus};
use k8s_openapi::jiff::Timestamp;

use crate::policy::{Backoff, RestartPolicy, SlotKind, go_duration, should_restart};
use crate::probe;
use crate::status::{ContainerView, State, Terminated};

/// Message for containers whose process was lost because the node restarted.
pub const NODE_RESTARTED: &str = "The node (process-node) restarted; the container's process is gone";

/// A live container process.
#[derive(Debug)]
pub struct Run {
    pub pid: u32,
    pub generation: u64,
    pub probes: Vec<tokio::task::AbortHandle>,
    pub target: Arc<probe::Target>,
    /// The startup probe succeeded (or there is none).
    pub startup_ok: bool,
    /// The readiness probe's last result.
    pub readiness_ok: bool,
    /// SIGTERM was sent; SIGKILL follows at this time.
    pub kill_at: Option<Instant>,
    /// SIGKILL was sent.
    pub killed: bool,
}

impl Run {
    pub fn stop_probes(&mut self) {
        for p in self.probes.drain(..) {
            p.abort();
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.stop_probes();
    }
}

/// One container slot.
#[derive(Debug)]
pub struct Slot {
    pub kind: SlotKind,
    pub spec: Container,
    pub view: ContainerView,
    pub run: Option<Run>,
    /// When to (try to) start it next; `None`: not scheduled.
    pub next_start: Option<Instant>,
    pub crash: Backoff,
    pub last_exit: Option<Instant>,
    pub pull: Backoff,
    pub pull_failed_at: Option<Instant>,
    /// It has been started before (so a start is a restart).
    pub ever_ran: bool,
}

fn terminated_from_api(t: &ContainerStateTerminated, now: Timestamp) -> Terminated {
    Terminated {
        exit_code: t.exit_code,
        signal: t.signal,
        reason: t.reason.clone().unwrap_or_else(|| Terminated::reason_for(t.exit_code).into()),
        message: t.message.clone(),
        started_at: t.started_at.as_ref().map(|x| x.0),
        finished_at: t.finished_at.as_ref().map_or(now, |x| x.0),
        container_id: t.container_id.clone(),
    }
}

impl Slot {
    /// A container that has not run yet, waiting with `reason`, to be started now.
    pub fn new(kind: SlotKind, spec: Container, reason: &str, now: Instant) -> Self {
        let view = ContainerView {
            name: spec.name.clone(),
            image: spec.image.clone().unwrap_or_default(),
            image_id: None,
            container_id: None,
            state: State::waiting(reason, None),
            last_state: None,
            restart_count: 0,
            ready: false,
            started: false,
            restartable: kind == SlotKind::Sidecar,
        };
        Self {
            kind,
            spec,
            view,
            run: None,
            next_start: Some(now),
            crash: Backoff::default(),
            last_exit: None,
            pull: Backoff::default(),
            pull_failed_at: None,
            ever_ran: false,
        }
    }

    /// Takes over what the API says about this container from an earlier run of the node: its
    /// restart count and last state; a container that was running has lost its process.
    pub fn adopt(&mut self, old: &ContainerStatus, policy: RestartPolicy, now: Instant, now_ts: Timestamp) {
        self.view.restart_count = old.restart_count;
        self.view.container_id = old.container_id.clone();
        self.view.image_id = Some(old.image_id.clone()).filter(|s| !s.is_empty());
        self.view.last_state =
            old.last_state.as_ref().and_then(|s| s.terminated.as_ref()).map(|t| terminated_from_api(t, now_ts));
        let state = old.state.as_ref();
        if let Some(running) = state.and_then(|s| s.running.as_ref()) {
            self.ever_ran = true;
            let lost = Terminated {
                exit_code: 137,
                signal: None,
                reason: "Error".into(),
                message: Some(NODE_RESTARTED.into()),
                started_at: running.started_at.as_ref().map(|t| t.0),
                finished_at: now_ts,
                container_id: old.container_id.clone(),
            };
            // The process died with the node: restart at once if the policy says so.
            self.exited(lost, policy, false, now, "");
            if self.next_start.is_some() {
                self.next_start = Some(now);
            }
        } else if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
            self.ever_ran = true;
            let t = terminated_from_api(t, now_ts);
            let restart = should_restart(policy, self.kind, t.exit_code);
            self.view.state = State::Terminated(t);
            self.next_start = restart.then_some(now);
        } else if self.view.last_state.is_some() {
            // Waiting to restart (back-off); the back-off starts over.
            self.ever_ran = true;
        }
    }

    /// Due to be started at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.run.is_none() && self.next_start.is_some_and(|t| t <= now)
    }

    /// Terminated for good: not running and not to be started again.
    pub fn is_final(&self) -> bool {
        self.run.is_none() && self.next_start.is_none() && matches!(self.view.state, State::Terminated(_))
    }

    /// Terminated with exit code 0 for good.
    pub fn succeeded(&self) -> bool {
        self.is_final() && matches!(&self.view.state, State::Terminated(t) if t.exit_code == 0)
    }

    /// `started` and `ready` from the probes.
    pub fn update_readiness(&mut self) {
        let (started, ready) = match &self.run {
            Some(run) => {
                let ready = run.startup_ok && (self.spec.readiness_probe.is_none() || run.readiness_ok);
                (run.startup_ok, ready && run.kill_at.is_none())
            }
            None => (false, false),
        };
        self.view.started = started;
        self.view.ready = ready;
    }

    /// The container's process ended (or could not start). Decides what comes next: terminated
    /// for good, an immediate restart, or CrashLoopBackOff. `pod_label` is `name_namespace(uid)`.
    pub fn exited(
        &mut self,
        term: Terminated,
        policy: RestartPolicy,
        terminating: bool,
        now: Instant,
        pod_label: &str,
    ) {
        self.run = None;
        self.last_exit = Some(now);
        self.view.ready = false;
        self.view.started = false;
        if terminating || !should_restart(policy, self.kind, term.exit_code) {
            self.view.state = State::Terminated(term);
            self.next_start = None;
            return;
        }
        self.view.last_state = Some(term.clone());
        match self.crash.in_backoff_since(now, now) {
            None => {
                self.view.state = State::Terminated(term);
                self.next_start = Some(now);
            }
            Some((end, delay)) => {
                let message = format!(
                    "back-off {} restarting failed container={} pod={pod_label}",
                    go_duration(delay),
                    self.spec.name
                );
                self.view.state = State::waiting("CrashLoopBackOff", Some(message));
                self.next_start = Some(end);
            }
        }
    }

    /// Bookkeeping for a (re)start at `now`.
    pub fn starting(&mut self, now: Instant) {
        if self.ever_ran {
            if let Some(exit) = self.last_exit {
                self.crash.next(exit, now);
            } else {
                self.crash.next(now, now);
            }
            self.view.restart_count += 1;
        }
        self.ever_ran = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(now: Instant) -> Slot {
        let spec: Container = serde_json::from_value(serde_json::json!({"name": "c", "image": "busybox"})).unwrap();
        Slot::new(SlotKind::Regular, spec, "ContainerCreating", now)
    }

    fn term(code: i32) -> Terminated {
        Terminated {
            exit_code: code,
            signal: None,
            reason: Terminated::reason_for(code).into(),
            message: None,
            started_at: None,
            finished_at: Timestamp::UNIX_EPOCH,
            container_id: None,
        }
    }

    #[test]
    fn crash_loop() {
        let t0 = Instant::now();
        let mut s = slot(t0);
        assert!(s.due(t0));
        s.starting(t0);
        assert_eq!(s.view.restart_count, 0);
        s.exited(term(1), RestartPolicy::Always, false, t0, "p_ns(u)");
        // First restart: at once, with the exit as last state.
        assert_eq!(s.next_start, Some(t0));
        assert_eq!(s.view.last_state.as_ref().map(|t| t.exit_code), Some(1));
        s.starting(t0);
        assert_eq!(s.view.restart_count, 1);
        s.exited(term(1), RestartPolicy::Always, false, t0, "p_ns(u)");
        match &s.view.state {
            State::Waiting { reason, message } => {
                assert_eq!(reason, "CrashLoopBackOff");
                assert_eq!(message.as_deref(), Some("back-off 10s restarting failed container=c pod=p_ns(u)"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.next_start, Some(t0 + std::time::Duration::from_secs(10)));
    }

    #[test]
    fn never_and_terminating() {
        let t0 = Instant::now();
        let mut s = slot(t0);
        s.starting(t0);
        s.exited(term(3), RestartPolicy::Never, false, t0, "");
        assert!(s.is_final());
        assert!(!s.succeeded());
        let mut s = slot(t0);
        s.starting(t0);
        s.exited(term(0), RestartPolicy::Always, true, t0, "");
        assert!(s.succeeded());
    }

    #[test]
    fn adopts_lost_running_container() {
        let t0 = Instant::now();
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let old: ContainerStatus = serde_json::from_value(serde_json::json!({
            "name": "c", "image": "busybox", "imageID": "x", "ready": true, "restartCount": 2,
            "state": {"running": {"startedAt": "2023-11-14T22:00:00Z"}},
        }))
        .unwrap();
        let mut s = slot(t0);
        s.adopt(&old, RestartPolicy::Never, t0, now);
        match &s.view.state {
            State::Terminated(t) => {
                assert_eq!((t.exit_code, t.reason.as_str()), (137, "Error"));
                assert_eq!(t.message.as_deref(), Some(NODE_RESTARTED));
            }
            other => panic!("{other:?}"),
        }
        assert!(s.is_final());
        let mut s = slot(t0);
        s.adopt(&old, RestartPolicy::Always, t0, now);
        assert_eq!(s.next_start, Some(t0));
        assert_eq!(s.view.last_state.as_ref().map(|t| t.exit_code), Some(137));
        s.starting(t0);
        assert_eq!(s.view.restart_count, 3);
    }
}
