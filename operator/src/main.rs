//! `activity-operator`: runs Activities (heartbeat.dev/v1alpha1) as worker pods.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use activity_operator::leader::{self, Leadership, LeaseSettings};
use activity_operator::runtime::context::ControllerSettings;
use activity_operator::runtime::metrics::Metrics;
use activity_operator::runtime::server::{self, Health};
use activity_operator::runtime::{controller, events};
use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// jemalloc rather than the C library's allocator: after a burst of work it hands the freed memory
/// back to the system, where glibc's and musl's malloc keep it (docs/benchmarks.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options: pages freed for 1 s go back to the system (the default keeps them 10 s,
/// and RSS stays above the live heap for that long after a burst).
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_CONF: JemallocConf = JemallocConf(c"dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());

/// jemalloc reads its compiled-in options through a C `const char *` of this name.
#[repr(transparent)]
struct JemallocConf(*const std::ffi::c_char);

// SAFETY: the pointer is to a static, immutable C string.
unsafe impl Sync for JemallocConf {}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Runs Activities (heartbeat.dev/v1alpha1): one worker pod per attempt, heartbeat and deadline
/// enforcement, retries with exponential backoff, cancellation.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "METRICS_BIND_ADDRESS", default_value = "0.0.0.0:8080")]
    metrics_bind_address: SocketAddr,
    /// Activities reconciled at the same time.
    #[arg(long, env = "CONCURRENCY", default_value_t = 256)]
    concurrency: u16,
    /// Idle connections to the API server kept open for reuse. A burst of work opens up to one
    /// connection per request in flight; the ones beyond this number close as they go idle.
    #[arg(long, env = "IDLE_CONNECTIONS", default_value_t = 16)]
    idle_connections: usize,
    /// Namespaces to watch (repeat or comma-separate); none = every namespace.
    #[arg(long = "namespace", env = "WATCH_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Service account of worker pods whose template names none.
    #[arg(long, env = "WORKER_SERVICE_ACCOUNT", default_value = "activity-worker")]
    worker_service_account: String,
    /// Elect a leader through a Lease so that several replicas are safe.
    #[arg(long, env = "LEADER_ELECT", default_value_t = false)]
    leader_elect: bool,
    /// Namespace of the leader Lease (default: this pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    leader_election_namespace: String,
    #[arg(long, env = "LEADER_ELECTION_LEASE", default_value = "activity-operator")]
    leader_election_lease: String,
    /// Seconds a leader's lease lasts without renewal (the leader renews it every third).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(5..=3600))]
    lease_duration_seconds: u64,
    /// This replica's identity (default: the pod name, else the hostname).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    log_level: String,
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn init_tracing(args: &Args) {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colors only on a terminal: `kubectl logs` and log collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi);
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

/// A token cancelled on SIGTERM or Ctrl-C.
fn stop_on_signal() -> CancellationToken {
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutting down");
        token.cancel();
    });
    stop
}

/// Binds `/metrics`, `/healthz` and `/readyz` before anything else starts (an operator without
/// its probes and metrics must not run) and serves them until `stop`.
async fn serve_health(
    address: SocketAddr,
    health: Health,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding --metrics-bind-address {address} (/metrics, /healthz, /readyz)"))?;
    Ok(tokio::spawn(server::serve(listener, health, async move { stop.cancelled().await })))
}

fn lease_settings(args: &Args, identity: &str) -> LeaseSettings {
    LeaseSettings {
        namespace: args.leader_election_namespace.clone(),
        lease: args.leader_election_lease.clone(),
        identity: identity.into(),
        duration_seconds: args.lease_duration_seconds,
    }
}

/// One controller per watched namespace (or one for all), until `stop` is cancelled.
async fn run_controllers(
    args: &Args,
    client: kube::Client,
    metrics: Arc<Metrics>,
    identity: &str,
    fence: CancellationToken,
    stop: CancellationToken,
) {
    let reporter = events::Reporter { controller: "activity-operator".into(), instance: identity.into() };
    let namespaces: Vec<Option<String>> =
        if args.namespaces.is_empty() { vec![None] } else { args.namespaces.iter().cloned().map(Some).collect() };
    info!(?namespaces, concurrency = args.concurrency, "starting the controller");
    let controllers =
        namespaces.into_iter().map(|namespace| {
            let settings = ControllerSettings {
                namespace,
                concurrency: args.concurrency,
                worker_service_account: args.worker_service_account.clone(),
                fence: fence.clone(),
            };
            let token = stop.clone();
            controller::run(client.clone(), settings, metrics.clone(), reporter.clone(), async move {
                token.cancelled().await
            })
        });
    futures::future::join_all(controllers).await;
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(&args);
    let client = activity_operator::runtime::client::infer(args.idle_connections)
        .await
        .context("connecting to the Kubernetes API")?;
    let version = client.apiserver_version().await.context("asking the API server for its version")?;
    info!(server = %version.git_version, "connected to the API server");

    let stop = stop_on_signal();
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let health = Health { metrics: metrics.clone(), ready: ready.clone() };
    let http = serve_health(args.metrics_bind_address, health, stop.clone()).await?;

    let identity = args.identity.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME").unwrap_or_else(|_| format!("activity-operator-{}", std::process::id()))
    });
    let leadership = if args.leader_elect {
        match leader::acquire(client.clone(), &lease_settings(&args, &identity), &ready, &stop).await? {
            Some(leadership) => Some(leadership),
            None => return Ok(()),
        }
    } else {
        None
    };
    ready.store(true, Ordering::Relaxed);

    // Writes stop the moment leadership is lost, before the controllers have wound down.
    let fence = leadership.as_ref().map(Leadership::fence).unwrap_or_default();
    let run_stop = leadership.as_ref().map(Leadership::fence).unwrap_or_else(|| stop.clone());
    run_controllers(&args, client, metrics, &identity, fence, run_stop).await;

    let lost_leadership = leadership.as_ref().is_some_and(Leadership::is_lost) && !stop.is_cancelled();
    if let Some(leadership) = leadership {
        leadership.release().await;
    }
    stop.cancel();
    match http.await {
        Ok(Err(e)) => warn!(error = %e, "the metrics and health server failed"),
        Err(e) => warn!(error = %e, "the metrics and health server task"),
        Ok(Ok(())) => {}
    }
    if lost_leadership {
        anyhow::bail!("lost leadership");
    }
    Ok(())
}
