//! `watch`: a live view driven by a kube watch (no polling of the API). On a terminal, indicatif
//! redraws one line per activity (the lines come from `render::table`; a 1 s tick only re-renders
//! ages and ETAs from what the watch delivered). Elsewhere, a plain line is printed whenever an
//! activity changes. It ends when every watched activity has finished, or on Ctrl-C.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::anyhow;
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use k8s_openapi::jiff::Timestamp;
use kube::api::DynamicObject;
use kube::runtime::{WatchStreamExt, watcher};

use crate::client::Conn;
use crate::model::ActivityState;
use crate::render::{self, Style, Tracked};
use crate::{EXIT_INTERRUPTED, EXIT_OK};

/// What is watched, and when the watch is over.
pub struct View {
    /// Named activities (`namespace/name` keys); empty means every activity the watch lists.
    pub wanted: BTreeSet<String>,
    pub activities: BTreeMap<String, Tracked>,
    /// Named activities that were deleted (they count as finished).
    pub deleted: BTreeSet<String>,
    /// The initial list is complete.
    pub listed: bool,
}

impl View {
    pub fn new(wanted: BTreeSet<String>) -> Self {
        View { wanted, activities: BTreeMap::new(), deleted: BTreeSet::new(), listed: false }
    }

    fn is_wanted(&self, key: &str) -> bool {
        self.wanted.is_empty() || self.wanted.contains(key)
    }

    /// Takes an object from the watch; returns whether the view changed.
    pub fn apply(&mut self, obj: &DynamicObject) -> bool {
        let state = serde_json::to_value(obj).map(|v| ActivityState::from_value(&v)).unwrap_or_default();
        let key = state.key();
        if !self.is_wanted(&key) {
            return false;
        }
        match self.activities.get_mut(&key) {
            Some(t) if t.state == state => false,
            Some(t) => {
                t.update(state);
                true
            }
            None => {
                self.activities.insert(key, Tracked::new(state));
                true
            }
        }
    }

    pub fn delete(&mut self, obj: &DynamicObject) {
        let key = format!(
            "{}/{}",
            obj.metadata.namespace.clone().unwrap_or_default(),
            obj.metadata.name.clone().unwrap_or_default()
        );
        if self.activities.remove(&key).is_some() && !self.wanted.is_empty() {
            self.deleted.insert(key);
        }
    }

    /// Every watched activity has finished (named ones that do not exist yet are waited for).
    pub fn done(&self) -> bool {
        if !self.listed {
            return false;
        }
        let all_finished = self.activities.values().all(|t| t.state.is_finished());
        if self.wanted.is_empty() {
            all_finished
        } else {
            all_finished && self.wanted.iter().all(|k| self.activities.contains_key(k) || self.deleted.contains(k))
        }
    }

    /// Named activities not seen yet.
    pub fn missing(&self) -> Vec<String> {
        self.wanted
            .iter()
            .filter(|k| !self.activities.contains_key(*k) && !self.deleted.contains(*k))
            .cloned()
            .collect()
    }

    /// The terminal view: a header, one line per activity, a summary.
    pub fn lines(&self, now: Timestamp, style: Style, all_namespaces: bool) -> Vec<String> {
        let refs: Vec<&Tracked> = self.activities.values().collect();
        let mut lines = render::table(&refs, now, style, all_namespaces, true);
        let mut summary = render::summary(&refs);
        let missing = self.missing();
        if !missing.is_empty() {
            summary.push_str(&format!("; waiting for {} to be created", missing.join(", ")));
        }
        lines.push(summary);
        lines
    }
}

/// What makes a plain line worth printing again: everything but the clock-driven columns.
fn signature(t: &Tracked) -> String {
    let s = &t.state;
    format!(
        "{:?}|{:?}|{:?}|{:?}|{:?}|{}|{}|{}",
        s.phase,
        s.attempt,
        s.last_heartbeat_time,
        s.heartbeat_details,
        s.next_attempt_schedule_time,
        s.paused,
        s.cancel_requested,
        s.deleting
    )
}

pub async fn run(
    conn: &Conn,
    names: Vec<String>,
    selector: Option<String>,
    all_namespaces: bool,
) -> anyhow::Result<u8> {
    let wanted: BTreeSet<String> =
        names.iter().map(|n| if n.contains('/') { n.clone() } else { format!("{}/{n}", conn.namespace) }).collect();
    let api = if all_namespaces { conn.all_activities() } else { conn.activities() };
    let mut cfg = watcher::Config::default();
    if let [one] = names.as_slice()
        && !one.contains('/')
    {
        cfg = cfg.fields(&format!("metadata.name={one}"));
    }
    if let Some(s) = &selector {
        cfg = cfg.labels(s);
    }
    let mut events = watcher(api, cfg).default_backoff().boxed();
    let tty = std::io::stdout().is_terminal();
    let style = crate::stdout_style();
    let mut view = View::new(wanted);

    let multi =
        MultiProgress::with_draw_target(if tty { ProgressDrawTarget::stdout() } else { ProgressDrawTarget::hidden() });
    let line_style = ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_spinner());
    let mut bars: Vec<ProgressBar> = Vec::new();
    let mut printed: BTreeMap<String, String> = BTreeMap::new();
    let mut header_printed = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // One handler for the whole loop, so a Ctrl-C between two iterations is not missed.
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut interrupted = false;

    loop {
        let mut changed = false;
        tokio::select! {
            ev = events.next() => {
                let Some(ev) = ev else { return Err(anyhow!("the watch ended")) };
                match ev {
                    Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => changed = view.apply(&obj),
                    Ok(watcher::Event::Delete(obj)) => {
                        view.delete(&obj);
                        changed = true;
                    }
                    Ok(watcher::Event::InitDone) => {
                        view.listed = true;
                        changed = true;
                    }
                    Ok(watcher::Event::Init) => {}
                    Err(e) if !view.listed => {
                        multi.clear().ok();
                        return Err(match e {
                            watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e) => conn.explain(e, None),
                            e => anyhow!(e),
                        });
                    }
                    Err(e) => {
                        let msg = format!("warning: the watch failed, retrying: {e}");
                        if tty { multi.println(msg).ok(); } else { eprintln!("{msg}"); }
                    }
                }
            }
            _ = tick.tick() => {}
            _ = &mut ctrl_c => interrupted = true,
        }
        if interrupted && !view.listed {
            multi.clear().ok();
            return Ok(EXIT_INTERRUPTED);
        }
        if !view.listed {
            continue;
        }
        let now = Timestamp::now();
        if view.activities.is_empty() && view.wanted.is_empty() {
            eprintln!(
                "No activities found{}; nothing to watch.",
                if all_namespaces { String::new() } else { format!(" in namespace \"{}\"", conn.namespace) }
            );
            return Ok(EXIT_OK);
        }
        if tty {
            let lines = view.lines(now, style, all_namespaces);
            while bars.len() < lines.len() {
                let bar = multi.add(ProgressBar::new(1));
                bar.set_style(line_style.clone());
                bars.push(bar);
            }
            while bars.len() > lines.len() {
                if let Some(bar) = bars.pop() {
                    bar.finish_and_clear();
                    multi.remove(&bar);
                }
            }
            for (bar, line) in bars.iter().zip(lines) {
                bar.set_message(line);
            }
        } else if changed {
            let refs: Vec<&Tracked> = view.activities.values().collect();
            let lines = render::table(&refs, now, style, all_namespaces, true);
            if !header_printed && let Some(h) = lines.first() {
                println!("{h}");
                header_printed = true;
            }
            for (t, line) in view.activities.values().zip(lines.iter().skip(1)) {
                let sig = signature(t);
                if printed.get(&t.state.key()) != Some(&sig) {
                    println!("{line}");
                    printed.insert(t.state.key(), sig);
                }
            }
        }
        if view.done() || interrupted {
            if tty {
                for bar in &bars {
                    bar.finish();
                }
            } else {
                let refs: Vec<&Tracked> = view.activities.values().collect();
                println!("{}", render::summary(&refs));
            }
            return Ok(if interrupted { EXIT_INTERRUPTED } else { EXIT_OK });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(name: &str, phase: &str, progress: &str, hb: &str) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "heartbeat.dev/v1alpha1", "kind": "Activity",
            "metadata": {"name": name, "namespace": "ns", "creationTimestamp": "2026-11-27T11:59:00Z"},
            "status": {"phase": phase, "attempt": 1, "startedTime": "2026-11-27T11:59:00Z",
                       "lastHeartbeatTime": hb, "heartbeatDetails": {"progress": progress}}
        }))
        .unwrap()
    }

    #[test]
    fn view_ends_when_every_watched_activity_finished() {
        let mut v = View::new(BTreeSet::from(["ns/a".to_string(), "ns/b".to_string()]));
        assert!(v.apply(&obj("a", "Running", "1/4", "2026-11-27T11:59:10Z")));
        assert!(!v.apply(&obj("a", "Running", "1/4", "2026-11-27T11:59:10Z")), "same state: no change");
        assert!(!v.apply(&obj("other", "Running", "1/4", "2026-11-27T11:59:10Z")), "not watched");
        v.listed = true;
        assert_eq!(v.missing(), vec!["ns/b".to_string()]);
        assert!(v.apply(&obj("a", "Succeeded", "4/4", "2026-11-27T11:59:40Z")));
        assert!(!v.done(), "b not seen yet");
        let b = obj("b", "Running", "2/4", "2026-11-27T11:59:20Z");
        v.apply(&b);
        assert!(!v.done());
        v.delete(&b);
        assert!(v.done(), "a finished, b deleted");

        let now: Timestamp = "2026-11-27T12:00:00Z".parse().unwrap();
        let lines = v.lines(now, Style::PLAIN, false);
        let expected = [
            "NAME   PHASE       ATTEMPT   PROGRESS                          RATE   ETA   HEARTBEAT   NEXT RETRY   AGE",
            "a      Succeeded   1         [####################] 4/4 100%   -      -     20s         -            60s",
            "1/1 finished: 1 Succeeded",
        ];
        assert_eq!(lines, expected, "\n{}", lines.join("\n"));
    }

    #[test]
    fn unnamed_view_with_bars_that_move() {
        let mut v = View::new(BTreeSet::new());
        v.apply(&obj("a", "Running", "1/4", "2026-11-27T11:59:10Z"));
        v.listed = true;
        let now: Timestamp = "2026-11-27T11:59:30Z".parse().unwrap();
        let before = v.lines(now, Style::PLAIN, false);
        v.apply(&obj("a", "Running", "3/4", "2026-11-27T11:59:30Z"));
        let after = v.lines(now, Style::PLAIN, false);
        assert_eq!(
            before[1],
            "a      Running   1         [#####---------------] 1/4 25%   0.10/s   10s   20s         -            30s"
        );
        assert_eq!(
            after[1],
            "a      Running   1         [###############-----] 3/4 75%   0.10/s   10s   0s          -            30s"
        );
        assert!(!v.done());
    }
}
