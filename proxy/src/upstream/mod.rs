//! Upstreams: their endpoints, power-of-two-choices balancing on in-flight requests, and the
//! connection pool that carries requests to them.
//!
//! HTTP/1.1 exchanges go through rafael's own codec ([`crate::transport`]), driven by the
//! request's task, and connections are pooled per endpoint: a checkout is one uncontended lock
//! and a `Vec::pop` on the chosen endpoint (a LIFO stack, so warm connections are reused and
//! cold ones age out). A
//! connection goes back to its stack only once the response body it carried has been read to
//! the end; a body dropped half-way takes its connection with it. HTTP/2 endpoints share one
//! multiplexed connection driven by hyper.

use std::{
    sync::{Arc, Mutex, PoisonError, Weak},
    time::Duration,
};

use http::{
    Request, Response, Uri, Version,
    uri::{Authority, PathAndQuery, Scheme},
};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rafael_config::{ConfigError, UpstreamConfig, UpstreamProtocol};
use tracing::debug;

use crate::{
    Body, ProxyError,
    body::{H1Body, UpstreamBody},
    error::request_body_failed,
    failure::UpstreamFailure,
    guard::EndpointLoad,
    headers::AddedFields,
    tls,
    transport::{IdlePool, PoolReturn},
};
pub use crate::{
    faults::Targets,
    guard::{InFlight, ResponseGuard},
    transport::{ConnectError, Connector, ExchangeError, H1Connection, UpstreamIo},
};

/// Pooled connections tried for one request before a fresh one is opened for it, when they
/// turn out closed. Only requests without a body are sent again.
const STALE_RETRIES: usize = 2;

/// One upstream service.
#[derive(Debug)]
pub struct Upstream {
    name: Arc<str>,
    endpoints: Arc<[Arc<Endpoint>]>,
    connector: Connector,
    scheme: Scheme,
    protocol: UpstreamProtocol,
    pool: PoolSettings,
    config: UpstreamConfig,
}

#[derive(Debug, Clone, Copy)]
struct PoolSettings {
    max_idle: usize,
}

/// One address of an upstream, with its in-flight count and its pooled connections.
#[derive(Debug)]
pub struct Endpoint {
    authority: Authority,
    /// Its place in the upstream's list.
    index: usize,
    in_flight: Arc<EndpointLoad>,
    idle: Arc<IdlePool<H1Connection>>,
    shared_h2: Mutex<Option<http2::SendRequest<Body>>>,
    connecting_h2: tokio::sync::Mutex<()>,
}

/// A request head ready to forward: the client's head with hop-by-hop fields removed, and the
/// fields this hop adds. Shared by every attempt of the request.
#[derive(Debug)]
pub struct RequestHead {
    /// Method, target, version and the client's fields.
    pub parts: http::request::Parts,
    /// The fields rafael adds.
    pub added: AddedFields,
    /// The route's fault rules this request targets with the chaos secret (whose header was
    /// removed from `parts`).
    pub targets: Targets,
}

/// An upstream's answer: the response, and for a protocol switch (101) the upstream stream with
/// any bytes already read past the head.
#[derive(Debug)]
pub struct Exchange {
    /// The response, its body streaming from the upstream.
    pub response: Response<Body>,
    /// The switched-protocol stream, when the response is a 101.
    pub upgraded: Option<(UpstreamIo, bytes::Bytes)>,
    /// Index of the endpoint that answered.
    pub endpoint: usize,
    /// When the response head arrived (the policy clock; 0 when not read), so the request
    /// path does not read the clock again for the same moment.
    pub answered_at: u64,
    /// True when an upstream-stage fault shaped this answer (for the telemetry's samples).
    pub injected: bool,
}

// === impl Upstream ===

impl Upstream {
    /// Builds an upstream; errors name the config key they concern.
    pub fn new(config: &UpstreamConfig, path: &str) -> Result<Self, ConfigError> {
        let endpoints = config
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, endpoint)| {
                endpoint
                    .parse::<Authority>()
                    .map(|authority| Endpoint::new(authority, i))
                    .map_err(|e| ConfigError::new(format!("{path}.endpoints[{i}]"), e.to_string()))
            })
            .collect::<Result<Arc<[_]>, _>>()?;
        if endpoints.is_empty() {
            // `pick` relies on this; validation says so too, but this type must not trust it.
            return Err(ConfigError::new(
                format!("{path}.endpoints"),
                "at least one endpoint is required",
            ));
        }
        let tls = match &config.tls {
            None => None,
            Some(upstream_tls) => {
                let client = tls::client_config(upstream_tls, config.protocol)
                    .map_err(|e| ConfigError::new(format!("{path}.tls"), e))?;
                Some((client, upstream_tls.server_name.clone()))
            }
        };
        let scheme = if tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        let connector = Connector::new(config.connect_timeout.get(), tls)
            .map_err(|e| ConfigError::new(format!("{path}.tls.server_name"), e))?;
        let pool = PoolSettings {
            max_idle: config.pool_max_idle_per_endpoint as usize,
        };
        spawn_reaper(Arc::downgrade(&endpoints), config.pool_idle_timeout.get());
        Ok(Self {
            name: Arc::from(config.name.as_str()),
            endpoints,
            connector,
            scheme,
            protocol: config.protocol,
            pool,
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

    /// True when requests can switch protocols (HTTP/1.1 `Upgrade`) on the way to it.
    pub fn supports_upgrades(&self) -> bool {
        self.protocol == UpstreamProtocol::Http1
    }

    /// Its endpoints.
    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// Its endpoints' addresses, in order.
    pub fn addresses(&self) -> impl Iterator<Item = &str> {
        self.endpoints.iter().map(|e| e.address())
    }

    /// Sends `request` to `endpoint` and returns its response head, the body streaming on.
    ///
    /// `added` holds the fields this hop adds (forwarding headers, request id): written after
    /// the request's own fields by the HTTP/1.1 codec, inserted into the map for HTTP/2.
    pub async fn send(
        &self,
        endpoint: &Arc<Endpoint>,
        head: &RequestHead,
        body: Body,
    ) -> Result<Exchange, ProxyError> {
        match self.protocol {
            UpstreamProtocol::Http1 => {
                let has_host = head.parts.headers.contains_key(http::header::HOST)
                    || head.added.contains(&http::header::HOST);
                if has_host {
                    self.send_http1(endpoint, &head.parts, &head.added, body)
                        .await
                } else {
                    // HTTP/1.1 requires a Host; an HTTP/1.0 client may not have sent one.
                    let mut parts = head.parts.clone();
                    if let Ok(host) = http::HeaderValue::from_str(endpoint.address()) {
                        parts.headers.insert(http::header::HOST, host);
                    }
                    Box::pin(self.send_http1(endpoint, &parts, &head.added, body)).await
                }
            }
            UpstreamProtocol::Http2 => {
                let mut request = Request::from_parts(head.parts.clone(), body);
                head.added.insert_into(request.headers_mut());
                // Boxed: hyper's HTTP/2 request state would otherwise set the size of every
                // request's future, HTTP/1.1 ones included.
                Box::pin(self.send_http2(endpoint, request)).await
            }
        }
    }

    async fn send_http1(
        &self,
        endpoint: &Arc<Endpoint>,
        parts: &http::request::Parts,
        added: &AddedFields,
        mut body: Body,
    ) -> Result<Exchange, ProxyError> {
        let mut attempt = 0;
        loop {
            let pooled = if attempt < STALE_RETRIES {
                endpoint.checkout()
            } else {
                None
            };
            let mut conn = match pooled {
                Some(conn) => conn,
                None => H1Connection::new(self.connect(endpoint).await?),
            };
            attempt += 1;
            let mut head = match conn.exchange(parts, added, &mut body).await {
                Ok(head) => head,
                Err(ExchangeError::Stale(reason)) if attempt <= STALE_RETRIES => {
                    debug!(endpoint = endpoint.address(), %reason, "pooled connection was closed; retrying");
                    continue;
                }
                Err(error) => return Err(self.exchange_failed(endpoint, error)),
            };
            if head.response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                let response = head.response.map(|()| Body::Empty);
                return Ok(Exchange {
                    response,
                    upgraded: Some((*conn).into_upgraded()),
                    endpoint: 0,
                    answered_at: 0,
                    injected: false,
                });
            }
            let pool = PoolReturn {
                pool: endpoint.idle.clone(),
                max_idle: self.pool.max_idle,
            };
            let body = H1Body::new(conn, &mut head, Some(pool));
            let response = head.response.map(|()| Body::Upstream {
                body: UpstreamBody::Http1(body),
                guard: ResponseGuard::default(),
            });
            return Ok(Exchange {
                response,
                upgraded: None,
                endpoint: 0,
                answered_at: 0,
                injected: false,
            });
        }
    }

    async fn send_http2(
        &self,
        endpoint: &Arc<Endpoint>,
        mut request: Request<Body>,
    ) -> Result<Exchange, ProxyError> {
        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        // HTTP/2 carries the host in `:authority`. Connections are chosen by endpoint, not by
        // URI, so the client's host can go there and virtual hosting keeps working.
        let host = request
            .headers_mut()
            .remove(http::header::HOST)
            .and_then(|h| Authority::try_from(h.as_bytes()).ok());
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(host.unwrap_or_else(|| endpoint.authority.clone()));
        parts.path_and_query = Some(path);
        *request.uri_mut() = Uri::from_parts(parts)
            .map_err(|_| ProxyError::BadRequest("request target cannot be forwarded"))?;
        *request.version_mut() = Version::HTTP_2;
        let client_failure = request.body_mut().failure_report();
        let mut sender = self.shared_http2(endpoint).await?;
        match sender.send_request(request).await {
            Ok(response) => Ok(Exchange {
                response: response.map(|body| Body::Upstream {
                    body: UpstreamBody::Http2(body),
                    guard: ResponseGuard::default(),
                }),
                upgraded: None,
                endpoint: 0,
                answered_at: 0,
                injected: false,
            }),
            // hyper resets the stream when the request body fails, and reports the reset: the
            // client's failure, recorded by its body, is the one to answer with.
            Err(error) => Err(match client_failure.as_ref().and_then(|f| f.get()) {
                Some(failure) => failure.clone().into(),
                None => self.failed(endpoint, &error),
            }),
        }
    }

    async fn shared_http2(
        &self,
        endpoint: &Endpoint,
    ) -> Result<http2::SendRequest<Body>, ProxyError> {
        match endpoint.current_h2() {
            Some(sender) => Ok(sender),
            // Boxed for the same reason as `connect`: rare, and large.
            None => Box::pin(self.connect_http2(endpoint)).await,
        }
    }

    async fn connect_http2(
        &self,
        endpoint: &Endpoint,
    ) -> Result<http2::SendRequest<Body>, ProxyError> {
        // One connection attempt at a time; those who waited reuse its result.
        let _connecting = endpoint.connecting_h2.lock().await;
        if let Some(sender) = endpoint.current_h2() {
            return Ok(sender);
        }
        let io = self.connect(endpoint).await?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| self.failed(endpoint, &e))?;
        let address = endpoint.address().to_owned();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(endpoint = %address, %error, "upstream HTTP/2 connection ended");
            }
        });
        *endpoint
            .shared_h2
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(sender.clone());
        Ok(sender)
    }

    async fn connect(&self, endpoint: &Endpoint) -> Result<UpstreamIo, ProxyError> {
        // Boxed: the TCP and TLS handshake state is large and needed once per connection, so
        // it should not sit inside (and be copied with) every request's future.
        Box::pin(self.connector.connect(&endpoint.authority))
            .await
            .map_err(|error| match error {
                ConnectError::Timeout(timeout) => ProxyError::ConnectTimeout {
                    upstream: self.name.to_string(),
                    endpoint: endpoint.address().to_owned(),
                    index: endpoint.index,
                    timeout,
                },
                other => ProxyError::Connect {
                    upstream: self.name.to_string(),
                    endpoint: endpoint.address().to_owned(),
                    index: endpoint.index,
                    reason: other.to_string(),
                },
            })
    }

    fn exchange_failed(&self, endpoint: &Endpoint, error: ExchangeError) -> ProxyError {
        match error {
            ExchangeError::RequestBody(error) => {
                request_body_failed(&error, "the request body ended before it was complete")
            }
            error @ (ExchangeError::Protocol(_) | ExchangeError::ClosedBeforeResponse) => {
                self.error(endpoint, UpstreamFailure::Protocol, error.to_string())
            }
            error @ (ExchangeError::Io(_) | ExchangeError::Stale(_)) => {
                self.error(endpoint, UpstreamFailure::Connection, error.to_string())
            }
        }
    }

    fn failed(&self, endpoint: &Endpoint, error: &hyper::Error) -> ProxyError {
        let reason = match std::error::Error::source(error) {
            Some(cause) => format!("{error}: {cause}"),
            None => error.to_string(),
        };
        let failure = if error.is_parse() || error.is_parse_status() || error.is_user() {
            UpstreamFailure::Protocol
        } else {
            UpstreamFailure::Connection
        };
        self.error(endpoint, failure, reason)
    }

    /// A failure of endpoint `index` after the connection was made (502); a bad request when
    /// the endpoint is gone.
    pub fn error_at(&self, index: usize, failure: UpstreamFailure, reason: &str) -> ProxyError {
        match self.endpoints.get(index) {
            Some(endpoint) => self.error(endpoint, failure, reason.to_owned()),
            None => ProxyError::BadRequest("endpoint is gone"),
        }
    }

    /// A failure of `endpoint` after the connection was made (502).
    pub fn error(
        &self,
        endpoint: &Endpoint,
        failure: UpstreamFailure,
        reason: String,
    ) -> ProxyError {
        ProxyError::Upstream {
            upstream: self.name.to_string(),
            endpoint: endpoint.address().to_owned(),
            index: endpoint.index,
            failure,
            reason,
        }
    }
}

/// Closes idle connections past their timeout even when no request comes to do it.
///
/// It ticks every half idle timeout and evicts connections idle for two ticks or more, so an
/// idle connection closes between one and one and a half idle timeouts after its last use.
fn spawn_reaper(endpoints: Weak<[Arc<Endpoint>]>, idle_timeout: Duration) {
    // `config check` builds upstreams outside a runtime; nothing idles there.
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let period = (idle_timeout / 2).max(Duration::from_millis(50));
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            let Some(endpoints) = endpoints.upgrade() else {
                return;
            };
            for endpoint in endpoints.iter() {
                endpoint.evict();
            }
        }
    });
}

// === impl Endpoint ===

impl Endpoint {
    fn new(authority: Authority, index: usize) -> Arc<Self> {
        Arc::new(Self {
            authority,
            index,
            in_flight: Arc::default(),
            idle: Arc::default(),
            shared_h2: Mutex::new(None),
            connecting_h2: tokio::sync::Mutex::new(()),
        })
    }

    /// `host:port`.
    pub fn address(&self) -> &str {
        self.authority.as_str()
    }

    /// Requests in flight to it now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    /// Idle pooled HTTP/1.1 connections.
    pub fn idle_connections(&self) -> usize {
        self.idle.len()
    }

    /// Marks one more request in flight until the returned guard drops. Also returns the
    /// count with it included.
    pub fn begin(&self) -> (InFlight, usize) {
        self.in_flight.begin()
    }

    /// The most recently used idle connection that is still open.
    fn checkout(&self) -> Option<Box<H1Connection>> {
        self.idle.checkout()
    }

    /// Advances the pool's epoch and drops connections that closed or idled for two epochs.
    fn evict(&self) {
        self.idle.evict();
    }

    fn current_h2(&self) -> Option<http2::SendRequest<Body>> {
        let shared = self
            .shared_h2
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        shared.as_ref().filter(|s| !s.is_closed()).cloned()
    }
}
