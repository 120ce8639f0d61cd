//! The heartbeat throttle: a pure state machine that decides when heartbeat details go out.
//!
//! Like Temporal's SDKs: the first heartbeat is sent at once, later ones at most once per
//! interval (counted from the start of the last delivered send); in between, the latest details
//! win. A send that fails is retried with backoff (or after the server's Retry-After) without
//! waiting for the interval, and gives up when the heartbeat could not be delivered for longer
//! than the heartbeat timeout.
//!
//! The clock is injected: no method reads the time, every caller passes `now` (the SDK passes
//! `Instant::now()`, the tests a fake clock), so every decision is reproducible.

use std::time::{Duration, Instant};

use serde_json::Value;

/// Interval when the activity has no heartbeat timeout.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// Heartbeats are never throttled to more than this apart.
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);
/// First retry delay after a failed send; doubled per consecutive failure.
pub const RETRY_MIN: Duration = Duration::from_millis(200);
/// Cap on the retry delay (a server's Retry-After may ask for more).
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// The throttle interval for an activity's heartbeat timeout: 0.8 × the timeout when one is set
/// (capped at 60 s), else 30 s.
pub fn interval_for(heartbeat_timeout: Option<Duration>) -> Duration {
    match heartbeat_timeout {
        Some(t) if !t.is_zero() => t.mul_f64(0.8).min(MAX_INTERVAL),
        _ => DEFAULT_INTERVAL,
    }
}

/// When the pending details should be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing is pending.
    Idle,
    /// Send now.
    Now,
    /// Send at this instant.
    At(Instant),
}

/// What to do after a failed send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// The details are pending again; try again at this instant.
    RetryAt(Instant),
    /// The heartbeat could not be delivered for `undelivered_for`, longer than the heartbeat
    /// timeout: stop the worker.
    GiveUp { undelivered_for: Duration },
}

/// The throttle state. See the module documentation.
#[derive(Debug, Clone)]
pub struct Throttle {
    interval: Duration,
    give_up_after: Option<Duration>,
    pending: Option<Value>,
    /// Start of the last delivered send.
    last_sent: Option<Instant>,
    /// Set after a failed send: when to try again.
    retry_at: Option<Instant>,
    /// Consecutive failed sends.
    failures: u32,
    /// Start of the first send of the current run of failures.
    failing_since: Option<Instant>,
}

impl Throttle {
    /// A throttle for an activity with this heartbeat timeout (unset or zero: disabled).
    pub fn for_heartbeat_timeout(heartbeat_timeout: Option<Duration>) -> Self {
        Self::new(interval_for(heartbeat_timeout), heartbeat_timeout.filter(|t| !t.is_zero()))
    }

    /// A throttle that sends at most once per `interval` and gives up after failing to deliver
    /// for `give_up_after` (never when `None`).
    pub fn new(interval: Duration, give_up_after: Option<Duration>) -> Self {
        Self {
            interval,
            give_up_after,
            pending: None,
            last_sent: None,
            retry_at: None,
            failures: 0,
            failing_since: None,
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Records new details; they replace any that are still pending (the latest win).
    pub fn record(&mut self, details: Value) {
        self.pending = Some(details);
    }

    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// When the pending details are due.
    pub fn due(&self) -> Due {
        if self.pending.is_none() {
            return Due::Idle;
        }
        match (self.retry_at, self.last_sent) {
            (Some(at), _) => Due::At(at),
            (None, Some(last)) => Due::At(last + self.interval),
            (None, None) => Due::Now,
        }
    }

    /// The pending details, when they are due at `now`; the caller sends them and then calls
    /// [`Throttle::delivered`] or [`Throttle::failed`].
    pub fn take_due(&mut self, now: Instant) -> Option<Value> {
        match self.due() {
            Due::Now => self.pending.take(),
            Due::At(at) if at <= now => self.pending.take(),
            _ => None,
        }
    }

    /// The pending details regardless of the interval: the flush before the outcome or on shutdown.
    pub fn take_pending(&mut self) -> Option<Value> {
        self.pending.take()
    }

    /// A send that started at `sent_at` was accepted.
    pub fn delivered(&mut self, sent_at: Instant) {
        self.last_sent = Some(sent_at);
        self.retry_at = None;
        self.failures = 0;
        self.failing_since = None;
    }

    /// A send of `details` that started at `sent_at` failed at `now` with a retryable error; the
    /// server may have asked to wait `retry_after`. The details become pending again unless newer
    /// ones were recorded meanwhile.
    pub fn failed(
        &mut self,
        details: Value,
        sent_at: Instant,
        now: Instant,
        retry_after: Option<Duration>,
    ) -> AfterFailure {
        if self.pending.is_none() {
            self.pending = Some(details);
        }
        self.failures = self.failures.saturating_add(1);
        let since = *self.failing_since.get_or_insert(sent_at);
        let backoff = retry_after.unwrap_or_else(|| backoff(self.failures));
        let mut at = now + backoff;
        if let Some(limit) = self.give_up_after {
            let undelivered_for = now.saturating_duration_since(since);
            if undelivered_for >= limit {
                self.retry_at = None;
                return AfterFailure::GiveUp { undelivered_for };
            }
            // One last try right at the limit rather than after it.
            at = at.min(since + limit);
        }
        self.retry_at = Some(at);
        AfterFailure::RetryAt(at)
    }

    /// Consecutive failed sends so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// Retry delay after `failures` consecutive failures: 200 ms, 400 ms, … capped at 5 s.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    RETRY_MIN.saturating_mul(1u32 << exp).min(RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A fake clock: instants relative to a fixed origin.
    struct Clock(Instant);
    impl Clock {
        fn new() -> Self {
            Self(Instant::now())
        }
        fn at(&self, ms: u64) -> Instant {
            self.0 + Duration::from_millis(ms)
        }
    }

    #[test]
    fn interval_is_four_fifths_of_the_timeout_capped_else_thirty_seconds() {
        assert_eq!(interval_for(Some(Duration::from_secs(5))), Duration::from_secs(4));
        assert_eq!(interval_for(Some(Duration::from_secs(10))), Duration::from_secs(8));
        assert_eq!(interval_for(Some(Duration::from_secs(600))), Duration::from_secs(60));
        assert_eq!(interval_for(None), Duration::from_secs(30));
        assert_eq!(interval_for(Some(Duration::ZERO)), Duration::from_secs(30));
        let t = Throttle::for_heartbeat_timeout(Some(Duration::ZERO));
        assert_eq!(t.give_up_after, None);
    }

    #[test]
    fn first_heartbeat_goes_at_once_then_at_most_one_per_interval() {
        let c = Clock::new();
        let mut t = Throttle::new(Duration::from_secs(4), None);
        assert_eq!(t.due(), Due::Idle);
        assert_eq!(t.take_due(c.at(0)), None);

        t.record(json!(1));
        assert_eq!(t.due(), Due::Now);
        assert_eq!(t.take_due(c.at(0)), Some(json!(1)));
        t.delivered(c.at(0));
        assert_eq!(t.due(), Due::Idle);

        // Within the interval: held back, the latest wins.
        t.record(json!(2));
        t.record(json!(3));
        assert_eq!(t.due(), Due::At(c.at(4000)));
        assert_eq!(t.take_due(c.at(1000)), None);
        assert_eq!(t.take_due(c.at(3999)), None);
        assert_eq!(t.take_due(c.at(4000)), Some(json!(3)));
        t.delivered(c.at(4000));

        // A heartbeat long after the interval goes at once.
        t.record(json!(4));
        assert_eq!(t.take_due(c.at(20_000)), Some(json!(4)));
        t.delivered(c.at(20_000));
        t.record(json!(5));
        assert_eq!(t.due(), Due::At(c.at(24_000)));
    }

    #[test]
    fn flush_takes_pending_details_regardless_of_the_interval() {
        let c = Clock::new();
        let mut t = Throttle::new(Duration::from_secs(30), None);
        t.record(json!({"a": 1}));
        assert!(t.take_due(c.at(0)).is_some());
        t.delivered(c.at(0));
        t.record(json!({"a": 2}));
        assert_eq!(t.take_due(c.at(100)), None);
        assert_eq!(t.take_pending(), Some(json!({"a": 2})));
        assert_eq!(t.take_pending(), None);
        assert!(!t.has_pending());
    }

    #[test]
    fn failed_send_is_retried_with_backoff_and_newer_details_win() {
        let c = Clock::new();
        let mut t = Throttle::new(Duration::from_secs(4), Some(Duration::from_secs(5)));
        t.record(json!(1));
        let d = t.take_due(c.at(0)).unwrap();
        // Newer details arrive while the send is in flight; the failed ones must not replace them.
        t.record(json!(2));
        assert_eq!(t.failed(d, c.at(0), c.at(100), None), AfterFailure::RetryAt(c.at(300)));
        assert_eq!(t.due(), Due::At(c.at(300)));
        assert_eq!(t.take_due(c.at(299)), None);
        let d = t.take_due(c.at(300)).unwrap();
        assert_eq!(d, json!(2));
        // Nothing newer: the failed details are pending again; backoff doubles.
        assert_eq!(t.failed(d, c.at(300), c.at(400), None), AfterFailure::RetryAt(c.at(800)));
        assert_eq!(t.take_pending(), Some(json!(2)));
        t.record(json!(2));
        // Success resets the backoff and the interval counts from the successful send.
        let d = t.take_due(c.at(800)).unwrap();
        assert_eq!(d, json!(2));
        t.delivered(c.at(800));
        assert_eq!(t.failures(), 0);
        t.record(json!(3));
        assert_eq!(t.due(), Due::At(c.at(4800)));
    }

    #[test]
    fn retry_after_from_the_server_is_honoured() {
        let c = Clock::new();
        let mut t = Throttle::new(Duration::from_secs(4), None);
        t.record(json!(1));
        let d = t.take_due(c.at(0)).unwrap();
        assert_eq!(t.failed(d, c.at(0), c.at(10), Some(Duration::from_secs(3))), AfterFailure::RetryAt(c.at(3010)));
    }

    #[test]
    fn gives_up_when_undelivered_for_longer_than_the_heartbeat_timeout() {
        let c = Clock::new();
        let mut t = Throttle::new(Duration::from_secs(4), Some(Duration::from_secs(5)));
        t.record(json!(1));
        let mut now = 0;
        let mut sent = 0;
        let mut tries = 0;
        loop {
            let d = t.take_due(c.at(now)).expect("due");
            tries += 1;
            now += 50; // each request takes 50 ms
            match t.failed(d, c.at(sent), c.at(now), None) {
                AfterFailure::RetryAt(at) => {
                    assert!(at <= c.at(5000), "never retries past the limit");
                    now = (at - c.at(0)).as_millis() as u64;
                    sent = now;
                }
                AfterFailure::GiveUp { undelivered_for } => {
                    assert!(undelivered_for >= Duration::from_secs(5));
                    break;
                }
            }
            assert!(tries < 100);
        }
        // 200+400+800+1600 ms of backoff, then the last try at the 5 s limit.
        assert!(tries >= 5, "tries: {tries}");
        // The details are still there for the final flush.
        assert_eq!(t.take_pending(), Some(json!(1)));
    }

    #[test]
    fn without_a_heartbeat_timeout_it_never_gives_up() {
        let c = Clock::new();
        let mut t = Throttle::for_heartbeat_timeout(None);
        t.record(json!(1));
        for i in 0..50u64 {
            let now = c.at(i * 10_000);
            let d = t.take_due(now).unwrap_or_else(|| t.take_pending().unwrap());
            assert!(matches!(t.failed(d, now, now, None), AfterFailure::RetryAt(_)));
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(2), Duration::from_millis(400));
        assert_eq!(backoff(3), Duration::from_millis(800));
        assert_eq!(backoff(10), RETRY_MAX);
        assert_eq!(backoff(u32::MAX), RETRY_MAX);
    }
}
