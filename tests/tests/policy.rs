//! The worker status policy (`charts/activity-operator/templates/worker-policy.yaml`, a
//! ValidatingAdmissionPolicy and its binding) against the local cluster, with a real pod-bound
//! service-account token: the process node's pods are real pods, and a TokenRequest bound to one
//! of them gives exactly the credentials its containers get.
//!
//! The policy is rendered from the chart under a release name of its own and bound to the test's
//! namespace only (`watchNamespaces`), so tests running at the same time in other namespaces never
//! see it; it is deleted at the end, whatever the outcome.

use std::time::Duration;

use activity_crds::{Activity, Phase};
use activity_tests::operator::{Operator, ensure_crd, worker_rbac};
use activity_tests::{TempFile, TestNs, helm, kubeconfig_path, kubectl, tool, wait_for};
use anyhow::{Context, bail};
use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, SelfSubjectReview, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{Value, json};

const CHART: &str = "charts/activity-operator";
const TEMPLATE: &str = "templates/worker-policy.yaml";
/// The user extra in which the API server names the pod a service-account token is bound to.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const TIMEOUT: Duration = Duration::from_secs(60);

/// The chart's worker policy template rendered for release `release` in namespace `ns`, with
/// `--set` values.
fn render(release: &str, ns: &str, sets: &[&str]) -> anyhow::Result<String> {
    let mut args = vec!["template", release, CHART, "--namespace", ns, "--show-only", TEMPLATE];
    for set in sets {
        args.extend(["--set", set]);
    }
    helm(&args)
}

/// The objects of a multi-document YAML, as JSON (through kubectl's client-side parsing).
fn objects(yaml: &str) -> anyhow::Result<Vec<Value>> {
    let file = TempFile::write("policy-objects", yaml)?;
    let json = kubectl(&["create", "--dry-run=client", "-o", "json", "-f", file.path()?])?;
    Ok(serde_json::Deserializer::from_str(&json).into_iter::<Value>().collect::<Result<_, _>>()?)
}

fn find<'a>(objects: &'a [Value], kind: &str) -> anyhow::Result<&'a Value> {
    objects.iter().find(|o| o["kind"] == kind).with_context(|| format!("no {kind} rendered"))
}

#[test]
fn the_chart_renders_the_policy_as_configured() -> anyhow::Result<()> {
    // Default: the policy and a binding for every namespace, exempting the release's operator.
    let default = objects(&render("rel", "ops", &[])?)?;
    let policy = find(&default, "ValidatingAdmissionPolicy")?;
    let binding = find(&default, "ValidatingAdmissionPolicyBinding")?;
    assert_eq!(policy["metadata"]["name"], "rel-activity-operator-worker-status");
    assert_eq!(binding["spec"]["policyName"], policy["metadata"]["name"]);
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    assert_eq!(policy["spec"]["failurePolicy"], "Fail");
    assert_eq!(binding["spec"].get("matchResources"), None, "every namespace by default");
    let rules = &policy["spec"]["matchConstraints"]["resourceRules"];
    assert_eq!(rules[0]["resources"], json!(["activities/status"]));
    assert_eq!(rules[0]["operations"], json!(["UPDATE"]));
    let conditions = policy["spec"]["matchConditions"].to_string();
    assert!(conditions.contains(POD_NAME_EXTRA), "{conditions}");
    assert!(conditions.contains("'system:serviceaccount:ops:rel-activity-operator'"), "{conditions}");

    // The operator's service account is the one the chart names.
    let custom = objects(&render("rel", "ops", &["serviceAccount.name=custom-sa"])?)?;
    let conditions = find(&custom, "ValidatingAdmissionPolicy")?["spec"]["matchConditions"].to_string();
    assert!(conditions.contains("'system:serviceaccount:ops:custom-sa'"), "{conditions}");

    // A namespaced install binds the policy to its watched namespaces; a selector wins.
    let namespaced = objects(&render("rel", "ops", &["watchNamespaces={team-a,team-b}"])?)?;
    assert_eq!(
        find(&namespaced, "ValidatingAdmissionPolicyBinding")?["spec"]["matchResources"]["namespaceSelector"],
        json!({"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}
        ]})
    );
    let selected = objects(&render(
        "rel",
        "ops",
        &["watchNamespaces={team-a}", "workerPolicy.namespaceSelector.matchLabels.workers=yes"],
    )?)?;
    assert_eq!(
        find(&selected, "ValidatingAdmissionPolicyBinding")?["spec"]["matchResources"]["namespaceSelector"],
        json!({"matchLabels": {"workers": "yes"}})
    );

    // Disabled: nothing.
    let out = tool(
        "helm",
        &[
            "template",
            "rel",
            CHART,
            "--namespace",
            "ops",
            "--set",
            "workerPolicy.enabled=false",
            "--show-only",
            TEMPLATE,
        ],
    )?;
    assert!(!out.status.success(), "the template should render nothing when disabled");
    let all = helm(&["template", "rel", CHART, "--namespace", "ops", "--set", "workerPolicy.enabled=false"])?;
    // The chart's other policy (finished-policy.yaml) is still there; this one is not.
    assert!(!all.contains("-worker-status"), "disabled, yet rendered");
    Ok(())
}

/// A heartbeat passes through the worker policy alone: the chart's other policies (the spec
/// checks, the finished-activity edits) match the main resource, never `activities/status`, and
/// the CRD has no CEL rule of its own (`activity_crds` tests that), so a status write pays for no
/// rule it does not need.
#[test]
fn only_the_worker_policy_sees_status_writes() -> anyhow::Result<()> {
    let all = objects(&helm(&["template", "rel", CHART, "--namespace", "ops"])?)?;
    let policies: Vec<&Value> = all.iter().filter(|o| o["kind"] == "ValidatingAdmissionPolicy").collect();
    let names: Vec<&str> = policies.iter().filter_map(|p| p["metadata"]["name"].as_str()).collect();
    for name in
        ["rel-activity-operator-worker-status", "rel-activity-operator-spec", "rel-activity-operator-finished-spec"]
    {
        assert!(names.contains(&name), "{name} is rendered by default: {names:?}");
    }
    for policy in &policies {
        let name = policy["metadata"]["name"].as_str().unwrap_or_default();
        let rules = policy["spec"]["matchConstraints"]["resourceRules"].as_array().context("resourceRules")?;
        let status = rules.iter().any(|r| r["resources"].to_string().contains("activities/status"));
        assert_eq!(status, name.ends_with("-worker-status"), "{name} matches activities/status: {status}");
        for rule in rules {
            assert_ne!(rule["resources"], json!(["*"]), "{name}");
            assert_ne!(rule["resources"], json!(["activities/*"]), "{name}");
        }
    }
    // The spec policy checks creates and spec updates; a disabled one is not rendered.
    let spec =
        policies.iter().find(|p| p["metadata"]["name"] == "rel-activity-operator-spec").context("spec policy")?;
    assert_eq!(spec["spec"]["matchConstraints"]["resourceRules"][0]["operations"], json!(["CREATE", "UPDATE"]));
    assert!(spec["spec"]["matchConditions"].to_string().contains("object.spec != oldObject.spec"));
    let off = helm(&["template", "rel", CHART, "--namespace", "ops", "--set", "specPolicy.enabled=false"])?;
    assert!(!off.contains("name: rel-activity-operator-spec\n"), "disabled, yet rendered");
    assert!(off.contains("rel-activity-operator-finished-spec"), "the other policies stay");
    Ok(())
}

/// The policy objects of one test, bound to its namespace; deleted on drop.
struct InstalledPolicy {
    name: String,
    file: TempFile,
}

impl InstalledPolicy {
    /// Renders the chart's policy for release `release` with `watchNamespaces={ns}` (so the binding
    /// selects `ns` only) and applies it.
    fn apply(release: &str, ns: &str) -> anyhow::Result<Self> {
        let rendered = render(release, ns, &[&format!("watchNamespaces={{{ns}}}")])?;
        let file = TempFile::write("policy", &rendered)?;
        kubectl(&["apply", "-f", file.path()?])?;
        Ok(Self { name: format!("{release}-activity-operator-worker-status"), file })
    }
}

impl Drop for InstalledPolicy {
    fn drop(&mut self) {
        if let Ok(path) = self.file.path() {
            let _ = kubectl(&["delete", "--ignore-not-found", "--wait=false", "-f", path]);
        }
    }
}

/// A token for the service account of `pod`, bound to the pod (what the kubelet, here the process
/// node, gives the pod's containers).
async fn pod_bound_token(ns: &TestNs, pod: &Pod) -> anyhow::Result<String> {
    let name = pod.metadata.name.clone().context("pod without a name")?;
    let uid = pod.metadata.uid.clone().context("pod without a uid")?;
    let sa = pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).context("pod without a service account")?;
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: None,
            expiration_seconds: Some(600),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(name),
                uid: Some(uid),
            }),
        }),
        ..Default::default()
    };
    let response: TokenRequest =
        ns.api::<ServiceAccount>().create_subresource("token", &sa, &PostParams::default(), &request).await?;
    response.status.and_then(|s| s.token).filter(|t| !t.is_empty()).context("TokenRequest returned no token")
}

/// A client of the local cluster that authenticates with `token` only (no client certificate).
async fn token_client(token: &str) -> anyhow::Result<Client> {
    let kubeconfig = Kubeconfig::read_from(kubeconfig_path())?;
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    config.auth_info = serde_json::from_value(json!({ "token": token }))?;
    Ok(Client::try_from(config)?)
}

fn shell(script: &str) -> Value {
    json!({"spec": {"containers": [{"name": "worker", "image": "busybox", "command": ["sh", "-c", script]}]}})
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// A heartbeat exactly as `activity-worker` sends it.
fn heartbeat(attempt: i32, details: Value) -> Value {
    json!([
        {"op": "test", "path": "/status/attempt", "value": attempt},
        {"op": "add", "path": "/status/lastHeartbeatTime", "value": now()},
        {"op": "add", "path": "/status/heartbeatDetails", "value": details},
    ])
}

async fn patch_status(api: &Api<Activity>, name: &str, ops: Value, dry_run: bool) -> Result<Activity, kube::Error> {
    let patch: json_patch::Patch = match serde_json::from_value(ops) {
        Ok(p) => p,
        Err(e) => return Err(kube::Error::SerdeError(e)),
    };
    let params = PatchParams { field_manager: Some("activity-worker".into()), dry_run, ..Default::default() };
    api.patch_status(name, &params, &Patch::<()>::Json(patch)).await
}

/// The API error of a refused request: (code, message); an error when the request was accepted.
fn refused(result: Result<Activity, kube::Error>, what: &str) -> anyhow::Result<(u16, String)> {
    match result {
        Ok(_) => bail!("{what} was accepted, but the policy should refuse it"),
        Err(kube::Error::Api(status)) => Ok((status.code, status.message.clone())),
        Err(e) => bail!("{what}: unexpected error {e}"),
    }
}

fn status_of(a: &Activity) -> activity_crds::ActivityStatus {
    a.status.clone().unwrap_or_default()
}

#[tokio::test]
async fn a_worker_pod_may_write_only_its_own_activitys_heartbeat_fields() -> anyhow::Result<()> {
    ensure_crd()?;
    let ns = TestNs::new("policy").await?;
    worker_rbac(&ns.name)?;
    let release = format!("pol-{:06x}", rand::random::<u32>() & 0xff_ffff);
    let policy = InstalledPolicy::apply(&release, &ns.name)?;

    // The policy's expressions type-check against the Activity schema (the API server reports
    // what does not in status.typeChecking).
    let vaps: Api<ValidatingAdmissionPolicy> = Api::all(ns.client.clone());
    let checked = wait_for(TIMEOUT, "the policy's type check", || async {
        let vap = vaps.get(&policy.name).await?;
        Ok(vap.status.filter(|s| s.observed_generation == vap.metadata.generation))
    })
    .await?;
    let warnings = checked.type_checking.and_then(|t| t.expression_warnings).unwrap_or_default();
    assert!(warnings.is_empty(), "type check warnings: {warnings:?}");

    // Two activities whose workers just sleep, run by an operator of the test's own.
    let mut op = Operator::start(&ns.name).await?;
    let acts = ns.api::<Activity>();
    for name in ["a", "b"] {
        let act: Activity = serde_json::from_value(json!({
            "apiVersion": "heartbeat.dev/v1alpha1", "kind": "Activity",
            "metadata": {"name": name},
            "spec": {"startToCloseTimeout": "10m", "template": shell("sleep 3600")},
        }))?;
        acts.create(&PostParams::default(), &act).await?;
    }
    let mut pod_names = Vec::new();
    for name in ["a", "b"] {
        let act = wait_for(TIMEOUT, &format!("activity {name} Running"), || async {
            Ok(acts.get(name).await?.status.filter(|s| s.phase == Some(Phase::Running)).and_then(|s| s.pod_name))
        })
        .await?;
        pod_names.push(act);
    }
    let (pod_a, pod_b) = (pod_names[0].clone(), pod_names[1].clone());

    // A's worker credentials: a token bound to A's pod. The API server names the pod in the
    // user's extra (what the policy matches on).
    let pod = ns.api::<Pod>().get(&pod_a).await?;
    let worker = token_client(&pod_bound_token(&ns, &pod).await?).await?;
    let review: SelfSubjectReview = Api::all(worker.clone())
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {}}))?)
        .await?;
    let user = review.status.and_then(|s| s.user_info).context("SelfSubjectReview without user info")?;
    assert_eq!(user.username.as_deref(), Some(format!("system:serviceaccount:{}:activity-worker", ns.name).as_str()));
    let extra = user.extra.unwrap_or_default();
    assert_eq!(extra.get(POD_NAME_EXTRA), Some(&vec![pod_a.clone()]), "the token's user extra: {extra:?}");
    let worker_acts: Api<Activity> = Api::namespaced(worker, &ns.name);

    // A new policy takes a moment to be enforced: poll with a dry run of a refused write.
    let wrong_pod =
        format!("worker pod {pod_a} may only write the status of the Activity whose status.podName is {pod_a}");
    wait_for(TIMEOUT, "the policy to be enforced", || async {
        match patch_status(&worker_acts, "b", heartbeat(1, json!({"probe": true})), true).await {
            Ok(_) => Ok(None),
            Err(kube::Error::Api(s)) if s.message.contains(&wrong_pod) => Ok(Some(())),
            Err(e) => bail!("unexpected error while waiting for the policy: {e}"),
        }
    })
    .await?;

    // (1) A heartbeat of its own Activity is accepted.
    let beat = patch_status(&worker_acts, "a", heartbeat(1, json!({"done": 1})), false)
        .await
        .context("A's worker heartbeating A")?;
    assert_eq!(status_of(&beat).heartbeat_details.and_then(|d| d.to_value().ok()), Some(json!({"done": 1})));

    // (2) The same heartbeat of B's Activity is refused, naming both pods.
    let (code, message) =
        refused(patch_status(&worker_acts, "b", heartbeat(1, json!({"done": 1})), false).await, "A's worker on B")?;
    assert_eq!(code, 403, "{message}");
    assert!(message.contains(&wrong_pod), "{message}");
    assert!(message.contains(&format!("(the status.podName of Activity {}/b is {pod_b})", ns.name)), "{message}");
    assert!(status_of(&acts.get("b").await?).heartbeat_details.is_none(), "B's status must be untouched");

    // (3) Operator-owned fields of its own Activity are refused, alone or mixed with a heartbeat.
    let field_message = "may only change status.lastHeartbeatTime, status.heartbeatDetails and status.outcome";
    for (field, value) in [("phase", json!("Succeeded")), ("attempt", json!(2))] {
        let ops = json!([
            {"op": "test", "path": "/status/attempt", "value": 1},
            {"op": "add", "path": "/status/heartbeatDetails", "value": {"done": 2}},
            {"op": "replace", "path": format!("/status/{field}"), "value": value},
        ]);
        let (code, message) = refused(patch_status(&worker_acts, "a", ops, false).await, &format!("status.{field}"))?;
        assert_eq!(code, 422, "{message}");
        assert!(message.contains(field_message), "{message}");
        assert!(message.contains(&format!("the operator owns status.{field}")), "{message}");
    }
    let (_, message) = refused(
        patch_status(&worker_acts, "a", json!([{"op": "remove", "path": "/status/podName"}]), false).await,
        "removing status.podName",
    )?;
    assert!(message.contains("the operator owns status.podName"), "{message}");
    let a = status_of(&acts.get("a").await?);
    assert_eq!(
        (a.phase, a.attempt, a.heartbeat_details.and_then(|d| d.to_value().ok())),
        (Some(Phase::Running), Some(1), Some(json!({"done": 1})))
    );

    // An outcome for another attempt than the one that runs (the next, say) is refused.
    let forged = json!([
        {"op": "test", "path": "/status/attempt", "value": 1},
        {"op": "add", "path": "/status/outcome", "value": {"attempt": 2, "succeeded": true, "result": "forged"}},
    ]);
    let (code, message) = refused(patch_status(&worker_acts, "a", forged, false).await, "an outcome for attempt 2")?;
    assert_eq!(code, 403, "{message}");
    assert!(message.contains("may only write the outcome of the current attempt (1)"), "{message}");

    // The outcome is the worker's too: A's worker reports success, and the operator finishes A.
    let outcome = json!([
        {"op": "test", "path": "/status/attempt", "value": 1},
        {"op": "add", "path": "/status/outcome", "value": {"attempt": 1, "succeeded": true, "result": {"ok": true}}},
    ]);
    patch_status(&worker_acts, "a", outcome, false).await.context("A's worker reporting A's outcome")?;
    let done = wait_for(TIMEOUT, "activity a Succeeded", || async {
        Ok(acts.get("a").await?.status.filter(|s| s.phase == Some(Phase::Succeeded)))
    })
    .await?;
    assert_eq!(done.result.and_then(|d| d.to_value().ok()), Some(json!({"ok": true})));

    // (4) Credentials that are not pod-bound (here the admin's) are not affected: the exact write
    // refused to the worker above goes through. The operator is stopped first so it does not
    // fight over B's status, and B's finalizer is released by hand so the namespace can go.
    op.kill();
    let ops = json!([
        {"op": "test", "path": "/status/attempt", "value": 1},
        {"op": "add", "path": "/status/heartbeatDetails", "value": {"by": "admin"}},
        {"op": "replace", "path": "/status/phase", "value": "Canceled"},
    ]);
    let b = patch_status(&acts, "b", ops, false).await.context("the admin writing B's phase")?;
    assert_eq!(status_of(&b).phase, Some(Phase::Canceled));
    assert_eq!(status_of(&b).heartbeat_details.and_then(|d| d.to_value().ok()), Some(json!({"by": "admin"})));
    let release_finalizers = json!({"metadata": {"finalizers": null}});
    for name in ["a", "b"] {
        acts.patch(name, &PatchParams::default(), &Patch::Merge(&release_finalizers)).await?;
    }

    drop(policy);
    ns.delete().await
}
