//! `logs`: the worker logs of the current attempt, of every attempt in order (`--all-attempts`),
//! and with `-f` on into each next attempt until the activity finishes.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{Context, anyhow, bail};
use futures::{AsyncBufReadExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, LogParams};
use kube::runtime::wait::await_condition;

use crate::EXIT_OK;
use crate::client::Conn;
use crate::commands::wait_for_activity;
use crate::model::ActivityState;

/// The attempt's prefix on a log line, when lines of several attempts are shown.
pub fn prefix(attempt: i64) -> String {
    format!("[attempt {attempt}] ")
}

struct Logs<'a> {
    conn: &'a Conn,
    name: &'a str,
    container: Option<String>,
    prefixed: bool,
}

/// The worker pods of an activity by attempt (from the `heartbeat.dev/attempt` label).
async fn pods_by_attempt(conn: &Conn, name: &str) -> anyhow::Result<BTreeMap<i64, Pod>> {
    let lp = ListParams::default().labels(&format!("{}={name}", activity_crds::LABEL_ACTIVITY));
    let pods = conn.api::<Pod>().list(&lp).await.map_err(|e| conn.explain(e, None))?;
    Ok(pods
        .items
        .into_iter()
        .filter_map(|p| {
            let attempt = p.metadata.labels.as_ref()?.get(activity_crds::LABEL_ATTEMPT)?.parse::<i64>().ok()?;
            Some((attempt, p))
        })
        .collect())
}

fn pod_name(p: &Pod) -> String {
    p.metadata.name.clone().unwrap_or_default()
}

/// The container's state shows it has started (running or ended), so it has logs.
fn started(p: &Pod, container: Option<&str>) -> bool {
    let statuses = p.status.as_ref().and_then(|s| s.container_statuses.as_ref());
    statuses.is_some_and(|cs| {
        cs.iter().filter(|c| container.is_none_or(|n| c.name == n)).any(|c| {
            let state = c.state.as_ref();
            state.is_some_and(|s| s.running.is_some() || s.terminated.is_some())
        })
    })
}

impl Logs<'_> {
    fn params(&self, follow: bool) -> LogParams {
        LogParams { follow, container: self.container.clone(), ..Default::default() }
    }

    fn write_line(&self, attempt: i64, line: &str) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        if self.prefixed {
            write!(out, "{}", prefix(attempt))?;
        }
        writeln!(out, "{line}")?;
        out.flush()?;
        Ok(())
    }

    /// Prints the whole log of a pod as it is now.
    async fn print(&self, attempt: i64, pod: &str) -> anyhow::Result<()> {
        let text = match self.conn.api::<Pod>().logs(pod, &self.params(false)).await {
            Ok(t) => t,
            Err(kube::Error::Api(s)) if s.code == 404 => {
                eprintln!("{}pod {pod} is gone; its logs are no longer available", prefix(attempt));
                return Ok(());
            }
            Err(kube::Error::Api(s)) if s.code == 400 => {
                bail!("attempt {attempt}'s pod {pod} has no logs yet ({}); use -f to wait for them", s.message)
            }
            Err(e) => return Err(self.conn.explain(e, None)),
        };
        for line in text.lines() {
            self.write_line(attempt, line)?;
        }
        Ok(())
    }

    /// Streams a pod's log until its container stops.
    async fn follow(&self, attempt: i64, pod: &str) -> anyhow::Result<()> {
        let stream = match self.conn.api::<Pod>().log_stream(pod, &self.params(true)).await {
            Ok(s) => s,
            Err(kube::Error::Api(s)) if s.code == 404 => {
                eprintln!("{}pod {pod} is gone; its logs are no longer available", prefix(attempt));
                return Ok(());
            }
            Err(e) => return Err(self.conn.explain(e, None)),
        };
        let mut lines = stream.lines();
        while let Some(line) = lines.try_next().await.with_context(|| format!("reading the log of {pod}"))? {
            self.write_line(attempt, &line)?;
        }
        Ok(())
    }

    /// Waits until the pod of `attempt` has started, or the activity has moved past the attempt
    /// (then that attempt never ran and has no logs). Returns whether it started.
    async fn wait_started(&self, attempt: i64, pod: &str) -> anyhow::Result<bool> {
        let container = self.container.clone();
        let pod_started = await_condition(self.conn.api::<Pod>(), pod, move |p: Option<&Pod>| {
            p.is_some_and(|p| started(p, container.as_deref()))
        });
        let moved_on = wait_for_activity(self.conn, self.name, false, move |s| {
            s.is_finished() || s.attempt.is_some_and(|a| a > attempt)
        });
        tokio::select! {
            r = pod_started => { r.context("watching the worker pod")?; Ok(true) }
            r = moved_on => { r?; Ok(false) }
        }
    }
}

pub async fn run(
    conn: &Conn,
    name: &str,
    all_attempts: bool,
    follow: bool,
    container: Option<String>,
) -> anyhow::Result<u8> {
    let logs = Logs { conn, name, container, prefixed: all_attempts || follow };
    let obj = conn.activities().get(name).await.map_err(|e| conn.explain(e, Some(name)))?;
    let state = ActivityState::from_value(&serde_json::to_value(&obj)?);
    let pods = pods_by_attempt(conn, name).await?;

    let Some(current) = state.attempt else {
        if !follow {
            bail!("activity \"{name}\" has not started an attempt yet; use -f to wait for its logs");
        }
        return follow_from(&logs, 1).await;
    };
    if all_attempts {
        let mut attempts: Vec<i64> = pods.keys().copied().filter(|a| *a < current).collect();
        for a in state.attempts.iter().map(|a| a.attempt).filter(|a| *a < current) {
            if !attempts.contains(&a) {
                attempts.push(a);
            }
        }
        attempts.sort_unstable();
        for a in attempts {
            match pods.get(&a) {
                Some(p) => logs.print(a, &pod_name(p)).await?,
                None => eprintln!("{}the pod of attempt {a} is gone; its logs are no longer available", prefix(a)),
            }
        }
    }
    if !follow {
        let pod = state.pod_name.clone().or_else(|| pods.get(&current).map(pod_name));
        let pod = pod.ok_or_else(|| {
            anyhow!("attempt {current} of activity \"{name}\" has no pod yet; use -f to wait for its logs")
        })?;
        logs.print(current, &pod).await?;
        return Ok(EXIT_OK);
    }
    follow_from(&logs, current).await
}

/// Follows attempt `first` and every attempt after it until the activity finishes.
async fn follow_from(logs: &Logs<'_>, first: i64) -> anyhow::Result<u8> {
    let mut attempt = first;
    loop {
        // The activity as it is now: on attempt `attempt` (or past it), or finished.
        let Some((_, state)) = wait_for_activity(logs.conn, logs.name, false, move |s| {
            s.is_finished() || s.attempt.is_some_and(|a| a >= attempt)
        })
        .await?
        else {
            bail!("activity \"{}\" was deleted", logs.name);
        };
        let now = state.attempt.unwrap_or(attempt);
        if now < attempt {
            // Finished before this attempt started: nothing more to show.
            return Ok(EXIT_OK);
        }
        // Attempts skipped while waiting (a retry that came and went): their logs as they are.
        if now > attempt {
            let pods = pods_by_attempt(logs.conn, logs.name).await?;
            for a in attempt..now {
                if let Some(p) = pods.get(&a) {
                    logs.print(a, &pod_name(p)).await?;
                }
            }
            attempt = now;
        }
        let pod = match state.pod_name.clone() {
            Some(p) => p,
            None => match pods_by_attempt(logs.conn, logs.name).await?.get(&attempt) {
                Some(p) => pod_name(p),
                None if state.is_finished() => return Ok(EXIT_OK),
                None => bail!("attempt {attempt} of activity \"{}\" has no pod", logs.name),
            },
        };
        if logs.wait_started(attempt, &pod).await? {
            logs.follow(attempt, &pod).await?;
        } else {
            eprintln!("{}pod {pod} never started; no logs", prefix(attempt));
        }
        // Wait for this attempt to end: the next attempt, or the end of the activity.
        let Some((_, after)) = wait_for_activity(logs.conn, logs.name, false, move |s| {
            s.is_finished() || s.attempt.is_some_and(|a| a > attempt)
        })
        .await?
        else {
            bail!("activity \"{}\" was deleted", logs.name);
        };
        if after.attempt.is_none_or(|a| a <= attempt) {
            return Ok(EXIT_OK);
        }
        attempt = attempt.saturating_add(1);
    }
}
