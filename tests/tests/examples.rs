//! The Go and Python SDKs' examples end to end on the real node, each in the worker image that
//! `make images` builds for it (deploy/local/images.sh): `activity-example-go` (the seed's
//! `LongRunningActivity`, sdk/go/examples/longrunning) and `activity-example-python` (the seed's
//! record processor, sdk/python/examples). What each worker did is counted outside it, from its
//! pods' logs read through the API server. Both skip (saying so) when the cluster has no real node:
//! the process node cannot run these images.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use activity_crds::{Activity, Phase};
use activity_tests::operator::{Operator, ensure_crd, worker_rbac};
use activity_tests::realnode::{assert_on_real_node, chart_app_version, real_node_or_skip};
use activity_tests::{TestNs, kubectl, wait_for};
use anyhow::Context;
use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams, PostParams};
use serde_json::json;

/// The CRD, applied once per test binary: on a new cluster two tests creating it at the same moment
/// made one of them fail.
fn crd() -> anyhow::Result<()> {
    static CRD: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    CRD.get_or_init(|| ensure_crd().map_err(|e| format!("{e:#}"))).clone().map_err(anyhow::Error::msg)
}

fn dump(ns: &str) {
    for args in [
        vec!["get", "activities", "-n", ns, "-o", "yaml"],
        vec!["get", "pods", "-n", ns, "-o", "wide"],
        vec!["get", "events", "-n", ns],
    ] {
        eprintln!("--- kubectl {}\n{}", args.join(" "), kubectl(&args).unwrap_or_else(|e| e.to_string()));
    }
}

/// The numbers N of the lines containing `marker` followed by N, in log order.
fn numbers_after(log: &str, marker: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| {
            let rest = l.split(marker).nth(1)?;
            rest.chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
        })
        .collect()
}

/// The container's whole log, read through the API server.
async fn pod_log(pods: &Api<Pod>, pod: &str) -> anyhow::Result<String> {
    pods.logs(pod, &LogParams::default()).await.with_context(|| format!("the log of {pod}"))
}

/// Follows a running pod's log from its first line until its container ends (`kubectl logs -f`),
/// so that it can be read after the pod was deleted.
async fn follow_log(pods: &Api<Pod>, pod: &str) -> anyhow::Result<Arc<Mutex<String>>> {
    let stream = pods.log_stream(pod, &LogParams { follow: true, ..LogParams::default() }).await?;
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    tokio::spawn(async move {
        let mut lines = stream.lines();
        while let Some(Ok(line)) = lines.next().await {
            let mut t = sink.lock().unwrap();
            t.push_str(&line);
            t.push('\n');
        }
    });
    Ok(text)
}

/// The seed's `LongRunningActivity` on the Go SDK, applied from its own manifest
/// (sdk/go/examples/longrunning/activity.yaml: 10 items, failing after 3 per attempt): Succeeded on
/// attempt 4, every item processed exactly once across the attempts, each pod on the real node.
#[tokio::test]
async fn go_long_running_activity_succeeds_on_attempt_4_with_every_item_once() -> anyhow::Result<()> {
    let test = "go_long_running_activity_succeeds_on_attempt_4_with_every_item_once";
    let Some(_client) = real_node_or_skip(test).await? else {
        return Ok(());
    };
    let manifest = "sdk/go/examples/longrunning/activity.yaml";
    let text = std::fs::read_to_string(activity_tests::repo_root().join(manifest))?;
    let image = format!("ghcr.io/heartbeat-dev/activity-example-go:{}", chart_app_version()?);
    assert!(text.contains(&format!("image: {image}")), "{manifest} must run {image} (the image make images builds)");
    crd()?;
    let ns = TestNs::new("ex-go").await?;
    worker_rbac(&ns.name)?;
    let _op = Operator::start(&ns.name).await?;
    kubectl(&["apply", "-n", &ns.name, "-f", manifest])?;
    let acts: Api<Activity> = ns.api();
    let a = activity_tests::wait_phase(&acts, "long-running-go", Phase::Succeeded, Duration::from_secs(240))
        .await
        .inspect_err(|_| dump(&ns.name))?;
    let st = a.status.clone().unwrap_or_default();
    assert_eq!(st.attempt, Some(4), "Succeeded on attempt 4");
    assert_eq!(st.result.and_then(|r| r.to_value().ok()), Some(json!({"processed": 10})));
    let pods: Api<Pod> = ns.api();
    let mut processed = Vec::new();
    for n in 1..=4 {
        let pod = format!("long-running-go-{n}");
        assert_on_real_node(&pods, &pod).await?;
        let items = numbers_after(&pod_log(&pods, &pod).await?, "processed item ");
        assert_eq!(items.len(), if n < 4 { 3 } else { 1 }, "attempt {n} processed {items:?}");
        processed.extend(items);
    }
    assert_eq!(processed, (0..10).collect::<Vec<u64>>(), "every item exactly once, in order, across attempts");
    ns.delete().await
}

/// The seed's record processor on the Python SDK (1,000 records; 5-15 ms each instead of
/// 100-500 ms, through its input), its pod deleted mid-run: the worker gets SIGTERM and flushes
/// its last offset; attempt 2 resumes from exactly that offset; every record is processed exactly
/// once and the result is the final offset.
#[tokio::test]
async fn python_record_processor_killed_mid_run_resumes_from_its_offset() -> anyhow::Result<()> {
    let test = "python_record_processor_killed_mid_run_resumes_from_its_offset";
    let Some(_client) = real_node_or_skip(test).await? else {
        return Ok(());
    };
    const COUNT: u64 = 1000;
    crd()?;
    let ns = TestNs::new("ex-py").await?;
    worker_rbac(&ns.name)?;
    let _op = Operator::start(&ns.name).await?;
    let acts: Api<Activity> = ns.api();
    let image = format!("ghcr.io/heartbeat-dev/activity-example-python:{}", chart_app_version()?);
    let act: Activity = serde_json::from_value(json!({
        "apiVersion": "heartbeat.dev/v1alpha1", "kind": "Activity", "metadata": {"name": "records-py"},
        "spec": {"input": {"count": COUNT, "minDelayMs": 5, "maxDelayMs": 15},
                 "startToCloseTimeout": "5m", "heartbeatTimeout": "10s",
                 "retryPolicy": {"initialInterval": "1s", "maximumAttempts": 3},
                 "template": {"spec": {"containers": [{"name": "worker", "image": image}]}}}
    }))?;
    acts.create(&PostParams::default(), &act).await?;

    // Mid-run: some records heartbeated, most still to do.
    let offset_of = |a: &Activity| -> Option<u64> {
        let details = a.status.as_ref()?.heartbeat_details.as_ref()?.to_value().ok()?;
        details["offset"].as_u64()
    };
    wait_for(Duration::from_secs(120), "records-py to heartbeat an offset of 100 or more", || async {
        let a = acts.get("records-py").await?;
        Ok(offset_of(&a).filter(|o| *o >= 100).map(|_| ()))
    })
    .await
    .inspect_err(|_| dump(&ns.name))?;
    let pods: Api<Pod> = ns.api();
    assert_on_real_node(&pods, "records-py-1").await?;
    let first_log = follow_log(&pods, "records-py-1").await?;
    kubectl(&["delete", "pod", "-n", &ns.name, "records-py-1", "--wait=false"])?;

    let a = activity_tests::wait_phase(&acts, "records-py", Phase::Succeeded, Duration::from_secs(240))
        .await
        .inspect_err(|_| dump(&ns.name))?;
    let st = a.status.clone().unwrap_or_default();
    assert_eq!(st.attempt, Some(2), "one retry after the deleted pod");
    assert_eq!(st.result.and_then(|r| r.to_value().ok()), Some(json!(COUNT)), "the result is the final offset");
    assert_eq!(offset_of(&a), Some(COUNT), "the last heartbeat holds the final offset");
    assert_on_real_node(&pods, "records-py-2").await?;

    let first = numbers_after(&first_log.lock().unwrap(), "processed record ");
    let second_log = pod_log(&pods, "records-py-2").await?;
    let resumed_from = *numbers_after(&second_log, "attempt 2: records ").first().context("attempt 2's start line")?;
    let second = numbers_after(&second_log, "processed record ");
    assert!((100..COUNT).contains(&resumed_from), "killed mid-run: attempt 2 resumed from {resumed_from}");
    // Attempt 1 stopped right after the offset it flushed; attempt 2 started there.
    assert_eq!(first, (0..resumed_from).collect::<Vec<_>>(), "attempt 1's records");
    assert_eq!(second, (resumed_from..COUNT).collect::<Vec<_>>(), "attempt 2's records");
    ns.delete().await
}

#[test]
fn numbers_are_read_after_their_marker() {
    let log = "t=1 INFO processed record 7\nnoise\nmsg=\"processed record 12\"\n";
    assert_eq!(numbers_after(log, "processed record "), vec![7, 12]);
}
