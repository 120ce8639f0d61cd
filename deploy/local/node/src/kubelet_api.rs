//! A sliver of the kubelet's HTTPS API, so that `kubectl logs` works through the API server:
//! `GET /containerLogs/{namespace}/{pod}/{container}` with `follow`, `tailLines` and `limitBytes`.
//! It serves with the node's certificate and accepts only clients with a certificate of the
//! cluster's CA (the API server's kubelet client). Other kubelet endpoints answer 404.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use kube::config::Kubeconfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig, crypto};
use tracing::{debug, warn};

use crate::ctx::NodeCtx;
use crate::error::{Error, Result};

/// How often a followed log is checked for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;

fn tls_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Tls(format!("{what}: {e}"))
}

/// Base64 (as in kubeconfig `*-data` fields) to bytes.
fn base64(data: &str) -> Result<Vec<u8>> {
    let bytes: ByteString = serde_json::from_value(serde_json::Value::String(data.to_string()))?;
    Ok(bytes.0)
}

/// The TLS server configuration from the node's kubeconfig: its client certificate and key
/// (issued for the node, valid for serving on 127.0.0.1) and the cluster CA for client certificates.
pub fn tls_config(kubeconfig: &Path) -> Result<ServerConfig> {
    let kc =
        Kubeconfig::read_from(kubeconfig).map_err(|source| Error::Kubeconfig { path: kubeconfig.into(), source })?;
    let missing = |what: &str| Error::KubeconfigContent { path: kubeconfig.into(), what: format!("no {what}") };
    let user = kc.auth_infos.first().and_then(|a| a.auth_info.as_ref()).ok_or_else(|| missing("user"))?;
    // Serializing exposes the key (kube keeps it in a secret string).
    let user = serde_json::to_value(user)?;
    let base = kubeconfig.parent().unwrap_or(Path::new("."));
    let load = |data_key: &str, file_key: &str| -> Result<Vec<u8>> {
        if let Some(data) = user.get(data_key).and_then(|v| v.as_str()) {
            return base64(data);
        }
        let file = user.get(file_key).and_then(|v| v.as_str()).ok_or_else(|| missing(data_key))?;
        let path = base.join(file);
        std::fs::read(&path).map_err(|e| Error::io("reading", path, e))
    };
    let cert_pem = load("client-certificate-data", "client-certificate")?;
    let key_pem = load("client-key-data", "client-key")?;
    let cluster = kc.clusters.first().and_then(|c| c.cluster.as_ref()).ok_or_else(|| missing("cluster"))?;
    let ca_pem = match (&cluster.certificate_authority_data, &cluster.certificate_authority) {
        (Some(data), _) => base64(data)?,
        (None, Some(file)) => {
            let path = base.join(file);
            std::fs::read(&path).map_err(|e| Error::io("reading", path, e))?
        }
        (None, None) => return Err(missing("certificate-authority")),
    };

    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| tls_err("node certificate", e))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| tls_err("node key", e))?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&ca_pem) {
        roots.add(ca.map_err(|e| tls_err("cluster CA", e))?).map_err(|e| tls_err("cluster CA", e))?;
    }
    let provider = Arc::new(crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| tls_err("client verifier", e))?;
    ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("TLS versions", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| tls_err("node certificate", e))
}

/// A parsed logs request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRequest {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub follow: bool,
    pub tail_lines: Option<usize>,
    pub limit_bytes: Option<u64>,
}

/// Parses a request head: `Some` for `GET /containerLogs/...`, `None` for anything else.
pub fn parse_request(head: &str) -> Option<LogRequest> {
    let line = head.lines().next()?;
    let mut parts = line.split_whitespace();
    if parts.next()? != "GET" {
        return None;
    }
    let target = parts.next()?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let [kind, namespace, pod, container] = segments.as_slice() else { return None };
    if *kind != "containerLogs" || [namespace, pod, container].iter().any(|s| s.is_empty() || s.contains("..")) {
        return None;
    }
    let mut req = LogRequest {
        namespace: namespace.to_string(),
        pod: pod.to_string(),
        container: container.to_string(),
        follow: false,
        tail_lines: None,
        limit_bytes: None,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "follow" => req.follow = v == "true" || v == "1",
            "tailLines" => req.tail_lines = v.parse().ok(),
            "limitBytes" => req.limit_bytes = v.parse().ok(),
            _ => {}
        }
    }
    Some(req)
}

/// Where the last `lines` lines of `content` start.
pub fn tail_start(content: &[u8], lines: usize) -> usize {
    if lines == 0 {
        return content.len();
    }
    let body = content.strip_suffix(b"\n").unwrap_or(content);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == lines {
                return i + 1;
            }
        }
    }
    0
}

/// Accepts connections until the node shuts down.
pub async fn serve(listener: TcpListener, tls: Arc<ServerConfig>, ctx: Arc<NodeCtx>) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = ctx.shutdown.cancelled() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "kubelet API: accepting");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            match acceptor.accept(tcp).await {
                Ok(stream) => {
                    if let Err(e) = handle(stream, &ctx).await {
                        debug!(%peer, error = %e, "kubelet API connection");
                    }
                }
                Err(e) => debug!(%peer, error = %e, "kubelet API: TLS handshake"),
            }
        });
    }
}

async fn respond<S: AsyncWrite + Unpin>(stream: &mut S, status: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

async fn handle<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, ctx: &NodeCtx) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > MAX_HEAD {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let Some(req) = parse_request(&String::from_utf8_lossy(&head)) else {
        return respond(&mut stream, "404 Not Found", "process-node serves only /containerLogs\n").await;
    };
    let path = ctx.log_file(&req.namespace, &req.pod, &req.container);
    let Ok(mut file) = tokio::fs::File::open(&path).await else {
        let body =
            format!("container {} of pod {}/{} has no log on this node\n", req.container, req.namespace, req.pod);
        return respond(&mut stream, "404 Not Found", &body).await;
    };
    let mut start = 0u64;
    if let Some(lines) = req.tail_lines {
        let mut content = Vec::new();
        file.read_to_end(&mut content).await?;
        start = tail_start(&content, lines) as u64;
    }
    file.seek(std::io::SeekFrom::Start(start)).await?;
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n";
    stream.write_all(head.as_bytes()).await?;
    let label = format!("{}/{}/{}", req.namespace, req.pod, req.container);
    let mut left = req.limit_bytes.unwrap_or(u64::MAX);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let want = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
        let n = file.read(&mut chunk[..want]).await?;
        if n > 0 {
            stream.write_all(&chunk[..n]).await?;
            left -= n as u64;
            if left == 0 {
                break;
            }
            continue;
        }
        stream.flush().await?;
        if !req.follow || !ctx.is_running(&label) || ctx.shutdown.is_cancelled() {
            break;
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        let r =
            parse_request("GET /containerLogs/ns/p/c?follow=true&tailLines=10 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(
            r,
            LogRequest {
                namespace: "ns".into(),
                pod: "p".into(),
                container: "c".into(),
                follow: true,
                tail_lines: Some(10),
                limit_bytes: None,
            }
        );
        assert_eq!(parse_request("GET /containerLogs/ns/p/c HTTP/1.1\r\n\r\n").map(|r| r.follow), Some(false));
        assert!(parse_request("GET /exec/ns/p/c HTTP/1.1\r\n\r\n").is_none());
        assert!(parse_request("POST /containerLogs/ns/p/c HTTP/1.1\r\n\r\n").is_none());
        assert!(parse_request("GET /containerLogs/ns/../c HTTP/1.1\r\n\r\n").is_none());
        assert!(parse_request("GET /containerLogs/ns/p HTTP/1.1\r\n\r\n").is_none());
    }

    #[test]
    fn tails() {
        let c = b"a\nb\nc\n";
        assert_eq!(&c[tail_start(c, 2)..], b"b\nc\n");
        assert_eq!(&c[tail_start(c, 5)..], b"a\nb\nc\n");
        assert_eq!(&c[tail_start(c, 0)..], b"");
        let no_newline = b"a\nb";
        assert_eq!(&no_newline[tail_start(no_newline, 1)..], b"b");
    }
}
