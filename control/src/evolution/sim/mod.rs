//! The discrete-event simulator (DESIGN §7.2): a route's genome against its fitted upstream
//! model under a scenario, on a virtual clock.
//!
//! It runs the real engines and decisions of `rafael_policy` — GCRA rate limit, concurrency
//! limit (static or adaptive), route timeout, budgeted retry with full-jitter backoff, one
//! breaker per endpoint with power-of-two-choices endpoint choice, fault rules — composed in
//! the data plane's order (DESIGN §2), against an upstream model of worker pools with FIFO
//! queues (see [`upstream`]). Nothing here reads a clock, spawns or touches a socket, and no
//! tokio is involved: the run is a pure function of (model, genome, scenario, seed).
//!
//! Randomness comes in three separate seeded streams, so the genomes of one round are compared
//! on common random numbers:
//! - **arrivals**: the request times, generated once per (model, scenario, seed) in
//!   [`Prepared`] and shared by every genome;
//! - **upstream**: what the upstream does with attempt `n` of request `r` (its service time,
//!   whether it fails) is drawn from a generator seeded by `(seed, r, n)`, and its failure
//!   bursts are a timeline fixed per seed, so two genomes meet the same upstream luck for the
//!   same attempt whatever they did before it;
//! - **policy**: backoff jitter, endpoint picks and fault sampling, one sequential stream.
//!
//! What the data plane does and the model cannot say (a request's method and body size) is
//! taken as the common case: idempotent requests whose bodies fit the replay buffer.

mod arrivals;
mod run;
pub mod upstream;

use std::time::Duration;

use rafael_config::Genome;
use rafael_proxy::telemetry::{LATENCY_BUCKETS, Outcome, Window, latency_bucket};
use serde::Serialize;

pub use self::arrivals::Arrivals;
use super::{model::Model, scenario::Scenario};

/// What to simulate, apart from the genome.
#[derive(Debug, Clone)]
pub struct Run<'a> {
    /// The fitted upstream model.
    pub model: &'a Model,
    /// The conditions.
    pub scenario: Scenario,
    /// Virtual time simulated.
    pub duration: Duration,
    /// Requests per second, replacing the observed arrivals (a Poisson process).
    pub rate: Option<f64>,
    /// A request answered 2xx within this counts as goodput.
    pub slo_latency: Duration,
    /// Clients give up after this long.
    pub client_timeout: Duration,
    /// The seed of every random stream.
    pub seed: u64,
}

/// A run prepared for many genomes: the arrivals and the upstream's burst timelines, shared so
/// that every genome sees the same traffic and the same upstream.
#[derive(Debug, Clone)]
pub struct Prepared<'a> {
    run: Run<'a>,
    arrivals: Arrivals,
    upstream: upstream::Timelines,
}

/// What one simulated run did, counted over the requests that arrived in it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// Requests offered.
    pub offered: u64,
    /// Answered 2xx within the SLO and before the client gave up.
    pub good: u64,
    /// Answered at all before the client gave up (any status, rejections included).
    pub answered: u64,
    /// Refused by rafael itself: rate limited, shed, or every breaker open.
    pub rejected: u64,
    /// Answered 504 by the route's deadline.
    pub timed_out: u64,
    /// Given up on by the client before any answer.
    pub abandoned: u64,
    /// Upstream attempts started.
    pub attempts: u64,
    /// Of them, retries.
    pub retries: u64,
    /// Median latency of answered requests.
    pub p50: Duration,
    /// 99th percentile latency of answered requests.
    pub p99: Duration,
    /// The run drove an endpoint past the load its model was fitted on, where the model only
    /// extrapolates.
    pub extrapolated: bool,
    /// Latencies of answered requests in the telemetry's log-linear buckets
    /// (`rafael_proxy::telemetry::latency_bucket`), so a simulated distribution is read
    /// through the same buckets as an observed one.
    #[serde(skip)]
    pub histogram: Vec<u64>,
    /// Per second of the run, counted as the telemetry's windows count them: requests by
    /// arrival, answers by when they were sent, attempts by start. What the model's
    /// calibration compares with the observed windows second by second (a storm's length is
    /// in the series, not in the totals). One more than the run's seconds: the last holds
    /// what happened after the run's end.
    #[serde(skip)]
    pub seconds: Vec<SecondCounts>,
}

/// One second of a run (see [`Report::seconds`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SecondCounts {
    /// Requests that arrived in it.
    pub offered: u32,
    /// Answers sent in it that were 2xx within the SLO.
    pub good: u32,
    /// Upstream attempts started in it.
    pub attempts: u32,
    /// Answers sent in it.
    pub answered: u32,
    /// Their latencies' sum, nanoseconds.
    pub latency_sum: u64,
}

// === impl Prepared ===

impl<'a> Prepared<'a> {
    /// Generates the arrivals and timelines of `run`.
    pub fn new(run: Run<'a>) -> Self {
        let arrivals = Arrivals::generate(&run);
        let upstream = upstream::Timelines::generate(&run);
        Self {
            run,
            arrivals,
            upstream,
        }
    }

    /// The run.
    pub fn run(&self) -> &Run<'a> {
        &self.run
    }

    /// Requests that will arrive.
    pub fn requests(&self) -> usize {
        self.arrivals.len()
    }

    /// Simulates `genome`.
    pub fn simulate(&self, genome: &Genome) -> Report {
        run::Simulation::new(self, genome).run()
    }
}

/// Simulates `genome` once: [`Prepared::new`] then [`Prepared::simulate`].
pub fn simulate(run: Run<'_>, genome: &Genome) -> Report {
    Prepared::new(run).simulate(genome)
}

// === impl Report ===

impl Report {
    /// The per-second windows a live route would have recorded for this run: what a test or
    /// a benchmark calibrates a model against when it knows the truth. The counts and the
    /// latency sums are the run's; the latency histogram is rough (good answers at 10 ms, the
    /// others at 1 s), since a report keeps no histogram per second.
    pub fn windows(&self) -> Vec<Window> {
        const SECOND: u64 = 1_000_000_000;
        // The last second holds what happened after the run's end.
        let seconds = &self.seconds[..self.seconds.len().saturating_sub(1)];
        (0u64..)
            .zip(seconds)
            .map(|(second, counts)| {
                let others = u64::from(counts.answered.saturating_sub(counts.good));
                let mut outcomes = [0; 7];
                outcomes[Outcome::Success as usize] = u64::from(counts.good);
                outcomes[Outcome::Timeout as usize] = others;
                let mut latency = [0; LATENCY_BUCKETS];
                latency[latency_bucket(SECOND / 100)] = u64::from(counts.good);
                latency[latency_bucket(SECOND)] = others;
                Window {
                    start: second * SECOND,
                    requests: u64::from(counts.offered),
                    outcomes,
                    attempts: u64::from(counts.attempts),
                    retries: u64::from(counts.attempts.saturating_sub(counts.offered)),
                    peak_in_flight: 0,
                    latency_sum: counts.latency_sum,
                    latency,
                }
            })
            .collect()
    }

    /// Share of offered requests answered 2xx within the SLO.
    pub fn goodput(&self) -> f64 {
        ratio(self.good, self.offered)
    }

    /// Upstream attempts per offered request.
    pub fn amplification(&self) -> f64 {
        ratio(self.attempts, self.offered)
    }

    /// Share of offered requests refused by rafael itself.
    pub fn rejected_share(&self) -> f64 {
        ratio(self.rejected, self.offered)
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

#[cfg(test)]
mod tests;
