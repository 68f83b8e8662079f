//! The rate limit layer: GCRA per route, or per client key (`header:NAME` or `peer-ip`).
//! Refused requests fail with [`RateLimited`], answered 429 with `Retry-After`; they never
//! reach the retry layer, so a rate-limit refusal is never retried.

use std::task::{Context, Poll};

use rafael_config::RateLimitKey;
use tower::Service;

use crate::{
    ProxyError,
    error::RateLimited,
    layer::request::{PolicyRequest, ResponseFuture},
    upstream::Exchange,
};

policy_layer!(
    /// The rate limit service.
    RateLimit,
    /// Its layer.
    RateLimitLayer
);

// === impl RateLimit ===

impl<S> Service<PolicyRequest> for RateLimit<S>
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
        let policy = request.route.live();
        if let Some(genes) = &policy.genome().rate_limit {
            let key = match &genes.key {
                None => None,
                Some(RateLimitKey::PeerIp) => Some(request.client_ip.as_bytes()),
                Some(RateLimitKey::Header(name)) => request
                    .head
                    .parts
                    .headers
                    .get(name.as_str())
                    .map(|v| v.as_bytes()),
            };
            if let Err(retry_after) = policy.admit_rate(key, request.arrived) {
                return Box::pin(std::future::ready(Err(RateLimited { retry_after }.into())));
            }
        }
        self.inner.call(request)
    }
}
