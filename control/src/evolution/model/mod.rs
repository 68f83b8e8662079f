//! The fitted model of a route's upstream (DESIGN §7.1).
//!
//! A model is what the simulator needs to replay the route: how requests arrive, and for every
//! endpoint how long it takes to answer at a given load, how many requests it serves at once
//! before they queue, how often and in what bursts it fails, and whether it keeps working on an
//! attempt rafael gave up on. Regimes (a brownout, an outage) are the periods where the
//! upstream was unlike itself, kept with their place in the window so the `observed` scenario
//! can replay them and `nominal` can leave them out.
//!
//! Where the telemetry never covered a region the model says so instead of inventing it: an
//! endpoint never seen saturated has `capacity: None`, and a scenario that drives it past what
//! was observed is marked extrapolated.
//!
//! The serialized form is the contract of `GET /v1/routes/{route}/model` (fields may be added).

use serde::{Deserialize, Serialize};

pub mod calibrate;
pub mod check;
pub mod fit;

pub use calibrate::calibrate;
pub use fit::{FitError, Telemetry, fit, fit_route, fit_route_since};

/// The fitted model of one route's upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    /// The route's name.
    pub route: String,
    /// When it was fitted (RFC 3339, UTC).
    pub fitted_at: String,
    /// Seconds of telemetry it was fitted on.
    pub window_secs: u64,
    /// Seconds of that window the attempt samples cover (its newest part): the endpoint
    /// figures and the regimes come from them. Added because the sample ring holds 4,096
    /// attempts, so on a busy route this is a minute or so, not the whole window.
    #[serde(default)]
    pub sampled_secs: u64,
    /// Requests in that window.
    pub requests: u64,
    /// How requests arrived.
    pub arrivals: Arrivals,
    /// One per upstream endpoint, in the upstream's endpoint order.
    pub endpoints: Vec<EndpointModel>,
    /// Periods where the upstream was unlike itself.
    pub regimes: Vec<Regime>,
    /// Seconds (from the window's start) in which most attempts timed out. There the
    /// upstream's latency was not seen, only that it passed the deadline, so the successes'
    /// latencies describe the few lucky attempts and not the upstream.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub censored_secs: Vec<u32>,
    /// What the calibration inferred where the telemetry was censored, when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    /// The model check, once it has run: the incumbent simulated on this model against what
    /// was observed.
    pub fidelity: Option<Fidelity>,
}

/// What [`calibrate`] inferred by simulation where the fit could not see: the workers of an
/// endpoint never seen saturated, and the slowdown and length of each brownout whose attempts
/// timed out. The regimes and capacities it set are in the model like fitted ones; this says
/// which they are and how well they replay the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Workers given to the endpoints with no fitted capacity (`None`: every endpoint had one):
    /// the fewest that replay the window about as well as the best.
    pub workers: Option<u32>,
    /// The fewest and the most workers that replay the window about as well as the best: how
    /// far the window pins them down.
    pub workers_range: Option<[u32; 2]>,
    /// The brownout periods it set, each with its service time factor.
    pub brownouts: Vec<CalibratedBrownout>,
    /// The mean squared per-second error (goodput share; attempts per request and mean
    /// latency, relative) of the model's replay before calibration and after.
    pub loss_before: f64,
    /// See `loss_before`.
    pub loss: f64,
    /// Simulations the search ran.
    pub simulations: u32,
}

/// One brownout period set by the calibration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CalibratedBrownout {
    /// Seconds from the start of the window.
    pub start_sec: u32,
    /// Its length, seconds: the slowdown itself, which may be shorter than the censored
    /// seconds (the queue it leaves behind outlasts it).
    pub secs: u32,
    /// Service time during it over service time outside it.
    pub service_time_factor: f64,
}

/// The arrival process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Arrivals {
    /// Mean requests per second over the window.
    pub rate_per_sec: f64,
    /// Index of dispersion of the per-second counts (variance / mean): 1 for a Poisson
    /// process, above 1 for bursty traffic.
    pub burstiness: f64,
    /// Requests that arrived in each second of the window, oldest first: the `observed`
    /// scenario replays this timeline.
    pub per_second: Vec<u32>,
    /// Coefficient of variation of the gaps between consecutive arrivals within a second: 1
    /// for Poisson arrivals, 0 for a client sending on a fixed beat. How requests bunch
    /// inside a second decides how often a concurrency limit sheds, which per-second counts
    /// cannot tell.
    #[serde(default = "Arrivals::poisson_spacing")]
    pub spacing_cv: f64,
}

// === impl Arrivals ===

impl Arrivals {
    /// The spacing of a Poisson process, assumed when none was measured.
    pub fn poisson_spacing() -> f64 {
        1.0
    }
}

/// One upstream endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointModel {
    /// Its address, as in the config.
    pub endpoint: String,
    /// Attempt samples it was fitted on.
    pub samples: u64,
    /// Service time of successful attempts below the capacity knee (no queueing).
    pub service_time: ServiceTime,
    /// Latency by load: how service time grows with the attempts in flight on the endpoint.
    pub by_load: Vec<LoadBucket>,
    /// The capacity knee; `None` when the endpoint was never seen saturated.
    pub capacity: Option<Capacity>,
    /// How it fails.
    pub failure: Failure,
    /// Share of its attempts cut off by a deadline. Added because a timeout is not counted as
    /// a failure (the simulator derives timeouts from latency and the genome), and a reader
    /// should still see how many there were.
    #[serde(default)]
    pub timeout_rate: f64,
    /// Whether it keeps working on attempts rafael abandoned (timed out or cancelled), so
    /// they still hold a worker. The default assumption for HTTP/1.1 servers.
    pub abandoned_work: bool,
}

/// A latency distribution, summarized by two quantiles (the simulator draws from the
/// log-normal distribution through them).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ServiceTime {
    /// Median, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
}

/// Latency of attempts that started with `in_flight` attempts on the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoadBucket {
    /// Attempts in flight on the endpoint when these started (lower bound of the bucket).
    pub in_flight: u32,
    /// Samples in the bucket.
    pub samples: u64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
}

/// The capacity knee: beyond it, requests queue.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    /// Attempts the endpoint serves at once (its workers).
    pub concurrency: f64,
    /// Attempts per second it completes when saturated (`concurrency / mean service time`).
    pub throughput_per_sec: f64,
    /// Whether the fit had to use seconds near timed-out attempts, when the server may still
    /// have been working on them unseen. Added so a reader knows the knee may be biased (see
    /// [`fit`]).
    #[serde(default)]
    pub timeouts_in_fit: bool,
}

/// How an endpoint fails: a two-state (healthy / degraded) process, so an error burst is not
/// mistaken for a steady error rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// Failure probability of an attempt, overall.
    pub rate: f64,
    /// Failure probability while healthy.
    pub healthy_rate: f64,
    /// Failure probability during a burst (0 when no bursts were seen).
    pub burst_rate: f64,
    /// Mean length of a burst, seconds (0 when none).
    pub mean_burst_secs: f64,
    /// Mean time between bursts, seconds (0 when none).
    pub mean_healthy_secs: f64,
    /// What a failure looks like: the status it answers with, `None` for a reset connection.
    pub status: Option<u16>,
    /// Median latency of failed attempts, milliseconds (fast 503s differ from slow 500s).
    pub latency_p50_ms: f64,
    /// Their 99th percentile, milliseconds: how much failures' latency spreads, which need not
    /// be how much the successes' does (a refusal after a fixed wait hardly spreads at all).
    /// Added after the fact: 0 in a model stored before it, read as "as the successes spread".
    #[serde(default)]
    pub latency_p99_ms: f64,
}

/// A period where the upstream was unlike itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Regime {
    /// `brownout` (slow) or `outage` (failing).
    pub kind: RegimeKind,
    /// The one endpoint it concerns (a slow endpoint among healthy ones); `None` for the whole
    /// upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Share of the window spent in this kind of regime.
    pub share: f64,
    /// Mean length of one period, seconds.
    pub mean_secs: f64,
    /// Service time during the regime over service time outside it.
    pub service_time_factor: f64,
    /// Failure probability during the regime.
    pub failure_rate: f64,
    /// Where the periods were: offsets from the window's start, seconds.
    pub periods: Vec<Period>,
}

/// What kind of bad period a regime is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegimeKind {
    /// The upstream was slow.
    Brownout,
    /// The upstream was failing.
    Outage,
}

/// One period of a regime.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Period {
    /// Seconds from the start of the window.
    pub start_sec: u32,
    /// Its length, seconds.
    pub secs: u32,
    /// The successes' own latency distribution in a brownout period, when enough were seen.
    /// A slow period has a shape of its own (a CPU-starved server's latencies spread far more
    /// than its healthy ones), and two slow periods of one window need not be alike, which
    /// one factor on the healthy distribution misses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_time: Option<ServiceTime>,
}

/// The model check: the incumbent genome simulated on the model with the observed arrivals,
/// against what was observed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fidelity {
    /// Share of requests answered 2xx within the SLO.
    pub goodput: Check,
    /// Median latency, milliseconds.
    pub p50_ms: Check,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: Check,
    /// Upstream attempts per request.
    pub amplification: Check,
    /// Every error under `[evolution].max_model_error`.
    pub trusted: bool,
    /// Why not, when not trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One figure of the model check.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// What the route did.
    pub observed: f64,
    /// What the simulation of the same window did.
    pub simulated: f64,
    /// For a latency quantile, the 95% confidence interval of the observed one: the values at
    /// the ranks `n·q ± 1.96·√(n·q·(1−q))` of the `n` observed requests (distribution-free:
    /// a rank's spread is binomial). A p99 of a few hundred requests is their few slowest,
    /// and the interval says how little that pins down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_range: Option<[f64; 2]>,
    /// For a latency quantile, the share of observed answers faster than `simulated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulated_rank: Option<f64>,
    /// The least and the most of the figure over the check's seeds (`simulated` is their
    /// mean).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulated_range: Option<[f64; 2]>,
    /// `|simulated - observed| / observed`. For a latency quantile `q`, the smaller of two
    /// readings: how far `simulated` lies outside `observed_range`, over `observed`; and how
    /// far `simulated_rank` lies outside the interval's ranks, over the share on the
    /// quantile's short side (`q` below the median, `1 − q` above it). 0 inside the interval.
    /// The second reading is for distributions with a gap: when answers come after one
    /// attempt's timeout or after two, with nothing between, a median sits on one side of the
    /// gap or the other as a few percent of the answers move, and its milliseconds would call
    /// a model wrong that misplaces 5% of requests.
    ///
    /// And for every figure, no more than how far the observed figure (or `observed_range`)
    /// lies outside `simulated_range`, over `observed`: a window is one draw, and where the
    /// model's own seeds disagree (a breaker that trips in some replays of an outage and not in
    /// others) a window in which it tripped is one the model allows, not a model error.
    pub error: f64,
}

// === impl Model ===

impl Model {
    /// The model of the last `secs` seconds of its window: the arrival timeline and the regime
    /// periods cut to them (a period across the cut is shortened, one before it dropped).
    pub fn last_seconds(&self, secs: u64) -> Self {
        let secs = secs.min(self.window_secs);
        let cut = (self.window_secs - secs) as u32;
        let mut model = self.clone();
        model.window_secs = secs;
        let skip = (cut as usize).min(model.arrivals.per_second.len());
        model.arrivals.per_second.drain(..skip);
        for regime in &mut model.regimes {
            regime.periods.retain(|p| p.start_sec + p.secs > cut);
            for period in &mut regime.periods {
                let start = period.start_sec.max(cut);
                period.secs -= start - period.start_sec;
                period.start_sec = start - cut;
            }
        }
        model.regimes.retain(|r| !r.periods.is_empty());
        model
    }

    /// The longest replay of the window that stays within `requests` simulated requests:
    /// at tens of thousands of requests a second, ten minutes is millions of requests per run,
    /// and the round's memory and time with them.
    pub fn replay_secs(&self, requests: u64) -> u64 {
        let rate = self.arrivals.rate_per_sec.max(1.0);
        ((requests as f64 / rate).ceil() as u64).clamp(1, self.window_secs.max(1))
    }
}

// === impl Fidelity ===

impl Fidelity {
    /// The largest of the check's errors.
    pub fn worst_error(&self) -> f64 {
        [self.goodput, self.p50_ms, self.p99_ms, self.amplification]
            .iter()
            .map(|c| c.error)
            .fold(0.0, f64::max)
    }
}

// === impl Check ===

impl Check {
    /// Compares `simulated` with `observed`. An observed zero compares absolutely, so a route
    /// with no retries at all is not divided by zero.
    pub fn new(observed: f64, simulated: f64) -> Self {
        Self {
            observed,
            simulated,
            observed_range: None,
            simulated_rank: None,
            simulated_range: None,
            error: relative((simulated - observed).abs(), observed),
        }
    }

    /// Compares `simulated` with an `observed` figure known only within `range`: the error is
    /// how far outside the range `simulated` lies, relative to `observed`.
    pub fn within(observed: f64, range: [f64; 2], simulated: f64) -> Self {
        let [low, high] = range;
        let outside = (low - simulated).max(simulated - high).max(0.0);
        Self {
            observed,
            simulated,
            observed_range: Some(range),
            simulated_rank: None,
            simulated_range: None,
            error: relative(outside, observed),
        }
    }

    /// The check with what the seeds allow: the error is at most how far the observed figure
    /// (its `observed_range`, for a latency quantile) lies outside `seeds`, the least and the
    /// most of the seeds' figures (see [`Check::error`]).
    pub fn or_among_seeds(self, seeds: [f64; 2]) -> Self {
        let [low, high] = seeds;
        let [observed_low, observed_high] = self
            .observed_range
            .unwrap_or([self.observed, self.observed]);
        let outside = (low - observed_high).max(observed_low - high).max(0.0);
        Self {
            simulated_range: Some(seeds),
            error: self.error.min(relative(outside, self.observed)),
            ..self
        }
    }

    /// A latency quantile `q`'s check read in probability as well: `rank` (the share of
    /// observed answers faster than `simulated`) against the interval's `ranks`. The error is
    /// the smaller reading (see [`Check::error`]).
    pub fn or_by_rank(self, q: f64, ranks: [f64; 2], rank: f64) -> Self {
        let [low, high] = ranks;
        let outside = (low - rank).max(rank - high).max(0.0);
        let short_side = q.min(1.0 - q).max(f64::EPSILON);
        Self {
            simulated_rank: Some(rank),
            error: self.error.min(outside / short_side),
            ..self
        }
    }
}

/// `difference` relative to `observed`; absolute when `observed` is zero.
fn relative(difference: f64, observed: f64) -> f64 {
    if observed.abs() > f64::EPSILON {
        difference / observed.abs()
    } else {
        difference
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_figure_among_what_the_seeds_allow_is_no_error_and_one_outside_is_measured_from_them() {
        // A breaker tripped in the observed window and in one replay of five, not on average.
        let tripped = Check::new(0.86, 1.05).or_among_seeds([0.80, 1.10]);
        assert_eq!(tripped.error, 0.0);
        assert_eq!(tripped.simulated_range, Some([0.80, 1.10]));
        let never = Check::new(0.86, 1.05).or_among_seeds([0.95, 1.10]);
        assert!((never.error - 0.09 / 0.86).abs() < 1e-12, "{never:?}");
        // Never larger than the mean's error.
        let near = Check::new(1.0, 1.01);
        assert_eq!(near.or_among_seeds([1.5, 2.0]).error, near.error);
        // A latency quantile compares the observed interval with the seeds'.
        let p99 = Check::within(400.0, [380.0, 420.0], 500.0).or_among_seeds([410.0, 600.0]);
        assert_eq!(p99.error, 0.0);
        let p99 = Check::within(400.0, [380.0, 420.0], 500.0).or_among_seeds([440.0, 600.0]);
        assert!((p99.error - 20.0 / 400.0).abs() < 1e-12, "{p99:?}");
    }

    #[test]
    fn the_last_seconds_keep_what_happened_in_them() {
        let mut model = crate::evolution::testing::pool(4, 20.0, 0.0, 100.0);
        model.window_secs = 10;
        model.arrivals.per_second = (0..10).collect();
        model.regimes = vec![Regime {
            kind: RegimeKind::Outage,
            endpoint: None,
            share: 0.5,
            mean_secs: 2.0,
            service_time_factor: 1.0,
            failure_rate: 0.5,
            periods: vec![
                Period {
                    start_sec: 1,
                    secs: 2,
                    service_time: None,
                },
                Period {
                    start_sec: 5,
                    secs: 3,
                    service_time: None,
                },
            ],
        }];
        let last = model.last_seconds(4);
        assert_eq!(last.window_secs, 4);
        assert_eq!(last.arrivals.per_second, [6, 7, 8, 9]);
        // The first period ended before the cut; the second, from 5 to 8, is 6 to 8 now,
        // that is 0 to 2 of the four seconds kept.
        assert_eq!(
            last.regimes[0].periods,
            [Period {
                start_sec: 0,
                secs: 2,
                service_time: None
            }]
        );
        assert_eq!(model.replay_secs(1_000_000), 10);
        assert_eq!(model.replay_secs(250), 3);
    }
}
