//! The operator's Kubernetes client: kube-client's own stack (TLS from the kubeconfig, connect and
//! write timeouts, base URI, retries of 429/503/504, authentication, extra headers) over HTTP/1.1,
//! with a bound on the connections kept idle.
//!
//! Over HTTP/1.1 every request in flight needs a connection of its own. A burst of new activities
//! (up to `--concurrency` reconciles, each making requests) opens hundreds of TLS connections, and
//! kube-client's pool keeps every one of them open once the burst is over, each with its buffers
//! and TLS state. Here the connections beyond `idle` close as they go idle.

use hyper_timeout::TimeoutConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt;
use kube::client::retry::RetryPolicy;
use kube::{Client, Config};
use tower::retry::RetryLayer;
use tower::{BoxError, ServiceBuilder};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the kubeconfig or the in-cluster configuration: {0}")]
    Config(#[from] kube::config::InferConfigError),
    #[error("setting up the client: {0}")]
    Client(#[from] kube::Error),
    #[error("the kubeconfig names a proxy ({0}), and the operator does not connect through proxies")]
    Proxy(String),
}

/// A client for the kubeconfig or in-cluster configuration, as `Client::try_default` would find it,
/// keeping at most `idle` connections open while idle.
pub async fn infer(idle: usize) -> Result<Client, Error> {
    build(Config::infer().await?, idle)
}

/// A client for `config`, keeping at most `idle` connections open while idle.
pub fn build(config: Config, idle: usize) -> Result<Client, Error> {
    if let Some(proxy) = &config.proxy_url {
        return Err(Error::Proxy(proxy.to_string()));
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let mut connector = TimeoutConnector::new(config.rustls_https_connector_with_connector(http)?);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let hyper = HyperClient::builder(TokioExecutor::new()).pool_max_idle_per_host(idle).build(connector);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.default_retry.then(|| RetryLayer::new(RetryPolicy::server_retry())))
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(hyper);
    Ok(Client::new(service, config.default_namespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxy_in_the_kubeconfig_is_refused_by_name() {
        let mut config = Config::new("https://127.0.0.1:6443".parse().expect("url"));
        config.proxy_url = Some("http://proxy.internal:3128".parse().expect("proxy url"));
        let err = build(config, 16).err().expect("a proxy must be refused");
        assert!(err.to_string().contains("proxy.internal:3128"), "{err}");
    }
}
