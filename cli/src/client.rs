//! Connecting as kubectl does (`--kubeconfig`, `--context`, `-n`), and turning API errors into
//! messages that say what to do.

use anyhow::{Context, anyhow};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::Global;

/// A client and the namespace the command works in.
pub struct Conn {
    pub client: Client,
    pub namespace: String,
    pub cluster_url: String,
}

pub async fn connect(g: &Global) -> anyhow::Result<Conn> {
    let options = KubeConfigOptions { context: g.context.clone(), cluster: None, user: None };
    let config = match (&g.kubeconfig, &g.context) {
        (Some(path), _) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read the kubeconfig {}: check --kubeconfig", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options).await.with_context(|| {
                format!("cannot use the kubeconfig {}: check --kubeconfig and --context", path.display())
            })?
        }
        (None, Some(_)) => Config::from_kubeconfig(&options)
            .await
            .context("cannot load the kubeconfig context: check --context (see `kubectl config get-contexts`)")?,
        (None, None) => Config::infer().await.context(
            "no cluster configured: set KUBECONFIG or pass --kubeconfig (or run inside a pod with a service account)",
        )?,
    };
    let namespace = g.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let cluster_url = config.cluster_url.to_string();
    let client = Client::try_from(config).context("cannot build a client from the kubeconfig")?;
    Ok(Conn { client, namespace, cluster_url })
}

/// The Activity resource, `heartbeat.dev/v1alpha1`, `activities`.
pub fn activity_resource() -> ApiResource {
    let gvk = GroupVersionKind::gvk(activity_crds::GROUP, "v1alpha1", "Activity");
    ApiResource::from_gvk_with_plural(&gvk, "activities")
}

impl Conn {
    /// Activities of the command's namespace.
    pub fn activities(&self) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.namespace, &activity_resource())
    }

    /// Activities of every namespace.
    pub fn all_activities(&self) -> Api<DynamicObject> {
        Api::all_with(self.client.clone(), &activity_resource())
    }

    /// A namespaced API of the command's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// An API error as a message that says what to do; `name` is the activity concerned, if any.
    pub fn explain(&self, err: kube::Error, name: Option<&str>) -> anyhow::Error {
        let ns = &self.namespace;
        match &err {
            kube::Error::Api(status) if status.code == 404 => match name {
                Some(name) if names_the_object(status, name) => {
                    anyhow!("activity \"{name}\" not found in namespace \"{ns}\" (see `kubectl activity list -n {ns}`)")
                }
                _ => anyhow!(
                    "the Activity API (heartbeat.dev/v1alpha1) is not installed in the cluster at {}: install the operator and its CRD (see docs/install.md): {}",
                    self.cluster_url,
                    status.message
                ),
            },
            kube::Error::Api(status) if status.code == 403 => anyhow!(
                "forbidden: {} (ask your cluster admin for access to activities.heartbeat.dev in namespace \"{ns}\")",
                status.message
            ),
            kube::Error::Api(status) if status.code == 409 && status.reason == "AlreadyExists" => match name {
                Some(name) => anyhow!(
                    "activity \"{name}\" already exists in namespace \"{ns}\": pick another name, or delete it first (`kubectl delete activity {name} -n {ns}`)"
                ),
                None => anyhow!("{}", status.message),
            },
            kube::Error::Api(status) => anyhow!("the API server refused: {} ({})", status.message, status.reason),
            kube::Error::HyperError(_) | kube::Error::Service(_) => anyhow!(
                "cannot reach the cluster at {}: {err} (is it running? check --kubeconfig and --context)",
                self.cluster_url
            ),
            _ => anyhow!(err),
        }
    }
}

/// Whether a 404 is about the object itself (`activities.heartbeat.dev "x" not found`) rather
/// than about the resource type missing from the cluster.
fn names_the_object(status: &kube::core::Status, name: &str) -> bool {
    status.details.as_ref().is_some_and(|d| d.kind == "activities" && d.name == name)
        || status.message.contains(&format!("\"{name}\" not found"))
}
