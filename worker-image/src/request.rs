//! One request of the worker to its Activity: bounded in time, retried while the API server's
//! answer says a retry can help, and the [`Error`] a failure ends it with.

use std::future::Future;
use std::time::{Duration, Instant};

use tracing::warn;

use crate::error::{Error, Result};
use crate::throttle::backoff;
use crate::wire::{self, ApiFailure};

/// A request of the worker to its Activity, as its logs and errors name it.
pub(crate) struct Request<'a> {
    /// What the worker tries to do, as in "cannot {action} Activity ns/name".
    pub action: &'static str,
    /// The RBAC verb and resource the request needs, named when it is forbidden.
    pub verb: &'static str,
    pub resource: &'static str,
    pub namespace: &'a str,
    pub name: &'a str,
    /// The attempt a write is guarded by (its `test` op); `None` for a read.
    pub attempt: Option<i32>,
}

impl Request<'_> {
    /// The error `failure` ends the request with, after `elapsed` of tries.
    pub fn error(&self, failure: ApiFailure, elapsed: Duration) -> Error {
        let (action, namespace, name) = (self.action, self.namespace.to_string(), self.name.to_string());
        match failure {
            ApiFailure::Superseded(message) => match self.attempt {
                Some(attempt) => Error::Superseded { attempt, namespace, name, message },
                None => Error::Api { action, namespace, name, message },
            },
            ApiFailure::Forbidden(message) => {
                Error::Forbidden { verb: self.verb, resource: self.resource, namespace, name, message }
            }
            ApiFailure::NotFound(message) => Error::NotFound { namespace, name, message },
            ApiFailure::Fatal(message) => Error::Api { action, namespace, name, message },
            ApiFailure::Retryable { message, .. } => Error::Unavailable { action, namespace, name, elapsed, message },
        }
    }

    /// Sends with `send` until it succeeds, fails for good, or `budget` has passed; a retryable
    /// failure waits for the server's Retry-After, else for the backoff (never past the budget).
    /// `refused` sees the failure that ends the tries before it becomes the error. `send`'s own
    /// error (the worker's, not the API server's) ends the tries at once.
    pub async fn with_retries<T, Fut>(
        &self,
        budget: Duration,
        mut send: impl FnMut() -> Fut,
        refused: impl FnOnce(&ApiFailure),
    ) -> Result<T>
    where
        Fut: Future<Output = Result<std::result::Result<T, ApiFailure>>>,
    {
        let start = Instant::now();
        let mut failures = 0u32;
        loop {
            let failure = match send().await? {
                Ok(value) => return Ok(value),
                Err(failure) => failure,
            };
            let elapsed = start.elapsed();
            if let ApiFailure::Retryable { retry_after, message } = &failure
                && elapsed < budget
            {
                failures += 1;
                let wait = retry_after.unwrap_or_else(|| backoff(failures)).min(budget - elapsed);
                warn!("cannot {} the Activity yet (retrying in {wait:?}): {message}", self.action);
                tokio::time::sleep(wait).await;
                continue;
            }
            refused(&failure);
            return Err(self.error(failure, elapsed));
        }
    }
}

/// Awaits `call`, at most `timeout`; a failure as the worker takes it.
pub(crate) async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = std::result::Result<T, kube::Error>>,
) -> std::result::Result<T, ApiFailure> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(wire::classify(&e)),
        Err(_) => Err(ApiFailure::Retryable { retry_after: None, message: format!("no answer within {timeout:?}") }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(attempt: Option<i32>) -> Request<'static> {
        Request { action: "read", verb: "get", resource: "activities", namespace: "ns", name: "a", attempt }
    }

    #[test]
    fn failures_become_the_errors_a_worker_acts_on() {
        let write = request(Some(2));
        let err = write.error(ApiFailure::Superseded("test failed".into()), Duration::ZERO);
        assert!(matches!(err, Error::Superseded { attempt: 2, .. }), "{err}");
        // A read has no attempt to be superseded: a 422 is just an error.
        let err = request(None).error(ApiFailure::Superseded("422".into()), Duration::ZERO);
        assert!(matches!(err, Error::Api { action: "read", .. }), "{err}");
        let err = write.error(ApiFailure::Forbidden("no".into()), Duration::ZERO);
        assert!(err.to_string().contains("cannot get activities of Activity ns/a"), "{err}");
        assert!(write.error(ApiFailure::NotFound("gone".into()), Duration::ZERO).is_cancellation());
        let busy = ApiFailure::Retryable { retry_after: None, message: "503".into() };
        let err = write.error(busy, Duration::from_secs(60));
        assert!(matches!(err, Error::Unavailable { elapsed, .. } if elapsed == Duration::from_secs(60)), "{err}");
    }
}
