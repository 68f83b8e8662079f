//! Upstreams: their endpoints, power-of-two-choices balancing on in-flight requests, and the
//! connection pool that carries requests to them.
//!
//! The pool is ours rather than hyper-util's legacy client because checkout is on every
//! request's path: an HTTP/1.1 checkout is one uncontended lock and a `Vec::pop` on the chosen
//! endpoint (a LIFO stack, so warm connections are reused and cold ones age out), with no URI
//! hashing and no boxed futures. A connection goes back to its stack only once the response
//! body it carried has been read to the end; a body dropped half-way takes its connection with
//! it. HTTP/2 endpoints share one multiplexed connection.

mod connector;

use std::{
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::{
    Request, Response, Uri, Version,
    uri::{Authority, PathAndQuery, Scheme},
};
use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rafael_config::{ConfigError, UpstreamConfig, UpstreamProtocol};
use tracing::debug;

pub use connector::{ConnectError, Connector, UpstreamIo};

use crate::{Body, ProxyError, server::RequestActive, tls};

/// Attempts to send one request over pooled connections that turn out to be closed before a
/// fresh connection is opened for it. Only requests hyper reports as not sent are re-sent.
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
    in_flight: AtomicUsize,
    idle: Mutex<Vec<IdleConnection>>,
    /// Advanced by the reaper every half idle timeout.
    epoch: AtomicU64,
    shared_h2: Mutex<Option<http2::SendRequest<Body>>>,
    connecting_h2: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct IdleConnection {
    sender: http1::SendRequest<Body>,
    /// The endpoint's reaper epoch when it went idle: a coarse clock that costs the request
    /// path an atomic load instead of a clock read.
    since: u64,
}

/// An endpoint's share of a request: counts as in flight until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

/// An HTTP/1.1 connection lent to one exchange; [`Lease::release`] returns it to the pool.
#[derive(Debug)]
pub struct Lease {
    endpoint: Arc<Endpoint>,
    sender: http1::SendRequest<Body>,
    max_idle: usize,
}

/// What a streamed upstream response holds until its body ends: the endpoint's in-flight
/// count, the downstream connection's activity, and the pooled connection.
#[derive(Debug)]
pub struct ResponseGuard {
    /// The HTTP/1.1 connection, to release when the body was read to the end.
    pub lease: Option<Lease>,
    /// The endpoint's in-flight count.
    pub in_flight: InFlight,
    /// The downstream connection's activity.
    pub active: RequestActive,
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
                    .map(Endpoint::new)
                    .map_err(|e| ConfigError::new(format!("{path}.endpoints[{i}]"), e.to_string()))
            })
            .collect::<Result<Arc<[_]>, _>>()?;
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

    /// Sends `request` to `endpoint`. The response comes with the connection's [`Lease`] when
    /// it is an HTTP/1.1 connection to give back once the response body has been read.
    pub async fn send(
        &self,
        endpoint: &Arc<Endpoint>,
        request: Request<Body>,
    ) -> Result<(Response<Incoming>, Option<Lease>), ProxyError> {
        match self.protocol {
            UpstreamProtocol::Http1 => self.send_http1(endpoint, request).await,
            UpstreamProtocol::Http2 => self.send_http2(endpoint, request).await,
        }
    }

    async fn send_http1(
        &self,
        endpoint: &Arc<Endpoint>,
        mut request: Request<Body>,
    ) -> Result<(Response<Incoming>, Option<Lease>), ProxyError> {
        // HTTP/1.1 wants the origin form (`/path?query`) on the request line.
        if request.uri().scheme().is_some() || request.uri().authority().is_some() {
            let path = request
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *request.uri_mut() = Uri::from(path);
        }
        *request.version_mut() = Version::HTTP_11;
        let mut attempt = 0;
        loop {
            let pooled = if attempt < STALE_RETRIES {
                endpoint.checkout()
            } else {
                None
            };
            let mut sender = match pooled {
                Some(sender) => sender,
                None => self.connect_http1(endpoint).await?,
            };
            attempt += 1;
            if !sender.is_ready() && sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let lease = Lease {
                        endpoint: endpoint.clone(),
                        sender,
                        max_idle: self.pool.max_idle,
                    };
                    return Ok((response, Some(lease)));
                }
                Err(mut error) => match error.take_message() {
                    // Not written: the pooled connection closed under us. Try another.
                    Some(unsent) if attempt <= STALE_RETRIES => {
                        debug!(
                            endpoint = endpoint.address(),
                            "pooled connection was closed; retrying"
                        );
                        request = unsent;
                    }
                    _ => return Err(self.failed(endpoint, &error.into_error())),
                },
            }
        }
    }

    async fn send_http2(
        &self,
        endpoint: &Arc<Endpoint>,
        mut request: Request<Body>,
    ) -> Result<(Response<Incoming>, Option<Lease>), ProxyError> {
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
        let mut sender = self.shared_http2(endpoint).await?;
        match sender.send_request(request).await {
            Ok(response) => Ok((response, None)),
            Err(error) => Err(self.failed(endpoint, &error)),
        }
    }

    async fn connect_http1(
        &self,
        endpoint: &Endpoint,
    ) -> Result<http1::SendRequest<Body>, ProxyError> {
        let io = self.connect(endpoint).await?;
        let (sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| self.failed(endpoint, &e))?;
        let address = endpoint.address().to_owned();
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                debug!(endpoint = %address, %error, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    async fn shared_http2(
        &self,
        endpoint: &Endpoint,
    ) -> Result<http2::SendRequest<Body>, ProxyError> {
        if let Some(sender) = endpoint.current_h2() {
            return Ok(sender);
        }
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
            .handshake(io)
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
        self.connector
            .connect(&endpoint.authority)
            .await
            .map_err(|error| match error {
                ConnectError::Timeout(timeout) => ProxyError::ConnectTimeout {
                    upstream: self.name.to_string(),
                    endpoint: endpoint.address().to_owned(),
                    timeout,
                },
                other => ProxyError::Connect {
                    upstream: self.name.to_string(),
                    endpoint: endpoint.address().to_owned(),
                    reason: other.to_string(),
                },
            })
    }

    fn failed(&self, endpoint: &Endpoint, error: &hyper::Error) -> ProxyError {
        let reason = match std::error::Error::source(error) {
            Some(cause) => format!("{error}: {cause}"),
            None => error.to_string(),
        };
        ProxyError::Upstream {
            upstream: self.name.to_string(),
            endpoint: endpoint.address().to_owned(),
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
    fn new(authority: Authority) -> Arc<Self> {
        Arc::new(Self {
            authority,
            in_flight: AtomicUsize::new(0),
            idle: Mutex::new(Vec::new()),
            epoch: AtomicU64::new(0),
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
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Idle pooled HTTP/1.1 connections.
    pub fn idle_connections(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Marks one more request in flight until the returned guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// The most recently used idle connection that is still open.
    fn checkout(&self) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(entry) = idle.pop() {
            if !entry.sender.is_closed() {
                return Some(entry.sender);
            }
        }
        None
    }

    /// Advances the epoch and drops connections that closed or idled for two epochs.
    fn evict(&self) {
        let now = self.epoch.fetch_add(1, Ordering::Relaxed) + 1;
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain(|entry| !entry.sender.is_closed() && now - entry.since < 2);
    }

    fn current_h2(&self) -> Option<http2::SendRequest<Body>> {
        let shared = self
            .shared_h2
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        shared.as_ref().filter(|s| !s.is_closed()).cloned()
    }
}

// === impl InFlight ===

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl Lease ===

impl Lease {
    /// Returns the connection to its endpoint's pool, unless the pool is full or it closed.
    pub fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let mut idle = self
            .endpoint
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle {
            idle.push(IdleConnection {
                sender: self.sender,
                since: self.endpoint.epoch.load(Ordering::Relaxed),
            });
        }
    }
}

// === impl ResponseGuard ===

impl ResponseGuard {
    /// Ends the exchange; the connection is pooled again only if the body was read to its end.
    pub fn finish(self, body_complete: bool) {
        if let (Some(lease), true) = (self.lease, body_complete) {
            lease.release();
        }
    }
}
