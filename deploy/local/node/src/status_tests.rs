use super::*;

fn pod(restart_policy: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "generation": 1},
        "spec": {"restartPolicy": restart_policy, "containers": [{"name": "a"}, {"name": "b"}]},
    }))
    .unwrap()
}

fn ts(s: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + s).unwrap()
}

fn term(code: i32) -> Terminated {
    Terminated {
        exit_code: code,
        signal: None,
        reason: Terminated::reason_for(code).into(),
        message: None,
        started_at: Some(ts(0)),
        finished_at: ts(5),
        container_id: Some("process://1".into()),
    }
}

fn c(name: &str, state: State) -> ContainerView {
    let ready = matches!(state, State::Running { .. });
    ContainerView {
        name: name.into(),
        image: "busybox".into(),
        image_id: None,
        container_id: None,
        state,
        last_state: None,
        restart_count: 0,
        ready,
        started: ready,
        restartable: false,
    }
}

fn creating(name: &str) -> ContainerView {
    c(name, State::waiting("ContainerCreating", None))
}

fn running(name: &str) -> ContainerView {
    c(name, State::Running { started_at: ts(0) })
}

fn done(name: &str, code: i32) -> ContainerView {
    c(name, State::Terminated(term(code)))
}

fn crashloop(name: &str) -> ContainerView {
    let mut v = c(name, State::waiting("CrashLoopBackOff", Some("back-off".into())));
    v.last_state = Some(term(1));
    v.restart_count = 1;
    v
}

fn view<'a>(pod: &'a Pod, init: &'a [ContainerView], containers: &'a [ContainerView], terminal: bool) -> PodView<'a> {
    PodView {
        pod,
        init,
        containers,
        pod_is_terminal: terminal,
        deadline_exceeded: false,
        sandbox_ready: true,
        pod_ip: Some("127.0.10.1"),
        host_ip: "127.0.0.1",
        start_time: Some(ts(0)),
    }
}

#[test]
fn phases() {
    let never = pod("Never");
    let always = pod("Always");
    let on_failure = pod("OnFailure");
    let p = |pod: &Pod, cs: &[ContainerView], terminal: bool| phase(&view(pod, &[], cs, terminal));
    assert_eq!(p(&never, &[creating("a"), running("b")], false), "Pending");
    assert_eq!(p(&never, &[running("a"), running("b")], false), "Running");
    assert_eq!(p(&never, &[running("a"), done("b", 1)], false), "Running");
    assert_eq!(p(&never, &[done("a", 0), done("b", 0)], false), "Succeeded");
    assert_eq!(p(&never, &[done("a", 0), done("b", 3)], false), "Failed");
    assert_eq!(p(&always, &[done("a", 0), done("b", 0)], false), "Running");
    assert_eq!(p(&always, &[done("a", 0), crashloop("b")], false), "Running");
    assert_eq!(p(&always, &[done("a", 0), done("b", 0)], true), "Succeeded");
    assert_eq!(p(&always, &[done("a", 143), done("b", 0)], true), "Failed");
    assert_eq!(p(&on_failure, &[done("a", 0), crashloop("b")], false), "Running");
    assert_eq!(p(&on_failure, &[done("a", 0), done("b", 0)], false), "Succeeded");
    let mut v = view(&never, &[], &[], false);
    let cs = [running("a"), running("b")];
    v.containers = &cs;
    v.deadline_exceeded = true;
    assert_eq!(phase(&v), "Running", "its containers are still being stopped");
    v.pod_is_terminal = true;
    assert_eq!(phase(&v), "Failed");
}

#[test]
fn init_phases() {
    let never = pod("Never");
    let always = pod("Always");
    let waiting = [c("a", State::waiting("PodInitializing", None)), c("b", State::waiting("PodInitializing", None))];
    let p = |pod: &Pod, init: &[ContainerView], cs: &[ContainerView]| phase(&view(pod, init, cs, false));
    assert_eq!(p(&never, &[running("i")], &waiting), "Pending");
    assert_eq!(p(&never, &[done("i", 1)], &waiting), "Failed");
    assert_eq!(p(&always, &[crashloop("i")], &waiting), "Pending");
    assert_eq!(p(&never, &[done("i", 0)], &[running("a"), running("b")]), "Running");
    let mut sidecar = running("s");
    sidecar.restartable = true;
    sidecar.started = false;
    assert_eq!(p(&never, &[sidecar.clone()], &waiting), "Pending");
    sidecar.started = true;
    assert_eq!(p(&never, &[sidecar.clone()], &[running("a"), running("b")]), "Running");
    // Regular containers done, sidecar still running: Running until the node stops the sidecar.
    assert_eq!(p(&never, &[sidecar], &[done("a", 0), done("b", 0)]), "Running");
}

fn find<'a>(cs: &'a [Condition], t: &str) -> &'a Condition {
    cs.iter().find(|c| c.type_ == t).unwrap()
}

#[test]
fn readiness_conditions() {
    let never = pod("Never");
    let cs = [running("a"), creating("b")];
    let v = view(&never, &[], &cs, false);
    let conds = conditions(&v, phase(&v));
    let order: Vec<_> = conds.iter().map(|c| c.type_).collect();
    assert_eq!(order, ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady"]);
    let ready = find(&conds, "Ready");
    assert!(!ready.status);
    assert_eq!(ready.reason.as_deref(), Some("ContainersNotReady"));
    assert_eq!(ready.message.as_deref(), Some("containers with unready status: [b]"));
    assert!(find(&conds, "Initialized").status);
    assert!(find(&conds, "PodReadyToStartContainers").status);

    let cs = [running("a"), running("b")];
    let v = view(&never, &[], &cs, false);
    let conds = conditions(&v, phase(&v));
    assert!(find(&conds, "Ready").status);
    assert!(find(&conds, "ContainersReady").status);

    let cs = [done("a", 0), done("b", 0)];
    let v = view(&never, &[], &cs, true);
    let conds = conditions(&v, phase(&v));
    assert_eq!(find(&conds, "Ready").reason.as_deref(), Some("PodCompleted"));
    assert_eq!(find(&conds, "Initialized").reason.as_deref(), Some("PodCompleted"));
    assert!(!find(&conds, "PodReadyToStartContainers").status);

    let cs = [done("a", 2), done("b", 0)];
    let v = view(&never, &[], &cs, true);
    let conds = conditions(&v, phase(&v));
    assert_eq!(find(&conds, "ContainersReady").reason.as_deref(), Some("PodFailed"));
}

#[test]
fn init_and_gates() {
    let mut gated = pod("Always");
    gated.spec.as_mut().unwrap().readiness_gates =
        Some(vec![serde_json::from_value(json!({"conditionType": "x/ok"})).unwrap()]);
    let init = [running("i")];
    let waiting = [c("a", State::waiting("PodInitializing", None)), c("b", State::waiting("PodInitializing", None))];
    let v = view(&gated, &init, &waiting, false);
    let conds = conditions(&v, phase(&v));
    let initialized = find(&conds, "Initialized");
    assert!(!initialized.status);
    assert_eq!(initialized.message.as_deref(), Some("containers with incomplete status: [i]"));

    let init = [done("i", 0)];
    let cs = [running("a"), running("b")];
    let v = view(&gated, &init, &cs, false);
    let conds = conditions(&v, phase(&v));
    assert!(find(&conds, "ContainersReady").status);
    let ready = find(&conds, "Ready");
    assert_eq!(ready.reason.as_deref(), Some("ReadinessGatesNotReady"));
    assert_eq!(
        ready.message.as_deref(),
        Some("corresponding condition of pod readiness gate \"x/ok\" does not exist.")
    );
    gated.status = Some(serde_json::from_value(json!({"conditions": [{"type": "x/ok", "status": "True"}]})).unwrap());
    let v = view(&gated, &init, &cs, false);
    assert!(find(&conditions(&v, phase(&v)), "Ready").status);
}

#[test]
fn condition_clock_moves_only_on_change() {
    let mut clock = ConditionClock::default();
    let t = cond("Ready", false, None, None);
    assert_eq!(clock.stamp(&t, ts(1)), ts(1));
    assert_eq!(clock.stamp(&t, ts(2)), ts(1));
    let t2 = cond("Ready", true, None, None);
    assert_eq!(clock.stamp(&t2, ts(3)), ts(3));
}

#[test]
fn patch_replaces_states() {
    let never = pod("Never");
    let mut b = done("b", 3);
    b.last_state = Some(term(1));
    let cs = [running("a"), b];
    let v = view(&never, &[], &cs, false);
    let ph = phase(&v);
    let conds: Vec<_> = conditions(&v, ph).into_iter().map(|c| (c, ts(0))).collect();
    let patch = status_patch(&v, ph, &conds);
    assert_eq!(patch["metadata"]["uid"], "u1");
    let st = &patch["status"];
    assert_eq!(st["phase"], "Running");
    assert_eq!(st["podIPs"], json!([{"ip": "127.0.10.1"}]));
    assert!(st.get("initContainerStatuses").is_none());
    let a = &st["containerStatuses"][0];
    assert_eq!(a["state"]["running"]["startedAt"], "2023-11-14T22:13:20Z");
    assert!(a["state"]["waiting"].is_null() && a["state"].get("waiting").is_some());
    assert!(a["lastState"]["terminated"].is_null());
    let b = &st["containerStatuses"][1];
    assert_eq!(b["state"]["terminated"]["exitCode"], 3);
    assert_eq!(b["state"]["terminated"]["reason"], "Error");
    assert_eq!(b["lastState"]["terminated"]["exitCode"], 1);
    assert_eq!(st["conditions"][0]["type"], "PodReadyToStartContainers");
    assert!(st["conditions"][2].get("reason").is_some());
}
