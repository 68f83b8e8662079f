//! The timeout layer: the route's whole-request deadline (`timeout`), every attempt and backoff
//! included, from the request entering the stack to the response head. It fails with
//! [`ProxyError::Timeout`] (504). The per-try deadline is applied by the breaker layer, which
//! has to count a timed-out attempt as a failure; it fails with [`AttemptTimedOut`].

use std::{
    task::{Context, Poll},
    time::Duration,
};

use tower::{Layer, Service};

use super::{PolicyRequest, ResponseFuture};
use crate::{ProxyError, upstream::Exchange};

/// The timeout service.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timeout<S> {
    inner: S,
}

/// Its layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct TimeoutLayer;

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

impl<S> Timeout<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout::new(inner)
    }
}

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

    fn call(&mut self, request: PolicyRequest) -> Self::Future {
        let timeout = request.route.live().genome().timeout;
        let inner = self.inner.call(request);
        match timeout {
            None => inner,
            Some(timeout) => Box::pin(async move {
                tokio::time::timeout(timeout.get(), inner)
                    .await
                    .unwrap_or(Err(ProxyError::Timeout(timeout.get())))
            }),
        }
    }
}
