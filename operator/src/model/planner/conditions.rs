//! The standard conditions the planner keeps: `Running`, `Finished`, `Succeeded` and, while
//! paused, `Paused`.

use activity_crds::{ActivityStatus, Phase};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// A condition the planner wants: its type, status and message.
struct Wanted {
    type_: &'static str,
    state: &'static str,
    message: String,
}

/// The condition types the planner manages (`Paused` is present only while paused); the others
/// (`Stalled`, set and cleared by the runtime) are left as they are.
const MANAGED: [&str; 4] = ["Running", "Finished", "Succeeded", "Paused"];

/// The standard conditions for `status`: `Running`, `Finished` and `Succeeded`, keeping
/// `lastTransitionTime` of a condition whose status did not change.
pub(super) fn conditions(
    previous: &[Condition],
    status: &ActivityStatus,
    waiting: Option<&str>,
    paused_spec: bool,
    now: Timestamp,
) -> Vec<Condition> {
    let Some(phase) = status.phase else {
        return previous.to_vec();
    };
    let others = previous.iter().filter(|c| !MANAGED.contains(&c.type_.as_str())).cloned();
    wanted(phase, status, waiting, paused_spec)
        .into_iter()
        .map(|w| {
            let old = previous.iter().find(|c| c.type_ == w.type_);
            let last_transition_time = match old {
                Some(c) if c.status == w.state => c.last_transition_time.clone(),
                _ => Time(now),
            };
            Condition {
                type_: w.type_.to_string(),
                status: w.state.to_string(),
                reason: phase.as_str().to_string(),
                message: w.message,
                last_transition_time,
                observed_generation: status.observed_generation,
            }
        })
        .chain(others)
        .collect()
}

fn wanted(phase: Phase, status: &ActivityStatus, waiting: Option<&str>, paused_spec: bool) -> Vec<Wanted> {
    let reason = phase.as_str();
    let terminal = phase.is_terminal();
    let attempt = status.attempt.unwrap_or(0);
    let running_message = match (phase, waiting) {
        (Phase::Pending, Some(w)) => format!("attempt {attempt}: waiting for the worker: {w}"),
        (Phase::Running, _) => format!("attempt {attempt} is running"),
        _ => format!("phase {reason}"),
    };
    let finished_message = match (&status.last_failure, phase) {
        (Some(f), Phase::Failed | Phase::TimedOut) => f.message.clone(),
        _ if terminal => format!("phase {reason}"),
        _ => "not finished".to_string(),
    };
    let succeeded = match phase {
        Phase::Succeeded => "True",
        _ if terminal => "False",
        _ => "Unknown",
    };
    let true_if = |yes: bool| if yes { "True" } else { "False" };
    let mut wanted = vec![
        Wanted { type_: "Running", state: true_if(phase == Phase::Running), message: running_message },
        Wanted { type_: "Finished", state: true_if(terminal), message: finished_message.clone() },
        Wanted { type_: "Succeeded", state: succeeded, message: finished_message },
    ];
    if phase == Phase::Paused || (paused_spec && !terminal) {
        let message = if phase == Phase::Paused {
            "paused: no attempt starts until spec.paused is false".to_string()
        } else {
            format!("pause requested: attempt {attempt} stops when its worker hears of it")
        };
        wanted.push(Wanted { type_: "Paused", state: "True", message });
    }
    wanted
}
