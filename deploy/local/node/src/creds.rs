//! Pod credentials: a service account token from the TokenRequest API, bound to the pod, written
//! to a file that a per-pod kubeconfig names with `tokenFile` (clients re-read it, so refreshing
//! the file is enough).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use kube::config::Kubeconfig;
use serde_json::json;

use crate::error::{Error, Result};

/// Token lifetime asked for.
pub const TOKEN_SECONDS: i64 = 3600;

/// How to reach the API server, from the node's kubeconfig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterAccess {
    pub server: String,
    /// Base64 PEM of the CA.
    pub ca_data: Option<String>,
    /// Absolute path of the CA file.
    pub ca_file: Option<PathBuf>,
    pub insecure: bool,
    pub tls_server_name: Option<String>,
}

impl ClusterAccess {
    /// The current context's cluster of the kubeconfig at `path`.
    pub fn from_kubeconfig(path: &Path) -> Result<Self> {
        let kc = Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig { path: path.into(), source })?;
        let bad = |what: &str| Error::KubeconfigContent { path: path.into(), what: what.to_string() };
        let context_name = kc.current_context.clone().ok_or_else(|| bad("no current-context"))?;
        let context = kc
            .contexts
            .iter()
            .find(|c| c.name == context_name)
            .and_then(|c| c.context.as_ref())
            .ok_or_else(|| bad("current context not found"))?;
        let cluster = kc
            .clusters
            .iter()
            .find(|c| c.name == context.cluster)
            .and_then(|c| c.cluster.as_ref())
            .ok_or_else(|| bad("cluster of the current context not found"))?;
        let server = cluster.server.clone().ok_or_else(|| bad("cluster has no server"))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let ca_file = cluster.certificate_authority.as_ref().map(|f| {
            let p = PathBuf::from(f);
            let p = if p.is_absolute() { p } else { base.join(p) };
            std::path::absolute(&p).unwrap_or(p)
        });
        Ok(Self {
            server,
            ca_data: cluster.certificate_authority_data.clone(),
            ca_file,
            insecure: cluster.insecure_skip_tls_verify.unwrap_or(false),
            tls_server_name: cluster.tls_server_name.clone(),
        })
    }
}

/// A kubeconfig (as JSON, which is YAML) for a pod: the node's cluster, the pod's token file, the
/// pod's namespace as default.
pub fn render_kubeconfig(access: &ClusterAccess, token_file: &Path, namespace: &str) -> String {
    let mut cluster = json!({"server": access.server});
    if let Some(data) = &access.ca_data {
        cluster["certificate-authority-data"] = json!(data);
    } else if let Some(file) = &access.ca_file {
        cluster["certificate-authority"] = json!(file);
    }
    if access.insecure {
        cluster["insecure-skip-tls-verify"] = json!(true);
    }
    if let Some(name) = &access.tls_server_name {
        cluster["tls-server-name"] = json!(name);
    }
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": "pod", "user": {"tokenFile": token_file}}],
        "contexts": [{"name": "pod", "context": {"cluster": "local", "user": "pod", "namespace": namespace}}],
        "current-context": "pod",
    });
    let mut out = serde_json::to_string_pretty(&config).unwrap_or_default();
    out.push('\n');
    out
}

/// Whether the pod gets API credentials: it has the service account token volume the
/// ServiceAccount admission plugin adds (which honours the pod's and the service account's
/// `automountServiceAccountToken`), or asks for it explicitly.
pub fn wants_token(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else { return false };
    match spec.automount_service_account_token {
        Some(false) => false,
        Some(true) => true,
        None => spec.volumes.iter().flatten().any(|v| {
            v.projected
                .as_ref()
                .and_then(|p| p.sources.as_ref())
                .is_some_and(|s| s.iter().any(|s| s.service_account_token.is_some()))
        }),
    }
}

/// A token and when it expires.
#[derive(Debug, Clone)]
pub struct Token {
    pub token: String,
    pub expires: Timestamp,
}

impl Token {
    /// When to get a new one: at 80% of the remaining lifetime.
    pub fn refresh_after(&self, now: Timestamp) -> Duration {
        let left = self.expires.as_second() - now.as_second();
        Duration::from_secs(u64::try_from(left * 8 / 10).unwrap_or(0).max(1))
    }
}

/// Requests a token for the pod's service account, bound to the pod.
pub async fn request_token(client: kube::Client, pod: &Pod) -> Result<Token> {
    let namespace = pod.metadata.namespace.clone().ok_or(Error::IncompletePod("namespace"))?;
    let name = pod.metadata.name.clone().ok_or(Error::IncompletePod("name"))?;
    let uid = pod.metadata.uid.clone().ok_or(Error::IncompletePod("uid"))?;
    let sa = pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".to_string());
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: None,
            expiration_seconds: Some(TOKEN_SECONDS),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(name),
                uid: Some(uid),
            }),
        }),
        ..Default::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(client, &namespace);
    let response: TokenRequest = api.create_subresource("token", &sa, &PostParams::default(), &request).await?;
    let status = response.status.ok_or_else(|| Error::EmptyToken { namespace: namespace.clone(), name: sa.clone() })?;
    match (status.token, status.expiration_timestamp) {
        (Some(token), Some(expires)) if !token.is_empty() => Ok(Token { token, expires: expires.0 }),
        _ => Err(Error::EmptyToken { namespace, name: sa }),
    }
}

/// Writes `content` to `path` atomically (temporary file and rename), readable by the owner only.
pub fn write_private(path: &Path, content: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io("creating", &tmp, e))?;
    f.write_all(content).map_err(|e| Error::io("writing", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("renaming to", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_names_token_file_and_namespace() {
        let access = ClusterAccess {
            server: "https://127.0.0.1:6443".into(),
            ca_data: Some("Q0E=".into()),
            ca_file: None,
            insecure: false,
            tls_server_name: None,
        };
        let text = render_kubeconfig(&access, Path::new("/s/token"), "ns1");
        let kc: Kubeconfig = serde_json::from_str(&text).unwrap();
        assert_eq!(kc.current_context.as_deref(), Some("pod"));
        let user = kc.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(user.token_file.as_deref(), Some("/s/token"));
        let cluster = kc.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
        assert_eq!(cluster.certificate_authority_data.as_deref(), Some("Q0E="));
        assert_eq!(kc.contexts[0].context.as_ref().unwrap().namespace.as_deref(), Some("ns1"));
    }

    #[test]
    fn token_wanted() {
        let pod = |spec: serde_json::Value| -> Pod { serde_json::from_value(json!({"spec": spec})).unwrap() };
        let projected = json!({"containers": [], "volumes": [{"name": "kube-api-access-x",
            "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}]});
        assert!(wants_token(&pod(projected)));
        assert!(!wants_token(&pod(json!({"containers": []}))));
        assert!(wants_token(&pod(json!({"containers": [], "automountServiceAccountToken": true}))));
        let mut off = json!({"containers": [], "automountServiceAccountToken": false});
        off["volumes"] = json!([{"name": "v", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}]);
        assert!(!wants_token(&pod(off)));
    }

    #[test]
    fn refresh_at_eighty_percent() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        let t = Token { token: "x".into(), expires: Timestamp::from_second(1_003_600).unwrap() };
        assert_eq!(t.refresh_after(now), Duration::from_secs(2880));
        let old = Token { token: "x".into(), expires: now };
        assert_eq!(old.refresh_after(now), Duration::from_secs(1));
    }
}
