//! The timeout layer: the route's whole-request deadline (`timeout`), every attempt and backoff
//! included, from the request's arrival to the response head; past it the request fails with
//! [`ProxyError::Timeout`] (504).
//!
//! This layer stamps the deadline on the request, and the layers below keep it: the retry layer
//! bounds body buffering and backoff by it, and the breaker layer ends each attempt at the
//! earlier of the deadline and the attempt's `per_try_timeout` (failing with
//! [`AttemptTimedOut`] when the per-try one came first). So a request pays for one timer
//! whatever its policies (timers are most of what a deadline costs). An attempt cut off by the
//! deadline counts against its endpoint's breaker like any other timeout when it had at least
//! half the route timeout to answer in.

use std::{
    task::{Context, Poll},
    time::Duration,
};

use tower::Service;

use super::{PolicyRequest, ResponseFuture};
use crate::{ProxyError, policy::nanos, upstream::Exchange};

policy_layer!(
    /// The timeout service.
    Timeout,
    /// Its layer.
    TimeoutLayer
);

/// One attempt took longer than the route's `per_try_timeout`.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("attempt {attempt} had no response within the per-try timeout of {timeout:?}")]
pub struct AttemptTimedOut {
    /// The attempt number.
    pub attempt: u32,
    /// The per-try timeout.
    pub timeout: Duration,
}

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

/// The error of a request whose route deadline passed, wherever the deadline was kept (the
/// breaker layer's attempt timer, body buffering, a downstream fault).
pub(crate) fn route_timeout(route: &crate::snapshot::Route) -> ProxyError {
    ProxyError::Timeout(route.policy().timeout.map(|t| t.get()).unwrap_or_default())
}
