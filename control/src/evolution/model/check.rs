//! The model check (DESIGN §7.1): the incumbent genome simulated on the fitted model with the
//! observed arrivals, over the window the model was fitted on, compared with what the route
//! did in that window — goodput, p50, p99 and amplification.
//!
//! Both sides are read the same way: latency quantiles come from the telemetry's log-linear
//! buckets, interpolated within a bucket, for the observed windows and for the simulated
//! requests alike, so the check measures the model and not two estimators. Observed goodput is
//! the share of requests answered with success within the SLO, estimated from the windows
//! (which keep outcomes and latencies apart) as the smaller of the successes and the answers
//! within the SLO.
//!
//! An observed latency quantile is one draw: the p99 of a few hundred requests is their three
//! or four slowest. So a quantile's error is measured from its 95% confidence interval (see
//! [`Observed::range`]): a simulated p99 inside what the observed requests allow is not an
//! error, and with many requests the interval closes on the point figure.

use std::time::Duration;

use metrics::gauge;
use rafael_config::{Config, Genome};
use rafael_proxy::telemetry::{Outcome, Window, latency_bucket_bound};

use super::{Check, Fidelity, Model};
use crate::evolution::{scenario::Scenario, sim};

/// `rafael_model_error{route,metric}`.
pub const MODEL_ERROR: &str = "rafael_model_error";
/// Seeds the check replays: their mean is the simulated figure, and their range what the
/// model allows (see [`Check::or_among_seeds`]).
const SEEDS: u64 = 5;
/// Seeds a refusal is looked at on before it stands.
const MORE_SEEDS: u64 = 20;
/// Most requests one run of the check simulates: beyond it, the check covers the window's
/// newest part (at 100 requests a second, 200,000 is the whole ten minutes).
pub const MAX_RUN_REQUESTS: u64 = 200_000;

/// What the route did in the windows.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// Share answered 2xx within the SLO.
    pub goodput: f64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
    /// Upstream attempts per request.
    pub amplification: f64,
    /// The merged latency histogram the quantiles were read from.
    pub latency: Vec<u64>,
}

// === impl Observed ===

impl Observed {
    /// Reads `windows` against an SLO of `slo`.
    pub fn of(windows: &[Window], slo: Duration) -> Self {
        let mut merged = match windows.first() {
            Some(first) => first.clone(),
            None => {
                return Self {
                    goodput: 0.0,
                    p50_ms: 0.0,
                    p99_ms: 0.0,
                    amplification: 0.0,
                    latency: Vec::new(),
                };
            }
        };
        for window in &windows[1..] {
            merged.merge(window);
        }
        let requests = merged.requests.max(1) as f64;
        let within = within(&merged.latency, slo);
        let successes = merged.outcome(Outcome::Success) as f64;
        Self {
            goodput: successes.min(within) / requests,
            p50_ms: quantile_ms(&merged.latency, 0.5),
            p99_ms: quantile_ms(&merged.latency, 0.99),
            amplification: merged.attempts as f64 / requests,
            latency: merged.latency.to_vec(),
        }
    }

    /// The 95% confidence interval of the observed latency quantile `q`, milliseconds: the
    /// quantiles at the ranks `n·q ± 1.96·√(n·q·(1−q))`, the binomial spread of the rank of
    /// the `n` requests' `q` quantile, whatever their distribution.
    pub fn range(&self, q: f64) -> [f64; 2] {
        self.ranks(q).map(|rank| quantile_ms(&self.latency, rank))
    }

    /// The ranks (as shares) bounding the 95% confidence interval of quantile `q`.
    pub fn ranks(&self, q: f64) -> [f64; 2] {
        const Z_95: f64 = 1.96;
        let n = self.latency.iter().sum::<u64>().max(1) as f64;
        let spread = Z_95 * (q * (1.0 - q) / n).sqrt();
        [(q - spread).max(0.0), (q + spread).min(1.0)]
    }

    /// The share of observed answers faster than `ms`.
    pub fn rank_of(&self, ms: f64) -> f64 {
        rank_of(&self.latency, ms)
    }
}

/// Runs the model check of `model` for `incumbent` against `windows` (the windows it was
/// fitted on), with the objectives and `max_model_error` of `config`.
pub fn check(model: &Model, windows: &[Window], incumbent: &Genome, config: &Config) -> Fidelity {
    let objectives = &config.evolution.objectives;
    let slo = objectives.slo_latency.get();
    let secs = model.replay_secs(MAX_RUN_REQUESTS);
    let (model, windows) = if secs < model.window_secs && windows.len() as u64 == model.window_secs
    {
        (
            &model.last_seconds(secs),
            &windows[windows.len() - secs as usize..],
        )
    } else {
        (model, windows)
    };
    let observed = Observed::of(windows, slo);
    let replay = |seeds: std::ops::Range<u64>| -> Vec<sim::Report> {
        seeds
            .map(|seed| {
                sim::simulate(
                    sim::Run {
                        model,
                        scenario: Scenario::Observed,
                        duration: Duration::from_secs(model.window_secs.max(1)),
                        rate: None,
                        slo_latency: slo,
                        client_timeout: objectives.client_timeout.get(),
                        seed,
                    },
                    incumbent,
                )
            })
            .collect()
    };
    let limit = config.evolution.max_model_error;
    let mut runs = replay(0..SEEDS);
    let fidelity = judge(&observed, &runs, limit);
    if fidelity.trusted {
        return fidelity;
    }
    // A refusal is looked at on more seeds before it stands: a window is one draw, and an
    // outcome the model gives two replays in five (a breaker tripping in an outage) is missed
    // by five seeds one time in thirteen, by twenty one time in 27,000.
    runs.extend(replay(SEEDS..MORE_SEEDS));
    judge(&observed, &runs, limit)
}

/// The check of `observed` against the replays `runs`, each error against `limit`.
fn judge(observed: &Observed, runs: &[sim::Report], limit: f64) -> Fidelity {
    let mean = |f: &dyn Fn(&sim::Report) -> f64| {
        runs.iter().map(f).sum::<f64>() / runs.len().max(1) as f64
    };
    let range = |f: &dyn Fn(&sim::Report) -> f64| {
        runs.iter()
            .map(f)
            .fold([f64::MAX, f64::MIN], |[low, high], v| {
                [low.min(v), high.max(v)]
            })
    };
    let fidelity_goodput = Check::new(observed.goodput, mean(&|r| r.goodput()))
        .or_among_seeds(range(&|r| r.goodput()));
    let latency = |q: f64, observed_ms: f64| {
        let simulated = mean(&|r| quantile_ms(&r.histogram, q));
        Check::within(observed_ms, observed.range(q), simulated)
            .or_by_rank(q, observed.ranks(q), observed.rank_of(simulated))
            .or_among_seeds(range(&|r| quantile_ms(&r.histogram, q)))
    };
    let p50 = latency(0.5, observed.p50_ms);
    let p99 = latency(0.99, observed.p99_ms);
    let amplification = Check::new(observed.amplification, mean(&|r| r.amplification()))
        .or_among_seeds(range(&|r| r.amplification()));
    let worst = [
        ("goodput", fidelity_goodput),
        ("p50", p50),
        ("p99", p99),
        ("amplification", amplification),
    ]
    .into_iter()
    .max_by(|a, b| a.1.error.total_cmp(&b.1.error));
    let reason = worst
        .filter(|(_, check)| check.error > limit)
        .map(|(metric, check)| {
            format!(
                "model not trusted: {metric} error {:.3} above max_model_error {limit} (observed {:.3}, simulated {:.3})",
                check.error, check.observed, check.simulated
            )
        });
    Fidelity {
        goodput: fidelity_goodput,
        p50_ms: p50,
        p99_ms: p99,
        amplification,
        trusted: reason.is_none(),
        reason,
    }
}

/// Publishes `fidelity`'s errors as `rafael_model_error{route,metric}`.
pub fn publish(route: &str, fidelity: &Fidelity) {
    for (metric, check) in [
        ("goodput", fidelity.goodput),
        ("p50", fidelity.p50_ms),
        ("p99", fidelity.p99_ms),
        ("amplification", fidelity.amplification),
    ] {
        gauge!(MODEL_ERROR, "route" => route.to_owned(), "metric" => metric).set(check.error);
    }
}

/// Answers within `slo`, counting the bucket that holds it in proportion.
fn within(histogram: &[u64], slo: Duration) -> f64 {
    let slo = slo.as_nanos() as f64;
    let mut lower = 0.0;
    let mut count = 0.0;
    for (i, n) in histogram.iter().enumerate() {
        let upper = latency_bucket_bound(i) as f64;
        if upper <= slo {
            count += *n as f64;
        } else {
            if slo > lower {
                count += *n as f64 * (slo - lower) / (upper - lower);
            }
            break;
        }
        lower = upper;
    }
    count
}

/// The share of a latency histogram's answers below `ms`, interpolated linearly within the
/// bucket that holds it: the inverse of [`quantile_ms`].
pub fn rank_of(histogram: &[u64], ms: f64) -> f64 {
    let total: u64 = histogram.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let at = ms * 1e6;
    let mut seen = 0.0;
    let mut lower = 0.0;
    for (i, n) in histogram.iter().enumerate() {
        let upper = latency_bucket_bound(i) as f64;
        let count = *n as f64;
        if at < upper {
            let within = if upper >= u64::MAX as f64 {
                0.0
            } else {
                ((at - lower) / (upper - lower)).clamp(0.0, 1.0)
            };
            return (seen + within * count) / total as f64;
        }
        seen += count;
        lower = upper;
    }
    1.0
}

/// The `q` quantile of a latency histogram, milliseconds, interpolated linearly within the
/// bucket that holds it (the last bucket, unbounded, answers its lower bound).
pub fn quantile_ms(histogram: &[u64], q: f64) -> f64 {
    let total: u64 = histogram.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut seen = 0.0;
    let mut lower = 0.0;
    for (i, n) in histogram.iter().enumerate() {
        let upper = latency_bucket_bound(i) as f64;
        let count = *n as f64;
        if count > 0.0 && seen + count >= rank {
            if upper >= u64::MAX as f64 {
                return lower / 1e6;
            }
            let within = ((rank - seen) / count).clamp(0.0, 1.0);
            return (lower + within * (upper - lower)) / 1e6;
        }
        seen += count;
        lower = upper;
    }
    lower / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;
    use rafael_proxy::telemetry::latency_bucket;

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let mut histogram = vec![0u64; rafael_proxy::telemetry::LATENCY_BUCKETS];
        // 100 answers spread evenly over one bucket: its median is its middle.
        let bucket = latency_bucket(20_000_000);
        histogram[bucket] = 100;
        let (lower, upper) = (
            latency_bucket_bound(bucket - 1) as f64 / 1e6,
            latency_bucket_bound(bucket) as f64 / 1e6,
        );
        let p50 = quantile_ms(&histogram, 0.5);
        assert!(
            (p50 - (lower + upper) / 2.0).abs() < 1e-9,
            "{p50} in {lower}..{upper}"
        );
        assert!(quantile_ms(&histogram, 0.99) < upper);
        assert!((rank_of(&histogram, p50) - 0.5).abs() < 1e-9);
        assert_eq!(rank_of(&histogram, lower / 2.0), 0.0);
        assert_eq!(rank_of(&histogram, upper * 2.0), 1.0);
        assert_eq!(within(&histogram, Duration::from_secs(1)), 100.0);
        assert_eq!(within(&histogram, Duration::from_millis(1)), 0.0);
    }
}
