//! `kubectl activity`: the command line of the Activity operator, modelled on `temporal activity`.
//! Install it as a kubectl plugin (`cargo install --path cli`, or krew with `cli/krew/activity.yaml`)
//! and run `kubectl activity --help`.

mod client;
mod commands;
mod logs;
mod model;
mod render;
mod watch;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Exit code: the command did what was asked (and, for `execute`/`result`, the activity succeeded).
pub const EXIT_OK: u8 = 0;
/// Exit code of `execute`/`result` (and `cancel --wait`) when the activity finished without success.
pub const EXIT_NOT_SUCCEEDED: u8 = 1;
/// Exit code of a usage error (unknown flag, bad value), as clap reports it.
pub const EXIT_USAGE: u8 = 2;
/// Exit code when the command could not do its work (cluster unreachable, activity not found…).
pub const EXIT_ERROR: u8 = 3;
/// Exit code after Ctrl-C.
pub const EXIT_INTERRUPTED: u8 = 130;

const AFTER_HELP: &str = "\
Exit codes: 0 success (for execute/result: the activity succeeded); 1 the activity finished without
success (Failed, TimedOut or Canceled); 2 bad usage; 3 the command failed (cluster unreachable,
activity not found, ...); 130 interrupted.

Examples:
  kubectl activity execute hello --start-to-close-timeout 1m -- sh -c 'echo \"::result {\\\"hi\\\": 1}\"'
  kubectl activity start batch --start-to-close-timeout 10m --heartbeat-timeout 30s \\
      --retry-maximum-attempts 3 --input '{\"items\": 100}' -- python3 /app/batch.py
  kubectl activity watch            # live progress bars of every activity in the namespace
  kubectl activity logs batch --all-attempts -f
  kubectl activity describe batch";

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-activity",
    bin_name = "kubectl activity",
    version,
    about = "Start, follow and operate Activities (heartbeat.dev/v1alpha1), like `temporal activity`",
    after_help = AFTER_HELP
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// kubectl's connection and output flags.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Namespace (default: the kubeconfig context's namespace, else `default`).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// All namespaces (list, watch).
    #[arg(short = 'A', long, global = true)]
    pub all_namespaces: bool,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Output format for scripts.
    #[arg(short = 'o', long, global = true, value_enum)]
    pub output: Option<Output>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Json,
    Yaml,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create an exec-mode Activity: the worker image runs `activity-worker exec -- CMD ARGS…`.
    Start(commands::StartArgs),
    /// Start an activity, wait for it to finish and print its result (exit 0 only on success).
    Execute(commands::StartArgs),
    /// Wait for an activity to finish and print its result or its failure (exit 0 only on success).
    Result { name: String },
    /// List activities: phase, attempt, progress with rate and ETA, heartbeat age, next retry.
    List {
        /// Label selector, as kubectl's `-l`.
        #[arg(short = 'l', long)]
        selector: Option<String>,
    },
    /// The attempt timeline, current heartbeat details, next retry and recent events of an activity.
    Describe { name: String },
    /// Live progress bars, one line per activity, until every watched activity has finished.
    Watch {
        /// Activities to watch (default: every activity in the namespace).
        names: Vec<String>,
        /// Label selector, as kubectl's `-l`.
        #[arg(short = 'l', long)]
        selector: Option<String>,
    },
    /// The worker logs of the current attempt, or of every attempt in order.
    Logs {
        name: String,
        /// Every attempt's logs in order, each line prefixed by its attempt.
        #[arg(long)]
        all_attempts: bool,
        /// Follow the log, and into the next attempt when a retry starts, until the activity finishes.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Container of the worker pod (default: its first container).
        #[arg(short = 'c', long)]
        container: Option<String>,
    },
    /// Cancel an activity (spec.cancelRequested=true; it ends Canceled and stays visible).
    Cancel {
        name: String,
        /// Delete the activity instead (kubectl delete: the finalizer stops the worker first).
        #[arg(long)]
        delete: bool,
        /// Wait until the activity has finished (or, with --delete, is gone).
        #[arg(long)]
        wait: bool,
    },
    /// Pause an activity (spec.paused=true): no new attempt starts; a running one is told to stop.
    Pause { name: String },
    /// Unpause an activity (spec.paused=false): the next attempt starts at once.
    Unpause { name: String },
    /// Reset an activity (spec.reset.requestedAt=now): a new attempt starts at once with a fresh retry budget.
    Reset {
        name: String,
        /// The reset also drops the heartbeat details (the next attempt starts from scratch).
        #[arg(long)]
        clear_heartbeat_details: bool,
    },
}

/// Whether colors and Unicode bars are used on stdout: only on a terminal, and not with NO_COLOR.
pub fn stdout_style() -> render::Style {
    let tty = std::io::stdout().is_terminal();
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    render::Style { unicode: tty, color: tty && !no_color }
}

fn main() -> ExitCode {
    // Like other Unix tools: a closed pipe (`kubectl activity logs x | head`) ends the process quietly.
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL is always a valid disposition.
    #[cfg(unix)]
    unsafe {
        let _ = nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { EXIT_OK });
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
