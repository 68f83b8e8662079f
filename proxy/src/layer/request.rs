//! What travels down the route stack: the request as it enters, each attempt as the retry
//! layer hands it down, the future every layer returns, and how an attempt's result reads in
//! the policies' terms.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use http::HeaderValue;

use crate::{
    Body, ProxyError,
    policy::{Nanos, outcome::AttemptEnd},
    route_policy::Permit,
    snapshot::Route,
    upstream::{Exchange, RequestHead},
};

/// The future every layer returns.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<Exchange, ProxyError>> + Send>>;

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

/// How an attempt with this result ended, in the terms the policies decide by.
pub fn attempt_end(result: &Result<Exchange, ProxyError>) -> Option<AttemptEnd> {
    match result {
        Ok(exchange) => Some(AttemptEnd::Status(exchange.response.status().as_u16())),
        Err(error) => error.attempt_end(),
    }
}

/// The error of a request whose route deadline passed, wherever the deadline was kept (the
/// breaker layer's attempt timer, body buffering, a downstream fault).
pub(crate) fn route_timeout(route: &Route) -> ProxyError {
    ProxyError::Timeout(route.policy().timeout.map(|t| t.get()).unwrap_or_default())
}
