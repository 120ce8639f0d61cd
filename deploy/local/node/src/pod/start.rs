//! Setting a pod up (address, directories, credentials) and starting its containers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use tracing::{debug, info, warn};

use super::slot::Run;
use super::{Creds, PodWorker};
use crate::creds;
use crate::env::{self, PodFacts};
use crate::expand::expand_with;
use crate::image::{self, LaunchError};
use crate::ipam::HOST_IP;
use crate::node;
use crate::probe::{self, ProbeKind};
use crate::process::{self, ProcessSpec};
use crate::quantity;
use crate::status::{State, Terminated};

/// Longest wait between attempts to set up a pod.
const SANDBOX_RETRY_MAX: Duration = Duration::from_secs(30);
/// How long `ErrImagePull` shows before `ImagePullBackOff`.
const PULL_ERROR_SHOWN: Duration = Duration::from_secs(2);
/// Retry delay for a container whose configuration cannot be built.
const CONFIG_RETRY: Duration = Duration::from_secs(10);

fn set(vars: &mut Vec<(String, String)>, name: &str, value: String) {
    match vars.iter_mut().find(|(n, _)| n == name) {
        Some(slot) => slot.1 = value,
        None => vars.push((name.to_string(), value)),
    }
}

impl PodWorker {
    /// Sets the pod up once: its address, its directory, its credentials. `false` while that
    /// has not worked yet (retried with back-off).
    pub(super) async fn ensure_sandbox(&mut self, now: Instant) -> bool {
        if self.sandbox_ready {
            return true;
        }
        if self.sandbox_retry.is_some_and(|(at, _)| at > now) {
            return false;
        }
        match self.setup().await {
            Ok(()) => {
                self.sandbox_ready = true;
                self.sandbox_retry = None;
                true
            }
            Err(e) => {
                let delay =
                    self.sandbox_retry.map_or(Duration::from_millis(250), |(_, d)| (d * 2).min(SANDBOX_RETRY_MAX));
                // The first failures are often races (the API server's admission has not seen the
                // pod's binding yet when the token is requested); only persistent ones are news.
                if delay >= Duration::from_secs(2) {
                    warn!(pod = %self.label(), error = %e, retry_in = ?delay, "setting up pod");
                } else {
                    debug!(pod = %self.label(), error = %e, retry_in = ?delay, "setting up pod");
                }
                self.sandbox_retry = Some((now + delay, delay));
                false
            }
        }
    }

    async fn setup(&mut self) -> Result<(), String> {
        if self.pod_ip.is_none() {
            let ip = self.ctx.ips.lock().map_err(|_| "pod IP pool poisoned".to_string())?.allocate();
            self.pod_ip = Some(ip.ok_or("no free pod IP left")?);
            self.pooled_ip = true;
        }
        let work = self.dir.join("work");
        std::fs::create_dir_all(&work).map_err(|e| format!("creating {}: {e}", work.display()))?;
        if creds::wants_token(&self.pod) && self.creds.is_none() {
            self.write_creds().await?;
        }
        Ok(())
    }

    async fn write_creds(&mut self) -> Result<(), String> {
        let token =
            self.ctx.request_token(&self.pod).await.map_err(|e| format!("requesting service account token: {e}"))?;
        let sa_dir = self.dir.join("serviceaccount");
        std::fs::create_dir_all(&sa_dir).map_err(|e| format!("creating {}: {e}", sa_dir.display()))?;
        let token_file = sa_dir.join("token");
        creds::write_private(&token_file, token.token.as_bytes()).map_err(|e| e.to_string())?;
        creds::write_private(&sa_dir.join("namespace"), self.namespace.as_bytes()).map_err(|e| e.to_string())?;
        let kubeconfig = self.dir.join("kubeconfig");
        let text = creds::render_kubeconfig(&self.ctx.access, &token_file, &self.namespace);
        creds::write_private(&kubeconfig, text.as_bytes()).map_err(|e| e.to_string())?;
        let refresh_at = Instant::now() + token.refresh_after(Timestamp::now());
        self.creds = Some(Creds { kubeconfig, refresh_at });
        Ok(())
    }

    /// Replaces the token before it expires (clients re-read the file).
    pub(super) async fn refresh_creds(&mut self, now: Instant) {
        let Some(c) = &self.creds else { return };
        if c.refresh_at > now {
            return;
        }
        if let Err(e) = self.write_creds().await {
            warn!(pod = %self.label(), error = %e, "refreshing service account token; will retry");
            if let Some(c) = self.creds.as_mut() {
                c.refresh_at = now + Duration::from_secs(10);
            }
        }
    }

    /// The environment every container starts from (its own `env` comes on top).
    fn base_env(&self) -> Vec<(String, String)> {
        let hostname = self.pod.spec.as_ref().and_then(|s| s.hostname.clone()).unwrap_or_else(|| self.name.clone());
        let mut env = vec![
            ("PATH".to_string(), self.ctx.host_path.clone()),
            ("HOME".to_string(), self.dir.join("work").display().to_string()),
            ("HOSTNAME".to_string(), hostname),
        ];
        if let Some(c) = &self.creds {
            env.push(("KUBECONFIG".to_string(), c.kubeconfig.display().to_string()));
        }
        env
    }

    /// Tries to start container `i`.
    pub(super) async fn start(&mut self, i: usize, now: Instant) {
        self.slots[i].next_start = None;
        let spec = self.slots[i].spec.clone();
        let image_name = spec.image.clone().unwrap_or_default();
        if let Err(LaunchError::ImagePull(msg)) =
            image::check_image(&image_name, &self.ctx.bin_dir, &image::is_executable)
        {
            self.pull_failed(i, msg, now);
            return;
        }
        self.slots[i].pull_failed_at = None;

        let (cms, secrets) = env::referenced_sources(&spec);
        let sources = match self.ctx.fetch_sources(&self.namespace, &cms, &secrets).await {
            Ok(s) => s,
            Err(e) => {
                warn!(pod = %self.label(), error = %e, "fetching configmaps/secrets; will retry");
                self.slots[i].next_start = Some(now + Duration::from_secs(2));
                return;
            }
        };
        let pod_ip = self.pod_ip.unwrap_or(HOST_IP).to_string();
        let host_ip = HOST_IP.to_string();
        let facts = PodFacts {
            pod: &self.pod,
            pod_ip: &pod_ip,
            host_ip: &host_ip,
            node_name: &self.ctx.node_name,
            node_cpu: quantity::parse(node::CPU).unwrap_or(1.0),
            node_memory: quantity::parse(node::MEMORY).unwrap_or(0.0),
        };
        let container_env = match env::resolve_env(&facts, &spec, &sources) {
            Ok(e) => e,
            Err(e) => {
                self.event(i, true, "Failed", format!("Error: {e}"));
                let slot = &mut self.slots[i];
                slot.view.state = State::waiting("CreateContainerConfigError", Some(e.to_string()));
                slot.next_start = Some(now + CONFIG_RETRY);
                return;
            }
        };
        let command: Vec<String> = spec.command.iter().flatten().map(|c| expand_with(c, &container_env)).collect();
        let args: Vec<String> = spec.args.iter().flatten().map(|a| expand_with(a, &container_env)).collect();
        let mut full_env = self.base_env();
        for (k, v) in &container_env {
            set(&mut full_env, k, v.clone());
        }
        let path = full_env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.clone()).unwrap_or_default();

        self.slots[i].starting(now);
        let launch =
            match image::plan_launch(&image_name, &command, &args, &self.ctx.bin_dir, &path, image::is_executable) {
                Ok(l) => l,
                Err(LaunchError::ImagePull(msg)) => return self.pull_failed(i, msg, now),
                Err(LaunchError::Start(msg)) => return self.start_failed(i, msg, now),
            };
        let work = self.dir.join("work");
        let cwd = match spec.working_dir.as_deref().filter(|d| !d.is_empty()) {
            Some(d) if std::path::Path::new(d).is_dir() => d.into(),
            Some(d) => {
                warn!(pod = %self.label(), container = %spec.name, dir = d, "workingDir does not exist on the host; using the pod's directory");
                work.clone()
            }
            None => work.clone(),
        };
        let log = self.ctx.log_file(&self.namespace, &self.name, &spec.name);
        let label = format!("{}/{}/{}", self.namespace, self.name, spec.name);
        self.generation += 1;
        let process_spec =
            ProcessSpec { exe: &launch.exe, args: &launch.args, env: &full_env, cwd: &cwd, log: &log, label: &label };
        let pid = match process::spawn(&process_spec, &self.ctx.pids_dir, i, self.generation, self.exits_tx.clone()) {
            Ok(pid) => pid,
            Err(e) => return self.start_failed(i, format!("failed to start {}: {e}", launch.exe.display()), now),
        };
        info!(pod = %self.label(), container = %spec.name, pid, exe = %launch.exe.display(), "container started");
        self.event(i, false, "Started", format!("Started container {}", spec.name));
        self.ctx.set_running(&label, true);
        let target = Arc::new(probe::Target {
            pod_ip,
            ports: spec.ports.clone().unwrap_or_default(),
            image: image_name,
            env: full_env,
            cwd,
            bin_dir: self.ctx.bin_dir.clone(),
        });
        let slot = &mut self.slots[i];
        slot.run = Some(Run {
            pid,
            generation: self.generation,
            probes: Vec::new(),
            target,
            startup_ok: spec.startup_probe.is_none(),
            readiness_ok: false,
            kill_at: None,
            killed: false,
        });
        slot.view.state = State::Running { started_at: Timestamp::now() };
        slot.view.container_id = Some(format!("process://{pid}"));
        slot.view.image_id = Some(format!("process-node://{}", launch.exe.display()));
        slot.update_readiness();
        self.spawn_probes(i, spec.startup_probe.is_some());
    }

    /// The image is not available: `ErrImagePull`, then `ImagePullBackOff` until the back-off ends.
    fn pull_failed(&mut self, i: usize, msg: String, now: Instant) {
        let slot = &mut self.slots[i];
        let image = slot.view.image.clone();
        if let Some(failed) = slot.pull_failed_at
            && let Some((end, _)) = slot.pull.in_backoff_since(failed, now)
        {
            let message = format!("Back-off pulling image \"{image}\": ErrImagePull: {msg}");
            slot.view.state = State::waiting("ImagePullBackOff", Some(message));
            slot.next_start = Some(end);
            self.event(i, false, "BackOff", format!("Back-off pulling image \"{image}\""));
            return;
        }
        slot.pull.next(slot.pull_failed_at.unwrap_or(now), now);
        slot.pull_failed_at = Some(now);
        slot.view.state = State::waiting("ErrImagePull", Some(msg.clone()));
        slot.next_start = Some(now + PULL_ERROR_SHOWN);
        self.event(i, true, "Failed", msg);
    }

    /// The process could not be started: like the runtime's `StartError` (exit code 128).
    fn start_failed(&mut self, i: usize, msg: String, now: Instant) {
        warn!(pod = %self.label(), container = %self.slots[i].spec.name, error = %msg, "container failed to start");
        let term = Terminated {
            exit_code: 128,
            signal: None,
            reason: "StartError".into(),
            message: Some(msg),
            started_at: None,
            finished_at: Timestamp::now(),
            container_id: None,
        };
        self.event(i, true, "Failed", format!("Error: {}", term.message.clone().unwrap_or_default()));
        let (policy, label) = (self.policy, self.label());
        self.slots[i].exited(term, policy, false, now, &label);
        self.event_if_backoff(i);
    }

    /// Starts the probe tasks of container `i`: only the startup probe while it has not
    /// succeeded, liveness and readiness after.
    pub(super) fn spawn_probes(&mut self, i: usize, startup: bool) {
        let slot = &mut self.slots[i];
        let Some(run) = slot.run.as_mut() else { return };
        let probes = if startup {
            vec![(ProbeKind::Startup, slot.spec.startup_probe.clone())]
        } else {
            vec![
                (ProbeKind::Liveness, slot.spec.liveness_probe.clone()),
                (ProbeKind::Readiness, slot.spec.readiness_probe.clone()),
            ]
        };
        for (kind, probe) in probes {
            let Some(probe) = probe else { continue };
            let task =
                tokio::spawn(probe::run(kind, probe, run.target.clone(), i, run.generation, self.probes_tx.clone()));
            run.probes.push(task.abort_handle());
        }
    }
}
