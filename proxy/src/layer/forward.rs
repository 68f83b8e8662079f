//! The innermost service of the route stack: the attempt goes to its endpoint.

use std::task::{Context, Poll};

use tower::Service;

use crate::{
    ProxyError,
    layer::request::{Attempt, ResponseFuture},
    upstream::Exchange,
};

/// The innermost service: sends an attempt to the endpoint the breaker layer chose.
#[derive(Debug, Clone, Copy, Default)]
pub struct Forward;

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
