//! An Activity whose `status.heartbeatDetails` (and `status.result`, `outcome.result`) is any
//! valid JSON text, at any depth, decodes (issue 16: details nested 200 deep made an Activity
//! undecodable and blinded the operator). The details are the input itself when it is valid JSON,
//! and a nesting built from the input: its first two bytes give a depth up to 65535, the rest
//! choose arrays or objects level by level.
#![no_main]

use activity_crds::Activity;
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

fn activity_with(details: &str) -> String {
    format!(
        r#"{{"apiVersion":"heartbeat.dev/v1alpha1","kind":"Activity","metadata":{{"name":"a","namespace":"n"}},
"spec":{{"template":{{"spec":{{"containers":[{{"name":"w","image":"i"}}]}}}}}},
"status":{{"phase":"Running","attempt":2,"heartbeatDetails":{details},"result":{details},
"outcome":{{"attempt":2,"succeeded":true,"result":{details}}}}}}}"#
    )
}

fn nesting(data: &[u8]) -> String {
    let depth = match data {
        [a, b, ..] => usize::from(u16::from_le_bytes([*a, *b])),
        _ => 0,
    };
    let shape = data.get(2..).unwrap_or(&[]);
    let mut open = String::with_capacity(depth * 6);
    let mut close = String::with_capacity(depth * 2);
    for level in 0..depth {
        let bit = shape.get(level / 8).map_or(level % 3 == 0, |b| b >> (level % 8) & 1 == 1);
        if bit {
            open.push_str(r#"{"k":"#);
            close.push('}');
        } else {
            open.push('[');
            close.push(']');
        }
    }
    let leaf = if depth % 2 == 0 { r#""leaf""# } else { "1.5e3" };
    let mut text = open;
    text.push_str(leaf);
    text.extend(close.chars().rev());
    text
}

fn check(details: &str) {
    let doc = activity_with(details);
    let activity: Activity = match serde_json::from_str(&doc) {
        Ok(a) => a,
        Err(e) => panic!("an Activity with valid details of {} bytes does not decode: {e}", details.len()),
    };
    let status = activity.status.as_ref().expect("status");
    let kept = status.heartbeat_details.as_ref().expect("heartbeatDetails");
    assert_eq!(kept.get(), details.trim(), "heartbeatDetails not kept as written");
    assert_eq!(status.result.as_ref().map(|r| r.get()), Some(details.trim()));
    assert_eq!(status.outcome.as_ref().and_then(|o| o.result.as_ref()).map(|r| r.get()), Some(details.trim()));
    // And it encodes again, still at that depth.
    let text = serde_json::to_string(&activity).expect("encodes");
    let again: Activity = serde_json::from_str(&text).expect("decodes again");
    assert_eq!(
        again.status.and_then(|s| s.heartbeat_details).map(|d| d.get().to_string()),
        Some(details.trim().to_string())
    );
}

fuzz_target!(|data: &[u8]| {
    // The input itself, when it is one valid JSON value (checked at any depth: RawValue does not
    // build the value).
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(raw) = serde_json::from_str::<Box<RawValue>>(text)
    {
        check(raw.get());
    }
    check(&nesting(data));
});
