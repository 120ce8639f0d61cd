//! Container probes (startup, liveness, readiness): `httpGet`, `tcpSocket` and `exec`, with the
//! kubelet's thresholds. One task per probe of a running container; it reports only changes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerPort, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::image;
use crate::process;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

/// A probe's result changed.
#[derive(Debug, Clone)]
pub struct ProbeEvent {
    pub slot: usize,
    pub generation: u64,
    pub kind: ProbeKind,
    pub ok: bool,
    pub message: String,
}

/// Where and how a container's probes run.
#[derive(Debug, Clone)]
pub struct Target {
    pub pod_ip: String,
    pub ports: Vec<ContainerPort>,
    pub image: String,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub bin_dir: PathBuf,
}

/// Consecutive-result counting: the result flips after `successThreshold` successes or
/// `failureThreshold` failures in a row.
#[derive(Debug, Clone)]
pub struct Thresholds {
    success: u32,
    failure: u32,
    successes: u32,
    failures: u32,
    current: Option<bool>,
}

impl Thresholds {
    pub fn new(probe: &Probe, kind: ProbeKind) -> Self {
        let positive =
            |v: Option<i32>, default: u32| v.and_then(|v| u32::try_from(v).ok()).filter(|v| *v > 0).unwrap_or(default);
        Self {
            success: positive(probe.success_threshold, 1),
            failure: positive(probe.failure_threshold, 3),
            successes: 0,
            failures: 0,
            // The kubelet's initial results: not ready, alive, not yet started.
            current: match kind {
                ProbeKind::Readiness => Some(false),
                ProbeKind::Liveness => Some(true),
                ProbeKind::Startup => None,
            },
        }
    }

    /// Records one result; returns the new result if it changed.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let next = if ok && self.successes >= self.success {
            Some(true)
        } else if !ok && self.failures >= self.failure {
            Some(false)
        } else {
            None
        };
        match next {
            Some(n) if self.current != Some(n) => {
                self.current = Some(n);
                Some(n)
            }
            _ => None,
        }
    }
}

fn seconds(v: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(v.and_then(|v| u64::try_from(v).ok()).filter(|v| *v > 0).unwrap_or(default))
}

/// Runs a probe until the task is aborted (startup probes end at their first success).
pub async fn run(
    kind: ProbeKind,
    probe: Probe,
    target: Arc<Target>,
    slot: usize,
    generation: u64,
    events: mpsc::UnboundedSender<ProbeEvent>,
) {
    let delay = Duration::from_secs(probe.initial_delay_seconds.and_then(|v| u64::try_from(v).ok()).unwrap_or(0));
    let period = seconds(probe.period_seconds, 10);
    let timeout = seconds(probe.timeout_seconds, 1);
    let mut thresholds = Thresholds::new(&probe, kind);
    tokio::time::sleep(delay).await;
    loop {
        let result = check(&probe, &target, timeout).await;
        let ok = result.is_ok();
        if let Some(now_ok) = thresholds.record(ok) {
            let message = result.err().unwrap_or_default();
            if events.send(ProbeEvent { slot, generation, kind, ok: now_ok, message }).is_err() {
                return;
            }
            if kind == ProbeKind::Startup && now_ok {
                return;
            }
        }
        tokio::time::sleep(period).await;
    }
}

fn resolve_port(port: &IntOrString, ports: &[ContainerPort]) -> Result<u16, String> {
    let n = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => match name.parse::<i32>() {
            Ok(n) => n,
            Err(_) => ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name))
                .map(|p| p.container_port)
                .ok_or_else(|| format!("couldn't find port: {name}"))?,
        },
    };
    u16::try_from(n).ok().filter(|n| *n > 0).ok_or_else(|| format!("invalid port number: {n}"))
}

/// One probe attempt: `Ok` on success, the failure message otherwise.
pub async fn check(probe: &Probe, target: &Target, timeout: Duration) -> Result<(), String> {
    if let Some(http) = &probe.http_get {
        let port = resolve_port(&http.port, &target.ports)?;
        let host = http.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| target.pod_ip.clone());
        if http.scheme.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("HTTPS")) {
            // No TLS client here: an HTTPS endpoint that accepts connections counts as up.
            return tcp(&host, port, timeout).await;
        }
        let path = http.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into());
        let headers: Vec<(String, String)> =
            http.http_headers.iter().flatten().map(|h| (h.name.clone(), h.value.clone())).collect();
        return http_get(&host, port, &path, &headers, timeout).await;
    }
    if let Some(tcp_socket) = &probe.tcp_socket {
        let port = resolve_port(&tcp_socket.port, &target.ports)?;
        let host = tcp_socket.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| target.pod_ip.clone());
        return tcp(&host, port, timeout).await;
    }
    if let Some(exec) = &probe.exec {
        let command = exec.command.clone().unwrap_or_default();
        let path = target.env.iter().rev().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str()).unwrap_or("");
        let launch = image::plan_launch(&target.image, &command, &[], &target.bin_dir, path, image::is_executable)
            .map_err(|e| format!("{e:?}"))?;
        return match process::run_check(&launch.exe, &launch.args, &target.env, &target.cwd, timeout).await {
            Ok(exit) if exit.code == 0 => Ok(()),
            Ok(exit) => Err(format!("command {command:?} exited with {}", exit.code)),
            Err(e) => Err(format!("command {command:?} failed: {e}")),
        };
    }
    Err("probe has no supported handler (httpGet, tcpSocket, exec)".into())
}

async fn tcp(host: &str, port: u16, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
        Err(_) => Err(format!("dial tcp {host}:{port}: i/o timeout")),
    }
}

/// `GET` with HTTP/1.1; 200–399 is success, like the kubelet.
pub async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<(), String> {
    let url = format!("http://{host}:{port}{path}");
    let attempt = async {
        let mut stream = TcpStream::connect((host, port)).await.map_err(|e| format!("Get \"{url}\": {e}"))?;
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n");
        let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
        if !has("User-Agent") {
            request.push_str("User-Agent: kube-probe/process-node\r\n");
        }
        if !has("Accept") {
            request.push_str("Accept: */*\r\n");
        }
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("Get \"{url}\": {e}"))?;
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 256];
        while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 4096 {
            let n = stream.read(&mut chunk).await.map_err(|e| format!("Get \"{url}\": {e}"))?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let line = String::from_utf8_lossy(&buf);
        let code: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("Get \"{url}\": malformed HTTP response"))?;
        if (200..400).contains(&code) { Ok(()) } else { Err(format!("HTTP probe failed with statuscode: {code}")) }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => {
            Err(format!("Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn probe(v: serde_json::Value) -> Probe {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn thresholds() {
        let p = probe(serde_json::json!({"failureThreshold": 2, "successThreshold": 2}));
        let mut t = Thresholds::new(&p, ProbeKind::Readiness);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(true));
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(false));
        let mut live = Thresholds::new(&probe(serde_json::json!({})), ProbeKind::Liveness);
        assert_eq!(live.record(true), None);
        assert_eq!(live.record(false), None);
        assert_eq!(live.record(false), None);
        assert_eq!(live.record(false), Some(false));
        let mut startup = Thresholds::new(&probe(serde_json::json!({})), ProbeKind::Startup);
        assert_eq!(startup.record(true), Some(true));
    }

    #[test]
    fn ports() {
        let ports: Vec<ContainerPort> =
            serde_json::from_value(serde_json::json!([{"name": "http", "containerPort": 8080}])).unwrap();
        assert_eq!(resolve_port(&IntOrString::String("http".into()), &ports), Ok(8080));
        assert_eq!(resolve_port(&IntOrString::Int(80), &ports), Ok(80));
        assert!(resolve_port(&IntOrString::String("x".into()), &ports).is_err());
    }

    async fn serve_once(status: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
        });
        port
    }

    #[tokio::test]
    async fn http_probe() {
        let t = Duration::from_secs(2);
        let port = serve_once("200 OK").await;
        assert_eq!(http_get("127.0.0.1", port, "/healthz", &[], t).await, Ok(()));
        let port = serve_once("500 Internal Server Error").await;
        assert_eq!(
            http_get("127.0.0.1", port, "/", &[], t).await,
            Err("HTTP probe failed with statuscode: 500".into())
        );
        let port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        assert!(http_get("127.0.0.1", port, "/", &[], t).await.is_err());
    }

    #[tokio::test]
    async fn exec_probe() {
        let target = Target {
            pod_ip: "127.0.0.1".into(),
            ports: vec![],
            image: "busybox".into(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: std::env::temp_dir(),
            bin_dir: "/nowhere".into(),
        };
        let ok = probe(serde_json::json!({"exec": {"command": ["sh", "-c", "exit 0"]}}));
        assert_eq!(check(&ok, &target, Duration::from_secs(5)).await, Ok(()));
        let bad = probe(serde_json::json!({"exec": {"command": ["sh", "-c", "exit 1"]}}));
        assert!(check(&bad, &target, Duration::from_secs(5)).await.is_err());
    }
}
