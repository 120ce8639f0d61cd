//! A container's environment as the kubelet builds it: `envFrom` first, then `env` in order, values
//! expanded with the variables defined before them, `valueFrom` resolved from the downward API,
//! ConfigMaps and Secrets. The ConfigMap/Secret contents are fetched by the caller
//! ([`referenced_sources`] says which); everything here is pure.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::expand::expand_with;
use crate::quantity;

/// ConfigMaps and Secrets of the pod's namespace, by name; `None` for one that does not exist.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    pub config_maps: HashMap<String, Option<BTreeMap<String, String>>>,
    pub secrets: HashMap<String, Option<BTreeMap<String, String>>>,
}

/// Facts about the pod that are not in its spec.
#[derive(Debug, Clone, Copy)]
pub struct PodFacts<'a> {
    pub pod: &'a Pod,
    pub pod_ip: &'a str,
    pub host_ip: &'a str,
    pub node_name: &'a str,
    /// Node allocatable CPU (cores) and memory (bytes): the default for unset limits.
    pub node_cpu: f64,
    pub node_memory: f64,
}

/// Why a container's environment cannot be built (the kubelet's `CreateContainerConfigError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("configmap \"{0}\" not found")]
    ConfigMapNotFound(String),
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKey { namespace: String, name: String, key: String },
    #[error("secret \"{0}\" not found")]
    SecretNotFound(String),
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKey { namespace: String, name: String, key: String },
    #[error("unsupported fieldPath: {0}")]
    FieldPath(String),
    #[error("unsupported resource: {0}")]
    Resource(String),
    #[error("invalid env var {0}: no value source")]
    NoSource(String),
}

/// Names of the ConfigMaps and Secrets the container's environment refers to.
pub fn referenced_sources(container: &Container) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut cms = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    for from in container.env_from.iter().flatten() {
        if let Some(r) = &from.config_map_ref {
            cms.insert(r.name.clone());
        }
        if let Some(r) = &from.secret_ref {
            secrets.insert(r.name.clone());
        }
    }
    for var in container.env.iter().flatten() {
        let Some(from) = &var.value_from else { continue };
        if let Some(r) = &from.config_map_key_ref {
            cms.insert(r.name.clone());
        }
        if let Some(r) = &from.secret_key_ref {
            secrets.insert(r.name.clone());
        }
    }
    (cms, secrets)
}

/// Sets `name=value`, replacing an earlier definition in place.
fn set(vars: &mut Vec<(String, String)>, name: &str, value: String) {
    match vars.iter_mut().find(|(n, _)| n == name) {
        Some(slot) => slot.1 = value,
        None => vars.push((name.to_string(), value)),
    }
}

/// The container's environment, in definition order, each name once.
pub fn resolve_env(
    facts: &PodFacts<'_>,
    container: &Container,
    sources: &Sources,
) -> Result<Vec<(String, String)>, EnvError> {
    let namespace = facts.pod.metadata.namespace.clone().unwrap_or_default();
    let mut vars: Vec<(String, String)> = Vec::new();
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or("");
        let data = if let Some(r) = &from.config_map_ref {
            match sources.config_maps.get(&r.name).and_then(Option::as_ref) {
                Some(data) => data,
                None if r.optional == Some(true) => continue,
                None => return Err(EnvError::ConfigMapNotFound(r.name.clone())),
            }
        } else if let Some(r) = &from.secret_ref {
            match sources.secrets.get(&r.name).and_then(Option::as_ref) {
                Some(data) => data,
                None if r.optional == Some(true) => continue,
                None => return Err(EnvError::SecretNotFound(r.name.clone())),
            }
        } else {
            continue;
        };
        for (key, value) in data {
            let name = format!("{prefix}{key}");
            // The kubelet skips keys that are not valid variable names (and records an event).
            if name.is_empty() || name.contains('=') {
                continue;
            }
            set(&mut vars, &name, value.clone());
        }
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) if !v.is_empty() => expand_with(v, &vars),
            (_, Some(from)) => {
                if let Some(f) = &from.field_ref {
                    field_value(facts, &f.field_path)?
                } else if let Some(r) = &from.resource_field_ref {
                    resource_value(facts, container, r)?
                } else if let Some(r) = &from.config_map_key_ref {
                    match sources.config_maps.get(&r.name).and_then(Option::as_ref) {
                        Some(data) => match data.get(&r.key) {
                            Some(v) => v.clone(),
                            None if r.optional == Some(true) => continue,
                            None => {
                                return Err(EnvError::ConfigMapKey {
                                    namespace,
                                    name: r.name.clone(),
                                    key: r.key.clone(),
                                });
                            }
                        },
                        None if r.optional == Some(true) => continue,
                        None => return Err(EnvError::ConfigMapNotFound(r.name.clone())),
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    match sources.secrets.get(&r.name).and_then(Option::as_ref) {
                        Some(data) => match data.get(&r.key) {
                            Some(v) => v.clone(),
                            None if r.optional == Some(true) => continue,
                            None => {
                                return Err(EnvError::SecretKey {
                                    namespace,
                                    name: r.name.clone(),
                                    key: r.key.clone(),
                                });
                            }
                        },
                        None if r.optional == Some(true) => continue,
                        None => return Err(EnvError::SecretNotFound(r.name.clone())),
                    }
                } else {
                    return Err(EnvError::NoSource(var.name.clone()));
                }
            }
            _ => String::new(),
        };
        set(&mut vars, &var.name, value);
    }
    Ok(vars)
}

/// `metadata.labels['key']` → `Some(("labels", "key"))`.
fn subscript(path: &str) -> Option<(&str, &str)> {
    let (field, rest) = path.strip_prefix("metadata.")?.split_once('[')?;
    let key = rest.strip_suffix(']')?;
    let key = key
        .strip_prefix('\'')
        .and_then(|k| k.strip_suffix('\''))
        .or_else(|| key.strip_prefix('"').and_then(|k| k.strip_suffix('"')))?;
    Some((field, key))
}

/// The downward API value of `path` (`valueFrom.fieldRef.fieldPath`).
pub fn field_value(facts: &PodFacts<'_>, path: &str) -> Result<String, EnvError> {
    let pod = facts.pod;
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_else(|| facts.node_name.to_string()),
        "spec.serviceAccountName" => {
            spec.and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".to_string())
        }
        "status.podIP" | "status.podIPs" => facts.pod_ip.to_string(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.to_string(),
        _ => match subscript(path) {
            Some(("labels", key)) => meta.labels.as_ref().and_then(|l| l.get(key)).cloned().unwrap_or_default(),
            Some(("annotations", key)) => {
                meta.annotations.as_ref().and_then(|l| l.get(key)).cloned().unwrap_or_default()
            }
            _ => return Err(EnvError::FieldPath(path.to_string())),
        },
    };
    Ok(value)
}

/// `valueFrom.resourceFieldRef`: the container's limit or request, rounded up in units of the
/// divisor; unset limits default to the node's allocatable, as on a real kubelet.
fn resource_value(
    facts: &PodFacts<'_>,
    container: &Container,
    r: &k8s_openapi::api::core::v1::ResourceFieldSelector,
) -> Result<String, EnvError> {
    let unsupported = || EnvError::Resource(r.resource.clone());
    let (kind, name) = r.resource.split_once('.').ok_or_else(unsupported)?;
    let res = container.resources.as_ref();
    let limits = res.and_then(|r| r.limits.as_ref());
    let requests = res.and_then(|r| r.requests.as_ref());
    let set_value = match kind {
        "limits" => limits.and_then(|l| l.get(name)),
        "requests" => requests.and_then(|l| l.get(name)).or_else(|| limits.and_then(|l| l.get(name))),
        _ => return Err(unsupported()),
    };
    let value = match set_value {
        Some(q) => quantity::parse(&q.0).ok_or_else(unsupported)?,
        None => match (kind, name) {
            ("limits", "cpu") => facts.node_cpu,
            ("limits", "memory") => facts.node_memory,
            ("requests", _) => 0.0,
            ("limits", _) => 0.0,
            _ => return Err(unsupported()),
        },
    };
    let divisor = match &r.divisor {
        Some(d) => quantity::parse(&d.0).filter(|d| *d > 0.0).ok_or_else(unsupported)?,
        None => 1.0,
    };
    Ok(format!("{}", (value / divisor).ceil() as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"app": "x"}},
            "spec": {"nodeName": "local-node", "serviceAccountName": "sa", "containers": [{"name": "c"}]},
        }))
        .unwrap()
    }

    fn facts(pod: &Pod) -> PodFacts<'_> {
        PodFacts {
            pod,
            pod_ip: "127.0.10.1",
            host_ip: "127.0.0.1",
            node_name: "local-node",
            node_cpu: 8.0,
            node_memory: 16.0 * 1024.0 * 1024.0 * 1024.0,
        }
    }

    fn container(v: serde_json::Value) -> Container {
        serde_json::from_value(v).unwrap()
    }

    fn sources() -> Sources {
        let mut s = Sources::default();
        let cm: BTreeMap<String, String> =
            [("a", "1"), ("b", "2"), ("bad=key", "x")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        s.config_maps.insert("cm".into(), Some(cm));
        s.config_maps.insert("gone".into(), None);
        s.secrets.insert("sec".into(), Some([("pw".to_string(), "hunter2".to_string())].into()));
        s
    }

    #[test]
    fn order_expansion_and_sources() {
        let pod = pod();
        let c = container(serde_json::json!({
            "name": "c",
            "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
            "env": [
                {"name": "A", "value": "x-$(CM_a)"},
                {"name": "B", "value": "$(A)-$(LATER)-$$(A)"},
                {"name": "LATER", "value": "l"},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "pw"}}},
                {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "pw", "optional": true}}},
                {"name": "CM_a", "value": "override"},
                {"name": "EMPTY"},
            ]
        }));
        let env = resolve_env(&facts(&pod), &c, &sources()).unwrap();
        let get = |n: &str| env.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("CM_a"), Some("override"));
        assert_eq!(get("CM_b"), Some("2"));
        assert_eq!(get("CM_bad=key"), None);
        assert_eq!(get("A"), Some("x-1"));
        assert_eq!(get("B"), Some("x-1-$(LATER)-$(A)"));
        assert_eq!(get("POD"), Some("p"));
        assert_eq!(get("IP"), Some("127.0.10.1"));
        assert_eq!(get("APP"), Some("x"));
        assert_eq!(get("SA"), Some("sa"));
        assert_eq!(get("PW"), Some("hunter2"));
        assert_eq!(get("OPT"), None);
        assert_eq!(get("EMPTY"), Some(""));
        assert_eq!(env.iter().filter(|(k, _)| k == "CM_a").count(), 1);
    }

    #[test]
    fn missing_sources_are_errors_unless_optional() {
        let pod = pod();
        let c = container(serde_json::json!({"name": "c", "env": [
            {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "zz"}}}]}));
        let err = resolve_env(&facts(&pod), &c, &sources()).unwrap_err();
        assert_eq!(err.to_string(), "couldn't find key zz in ConfigMap ns/cm");
        let c = container(serde_json::json!({"name": "c", "envFrom": [{"configMapRef": {"name": "gone"}}]}));
        assert_eq!(resolve_env(&facts(&pod), &c, &sources()).unwrap_err().to_string(), "configmap \"gone\" not found");
        let c = container(
            serde_json::json!({"name": "c", "envFrom": [{"configMapRef": {"name": "gone", "optional": true}}]}),
        );
        assert!(resolve_env(&facts(&pod), &c, &sources()).unwrap().is_empty());
        let c = container(serde_json::json!({"name": "c", "env": [
            {"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.bogus"}}}]}));
        assert!(matches!(resolve_env(&facts(&pod), &c, &sources()), Err(EnvError::FieldPath(_))));
    }

    #[test]
    fn referenced() {
        let c = container(serde_json::json!({"name": "c",
            "envFrom": [{"secretRef": {"name": "s1"}}],
            "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}}]}));
        let (cms, secrets) = referenced_sources(&c);
        assert_eq!(cms.into_iter().collect::<Vec<_>>(), vec!["cm"]);
        assert_eq!(secrets.into_iter().collect::<Vec<_>>(), vec!["s1"]);
    }

    #[test]
    fn resources() {
        let pod = pod();
        let c = container(serde_json::json!({"name": "c",
        "resources": {"limits": {"cpu": "1500m", "memory": "64Mi"}},
        "env": [
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
            {"name": "REQ", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
        ]}));
        let env = resolve_env(&facts(&pod), &c, &sources()).unwrap();
        assert_eq!(env[0].1, "2");
        assert_eq!(env[1].1, "64");
        assert_eq!(env[2].1, "1500");
        let c = container(serde_json::json!({"name": "c",
            "env": [{"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}}]}));
        assert_eq!(resolve_env(&facts(&pod), &c, &sources()).unwrap()[0].1, "8");
    }
}
