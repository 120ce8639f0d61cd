//! Watches the pods bound to this node and keeps one [`PodWorker`] per pod (by uid), feeding it
//! each new version of its pod; a pod that disappears from the API closes its worker's channel.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::ctx::NodeCtx;
use crate::ipam;
use crate::pod::PodWorker;

/// How long the node waits for its pods' processes when it shuts down.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(15);

fn uid(pod: &Pod) -> Option<String> {
    pod.metadata.uid.clone()
}

/// The pod IP from an earlier run of the node, if it is one of ours.
fn previous_ip(pod: &Pod) -> Option<Ipv4Addr> {
    let host_network = pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false);
    if host_network {
        return None;
    }
    let ip: Ipv4Addr = pod.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?;
    ipam::in_pool(ip).then_some(ip)
}

struct Supervisor {
    ctx: Arc<NodeCtx>,
    workers: HashMap<String, watch::Sender<Arc<Pod>>>,
    tasks: JoinSet<()>,
}

impl Supervisor {
    fn spawn(&mut self, pod: Pod, claimed_ip: Option<Ipv4Addr>) {
        let Some(uid) = uid(&pod) else { return };
        let (tx, rx) = watch::channel(Arc::new(pod));
        let worker = PodWorker::new(self.ctx.clone(), rx, claimed_ip);
        self.tasks.spawn(worker.run());
        self.workers.insert(uid, tx);
    }

    fn apply(&mut self, pod: Pod) {
        let Some(uid) = uid(&pod) else { return };
        match self.workers.get(&uid) {
            Some(tx) => {
                tx.send_replace(Arc::new(pod));
            }
            None => self.spawn(pod, None),
        }
    }

    fn remove(&mut self, pod: &Pod) {
        if let Some(uid) = uid(pod) {
            // Dropping the sender tells the worker its pod is gone.
            self.workers.remove(&uid);
        }
    }

    /// A complete list (at start, or after the watch had to start over).
    fn relist(&mut self, pods: Vec<Pod>) {
        let listed: HashSet<String> = pods.iter().filter_map(uid).collect();
        self.workers.retain(|uid, _| listed.contains(uid));
        // First take the addresses that pods already have, then start the workers.
        let mut claims = Vec::new();
        if let Ok(mut pool) = self.ctx.ips.lock() {
            for pod in &pods {
                let new = uid(pod).is_some_and(|u| !self.workers.contains_key(&u));
                let ip = previous_ip(pod).filter(|ip| new && pool.claim(*ip));
                claims.push(ip);
            }
        }
        claims.resize(pods.len(), None);
        for (pod, ip) in pods.into_iter().zip(claims) {
            match uid(&pod).and_then(|u| self.workers.get(&u)) {
                Some(tx) => {
                    tx.send_replace(Arc::new(pod));
                }
                None => self.spawn(pod, ip),
            }
        }
    }
}

/// Runs the pods of this node until the node shuts down, then waits for their processes.
pub async fn run(ctx: Arc<NodeCtx>) {
    let api: Api<Pod> = Api::all(ctx.watch_client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node_name));
    let mut events = watcher::watcher(api, config)
        .default_backoff()
        .map(|ev| {
            ev.map(|e| {
                e.modify(|pod| {
                    pod.metadata.managed_fields = None;
                })
            })
        })
        .boxed();
    let mut sup = Supervisor { ctx: ctx.clone(), workers: HashMap::new(), tasks: JoinSet::new() };
    let mut init: Vec<Pod> = Vec::new();
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some(Ok(Event::Init)) => init.clear(),
                Some(Ok(Event::InitApply(pod))) => init.push(pod),
                Some(Ok(Event::InitDone)) => {
                    info!(pods = init.len(), "pods bound to this node listed");
                    sup.relist(std::mem::take(&mut init));
                }
                Some(Ok(Event::Apply(pod))) => sup.apply(pod),
                Some(Ok(Event::Delete(pod))) => sup.remove(&pod),
                Some(Err(e)) => warn!(error = %e, "pod watch"),
                None => break,
            },
            Some(_) = sup.tasks.join_next(), if !sup.tasks.is_empty() => {}
            () = ctx.shutdown.cancelled() => break,
        }
    }
    info!(workers = sup.tasks.len(), "stopping all pods");
    let wait = async { while sup.tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_WAIT, wait).await.is_err() {
        warn!("some pod processes did not stop in time");
    }
}
