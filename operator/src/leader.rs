//! Leader election through a Lease, so several replicas are safe: only the leader runs the
//! controllers, and the moment it loses the lease its fence trips and it writes nothing more.

use std::sync::atomic::{AtomicBool, Ordering};

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Seconds before the lease expires that the leader renews it: two thirds of the lease, so it
/// renews every third (5 s of 15 s) and an API server slow to answer for up to two thirds of the
/// lease (a loaded control plane) does not cost the leadership. The Kubernetes components' own
/// election renews as often (every 2 s, with 10 s of a 15 s lease to get it through).
fn renew_grace(duration_seconds: u64) -> u64 {
    (duration_seconds.saturating_mul(2) / 3).clamp(1, duration_seconds.saturating_sub(1).max(1))
}

/// Where the lease is and who asks for it.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub lease: String,
    pub identity: String,
    /// Seconds a leader's lease lasts without renewal.
    pub duration_seconds: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("setting up leader election: {0}")]
    Setup(#[source] LeaseManagerError),
    #[error("leader election stopped")]
    Stopped(#[source] watch::error::RecvError),
}

/// This replica leads until [`Leadership::release`], or until the lease is lost.
pub struct Leadership {
    is_leader: watch::Receiver<bool>,
    task: JoinHandle<Result<LeaseManager, LeaseManagerError>>,
    /// Cancelled when the lease is lost (or on shutdown, as a child of the stop token).
    lost: CancellationToken,
}

/// Waits to become the leader; `None` if `stop` came first. `ready` turns true once the lease is
/// being watched: a standby is ready too.
pub async fn acquire(
    client: Client,
    settings: &LeaseSettings,
    ready: &AtomicBool,
    stop: &CancellationToken,
) -> Result<Option<Leadership>, Error> {
    let manager = LeaseManagerBuilder::new(client, &settings.lease)
        .with_namespace(&settings.namespace)
        .with_identity(&settings.identity)
        .with_duration(settings.duration_seconds)
        .with_grace(renew_grace(settings.duration_seconds))
        .with_field_manager("activity-operator")
        .build()
        .await
        .map_err(Error::Setup)?;
    let (mut is_leader, task) = manager.watch().await;
    ready.store(true, Ordering::Relaxed);
    info!(identity = %settings.identity, lease = %settings.lease, "waiting to become the leader");
    let became_leader = tokio::select! {
        _ = stop.cancelled() => false,
        changed = is_leader.wait_for(|leader| *leader) => {
            changed.map_err(Error::Stopped)?;
            true
        }
    };
    if !became_leader {
        drop(is_leader);
        let _ = task.await;
        return Ok(None);
    }
    info!(identity = %settings.identity, "became the leader");
    let lost = stop.child_token();
    watch_for_loss(is_leader.clone(), lost.clone());
    Ok(Some(Leadership { is_leader, task, lost }))
}

/// Trips `lost` when the lease is lost. Ends on shutdown too: it holds a receiver, and the lease
/// is released only once every receiver is gone.
fn watch_for_loss(mut is_leader: watch::Receiver<bool>, lost: CancellationToken) {
    tokio::spawn(async move {
        tokio::select! {
            _ = lost.cancelled() => {}
            changed = is_leader.wait_for(|leader| !*leader) => {
                if changed.is_ok() {
                    error!("lost leadership: stopping");
                    lost.cancel();
                }
            }
        }
    });
}

impl Leadership {
    /// The fence of every write: cancelled once this replica no longer leads.
    pub fn fence(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Whether the fence has tripped.
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Gives the lease up (closing the channel releases it) and waits for that.
    pub async fn release(self) {
        drop(self.is_leader);
        match self.task.await {
            Ok(Ok(_)) => info!("released the leader lease"),
            Ok(Err(e)) => warn!(error = %e, "releasing the leader lease"),
            Err(e) => warn!(error = %e, "leader election task"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::renew_grace;

    #[test]
    fn the_leader_renews_a_third_of_the_way_into_its_lease() {
        assert_eq!(renew_grace(15), 10);
        assert_eq!(renew_grace(5), 3);
        assert_eq!(renew_grace(3600), 2400);
        // kube-lease-manager panics unless 0 < grace < duration.
        for d in 2..100 {
            let g = renew_grace(d);
            assert!(g > 0 && g < d, "duration {d}: grace {g}");
        }
    }
}
