//! Upstreams: their endpoints, power-of-two-choices balancing on in-flight requests, and the
//! pooled keep-alive client that carries requests to them.

mod connector;

use std::{
    error::Error as _,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::{
    Request, Response, Uri, Version,
    uri::{Authority, PathAndQuery, Scheme},
};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioTimer},
};
use rafael_config::{UpstreamConfig, UpstreamProtocol};

pub use connector::{ConnectError, Connector, UpstreamIo};

use crate::{Body, ProxyError, tls};

/// One upstream service.
#[derive(Debug)]
pub struct Upstream {
    name: Arc<str>,
    endpoints: Box<[Arc<Endpoint>]>,
    client: Client<Connector, Body>,
    scheme: Scheme,
    version: Version,
    config: UpstreamConfig,
}

/// One address of an upstream, with its in-flight count for balancing.
#[derive(Debug)]
pub struct Endpoint {
    authority: Authority,
    in_flight: AtomicUsize,
}

/// An endpoint's share of a request: counts as in flight until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

// === impl Upstream ===

impl Upstream {
    /// Builds an upstream and its client; errors name the config key they concern.
    pub fn new(config: &UpstreamConfig, path: &str) -> Result<Self, rafael_config::ConfigError> {
        let endpoints = config
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, endpoint)| {
                endpoint
                    .parse::<Authority>()
                    .map(|authority| {
                        Arc::new(Endpoint {
                            authority,
                            in_flight: AtomicUsize::new(0),
                        })
                    })
                    .map_err(|e| {
                        rafael_config::ConfigError::new(
                            format!("{path}.endpoints[{i}]"),
                            e.to_string(),
                        )
                    })
            })
            .collect::<Result<Box<[_]>, _>>()?;
        let tls = match &config.tls {
            None => None,
            Some(upstream_tls) => {
                let client = tls::client_config(upstream_tls, config.protocol)
                    .map_err(|e| rafael_config::ConfigError::new(format!("{path}.tls"), e))?;
                Some((client, upstream_tls.server_name.clone()))
            }
        };
        let scheme = if tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        let connector = Connector::new(config.connect_timeout.get(), tls)
            .map_err(|e| rafael_config::ConfigError::new(format!("{path}.tls.server_name"), e))?;
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout.get())
            .pool_max_idle_per_host(config.pool_max_idle_per_endpoint as usize)
            .http2_only(config.protocol == UpstreamProtocol::Http2)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_keep_alive_while_idle(false);
        Ok(Self {
            name: Arc::from(config.name.as_str()),
            endpoints,
            client: builder.build(connector),
            scheme,
            version: match config.protocol {
                UpstreamProtocol::Http1 => Version::HTTP_11,
                UpstreamProtocol::Http2 => Version::HTTP_2,
            },
            config: config.clone(),
        })
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The config it was built from (a reload keeps the upstream, and its pool, when equal).
    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// Its endpoints.
    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// Picks an endpoint by power of two choices: two at random, the one with fewer requests in
    /// flight wins. This avoids both the herding of least-loaded and the blindness of random.
    pub fn pick(&self) -> &Arc<Endpoint> {
        let n = self.endpoints.len();
        if n <= 1 {
            return &self.endpoints[0];
        }
        let a = fastrand::usize(..n);
        let mut b = fastrand::usize(..n - 1);
        if b >= a {
            b += 1;
        }
        let (ea, eb) = (&self.endpoints[a], &self.endpoints[b]);
        if eb.in_flight() < ea.in_flight() {
            eb
        } else {
            ea
        }
    }

    /// Sends `request` to `endpoint`, rewriting its URI to the endpoint and its version to the
    /// upstream protocol.
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        mut request: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(endpoint.authority.clone());
        parts.path_and_query = Some(path);
        *request.uri_mut() = Uri::from_parts(parts)
            .map_err(|_| ProxyError::BadRequest("request target cannot be forwarded"))?;
        *request.version_mut() = self.version;
        self.client
            .request(request)
            .await
            .map_err(|e| self.classify(endpoint, e))
    }

    fn classify(
        &self,
        endpoint: &Endpoint,
        error: hyper_util::client::legacy::Error,
    ) -> ProxyError {
        let mut source = error.source();
        while let Some(cause) = source {
            if let Some(connect) = cause.downcast_ref::<ConnectError>() {
                return match connect {
                    ConnectError::Timeout(timeout) => ProxyError::ConnectTimeout {
                        upstream: self.name.to_string(),
                        endpoint: endpoint.address().to_owned(),
                        timeout: *timeout,
                    },
                    other => ProxyError::Connect {
                        upstream: self.name.to_string(),
                        endpoint: endpoint.address().to_owned(),
                        reason: other.to_string(),
                    },
                };
            }
            source = cause.source();
        }
        let reason = match error.source() {
            Some(cause) => cause.to_string(),
            None => error.to_string(),
        };
        if error.is_connect() {
            ProxyError::Connect {
                upstream: self.name.to_string(),
                endpoint: endpoint.address().to_owned(),
                reason,
            }
        } else {
            ProxyError::Upstream {
                upstream: self.name.to_string(),
                endpoint: endpoint.address().to_owned(),
                reason,
            }
        }
    }
}

// === impl Endpoint ===

impl Endpoint {
    /// `host:port`.
    pub fn address(&self) -> &str {
        self.authority.as_str()
    }

    /// Requests in flight to it now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Marks one more request in flight until the returned guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

// === impl InFlight ===

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
