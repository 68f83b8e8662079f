//! The search never evaluates what the guardrails refuse, is a function of its seed, and finds
//! what its fitness rewards.

use std::collections::BTreeMap;

use proptest::prelude::*;
use rafael_config::{Genome, Guardrail, HumanDuration, RetryGenes};

use super::*;
use crate::guardian::guardrails::check;

fn incumbent() -> Genome {
    Genome {
        timeout: Some(HumanDuration::from_secs(2)),
        retry: Some(RetryGenes {
            per_try_timeout: Some(HumanDuration::from_millis(500)),
            ..RetryGenes::default()
        }),
        ..Genome::default()
    }
}

fn settings(seed: u64) -> Settings {
    Settings {
        parents: 4,
        offspring: 16,
        generations: 12,
        seed,
    }
}

/// A fitness that rewards fewer attempts and a shorter timeout, and a breaker.
fn score(genome: &Genome) -> f64 {
    let attempts = genome.retry.as_ref().map_or(1, |r| r.max_attempts);
    let timeout = genome.timeout.map_or(30.0, |t| t.get().as_secs_f64());
    let breaker = if genome.circuit_breaker.is_some() {
        1.0
    } else {
        0.0
    };
    breaker - f64::from(attempts) * 0.1 - timeout * 0.01
}

#[test]
fn the_same_seed_finds_the_same_genomes() {
    let run = |seed| {
        search(
            &incumbent(),
            &peer_defaults(),
            &Guardrails::default(),
            settings(seed),
            |batch| batch.iter().map(score).collect(),
        )
    };
    assert_eq!(run(3), run(3));
    assert_ne!(run(3).best, run(4).best);
}

#[test]
fn it_finds_what_the_fitness_rewards_and_never_loses_the_incumbent() {
    let found = search(
        &incumbent(),
        &[],
        &Guardrails::default(),
        settings(1),
        |batch| batch.iter().map(score).collect(),
    );
    let (best, fitness) = &found.best[0];
    assert!(*fitness >= score(&incumbent()));
    assert!(best.circuit_breaker.is_some(), "{best:?}");
    assert!(
        best.retry.as_ref().is_none_or(|r| r.max_attempts < 3),
        "{best:?}"
    );
    assert!(found.evaluations > 16 && found.evaluations <= 1 + 16 * 12);
}

#[test]
fn a_proposal_never_removes_the_route_s_deadline() {
    let without = Genome {
        timeout: None,
        ..incumbent()
    };
    let violations = check(&without, &incumbent(), &Guardrails::default());
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].gene, "timeout");
    let repaired = repair(without.clone(), &incumbent(), &Guardrails::default()).unwrap();
    assert_eq!(repaired.timeout, incumbent().timeout);
    // A route that never had one may stay without.
    assert!(check(&without, &without, &Guardrails::default()).is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Whatever the rails, every genome the search evaluates passes them (and so does every
    /// genome it returns).
    #[test]
    fn no_evaluated_genome_breaks_a_guardrail(
        seed in 0u64..1_000,
        max_attempts in 1u32..5,
        max_step in proptest::option::of(0.1f64..1.0),
        freeze_breaker in any::<bool>(),
    ) {
        let mut bounds = BTreeMap::new();
        bounds.insert("retry.max_attempts".to_owned(), Guardrail { min: None, max: Some(f64::from(max_attempts)) });
        bounds.insert("timeout".to_owned(), Guardrail { min: Some(0.5), max: Some(5.0) });
        let rails = Guardrails {
            bounds,
            max_step,
            frozen: if freeze_breaker { vec!["circuit_breaker".into()] } else { Vec::new() },
        };
        let Some(incumbent) = repair(incumbent(), &incumbent(), &rails) else {
            panic!("the incumbent cannot be repaired: {:?}", check(&incumbent(), &incumbent(), &rails));
        };
        let mut broken = Vec::new();
        let found = search(&incumbent, &peer_defaults(), &rails, Settings { generations: 4, ..settings(seed) }, |batch| {
            for genome in batch {
                let violations = check(genome, &incumbent, &rails);
                if !violations.is_empty() {
                    broken.push((genome.clone(), violations));
                }
            }
            batch.iter().map(score).collect()
        });
        prop_assert!(broken.is_empty(), "{broken:?}");
        for (genome, _) in &found.best {
            prop_assert!(check(genome, &incumbent, &rails).is_empty());
            prop_assert!(genome.retry.as_ref().is_none_or(|r| !r.retry_non_idempotent));
            prop_assert!(genome.timeout.is_some(), "{genome:?}");
        }
    }
}
