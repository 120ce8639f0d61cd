//! `process-node --kubeconfig <path> --node-name <name> --state-dir <dir> --log-dir <dir> --bin-dir <dir>`

use std::path::PathBuf;

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// The kubelet of one node of the local cluster: runs the pods bound to it as host processes.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Kubeconfig with the node's identity (system:node:<name>).
    #[arg(long)]
    kubeconfig: PathBuf,
    /// The Node's name.
    #[arg(long, default_value = "local-node")]
    node_name: String,
    /// Pod directories, credentials, pid files.
    #[arg(long)]
    state_dir: PathBuf,
    /// Container logs: <namespace>_<pod>_<container>.log.
    #[arg(long)]
    log_dir: PathBuf,
    /// Where the workspace's binaries (activity-operator, activity-worker) are.
    #[arg(long)]
    bin_dir: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let args = Args::parse();
    let shutdown = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("signal received; stopping");
        on_signal.cancel();
    });
    let settings = process_node::Settings {
        kubeconfig: args.kubeconfig,
        node_name: args.node_name,
        state_dir: args.state_dir,
        log_dir: args.log_dir,
        bin_dir: args.bin_dir,
    };
    process_node::run(settings, shutdown).await?;
    Ok(())
}
