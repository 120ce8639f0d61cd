//! What every pod worker shares: the API client, the node's paths and the pod IP pool, plus the
//! few API calls the workers make (bounded by a semaphore, so 500 pods starting at once do not
//! flood the API server).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Pod, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client};
use serde_json::Value;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;

use crate::creds::ClusterAccess;
use crate::env::Sources;
use crate::error::Result;
use crate::ipam::IpPool;

/// How many API requests the pod workers make at once.
pub const API_CONCURRENCY: usize = 32;

/// Shared state of the node.
pub struct NodeCtx {
    /// For requests (bounded read timeout).
    pub client: Client,
    /// For the pod watch (no read timeout).
    pub watch_client: Client,
    pub node_name: String,
    pub state_dir: PathBuf,
    pub log_dir: PathBuf,
    pub bin_dir: PathBuf,
    pub pids_dir: PathBuf,
    /// The `PATH` containers get unless they set their own.
    pub host_path: String,
    pub access: ClusterAccess,
    pub ips: Mutex<IpPool>,
    pub api: Semaphore,
    /// Containers with a live process, as `namespace/pod/container` (for following logs).
    pub running: Mutex<HashSet<String>>,
    /// Events about pods (`kubectl describe pod`), as the kubelet reports them.
    pub recorder: Recorder,
    /// Cancelled when the node shuts down.
    pub shutdown: CancellationToken,
}

impl NodeCtx {
    /// Whether `namespace/pod/container` has a live process.
    pub fn is_running(&self, label: &str) -> bool {
        self.running.lock().is_ok_and(|r| r.contains(label))
    }

    /// Records that `namespace/pod/container` started (`true`) or ended.
    pub fn set_running(&self, label: &str, running: bool) {
        if let Ok(mut r) = self.running.lock() {
            if running {
                r.insert(label.to_string());
            } else {
                r.remove(label);
            }
        }
    }

    /// Per-pod directory (working directory, credentials).
    pub fn pod_dir(&self, namespace: &str, name: &str, uid: &str) -> PathBuf {
        self.state_dir.join("pods").join(format!("{namespace}_{name}_{uid}"))
    }

    /// A container's log file.
    pub fn log_file(&self, namespace: &str, pod: &str, container: &str) -> PathBuf {
        self.log_dir.join(format!("{namespace}_{pod}_{container}.log"))
    }

    /// Records an event about a pod (or one of its containers, by `field_path`), in the
    /// background; a failure to record it is only logged.
    pub fn event(self: &Arc<Self>, pod: &Pod, field_path: Option<String>, warning: bool, reason: &str, note: String) {
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            uid: pod.metadata.uid.clone(),
            field_path,
            ..ObjectReference::default()
        };
        let event = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.to_string(),
            note: Some(note.chars().take(1000).collect()),
            action: reason.to_string(),
            secondary: None,
        };
        let ctx = self.clone();
        tokio::spawn(async move {
            let _permit = ctx.permit().await;
            if let Err(e) = ctx.recorder.publish(&event, &reference).await {
                tracing::debug!(error = %e, "recording an event");
            }
        });
    }

    async fn permit(&self) -> Option<SemaphorePermit<'_>> {
        self.api.acquire().await.ok()
    }

    /// Patches `pods/status` (strategic merge).
    pub async fn patch_pod_status(&self, namespace: &str, name: &str, patch: &Value) -> Result<()> {
        let _permit = self.permit().await;
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        api.patch_status(name, &PatchParams::default(), &Patch::Strategic(patch)).await?;
        Ok(())
    }

    /// The kubelet's final delete of a terminated pod: grace period 0, only this pod (uid).
    /// A pod that is already gone (or replaced by another with the same name) is fine.
    pub async fn delete_pod(&self, namespace: &str, name: &str, uid: &str) -> Result<()> {
        let _permit = self.permit().await;
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: Some(uid.to_string()), resource_version: None }),
            ..DeleteParams::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Requests a service account token for the pod.
    pub async fn request_token(&self, pod: &Pod) -> Result<crate::creds::Token> {
        let _permit = self.permit().await;
        crate::creds::request_token(self.client.clone(), pod).await
    }

    /// Fetches the ConfigMaps and Secrets a container's environment refers to.
    pub async fn fetch_sources(
        &self,
        namespace: &str,
        config_maps: &BTreeSet<String>,
        secrets: &BTreeSet<String>,
    ) -> Result<Sources> {
        let mut sources = Sources::default();
        if config_maps.is_empty() && secrets.is_empty() {
            return Ok(sources);
        }
        let _permit = self.permit().await;
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        for name in config_maps {
            let data = cms.get_opt(name).await?.map(|cm| {
                let mut data: BTreeMap<String, String> = cm.data.unwrap_or_default();
                for (k, v) in cm.binary_data.unwrap_or_default() {
                    data.insert(k, String::from_utf8_lossy(&v.0).into_owned());
                }
                data
            });
            sources.config_maps.insert(name.clone(), data);
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        for name in secrets {
            let data = api.get_opt(name).await?.map(|s| {
                s.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect::<BTreeMap<_, _>>()
            });
            sources.secrets.insert(name.clone(), data);
        }
        Ok(sources)
    }
}
