//! Restart decisions and the kubelet's back-off (`k8s.io/client-go/util/flowcontrol.Backoff` with
//! the kubelet's parameters: 10 s initial, doubling, 5 min cap, forgotten after 10 min).

use std::time::{Duration, Instant};

/// `spec.restartPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    /// From the pod spec's string (the API defaults it to `Always`).
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("Never") => Self::Never,
            Some("OnFailure") => Self::OnFailure,
            _ => Self::Always,
        }
    }
}

/// What kind of container a slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    /// An init container that runs to completion before the next.
    Init,
    /// An init container with `restartPolicy: Always` (a sidecar).
    Sidecar,
    /// A regular container.
    Regular,
}

/// Whether a container of `kind` that exited with `exit_code` is started again.
pub fn should_restart(policy: RestartPolicy, kind: SlotKind, exit_code: i32) -> bool {
    match kind {
        SlotKind::Sidecar => true,
        // Init containers are retried on failure unless the pod never restarts.
        SlotKind::Init => exit_code != 0 && policy != RestartPolicy::Never,
        SlotKind::Regular => match policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit_code != 0,
            RestartPolicy::Never => false,
        },
    }
}

/// A per-container (or per-image) back-off entry.
#[derive(Debug, Clone, Copy, Default)]
pub struct Backoff {
    current: Option<Duration>,
    updated: Option<Instant>,
}

impl Backoff {
    pub const INITIAL: Duration = Duration::from_secs(10);
    pub const MAX: Duration = Duration::from_secs(300);

    fn expired(&self, event: Instant) -> bool {
        match self.updated {
            Some(updated) => event.saturating_duration_since(updated) > Self::MAX * 2,
            None => true,
        }
    }

    /// If an event at `event` (a container's exit, a failed pull) is still inside the back-off
    /// window at `now`: when the window ends and how long it is.
    pub fn in_backoff_since(&self, event: Instant, now: Instant) -> Option<(Instant, Duration)> {
        let current = self.current?;
        if self.expired(event) {
            return None;
        }
        let end = event + current;
        (now < end).then_some((end, current))
    }

    /// Records an attempt at `now` after an event at `event`: starts or doubles the back-off.
    pub fn next(&mut self, event: Instant, now: Instant) {
        self.current = match self.current {
            Some(d) if !self.expired(event) => Some((d * 2).min(Self::MAX)),
            _ => Some(Self::INITIAL),
        };
        self.updated = Some(now);
    }
}

/// A duration as Go prints it (`10s`, `1m20s`, `5m0s`), for messages that match the kubelet's.
pub fn go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    match (secs / 3600, secs % 3600 / 60, secs % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_decisions() {
        use RestartPolicy::*;
        use SlotKind::*;
        assert!(should_restart(Always, Regular, 0));
        assert!(!should_restart(OnFailure, Regular, 0));
        assert!(should_restart(OnFailure, Regular, 1));
        assert!(!should_restart(Never, Regular, 1));
        assert!(should_restart(Always, Init, 1));
        assert!(!should_restart(Always, Init, 0));
        assert!(!should_restart(Never, Init, 1));
        assert!(should_restart(Never, Sidecar, 0));
        assert_eq!(RestartPolicy::parse(None), Always);
        assert_eq!(RestartPolicy::parse(Some("Never")), Never);
    }

    #[test]
    fn crash_loop_sequence() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut b = Backoff::default();
        // First exit: restart at once.
        assert_eq!(b.in_backoff_since(t0, t0), None);
        b.next(t0, t0);
        // Second exit 1 s later: wait 10 s from the exit.
        let exit2 = t0 + s(1);
        assert_eq!(b.in_backoff_since(exit2, exit2), Some((exit2 + s(10), s(10))));
        assert_eq!(b.in_backoff_since(exit2, exit2 + s(10)), None);
        b.next(exit2, exit2 + s(10));
        let exit3 = exit2 + s(11);
        assert_eq!(b.in_backoff_since(exit3, exit3).map(|x| x.1), Some(s(20)));
        let mut t = exit3;
        for _ in 0..10 {
            t += s(301);
            b.next(t, t);
        }
        assert_eq!(b.in_backoff_since(t, t).map(|x| x.1), Some(Backoff::MAX));
        // A container that ran for more than 10 minutes starts over.
        let late = t + s(601);
        assert_eq!(b.in_backoff_since(late, late), None);
        b.next(late, late);
        assert_eq!(b.in_backoff_since(late, late).map(|x| x.1), Some(s(10)));
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration(Duration::from_secs(80)), "1m20s");
        assert_eq!(go_duration(Duration::from_secs(300)), "5m0s");
        assert_eq!(go_duration(Duration::from_secs(3700)), "1h1m40s");
    }
}
