//! The Activity worker SDK and the `activity-worker` binary's modes.
//!
//! A worker runs one attempt of one `heartbeat.dev/v1alpha1` Activity:
//!
//! ```no_run
//! # async fn work() -> Result<(), activity_worker::Error> {
//! use activity_worker::{ActivityContext, Report};
//!
//! let ctx = ActivityContext::from_env().await?;          // ACTIVITY_NAME/NAMESPACE/ATTEMPT
//! let total: u64 = ctx.input()?;                          // spec.input
//! let mut next: u64 = ctx.heartbeat_details()?.unwrap_or(0); // resume where the last attempt stopped
//! while next < total {
//!     tokio::select! {
//!         _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
//!         _ = ctx.cancelled() => return ctx.report_canceled().await,
//!     }
//!     next += 1;
//!     ctx.heartbeat(&next)?;                              // throttled; flushed before the outcome
//! }
//! ctx.complete(&serde_json::json!({"done": total})).await
//! # }
//! ```
//!
//! The wire protocol (JSON Patches of `activities/status` guarded by a `test` of
//! `status.attempt`) is in [`wire`]; the throttle in [`throttle`]; `activity-worker exec` in
//! [`exec`]; the demo activities in [`demo`]. See `docs/worker.md`.

pub mod context;
pub mod demo;
pub mod error;
pub mod exec;
mod request;
pub mod throttle;
pub mod wire;

pub use activity_crds::StopCause;
pub use context::{ActivityContext, ApplicationError, CancelReason, Deadlines, Report};
pub use error::{Error, Result};

/// Exit code of a worker that reported success (or whose command exited 0).
pub const EXIT_SUCCESS: i32 = 0;
/// Exit code of a worker that failed or could not run (`exec` passes the command's own code on).
pub const EXIT_FAILURE: i32 = 1;
/// Exit code of a worker that stopped because it was canceled (128 + SIGTERM).
pub const EXIT_CANCELED: i32 = 143;

/// Reports `report` and returns the process exit code: `exit_code` when the outcome was delivered
/// (or could not be delivered for a transient reason: the operator then judges the exit code);
/// [`EXIT_CANCELED`] when the attempt is superseded or the Activity is gone; [`EXIT_FAILURE`] for
/// a missing permission or heartbeats that could not be delivered.
pub async fn finish(ctx: &ActivityContext, report: Report, exit_code: i32) -> i32 {
    match ctx.report(report).await {
        Ok(()) => exit_code,
        Err(e) if e.is_cancellation() => {
            tracing::warn!("outcome not written: {e}");
            EXIT_CANCELED
        }
        Err(e @ (Error::Forbidden { .. } | Error::HeartbeatUndeliverable { .. })) => {
            tracing::error!("{e}");
            EXIT_FAILURE
        }
        Err(e @ Error::PayloadTooLarge { .. }) => {
            tracing::error!("{e}");
            match ctx.fail("ResultTooLarge", e.to_string(), true).await {
                Ok(()) => EXIT_FAILURE,
                Err(e) => {
                    tracing::error!("outcome not written: {e}");
                    EXIT_FAILURE
                }
            }
        }
        Err(e) => {
            tracing::error!("outcome not written: {e}");
            exit_code
        }
    }
}
