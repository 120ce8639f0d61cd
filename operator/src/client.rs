//! The operator's Kubernetes client: kube-client's own stack (base URI, retries of 429/503/504,
//! authentication, extra headers) over HTTP/2 when the API server offers it (ALPN), HTTP/1.1
//! otherwise.
//!
//! kube-client builds an HTTP/1.1-only client, where every request in flight needs a connection
//! of its own. With `--concurrency 256`, a burst of 1,000 new activities kept about 280 TLS
//! connections open (heaptrack: 282 connection tasks), each with its own buffers, for memory that
//! outlived the burst. Over HTTP/2 every request is a stream on one connection, which is also
//! what client-go does.

use std::time::Duration;

use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::ConfigExt;
use kube::client::retry::RetryPolicy;
use kube::{Client, Config};
use tower::retry::RetryLayer;
use tower::{BoxError, ServiceBuilder};

/// How often an idle HTTP/2 connection is pinged, and how long a ping may go unanswered before
/// the connection counts as dead (its requests and watches fail and are retried on a new one).
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the kubeconfig or the in-cluster configuration: {0}")]
    Config(#[from] kube::config::InferConfigError),
    #[error("setting up the client: {0}")]
    Client(#[from] kube::Error),
    #[error("the kubeconfig's tls-server-name {0:?} is not a valid server name")]
    ServerName(String),
}

/// A client for the kubeconfig or in-cluster configuration, as `Client::try_default` would find it.
pub async fn infer() -> Result<Client, Error> {
    build(Config::infer().await?)
}

/// A client for `config`.
pub fn build(config: Config) -> Result<Client, Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(config.connect_timeout);
    let tls = config.rustls_client_config()?;
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
    let builder = match &config.tls_server_name {
        Some(name) => {
            let name = name.clone().try_into().map_err(|_| Error::ServerName(name.clone()))?;
            builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    let https = builder.enable_all_versions().wrap_connector(http);
    let hyper = HyperClient::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .http2_keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .http2_keep_alive_while_idle(true)
        .build(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.default_retry.then(|| RetryLayer::new(RetryPolicy::server_retry())))
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(hyper);
    Ok(Client::new(service, config.default_namespace))
}
