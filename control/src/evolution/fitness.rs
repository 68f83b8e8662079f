//! Fitness (DESIGN §7.3): what a good genome is, per scenario, and how scenarios combine.
//!
//! Four objectives, each reported on its own:
//! - **goodput**: share of offered requests answered 2xx within `slo_latency` and before the
//!   client gave up (`client_timeout`) — the only one that goes up;
//! - **latency**: how far the p99 of answered requests runs over `slo_latency`, as a share of
//!   it (`max(0, p99 / slo - 1)`: 0 for a tail within the SLO, 1.0 for a p99 at twice it),
//!   capped at [`LATENCY_CAP`] so one hopeless scenario cannot drown the others. A tail inside
//!   the SLO costs nothing here: those requests count as goodput already, and charging for
//!   them would make a retry that rescues a request in 60 ms look worse than the failure;
//! - **amplification**: upstream attempts per offered request (what retries cost the upstream);
//! - **rejected**: share refused by rafael itself (429, shed, every breaker open).
//!
//! `fitness = w.goodput * goodput - w.latency * latency - w.amplification * amplification -
//! w.rejected * rejected`, with the weights of `[evolution].objectives.weights`. Worked example
//! with the default weights (1.0, 0.3, 0.2, 0.5): goodput 0.95, p99 450 ms against a 300 ms
//! SLO (latency 0.5), 1.1 attempts per request, 1% rejected gives
//! `0.95 - 0.15 - 0.22 - 0.005 = 0.575`.

use rafael_config::ObjectiveWeights;
use serde::{Deserialize, Serialize};

use super::sim::Report;

/// The latency objective's cap: a p99 eleven times the SLO is as bad as it gets for ranking.
pub const LATENCY_CAP: f64 = 10.0;

/// The objectives of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Objectives {
    /// Share answered 2xx within the SLO.
    pub goodput: f64,
    /// How far p99 runs over the SLO, as a share of it.
    pub latency: f64,
    /// Attempts per request.
    pub amplification: f64,
    /// Share refused by rafael.
    pub rejected: f64,
    /// The weighted sum.
    pub fitness: f64,
}

/// How scenarios combine into one figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    /// The mean over scenarios.
    #[default]
    Mean,
    /// The worst scenario.
    Worst,
}

// === impl Objectives ===

impl Objectives {
    /// The objectives of `report`, run against `slo` (seconds), weighted by `weights`.
    pub fn of(report: &Report, slo_secs: f64, weights: &ObjectiveWeights) -> Self {
        let latency = if slo_secs > 0.0 {
            (report.p99.as_secs_f64() / slo_secs - 1.0).clamp(0.0, LATENCY_CAP)
        } else {
            0.0
        };
        let mut objectives = Self {
            goodput: report.goodput(),
            latency,
            amplification: report.amplification(),
            rejected: report.rejected_share(),
            fitness: 0.0,
        };
        objectives.fitness = objectives.weighted(weights);
        objectives
    }

    /// The weighted sum.
    pub fn weighted(&self, w: &ObjectiveWeights) -> f64 {
        w.goodput * self.goodput
            - w.latency * self.latency
            - w.amplification * self.amplification
            - w.rejected * self.rejected
    }

    /// The mean of several runs' objectives (over seeds), the fitness included.
    pub fn mean(runs: &[Self]) -> Self {
        if runs.is_empty() {
            return Self::default();
        }
        let n = runs.len() as f64;
        let sum = |f: fn(&Self) -> f64| runs.iter().map(f).sum::<f64>() / n;
        Self {
            goodput: sum(|o| o.goodput),
            latency: sum(|o| o.latency),
            amplification: sum(|o| o.amplification),
            rejected: sum(|o| o.rejected),
            fitness: sum(|o| o.fitness),
        }
    }
}

// === impl Aggregate ===

impl Aggregate {
    /// Combines per-scenario fitness figures.
    pub fn combine(self, per_scenario: &[f64]) -> f64 {
        match self {
            _ if per_scenario.is_empty() => 0.0,
            Self::Mean => per_scenario.iter().sum::<f64>() / per_scenario.len() as f64,
            Self::Worst => per_scenario.iter().copied().fold(f64::INFINITY, f64::min),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_worked_example_of_the_module_doc_holds() {
        let report = Report {
            offered: 1000,
            good: 950,
            rejected: 10,
            attempts: 1100,
            p99: Duration::from_millis(450),
            ..Report::default()
        };
        let objectives = Objectives::of(&report, 0.3, &ObjectiveWeights::default());
        assert!((objectives.goodput - 0.95).abs() < 1e-12);
        assert!((objectives.latency - 0.5).abs() < 1e-12);
        assert!((objectives.fitness - 0.575).abs() < 1e-12, "{objectives:?}");
        let within = Report {
            p99: Duration::from_millis(240),
            ..report.clone()
        };
        assert_eq!(
            Objectives::of(&within, 0.3, &ObjectiveWeights::default()).latency,
            0.0
        );
        let hopeless = Report {
            p99: Duration::from_secs(60),
            ..report
        };
        assert_eq!(
            Objectives::of(&hopeless, 0.3, &ObjectiveWeights::default()).latency,
            LATENCY_CAP
        );
    }

    #[test]
    fn worst_takes_the_minimum_and_mean_the_average() {
        assert_eq!(Aggregate::Worst.combine(&[0.5, -0.25, 0.75]), -0.25);
        assert_eq!(Aggregate::Mean.combine(&[0.5, -0.25, 0.75]), 1.0 / 3.0);
    }
}
