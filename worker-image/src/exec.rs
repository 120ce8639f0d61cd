//! `activity-worker exec -- CMD ARGS…`: runs a command as the activity and speaks the heartbeat
//! protocol for it.
//!
//! The child gets `ACTIVITY_NAME`, `ACTIVITY_NAMESPACE`, `ACTIVITY_ATTEMPT`, `ACTIVITY_INPUT`
//! (JSON), `ACTIVITY_MAXIMUM_ATTEMPTS`, and when they apply `ACTIVITY_HEARTBEAT_DETAILS` (JSON of
//! the previous attempts' last details), `ACTIVITY_HEARTBEAT_TIMEOUT` (a duration),
//! `ACTIVITY_ATTEMPT_DEADLINE` and `ACTIVITY_SCHEDULE_TO_CLOSE_DEADLINE` (RFC 3339), and
//! `PYTHONUNBUFFERED=1`. Its stdout lines `::heartbeat <json>`, `::result <json>` and
//! `::fail <json>` are commands; every other line of its stdout goes to ours, its stderr is ours.
//! Exit 0 is success; another exit is a failure of type `ExitCode`, unless a `::fail` line said
//! otherwise. On cancellation the child's process group gets SIGTERM, then SIGKILL when the grace
//! period is nearly over.
//!
//! A malformed `::` line (bad JSON, an unknown `::word`) is logged and counted. When the
//! heartbeat timeout is about to lapse ([`malformed_lead`] before it, counted from the last valid
//! `::heartbeat` or the worker's start) and malformed lines were seen meanwhile, exec fails the
//! attempt itself (retryable, type [`MALFORMED_COMMAND`], naming the first such line) and stops the
//! child as on a cancel: the user reads why instead of a bare heartbeat timeout.

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use activity_crds::{ENV_ATTEMPT, ENV_NAME, ENV_NAMESPACE, WorkerFailure, format_duration, parse_duration};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::context::{ActivityContext, Report};
use crate::error::{Error, Result};

/// Environment variable with the activity's input (JSON; `null` when it has none).
pub const ENV_INPUT: &str = "ACTIVITY_INPUT";
/// Environment variable with the previous attempts' last heartbeat details (JSON; unset when none).
pub const ENV_HEARTBEAT_DETAILS: &str = "ACTIVITY_HEARTBEAT_DETAILS";
/// Always set for the child: Python then writes each `print` at once, even to a pipe, so its `::`
/// lines arrive when printed instead of when its 8 KiB buffer fills or it exits.
pub const ENV_PYTHONUNBUFFERED: &str = "PYTHONUNBUFFERED";
/// `spec.retryPolicy.maximumAttempts` (`0`: unlimited).
pub const ENV_MAXIMUM_ATTEMPTS: &str = "ACTIVITY_MAXIMUM_ATTEMPTS";
/// `spec.heartbeatTimeout` as a Go-style duration (`30s`); unset when disabled.
pub const ENV_HEARTBEAT_TIMEOUT: &str = "ACTIVITY_HEARTBEAT_TIMEOUT";
/// When this attempt times out (start-to-close), RFC 3339 UTC; unset when unlimited.
pub const ENV_ATTEMPT_DEADLINE: &str = "ACTIVITY_ATTEMPT_DEADLINE";
/// When the whole activity times out (schedule-to-close), RFC 3339 UTC; unset when unlimited.
pub const ENV_SCHEDULE_TO_CLOSE_DEADLINE: &str = "ACTIVITY_SCHEDULE_TO_CLOSE_DEADLINE";
/// How long to keep reading the child's stdout after it exited (a grandchild may hold it open).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// The failure type exec reports when malformed `::` lines are about to cost a heartbeat timeout.
pub const MALFORMED_COMMAND: &str = "MalformedCommand";
/// How long before the heartbeat timeout would lapse exec reports malformed lines as the failure:
/// a tenth of the timeout, at least 2 s (the operator counts the first gap from the container's
/// start time, which Kubernetes keeps to the second, and the report must land first), at most
/// half the timeout.
pub fn malformed_lead(heartbeat_timeout: Duration) -> Duration {
    (heartbeat_timeout / 10).max(Duration::from_secs(2)).min(heartbeat_timeout / 2)
}
/// At most this many characters of a malformed line are logged or quoted.
pub const QUOTED_LINE_CHARS: usize = 200;

/// The commands of the protocol.
pub const COMMANDS: [&str; 3] = ["heartbeat", "result", "fail"];

/// One line of the child's stdout.
#[derive(Debug, Clone, PartialEq)]
pub enum Line<'a> {
    /// `::heartbeat <json>`
    Heartbeat(Value),
    /// `::result <json>`
    Result(Value),
    /// `::fail <json {type, message, nonRetryable, nextRetryDelay}>`, and why a part of it was
    /// dropped (an invalid `nextRetryDelay`: the failure stands, the retry policy's backoff applies).
    Fail(WorkerFailure, Option<String>),
    /// A command whose argument is not valid, or an unknown `::word`: logged and counted (see
    /// the module's doc), otherwise ignored.
    Malformed { command: &'a str, error: String },
    /// Anything else: passed through to the pod log.
    Output(&'a str),
}

/// Parses one line of the child's stdout (without its line ending).
///
/// A line is a command when it starts with `::` and a word (an ASCII letter, then letters,
/// digits, `_`, `-`). A known command needs whitespace (or nothing) after its name; an unknown
/// word followed by whitespace or nothing (`::heartbeats {}`, `::warning x`) is malformed. Any
/// other line, such as `::1 - GET /` or `::ffff:10.0.0.1 connected` (IPv6 addresses), is output.
pub fn parse_line(line: &str) -> Line<'_> {
    let Some(rest) = line.strip_prefix("::") else { return Line::Output(line) };
    let word_len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-')).unwrap_or(rest.len());
    let (command, after) = rest.split_at(word_len);
    if !command.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Line::Output(line);
    }
    let spaced = after.is_empty() || after.starts_with(char::is_whitespace);
    if !COMMANDS.contains(&command) {
        if !spaced {
            return Line::Output(line);
        }
        return Line::Malformed { command, error: "unknown command (expected ::heartbeat, ::result or ::fail)".into() };
    }
    if !spaced {
        return Line::Malformed {
            command,
            error: format!("expected a space between ::{command} and its JSON argument"),
        };
    }
    let arg = after.trim();
    if arg.is_empty() {
        return Line::Malformed { command, error: "missing JSON argument".into() };
    }
    let value: Value = match serde_json::from_str(arg) {
        Ok(v) => v,
        Err(e) => return Line::Malformed { command, error: format!("invalid JSON: {e}") },
    };
    match command {
        "heartbeat" => Line::Heartbeat(value),
        "result" => Line::Result(value),
        _ => match parse_failure(value) {
            Ok((f, dropped)) => Line::Fail(f, dropped),
            Err(error) => Line::Malformed { command, error },
        },
    }
}

/// A `::fail` argument. An invalid `nextRetryDelay` is dropped (said in the second value) rather
/// than the whole failure: its type and message are what the retry policy and the user need, and
/// the API server would refuse an outcome with an invalid duration.
fn parse_failure(value: Value) -> std::result::Result<(WorkerFailure, Option<String>), String> {
    let mut failure: WorkerFailure = serde_json::from_value(value).map_err(|e| {
        format!(
            "expected {{\"type\": string, \"message\": string, \"nonRetryable\": bool, \"nextRetryDelay\": \
             duration}}: {e}"
        )
    })?;
    if failure.type_.is_empty() {
        return Err("\"type\" must not be empty".into());
    }
    let mut dropped = None;
    if let Some(delay) = &failure.next_retry_delay
        && let Err(e) = parse_duration(delay)
    {
        dropped = Some(format!("ignoring its nextRetryDelay {delay:?} (the retry policy's backoff applies): {e}"));
        failure.next_retry_delay = None;
    }
    Ok((failure, dropped))
}

/// `line` cut to [`QUOTED_LINE_CHARS`] characters (with `…` when cut).
pub fn quote_line(line: &str) -> String {
    let mut chars = line.chars();
    let mut shown: String = chars.by_ref().take(QUOTED_LINE_CHARS).collect();
    if chars.next().is_some() {
        shown.push('…');
    }
    shown
}

/// The malformed `::` lines seen since the last valid `::heartbeat` (or the start).
#[derive(Debug, Clone)]
pub struct MalformedLines {
    /// Since when: the start, or the last valid `::heartbeat`.
    pub since: Instant,
    pub count: u64,
    /// The first of them (quoted) and what is wrong with it.
    pub first: Option<(String, String)>,
}

impl MalformedLines {
    pub fn new(now: Instant) -> Self {
        Self { since: now, count: 0, first: None }
    }

    fn malformed(&mut self, line: &str, error: &str) {
        self.count = self.count.saturating_add(1);
        self.first.get_or_insert_with(|| (quote_line(line), error.to_string()));
    }

    fn heartbeat(&mut self, now: Instant) {
        *self = Self::new(now);
    }
}

/// The failure exec reports when `count` malformed lines, the first `first` (quoted) with
/// `error`, and no valid `::heartbeat` for `silent` are about to cost the heartbeat timeout
/// `timeout`.
pub fn malformed_failure(count: u64, first: &str, error: &str, silent: Duration, timeout: Duration) -> WorkerFailure {
    let lines = if count == 1 { "1 malformed command line" } else { "malformed command lines" };
    let counted = if count == 1 { lines.to_string() } else { format!("{count} {lines}") };
    WorkerFailure {
        type_: MALFORMED_COMMAND.into(),
        message: format!(
            "the command printed {counted} and no valid ::heartbeat for {}: the heartbeat timeout ({}) would lapse. \
             The first: {first:?} ({error}). A heartbeat is one line: ::heartbeat <JSON>",
            format_duration(Duration::from_millis(u64::try_from(silent.as_millis()).unwrap_or(u64::MAX))),
            format_duration(timeout),
        ),
        non_retryable: false,
        next_retry_delay: None,
    }
}

/// Completes with the [`MALFORMED_COMMAND`] failure once the heartbeat timeout less
/// [`malformed_lead`] has passed since the last valid `::heartbeat` (or the start) with malformed
/// lines seen meanwhile. Never completes without a heartbeat timeout.
async fn malformed_watchdog(
    lines: &Mutex<MalformedLines>,
    changed: &Notify,
    timeout: Option<Duration>,
) -> WorkerFailure {
    let Some(timeout) = timeout.filter(|t| !t.is_zero()) else { return std::future::pending().await };
    let after = timeout.saturating_sub(malformed_lead(timeout));
    loop {
        let (due, failure) = {
            let l = lines.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            let failure = l
                .first
                .as_ref()
                .map(|(line, error)| malformed_failure(l.count, line, error, now.duration_since(l.since), timeout));
            (l.since.checked_add(after), failure)
        };
        let Some(due) = due else { return std::future::pending().await };
        if Instant::now() >= due {
            if let Some(failure) = failure {
                return failure;
            }
            // Past due without malformed lines: the operator's heartbeat timeout decides, unless
            // a malformed line comes first.
            changed.notified().await;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = changed.notified() => {}
        }
    }
}

/// What the child said through its commands.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Said {
    pub result: Option<Value>,
    pub failure: Option<WorkerFailure>,
    /// Why the last `::result` was refused (too large).
    pub result_error: Option<String>,
}

/// How the child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildExit {
    Code(i32),
    Signal(i32),
}

impl From<ExitStatus> for ChildExit {
    fn from(s: ExitStatus) -> Self {
        match (s.code(), s.signal()) {
            (Some(c), _) => ChildExit::Code(c),
            (None, Some(sig)) => ChildExit::Signal(sig),
            (None, None) => ChildExit::Code(255),
        }
    }
}

impl ChildExit {
    /// The shell-style exit code: the code, or 128 + the signal.
    pub fn code(self) -> i32 {
        match self {
            ChildExit::Code(c) => c,
            ChildExit::Signal(s) => 128 + s,
        }
    }
}

/// The attempt's report from how the child ended: canceled wins; exit 0 is success with the
/// `::result` (if any; a refused, too large result fails the attempt, not retryable); anything
/// else is the `::fail` failure, or else `ExitCode`.
pub fn decide(exit: ChildExit, canceled: bool, said: &Said) -> Report {
    if canceled {
        return Report::Canceled;
    }
    match exit {
        ChildExit::Code(0) => match &said.result_error {
            Some(error) => Report::Failed(WorkerFailure {
                type_: "ResultTooLarge".into(),
                message: error.clone(),
                non_retryable: true,
                next_retry_delay: None,
            }),
            None => Report::Completed(said.result.clone()),
        },
        other => Report::Failed(said.failure.clone().unwrap_or_else(|| WorkerFailure {
            type_: "ExitCode".into(),
            message: match other {
                ChildExit::Signal(s) => {
                    let name = Signal::try_from(s).map(|s| s.as_str()).unwrap_or("unknown signal");
                    format!("command was killed by signal {s} ({name}), exit code {}", other.code())
                }
                ChildExit::Code(c) => format!("command exited with code {c}"),
            },
            non_retryable: false,
            next_retry_delay: None,
        })),
    }
}

/// Where the kernel counts the OOM kills of this container's memory cgroup: cgroup v2, then v1
/// (as a container runtime mounts them; on a host the counters are the host's).
const OOM_KILL_COUNTERS: [&str; 2] = ["/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"];

/// The `oom_kill` count of a `memory.events` or `memory.oom_control` file.
pub fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok())
}

/// This container's OOM kills so far, where the kernel tells.
pub fn oom_kills() -> Option<u64> {
    OOM_KILL_COUNTERS.iter().find_map(|path| std::fs::read_to_string(path).ok().as_deref().and_then(parse_oom_kills))
}

/// A child killed by SIGKILL while the container's OOM kill count rose was killed for memory: the
/// attempt fails as `OOMKilled` (as the operator reports a worker container the runtime OOM-killed),
/// not as exit code 137. A failure the child announced with `::fail` stands.
pub fn with_oom(report: Report, exit: ChildExit, said: &Said, before: Option<u64>, after: Option<u64>) -> Report {
    let oom = matches!((before, after), (Some(b), Some(a)) if a > b);
    match report {
        Report::Failed(_) if oom && exit == ChildExit::Signal(9) && said.failure.is_none() => {
            Report::Failed(WorkerFailure {
                type_: "OOMKilled".into(),
                message: "command was killed by the kernel's OOM killer (the container is over its memory limit), exit code 137".into(),
                non_retryable: false,
                next_retry_delay: None,
            })
        }
        other => other,
    }
}

/// When to SIGKILL after SIGTERM: the remaining grace period less a margin (a tenth of the
/// grace period, between 500 ms and 3 s), so the worker can still report before its pod goes.
pub fn kill_after(remaining: Duration, grace: Duration) -> Duration {
    let margin = (grace / 10).clamp(Duration::from_millis(500), Duration::from_secs(3));
    remaining.saturating_sub(margin)
}

/// What `exec` ends with: the report, whether exec already delivered it (the
/// [`MALFORMED_COMMAND`] failure is reported before the child is stopped), and the process exit
/// code.
#[derive(Debug)]
pub struct ExecEnd {
    pub report: Report,
    pub exit_code: i32,
    /// The report was already written (or its writing failed and `exit_code` says how).
    pub reported: bool,
}

/// The child's environment besides the pod's: `(name, Some(value))` to set, `(name, None)` to
/// unset.
pub fn child_env(ctx: &ActivityContext) -> Vec<(&'static str, Option<String>)> {
    let time = |t: Option<k8s_openapi::jiff::Timestamp>| t.map(crate::wire::format_time);
    vec![
        (ENV_NAME, Some(ctx.name().to_string())),
        (ENV_NAMESPACE, Some(ctx.namespace().to_string())),
        (ENV_ATTEMPT, Some(ctx.attempt().to_string())),
        (ENV_INPUT, Some(ctx.raw_input().unwrap_or(&Value::Null).to_string())),
        (ENV_HEARTBEAT_DETAILS, ctx.raw_heartbeat_details().map(Value::to_string)),
        (ENV_MAXIMUM_ATTEMPTS, Some(ctx.maximum_attempts().to_string())),
        (ENV_HEARTBEAT_TIMEOUT, ctx.heartbeat_timeout().map(format_duration)),
        (ENV_ATTEMPT_DEADLINE, time(ctx.attempt_deadline())),
        (ENV_SCHEDULE_TO_CLOSE_DEADLINE, time(ctx.schedule_to_close_deadline())),
        (ENV_PYTHONUNBUFFERED, Some("1".into())),
    ]
}

/// Why the wait for the child ended.
enum Stop {
    Exited(ChildExit),
    Canceled,
    Malformed(WorkerFailure),
}

/// Runs `command` under `ctx`: returns how the attempt ended (not yet reported, unless
/// [`ExecEnd::reported`]).
pub async fn run(ctx: &ActivityContext, command: &[String]) -> Result<ExecEnd> {
    let (program, args) = command.split_first().ok_or_else(|| Error::Io {
        context: "exec".into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no command given"),
    })?;
    if ctx.is_cancelled() {
        let reason = ctx.cancel_reason().map(|r| r.to_string()).unwrap_or_default();
        info!(cause = ?ctx.cause(), "not starting {program:?}: already canceled ({reason})");
        return Ok(ExecEnd { report: Report::Canceled, exit_code: crate::EXIT_CANCELED, reported: false });
    }
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .kill_on_drop(true);
    for (name, value) in child_env(ctx) {
        match value {
            Some(v) => cmd.env(name, v),
            None => cmd.env_remove(name),
        };
    }
    // If the worker itself is SIGKILLed, its command must not live on outside the pod's process
    // group (a container runtime would kill it with the container; a host process node would
    // not). Tied to the spawning thread: `exec` runs on the runtime's main thread.
    // SAFETY: prctl(2) is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from));
    }
    let oom_before = oom_kills();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            error!("cannot start {program:?}: {e}");
            let failure = WorkerFailure {
                type_: "ExecError".into(),
                message: format!("cannot start {program:?}: {e}"),
                non_retryable: true,
                next_retry_delay: None,
            };
            return Ok(ExecEnd { report: Report::Failed(failure), exit_code: 127, reported: false });
        }
    };
    let pgid = child.id().and_then(|p| i32::try_from(p).ok());
    info!(pid = pgid.unwrap_or_default(), "started {program:?}");
    let stdout = child.stdout.take();
    // The operator counts the first heartbeat gap from the container's start: so does this.
    let lines = Arc::new(Mutex::new(MalformedLines::new(Instant::from_std(ctx.began()))));
    let changed = Arc::new(Notify::new());
    let reader = tokio::spawn(read_commands(ctx.clone(), stdout, lines.clone(), changed.clone()));

    let io = |source| Error::Io { context: "waiting for the command".into(), source };
    let stop = tokio::select! {
        status = child.wait() => Stop::Exited(status.map_err(io)?.into()),
        _ = ctx.cancelled() => Stop::Canceled,
        failure = malformed_watchdog(&lines, &changed, ctx.heartbeat_timeout()) => Stop::Malformed(failure),
    };
    let (exit, canceled, reported) = match stop {
        Stop::Exited(exit) => (exit, false, None),
        Stop::Canceled => {
            let reason = ctx.cancel_reason().map(|r| r.to_string()).unwrap_or_default();
            info!(cause = ?ctx.cause(), "canceled ({reason}): stopping {program:?}");
            (terminate(ctx, &mut child, pgid).await?, true, None)
        }
        Stop::Malformed(failure) => {
            error!("{}", failure.message);
            // Reported before the child is stopped: the operator's heartbeat timeout is near.
            let code = crate::finish(ctx, Report::Failed(failure.clone()), crate::EXIT_FAILURE).await;
            info!("stopping {program:?} after its malformed command lines");
            (terminate(ctx, &mut child, pgid).await?, false, Some((failure, code)))
        }
    };
    // The commands the child printed before it exited still count: read its stdout to the end.
    let said = match tokio::time::timeout(DRAIN_TIMEOUT, reader).await {
        Ok(Ok(said)) => said,
        Ok(Err(e)) => {
            error!("reading the command's output: {e}");
            Said::default()
        }
        Err(_) => {
            warn!("the command's stdout is still open {DRAIN_TIMEOUT:?} after it exited; ignoring the rest");
            Said::default()
        }
    };
    // Like a container's end: nothing of the child's process group outlives it.
    if let Some(pgid) = pgid {
        signal_group(pgid, Signal::SIGKILL);
    }
    info!(exit_code = exit.code(), canceled, "{program:?} ended");
    if let Some((failure, exit_code)) = reported {
        return Ok(ExecEnd { report: Report::Failed(failure), exit_code, reported: true });
    }
    if let (ChildExit::Code(0), Some(f)) = (exit, &said.failure) {
        warn!(r#type = %f.type_, "the command printed ::fail but exited 0: exit 0 means success, the ::fail is ignored");
    }
    let report = with_oom(decide(exit, canceled, &said), exit, &said, oom_before, oom_kills());
    let exit_code = match &report {
        Report::Completed(_) => 0,
        Report::Failed(_) => match exit.code() {
            0 => 1,
            c => c,
        },
        Report::Canceled => crate::EXIT_CANCELED,
    };
    Ok(ExecEnd { report, exit_code, reported: false })
}

/// Stops the child: SIGTERM to its group, then SIGKILL when the grace period (less a margin) has
/// passed.
async fn terminate(ctx: &ActivityContext, child: &mut Child, pgid: Option<i32>) -> Result<ChildExit> {
    let io = |source| Error::Io { context: "waiting for the command".into(), source };
    let grace = ctx.cancellation_grace_period();
    let kill_in = kill_after(ctx.grace_remaining(), grace);
    info!("sending SIGTERM to the command's process group; SIGKILL in {kill_in:?} if it has not stopped");
    if let Some(pgid) = pgid {
        signal_group(pgid, Signal::SIGTERM);
    }
    let status = match tokio::time::timeout(kill_in, child.wait()).await {
        Ok(status) => status.map_err(io)?,
        Err(_) => {
            warn!("the command did not stop within {kill_in:?} of SIGTERM: sending SIGKILL");
            if let Some(pgid) = pgid {
                signal_group(pgid, Signal::SIGKILL);
            }
            child.wait().await.map_err(io)?
        }
    };
    Ok(status.into())
}

/// Reads the child's stdout line by line: commands go to the context, the rest to our stdout;
/// malformed command lines are logged and counted in `lines` (`changed` is told).
async fn read_commands(
    ctx: ActivityContext,
    stdout: Option<tokio::process::ChildStdout>,
    lines: Arc<Mutex<MalformedLines>>,
    changed: Arc<Notify>,
) -> Said {
    let mut said = Said::default();
    let Some(stdout) = stdout else { return said };
    let mut reader = BufReader::new(stdout);
    let mut out = tokio::io::stdout();
    let mut buf = Vec::new();
    let mut malformed_total = 0u64;
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                warn!("reading the command's stdout: {e}");
                break;
            }
        }
        let text = String::from_utf8_lossy(&buf);
        let line = text.trim_end_matches(['\n', '\r']);
        let mut malformed = |command: &str, error: &str| {
            malformed_total = malformed_total.saturating_add(1);
            warn!(
                "ignoring malformed ::{command} line (#{malformed_total} of this attempt; {error}): {}",
                quote_line(line)
            );
            lines.lock().unwrap_or_else(PoisonError::into_inner).malformed(line, error);
            changed.notify_one();
        };
        match parse_line(line) {
            Line::Output(_) => {
                // Pass the line through as it came (invalid UTF-8 included).
                let mut bytes = buf.clone();
                if !bytes.ends_with(b"\n") {
                    bytes.push(b'\n');
                }
                if out.write_all(&bytes).await.is_err() || out.flush().await.is_err() {
                    // Our stdout is gone; keep consuming the child's output for its commands.
                }
            }
            Line::Heartbeat(details) => match ctx.heartbeat(&details) {
                Ok(()) => {
                    lines.lock().unwrap_or_else(PoisonError::into_inner).heartbeat(Instant::now());
                    changed.notify_one();
                }
                Err(e) => malformed("heartbeat", &e.to_string()),
            },
            Line::Result(value) => match crate::wire::to_payload("the ::result", &value) {
                Ok(value) => {
                    said.result = Some(value);
                    said.result_error = None;
                }
                Err(e) => {
                    error!("refusing ::result: {e}");
                    said.result = None;
                    said.result_error = Some(e.to_string());
                }
            },
            Line::Fail(failure, dropped) => {
                if let Some(dropped) = dropped {
                    warn!(r#type = %failure.type_, "::fail: {dropped}");
                }
                said.failure = Some(failure);
            }
            Line::Malformed { command, error } => malformed(command, &error),
        }
    }
    said
}

fn signal_group(pgid: i32, signal: Signal) {
    if pgid <= 1 {
        return;
    }
    match killpg(Pid::from_raw(pgid), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => warn!(pgid, ?signal, "cannot signal the command's process group: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn commands_are_parsed() {
        assert_eq!(parse_line(r#"::heartbeat {"offset": 3}"#), Line::Heartbeat(json!({"offset": 3})));
        assert_eq!(parse_line("::heartbeat 7"), Line::Heartbeat(json!(7)));
        assert_eq!(parse_line("::heartbeat\t\"x\"  "), Line::Heartbeat(json!("x")));
        assert_eq!(parse_line(r#"::result {"processed": 10}"#), Line::Result(json!({"processed": 10})));
        assert_eq!(parse_line("::result null"), Line::Result(json!(null)));
        assert_eq!(
            parse_line(r#"::fail {"type": "Bad", "message": "no", "nonRetryable": true}"#),
            Line::Fail(
                WorkerFailure {
                    type_: "Bad".into(),
                    message: "no".into(),
                    non_retryable: true,
                    next_retry_delay: None
                },
                None
            )
        );
        // message and nonRetryable are optional.
        assert_eq!(
            parse_line(r#"::fail {"type": "Bad"}"#),
            Line::Fail(
                WorkerFailure {
                    type_: "Bad".into(),
                    message: String::new(),
                    non_retryable: false,
                    next_retry_delay: None
                },
                None
            )
        );
        // nextRetryDelay, a Go-style duration, is passed on as written.
        assert_eq!(
            parse_line(r#"::fail {"type": "RateLimited", "message": "429", "nextRetryDelay": "7s"}"#),
            Line::Fail(
                WorkerFailure {
                    type_: "RateLimited".into(),
                    message: "429".into(),
                    non_retryable: false,
                    next_retry_delay: Some("7s".into())
                },
                None
            )
        );
    }

    #[test]
    fn an_invalid_next_retry_delay_is_dropped_and_named() {
        for bad in ["7 seconds", "", "-1s", "1d"] {
            let line = format!(r#"::fail {{"type": "RateLimited", "message": "429", "nextRetryDelay": "{bad}"}}"#);
            match parse_line(&line) {
                Line::Fail(f, Some(why)) => {
                    assert_eq!(
                        (f.type_.as_str(), f.message.as_str(), f.next_retry_delay),
                        ("RateLimited", "429", None)
                    );
                    assert!(why.contains(&format!("{bad:?}")) && why.contains("backoff"), "{why}");
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        // Not a string: the whole line is malformed.
        assert!(matches!(
            parse_line(r#"::fail {"type": "X", "nextRetryDelay": 7}"#),
            Line::Malformed { command: "fail", error } if error.contains("nextRetryDelay")
        ));
    }

    #[test]
    fn other_lines_pass_through() {
        for line in [
            "",
            "hello",
            "  ::heartbeat {}",
            ":heartbeat {}",
            "::",
            ":: heartbeat {}",
            "::1 - - [21/Nov/2026] GET /",
            "::ffff:10.0.0.1 connected",
            "::group::Build",
            "processed item 3",
        ] {
            assert_eq!(parse_line(line), Line::Output(line), "{line:?}");
        }
    }

    #[test]
    fn malformed_commands_are_reported_not_fatal() {
        assert!(matches!(parse_line("::heartbeat"), Line::Malformed { command: "heartbeat", .. }));
        assert!(matches!(parse_line("::heartbeat   "), Line::Malformed { command: "heartbeat", .. }));
        assert!(
            matches!(parse_line("::heartbeat {oops"), Line::Malformed { command: "heartbeat", error } if error.contains("invalid JSON"))
        );
        assert!(matches!(parse_line("::heartbeat {} trailing"), Line::Malformed { .. }));
        assert!(matches!(parse_line("::result nope"), Line::Malformed { command: "result", .. }));
        assert!(matches!(parse_line(r#"::fail {"message": "no type"}"#), Line::Malformed { command: "fail", .. }));
        assert!(matches!(parse_line(r#"::fail {"type": ""}"#), Line::Malformed { command: "fail", .. }));
        assert!(matches!(parse_line(r#"::fail "just a string""#), Line::Malformed { command: "fail", .. }));
        // A known command glued to its argument, and unknown words, are malformed too.
        assert!(
            matches!(parse_line("::heartbeat{}"), Line::Malformed { command: "heartbeat", error } if error.contains("space"))
        );
        for (line, word) in [("::heartbeats {}", "heartbeats"), ("::unknown {}", "unknown"), ("::warning x", "warning")]
        {
            assert!(
                matches!(parse_line(line), Line::Malformed { command, error } if command == word && error.contains("unknown command")),
                "{line:?}"
            );
        }
        assert!(matches!(parse_line("::oops"), Line::Malformed { command: "oops", .. }));
    }

    #[test]
    fn the_malformed_report_leads_the_heartbeat_timeout() {
        let s = Duration::from_secs;
        assert_eq!(malformed_lead(s(60)), s(6));
        assert_eq!(malformed_lead(s(10)), s(2));
        assert_eq!(malformed_lead(s(3)), Duration::from_millis(1500));
        assert_eq!(malformed_lead(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn malformed_lines_count_until_a_valid_heartbeat() {
        let t0 = Instant::now();
        let mut l = MalformedLines::new(t0);
        l.malformed("::heartbeat {oops", "invalid JSON: EOF");
        l.malformed("::beat 1", "unknown command");
        assert_eq!(l.count, 2);
        assert_eq!(l.first, Some(("::heartbeat {oops".into(), "invalid JSON: EOF".into())));
        let t1 = t0 + Duration::from_secs(1);
        l.heartbeat(t1);
        assert_eq!((l.count, l.first.is_none(), l.since), (0, true, t1));
        // A long line is quoted cut.
        l.malformed(&format!("::heartbeat {}", "x".repeat(500)), "e");
        let (quoted, _) = l.first.clone().unwrap();
        assert_eq!(quoted.chars().count(), QUOTED_LINE_CHARS + 1);
        assert!(quoted.starts_with("::heartbeat xxx") && quoted.ends_with('…'), "{quoted}");
        assert_eq!(quote_line("short"), "short");
    }

    #[test]
    fn the_malformed_failure_says_why_the_heartbeat_timeout_would_lapse() {
        let f = malformed_failure(
            3,
            "::heartbeat {oops",
            "invalid JSON: EOF",
            Duration::from_millis(9010),
            Duration::from_secs(10),
        );
        assert_eq!(f.type_, MALFORMED_COMMAND);
        assert!(!f.non_retryable);
        assert!(f.next_retry_delay.is_none());
        for part in [
            "3 malformed command lines",
            "no valid ::heartbeat for 9.01s",
            "heartbeat timeout (10s) would lapse",
            r#""::heartbeat {oops""#,
            "invalid JSON: EOF",
        ] {
            assert!(f.message.contains(part), "{part:?} not in {:?}", f.message);
        }
        let one = malformed_failure(1, "::x 1", "unknown command", Duration::from_secs(1), Duration::from_secs(2));
        assert!(one.message.contains("printed 1 malformed command line and"), "{}", one.message);
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_fires_only_with_malformed_lines_near_the_heartbeat_timeout() {
        let t = Duration::from_secs(10);
        let lines = Mutex::new(MalformedLines::new(Instant::now()));
        let changed = Notify::new();
        // No heartbeat timeout: never.
        let never = tokio::time::timeout(Duration::from_secs(3600), malformed_watchdog(&lines, &changed, None)).await;
        assert!(never.is_err());
        // No malformed line: not at 8/10 of the timeout, nor long after.
        let quiet = tokio::time::timeout(Duration::from_secs(60), malformed_watchdog(&lines, &changed, Some(t))).await;
        assert!(quiet.is_err());
        // A malformed line, with the last heartbeat long ago: at once.
        lines.lock().unwrap().malformed("::heartbeat {oops", "invalid JSON");
        changed.notify_one();
        let f = tokio::time::timeout(Duration::from_millis(1), malformed_watchdog(&lines, &changed, Some(t))).await;
        assert!(f.expect("fires").message.contains("{oops"));
        // After a valid heartbeat: not before 8 s (10 s less the 2 s lead), then yes.
        let start = Instant::now();
        lines.lock().unwrap().heartbeat(Instant::now());
        lines.lock().unwrap().malformed("::nope", "unknown command");
        let f = malformed_watchdog(&lines, &changed, Some(t)).await;
        assert!(start.elapsed() >= Duration::from_secs(8), "{:?}", start.elapsed());
        assert!(f.message.contains("::nope"), "{}", f.message);
    }

    #[test]
    fn exit_decides_the_report() {
        let none = Said::default();
        let with_result = Said { result: Some(json!({"n": 1})), ..Said::default() };
        let failing = Said {
            failure: Some(WorkerFailure {
                type_: "Mine".into(),
                message: "m".into(),
                non_retryable: true,
                next_retry_delay: None,
            }),
            ..Said::default()
        };
        let too_large = Said { result_error: Some("the ::result is 20000 bytes".into()), ..Said::default() };
        match decide(ChildExit::Code(0), false, &too_large) {
            Report::Failed(f) => assert!(f.type_ == "ResultTooLarge" && f.non_retryable && f.message.contains("20000")),
            other => panic!("{other:?}"),
        }
        assert_eq!(decide(ChildExit::Code(0), false, &none), Report::Completed(None));
        assert_eq!(decide(ChildExit::Code(0), false, &with_result), Report::Completed(Some(json!({"n": 1}))));
        // Exit 0 is success even after ::fail (the contract); the worker logs a warning.
        assert_eq!(decide(ChildExit::Code(0), false, &failing), Report::Completed(None));
        match decide(ChildExit::Code(3), false, &none) {
            Report::Failed(f) => {
                assert_eq!(f.type_, "ExitCode");
                assert!(f.message.contains("code 3"), "{}", f.message);
                assert!(!f.non_retryable);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(decide(ChildExit::Code(3), false, &failing), Report::Failed(failing.failure.clone().unwrap()));
        match decide(ChildExit::Signal(9), false, &none) {
            Report::Failed(f) => assert!(f.message.contains("SIGKILL") && f.message.contains("137"), "{}", f.message),
            other => panic!("{other:?}"),
        }
        assert_eq!(decide(ChildExit::Code(0), true, &with_result), Report::Canceled);
        assert_eq!(decide(ChildExit::Signal(15), true, &none), Report::Canceled);
        assert_eq!(ChildExit::Signal(15).code(), 143);
    }

    #[test]
    fn a_sigkill_while_the_oom_count_rose_is_an_oom_kill() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        let v2 = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n";
        assert_eq!((parse_oom_kills(v1), parse_oom_kills(v2), parse_oom_kills("oom 1\n")), (Some(3), Some(2), None));
        let none = Said::default();
        let killed = decide(ChildExit::Signal(9), false, &none);
        match with_oom(killed.clone(), ChildExit::Signal(9), &none, Some(3), Some(4)) {
            Report::Failed(f) => {
                assert!(f.type_ == "OOMKilled" && !f.non_retryable && f.message.contains("137"), "{f:?}")
            }
            other => panic!("{other:?}"),
        }
        // No OOM kill counted, no counter, or another signal: the exit code stands.
        assert_eq!(with_oom(killed.clone(), ChildExit::Signal(9), &none, Some(3), Some(3)), killed);
        assert_eq!(with_oom(killed.clone(), ChildExit::Signal(9), &none, None, None), killed);
        let term = decide(ChildExit::Signal(15), false, &none);
        assert_eq!(with_oom(term.clone(), ChildExit::Signal(15), &none, Some(0), Some(1)), term);
        // What the child said before it died stands, and a cancel stays a cancel.
        let failing = Said {
            failure: Some(WorkerFailure {
                type_: "Mine".into(),
                message: "m".into(),
                non_retryable: true,
                next_retry_delay: None,
            }),
            ..Said::default()
        };
        let said = decide(ChildExit::Signal(9), false, &failing);
        assert_eq!(with_oom(said.clone(), ChildExit::Signal(9), &failing, Some(0), Some(1)), said);
        assert_eq!(with_oom(Report::Canceled, ChildExit::Signal(9), &none, Some(0), Some(1)), Report::Canceled);
    }

    #[test]
    fn sigkill_leaves_a_margin_under_the_grace_period() {
        let s = Duration::from_secs;
        assert_eq!(kill_after(s(30), s(30)), s(27));
        assert_eq!(kill_after(s(10), s(30)), s(7));
        assert_eq!(kill_after(s(5), s(5)), Duration::from_millis(4500));
        assert_eq!(kill_after(s(100), s(100)), s(97));
        assert_eq!(kill_after(s(0), s(30)), s(0));
    }
}
