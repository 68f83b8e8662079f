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
    let verdict = evolve(&model, &incumbent(), &config(), 1, &[]);
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
    let a = evolve(&model, &incumbent(), &config(), 9, &[]);
    let b = evolve(&model, &incumbent(), &config(), 9, &[]);
    assert_eq!(a, b);
}

#[test]
fn a_healthy_upstream_gives_no_improvement() {
    let model = pool(8, 10.0, 0.0, 100.0);
    let verdict = evolve(&model, &incumbent(), &config(), 1, &[]);
    assert_eq!(verdict.result, RoundResult::NoImprovement, "{verdict:?}");
    assert!(verdict.candidate.is_none());
}

/// Three endpoints of 8 workers at 10 ms, fed 150 requests a second; the second one takes
/// `slow_ms` from second 20 to second 100 of a 120-second window (`whole`: the whole upstream
/// does, not one endpoint). Its own p99 holds a slow second the regime missed, and no endpoint
/// has a fitted capacity, as live fits do.
fn one_slow_endpoint(slow_ms: f64, whole: bool) -> crate::evolution::model::Model {
    use crate::evolution::model::{Period, ServiceTime};
    let mut model = pool(8, 10.0, 0.0, 150.0);
    model.endpoints[0].service_time.p99_ms = 11.0;
    // At 150 a second over three pools of 8, none is seen saturated, as in live fits.
    model.endpoints[0].capacity = None;
    model.window_secs = 120;
    model.sampled_secs = 120;
    model.arrivals.per_second = vec![150; 120];
    let template = model.endpoints[0].clone();
    model.endpoints = (1..=3)
        .map(|i| EndpointModel {
            endpoint: format!("127.0.0.1:{i}"),
            ..template.clone()
        })
        .collect();
    model.endpoints[1].service_time.p99_ms = slow_ms;
    model.regimes = vec![Regime {
        kind: RegimeKind::Brownout,
        endpoint: (!whole).then(|| "127.0.0.1:2".to_owned()),
        share: 80.0 / 120.0,
        mean_secs: 80.0,
        service_time_factor: slow_ms / 10.0,
        failure_rate: 0.0,
        periods: vec![Period {
            start_sec: 20,
            secs: 80,
            service_time: Some(ServiceTime {
                p50_ms: slow_ms,
                p99_ms: slow_ms * 1.02,
            }),
        }],
    }];
    model
}

const TIGHT_SLO: Duration = Duration::from_millis(40);

#[test]
fn an_endpoint_slow_past_the_slo_seeds_a_per_try_timeout_between_the_healthy_p99_and_the_slo() {
    let model = one_slow_endpoint(55.0, false);
    let seeds = informed(&model, &incumbent(), TIGHT_SLO);
    assert_eq!(seeds.len(), 5, "{seeds:?}");
    let (seed, ejecting) = (&seeds[3], &seeds[4]);
    assert_eq!(seed.circuit_breaker, None);
    assert_eq!(ejecting.retry, seed.retry);
    let breaker = ejecting.circuit_breaker.as_ref().expect("a breaker");
    assert!(
        breaker.failure_on.contains(&RetryCondition::Timeout),
        "{breaker:?}"
    );
    let retry = seed.retry.as_ref().expect("retries");
    let per_try = retry.per_try_timeout.expect("a per-try timeout").get();
    assert!(
        per_try > Duration::from_millis(11) && per_try < TIGHT_SLO,
        "{per_try:?}"
    );
    assert!(
        retry.retry_on.contains(&RetryCondition::Timeout),
        "{retry:?}"
    );
    assert!(retry.max_attempts >= 2);
    // A cut-off attempt, the longest backoff and a healthy retry fit in the SLO.
    assert!(per_try + retry.backoff_max.get() + Duration::from_millis(11) <= TIGHT_SLO);
    // The guardrails keep it as it is.
    let rails = Guardrails::from_config(&config());
    for seed in [seed, ejecting] {
        assert_eq!(
            crate::guardian::guardrails::repair(seed.clone(), &incumbent(), &rails).as_ref(),
            Some(seed)
        );
    }
}

#[test]
fn no_per_try_seed_when_the_slow_endpoint_meets_the_slo_or_the_whole_upstream_is_slow() {
    let seeds = |model, slo| informed(&model, &incumbent(), slo).len();
    assert_eq!(seeds(one_slow_endpoint(30.0, false), TIGHT_SLO), 3);
    assert_eq!(seeds(one_slow_endpoint(55.0, true), TIGHT_SLO), 3);
    // Two healthy attempts do not fit in the SLO: a retry could not make it.
    assert_eq!(
        seeds(one_slow_endpoint(55.0, false), Duration::from_millis(21)),
        3
    );
}

#[test]
fn an_endpoint_slow_past_the_slo_leads_to_a_proposal_that_cuts_its_attempts_off() {
    let mut config = config();
    config.evolution.objectives.slo_latency = HumanDuration::from_millis(40);
    let model = one_slow_endpoint(55.0, false);
    let verdict = evolve(&model, &incumbent(), &config, 3, &[]);
    assert_eq!(verdict.result, RoundResult::Proposed, "{verdict:?}");
    let candidate = verdict.candidate.as_ref().expect("a candidate");
    let per_try = candidate
        .retry
        .as_ref()
        .and_then(|r| r.per_try_timeout)
        .expect("a per-try timeout");
    assert!(per_try.get() < TIGHT_SLO, "{candidate:?}");
    let observed = &verdict.predicted[0];
    assert!(
        observed.candidate.goodput > observed.incumbent.goodput + 0.05,
        "{observed:?}"
    );
}

#[test]
fn known_workers_and_timeouts_seed_a_concurrency_limit_at_them_unless_one_is_set() {
    let slo = Duration::from_millis(300);
    let mut model = pool(8, 10.0, 0.0, 300.0);
    model.endpoints[0].timeout_rate = 0.3;
    let limits = |model: &Model, incumbent: &Genome| -> Vec<Option<u32>> {
        informed(model, incumbent, slo)
            .iter()
            .map(|g| g.concurrency.as_ref().map(|c| c.max_in_flight))
            .collect()
    };
    let seeded: Vec<u32> = limits(&model, &incumbent()).into_iter().flatten().collect();
    assert_eq!(seeded, [8, 16]);
    let mut limited = incumbent();
    limited.concurrency = Some(rafael_config::ConcurrencyGenes {
        max_in_flight: 50,
        adaptive: false,
    });
    assert!(limits(&model, &limited).iter().all(|l| *l == Some(50)));
    let mut unknown = model.clone();
    unknown.endpoints[0].capacity = None;
    assert!(limits(&unknown, &incumbent()).iter().all(Option::is_none));
    // No attempt timed out: no queue past the deadlines for a limit to cut.
    let mut steady = model.clone();
    steady.endpoints[0].timeout_rate = 0.0;
    assert!(limits(&steady, &incumbent()).iter().all(Option::is_none));
}
