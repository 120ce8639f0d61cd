//! The conformance suite (`sdk/conformance/scenarios/*.json`), run by the Rust SDK against a
//! scripted fake API server on loopback, like `fake_api.rs`. The Go SDK (`go test` in sdk/go)
//! and the Python SDK (pytest in sdk/python) run the same files.
//!
//! Each scenario runs on a fresh single-threaded runtime (as the `activity-worker` binary runs)
//! with `ActivityContext::from_env()`, so that SIGTERM handling is the SDK's own; the environment
//! and `KUBECONFIG` are set between runtimes, when no other thread of the test reads them.
//!
//! Features the Rust SDK lacks (see `KNOWN_GAPS`) are reported, not hidden: a scenario that needs
//! a missing stop cause is skipped with a message; one that only expects a missing outcome field
//! is checked with that field left out of the expectation.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use activity_worker::{
    ActivityContext, ApplicationError, CancelReason, EXIT_CANCELED, EXIT_FAILURE, EXIT_SUCCESS, Report, finish,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;

mod common;
use common::Request;

const NS: &str = "ns";
const NAME: &str = "a";
const ACTIVITY_PATH: &str = "/apis/heartbeat.dev/v1alpha1/namespaces/ns/activities/a";
const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// Scenario features the Rust SDK does not implement yet (docs/reference.md asks for them): the
/// feature, what to do, and why. Empty: the Rust SDK runs every scenario strictly (`pauseReset`,
/// `outcomeCause` and `nextRetryDelay` included).
const KNOWN_GAPS: &[(&str, Gap, &str)] = &[];

// No gap today: the variants are kept for the next feature a scenario asks for first.
#[allow(dead_code)]
#[derive(Clone, Copy, PartialEq, Eq)]
enum Gap {
    /// The scenario cannot run: skipped, reported.
    Skip,
    /// The scenario runs with the missing field left out of the expected outcome.
    Relax,
}

#[derive(Debug, Clone)]
struct Recorded {
    at: Instant,
    method: String,
    path: String,
    query: String,
    content_type: String,
    body: Value,
}

struct State {
    activity: Value,
    get_answers: Vec<Value>,
    patch_answers: Vec<Value>,
    patch_default: Value,
    requests: Vec<Recorded>,
}

impl State {
    fn count(&self, method: &str) -> usize {
        self.requests.iter().filter(|r| r.method == method).count()
    }
}

fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().expect("made an object above");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn status_body(answer: &Value) -> Value {
    let mut details = json!({});
    for k in ["retryAfterSeconds", "causes"] {
        if let Some(v) = answer.get(k) {
            details[k] = v.clone();
        }
    }
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": answer.get("message").cloned().unwrap_or(json!("")),
           "code": answer["status"], "details": details})
}

/// The scenario's answer to a request (GETs and PATCHes each in their order), after recording it;
/// a 200 applies the answer's `mutate` to the Activity and returns it.
fn answer(state: &Mutex<State>, request: Request) -> (u16, Value) {
    let (path, query) = request.target.split_once('?').unwrap_or((&request.target, ""));
    let mut st = state.lock().unwrap();
    st.requests.push(Recorded {
        at: Instant::now(),
        method: request.method.clone(),
        path: path.to_string(),
        query: query.to_string(),
        content_type: request.content_type,
        body: serde_json::from_slice(&request.body).unwrap_or(Value::Null),
    });
    let n = st.count(&request.method) - 1;
    let answer = if request.method == "GET" {
        st.get_answers.get(n).cloned().unwrap_or(json!({"status": 200}))
    } else {
        st.patch_answers.get(n).cloned().unwrap_or(st.patch_default.clone())
    };
    let code = answer["status"].as_u64().unwrap_or(500) as u16;
    if code == 200 {
        if let Some(m) = answer.get("mutate") {
            merge_patch(&mut st.activity, m);
        }
        (200, st.activity.clone())
    } else {
        (code, status_body(&answer))
    }
}

/// The worker's log (ERROR lines), for `errorContains`.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Default)]
struct Trace {
    failures: Vec<String>,
    cause: Option<String>,
    returned: bool,
}

/// The neutral name of a cancel reason. Read from the variant's name, so that variants the SDK
/// gains (Paused, Reset) map to themselves without a change here.
fn cause_name(reason: &CancelReason) -> String {
    let debug = format!("{reason:?}");
    let variant = debug.split(['(', ' ', '{']).next().unwrap_or_default();
    match variant {
        "Deleted" | "CancelRequested" => "Canceled".into(),
        "Gone" => "NotFound".into(),
        other => other.into(),
    }
}

async fn wait_patches(state: &Arc<Mutex<State>>, n: usize) -> bool {
    let start = Instant::now();
    while state.lock().unwrap().count("PATCH") < n {
        if start.elapsed() > STEP_TIMEOUT {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// Runs the scenario's worker steps with the SDK and returns the exit code, as the binary would.
async fn run_worker(sc: &Value, state: &Arc<Mutex<State>>, tr: &mut Trace) -> i32 {
    let ctx = match ActivityContext::from_env().await {
        Ok(ctx) => ctx,
        Err(e) => {
            tracing::error!("cannot start the worker: {e}");
            return EXIT_FAILURE;
        }
    };
    for step in sc["worker"].as_array().cloned().unwrap_or_default() {
        if let Some(d) = step.get("heartbeat") {
            if let Err(e) = ctx.heartbeat(d) {
                tr.failures.push(format!("heartbeat: {e}"));
            }
        } else if let Some(ms) = step.get("sleepMs") {
            tokio::time::sleep(Duration::from_millis(ms.as_u64().unwrap_or(0))).await;
        } else if let Some(n) = step.get("waitPatches") {
            let n = n.as_u64().unwrap_or(0) as usize;
            if !wait_patches(state, n).await {
                tr.failures.push(format!("only {} patches, waited for {n}", state.lock().unwrap().count("PATCH")));
            }
        } else if step.get("waitCancelled").is_some() {
            if tokio::time::timeout(STEP_TIMEOUT, ctx.cancelled()).await.is_err() {
                tr.failures.push(format!("not cancelled within {STEP_TIMEOUT:?}"));
            }
        } else if let Some(want) = step.get("expectCancelled") {
            if Some(ctx.is_cancelled()) != want.as_bool() {
                tr.failures.push(format!("is_cancelled() is {}", ctx.is_cancelled()));
            }
        } else if let Some(want) = step.get("expectInfo") {
            let seen = json!({
                "attempt": ctx.attempt(),
                "heartbeatDetails": ctx.raw_heartbeat_details(),
                "input": ctx.raw_input(),
                "heartbeatTimeoutMs": ctx.heartbeat_timeout().map(|d| d.as_millis() as u64),
                "heartbeatIntervalMs": ctx.heartbeat_interval().as_millis() as u64,
            });
            for (k, v) in want.as_object().cloned().unwrap_or_default() {
                if seen[&k] != v {
                    tr.failures.push(format!("info {k}: got {}, want {v}", seen[&k]));
                }
            }
        } else if step.get("signal").is_some() {
            let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGTERM);
        } else if let Some(ret) = step.get("return") {
            tr.returned = true;
            tr.cause = ctx.cancel_reason().map(|r| cause_name(&r));
            // The public cause() names the contract's causes the same way.
            if let Some(c) = ctx.cause() {
                let named = format!("{c:?}");
                if tr.cause.as_deref() != Some(named.as_str()) {
                    tr.failures.push(format!("cause() is {named}, the cancel reason {:?}", tr.cause));
                }
            }
            let (report, code) = if ret == "canceled" {
                if !ctx.is_cancelled() {
                    tr.failures.push("returning canceled, but the context is not cancelled".into());
                }
                (Report::Canceled, EXIT_CANCELED)
            } else if let Some(e) = ret.get("error") {
                // Through the SDK's ApplicationError, as an activity builds it.
                let mut app = ApplicationError::new(
                    e["type"].as_str().unwrap_or_default(),
                    e["message"].as_str().unwrap_or_default(),
                );
                if e["nonRetryable"].as_bool() == Some(true) {
                    app = app.non_retryable();
                }
                if let Some(d) = e.get("nextRetryDelay").and_then(Value::as_str) {
                    match activity_crds::parse_duration(d) {
                        Ok(d) => app = app.next_retry_delay(d),
                        Err(err) => {
                            tr.failures.push(format!("the scenario's nextRetryDelay: {err}"));
                            return EXIT_FAILURE;
                        }
                    }
                }
                (Report::from(app), EXIT_FAILURE)
            } else {
                (Report::Completed(Some(ret["result"].clone())), EXIT_SUCCESS)
            };
            let code = finish(&ctx, report, code).await;
            // finish() logs only "outcome not written"; the full error (naming the missing
            // permission) is what a further write is refused with.
            if let Err(e) = ctx.flush().await {
                tracing::error!("{e}");
            }
            return code;
        }
    }
    tr.failures.push("the scenario's worker has no return step".into());
    EXIT_FAILURE
}

fn check_patch(i: usize, r: &Recorded, matcher: &Value, attempt: i64) -> Vec<String> {
    let mut out = Vec::new();
    let w = format!("patch {i}");
    if r.path != format!("{ACTIVITY_PATH}/status") {
        out.push(format!("{w}: path {}", r.path));
    }
    if !r.query.split('&').any(|q| q == "fieldManager=activity-worker") {
        out.push(format!("{w}: query {:?} lacks fieldManager=activity-worker", r.query));
    }
    if r.content_type.split(';').next().unwrap_or("").trim() != "application/json-patch+json" {
        out.push(format!("{w}: content type {:?}", r.content_type));
    }
    let ops = r.body.as_array().cloned().unwrap_or_default();
    if ops.first() != Some(&json!({"op": "test", "path": "/status/attempt", "value": attempt})) {
        out.push(format!("{w}: does not start with the test of the attempt: {}", r.body));
        return out;
    }
    let allowed = ["/status/lastHeartbeatTime", "/status/heartbeatDetails", "/status/outcome"];
    let mut paths = Vec::new();
    for op in &ops[1..] {
        let path = op["path"].as_str().unwrap_or_default().to_string();
        if op["op"] != "add" || !allowed.contains(&path.as_str()) {
            out.push(format!("{w}: unexpected op {op}"));
        }
        paths.push(path);
    }
    let value = |p: &str| ops[1..].iter().find(|o| o["path"] == p).map(|o| o["value"].clone());
    let mut want = Vec::new();
    if matcher.get("heartbeatDetails").is_some() {
        want.extend(["/status/lastHeartbeatTime", "/status/heartbeatDetails"]);
    }
    if matcher.get("outcome").is_some() {
        want.push("/status/outcome");
    }
    if paths != want {
        out.push(format!("{w}: ops {paths:?}, want {want:?}: {}", r.body));
        return out;
    }
    if let Some(d) = matcher.get("heartbeatDetails") {
        let ts = value("/status/lastHeartbeatTime").unwrap_or_default();
        let ts = ts.as_str().unwrap_or_default();
        let ok = ts.len() == 27 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.' && ts.as_bytes()[10] == b'T';
        if !ok {
            out.push(format!("{w}: lastHeartbeatTime {ts:?} is not RFC 3339 µs UTC"));
        }
        if value("/status/heartbeatDetails").as_ref() != Some(d) {
            out.push(format!("{w}: details {:?}, want {d}", value("/status/heartbeatDetails")));
        }
    }
    if let Some(o) = matcher.get("outcome")
        && value("/status/outcome").as_ref() != Some(o)
    {
        out.push(format!("{w}: outcome {:?}, want {o}", value("/status/outcome")));
    }
    out
}

/// Leaves the field of a relaxed known gap out of an outcome (the expected one and the one sent),
/// so the rest of it is still compared, and the check still passes once the SDK has the field.
fn relax_outcome(outcome: &mut Value, feature: &str) {
    match feature {
        "outcomeCause" => {
            if let Some(o) = outcome.as_object_mut() {
                o.remove("cause");
            }
        }
        "nextRetryDelay" => {
            if let Some(f) = outcome.get_mut("failure").and_then(Value::as_object_mut) {
                f.remove("nextRetryDelay");
            }
        }
        _ => {}
    }
}

fn relax(expect: &mut Value, feature: &str) {
    let strip = |m: &mut Value| {
        if let Some(o) = m.get_mut("outcome") {
            relax_outcome(o, feature);
        }
    };
    if let Some(ps) = expect.get_mut("patches").and_then(Value::as_array_mut) {
        ps.iter_mut().for_each(strip);
    }
    if let Some(m) = expect.get_mut("morePatches") {
        strip(m);
    }
}

fn run_scenario(file: &Path, logs: &LogBuffer) -> Result<Vec<String>, String> {
    let sc: Value = serde_json::from_str(&std::fs::read_to_string(file).map_err(|e| e.to_string())?)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let name = sc["name"].as_str().unwrap_or_default().to_string();
    let mut expect = sc["expect"].clone();
    let mut notes = Vec::new();
    let mut relaxed: Vec<String> = Vec::new();
    for feature in sc["features"].as_array().cloned().unwrap_or_default() {
        let feature = feature.as_str().unwrap_or_default();
        if let Some((_, gap, why)) = KNOWN_GAPS.iter().find(|(f, _, _)| *f == feature) {
            match gap {
                Gap::Skip => return Ok(vec![format!("{name}: SKIPPED, known gap of the Rust SDK: {why}")]),
                Gap::Relax => {
                    relax(&mut expect, feature);
                    relaxed.push(feature.to_string());
                    notes.push(format!("{name}: checked without `{feature}`, known gap of the Rust SDK: {why}"));
                }
            }
        }
    }
    let attempt = sc["attempt"].as_i64().unwrap_or(1);
    let served = &sc["activity"];
    let mut activity = json!({
        "apiVersion": "heartbeat.dev/v1alpha1", "kind": "Activity",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": served["spec"],
        "status": {"attempt": attempt},
    });
    merge_patch(&mut activity["metadata"], served.get("metadata").unwrap_or(&json!({})));
    merge_patch(&mut activity["status"], served.get("status").unwrap_or(&json!({})));
    let state = Arc::new(Mutex::new(State {
        activity,
        get_answers: sc["get"].as_array().cloned().unwrap_or_default(),
        patch_answers: sc["patch"].as_array().cloned().unwrap_or_default(),
        patch_default: sc.get("patchDefault").cloned().unwrap_or(json!({"status": 200})),
        requests: Vec::new(),
    }));

    // Bind first (std, no runtime yet) so that KUBECONFIG can name the port before any thread runs.
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    std_listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let url = format!("http://{}", std_listener.local_addr().map_err(|e| e.to_string())?);
    let kubeconfig = std::env::temp_dir().join(format!("conformance-kubeconfig-{}", std::process::id()));
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n\
             users:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context:\n    cluster: fake\n    user: u\n\
             current-context: c\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    // SAFETY: no other thread of this test binary runs now: the previous scenario's runtime was
    // shut down, the next one is built below, and this file holds the binary's only test.
    unsafe {
        std::env::set_var("KUBECONFIG", &kubeconfig);
        std::env::set_var("ACTIVITY_NAME", NAME);
        std::env::set_var("ACTIVITY_NAMESPACE", NS);
        std::env::set_var("ACTIVITY_ATTEMPT", attempt.to_string());
    }
    logs.0.lock().unwrap().clear();
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("runtime: {e}"))?;
    let mut tr = Trace::default();
    let code = runtime.block_on(async {
        let listener = TcpListener::from_std(std_listener).expect("a bound std listener converts");
        common::spawn_server(listener, state.clone(), answer);
        run_worker(&sc, &state, &mut tr).await
    });
    runtime.shutdown_timeout(Duration::from_millis(100));

    let mut problems = tr.failures;
    if code != expect["exit"].as_i64().unwrap_or(-1) as i32 {
        problems.push(format!("exit code {code}, want {}", expect["exit"]));
    }
    if expect["started"].as_bool().unwrap_or(true) {
        let want = expect["cause"].as_str().map(str::to_string);
        if !tr.returned {
            problems.push("the activity did not reach its return step".into());
        } else if tr.cause != want {
            problems.push(format!("cause {:?}, want {want:?}", tr.cause));
        }
    } else if tr.returned {
        problems.push("the activity ran, but the worker should not have started".into());
    }
    let log = String::from_utf8_lossy(&logs.0.lock().unwrap()).to_string();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    for text in expect["errorContains"].as_array().cloned().unwrap_or_default() {
        let text = text.as_str().unwrap_or_default();
        if !errors.iter().any(|l| l.contains(text)) {
            problems.push(format!("no error log contains {text:?}: {errors:?}"));
        }
    }
    let st = state.lock().unwrap();
    let gets: Vec<&Recorded> = st.requests.iter().filter(|r| r.method == "GET").collect();
    if let Some(n) = expect["gets"].as_u64()
        && gets.len() as u64 != n
    {
        problems.push(format!("{} GETs, want {n}", gets.len()));
    }
    for g in &gets {
        if g.path != ACTIVITY_PATH {
            problems.push(format!("GET of {}", g.path));
        }
    }
    let mut patches: Vec<Recorded> = st.requests.iter().filter(|r| r.method == "PATCH").cloned().collect();
    for p in &mut patches {
        for op in p.body.as_array_mut().into_iter().flatten() {
            if op["path"] == "/status/outcome" {
                relaxed.iter().for_each(|f| relax_outcome(&mut op["value"], f));
            }
        }
    }
    let listed = expect["patches"].as_array().cloned().unwrap_or_default();
    let more = expect.get("morePatches").cloned();
    if more.is_none() && patches.len() != listed.len() {
        let bodies: Vec<&Value> = patches.iter().map(|p| &p.body).collect();
        problems.push(format!("{} patches, want {}: {bodies:?}", patches.len(), listed.len()));
    }
    let least = listed.len().max(expect["minPatches"].as_u64().unwrap_or(0) as usize);
    if patches.len() < least {
        problems.push(format!("{} patches, want at least {least}", patches.len()));
    }
    for (i, p) in patches.iter().enumerate() {
        if let Some(m) = listed.get(i).or(more.as_ref()) {
            problems.extend(check_patch(i, p, m, attempt));
        }
    }
    for gap in expect["gaps"].as_array().cloned().unwrap_or_default() {
        let (from, to) = (gap["from"].as_u64().unwrap_or(0) as usize, gap["to"].as_u64().unwrap_or(0) as usize);
        if to < patches.len() {
            let seen = patches[to].at - patches[from].at;
            let least = Duration::from_millis(gap["atLeastMs"].as_u64().unwrap_or(0));
            if seen < least {
                problems.push(format!("patches {from}→{to} {seen:?} apart, want ≥ {least:?}"));
            }
        }
    }
    if problems.is_empty() { Ok(notes) } else { Err(format!("{name}: {}", problems.join("; "))) }
}

fn scenario_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/conformance/scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

#[test]
fn conformance() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .init();
    let files = scenario_files();
    assert!(!files.is_empty(), "no scenario files");
    let (mut passed, mut skipped, mut failed) = (0, 0, Vec::new());
    for file in &files {
        match run_scenario(file, &logs) {
            Ok(notes) => {
                if notes.iter().any(|n| n.contains("SKIPPED")) {
                    skipped += 1;
                } else {
                    passed += 1;
                }
                for n in notes {
                    eprintln!("KNOWN GAP {n}");
                }
            }
            Err(e) => failed.push(e),
        }
    }
    eprintln!(
        "conformance (Rust SDK): {passed} scenarios passed, {skipped} skipped as known gaps, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "scenarios failed:\n{}", failed.join("\n"));
}
