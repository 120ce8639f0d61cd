//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the process node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {}", short(.0))]
    Kube(#[from] kube::Error),

    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },

    #[error("kubeconfig {path}: {what}")]
    KubeconfigContent { path: PathBuf, what: String },

    #[error("building the API client: {0}")]
    ClientConfig(String),

    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("serializing: {0}")]
    Json(#[from] serde_json::Error),

    #[error("token request for service account {namespace}/{name} returned no token")]
    EmptyToken { namespace: String, name: String },

    #[error("pod object without {0}")]
    IncompletePod(&'static str),

    #[error("TLS: {0}")]
    Tls(String),

    #[error("watching pods: {0}")]
    Watch(#[from] kube::runtime::watcher::Error),
}

/// An API error as `<message> (<code> <reason>)`, without the debug dump of the response.
fn short(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({} {})", s.message, s.code, s.reason),
        other => other.to_string(),
    }
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { what, path: path.into(), source }
    }

    /// Whether retrying the same request later may succeed (network trouble, throttling,
    /// server errors), as opposed to a definitive answer (not found, forbidden, invalid).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Kube(kube::Error::Api(status)) => status.code == 429 || status.code >= 500,
            Self::Kube(_) => true,
            _ => false,
        }
    }

    /// The HTTP status code of an API error response, if this is one.
    pub fn api_code(&self) -> Option<u16> {
        match self {
            Self::Kube(kube::Error::Api(status)) => Some(status.code),
            _ => None,
        }
    }
}

/// Result with the crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
