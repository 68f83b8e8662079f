//! The watch after a swap (DESIGN §7.6): for `[guardian].watch.duration`, the new genome is
//! judged against a baseline that the upstream's own bad periods cannot fool.
//!
//! Two baselines, both needed before a rollback:
//! 1. **Before** ([`suspect`]): the route's windows before the swap. A goodput drop beyond
//!    `max_goodput_drop`, significant by a one-sided two-proportion z-test at 99% (the test is
//!    of "the drop exceeds the limit", not of "there is a drop"), or a p99 rise beyond
//!    `max_p99_increase` that holds between the edges of both p99s' 95% confidence intervals,
//!    makes the genome a suspect. This is cheap (counts from the telemetry windows) and runs at
//!    every checkpoint.
//! 2. **The counterfactual** ([`counterfactual`]): a suspect's windows after the swap are fitted
//!    as a model (the upstream as it behaved since the swap, its bad periods included), and the
//!    previous genome and the new one are both replayed on it with the observed arrivals, on
//!    the same seeds. The suspicion stands only when the model, too, says the new genome does
//!    worse than the old one would have *in those same windows* by more than the limit. An
//!    upstream that turned bad during the watch makes the "before" baseline look like a
//!    regression, but the previous genome replayed in the bad windows suffers as much, so the
//!    new genome is not blamed for it.
//!
//! Where no model can be fitted (too few requests since the swap), a suspicion waits for a
//! later checkpoint; at the last one it stands on the "before" baseline alone: the guardian
//! errs on the side of the genome that ran before.
//!
//! Injected faults are outside the model (the fit leaves out attempts a fault answered), so a
//! regression that only a live experiment's faults reveal is judged by the first baseline
//! and a counterfactual that does not see the faults: the watch does not roll back for it.

use std::time::Duration;

use rafael_config::{Config, Genome, WatchConfig};
use rafael_proxy::telemetry::Window;
use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, Normal};

use crate::evolution::{
    model::{Model, check::Observed, check::quantile_ms},
    scenario::Scenario,
    sim,
};

/// Confidence of the goodput test: a rollback needs the drop beyond the limit at 99%.
pub const GOODPUT_CONFIDENCE: f64 = 0.99;
/// Seeds the counterfactual replays each genome on.
const SEEDS: u64 = 5;

/// A stretch of the route's traffic, as the watch reads it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Seconds covered.
    pub secs: u64,
    /// Requests offered.
    pub requests: u64,
    /// Share answered 2xx within the SLO.
    pub goodput: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
    /// The p99's 95% confidence interval, milliseconds.
    pub p99_range: [f64; 2],
}

/// What the model says the two genomes would have done since the swap.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Counterfactual {
    /// The previous genome, replayed.
    pub previous: Replayed,
    /// The new genome, replayed on the same model and seeds.
    pub current: Replayed,
    /// Whether the model check passed on the windows since the swap.
    pub trusted: bool,
}

/// One genome's replay, means over the seeds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Replayed {
    /// Share answered 2xx within the SLO.
    pub goodput: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
}

/// A reason to suspect the new genome.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "metric", rename_all = "snake_case")]
pub enum Finding {
    /// Goodput fell by more than `max_goodput_drop`, significantly.
    Goodput {
        /// Before the swap.
        before: f64,
        /// Since.
        after: f64,
        /// The test statistic of "the drop exceeds the limit".
        z: f64,
    },
    /// The p99 rose by more than `max_p99_increase`, beyond both confidence intervals.
    P99 {
        /// Before the swap, milliseconds.
        before_ms: f64,
        /// Since, milliseconds.
        after_ms: f64,
    },
}

// === impl Figures ===

impl Figures {
    /// Reads `windows` against an SLO of `slo`; `None` when they hold no request.
    pub fn of(windows: &[Window], slo: Duration) -> Option<Self> {
        let requests: u64 = windows.iter().map(|w| w.requests).sum();
        if requests == 0 {
            return None;
        }
        let observed = Observed::of(windows, slo);
        Some(Self {
            secs: windows.len() as u64,
            requests,
            // Answers are counted by when they were sent and requests by when they arrived,
            // so a stretch can hold a few more answers than requests.
            goodput: observed.goodput.min(1.0),
            p99_ms: observed.p99_ms,
            p99_range: observed.range(0.99),
        })
    }
}

// === impl Finding ===

impl Finding {
    /// The metric's name (`rafael_guardian_rollbacks_total`'s `reason`).
    pub fn metric(&self) -> &'static str {
        match self {
            Self::Goodput { .. } => "goodput",
            Self::P99 { .. } => "p99",
        }
    }

    /// Whether `counterfactual` agrees: the new genome did worse than the previous one would
    /// have, in the same windows, by more than the limit.
    pub fn confirmed_by(&self, counterfactual: &Counterfactual, limits: &WatchConfig) -> bool {
        let (previous, current) = (counterfactual.previous, counterfactual.current);
        match self {
            Self::Goodput { .. } => previous.goodput - current.goodput > limits.max_goodput_drop,
            Self::P99 { .. } => {
                previous.p99_ms > 0.0
                    && current.p99_ms / previous.p99_ms - 1.0 > limits.max_p99_increase
            }
        }
    }

    /// In words, for the audit entry and the log.
    pub fn describe(&self, limits: &WatchConfig) -> String {
        match self {
            Self::Goodput { before, after, .. } => format!(
                "goodput fell from {before:.3} to {after:.3}, more than max_goodput_drop {}",
                limits.max_goodput_drop
            ),
            Self::P99 {
                before_ms,
                after_ms,
            } => format!(
                "p99 rose from {before_ms:.1} ms to {after_ms:.1} ms, more than max_p99_increase {}",
                limits.max_p99_increase
            ),
        }
    }
}

/// What makes the new genome a suspect: `after` (since the swap) against `before`.
pub fn suspect(before: &Figures, after: &Figures, limits: &WatchConfig) -> Vec<Finding> {
    let mut findings = Vec::new();
    let z = drop_beyond(before, after, limits.max_goodput_drop);
    let critical = Normal::standard().inverse_cdf(GOODPUT_CONFIDENCE);
    if z > critical {
        findings.push(Finding::Goodput {
            before: before.goodput,
            after: after.goodput,
            z,
        });
    }
    // The rise must hold between the intervals' near edges: after's low edge against before's
    // high edge, so a p99 read from a handful of slow requests does not roll anything back.
    let grown = 1.0 + limits.max_p99_increase;
    if before.p99_range[1] > 0.0 && after.p99_range[0] > before.p99_range[1] * grown {
        findings.push(Finding::P99 {
            before_ms: before.p99_ms,
            after_ms: after.p99_ms,
        });
    }
    findings
}

/// The z statistic of "goodput fell by more than `limit`" (one-sided, unpooled variances).
fn drop_beyond(before: &Figures, after: &Figures, limit: f64) -> f64 {
    let (p1, n1) = (before.goodput, before.requests.max(1) as f64);
    let (p2, n2) = (after.goodput, after.requests.max(1) as f64);
    let excess = (p1 - p2) - limit;
    let se = (p1 * (1.0 - p1) / n1 + p2 * (1.0 - p2) / n2).sqrt();
    // Finite, so a finding stored in the proposal's watch record reads back.
    super::canary::finite_z(excess, se)
}

/// Replays `previous` and `current` on `model` (fitted on the windows since the swap) with the
/// observed arrivals, on the same seeds.
pub fn counterfactual(
    model: &Model,
    previous: &Genome,
    current: &Genome,
    config: &Config,
) -> Counterfactual {
    let objectives = &config.evolution.objectives;
    let (mut before, mut after) = (Replayed::default(), Replayed::default());
    for seed in 0..SEEDS {
        // One preparation per seed, both genomes on it: the same arrivals and upstream draws.
        let prepared = sim::Prepared::new(sim::Run {
            model,
            scenario: Scenario::Observed,
            duration: Duration::from_secs(model.window_secs.max(1)),
            rate: None,
            slo_latency: objectives.slo_latency.get(),
            client_timeout: objectives.client_timeout.get(),
            seed,
        });
        for (genome, sum) in [(previous, &mut before), (current, &mut after)] {
            let report = prepared.simulate(genome);
            sum.goodput += report.goodput() / SEEDS as f64;
            sum.p99_ms += quantile_ms(&report.histogram, 0.99) / SEEDS as f64;
        }
    }
    Counterfactual {
        previous: before,
        current: after,
        trusted: model.fidelity.as_ref().is_some_and(|f| f.trusted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(requests: u64, goodput: f64, p99_ms: f64, spread: f64) -> Figures {
        Figures {
            secs: 10,
            requests,
            goodput,
            p99_ms,
            p99_range: [p99_ms * (1.0 - spread), p99_ms * (1.0 + spread)],
        }
    }

    fn limits() -> WatchConfig {
        WatchConfig {
            duration: rafael_config::HumanDuration::from_secs(60),
            max_goodput_drop: 0.02,
            max_p99_increase: 0.25,
        }
    }

    #[test]
    fn a_drop_beyond_the_limit_on_enough_requests_is_a_suspect() {
        let before = figures(5000, 0.99, 20.0, 0.05);
        let after = figures(5000, 0.90, 20.0, 0.05);
        let found = suspect(&before, &after, &limits());
        assert!(
            matches!(found.as_slice(), [Finding::Goodput { z, .. }] if *z > 10.0),
            "{found:?}"
        );
    }

    #[test]
    fn a_drop_within_the_limit_or_on_few_requests_is_not() {
        let before = figures(5000, 0.99, 20.0, 0.05);
        // 1.5 points: inside the 2-point limit however many requests.
        assert!(suspect(&before, &figures(100_000, 0.975, 20.0, 0.01), &limits()).is_empty());
        // 9 points on 40 requests: z = (0.09 - 0.02) / 0.047, below 2.33.
        assert!(suspect(&before, &figures(40, 0.90, 20.0, 0.05), &limits()).is_empty());
        // A perfect route stays perfect.
        let perfect = figures(1000, 1.0, 20.0, 0.05);
        assert!(suspect(&perfect, &perfect, &limits()).is_empty());
    }

    #[test]
    fn a_p99_rise_counts_only_beyond_both_intervals() {
        let before = figures(5000, 0.99, 100.0, 0.1);
        // 140 ms point, but its low edge (126) is under 110 x 1.25 = 137.5.
        assert!(suspect(&before, &figures(5000, 0.99, 140.0, 0.1), &limits()).is_empty());
        let found = suspect(&before, &figures(5000, 0.99, 200.0, 0.1), &limits());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].metric(), "p99");
    }

    #[test]
    fn the_counterfactual_confirms_only_what_the_previous_genome_would_have_avoided() {
        let finding = Finding::Goodput {
            before: 0.99,
            after: 0.80,
            z: 20.0,
        };
        let replayed = |previous: f64, current: f64| Counterfactual {
            previous: Replayed {
                goodput: previous,
                p99_ms: 20.0,
            },
            current: Replayed {
                goodput: current,
                p99_ms: 20.0,
            },
            trusted: true,
        };
        // The old genome would have done as badly: the upstream's bad period, not the swap.
        assert!(!finding.confirmed_by(&replayed(0.81, 0.80), &limits()));
        // The old genome would have kept goodput up: the swap's fault.
        assert!(finding.confirmed_by(&replayed(0.98, 0.80), &limits()));
        let slower = Finding::P99 {
            before_ms: 20.0,
            after_ms: 60.0,
        };
        let mut cf = replayed(0.99, 0.99);
        cf.current.p99_ms = 60.0;
        assert!(slower.confirmed_by(&cf, &limits()));
        cf.previous.p99_ms = 58.0;
        assert!(!slower.confirmed_by(&cf, &limits()));
    }
}
