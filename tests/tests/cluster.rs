//! The local control plane itself: the pinned version is what runs, CRDs applied with kubectl are
//! served, custom resources can be created and watched, their status goes through the status
//! subresource only, and the API server enforces OpenAPI schema and CEL rules with its own messages.
//!
//! Uses a tiny test CRD (`widgets.test.heartbeat.dev`) that is applied once and left installed.

use std::sync::OnceLock;
use std::time::Duration;

use activity_tests::{TestNs, client, kubectl, repo_root, wait_for};
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);

const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.test.heartbeat.dev
spec:
  group: test.heartbeat.dev
  scope: Namespaced
  names:
    plural: widgets
    singular: widget
    kind: Widget
    listKind: WidgetList
  versions:
    - name: v1
      served: true
      storage: true
      subresources:
        status: {}
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [size]
              properties:
                size:
                  type: string
                  pattern: '^[0-9]+(ms|s|m)$'
                min:
                  type: integer
                max:
                  type: integer
              x-kubernetes-validations:
                - rule: '!has(self.min) || !has(self.max) || self.min <= self.max'
                  fieldPath: .min
                  message: must not be greater than max
            status:
              type: object
              properties:
                phase:
                  type: string
                count:
                  type: integer
"#;

/// The Kubernetes version pinned in `deploy/local/k8s/go.mod`.
fn pinned_k8s_version() -> String {
    let go_mod = std::fs::read_to_string(repo_root().join("deploy/local/k8s/go.mod")).unwrap();
    go_mod
        .lines()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("k8s.io/kubernetes"), Some(v)) if v.starts_with('v') => Some(v.to_string()),
                (Some("require"), Some("k8s.io/kubernetes")) => words.next().map(str::to_string),
                _ => None,
            }
        })
        .expect("deploy/local/k8s/go.mod pins k8s.io/kubernetes")
}

/// Applies the widget CRD with kubectl (once per test binary) and waits until it is Established.
fn ensure_widget_crd() {
    static APPLIED: OnceLock<Result<(), String>> = OnceLock::new();
    let result = APPLIED.get_or_init(|| {
        let file = std::env::temp_dir().join(format!("activity-tests-widgets-crd-{}.yaml", std::process::id()));
        std::fs::write(&file, WIDGET_CRD).map_err(|e| e.to_string())?;
        let path = file.to_string_lossy().into_owned();
        let applied = kubectl(&["apply", "--server-side", "--force-conflicts", "-f", &path]);
        let _ = std::fs::remove_file(&file);
        applied.map_err(|e| format!("{e:#}"))?;
        kubectl(&["wait", "--for=condition=Established", "crd/widgets.test.heartbeat.dev", "--timeout=60s"])
            .map_err(|e| format!("{e:#}"))?;
        Ok(())
    });
    if let Err(e) = result {
        panic!("applying the widget CRD: {e}");
    }
}

fn widget_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("test.heartbeat.dev", "v1", "Widget"), "widgets")
}

fn widgets(ns: &TestNs) -> Api<DynamicObject> {
    Api::namespaced_with(ns.client.clone(), &ns.name, &widget_resource())
}

fn widget(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "test.heartbeat.dev/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

/// Waits until the API server's discovery lists widgets (a CRD is served a moment after it is
/// Established).
async fn wait_widgets_served() {
    let client = client().await.unwrap();
    wait_for(TIMEOUT, "widgets in discovery", || {
        let client = client.clone();
        async move {
            let resources = client.list_api_group_resources("test.heartbeat.dev/v1").await?;
            Ok(resources.resources.iter().any(|r| r.name == "widgets").then_some(()))
        }
    })
    .await
    .unwrap();
}

fn api_error(err: kube::Error) -> (u16, String) {
    match err {
        kube::Error::Api(status) => (status.code, status.message),
        other => panic!("expected an error from the API server, got {other:#}"),
    }
}

#[tokio::test]
async fn apiserver_and_kubectl_report_the_pinned_version() {
    let want = pinned_k8s_version();
    let info = client().await.unwrap().apiserver_version().await.unwrap();
    assert_eq!(info.git_version, want, "kube-apiserver /version");

    let out: Value = serde_json::from_str(&kubectl(&["version", "-o", "json"]).unwrap()).unwrap();
    assert_eq!(out["clientVersion"]["gitVersion"], want, "kubectl version: {out}");
    assert_eq!(out["serverVersion"]["gitVersion"], want, "kubectl version: {out}");
}

#[tokio::test]
async fn crd_applied_with_kubectl_is_served() {
    ensure_widget_crd();
    wait_widgets_served().await;
    let ns = TestNs::new("cluster-crd").await.unwrap();

    // kubectl knows the new kind too (its discovery cache is per invocation here).
    let resources = kubectl(&["api-resources", "--api-group=test.heartbeat.dev", "-o", "name"]).unwrap();
    assert!(resources.lines().any(|l| l == "widgets.test.heartbeat.dev"), "{resources}");

    let api = widgets(&ns);
    let created =
        api.create(&PostParams::default(), &widget("w1", json!({"size": "5s", "min": 1, "max": 2}))).await.unwrap();
    assert_eq!(created.data["spec"]["size"], "5s");
    let listed = kubectl(&["get", "widgets", "-n", &ns.name, "-o", "name"]).unwrap();
    assert_eq!(listed.trim(), "widget.test.heartbeat.dev/w1");
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn custom_resources_are_watched_and_status_goes_through_the_subresource_only() {
    ensure_widget_crd();
    wait_widgets_served().await;
    let ns = TestNs::new("cluster-watch").await.unwrap();
    let api = widgets(&ns);

    // Every Apply event of the watcher, in order.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<DynamicObject>();
    let watch = tokio::spawn({
        let api = api.clone();
        async move {
            let mut events = watcher(api, watcher::Config::default()).boxed();
            while let Some(event) = events.try_next().await? {
                if let watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) = event
                    && tx.send(obj).is_err()
                {
                    break;
                }
            }
            Ok::<_, watcher::Error>(())
        }
    });
    // Waits for a watch event about w1 that satisfies `pred`.
    async fn next_matching(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<DynamicObject>,
        what: &str,
        pred: impl Fn(&DynamicObject) -> bool,
    ) -> DynamicObject {
        tokio::time::timeout(TIMEOUT, async {
            loop {
                let obj = rx.recv().await.expect("watcher ended");
                if obj.metadata.name.as_deref() == Some("w1") && pred(&obj) {
                    return obj;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no watch event for {what} within {TIMEOUT:?}"))
    }

    api.create(&PostParams::default(), &widget("w1", json!({"size": "1m"}))).await.unwrap();
    let seen = next_matching(&mut rx, "the created widget", |_| true).await;
    assert_eq!(seen.data["spec"]["size"], "1m");

    // A status sent to the main resource is dropped; the spec change in the same patch is kept.
    let patched = api
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": "2m"}, "status": {"phase": "FromMain"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data["spec"]["size"], "2m");
    assert!(patched.data.get("status").and_then(|s| s.get("phase")).is_none(), "{patched:?}");

    // Through the status subresource the status is written; a spec change in it is dropped.
    let patched = api
        .patch_status(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": "9m"}, "status": {"phase": "Ready", "count": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data["status"]["phase"], "Ready");
    assert_eq!(patched.data["status"]["count"], 3);
    assert_eq!(patched.data["spec"]["size"], "2m");

    // The watch sees the status change, and the stored object agrees.
    let seen = next_matching(&mut rx, "the status change", |o| o.data["status"]["phase"] == "Ready").await;
    assert_eq!(seen.data["spec"]["size"], "2m");
    let stored = api.get("w1").await.unwrap();
    assert_eq!(stored.data["status"]["count"], 3);
    assert_eq!(stored.data["spec"]["size"], "2m");

    watch.abort();
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn schema_and_cel_validation_reject_bad_objects_naming_the_field() {
    ensure_widget_crd();
    wait_widgets_served().await;
    let ns = TestNs::new("cluster-validate").await.unwrap();
    let api = widgets(&ns);

    // OpenAPI pattern.
    let err =
        api.create(&PostParams::default(), &widget("bad-size", json!({"size": "five seconds"}))).await.unwrap_err();
    let (code, message) = api_error(err);
    assert_eq!(code, 422, "{message}");
    assert!(message.contains("spec.size"), "{message}");
    assert!(message.contains("should match"), "{message}");

    // Required field.
    let err = api.create(&PostParams::default(), &widget("no-size", json!({"min": 1}))).await.unwrap_err();
    let (code, message) = api_error(err);
    assert_eq!(code, 422, "{message}");
    assert!(message.contains("spec.size") && message.contains("Required"), "{message}");

    // CEL rule, reported at its fieldPath with its message.
    let err = api
        .create(&PostParams::default(), &widget("bad-range", json!({"size": "1s", "min": 5, "max": 2})))
        .await
        .unwrap_err();
    let (code, message) = api_error(err);
    assert_eq!(code, 422, "{message}");
    assert!(message.contains("spec.min"), "{message}");
    assert!(message.contains("must not be greater than max"), "{message}");

    // The same rule holds for updates, and nothing invalid was stored.
    api.create(&PostParams::default(), &widget("ok", json!({"size": "1s", "min": 1, "max": 2}))).await.unwrap();
    let err = api.patch("ok", &PatchParams::default(), &Patch::Merge(json!({"spec": {"min": 3}}))).await.unwrap_err();
    let (_, message) = api_error(err);
    assert!(message.contains("spec.min"), "{message}");
    let names: Vec<String> =
        api.list(&Default::default()).await.unwrap().items.into_iter().filter_map(|w| w.metadata.name).collect();
    assert_eq!(names, vec!["ok".to_string()]);
    ns.delete().await.unwrap();
}
