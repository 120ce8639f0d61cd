//! `process-node`: the kubelet of one Node of the local cluster, running pods as host processes.
//!
//! It registers the Node and keeps its Lease fresh ([`node`]), watches the pods bound to it
//! ([`supervisor`]) and runs one worker per pod ([`pod`]): a loopback pod IP ([`ipam`]), a
//! service account token and kubeconfig ([`creds`]), each container a host process in its own
//! process group ([`image`], [`env`], [`process`]), probes ([`probe`]), and a kubelet-like pod
//! status ([`status`], [`policy`]).

pub mod creds;
pub mod ctx;
pub mod env;
pub mod error;
pub mod expand;
pub mod image;
pub mod ipam;
pub mod kubelet_api;
pub mod node;
pub mod pod;
pub mod policy;
pub mod probe;
pub mod process;
pub mod quantity;
pub mod status;
pub mod supervisor;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, Config};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use error::{Error, Result};

/// The node's settings (the command line).
#[derive(Debug, Clone)]
pub struct Settings {
    pub kubeconfig: PathBuf,
    pub node_name: String,
    pub state_dir: PathBuf,
    pub log_dir: PathBuf,
    pub bin_dir: PathBuf,
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn mkdir(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).map_err(|e| Error::io("creating", p, e))
}

/// Requests (other than watches) that take longer fail and are retried: a hung request must not
/// stall the lease renewal or a pod.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An API client from a kubeconfig file; `read_timeout` bounds each read of a response (leave it
/// unset for watches).
pub async fn client_from(path: &Path, read_timeout: Option<Duration>) -> Result<Client> {
    let kc = Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig { path: path.into(), source })?;
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::ClientConfig(e.to_string()))?;
    config.read_timeout = read_timeout;
    Client::try_from(config).map_err(Error::from)
}

/// Retries `f` on transient errors for up to `patience`.
async fn with_retry<T, F, Fut>(what: &str, patience: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let start = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(200);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && start.elapsed() < patience => {
                warn!(error = %e, "{what}; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs the node until `shutdown` is cancelled; then stops every pod process and returns.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<()> {
    let state_dir = absolute(&settings.state_dir);
    let log_dir = absolute(&settings.log_dir);
    let bin_dir = absolute(&settings.bin_dir);
    let pids_dir = state_dir.join("pids");
    for d in [&state_dir, &log_dir, &pids_dir, &state_dir.join("pods")] {
        mkdir(d)?;
    }
    let leftovers = process::kill_leftovers(&pids_dir);
    if leftovers > 0 {
        warn!(leftovers, "killed processes of an earlier run");
    }
    let client = client_from(&settings.kubeconfig, Some(REQUEST_TIMEOUT)).await?;
    let watch_client = client_from(&settings.kubeconfig, None).await?;
    let access = creds::ClusterAccess::from_kubeconfig(&settings.kubeconfig)?;
    let version = with_retry("reading the API server version", Duration::from_secs(60), || async {
        Ok(client.apiserver_version().await?)
    })
    .await?
    .git_version;
    // The kubelet API (`kubectl logs`), on a port of its own (several clusters may share the host).
    let kubelet_api = match kubelet_api::tls_config(&settings.kubeconfig) {
        Ok(tls) => match tokio::net::TcpListener::bind(("127.0.0.1", 0)).await {
            Ok(listener) => Some((listener, Arc::new(tls))),
            Err(e) => {
                warn!(error = %e, "cannot listen for the kubelet API; `kubectl logs` will not work");
                None
            }
        },
        Err(e) => {
            warn!(error = %e, "no TLS identity for the kubelet API; `kubectl logs` will not work");
            None
        }
    };
    let kubelet_port = kubelet_api.as_ref().and_then(|(l, _)| l.local_addr().ok()).map_or(0, |a| a.port());
    let id = node::Identity {
        name: settings.node_name.clone(),
        version,
        host: node::HostInfo::read(),
        kubelet_port,
        since: Timestamp::now(),
    };
    let node_uid = with_retry("registering the node", Duration::from_secs(60), || node::register(&client, &id)).await?;
    info!(node = %id.name, version = %id.version, "node ready");
    let heartbeat = tokio::spawn(node::heartbeat(client.clone(), id, node_uid, shutdown.clone()));
    let reporter = Reporter { controller: "kubelet".into(), instance: Some(settings.node_name.clone()) };
    let recorder = Recorder::new(client.clone(), reporter);
    let ctx = Arc::new(ctx::NodeCtx {
        client,
        watch_client,
        node_name: settings.node_name,
        state_dir,
        log_dir,
        bin_dir,
        pids_dir,
        host_path: std::env::var("PATH")
            .unwrap_or_else(|_| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()),
        access,
        ips: Mutex::new(ipam::IpPool::default()),
        running: Mutex::new(std::collections::HashSet::new()),
        api: Semaphore::new(ctx::API_CONCURRENCY),
        recorder,
        shutdown: shutdown.clone(),
    });
    if let Some((listener, tls)) = kubelet_api {
        info!(port = kubelet_port, "kubelet API (container logs) listening on 127.0.0.1");
        tokio::spawn(kubelet_api::serve(listener, tls, ctx.clone()));
    }
    supervisor::run(ctx).await;
    shutdown.cancel();
    let _ = heartbeat.await;
    info!("node stopped");
    Ok(())
}
