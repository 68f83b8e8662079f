//! The retry layer: budgeted retries with full-jitter backoff.
//!
//! Whether and when to retry is decided by `rafael_policy::retry::decide`, the same function
//! the simulator runs; this layer feeds it and carries the decision out.
//!
//! Bodies that may be retried are read into a replay buffer before the first attempt, up to
//! `max_replay_bytes`; a body that turns out larger is sent once, what was read followed by
//! the rest. The next attempt prefers an endpoint other than the one that just failed.

use std::{
    collections::VecDeque,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http::{Method, header::RETRY_AFTER};
use http_body::Body as _;
use http_body_util::BodyExt;
use tower::Service;

use crate::{
    ProxyError,
    body::Body,
    clock,
    error::request_body_failed,
    layer::request::{Attempt, PolicyRequest, ResponseFuture, attempt_end, route_timeout},
    policy::retry::{AfterAttempt, Retry as Decision, decide, qualifies},
    upstream::Exchange,
};

policy_layer!(
    /// The retry service.
    Retry,
    /// Its layer.
    RetryLayer
);

/// What later attempts can send.
#[derive(Debug)]
enum Replay {
    /// The request has no body.
    Empty,
    /// The whole body, read before the first attempt.
    Bytes(Bytes),
    /// The body was over `max_replay_bytes`: it can be sent once only.
    TooLarge,
}

// === impl Retry ===

impl<S> Service<PolicyRequest> for Retry<S>
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

    fn call(&mut self, request: PolicyRequest) -> Self::Future {
        if request.route.live().genome().retry.is_none() {
            let in_flight = request.route.live().in_flight();
            return self.inner.call(Attempt {
                route: request.route,
                head: request.head,
                body: request.body,
                number: 1,
                avoid: None,
                per_try_timeout: None,
                deadline: request.deadline,
                endpoint: 0,
                sampled: request.sampled,
                in_flight,
                start: request.arrived,
                permit: request.permit,
            });
        }
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let PolicyRequest {
                route,
                head,
                body,
                arrived,
                sampled,
                mut permit,
                deadline,
                ..
            } = request;
            let in_flight = route.live().in_flight();
            let policy = route.live();
            let Some(genes) = policy.genome().retry.as_ref() else {
                return Err(ProxyError::BadRequest("retry policy is gone"));
            };
            policy.deposit(arrived);
            let idempotent = is_idempotent(&head.parts.method);
            let may_retry = genes.max_attempts > 1 && (idempotent || genes.retry_non_idempotent);
            let buffered = may_retry && !body.is_end_stream();
            let (first_body, replay) = if !may_retry {
                (body, Replay::TooLarge)
            } else if body.is_end_stream() {
                (Body::Empty, Replay::Empty)
            } else {
                // Boxed: only requests with a body wait here, and the buffering future would
                // otherwise make every request's retry future larger.
                let limit = usize::try_from(genes.max_replay_bytes.bytes()).unwrap_or(usize::MAX);
                let buffering = Box::pin(buffer(body, limit));
                match deadline {
                    None => buffering.await?,
                    Some(at) => tokio::time::timeout_at(clock::instant(at), buffering)
                        .await
                        .map_err(|_| route_timeout(&route))??,
                }
            };
            let mut first_body = Some(first_body);
            let mut avoid = None;
            let mut number = 1;
            loop {
                let body = match (first_body.take(), &replay) {
                    (Some(body), _) => body,
                    (None, Replay::Bytes(bytes)) => Body::full(bytes.clone()),
                    (None, _) => Body::Empty,
                };
                let result = inner
                    .call(Attempt {
                        route: route.clone(),
                        head: head.clone(),
                        body,
                        number,
                        avoid,
                        per_try_timeout: genes.per_try_timeout.map(|t| t.get()),
                        deadline,
                        endpoint: 0,
                        sampled,
                        in_flight,
                        // A first attempt that did not wait for a body starts at arrival.
                        start: if number == 1 && !buffered { arrived } else { 0 },
                        permit: None,
                    })
                    .await;
                let end = attempt_end(&result);
                if !qualifies(genes, end, number) {
                    // Most answers: nothing more to read (no clock, no header lookup).
                    return hold(result, permit.take());
                }
                let after = AfterAttempt {
                    end,
                    attempt: number,
                    idempotent,
                    replayable: !matches!(replay, Replay::TooLarge),
                    retry_after: result.as_ref().ok().and_then(retry_after),
                    deadline,
                    now: clock::now(),
                    random: fastrand::f64(),
                };
                let wait = match decide(genes, &after, |at| policy.withdraw(at)) {
                    Decision::After(wait) => wait,
                    Decision::Relay => return hold(result, permit.take()),
                    Decision::Skip(reason) => {
                        policy.skip(reason);
                        return hold(result, permit.take());
                    }
                };
                avoid = match &result {
                    Ok(exchange) => Some(exchange.endpoint),
                    Err(error) => error.endpoint_index(),
                };
                // The failed response (and its connection) goes before the wait.
                drop(result);
                // Boxed for the same reason: only a retry waits. The deadline was checked above.
                Box::pin(tokio::time::sleep(wait)).await;
                number += 1;
            }
        })
    }
}

/// Puts the request's concurrency slot into the guard of the response that will be relayed.
fn hold(
    result: Result<Exchange, ProxyError>,
    permit: Option<crate::route_policy::Permit>,
) -> Result<Exchange, ProxyError> {
    let mut exchange = result?;
    if let Body::Upstream { guard, .. } = exchange.response.body_mut() {
        guard.permit = permit;
    }
    Ok(exchange)
}

/// RFC 9110 §9.2.2: the methods whose repetition has the effect of one request.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The wait a `Retry-After` field asks for (delta-seconds or an HTTP date).
fn retry_after(exchange: &Exchange) -> Option<Duration> {
    let value = exchange
        .response
        .headers()
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?;
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(
        date.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// Reads a body that may be retried into memory, up to `limit` bytes.
async fn buffer(mut body: Body, limit: usize) -> Result<(Body, Replay), ProxyError> {
    if body.is_end_stream() {
        return Ok((Body::Empty, Replay::Empty));
    }
    if body.size_hint().lower() > limit as u64 {
        return Ok((body, Replay::TooLarge));
    }
    let mut frames = VecDeque::new();
    let mut size = 0;
    loop {
        match body.frame().await {
            None => break,
            Some(Err(error)) => {
                tracing::debug!(%error, "request body failed while buffering it for replay");
                return Err(request_body_failed(
                    &error,
                    "the request body ended in an error",
                ));
            }
            Some(Ok(frame)) => {
                let trailers = frame.is_trailers();
                size += frame.data_ref().map_or(0, Bytes::len);
                frames.push_back(frame);
                if size > limit || trailers {
                    // Sent once: what was read, then the rest. Trailers are not replayed.
                    let body = Body::Prefixed {
                        frames,
                        rest: Box::new(body),
                    };
                    return Ok((body, Replay::TooLarge));
                }
            }
        }
    }
    let mut bytes = BytesMut::with_capacity(size);
    for frame in frames {
        if let Ok(data) = frame.into_data() {
            bytes.extend_from_slice(&data);
        }
    }
    let bytes = bytes.freeze();
    Ok((Body::full(bytes.clone()), Replay::Bytes(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotent_methods_follow_rfc_9110() {
        for method in [Method::GET, Method::HEAD, Method::PUT, Method::DELETE] {
            assert!(is_idempotent(&method), "{method}");
        }
        for method in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!is_idempotent(&method), "{method}");
        }
    }
}
