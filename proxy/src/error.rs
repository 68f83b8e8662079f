//! Typed errors of the request path, and the one rescue that turns them into responses.
//!
//! Each error knows which side failed, so the response and the metrics say whether the client,
//! the upstream or rafael itself was at fault.

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;

use crate::{
    Body,
    body::{BoxError, ClientBodyError, ClientBodyErrorKind},
    layer::{AttemptTimedOut, BreakerOpen, RateLimited, Shed},
    policy::outcome::AttemptEnd,
    upstream::Exchange,
};

/// Why rafael answered a request itself instead of relaying the upstream's response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route matched the request.
    #[error("no route matches {method} {path}")]
    NoRoute {
        /// Request method.
        method: http::Method,
        /// Request path.
        path: String,
    },
    /// The request head exceeded the listener's `max_header_bytes`.
    #[error("request header is {size} bytes, above the limit of {limit}")]
    HeadersTooLarge {
        /// Size of the head as received.
        size: usize,
        /// The listener's limit.
        limit: usize,
    },
    /// The request is not one a proxy can forward.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The client broke its own request body (malformed, abandoned, or too slow).
    #[error(transparent)]
    ClientBody(#[from] ClientBodyError),
    /// The request uses a feature rafael does not implement (a transfer coding, say).
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    /// No connection could be made to the chosen endpoint.
    #[error("upstream {upstream} endpoint {endpoint} is unreachable: {reason}")]
    Connect {
        /// Upstream name.
        upstream: String,
        /// Endpoint address.
        endpoint: String,
        /// What failed.
        reason: String,
    },
    /// Connecting to the endpoint took longer than its `connect_timeout`.
    #[error(
        "upstream {upstream} endpoint {endpoint} did not accept a connection within {timeout:?}"
    )]
    ConnectTimeout {
        /// Upstream name.
        upstream: String,
        /// Endpoint address.
        endpoint: String,
        /// The configured connect timeout.
        timeout: Duration,
    },
    /// The connection failed or was reset after the request was sent.
    #[error("upstream {upstream} endpoint {endpoint} failed: {reason}")]
    Upstream {
        /// Upstream name.
        upstream: String,
        /// Endpoint address.
        endpoint: String,
        /// What failed.
        reason: String,
    },
    /// The route's whole-request timeout elapsed.
    #[error("no response from upstream within the route timeout of {0:?}")]
    Timeout(Duration),
    /// One attempt exceeded the route's per-try timeout (and was not retried).
    #[error(transparent)]
    AttemptTimedOut(#[from] AttemptTimedOut),
    /// The route's rate limit refused the request.
    #[error(transparent)]
    RateLimited(#[from] RateLimited),
    /// The route's concurrency limit shed the request.
    #[error(transparent)]
    Shed(#[from] Shed),
    /// Every endpoint's circuit breaker is open.
    #[error(transparent)]
    BreakerOpen(#[from] BreakerOpen),
    /// A downstream-stage fault resets the client's connection (or stream): no response.
    #[error("connection reset by an injected fault")]
    InjectedReset,
}

#[derive(Serialize)]
struct ErrorDocument<'a> {
    error: &'a str,
    detail: String,
}

// === impl ProxyError ===

impl ProxyError {
    /// The status the client receives.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute { .. } => StatusCode::NOT_FOUND,
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Self::ClientBody(error) => match error.kind {
                ClientBodyErrorKind::TimedOut => StatusCode::REQUEST_TIMEOUT,
                ClientBodyErrorKind::Malformed | ClientBodyErrorKind::Aborted => {
                    StatusCode::BAD_REQUEST
                }
            },
            Self::Connect { .. } | Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Self::ConnectTimeout { .. } | Self::Timeout(_) | Self::AttemptTimedOut(_) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Shed(_) | Self::BreakerOpen(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::InjectedReset => StatusCode::BAD_GATEWAY,
        }
    }

    /// A stable machine-readable code, used as the JSON `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoRoute { .. } => "no_route",
            Self::HeadersTooLarge { .. } => "headers_too_large",
            Self::BadRequest(_) => "bad_request",
            Self::NotImplemented(_) => "not_implemented",
            Self::ClientBody(error) => match error.kind {
                ClientBodyErrorKind::Malformed => "malformed_body",
                ClientBodyErrorKind::Aborted => "incomplete_body",
                ClientBodyErrorKind::TimedOut => "body_timeout",
            },
            Self::Connect { .. } => "upstream_unreachable",
            Self::ConnectTimeout { .. } => "upstream_connect_timeout",
            Self::Upstream { .. } => "upstream_error",
            Self::Timeout(_) => "timeout",
            Self::AttemptTimedOut(_) => "attempt_timeout",
            Self::RateLimited(_) => "rate_limited",
            Self::Shed(_) => "overloaded",
            Self::BreakerOpen(_) => "circuit_open",
            Self::InjectedReset => "injected_reset",
        }
    }

    /// How the upstream attempt this error ended went, for errors that end one.
    pub fn attempt_end(&self) -> Option<AttemptEnd> {
        match self {
            Self::Connect { .. } => Some(AttemptEnd::ConnectFailure),
            Self::ConnectTimeout { .. } => Some(AttemptEnd::ConnectTimeout),
            Self::Timeout(_) => Some(AttemptEnd::RouteTimeout),
            Self::AttemptTimedOut(_) => Some(AttemptEnd::AttemptTimeout),
            Self::Upstream { .. } => Some(AttemptEnd::Reset),
            Self::NoRoute { .. }
            | Self::HeadersTooLarge { .. }
            | Self::BadRequest(_)
            | Self::NotImplemented(_)
            | Self::ClientBody(_)
            | Self::RateLimited(_)
            | Self::Shed(_)
            | Self::BreakerOpen(_)
            | Self::InjectedReset => None,
        }
    }

    /// The address of the endpoint that failed, for errors that concern one.
    pub fn endpoint(&self) -> Option<&str> {
        match self {
            Self::Connect { endpoint, .. }
            | Self::ConnectTimeout { endpoint, .. }
            | Self::Upstream { endpoint, .. } => Some(endpoint),
            _ => None,
        }
    }

    /// The rescue: a JSON error response `{"error": code, "detail": message}`.
    pub fn into_response(self) -> Response<Body> {
        let retry_after = match &self {
            // Whole seconds (RFC 9110 §10.2.3), rounded up so the client never comes back early.
            Self::RateLimited(limited) => Some(
                limited.retry_after.as_secs() + u64::from(limited.retry_after.subsec_nanos() > 0),
            ),
            _ => None,
        };
        let mut response = error_response(self.status(), self.code(), self.to_string());
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }
}

/// The first error of type `T` in `error`'s chain of sources, `error` itself included.
pub(crate) fn cause<'a, T: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    std::iter::successors(Some(error), |e| e.source()).find_map(|e| e.downcast_ref::<T>())
}

/// The error a request body that failed on its way (`error`) answers with: the client's own
/// failure when its body recorded one, else `otherwise`.
pub(crate) fn request_body_failed(error: &BoxError, otherwise: &'static str) -> ProxyError {
    match ClientBodyError::find(&**error) {
        Some(failure) => failure.clone().into(),
        None => ProxyError::BadRequest(otherwise),
    }
}

/// A JSON error response in the admin API's and the proxy's shared shape.
pub fn error_response(status: StatusCode, code: &str, detail: String) -> Response<Body> {
    let document = ErrorDocument {
        error: code,
        detail,
    };
    // Serializing a struct of two strings cannot fail; fall back to a fixed document anyway.
    let json = serde_json::to_vec(&document)
        .unwrap_or_else(|_| br#"{"error":"internal","detail":null}"#.to_vec());
    let mut response = Response::new(Body::full(json));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// How an attempt with this result ended, in the terms the policies decide by.
pub fn attempt_end(result: &Result<Exchange, ProxyError>) -> Option<AttemptEnd> {
    match result {
        Ok(exchange) => Some(AttemptEnd::Status(exchange.response.status().as_u16())),
        Err(error) => error.attempt_end(),
    }
}
