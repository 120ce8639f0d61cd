//! Table-driven tests of the planner: every phase × event × deadline, with fixed timestamps.

use super::*;
use crate::model::freshness::{creates_a_pod_unguarded, exit_without_outcome, judges_a_timeout, pod_to_confirm};
use crate::model::pod_view::{Exit, WorkerState};
use activity_crds::{MAX_PAYLOAD_BYTES, StopCause};
use activity_crds::{Outcome, WorkerFailure};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::json;

const T0: i64 = 1_800_000_000; // activity creation, whole seconds like the API's timestamps

fn at(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(T0 * 1000 + ms).unwrap()
}

fn activity(spec: serde_json::Value) -> Activity {
    let mut full = json!({"template": {"spec": {"containers": [{"name": "w", "image": "worker"}]}}});
    full.as_object_mut().unwrap().extend(spec.as_object().unwrap().clone());
    serde_json::from_value(json!({
        "apiVersion": "heartbeat.dev/v1alpha1", "kind": "Activity",
        "metadata": {"name": "job", "namespace": "ns", "uid": "u1", "generation": 1,
                     "creationTimestamp": at(0).to_string(), "finalizers": [FINALIZER]},
        "spec": full
    }))
    .unwrap()
}

/// The seed's settings: start-to-close 2m, heartbeat 5s, retry 1s × 2, 4 attempts.
fn seed() -> Activity {
    activity(json!({
        "startToCloseTimeout": "2m", "heartbeatTimeout": "5s",
        "retryPolicy": {"initialInterval": "1s", "backoffCoefficient": 2.0, "maximumAttempts": 4}
    }))
}

fn waiting(attempt: i32, reason: Option<&str>) -> PodView {
    PodView {
        name: format!("job-{attempt}"),
        attempt: Some(attempt),
        deleting: false,
        pod_live: true,
        stop_by: None,
        disrupted: false,
        tracked: true,
        worker: WorkerState::Waiting { reason: reason.map(String::from), message: None },
    }
}

fn running(attempt: i32, started_ms: i64) -> PodView {
    PodView {
        name: format!("job-{attempt}"),
        attempt: Some(attempt),
        deleting: false,
        pod_live: true,
        stop_by: None,
        disrupted: false,
        tracked: false,
        worker: WorkerState::Running { started_at: Some(at(started_ms)) },
    }
}

fn exited(attempt: i32, code: Option<i32>, reason: &str, disrupted: bool) -> PodView {
    PodView {
        name: format!("job-{attempt}"),
        attempt: Some(attempt),
        deleting: false,
        pod_live: false,
        stop_by: None,
        disrupted,
        tracked: false,
        worker: WorkerState::Exited(Exit {
            exit_code: code,
            reason: Some(reason.into()),
            message: None,
            disrupted,
            started_at: Some(at(0)),
        }),
    }
}

/// Applies a plan's status to the activity, as the controller's status write would.
fn applied(mut a: Activity, plan: &Plan) -> Activity {
    a.status = Some(plan.status.clone());
    a
}

/// An activity whose attempt `n` pod was created at `scheduled_ms` and is running since `started_ms`.
fn running_activity(mut a: Activity, n: i32, started_ms: i64) -> Activity {
    a.status = Some(ActivityStatus {
        phase: Some(Phase::Running),
        attempt: Some(n),
        pod_name: Some(format!("job-{n}")),
        scheduled_time: Some(MicroTime(at(started_ms - 500))),
        started_time: Some(MicroTime(at(started_ms))),
        ..ActivityStatus::default()
    });
    a
}

fn reasons(plan: &Plan) -> Vec<&'static str> {
    plan.events.iter().map(|e| e.reason.as_str()).collect()
}

fn raw(value: serde_json::Value) -> RawJson {
    RawJson::from_value(&value).unwrap()
}

#[test]
fn a_new_activity_gets_its_finalizer_and_first_pod_recorded() {
    let mut a = seed();
    a.metadata.finalizers = None;
    let p = plan(&a, &[], at(100));
    assert_eq!(p.effects, vec![Effect::AddFinalizer, Effect::CreatePod { attempt: 1 }]);
    assert_eq!(p.status.phase, Some(Phase::Pending));
    assert_eq!(p.status.attempt, Some(1));
    assert_eq!(p.status.pod_name.as_deref(), Some("job-1"));
    assert_eq!(p.status.scheduled_time, Some(MicroTime(at(100))));
    assert_eq!(p.status.observed_generation, Some(1));
    assert!(reasons(&p).is_empty(), "AttemptStarted is the controller's, once the pod exists: {:?}", reasons(&p));
    assert_eq!(p.requeue_after, None, "no deadline before the worker starts without scheduleToStart");
}

#[test]
fn a_pod_not_yet_in_the_cache_is_created_again_without_new_events() {
    let a = applied(seed(), &plan(&seed(), &[], at(100)));
    let p = plan(&a, &[], at(150));
    assert_eq!(p.effects, vec![Effect::CreatePod { attempt: 1 }]);
    assert!(p.events.is_empty());
    assert_eq!(p.status, a.status.clone().unwrap(), "nothing to write");
}

#[test]
fn the_worker_starting_moves_to_running_and_arms_both_deadlines() {
    let a = applied(seed(), &plan(&seed(), &[], at(100)));
    // startedAt has whole seconds: 0 s reported, seen at 2.3 s; true start is within [0, 1 s).
    let p = plan(&a, &[running(1, 0)], at(2_300));
    assert_eq!(p.status.phase, Some(Phase::Running));
    assert_eq!(p.status.started_time, Some(MicroTime(at(1_000))));
    assert!(p.effects.is_empty());
    // heartbeat deadline 1 s + 5 s = 6 s, sooner than start-to-close (121 s)
    assert_eq!(p.requeue_after, Some(Duration::from_millis(3_701)));
    // seen promptly: the start is taken as now
    let p = plan(&a, &[running(1, 0)], at(400));
    assert_eq!(p.status.started_time, Some(MicroTime(at(400))));
}

#[test]
fn a_heartbeat_changes_no_operator_field() {
    let mut a = running_activity(seed(), 1, 1_000);
    let first = plan(&a, &[running(1, 0)], at(2_000));
    a = applied(a, &first);
    let before = a.status.clone().unwrap();
    let status = a.status.as_mut().unwrap();
    status.last_heartbeat_time = Some(MicroTime(at(4_000)));
    status.heartbeat_details = Some(raw(json!({"lastItem": 3})));
    let p = plan(&a, &[running(1, 0)], at(4_010));
    assert!(p.effects.is_empty() && p.events.is_empty());
    let mut expected = before;
    expected.last_heartbeat_time = Some(MicroTime(at(4_000)));
    expected.heartbeat_details = Some(raw(json!({"lastItem": 3})));
    assert_eq!(p.status, expected, "only the worker's fields differ, so the operator writes nothing");
    // the heartbeat moved the deadline: 4 s + 5 s
    assert_eq!(p.requeue_after, Some(Duration::from_millis(4_991)));
}

#[test]
fn deadlines_are_never_enforced_early_and_enforced_at_the_instant() {
    // (case, spec, last heartbeat ms, now ms, expected timeout)
    let hb = json!({"startToCloseTimeout": "10s", "heartbeatTimeout": "2s"});
    type Case = (&'static str, serde_json::Value, Option<i64>, i64, Option<TimeoutType>);
    let table: [Case; 6] = [
        ("heartbeat 1 ms early", hb.clone(), None, 1_000 + 1_999, None),
        ("heartbeat at deadline", hb.clone(), None, 1_000 + 2_000, Some(TimeoutType::Heartbeat)),
        ("heartbeat after a beat", hb.clone(), Some(2_500), 2_500 + 1_999, None),
        ("heartbeat after a beat, late", hb.clone(), Some(2_500), 2_500 + 2_000, Some(TimeoutType::Heartbeat)),
        ("start-to-close 1 ms early", json!({"startToCloseTimeout": "10s"}), None, 10_999, None),
        (
            "start-to-close at deadline",
            json!({"startToCloseTimeout": "10s"}),
            None,
            11_000,
            Some(TimeoutType::StartToClose),
        ),
    ];
    for (case, spec, beat, now, expected) in table {
        let mut a = running_activity(activity(spec), 1, 1_000);
        a.status.as_mut().unwrap().last_heartbeat_time = beat.map(|b| MicroTime(at(b)));
        let p = plan(&a, &[running(1, 0)], at(now));
        let got = p.status.last_failure.as_ref().and_then(|f| f.timeout_type);
        assert_eq!(got, expected, "{case}");
        if expected.is_some() {
            assert_eq!(p.status.phase, Some(Phase::BackingOff), "{case}");
            assert!(p.has(&Effect::StopPod { name: "job-1".into() }), "{case}: the hung worker is stopped");
        } else {
            assert_eq!(p.status.phase, Some(Phase::Running), "{case}");
        }
    }
}

#[test]
fn a_heartbeat_timeout_schedules_the_retry_with_backoff() {
    let a = running_activity(seed(), 1, 1_000);
    let p = plan(&a, &[running(1, 0)], at(6_000));
    assert_eq!(reasons(&p), vec!["HeartbeatTimedOut", "RetryScheduled"]);
    let f = p.status.last_failure.clone().unwrap();
    assert_eq!(
        (f.type_.as_str(), f.timeout_type, f.non_retryable, f.attempt),
        ("Timeout", Some(TimeoutType::Heartbeat), false, 1)
    );
    assert_eq!(p.status.next_attempt_schedule_time, Some(MicroTime(at(7_000))));
    assert_eq!(p.status.attempts.len(), 1);
    assert_eq!(p.status.attempts[0].outcome, "TimedOut");
    assert_eq!(p.requeue_after, Some(Duration::from_millis(1_001)));
    // Backing off: nothing until the time comes, then attempt 2.
    let b = applied(a, &p);
    let early = plan(&b, &[exited(1, Some(143), "Error", false)], at(6_999));
    assert!(early.effects.is_empty() && early.events.is_empty());
    let next = plan(&b, &[exited(1, Some(143), "Error", false)], at(7_000));
    assert_eq!(next.effects, vec![Effect::CreatePod { attempt: 2 }]);
    assert_eq!((next.status.attempt, next.status.pod_name.as_deref()), (Some(2), Some("job-2")));
    assert_eq!(next.status.started_time, None);
    assert_eq!(next.status.next_attempt_schedule_time, None);
    assert_eq!(next.status.attempts.len(), 1, "history is not written twice");
}

#[test]
fn retries_follow_the_backoff_formula_until_maximum_attempts() {
    // Attempt n fails at 100 s; the delay before n+1 is 1 s × 2^(n−1); attempt 4 is the last.
    for (n, delay_ms) in [(1, 1_000), (2, 2_000), (3, 4_000)] {
        let a = running_activity(seed(), n, 99_000);
        let p = plan(&a, &[exited(n, Some(1), "Error", false)], at(100_000));
        assert_eq!(p.status.phase, Some(Phase::BackingOff), "attempt {n}");
        assert_eq!(p.status.next_attempt_schedule_time, Some(MicroTime(at(100_000 + delay_ms))), "attempt {n}");
    }
    let a = running_activity(seed(), 4, 99_000);
    let p = plan(&a, &[exited(4, Some(1), "Error", false)], at(100_000));
    assert_eq!(p.status.phase, Some(Phase::Failed));
    assert!(p.status.last_failure.clone().unwrap().message.contains("maximumAttempts 4 reached"));
    assert_eq!(reasons(&p), vec!["AttemptFailed", "Failed"]);
    // a timeout on the last attempt ends TimedOut
    let a = running_activity(seed(), 4, 1_000);
    let p = plan(&a, &[running(4, 0)], at(6_000));
    assert_eq!(p.status.phase, Some(Phase::TimedOut));
}

#[test]
fn exits_without_an_outcome_are_judged_by_code_and_reason() {
    // (pod, expected phase, failure type)
    let table = [
        (exited(1, Some(0), "Completed", false), Phase::Succeeded, None),
        (exited(1, Some(3), "Error", false), Phase::BackingOff, Some("ExitCode")),
        (exited(1, Some(137), "OOMKilled", false), Phase::BackingOff, Some("OOMKilled")),
        (exited(1, None, "Evicted", true), Phase::BackingOff, Some("Evicted")),
        (exited(1, Some(143), "Error", true), Phase::BackingOff, Some("Evicted")),
        (exited(1, None, "DeadlineExceeded", false), Phase::BackingOff, Some("PodFailed")),
    ];
    for (pod, phase, type_) in table {
        let a = running_activity(seed(), 1, 1_000);
        let p = plan(&a, std::slice::from_ref(&pod), at(2_000));
        assert_eq!(p.status.phase, Some(phase), "{pod:?}");
        assert_eq!(p.status.last_failure.as_ref().map(|f| f.type_.as_str()), type_, "{pod:?}");
        if let Some(code) = p.status.last_failure.as_ref().and_then(|f| f.exit_code) {
            assert!(p.status.last_failure.as_ref().unwrap().message.contains(&code.to_string()));
        }
        assert!(!p.effects.iter().any(|a| matches!(a, Effect::DeletePod { .. })), "an exited pod is not deleted");
    }
}

fn with_outcome(mut a: Activity, outcome: Outcome) -> Activity {
    a.status.as_mut().unwrap().outcome = Some(outcome);
    a
}

#[test]
fn the_workers_outcome_decides() {
    let ok = Outcome {
        attempt: 1,
        succeeded: true,
        result: Some(raw(json!({"n": 10}))),
        failure: None,
        canceled: false,
        cause: None,
    };
    let p = plan(&with_outcome(running_activity(seed(), 1, 1_000), ok.clone()), &[running(1, 0)], at(2_000));
    assert_eq!(p.status.phase, Some(Phase::Succeeded));
    assert_eq!(p.status.result, Some(raw(json!({"n": 10}))));
    assert_eq!(p.status.closed_time, Some(MicroTime(at(2_000))));
    assert_eq!(p.effects, vec![Effect::RemoveFinalizer], "a worker that reported is left to exit");
    assert_eq!(reasons(&p), vec!["Succeeded"]);
    let cond = |t: &str| p.status.conditions.iter().find(|c| c.type_ == t).unwrap().status.clone();
    assert_eq!((cond("Finished"), cond("Succeeded"), cond("Running")), ("True".into(), "True".into(), "False".into()));

    // An outcome of an older attempt is ignored.
    let stale = Outcome { attempt: 1, ..ok };
    let p = plan(&with_outcome(running_activity(seed(), 2, 1_000), stale), &[running(2, 0)], at(2_000));
    assert_eq!(p.status.phase, Some(Phase::Running));

    // Non-retryable by the worker's flag, or by the type listed in the policy.
    let fail = |type_: &str, non_retryable| Outcome {
        attempt: 1,
        succeeded: false,
        result: None,
        failure: Some(WorkerFailure {
            type_: type_.into(),
            message: "boom".into(),
            non_retryable,
            next_retry_delay: None,
        }),
        canceled: false,
        cause: None,
    };
    let mut listed = seed();
    listed.spec.retry_policy.as_mut().unwrap().non_retryable_error_types = vec!["BadInput".into()];
    let table = [
        (seed(), fail("Transient", false), Phase::BackingOff, false),
        (seed(), fail("Transient", true), Phase::Failed, true),
        (listed.clone(), fail("BadInput", false), Phase::Failed, true),
        (listed, fail("BadInputs", false), Phase::BackingOff, false),
    ];
    for (a, outcome, phase, non_retryable) in table {
        let label = format!("{outcome:?}");
        let p = plan(&with_outcome(running_activity(a, 1, 1_000), outcome), &[running(1, 0)], at(2_000));
        assert_eq!(p.status.phase, Some(phase), "{label}");
        let f = p.status.last_failure.clone().unwrap();
        assert_eq!((f.type_.as_str(), f.non_retryable), (f.type_.as_str(), non_retryable), "{label}");
        assert_eq!(f.message, "boom");
    }
}

#[test]
fn schedule_to_start_lapses_on_an_image_that_never_pulls() {
    let a0 = activity(json!({"startToCloseTimeout": "1m", "scheduleToStartTimeout": "3s"}));
    let a = applied(a0.clone(), &plan(&a0, &[], at(0)));
    let early = plan(&a, &[waiting(1, Some("ErrImagePull"))], at(2_999));
    assert_eq!(early.status.phase, Some(Phase::Pending));
    assert_eq!(early.requeue_after, Some(Duration::from_millis(2)));
    let running_cond = early.status.conditions.iter().find(|c| c.type_ == "Running").unwrap();
    assert!(running_cond.message.contains("ErrImagePull"), "{}", running_cond.message);
    let p = plan(&a, &[waiting(1, Some("ImagePullBackOff"))], at(3_000));
    assert_eq!(p.status.phase, Some(Phase::TimedOut), "never retried");
    assert_eq!(reasons(&p), vec!["ScheduleToStartTimedOut", "TimedOut"], "the timeout's own Event (and metric)");
    let f = p.status.last_failure.clone().unwrap();
    assert_eq!((f.timeout_type, f.non_retryable), (Some(TimeoutType::ScheduleToStart), true));
    assert!(f.message.contains("ImagePullBackOff"), "{}", f.message);
    assert!(p.has(&Effect::StopPod { name: "job-1".into() }));
    assert!(p.has(&Effect::RemoveFinalizer));
}

#[test]
fn a_routine_container_start_causes_no_status_write() {
    let a0 = activity(json!({"startToCloseTimeout": "1m"}));
    let pending = applied(a0.clone(), &plan(&a0, &[], at(0)));
    for reason in [None, Some("ContainerCreating"), Some("PodInitializing")] {
        let p = plan(&pending, &[waiting(1, reason)], at(500));
        assert_eq!(Some(&p.status), pending.status.as_ref(), "{reason:?} changed the status");
        assert!(p.effects.is_empty(), "{reason:?}: {:?}", p.effects);
    }
    let trouble = plan(&pending, &[waiting(1, Some("CreateContainerConfigError"))], at(500));
    assert_ne!(Some(&trouble.status), pending.status.as_ref(), "a real problem is shown");
}

#[test]
fn schedule_to_close_ends_retries_and_running_attempts() {
    let spec = json!({"startToCloseTimeout": "10s", "scheduleToCloseTimeout": "20s",
                      "retryPolicy": {"initialInterval": "5s", "backoffCoefficient": 1.0}});
    // A failure at 16 s would retry at 21 s, after the 20 s deadline: TimedOut at once.
    let a = running_activity(activity(spec.clone()), 2, 15_000);
    let p = plan(&a, &[exited(2, Some(1), "Error", false)], at(16_000));
    assert_eq!(p.status.phase, Some(Phase::TimedOut));
    let f = p.status.last_failure.clone().unwrap();
    assert_eq!(f.timeout_type, Some(TimeoutType::ScheduleToClose));
    assert!(f.message.contains("exited with code 1"), "{}", f.message);
    assert_eq!(p.status.attempts.last().unwrap().failure.as_ref().unwrap().type_, "ExitCode");
    // A failure at 14 s retries at 19 s.
    let p = plan(&a, &[exited(2, Some(1), "Error", false)], at(14_000));
    assert_eq!(p.status.phase, Some(Phase::BackingOff));
    // Running at the deadline: TimedOut and the pod is stopped.
    let p = plan(&running_activity(activity(spec), 2, 15_000), &[running(2, 14_000)], at(20_000));
    assert_eq!(p.status.phase, Some(Phase::TimedOut));
    assert_eq!(p.status.last_failure.clone().unwrap().timeout_type, Some(TimeoutType::ScheduleToClose));
    assert!(p.has(&Effect::StopPod { name: "job-2".into() }));
    assert!(reasons(&p).contains(&"ScheduleToCloseTimedOut"));
}

#[test]
fn a_killed_pod_is_retried_without_waiting_for_a_heartbeat_timeout() {
    let a = running_activity(seed(), 1, 1_000);
    let p = plan(&a, &[exited(1, Some(137), "Error", false)], at(1_500));
    assert_eq!(p.status.phase, Some(Phase::BackingOff));
    assert_eq!(p.status.next_attempt_schedule_time, Some(MicroTime(at(2_500))));
    // A pod that vanished after it started counts as a failure too.
    let p = plan(&a, &[], at(1_500));
    assert_eq!(p.status.last_failure.clone().unwrap().type_, "PodDeleted");
}

fn cancel_requested(mut a: Activity) -> Activity {
    a.spec.cancel_requested = true;
    a
}

fn deleted(mut a: Activity) -> Activity {
    a.metadata.deletion_timestamp = Some(Time(at(5_000)));
    a
}

#[test]
fn pending_and_backing_off_activities_cancel_at_once() {
    let pending = applied(seed(), &plan(&seed(), &[], at(0)));
    let p = plan(&cancel_requested(pending.clone()), &[waiting(1, None)], at(1_000));
    assert_eq!(p.status.phase, Some(Phase::Canceled));
    assert_eq!(reasons(&p), vec!["CancelRequested", "Canceled"]);
    assert!(p.has(&Effect::DeletePod { name: "job-1".into() }));
    // Deleted: the finalizer stays until the pod is gone.
    let p = plan(&deleted(pending.clone()), &[waiting(1, None)], at(1_000));
    assert!(!p.has(&Effect::RemoveFinalizer));
    let gone = applied(deleted(pending), &p);
    let p = plan(&gone, &[], at(1_200));
    assert_eq!(p.effects, vec![Effect::RemoveFinalizer]);

    let mut backing_off = running_activity(seed(), 1, 0);
    let s = backing_off.status.as_mut().unwrap();
    s.phase = Some(Phase::BackingOff);
    s.next_attempt_schedule_time = Some(MicroTime(at(60_000)));
    let p = plan(&cancel_requested(backing_off), &[exited(1, Some(1), "Error", false)], at(2_000));
    assert_eq!(p.status.phase, Some(Phase::Canceled));
    assert_eq!(p.status.next_attempt_schedule_time, None);
}

#[test]
fn a_running_worker_gets_the_grace_period_then_its_pod_is_deleted() {
    let a = cancel_requested(running_activity(seed(), 1, 1_000));
    let p = plan(&a, &[running(1, 0)], at(2_000));
    assert_eq!(p.status.phase, Some(Phase::Canceling));
    assert_eq!(p.status.cancel_requested_time, Some(MicroTime(at(2_000))));
    assert!(p.effects.is_empty(), "{:?}", p.effects);
    assert_eq!(p.requeue_after, Some(Duration::from_millis(30_001)), "the grace period, not the heartbeat timeout");
    let a = applied(a, &p);
    // Still canceling after heartbeat deadlines pass: no retry, no timeout.
    let p = plan(&a, &[running(1, 0)], at(20_000));
    assert_eq!((p.status.phase, p.effects.len()), (Some(Phase::Canceling), 0));
    let p = plan(&a, &[running(1, 0)], at(32_000));
    assert_eq!(p.effects, vec![Effect::DeletePod { name: "job-1".into() }]);
    assert_eq!(reasons(&p), vec!["CancellationGraceExpired"]);
    // The worker stops (by itself or by the deletion): Canceled.
    let p = plan(&a, &[exited(1, Some(0), "Completed", false)], at(33_000));
    assert_eq!(p.status.phase, Some(Phase::Canceled));
    assert_eq!(p.status.attempts.last().unwrap().outcome, "Canceled");
}

#[test]
fn a_deleted_running_activity_keeps_its_finalizer_until_the_worker_is_gone() {
    let a = deleted(running_activity(seed(), 1, 1_000));
    let p = plan(&a, &[running(1, 0)], at(5_100));
    assert_eq!(p.status.phase, Some(Phase::Canceling));
    assert!(!p.has(&Effect::RemoveFinalizer));
    let a = applied(a, &p);
    let p = plan(&a, &[exited(1, Some(143), "Error", false)], at(6_000));
    assert_eq!(p.status.phase, Some(Phase::Canceled));
    assert_eq!(p.effects, vec![Effect::RemoveFinalizer]);
    // not held by us: nothing at all
    let mut free = deleted(seed());
    free.metadata.finalizers = None;
    let p = plan(&free, &[running(1, 0)], at(6_000));
    assert!(p.effects.is_empty() && p.events.is_empty());
}

#[test]
fn a_completion_that_beats_the_cancel_stands() {
    let ok = Outcome {
        attempt: 1,
        succeeded: true,
        result: Some(raw(json!(7))),
        failure: None,
        canceled: false,
        cause: None,
    };
    let a = with_outcome(cancel_requested(running_activity(seed(), 1, 1_000)), ok);
    let p = plan(&a, &[running(1, 0)], at(2_000));
    assert_eq!((p.status.phase, p.status.result), (Some(Phase::Succeeded), Some(raw(json!(7)))));
}

#[test]
fn stray_pods_of_older_attempts_are_stopped() {
    let a = running_activity(seed(), 2, 1_000);
    let p = plan(&a, &[running(1, 0), running(2, 500)], at(2_000));
    assert_eq!(p.effects, vec![Effect::StopPod { name: "job-1".into() }], "stopped, not deleted: its logs stay");
    let mut deleting = running(1, 0);
    deleting.deleting = true;
    let p = plan(&a, &[deleting, running(2, 500)], at(2_000));
    assert!(p.effects.is_empty(), "a pod already being deleted is not deleted again");
    let mut stopped = running(1, 0);
    stopped.stop_by = Some(at(1_500));
    let p = plan(&a, &[stopped, running(2, 500)], at(2_000));
    assert!(p.effects.is_empty(), "a pod already stopped is not stopped again");
    // The pod of a finished attempt whose sidecars still run is stopped too.
    let mut sidecars = exited(1, Some(0), "Completed", false);
    sidecars.pod_live = true;
    let p = plan(&a, &[sidecars, running(2, 500)], at(2_000));
    assert_eq!(p.effects, vec![Effect::StopPod { name: "job-1".into() }]);
    // Deleting the activity deletes its pods.
    let p = plan(&deleted(a), &[running(1, 0), running(2, 500)], at(2_000));
    assert!(p.has(&Effect::DeletePod { name: "job-1".into() }));
}

#[test]
fn finished_activities_release_the_finalizer_and_honour_ttl() {
    let mut a = activity(json!({"startToCloseTimeout": "1m", "ttlSecondsAfterFinished": 30}));
    a.status = Some(ActivityStatus {
        phase: Some(Phase::Succeeded),
        attempt: Some(1),
        closed_time: Some(MicroTime(at(10_000))),
        ..ActivityStatus::default()
    });
    let p = plan(&a, &[exited(1, Some(0), "Completed", false)], at(11_000));
    assert_eq!(p.effects, vec![Effect::RemoveFinalizer]);
    assert_eq!(p.requeue_after, Some(Duration::from_millis(29_001)));
    assert!(p.events.is_empty());
    a.metadata.finalizers = None;
    let p = plan(&a, &[], at(40_000));
    assert_eq!(p.effects, vec![Effect::DeleteActivity]);
}

#[test]
fn an_invalid_spec_fails_once_with_the_field_named() {
    let a = activity(json!({"startToCloseTimeout": "soon"}));
    let p = plan(&a, &[], at(0));
    assert_eq!(p.status.phase, Some(Phase::Failed));
    let f = p.status.last_failure.clone().unwrap();
    assert_eq!((f.type_.as_str(), f.non_retryable), ("InvalidSpec", true));
    assert!(f.message.contains("spec.startToCloseTimeout"), "{}", f.message);
    assert!(p.events.iter().any(|e| e.warning && e.reason == Reason::InvalidSpec));
    let again = plan(&applied(a, &p), &[], at(1_000));
    assert!(again.events.is_empty(), "no hot loop: a failed activity stays failed");
    assert!(!again.effects.iter().any(|a| matches!(a, Effect::CreatePod { .. })));
}

#[test]
fn the_attempt_history_keeps_the_last_ten() {
    let mut a = activity(json!({"startToCloseTimeout": "1m"}));
    for n in 1..=12 {
        a = running_activity(a.clone(), n, 0).tap_attempts(a.status.clone().map(|s| s.attempts).unwrap_or_default());
        let p = plan(&a, &[exited(n, Some(1), "Error", false)], at(1_000));
        a = applied(a, &p);
    }
    let attempts = &a.status.unwrap().attempts;
    assert_eq!(attempts.len(), 10);
    assert_eq!((attempts[0].attempt, attempts[9].attempt), (3, 12));
}

trait TapAttempts {
    fn tap_attempts(self, attempts: Vec<AttemptRecord>) -> Self;
}

impl TapAttempts for Activity {
    fn tap_attempts(mut self, attempts: Vec<AttemptRecord>) -> Self {
        if let Some(s) = self.status.as_mut() {
            s.attempts = attempts;
        }
        self
    }
}

#[test]
fn conditions_keep_their_transition_time_while_unchanged() {
    let a = running_activity(seed(), 1, 1_000);
    let p1 = plan(&a, &[running(1, 0)], at(2_000));
    let p2 = plan(&applied(a, &p1), &[running(1, 0)], at(3_000));
    assert_eq!(p1.status.conditions, p2.status.conditions);
    let running_cond = p2.status.conditions.iter().find(|c| c.type_ == "Running").unwrap();
    assert_eq!((running_cond.status.as_str(), running_cond.reason.as_str()), ("True", "Running"));
}

#[test]
fn a_pod_the_api_server_refuses_fails_the_activity_once() {
    let a = seed();
    let first = plan(&a, &[], at(0));
    let p = pod_rejected(
        &a,
        &first.status,
        "Pod \"job-1\" is invalid: spec.containers[0].image: Required value".into(),
        at(10),
    );
    assert_eq!(p.status.phase, Some(Phase::Failed));
    let f = p.status.last_failure.clone().unwrap();
    assert_eq!((f.type_.as_str(), f.non_retryable, f.attempt), ("PodRejected", true, 1));
    assert!(f.message.contains("spec.containers[0].image"), "{}", f.message);
    assert_eq!(reasons(&p), vec!["PodRejected", "Failed"]);
    assert!(p.events[0].warning);
    let again = plan(&applied(a, &p), &[], at(20));
    assert!(!again.effects.iter().any(|a| matches!(a, Effect::CreatePod { .. })), "no hot loop");
}

#[test]
fn status_times_round_up_to_the_microsecond() {
    let t = Timestamp::from_nanosecond(1_800_000_000_123_456_001).unwrap();
    assert_eq!(time(t).0, Timestamp::from_nanosecond(1_800_000_000_123_457_000).unwrap());
    let exact = Timestamp::from_nanosecond(1_800_000_000_123_456_000).unwrap();
    assert_eq!(time(exact).0, exact);
}

#[test]
fn an_exit_without_an_outcome_is_recognised() {
    let a = running_activity(seed(), 1, 1_000);
    assert!(exit_without_outcome(&a, &[exited(1, Some(0), "Completed", false)]));
    assert!(!exit_without_outcome(&a, &[running(1, 0)]), "still running");
    let ok = Outcome { attempt: 1, succeeded: true, result: None, failure: None, canceled: false, cause: None };
    assert!(!exit_without_outcome(&with_outcome(a.clone(), ok), &[exited(1, Some(0), "Completed", false)]));
    let mut done = a;
    done.status.as_mut().unwrap().phase = Some(Phase::Succeeded);
    assert!(!exit_without_outcome(&done, &[exited(1, Some(0), "Completed", false)]), "already judged");
}

#[test]
fn a_timeout_found_in_the_cache_is_recognised_as_one() {
    let cached = running_activity(seed(), 1, 1_000);
    let lapsed = plan(&cached, &[running(1, 0)], at(6_000));
    assert!(judges_a_timeout(&cached, &lapsed), "heartbeat deadline lapsed in the cached copy");
    // The fresh copy holds a heartbeat that reached the API server in time: no timeout, no guard.
    let mut fresh = cached.clone();
    fresh.status.as_mut().unwrap().last_heartbeat_time = Some(MicroTime(at(5_500)));
    let replanned = plan(&fresh, &[running(1, 0)], at(6_000));
    assert_eq!(replanned.status.last_failure, None);
    assert!(!judges_a_timeout(&fresh, &replanned));
    // Start-to-close too: an outcome may be in flight just the same.
    let s2c = running_activity(activity(json!({"startToCloseTimeout": "10s"})), 1, 1_000);
    assert!(judges_a_timeout(&s2c, &plan(&s2c, &[running(1, 0)], at(11_000))));
    // Not before the deadline, nor for a failure the status already records (backing off).
    assert!(!judges_a_timeout(&cached, &plan(&cached, &[running(1, 0)], at(5_999))));
    let backing_off = applied(cached, &lapsed);
    let waiting_retry = plan(&backing_off, &[exited(1, Some(143), "Error", false)], at(6_500));
    assert!(!judges_a_timeout(&backing_off, &waiting_retry));
    // A failure that is not a timeout (an exit judged by its code) is not one.
    let crashed = plan(&running_activity(seed(), 1, 1_000), &[exited(1, Some(1), "Error", false)], at(2_000));
    assert!(crashed.status.last_failure.is_some());
    assert!(!judges_a_timeout(&running_activity(seed(), 1, 1_000), &crashed));
}

#[test]
fn a_pod_missing_from_the_cache_is_read_before_the_attempt_is_judged_on_its_absence() {
    let a = running_activity(seed(), 1, 1_000);
    assert_eq!(pod_to_confirm(&a, &[]), Some("job-1".into()), "running, its pod not in the cache");
    assert_eq!(pod_to_confirm(&a, &[running(1, 0)]), None, "the cache shows it");
    assert_eq!(pod_to_confirm(&a, &[running(2, 0)]), Some("job-1".into()), "another attempt's pod is not it");
    // Without the read, the planner would fail the attempt as PodDeleted.
    assert_eq!(plan(&a, &[], at(2_000)).status.last_failure.map(|f| f.type_), Some("PodDeleted".into()));
    let ok = Outcome { attempt: 1, succeeded: true, result: None, failure: None, canceled: false, cause: None };
    assert_eq!(pod_to_confirm(&with_outcome(a.clone(), ok), &[]), None, "the outcome decides, not the pod");
    for phase in [Phase::BackingOff, Phase::Succeeded, Phase::Failed, Phase::TimedOut, Phase::Canceled] {
        let mut done = a.clone();
        done.status.as_mut().unwrap().phase = Some(phase);
        assert_eq!(pod_to_confirm(&done, &[]), None, "{phase:?} has no live pod to look for");
    }
    assert_eq!(pod_to_confirm(&seed(), &[]), None, "no attempt yet");
    let mut pending = a;
    pending.status.as_mut().unwrap().phase = Some(Phase::Pending);
    assert_eq!(pod_to_confirm(&pending, &[]), Some("job-1".into()));
}

#[test]
fn a_plan_that_creates_a_pod_and_writes_nothing_is_recognised() {
    // A pending attempt whose pod the cache does not show: the planner creates it again and the
    // status stays as it is, so no resourceVersion precondition would guard the create.
    let mut pending = running_activity(seed(), 1, 1_000);
    let st = pending.status.as_mut().unwrap();
    st.phase = Some(Phase::Pending);
    st.started_time = None;
    let again = plan(&pending, &[], at(2_000));
    let pending = applied(pending, &again);
    let again = plan(&pending, &[], at(2_000));
    assert!(again.has(&Effect::CreatePod { attempt: 1 }), "{:?}", again.effects);
    assert!(creates_a_pod_unguarded(&pending, &again));
    // Starting an attempt writes the status with the attempt in it: guarded by that write.
    let first = plan(&seed(), &[], at(0));
    assert!(first.has(&Effect::CreatePod { attempt: 1 }));
    assert!(!creates_a_pod_unguarded(&seed(), &first));
    // Running with its pod: nothing to create.
    let a = running_activity(seed(), 1, 1_000);
    assert!(!creates_a_pod_unguarded(&a, &plan(&a, &[running(1, 0)], at(2_000))));
}

fn outcome(attempt: i32, succeeded: bool) -> Outcome {
    Outcome { attempt, succeeded, result: None, failure: None, canceled: false, cause: None }
}

/// A worker of attempt 1 wrote an outcome for attempt 2 (the next one) while attempt 1 ran.
#[test]
fn an_outcome_written_for_a_later_attempt_never_judges_it() {
    let mut a = running_activity(seed(), 1, 1_000);
    a.status.as_mut().unwrap().outcome = Some(Outcome { result: Some(raw(json!("forged"))), ..outcome(2, true) });
    // Attempt 1 times out on its heartbeat; the forged outcome is not attempt 1's.
    let p = plan(&a, &[running(1, 0)], at(6_000));
    assert_eq!(p.status.phase, Some(Phase::BackingOff));
    // Attempt 2 starts with the outcome cleared, so it cannot be taken for attempt 2's.
    let backing_off = applied(a, &p);
    let p = plan(&backing_off, &[exited(1, Some(143), "Error", false)], at(7_000));
    assert_eq!((p.status.phase, p.status.attempt), (Some(Phase::Pending), Some(2)));
    assert_eq!(p.status.outcome, None, "a new attempt starts without an outcome");
    let started = applied(backing_off, &p);
    let p = plan(&started, &[running(2, 7_100)], at(8_000));
    assert_eq!(p.status.phase, Some(Phase::Running));
    assert_eq!(p.status.result, None);
}

#[test]
fn a_heartbeat_time_ahead_of_the_operators_clock_is_not_believed() {
    let mut a = running_activity(seed(), 1, 1_000);
    // Written by a worker whose clock (or intent) puts it a year ahead.
    a.status.as_mut().unwrap().last_heartbeat_time = Some(MicroTime(at(365 * 24 * 3600 * 1000)));
    let p = plan(&a, &[running(1, 0)], at(6_000));
    assert_eq!(p.status.last_failure.and_then(|f| f.timeout_type), Some(TimeoutType::Heartbeat));
    // Within the allowed skew it counts.
    let mut a = running_activity(seed(), 1, 1_000);
    a.status.as_mut().unwrap().last_heartbeat_time = Some(MicroTime(at(9_000)));
    let p = plan(&a, &[running(1, 0)], at(6_000));
    assert_eq!(p.status.phase, Some(Phase::Running), "4 s ahead is within MAX_CLOCK_SKEW");
    // And it never carries into the next attempt.
    let mut next = running_activity(seed(), 2, 20_000);
    next.status.as_mut().unwrap().last_heartbeat_time = Some(MicroTime(at(365 * 24 * 3600 * 1000)));
    let p = plan(&next, &[running(2, 19_000)], at(25_000));
    assert_eq!(p.status.last_failure.and_then(|f| f.timeout_type), Some(TimeoutType::Heartbeat));
}

#[test]
fn payloads_over_the_limit_fail_the_attempt_for_good() {
    let big = raw(json!("x".repeat(MAX_PAYLOAD_BYTES)));
    let mut a = running_activity(seed(), 1, 1_000);
    a.status.as_mut().unwrap().outcome = Some(Outcome { result: Some(big.clone()), ..outcome(1, true) });
    let p = plan(&a, &[running(1, 0)], at(2_000));
    assert_eq!(p.status.phase, Some(Phase::Failed));
    assert_eq!(p.status.result, None, "the oversized result is not copied");
    let f = p.status.last_failure.unwrap();
    assert_eq!((f.type_.as_str(), f.non_retryable), ("PayloadTooLarge", true));
    assert!(f.message.contains("the result of"), "{}", f.message);
    let mut a = running_activity(seed(), 1, 1_000);
    a.status.as_mut().unwrap().heartbeat_details = Some(big);
    let p = plan(&a, &[running(1, 0)], at(2_000));
    let f = p.status.last_failure.unwrap();
    assert_eq!((p.status.phase, f.type_.as_str()), (Some(Phase::Failed), "PayloadTooLarge"));
    assert!(f.message.contains("status.heartbeatDetails"), "{}", f.message);
}

#[test]
fn a_worker_failure_message_is_kept_short() {
    let mut a = running_activity(seed(), 1, 1_000);
    let failure = WorkerFailure { type_: "T".repeat(1000), message: "é".repeat(100_000), ..Default::default() };
    a.status.as_mut().unwrap().outcome = Some(Outcome { failure: Some(failure), ..outcome(1, false) });
    let p = plan(&a, &[running(1, 0)], at(2_000));
    let f = p.status.last_failure.unwrap();
    assert!(f.message.len() <= MAX_MESSAGE_BYTES && f.message.ends_with('…'), "{}", f.message.len());
    assert!(f.type_.len() <= MAX_TYPE_BYTES);
}

#[test]
fn the_next_attempt_waits_until_the_last_ones_pod_has_stopped() {
    let mut a = seed();
    a.status = Some(ActivityStatus {
        phase: Some(Phase::BackingOff),
        attempt: Some(1),
        pod_name: Some("job-1".into()),
        next_attempt_schedule_time: Some(MicroTime(at(5_000))),
        ..ActivityStatus::default()
    });
    // The timed-out worker ignores SIGTERM: its pod was stopped at 4 s with a 30 s grace period.
    let mut hung = running(1, 0);
    hung.stop_by = Some(at(34_000));
    let p = plan(&a, &[hung.clone()], at(6_000));
    assert_eq!(p.status.phase, Some(Phase::BackingOff), "no second live attempt");
    assert!(!p.effects.iter().any(|x| matches!(x, Effect::CreatePod { .. })));
    let given_up = add(at(34_000), LOST_NODE_MARGIN);
    assert_eq!(p.requeue_after, Some(given_up.duration_since(at(6_000)).unsigned_abs() + Duration::from_millis(1)));
    // Gone: attempt 2 starts.
    let p = plan(&a, &[exited(1, Some(137), "Error", false)], at(36_000));
    assert!(p.has(&Effect::CreatePod { attempt: 2 }));
    // A pod that never stops (its node is lost) holds the next attempt back only so long.
    let p = plan(&a, &[hung.clone()], given_up);
    assert!(p.has(&Effect::CreatePod { attempt: 2 }));
    // A pod not stopped yet is stopped and waited for.
    let p = plan(&a, &[running(1, 0)], at(6_000));
    assert!(p.has(&Effect::StopPod { name: "job-1".into() }) && !p.has(&Effect::CreatePod { attempt: 2 }));
}

#[test]
fn conditions_the_planner_does_not_manage_are_kept() {
    let mut a = running_activity(seed(), 1, 1_000);
    let stalled = Condition {
        type_: "Stalled".into(),
        status: "True".into(),
        reason: "Forbidden".into(),
        message: "m".into(),
        last_transition_time: Time(at(0)),
        observed_generation: Some(1),
    };
    a.status.as_mut().unwrap().conditions = vec![stalled.clone()];
    let p = plan(&a, &[running(1, 0)], at(2_000));
    assert!(p.status.conditions.contains(&stalled), "{:?}", p.status.conditions);
    assert_eq!(p.status.conditions.len(), 4);
}

fn status_mut(a: &mut Activity) -> &mut ActivityStatus {
    a.status.get_or_insert_with(ActivityStatus::default)
}

fn paused(mut a: Activity, on: bool) -> Activity {
    a.spec.paused = on;
    a
}

fn reset_at(mut a: Activity, at: &str, clear: bool) -> Activity {
    a.spec.reset = Some(activity_crds::ResetRequest { requested_at: Some(at.into()), clear_heartbeat_details: clear });
    a
}

#[test]
fn pause_stops_what_has_not_started_and_unpause_starts_the_next_attempt_at_once() {
    // Pending (pod created, worker not started): Paused at once, its pod stopped, not counted.
    let pending = applied(seed(), &plan(&seed(), &[], at(0)));
    let p = plan(&paused(pending.clone(), true), &[waiting(1, None)], at(100));
    assert_eq!(p.status.phase, Some(Phase::Paused));
    assert!(p.has(&Effect::StopPod { name: "job-1".into() }));
    assert_eq!(reasons(&p), vec!["Paused"]);
    assert!(p.status.conditions.iter().any(|c| c.type_ == "Paused" && c.status == "True"));
    let is_paused = applied(paused(pending, true), &p);
    // No attempt starts while paused, however long.
    let p = plan(&is_paused, &[exited(1, Some(143), "Error", false)], at(60_000));
    assert_eq!((p.status.phase, p.effects.clone()), (Some(Phase::Paused), vec![]));
    // Unpaused: attempt 2 at once (the stopped attempt 1 did not count).
    let p = plan(&paused(is_paused, false), &[exited(1, Some(143), "Error", false)], at(61_000));
    assert_eq!((p.status.phase, p.status.attempt), (Some(Phase::Pending), Some(2)));
    assert_eq!(reasons(&p), vec!["Unpaused"]);
    assert!(!p.status.conditions.iter().any(|c| c.type_ == "Paused"));
    // BackingOff: paused, no retry at the scheduled time.
    let mut backing_off = seed();
    *status_mut(&mut backing_off) = ActivityStatus {
        phase: Some(Phase::BackingOff),
        attempt: Some(1),
        pod_name: Some("job-1".into()),
        next_attempt_schedule_time: Some(MicroTime(at(1_000))),
        ..ActivityStatus::default()
    };
    let p = plan(&paused(backing_off, true), &[exited(1, Some(1), "Error", false)], at(2_000));
    assert_eq!(p.status.phase, Some(Phase::Paused));
    assert!(!p.effects.iter().any(|a| matches!(a, Effect::CreatePod { .. })));
}

#[test]
fn a_running_worker_stopped_by_a_pause_does_not_count_and_a_failure_waits_for_the_unpause() {
    let act = paused(running_activity(seed(), 1, 1_000), true);
    // Still running (and heartbeating): it is told in its heartbeat reply; nothing to do yet.
    let mut beating = act.clone();
    status_mut(&mut beating).last_heartbeat_time = Some(MicroTime(at(1_500)));
    let p = plan(&beating, &[running(1, 0)], at(2_000));
    assert_eq!(p.status.phase, Some(Phase::Running));
    // It stops as told: Paused, the attempt not counted.
    let stopped =
        with_outcome(act.clone(), Outcome { canceled: true, cause: Some(StopCause::Paused), ..outcome(1, false) });
    let p = plan(&stopped, &[running(1, 0)], at(2_000));
    assert_eq!((p.status.phase, p.status.counted_attempts), (Some(Phase::Paused), None));
    assert_eq!(p.status.attempts.last().map(|r| r.outcome.as_str()), Some("Paused"));
    // A failure while paused: recorded and counted, but no retry until unpaused.
    let failed = with_outcome(
        act,
        Outcome { failure: Some(WorkerFailure { type_: "Boom".into(), ..Default::default() }), ..outcome(1, false) },
    );
    let p = plan(&failed, &[running(1, 0)], at(2_000));
    assert_eq!((p.status.phase, p.status.counted_attempts), (Some(Phase::Paused), Some(1)));
    assert_eq!(p.status.next_attempt_schedule_time, None);
}

#[test]
fn reset_reruns_a_failed_activity_with_a_fresh_budget_and_numbers_that_keep_increasing() {
    let mut failed = seed();
    *status_mut(&mut failed) = ActivityStatus {
        phase: Some(Phase::Failed),
        attempt: Some(4),
        pod_name: Some("job-4".into()),
        counted_attempts: Some(4),
        closed_time: Some(MicroTime(at(30_000))),
        heartbeat_details: Some(raw(json!({"lastItem": 8}))),
        ..ActivityStatus::default()
    };
    failed.metadata.finalizers = None;
    let p = plan(
        &reset_at(failed.clone(), "2026-01-01T00:00:00Z", false),
        &[exited(4, Some(1), "Error", false)],
        at(40_000),
    );
    assert_eq!((p.status.phase, p.status.attempt), (Some(Phase::Pending), Some(5)));
    assert!(p.has(&Effect::AddFinalizer) && p.has(&Effect::CreatePod { attempt: 5 }));
    let last = p.status.last_reset.clone().unwrap();
    assert_eq!(
        (last.requested_at.as_str(), last.attempt, last.time),
        ("2026-01-01T00:00:00Z", 5, MicroTime(at(40_000)))
    );
    assert_eq!((p.status.counted_attempts, p.status.closed_time.clone()), (Some(0), None));
    assert!(p.status.heartbeat_details.is_some(), "details are kept unless clearHeartbeatDetails");
    assert!(reasons(&p).contains(&"Reset"));
    // Done once per requestedAt.
    let again = applied(reset_at(failed.clone(), "2026-01-01T00:00:00Z", false), &p);
    let p2 = plan(&again, &[running(5, 40_100)], at(41_000));
    assert!(!reasons(&p2).contains(&"Reset"));
    assert_eq!(p2.status.attempt, Some(5));
    // With clearHeartbeatDetails the details go.
    let p = plan(&reset_at(failed, "x", true), &[], at(40_000));
    assert!(p.status.heartbeat_details.is_none());
}

#[test]
fn reset_of_a_running_attempt_waits_for_the_worker_then_starts_the_next() {
    let act = reset_at(running_activity(seed(), 1, 1_000), &at(2_000).to_string(), false);
    let p = plan(&act, &[running(1, 0)], at(3_000));
    assert_eq!((p.status.phase, p.status.attempt), (Some(Phase::Running), Some(1)), "the worker is told first");
    // Past cancellationGracePeriod (30 s) from the request: its pod is stopped.
    let p = plan(&act, &[running(1, 0)], at(32_000));
    assert!(p.has(&Effect::StopPod { name: "job-1".into() }));
    // Gone: attempt 2 with a fresh budget.
    let p = plan(&act, &[exited(1, Some(143), "Error", false)], at(33_000));
    assert_eq!((p.status.phase, p.status.attempt), (Some(Phase::Pending), Some(2)));
    assert_eq!(p.status.attempts.last().map(|r| r.outcome.as_str()), Some("Reset"));
}

#[test]
fn cancel_beats_reset_and_reset_beats_pause() {
    let both = reset_at(paused(cancel_requested(running_activity(seed(), 1, 1_000)), true), "r1", false);
    let p = plan(&both, &[exited(1, Some(0), "Completed", false)], at(2_000));
    assert_eq!(p.status.phase, Some(Phase::Canceled));
    assert!(p.status.last_reset.is_none(), "no reset of a canceled activity");
    // Reset and pause together: the reset is done (fresh budget) and the activity stays paused.
    let mut failed = seed();
    *status_mut(&mut failed) = ActivityStatus {
        phase: Some(Phase::Failed),
        attempt: Some(2),
        pod_name: Some("job-2".into()),
        ..ActivityStatus::default()
    };
    let p = plan(&reset_at(paused(failed, true), "r1", false), &[], at(2_000));
    assert_eq!(p.status.phase, Some(Phase::Paused));
    assert_eq!(p.status.last_reset.map(|r| r.attempt), Some(3));
}

#[test]
fn start_delay_schedules_the_first_attempt_and_starts_the_schedule_to_close_clock() {
    let a = activity(json!({"startToCloseTimeout": "1m", "scheduleToCloseTimeout": "10s", "startDelay": "5s"}));
    let p = plan(&a, &[], at(0));
    assert_eq!(p.status.phase, Some(Phase::Scheduled));
    assert!(p.effects.iter().all(|x| !matches!(x, Effect::CreatePod { .. })));
    let scheduled = applied(a, &p);
    assert!(plan(&scheduled, &[], at(4_999)).status.phase == Some(Phase::Scheduled), "never early");
    let p = plan(&scheduled, &[], at(5_000));
    assert_eq!(p.status.phase, Some(Phase::Pending));
    // scheduleToClose counts from 5 s: still open at 14.9 s, lapsed at 15 s.
    let pending = applied(scheduled, &p);
    assert_eq!(plan(&pending, &[waiting(1, None)], at(14_900)).status.phase, Some(Phase::Pending));
    assert_eq!(plan(&pending, &[waiting(1, None)], at(15_000)).status.phase, Some(Phase::TimedOut));
}

#[test]
fn the_workers_next_retry_delay_replaces_the_backoff() {
    let a = activity(
        json!({"startToCloseTimeout": "1m", "retryPolicy": {"initialInterval": "1s", "maximumInterval": "2s"}}),
    );
    let failure =
        WorkerFailure { type_: "RateLimited".into(), next_retry_delay: Some("7s".into()), ..Default::default() };
    let a = with_outcome(running_activity(a, 1, 1_000), Outcome { failure: Some(failure), ..outcome(1, false) });
    let p = plan(&a, &[running(1, 0)], at(2_000));
    assert_eq!(p.status.next_attempt_schedule_time, Some(MicroTime(at(9_000))), "7 s, not capped by maximumInterval");
}

#[test]
fn a_listed_exit_code_fails_at_once() {
    let a = activity(json!({"startToCloseTimeout": "1m", "retryPolicy": {"nonRetryableExitCodes": [3]}}));
    let a = running_activity(a, 1, 1_000);
    let p = plan(&a, &[exited(1, Some(3), "Error", false)], at(2_000));
    assert_eq!(p.status.phase, Some(Phase::Failed));
    assert!(p.status.last_failure.unwrap().non_retryable);
    let p = plan(&a, &[exited(1, Some(4), "Error", false)], at(2_000));
    assert_eq!(p.status.phase, Some(Phase::BackingOff));
}

#[test]
fn disruptions_are_retried_at_once_without_counting_up_to_the_limit() {
    let a =
        activity(json!({"startToCloseTimeout": "1m", "retryPolicy": {"maximumAttempts": 1, "maximumDisruptions": 1}}));
    let p = plan(&running_activity(a.clone(), 1, 1_000), &[exited(1, Some(137), "Evicted", true)], at(2_000));
    assert_eq!(
        (p.status.phase, p.status.disruptions, p.status.counted_attempts),
        (Some(Phase::BackingOff), Some(1), Some(0))
    );
    assert_eq!(p.status.next_attempt_schedule_time, Some(MicroTime(at(2_000))), "at once");
    assert!(reasons(&p).contains(&"Disrupted"));
    // The second disruption is over the limit: an ordinary failure, and maximumAttempts 1 ends it.
    let mut second = running_activity(a, 2, 3_000);
    status_mut(&mut second).disruptions = Some(1);
    status_mut(&mut second).counted_attempts = Some(0);
    let p = plan(&second, &[exited(2, Some(137), "Evicted", true)], at(4_000));
    assert_eq!(p.status.phase, Some(Phase::Failed));
}

#[test]
fn a_pod_being_evicted_is_judged_disrupted_before_it_disappears() {
    let a = running_activity(seed(), 1, 1_000);
    let mut evicting = running(1, 0);
    evicting.disrupted = true;
    evicting.deleting = true;
    evicting.stop_by = Some(at(32_000));
    let p = plan(&a, &[evicting.clone()], at(2_000));
    assert_eq!((p.status.phase, p.status.disruptions), (Some(Phase::BackingOff), Some(1)));
    assert_eq!(p.status.last_failure.as_ref().map(|f| f.type_.as_str()), Some("Evicted"));
    // The next attempt waits until the evicted pod has stopped.
    let backing_off = applied(a, &p);
    assert!(!plan(&backing_off, &[evicting], at(2_100)).has(&Effect::CreatePod { attempt: 2 }));
    assert!(plan(&backing_off, &[], at(2_100)).has(&Effect::CreatePod { attempt: 2 }));
}

/// Every phase × every operation request (and the combinations), at one instant: what it becomes.
#[test]
fn every_phase_answers_every_operation_request() {
    #[derive(Clone, Copy, Debug)]
    enum Request {
        Pause,
        Unpause,
        Reset,
        Cancel,
        ResetAndPause,
        CancelAndReset,
    }
    use Phase::*;
    use Request::*;
    let with_phase = |phase: Option<Phase>| {
        let mut a = seed();
        let st = status_mut(&mut a);
        st.phase = phase;
        if phase.is_some() && phase != Some(Scheduled) {
            st.attempt = Some(1);
            st.pod_name = Some("job-1".into());
        }
        match phase {
            Some(Running | Canceling) => {
                st.started_time = Some(MicroTime(at(1_000)));
                st.last_heartbeat_time = Some(MicroTime(at(1_500)));
            }
            Some(BackingOff) => st.next_attempt_schedule_time = Some(MicroTime(at(50_000))),
            Some(Succeeded | Failed | TimedOut | Canceled) => st.closed_time = Some(MicroTime(at(1_500))),
            _ => {}
        }
        if matches!(phase, Some(Canceling)) {
            a.spec.cancel_requested = true;
            status_mut(&mut a).cancel_requested_time = Some(MicroTime(at(1_800)));
        }
        if matches!(phase, Some(Paused)) {
            a.spec.paused = true;
        }
        a
    };
    let pods_for = |phase: Option<Phase>| match phase {
        Some(Pending) => vec![waiting(1, None)],
        Some(Running | Canceling) => vec![running(1, 1_000)],
        None | Some(Scheduled) => vec![],
        _ => vec![exited(1, Some(1), "Error", false)],
    };
    let apply = |mut a: Activity, r: Request| {
        match r {
            Pause => a.spec.paused = true,
            Unpause => a.spec.paused = false,
            Reset => a = reset_at(a, "r1", false),
            Cancel => a.spec.cancel_requested = true,
            ResetAndPause => a = paused(reset_at(a, "r1", false), true),
            CancelAndReset => {
                a = reset_at(a, "r1", false);
                a.spec.cancel_requested = true;
            }
        }
        a
    };
    // (phase before, request) -> phase after, at 2 s (the running worker is still running).
    let table: &[(Option<Phase>, Request, Phase)] = &[
        (None, Pause, Paused),
        (None, Reset, Pending),
        (None, Cancel, Canceled),
        (Some(Pending), Pause, Paused),
        (Some(Pending), Reset, Pending), // the live attempt is stopped first: still attempt 1
        (Some(Pending), Cancel, Canceled),
        (Some(Pending), ResetAndPause, Pending),
        (Some(Running), Pause, Running), // told in its next heartbeat reply
        (Some(Running), Reset, Running), // likewise, then stopped
        (Some(Running), Cancel, Canceling),
        (Some(Running), CancelAndReset, Canceling),
        (Some(BackingOff), Pause, Paused),
        (Some(BackingOff), Unpause, BackingOff),
        (Some(BackingOff), Reset, Pending),
        (Some(BackingOff), ResetAndPause, Paused),
        (Some(BackingOff), Cancel, Canceled),
        (Some(Paused), Pause, Paused),
        (Some(Paused), Unpause, Pending),
        (Some(Paused), ResetAndPause, Paused),
        (Some(Paused), Cancel, Canceled),
        (Some(Canceling), Reset, Canceling),
        (Some(Canceling), Pause, Canceling),
        (Some(Succeeded), Pause, Succeeded),
        (Some(Succeeded), Reset, Pending),
        (Some(Failed), Reset, Pending),
        (Some(TimedOut), Reset, Pending),
        (Some(Failed), ResetAndPause, Paused),
        (Some(Failed), CancelAndReset, Failed),
        (Some(Canceled), Reset, Canceled),
        (Some(Canceled), Unpause, Canceled),
    ];
    for (before, request, after) in table {
        let a = apply(with_phase(*before), *request);
        let p = plan(&a, &pods_for(*before), at(2_000));
        assert_eq!(p.status.phase, Some(*after), "{before:?} + {request:?}");
        let starts = p.effects.iter().any(|x| matches!(x, Effect::CreatePod { .. }));
        assert_eq!(
            starts,
            *after == Pending && *before != Some(Pending),
            "{before:?} + {request:?}: a pod only when an attempt starts"
        );
        if matches!(request, Reset | ResetAndPause)
            && *after != Canceled
            && *after != Canceling
            && !matches!(before, Some(Pending | Running))
        {
            assert!(p.status.last_reset.is_some(), "{before:?} + {request:?}: the reset is done");
        }
    }
}

fn tracked(mut pod: PodView) -> PodView {
    pod.tracked = true;
    pod
}

fn deleting(mut pod: PodView) -> PodView {
    pod.deleting = true;
    pod
}

#[test]
fn a_pod_is_held_by_its_tracking_finalizer_until_the_status_records_its_start() {
    let pending = applied(seed(), &plan(&seed(), &[], at(100)));
    // Not started: nothing in the status says the pod ever existed, so it stays held.
    let p = plan(&pending, &[waiting(1, Some("ContainerCreating"))], at(500));
    assert!(!p.effects.iter().any(|e| matches!(e, Effect::ReleasePod { .. })), "{:?}", p.effects);
    // Its start is written by this plan (status goes first): released in the same pass.
    let p = plan(&pending, &[tracked(running(1, 0))], at(600));
    assert_eq!(p.status.started_time, Some(MicroTime(at(600))));
    assert_eq!(p.effects, vec![Effect::ReleasePod { name: "job-1".into() }]);
    // An exit judged before the start was ever seen releases it too (the outcome is written).
    let p = plan(&pending, &[tracked(exited(1, Some(1), "Error", false))], at(700));
    assert_eq!(p.status.phase, Some(Phase::BackingOff));
    assert!(p.has(&Effect::ReleasePod { name: "job-1".into() }));
    // An earlier attempt's pod that is still tracked is let go; the current one is kept.
    let mut second = pending.clone();
    let st = second.status.as_mut().unwrap();
    (st.attempt, st.pod_name) = (Some(2), Some("job-2".into()));
    let p = plan(&second, &[tracked(exited(1, Some(1), "Error", false)), waiting(2, None)], at(800));
    assert_eq!(p.effects, vec![Effect::ReleasePod { name: "job-1".into() }]);
    // A finished activity holds none of its pods.
    let mut done = pending;
    done.status.as_mut().unwrap().phase = Some(Phase::Failed);
    let p = plan(&done, &[waiting(1, None)], at(900));
    assert!(p.has(&Effect::ReleasePod { name: "job-1".into() }));
}

#[test]
fn a_pod_deleted_before_its_worker_started_spends_the_attempt_instead_of_running_it_again() {
    let pending = applied(seed(), &plan(&seed(), &[], at(100)));
    let p = plan(&pending, &[deleting(waiting(1, None))], at(2_000));
    let failure = p.status.last_failure.clone().expect("failure");
    assert_eq!((failure.attempt, failure.type_.as_str()), (1, "PodDeleted"));
    assert!(failure.message.contains("before its worker started"), "{}", failure.message);
    assert_eq!(p.status.phase, Some(Phase::BackingOff), "retried as the next attempt");
    assert!(!p.creates_a_pod(), "attempt 1 is not created again");
    assert!(p.has(&Effect::ReleasePod { name: "job-1".into() }), "and its pod can go: {:?}", p.effects);
    // Without the finalizer's guarantee (a pod that is simply gone) the attempt is created again.
    assert!(plan(&pending, &[], at(2_000)).has(&Effect::CreatePod { attempt: 1 }));
}

#[test]
fn the_pods_of_an_activity_going_away_without_our_finalizer_are_released() {
    let mut a = deleted(applied(seed(), &plan(&seed(), &[], at(100))));
    a.metadata.finalizers = None;
    let p = plan(&a, &[waiting(1, None)], at(6_000));
    assert_eq!(p.effects, vec![Effect::ReleasePod { name: "job-1".into() }]);
}

#[test]
fn an_outcome_reported_before_the_start_was_seen_still_records_when_the_worker_started() {
    let pending = applied(seed(), &plan(&seed(), &[], at(100)));
    let ok = Outcome { attempt: 1, succeeded: true, result: None, failure: None, canceled: false, cause: None };
    let p = plan(&with_outcome(pending.clone(), ok.clone()), &[exited(1, Some(0), "Completed", false)], at(3_000));
    assert_eq!(p.status.phase, Some(Phase::Succeeded));
    assert_eq!(p.status.started_time, Some(MicroTime(at(0))), "from the pod's terminated state");
    assert_eq!(p.status.attempts.last().and_then(|r| r.started_time.clone()), Some(MicroTime(at(0))));
    // No pod to ask (already gone): the start stays unknown rather than made up.
    let p = plan(&with_outcome(pending, ok), &[], at(3_000));
    assert_eq!((p.status.phase, p.status.started_time), (Some(Phase::Succeeded), None));
}

#[test]
fn a_start_the_kubelet_reports_after_the_outcome_is_filled_in_later() {
    let pending = applied(seed(), &plan(&seed(), &[], at(100)));
    let ok = Outcome { attempt: 1, succeeded: true, result: None, failure: None, canceled: false, cause: None };
    // Judged while the kubelet still showed the container waiting: no start known yet.
    let reported = with_outcome(pending, ok);
    let done = applied(reported.clone(), &plan(&reported, &[waiting(1, None)], at(1_000)));
    let status_of = |a: &Activity| a.status.clone().unwrap();
    assert_eq!(status_of(&done).phase, Some(Phase::Succeeded));
    assert_eq!(status_of(&done).started_time, None);
    // The kubelet's report arrives: the start goes into the status and the attempt's record.
    let p = plan(&done, &[exited(1, Some(0), "Completed", false)], at(2_000));
    assert_eq!(p.status.started_time, Some(MicroTime(at(0))));
    assert_eq!(p.status.attempts.last().and_then(|r| r.started_time.clone()), Some(MicroTime(at(0))));
    // Written once: with the start known, nothing changes again.
    let again = applied(done, &p);
    assert_eq!(plan(&again, &[exited(1, Some(0), "Completed", false)], at(3_000)).status, status_of(&again));
}
