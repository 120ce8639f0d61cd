//! The status and outcome decoders on arbitrary bytes: `serde_json::from_slice` of an
//! `Activity` (what the operator's watch decodes) and of an `Outcome` (what a worker writes)
//! never panics, and what decodes encodes and decodes again to the same thing.
#![no_main]

use activity_crds::{Activity, ActivityStatus, Outcome};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(activity) = serde_json::from_slice::<Activity>(data) {
        let text = serde_json::to_vec(&activity).expect("a decoded Activity encodes");
        let again: Activity = serde_json::from_slice(&text).expect("an encoded Activity decodes");
        assert_eq!(serde_json::to_vec(&again).expect("encodes"), text, "Activity round trip");
        // Raw JSON fields stay raw at any depth.
        if let Some(details) = activity.status.as_ref().and_then(|s| s.heartbeat_details.as_ref()) {
            let _ = details.len();
            let _ = details.is_null();
        }
    }
    if let Ok(status) = serde_json::from_slice::<ActivityStatus>(data) {
        let text = serde_json::to_vec(&status).expect("a decoded status encodes");
        let _: ActivityStatus = serde_json::from_slice(&text).expect("an encoded status decodes");
    }
    if let Ok(outcome) = serde_json::from_slice::<Outcome>(data) {
        let text = serde_json::to_vec(&outcome).expect("a decoded Outcome encodes");
        let again: Outcome = serde_json::from_slice(&text).expect("an encoded Outcome decodes");
        assert_eq!(serde_json::to_vec(&again).expect("encodes"), text, "Outcome round trip");
    }
});
