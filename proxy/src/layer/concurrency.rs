//! The concurrency layer: at most `max_in_flight` requests of the route in flight (or the
//! adaptive limit's current value); the excess is shed with [`Shed`] (503) at once. A slot is
//! held until the response body ends, and every route counts its requests in flight
//! (`rafael_in_flight`), limited or not. The adaptive limit learns from attempt latencies,
//! which the breaker layer measures.

use std::task::{Context, Poll};

use tower::Service;

use crate::{
    ProxyError,
    error::Shed,
    layer::request::{PolicyRequest, ResponseFuture},
    upstream::Exchange,
};

policy_layer!(
    /// The concurrency service.
    Concurrency,
    /// Its layer.
    ConcurrencyLayer
);

// === impl Concurrency ===

impl<S> Service<PolicyRequest> for Concurrency<S>
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
        let policy = request.route.live();
        let Some((permit, in_flight)) = policy.acquire() else {
            return Box::pin(std::future::ready(Err(Shed.into())));
        };
        policy.telemetry().in_flight(request.arrived, in_flight);
        // The slot travels with the request down to the response body that will hold it, which
        // saves this layer a future of its own.
        request.permit = Some(permit);
        self.inner.call(request)
    }
}
