//! `activity-worker`: runs one attempt of an Activity in its worker pod.
//!
//! - `activity-worker exec -- CMD ARGS…` runs CMD and speaks the heartbeat protocol for it.
//! - `activity-worker demo batch …` and `activity-worker demo records …` are the built-in demo
//!   activities, written with the SDK (`activity_worker`).
//!
//! Exit codes: 0 success, 143 canceled, otherwise failure (`exec` passes the command's code on).

use std::process::ExitCode;
use std::time::Duration;

use activity_crds::parse_duration;
use activity_worker::demo::{self, BatchConfig};
use activity_worker::{ActivityContext, EXIT_FAILURE, EXIT_SUCCESS, Report, exec, finish};
use clap::{Parser, Subcommand};
use tracing::error;

#[derive(Parser, Debug)]
#[command(name = "activity-worker", version, about = "Runs one attempt of a heartbeat.dev Activity in its worker pod")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run CMD as the activity: its stdout lines `::heartbeat <json>`, `::result <json>` and
    /// `::fail <json>` are commands, every other line goes to the pod log; exit 0 is success.
    Exec {
        /// The command and its arguments (after `--`).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// The built-in demo activities.
    Demo {
        #[command(subcommand)]
        demo: Demo,
    },
}

#[derive(Subcommand, Debug)]
enum Demo {
    /// Process items one at a time, heartbeat each, fail after --fail-after items per attempt,
    /// resume after the last heartbeated item. Result {"processed": total}.
    Batch {
        /// First item when there is nothing to resume from.
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// Number of items (items are 0..total).
        #[arg(long, default_value_t = 10)]
        total: u64,
        /// Processing time of one item (Go-style duration: 500ms, 1s, 2m).
        #[arg(long, default_value = "1s", value_parser = duration_arg)]
        item_duration: Duration,
        /// Fail (retryable, type BatchInterrupted) after this many items in one attempt; 0 = never.
        #[arg(long, default_value_t = 0)]
        fail_after: u64,
    },
    /// Read records by offset (100–500 ms each), heartbeat the offset, resume from it. Result:
    /// the final offset.
    Records {
        /// Number of records.
        #[arg(long, default_value_t = 1000)]
        count: u64,
    },
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // One attempt's I/O (heartbeats, the child's output, signals) needs no second thread; a
    // single-threaded runtime keeps the worker's RSS at about 9 MiB (docs/benchmarks.md).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE as u8);
        }
    };
    let code = runtime.block_on(run(cli));
    // Do not wait for background tasks (the heartbeat sender, the signal watcher).
    runtime.shutdown_timeout(Duration::from_millis(100));
    ExitCode::from(u8::try_from(code).unwrap_or(EXIT_FAILURE as u8))
}

async fn run(cli: Cli) -> i32 {
    let ctx = match ActivityContext::from_env().await {
        Ok(ctx) => ctx,
        Err(e) => {
            error!("cannot start the worker: {e}");
            return EXIT_FAILURE;
        }
    };
    let (report, exit_code) = match cli.command {
        Command::Exec { command } => match exec::run(&ctx, &command).await {
            Ok(end) if end.reported => return end.exit_code,
            Ok(end) => (end.report, end.exit_code),
            Err(e) => {
                error!("exec failed: {e}");
                (
                    Report::Failed(activity_crds::WorkerFailure {
                        type_: "ExecError".into(),
                        message: e.to_string(),
                        non_retryable: false,
                        next_retry_delay: None,
                    }),
                    EXIT_FAILURE,
                )
            }
        },
        Command::Demo { demo } => {
            let report = match demo {
                Demo::Batch { start, total, item_duration, fail_after } => {
                    demo::batch(&ctx, &BatchConfig { start, total, item_duration, fail_after }).await
                }
                Demo::Records { count } => demo::records(&ctx, count).await,
            };
            match report {
                Ok(report) => {
                    let code = exit_code_of(&report);
                    (report, code)
                }
                Err(e) => {
                    error!("demo failed: {e}");
                    let failure = activity_crds::WorkerFailure {
                        type_: "DemoError".into(),
                        message: e.to_string(),
                        non_retryable: false,
                        next_retry_delay: None,
                    };
                    (Report::Failed(failure), EXIT_FAILURE)
                }
            }
        }
    };
    finish(&ctx, report, exit_code).await
}

fn exit_code_of(report: &Report) -> i32 {
    match report {
        Report::Completed(_) => EXIT_SUCCESS,
        Report::Failed(_) => EXIT_FAILURE,
        Report::Canceled => activity_worker::EXIT_CANCELED,
    }
}
