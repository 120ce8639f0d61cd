//! The Helm chart (charts/activity-operator) and the plain manifests rendered from it
//! (deploy/manifests/activity-operator.yaml): lint, schema, API server acceptance, drift, and a
//! real install on the local cluster (two replicas, leader election and failover, an Activity run
//! by the installed operator, upgrade, RBAC boundaries, uninstall).
//!
//! Every install here is namespaced (watchNamespaces = a fresh namespace): other tests run their
//! own operators in their own namespaces at the same time, and a cluster-wide operator would run
//! their Activities too.

use std::process::Command;
use std::time::{Duration, Instant};

use activity_crds::Phase;
use activity_tests::operator::ensure_crd;
use activity_tests::{TempFile, TestNs, bin_dir, client, helm, kubectl, repo_root, tool, wait_for, wait_phase};
use anyhow::{Context, bail};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PostParams};
use serde_json::{Value, json};

const CHART: &str = "charts/activity-operator";
const MANIFESTS: &str = "deploy/manifests/activity-operator.yaml";
const WORKER_IMAGE: &str = "ghcr.io/heartbeat-dev/activity-worker:0.1.0";

/// Runs `helm ARGS` that must fail; returns its stderr.
fn helm_fails(args: &[&str]) -> anyhow::Result<String> {
    let out = tool("helm", args)?;
    if out.status.success() {
        bail!("helm {} succeeded but should have failed", args.join(" "));
    }
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `kubectl auth can-i VERB RESOURCE --as=USER ...`: true for "yes" (kubectl exits 1 for "no").
fn can_i(user: &str, args: &[&str]) -> anyhow::Result<bool> {
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    let as_user = format!("--as={user}");
    all.push(&as_user);
    let out = tool("kubectl", &all)?;
    match String::from_utf8_lossy(&out.stdout).trim() {
        "yes" => Ok(true),
        "no" => Ok(false),
        other => bail!("kubectl {}: {other:?} {}", all.join(" "), String::from_utf8_lossy(&out.stderr)),
    }
}

/// The `version = "…"` of `[workspace.package]` in the root Cargo.toml.
fn workspace_version() -> anyhow::Result<String> {
    let cargo = std::fs::read_to_string(repo_root().join("Cargo.toml"))?;
    let mut in_package = false;
    for line in cargo.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[workspace.package]";
        } else if in_package && let Some(v) = line.strip_prefix("version") {
            let v = v.trim_start().trim_start_matches('=').trim().trim_matches('"');
            return Ok(v.to_string());
        }
    }
    bail!("no version in [workspace.package] of Cargo.toml")
}

/// A top-level `key: value` of Chart.yaml, unquoted.
fn chart_field(key: &str) -> anyhow::Result<String> {
    let chart = std::fs::read_to_string(repo_root().join(CHART).join("Chart.yaml"))?;
    chart
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().trim_matches('"').to_string())
        .with_context(|| format!("no {key} in Chart.yaml"))
}

#[test]
fn chart_version_is_the_workspace_version() -> anyhow::Result<()> {
    let version = workspace_version()?;
    assert_eq!(chart_field("version")?, version, "Chart.yaml version must be the workspace crate version");
    assert_eq!(chart_field("appVersion")?, version, "Chart.yaml appVersion must be the workspace crate version");
    Ok(())
}

#[test]
fn chart_crd_is_the_generated_crd() -> anyhow::Result<()> {
    let root = repo_root();
    let generated = std::fs::read_to_string(root.join("crds/activity.yaml"))?;
    let copy = std::fs::read_to_string(root.join(CHART).join("crds/activity.yaml"))?;
    assert!(copy == generated, "{CHART}/crds/activity.yaml differs from crds/activity.yaml: copy it over");
    Ok(())
}

#[test]
fn helm_lint_passes() -> anyhow::Result<()> {
    helm(&["lint", "--strict", CHART])?;
    helm(&[
        "lint",
        "--strict",
        CHART,
        "--set",
        "watchNamespaces={team-a,team-b}",
        "--set",
        "workerNamespaces={team-a,team-b}",
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "logFormat=json",
    ])?;
    Ok(())
}

#[test]
fn bad_values_fail_with_a_message_that_names_them() -> anyhow::Result<()> {
    let cases: &[(&str, &str)] = &[
        ("logFormat=xml", "logFormat"),
        ("concurrency=0", "concurrency"),
        ("watchNamespaces[0]=Not_A_Namespace", "watchNamespaces"),
        ("workerNamespaces[0]=", "workerNamespaces"),
        ("leaderElection.leaseDurationSeconds=1", "leaseDurationSeconds"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("logLevl=debug", "logLevl"),
        ("leaderElection.enabled=false", "leaderElection.enabled"),
        ("workerPolicy.enabled=maybe", "workerPolicy"),
        ("specPolicy.enabled=yes", "specPolicy"),
        ("workerPolicy.namespaceSelector.matchLabel.a=b", "matchLabel"),
    ];
    for (set, named) in cases {
        let err = helm_fails(&["install", "bad", CHART, "--dry-run=client", "--namespace", "bad", "--set", set])?;
        assert!(err.contains(named), "--set {set}: the error should name {named}: {err}");
    }
    // One replica without leader election is fine.
    helm(&["template", "ok", CHART, "--set", "leaderElection.enabled=false", "--set", "replicaCount=1"])?;
    Ok(())
}

#[test]
fn manifests_are_rendered_from_the_chart() -> anyhow::Result<()> {
    let root = repo_root();
    let out = Command::new("bash")
        .arg(root.join("deploy/render-manifests.sh"))
        .arg("--stdout")
        .env("HELM", bin_dir()?.join("helm"))
        .current_dir(&root)
        .output()?;
    if !out.status.success() {
        bail!("deploy/render-manifests.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let rendered = String::from_utf8(out.stdout)?;
    let committed = std::fs::read_to_string(root.join(MANIFESTS))?;
    assert!(rendered == committed, "{MANIFESTS} is out of date: run deploy/render-manifests.sh");
    for kind in [
        "Namespace",
        "CustomResourceDefinition",
        "Deployment",
        "ClusterRole",
        "Lease",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ] {
        assert!(committed.contains(&format!("\nkind: {kind}\n")), "{MANIFESTS} has no {kind}");
    }
    Ok(())
}

/// The objects of a YAML file as JSON (kubectl's client-side parsing).
fn objects(file: &str) -> anyhow::Result<Vec<Value>> {
    let json = kubectl(&["create", "--dry-run=client", "-o", "json", "-f", file])?;
    Ok(serde_json::Deserializer::from_str(&json).into_iter::<Value>().collect::<Result<_, _>>()?)
}

/// The rules of the one Role in `objects`.
fn role_rules(objects: &[Value]) -> anyhow::Result<Value> {
    let roles: Vec<&Value> = objects.iter().filter(|o| o["kind"] == "Role").collect();
    match roles.as_slice() {
        [role] => Ok(role["rules"].clone()),
        _ => bail!("expected one Role, found {}", roles.len()),
    }
}

#[test]
fn worker_role_is_the_worker_images_role() -> anyhow::Result<()> {
    let reference = objects("worker-image/rbac/worker-role.yaml")?;
    let rendered = helm(&["template", "w", CHART, "--namespace", "ops", "--show-only", "templates/worker-rbac.yaml"])?;
    let file = TempFile::write("chart-worker-rbac", &rendered)?;
    let chart = objects(file.path()?)?;
    assert_eq!(role_rules(&chart)?, role_rules(&reference)?, "the chart's worker Role must mirror worker-role.yaml");
    let kinds =
        |objs: &[Value]| objs.iter().map(|o| (o["kind"].clone(), o["metadata"]["name"].clone())).collect::<Vec<_>>();
    assert_eq!(kinds(&chart), kinds(&reference), "the same objects, with the same names");
    let binding = chart.iter().find(|o| o["kind"] == "RoleBinding").context("no RoleBinding")?;
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "activity-worker", "namespace": "default"}])
    );
    Ok(())
}

#[tokio::test]
async fn rendered_chart_is_accepted_by_the_api_server() -> anyhow::Result<()> {
    ensure_crd()?;
    let ns = TestNs::new("chart-dry").await?;
    // Default values (cluster-wide RBAC, workers in `default`) and a namespaced variant, each
    // checked by the API server (schema, admission) without creating anything.
    let variants: [Vec<String>; 2] = [
        vec![],
        vec![
            "--set".into(),
            format!("watchNamespaces={{{}}}", ns.name),
            "--set".into(),
            format!("workerNamespaces={{{}}}", ns.name),
            "--set".into(),
            "logFormat=json".into(),
        ],
    ];
    for extra in variants {
        let mut args = vec!["template", "dry", CHART, "--namespace", &ns.name, "--include-crds"];
        args.extend(extra.iter().map(String::as_str));
        let rendered = helm(&args)?;
        let file = TempFile::write("chart-dry", &rendered)?;
        let out = kubectl(&["apply", "--dry-run=server", "-f", file.path()?])?;
        for object in [
            "deployment.apps/dry-activity-operator",
            "serviceaccount/activity-worker",
            "lease.coordination",
            // The API server compiles the policies' CEL: an error fails the dry run.
            "validatingadmissionpolicy.admissionregistration.k8s.io/dry-activity-operator-worker-status",
            "validatingadmissionpolicybinding.admissionregistration.k8s.io/dry-activity-operator-worker-status",
            "validatingadmissionpolicy.admissionregistration.k8s.io/dry-activity-operator-spec",
            "validatingadmissionpolicybinding.admissionregistration.k8s.io/dry-activity-operator-spec",
            "validatingadmissionpolicy.admissionregistration.k8s.io/dry-activity-operator-finished-spec",
        ] {
            assert!(out.contains(object), "dry run output lacks {object}: {out}");
        }
    }
    ns.delete().await
}

fn activities(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("heartbeat.dev", "v1alpha1", "Activity");
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk_with_plural(&gvk, "activities"))
}

/// An Activity running `activity-worker exec -- sh -c SCRIPT`, one attempt only (so any failure
/// is final and visible).
async fn create_activity(api: &Api<DynamicObject>, name: &str, script: &str) -> anyhow::Result<()> {
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "heartbeat.dev/v1alpha1",
        "kind": "Activity",
        "metadata": {"name": name},
        "spec": {
            "startToCloseTimeout": "3m",
            "heartbeatTimeout": "20s",
            "retryPolicy": {"maximumAttempts": 1},
            "template": {"spec": {"containers": [{
                "name": "worker",
                "image": WORKER_IMAGE,
                "args": ["exec", "--", "sh", "-c", script],
            }]}},
        },
    }))?;
    api.create(&PostParams::default(), &obj).await?;
    Ok(())
}

fn status(obj: &DynamicObject) -> &Value {
    &obj.data["status"]
}

fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_args(pod: &Pod) -> Vec<String> {
    pod.spec.as_ref().and_then(|s| s.containers.first()).and_then(|c| c.args.clone()).unwrap_or_default()
}

/// One helm release of the chart in a namespace of its own, watching a second namespace.
struct Release {
    name: String,
    fullname: String,
    ns: TestNs,
    watched: TestNs,
    client: kube::Client,
}

impl Release {
    fn selector(&self) -> String {
        format!("app.kubernetes.io/instance={}", self.name)
    }

    /// The operator's pods (terminating ones included).
    async fn pods(&self) -> anyhow::Result<Vec<Pod>> {
        let api: Api<Pod> = self.ns.api();
        Ok(api.list(&ListParams::default().labels(&self.selector())).await?.items)
    }

    async fn ready_pods(&self) -> anyhow::Result<Vec<String>> {
        Ok(self.pods().await?.iter().filter(|p| is_ready(p)).filter_map(|p| p.metadata.name.clone()).collect())
    }

    async fn holder(&self) -> anyhow::Result<Option<String>> {
        let leases: Api<Lease> = self.ns.api();
        Ok(leases.get(&self.fullname).await?.spec.and_then(|s| s.holder_identity))
    }

    /// Waits until the release has exactly two pods, both Ready (none terminating) and satisfying
    /// `accept`, and one of them holds the Lease; returns (leader, pods).
    async fn wait_leader(
        &self,
        timeout: Duration,
        what: &str,
        accept: impl Fn(&Pod) -> bool,
    ) -> anyhow::Result<(String, Vec<String>)> {
        wait_for(timeout, what, || async {
            let pods = self.pods().await?;
            if pods.len() != 2 || !pods.iter().all(|p| is_ready(p) && accept(p)) {
                return Ok(None);
            }
            let names: Vec<String> = pods.iter().filter_map(|p| p.metadata.name.clone()).collect();
            Ok(self.holder().await?.filter(|h| names.contains(h)).map(|h| (h, names)))
        })
        .await
    }

    fn operator_user(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.ns.name, self.fullname)
    }
}

/// Install with two replicas, an Activity run by the installed operator, leader failover with an
/// activity in flight, upgrade, what the service accounts may and may not do, uninstall.
#[tokio::test]
async fn install_failover_upgrade_uninstall() -> anyhow::Result<()> {
    ensure_crd()?;
    let ns = TestNs::new("chart-op").await?;
    let watched = TestNs::new("chart-acts").await?;
    // The operator's pods must meet the restricted Pod Security Standard.
    kubectl(&["label", "namespace", &ns.name, "pod-security.kubernetes.io/enforce=restricted"])?;
    let name = format!("op-{:06x}", rand::random::<u32>() & 0xff_ffff);
    let release = Release { fullname: format!("{name}-activity-operator"), name, client: client().await?, ns, watched };
    let rel = &release.name;
    let relns = release.ns.name.clone();
    let watched_ns = release.watched.name.clone();

    // Install: both replicas Ready, one of them the leader.
    helm(&[
        "install",
        rel,
        CHART,
        "--namespace",
        &relns,
        "--set",
        &format!("watchNamespaces={{{watched_ns}}}"),
        "--set",
        &format!("workerNamespaces={{{watched_ns}}}"),
        "--wait",
        "--timeout",
        "3m",
    ])?;
    let (leader, pods) =
        release.wait_leader(Duration::from_secs(120), "two Ready replicas, one leading", |_| true).await?;
    eprintln!("installed {rel}: pods {pods:?}, leader {leader}");
    // The worker status policy is on (bound to the watched namespace): the operator in its pod
    // (a pod-bound token, exempt by name) and the workers below (their own Activity) pass it.
    let policy = format!("validatingadmissionpolicybinding/{}-worker-status", release.fullname);
    let bound = kubectl(&["get", &policy, "-o", "jsonpath={.spec.matchResources.namespaceSelector}"])?;
    assert!(bound.contains(&watched_ns), "{policy} should select {watched_ns}: {bound}");

    // An example Activity in the watched namespace, run by the leader.
    let acts = activities(&release.client, &watched_ns);
    create_activity(&acts, "hello", r#"echo '::result {"ok":true}'"#).await?;
    let done = wait_phase(&acts, "hello", Phase::Succeeded, Duration::from_secs(90)).await?;
    assert_eq!(status(&done)["result"], json!({"ok": true}));
    assert_eq!(status(&done)["attempt"], json!(1));
    let events: Api<Event> = release.watched.api();
    let reporters: Vec<String> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("hello"))
        .filter_map(|e| e.reporting_instance)
        .collect();
    assert!(!reporters.is_empty(), "the operator recorded no events on the activity");
    let lease = Api::<Lease>::namespaced(release.client.clone(), &relns).get(&release.fullname).await?.spec;
    let (holder, transitions) = lease.map(|s| (s.holder_identity, s.lease_transitions)).unwrap_or_default();
    assert!(
        reporters.iter().all(|r| *r == leader),
        "only the leader {leader} acts; events came from {reporters:?} (the lease is held by {holder:?} now, \
         {transitions:?} transitions)"
    );

    // Failover: an activity in flight (heartbeating for 20 s), then the leader's pod is deleted.
    let script = r#"i=0; while [ $i -lt 20 ]; do sleep 1; i=$((i+1)); echo "::heartbeat {\"i\":$i}"; done; echo "::result {\"ok\":true,\"beats\":$i}""#;
    create_activity(&acts, "inflight", script).await?;
    wait_phase(&acts, "inflight", Phase::Running, Duration::from_secs(60)).await?;
    let pods_api: Api<Pod> = release.ns.api();
    let killed = Instant::now();
    pods_api.delete(&leader, &DeleteParams::default()).await?;
    let new_leader = wait_for(Duration::from_secs(180), "a new leader", || async {
        let holder = release.holder().await?;
        let ready = release.ready_pods().await?;
        Ok(holder.filter(|h| *h != leader && ready.contains(h)))
    })
    .await?;
    let failover = killed.elapsed();
    eprintln!(
        "leader failover: {:.1}s from deleting pod {leader} (default grace period) to {new_leader} holding Lease {}/{}",
        failover.as_secs_f64(),
        relns,
        release.fullname
    );
    let done = wait_phase(&acts, "inflight", Phase::Succeeded, Duration::from_secs(120)).await?;
    assert_eq!(status(&done)["result"], json!({"ok": true, "beats": 20}));
    assert_eq!(status(&done)["attempt"], json!(1), "the failover must not start a second attempt");
    assert_eq!(status(&done)["heartbeatDetails"], json!({"i": 20}));
    let worker_pods: Api<Pod> = release.watched.api();
    let attempts: Vec<String> = worker_pods
        .list(&ListParams::default().labels("heartbeat.dev/activity=inflight"))
        .await?
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(attempts, vec!["inflight-1".to_string()], "exactly one worker pod");

    // Upgrade with a changed value: a clean rollout to pods with the new flag, one of them leading.
    helm(&[
        "upgrade",
        rel,
        CHART,
        "--namespace",
        &relns,
        "--reuse-values",
        "--set",
        "logLevel=debug",
        "--wait",
        "--timeout",
        "3m",
    ])?;
    kubectl(&["rollout", "status", "-n", &relns, &format!("deployment/{}", release.fullname), "--timeout=180s"])?;
    let (leader, pods) = release
        .wait_leader(Duration::from_secs(180), "two upgraded Ready replicas, one leading", |p| {
            pod_args(p).iter().any(|a| a == "--log-level=debug")
        })
        .await?;
    eprintln!("upgraded {rel}: pods {pods:?}, leader {leader}");
    create_activity(&acts, "after-upgrade", r#"echo '::result {"upgraded":true}'"#).await?;
    let done = wait_phase(&acts, "after-upgrade", Phase::Succeeded, Duration::from_secs(90)).await?;
    assert_eq!(status(&done)["result"], json!({"upgraded": true}));

    // RBAC: what the chart granted, and nothing else.
    let op = release.operator_user();
    let worker = format!("system:serviceaccount:{watched_ns}:activity-worker");
    let lease = format!("leases/{}", release.fullname);
    for (user, args, want) in [
        (&op, vec!["create", "pods", "-n", &watched_ns], true),
        (&op, vec!["delete", "pods", "-n", &watched_ns], true),
        (&op, vec!["watch", "activities.heartbeat.dev", "-n", &watched_ns], true),
        (&op, vec!["patch", "activities.heartbeat.dev", "--subresource=status", "-n", &watched_ns], true),
        (&op, vec!["create", "events.events.k8s.io", "-n", &watched_ns], true),
        (&op, vec!["patch", &lease, "-n", &relns], true),
        (&op, vec!["get", "secrets", "-n", &relns], false),
        (&op, vec!["get", "secrets", "-n", &watched_ns], false),
        (&op, vec!["list", "secrets", "--all-namespaces"], false),
        (&op, vec!["create", "pods", "-n", "default"], false),
        (&op, vec!["list", "activities.heartbeat.dev", "--all-namespaces"], false),
        (&op, vec!["update", "activities.heartbeat.dev", "-n", &watched_ns], false),
        (&op, vec!["create", "pods", "--subresource=exec", "-n", &watched_ns], false),
        (&op, vec!["create", "leases", "-n", &relns], false),
        (&op, vec!["update", &lease, "-n", &relns], false),
        (&op, vec!["delete", &lease, "-n", &relns], false),
        (&op, vec!["*", "*", "-n", &watched_ns], false),
        (&worker, vec!["get", "activities.heartbeat.dev", "-n", &watched_ns], true),
        (&worker, vec!["patch", "activities.heartbeat.dev", "--subresource=status", "-n", &watched_ns], true),
        (&worker, vec!["patch", "activities.heartbeat.dev", "-n", &watched_ns], false),
        (&worker, vec!["list", "activities.heartbeat.dev", "-n", &watched_ns], false),
        (&worker, vec!["create", "pods", "-n", &watched_ns], false),
        (&worker, vec!["get", "secrets", "-n", &watched_ns], false),
    ] {
        assert_eq!(can_i(user, &args)?, want, "kubectl auth can-i {} --as={user}", args.join(" "));
    }

    // Uninstall: every object of the release goes, the CRD stays. Activities are removed first,
    // while the operator still runs (a finalizer on a leftover would block the namespace deletion).
    for act in ["hello", "inflight", "after-upgrade"] {
        acts.delete(act, &DeleteParams::default()).await?;
    }
    wait_for(Duration::from_secs(60), "activities deleted", || async {
        Ok(acts.list(&ListParams::default()).await?.items.is_empty().then_some(()))
    })
    .await?;
    helm(&["uninstall", rel, "--namespace", &relns, "--wait", "--timeout", "3m"])?;
    let selector = release.selector();
    let kinds = "deployments,replicasets,pods,services,serviceaccounts,roles,rolebindings,leases,poddisruptionbudgets";
    const CLUSTER_KINDS: &str =
        "clusterroles,clusterrolebindings,validatingadmissionpolicies,validatingadmissionpolicybindings";
    wait_for(Duration::from_secs(120), "every object of the release deleted", || async {
        let left = kubectl(&["get", kinds, "-n", &relns, "-l", &selector, "-o", "name"])?
            + &kubectl(&["get", kinds, "-n", &watched_ns, "-l", &selector, "-o", "name"])?
            + &kubectl(&["get", CLUSTER_KINDS, "-l", &selector, "-o", "name"])?;
        Ok(left.trim().is_empty().then_some(()))
    })
    .await?;
    // Nothing of the operator's kept running either: no pod and no lease in the release namespace.
    assert_eq!(kubectl(&["get", "pods,leases", "-n", &relns, "-o", "name"])?.trim(), "");
    assert!(helm(&["list", "--namespace", &relns, "--short"])?.trim().is_empty());
    kubectl(&["get", "crd", "activities.heartbeat.dev"])?;

    let Release { ns, watched, .. } = release;
    watched.delete().await?;
    ns.delete().await
}
