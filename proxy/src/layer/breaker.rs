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

use crate::{
    ProxyError,
    body::Body,
    clock, deadline,
    error::{AttemptTimedOut, BreakerOpen},
    layer::request::{Attempt, ResponseFuture, attempt_end, route_timeout},
    policy::{
        Nanos,
        breaker::{Admission, AttemptResult},
        choice::{self, Endpoints},
        nanos,
        outcome::{AttemptOutcome, charged},
    },
    route_policy::RoutePolicy,
    snapshot::Route,
    telemetry::AttemptSample,
    upstream::{Exchange, Upstream},
};

policy_layer!(
    /// The breaker service.
    Breaker,
    /// Its layer.
    BreakerLayer
);

/// Reports an attempt that ended without an outcome for the breaker (the client left, its body
/// failed, or the route deadline cut short an attempt that started late) as cancelled, so a
/// half-open probe slot is not lost.
struct Pending {
    route: Arc<Route>,
    endpoint: usize,
    admission: Admission,
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
        let upstream = route.upstream();
        let started_at = if attempt.start == 0 {
            clock::now()
        } else {
            attempt.start
        };
        let Some((endpoint, admission)) = choose(&route, attempt.avoid, started_at) else {
            let error = BreakerOpen {
                upstream: upstream.name().to_owned(),
            };
            return Box::pin(std::future::ready(Err(error.into())));
        };
        attempt.endpoint = endpoint;
        let (in_flight, on_endpoint) = upstream.endpoints()[endpoint].begin();
        let on_endpoint = u32::try_from(on_endpoint).unwrap_or(u32::MAX);
        let number = attempt.number;
        let sampled = attempt.sampled;
        let in_flight_at_start = attempt.in_flight;
        let permit = attempt.permit.take();
        let per_try_timeout = attempt.per_try_timeout;
        let route_deadline = attempt.deadline;
        // Made before the future, so an attempt dropped before it ever runs still gives back
        // what the breaker lent it.
        let mut pending = Pending {
            route,
            endpoint,
            admission,
            finished: false,
        };
        let inner = self.inner.call(attempt);
        Box::pin(async move {
            // One deadline per attempt: the earlier of the per-try and the route deadline, on
            // the worker's deadline queue rather than a timer of its own.
            let per_try = per_try_timeout.map(|t| started_at.saturating_add(nanos(t)));
            let ends_at = match (per_try, route_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let result = match ends_at {
                None => inner.await,
                Some(at) => deadline::within(at, inner).await.unwrap_or_else(|_| {
                    match (per_try_timeout, per_try) {
                        (Some(timeout), Some(per_try)) if Some(per_try) == ends_at => {
                            Err(AttemptTimedOut {
                                attempt: number,
                                timeout,
                            }
                            .into())
                        }
                        _ => Err(route_timeout(&pending.route)),
                    }
                }),
            };
            let finished_at = clock::now();
            let latency = Duration::from_nanos(finished_at.saturating_sub(started_at));
            let end = attempt_end(&result);
            let route_timeout = pending.route.policy().timeout.map(|t| t.get());
            let fair_share = match (end, route_timeout) {
                (Some(end), Some(timeout)) => charged(end, started_at, route_deadline, timeout),
                _ => true,
            };
            let outcome = end.map(|end| end.outcome());
            let route = pending.route.clone();
            let policy = route.live();
            if outcome.is_some() && fair_share {
                pending.finished = true;
            }
            if let Some(outcome) = outcome {
                route.metrics().record_attempt(outcome);
                let sample = AttemptSample {
                    start: started_at,
                    endpoint: u16::try_from(endpoint).unwrap_or(u16::MAX),
                    attempt: u8::try_from(number).unwrap_or(u8::MAX),
                    in_flight: on_endpoint,
                    latency: crate::policy::nanos(latency),
                    outcome: outcome as u8,
                    status_5xx: match end {
                        Some(crate::policy::outcome::AttemptEnd::Status(status))
                            if status >= 500 =>
                        {
                            Some(status)
                        }
                        _ => None,
                    },
                    fault: match &result {
                        Ok(exchange) => exchange.injected,
                        Err(error) => error.is_injected(),
                    },
                };
                policy.telemetry().attempt(sample, sampled);
                if let (Some((params, breaker)), Some(genes), Some(end)) = (
                    policy.breaker(endpoint).filter(|_| fair_share),
                    policy.genome().circuit_breaker.as_ref(),
                    end,
                ) {
                    breaker.record(
                        finished_at,
                        params,
                        admission,
                        end.breaker_result(genes, latency),
                    );
                }
                if outcome == AttemptOutcome::Success {
                    policy.sample_latency(finished_at, latency, in_flight_at_start);
                }
            }
            // An attempt that ended without an outcome for the breaker (a client body that
            // failed, say) is reported as cancelled when `pending` drops here.
            drop(pending);
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

/// Picks the attempt's endpoint and has its breaker admit it (`rafael_policy::choice`, the
/// same choice the simulator makes). `None` when no breaker admits.
fn choose(route: &Route, avoid: Option<usize>, now: Nanos) -> Option<(usize, Admission)> {
    let mut endpoints = LiveEndpoints {
        policy: route.live(),
        upstream: route.upstream(),
    };
    choice::choose(&mut endpoints, avoid, now, &mut |n| fastrand::usize(..n))
}

/// A route's endpoints as the choice reads them: the upstream's in-flight counts and the
/// route's breakers.
struct LiveEndpoints<'a> {
    policy: &'a RoutePolicy,
    upstream: &'a Upstream,
}

impl Endpoints for LiveEndpoints<'_> {
    fn count(&self) -> usize {
        self.upstream.endpoints().len()
    }

    fn load(&self, i: usize) -> usize {
        self.upstream.endpoints()[i].in_flight()
    }

    fn has_breakers(&self) -> bool {
        !self.policy.breakers().is_empty()
    }

    fn available(&self, i: usize, now: Nanos) -> bool {
        self.policy
            .breaker(i)
            .is_some_and(|(params, breaker)| breaker.available(now, params))
    }

    fn admit(&mut self, i: usize, now: Nanos) -> Admission {
        match self.policy.breaker(i) {
            Some((params, breaker)) => breaker.admit(now, params),
            None => Admission::Refused,
        }
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
            breaker.record(
                clock::now(),
                params,
                self.admission,
                AttemptResult::Cancelled,
            );
        }
    }
}
