//! Shared by the integration tests: a namespace with its own operator, and the plugin binary run
//! against the local cluster (`deploy/local/cluster.sh up`; the operator and worker binaries must be
//! built: `cargo build -p activity-operator -p activity-worker`).

#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

use activity_tests::operator::{Operator, ensure_crd, worker_rbac};
use activity_tests::{TestNs, kubeconfig_path, kubectl, wait_for};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use serde_json::Value;

/// The plugin under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_kubectl-activity");
/// Longest a single command may take (the machine is small and shared).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(240);

pub struct Env {
    pub ns: TestNs,
    pub op: Operator,
}

/// What a command printed and how it exited.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// A shell script as the `-- CMD ARGS…` of `start`.
pub fn sh(script: &str) -> Vec<String> {
    vec!["--".into(), "sh".into(), "-c".into(), script.into()]
}

/// A worker script that heartbeats `progress` i/total every `step` seconds, then returns a result.
pub fn progress_script(total: u32, step: &str) -> String {
    format!(
        r#"i=0; while [ $i -lt {total} ]; do sleep {step}; i=$((i+1)); echo "item $i"; echo "::heartbeat {{\"progress\": \"$i/{total}\"}}"; done; echo '::result {{"items": {total}}}'"#
    )
}

impl Env {
    pub async fn new(prefix: &str) -> Env {
        activity_tests::operator::workspace_bin("activity-worker").expect("the activity-worker binary");
        ensure_crd().expect("CRD");
        let ns = TestNs::new(prefix).await.expect("namespace");
        worker_rbac(&ns.name).expect("worker RBAC");
        let op = Operator::start(&ns.name).await.expect("operator");
        Env { ns, op }
    }

    /// The plugin's command line with `--kubeconfig` and `-n` of this test.
    pub fn args(&self, args: &[&str]) -> Vec<String> {
        let mut all: Vec<String> =
            vec!["--kubeconfig".into(), kubeconfig_path().display().to_string(), "-n".into(), self.ns.name.clone()];
        all.extend(args.iter().map(|a| a.to_string()));
        all
    }

    /// Runs the plugin to completion (bounded by [`COMMAND_TIMEOUT`]).
    pub async fn run(&self, args: &[&str]) -> Out {
        run_raw(&self.args(args)).await
    }

    /// `start NAME FLAGS -- sh -c SCRIPT`, asserting success.
    pub async fn start(&self, name: &str, flags: &[&str], script: &str) {
        let mut args = vec!["start", name];
        args.extend_from_slice(flags);
        let cmd = sh(script);
        args.extend(cmd.iter().map(String::as_str));
        let out = self.run(&args).await;
        assert_eq!(out.code, 0, "start {name}: {out:?}");
        assert_eq!(out.stdout.trim(), format!("activity.heartbeat.dev/{name} created"));
    }

    pub fn activities(&self) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("heartbeat.dev", "v1alpha1", "Activity");
        Api::namespaced_with(
            self.ns.client.clone(),
            &self.ns.name,
            &ApiResource::from_gvk_with_plural(&gvk, "activities"),
        )
    }

    /// The activity as JSON, or `None` when it does not exist.
    pub async fn get(&self, name: &str) -> Option<Value> {
        let obj = self.activities().get_opt(name).await.expect("get activity")?;
        Some(serde_json::to_value(obj).expect("activity json"))
    }

    /// Waits until `check` accepts the activity; on timeout dumps the namespace and panics.
    pub async fn wait(&self, name: &str, secs: u64, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let res = wait_for(Duration::from_secs(secs), what, || async {
            let obj = self.activities().get_opt(name).await?;
            Ok(obj.map(serde_json::to_value).transpose()?.filter(|v| check(v)))
        })
        .await;
        match res {
            Ok(v) => v,
            Err(e) => {
                self.dump();
                panic!("{name}: {e:#}");
            }
        }
    }

    pub fn dump(&self) {
        let ns = &self.ns.name;
        for args in [vec!["get", "activities", "-n", ns, "-o", "yaml"], vec!["get", "pods", "-n", ns, "-o", "wide"]] {
            eprintln!("--- kubectl {}\n{}", args.join(" "), kubectl(&args).unwrap_or_else(|e| e.to_string()));
        }
        let log = std::fs::read_to_string(&self.op.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!("--- operator log (last lines)\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }

    pub async fn finish(self) {
        let Env { ns, op } = self;
        drop(op);
        ns.delete().await.expect("delete namespace");
    }
}

/// Runs the plugin with exactly `args`.
pub async fn run_raw(args: &[String]) -> Out {
    let child = tokio::process::Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn kubectl-activity");
    let out = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("kubectl-activity {args:?} did not finish within {COMMAND_TIMEOUT:?}"))
        .expect("kubectl-activity output");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn phase(v: &Value) -> &str {
    v.pointer("/status/phase").and_then(Value::as_str).unwrap_or("")
}

pub fn attempt(v: &Value) -> i64 {
    v.pointer("/status/attempt").and_then(Value::as_i64).unwrap_or(0)
}
