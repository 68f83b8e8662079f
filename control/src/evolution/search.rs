//! The evolution strategy (DESIGN §7.4): a seeded (mu + lambda) strategy over normalized genes
//! with self-adaptive step sizes.
//!
//! Each individual carries its own step size `sigma`, mutated log-normally before its genes
//! (Schwefel's self-adaptation): steps that produce good offspring survive with them, so the
//! search takes large steps while they pay and small ones near an optimum without a schedule to
//! tune. A mutation moves each numeric gene with probability [`GENE_RATE`] by `sigma * N(0, 1)`
//! in its normalized space (log scale for durations and rates), toggles a condition of
//! `retry_on` or `failure_on`, flips `concurrency.adaptive`, or switches a whole section on
//! (from its defaults) or off. Every offspring is repaired against the guardrails before it is
//! evaluated, and dropped when it cannot be: nothing unacceptable is ever evaluated, so nothing
//! unacceptable can win.
//!
//! Parents and offspring compete together (the "plus" strategy), so the best genome found is
//! never lost; the incumbent is in the first generation, so the winner is never worse than it
//! on the search's own evaluation. Identical genomes are evaluated once. The strategy is a pure
//! function of its seed and of what `evaluate` answers.

use std::collections::BTreeMap;

use rafael_config::{
    BreakerGenes, ConcurrencyGenes, Genome, HumanDuration, RetryCondition, RetryGenes,
};
use rand::{RngExt, SeedableRng, rngs::Xoshiro256PlusPlus};
use rand_distr::{Distribution, StandardNormal};

use super::genes::{GENES, SECTIONS};
use crate::guardian::guardrails::{Guardrails, repair};

/// Chance that a mutation moves a given numeric gene.
pub const GENE_RATE: f64 = 0.3;
/// Chance that a mutation switches a given section on or off.
const SECTION_RATE: f64 = 0.06;
/// Chance that a mutation toggles a condition of a set.
const SET_RATE: f64 = 0.15;
/// The conditions a set may hold (status codes stay as the incumbent has them).
const CONDITIONS: [RetryCondition; 5] = [
    RetryCondition::ConnectFailure,
    RetryCondition::Reset,
    RetryCondition::ServerError,
    RetryCondition::GatewayError,
    RetryCondition::Timeout,
];

/// The strategy's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Parents kept each generation (mu).
    pub parents: usize,
    /// Offspring each generation (lambda).
    pub offspring: usize,
    /// Generations after the first.
    pub generations: usize,
    /// The seed.
    pub seed: u64,
}

/// A genome and its step size.
#[derive(Debug, Clone, PartialEq)]
struct Individual {
    genome: Genome,
    sigma: f64,
    fitness: f64,
}

/// What a search found.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// The genomes of the last generation's parents, best first, with their fitness.
    pub best: Vec<(Genome, f64)>,
    /// Distinct genomes evaluated.
    pub evaluations: usize,
    /// Generations run, the first included.
    pub generations: usize,
}

/// Searches from `seeds` (the incumbent first, then peer defaults and patterns), each repaired
/// against `rails` relative to `incumbent`. `evaluate` scores a batch of genomes (higher is
/// better), in the order given.
pub fn search(
    incumbent: &Genome,
    seeds: &[Genome],
    rails: &Guardrails,
    settings: Settings,
    mut evaluate: impl FnMut(&[Genome]) -> Vec<f64>,
) -> Found {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(settings.seed);
    let mut scored: BTreeMap<String, f64> = BTreeMap::new();
    let mut evaluate_new = |genomes: Vec<Genome>, scored: &mut BTreeMap<String, f64>| {
        let fresh: Vec<Genome> = {
            let mut seen = std::collections::BTreeSet::new();
            genomes
                .iter()
                .filter(|g| !scored.contains_key(&key(g)) && seen.insert(key(g)))
                .cloned()
                .collect()
        };
        if !fresh.is_empty() {
            for (genome, fitness) in fresh.iter().zip(evaluate(&fresh)) {
                scored.insert(key(genome), fitness);
            }
        }
        genomes
            .into_iter()
            .map(|g| {
                let fitness = scored.get(&key(&g)).copied().unwrap_or(f64::NEG_INFINITY);
                (g, fitness)
            })
            .collect::<Vec<_>>()
    };
    let first: Vec<Genome> = std::iter::once(incumbent.clone())
        .chain(seeds.iter().cloned())
        .filter_map(|g| repair(g, incumbent, rails))
        .collect();
    let mut population: Vec<Individual> = evaluate_new(first, &mut scored)
        .into_iter()
        .map(|(genome, fitness)| Individual {
            genome,
            sigma: 0.2,
            fitness,
        })
        .collect();
    select(&mut population, settings.parents.max(1));
    if population.is_empty() {
        // Not even the incumbent passes the rails: nothing to search from.
        return Found {
            best: Vec::new(),
            evaluations: scored.len(),
            generations: 0,
        };
    }
    for _ in 0..settings.generations {
        let mut children = Vec::with_capacity(settings.offspring);
        let mut tries = 0;
        while children.len() < settings.offspring && tries < settings.offspring * 8 {
            tries += 1;
            let parent = &population[rng.random_range(0..population.len())];
            let (genome, sigma) = mutate(&parent.genome, parent.sigma, &mut rng);
            if let Some(genome) = repair(genome, incumbent, rails) {
                children.push((genome, sigma));
            }
        }
        let sigmas: Vec<f64> = children.iter().map(|c| c.1).collect();
        let genomes = children.into_iter().map(|c| c.0).collect();
        let scored_children = evaluate_new(genomes, &mut scored);
        population.extend(scored_children.into_iter().zip(sigmas).map(
            |((genome, fitness), sigma)| Individual {
                genome,
                sigma,
                fitness,
            },
        ));
        select(&mut population, settings.parents.max(1));
    }
    Found {
        best: population
            .into_iter()
            .map(|i| (i.genome, i.fitness))
            .collect(),
        evaluations: scored.len(),
        generations: settings.generations + 1,
    }
}

/// Keeps the `parents` best distinct individuals, best first (ties keep their order, so the
/// incumbent wins a tie against a newcomer).
fn select(population: &mut Vec<Individual>, parents: usize) {
    let mut seen = std::collections::BTreeSet::new();
    population.retain(|i| seen.insert(key(&i.genome)));
    population.sort_by(|a, b| b.fitness.total_cmp(&a.fitness));
    population.truncate(parents);
}

/// The identity of a genome: its JSON form (field order is fixed by the types).
fn key(genome: &Genome) -> String {
    serde_json::to_string(genome).unwrap_or_default()
}

/// One offspring of `parent` and its step size.
fn mutate(parent: &Genome, sigma: f64, rng: &mut Xoshiro256PlusPlus) -> (Genome, f64) {
    let normal = |rng: &mut Xoshiro256PlusPlus| -> f64 { StandardNormal.sample(rng) };
    let tau = 1.0 / (GENES.len() as f64).sqrt();
    let sigma = (sigma * (tau * normal(rng)).exp()).clamp(0.02, 0.5);
    let mut genome = parent.clone();
    for section in SECTIONS {
        if rng.random::<f64>() < SECTION_RATE {
            toggle_section(&mut genome, section);
        }
    }
    for gene in GENES {
        let Some(value) = (gene.get)(&genome) else {
            continue;
        };
        if rng.random::<f64>() < GENE_RATE {
            let position = gene.normalize(value) + sigma * normal(rng);
            (gene.set)(&mut genome, gene.denormalize(position));
        }
    }
    if let Some(retry) = genome.retry.as_mut() {
        if rng.random::<f64>() < SET_RATE / 3.0 {
            retry.per_try_timeout = match retry.per_try_timeout {
                Some(_) => None,
                None => Some(HumanDuration::from_millis(500)),
            };
        }
        if rng.random::<f64>() < SET_RATE {
            toggle_condition(&mut retry.retry_on, rng);
        }
    }
    if let Some(breaker) = genome.circuit_breaker.as_mut() {
        if rng.random::<f64>() < SET_RATE {
            toggle_condition(&mut breaker.failure_on, rng);
        }
    }
    if let Some(concurrency) = genome.concurrency.as_mut() {
        if rng.random::<f64>() < SET_RATE {
            concurrency.adaptive = !concurrency.adaptive;
        }
    }
    (genome, sigma)
}

/// Adds or removes one condition; a set never empties (an empty `retry_on` is retry off, which
/// switching the section off says better).
fn toggle_condition(set: &mut Vec<RetryCondition>, rng: &mut Xoshiro256PlusPlus) {
    let condition = CONDITIONS[rng.random_range(0..CONDITIONS.len())];
    match set.iter().position(|c| *c == condition) {
        Some(i) if set.len() > 1 => {
            set.remove(i);
        }
        Some(_) => {}
        None => set.push(condition),
    }
}

fn toggle_section(genome: &mut Genome, section: &str) {
    match section {
        "timeout" => {
            genome.timeout = match genome.timeout {
                Some(_) => None,
                None => Some(HumanDuration::from_secs(2)),
            }
        }
        "retry" => {
            genome.retry = match genome.retry {
                Some(_) => None,
                None => Some(RetryGenes::default()),
            }
        }
        "circuit_breaker" => {
            genome.circuit_breaker = match genome.circuit_breaker {
                Some(_) => None,
                None => Some(BreakerGenes::default()),
            }
        }
        "rate_limit" => {
            // A rate limit is switched off, never invented: its rate is a statement about
            // what the service promises its clients, which the model does not know.
            genome.rate_limit = None;
        }
        "concurrency" => {
            genome.concurrency = match genome.concurrency {
                Some(_) => None,
                None => Some(ConcurrencyGenes {
                    max_in_flight: 64,
                    adaptive: true,
                }),
            }
        }
        _ => {}
    }
}

/// Peer defaults, for the first generation: what a route would run with Envoy's and Linkerd's
/// defaults, in rafael's genes.
pub fn peer_defaults() -> Vec<Genome> {
    // Envoy: one retry on 5xx, reset and connect failure, 25 ms base backoff; outlier detection
    // ejects after 5 consecutive 5xx for 30 s; a 1,024 pending-request circuit.
    let envoy = Genome {
        timeout: Some(HumanDuration::from_secs(15)),
        retry: Some(RetryGenes {
            max_attempts: 2,
            retry_on: vec![
                RetryCondition::ServerError,
                RetryCondition::Reset,
                RetryCondition::ConnectFailure,
            ],
            ..RetryGenes::default()
        }),
        circuit_breaker: Some(BreakerGenes {
            consecutive_failures: 5,
            open_for: HumanDuration::from_secs(30),
            ..BreakerGenes::default()
        }),
        rate_limit: None,
        concurrency: Some(ConcurrencyGenes {
            max_in_flight: 1024,
            adaptive: false,
        }),
    };
    // Linkerd: retries within a 20% budget with 10 per second always allowed; failure accrual
    // after 7 consecutive failures; no request timeout by default.
    let linkerd = Genome {
        timeout: None,
        retry: Some(RetryGenes {
            max_attempts: 3,
            budget_ratio: 0.2,
            budget_min_per_sec: 10,
            ..RetryGenes::default()
        }),
        circuit_breaker: Some(BreakerGenes {
            consecutive_failures: 7,
            ..BreakerGenes::default()
        }),
        rate_limit: None,
        concurrency: None,
    };
    vec![envoy, linkerd]
}

#[cfg(test)]
mod tests;
