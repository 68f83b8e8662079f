//! The per-route tower stack of DESIGN §2, outer to inner:
//!
//! downstream fault -> rate limit -> concurrency -> timeout -> retry -> breaker ->
//! upstream fault -> upstream.
//!
//! Metrics, the rescue and the snapshot load happen around the stack in [`crate::service`]. Every layer is a zero-sized service: what it needs (the
//! route's compiled policy and its shared engine state) travels with the request, which carries
//! the [`Route`] of the one snapshot it loaded. So all the attempts of a request see one policy
//! version, and building the stack per request costs nothing.
//!
//! Layers never push back through `poll_ready` (always ready); they reject in `call` with a
//! typed error that the rescue turns into a response. Queuing silently inside a sidecar would
//! hide overload from the client and from the metrics.

/// Declares a layer's service (a wrapper around the inner service), its constructor and its
/// tower `Layer`: the same for every layer, so each layer's file holds only what it decides.
macro_rules! policy_layer {
    ($(#[$service_doc:meta])* $service:ident, $(#[$layer_doc:meta])* $layer:ident) => {
        $(#[$service_doc])*
        #[derive(Debug, Clone, Copy, Default)]
        pub struct $service<S> {
            inner: S,
        }

        $(#[$layer_doc])*
        #[derive(Debug, Clone, Copy, Default)]
        pub struct $layer;

        impl<S> $service<S> {
            /// Wraps `inner`.
            pub fn new(inner: S) -> Self {
                Self { inner }
            }
        }

        impl<S> tower::Layer<S> for $layer {
            type Service = $service<S>;

            fn layer(&self, inner: S) -> Self::Service {
                $service::new(inner)
            }
        }
    };
}

pub mod breaker;
pub mod concurrency;
pub mod fault;
pub mod rate_limit;
pub mod retry;
pub mod timeout;

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

use http::HeaderValue;
use tower::Service;

pub use breaker::{Breaker, BreakerLayer, BreakerOpen};
pub use concurrency::{Concurrency, ConcurrencyLayer, Shed};
pub use fault::{DownstreamFault, DownstreamFaultLayer, UpstreamFault, UpstreamFaultLayer};
pub use rate_limit::{RateLimit, RateLimitLayer, RateLimited};
pub use retry::{Retry, RetryLayer};
pub use timeout::{AttemptTimedOut, Timeout, TimeoutLayer};

use crate::{
    Body, ProxyError,
    policy::Nanos,
    route_policy::Permit,
    snapshot::Route,
    upstream::{Exchange, RequestHead},
};

/// The future every layer returns.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<Exchange, ProxyError>> + Send>>;

/// The whole route stack, DESIGN §2 order.
pub type RouteStack =
    DownstreamFault<RateLimit<Concurrency<Timeout<Retry<Breaker<UpstreamFault<Forward>>>>>>>;

/// A request as it enters the route stack.
#[derive(Debug)]
pub struct PolicyRequest {
    /// The matched route, from the snapshot the request loaded.
    pub route: Arc<Route>,
    /// The head to forward, shared by all attempts.
    pub head: Arc<RequestHead>,
    /// The request body.
    pub body: Body,
    /// The client's address (for `peer-ip` rate limits).
    pub client_ip: HeaderValue,
    /// When it arrived (the policy clock).
    pub arrived: Nanos,
    /// Whether its attempts go into the telemetry's sample ring.
    pub sampled: bool,
    /// The route's concurrency slot, taken by the concurrency layer and handed down to the
    /// response body that ends the request.
    pub permit: Option<Permit>,
    /// The whole-request deadline, stamped by the timeout layer.
    pub deadline: Option<Nanos>,
}

/// One attempt at the upstream, as the retry layer hands it down.
#[derive(Debug)]
pub struct Attempt {
    /// The route.
    pub route: Arc<Route>,
    /// The head to forward.
    pub head: Arc<RequestHead>,
    /// This attempt's body (a replay, or the streaming original on the first attempt).
    pub body: Body,
    /// 1 for the first attempt.
    pub number: u32,
    /// An endpoint to avoid (the one the previous attempt failed on), by index.
    pub avoid: Option<usize>,
    /// The attempt's own timeout.
    pub per_try_timeout: Option<Duration>,
    /// The whole-request deadline; the attempt ends at it too.
    pub deadline: Option<Nanos>,
    /// The endpoint chosen, by index; set by the breaker layer.
    pub endpoint: usize,
    /// Whether the attempt goes into the telemetry's sample ring.
    pub sampled: bool,
    /// The request's concurrency slot, on the attempt whose response will be relayed (the last
    /// one possible); the breaker layer puts it into the response body's guard.
    pub permit: Option<Permit>,
    /// Requests in flight on the route when the request was admitted (for the adaptive limit).
    pub in_flight: u32,
    /// When the attempt starts, if the caller just read the clock (0: read it).
    pub start: Nanos,
}

/// The innermost service: sends an attempt to the endpoint the breaker layer chose.
#[derive(Debug, Clone, Copy, Default)]
pub struct Forward;

/// The stack, ready to take one request.
pub fn stack() -> RouteStack {
    DownstreamFault::new(RateLimit::new(Concurrency::new(Timeout::new(Retry::new(
        Breaker::new(UpstreamFault::new(Forward)),
    )))))
}

/// The data plane's clock for the policy engines: nanoseconds since a fixed origin, read from
/// tokio's clock so tests with paused time drive the engines too.
pub fn now() -> Nanos {
    let elapsed = tokio::time::Instant::now()
        .into_std()
        .saturating_duration_since(origin());
    crate::policy::nanos(elapsed)
}

/// The tokio instant of `at` (a [`now`] reading): deadlines computed from a time already read
/// cost no further clock read.
pub fn instant(at: Nanos) -> tokio::time::Instant {
    tokio::time::Instant::from_std(origin() + Duration::from_nanos(at))
}

fn origin() -> std::time::Instant {
    static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
    *ORIGIN.get_or_init(|| {
        // An hour back, so a paused tokio clock that started a moment before this first call
        // still reads after the origin.
        let now = std::time::Instant::now();
        now.checked_sub(Duration::from_secs(3600)).unwrap_or(now)
    })
}

// === impl Forward ===

impl Service<Attempt> for Forward {
    type Response = Exchange;
    type Error = ProxyError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, attempt: Attempt) -> Self::Future {
        Box::pin(async move {
            let upstream = attempt.route.upstream();
            let endpoint = upstream
                .endpoints()
                .get(attempt.endpoint)
                .ok_or(ProxyError::BadRequest("endpoint is gone"))?;
            upstream.send(endpoint, &attempt.head, attempt.body).await
        })
    }
}
