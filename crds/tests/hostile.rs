//! Objects a worker or a user can write must always decode: the operator's watch and its first
//! list after a failover decode every Activity, and one that does not blinds it.

use activity_crds::Activity;
use serde_json::json;

fn activity_with_details(details: &str) -> String {
    let base = json!({
        "apiVersion": "heartbeat.dev/v1alpha1", "kind": "Activity",
        "metadata": {"name": "a", "namespace": "ns"},
        "spec": {"startToCloseTimeout": "1m", "template": {"spec": {"containers": [{"name": "w", "image": "x"}]}}},
        "status": {"attempt": 1, "heartbeatDetails": "DETAILS", "outcome": {"attempt": 1, "succeeded": true, "result": "DETAILS"}}
    });
    base.to_string().replace("\"DETAILS\"", details)
}

#[test]
fn details_and_results_nested_deeper_than_serde_jsons_limit_decode() {
    // serde_json refuses a `Value` nested deeper than 128 levels; 200 is what a worker wrote.
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    assert!(serde_json::from_str::<serde_json::Value>(&deep).is_err(), "the limit this test is about");
    let text = activity_with_details(&deep);
    let act: Activity = serde_json::from_str(&text).expect("an Activity with deep details decodes");
    let status = act.status.expect("status");
    assert_eq!(status.heartbeat_details.expect("details").get(), deep);
    assert_eq!(status.outcome.and_then(|o| o.result).map(|r| r.len()), Some(deep.len()));
    // And it is written back as it came.
    let again = serde_json::to_string(&serde_json::from_str::<Activity>(&text).expect("decode")).expect("encode");
    assert!(again.contains(&deep));
}

#[test]
fn a_list_with_one_deep_activity_decodes_whole() {
    let deep = format!("{}{}", "{\"a\":".repeat(300), "}".repeat(300)).replace("{\"a\":}", "{\"a\":1}");
    let fine = activity_with_details("{\"i\":1}");
    let list = format!(
        r#"{{"apiVersion":"heartbeat.dev/v1alpha1","kind":"ActivityList","metadata":{{}},"items":[{fine},{}]}}"#,
        activity_with_details(&deep)
    );
    let list: kube::core::ObjectList<Activity> = serde_json::from_str(&list).expect("the list decodes");
    assert_eq!(list.items.len(), 2);
}
