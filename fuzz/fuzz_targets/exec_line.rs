//! The exec line protocol (`activity_worker::exec::parse_line`, what `activity-worker exec` does
//! with each line of its child's stdout) on arbitrary text: it never panics, a line that is not
//! `::word…` passes through unchanged, a command keeps its value (printed again, it parses to
//! the same command), and a `::fail` keeps only a `nextRetryDelay` that parses.
//!
//! Numbers come back exactly: serde_json reads floats with `float_roundtrip` (without it this
//! target found a 100-digit decimal and `4000000e-034` reading back one and two ULPs away; seeds
//! `corpus/exec_line/float-ulp` and `float-2ulp`).
#![no_main]

use activity_crds::parse_duration;
use activity_worker::exec::{COMMANDS, Line, QUOTED_LINE_CHARS, parse_line, quote_line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The child's stdout is read as lines of text; a line is at most one line.
    let text = String::from_utf8_lossy(data);
    let line = text.split(['\n', '\r']).next().unwrap_or("");
    let quoted = quote_line(line);
    assert!(quoted.chars().count() <= QUOTED_LINE_CHARS + 1, "quote_line too long for {line:?}");
    let parsed = parse_line(line);
    if !line.starts_with("::") {
        assert_eq!(parsed, Line::Output(line), "a plain line must pass through");
    }
    match &parsed {
        Line::Output(out) => assert_eq!(*out, line),
        Line::Heartbeat(v) => {
            let again = format!("::heartbeat {v}");
            let back = parse_line(&again);
            assert!(matches!(&back, Line::Heartbeat(w) if w == v), "{line:?} -> {again:?} -> {back:?}");
        }
        Line::Result(v) => {
            let again = format!("::result {v}");
            let back = parse_line(&again);
            assert!(matches!(&back, Line::Result(w) if w == v), "{line:?} -> {again:?} -> {back:?}");
        }
        Line::Fail(failure, dropped) => {
            assert!(line.starts_with("::fail"));
            assert!(!failure.type_.is_empty(), "{line:?}: a failure without a type");
            if let Some(delay) = &failure.next_retry_delay {
                assert!(parse_duration(delay).is_ok(), "{line:?}: kept an invalid nextRetryDelay {delay:?}");
            }
            if dropped.is_some() {
                assert!(failure.next_retry_delay.is_none(), "{line:?}: dropped and kept a nextRetryDelay");
            }
        }
        Line::Malformed { command, error } => {
            assert!(line[2..].starts_with(command), "{line:?}: malformed command {command:?} not from the line");
            assert!(!error.is_empty(), "{line:?}: malformed without a reason");
            let known = COMMANDS.contains(command);
            assert!(known || !command.is_empty(), "{line:?}");
        }
    }
});
