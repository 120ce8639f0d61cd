//! The standard conditions the planner keeps: `Running`, `Finished`, `Succeeded` and, while
//! paused, `Paused`.

use activity_crds::{ActivityStatus, Phase};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

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
    let reason = phase.as_str().to_string();
    let terminal = phase.is_terminal();
    let running_message = match (phase, waiting) {
        (Phase::Pending, Some(w)) => format!("attempt {}: waiting for the worker: {w}", status.attempt.unwrap_or(0)),
        (Phase::Running, _) => format!("attempt {} is running", status.attempt.unwrap_or(0)),
        _ => format!("phase {reason}"),
    };
    let finished_message = match (&status.last_failure, phase) {
        (Some(f), Phase::Failed | Phase::TimedOut) => f.message.clone(),
        _ if terminal => format!("phase {reason}"),
        _ => "not finished".to_string(),
    };
    let paused = phase == Phase::Paused || (paused_spec && !terminal);
    let mut wanted = vec![
        ("Running", if phase == Phase::Running { "True" } else { "False" }, running_message),
        ("Finished", if terminal { "True" } else { "False" }, finished_message.clone()),
        (
            "Succeeded",
            match phase {
                Phase::Succeeded => "True",
                _ if terminal => "False",
                _ => "Unknown",
            },
            finished_message,
        ),
    ];
    if paused {
        let message = if phase == Phase::Paused {
            "paused: no attempt starts until spec.paused is false".to_string()
        } else {
            format!("pause requested: attempt {} stops when its worker hears of it", status.attempt.unwrap_or(0))
        };
        wanted.push(("Paused", "True", message));
    }
    // `Paused` is present only while paused.
    let managed = ["Running", "Finished", "Succeeded", "Paused"];
    // Conditions the planner does not manage (`Stalled`, set and cleared by the controller) stay.
    let others = previous.iter().filter(|c| !managed.contains(&c.type_.as_str())).cloned().collect::<Vec<_>>();
    wanted
        .into_iter()
        .map(|(type_, state, message)| {
            let old = previous.iter().find(|c| c.type_ == type_);
            let last_transition_time = match old {
                Some(c) if c.status == state => c.last_transition_time.clone(),
                _ => Time(now),
            };
            Condition {
                type_: type_.to_string(),
                status: state.to_string(),
                reason: reason.clone(),
                message,
                last_transition_time,
                observed_generation: status.observed_generation,
            }
        })
        .chain(others)
        .collect()
}
