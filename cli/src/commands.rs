//! The commands: thin I/O around `model` (reading) and `render` (showing).

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Args;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Event as CoreEvent;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, ValidationDirective};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

use crate::client::{Conn, connect};
use crate::model::ActivityState;
use crate::render::{self, EventView, Style, Tracked};
use crate::{Cli, Command, EXIT_NOT_SUCCEEDED, EXIT_OK, Output};

/// The worker image `start` uses by default: the one of this plugin's version.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/heartbeat-dev/activity-worker:", env!("CARGO_PKG_VERSION"));
/// Field manager of the plugin's writes.
pub const FIELD_MANAGER: &str = "kubectl-activity";

fn duration(s: &str) -> Result<String, String> {
    activity_crds::parse_duration(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("{e} (use Go-style durations such as 500ms, 30s, 2m, 1h30m)"))
}

fn json_value(s: &str) -> Result<Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not valid JSON: {e} (quote it for the shell: --input '{{\"n\": 1}}')"))
}

fn coefficient(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(c) if c.is_finite() && c >= 1.0 => Ok(c),
        _ => Err("must be a number of at least 1 (e.g. 2.0)".into()),
    }
}

fn env_var(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err("expected NAME=VALUE".into()),
    }
}

/// Flags of `start` and `execute`, named like the Temporal CLI's.
#[derive(Args, Debug, Clone)]
#[command(group(
    clap::ArgGroup::new("timeout").required(true).multiple(true).args(["start_to_close_timeout", "schedule_to_close_timeout"])
))]
pub struct StartArgs {
    /// Name of the Activity to create.
    pub name: String,
    /// Worker image; with `-- CMD ARGS…` its entrypoint must be `activity-worker` (it gets `exec -- CMD ARGS…`).
    #[arg(long, default_value = DEFAULT_IMAGE)]
    pub image: String,
    /// Maximum duration of one attempt (e.g. 10m). This or --schedule-to-close-timeout is required.
    #[arg(long, value_parser = duration)]
    pub start_to_close_timeout: Option<String>,
    /// Maximum gap between heartbeats (at most the start-to-close timeout).
    #[arg(long, value_parser = duration)]
    pub heartbeat_timeout: Option<String>,
    /// Maximum time for the whole activity, retries included.
    #[arg(long, value_parser = duration)]
    pub schedule_to_close_timeout: Option<String>,
    /// Maximum time from an attempt's pod creation to its worker running.
    #[arg(long, value_parser = duration)]
    pub schedule_to_start_timeout: Option<String>,
    /// Delay before the second attempt (default 1s).
    #[arg(long, value_parser = duration)]
    pub retry_initial_interval: Option<String>,
    /// Multiplier of the delay per attempt, at least 1 (default 2.0).
    #[arg(long, value_parser = coefficient)]
    pub retry_backoff_coefficient: Option<f64>,
    /// Cap on the delay between attempts (default 100 × initial interval).
    #[arg(long, value_parser = duration)]
    pub retry_maximum_interval: Option<String>,
    /// Total number of attempts: 0 unlimited, 1 no retries (default 0).
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..))]
    pub retry_maximum_attempts: Option<i32>,
    /// Worker error type that fails the activity without retrying (repeatable).
    #[arg(long = "non-retryable-error-type", value_name = "TYPE")]
    pub non_retryable_error_types: Vec<String>,
    /// Input of the activity, as JSON (the worker gets it as ACTIVITY_INPUT).
    #[arg(long, value_parser = json_value)]
    pub input: Option<Value>,
    /// How long the worker may take to stop after a cancel (default 30s).
    #[arg(long, value_parser = duration)]
    pub cancellation_grace_period: Option<String>,
    /// Environment variable of the worker container, NAME=VALUE (repeatable).
    #[arg(short = 'e', long = "env", value_parser = env_var, value_name = "NAME=VALUE")]
    pub env: Vec<(String, String)>,
    /// Service account of the worker pod (default: activity-worker).
    #[arg(long)]
    pub service_account: Option<String>,
    /// The command the worker runs (`activity-worker exec -- CMD ARGS…`).
    #[arg(last = true, value_name = "CMD ARGS")]
    pub command: Vec<String>,
}

impl StartArgs {
    /// The Activity object these flags describe.
    pub fn activity(&self, namespace: &str) -> anyhow::Result<Value> {
        if self.start_to_close_timeout.is_none() && self.schedule_to_close_timeout.is_none() {
            bail!(
                "give --start-to-close-timeout (per attempt) or --schedule-to-close-timeout (whole activity), e.g. --start-to-close-timeout 10m"
            );
        }
        let mut container = json!({"name": "worker", "image": self.image});
        if !self.command.is_empty() {
            let mut args = vec!["exec".to_string(), "--".to_string()];
            args.extend(self.command.iter().cloned());
            container["args"] = json!(args);
        }
        if !self.env.is_empty() {
            container["env"] = self.env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect();
        }
        let mut pod_spec = json!({"containers": [container]});
        if let Some(sa) = &self.service_account {
            pod_spec["serviceAccountName"] = json!(sa);
        }
        let mut spec = json!({"template": {"spec": pod_spec}});
        let mut set = |key: &str, v: Option<Value>| {
            if let Some(v) = v {
                spec[key] = v;
            }
        };
        set("input", self.input.clone());
        set("startToCloseTimeout", self.start_to_close_timeout.clone().map(Value::from));
        set("heartbeatTimeout", self.heartbeat_timeout.clone().map(Value::from));
        set("scheduleToCloseTimeout", self.schedule_to_close_timeout.clone().map(Value::from));
        set("scheduleToStartTimeout", self.schedule_to_start_timeout.clone().map(Value::from));
        set("cancellationGracePeriod", self.cancellation_grace_period.clone().map(Value::from));
        let mut retry = serde_json::Map::new();
        let mut put = |key: &str, v: Option<Value>| {
            if let Some(v) = v {
                retry.insert(key.to_string(), v);
            }
        };
        put("initialInterval", self.retry_initial_interval.clone().map(Value::from));
        put("backoffCoefficient", self.retry_backoff_coefficient.map(Value::from));
        put("maximumInterval", self.retry_maximum_interval.clone().map(Value::from));
        put("maximumAttempts", self.retry_maximum_attempts.map(Value::from));
        if !self.non_retryable_error_types.is_empty() {
            put("nonRetryableErrorTypes", Some(json!(self.non_retryable_error_types)));
        }
        if !retry.is_empty() {
            spec["retryPolicy"] = Value::Object(retry);
        }
        Ok(json!({
            "apiVersion": "heartbeat.dev/v1alpha1",
            "kind": "Activity",
            "metadata": {"name": self.name, "namespace": namespace},
            "spec": spec,
        }))
    }
}

/// Runs the command; returns the exit code.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    let g = &cli.global;
    let output = g.output;
    if g.all_namespaces && !matches!(cli.command, Command::List { .. } | Command::Watch { .. }) {
        bail!("-A/--all-namespaces works with `list` and `watch` only; name the namespace with -n");
    }
    if output.is_some() && matches!(cli.command, Command::Watch { .. } | Command::Logs { .. }) {
        bail!("-o is not supported by `watch` and `logs`: use `kubectl activity list -o json` or `describe -o json`");
    }
    let conn = connect(g).await?;
    match cli.command {
        Command::Start(args) => {
            let obj = start(&conn, &args).await?;
            print_object_or(output, &obj, || format!("activity.heartbeat.dev/{} created", args.name))?;
            Ok(EXIT_OK)
        }
        Command::Execute(args) => {
            start(&conn, &args).await?;
            if output.is_none() {
                eprintln!("activity.heartbeat.dev/{} created; waiting for it to finish", args.name);
            }
            result(&conn, &args.name, output).await
        }
        Command::Result { name } => result(&conn, &name, output).await,
        Command::List { selector } => list(&conn, g.all_namespaces, selector.as_deref(), output).await,
        Command::Describe { name } => describe(&conn, &name, output).await,
        Command::Watch { names, selector } => crate::watch::run(&conn, names, selector, g.all_namespaces).await,
        Command::Logs { name, all_attempts, follow, container } => {
            crate::logs::run(&conn, &name, all_attempts, follow, container).await
        }
        Command::Cancel { name, delete, wait } => cancel(&conn, &name, delete, wait, output).await,
        Command::Pause { name } => {
            let obj = patch_spec(&conn, &name, json!({"spec": {"paused": true}}), "paused").await?;
            print_object_or(output, &obj, || format!("activity.heartbeat.dev/{name} paused"))?;
            Ok(EXIT_OK)
        }
        Command::Unpause { name } => {
            let obj = patch_spec(&conn, &name, json!({"spec": {"paused": false}}), "paused").await?;
            print_object_or(output, &obj, || format!("activity.heartbeat.dev/{name} unpaused"))?;
            Ok(EXIT_OK)
        }
        Command::Reset { name, clear_heartbeat_details } => {
            let now = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
            let patch =
                json!({"spec": {"reset": {"requestedAt": now, "clearHeartbeatDetails": clear_heartbeat_details}}});
            let obj = patch_spec(&conn, &name, patch, "reset").await?;
            let what = if clear_heartbeat_details { " (heartbeat details cleared)" } else { "" };
            print_object_or(output, &obj, || format!("activity.heartbeat.dev/{name} reset requested at {now}{what}"))?;
            Ok(EXIT_OK)
        }
    }
}

async fn start(conn: &Conn, args: &StartArgs) -> anyhow::Result<DynamicObject> {
    let obj: DynamicObject = serde_json::from_value(args.activity(&conn.namespace)?)?;
    let pp = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    conn.activities().create(&pp, &obj).await.map_err(|e| conn.explain(e, Some(&args.name)))
}

/// The object as kubectl prints it with `-o json|yaml` (without managedFields).
pub fn object_json(obj: &DynamicObject) -> anyhow::Result<Value> {
    let mut v = serde_json::to_value(obj)?;
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    Ok(v)
}

pub fn print_value(output: Output, v: &Value) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(v)?),
        Output::Yaml => print!("{}", serde_norway::to_string(v)?),
    }
    Ok(())
}

fn print_object_or(output: Option<Output>, obj: &DynamicObject, text: impl FnOnce() -> String) -> anyhow::Result<()> {
    match output {
        Some(o) => print_value(o, &object_json(obj)?),
        None => {
            println!("{}", text());
            Ok(())
        }
    }
}

/// A merge patch of the spec; fails when the cluster's CRD does not know the field (`what`).
async fn patch_spec(conn: &Conn, name: &str, patch: Value, what: &str) -> anyhow::Result<DynamicObject> {
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        field_validation: Some(ValidationDirective::Strict),
        ..Default::default()
    };
    let obj = conn.activities().patch(name, &pp, &Patch::Merge(&patch)).await.map_err(|e| match e {
        // Strict field validation: 400 (BadRequest) or 422 (Invalid) naming the unknown field.
        kube::Error::Api(s) if s.message.contains(&format!("unknown field \"spec.{what}")) => anyhow!(
            "the Activity CRD in this cluster has no spec.{what}: upgrade the operator and its CRD (crds/activity.yaml)"
        ),
        e => conn.explain(e, Some(name)),
    })?;
    if obj.data.get("spec").and_then(|s| s.get(what)).is_none() {
        bail!(
            "the API server dropped spec.{what}: the Activity CRD in this cluster is older than this plugin; upgrade the operator and its CRD (crds/activity.yaml)"
        );
    }
    Ok(obj)
}

fn state_of(obj: &DynamicObject) -> ActivityState {
    serde_json::to_value(obj).map(|v| ActivityState::from_value(&v)).unwrap_or_default()
}

/// Watches one activity until `done` accepts it; `None` when it was deleted. With `live` and
/// while stderr is a terminal, a live status line is drawn there.
pub async fn wait_for_activity(
    conn: &Conn,
    name: &str,
    live: bool,
    done: impl Fn(&ActivityState) -> bool,
) -> anyhow::Result<Option<(DynamicObject, ActivityState)>> {
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(conn.activities(), cfg).default_backoff().boxed();
    let live = (live && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar
    });
    let mut tracked: Option<Tracked> = None;
    let mut seen = false;
    let mut listed = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // One handler for the whole loop, so a Ctrl-C between two iterations is not missed.
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let result = loop {
        tokio::select! {
            ev = events.next() => {
                let Some(ev) = ev else { break Err(anyhow!("the watch of activity \"{name}\" ended")) };
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) if !listed => break Err(match e {
                        watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e) => conn.explain(e, Some(name)),
                        e => anyhow!(e),
                    }),
                    Err(_) => continue,
                };
                match ev {
                    watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => {
                        seen = true;
                        let state = state_of(&obj);
                        match tracked.as_mut() {
                            Some(t) => t.update(state.clone()),
                            None => tracked = Some(Tracked::new(state.clone())),
                        }
                        if done(&state) {
                            break Ok(Some((obj, state)));
                        }
                    }
                    watcher::Event::Delete(_) => break Ok(None),
                    watcher::Event::InitDone => {
                        listed = true;
                        if !seen {
                            break Err(anyhow!("activity \"{name}\" not found in namespace \"{}\" (see `kubectl activity list -n {}`)", conn.namespace, conn.namespace));
                        }
                    }
                    watcher::Event::Init => {}
                }
            }
            _ = tick.tick() => {}
            _ = &mut ctrl_c => {
                if let Some(bar) = &live { bar.finish_and_clear(); }
                eprintln!("interrupted; the activity goes on (see `kubectl activity result {name}`)");
                std::process::exit(i32::from(crate::EXIT_INTERRUPTED));
            }
        }
        if let (Some(bar), Some(t)) = (&live, &tracked) {
            let lines = render::table(&[t], Timestamp::now(), Style::TERMINAL, false, false);
            bar.set_message(lines.join(" "));
        }
    };
    if let Some(bar) = &live {
        bar.finish_and_clear();
    }
    result
}

async fn result(conn: &Conn, name: &str, output: Option<Output>) -> anyhow::Result<u8> {
    let Some((obj, state)) = wait_for_activity(conn, name, true, ActivityState::is_finished).await? else {
        bail!("activity \"{name}\" was deleted before it finished");
    };
    if let Some(o) = output {
        print_value(o, &object_json(&obj)?)?;
    } else if state.succeeded() {
        println!("{}", serde_json::to_string_pretty(state.result.as_ref().unwrap_or(&Value::Null))?);
    } else {
        let phase = state.phase.as_deref().unwrap_or("?");
        let failure = state.last_failure.as_ref().map(|f| {
            let attempt = f.attempt.map(|a| format!(" on attempt {a}")).unwrap_or_default();
            format!("{attempt}: {}", f.summary())
        });
        eprintln!(
            "activity {}/{name} {phase}{} (see `kubectl activity describe {name} -n {}` and `kubectl activity logs {name} --all-attempts -n {}`)",
            conn.namespace,
            failure.unwrap_or_default(),
            conn.namespace,
            conn.namespace
        );
    }
    Ok(if state.succeeded() { EXIT_OK } else { EXIT_NOT_SUCCEEDED })
}

/// All activities of the namespace (or every namespace), sorted by namespace and name.
pub async fn list_objects(conn: &Conn, all: bool, selector: Option<&str>) -> anyhow::Result<Vec<DynamicObject>> {
    let api = if all { conn.all_activities() } else { conn.activities() };
    let mut lp = ListParams::default();
    if let Some(s) = selector {
        lp = lp.labels(s);
    }
    let mut items = api.list(&lp).await.map_err(|e| conn.explain(e, None))?.items;
    items.sort_by(|a, b| (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name)));
    Ok(items)
}

async fn list(conn: &Conn, all: bool, selector: Option<&str>, output: Option<Output>) -> anyhow::Result<u8> {
    let items = list_objects(conn, all, selector).await?;
    if let Some(o) = output {
        let items: Vec<Value> = items.iter().map(object_json).collect::<anyhow::Result<_>>()?;
        print_value(o, &json!({"apiVersion": "v1", "kind": "List", "items": items, "metadata": {}}))?;
        return Ok(EXIT_OK);
    }
    if items.is_empty() {
        if all {
            eprintln!("No activities found.");
        } else {
            eprintln!("No activities found in namespace \"{}\".", conn.namespace);
        }
        return Ok(EXIT_OK);
    }
    let tracked: Vec<Tracked> = items.iter().map(|o| Tracked::new(state_of(o))).collect();
    let refs: Vec<&Tracked> = tracked.iter().collect();
    for line in render::table(&refs, Timestamp::now(), crate::stdout_style(), all, true) {
        println!("{line}");
    }
    Ok(EXIT_OK)
}

async fn describe(conn: &Conn, name: &str, output: Option<Output>) -> anyhow::Result<u8> {
    let obj = conn.activities().get(name).await.map_err(|e| conn.explain(e, Some(name)))?;
    let state = state_of(&obj);
    let events = events_of(conn, name, obj.metadata.uid.as_deref()).await.unwrap_or_else(|e| {
        eprintln!("warning: cannot list the events of {name}: {e:#}");
        Vec::new()
    });
    let now = Timestamp::now();
    match output {
        Some(o) => print_value(o, &serde_json::to_value(render::description(&state, &events, now))?)?,
        None => print!("{}", render::describe_text(&state, &events, now, crate::stdout_style())),
    }
    Ok(EXIT_OK)
}

/// How many of the most recent events `describe` shows.
const EVENTS_SHOWN: usize = 20;

async fn events_of(conn: &Conn, name: &str, uid: Option<&str>) -> anyhow::Result<Vec<EventView>> {
    let lp = ListParams::default().fields(&format!("involvedObject.kind=Activity,involvedObject.name={name}"));
    let list = conn.api::<CoreEvent>().list(&lp).await.context("listing events")?;
    let mut events: Vec<EventView> = list
        .items
        .into_iter()
        .filter(|e| uid.is_none() || e.involved_object.uid.is_none() || e.involved_object.uid.as_deref() == uid)
        .map(|e| EventView {
            time: e
                .last_timestamp
                .map(|t| t.0)
                .or(e.series.as_ref().and_then(|s| s.last_observed_time.as_ref()).map(|t| t.0))
                .or(e.event_time.map(|t| t.0))
                .or(e.first_timestamp.map(|t| t.0))
                .or(e.metadata.creation_timestamp.map(|t| t.0)),
            type_: e.type_.unwrap_or_default(),
            reason: e.reason.unwrap_or_default(),
            message: e.message.unwrap_or_default().trim().to_string(),
            count: e.count.map(i64::from).or(e.series.and_then(|s| s.count).map(i64::from)).unwrap_or(1),
        })
        .collect();
    events.sort_by_key(|e| e.time);
    let skip = events.len().saturating_sub(EVENTS_SHOWN);
    Ok(events.split_off(skip))
}

async fn cancel(conn: &Conn, name: &str, delete: bool, wait: bool, output: Option<Output>) -> anyhow::Result<u8> {
    if delete {
        let dp = DeleteParams::default();
        conn.activities().delete(name, &dp).await.map_err(|e| conn.explain(e, Some(name)))?;
        if output.is_none() {
            println!("activity.heartbeat.dev/{name} deleted (the worker is stopped before it goes)");
        }
        if wait {
            let gone = wait_for_activity(conn, name, true, |_| false).await;
            match gone {
                Ok(None) => {}
                Err(e) if e.to_string().contains("not found") => {}
                Err(e) => return Err(e),
                Ok(Some(_)) => {}
            }
            if output.is_none() {
                println!("activity.heartbeat.dev/{name} gone");
            }
        }
        return Ok(EXIT_OK);
    }
    let pp = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let patch = json!({"spec": {"cancelRequested": true}});
    let obj =
        conn.activities().patch(name, &pp, &Patch::Merge(&patch)).await.map_err(|e| conn.explain(e, Some(name)))?;
    if !wait {
        print_object_or(output, &obj, || format!("activity.heartbeat.dev/{name} cancel requested"))?;
        return Ok(EXIT_OK);
    }
    if output.is_none() {
        println!("activity.heartbeat.dev/{name} cancel requested; waiting for it to finish");
    }
    let Some((obj, state)) = wait_for_activity(conn, name, true, ActivityState::is_finished).await? else {
        bail!("activity \"{name}\" was deleted before it finished");
    };
    print_object_or(output, &obj, || {
        format!("activity.heartbeat.dev/{name} {}", state.phase.clone().unwrap_or_default())
    })?;
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> StartArgs {
        let mut argv = vec!["kubectl-activity", "start"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(Command::Start(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn start_builds_an_exec_activity() {
        let a = parse(&[
            "job",
            "--start-to-close-timeout",
            "10m",
            "--heartbeat-timeout=30s",
            "--retry-maximum-attempts",
            "3",
            "--retry-backoff-coefficient",
            "1.5",
            "--input",
            r#"{"n": 2}"#,
            "-e",
            "A=b=c",
            "--",
            "sh",
            "-c",
            "echo hi",
        ]);
        let v = a.activity("ns").unwrap();
        assert_eq!(
            v,
            json!({
                "apiVersion": "heartbeat.dev/v1alpha1", "kind": "Activity",
                "metadata": {"name": "job", "namespace": "ns"},
                "spec": {
                    "template": {"spec": {"containers": [{"name": "worker", "image": DEFAULT_IMAGE,
                        "args": ["exec", "--", "sh", "-c", "echo hi"], "env": [{"name": "A", "value": "b=c"}]}]}},
                    "input": {"n": 2}, "startToCloseTimeout": "10m", "heartbeatTimeout": "30s",
                    "retryPolicy": {"backoffCoefficient": 1.5, "maximumAttempts": 3}
                }
            })
        );
    }

    #[test]
    fn start_needs_a_timeout_and_valid_values() {
        let e = Cli::try_parse_from(["kubectl-activity", "start", "job"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--start-to-close-timeout"), "{e}");
        let only_total = parse(&["job", "--schedule-to-close-timeout", "1h"]).activity("ns").unwrap();
        assert_eq!(only_total["spec"]["scheduleToCloseTimeout"], "1h");
        for bad in [
            vec!["start", "j", "--start-to-close-timeout", "10 minutes"],
            vec!["start", "j", "--input", "{nope"],
            vec!["start", "j", "--retry-backoff-coefficient", "0.5"],
            vec!["start", "j", "--retry-maximum-attempts", "-1"],
        ] {
            let mut argv = vec!["kubectl-activity"];
            argv.extend(bad.iter());
            let e = Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }
}
