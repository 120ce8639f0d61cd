//! Which host executable runs a container: the node's "image store".
//!
//! - an image whose repository's last path segment is one of [`WORKSPACE_BINARIES`] (any registry,
//!   tag or digest) runs `<bin-dir>/<that name>`, the workspace's own build; its entrypoint is the
//!   binary, so `args` follow it, and a `command` naming the binary also maps to it;
//! - [`HOST_IMAGES`] run host programs: `command[0]` (or, Docker-style with no `command`, `args[0]`,
//!   or the image's default shell) looked up on the `PATH`;
//! - anything else cannot be "pulled" (`ErrImagePull`).

use std::path::{Path, PathBuf};

/// Binaries of this workspace that images map to.
pub const WORKSPACE_BINARIES: &[&str] = &["activity-operator", "activity-worker"];

/// Images that run host programs, with their default command (`CMD`).
pub const HOST_IMAGES: &[(&str, &str)] = &[("busybox", "sh"), ("alpine", "sh"), ("debian", "bash"), ("ubuntu", "bash")];

/// The last path segment of the image's repository: `ghcr.io/x/activity-worker:1@sha256:…` →
/// `activity-worker`.
pub fn repository_name(image: &str) -> &str {
    let without_digest = image.split_once('@').map_or(image, |(repo, _)| repo);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split_once(':').map_or(last, |(name, _)| name)
}

/// What an image is to this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// One of [`WORKSPACE_BINARIES`].
    Workspace(&'static str),
    /// A host image, with its default command.
    Host(&'static str),
    /// Not available.
    Unknown,
}

/// Classifies an image by its repository name.
pub fn classify(image: &str) -> ImageKind {
    let name = repository_name(image);
    if let Some(bin) = WORKSPACE_BINARIES.iter().find(|b| **b == name) {
        return ImageKind::Workspace(bin);
    }
    if let Some((_, shell)) = HOST_IMAGES.iter().find(|(n, _)| *n == name) {
        return ImageKind::Host(shell);
    }
    ImageKind::Unknown
}

/// "Pulls" the image: its kind if this node can run it, `ErrImagePull`'s message otherwise.
pub fn check_image(
    image: &str,
    bin_dir: &Path,
    is_executable: &impl Fn(&Path) -> bool,
) -> Result<ImageKind, LaunchError> {
    let unavailable = |why: String| LaunchError::ImagePull(format!("Failed to pull image \"{image}\": {why}"));
    match classify(image) {
        ImageKind::Unknown => Err(unavailable(format!(
            "rpc error: code = NotFound desc = failed to resolve reference \"{image}\": not found (process-node \
             provides only the images {} from {} and the host images {})",
            WORKSPACE_BINARIES.join(", "),
            bin_dir.display(),
            HOST_IMAGES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
        ))),
        ImageKind::Workspace(bin) if !is_executable(&bin_dir.join(bin)) => Err(unavailable(format!(
            "rpc error: code = NotFound desc = {} does not exist (build the workspace first)",
            bin_dir.join(bin).display()
        ))),
        kind => Ok(kind),
    }
}

/// What to execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub exe: PathBuf,
    pub args: Vec<String>,
}

/// Why a container cannot be started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchError {
    /// The image is not available (`ErrImagePull`); the message.
    ImagePull(String),
    /// The command cannot be executed (`StartError`, exit code 128); the message.
    Start(String),
}

/// The executable and arguments for a container, from its (already expanded) `command` and `args`.
/// `search_path` is the `PATH` to look commands up in; `is_executable` checks a file.
pub fn plan_launch(
    image: &str,
    command: &[String],
    args: &[String],
    bin_dir: &Path,
    search_path: &str,
    is_executable: impl Fn(&Path) -> bool,
) -> Result<Launch, LaunchError> {
    match check_image(image, bin_dir, &is_executable)? {
        ImageKind::Unknown => Err(LaunchError::ImagePull(format!("Failed to pull image \"{image}\""))),
        ImageKind::Workspace(bin) => {
            let exe = bin_dir.join(bin);
            match command.split_first() {
                None => Ok(Launch { exe, args: args.to_vec() }),
                Some((first, rest)) => {
                    let base = first.rsplit('/').next().unwrap_or(first);
                    let exe = match WORKSPACE_BINARIES.iter().find(|b| **b == base) {
                        Some(b) if is_executable(&bin_dir.join(b)) => bin_dir.join(b),
                        _ => lookup(first, search_path, &is_executable)?,
                    };
                    Ok(Launch { exe, args: rest.iter().chain(args).cloned().collect() })
                }
            }
        }
        ImageKind::Host(shell) => {
            let argv: Vec<String> = match (command.is_empty(), args.is_empty()) {
                (false, _) => command.iter().chain(args).cloned().collect(),
                (true, false) => args.to_vec(),
                (true, true) => vec![shell.to_string()],
            };
            let (first, rest) = argv.split_first().ok_or_else(|| LaunchError::Start("no command".into()))?;
            let exe = lookup(first, search_path, &is_executable)?;
            Ok(Launch { exe, args: rest.to_vec() })
        }
    }
}

/// Finds `cmd` like `execvp` does, with the OCI runtime's error messages.
pub fn lookup(cmd: &str, search_path: &str, is_executable: &impl Fn(&Path) -> bool) -> Result<PathBuf, LaunchError> {
    if cmd.contains('/') {
        let p = PathBuf::from(cmd);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(LaunchError::Start(format!("exec: \"{cmd}\": stat {cmd}: no such file or directory")))
        };
    }
    search_path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(cmd))
        .find(|p| is_executable(p))
        .ok_or_else(|| LaunchError::Start(format!("exec: \"{cmd}\": executable file not found in $PATH")))
}

/// Whether `path` is a regular file with an execute bit.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn exists(p: &Path) -> bool {
        ["/bin/sh", "/usr/bin/true", "/bin/bash", "/b/activity-worker", "/b/activity-operator"]
            .contains(&p.to_str().unwrap_or(""))
    }

    fn plan(image: &str, command: &[&str], args: &[&str]) -> Result<Launch, LaunchError> {
        plan_launch(image, &s(command), &s(args), Path::new("/b"), "/usr/bin:/bin", exists)
    }

    #[test]
    fn repository_names() {
        assert_eq!(repository_name("busybox"), "busybox");
        assert_eq!(repository_name("busybox:1.36"), "busybox");
        assert_eq!(repository_name("docker.io/library/busybox:latest"), "busybox");
        assert_eq!(repository_name("ghcr.io/heartbeat-dev/activity-worker:0.1.0"), "activity-worker");
        assert_eq!(repository_name("localhost:5000/activity-operator"), "activity-operator");
        assert_eq!(repository_name("r:5000/a/activity-worker:v1@sha256:abc"), "activity-worker");
        assert_eq!(repository_name("activity-worker@sha256:abc"), "activity-worker");
    }

    #[test]
    fn classification() {
        assert_eq!(classify("ghcr.io/heartbeat-dev/activity-worker:1"), ImageKind::Workspace("activity-worker"));
        assert_eq!(classify("alpine:3"), ImageKind::Host("sh"));
        assert_eq!(classify("ubuntu"), ImageKind::Host("bash"));
        assert_eq!(classify("nginx"), ImageKind::Unknown);
        assert_eq!(classify("example.com/busybox-extra"), ImageKind::Unknown);
    }

    #[test]
    fn workspace_images() {
        let l = plan("ghcr.io/heartbeat-dev/activity-worker:0.1.0", &[], &["exec", "--", "x"]).unwrap();
        assert_eq!(l, Launch { exe: "/b/activity-worker".into(), args: s(&["exec", "--", "x"]) });
        let l = plan("activity-operator", &["/usr/local/bin/activity-operator", "--a"], &["--b"]).unwrap();
        assert_eq!(l, Launch { exe: "/b/activity-operator".into(), args: s(&["--a", "--b"]) });
        let l = plan("activity-worker", &["sh", "-c", "x"], &[]).unwrap();
        assert_eq!(l.exe, PathBuf::from("/bin/sh"));
        let e = plan_launch("activity-worker", &[], &[], Path::new("/nowhere"), "/bin", exists).unwrap_err();
        assert!(matches!(e, LaunchError::ImagePull(m) if m.contains("/nowhere/activity-worker")));
    }

    #[test]
    fn host_images() {
        let l = plan("busybox", &["sh", "-c", "exit 3"], &[]).unwrap();
        assert_eq!(l, Launch { exe: "/bin/sh".into(), args: s(&["-c", "exit 3"]) });
        let l = plan("busybox", &["true"], &["a"]).unwrap();
        assert_eq!(l, Launch { exe: "/usr/bin/true".into(), args: s(&["a"]) });
        let l = plan("busybox", &[], &["sh", "-c", "x"]).unwrap();
        assert_eq!(l.exe, PathBuf::from("/bin/sh"));
        assert_eq!(plan("debian", &[], &[]).unwrap().exe, PathBuf::from("/bin/bash"));
        assert_eq!(
            plan("busybox", &["nope"], &[]).unwrap_err(),
            LaunchError::Start("exec: \"nope\": executable file not found in $PATH".into())
        );
        assert!(matches!(plan("busybox", &["/x/y"], &[]), Err(LaunchError::Start(_))));
    }

    #[test]
    fn unknown_images() {
        assert!(
            matches!(plan("nginx:1", &["true"], &[]), Err(LaunchError::ImagePull(m)) if m.starts_with("Failed to pull image \"nginx:1\""))
        );
    }
}
