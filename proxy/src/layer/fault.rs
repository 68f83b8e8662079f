//! The fault layers of the Chaos Forge (DESIGN §2, steps 4 and 10): faults injected into live
//! traffic at one of two stages.
//!
//! - [`DownstreamFault`], outermost after the snapshot: what the client sees. The policies never
//!   see these faults, so nothing retries or breaks around them.
//! - [`UpstreamFault`], innermost before the upstream, per attempt: the upstream as the
//!   policies see it. Retries, breakers and timeouts react to these exactly as to real failures.
//!
//! A route without fault rules pays one pointer check per request. The first rule of the stage
//! that fires applies (one fault per request or attempt), and only while fewer than
//! `[chaos].max_active_faults` faults are in progress; a fault holds its slot until its effect
//! ends (a delay elapsed, a throttled or truncated body finished).

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use rafael_config::FaultStage;
use tower::Service;

pub use crate::faults::ExtraFaults;
use crate::{
    ProxyError,
    body::{Body, FaultedBody},
    clock,
    failure::UpstreamFailure,
    faults::ActiveFault,
    layer::request::{Attempt, PolicyRequest, ResponseFuture, route_timeout},
    policy::{
        Nanos,
        fault::{Effect, FaultKind, FaultRule, grpc_status},
        nanos,
    },
    snapshot::Route,
    upstream::Exchange,
};

policy_layer!(
    /// Faults the client sees.
    DownstreamFault,
    /// Its layer.
    DownstreamFaultLayer
);

policy_layer!(
    /// Faults each attempt meets, under the policies.
    UpstreamFault,
    /// Its layer.
    UpstreamFaultLayer
);

/// What injecting a fault turned into.
enum Injected {
    /// Wait this long, then go on, or reset (a stall's restart).
    Delay {
        /// How long.
        wait: std::time::Duration,
        /// Reset instead of going on.
        then_reset: bool,
    },
    /// Answer now with this (boxed: a fault is rare, and the answer is large).
    Abort(Box<Exchange>),
    /// Reset now.
    Reset,
    /// Go on, and wrap the response body.
    Body(FaultKind),
    /// Never answer.
    Blackhole,
}

/// What a fired rule does to this request (`FaultRule::effect`, the decision the simulator
/// makes too), in the data plane's terms.
fn inject(rule: &FaultRule, headers: &HeaderMap, in_flight: u32, now: Nanos) -> Injected {
    match rule.effect(in_flight, now, fastrand::f64()) {
        Effect::Delay { wait, then_reset } => Injected::Delay { wait, then_reset },
        Effect::Abort { status } => {
            let body = match &rule.kind {
                FaultKind::Abort { body, .. } => body.as_deref(),
                _ => None,
            };
            Injected::Abort(Box::new(aborted(status, body, headers)))
        }
        Effect::Reset => Injected::Reset,
        Effect::Body => Injected::Body(rule.kind.clone()),
        Effect::Blackhole => Injected::Blackhole,
    }
}

/// The injected answer: the status and body, or for a gRPC request a trailers-only response
/// whose `grpc-status` stands for the status.
fn aborted(status: u16, body: Option<&str>, headers: &HeaderMap) -> Exchange {
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let mut response = if grpc {
        let mut response = Response::new(Body::Empty);
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(
            "grpc-status",
            HeaderValue::from(u16::from(grpc_status(status))),
        );
        h.insert("grpc-message", HeaderValue::from_static("injected fault"));
        response
    } else {
        let mut response = Response::new(Body::full(Bytes::from(
            body.unwrap_or("injected fault").to_owned(),
        )));
        *response.status_mut() =
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        response
    };
    response
        .headers_mut()
        .insert("x-rafael-fault", HeaderValue::from_static("abort"));
    Exchange {
        response,
        upgraded: None,
        endpoint: 0,
        answered_at: 0,
        injected: true,
    }
}

/// Wraps the response body of `result` for a throttle or truncate fault.
fn wrap_body(
    result: Result<Exchange, ProxyError>,
    kind: FaultKind,
    slot: ActiveFault,
) -> Result<Exchange, ProxyError> {
    let mut exchange = result?;
    exchange.injected = true;
    let body = std::mem::take(exchange.response.body_mut());
    *exchange.response.body_mut() = Body::Faulted(Box::new(FaultedBody::new(body, &kind, slot)));
    Ok(exchange)
}

/// An upstream-stage reset of the attempt's endpoint: the error a connection reset by the
/// upstream gives, so retries and breakers treat it as one, marked injected for the telemetry.
/// (Downstream, a reset is [`ProxyError::InjectedReset`]: the client's connection or stream is
/// reset.)
fn upstream_reset(route: &Route, endpoint: usize) -> ProxyError {
    route.upstream().error_at(
        endpoint,
        UpstreamFailure::Injected,
        "reset by an injected fault",
    )
}

/// Waits until `deadline` (the route's), or forever without one, then answers 504.
async fn blackhole(
    route: Arc<Route>,
    deadline: Option<Nanos>,
    slot: ActiveFault,
) -> Result<Exchange, ProxyError> {
    match deadline {
        Some(at) => tokio::time::sleep_until(clock::instant(at)).await,
        None => std::future::pending::<()>().await,
    }
    drop(slot);
    Err(route_timeout(&route))
}

// === impl DownstreamFault ===

impl<S> Service<PolicyRequest> for DownstreamFault<S>
where
    S: Service<PolicyRequest, Response = Exchange, Error = ProxyError, Future = ResponseFuture>
        + Clone
        + Send
        + 'static,
{
    type Response = Exchange;
    type Error = ProxyError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: PolicyRequest) -> Self::Future {
        let route = request.route.clone();
        let Some(faults) = route.faults() else {
            return self.inner.call(request);
        };
        let Some((rule, slot)) = faults.pick(
            FaultStage::Downstream,
            request.head.targets,
            request.arrived,
        ) else {
            return self.inner.call(request);
        };
        // The downstream stage is outside the timeout layer: a blackhole here honours the
        // route's deadline itself.
        let deadline = route
            .policy()
            .timeout
            .map(|t| request.arrived.saturating_add(nanos(t.get())));
        let mut inner = self.inner.clone();
        // This request is not counted yet (the concurrency layer is further in): add it.
        let in_flight = route.live().in_flight() + 1;
        match inject(
            rule,
            &request.head.parts.headers,
            in_flight,
            request.arrived,
        ) {
            Injected::Delay { wait, then_reset } => Box::pin(async move {
                // Outside the timeout layer, the route's deadline is this stage's to keep.
                let until = request.arrived.saturating_add(nanos(wait));
                if let Some(at) = deadline.filter(|at| *at < until) {
                    tokio::time::sleep_until(clock::instant(at)).await;
                    drop(slot);
                    return Err(route_timeout(&route));
                }
                tokio::time::sleep(wait).await;
                drop(slot);
                if then_reset {
                    return Err(ProxyError::InjectedReset);
                }
                inner.call(request).await
            }),
            Injected::Abort(exchange) => Box::pin(std::future::ready(Ok(*exchange))),
            Injected::Reset => Box::pin(std::future::ready(Err(ProxyError::InjectedReset))),
            Injected::Body(kind) => {
                let response = inner.call(request);
                Box::pin(async move { wrap_body(response.await, kind, slot) })
            }
            Injected::Blackhole => Box::pin(blackhole(route, deadline, slot)),
        }
    }
}

// === impl UpstreamFault ===

impl<S> Service<Attempt> for UpstreamFault<S>
where
    S: Service<Attempt, Response = Exchange, Error = ProxyError, Future = ResponseFuture>
        + Clone
        + Send
        + 'static,
{
    type Response = Exchange;
    type Error = ProxyError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, attempt: Attempt) -> Self::Future {
        let route = attempt.route.clone();
        let Some(faults) = route.faults() else {
            return self.inner.call(attempt);
        };
        let now = clock::now();
        let Some((rule, slot)) = faults.pick(FaultStage::Upstream, attempt.head.targets, now)
        else {
            return self.inner.call(attempt);
        };
        let mut inner = self.inner.clone();
        let endpoint = attempt.endpoint;
        match inject(rule, &attempt.head.parts.headers, attempt.in_flight, now) {
            Injected::Delay { wait, then_reset } => Box::pin(async move {
                tokio::time::sleep(wait).await;
                drop(slot);
                if then_reset {
                    return Err(upstream_reset(&route, endpoint));
                }
                let mut exchange = inner.call(attempt).await?;
                exchange.injected = true;
                Ok(exchange)
            }),
            Injected::Abort(exchange) => Box::pin(std::future::ready(Ok(*exchange))),
            Injected::Reset => Box::pin(std::future::ready(Err(upstream_reset(&route, endpoint)))),
            Injected::Body(kind) => {
                let response = inner.call(attempt);
                Box::pin(async move { wrap_body(response.await, kind, slot) })
            }
            // The attempt's own deadline (per-try or route) ends it, in the breaker layer.
            Injected::Blackhole => Box::pin(async move {
                let _slot = slot;
                std::future::pending().await
            }),
        }
    }
}
