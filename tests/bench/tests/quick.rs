//! The benchmark scenarios at their `--quick` sizes against the local cluster (`.local/kubeconfig`,
//! which `make test` starts): a smoke test that asserts correctness only (every activity and Job
//! ends as expected), never a timing. The real runs are `make bench`, on a cluster of their own.

use activity_bench::Cluster;
use activity_bench::scenarios::{self, DeadlineKind};

#[tokio::test]
async fn quick_scenarios() {
    let cluster = Cluster::connect(&activity_bench::repo_root().join(".local/kubeconfig"))
        .await
        .expect("local cluster (make cluster)");
    let deadline = scenarios::deadline(&cluster, 3, 2, DeadlineKind::Heartbeat).await.expect("deadline --quick");
    deadline.print();
    let throughput = scenarios::throughput(&cluster, 3).await.expect("throughput --quick");
    throughput.print();
    let writes = scenarios::writes(&cluster, 3, 2).await.expect("writes --quick");
    writes.print();
    assert_eq!(writes.get("operator writes per heartbeat"), Some(0.0));
}
