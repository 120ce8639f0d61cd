//! What the API server refuses at `kubectl apply` time, naming the field: a pod template that is no
//! pod template (the CRD carries Kubernetes' own PodTemplateSpec schema), durations and timeouts
//! that cannot run (the chart's spec policy; the CRD itself has no CEL rule, and without the policy
//! the operator fails such an Activity) and spec changes that a finished or canceled Activity would
//! ignore (the chart's finished-spec policy). Also how the Activity reads in `kubectl get -o wide`
//! and `kubectl explain`.

use std::time::Duration;

use activity_crds::{Activity, Phase};
use activity_tests::operator::{Operator, ensure_crd, worker_rbac};
use activity_tests::{TempFile, TestNs, kubectl, tool, wait_for, wait_phase};
use anyhow::{Context, bail};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// The local cluster's version: `helm template` checks the chart's `kubeVersion` against it.
const KUBE_VERSION: &str = "1.36.3";

fn shell(script: &str) -> Value {
    json!({"spec": {"containers": [{"name": "w", "image": "busybox", "command": ["sh", "-c", script]}]}})
}

/// `kubectl apply --dry-run=server` of an Activity with `spec`: the API server's error, or None
/// when it accepts it.
fn refusal(ns: &str, name: &str, spec: &Value) -> anyhow::Result<Option<String>> {
    let manifest = json!({"apiVersion": "heartbeat.dev/v1alpha1", "kind": "Activity",
                          "metadata": {"name": name, "namespace": ns}, "spec": spec});
    let file = TempFile::write("spec-case", &manifest.to_string())?;
    let out = tool("kubectl", &["apply", "--dry-run=server", "-f", file.path()?])?;
    Ok((!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned()))
}

#[tokio::test]
async fn a_template_that_is_no_pod_template_is_refused_at_apply_naming_the_field() -> anyhow::Result<()> {
    ensure_crd()?;
    let ns = TestNs::new("spec-tpl").await?;
    let container = |extra: Value| {
        let mut c = json!({"name": "w", "image": "busybox", "command": ["sh", "-c", "true"]});
        if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(extra.clone());
        }
        json!({"startToCloseTimeout": "1m", "template": {"spec": {"containers": [c]}}})
    };
    let cases = [
        // A typo: without the schema `comand` was dropped and busybox ran its default shell.
        (
            container(json!({"comand": ["sh", "-c", "exit 1"]})),
            "unknown field \"spec.template.spec.containers[0].comand\"",
        ),
        (
            container(json!({"resources": {"limits": {"memory": "lots"}}})),
            "spec.template.spec.containers[0].resources.limits.memory",
        ),
        (container(json!({"command": "sleep"})), "spec.template.spec.containers[0].command"),
        (
            json!({"startToCloseTimeout": "1m", "template": {"spec": {"containers": [{"name": "w", "image": "x"}], "restartPolicy": 7}}}),
            "spec.template.spec.restartPolicy",
        ),
    ];
    for (i, (spec, field)) in cases.iter().enumerate() {
        let err = refusal(&ns.name, &format!("bad-{i}"), spec)?.with_context(|| format!("case {i} was accepted"))?;
        assert!(err.contains(field), "case {i}: the message names {field}: {err}");
    }
    // What the schema must keep accepting: quantities as numbers or strings, int-or-string ports.
    let fine = container(json!({
        "resources": {"limits": {"cpu": 1, "memory": "64Mi"}, "requests": {"cpu": "100m"}},
        "ports": [{"containerPort": 8080}],
        "readinessProbe": {"httpGet": {"port": "http", "path": "/"}},
    }));
    assert_eq!(refusal(&ns.name, "fine", &fine)?, None, "a well-formed template is accepted");

    // Server-side apply (the template is one atomic value to field management) refuses the typo
    // too, and applies a template and a changed template of its own.
    let typo = container(json!({"comand": ["sh"]}));
    let err = server_side_apply(&ns.name, "ssa", &typo, &["--dry-run=server"])?.context("comand accepted")?;
    assert!(err.contains(".spec.template.spec.containers[0].comand"), "{err}");
    assert_eq!(server_side_apply(&ns.name, "ssa", &fine, &[])?, None);
    let changed = container(json!({"env": [{"name": "MODE", "value": "fast"}]}));
    assert_eq!(server_side_apply(&ns.name, "ssa", &changed, &[])?, None, "the same manager changes the template");
    let acts: Api<Activity> = ns.api();
    let template = acts.get("ssa").await?.spec.template.parse()?;
    let env = template.spec.context("spec")?.containers[0].env.clone().unwrap_or_default();
    assert_eq!(env.len(), 1, "the applied template replaced the previous one: {env:?}");
    ns.delete().await
}

/// `kubectl apply --server-side` of an Activity with `spec` (and `extra` flags): the API server's
/// error, or None when it accepts it.
fn server_side_apply(ns: &str, name: &str, spec: &Value, extra: &[&str]) -> anyhow::Result<Option<String>> {
    let manifest = json!({"apiVersion": "heartbeat.dev/v1alpha1", "kind": "Activity",
                          "metadata": {"name": name, "namespace": ns}, "spec": spec});
    let file = TempFile::write("spec-ssa", &manifest.to_string())?;
    let mut args = vec!["apply", "--server-side", "--field-manager=spec-test", "-f", file.path()?];
    args.extend(extra);
    let out = tool("kubectl", &args)?;
    Ok((!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned()))
}

#[test]
fn kubectl_explain_documents_the_pod_template() -> anyhow::Result<()> {
    ensure_crd()?;
    let command = kubectl(&["explain", "activity.spec.template.spec.containers.command"])?;
    assert!(command.contains("FIELD: command <[]string>"), "{command}");
    assert!(command.contains("Entrypoint array"), "the field's description: {command}");
    let spec = kubectl(&["explain", "activity.spec.template.spec"])?;
    for field in ["containers", "volumes", "nodeSelector", "serviceAccountName"] {
        assert!(spec.contains(field), "explain lists {field}: {spec}");
    }
    Ok(())
}

/// One of the chart's policies (`templates/<file>`) rendered for a release of its own, bound to `ns`
/// only (so tests in other namespaces never see it), deleted when dropped.
struct ChartPolicy(TempFile);

impl ChartPolicy {
    fn install(ns: &str, file: &str) -> anyhow::Result<Self> {
        let release = format!("{}-{ns}", &file[..2]);
        let template = format!("templates/{file}");
        let out = tool(
            "helm",
            &[
                "template",
                &release,
                "charts/activity-operator",
                "--show-only",
                &template,
                "--kube-version",
                KUBE_VERSION,
                "--set",
                &format!("watchNamespaces={{{ns}}}"),
            ],
        )?;
        if !out.status.success() {
            bail!("helm template: {}", String::from_utf8_lossy(&out.stderr));
        }
        let file = TempFile::write("chart-policy", &String::from_utf8_lossy(&out.stdout))?;
        kubectl(&["apply", "-f", file.path()?])?;
        Ok(Self(file))
    }
}

impl Drop for ChartPolicy {
    fn drop(&mut self) {
        if let Ok(path) = self.0.path() {
            let _ = kubectl(&["delete", "--ignore-not-found", "-f", path]);
        }
    }
}

#[tokio::test]
async fn durations_and_timeouts_that_cannot_run_are_refused_at_apply_by_the_spec_policy() -> anyhow::Result<()> {
    ensure_crd()?;
    let ns = TestNs::new("spec-pol").await?;
    let _policy = ChartPolicy::install(&ns.name, "spec-policy.yaml")?;
    let timeouts = |extra: Value| {
        let mut spec = json!({"template": shell("true")});
        if let (Some(s), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(extra.clone());
        }
        spec
    };
    // The policy takes a moment to reach the API server's admission.
    let probe = timeouts(json!({"startToCloseTimeout": "87601h"}));
    wait_for(Duration::from_secs(30), "the spec policy enforced", || async {
        Ok(refusal(&ns.name, "probe", &probe)?.map(|_| ()))
    })
    .await?;
    let cases = [
        (json!({"startToCloseTimeout": "87601h"}), vec!["spec.startToCloseTimeout (87601h)", "87600h"]),
        (
            json!({"startToCloseTimeout": "1m", "startDelay": "9999999h", "retryPolicy": {"maximumInterval": "100000h"}}),
            vec!["spec.startDelay (9999999h)", "spec.retryPolicy.maximumInterval (100000h)", "87600h"],
        ),
        (
            json!({"startToCloseTimeout": "1m", "retryPolicy": {"initialInterval": "10s", "maximumInterval": "1s"}}),
            vec!["spec.retryPolicy.maximumInterval (1s) must be at least spec.retryPolicy.initialInterval (10s)"],
        ),
        (
            json!({"startToCloseTimeout": "1m", "retryPolicy": {"maximumInterval": "500ms"}}),
            vec!["spec.retryPolicy.maximumInterval (500ms)", "initialInterval (1s, its default)"],
        ),
        (
            json!({"startToCloseTimeout": "1m", "retryPolicy": {"initialInterval": "0s"}}),
            vec!["spec.retryPolicy.initialInterval must be greater than 0s"],
        ),
        (
            json!({"startToCloseTimeout": "1m", "heartbeatTimeout": "2m"}),
            vec!["spec.heartbeatTimeout (2m) must be at most spec.startToCloseTimeout (1m)"],
        ),
        (
            json!({"startToCloseTimeout": "0s", "scheduleToCloseTimeout": "1m", "heartbeatTimeout": "2m"}),
            vec!["spec.heartbeatTimeout (2m) must be at most spec.scheduleToCloseTimeout (1m)"],
        ),
        (json!({}), vec!["at least one of spec.startToCloseTimeout and spec.scheduleToCloseTimeout"]),
        (json!({"startToCloseTimeout": "0s"}), vec!["spec.startToCloseTimeout", "greater than 0s"]),
        // The grammar is the CRD's own schema, policy or not.
        (json!({"startToCloseTimeout": "5min"}), vec!["spec.startToCloseTimeout", "should match"]),
    ];
    for (i, (extra, says)) in cases.iter().enumerate() {
        let err = refusal(&ns.name, &format!("bad-{i}"), &timeouts(extra.clone()))?
            .with_context(|| format!("case {i} ({extra}) was accepted"))?;
        for s in says {
            assert!(err.contains(s), "case {i} ({extra}): the message says {s:?}: {err}");
        }
    }
    let fine = timeouts(json!({"scheduleToCloseTimeout": "87600h", "startToCloseTimeout": "0s",
        "heartbeatTimeout": "0", "retryPolicy": {"maximumInterval": "1s"}}));
    assert_eq!(refusal(&ns.name, "fine", &fine)?, None, "the limits themselves are accepted");

    // A spec update is checked as a create is; an update that leaves the spec alone is not.
    let acts: Api<Activity> = ns.api();
    let a: Activity = serde_json::from_value(
        json!({"metadata": {"name": "live"}, "spec": timeouts(json!({"startToCloseTimeout": "1m"}))}),
    )?;
    acts.create(&PostParams::default(), &a).await?;
    let edit = spec_refusal(&acts, "live", json!({"heartbeatTimeout": "5m"})).await.context("edit accepted")?;
    assert!(edit.contains("spec.heartbeatTimeout (5m) must be at most spec.startToCloseTimeout (1m)"), "{edit}");
    let labels = json!({"metadata": {"labels": {"team": "data"}}});
    acts.patch("live", &PatchParams::default(), &Patch::Merge(&labels)).await?;
    ns.delete().await
}

/// The CRD alone (no spec policy bound here) checks types and the grammar but no rule between or on
/// values; the operator then fails the Activity, naming the field.
#[tokio::test]
async fn without_the_spec_policy_the_operator_fails_what_it_would_have_refused() -> anyhow::Result<()> {
    ensure_crd()?;
    let ns = TestNs::new("spec-nopol").await?;
    worker_rbac(&ns.name)?;
    let acts: Api<Activity> = ns.api();
    let a: Activity = serde_json::from_value(json!({"metadata": {"name": "long"},
        "spec": {"startToCloseTimeout": "1m", "startDelay": "87601h", "template": shell("true")}}))?;
    acts.create(&PostParams::default(), &a).await.context("the CRD alone has no 87600h bound")?;
    let status = json!({"status": {"attempt": 1, "outcome": {"attempt": 1, "succeeded": false,
        "failure": {"type": "X", "nextRetryDelay": "87601h"}}}});
    acts.patch_status("long", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .context("no rule on the status: a heartbeat pays for none")?;
    let op = Operator::start(&ns.name).await?;
    let failed = wait_phase(&acts, "long", Phase::Failed, Duration::from_secs(60)).await?;
    let failure = failed.status.and_then(|s| s.last_failure).context("a failure")?;
    assert_eq!(failure.type_, "InvalidSpec");
    assert!(failure.message.starts_with("spec.startDelay: 87601h is longer than 87600h"), "{}", failure.message);
    drop(op);
    ns.delete().await
}

async fn set_phase(acts: &Api<Activity>, name: &str, phase: &str) -> anyhow::Result<()> {
    let patch = json!({"status": {"phase": phase}});
    acts.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// The error of a merge patch of `name`'s spec, or None when the API server accepts it.
async fn spec_refusal(acts: &Api<Activity>, name: &str, spec: Value) -> Option<String> {
    let patch = json!({"spec": spec});
    acts.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.err().map(|e| e.to_string())
}

#[tokio::test]
async fn a_finished_activity_refuses_the_changes_it_would_ignore() -> anyhow::Result<()> {
    ensure_crd()?;
    let ns = TestNs::new("spec-fin").await?;
    let _policy = ChartPolicy::install(&ns.name, "finished-policy.yaml")?;
    let acts: Api<Activity> = ns.api();
    let spec = json!({"startToCloseTimeout": "1m", "template": shell("true")});
    for name in ["done", "gone", "going"] {
        let a: Activity = serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec}))?;
        acts.create(&PostParams::default(), &a).await?;
    }
    // No operator runs here: the phases are set as it would set them.
    set_phase(&acts, "done", "Succeeded").await?;
    // The policy takes a moment to reach the API server's admission.
    // Each probe asks for another value: a probe let through before then would otherwise make the
    // next one no change at all.
    let probes = std::sync::atomic::AtomicU32::new(2);
    wait_for(Duration::from_secs(30), "the policy enforced", || async {
        let minutes = probes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let probe = json!({"startToCloseTimeout": format!("{minutes}m")});
        Ok(spec_refusal(&acts, "done", probe).await.map(|_| ()))
    })
    .await?;

    let edit = spec_refusal(&acts, "done", json!({"startToCloseTimeout": "90s", "heartbeatTimeout": "10s"})).await;
    let edit = edit.context("a timeout edit of a Succeeded activity was accepted")?;
    assert!(edit.contains("has finished (Succeeded)"), "{edit}");
    for field in ["spec.heartbeatTimeout", "spec.startToCloseTimeout"] {
        assert!(edit.contains(field), "names {field}: {edit}");
    }
    assert!(edit.contains("spec.reset.requestedAt"), "says how to re-run: {edit}");
    let cancel = spec_refusal(&acts, "done", json!({"cancelRequested": true})).await.context("cancel accepted")?;
    assert!(cancel.contains("nothing to cancel"), "{cancel}");
    // What a finished activity still takes: its TTL, pause for the re-run, and edits with a reset.
    assert_eq!(spec_refusal(&acts, "done", json!({"ttlSecondsAfterFinished": 600, "paused": true})).await, None);
    let rerun = json!({"startToCloseTimeout": "2m", "reset": {"requestedAt": "2026-01-01T00:00:00Z"}});
    assert_eq!(spec_refusal(&acts, "done", rerun).await, None, "an edit with a reset is a re-run");
    // Labels and annotations are not the spec.
    let labels = json!({"metadata": {"labels": {"team": "data"}}});
    acts.patch("done", &PatchParams::default(), &Patch::Merge(&labels)).await?;

    acts.patch("gone", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"cancelRequested": true}}))).await?;
    set_phase(&acts, "gone", "Canceled").await?;
    let undo = spec_refusal(&acts, "gone", json!({"cancelRequested": false})).await.context("un-cancel accepted")?;
    assert!(undo.contains("is Canceled: a requested cancel cannot be withdrawn"), "{undo}");
    let reset = json!({"reset": {"requestedAt": "2026-01-01T00:00:00Z"}});
    let reset = spec_refusal(&acts, "gone", reset).await.context("a reset of a Canceled activity was accepted")?;
    assert!(reset.contains("is Canceled and never runs again"), "{reset}");
    assert_eq!(spec_refusal(&acts, "gone", json!({"ttlSecondsAfterFinished": 5})).await, None);

    acts.patch("going", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"cancelRequested": true}}))).await?;
    set_phase(&acts, "going", "Canceling").await?;
    let undo = spec_refusal(&acts, "going", json!({"cancelRequested": false})).await.context("un-cancel accepted")?;
    assert!(undo.contains("is Canceling: a requested cancel cannot be withdrawn"), "{undo}");
    // A live activity's spec changes freely (timeouts apply at once).
    set_phase(&acts, "done", "Running").await?;
    assert_eq!(spec_refusal(&acts, "done", json!({"startToCloseTimeout": "5m"})).await, None);
    ns.delete().await
}

#[tokio::test]
async fn wide_output_shows_the_pod_the_last_failure_and_the_next_retry() -> anyhow::Result<()> {
    ensure_crd()?;
    let ns = TestNs::new("spec-wide").await?;
    let acts: Api<Activity> = ns.api();
    let a: Activity = serde_json::from_value(
        json!({"metadata": {"name": "w"}, "spec": {"startToCloseTimeout": "1m", "template": shell("true")}}),
    )?;
    acts.create(&PostParams::default(), &a).await?;
    let status = json!({"status": {"phase": "BackingOff", "attempt": 2, "podName": "w-2",
        "lastFailure": {"attempt": 1, "type": "HeartbeatTimeout", "message": "no heartbeat for 10s", "time": "2026-01-01T00:00:00Z"},
        "nextRetryTime": "2030-01-01T00:00:00Z"}});
    acts.patch_status("w", &PatchParams::default(), &Patch::Merge(&status)).await?;
    let wide = kubectl(&["get", "act", "-n", &ns.name, "w", "-o", "wide"])?;
    let mut lines = wide.lines();
    let header: Vec<&str> = lines.next().context("header")?.split_whitespace().collect();
    let row = lines.next().context("row")?;
    for column in ["POD", "LAST", "FAILURE", "NEXT", "RETRY"] {
        assert!(header.contains(&column), "-o wide has {column}: {wide}");
    }
    for value in ["w-2", "HeartbeatTimeout", "BackingOff"] {
        assert!(row.contains(value), "the row shows {value}: {wide}");
    }
    let narrow = kubectl(&["get", "act", "-n", &ns.name, "w"])?;
    assert!(!narrow.contains("HeartbeatTimeout"), "the default output stays narrow: {narrow}");
    ns.delete().await
}

#[tokio::test]
async fn operator_logs_carry_no_color_codes_when_not_on_a_terminal() -> anyhow::Result<()> {
    ensure_crd()?;
    let ns = TestNs::new("spec-ansi").await?;
    worker_rbac(&ns.name)?;
    let op = Operator::start(&ns.name).await?;
    let acts: Api<Activity> = ns.api();
    let a: Activity = serde_json::from_value(
        json!({"metadata": {"name": "c"}, "spec": {"startToCloseTimeout": "1m", "template": shell("exit 3"),
               "retryPolicy": {"maximumAttempts": 1}}}),
    )?;
    acts.create(&PostParams::default(), &a).await?;
    // Its log has lines at several levels by the time the attempt has ended.
    let log = wait_for(Duration::from_secs(60), "the operator logged the attempt", || async {
        let log = std::fs::read_to_string(&op.log)?;
        Ok(log.contains("activity=c").then_some(log))
    })
    .await?;
    assert!(!log.contains('\u{1b}'), "no escape sequences in a log written to a file:\n{log}");
    assert!(log.lines().any(|l| l.contains(" INFO ")), "levels are still written as words:\n{log}");
    drop(op);
    ns.delete().await
}
