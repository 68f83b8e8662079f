//! The timeout layer: the route's whole-request deadline (`timeout`), every attempt and backoff
//! included, from the request's arrival to the response head; past it the request fails with
//! [`ProxyError::Timeout`] (504).
//!
//! This layer stamps the deadline on the request, and the layers below keep it: the retry layer
//! bounds body buffering and backoff by it, and the breaker layer ends each attempt at the
//! earlier of the deadline and the attempt's `per_try_timeout` (failing with
//! [`crate::error::AttemptTimedOut`] when the per-try one came first), on the worker's
//! [`crate::deadline`] queue rather than a tokio timer per attempt (timers were most of what a
//! deadline cost). An attempt cut off by the
//! deadline counts against its endpoint's breaker like any other timeout when it had at least
//! half the route timeout to answer in.

use std::task::{Context, Poll};

use tower::Service;

use crate::{
    ProxyError,
    layer::request::{PolicyRequest, ResponseFuture},
    policy::nanos,
    upstream::Exchange,
};

policy_layer!(
    /// The timeout service.
    Timeout,
    /// Its layer.
    TimeoutLayer
);

// === impl Timeout ===

impl<S> Service<PolicyRequest> for Timeout<S>
where
    S: Service<PolicyRequest, Response = Exchange, Error = ProxyError, Future = ResponseFuture>,
{
    type Response = Exchange;
    type Error = ProxyError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: PolicyRequest) -> Self::Future {
        if let Some(timeout) = request.route.live().genome().timeout {
            request.deadline = Some(request.arrived.saturating_add(nanos(timeout.get())));
        }
        self.inner.call(request)
    }
}
