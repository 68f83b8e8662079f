//! The breaker layer: picks the attempt's endpoint by power of two choices among those whose
//! circuit breaker admits it (avoiding the endpoint the previous attempt failed on, when there
//! is another), applies the per-try timeout, and reports the attempt's outcome to the breaker
//! and to `rafael_upstream_attempts_total`. With every endpoint's breaker open the attempt fails
//! at once with [`BreakerOpen`] (503): shedding load is the point of an open breaker.

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tower::Service;

use super::{Attempt, AttemptTimedOut, ResponseFuture, now, retry::outcome_matches};
use crate::{
    ProxyError,
    body::Body,
    metrics::AttemptOutcome,
    policy::{
        breaker::{Admission, AttemptResult},
        nanos,
    },
    snapshot::Route,
    telemetry::AttemptSample,
    upstream::Exchange,
};

policy_layer!(
    /// The breaker service.
    Breaker,
    /// Its layer.
    BreakerLayer
);

/// Every endpoint of the route's upstream has its circuit breaker open.
#[derive(Debug, Clone, thiserror::Error)]
#[error("every endpoint of upstream {upstream} has its circuit breaker open")]
pub struct BreakerOpen {
    /// The upstream's name.
    pub upstream: String,
}

/// Reports an attempt abandoned mid-way (the client left, or the route deadline passed) to the
/// breaker, so a half-open probe slot is not lost.
struct Pending {
    route: Arc<Route>,
    endpoint: usize,
    probe: bool,
    finished: bool,
}

// === impl Breaker ===

impl<S> Service<Attempt> for Breaker<S>
where
    S: Service<Attempt, Response = Exchange, Error = ProxyError, Future = ResponseFuture>,
{
    type Response = Exchange;
    type Error = ProxyError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut attempt: Attempt) -> Self::Future {
        let route = attempt.route.clone();
        let policy = route.live();
        let upstream = route.upstream();
        let started_at = if attempt.start == 0 {
            now()
        } else {
            attempt.start
        };
        let breakers = policy.breakers();
        let chosen = if breakers.is_empty() {
            // The failed endpoint again, when it is the only one.
            upstream
                .pick_index(|i| Some(i) != attempt.avoid)
                .or(attempt.avoid)
        } else {
            let available = |i: usize| {
                policy
                    .breaker(i)
                    .is_some_and(|(params, breaker)| breaker.available(started_at, params))
            };
            upstream
                .pick_index(|i| Some(i) != attempt.avoid && available(i))
                .or_else(|| attempt.avoid.filter(|&i| available(i)))
        };
        let admission = chosen.map(|i| match policy.breaker(i) {
            Some((params, breaker)) => breaker.admit(started_at, params),
            None => Admission::Allowed,
        });
        let (endpoint, probe) = match (chosen, admission) {
            (Some(i), Some(Admission::Allowed)) => (i, false),
            (Some(i), Some(Admission::Probe)) => (i, true),
            _ => {
                let error = BreakerOpen {
                    upstream: upstream.name().to_owned(),
                };
                return Box::pin(std::future::ready(Err(error.into())));
            }
        };
        attempt.endpoint = endpoint;
        let in_flight = upstream.endpoints()[endpoint].begin();
        let number = attempt.number;
        let sampled = attempt.sampled;
        let in_flight_at_start = attempt.in_flight;
        let permit = attempt.permit.take();
        let per_try_timeout = attempt.per_try_timeout;
        let route_deadline = attempt.deadline;
        let inner = self.inner.call(attempt);
        Box::pin(async move {
            let mut pending = Pending {
                route,
                endpoint,
                probe,
                finished: false,
            };
            // One timer per attempt: the earlier of the per-try and the route deadline.
            let per_try = per_try_timeout.map(|t| started_at.saturating_add(nanos(t)));
            let deadline = match (per_try, route_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let result = match deadline {
                None => inner.await,
                Some(at) => tokio::time::timeout_at(super::instant(at), inner)
                    .await
                    .unwrap_or_else(|_| match (per_try_timeout, per_try) {
                        (Some(timeout), Some(per_try)) if Some(per_try) == deadline => {
                            Err(AttemptTimedOut {
                                attempt: number,
                                timeout,
                            }
                            .into())
                        }
                        _ => Err(super::retry::route_timeout(&pending.route)),
                    }),
            };
            let finished_at = now();
            let latency = Duration::from_nanos(finished_at.saturating_sub(started_at));
            let outcome = match &result {
                Ok(exchange) => Some(AttemptOutcome::of_status(exchange.response.status())),
                Err(error) => error.attempt_outcome(),
            };
            pending.finished = true;
            let route = &pending.route;
            let policy = route.live();
            if let Some(outcome) = outcome {
                route.metrics().record_attempt(outcome);
                let sample = AttemptSample {
                    start: started_at,
                    endpoint: u16::try_from(endpoint).unwrap_or(u16::MAX),
                    attempt: u8::try_from(number).unwrap_or(u8::MAX),
                    in_flight: in_flight_at_start,
                    latency: crate::policy::nanos(latency),
                    outcome: outcome as u8,
                    fault: false,
                };
                policy.telemetry().attempt(sample, sampled);
                if let Some((params, breaker)) = policy.breaker(endpoint) {
                    let failed = policy
                        .genome()
                        .circuit_breaker
                        .as_ref()
                        .is_some_and(|genes| {
                            genes
                                .failure_on
                                .iter()
                                .any(|condition| outcome_matches(condition, &result))
                        });
                    let result = if failed {
                        AttemptResult::Failure(latency)
                    } else {
                        AttemptResult::Success(latency)
                    };
                    breaker.record(finished_at, params, probe, result);
                }
                if outcome == AttemptOutcome::Success {
                    policy.sample_latency(finished_at, latency, in_flight_at_start);
                }
            }
            let mut exchange = result?;
            exchange.endpoint = endpoint;
            exchange.answered_at = finished_at;
            if let Body::Upstream { guard, .. } = exchange.response.body_mut() {
                guard.in_flight = Some(in_flight);
                guard.permit = permit;
            }
            Ok(exchange)
        })
    }
}

// === impl Pending ===

impl Drop for Pending {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let policy = self.route.live();
        if let Some((params, breaker)) = policy.breaker(self.endpoint) {
            breaker.record(now(), params, self.probe, AttemptResult::Cancelled);
        }
    }
}
