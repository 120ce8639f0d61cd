//! What the node reports about a pod: its status (written when it changes), events, and the final
//! delete of a terminated pod.

use std::time::Instant;

use k8s_openapi::jiff::Timestamp;
use tracing::{debug, info, warn};

use super::{PodWorker, RETRY};
use crate::ipam::HOST_IP;
use crate::status::{self, ContainerView, PodView, State};

impl PodWorker {
    /// Records an event about container `i`.
    pub(super) fn event(&self, i: usize, warning: bool, reason: &str, note: String) {
        let field = match self.slots.get(i) {
            Some(s) if i < self.n_init => Some(format!("spec.initContainers{{{}}}", s.spec.name)),
            Some(s) => Some(format!("spec.containers{{{}}}", s.spec.name)),
            None => None,
        };
        self.ctx.event(&self.pod, field, warning, reason, note);
    }

    /// Records the CrashLoopBackOff event if container `i` just went into it.
    pub(super) fn event_if_backoff(&self, i: usize) {
        if let Some(slot) = self.slots.get(i)
            && matches!(&slot.view.state, State::Waiting { reason, .. } if reason == "CrashLoopBackOff")
        {
            let note = format!("Back-off restarting failed container {} in pod {}", slot.spec.name, self.label());
            self.event(i, true, "BackOff", note);
        }
    }

    pub(super) async fn write_status(&mut self, now: Instant) {
        if self.frozen || self.patch_retry.is_some_and(|t| t > now) {
            return;
        }
        let init: Vec<ContainerView> = self.slots[..self.n_init].iter().map(|s| s.view.clone()).collect();
        let containers: Vec<ContainerView> = self.slots[self.n_init..].iter().map(|s| s.view.clone()).collect();
        let pod_ip = self.pod_ip.map(|ip| ip.to_string());
        let host_ip = HOST_IP.to_string();
        let view = PodView {
            pod: &self.pod,
            init: &init,
            containers: &containers,
            pod_is_terminal: self.terminal,
            deadline_exceeded: self.deadline_exceeded,
            sandbox_ready: self.sandbox_ready,
            pod_ip: pod_ip.as_deref(),
            host_ip: &host_ip,
            start_time: Some(self.start_time),
        };
        let phase = status::phase(&view);
        let ts = Timestamp::now();
        let conditions: Vec<_> = status::conditions(&view, phase)
            .into_iter()
            .map(|c| {
                let at = self.clock.stamp(&c, ts);
                (c, at)
            })
            .collect();
        let patch = status::status_patch(&view, phase, &conditions);
        if self.last_patch.as_ref() == Some(&patch) {
            return;
        }
        match self.ctx.patch_pod_status(&self.namespace, &self.name, &patch).await {
            Ok(()) => {
                debug!(pod = %self.label(), phase, "status written");
                self.last_patch = Some(patch);
                self.patch_retry = None;
            }
            Err(e) if e.is_transient() => {
                warn!(pod = %self.label(), error = %e, "writing pod status; will retry");
                self.patch_retry = Some(now + RETRY);
            }
            Err(e) => {
                // Gone, or replaced by another pod of the same name: the watch will tell.
                if matches!(e.api_code(), Some(404 | 409)) {
                    debug!(pod = %self.label(), error = %e, "pod status not written");
                } else {
                    warn!(pod = %self.label(), error = %e, "pod status rejected");
                }
                self.last_patch = Some(patch);
                self.patch_retry = None;
            }
        }
    }

    pub(super) async fn final_delete(&mut self, now: Instant) {
        if self.delete_retry.is_some_and(|t| t > now) {
            return;
        }
        match self.ctx.delete_pod(&self.namespace, &self.name, &self.uid).await {
            Ok(()) => {
                info!(pod = %self.label(), "pod terminated; deleted");
                self.deleted = true;
                self.delete_retry = None;
            }
            Err(e) => {
                warn!(pod = %self.label(), error = %e, "deleting pod; will retry");
                self.delete_retry = Some(now + RETRY);
            }
        }
    }
}
