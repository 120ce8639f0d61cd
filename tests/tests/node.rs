//! The process node (deploy/local/node) as the kubelet of the local cluster: pods scheduled by the
//! real scheduler run as host processes, with kubelet-like status, graceful deletion, garbage
//! collection, service account credentials under real RBAC, probes and pod IPs.
//!
//! Every pod here selects the process node and tolerates its taint (it is tainted while the real
//! node runs, so that other pods go there).

use std::time::{Duration, Instant};

use activity_tests::{TestNs, bin_dir, local_dir, wait_for};
use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, ContainerStatus, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

const NODE: &str = "local-node";

/// The process node's taint while a real node runs (deploy/local/realnode/realnode.sh).
const PROCESS_NODE_TAINT: &str = activity_tests::realnode::PROCESS_NODE_TAINT;

/// A pod for the process node: its nodeSelector names it, and it tolerates its taint.
fn pod(name: &str, spec: serde_json::Value) -> Pod {
    let mut spec = spec;
    if spec.get("terminationGracePeriodSeconds").is_none() {
        spec["terminationGracePeriodSeconds"] = json!(5);
    }
    spec["nodeSelector"] = json!({"kubernetes.io/hostname": NODE});
    spec["tolerations"] = json!([{"key": PROCESS_NODE_TAINT, "operator": "Exists", "effect": "NoSchedule"}]);
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

/// A busybox pod running `sh -c SCRIPT`.
fn sh_pod(name: &str, restart_policy: &str, script: &str) -> Pod {
    pod(
        name,
        json!({
            "restartPolicy": restart_policy,
            "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", script]}],
        }),
    )
}

async fn create(ns: &TestNs, pod: &Pod) -> anyhow::Result<()> {
    ns.api::<Pod>().create(&PostParams::default(), pod).await?;
    Ok(())
}

/// Waits until the pod satisfies `check`, and returns it.
async fn wait_pod(
    ns: &TestNs,
    name: &str,
    timeout: Duration,
    what: &str,
    check: impl Fn(&Pod) -> bool,
) -> anyhow::Result<Pod> {
    let api = ns.api::<Pod>();
    wait_for(timeout, &format!("pod {name}: {what}"), || async {
        let pod = api.get_opt(name).await?;
        Ok(pod.filter(|p| check(p)))
    })
    .await
}

fn phase(p: &Pod) -> &str {
    p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

fn container(p: &Pod, name: &str) -> Option<ContainerStatus> {
    p.status.as_ref()?.container_statuses.as_ref()?.iter().find(|c| c.name == name).cloned()
}

fn terminated(p: &Pod) -> Option<(i32, String)> {
    let t = container(p, "main")?.state?.terminated?;
    Some((t.exit_code, t.reason.unwrap_or_default()))
}

fn waiting_reason(p: &Pod) -> Option<String> {
    container(p, "main")?.state?.waiting?.reason
}

fn condition(p: &Pod, type_: &str) -> Option<String> {
    let conds = p.status.as_ref()?.conditions.as_ref()?;
    conds.iter().find(|c| c.type_ == type_).map(|c| c.status.clone())
}

fn log_path(ns: &TestNs, pod: &str, container: &str) -> std::path::PathBuf {
    local_dir().join("logs").join(format!("{}_{pod}_{container}.log", ns.name))
}

fn read_log(ns: &TestNs, pod: &str, container: &str) -> String {
    std::fs::read_to_string(log_path(ns, pod, container)).unwrap_or_default()
}

/// Waits until the container's log contains `text`.
async fn wait_log(ns: &TestNs, pod: &str, text: &str) -> anyhow::Result<String> {
    wait_for(Duration::from_secs(30), &format!("{text:?} in the log of {pod}"), || async {
        let log = read_log(ns, pod, "main");
        Ok(log.contains(text).then_some(log))
    })
    .await
}

#[tokio::test]
async fn failing_pod_reports_exit_code_and_error() -> anyhow::Result<()> {
    let ns = TestNs::new("node-exit").await?;
    create(&ns, &sh_pod("exit3", "Never", "exit 3")).await?;
    let p = wait_pod(&ns, "exit3", Duration::from_secs(60), "Failed", |p| phase(p) == "Failed").await?;
    assert_eq!(p.spec.as_ref().and_then(|s| s.node_name.as_deref()), Some(NODE), "bound by the scheduler");
    assert_eq!(terminated(&p), Some((3, "Error".into())));
    let c = container(&p, "main").unwrap();
    assert_eq!(c.restart_count, 0);
    assert!(!c.ready);
    assert!(c.container_id.unwrap_or_default().starts_with("process://"));
    assert_eq!(condition(&p, "Ready").as_deref(), Some("False"));
    ns.delete().await
}

#[tokio::test]
async fn true_pod_succeeds() -> anyhow::Result<()> {
    let ns = TestNs::new("node-true").await?;
    let p = pod(
        "ok",
        json!({"restartPolicy": "Never", "containers": [{"name": "main", "image": "docker.io/library/busybox:1.37", "command": ["true"]}]}),
    );
    create(&ns, &p).await?;
    let p = wait_pod(&ns, "ok", Duration::from_secs(60), "Succeeded", |p| phase(p) == "Succeeded").await?;
    assert_eq!(terminated(&p), Some((0, "Completed".into())));
    assert!(p.status.as_ref().and_then(|s| s.start_time.as_ref()).is_some());
    ns.delete().await
}

#[tokio::test]
async fn restart_always_counts_restarts_and_backs_off() -> anyhow::Result<()> {
    let ns = TestNs::new("node-crash").await?;
    create(&ns, &sh_pod("crash", "Always", "echo run; exit 1")).await?;
    let p = wait_pod(&ns, "crash", Duration::from_secs(60), "CrashLoopBackOff", |p| {
        waiting_reason(p).as_deref() == Some("CrashLoopBackOff")
    })
    .await?;
    let c = container(&p, "main").unwrap();
    assert!(c.restart_count >= 1, "{c:?}");
    let last = c.last_state.and_then(|s| s.terminated).context("lastState.terminated")?;
    assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));
    assert_eq!(phase(&p), "Running");
    ns.delete().await
}

#[tokio::test]
async fn unknown_image_fails_to_pull() -> anyhow::Result<()> {
    let ns = TestNs::new("node-pull").await?;
    let p = pod("nginx", json!({"containers": [{"name": "main", "image": "nginx:1.27"}]}));
    create(&ns, &p).await?;
    let p = wait_pod(&ns, "nginx", Duration::from_secs(60), "ImagePullBackOff", |p| {
        waiting_reason(p).as_deref() == Some("ImagePullBackOff")
    })
    .await?;
    let c = container(&p, "main").unwrap();
    let message = c.state.and_then(|s| s.waiting).and_then(|w| w.message).unwrap_or_default();
    assert!(message.contains("nginx:1.27"), "{message}");
    assert_eq!(c.restart_count, 0);
    assert!(c.container_id.is_none(), "never ran");
    assert_eq!(phase(&p), "Pending");
    ns.delete().await
}

#[tokio::test]
async fn deletion_sends_sigterm_and_respects_the_grace_period() -> anyhow::Result<()> {
    let ns = TestNs::new("node-term").await?;
    // Exits on SIGTERM; its grace period is long, so it can only be gone early by exiting itself.
    let polite = pod(
        "polite",
        json!({
            "terminationGracePeriodSeconds": 120,
            "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c",
                "trap 'echo got TERM; exit 0' TERM; echo started; while true; do sleep 1; done"]}],
        }),
    );
    // Notes SIGTERM and goes on: it lives on until SIGKILL at the end of its grace period.
    let stubborn = pod(
        "stubborn",
        json!({
            "terminationGracePeriodSeconds": 4,
            "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c",
                "trap 'echo got TERM' TERM; echo started; while true; do echo tick; sleep 1; done"]}],
        }),
    );
    create(&ns, &polite).await?;
    create(&ns, &stubborn).await?;
    for name in ["polite", "stubborn"] {
        wait_pod(&ns, name, Duration::from_secs(60), "Running", |p| phase(p) == "Running").await?;
        wait_log(&ns, name, "started").await?;
    }
    // Watch the pods to get their final state from the deletion events.
    let mut events = watcher::watcher(ns.api::<Pod>(), watcher::Config::default()).boxed();
    let mut finals = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut deleted_requests = false;
    while finals.len() < 2 {
        let ev = tokio::time::timeout_at(deadline.into(), events.next())
            .await
            .context("pods not deleted in time")?
            .context("watch ended")??;
        match ev {
            watcher::Event::InitDone if !deleted_requests => {
                for name in ["polite", "stubborn"] {
                    ns.api::<Pod>().delete(name, &DeleteParams::default()).await?;
                }
                deleted_requests = true;
            }
            watcher::Event::Delete(p) => {
                finals.insert(p.metadata.name.clone().unwrap_or_default(), p);
            }
            _ => {}
        }
    }
    let polite_log = read_log(&ns, "polite", "main");
    assert!(polite_log.contains("got TERM"), "{polite_log}");
    assert_eq!(terminated(&finals["polite"]), Some((0, "Completed".into())));

    let stubborn_log = read_log(&ns, "stubborn", "main");
    let after_term = stubborn_log.split_once("got TERM").map(|(_, rest)| rest.matches("tick").count());
    assert!(after_term.is_some_and(|n| n >= 2), "kept running after SIGTERM: {stubborn_log}");
    assert_eq!(terminated(&finals["stubborn"]), Some((137, "Error".into())), "killed by SIGKILL");
    ns.delete().await
}

#[tokio::test]
async fn garbage_collector_removes_pods_of_a_deleted_owner() -> anyhow::Result<()> {
    let ns = TestNs::new("node-gc").await?;
    let owner: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "owner"}}))?;
    let owner = ns.api::<ConfigMap>().create(&PostParams::default(), &owner).await?;
    let mut p = sh_pod("owned", "Always", "sleep 3600");
    p.metadata.owner_references = Some(vec![serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid,
    }))?]);
    create(&ns, &p).await?;
    wait_pod(&ns, "owned", Duration::from_secs(60), "Running", |p| phase(p) == "Running").await?;
    ns.api::<ConfigMap>().delete("owner", &DeleteParams::background()).await?;
    let api = ns.api::<Pod>();
    wait_for(Duration::from_secs(90), "the owned pod to be collected", || async {
        Ok(api.get_opt("owned").await?.is_none().then_some(()))
    })
    .await?;
    ns.delete().await
}

#[tokio::test]
async fn pod_credentials_carry_the_service_accounts_rbac() -> anyhow::Result<()> {
    let ns = TestNs::new("node-rbac").await?;
    let pp = PostParams::default();
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "reader"}}))?;
    ns.api::<ServiceAccount>().create(&pp, &sa).await?;
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "read-configmaps"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
    }))?;
    ns.api::<Role>().create(&pp, &role).await?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-configmaps"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns.name}],
    }))?;
    ns.api::<RoleBinding>().create(&pp, &binding).await?;
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "x"}, "data": {"k": "v"}}))?;
    ns.api::<ConfigMap>().create(&pp, &cm).await?;

    let kubectl = bin_dir()?.join("kubectl").display().to_string();
    let script = "\"$KUBECTL\" get configmap x -o name; echo \"get-cm=$?\"; \
                  \"$KUBECTL\" get secrets; echo \"get-secrets=$?\"; echo \"kubeconfig=[$KUBECONFIG]\"";
    let with_sa = pod(
        "with-sa",
        json!({
            "serviceAccountName": "reader",
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", script],
                            "env": [{"name": "KUBECTL", "value": kubectl}]}],
        }),
    );
    let without = pod(
        "without",
        json!({
            "serviceAccountName": "reader",
            "automountServiceAccountToken": false,
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", "echo \"kubeconfig=[$KUBECONFIG]\""]}],
        }),
    );
    create(&ns, &with_sa).await?;
    create(&ns, &without).await?;
    for name in ["with-sa", "without"] {
        wait_pod(&ns, name, Duration::from_secs(90), "finished", |p| matches!(phase(p), "Succeeded" | "Failed"))
            .await?;
    }
    let log = read_log(&ns, "with-sa", "main");
    assert!(log.contains("configmap/x") && log.contains("get-cm=0"), "allowed by the Role: {log}");
    assert!(log.contains("get-secrets=1") && log.contains("Forbidden"), "refused without a Role: {log}");
    assert!(log.contains(&format!("system:serviceaccount:{}:reader", ns.name)), "as the pod's service account: {log}");
    let log = read_log(&ns, "without", "main");
    assert!(log.contains("kubeconfig=[]"), "automountServiceAccountToken: false gives no credentials: {log}");
    ns.delete().await
}

#[tokio::test]
async fn env_expansion_downward_api_and_pod_ips() -> anyhow::Result<()> {
    let ns = TestNs::new("node-env").await?;
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": {"greeting": "hello"}}))?;
    ns.api::<ConfigMap>().create(&PostParams::default(), &cm).await?;
    let spec = |name: &str| {
        pod(
            name,
            json!({
                "containers": [{
                    "name": "main", "image": "busybox",
                    // Expanded by the node, not the shell (single quotes).
                    "command": ["sh", "-c", "echo '$(GREETING) from $(POD_NAME) at $(MY_IP) $$(POD_NAME) $(NOPE)'; sleep 3600"],
                    "env": [
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
                    ],
                }],
            }),
        )
    };
    create(&ns, &spec("a")).await?;
    create(&ns, &spec("b")).await?;
    let mut ips = Vec::new();
    for name in ["a", "b"] {
        let p =
            wait_pod(&ns, name, Duration::from_secs(60), "Ready", |p| condition(p, "Ready").as_deref() == Some("True"))
                .await?;
        let st = p.status.clone().unwrap_or_default();
        let ip = st.pod_ip.clone().unwrap_or_default();
        assert!(ip.starts_with("127.0.") && ip != "127.0.0.1", "loopback pod IP: {ip}");
        assert_eq!(st.host_ip.as_deref(), Some("127.0.0.1"));
        let log = wait_log(&ns, name, "hello").await?;
        assert!(log.contains(&format!("hello from {name} at {ip} $(POD_NAME) $(NOPE)")), "{log}");
        ips.push(ip);
    }
    assert_ne!(ips[0], ips[1], "each pod has its own IP");
    ns.delete().await
}

#[tokio::test]
async fn probes_drive_readiness_and_restarts() -> anyhow::Result<()> {
    let ns = TestNs::new("node-probe").await?;
    // Ready only once the file `ready` exists (created after a while); the liveness probe fails
    // once `dead` exists, which restarts the container (the new run finds `dead` gone).
    let p = pod(
        "probed",
        json!({
            "terminationGracePeriodSeconds": 2,
            "containers": [{
                "name": "main", "image": "busybox",
                "command": ["sh", "-c", "rm -f ready dead; echo started; sleep 3; touch ready; sleep 3; touch dead; sleep 3600"],
                "readinessProbe": {"exec": {"command": ["test", "-f", "ready"]}, "periodSeconds": 1},
                "livenessProbe": {"exec": {"command": ["test", "!", "-f", "dead"]}, "periodSeconds": 1, "failureThreshold": 2},
            }],
        }),
    );
    create(&ns, &p).await?;
    let running = wait_pod(&ns, "probed", Duration::from_secs(60), "Running", |p| phase(p) == "Running").await?;
    if container(&running, "main").is_some_and(|c| c.restart_count == 0) {
        assert_eq!(condition(&running, "Ready").as_deref(), Some("False"), "not ready before the probe passes");
    }
    wait_pod(&ns, "probed", Duration::from_secs(30), "Ready", |p| condition(p, "Ready").as_deref() == Some("True"))
        .await?;
    let p = wait_pod(&ns, "probed", Duration::from_secs(60), "restarted by the liveness probe", |p| {
        container(p, "main").is_some_and(|c| c.restart_count >= 1)
    })
    .await?;
    let last = container(&p, "main").and_then(|c| c.last_state).and_then(|s| s.terminated).context("lastState")?;
    assert_eq!(last.exit_code, 143, "stopped by SIGTERM");
    ns.delete().await
}

#[tokio::test]
async fn kubectl_logs_reads_the_container_log_through_the_node() -> anyhow::Result<()> {
    let ns = TestNs::new("node-logs").await?;
    create(&ns, &sh_pod("talk", "Never", "echo first; echo second; echo third")).await?;
    wait_pod(&ns, "talk", Duration::from_secs(60), "Succeeded", |p| phase(p) == "Succeeded").await?;
    let all = activity_tests::kubectl(&["-n", &ns.name, "logs", "talk"])?;
    assert_eq!(all, "first\nsecond\nthird\n");
    let tail = activity_tests::kubectl(&["-n", &ns.name, "logs", "talk", "--tail=1"])?;
    assert_eq!(tail, "third\n");
    // Following a finished container ends at once.
    let follow = activity_tests::kubectl(&["-n", &ns.name, "logs", "-f", "talk"])?;
    assert_eq!(follow, all);
    ns.delete().await
}

/// 500 sleeping pods all reach Running. Slow and heavy (about a minute and 500 processes), so it
/// is ignored by default; run it by hand:
/// `cargo test -p activity-tests --test node -- --ignored --nocapture five_hundred`.
#[tokio::test]
#[ignore]
async fn five_hundred_sleeping_pods() -> anyhow::Result<()> {
    const N: usize = 500;
    let ns = TestNs::new("node-scale").await?;
    let api = ns.api::<Pod>();
    let start = Instant::now();
    let creates = futures::stream::iter(0..N).map(|i| {
        let api = api.clone();
        async move {
            let p = sh_pod(&format!("sleep-{i}"), "Always", "sleep 3600");
            api.create(&PostParams::default(), &p).await
        }
    });
    let results: Vec<_> = creates.buffer_unordered(32).collect().await;
    for r in results {
        r?;
    }
    let created = start.elapsed();
    wait_for(Duration::from_secs(600), "500 pods Running", || async {
        let pods = api.list(&Default::default()).await?;
        let running = pods.items.iter().filter(|p| phase(p) == "Running").count();
        Ok((running == N).then_some(()))
    })
    .await?;
    let all_running = start.elapsed();
    let node_pid = std::fs::read_to_string(local_dir().join("pids/process-node.pid"))?;
    let status = std::fs::read_to_string(format!("/proc/{}/status", node_pid.trim()))?;
    let rss = status.lines().find(|l| l.starts_with("VmRSS")).unwrap_or("VmRSS: ?").to_string();
    println!("created {N} pods in {created:?}; all Running after {all_running:?}; process-node {rss}");
    let name = ns.name.clone();
    let client = ns.client.clone();
    ns.delete().await?;
    let all: kube::Api<Pod> = kube::Api::namespaced(client, &name);
    wait_for(Duration::from_secs(600), "the pods to be gone", || async {
        Ok(all.list(&Default::default()).await?.items.is_empty().then_some(()))
    })
    .await?;
    println!("all pods gone after {:?}", start.elapsed());
    Ok(())
}
