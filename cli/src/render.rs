//! Rendering, kept pure: activity states and a clock in, lines of text out. No I/O here, so every
//! view (`list`, `watch`, `describe`) is unit-tested on known states with a fixed clock.

use std::fmt::Write as _;

use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;

use crate::model::{ActivityState, FailureView, Progress};

/// Width of a progress bar, in terminal columns.
pub const BAR_WIDTH: usize = 20;
/// How far back the rate looks (seconds of heartbeat time).
pub const RATE_WINDOW_SECS: f64 = 60.0;
/// At most this many progress samples are kept per activity.
const MAX_SAMPLES: usize = 64;

/// How lines look: Unicode bars and colors on a terminal, ASCII and no colors elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Style {
    pub unicode: bool,
    pub color: bool,
}

impl Style {
    pub const PLAIN: Style = Style { unicode: false, color: false };
    pub const TERMINAL: Style = Style { unicode: true, color: true };
}

/// A progress value seen at a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub time: Timestamp,
    pub done: f64,
}

/// An activity and the progress samples seen so far (for the rate and the ETA).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tracked {
    pub state: ActivityState,
    pub samples: Vec<Sample>,
}

impl Tracked {
    pub fn new(state: ActivityState) -> Self {
        let mut t = Tracked { state: ActivityState::default(), samples: Vec::new() };
        t.update(state);
        t
    }

    /// Takes a newer state of the activity; a new heartbeat with progress adds a sample. Progress
    /// going back (a reset that cleared the details) starts the samples afresh.
    pub fn update(&mut self, state: ActivityState) {
        if let (Some(p), Some(time)) = (state.progress(), state.last_heartbeat_time) {
            let last = self.samples.last().copied();
            if last.is_some_and(|s| p.done < s.done) {
                self.samples.clear();
            }
            if last.is_none_or(|s| time > s.time) {
                self.samples.push(Sample { time, done: p.done });
            }
            let keep_from = self.samples.len().saturating_sub(MAX_SAMPLES);
            self.samples.drain(..keep_from);
        }
        self.state = state;
    }

    /// Units of progress per second over the last [`RATE_WINDOW_SECS`] of heartbeats. With a single
    /// sample of a first attempt, the attempt started at 0 (a first attempt never resumes).
    pub fn rate(&self) -> Option<f64> {
        let last = *self.samples.last()?;
        let first = self
            .samples
            .iter()
            .find(|s| secs_between(s.time, last.time) <= RATE_WINDOW_SECS)
            .copied()
            .filter(|s| s.time < last.time)
            .or_else(|| {
                let started = self.state.started_time?;
                (self.state.attempt == Some(1) && started < last.time).then_some(Sample { time: started, done: 0.0 })
            })?;
        let secs = secs_between(first.time, last.time);
        let rate = (last.done - first.done) / secs;
        (secs > 0.0 && rate.is_finite() && rate >= 0.0).then_some(rate)
    }

    /// Time left at the current rate while an attempt runs, counted from the last sample and less
    /// the time since.
    pub fn eta_secs(&self, now: Timestamp) -> Option<f64> {
        if self.state.phase.as_deref() != Some("Running") {
            return None;
        }
        let p = self.state.progress()?;
        let rate = self.rate().filter(|r| *r > 0.0)?;
        let last = self.samples.last()?;
        let remaining = p.total - p.done;
        if remaining <= 0.0 {
            return None;
        }
        Some((remaining / rate - secs_between(last.time, now)).max(0.0))
    }
}

fn secs_between(from: Timestamp, to: Timestamp) -> f64 {
    to.duration_since(from).as_secs_f64()
}

/// A duration as kubectl prints ages: `45s`, `3m20s`, `25m`, `2h5m`, `20h`, `3d4h`, `12d`.
pub fn human_duration(secs: f64) -> String {
    let s = if secs.is_finite() { secs.max(0.0) as u64 } else { 0 };
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    let with = |big: u64, unit: char, small: u64, small_unit: char| {
        if small == 0 { format!("{big}{unit}") } else { format!("{big}{unit}{small}{small_unit}") }
    };
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        with(m, 'm', s % 60, 's')
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        with(h, 'h', m % 60, 'm')
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        with(d, 'd', h % 24, 'h')
    } else {
        format!("{d}d")
    }
}

/// A progress bar of [`BAR_WIDTH`] columns.
pub fn bar(fraction: f64, style: Style) -> String {
    let filled = ((fraction.clamp(0.0, 1.0) * BAR_WIDTH as f64).floor() as usize).min(BAR_WIDTH);
    let empty = BAR_WIDTH - filled;
    if style.unicode {
        format!("{}{}", "█".repeat(filled), "░".repeat(empty))
    } else {
        format!("[{}{}]", "#".repeat(filled), "-".repeat(empty))
    }
}

fn number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 { format!("{}", x as i64) } else { format!("{x:.1}") }
}

/// `████░░░ 4/10 40%`, or `-` without progress.
pub fn progress_cell(p: Option<Progress>, style: Style) -> String {
    match p {
        Some(p) => {
            format!("{} {}/{} {:.0}%", bar(p.fraction(), style), number(p.done), number(p.total), p.fraction() * 100.0)
        }
        None => "-".into(),
    }
}

/// `2.5/s`, `0.25/s` or `1.2/min`.
pub fn rate_cell(rate: Option<f64>) -> String {
    match rate {
        Some(r) if r >= 1.0 => format!("{r:.1}/s"),
        Some(r) if r >= 0.1 => format!("{r:.2}/s"),
        Some(r) if r > 0.0 => format!("{:.1}/min", r * 60.0),
        Some(_) => "0/s".into(),
        None => "-".into(),
    }
}

/// The phase as shown: with what is pending on it (`Running (pausing)`).
pub fn phase_cell(s: &ActivityState) -> String {
    let phase = s.phase.clone().unwrap_or_else(|| "-".into());
    if s.is_finished() {
        return phase;
    }
    if (s.cancel_requested || s.deleting) && phase != "Canceling" {
        format!("{phase} (canceling)")
    } else if s.paused && phase != "Paused" {
        format!("{phase} (pausing)")
    } else if !s.paused && phase == "Paused" {
        format!("{phase} (resuming)")
    } else {
        phase
    }
}

/// `2` or `2/3` when the retry policy caps the attempts.
pub fn attempt_cell(s: &ActivityState) -> String {
    match (s.attempt, s.maximum_attempts) {
        (Some(a), Some(m)) if m > 0 => format!("{a}/{m}"),
        (Some(a), _) => a.to_string(),
        (None, _) => "-".into(),
    }
}

/// `in 4s` while backing off, `due` when the time has come.
pub fn next_retry_cell(s: &ActivityState, now: Timestamp) -> String {
    match s.next_attempt_schedule_time {
        Some(t) if !s.is_finished() && s.phase.as_deref() == Some("BackingOff") => {
            let secs = secs_between(now, t);
            if secs > 0.0 { format!("in {}", human_duration(secs.ceil())) } else { "due".into() }
        }
        _ => "-".into(),
    }
}

fn age_cell(t: Option<Timestamp>, now: Timestamp) -> String {
    t.map(|t| human_duration(secs_between(t, now))).unwrap_or_else(|| "-".into())
}

/// Column titles of `list` and `watch`.
pub const COLUMNS: [&str; 9] =
    ["NAME", "PHASE", "ATTEMPT", "PROGRESS", "RATE", "ETA", "HEARTBEAT", "NEXT RETRY", "AGE"];
const PHASE_COLUMN: usize = 1;

/// The cells of one activity's row, in [`COLUMNS`] order.
pub fn row_cells(t: &Tracked, now: Timestamp, style: Style) -> Vec<String> {
    let s = &t.state;
    vec![
        s.name.clone(),
        phase_cell(s),
        attempt_cell(s),
        progress_cell(s.progress(), style),
        if s.is_finished() { "-".into() } else { rate_cell(t.rate()) },
        t.eta_secs(now).map(|e| human_duration(e.ceil())).unwrap_or_else(|| "-".into()),
        age_cell(s.last_heartbeat_time, now),
        next_retry_cell(s, now),
        age_cell(s.created, now),
    ]
}

fn colored_phase(text: &str, phase: Option<&str>, style: Style) -> String {
    let st = console::style(text).force_styling(style.color);
    match phase {
        Some("Succeeded") => st.green(),
        Some("Failed" | "TimedOut") => st.red(),
        Some("Canceled" | "Canceling") => st.magenta(),
        Some("BackingOff" | "Paused") => st.yellow(),
        Some("Running") => st.cyan(),
        _ => st,
    }
    .to_string()
}

/// The `list`/`watch` table: a header line (when `header`), then one aligned line per activity in
/// the order given. With `all_namespaces`, a NAMESPACE column comes first.
pub fn table(activities: &[&Tracked], now: Timestamp, style: Style, all_namespaces: bool, header: bool) -> Vec<String> {
    let ns_col = usize::from(all_namespaces);
    let mut rows: Vec<Vec<String>> = Vec::new();
    if header {
        let mut h: Vec<String> = COLUMNS.iter().map(|c| c.to_string()).collect();
        if all_namespaces {
            h.insert(0, "NAMESPACE".into());
        }
        rows.push(h);
    }
    for t in activities {
        let mut cells = row_cells(t, now, style);
        if all_namespaces {
            cells.insert(0, t.state.namespace.clone());
        }
        rows.push(cells);
    }
    let columns = COLUMNS.len() + ns_col;
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r.get(c).map_or(0, |s| s.chars().count())).max().unwrap_or(0))
        .collect();
    let first_data = usize::from(header);
    rows.iter()
        .enumerate()
        .map(|(i, cells)| {
            let mut line = String::new();
            for (c, cell) in cells.iter().enumerate() {
                let last = c + 1 == cells.len();
                let width = widths.get(c).copied().unwrap_or(0);
                let padded = if last { cell.clone() } else { format!("{cell:<width$}") };
                let shown = match i.checked_sub(first_data).and_then(|k| activities.get(k)) {
                    Some(t) if c == PHASE_COLUMN + ns_col => colored_phase(&padded, t.state.phase.as_deref(), style),
                    _ => padded,
                };
                line.push_str(&shown);
                if !last {
                    line.push_str("   ");
                }
            }
            line.trim_end().to_string()
        })
        .collect()
}

/// The last line of the `watch` view: how many activities are in which phase.
pub fn summary(activities: &[&Tracked]) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for t in activities {
        let phase = t.state.phase.clone().unwrap_or_else(|| "New".into());
        match counts.iter_mut().find(|(p, _)| *p == phase) {
            Some((_, n)) => *n += 1,
            None => counts.push((phase, 1)),
        }
    }
    counts.sort();
    let finished = activities.iter().filter(|t| t.state.is_finished()).count();
    let parts: Vec<String> = counts.iter().map(|(p, n)| format!("{n} {p}")).collect();
    format!("{finished}/{} finished: {}", activities.len(), parts.join(", "))
}

/// A time in UTC: `17:43:29` on the day of `now`, `11-26 17:43:29` on another day.
pub fn clock_time(t: Timestamp, now: Timestamp) -> String {
    if t.strftime("%Y-%m-%d").to_string() == now.strftime("%Y-%m-%d").to_string() {
        t.strftime("%H:%M:%S").to_string()
    } else {
        t.strftime("%m-%d %H:%M:%S").to_string()
    }
}

/// One attempt in `describe`'s timeline.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TimelineEntry {
    pub attempt: i64,
    pub pod: String,
    pub started: Option<Timestamp>,
    pub ended: Option<Timestamp>,
    pub duration_seconds: Option<f64>,
    /// `Succeeded`, `Failed`, `TimedOut`, `Canceled`, or the phase of a live attempt.
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureView>,
}

/// Every attempt still on record, oldest first: the finished ones from `status.attempts`, then the
/// current one when it is not among them.
pub fn timeline(s: &ActivityState, now: Timestamp) -> Vec<TimelineEntry> {
    let mut out: Vec<TimelineEntry> = s
        .attempts
        .iter()
        .map(|a| TimelineEntry {
            attempt: a.attempt,
            pod: a.pod_name.clone(),
            started: a.started_time,
            ended: a.closed_time,
            duration_seconds: a.started_time.zip(a.closed_time).map(|(b, e)| secs_between(b, e)),
            outcome: a.outcome.clone(),
            failure: a.failure.clone(),
        })
        .collect();
    out.sort_by_key(|e| e.attempt);
    if let Some(n) = s.attempt
        && !out.iter().any(|e| e.attempt == n)
    {
        let ended = if s.is_finished() { s.closed_time } else { None };
        let started = s.started_time;
        let failure = s.last_failure.clone().filter(|f| f.attempt == Some(n) && s.phase.as_deref() != Some("Running"));
        out.push(TimelineEntry {
            attempt: n,
            pod: s.pod_name.clone().unwrap_or_default(),
            started,
            ended,
            duration_seconds: started.map(|b| secs_between(b, ended.unwrap_or(now))),
            outcome: s.phase.clone().unwrap_or_else(|| "-".into()),
            failure,
        });
    }
    out
}

/// An event about the activity, as `describe` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    pub time: Option<Timestamp>,
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub message: String,
    pub count: i64,
}

/// What `describe -o json|yaml` prints.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Description {
    pub name: String,
    pub namespace: String,
    pub phase: Option<String>,
    pub attempt: Option<i64>,
    pub paused: bool,
    pub cancel_requested: bool,
    pub heartbeat_details: Option<Value>,
    pub last_heartbeat_time: Option<Timestamp>,
    pub next_attempt_schedule_time: Option<Timestamp>,
    pub last_failure: Option<FailureView>,
    pub result: Option<Value>,
    pub attempts: Vec<TimelineEntry>,
    pub events: Vec<EventView>,
}

pub fn description(s: &ActivityState, events: &[EventView], now: Timestamp) -> Description {
    Description {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        phase: s.phase.clone(),
        attempt: s.attempt,
        paused: s.paused,
        cancel_requested: s.cancel_requested,
        heartbeat_details: s.heartbeat_details.clone(),
        last_heartbeat_time: s.last_heartbeat_time,
        next_attempt_schedule_time: s.next_attempt_schedule_time,
        last_failure: s.last_failure.clone(),
        result: s.result.clone(),
        attempts: timeline(s, now),
        events: events.to_vec(),
    }
}

fn compact_json(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "?".into())
}

/// `describe`'s text: a summary, the attempt timeline, heartbeat details, next retry and events.
pub fn describe_text(s: &ActivityState, events: &[EventView], now: Timestamp, style: Style) -> String {
    let mut out = String::new();
    let when = |t: Option<Timestamp>| match t {
        Some(t) => format!("{} ({} ago)", clock_time(t, now), human_duration(secs_between(t, now))),
        None => "-".into(),
    };
    let field = |out: &mut String, k: &str, v: String| {
        let _ = writeln!(out, "{:<15}{v}", format!("{k}:"));
    };
    field(&mut out, "Name", s.name.clone());
    field(&mut out, "Namespace", s.namespace.clone());
    field(&mut out, "Phase", colored_phase(&phase_cell(s), s.phase.as_deref(), style));
    field(&mut out, "Attempt", attempt_cell(s));
    field(&mut out, "Paused", if s.paused { "yes".into() } else { "no".into() });
    if s.cancel_requested || s.deleting {
        field(&mut out, "Cancel", "requested".into());
    }
    field(&mut out, "Created", when(s.created));
    if let Some(c) = s.closed_time {
        field(&mut out, "Closed", when(Some(c)));
    }
    if let Some(p) = s.progress() {
        field(&mut out, "Progress", progress_cell(Some(p), style));
    }
    field(&mut out, "Heartbeat", when(s.last_heartbeat_time));
    field(&mut out, "Details", s.heartbeat_details.as_ref().map(compact_json).unwrap_or_else(|| "-".into()));
    let next = next_retry_cell(s, now);
    if next != "-" {
        let at = s.next_attempt_schedule_time.map(|t| format!(" (at {})", clock_time(t, now))).unwrap_or_default();
        field(&mut out, "Next retry", format!("{next}{at}"));
    } else {
        field(&mut out, "Next retry", "-".into());
    }
    if let Some(r) = &s.result {
        field(&mut out, "Result", compact_json(r));
    }
    if let Some(f) = &s.last_failure {
        let attempt = f.attempt.map(|a| format!("attempt {a}: ")).unwrap_or_default();
        field(&mut out, "Last failure", format!("{attempt}{}", f.summary()));
    }

    out.push_str("\nAttempts (times UTC):\n");
    let entries = timeline(s, now);
    if entries.is_empty() {
        out.push_str("  none yet\n");
    } else {
        let mut rows = vec![vec![
            "ATTEMPT".to_string(),
            "POD".into(),
            "STARTED".into(),
            "ENDED".into(),
            "DURATION".into(),
            "OUTCOME".into(),
            "FAILURE".into(),
        ]];
        for e in &entries {
            let duration = match (e.duration_seconds, e.ended) {
                (Some(d), Some(_)) => human_duration(d),
                (Some(d), None) => format!("{}+", human_duration(d)),
                (None, _) => "-".into(),
            };
            rows.push(vec![
                e.attempt.to_string(),
                if e.pod.is_empty() { "-".into() } else { e.pod.clone() },
                e.started.map(|t| clock_time(t, now)).unwrap_or_else(|| "-".into()),
                e.ended.map(|t| clock_time(t, now)).unwrap_or_else(|| "-".into()),
                duration,
                e.outcome.clone(),
                e.failure.as_ref().map(FailureView::summary).unwrap_or_default(),
            ]);
        }
        out.push_str(&indent_table(&rows));
    }

    out.push_str("\nEvents:\n");
    if events.is_empty() {
        out.push_str("  none\n");
    } else {
        let mut rows = vec![vec!["AGE".to_string(), "TYPE".into(), "REASON".into(), "MESSAGE".into()]];
        for e in events {
            let age = e.time.map(|t| human_duration(secs_between(t, now))).unwrap_or_else(|| "-".into());
            let age = if e.count > 1 { format!("{age} (x{})", e.count) } else { age };
            rows.push(vec![age, e.type_.clone(), e.reason.clone(), e.message.clone()]);
        }
        out.push_str(&indent_table(&rows));
    }
    out
}

/// Rows aligned in columns, each line indented by two spaces.
fn indent_table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r.get(c).map_or(0, |s| s.chars().count())).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::from("  ");
        for (c, cell) in r.iter().enumerate() {
            let width = widths.get(c).copied().unwrap_or(0);
            let _ = write!(line, "{cell:<width$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const NOW: &str = "2026-11-27T12:00:00Z";

    fn running() -> ActivityState {
        ActivityState::from_value(&json!({
            "metadata": {"name": "batch", "namespace": "ns1", "creationTimestamp": "2026-11-27T11:58:00Z"},
            "spec": {"retryPolicy": {"maximumAttempts": 3}},
            "status": {"phase": "Running", "attempt": 1, "podName": "batch-1",
                       "startedTime": "2026-11-27T11:59:00Z", "lastHeartbeatTime": "2026-11-27T11:59:50Z",
                       "heartbeatDetails": {"progress": "25/100"}}
        }))
    }

    fn backing_off() -> ActivityState {
        ActivityState::from_value(&json!({
            "metadata": {"name": "exec-shell", "namespace": "ns2", "creationTimestamp": "2026-11-27T11:59:30Z"},
            "status": {"phase": "BackingOff", "attempt": 1, "podName": "exec-shell-1",
                       "startedTime": "2026-11-27T11:59:31Z", "lastHeartbeatTime": "2026-11-27T11:59:35Z",
                       "heartbeatDetails": {"step": 4, "progress": {"done": 4, "total": 8}},
                       "nextAttemptScheduleTime": "2026-11-27T12:00:04.200Z",
                       "lastFailure": {"attempt": 1, "type": "ExitCode", "message": "command exited with code 3",
                                       "exitCode": 3, "time": "2026-11-27T11:59:36Z"},
                       "attempts": [{"attempt": 1, "podName": "exec-shell-1", "startedTime": "2026-11-27T11:59:31Z",
                                     "closedTime": "2026-11-27T11:59:36Z", "outcome": "Failed",
                                     "failure": {"attempt": 1, "type": "ExitCode", "message": "command exited with code 3"}}]}
        }))
    }

    fn succeeded() -> ActivityState {
        ActivityState::from_value(&json!({
            "metadata": {"name": "done", "namespace": "ns1", "creationTimestamp": "2026-11-27T09:00:00Z"},
            "status": {"phase": "Succeeded", "attempt": 1, "podName": "done-1", "closedTime": "2026-11-27T09:10:00Z",
                       "lastHeartbeatTime": "2026-11-27T09:09:59Z", "heartbeatDetails": {"progress": "8/8"},
                       "result": {"ok": true}}
        }))
    }

    fn paused_without_status() -> ActivityState {
        ActivityState::from_value(&json!({
            "metadata": {"name": "new", "namespace": "ns1", "creationTimestamp": "2026-11-27T11:59:59Z"},
            "spec": {"paused": true}
        }))
    }

    #[test]
    fn durations_like_kubectl() {
        let cases = [
            (0.0, "0s"),
            (59.9, "59s"),
            (119.0, "119s"),
            (120.0, "2m"),
            (200.0, "3m20s"),
            (600.0, "10m"),
            (10_799.0, "179m"),
            (10_800.0, "3h"),
            (11_100.0, "3h5m"),
            (30_000.0, "8h"),
            (180_000.0, "2d2h"),
            (1_000_000.0, "11d"),
            (-5.0, "0s"),
            (f64::NAN, "0s"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn table_snapshot_plain() {
        let now = ts(NOW);
        let mut run = Tracked::new(running());
        // A second heartbeat: 25 → 45 of 100 in 10 s: 2/s, 55 left → 27.5 s, less the 5 s since.
        let mut s = running();
        s.last_heartbeat_time = Some(ts("2026-11-27T11:59:55Z"));
        s.heartbeat_details = Some(json!({"progress": "35/100"}));
        run.update(s.clone());
        s.last_heartbeat_time = Some(ts("2026-11-27T12:00:00Z"));
        s.heartbeat_details = Some(json!({"progress": "45/100"}));
        run.update(s);
        let all = [Tracked::new(backing_off()), run, Tracked::new(succeeded()), Tracked::new(paused_without_status())];
        let refs: Vec<&Tracked> = all.iter().collect();
        let lines = table(&refs, now, Style::PLAIN, false, true);
        let expected = [
            "NAME         PHASE         ATTEMPT   PROGRESS                            RATE    ETA   HEARTBEAT   NEXT RETRY   AGE",
            "exec-shell   BackingOff    1         [##########----------] 4/8 50%      1.0/s   -     25s         in 5s        30s",
            "batch        Running       1/3       [#########-----------] 45/100 45%   2.0/s   28s   0s          -            2m",
            "done         Succeeded     1         [####################] 8/8 100%     -       -     170m        -            3h",
            "new          - (pausing)   -         -                                   -       -     -           -            1s",
        ];
        assert_eq!(lines, expected, "\n{}", lines.join("\n"));
        assert_eq!(summary(&refs), "1/4 finished: 1 BackingOff, 1 New, 1 Running, 1 Succeeded");
    }

    #[test]
    fn terminal_style_has_block_bars_and_colored_phase() {
        let now = ts(NOW);
        let t = Tracked::new(succeeded());
        let lines = table(&[&t], now, Style::TERMINAL, true, false);
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].starts_with("ns1   done   \u{1b}[32mSucceeded\u{1b}[0m   1   ████████████████████ 8/8 100%"),
            "{:?}",
            lines[0]
        );
        assert_eq!(bar(0.5, Style::TERMINAL), "██████████░░░░░░░░░░");
        assert_eq!(bar(2.0, Style::PLAIN), "[####################]");
        assert_eq!(bar(-1.0, Style::PLAIN), "[--------------------]");
    }

    #[test]
    fn describe_snapshot() {
        let now = ts(NOW);
        let events = [
            EventView {
                time: Some(ts("2026-11-27T11:59:30Z")),
                type_: "Normal".into(),
                reason: "AttemptStarted".into(),
                message: "attempt 1: created pod exec-shell-1".into(),
                count: 1,
            },
            EventView {
                time: Some(ts("2026-11-27T11:59:36Z")),
                type_: "Warning".into(),
                reason: "AttemptFailed".into(),
                message: "ExitCode: command exited with code 3".into(),
                count: 2,
            },
        ];
        let text = describe_text(&backing_off(), &events, now, Style::PLAIN);
        let expected = "\
Name:          exec-shell
Namespace:     ns2
Phase:         BackingOff
Attempt:       1
Paused:        no
Created:       11:59:30 (30s ago)
Progress:      [##########----------] 4/8 50%
Heartbeat:     11:59:35 (25s ago)
Details:       {\"progress\":{\"done\":4,\"total\":8},\"step\":4}
Next retry:    in 5s (at 12:00:04)
Last failure:  attempt 1: ExitCode: command exited with code 3

Attempts (times UTC):
  ATTEMPT  POD           STARTED   ENDED     DURATION  OUTCOME  FAILURE
  1        exec-shell-1  11:59:31  11:59:36  5s        Failed   ExitCode: command exited with code 3

Events:
  AGE       TYPE     REASON          MESSAGE
  30s       Normal   AttemptStarted  attempt 1: created pod exec-shell-1
  24s (x2)  Warning  AttemptFailed   ExitCode: command exited with code 3
";
        assert_eq!(text, expected, "\n{text}");

        // A running second attempt after a failed first: the live attempt closes the timeline.
        let mut s = backing_off();
        s.phase = Some("Running".into());
        s.attempt = Some(2);
        s.pod_name = Some("exec-shell-2".into());
        s.started_time = Some(ts("2026-11-27T11:59:40Z"));
        s.next_attempt_schedule_time = None;
        let tl = timeline(&s, now);
        assert_eq!(
            tl.iter().map(|e| (e.attempt, e.outcome.as_str())).collect::<Vec<_>>(),
            [(1, "Failed"), (2, "Running")]
        );
        assert_eq!((tl[1].ended, tl[1].duration_seconds, tl[1].failure.is_none()), (None, Some(20.0), true));
        assert!(
            describe_text(&s, &[], now, Style::PLAIN)
                .contains("  2        exec-shell-2  11:59:40  -         20s+      Running")
        );
    }
}
