//! `POST /v1/simulate` and `rafael chaos simulate` (DESIGN §7.2): the predicted effect of
//! scenarios on the route's live genome and on candidates, on the route's fitted model.

use std::{collections::BTreeMap, time::Duration};

use rafael_config::{Config, ConfigErrors, Genome, HumanDuration};
use serde::{Deserialize, Serialize};

use super::{
    fitness::Objectives,
    model::Model,
    scenario::Scenario,
    sim::{Prepared, Run},
};

/// Longest simulated duration a request may ask for: the telemetry window.
pub const MAX_DURATION: Duration = Duration::from_secs(600);
/// Most seeds a request may ask for.
pub const MAX_SEEDS: u32 = 100;

/// The request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulateRequest {
    /// The route whose model and live genome are used.
    pub route: String,
    /// Scenario names (default: `observed`).
    #[serde(default)]
    pub scenarios: Vec<String>,
    /// Virtual time per run (default 60 s, at most 10 minutes).
    #[serde(default)]
    pub duration: Option<HumanDuration>,
    /// Seeds per scenario (default 5).
    #[serde(default)]
    pub seeds: Option<u32>,
    /// Requests per second, replacing the observed arrivals.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Candidate genomes by name; `incumbent` (the live genome) is always simulated too.
    #[serde(default)]
    pub genomes: BTreeMap<String, Genome>,
}

/// The answer.
#[derive(Debug, Clone, Serialize)]
pub struct SimulateResponse {
    /// The model the runs used.
    pub model: Model,
    /// One row per genome and scenario.
    pub results: Vec<SimulateRow>,
}

/// One genome in one scenario, over the seeds.
#[derive(Debug, Clone, Serialize)]
pub struct SimulateRow {
    /// `incumbent` or the candidate's name.
    pub genome: String,
    /// The scenario.
    pub scenario: String,
    /// The scenario drove an endpoint past what the model observed.
    pub extrapolated: bool,
    /// Share answered 2xx within the SLO.
    pub goodput: Spread,
    /// Median latency, milliseconds.
    pub p50_ms: Spread,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: Spread,
    /// Upstream attempts per request.
    pub amplification: Spread,
    /// Share refused by rafael.
    pub rejected: Spread,
    /// The weighted fitness.
    pub fitness: Spread,
}

/// Mean, min and max over the seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// Mean.
    pub mean: f64,
    /// Least.
    pub min: f64,
    /// Most.
    pub max: f64,
}

/// What was wrong with a request (each answers 400).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimulateError {
    /// A scenario name is not one.
    #[error("{0}")]
    Scenario(String),
    /// The duration is out of bounds.
    #[error("duration: must be 1s..=10m, got {0}")]
    Duration(HumanDuration),
    /// The seeds are out of bounds.
    #[error("seeds: must be 1..={MAX_SEEDS}, got {0}")]
    Seeds(u32),
    /// The rate is out of bounds.
    #[error("rate: must be above 0 and at most 100000, got {0}")]
    Rate(f64),
    /// A candidate genome is invalid.
    #[error("{0}")]
    Genome(ConfigErrors),
}

// === impl SimulateRequest ===

impl SimulateRequest {
    /// The checked scenarios, duration and seeds.
    pub fn validate(&self) -> Result<(Vec<Scenario>, Duration, u32), SimulateError> {
        let names = if self.scenarios.is_empty() {
            vec!["observed".to_owned()]
        } else {
            self.scenarios.clone()
        };
        let scenarios = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                name.parse::<Scenario>()
                    .map_err(|e| SimulateError::Scenario(format!("scenarios[{i}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let duration = self.duration.unwrap_or(HumanDuration::from_secs(60));
        if duration.get() < Duration::from_secs(1) || duration.get() > MAX_DURATION {
            return Err(SimulateError::Duration(duration));
        }
        let seeds = self.seeds.unwrap_or(5);
        if !(1..=MAX_SEEDS).contains(&seeds) {
            return Err(SimulateError::Seeds(seeds));
        }
        if let Some(rate) = self.rate {
            if !(rate > 0.0 && rate <= 100_000.0) {
                return Err(SimulateError::Rate(rate));
            }
        }
        let mut errors = ConfigErrors::default();
        for (name, genome) in &self.genomes {
            genome.validate(&format!("genomes.{name}"), &mut errors);
        }
        if !errors.is_empty() {
            return Err(SimulateError::Genome(errors));
        }
        Ok((scenarios, duration.get(), seeds))
    }
}

/// Runs `request` on `model`, with `incumbent` (the route's live genome) and `config`'s
/// objectives. `request` must have passed [`SimulateRequest::validate`].
pub fn simulate(
    request: &SimulateRequest,
    model: Model,
    incumbent: &Genome,
    config: &Config,
) -> Result<SimulateResponse, SimulateError> {
    let (scenarios, duration, seeds) = request.validate()?;
    let objectives = &config.evolution.objectives;
    let genomes: Vec<(&str, &Genome)> = std::iter::once(("incumbent", incumbent))
        .chain(
            request
                .genomes
                .iter()
                .filter(|(name, _)| name.as_str() != "incumbent")
                .map(|(name, genome)| (name.as_str(), genome)),
        )
        .collect();
    let mut rows = Vec::new();
    for scenario in &scenarios {
        let prepared: Vec<Prepared<'_>> = (0..u64::from(seeds))
            .map(|seed| {
                Prepared::new(Run {
                    model: &model,
                    scenario: *scenario,
                    duration,
                    rate: request.rate,
                    slo_latency: objectives.slo_latency.get(),
                    client_timeout: objectives.client_timeout.get(),
                    seed,
                })
            })
            .collect();
        for (name, genome) in &genomes {
            let mut extrapolated = false;
            let runs: Vec<(Objectives, f64, f64)> = prepared
                .iter()
                .map(|run| {
                    let report = run.simulate(genome);
                    extrapolated |= report.extrapolated;
                    let objectives = Objectives::of(
                        &report,
                        objectives.slo_latency.get().as_secs_f64(),
                        &objectives.weights,
                    );
                    let ms = |d: Duration| d.as_secs_f64() * 1e3;
                    (objectives, ms(report.p50), ms(report.p99))
                })
                .collect();
            let spread =
                |f: &dyn Fn(&(Objectives, f64, f64)) -> f64| Spread::of(runs.iter().map(f));
            rows.push(SimulateRow {
                genome: (*name).to_owned(),
                scenario: scenario.to_string(),
                extrapolated,
                goodput: spread(&|r| r.0.goodput),
                p50_ms: spread(&|r| r.1),
                p99_ms: spread(&|r| r.2),
                amplification: spread(&|r| r.0.amplification),
                rejected: spread(&|r| r.0.rejected),
                fitness: spread(&|r| r.0.fitness),
            });
        }
    }
    Ok(SimulateResponse {
        model,
        results: rows,
    })
}

// === impl Spread ===

impl Spread {
    fn of(values: impl Iterator<Item = f64>) -> Self {
        let values: Vec<f64> = values.collect();
        let n = values.len().max(1) as f64;
        Self {
            mean: values.iter().sum::<f64>() / n,
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evolution::testing::pool;

    fn request(json: &str) -> SimulateRequest {
        serde_json::from_str(json).expect("a well-formed request")
    }

    #[test]
    fn bad_requests_name_what_is_wrong() {
        let cases = [
            (
                r#"{"route": "r", "scenarios": ["observed", "quake:high"]}"#,
                "scenarios[1]: unknown scenario \"quake:high\"",
            ),
            (
                r#"{"route": "r", "scenarios": ["latency:huge"]}"#,
                "unknown severity \"huge\"",
            ),
            (
                r#"{"route": "r", "duration": "11m"}"#,
                "duration: must be 1s..=10m, got 11m",
            ),
            (r#"{"route": "r", "seeds": 0}"#, "seeds: must be 1..=100"),
            (
                r#"{"route": "r", "genomes": {"c": {"retry": {"max_attempts": 0}}}}"#,
                "genomes.c.retry.max_attempts",
            ),
        ];
        for (json, expected) in cases {
            let error = request(json).validate().unwrap_err().to_string();
            assert!(error.contains(expected), "{json}: {error}");
        }
        assert!(
            serde_json::from_str::<SimulateRequest>(r#"{"route": "r", "sceanrios": []}"#).is_err()
        );
    }

    #[test]
    fn every_genome_meets_every_scenario_and_retries_show_their_worth() {
        let model = pool(8, 10.0, 0.2, 100.0);
        let request = request(
            r#"{"route": "r", "scenarios": ["nominal", "latency:high"], "duration": "20s", "seeds": 3,
                "genomes": {"candidate": {"retry": {"max_attempts": 3, "retry_on": ["5xx"], "budget_ratio": 1.0}}}}"#,
        );
        let answer = simulate(&request, model, &Genome::default(), &Config::default()).unwrap();
        assert_eq!(answer.results.len(), 4);
        let row = |genome: &str, scenario: &str| {
            answer
                .results
                .iter()
                .find(|r| r.genome == genome && r.scenario == scenario)
                .expect("a row")
        };
        let (plain, retried) = (row("incumbent", "nominal"), row("candidate", "nominal"));
        assert!((plain.goodput.mean - 0.8).abs() < 0.03, "{plain:?}");
        assert!(retried.goodput.mean > 0.98, "{retried:?}");
        assert!(retried.amplification.mean > plain.amplification.mean);
        assert!(plain.goodput.min <= plain.goodput.mean && plain.goodput.mean <= plain.goodput.max);
        // Latency high: 75% of attempts wait 1-2 s, far past the 300 ms SLO.
        assert!(row("incumbent", "latency:high").goodput.mean < 0.3);
    }
}
