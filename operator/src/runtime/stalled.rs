//! The `Stalled` condition: what keeps an activity from moving on (a missing service account,
//! missing RBAC, an API error that persists), shown on the Activity and as a Warning event, and
//! cleared once a pass succeeds.

use activity_crds::Activity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use serde_json::json;
use tracing::debug;

use crate::model::plan::Event;
use crate::model::reason::Reason;
use crate::runtime::api::ClusterApi;
use crate::runtime::context::{ActivityId, Context};
use crate::runtime::error::{Error, api_code, api_message, kube_err};
use crate::runtime::metrics::WriteKind;
use crate::runtime::writes;

/// The condition type that shows what keeps an activity from moving on.
pub const STALLED: &str = "Stalled";

/// Shows or clears the `Stalled` condition after a pass that ended with `result`. A failure to
/// do so is only logged: the next pass tries again.
pub async fn report<A: ClusterApi>(
    ctx: &Context<A>,
    act: &Activity,
    key: &ObjectRef<Activity>,
    result: &Result<Action, Error>,
) {
    let outcome = match result {
        Ok(_) => clear(ctx, act, key).await,
        Err(error) => match problem_of(error, ctx.memory.failures.count(key)) {
            Some(problem) => set(ctx, act, key, problem).await,
            None => Ok(()),
        },
    };
    if let Err(e) = outcome {
        debug!(error = %e, "the Stalled condition was not updated; the next pass tries again");
    }
}

/// What keeps an activity from moving on, as the user is shown it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: Reason,
    /// What happened and what to do about it.
    pub message: String,
}

impl Problem {
    fn new(reason: Reason, message: String) -> Option<Self> {
        Some(Problem { reason, message })
    }
}

/// What a failed pass means for the user, if it is worth showing. `failures_before` is the number of failed passes before this one: a transient
/// error (the API server busy, a timeout) is shown only once it persists.
pub fn problem_of(error: &Error, failures_before: u32) -> Option<Problem> {
    let Error::Kube { action, source } = error else { return None };
    let code = api_code(source);
    let message = api_message(source);
    let missing_account = message.contains("serviceaccount") && message.contains("not found");
    // RBAC's refusals name the user; a quota's or an admission plugin's are 403s too.
    let rbac = message.contains("User \"") && message.contains(" cannot ");
    match code {
        Some(403) if *action == "create pod" && missing_account => Problem::new(
            Reason::WorkerServiceAccountMissing,
            format!(
                "the attempt's worker pod names a service account that does not exist ({message}). Add this \
                 namespace to the chart's workerNamespaces (it creates the worker account and its Role \
                 there), or name an existing serviceAccountName in spec.template.spec"
            ),
        ),
        Some(403) if rbac => Problem::new(
            Reason::Forbidden,
            format!(
                "the operator may not {action}: {message}. Its service account lacks this permission: \
                 install the chart's RBAC for this namespace (rbac.create, watchNamespaces)"
            ),
        ),
        _ if *action == "create pod" => {
            Problem::new(Reason::PodCreateFailed, format!("cannot create the worker pod (retrying): {message}"))
        }
        Some(400 | 404 | 422) => Problem::new(Reason::ApiError, format!("{action}: {message} (retrying)")),
        _ if failures_before >= 2 => Problem::new(Reason::ApiError, format!("{action}: {message} (retrying)")),
        _ => None,
    }
}

/// Shows `message` as a Warning event (each repeat joins the Event's series) and in the
/// activity's `Stalled` condition (a JSON patch over a fresh read, so no other condition is
/// touched; written once per distinct message).
async fn set<A: ClusterApi>(
    ctx: &Context<A>,
    act: &Activity,
    key: &ObjectRef<Activity>,
    Problem { reason, message }: Problem,
) -> Result<(), Error> {
    ctx.may_write()?;
    ctx.publish(act, &[Event::warning(reason, message.clone())]);
    if ctx.memory.problems.is_shown(key, &message) {
        return Ok(());
    }
    let id = ActivityId::of(act)?;
    let read = ctx.api.get_activity(&id.namespace, &id.name).await.map_err(kube_err("get activity"))?;
    let Some(fresh) = read else { return Ok(()) };
    writes::patch_status_json(&ctx.api, &id, set_ops(&fresh, reason, &message)).await?;
    ctx.metrics.write(WriteKind::Status);
    ctx.memory.problems.shown(key, message);
    Ok(())
}

/// The JSON patch that sets the `Stalled` condition of `fresh`, keeping its transition time.
fn set_ops(fresh: &Activity, reason: Reason, message: &str) -> serde_json::Value {
    let conditions = fresh.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let index = conditions.iter().position(|c| c.type_ == STALLED);
    let since = index.and_then(|i| conditions.get(i)).map(|c| c.last_transition_time.clone());
    let condition = json!({
        "type": STALLED, "status": "True", "reason": reason.as_str(), "message": message,
        "lastTransitionTime": since.unwrap_or(Time(Timestamp::now())),
        "observedGeneration": fresh.metadata.generation,
    });
    match (&fresh.status, index) {
        (None, _) => json!([{ "op": "add", "path": "/status", "value": { "conditions": [condition] } }]),
        (Some(s), None) if s.conditions.is_empty() => {
            json!([{ "op": "add", "path": "/status/conditions", "value": [condition] }])
        }
        (Some(_), None) => json!([{ "op": "add", "path": "/status/conditions/-", "value": condition }]),
        (Some(_), Some(i)) => json!([
            { "op": "test", "path": format!("/status/conditions/{i}/type"), "value": STALLED },
            { "op": "replace", "path": format!("/status/conditions/{i}"), "value": condition },
        ]),
    }
}

/// Removes the `Stalled` condition after a pass that succeeded, if the activity shows one.
async fn clear<A: ClusterApi>(ctx: &Context<A>, act: &Activity, key: &ObjectRef<Activity>) -> Result<(), Error> {
    let remembered = ctx.memory.problems.clear(key);
    let shown = act.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == STALLED));
    if !remembered && !shown {
        return Ok(());
    }
    ctx.may_write()?;
    let id = ActivityId::of(act)?;
    let read = ctx.api.get_activity(&id.namespace, &id.name).await.map_err(kube_err("get activity"))?;
    let conditions = read.as_ref().and_then(|a| a.status.as_ref()).map(|s| s.conditions.as_slice());
    let Some(i) = conditions.unwrap_or_default().iter().position(|c| c.type_ == STALLED) else { return Ok(()) };
    let ops = json!([
        { "op": "test", "path": format!("/status/conditions/{i}/type"), "value": STALLED },
        { "op": "remove", "path": format!("/status/conditions/{i}") },
    ]);
    writes::patch_status_json(&ctx.api, &id, ops).await?;
    ctx.metrics.write(WriteKind::Status);
    Ok(())
}
