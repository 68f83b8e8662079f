//! Typed errors of the request path, and the one rescue that turns them into responses.
//!
//! Each error knows which side failed, so the response and the metrics say whether the client,
//! the upstream or rafael itself was at fault.

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;

use crate::{
    Body,
    body::{ClientBodyError, ClientBodyErrorKind},
    failure::{BoxError, Retryable, Side, UpstreamFailure},
    policy::outcome::AttemptEnd,
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
        /// The endpoint's place in the upstream's list.
        index: usize,
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
        /// The endpoint's place in the upstream's list.
        index: usize,
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
        /// The endpoint's place in the upstream's list.
        index: usize,
        /// How it failed.
        failure: UpstreamFailure,
        /// What failed, in words.
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

/// One attempt took longer than the route's `per_try_timeout`.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("attempt {attempt} had no response within the per-try timeout of {timeout:?}")]
pub struct AttemptTimedOut {
    /// The attempt number.
    pub attempt: u32,
    /// The per-try timeout.
    pub timeout: Duration,
}

/// The route (or this client's key) is over its rate.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("rate limit exceeded; retry after {retry_after:?}")]
pub struct RateLimited {
    /// When the same request would be admitted.
    pub retry_after: Duration,
}

/// The route is at its concurrency limit.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("route is at its concurrency limit")]
pub struct Shed;

/// Every endpoint of the route's upstream has its circuit breaker open.
#[derive(Debug, Clone, thiserror::Error)]
#[error("every endpoint of upstream {upstream} has its circuit breaker open")]
pub struct BreakerOpen {
    /// The upstream's name.
    pub upstream: String,
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

    /// Which side failed: the client, the upstream, or rafael (a policy's refusal or an
    /// injected fault).
    pub fn side(&self) -> Side {
        match self {
            Self::NoRoute { .. }
            | Self::HeadersTooLarge { .. }
            | Self::BadRequest(_)
            | Self::ClientBody(_)
            | Self::NotImplemented(_) => Side::Client,
            Self::Upstream {
                failure: UpstreamFailure::Injected,
                ..
            }
            | Self::RateLimited(_)
            | Self::Shed(_)
            | Self::BreakerOpen(_)
            | Self::InjectedReset => Side::Proxy,
            Self::Connect { .. }
            | Self::ConnectTimeout { .. }
            | Self::Upstream { .. }
            | Self::Timeout(_)
            | Self::AttemptTimedOut(_) => Side::Upstream,
        }
    }

    /// Whether the attempt this error ended may be sent again. The route's retry policy
    /// decides whether it is (`rafael_policy::retry`); this says what is safe.
    pub fn retryable(&self) -> Retryable {
        match self {
            Self::Connect { .. } | Self::ConnectTimeout { .. } => Retryable::Unsent,
            Self::Upstream { .. } | Self::AttemptTimedOut(_) => Retryable::IfIdempotent,
            Self::NoRoute { .. }
            | Self::HeadersTooLarge { .. }
            | Self::BadRequest(_)
            | Self::ClientBody(_)
            | Self::NotImplemented(_)
            | Self::Timeout(_)
            | Self::RateLimited(_)
            | Self::Shed(_)
            | Self::BreakerOpen(_)
            | Self::InjectedReset => Retryable::No,
        }
    }

    /// True when a fault of the Chaos Forge made this error (for the telemetry's samples).
    pub fn is_injected(&self) -> bool {
        matches!(
            self,
            Self::InjectedReset
                | Self::Upstream {
                    failure: UpstreamFailure::Injected,
                    ..
                }
        )
    }

    /// The index of the endpoint that failed in its upstream's list, for errors that concern
    /// one.
    pub fn endpoint_index(&self) -> Option<usize> {
        match self {
            Self::Connect { index, .. }
            | Self::ConnectTimeout { index, .. }
            | Self::Upstream { index, .. } => Some(*index),
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
