//! `kubectl activity watch` in a real terminal: tmux runs it, capture-pane reads the screen. The
//! bars must move while the activities run, and the view must end by itself once they finish.
//! Needs tmux (`apt-get install -y tmux`).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{BIN, Env, phase, progress_script};

struct Tmux(String);

impl Tmux {
    fn start(name: &str, command: &str) -> Tmux {
        let status = Command::new("tmux")
            .args(["new-session", "-d", "-s", name, "-x", "160", "-y", "30", command])
            .status()
            .expect("tmux (apt-get install -y tmux)");
        assert!(status.success(), "tmux new-session");
        Tmux(name.to_string())
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux").args(["capture-pane", "-p", "-t", &self.0]).output().expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["kill-session", "-t", &self.0]).status();
    }
}

/// `done` of a `done/total` on the line of `name`, if the line shows one.
fn progress_on(screen: &str, name: &str, total: u32) -> Option<u32> {
    let line = screen.lines().find(|l| l.starts_with(&format!("{name} ")))?;
    line.split_whitespace().find_map(|w| w.strip_suffix(&format!("/{total}"))?.parse().ok())
}

#[tokio::test]
async fn watch_in_a_terminal_moves_the_bars_and_ends() {
    let env = Env::new("cli-tmux").await;
    let flags = ["--start-to-close-timeout", "2m", "--heartbeat-timeout", "2s"];
    env.start("bar-a", &flags, &progress_script(8, "1")).await;
    env.start("bar-b", &flags, &progress_script(5, "1")).await;

    let args: Vec<String> = env.args(&["watch"]).iter().map(|a| format!("'{a}'")).collect();
    // The exit code is shown after the view ends; `sleep` keeps the pane open to read it.
    let command = format!("'{BIN}' {} ; echo WATCH-EXIT=$? ; sleep 600", args.join(" "));
    let session = format!("{}-watch", env.ns.name);
    let tmux = Tmux::start(&session, &command);

    let start = Instant::now();
    let mut seen_a: Vec<u32> = Vec::new();
    let mut unicode_bar = false;
    let mut screen = String::new();
    let mut ended = false;
    while start.elapsed() < Duration::from_secs(180) {
        screen = tmux.screen();
        if let Some(n) = progress_on(&screen, "bar-a", 8)
            && seen_a.last() != Some(&n)
        {
            seen_a.push(n);
        }
        unicode_bar |= screen.contains('█') || screen.contains('░');
        if screen.contains("WATCH-EXIT=") {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !ended {
        env.dump();
    }
    assert!(ended, "the view did not end within 180 s; last screen:\n{screen}");
    assert!(screen.contains("WATCH-EXIT=0"), "exit code 0:\n{screen}");
    for name in ["bar-a", "bar-b"] {
        let a = env.get(name).await.unwrap_or_default();
        assert_eq!(phase(&a), "Succeeded", "the view ended only after {name} finished");
    }
    // The bars moved: several partial values of bar-a were on screen, in order, then the full one.
    let partial: Vec<u32> = seen_a.iter().copied().filter(|n| (1..8).contains(n)).collect();
    assert!(partial.len() >= 2, "bar-a should show at least two partial progress values; saw {seen_a:?}");
    assert!(seen_a.windows(2).all(|w| w[0] < w[1]), "progress only moves forward: {seen_a:?}");
    assert_eq!(seen_a.last(), Some(&8), "{seen_a:?}\n{screen}");
    assert!(unicode_bar, "bars are drawn with block characters on a terminal:\n{screen}");
    // The final view stays on screen: both activities Succeeded, and the summary.
    assert!(screen.contains("2/2 finished: 2 Succeeded"), "{screen}");
    assert_eq!(progress_on(&screen, "bar-b", 5), Some(5), "{screen}");
    drop(tmux);
    env.finish().await;
}

#[tokio::test]
async fn ctrl_c_ends_the_watch_and_leaves_the_activity_running() {
    let env = Env::new("cli-tmux-int").await;
    env.start("long", &["--start-to-close-timeout", "5m"], "sleep 300").await;
    let args: Vec<String> = env.args(&["watch", "long"]).iter().map(|a| format!("'{a}'")).collect();
    let command = format!("'{BIN}' {} ; echo WATCH-EXIT=$? ; sleep 600", args.join(" "));
    let tmux = Tmux::start(&format!("{}-watch", env.ns.name), &command);

    let running = wait_screen(&tmux, Duration::from_secs(120), |s| {
        s.lines().any(|l| l.starts_with("long ") && l.contains("Running"))
    })
    .await;
    assert!(running.is_some(), "the view shows long Running:\n{}", tmux.screen());
    let status = Command::new("tmux").args(["send-keys", "-t", &tmux.0, "C-c"]).status().expect("tmux send-keys");
    assert!(status.success());
    let ended = wait_screen(&tmux, Duration::from_secs(20), |s| s.contains("WATCH-EXIT=")).await;
    let screen = ended.unwrap_or_else(|| tmux.screen());
    assert!(screen.contains("WATCH-EXIT=130"), "Ctrl-C ends the view with 130:\n{screen}");
    let a = env.get("long").await.unwrap_or_default();
    assert_eq!(phase(&a), "Running", "watching never changes the activity");
    drop(tmux);
    env.finish().await;
}

/// Polls the pane every 200 ms until `check` accepts it; the screen, or `None` after `timeout`.
async fn wait_screen(tmux: &Tmux, timeout: Duration, check: impl Fn(&str) -> bool) -> Option<String> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        let screen = tmux.screen();
        if check(&screen) {
            return Some(screen);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}
