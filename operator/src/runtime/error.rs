//! Why a reconcile pass failed. Each is retried by the error policy with per-object backoff; the
//! ones worth showing become the `Stalled` condition (`runtime::stalled`).

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action}: {source}")]
    Kube {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("serializing a patch: {0}")]
    Serialize(#[source] serde_json::Error),
    #[error("the pod cache has not finished its first list")]
    PodCacheNotReady,
    /// A guarded write was refused on the cached copy and again on a fresh read.
    #[error("the activity changed twice while it was being judged")]
    ChangedTwice,
    #[error("this replica is no longer the leader: it writes nothing more")]
    NotLeader,
    #[error("the Activity has no namespace")]
    NoNamespace,
    #[error("the Activity has no uid")]
    NoUid,
}

impl Error {
    /// The `kind` label of `activity_operator_reconcile_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube { action, .. } => action,
            Error::Serialize(_) => "serialize",
            Error::PodCacheNotReady => "pod_cache",
            Error::ChangedTwice => "superseded",
            Error::NotLeader => "not_leader",
            Error::NoNamespace => "no_namespace",
            Error::NoUid => "no_uid",
        }
    }
}

/// Wraps an API error with the call that failed.
pub fn kube_err(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { action, source }
}

/// The HTTP status of an API error, if the API server answered.
pub fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// The API server's own message for API errors; the error itself otherwise.
pub fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}
