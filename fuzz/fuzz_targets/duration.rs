//! `activity_crds::parse_duration` on arbitrary text: it never panics (issue 16: an overflow in it
//! crashed every replica), it accepts only what the CRD's `DURATION_PATTERN` accepts (refusing a
//! pattern match only as too large), and what it accepts survives `format_duration` and back.
#![no_main]

use std::sync::LazyLock;

use activity_crds::{DURATION_PATTERN, format_duration, parse_duration};
use libfuzzer_sys::fuzz_target;

static PATTERN: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(DURATION_PATTERN).expect("DURATION_PATTERN compiles"));

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else { return };
    let matches = PATTERN.is_match(input);
    match parse_duration(input) {
        Ok(d) => {
            assert!(matches, "parse_duration accepted {input:?} ({d:?}), which the CRD pattern refuses");
            let text = format_duration(d);
            let back = parse_duration(&text)
                .unwrap_or_else(|e| panic!("{input:?} -> {d:?} -> {text:?} does not parse back: {e}"));
            assert_eq!(back, d, "{input:?} -> {d:?} -> {text:?} -> {back:?}");
        }
        Err(e) => {
            assert!(
                !matches || matches!(e.reason, "number too large" | "longer than 290 years"),
                "the CRD pattern accepts {input:?} but parse_duration refused it: {e}"
            );
        }
    }
});
