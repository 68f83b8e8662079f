//! The per-route tower stack of DESIGN §2, outer to inner:
//!
//! downstream fault -> rate limit -> concurrency -> timeout -> retry -> breaker ->
//! upstream fault -> upstream.
//!
//! DESIGN §2's steps 1 to 3 happen around the stack, in [`crate::service::proxy`]: the
//! metrics (its `finish`), the rescue ([`crate::ProxyError::into_response`]) and the snapshot
//! load. Every layer is a zero-sized service: what it needs (the
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
pub mod forward;
pub mod rate_limit;
pub mod request;
pub mod retry;
pub mod timeout;

pub use breaker::{Breaker, BreakerLayer};
pub use concurrency::{Concurrency, ConcurrencyLayer};
pub use fault::{DownstreamFault, DownstreamFaultLayer, UpstreamFault, UpstreamFaultLayer};
pub use forward::Forward;
pub use rate_limit::{RateLimit, RateLimitLayer};
pub use request::{Attempt, PolicyRequest, ResponseFuture};
pub use retry::{Retry, RetryLayer};
pub use timeout::{Timeout, TimeoutLayer};

pub use crate::{
    clock::{instant, now},
    error::{AttemptTimedOut, BreakerOpen, RateLimited, Shed},
};

/// The whole route stack, DESIGN §2 order.
pub type RouteStack =
    DownstreamFault<RateLimit<Concurrency<Timeout<Retry<Breaker<UpstreamFault<Forward>>>>>>>;

/// The stack, ready to take one request.
pub fn stack() -> RouteStack {
    DownstreamFault::new(RateLimit::new(Concurrency::new(Timeout::new(Retry::new(
        Breaker::new(UpstreamFault::new(Forward)),
    )))))
}
