//! `activity-worker exec -- CMD ARGS…`: runs a command as the activity and speaks the heartbeat
//! protocol for it.
//!
//! The child gets `ACTIVITY_NAME`, `ACTIVITY_NAMESPACE`, `ACTIVITY_ATTEMPT`, `ACTIVITY_INPUT`
//! (JSON) and, when a previous attempt heartbeated, `ACTIVITY_HEARTBEAT_DETAILS` (JSON). Its
//! stdout lines `::heartbeat <json>`, `::result <json>` and `::fail <json>` are commands; every
//! other line of its stdout goes to ours, its stderr is ours. Exit 0 is success; another exit is a
//! failure of type `ExitCode`, unless a `::fail` line said otherwise. On cancellation the child's
//! process group gets SIGTERM, then SIGKILL when the grace period is nearly over.

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use activity_crds::{ENV_ATTEMPT, ENV_NAME, ENV_NAMESPACE, WorkerFailure};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tracing::{error, info, warn};

use crate::context::{ActivityContext, Report};
use crate::error::{Error, Result};

/// Environment variable with the activity's input (JSON; `null` when it has none).
pub const ENV_INPUT: &str = "ACTIVITY_INPUT";
/// Environment variable with the previous attempts' last heartbeat details (JSON; unset when none).
pub const ENV_HEARTBEAT_DETAILS: &str = "ACTIVITY_HEARTBEAT_DETAILS";
/// How long to keep reading the child's stdout after it exited (a grandchild may hold it open).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// One line of the child's stdout.
#[derive(Debug, Clone, PartialEq)]
pub enum Line<'a> {
    /// `::heartbeat <json>`
    Heartbeat(Value),
    /// `::result <json>`
    Result(Value),
    /// `::fail <json {type, message, nonRetryable}>`
    Fail(WorkerFailure),
    /// A command whose argument is not valid: reported in the log, otherwise ignored.
    Malformed { command: &'static str, error: String },
    /// Anything else: passed through to the pod log.
    Output(&'a str),
}

/// Parses one line of the child's stdout (without its line ending).
pub fn parse_line(line: &str) -> Line<'_> {
    const COMMANDS: [&str; 3] = ["heartbeat", "result", "fail"];
    let Some(rest) = line.strip_prefix("::") else { return Line::Output(line) };
    let Some(command) = COMMANDS
        .into_iter()
        .find(|c| rest.strip_prefix(c).is_some_and(|after| after.is_empty() || after.starts_with(char::is_whitespace)))
    else {
        return Line::Output(line);
    };
    let arg = rest[command.len()..].trim();
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
            Ok(f) => Line::Fail(f),
            Err(error) => Line::Malformed { command, error },
        },
    }
}

fn parse_failure(value: Value) -> std::result::Result<WorkerFailure, String> {
    let failure: WorkerFailure = serde_json::from_value(value)
        .map_err(|e| format!("expected {{\"type\": string, \"message\": string, \"nonRetryable\": bool}}: {e}"))?;
    if failure.type_.is_empty() {
        return Err("\"type\" must not be empty".into());
    }
    Ok(failure)
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
        })),
    }
}

/// When to SIGKILL after SIGTERM: the remaining grace period less a margin (a tenth of the
/// grace period, between 500 ms and 3 s), so the worker can still report before its pod goes.
pub fn kill_after(remaining: Duration, grace: Duration) -> Duration {
    let margin = (grace / 10).clamp(Duration::from_millis(500), Duration::from_secs(3));
    remaining.saturating_sub(margin)
}

/// What `exec` ends with: the report (already delivered or not) and the process exit code.
#[derive(Debug)]
pub struct ExecEnd {
    pub report: Report,
    pub exit_code: i32,
}

/// Runs `command` under `ctx`: returns how the attempt ended (not yet reported).
pub async fn run(ctx: &ActivityContext, command: &[String]) -> Result<ExecEnd> {
    let (program, args) = command.split_first().ok_or_else(|| Error::Io {
        context: "exec".into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no command given"),
    })?;
    if ctx.is_cancelled() {
        info!("not starting {program:?}: already canceled");
        return Ok(ExecEnd { report: Report::Canceled, exit_code: crate::EXIT_CANCELED });
    }
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env(ENV_NAME, ctx.name())
        .env(ENV_NAMESPACE, ctx.namespace())
        .env(ENV_ATTEMPT, ctx.attempt().to_string())
        .env(ENV_INPUT, ctx.raw_input().unwrap_or(&Value::Null).to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .kill_on_drop(true);
    // If the worker itself is SIGKILLed, its command must not live on outside the pod's process
    // group (a container runtime would kill it with the container; a host process node would
    // not). Tied to the spawning thread: `exec` runs on the runtime's main thread.
    // SAFETY: prctl(2) is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from));
    }
    match ctx.raw_heartbeat_details() {
        Some(d) => cmd.env(ENV_HEARTBEAT_DETAILS, d.to_string()),
        None => cmd.env_remove(ENV_HEARTBEAT_DETAILS),
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            error!("cannot start {program:?}: {e}");
            let failure = WorkerFailure {
                type_: "ExecError".into(),
                message: format!("cannot start {program:?}: {e}"),
                non_retryable: true,
            };
            return Ok(ExecEnd { report: Report::Failed(failure), exit_code: 127 });
        }
    };
    let pgid = child.id().and_then(|p| i32::try_from(p).ok());
    info!(pid = pgid.unwrap_or_default(), "started {program:?}");
    let stdout = child.stdout.take();
    let reader = tokio::spawn(read_commands(ctx.clone(), stdout));

    let (exit, canceled) = wait_or_cancel(ctx, &mut child, pgid).await?;
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
    if let (ChildExit::Code(0), Some(f)) = (exit, &said.failure) {
        warn!(r#type = %f.type_, "the command printed ::fail but exited 0: exit 0 means success, the ::fail is ignored");
    }
    let report = decide(exit, canceled, &said);
    let exit_code = match &report {
        Report::Completed(_) => 0,
        Report::Failed(_) => match exit.code() {
            0 => 1,
            c => c,
        },
        Report::Canceled => crate::EXIT_CANCELED,
    };
    Ok(ExecEnd { report, exit_code })
}

/// Waits for the child; on cancellation sends SIGTERM to its group, then SIGKILL when the grace
/// period (less a margin) has passed.
async fn wait_or_cancel(ctx: &ActivityContext, child: &mut Child, pgid: Option<i32>) -> Result<(ChildExit, bool)> {
    let io = |source| Error::Io { context: "waiting for the command".into(), source };
    tokio::select! {
        status = child.wait() => return Ok((status.map_err(io)?.into(), false)),
        _ = ctx.cancelled() => {}
    }
    let grace = ctx.cancellation_grace_period();
    let kill_in = kill_after(ctx.grace_remaining(), grace);
    info!("canceled: sending SIGTERM to the command's process group; SIGKILL in {kill_in:?} if it has not stopped");
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
    Ok((status.into(), true))
}

/// Reads the child's stdout line by line: commands go to the context, the rest to our stdout.
async fn read_commands(ctx: ActivityContext, stdout: Option<tokio::process::ChildStdout>) -> Said {
    let mut said = Said::default();
    let Some(stdout) = stdout else { return said };
    let mut reader = BufReader::new(stdout);
    let mut out = tokio::io::stdout();
    let mut buf = Vec::new();
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
            Line::Heartbeat(details) => {
                if let Err(e) = ctx.heartbeat(&details) {
                    error!("ignoring ::heartbeat: {e}");
                }
            }
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
            Line::Fail(failure) => said.failure = Some(failure),
            Line::Malformed { command, error } => {
                let shown: String = line.chars().take(200).collect();
                warn!("ignoring malformed ::{command} line ({error}): {shown}");
            }
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
            Line::Fail(WorkerFailure { type_: "Bad".into(), message: "no".into(), non_retryable: true })
        );
        // message and nonRetryable are optional.
        assert_eq!(
            parse_line(r#"::fail {"type": "Bad"}"#),
            Line::Fail(WorkerFailure { type_: "Bad".into(), message: String::new(), non_retryable: false })
        );
    }

    #[test]
    fn other_lines_pass_through() {
        for line in [
            "",
            "hello",
            "  ::heartbeat {}",
            ":heartbeat {}",
            "::heartbeats {}",
            "::heartbeat{}",
            "::unknown {}",
            "::",
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
    }

    #[test]
    fn exit_decides_the_report() {
        let none = Said::default();
        let with_result = Said { result: Some(json!({"n": 1})), ..Said::default() };
        let failing = Said {
            failure: Some(WorkerFailure { type_: "Mine".into(), message: "m".into(), non_retryable: true }),
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
    fn sigkill_leaves_a_margin_under_the_grace_period() {
        let s = Duration::from_secs;
        assert_eq!(kill_after(s(30), s(30)), s(27));
        assert_eq!(kill_after(s(10), s(30)), s(7));
        assert_eq!(kill_after(s(5), s(5)), Duration::from_millis(4500));
        assert_eq!(kill_after(s(100), s(100)), s(97));
        assert_eq!(kill_after(s(0), s(30)), s(0));
    }
}
