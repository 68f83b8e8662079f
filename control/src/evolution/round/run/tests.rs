//! A round proposes what the model says is better, and only that, the same way every time.

use rafael_config::{Config, Genome, HumanDuration};

use super::*;
use crate::evolution::testing::pool;

fn config() -> Config {
    let mut config = Config::default();
    config.evolution.scenarios = vec!["observed".into(), "nominal".into()];
    config.evolution.population = 8;
    config.evolution.generations = 4;
    config.evolution.seeds = 3;
    config.evolution.duration = HumanDuration::from_secs(20);
    config
}

fn incumbent() -> Genome {
    Genome {
        timeout: Some(HumanDuration::from_secs(1)),
        ..Genome::default()
    }
}

#[test]
fn steady_errors_and_no_retries_lead_to_a_proposal_with_retries() {
    // 20% of attempts fail, at a third of capacity: retries turn most failures into goodput.
    let model = pool(8, 10.0, 0.2, 100.0);
    let verdict = evolve(&model, &incumbent(), &config(), 1);
    assert_eq!(verdict.result, RoundResult::Proposed, "{verdict:?}");
    let candidate = verdict.candidate.as_ref().expect("a candidate");
    assert!(candidate.retry.is_some(), "{candidate:?}");
    assert!(verdict.best_fitness > verdict.incumbent_fitness + 0.02);
    let observed = &verdict.predicted[0];
    assert_eq!(observed.scenario, "observed");
    assert!(
        observed.candidate.goodput > observed.incumbent.goodput + 0.1,
        "{observed:?}"
    );
    assert!(check(candidate, &incumbent(), &Guardrails::from_config(&config())).is_empty());
}

#[test]
fn the_same_model_and_seed_give_the_same_verdict() {
    let model = pool(8, 10.0, 0.2, 100.0);
    let a = evolve(&model, &incumbent(), &config(), 9);
    let b = evolve(&model, &incumbent(), &config(), 9);
    assert_eq!(a, b);
}

#[test]
fn a_healthy_upstream_gives_no_improvement() {
    let model = pool(8, 10.0, 0.0, 100.0);
    let verdict = evolve(&model, &incumbent(), &config(), 1);
    assert_eq!(verdict.result, RoundResult::NoImprovement, "{verdict:?}");
    assert!(verdict.candidate.is_none());
}
