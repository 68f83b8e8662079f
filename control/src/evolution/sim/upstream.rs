//! The upstream as the simulator sees it: one worker pool per endpoint.
//!
//! An endpoint with a fitted capacity serves `concurrency` attempts at once and queues the
//! rest first in, first out, as a worker-pool server (gunicorn, a JVM thread pool, a
//! connection-limited database) does; without a fitted capacity it never queues, and a run
//! that loads it past what was observed is marked extrapolated. Each attempt's service time is
//! log-normal through the fitted p50 and p99, scaled by the regime in force; it fails with the
//! endpoint's failure probability at that moment (healthy, in a burst, or in an outage regime),
//! answering the fitted failure status (or a reset) after the failures' own latency. With
//! abandoned work, an attempt rafael gave up on keeps its worker until it would have finished.

use std::collections::VecDeque;

use rand::{RngExt, SeedableRng, rngs::Xoshiro256PlusPlus};
use rand_distr::{Distribution, Exp, StandardNormal};

use super::{Run, arrivals::window_offset};
use crate::evolution::model::{EndpointModel, RegimeKind};
use rafael_proxy::policy::Nanos;

const SECOND: f64 = 1e9;
const MILLI: f64 = 1e6;
/// z of the 99th percentile of the standard normal distribution.
pub(crate) const Z99: f64 = 2.326_347_874;
/// Tells the upstream stream's seeds from the other streams'.
const STREAM: u64 = 0x7570_7374_7265_616d;

/// The upstream's timelines for one run: failure bursts per endpoint and the regimes in force,
/// fixed per seed so every genome meets the same ones.
#[derive(Debug, Clone, Default)]
pub struct Timelines {
    /// Per endpoint, the bursts as `(start, end)`, sorted.
    bursts: Vec<Vec<(Nanos, Nanos)>>,
    /// The regimes' periods in force during the run, by start.
    regimes: Vec<Span>,
}

/// One period of a regime, in the run's time.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Span {
    /// The endpoint it concerns; `None` for all.
    endpoint: Option<usize>,
    start: Nanos,
    end: Nanos,
    /// Service time factor.
    factor: f64,
    /// Least failure probability.
    failure_rate: f64,
    /// The period's own distribution, as the log-normal's `(mu, sigma)` in nanoseconds.
    own: Option<(f64, f64)>,
}

/// One endpoint, compiled for the run.
#[derive(Debug, Clone)]
pub struct Shape {
    /// ln of the service time's median (nanoseconds).
    mu: f64,
    /// The log-normal's sigma.
    sigma: f64,
    /// ln of the failures' median latency (nanoseconds).
    failure_mu: f64,
    /// Spread of a failure's latency (the successes' when the model has none of its own).
    failure_sigma: f64,
    healthy_rate: f64,
    burst_rate: f64,
    /// The status a failure answers with; `None`: the connection is reset.
    pub failure_status: Option<u16>,
    /// Workers; `None`: never queues.
    pub workers: Option<u32>,
    /// Attempts rafael gave up on keep their worker.
    pub abandoned_work: bool,
    /// Most attempts in flight the model saw on this endpoint.
    pub observed_peak: u32,
}

/// What the upstream will do with one attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Draw {
    /// Time it holds a worker.
    pub service: Nanos,
    /// Whether it fails.
    pub fails: bool,
}

/// One endpoint's worker pool.
#[derive(Debug, Clone, Default)]
pub struct Server {
    /// Workers busy, abandoned work included.
    pub busy: u32,
    /// Jobs waiting for a worker, oldest first.
    pub queue: VecDeque<u32>,
    /// Attempts rafael has in flight here (its own view: what power of two choices reads).
    pub in_flight: usize,
}

// === impl Timelines ===

impl Timelines {
    /// The bursts and regimes of `run`.
    pub fn generate(run: &Run<'_>) -> Self {
        let end = run.duration.as_secs_f64() * SECOND;
        let bursts = run
            .model
            .endpoints
            .iter()
            .enumerate()
            .map(|(index, endpoint)| {
                let failure = &endpoint.failure;
                // The fit finds outages in the same degraded seconds that make the bursts: a
                // scenario that replays the outages where they were draws no bursts besides.
                let replayed = run.scenario.replays_regimes()
                    && run
                        .model
                        .regimes
                        .iter()
                        .any(|r| r.kind == RegimeKind::Outage);
                if replayed || failure.mean_burst_secs <= 0.0 || failure.mean_healthy_secs <= 0.0 {
                    return Vec::new();
                }
                let seed = run.seed ^ STREAM ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
                let (Ok(healthy), Ok(burst)) = (
                    Exp::new(1.0 / (failure.mean_healthy_secs * SECOND)),
                    Exp::new(1.0 / (failure.mean_burst_secs * SECOND)),
                ) else {
                    return Vec::new();
                };
                let mut spans = Vec::new();
                let mut at = healthy.sample(&mut rng);
                while at < end {
                    let length = burst.sample(&mut rng);
                    spans.push((at as Nanos, (at + length) as Nanos));
                    at += length + healthy.sample(&mut rng);
                }
                spans
            })
            .collect();
        let mut regimes = Vec::new();
        if run.scenario.replays_regimes() {
            let offset = f64::from(window_offset(run)) * SECOND;
            for regime in &run.model.regimes {
                for period in &regime.periods {
                    let start = f64::from(period.start_sec) * SECOND - offset;
                    let stop = start + f64::from(period.secs) * SECOND;
                    if stop > 0.0 && start < end {
                        let own = period.service_time.map(|t| log_normal(t.p50_ms, t.p99_ms));
                        let endpoint = regime.endpoint.as_ref().and_then(|address| {
                            run.model
                                .endpoints
                                .iter()
                                .position(|e| &e.endpoint == address)
                        });
                        regimes.push(Span {
                            endpoint,
                            start: start.max(0.0) as Nanos,
                            end: stop as Nanos,
                            factor: regime.service_time_factor.max(0.0),
                            failure_rate: regime.failure_rate.clamp(0.0, 1.0),
                            own,
                        });
                    }
                }
            }
            regimes.sort_by_key(|r| r.start);
        }
        Self { bursts, regimes }
    }

    /// The service time factor, the least failure rate and the first own distribution in
    /// force on `endpoint` at `at`.
    fn regime(&self, endpoint: usize, at: Nanos) -> (f64, f64, Option<(f64, f64)>) {
        self.regimes
            .iter()
            .take_while(|r| r.start <= at)
            .filter(|r| at < r.end && r.endpoint.is_none_or(|e| e == endpoint))
            .fold((1.0, 0.0, None), |(factor, rate, own), r| {
                (
                    factor * r.factor,
                    f64::max(rate, r.failure_rate),
                    own.or(r.own),
                )
            })
    }

    fn in_burst(&self, endpoint: usize, at: Nanos) -> bool {
        let Some(spans) = self.bursts.get(endpoint) else {
            return false;
        };
        let next = spans.partition_point(|span| span.0 <= at);
        next > 0 && at < spans[next - 1].1
    }
}

/// The log-normal `(mu, sigma)` (nanoseconds) through a p50 and a p99 in milliseconds.
pub fn log_normal(p50_ms: f64, p99_ms: f64) -> (f64, f64) {
    let p50 = (p50_ms * MILLI).max(1.0);
    let p99 = (p99_ms * MILLI).max(p50);
    (p50.ln(), ((p99 / p50).ln() / Z99).max(0.0))
}

// === impl Shape ===

impl Shape {
    /// Compiles `model`'s figures.
    pub fn new(model: &EndpointModel) -> Self {
        let (mu, sigma) = log_normal(model.service_time.p50_ms, model.service_time.p99_ms);
        let p50 = mu.exp();
        let failure_p50 = if model.failure.latency_p50_ms > 0.0 {
            model.failure.latency_p50_ms * MILLI
        } else {
            p50
        };
        let failure_sigma =
            if model.failure.latency_p50_ms > 0.0 && model.failure.latency_p99_ms > 0.0 {
                log_normal(model.failure.latency_p50_ms, model.failure.latency_p99_ms).1
            } else {
                sigma
            };
        let workers = model
            .capacity
            .map(|c| c.concurrency.round().max(1.0).min(f64::from(u32::MAX)) as u32);
        // Whole workers at the fitted service time serve `workers / mean` a second, which a
        // fractional fitted concurrency (4.06) misses by a few percent; how fast a queue grows
        // past the knee depends on exactly that, so service times are scaled (within a
        // quarter) to serve the fitted saturated throughput.
        let scale = match (workers, model.capacity) {
            (Some(workers), Some(capacity)) if capacity.throughput_per_sec > 0.0 => {
                let mean_secs = p50 * (sigma * sigma / 2.0).exp() / SECOND;
                (f64::from(workers) / (capacity.throughput_per_sec * mean_secs)).clamp(0.8, 1.25)
            }
            _ => 1.0,
        };
        let observed_peak = model.by_load.iter().map(|b| b.in_flight).max().unwrap_or(0);
        Self {
            mu: (p50 * scale).ln(),
            sigma,
            failure_mu: (failure_p50 * scale).max(1.0).ln(),
            failure_sigma,
            healthy_rate: model.failure.healthy_rate.clamp(0.0, 1.0),
            burst_rate: model.failure.burst_rate.clamp(0.0, 1.0),
            failure_status: model.failure.status,
            workers,
            abandoned_work: model.abandoned_work,
            observed_peak,
        }
    }

    /// What endpoint `endpoint` does with attempt `attempt` of request `request`, submitted at
    /// `at`: drawn from a generator seeded by `(seed, request, attempt)` (common random
    /// numbers across genomes).
    pub fn draw(
        &self,
        timelines: &Timelines,
        endpoint: usize,
        seed: u64,
        request: u32,
        attempt: u32,
        at: Nanos,
    ) -> Draw {
        let key = seed ^ STREAM.rotate_left(17) ^ (u64::from(request) << 8 | u64::from(attempt));
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(key);
        let z: f64 = StandardNormal.sample(&mut rng);
        let u: f64 = rng.random();
        let (factor, regime_rate, own) = timelines.regime(endpoint, at);
        let base = if timelines.in_burst(endpoint, at) {
            self.burst_rate
        } else {
            self.healthy_rate
        };
        let fails = u < base.max(regime_rate);
        let service = match own {
            // A brownout with a distribution of its own: successes take that, failures their
            // own latency (they are quick refusals as often as not).
            Some((mu, sigma)) if !fails => (mu + sigma * z).exp(),
            _ => {
                let (mu, sigma) = if fails {
                    (self.failure_mu, self.failure_sigma)
                } else {
                    (self.mu, self.sigma)
                };
                (mu + sigma * z).exp() * factor
            }
        };
        Draw {
            service: service.round().clamp(0.0, 1e15) as Nanos,
            fails,
        }
    }
}

// === impl Server ===

impl Server {
    /// True when a worker is free.
    pub fn has_free_worker(&self, shape: &Shape) -> bool {
        shape.workers.is_none_or(|workers| self.busy < workers)
    }
}
