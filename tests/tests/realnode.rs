//! The project's own OCI images (`make images`) and the real node of the local cluster (a kubelet
//! with containerd and runc, which `deploy/local/cluster.sh up` starts where the machine can). The
//! image checks skip when no images were built, the cluster checks when the cluster has no real
//! node; both say so.

use std::time::Duration;

use activity_crds::{Activity, Phase, TimeoutType};
use activity_tests::operator::{Operator, ensure_crd, worker_rbac};
use activity_tests::realnode::{
    OciImage, assert_on_real_node, chart_app_version, elf_is_static, images_dir, real_node_or_skip,
};
use activity_tests::{TestNs, kubectl, tool, wait_for};
use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

const CHART: &str = "charts/activity-operator";

fn images(names: &[&str]) -> anyhow::Result<Option<Vec<OciImage>>> {
    let mut out = Vec::new();
    for name in names {
        match OciImage::read(name)? {
            Some(img) => out.push(img),
            None => {
                eprintln!("SKIPPED: no image {name} under {} (build them with `make images`)", images_dir().display());
                return Ok(None);
            }
        }
    }
    Ok(Some(out))
}

/// Labels, user, entrypoint and tag that both project images must carry.
fn check_common(img: &OciImage, binary: &str, version: &str) -> anyhow::Result<()> {
    let config = &img.config["config"];
    assert_eq!(img.tag, version, "{}: the tag must be the chart's appVersion", img.dir.display());
    assert_eq!(config["User"], json!("65532:65532"), "{}: non-root user", img.dir.display());
    assert_eq!(config["Entrypoint"], json!([format!("/usr/local/bin/{binary}")]), "{}: entrypoint", img.dir.display());
    let labels = &config["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], json!(version));
    assert_eq!(labels["org.opencontainers.image.source"], json!("https://github.com/heartbeat-dev/activity-operator"));
    let revision = labels["org.opencontainers.image.revision"].as_str().unwrap_or("");
    assert!(revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit()), "revision label: {revision:?}");
    let bin = img.file(&format!("usr/local/bin/{binary}"))?;
    assert!(elf_is_static(&bin)?, "{binary} in {} asks for a program interpreter", img.dir.display());
    Ok(())
}

#[test]
fn images_are_static_non_root_and_tagged_with_the_chart_version() -> anyhow::Result<()> {
    let Some(imgs) = images(&["activity-operator", "activity-worker", "pause", "busybox"])? else {
        return Ok(());
    };
    let version = chart_app_version()?;
    let (operator, worker, pause) = (&imgs[0], &imgs[1], &imgs[2]);

    check_common(operator, "activity-operator", &version)?;
    // The operator image is the binary and nothing else: no shell, no libc, no package manager.
    let files: Vec<String> = operator.paths()?;
    let non_dirs: Vec<&String> =
        files.iter().filter(|p| !["usr", "usr/local", "usr/local/bin"].contains(&p.as_str())).collect();
    assert_eq!(non_dirs, vec!["usr/local/bin/activity-operator"], "operator image content: {files:?}");
    assert!(operator.file("bin/sh").is_err(), "the operator image has a shell");

    check_common(worker, "activity-worker", &version)?;
    // The worker image's shell is the static busybox (exec-mode activities run `sh -c`).
    let entries = worker.entries()?;
    assert!(entries.iter().any(|e| e.ends_with("bin/sh -> busybox")), "no bin/sh -> busybox link");
    assert!(elf_is_static(&worker.file("bin/busybox")?)?, "busybox in the worker image is not static");
    let tmp = entries
        .iter()
        .find(|e| e.trim_end_matches('/').ends_with(" tmp") || e.trim_end_matches('/').ends_with("./tmp"));
    assert!(tmp.is_some_and(|e| e.starts_with("drwxrwxrwt")), "worker image /tmp must be 1777: {tmp:?}");

    assert!(elf_is_static(&pause.file("pause")?)?, "the pause binary is not static");
    assert_eq!(pause.config["config"]["Entrypoint"], json!(["/pause"]));
    Ok(())
}

/// The Dockerfiles are what `make images` builds: the operator's from scratch with the prebuilt
/// binary, no base image to pull.
#[test]
fn dockerfiles_build_from_scratch_with_prebuilt_binaries() -> anyhow::Result<()> {
    let root = activity_tests::repo_root();
    for (file, binary) in [("operator/Dockerfile", "activity-operator"), ("worker-image/Dockerfile", "activity-worker")]
    {
        let text = std::fs::read_to_string(root.join(file))?;
        let froms: Vec<&str> = text.lines().filter(|l| l.trim_start().to_uppercase().starts_with("FROM ")).collect();
        assert_eq!(froms, vec!["FROM scratch"], "{file}: a single stage from scratch");
        assert!(text.contains(&format!("COPY ${{TARGETARCH}}/{binary} /usr/local/bin/{binary}")), "{file}");
        assert!(text.contains("USER 65532:65532"), "{file}");
        assert!(!text.contains("RUN "), "{file}: nothing may run at build time (no shell in scratch)");
    }
    Ok(())
}

fn status(a: &Activity) -> activity_crds::ActivityStatus {
    a.status.clone().unwrap_or_default()
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

async fn create(acts: &Api<Activity>, name: &str, spec: Value) -> anyhow::Result<()> {
    let act: Activity = serde_json::from_value(json!({
        "apiVersion": "heartbeat.dev/v1alpha1", "kind": "Activity", "metadata": {"name": name}, "spec": spec
    }))?;
    acts.create(&PostParams::default(), &act).await?;
    Ok(())
}

fn worker_image() -> anyhow::Result<String> {
    Ok(format!("ghcr.io/heartbeat-dev/activity-worker:{}", chart_app_version()?))
}

fn helm(args: &[&str]) -> anyhow::Result<String> {
    let out = tool("helm", args)?;
    if !out.status.success() {
        bail!("helm {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The chart's operator (two replicas, its own image from the loopback registry) runs on the real
/// node and runs the README tour's examples there: exec-shell resumes from its heartbeat, the seed
/// batch resumes after each failure and processes every item once, records reads all 50.
#[tokio::test]
async fn chart_operator_runs_the_examples_on_the_real_node() -> anyhow::Result<()> {
    let Some(client) = real_node_or_skip("chart_operator_runs_the_examples_on_the_real_node").await? else {
        return Ok(());
    };
    ensure_crd()?;
    let ns = TestNs::new("real-op").await?;
    let acts_ns = TestNs::new("real-acts").await?;
    let release = format!("real-{:06x}", rand::random::<u32>() & 0xff_ffff);
    helm(&[
        "install",
        &release,
        CHART,
        "--namespace",
        &ns.name,
        "--set",
        &format!("watchNamespaces={{{}}}", acts_ns.name),
        "--set",
        &format!("workerNamespaces={{{}}}", acts_ns.name),
        "--wait",
        "--timeout",
        "3m",
    ])
    .inspect_err(|_| dump(&ns.name))?;
    let op_pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let names: Vec<String> =
        op_pods.list(&ListParams::default()).await?.items.into_iter().filter_map(|p| p.metadata.name).collect();
    assert_eq!(names.len(), 2, "two operator replicas: {names:?}");
    for name in &names {
        let pod = assert_on_real_node(&op_pods, name).await?;
        let image = pod.spec.as_ref().map(|s| s.containers[0].image.clone().unwrap_or_default()).unwrap_or_default();
        assert_eq!(image, format!("ghcr.io/heartbeat-dev/activity-operator:{}", chart_app_version()?));
    }

    for example in ["exec-shell", "batch", "records"] {
        kubectl(&["apply", "-n", &acts_ns.name, "-f", &format!("deploy/examples/{example}.yaml")])?;
    }
    let acts: Api<Activity> = acts_ns.api();
    let pods: Api<Pod> = acts_ns.api();
    let expect = [
        ("exec-shell", json!({"steps": 8, "input": "hello"}), 2),
        ("batch", json!({"processed": 10}), 4),
        ("records", json!(50), 1),
    ];
    for (name, result, attempts) in expect {
        let a = activity_tests::wait_phase(&acts, name, Phase::Succeeded, Duration::from_secs(180))
            .await
            .inspect_err(|_| dump(&acts_ns.name))?;
        let st = status(&a);
        assert_eq!(st.result.and_then(|r| r.to_value().ok()), Some(result), "{name}: result");
        assert_eq!(st.attempt, Some(attempts), "{name}: attempts");
        for n in 1..=attempts {
            assert_on_real_node(&pods, &format!("{name}-{n}")).await?;
        }
    }
    // The batch resumed where it stopped: every item processed once across the attempts.
    let mut processed = Vec::new();
    for n in 1..=4 {
        let log = kubectl(&["logs", "-n", &acts_ns.name, &format!("batch-{n}")])?;
        processed.extend(
            log.lines()
                .filter_map(|l| l.split("processed item ").nth(1))
                .map(|s| s.chars().take_while(char::is_ascii_digit).collect::<String>()),
        );
    }
    let want: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    assert_eq!(processed, want, "each batch item exactly once, in order, across attempts");

    helm(&["uninstall", &release, "--namespace", &ns.name, "--wait", "--timeout", "2m"])?;
    acts_ns.delete().await?;
    ns.delete().await
}

/// A worker image that no registry has ends `ScheduleToStart` with the kubelet's real pull error.
#[tokio::test]
async fn unknown_image_ends_schedule_to_start_with_the_kubelets_pull_error() -> anyhow::Result<()> {
    let Some(_client) = real_node_or_skip("unknown_image_ends_schedule_to_start_with_the_kubelets_pull_error").await?
    else {
        return Ok(());
    };
    ensure_crd()?;
    let ns = TestNs::new("real-pull").await?;
    worker_rbac(&ns.name)?;
    let _op = Operator::start(&ns.name).await?;
    let acts: Api<Activity> = ns.api();
    create(
        &acts,
        "nopull",
        json!({"startToCloseTimeout": "1m", "scheduleToStartTimeout": "20s",
               "template": {"spec": {"containers": [{"name": "w",
                   "image": "ghcr.io/heartbeat-dev/no-such-image:0.0.0"}]}}}),
    )
    .await?;
    let a = activity_tests::wait_phase(&acts, "nopull", Phase::TimedOut, Duration::from_secs(90))
        .await
        .inspect_err(|_| dump(&ns.name))?;
    let st = status(&a);
    assert_eq!(st.attempt, Some(1), "never retried");
    let f = st.last_failure.context("lastFailure")?;
    assert_eq!((f.timeout_type, f.non_retryable), (Some(TimeoutType::ScheduleToStart), true));
    assert!(f.message.contains("ErrImagePull") || f.message.contains("ImagePullBackOff"), "{}", f.message);
    // The kubelet itself tried: its events on the pod name the pull error, and the pod was on the real node.
    let pod = ns.api::<Pod>().get("nopull-1").await?;
    assert_eq!(pod.spec.and_then(|s| s.node_name).as_deref(), Some(activity_tests::realnode::REAL_NODE));
    let events: Value = serde_json::from_str(&kubectl(&[
        "get",
        "events",
        "-n",
        &ns.name,
        "--field-selector",
        "involvedObject.name=nopull-1",
        "-o",
        "json",
    ])?)?;
    let from_kubelet: Vec<String> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["source"]["component"] == "kubelet" || e["reportingComponent"] == "kubelet")
        .filter_map(|e| e["message"].as_str().map(str::to_string))
        .collect();
    assert!(
        from_kubelet.iter().any(|m| m.contains("ErrImagePull")),
        "no kubelet event names ErrImagePull: {from_kubelet:?}"
    );
    ns.delete().await
}

/// A worker that allocates past its container's memory limit is OOMKilled by the kernel (the
/// real cgroup limit), the attempt fails with that reason and is retried.
#[tokio::test]
async fn worker_over_its_memory_limit_is_oomkilled_and_retried() -> anyhow::Result<()> {
    let Some(_client) = real_node_or_skip("worker_over_its_memory_limit_is_oomkilled_and_retried").await? else {
        return Ok(());
    };
    ensure_crd()?;
    let ns = TestNs::new("real-oom").await?;
    worker_rbac(&ns.name)?;
    let _op = Operator::start(&ns.name).await?;
    let acts: Api<Activity> = ns.api();
    // dd fills a 256 MiB buffer; the limit is 32 MiB. The container's own command (no
    // `activity-worker exec`, which would report the killed child as its own ExitCode failure
    // first), so the attempt is judged on the container's termination as the kubelet reports it.
    create(
        &acts,
        "hungry",
        json!({"startToCloseTimeout": "2m", "retryPolicy": {"initialInterval": "1s", "maximumAttempts": 2},
               "template": {"spec": {"containers": [{"name": "worker", "image": worker_image()?,
                   "command": ["sh", "-c", "dd if=/dev/zero of=/dev/null bs=256M count=1"],
                   "resources": {"limits": {"memory": "32Mi"}}}]}}}),
    )
    .await?;
    let a = activity_tests::wait_phase(&acts, "hungry", Phase::Failed, Duration::from_secs(120))
        .await
        .inspect_err(|_| dump(&ns.name))?;
    let st = status(&a);
    assert_eq!(st.attempt, Some(2), "retried once");
    let f = st.last_failure.context("lastFailure")?;
    assert_eq!((f.type_.as_str(), f.reason.as_deref()), ("OOMKilled", Some("OOMKilled")), "{}", f.message);
    let pods: Api<Pod> = ns.api();
    for n in 1..=2 {
        let pod = assert_on_real_node(&pods, &format!("hungry-{n}")).await?;
        let reason = pod
            .status
            .and_then(|s| s.container_statuses)
            .and_then(|c| c.into_iter().next())
            .and_then(|c| c.state)
            .and_then(|s| s.terminated)
            .and_then(|t| t.reason);
        assert_eq!(reason.as_deref(), Some("OOMKilled"), "attempt {n}");
    }
    ns.delete().await
}

/// The same through `activity-worker exec`: the kernel kills the child (the biggest process in the
/// container's memory cgroup), the worker sees it die of SIGKILL while its cgroup's OOM kill count
/// rose, and reports `OOMKilled` (not the child's exit code 137) before the container ends with the
/// runtime's reason OOMKilled.
#[tokio::test]
async fn exec_child_over_the_memory_limit_fails_the_attempt_as_oomkilled() -> anyhow::Result<()> {
    let Some(_client) = real_node_or_skip("exec_child_over_the_memory_limit_fails_the_attempt_as_oomkilled").await?
    else {
        return Ok(());
    };
    ensure_crd()?;
    let ns = TestNs::new("real-oom-exec").await?;
    worker_rbac(&ns.name)?;
    let _op = Operator::start(&ns.name).await?;
    let acts: Api<Activity> = ns.api();
    create(
        &acts,
        "hungry",
        json!({"startToCloseTimeout": "2m", "retryPolicy": {"initialInterval": "1s", "maximumAttempts": 1},
               "template": {"spec": {"containers": [{"name": "worker", "image": worker_image()?,
                   "args": ["exec", "--", "sh", "-c", "dd if=/dev/zero of=/dev/null bs=256M count=1"],
                   "resources": {"limits": {"memory": "32Mi"}}}]}}}),
    )
    .await?;
    let a = activity_tests::wait_phase(&acts, "hungry", Phase::Failed, Duration::from_secs(120))
        .await
        .inspect_err(|_| dump(&ns.name))?;
    let pods: Api<Pod> = ns.api();
    assert_on_real_node(&pods, "hungry-1").await?;
    // The worker reports before its container has ended.
    let terminated = wait_for(Duration::from_secs(60), "hungry-1's container to end", || async {
        let pod = pods.get("hungry-1").await?;
        Ok(pod
            .status
            .and_then(|s| s.container_statuses)
            .and_then(|c| c.into_iter().next())
            .and_then(|c| c.state)
            .and_then(|s| s.terminated))
    })
    .await?;
    eprintln!("container: exit code {} reason {:?}", terminated.exit_code, terminated.reason);
    let f = status(&a).last_failure.context("lastFailure")?;
    eprintln!("lastFailure: {} {:?}: {}", f.type_, f.reason, f.message);
    assert_eq!(terminated.reason.as_deref(), Some("OOMKilled"), "the runtime saw the OOM kill");
    assert_eq!(f.type_.as_str(), "OOMKilled", "{}", f.message);
    ns.delete().await
}
