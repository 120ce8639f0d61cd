//! The simulated workers of the `load` scenario. For every live activity the bench holds what the
//! kubelet gives that activity's worker container: a service-account token bound to the attempt's
//! pod. With it a worker either heartbeats (the SDK's JSON patch of the Activity's status, checked
//! by the chart's worker status policy, installed here for the bench namespace) or renews a
//! coordination.k8s.io Lease of the same name (a merge patch of `spec.renewTime`, what a kubelet
//! sends for its node). Both kinds go through one client without credentials of its own, each
//! request carrying its worker's token, with the same cap on requests in flight: the same
//! credentials, connections and rate, so their costs can be compared.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use activity_crds::Activity;
use activity_worker::wire::{self, ApiFailure};
use anyhow::Context;
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::Request;
use kube::{Client, Config, Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::Cluster;
use crate::scenarios::PARALLEL;

/// Requests the workers keep in flight together, at most: the connections of the driver's pool.
/// The API server's default limit on mutating requests in flight is 200.
pub const IN_FLIGHT: usize = 500;
/// Lifetime of the workers' tokens: longer than any bench run.
const TOKEN_SECONDS: i64 = 6 * 3600;
/// The Role that lets the workers' service account renew Leases in the bench namespace.
const LEASE_ROLE: &str = "bench-worker-leases";

/// What a simulated worker writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A heartbeat PATCH of the Activity's status.
    Heartbeat,
    /// A renewal of the Lease of the same name.
    Lease,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Heartbeat => "heartbeat",
            Kind::Lease => "Lease",
        }
    }
}

/// What one driver run saw.
#[derive(Default)]
pub struct Driven {
    /// Round trip of each request that succeeded, seconds.
    pub latency: Vec<f64>,
    /// How late each request was sent after it was due (waiting for its worker's previous
    /// request or for a slot in flight), seconds.
    pub lag: Vec<f64>,
    pub errors: HashMap<String, u64>,
    /// Heartbeat replies that told the worker to stop (must stay 0: nothing cancels here).
    pub canceled: u64,
}

impl Driven {
    fn merge(&mut self, other: Driven) {
        self.latency.extend(other.latency);
        self.lag.extend(other.lag);
        self.canceled += other.canceled;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn error(&mut self, class: String) {
        *self.errors.entry(class).or_default() += 1;
    }
}

/// The workers of the live activities `names[..len()]` of one namespace.
pub struct Workers {
    /// No credentials of its own: each request carries its worker's token.
    client: Client,
    ns: String,
    activities: String,
    leases: String,
    names: Vec<String>,
    /// `Bearer <token>` of each worker.
    tokens: Vec<String>,
    bound: HashSet<String>,
    in_flight: Arc<Semaphore>,
}

impl Workers {
    /// No workers yet; creates the Role for Leases in `ns`.
    pub async fn new(cluster: &Cluster, ns: &str) -> anyhow::Result<Self> {
        let kubeconfig = Kubeconfig::read_from(&cluster.kubeconfig)?;
        let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        config.auth_info = Default::default();
        config.read_timeout = Some(Duration::from_secs(300));
        // As the worker: it retries by itself (kube's retry layer would hide 429s).
        config.default_retry = false;
        let roles: Api<Role> = Api::namespaced(cluster.client.clone(), ns);
        let role = json!({"metadata": {"name": LEASE_ROLE}, "rules": [
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "patch", "update"]}]});
        roles
            .create(&PostParams::default(), &serde_json::from_value(role)?)
            .await
            .context("creating the Lease Role")?;
        Ok(Self {
            client: Client::try_from(config)?,
            ns: ns.to_string(),
            activities: Activity::url_path(&(), Some(ns)),
            leases: Lease::url_path(&(), Some(ns)),
            names: Vec::new(),
            tokens: Vec::new(),
            bound: HashSet::new(),
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
        })
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Workers for `names` (activities whose attempt 1 has its pod): a token bound to each one's
    /// pod, and a Lease of the same name. Pods still Pending get tokens too: a token can be bound
    /// to any existing pod, and the worker policy checks only that it is the Activity's pod.
    pub async fn add(&mut self, admin: &Client, names: &[String]) -> anyhow::Result<()> {
        let pods: Api<Pod> = Api::namespaced(admin.clone(), &self.ns);
        let pods: HashMap<String, (String, String)> = pods
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|p| {
                let uid = p.metadata.uid.clone()?;
                let sa = p.spec.as_ref()?.service_account_name.clone()?;
                Some((p.name_any(), (uid, sa)))
            })
            .collect();
        let mut bound = Vec::new();
        for name in names {
            let (uid, sa) = pods.get(&pod_of(name)).with_context(|| format!("no pod {} yet", pod_of(name)))?;
            bound.push((pod_of(name), uid.clone(), sa.clone()));
        }
        let accounts: HashSet<String> =
            bound.iter().map(|(_, _, sa)| sa).filter(|sa| !self.bound.contains(*sa)).cloned().collect();
        for sa in accounts {
            let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), &self.ns);
            let binding = json!({"metadata": {"name": format!("{LEASE_ROLE}-{sa}")},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": LEASE_ROLE},
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": self.ns}]});
            bindings.create(&PostParams::default(), &serde_json::from_value(binding)?).await?;
            self.bound.insert(sa);
        }
        let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), &self.ns);
        let tokens: Vec<String> = stream::iter(bound)
            .map(|(pod, uid, sa)| {
                let accounts = &accounts;
                async move {
                    let request = TokenRequest {
                        spec: Some(TokenRequestSpec {
                            audiences: None,
                            bound_object_ref: Some(BoundObjectReference {
                                api_version: Some("v1".into()),
                                kind: Some("Pod".into()),
                                name: Some(pod.clone()),
                                uid: Some(uid),
                            }),
                            expiration_seconds: Some(TOKEN_SECONDS),
                        }),
                        ..Default::default()
                    };
                    let issued = accounts
                        .create_token_request(&sa, &PostParams::default(), &request)
                        .await
                        .with_context(|| format!("a token bound to pod {pod}"))?;
                    let token = issued.status.and_then(|s| s.token).context("TokenRequest without a token")?;
                    Ok::<_, anyhow::Error>(format!("Bearer {token}"))
                }
            })
            .buffered(PARALLEL)
            .try_collect()
            .await?;
        let leases: Api<Lease> = Api::namespaced(admin.clone(), &self.ns);
        let objs = names
            .iter()
            .map(|name| {
                Ok(serde_json::from_value(json!({"metadata": {"name": name},
                    "spec": {"holderIdentity": pod_of(name), "leaseDurationSeconds": 40,
                             "renewTime": wire::format_time(Timestamp::now())}}))?)
            })
            .collect::<anyhow::Result<Vec<Lease>>>()?;
        crate::scenarios::create_all(&leases, objs).await?;
        self.names.extend(names.iter().cloned());
        self.tokens.extend(tokens);
        Ok(())
    }

    /// Checks that the worker policy is in force for these credentials: worker 1's token may not
    /// heartbeat worker 0's Activity (its pod is not that Activity's `status.podName`).
    pub async fn probe_policy(&self) -> anyhow::Result<()> {
        let (Some(name), Some(token)) = (self.names.first(), self.tokens.get(1)) else {
            anyhow::bail!("the policy probe needs two workers");
        };
        let mut out = Driven::default();
        self.request(Kind::Heartbeat, name, token, 0, &mut out).await;
        let refused = out.errors.keys().any(|e| e.starts_with("403") && e.contains("worker-status"));
        anyhow::ensure!(refused, "another pod's heartbeat was not refused by the worker policy: {:?}", out.errors);
        Ok(())
    }

    /// One request of worker `i` (its `seq`-th), recorded in `out`.
    async fn send(&self, kind: Kind, i: usize, seq: u64, out: &mut Driven) {
        match (self.names.get(i), self.tokens.get(i)) {
            (Some(name), Some(token)) => self.request(kind, name, token, seq, out).await,
            _ => out.error(format!("no worker {i}")),
        }
    }

    /// A request for `name` with the Authorization header `token`.
    async fn request(&self, kind: Kind, name: &str, token: &str, seq: u64, out: &mut Driven) {
        let pp = PatchParams { field_manager: Some(activity_crds::WORKER_MANAGER.into()), ..Default::default() };
        let request = match kind {
            Kind::Heartbeat => {
                let details = json!({"progress": {"done": seq, "total": 1_000_000}});
                match serde_json::from_value::<json_patch::Patch>(wire::heartbeat_patch(1, Timestamp::now(), &details))
                {
                    Ok(patch) => {
                        Request::new(&self.activities).patch_subresource("status", name, &pp, &Patch::<()>::Json(patch))
                    }
                    Err(e) => {
                        out.error(format!("building the patch: {e}"));
                        return;
                    }
                }
            }
            Kind::Lease => {
                let renew = json!({"spec": {"renewTime": wire::format_time(Timestamp::now())}});
                Request::new(&self.leases).patch(name, &pp, &Patch::Merge(renew))
            }
        };
        let mut request = match request {
            Ok(r) => r,
            Err(e) => {
                out.error(format!("building the request: {e}"));
                return;
            }
        };
        match token.parse() {
            Ok(value) => {
                request.headers_mut().insert("authorization", value);
            }
            Err(e) => {
                out.error(format!("the token is no header value: {e}"));
                return;
            }
        }
        let t = Instant::now();
        let result = match kind {
            Kind::Heartbeat => self.client.request::<Activity>(request).await.map(|a| {
                if activity_worker::context::cancel_in(&a, 1).is_some() {
                    out.canceled += 1;
                }
            }),
            Kind::Lease => self.client.request::<Value>(request).await.map(|_| ()),
        };
        match result {
            Ok(()) => out.latency.push(t.elapsed().as_secs_f64()),
            Err(e) => out.error(match wire::classify(&e) {
                ApiFailure::Superseded(_) => "superseded".to_string(),
                ApiFailure::Forbidden(m) => format!("403: {}", m.chars().take(240).collect::<String>()),
                ApiFailure::NotFound(_) => "404".to_string(),
                ApiFailure::Retryable { retry_after: Some(_), .. } => "429".to_string(),
                ApiFailure::Retryable { message, .. } => {
                    format!("retryable: {}", message.chars().take(80).collect::<String>())
                }
                ApiFailure::Fatal(m) => format!("fatal: {}", m.chars().take(80).collect::<String>()),
            }),
        }
    }

    /// Open loop: every worker sends `kind` every `interval` (phases spread evenly over the
    /// interval) for `window`, and the call returns once the last reply is in. A worker whose
    /// request is still in flight when its next one is due sends it on return (one in flight per
    /// worker, as with the SDK), so offered and done rates part when the API server falls behind.
    pub async fn steady(self: &Arc<Self>, kind: Kind, interval: Duration, window: Duration) -> Driven {
        let start = tokio::time::Instant::now();
        let end = start + window;
        let n = u32::try_from(self.len().max(1)).unwrap_or(u32::MAX);
        let tasks: Vec<_> = (0..self.len())
            .map(|i| {
                let workers = self.clone();
                let phase = interval.mul_f64(f64::from(u32::try_from(i).unwrap_or(u32::MAX)) / f64::from(n));
                tokio::spawn(async move {
                    let mut out = Driven::default();
                    let mut due = start + phase;
                    let mut seq = 0;
                    while due < end {
                        tokio::time::sleep_until(due).await;
                        let Ok(_permit) = workers.in_flight.acquire().await else { break };
                        out.lag.push(due.elapsed().as_secs_f64());
                        workers.send(kind, i, seq, &mut out).await;
                        seq += 1;
                        due = (due + interval).max(tokio::time::Instant::now());
                    }
                    out
                })
            })
            .collect();
        gather(tasks).await
    }

    /// Closed loop: the first `k` workers each send their next heartbeat as soon as the last one
    /// returns, for `window`; returns what they saw and the wall time until the last reply.
    pub async fn closed(self: &Arc<Self>, k: usize, window: Duration) -> (Driven, f64) {
        let started = Instant::now();
        let end = started + window;
        let tasks: Vec<_> = (0..k.min(self.len()))
            .map(|i| {
                let workers = self.clone();
                tokio::spawn(async move {
                    let mut out = Driven::default();
                    let mut seq = 0;
                    while Instant::now() < end {
                        workers.send(Kind::Heartbeat, i, seq, &mut out).await;
                        seq += 1;
                    }
                    out
                })
            })
            .collect();
        (gather(tasks).await, started.elapsed().as_secs_f64())
    }
}

/// The pod of attempt 1 of an activity (the operator's deterministic name for short names).
fn pod_of(activity: &str) -> String {
    format!("{activity}-1")
}

/// What every driver task saw, together.
async fn gather(tasks: Vec<tokio::task::JoinHandle<Driven>>) -> Driven {
    let mut all = Driven::default();
    for t in tasks {
        match t.await {
            Ok(d) => all.merge(d),
            Err(e) => all.error(format!("driver task failed: {e}")),
        }
    }
    all
}

/// The chart's admission policies (every ValidatingAdmissionPolicy and binding it renders), bound
/// to one namespace as a release serving only that namespace binds them; deleted on drop.
pub struct Policies {
    cluster: Cluster,
    /// `kind.group/name` of each object, as `kubectl apply -o name` printed it.
    pub names: Vec<String>,
}

impl Policies {
    pub fn install(cluster: &Cluster, ns: &str) -> anyhow::Result<Self> {
        let rendered = cluster.local.render_chart(ns, ns, &[])?;
        let docs: Vec<&str> = rendered
            .split("\n---")
            .filter(|d| d.lines().any(|l| l.starts_with("kind: ValidatingAdmissionPolicy")))
            .collect();
        anyhow::ensure!(!docs.is_empty(), "the chart rendered no ValidatingAdmissionPolicy");
        let file = activity_tests::TempFile::write("bench-policies", &docs.join("\n---\n"))?;
        let applied = cluster.local.kubectl(&["apply", "-o", "name", "-f", file.path()?])?;
        let names = applied.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
        Ok(Self { cluster: cluster.clone(), names })
    }
}

impl Drop for Policies {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = self.cluster.local.kubectl(&["delete", "--ignore-not-found", "--wait=false", name]);
        }
    }
}
