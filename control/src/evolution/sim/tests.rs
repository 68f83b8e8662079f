//! The simulator against queueing truths it must reproduce, and its determinism.

use std::time::Duration;

use rafael_config::{
    BreakerGenes, ConcurrencyGenes, Genome, HumanDuration, RetryCondition, RetryGenes,
};

use super::*;
use crate::evolution::{
    model::{Period, Regime, RegimeKind},
    testing::pool,
};

fn run(model: &Model, seconds: u64) -> Run<'_> {
    Run {
        model,
        scenario: Scenario::Nominal,
        duration: Duration::from_secs(seconds),
        rate: None,
        slo_latency: Duration::from_millis(300),
        client_timeout: Duration::from_secs(5),
        seed: 7,
    }
}

fn retries(max_attempts: u32) -> RetryGenes {
    RetryGenes {
        max_attempts,
        backoff_base: HumanDuration::from_millis(5),
        backoff_max: HumanDuration::from_millis(20),
        retry_on: vec![RetryCondition::ServerError, RetryCondition::Reset],
        budget_ratio: 1.0,
        ..RetryGenes::default()
    }
}

#[test]
fn the_same_seed_gives_the_same_report_and_another_seed_another() {
    let model = pool(4, 20.0, 0.05, 100.0);
    let genome = Genome {
        timeout: Some(HumanDuration::from_secs(1)),
        retry: Some(retries(3)),
        ..Genome::default()
    };
    let first = simulate(run(&model, 30), &genome);
    assert_eq!(first, simulate(run(&model, 30), &genome));
    let other = simulate(
        Run {
            seed: 8,
            ..run(&model, 30)
        },
        &genome,
    );
    assert_ne!(first, other);
}

#[test]
fn below_capacity_goodput_is_the_success_share_and_retries_multiply_it() {
    let model = pool(4, 20.0, 0.1, 100.0);
    let plain = simulate(run(&model, 60), &Genome::default());
    assert!((plain.goodput() - 0.9).abs() < 0.015, "{plain:?}");
    assert!((plain.amplification() - 1.0).abs() < 1e-9, "{plain:?}");
    // Three attempts: a request fails only when all three do (0.1^3).
    let genome = Genome {
        retry: Some(retries(3)),
        ..Genome::default()
    };
    let retried = simulate(run(&model, 60), &genome);
    assert!(retried.goodput() > 0.995, "{retried:?}");
    let expected = 1.0 + 0.1 + 0.01;
    assert!(
        (retried.amplification() - expected).abs() < 0.02,
        "{retried:?}"
    );
    // Service time 20 ms, no queueing at half load: the median is the service time.
    assert_eq!(plain.p50, Duration::from_millis(20), "{plain:?}");
}

#[test]
fn above_capacity_the_queue_grows_until_the_deadline_and_a_limit_sheds_instead() {
    // 4 workers at 20 ms serve 200/s; 300/s arrive.
    let model = pool(4, 20.0, 0.0, 300.0);
    let timeout = Genome {
        timeout: Some(HumanDuration::from_secs(1)),
        ..Genome::default()
    };
    let queued = simulate(run(&model, 30), &timeout);
    // The upstream completes at most 200/s of work, abandoned attempts included, so the good
    // share cannot exceed 2/3, and the queue makes most answers late.
    assert!(queued.goodput() < 0.2, "{queued:?}");
    assert!(queued.timed_out > queued.offered / 4, "{queued:?}");
    let limited = Genome {
        concurrency: Some(ConcurrencyGenes {
            max_in_flight: 4,
            adaptive: false,
        }),
        ..timeout
    };
    let shed = simulate(run(&model, 60), &limited);
    // With a limit at the worker count nothing queues: it is Erlang's loss system, whose
    // blocking probability at 6 erlangs on 4 servers is B(6, 4) = 54/115; the rest is good.
    let blocking = erlang_b(300.0 * 0.020, 4);
    assert!((blocking - 54.0 / 115.0).abs() < 1e-9);
    assert!((shed.rejected_share() - blocking).abs() < 0.02, "{shed:?}");
    assert!((shed.goodput() - (1.0 - blocking)).abs() < 0.02, "{shed:?}");
    assert!(shed.p99 <= Duration::from_millis(20), "{shed:?}");
}

/// Erlang's B formula: the share of arrivals a loss system of `servers` refuses at `load`
/// erlangs (by its recurrence, B(a, 0) = 1, B(a, n) = a B / (n + a B)).
fn erlang_b(load: f64, servers: u32) -> f64 {
    (1..=servers).fold(1.0, |b, n| load * b / (f64::from(n) + load * b))
}

#[test]
fn a_breaker_stops_sending_into_an_outage() {
    let mut model = pool(8, 10.0, 0.0, 100.0);
    model.regimes = vec![Regime {
        kind: RegimeKind::Outage,
        endpoint: None,
        share: 0.5,
        mean_secs: 30.0,
        service_time_factor: 1.0,
        failure_rate: 1.0,
        periods: vec![Period {
            start_sec: 10,
            secs: 30,
            service_time: None,
        }],
    }];
    let observed = |model| Run {
        scenario: Scenario::Observed,
        ..run(model, 60)
    };
    let plain = simulate(observed(&model), &Genome::default());
    let genome = Genome {
        circuit_breaker: Some(BreakerGenes {
            failure_on: vec![RetryCondition::ServerError],
            ..BreakerGenes::default()
        }),
        ..Genome::default()
    };
    let broken = simulate(observed(&model), &genome);
    // Half the run is an outage: without a breaker every request in it reaches the upstream.
    assert!((plain.goodput() - 0.5).abs() < 0.05, "{plain:?}");
    assert!(
        broken.attempts < plain.attempts * 3 / 4,
        "{broken:?} vs {plain:?}"
    );
    assert!(broken.rejected > 0, "{broken:?}");
}

#[test]
fn every_genome_of_a_run_meets_the_same_arrivals() {
    let model = pool(4, 20.0, 0.2, 100.0);
    let prepared = Prepared::new(run(&model, 20));
    let a = prepared.simulate(&Genome::default());
    let b = prepared.simulate(&Genome {
        timeout: Some(HumanDuration::from_secs(30)),
        ..Genome::default()
    });
    // A timeout that never fires changes nothing: same arrivals, same upstream luck.
    assert_eq!(a, b);
    assert_eq!(a.offered as usize, prepared.requests());
}
