//! The Node object: registration, status (Ready, capacity, addresses, nodeInfo) and the Lease in
//! `kube-node-lease` renewed every 10 s, which the node lifecycle controller reads as the heartbeat.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::status::time;

/// Lease renewal period (the kubelet's default).
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// Lease duration the node lifecycle controller is told.
pub const LEASE_SECONDS: i32 = 40;
/// How often the node status is written even if nothing changed.
pub const STATUS_REFRESH: Duration = Duration::from_secs(60);

/// Allocatable resources (the same as capacity).
pub const CPU: &str = "8";
pub const MEMORY: &str = "16Gi";
pub const PODS: &str = "1000";

/// Facts about the host for `status.nodeInfo`.
#[derive(Debug, Clone, Default)]
pub struct HostInfo {
    pub machine_id: String,
    pub boot_id: String,
    pub kernel: String,
    pub os_image: String,
    pub arch: &'static str,
}

impl HostInfo {
    pub fn read() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_default();
        let os_image = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
            })
            .unwrap_or_else(|| "Linux".into());
        Self {
            machine_id: read("/etc/machine-id"),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            kernel: read("/proc/sys/kernel/osrelease"),
            os_image,
            arch: match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                other => other,
            },
        }
    }
}

/// What the node reports about itself.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    /// The API server's version, reported as the kubelet's.
    pub version: String,
    pub host: HostInfo,
    /// Port of the kubelet API (0: none).
    pub kubelet_port: u16,
    /// When the node became ready.
    pub since: Timestamp,
}

/// The Node object registered at start.
pub fn node_object(name: &str, host: &HostInfo) -> Result<Node> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": host.arch,
                "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": host.arch,
            },
        },
    }))?)
}

/// The `nodes/status` body: Ready with a fresh heartbeat, resources, addresses, nodeInfo.
pub fn status_patch(id: &Identity, now: Timestamp) -> Value {
    let (version, host, since) = (&id.version, &id.host, id.since);
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": type_, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": time(now), "lastTransitionTime": time(since),
        })
    };
    let resources = json!({"cpu": CPU, "memory": MEMORY, "pods": PODS, "ephemeral-storage": "100Gi"});
    json!({
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            // The API server reaches the kubelet API (`kubectl logs`) at the first of these in its
            // preference order, Hostname first: a name that resolves to the node's address.
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": "localhost"},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": id.kubelet_port}},
            "nodeInfo": {
                "machineID": host.machine_id,
                "systemUUID": host.machine_id,
                "bootID": host.boot_id,
                "kernelVersion": host.kernel,
                "osImage": host.os_image,
                "containerRuntimeVersion": concat!("process-node://", env!("CARGO_PKG_VERSION")),
                "kubeletVersion": version,
                "operatingSystem": "linux",
                "architecture": host.arch,
            },
        }
    })
}

/// The node's Lease, renewed now.
fn lease_object(name: &str, node_uid: Option<&str>, now: Timestamp) -> Result<Lease> {
    let mut lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS},
    });
    if let Some(uid) = node_uid {
        lease["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "Node", "name": name, "uid": uid}]);
    }
    let mut lease: Lease = serde_json::from_value(lease)?;
    if let Some(spec) = lease.spec.as_mut() {
        spec.renew_time = Some(MicroTime(now));
    }
    Ok(lease)
}

/// Registers (creates or updates) the node and writes its status. Returns the node's uid.
pub async fn register(client: &Client, id: &Identity) -> Result<Option<String>> {
    let name = id.name.as_str();
    let nodes: Api<Node> = Api::all(client.clone());
    let wanted = node_object(name, &id.host)?;
    let node = match nodes.create(&PostParams::default(), &wanted).await {
        Ok(node) => {
            info!(node = name, "registered node");
            node
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let labels = json!({"metadata": {"labels": wanted.metadata.labels}});
            let node = nodes.patch(name, &PatchParams::default(), &Patch::Strategic(labels)).await?;
            info!(node = name, "node already registered; updated");
            node
        }
        Err(e) => return Err(e.into()),
    };
    let patch = status_patch(id, Timestamp::now());
    nodes.patch_status(name, &PatchParams::default(), &Patch::Strategic(patch)).await?;
    Ok(node.metadata.uid)
}

/// Renews the lease every [`LEASE_RENEW`] and refreshes the node status every
/// [`STATUS_REFRESH`] until cancelled.
pub async fn heartbeat(client: Client, id: Identity, node_uid: Option<String>, cancel: CancellationToken) {
    let name = id.name.clone();
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(client);
    let mut current: Option<Lease> = None;
    let mut last_status = tokio::time::Instant::now();
    loop {
        if let Err(e) = renew(&leases, &name, node_uid.as_deref(), &mut current).await {
            warn!(error = %e, "renewing the node lease");
            current = None;
        }
        if last_status.elapsed() >= STATUS_REFRESH {
            let patch = status_patch(&id, Timestamp::now());
            match nodes.patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch)).await {
                Ok(_) => last_status = tokio::time::Instant::now(),
                Err(e) => warn!(error = %e, "updating node status"),
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(LEASE_RENEW) => {}
        }
    }
}

async fn renew(leases: &Api<Lease>, name: &str, node_uid: Option<&str>, current: &mut Option<Lease>) -> Result<()> {
    let now = Timestamp::now();
    let existing = match current.take() {
        Some(l) => Some(l),
        None => leases.get_opt(name).await?,
    };
    let mut lease = lease_object(name, node_uid, now)?;
    let renewed = match existing {
        Some(old) => {
            lease.metadata.resource_version = old.metadata.resource_version;
            match leases.replace(name, &PostParams::default(), &lease).await {
                Ok(l) => l,
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => return Ok(()),
                Err(e) => return Err(Error::from(e)),
            }
        }
        None => leases.create(&PostParams::default(), &lease).await?,
    };
    *current = Some(renewed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_has_ready_and_resources() {
        let t = Timestamp::from_second(1_700_000_000).unwrap();
        let id = Identity {
            name: "local-node".into(),
            version: "v1.36.3".into(),
            host: HostInfo { arch: "amd64", ..Default::default() },
            kubelet_port: 10250,
            since: t,
        };
        let p = status_patch(&id, t);
        let conditions = p["status"]["conditions"].as_array().unwrap();
        let ready = conditions.iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!(ready["status"], "True");
        assert_eq!(p["status"]["allocatable"]["pods"], "1000");
        assert_eq!(p["status"]["capacity"]["memory"], "16Gi");
        assert_eq!(p["status"]["nodeInfo"]["kubeletVersion"], "v1.36.3");
        assert_eq!(p["status"]["addresses"][0]["address"], "127.0.0.1");
        assert_eq!(p["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250);
        let status: k8s_openapi::api::core::v1::NodeStatus = serde_json::from_value(p["status"].clone()).unwrap();
        assert_eq!(status.conditions.unwrap().len(), 4);
    }

    #[test]
    fn lease_is_owned_by_node() {
        let t = Timestamp::from_second(1_700_000_000).unwrap();
        let l = lease_object("n", Some("uid-1"), t).unwrap();
        assert_eq!(l.metadata.namespace.as_deref(), Some("kube-node-lease"));
        assert_eq!(l.metadata.owner_references.unwrap()[0].uid, "uid-1");
        let spec = l.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("n"));
        assert_eq!(spec.lease_duration_seconds, Some(40));
    }
}
