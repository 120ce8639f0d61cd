//! Pod status as the kubelet computes it (`pkg/kubelet/kubelet_pods.go` `getPhase`,
//! `pkg/kubelet/status/generate.go`), from the node's view of each container, and the strategic
//! merge patch of `pods/status` that writes it. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use crate::policy::RestartPolicy;

/// A finished container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminated {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Timestamp,
    pub container_id: Option<String>,
}

impl Terminated {
    /// The kubelet's reason for an exit code.
    pub fn reason_for(exit_code: i32) -> &'static str {
        if exit_code == 0 { "Completed" } else { "Error" }
    }
}

/// A container's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Waiting { reason: String, message: Option<String> },
    Running { started_at: Timestamp },
    Terminated(Terminated),
}

impl State {
    pub fn waiting(reason: &str, message: Option<String>) -> Self {
        Self::Waiting { reason: reason.to_string(), message }
    }
}

/// What the node knows about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub image_id: Option<String>,
    pub container_id: Option<String>,
    pub state: State,
    pub last_state: Option<Terminated>,
    pub restart_count: i32,
    pub ready: bool,
    pub started: bool,
    /// An init container with `restartPolicy: Always`.
    pub restartable: bool,
}

impl ContainerView {
    /// Running, terminated, or waiting to restart: this container has run before.
    fn has_started_ever(&self) -> bool {
        !matches!(self.state, State::Waiting { .. }) || self.last_state.is_some()
    }
}

/// Everything the status is computed from.
#[derive(Debug, Clone, Copy)]
pub struct PodView<'a> {
    pub pod: &'a Pod,
    pub init: &'a [ContainerView],
    pub containers: &'a [ContainerView],
    /// All containers have stopped for good (deleted, deadline, completed).
    pub pod_is_terminal: bool,
    /// `activeDeadlineSeconds` passed.
    pub deadline_exceeded: bool,
    /// The pod's "sandbox" (address, directories, credentials) is set up.
    pub sandbox_ready: bool,
    pub pod_ip: Option<&'a str>,
    pub host_ip: &'a str,
    pub start_time: Option<Timestamp>,
}

/// `status.phase`.
pub fn phase(v: &PodView<'_>) -> &'static str {
    // As the kubelet: terminal only once every container has stopped, so nothing that still runs
    // is reported as over (the operator starts a retry only after the last attempt's pod ended).
    if v.deadline_exceeded && v.pod_is_terminal {
        return "Failed";
    }
    let policy = RestartPolicy::parse(v.pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()));
    let mut pending_init = 0;
    let mut pending_sidecars = 0;
    let mut failed_init = 0;
    for c in v.init.iter().filter(|c| !c.restartable) {
        match &c.state {
            State::Running { .. } => pending_init += 1,
            State::Terminated(t) => failed_init += usize::from(t.exit_code != 0),
            State::Waiting { .. } => match &c.last_state {
                Some(t) => failed_init += usize::from(t.exit_code != 0),
                None => pending_init += 1,
            },
        }
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in v.init.iter().filter(|c| c.restartable) {
        match &c.state {
            State::Running { .. } => {
                pending_sidecars += usize::from(!c.started);
                running += 1;
            }
            State::Terminated(_) => {}
            State::Waiting { .. } => pending_sidecars += usize::from(c.last_state.is_none()),
        }
    }
    for c in v.containers {
        match &c.state {
            State::Running { .. } => running += 1,
            State::Terminated(t) => {
                stopped += 1;
                succeeded += usize::from(t.exit_code == 0);
            }
            State::Waiting { .. } if c.last_state.is_some() => stopped += 1,
            State::Waiting { .. } => waiting += 1,
        }
    }
    if failed_init > 0 && policy == RestartPolicy::Never {
        return "Failed";
    }
    let initialized_before = v.containers.iter().any(ContainerView::has_started_ever);
    if pending_init > 0 || (pending_sidecars > 0 && !initialized_before) || waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped == 0 {
        return "Pending";
    }
    if v.pod_is_terminal {
        return if stopped == succeeded { "Succeeded" } else { "Failed" };
    }
    match policy {
        RestartPolicy::Always => "Running",
        _ if stopped == succeeded => "Succeeded",
        RestartPolicy::Never => "Failed",
        RestartPolicy::OnFailure => "Running",
    }
}

/// A pod condition the node owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub type_: &'static str,
    pub status: bool,
    pub reason: Option<String>,
    pub message: Option<String>,
}

fn cond(type_: &'static str, status: bool, reason: Option<&str>, message: Option<String>) -> Condition {
    Condition { type_, status, reason: reason.map(str::to_string), message }
}

/// Go's `fmt.Sprintf("%s", []string{...})`.
fn go_list(names: &[&str]) -> String {
    format!("[{}]", names.join(" "))
}

fn not_ready_message(unknown: &[&str], unready: &[&str], what: &str) -> Option<String> {
    let mut parts = Vec::new();
    if !unknown.is_empty() {
        parts.push(format!("containers with unknown status: {}", go_list(unknown)));
    }
    if !unready.is_empty() {
        parts.push(format!("containers with {what} status: {}", go_list(unready)));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// The node's conditions in the kubelet's order: PodReadyToStartContainers, Initialized, Ready,
/// ContainersReady.
pub fn conditions(v: &PodView<'_>, phase: &str) -> Vec<Condition> {
    let spec = v.pod.spec.as_ref();
    let sandbox = cond("PodReadyToStartContainers", v.sandbox_ready && !v.pod_is_terminal, None, None);

    // Initialized
    let incomplete: Vec<&str> = v
        .init
        .iter()
        .filter(|c| match (&c.state, c.restartable) {
            (_, true) => !c.started,
            (State::Terminated(t), false) => t.exit_code != 0,
            _ => true,
        })
        .map(|c| c.name.as_str())
        .collect();
    let initialized = if phase == "Succeeded" {
        cond("Initialized", true, Some("PodCompleted"), None)
    } else if v.containers.iter().any(ContainerView::has_started_ever) {
        cond("Initialized", true, None, None)
    } else {
        match not_ready_message(&[], &incomplete, "incomplete") {
            Some(m) => cond("Initialized", false, Some("ContainersNotInitialized"), Some(m)),
            None => cond("Initialized", true, None, None),
        }
    };

    // ContainersReady
    let unready: Vec<&str> = v
        .init
        .iter()
        .filter(|c| c.restartable)
        .chain(v.containers)
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let containers_ready = match phase {
        "Succeeded" => cond("ContainersReady", false, Some("PodCompleted"), None),
        "Failed" => cond("ContainersReady", false, Some("PodFailed"), None),
        _ => match not_ready_message(&[], &unready, "unready") {
            Some(m) => cond("ContainersReady", false, Some("ContainersNotReady"), Some(m)),
            None => cond("ContainersReady", true, None, None),
        },
    };

    // Ready: ContainersReady and the readiness gates.
    let ready = if !containers_ready.status {
        Condition { type_: "Ready", ..containers_ready.clone() }
    } else {
        let existing = v.pod.status.as_ref().and_then(|s| s.conditions.as_ref());
        let gates: Vec<String> = spec
            .and_then(|s| s.readiness_gates.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|g| {
                let found = existing.and_then(|cs| cs.iter().find(|c| c.type_ == g.condition_type));
                match found {
                    None => Some(format!(
                        "corresponding condition of pod readiness gate \"{}\" does not exist.",
                        g.condition_type
                    )),
                    Some(c) if c.status != "True" => Some(format!(
                        "the status of pod readiness gate \"{}\" is not \"True\", but {}",
                        g.condition_type, c.status
                    )),
                    Some(_) => None,
                }
            })
            .collect();
        if gates.is_empty() {
            cond("Ready", true, None, None)
        } else {
            cond("Ready", false, Some("ReadinessGatesNotReady"), Some(gates.join(", ")))
        }
    };
    vec![sandbox, initialized, ready, containers_ready]
}

/// Remembers when each condition last changed, so `lastTransitionTime` only moves on a change.
#[derive(Debug, Clone, Default)]
pub struct ConditionClock {
    seen: BTreeMap<&'static str, (bool, Timestamp)>,
}

impl ConditionClock {
    /// Starts from the conditions already on the pod (a restarted node keeps their times).
    pub fn from_pod(pod: &Pod) -> Self {
        let mut seen = BTreeMap::new();
        for c in pod.status.as_ref().and_then(|s| s.conditions.as_ref()).into_iter().flatten() {
            let Some(t) = &c.last_transition_time else { continue };
            for owned in ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady"] {
                if c.type_ == owned {
                    seen.insert(owned, (c.status == "True", t.0));
                }
            }
        }
        Self { seen }
    }

    /// The transition time of `c` at `now`.
    pub fn stamp(&mut self, c: &Condition, now: Timestamp) -> Timestamp {
        match self.seen.get(c.type_) {
            Some((status, at)) if *status == c.status => *at,
            _ => {
                self.seen.insert(c.type_, (c.status, now));
                now
            }
        }
    }
}

/// RFC 3339 with seconds, as the API writes times.
pub fn time(t: Timestamp) -> Value {
    serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t)).unwrap_or(Value::Null)
}

fn opt_time(t: Option<Timestamp>) -> Value {
    t.map_or(Value::Null, time)
}

fn terminated_json(t: &Terminated) -> Value {
    json!({
        "exitCode": t.exit_code,
        "signal": t.signal,
        "reason": t.reason,
        "message": t.message,
        "startedAt": opt_time(t.started_at),
        "finishedAt": time(t.finished_at),
        "containerID": t.container_id,
    })
}

/// A container state with every key present (null for absent), so that a strategic merge patch
/// replaces the previous state instead of merging into it.
fn state_json(s: Option<&State>) -> Value {
    let (mut waiting, mut running, mut terminated) = (Value::Null, Value::Null, Value::Null);
    match s {
        Some(State::Waiting { reason, message }) => waiting = json!({"reason": reason, "message": message}),
        Some(State::Running { started_at }) => running = json!({"startedAt": time(*started_at)}),
        Some(State::Terminated(t)) => terminated = terminated_json(t),
        None => {}
    }
    json!({"waiting": waiting, "running": running, "terminated": terminated})
}

fn container_json(c: &ContainerView) -> Value {
    json!({
        "name": c.name,
        "image": c.image,
        "imageID": c.image_id.clone().unwrap_or_default(),
        "containerID": c.container_id,
        "ready": c.ready,
        "started": c.started,
        "restartCount": c.restart_count,
        "state": state_json(Some(&c.state)),
        "lastState": state_json(c.last_state.clone().map(State::Terminated).as_ref()),
    })
}

/// The `pods/status` strategic merge patch for the view, with each condition's
/// `lastTransitionTime`.
pub fn status_patch(v: &PodView<'_>, phase: &str, conditions: &[(Condition, Timestamp)]) -> Value {
    let ip_list = |ip: Option<&str>| ip.map_or(Value::Null, |ip| json!([{"ip": ip}]));
    let (reason, message) = if v.deadline_exceeded {
        (json!("DeadlineExceeded"), json!("Pod was active on the node longer than the specified deadline"))
    } else {
        (Value::Null, Value::Null)
    };
    let conditions: Vec<Value> = conditions
        .iter()
        .map(|(c, at)| {
            json!({
                "type": c.type_,
                "status": if c.status { "True" } else { "False" },
                "reason": c.reason,
                "message": c.message,
                "lastProbeTime": null,
                "lastTransitionTime": time(*at),
                "observedGeneration": v.pod.metadata.generation,
            })
        })
        .collect();
    let mut patch = json!({
        "metadata": {"uid": v.pod.metadata.uid},
        "status": {
            "observedGeneration": v.pod.metadata.generation,
            "phase": phase,
            "reason": reason,
            "message": message,
            "conditions": conditions,
            "hostIP": v.host_ip,
            "hostIPs": [{"ip": v.host_ip}],
            "podIP": v.pod_ip,
            "podIPs": ip_list(v.pod_ip),
            "startTime": opt_time(v.start_time),
            "initContainerStatuses": v.init.iter().map(container_json).collect::<Vec<_>>(),
            "containerStatuses": v.containers.iter().map(container_json).collect::<Vec<_>>(),
        }
    });
    if v.init.is_empty()
        && let Some(status) = patch.get_mut("status").and_then(Value::as_object_mut)
    {
        status.remove("initContainerStatuses");
    }
    patch
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
