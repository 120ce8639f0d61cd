//! Container processes: each one is the leader of its own process group, its stdout and stderr go
//! to the container's log file, and `<state-dir>/pids/<pgid>` exists while it lives (so
//! `cluster.sh down` can kill leftovers by pid).

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// What to run.
#[derive(Debug, Clone)]
pub struct ProcessSpec<'a> {
    pub exe: &'a Path,
    pub args: &'a [String],
    /// The complete environment.
    pub env: &'a [(String, String)],
    pub cwd: &'a Path,
    /// Appended with stdout and stderr.
    pub log: &'a Path,
    /// `namespace/pod/container`, written into the pid file.
    pub label: &'a str,
}

/// A finished process: exit code (128+signal for a signal death) and the signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    pub signal: Option<i32>,
}

impl From<ExitStatus> for Exit {
    fn from(s: ExitStatus) -> Self {
        match (s.code(), s.signal()) {
            (Some(code), _) => Self { code, signal: None },
            (None, Some(sig)) => Self { code: 128 + sig, signal: Some(sig) },
            (None, None) => Self { code: 255, signal: None },
        }
    }
}

/// The exit of a container process, tagged for the pod worker.
#[derive(Debug, Clone, Copy)]
pub struct ExitEvent {
    pub slot: usize,
    pub generation: u64,
    pub exit: Exit,
}

fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).open(path)
}

/// The process's start time in clock ticks since boot (field 22 of `/proc/<pid>/stat`), which
/// tells a pid's process apart from a later one with the same pid.
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = stat.rsplit_once(')')?.1;
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Starts a process; a task waits for it, kills what is left of its group, removes the pid file
/// and sends the exit to `events`. Returns the pid (= pgid).
pub fn spawn(
    spec: &ProcessSpec<'_>,
    pids_dir: &Path,
    slot: usize,
    generation: u64,
    events: mpsc::UnboundedSender<ExitEvent>,
) -> std::io::Result<u32> {
    let out = open_log(spec.log)?;
    let err = out.try_clone()?;
    let mut child = Command::new(spec.exe)
        .args(spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(spec.cwd)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(false)
        .spawn()?;
    let pid = child.id().ok_or_else(|| std::io::Error::other("process exited before it got a pid"))?;
    let pid_file = pids_dir.join(pid.to_string());
    let ticks = i32::try_from(pid).ok().and_then(start_ticks).unwrap_or(0);
    if let Err(e) = std::fs::write(&pid_file, format!("{ticks} {}\n", spec.label)) {
        warn!(file = %pid_file.display(), error = %e, "cannot write pid file");
    }
    tokio::spawn(async move {
        let exit = match child.wait().await {
            Ok(status) => Exit::from(status),
            Err(e) => {
                warn!(pid, error = %e, "waiting for container process");
                Exit { code: 255, signal: None }
            }
        };
        // Like a container's end: nothing of its process group outlives the main process.
        signal_group(pid, Signal::SIGKILL);
        let _ = std::fs::remove_file(&pid_file);
        debug!(pid, ?exit, "container process exited");
        let _ = events.send(ExitEvent { slot, generation, exit });
    });
    Ok(pid)
}

/// Sends `signal` to the process group `pgid`; a group that is gone is fine.
pub fn signal_group(pgid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pgid) else { return };
    if raw <= 1 {
        return;
    }
    match killpg(Pid::from_raw(raw), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => warn!(pgid, ?signal, error = %e, "signalling process group"),
    }
}

/// Kills process groups left in `pids_dir` by an earlier run (only those whose leader is still
/// the same process) and removes their pid files.
pub fn kill_leftovers(pids_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(pids_dir) else { return 0 };
    let mut killed = 0;
    for entry in entries.flatten() {
        let path: PathBuf = entry.path();
        let pgid = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok());
        let recorded = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|t| t.parse::<u64>().ok()));
        if let (Some(pgid), Some(ticks)) = (pgid, recorded)
            && ticks != 0
            && start_ticks(pgid) == Some(ticks)
        {
            warn!(pgid, "killing a process group left by an earlier run");
            signal_group(pgid.unsigned_abs(), Signal::SIGKILL);
            killed += 1;
        }
        let _ = std::fs::remove_file(&path);
    }
    killed
}

/// Runs a command to completion with a timeout (exec probes); `Ok(true)` if it exited 0.
pub async fn run_check(
    exe: &Path,
    args: &[String],
    env: &[(String, String)],
    cwd: &Path,
    timeout: Duration,
) -> std::io::Result<Exit> {
    let mut child = Command::new(exe)
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id();
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => {
            if let Some(pid) = pid {
                signal_group(pid, Signal::SIGKILL);
            }
            Ok(Exit::from(status?))
        }
        Err(_) => {
            if let Some(pid) = pid {
                signal_group(pid, Signal::SIGKILL);
            }
            let _ = child.wait().await;
            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("command timed out after {timeout:?}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_logs_and_reports_exit() {
        let dir = std::env::temp_dir().join(format!("process-node-test-{}", std::process::id()));
        let pids = dir.join("pids");
        std::fs::create_dir_all(&pids).unwrap();
        let log = dir.join("c.log");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let args = vec!["-c".to_string(), "echo out; echo err >&2; sleep 30 & exit 3".to_string()];
        let env = vec![("PATH".to_string(), "/usr/bin:/bin".to_string())];
        let spec =
            ProcessSpec { exe: Path::new("/bin/sh"), args: &args, env: &env, cwd: &dir, log: &log, label: "ns/p/c" };
        let pid = spawn(&spec, &pids, 2, 7, tx.clone()).unwrap();
        let ev = rx.recv().await.unwrap();
        assert_eq!((ev.slot, ev.generation, ev.exit), (2, 7, Exit { code: 3, signal: None }));
        assert!(!pids.join(pid.to_string()).exists());
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("out") && text.contains("err"), "{text}");

        let args = vec!["-c".to_string(), "sleep 30".to_string()];
        let spec = ProcessSpec { args: &args, ..spec };
        let pid = spawn(&spec, &pids, 0, 1, tx).unwrap();
        assert!(pids.join(pid.to_string()).exists());
        signal_group(pid, Signal::SIGTERM);
        let ev = rx.recv().await.unwrap();
        assert_eq!(ev.exit, Exit { code: 143, signal: Some(15) });
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn checks_time_out() {
        let dir = std::env::temp_dir();
        let r =
            run_check(Path::new("/bin/sh"), &["-c".into(), "exit 0".into()], &[], &dir, Duration::from_secs(5)).await;
        assert_eq!(r.unwrap().code, 0);
        let r =
            run_check(Path::new("/bin/sh"), &["-c".into(), "sleep 5".into()], &[], &dir, Duration::from_millis(100))
                .await;
        assert!(r.is_err());
    }
}
