//! The real node (`deploy/local/cluster.sh up` starts it where the machine can: a kubelet with
//! containerd and runc) and the OCI images that `make images` builds (`deploy/local/images.sh`):
//! finding them, reading an image from its OCI layout, and checking where a pod ran.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use serde_json::Value;

use crate::{client, repo_root, wait_for};

/// The real node's name (deploy/local/realnode/realnode.sh).
pub const REAL_NODE: &str = "real-node";
/// The taint the process node carries while a real node runs.
pub const PROCESS_NODE_TAINT: &str = "heartbeat.dev/process-node";

/// Whether the running cluster has a Ready real node. `None` (after printing why) when it has not:
/// the tests that need one then skip.
pub async fn real_node_or_skip(test: &str) -> anyhow::Result<Option<kube::Client>> {
    let client = client().await?;
    let node = Api::<Node>::all(client.clone()).get_opt(REAL_NODE).await?;
    let ready = node
        .as_ref()
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    if !ready {
        eprintln!(
            "SKIPPED {test}: the local cluster has no Ready Node {REAL_NODE} (start it with \
             deploy/local/cluster.sh up, which says why when it cannot)"
        );
        return Ok(None);
    }
    Ok(Some(client))
}

/// The chart's appVersion (the images' tag).
pub fn chart_app_version() -> anyhow::Result<String> {
    let chart = std::fs::read_to_string(repo_root().join("charts/activity-operator/Chart.yaml"))?;
    chart
        .lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .map(|v| v.trim().trim_matches('"').to_string())
        .context("no appVersion in Chart.yaml")
}

/// Where `deploy/local/images.sh` writes: `$CARGO_TARGET_DIR/images` (else `<repo>/target/images`).
pub fn images_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
    let target = if target.is_absolute() { target } else { repo_root().join(target) };
    target.join("images")
}

/// One image read from an OCI layout directory (`images_dir()/oci/<name>`).
pub struct OciImage {
    pub dir: PathBuf,
    /// The tag (`org.opencontainers.image.ref.name` of the index's manifest).
    pub tag: String,
    /// The image configuration (`config` holds User, Entrypoint, Labels…).
    pub config: Value,
    /// Layer blobs, bottom first.
    pub layers: Vec<PathBuf>,
}

fn blob(dir: &Path, digest: &str) -> anyhow::Result<PathBuf> {
    let (alg, hex) = digest.split_once(':').with_context(|| format!("bad digest {digest}"))?;
    Ok(dir.join("blobs").join(alg).join(hex))
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

impl OciImage {
    /// Reads the layout's only manifest. `Ok(None)` when the layout does not exist.
    pub fn read(name: &str) -> anyhow::Result<Option<Self>> {
        let dir = images_dir().join("oci").join(name);
        if !dir.join("index.json").exists() {
            return Ok(None);
        }
        let index = read_json(&dir.join("index.json"))?;
        let manifests = index["manifests"].as_array().context("index.json has no manifests")?;
        if manifests.len() != 1 {
            bail!("{}: expected one manifest, found {}", dir.display(), manifests.len());
        }
        let desc = &manifests[0];
        let tag = desc["annotations"]["org.opencontainers.image.ref.name"].as_str().unwrap_or("").to_string();
        let manifest = read_json(&blob(&dir, desc["digest"].as_str().context("manifest digest")?)?)?;
        let config = read_json(&blob(&dir, manifest["config"]["digest"].as_str().context("config digest")?)?)?;
        let layers = manifest["layers"]
            .as_array()
            .context("manifest has no layers")?
            .iter()
            .map(|l| blob(&dir, l["digest"].as_str().unwrap_or("")))
            .collect::<anyhow::Result<_>>()?;
        Ok(Some(Self { dir, tag, config, layers }))
    }

    /// Every entry of every layer as `tar -tv` prints it (mode, owner, size, date, path[ -> target]).
    pub fn entries(&self) -> anyhow::Result<Vec<String>> {
        let mut all = Vec::new();
        for layer in &self.layers {
            let out = Command::new("tar").arg("-tvf").arg(layer).output()?;
            if !out.status.success() {
                bail!("tar -tvf {}: {}", layer.display(), String::from_utf8_lossy(&out.stderr));
            }
            all.extend(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string));
        }
        Ok(all)
    }

    /// The paths in the image (leading `./` and `/` removed, directories without their slash).
    pub fn paths(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .entries()?
            .iter()
            .filter_map(|e| e.split_whitespace().nth(5))
            .map(|p| p.trim_start_matches("./").trim_start_matches('/').trim_end_matches('/').to_string())
            .filter(|p| !p.is_empty() && p != ".")
            .collect())
    }

    /// The bytes of one file (from the topmost layer that has it).
    pub fn file(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        for layer in self.layers.iter().rev() {
            for candidate in [path.to_string(), format!("./{path}"), format!("/{path}")] {
                let out = Command::new("tar").arg("-xOf").arg(layer).arg(&candidate).output()?;
                if out.status.success() {
                    return Ok(out.stdout);
                }
            }
        }
        bail!("{path} is not in {}", self.dir.display())
    }
}

/// Whether an ELF executable runs without a program interpreter (no `PT_INTERP`): the kernel
/// loads it directly, so it needs no libc or loader in the image.
pub fn elf_is_static(bytes: &[u8]) -> anyhow::Result<bool> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        bail!("not a little-endian 64-bit ELF file");
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into()?) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let p_type = u32::from_le_bytes(bytes.get(at..at + 4).context("truncated program header")?.try_into()?);
        if p_type == 3 {
            return Ok(false); // PT_INTERP
        }
    }
    Ok(true)
}

/// Waits until the pod's first container has a container ID, and checks the pod ran on the real
/// node in containerd: `nodeName` and a `containerd://` container ID. Returns the pod.
pub async fn assert_on_real_node(pods: &Api<Pod>, name: &str) -> anyhow::Result<Pod> {
    let pod = wait_for(Duration::from_secs(120), &format!("pod {name} with a container ID"), || async {
        let pod = pods.get_opt(name).await?;
        Ok(pod.filter(|p| container_id(p).is_some()))
    })
    .await?;
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
    let id = container_id(&pod).unwrap_or_default();
    if node != REAL_NODE || !id.starts_with("containerd://") {
        bail!("pod {name} ran on node {node:?} with container ID {id:?}, not on {REAL_NODE} in containerd");
    }
    Ok(pod)
}

fn container_id(pod: &Pod) -> Option<String> {
    pod.status.as_ref()?.container_statuses.as_ref()?.first()?.container_id.clone().filter(|id| !id.is_empty())
}
