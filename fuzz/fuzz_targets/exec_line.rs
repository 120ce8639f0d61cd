//! The exec line protocol (`activity_worker::exec::parse_line`, what `activity-worker exec` does
//! with each line of its child's stdout) on arbitrary text: it never panics, a line that is not
//! `::word…` passes through unchanged, a command keeps its value (printed again, it parses to
//! the same command), and a `::fail` keeps only a `nextRetryDelay` that parses.
//!
//! Known (found by this target, reported on issue 16): a long decimal does not survive read,
//! print, read with serde_json's default float parsing (no `float_roundtrip` feature):
//! `::result {"k": 333…380}` (100 digits) reads as 3.333333333333334e100, prints as
//! `3.3333333333333335e+100`, which reads as 3.3333333333333335e100, one ULP away; and
//! `4000000e-034` reads as the float printed `4.0000000000000003e-28`, which reads as
//! 3.9999999999999994e-28, two ULPs away. The round trip allows a few ULPs on floats and nothing
//! else; seeds `corpus/exec_line/float-ulp` and `float-2ulp` are those inputs.
#![no_main]

use activity_crds::parse_duration;
use activity_worker::exec::{COMMANDS, Line, QUOTED_LINE_CHARS, parse_line, quote_line};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Equal, but for numbers read as floats at most 4 ULPs apart (see the module's doc).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x != y => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) if x.is_finite() && x.signum() == y.signum() => x.to_bits().abs_diff(y.to_bits()) <= 4,
            _ => false,
        },
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

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
            assert!(matches!(&back, Line::Heartbeat(w) if same(v, w)), "{line:?} -> {again:?} -> {back:?}");
        }
        Line::Result(v) => {
            let again = format!("::result {v}");
            let back = parse_line(&again);
            assert!(matches!(&back, Line::Result(w) if same(v, w)), "{line:?} -> {again:?} -> {back:?}");
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
