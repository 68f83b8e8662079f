//! One round's search and verdict, as a pure function of (model, incumbent, settings, seed).
//!
//! Simulating every genome of every generation on every seed and scenario would take minutes,
//! so simulation is spent where it decides (racing):
//! - **search**: every genome the strategy proposes is scored on short runs — the first two
//!   seeds, every scenario, a sixth of the full duration;
//! - **verdict**: the strategy's surviving parents and the incumbent are scored on full runs —
//!   every seed, every scenario, the full duration (for `observed`, the whole window the model
//!   was fitted on, so its bad periods weigh what they weighed) — and compared on paired seeds.
//!
//! Every genome of a round is simulated on the same prepared runs (the same arrivals and the
//! same upstream luck per seed and scenario), so differences between genomes are the genomes'.
//! A round proposes only when the best contender beats the incumbent on the aggregate by at
//! least `margin`, as a mean of per-seed differences, and loses no more than `margin` in any
//! scenario.

use std::time::Duration;

use rafael_config::{
    AggregateMode, BreakerGenes, ConcurrencyGenes, Config, Genome, HumanDuration, RetryCondition,
    RetryGenes,
};

use super::RoundResult;
use crate::{
    evolution::{
        fitness::{Aggregate, Objectives},
        model::{EndpointModel, Model, Regime, RegimeKind},
        scenario::Scenario,
        search::{Found, Settings, peer_defaults, search},
        sim::{Prepared, Run},
    },
    guardian::{
        guardrails::{Guardrails, check, repair},
        proposal::Predicted,
    },
};

/// Seeds of the search's short runs.
const SEARCH_SEEDS: u64 = 2;
/// Short runs last this share of the full duration.
const SEARCH_SHARE: u32 = 6;
/// Shortest short run.
const SEARCH_MIN: Duration = Duration::from_secs(5);

/// What a round found.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// `proposed` or `no_improvement`.
    pub result: RoundResult,
    /// Why, in words.
    pub reason: String,
    /// The best contender, when it beats the incumbent.
    pub candidate: Option<Genome>,
    /// The incumbent's aggregate fitness on the full runs.
    pub incumbent_fitness: f64,
    /// The best contender's.
    pub best_fitness: f64,
    /// Per scenario, the incumbent's and the best contender's objectives.
    pub predicted: Vec<Predicted>,
    /// Generations the search ran.
    pub generations: u32,
    /// Distinct genomes the search scored.
    pub evaluations: u32,
}

/// Scores of one genome on a set of runs: fitness per (scenario, seed) and objectives.
#[derive(Debug, Clone)]
struct Scored {
    /// `[scenario][seed]`.
    objectives: Vec<Vec<Objectives>>,
    extrapolated: Vec<bool>,
}

/// The prepared runs of one evaluation level.
struct Runs<'m> {
    /// `[scenario][seed]`.
    runs: Vec<Vec<Prepared<'m>>>,
}

/// What a round evaluates on: the model, the configured scenarios and objectives, and the
/// seed its runs derive from. Both the search and a hand-written proposal's evidence score
/// genomes through it, so they are judged alike.
struct Bench<'m> {
    model: &'m Model,
    config: &'m Config,
    scenarios: Vec<Scenario>,
    seed: u64,
    aggregate: Aggregate,
}

// === impl Bench ===

impl<'m> Bench<'m> {
    fn new(model: &'m Model, config: &'m Config, seed: u64) -> Self {
        let evolution = &config.evolution;
        Self {
            model,
            config,
            scenarios: evolution
                .scenarios
                .iter()
                .filter_map(|name| name.parse().ok())
                .collect(),
            seed,
            aggregate: match evolution.aggregate {
                AggregateMode::Mean => Aggregate::Mean,
                AggregateMode::Worst => Aggregate::Worst,
            },
        }
    }

    /// Runs of `seeds` seeds and `duration` per scenario; `full`: the observed scenario's run
    /// replays the whole window the model was fitted on, so its regimes weigh what they
    /// weighed (a short run replays a segment around them).
    fn prepare(&self, seeds: u64, duration: Duration, full: bool) -> Runs<'m> {
        let objectives = &self.config.evolution.objectives;
        let window = Duration::from_secs(
            self.model
                .replay_secs(crate::evolution::model::check::MAX_RUN_REQUESTS)
                .min(600),
        );
        Runs {
            runs: self
                .scenarios
                .iter()
                .map(|&scenario| {
                    let duration = if full && scenario == Scenario::Observed {
                        window
                    } else {
                        duration
                    };
                    (0..seeds)
                        .map(|i| {
                            Prepared::new(Run {
                                model: self.model,
                                scenario,
                                duration,
                                rate: None,
                                slo_latency: objectives.slo_latency.get(),
                                client_timeout: objectives.client_timeout.get(),
                                seed: self.seed.wrapping_mul(1_000_003).wrapping_add(i),
                            })
                        })
                        .collect()
                })
                .collect(),
        }
    }

    /// The full runs a verdict is made on: every seed, the full duration.
    fn full(&self) -> Runs<'m> {
        let evolution = &self.config.evolution;
        self.prepare(u64::from(evolution.seeds), evolution.duration.get(), true)
    }

    /// `genome`'s objectives on `runs`.
    fn score(&self, runs: &Runs<'_>, genome: &Genome) -> Scored {
        let objectives = &self.config.evolution.objectives;
        let slo_secs = objectives.slo_latency.get().as_secs_f64();
        let mut extrapolated = Vec::new();
        let scored = runs
            .runs
            .iter()
            .map(|per_seed| {
                let mut beyond = false;
                let scored = per_seed
                    .iter()
                    .map(|prepared| {
                        let report = prepared.simulate(genome);
                        beyond |= report.extrapolated;
                        Objectives::of(&report, slo_secs, &objectives.weights)
                    })
                    .collect();
                extrapolated.push(beyond);
                scored
            })
            .collect();
        Scored {
            objectives: scored,
            extrapolated,
        }
    }

    /// Per scenario, the incumbent's (`base`) and the candidate's mean objectives.
    fn predicted(&self, base: &Scored, scored: &Scored) -> Vec<Predicted> {
        self.scenarios
            .iter()
            .enumerate()
            .map(|(i, scenario)| Predicted {
                scenario: scenario.to_string(),
                extrapolated: base.extrapolated[i] || scored.extrapolated[i],
                incumbent: Objectives::mean(&base.objectives[i]),
                candidate: Objectives::mean(&scored.objectives[i]),
            })
            .collect()
    }
}

/// The evidence a round would give `candidate` against `incumbent` on `model`: the predicted
/// objectives per configured scenario on the verdict's full runs (every seed, the full
/// duration), seeded by `seed`. A hand-written proposal gets this, as evolution's do.
pub fn predict(
    model: &Model,
    incumbent: &Genome,
    candidate: &Genome,
    config: &Config,
    seed: u64,
) -> Vec<Predicted> {
    let bench = Bench::new(model, config, seed);
    let runs = bench.full();
    bench.predicted(
        &bench.score(&runs, incumbent),
        &bench.score(&runs, candidate),
    )
}

/// Searches for a better genome than `incumbent` on `model`, with `config`'s evolution and
/// guardian settings, seeded by `seed`; the first generation also holds `patterns` (the
/// vault's patterns that fit, [`crate::vault::seeds`]).
pub fn evolve(
    model: &Model,
    incumbent: &Genome,
    config: &Config,
    seed: u64,
    patterns: &[Genome],
) -> Verdict {
    let evolution = &config.evolution;
    let objectives = &evolution.objectives;
    let bench = Bench::new(model, config, seed);
    let scenarios = &bench.scenarios;
    let aggregate = bench.aggregate;
    let duration = evolution.duration.get();
    let short = (duration / SEARCH_SHARE).max(SEARCH_MIN).min(duration);
    let score = |runs: &Runs<'_>, genome: &Genome| bench.score(runs, genome);

    // Search on short runs.
    let short_runs = bench.prepare(SEARCH_SEEDS.min(u64::from(evolution.seeds)), short, false);
    let rails = Guardrails::from_config(config);
    let mut seeds_of_search: Vec<Genome> = informed(model, incumbent, objectives.slo_latency.get());
    seeds_of_search.extend(peer_defaults());
    seeds_of_search.retain(|g| g != incumbent);
    // Patterns join the search, not the full-run fallback below: that one is for the seeds the
    // model itself suggested.
    let first_generation: Vec<Genome> = seeds_of_search
        .iter()
        .chain(patterns.iter().filter(|g| *g != incumbent))
        .cloned()
        .collect();
    let found: Found = search(
        incumbent,
        &first_generation,
        &rails,
        Settings {
            parents: evolution.parents as usize,
            offspring: evolution.population as usize,
            generations: evolution.generations as usize,
            seed,
        },
        |batch| {
            batch
                .iter()
                .map(|genome| fitness(&score(&short_runs, genome), aggregate))
                .collect()
        },
    );

    // Verdict on full runs, paired seeds.
    let full_runs = bench.full();
    let base = score(&full_runs, incumbent);
    let base_fitness = fitness(&base, aggregate);
    // The search's best on the full runs; when none of them passes the verdict's rules (gains
    // `margin` on paired seeds and loses no scenario by more), the seeds the model suggested
    // too: the short runs rank by noisy figures, and a simple seed that wins on the full runs
    // must not be lost to them (a round whose search kept a breaker that tripped only in the
    // full `nominal` runs once missed the plain retries that gained in every scenario). Only
    // then, so a round whose search found an acceptable genome costs what it cost before.
    let margin = evolution.margin;
    let mut best: Option<(Genome, Scored, f64, bool)> = None;
    let mut scored_already: Vec<Genome> = Vec::new();
    let mut consider = |genome: &Genome, best: &mut Option<(Genome, Scored, f64, bool)>| {
        if genome == incumbent
            || scored_already.contains(genome)
            || !check(genome, incumbent, &rails).is_empty()
        {
            return;
        }
        scored_already.push(genome.clone());
        let scored = score(&full_runs, genome);
        let value = fitness(&scored, aggregate);
        let eligible = paired_gain(&base, &scored, aggregate) >= margin
            && (0..scenarios.len())
                .all(|i| mean_difference(&base.objectives[i], &scored.objectives[i]) >= -margin);
        let better = best
            .as_ref()
            .is_none_or(|(_, _, b, was)| (eligible, value) > (*was, *b));
        if better {
            *best = Some((genome.clone(), scored, value, eligible));
        }
    };
    for (genome, _) in &found.best {
        consider(genome, &mut best);
    }
    if !best.as_ref().is_some_and(|(_, _, _, eligible)| *eligible) {
        for seed in &seeds_of_search {
            if let Some(repaired) = repair(seed.clone(), incumbent, &rails) {
                consider(&repaired, &mut best);
            }
        }
    }
    let best = best.map(|(genome, scored, value, _)| (genome, scored, value));
    let generations = u32::try_from(found.generations).unwrap_or(u32::MAX);
    let evaluations = u32::try_from(found.evaluations).unwrap_or(u32::MAX);
    let Some((genome, scored, best_fitness)) = best else {
        return Verdict {
            result: RoundResult::NoImprovement,
            reason: "no genome other than the incumbent survived the search".into(),
            candidate: None,
            incumbent_fitness: base_fitness,
            best_fitness: base_fitness,
            predicted: Vec::new(),
            generations,
            evaluations,
        };
    };
    let predicted = bench.predicted(&base, &scored);
    let gain = paired_gain(&base, &scored, aggregate);
    let worst_scenario = (0..scenarios.len())
        .map(|i| {
            let loss = mean_difference(&base.objectives[i], &scored.objectives[i]);
            (i, loss)
        })
        .min_by(|a, b| a.1.total_cmp(&b.1));
    let (result, reason, candidate) = if gain < margin {
        (
            RoundResult::NoImprovement,
            format!("the best genome gains {gain:.4} on paired seeds, under the margin {margin}"),
            None,
        )
    } else if let Some((i, loss)) = worst_scenario.filter(|(_, loss)| *loss < -margin) {
        (
            RoundResult::NoImprovement,
            format!(
                "the best genome gains {gain:.4} but loses {:.4} in scenario {}, more than the margin {margin}",
                -loss, scenarios[i]
            ),
            None,
        )
    } else {
        (
            RoundResult::Proposed,
            format!("the best genome gains {gain:.4} on paired seeds (margin {margin})"),
            Some(genome),
        )
    };
    Verdict {
        result,
        reason,
        candidate,
        incumbent_fitness: base_fitness,
        best_fitness,
        predicted,
        generations,
        evaluations,
    }
}

/// Genomes the model suggests, for the first generation: the incumbent with retries and with
/// a breaker that react to the way this upstream fails (a retry on `gateway-error` never fires
/// for an upstream that answers 500; the model knows which statuses it answers); and, when one
/// endpoint was slow past `slo` among healthy ones, the incumbent with a per-try timeout that
/// routes around it ([`around_slow_endpoint`]), with and without the breaker; and, when the
/// model knows the upstream's workers, the incumbent with a concurrency limit at them
/// ([`at_capacity`]). The search repairs every seed into the guardrails before it scores it.
fn informed(model: &Model, incumbent: &Genome, slo: Duration) -> Vec<Genome> {
    let mut conditions = vec![RetryCondition::ConnectFailure, RetryCondition::Reset];
    for endpoint in &model.endpoints {
        let condition = match endpoint.failure.status {
            Some(502..=504) => RetryCondition::GatewayError,
            Some(500..=599) => RetryCondition::ServerError,
            Some(status) => RetryCondition::Status(status),
            None => RetryCondition::Reset,
        };
        if endpoint.failure.rate > 0.0 {
            add_missing(&mut conditions, &[condition]);
        }
        if endpoint.timeout_rate > 0.0 {
            add_missing(&mut conditions, &[RetryCondition::Timeout]);
        }
    }
    let mut retrying = incumbent.clone();
    let retry = retrying.retry.get_or_insert_with(RetryGenes::default);
    add_missing(&mut retry.retry_on, &conditions);
    let mut breaking = incumbent.clone();
    let breaker = breaking
        .circuit_breaker
        .get_or_insert_with(BreakerGenes::default);
    add_missing(&mut breaker.failure_on, &conditions);
    let mut both = retrying.clone();
    both.circuit_breaker = breaking.circuit_breaker.clone();
    let mut seeds = vec![retrying, breaking.clone(), both];
    if let Some(routing) = around_slow_endpoint(model, incumbent, slo, &conditions) {
        // With the breaker too, counting the cut-off attempts: it keeps attempts off the slow
        // endpoint instead of paying a per-try timeout and a retry for each.
        let mut ejecting = routing.clone();
        ejecting.circuit_breaker = breaking.circuit_breaker;
        if let Some(breaker) = ejecting.circuit_breaker.as_mut() {
            add_missing(&mut breaker.failure_on, &[RetryCondition::Timeout]);
        }
        seeds.extend([routing, ejecting]);
    }
    seeds.extend(at_capacity(model, incumbent));
    seeds
}

/// The incumbent with a concurrency limit at the upstream's workers and at twice as many,
/// when the model knows them (fitted, or calibrated from a storm), attempts timed out, and the
/// incumbent has no limit: past its workers an upstream only queues, and a queue that grows
/// past the deadlines turns every attempt into a timeout and every timeout into a retry.
/// Shedding the excess at once keeps the queue short, so a drop costs what it takes and not
/// the storm after it. The search moves the limit from there. Without timeouts there is no
/// such queue to cut, and a limit only sheds what bunched arrivals bring (a round on a route
/// with steady errors once kept one that gained in the observed window and lost in `nominal`).
fn at_capacity(model: &Model, incumbent: &Genome) -> Vec<Genome> {
    let timed_out =
        !model.censored_secs.is_empty() || model.endpoints.iter().any(|e| e.timeout_rate > 0.0);
    if incumbent.concurrency.is_some() || !timed_out {
        return Vec::new();
    }
    let workers: f64 = model
        .endpoints
        .iter()
        .filter_map(|e| e.capacity.map(|c| c.concurrency))
        .sum();
    if workers < 1.0 {
        return Vec::new();
    }
    let workers = workers.ceil() as u32;
    [workers, 2 * workers]
        .into_iter()
        .map(|max_in_flight| Genome {
            concurrency: Some(ConcurrencyGenes {
                max_in_flight,
                adaptive: false,
            }),
            ..incumbent.clone()
        })
        .collect()
}

/// Adds to `set` each of `conditions` it does not hold yet, in their order.
fn add_missing(set: &mut Vec<RetryCondition>, conditions: &[RetryCondition]) {
    for condition in conditions {
        if !set.contains(condition) {
            set.push(*condition);
        }
    }
}

/// The incumbent with a per-try timeout that cuts off an attempt on a slow endpoint in time
/// for a retry on another one to answer within `slo` (a retry avoids the endpoint that just
/// failed), when the model has an endpoint-only brownout whose median latency misses `slo`
/// while some endpoint is never slow. Power of two choices already steers load away from a
/// slow endpoint, but not all of it: an endpoint a few times slower than the others still
/// takes a share of the attempts, and each one misses the SLO.
///
/// The per-try timeout sits above the p99 of the endpoints never slow (so healthy attempts are
/// not cut off) with half of what two healthy attempts leave of the SLO, and the backoff gets at
/// most a quarter of it; the retry also reacts to `conditions`, as the other seeds do. `None`
/// when no regime is like that, or two healthy attempts do not fit in the SLO.
fn around_slow_endpoint(
    model: &Model,
    incumbent: &Genome,
    slo: Duration,
    conditions: &[RetryCondition],
) -> Option<Genome> {
    let slo_ms = slo.as_secs_f64() * 1e3;
    let slow: Vec<&str> = model
        .regimes
        .iter()
        .filter(|regime| regime.kind == RegimeKind::Brownout)
        .filter_map(|regime| {
            let address = regime.endpoint.as_deref()?;
            let endpoint = model.endpoints.iter().find(|e| e.endpoint == address)?;
            (brownout_p50_ms(regime, endpoint) > slo_ms).then_some(address)
        })
        .collect();
    if slow.is_empty() {
        return None;
    }
    // The slow endpoints' own p99 may hold attempts of their brownouts (a second at either
    // end of a period the fit did not count in it): the healthy ones say what healthy is.
    let healthy_ms = model
        .endpoints
        .iter()
        .filter(|e| !slow.contains(&e.endpoint.as_str()))
        .map(|e| e.service_time.p99_ms)
        .reduce(f64::max)?;
    // What two healthy attempts leave of the SLO: the cut-off attempt's wait beyond the
    // healthy p99, and the backoff before the retry, must fit in it.
    let spare_ms = slo_ms - 2.0 * healthy_ms;
    if spare_ms < 2.0 {
        return None;
    }
    let millis = |ms: f64| HumanDuration::from_millis((ms.round() as u64).max(1));
    let mut genome = incumbent.clone();
    let retry = genome.retry.get_or_insert_with(RetryGenes::default);
    retry.max_attempts = retry.max_attempts.max(2);
    retry.per_try_timeout = Some(millis(healthy_ms + spare_ms / 2.0));
    let backoff = millis(spare_ms / 4.0);
    retry.backoff_base = retry.backoff_base.min(backoff);
    retry.backoff_max = retry.backoff_max.min(backoff).max(retry.backoff_base);
    add_missing(&mut retry.retry_on, conditions);
    add_missing(&mut retry.retry_on, &[RetryCondition::Timeout]);
    Some(genome)
}

/// Median latency of `endpoint` during the slowest period of `regime`: the period's own
/// distribution when the fit saw enough of it, the regime's factor on the healthy one if not.
fn brownout_p50_ms(regime: &Regime, endpoint: &EndpointModel) -> f64 {
    let by_factor = endpoint.service_time.p50_ms * regime.service_time_factor;
    regime
        .periods
        .iter()
        .map(|p| p.service_time.map_or(by_factor, |s| s.p50_ms))
        .reduce(f64::max)
        .unwrap_or(by_factor)
}

/// The aggregate fitness of `scored`: per seed, scenarios combined by `aggregate`; then the
/// mean over seeds.
fn fitness(scored: &Scored, aggregate: Aggregate) -> f64 {
    let per_seed = per_seed(scored, aggregate);
    per_seed.iter().sum::<f64>() / per_seed.len().max(1) as f64
}

fn per_seed(scored: &Scored, aggregate: Aggregate) -> Vec<f64> {
    let seeds = scored.objectives.first().map_or(0, Vec::len);
    (0..seeds)
        .map(|seed| {
            let per_scenario: Vec<f64> = scored
                .objectives
                .iter()
                .map(|runs| runs[seed].fitness)
                .collect();
            aggregate.combine(&per_scenario)
        })
        .collect()
}

/// The mean over seeds of the candidate's aggregate minus the incumbent's, seed by seed.
fn paired_gain(incumbent: &Scored, candidate: &Scored, aggregate: Aggregate) -> f64 {
    let a = per_seed(incumbent, aggregate);
    let b = per_seed(candidate, aggregate);
    let n = a.len().min(b.len()).max(1) as f64;
    a.iter().zip(&b).map(|(a, b)| b - a).sum::<f64>() / n
}

/// The mean over seeds of the candidate's fitness minus the incumbent's in one scenario.
fn mean_difference(incumbent: &[Objectives], candidate: &[Objectives]) -> f64 {
    let n = incumbent.len().min(candidate.len()).max(1) as f64;
    incumbent
        .iter()
        .zip(candidate)
        .map(|(a, b)| b.fitness - a.fitness)
        .sum::<f64>()
        / n
}

#[cfg(test)]
mod tests;
