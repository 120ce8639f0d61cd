//! `kubectl activity` against the local cluster, each test with its own namespace and operator:
//! exit codes, `-o json|yaml`, the table and describe views, logs across attempts (in order, and
//! followed into the next attempt), cancel, pause/unpause/reset, and `watch` without a terminal.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{Env, Out, attempt, phase, progress_script, run_raw, sh};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

/// Exit codes of the plugin (see `kubectl activity --help`).
const OK: i32 = 0;
const NOT_SUCCEEDED: i32 = 1;
const USAGE: i32 = 2;
const ERROR: i32 = 3;

const ONE_ATTEMPT: [&str; 4] = ["--start-to-close-timeout", "1m", "--retry-maximum-attempts", "1"];

fn with(base: &[&'static str], more: &[&'static str]) -> Vec<&'static str> {
    base.iter().chain(more).copied().collect()
}

#[tokio::test]
async fn execute_and_result_exit_codes_and_output() {
    let env = Env::new("cli-exec").await;

    // Success: the result JSON on stdout, exit 0.
    let ok = sh(r#"echo working; echo '::result {"n": 7}'"#);
    let mut args = with(&["execute", "ok"], &ONE_ATTEMPT);
    args.extend(ok.iter().map(String::as_str));
    let out = env.run(&args).await;
    assert_eq!(out.code, OK, "{out:?}");
    assert_eq!(out.json(), json!({"n": 7}), "{out:?}");

    // -o json: the whole object.
    let mut args = with(&["execute", "okjson", "-o", "json"], &ONE_ATTEMPT);
    args.extend(ok.iter().map(String::as_str));
    let out = env.run(&args).await;
    assert_eq!(out.code, OK, "{out:?}");
    let obj = out.json();
    assert_eq!((phase(&obj), &obj["status"]["result"]), ("Succeeded", &json!({"n": 7})), "{out:?}");

    // Failure: exit 1, the failure on stderr, nothing on stdout.
    let fail = sh("echo about to fail; exit 3");
    let mut args = with(&["execute", "bad"], &ONE_ATTEMPT);
    args.extend(fail.iter().map(String::as_str));
    let bad = env.run(&args).await;
    assert_eq!(bad.code, NOT_SUCCEEDED, "{bad:?}");
    assert!(bad.stdout.is_empty(), "{bad:?}");
    assert!(bad.stderr.contains("Failed on attempt 1: ExitCode"), "{bad:?}");

    // `result` of finished activities: same rule.
    let out = env.run(&["result", "ok"]).await;
    assert_eq!((out.code, out.json()), (OK, json!({"n": 7})), "{out:?}");
    let out = env.run(&["result", "bad", "-o", "yaml"]).await;
    assert_eq!(out.code, NOT_SUCCEEDED, "{out:?}");
    let obj: Value = serde_norway::from_str(&out.stdout).expect("yaml");
    assert_eq!(obj["status"]["lastFailure"]["type"], "ExitCode", "{out:?}");

    // `result` waits for a running activity.
    env.start("later", &["--start-to-close-timeout", "1m"], r#"sleep 2; echo '::result "late"'"#).await;
    let out = env.run(&["result", "later"]).await;
    assert_eq!((out.code, out.json()), (OK, json!("late")), "{out:?}");

    // Errors name what to do.
    let out = env.run(&["result", "missing"]).await;
    assert_eq!(out.code, ERROR, "{out:?}");
    assert!(
        out.stderr.contains("activity \"missing\" not found") && out.stderr.contains("kubectl activity list"),
        "{out:?}"
    );
    let mut args = with(&["start", "ok"], &ONE_ATTEMPT);
    args.extend(ok.iter().map(String::as_str));
    let out = env.run(&args).await;
    assert_eq!(out.code, ERROR, "{out:?}");
    assert!(out.stderr.contains("already exists"), "{out:?}");
    let out = env.run(&["start", "no-timeout", "--", "true"]).await;
    assert_eq!(out.code, USAGE, "{out:?}");
    assert!(out.stderr.contains("--start-to-close-timeout"), "{out:?}");
    let out = env.run(&["describe", "ok", "-A"]).await;
    assert_eq!(out.code, ERROR, "{out:?}");
    assert!(out.stderr.contains("-n"), "{out:?}");
    let out = run_raw(&["--kubeconfig".into(), "/nonexistent/kubeconfig".into(), "list".into()]).await;
    assert_eq!(out.code, ERROR, "{out:?}");
    assert!(out.stderr.contains("--kubeconfig"), "{out:?}");

    env.finish().await;
}

/// Attempt 1 heartbeats 2/4 and fails; attempt 2 finishes 4/4.
const FLAKY: &str = r#"echo "attempt $ACTIVITY_ATTEMPT starts"
if [ "$ACTIVITY_ATTEMPT" = 1 ]; then echo '::heartbeat {"progress": "2/4"}'; echo "attempt 1 fails"; exit 3; fi
echo '::heartbeat {"progress": "4/4"}'
echo "attempt $ACTIVITY_ATTEMPT done"
echo '::result {"ok": true}'"#;

#[tokio::test]
async fn list_describe_and_logs_of_a_retried_activity() {
    let env = Env::new("cli-views").await;
    let flags = ["--start-to-close-timeout", "1m", "--retry-initial-interval", "1s", "--retry-maximum-attempts", "3"];
    env.start("flaky", &flags, FLAKY).await;
    let out = env.run(&["result", "flaky"]).await;
    assert_eq!((out.code, out.json()), (OK, json!({"ok": true})), "{out:?}");

    // list: the table (plain: not a terminal) and -o json/yaml.
    let out = env.run(&["list"]).await;
    assert_eq!(out.code, OK, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{out:?}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["NAME", "PHASE", "ATTEMPT", "PROGRESS", "RATE", "ETA", "HEARTBEAT", "NEXT", "RETRY", "AGE"]);
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&row[..6], ["flaky", "Succeeded", "2/3", "[####################]", "4/4", "100%"], "{out:?}");
    assert!(!out.stdout.contains('\u{1b}'), "no color when not on a terminal: {out:?}");
    let out = env.run(&["list", "-o", "json"]).await;
    assert_eq!(out.code, OK, "{out:?}");
    let list = out.json();
    assert_eq!((list["kind"].as_str(), list["items"][0]["metadata"]["name"].as_str()), (Some("List"), Some("flaky")));
    assert_eq!(phase(&list["items"][0]), "Succeeded");
    assert!(list["items"][0]["metadata"].get("managedFields").is_none());
    let out = env.run(&["list", "-o", "yaml"]).await;
    let list: Value = serde_norway::from_str(&out.stdout).expect("yaml");
    assert_eq!(list["items"][0]["status"]["attempt"], 2, "{out:?}");
    let out = env.run(&["list", "-A"]).await;
    assert_eq!(out.code, OK, "{out:?}");
    assert!(out.stdout.starts_with("NAMESPACE"), "{out:?}");
    assert!(out.stdout.lines().any(|l| l.starts_with(&format!("{} ", env.ns.name)) && l.contains("flaky")), "{out:?}");

    // describe: the timeline, and the same as JSON.
    let out = env.run(&["describe", "flaky"]).await;
    assert_eq!(out.code, OK, "{out:?}");
    let text = &out.stdout;
    for want in [
        "Name:          flaky",
        "Phase:         Succeeded",
        "Result:        {\"ok\":true}",
        "Attempts (times UTC):",
        "Events:",
    ] {
        assert!(text.contains(want), "{want:?} missing in:\n{text}");
    }
    let a1 = text.lines().find(|l| l.trim_start().starts_with("1 ")).unwrap_or_default();
    let a2 = text.lines().find(|l| l.trim_start().starts_with("2 ")).unwrap_or_default();
    assert!(
        a1.contains("flaky-1") && a1.contains("Failed") && a1.contains("ExitCode: command exited with code 3"),
        "{text}"
    );
    assert!(a2.contains("flaky-2") && a2.contains("Succeeded"), "{text}");
    // Each attempt's start, even one that ended before the kubelet reported its container
    // running: the operator fills it in from the pod's terminated state shortly after.
    let mut d = Value::Null;
    for _ in 0..60 {
        d = env.run(&["describe", "flaky", "-o", "json"]).await.json();
        if d["attempts"].as_array().is_some_and(|a| a.iter().all(|a| !a["started"].is_null())) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let outcomes: Vec<&str> =
        d["attempts"].as_array().into_iter().flatten().filter_map(|a| a["outcome"].as_str()).collect();
    assert_eq!(outcomes, ["Failed", "Succeeded"], "{d}");
    assert_eq!(d["attempts"][0]["pod"], "flaky-1");
    assert_eq!(d["attempts"][0]["failure"]["type"], "ExitCode");
    for a in d["attempts"].as_array().into_iter().flatten() {
        assert!(a["durationSeconds"].as_f64().is_some(), "every attempt's duration: {d}");
    }
    assert_eq!(d["heartbeatDetails"], json!({"progress": "4/4"}));
    assert!(d["events"].as_array().is_some_and(|e| !e.is_empty()), "the operator's events: {d}");

    // logs: every attempt in order with its prefix; the current attempt alone without.
    let out = env.run(&["logs", "flaky", "--all-attempts"]).await;
    assert_eq!(out.code, OK, "{out:?}");
    let ours: Vec<&str> = out.stdout.lines().filter(|l| l.contains("attempt") && !l.contains("::")).collect();
    let ours: Vec<&str> =
        ours.into_iter().filter(|l| l.ends_with("starts") || l.ends_with("fails") || l.ends_with("done")).collect();
    assert_eq!(
        ours,
        [
            "[attempt 1] attempt 1 starts",
            "[attempt 1] attempt 1 fails",
            "[attempt 2] attempt 2 starts",
            "[attempt 2] attempt 2 done"
        ],
        "{out:?}"
    );
    let out = env.run(&["logs", "flaky"]).await;
    assert_eq!(out.code, OK, "{out:?}");
    assert!(out.stdout.lines().any(|l| l == "attempt 2 done"), "{out:?}");
    assert!(!out.stdout.contains("attempt 1") && !out.stdout.contains("[attempt"), "{out:?}");

    env.finish().await;
}

#[tokio::test]
async fn logs_follow_into_the_next_attempt() {
    let env = Env::new("cli-follow").await;
    let script = r#"for i in 1 2 3; do echo "a$ACTIVITY_ATTEMPT line $i"; sleep 1; done
if [ "$ACTIVITY_ATTEMPT" = 1 ]; then exit 3; fi"#;
    env.start("slow", &["--start-to-close-timeout", "1m", "--retry-initial-interval", "2s"], script).await;
    // Follow from while attempt 1 runs: attempt 2's lines can only come from following into it.
    env.wait("slow", 90, "attempt 1 running", |a| phase(a) == "Running" && attempt(a) == 1).await;
    let follow = tokio::spawn({
        let args = env.args(&["logs", "slow", "-f"]);
        async move { run_raw(&args).await }
    });
    let out: Out = follow.await.expect("logs -f task");
    let now = env.get("slow").await.unwrap_or_default();
    assert_eq!((phase(&now), attempt(&now)), ("Succeeded", 2), "logs -f returns when the activity has finished");
    assert_eq!(out.code, OK, "{out:?}");
    let ours: Vec<&str> = out.stdout.lines().filter(|l| l.contains(" line ")).collect();
    assert_eq!(
        ours,
        [
            "[attempt 1] a1 line 1",
            "[attempt 1] a1 line 2",
            "[attempt 1] a1 line 3",
            "[attempt 2] a2 line 1",
            "[attempt 2] a2 line 2",
            "[attempt 2] a2 line 3"
        ],
        "{out:?}"
    );
    env.finish().await;
}

#[tokio::test]
async fn cancel_and_cancel_delete() {
    let env = Env::new("cli-cancel").await;
    let flags = ["--start-to-close-timeout", "5m", "--cancellation-grace-period", "5s"];
    env.start("c1", &flags, "sleep 300").await;
    env.start("c2", &flags, "sleep 300").await;
    env.wait("c1", 90, "c1 running", |a| phase(a) == "Running").await;

    let out = env.run(&["cancel", "c1", "--wait"]).await;
    assert_eq!(out.code, OK, "{out:?}");
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        ["activity.heartbeat.dev/c1 cancel requested; waiting for it to finish", "activity.heartbeat.dev/c1 Canceled"]
    );
    let c1 = env.get("c1").await.unwrap_or_default();
    assert_eq!((c1["spec"]["cancelRequested"].as_bool(), phase(&c1)), (Some(true), "Canceled"));

    let out = env.run(&["cancel", "c2", "--delete", "--wait"]).await;
    assert_eq!(out.code, OK, "{out:?}");
    assert!(env.get("c2").await.is_none(), "c2 is gone: {out:?}");

    let out = env.run(&["cancel", "nope"]).await;
    assert_eq!(out.code, ERROR, "{out:?}");
    assert!(out.stderr.contains("\"nope\" not found"), "{out:?}");
    env.finish().await;
}

#[tokio::test]
async fn pause_unpause_and_reset() {
    let env = Env::new("cli-ops").await;
    env.start("p", &["--start-to-close-timeout", "5m", "--heartbeat-timeout", "10s"], &progress_script(100, "1")).await;
    env.wait("p", 90, "p running", |a| phase(a) == "Running").await;

    let out = env.run(&["pause", "p"]).await;
    assert_eq!((out.code, out.stdout.trim()), (OK, "activity.heartbeat.dev/p paused"), "{out:?}");
    let p = env.get("p").await.unwrap_or_default();
    assert_eq!(p["spec"]["paused"], true);
    env.wait("p", 60, "phase Paused", |a| phase(a) == "Paused").await;

    let out = env.run(&["unpause", "p", "-o", "json"]).await;
    assert_eq!(out.code, OK, "{out:?}");
    assert_eq!(out.json()["spec"]["paused"], false, "{out:?}");
    env.wait("p", 60, "running again", |a| phase(a) == "Running").await;

    let before = attempt(&env.get("p").await.unwrap_or_default());
    let out = env.run(&["reset", "p", "--clear-heartbeat-details"]).await;
    assert_eq!(out.code, OK, "{out:?}");
    assert!(out.stdout.starts_with("activity.heartbeat.dev/p reset requested at "), "{out:?}");
    let p = env.get("p").await.unwrap_or_default();
    let at: Timestamp =
        p["spec"]["reset"]["requestedAt"].as_str().unwrap_or_default().parse().expect("RFC 3339 requestedAt");
    let age = Timestamp::now().duration_since(at).as_secs_f64();
    assert!((0.0..120.0).contains(&age), "requestedAt is now: {at}");
    assert_eq!(p["spec"]["reset"]["clearHeartbeatDetails"], true);
    env.wait("p", 60, "a new attempt after the reset", |a| attempt(a) > before && phase(a) == "Running").await;
    // A second reset is a new request (a new requestedAt), details kept this time.
    let out = env.run(&["reset", "p", "-o", "json"]).await;
    assert_eq!(out.code, OK, "{out:?}");
    let again = out.json();
    assert_eq!(again["spec"]["reset"]["clearHeartbeatDetails"], false);
    assert_ne!(again["spec"]["reset"]["requestedAt"], p["spec"]["reset"]["requestedAt"]);

    let out = env.run(&["pause", "nope"]).await;
    assert_eq!(out.code, ERROR, "{out:?}");
    env.finish().await;
}

#[tokio::test]
async fn watch_without_a_terminal_prints_changes_and_ends() {
    let env = Env::new("cli-watch").await;
    let flags = ["--start-to-close-timeout", "2m", "--heartbeat-timeout", "2s"];
    env.start("w1", &flags, &progress_script(6, "1")).await;
    env.start("w2", &flags, &progress_script(3, "1")).await;
    let child = tokio::process::Command::new(common::BIN)
        .args(env.args(&["watch", "w1", "w2"]))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn watch");
    let out = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
        .await
        .expect("watch ends when both activities finished")
        .expect("watch output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(OK), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for name in ["w1", "w2"] {
        let a = env.get(name).await.unwrap_or_default();
        assert_eq!(phase(&a), "Succeeded", "watch ended only after {name} finished");
    }
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.first().is_some_and(|l| l.starts_with("NAME")), "{stdout}");
    assert_eq!(lines.last().copied(), Some("2/2 finished: 2 Succeeded"), "{stdout}");
    assert!(!stdout.contains('\u{1b}'), "plain lines without a terminal: {stdout}");
    // w1's progress as printed, line after line: it moves forward and reaches 6/6.
    let seen: Vec<u32> = lines
        .iter()
        .filter(|l| l.starts_with("w1 "))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_suffix("/6")?.parse().ok()))
        .collect();
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{stdout}");
    assert!(
        seen.iter().any(|n| (1..6).contains(n)) && seen.last() == Some(&6),
        "partial and full progress of w1: {stdout}"
    );
    env.finish().await;
}
