//! Numbers in `::heartbeat` and `::result` lines survive `activity-worker exec` exactly: the line is
//! read, the value printed into the status patch, and read again by whoever resumes from it. With
//! serde_json's default (fast, approximate) float parsing these two read back one and two ULPs
//! away (found by the `exec_line` fuzz target; its seeds `float-ulp` and `float-2ulp`).

use activity_worker::exec::{Line, parse_line};

#[test]
fn floats_read_print_and_read_back_to_the_same_value() {
    let hundred_digits = "3".repeat(99) + "0";
    for line in [format!("::result {{\"k\": {hundred_digits}}}"), "::heartbeat 4000000e-034".to_string()] {
        let (first, printed) = match parse_line(&line) {
            Line::Result(v) => (v.clone(), format!("::result {v}")),
            Line::Heartbeat(v) => (v.clone(), format!("::heartbeat {v}")),
            other => panic!("{line:?} read as {other:?}"),
        };
        let again = match parse_line(&printed) {
            Line::Result(v) | Line::Heartbeat(v) => v,
            other => panic!("{printed:?} read as {other:?}"),
        };
        assert_eq!(first, again, "{line:?} printed as {printed:?}");
    }
}
