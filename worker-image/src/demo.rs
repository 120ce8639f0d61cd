//! The built-in demo activities, written with the SDK as its reference example.
//!
//! - `demo batch`: processes items one at a time, heartbeats `{"lastItem": i, "progress":
//!   "<done>/<total>"}` after each, fails (retryable, `BatchInterrupted`) after `--fail-after`
//!   items in one attempt, and resumes after the last heartbeated item. Result `{"processed": total}`.
//! - `demo records`: reads records by offset, 100–500 ms each, heartbeats `{"offset": n,
//!   "progress": "n/count"}`, resumes from the last offset. Result: the final offset.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::context::{ActivityContext, Report};
use crate::error::Result;

/// Error type of the batch's simulated failure.
pub const BATCH_INTERRUPTED: &str = "BatchInterrupted";

/// `demo batch` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchConfig {
    /// First item (index) when there is nothing to resume from.
    pub start: u64,
    /// Items are `0..total`; the result counts `total`.
    pub total: u64,
    /// Processing time of one item.
    pub item_duration: Duration,
    /// Fail after this many items processed in one attempt; 0 = never.
    pub fail_after: u64,
}

/// The batch's heartbeat details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchDetails {
    /// The last finished item.
    pub last_item: u64,
    /// `<done>/<total>`, shown by `kubectl get activities`.
    #[serde(default)]
    pub progress: String,
}

impl BatchDetails {
    pub fn after(item: u64, total: u64) -> Self {
        Self { last_item: item, progress: format!("{}/{total}", item.saturating_add(1)) }
    }
}

/// Where a batch attempt starts: after the last heartbeated item of the previous attempts, else
/// at `start`. Details that are not the batch's are ignored (with the reason).
pub fn batch_first_item(start: u64, previous: Option<&Value>) -> (u64, Option<String>) {
    let Some(previous) = previous else { return (start, None) };
    match serde_json::from_value::<BatchDetails>(previous.clone()) {
        Ok(d) => (start.max(d.last_item.saturating_add(1)), None),
        Err(e) => (start, Some(format!("ignoring heartbeat details {previous} that are not the batch's: {e}"))),
    }
}

/// What comes after finishing an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Go on with the next item.
    Next,
    /// The simulated failure: `--fail-after` items were processed in this attempt.
    Interrupt,
    /// All items are done.
    Done,
}

/// After finishing `item`, the `done_in_attempt`-th item of this attempt.
pub fn batch_step(cfg: &BatchConfig, item: u64, done_in_attempt: u64) -> Step {
    if item.saturating_add(1) >= cfg.total {
        Step::Done
    } else if cfg.fail_after > 0 && done_in_attempt >= cfg.fail_after {
        Step::Interrupt
    } else {
        Step::Next
    }
}

/// Runs `demo batch`; returns the report (not yet delivered).
pub async fn batch(ctx: &ActivityContext, cfg: &BatchConfig) -> Result<Report> {
    if ctx.is_cancelled() {
        return Ok(Report::Canceled);
    }
    let (first, ignored) = batch_first_item(cfg.start, ctx.raw_heartbeat_details());
    if let Some(why) = ignored {
        warn!("{why}");
    }
    if first > cfg.start {
        info!("resuming at item {first} (the previous attempts finished up to item {})", first - 1);
    }
    let mut done_in_attempt = 0;
    for item in first..cfg.total {
        tokio::select! {
            _ = tokio::time::sleep(cfg.item_duration) => {}
            _ = ctx.cancelled() => {
                info!("canceled while processing item {item}");
                return Ok(Report::Canceled);
            }
        }
        info!("processed item {item}");
        ctx.heartbeat(&BatchDetails::after(item, cfg.total))?;
        done_in_attempt += 1;
        match batch_step(cfg, item, done_in_attempt) {
            Step::Next => {}
            Step::Done => break,
            Step::Interrupt => {
                let message = format!(
                    "simulated failure after {done_in_attempt} items in attempt {} (--fail-after {}); the next attempt resumes at item {}",
                    ctx.attempt(),
                    cfg.fail_after,
                    item + 1
                );
                return Ok(Report::Failed(activity_crds::WorkerFailure {
                    type_: BATCH_INTERRUPTED.into(),
                    message,
                    non_retryable: false,
                    next_retry_delay: None,
                }));
            }
        }
    }
    Ok(Report::Completed(Some(json!({"processed": cfg.total}))))
}

/// The records' heartbeat details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordsDetails {
    /// Records `0..offset` are done.
    pub offset: u64,
    /// `n/count`, shown by `kubectl get activities`.
    #[serde(default)]
    pub progress: String,
}

impl RecordsDetails {
    pub fn at(offset: u64, count: u64) -> Self {
        Self { offset, progress: format!("{offset}/{count}") }
    }
}

/// Where a records attempt starts: the last heartbeated offset (at most `count`), else 0.
pub fn records_first_offset(count: u64, previous: Option<&Value>) -> (u64, Option<String>) {
    let Some(previous) = previous else { return (0, None) };
    match serde_json::from_value::<RecordsDetails>(previous.clone()) {
        Ok(d) => (d.offset.min(count), None),
        Err(e) => (0, Some(format!("ignoring heartbeat details {previous} that are not the records': {e}"))),
    }
}

/// Processing time of one record: 100–500 ms.
pub fn record_delay() -> Duration {
    Duration::from_millis(rand::random_range(100..=500))
}

/// Runs `demo records`; returns the report (not yet delivered).
pub async fn records(ctx: &ActivityContext, count: u64) -> Result<Report> {
    if ctx.is_cancelled() {
        return Ok(Report::Canceled);
    }
    let (first, ignored) = records_first_offset(count, ctx.raw_heartbeat_details());
    if let Some(why) = ignored {
        warn!("{why}");
    }
    if first > 0 {
        info!("resuming at offset {first}");
    }
    for offset in first..count {
        tokio::select! {
            _ = tokio::time::sleep(record_delay()) => {}
            _ = ctx.cancelled() => {
                info!("canceled at offset {offset}");
                return Ok(Report::Canceled);
            }
        }
        info!("processed record {offset}");
        ctx.heartbeat(&RecordsDetails::at(offset + 1, count))?;
    }
    Ok(Report::Completed(Some(json!(count))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(total: u64, fail_after: u64) -> BatchConfig {
        BatchConfig { start: 0, total, item_duration: Duration::ZERO, fail_after }
    }

    /// Plays the batch over attempts with the pure functions: the items each attempt processes.
    fn simulate(cfg: &BatchConfig, max_attempts: usize) -> (Vec<Vec<u64>>, bool) {
        let mut details: Option<Value> = None;
        let mut attempts = Vec::new();
        for _ in 0..max_attempts {
            let (first, _) = batch_first_item(cfg.start, details.as_ref());
            let mut items = Vec::new();
            let mut done = 0;
            let mut outcome = Step::Done;
            for item in first..cfg.total {
                items.push(item);
                details = Some(serde_json::to_value(BatchDetails::after(item, cfg.total)).unwrap());
                done += 1;
                outcome = batch_step(cfg, item, done);
                if outcome != Step::Next {
                    break;
                }
            }
            attempts.push(items);
            if outcome == Step::Done {
                return (attempts, true);
            }
        }
        (attempts, false)
    }

    #[test]
    fn seed_scenario_succeeds_on_the_fourth_attempt() {
        let (attempts, ok) = simulate(&cfg(10, 3), 4);
        assert!(ok);
        assert_eq!(attempts, vec![vec![0, 1, 2], vec![3, 4, 5], vec![6, 7, 8], vec![9]]);
    }

    #[test]
    fn never_fails_with_fail_after_zero() {
        let (attempts, ok) = simulate(&cfg(5, 0), 1);
        assert!(ok);
        assert_eq!(attempts, vec![vec![0, 1, 2, 3, 4]]);
    }

    #[test]
    fn finishing_the_last_item_succeeds_even_at_the_failure_count() {
        let (attempts, ok) = simulate(&cfg(6, 3), 2);
        assert!(ok);
        assert_eq!(attempts, vec![vec![0, 1, 2], vec![3, 4, 5]]);
        assert_eq!(batch_step(&cfg(3, 3), 2, 3), Step::Done);
        assert_eq!(batch_step(&cfg(4, 3), 2, 3), Step::Interrupt);
    }

    #[test]
    fn batch_resumes_after_the_last_heartbeated_item() {
        assert_eq!(batch_first_item(0, None), (0, None));
        assert_eq!(batch_first_item(4, None), (4, None));
        let d = json!({"lastItem": 5, "progress": "6/10"});
        assert_eq!(batch_first_item(0, Some(&d)).0, 6);
        // --start beyond the heartbeated item wins.
        assert_eq!(batch_first_item(8, Some(&d)).0, 8);
        // Foreign details are ignored, with a reason.
        let (first, why) = batch_first_item(0, Some(&json!({"offset": 3})));
        assert_eq!(first, 0);
        assert!(why.unwrap().contains("offset"));
        // Everything done already: nothing left.
        let done = serde_json::to_value(BatchDetails::after(9, 10)).unwrap();
        assert_eq!(batch_first_item(0, Some(&done)).0, 10);
    }

    #[test]
    fn batch_details_shape() {
        assert_eq!(
            serde_json::to_value(BatchDetails::after(2, 10)).unwrap(),
            json!({"lastItem": 2, "progress": "3/10"})
        );
    }

    #[test]
    fn records_resume_from_the_last_offset() {
        assert_eq!(records_first_offset(50, None), (0, None));
        assert_eq!(records_first_offset(50, Some(&json!({"offset": 17, "progress": "17/50"}))).0, 17);
        assert_eq!(records_first_offset(50, Some(&json!({"offset": 90}))).0, 50);
        let (first, why) = records_first_offset(50, Some(&json!({"lastItem": 3})));
        assert_eq!(first, 0);
        assert!(why.is_some());
        assert_eq!(serde_json::to_value(RecordsDetails::at(3, 50)).unwrap(), json!({"offset": 3, "progress": "3/50"}));
    }

    #[test]
    fn record_delay_is_between_100_and_500_ms() {
        for _ in 0..200 {
            let d = record_delay();
            assert!(d >= Duration::from_millis(100) && d <= Duration::from_millis(500), "{d:?}");
        }
    }
}
