//! The benchmark scenarios at their `--quick` sizes against the local cluster (`.local/kubeconfig`,
//! which `make test` starts): a smoke test that asserts correctness only (every activity and Job
//! ends as expected), never a timing. The real runs are `make bench`, on a cluster of their own.

use activity_bench::Cluster;
use activity_bench::load::{self, LoadPlan};
use activity_bench::scenarios::{self, DeadlineKind};
use activity_crds::Activity;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use serde_json::json;

#[tokio::test]
async fn quick_scenarios() {
    let cluster = Cluster::connect(&activity_tests::kubeconfig_path()).await.expect("local cluster (make cluster)");
    // What an interrupted run leaves behind: its namespace, with an Activity that its operator,
    // gone now, still holds by a finalizer. The next bench clears it before it starts.
    cluster.ensure_crd().expect("CRD");
    let leftover = format!("bench-leftover-{:06x}", rand::random::<u32>() & 0xff_ffff);
    let nss: Api<Namespace> = Api::all(cluster.client.clone());
    let ns = json!({"metadata": {"name": leftover, "labels": {"activity-bench": "true"}}});
    nss.create(&PostParams::default(), &serde_json::from_value(ns).expect("namespace"))
        .await
        .expect("leftover namespace");
    let act = json!({"apiVersion": "heartbeat.dev/v1alpha1", "kind": "Activity",
        "metadata": {"name": "left", "finalizers": [activity_crds::FINALIZER]},
        "spec": {"startToCloseTimeout": "1m", "template": {"spec": {"containers": [{"name": "w", "image": "busybox"}]}}}});
    let acts: Api<Activity> = Api::namespaced(cluster.client.clone(), &leftover);
    acts.create(&PostParams::default(), &serde_json::from_value(act).expect("activity"))
        .await
        .expect("leftover activity");

    let deadline = scenarios::deadline(&cluster, 3, 2, DeadlineKind::Heartbeat, true).await.expect("deadline --quick");
    deadline.print();
    assert!(nss.get_opt(&leftover).await.expect("get namespace").is_none(), "the leftover namespace was not cleared");
    let throughput = scenarios::throughput(&cluster, 3, true).await.expect("throughput --quick");
    throughput.print();
    let writes = scenarios::writes(&cluster, 3, 2).await.expect("writes --quick");
    writes.print();
    assert_eq!(writes.get("operator writes per heartbeat"), Some(0.0));
    load::apply(&cluster, 3).await.expect("apply --quick").print();
    load::worker(&cluster, std::time::Duration::from_secs(2)).await.expect("worker").print();
    // Every step (growth, heartbeat/Lease windows, etcd sampling, bursts, restart) checks its
    // invariants itself: no operator write per heartbeat, no canceled reply, nothing moved or
    // duplicated by the restart. The workers use tokens bound to their pods, under the chart's
    // worker policy: every heartbeat and every Lease renewal must be accepted.
    let runs = load::load(&cluster, &LoadPlan::quick()).await.expect("load --quick");
    for res in &runs {
        res.print();
    }
    let titled = |prefix: &str| runs.iter().filter(|r| r.title.starts_with(prefix)).count();
    assert_eq!(titled("load step"), 2, "a result per size");
    assert_eq!(titled("heartbeat vs Lease renewal"), 4, "two window pairs per size");
    assert_eq!(titled("etcd size under heartbeats"), 1);
    assert_eq!(titled("heartbeat bursts"), 1);
    assert_eq!(titled("operator restart"), 1);
    for res in runs.iter().filter(|r| r.title.starts_with("heartbeat vs Lease renewal")) {
        for kind in ["heartbeat", "Lease"] {
            assert_eq!(res.get(&format!("{kind}: errors")), Some(0.0), "{kind} errors: {:?}", res.notes);
            assert!(res.get(&format!("{kind}: done per second")).is_some_and(|r| r > 0.0), "no {kind} done");
        }
        assert_eq!(res.get("operator writes per heartbeat"), Some(0.0));
    }
    assert!(runs.iter().all(|r| r.get("heartbeat errors").unwrap_or(0.0) == 0.0), "no heartbeat failed");
}
