//! The data plane's Prometheus metrics (DESIGN §6): names, descriptions, and per-route handles
//! resolved once per snapshot so the request path never hashes a label set.

use std::sync::{Arc, OnceLock};

use metrics::{Counter, counter, describe_counter, describe_gauge};

use crate::histogram::LatencyHistogram;
pub use crate::histogram::{LATENCY_BUCKETS, REQUEST_DURATION};

/// `rafael_requests_total{route,code}`.
pub const REQUESTS_TOTAL: &str = "rafael_requests_total";
/// `rafael_upstream_attempts_total{route,outcome}`.
pub const UPSTREAM_ATTEMPTS_TOTAL: &str = "rafael_upstream_attempts_total";
/// `rafael_connections_active{listener}`.
pub const CONNECTIONS_ACTIVE: &str = "rafael_connections_active";
/// `rafael_connections_total{listener}`.
pub const CONNECTIONS_TOTAL: &str = "rafael_connections_total";
/// `rafael_connection_limit_reached_total{listener}`.
pub const CONNECTION_LIMIT_REACHED_TOTAL: &str = "rafael_connection_limit_reached_total";
/// `rafael_connection_errors_total{listener,reason}`.
pub const CONNECTION_ERRORS_TOTAL: &str = "rafael_connection_errors_total";
/// `rafael_downstream_rejected_total{listener,reason}`.
pub const DOWNSTREAM_REJECTED_TOTAL: &str = "rafael_downstream_rejected_total";
/// `rafael_config_reloads_total{result}`.
pub const CONFIG_RELOADS_TOTAL: &str = "rafael_config_reloads_total";
/// `rafael_policy_version`.
pub const POLICY_VERSION: &str = "rafael_policy_version";

/// `rafael_retries_total{route}`.
pub const RETRIES_TOTAL: &str = "rafael_retries_total";
/// `rafael_retries_skipped_total{route,reason}`.
pub const RETRIES_SKIPPED_TOTAL: &str = "rafael_retries_skipped_total";
/// `rafael_circuit_breaker_state{route,endpoint}`: 0 closed, 1 half-open, 2 open.
pub const BREAKER_STATE: &str = "rafael_circuit_breaker_state";
/// `rafael_circuit_breaker_transitions_total{route,endpoint,to}`.
pub const BREAKER_TRANSITIONS_TOTAL: &str = "rafael_circuit_breaker_transitions_total";
/// `rafael_rate_limited_total{route}`.
pub const RATE_LIMITED_TOTAL: &str = "rafael_rate_limited_total";
/// `rafael_shed_total{route}`.
pub const SHED_TOTAL: &str = "rafael_shed_total";
/// `rafael_concurrency_limit{route}`: 0 when the route has no limit.
pub const CONCURRENCY_LIMIT: &str = "rafael_concurrency_limit";
/// `rafael_in_flight{route}`.
pub const IN_FLIGHT: &str = "rafael_in_flight";
/// `rafael_faults_injected_total{route,kind,stage}`.
pub const FAULTS_INJECTED_TOTAL: &str = "rafael_faults_injected_total";
/// `rafael_genome_generation{route}`.
pub const GENOME_GENERATION: &str = "rafael_genome_generation";

pub use crate::policy::{
    outcome::{ATTEMPT_OUTCOMES, AttemptOutcome},
    retry::{SKIP_REASONS, SkipReason},
};

/// The `route` label of requests no route took.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Registers HELP text for every data plane metric.
pub fn describe() {
    describe_counter!(
        REQUESTS_TOTAL,
        "Requests answered, by route and final status code (synthesized ones included)."
    );
    describe_counter!(
        UPSTREAM_ATTEMPTS_TOTAL,
        "Attempts sent to upstream endpoints, by route and outcome."
    );
    describe_gauge!(
        CONNECTIONS_ACTIVE,
        "Downstream connections open now, by listener."
    );
    describe_counter!(
        CONNECTIONS_TOTAL,
        "Downstream connections accepted, by listener."
    );
    describe_counter!(
        CONNECTION_LIMIT_REACHED_TOTAL,
        "Times a listener reached max_connections (idle connections were then closed to make room), by listener."
    );
    describe_counter!(
        CONNECTION_ERRORS_TOTAL,
        "Downstream connections that ended in an error, by listener and reason."
    );
    describe_counter!(
        DOWNSTREAM_REJECTED_TOTAL,
        "Requests rejected before routing, by listener and reason."
    );
    describe_counter!(
        CONFIG_RELOADS_TOTAL,
        "Config reloads, by result (success or error)."
    );
    describe_counter!(RETRIES_TOTAL, "Retries sent, by route.");
    describe_counter!(
        RETRIES_SKIPPED_TOTAL,
        "Retries a failed attempt qualified for but did not get, by route and reason."
    );
    describe_gauge!(
        BREAKER_STATE,
        "Circuit breaker state by route and endpoint: 0 closed, 1 half-open, 2 open."
    );
    describe_counter!(
        BREAKER_TRANSITIONS_TOTAL,
        "Circuit breaker state changes, by route, endpoint and new state."
    );
    describe_counter!(
        RATE_LIMITED_TOTAL,
        "Requests refused by the route's rate limit (429)."
    );
    describe_counter!(
        SHED_TOTAL,
        "Requests shed by the route's concurrency limit (503)."
    );
    describe_gauge!(
        CONCURRENCY_LIMIT,
        "The route's concurrency limit now (adaptive limits move); 0 when it has none."
    );
    describe_gauge!(IN_FLIGHT, "Requests in flight on the route now.");
    describe_counter!(
        FAULTS_INJECTED_TOTAL,
        "Faults injected into live traffic, by route, kind and stage."
    );
    describe_gauge!(
        GENOME_GENERATION,
        "How many times the route's genome changed since start, plus one."
    );
    describe_gauge!(
        POLICY_VERSION,
        "Version of the live snapshot; it grows with every reload or policy swap."
    );
}

/// Metric handles of one route.
#[derive(Debug)]
pub struct RouteMetrics {
    route: Arc<str>,
    duration: Arc<LatencyHistogram>,
    attempts: [Counter; 5],
    by_code: Box<[OnceLock<Counter>]>,
}

// === impl RouteMetrics ===

impl RouteMetrics {
    /// Handles for `route`.
    pub fn new(route: &str) -> Self {
        let route: Arc<str> = Arc::from(route);
        let attempts = ATTEMPT_OUTCOMES.map(|outcome| {
            counter!(UPSTREAM_ATTEMPTS_TOTAL, "route" => route.to_string(), "outcome" => outcome)
        });
        Self {
            duration: LatencyHistogram::for_route(&route),
            attempts,
            by_code: (100..600).map(|_| OnceLock::new()).collect(),
            route,
        }
    }

    /// Handles for requests no route took: they never reach an upstream, so no attempt counters.
    pub fn unmatched() -> Self {
        let route: Arc<str> = Arc::from(UNMATCHED_ROUTE);
        Self {
            duration: LatencyHistogram::for_route(UNMATCHED_ROUTE),
            attempts: std::array::from_fn(|_| Counter::noop()),
            by_code: (100..600).map(|_| OnceLock::new()).collect(),
            route,
        }
    }

    /// Counts a final response and its latency.
    pub fn record_response(&self, status: http::StatusCode, elapsed: std::time::Duration) {
        self.duration.record(elapsed);
        let code = status.as_u16();
        // `StatusCode` guarantees 100..=999; codes above 599 are counted without a cache.
        match self.by_code.get(usize::from(code).wrapping_sub(100)) {
            Some(slot) => slot.get_or_init(|| self.code_counter(code)).increment(1),
            None => self.code_counter(code).increment(1),
        }
    }

    /// Counts an upstream attempt.
    pub fn record_attempt(&self, outcome: AttemptOutcome) {
        self.attempts[outcome as usize].increment(1);
    }

    fn code_counter(&self, code: u16) -> Counter {
        counter!(REQUESTS_TOTAL, "route" => self.route.to_string(), "code" => code.to_string())
    }
}
