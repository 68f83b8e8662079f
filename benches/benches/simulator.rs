//! Simulated requests per CPU-second (DESIGN §7.2: at least 1M with every policy on).
//!
//! `cargo bench -p rafael-benches --bench simulator`. Each iteration simulates 60 virtual
//! seconds of a route near its capacity knee (two endpoints of four workers at 20 ms, 5%
//! errors, 300 requests per second against a capacity of 400): with no policies (the event
//! loop and the upstream model alone, the baseline of the same run), with every policy on
//! (timeout, budgeted retries with per-try timeouts, breakers, rate limit, adaptive
//! concurrency), and with every policy on under `upstream-failure:high`. Time is the bench
//! thread's CPU time, so criterion's throughput line reads as requests per CPU-second.

#[path = "support/mod.rs"]
mod support;

use support::{endpoint, thread_cpu};

use std::{hint::black_box, time::Duration};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rafael_config::{
    BreakerGenes, ConcurrencyGenes, Genome, HumanDuration, RateLimitGenes, RetryCondition,
    RetryGenes,
};
use rafael_control::evolution::{
    model::{Arrivals, Model},
    scenario::Scenario,
    sim::{Prepared, Run},
};

fn model() -> Model {
    Model {
        route: "bench".into(),
        fitted_at: "2026-12-01T10:00:00Z".into(),
        window_secs: 600,
        sampled_secs: 600,
        requests: 180_000,
        arrivals: Arrivals {
            rate_per_sec: 300.0,
            burstiness: 1.0,
            per_second: Vec::new(),
            spacing_cv: 1.0,
        },
        endpoints: vec![
            endpoint("10.0.0.1:8080", 4.0, 200.0, 500),
            endpoint("10.0.0.2:8080", 4.0, 200.0, 500),
        ],
        regimes: Vec::new(),
        censored_secs: Vec::new(),
        calibration: None,
        fidelity: None,
    }
}

fn every_policy() -> Genome {
    Genome {
        timeout: Some(HumanDuration::from_secs(1)),
        retry: Some(RetryGenes {
            max_attempts: 3,
            per_try_timeout: Some(HumanDuration::from_millis(250)),
            retry_on: vec![
                RetryCondition::ServerError,
                RetryCondition::Reset,
                RetryCondition::Timeout,
            ],
            ..RetryGenes::default()
        }),
        circuit_breaker: Some(BreakerGenes::default()),
        rate_limit: Some(RateLimitGenes {
            rps: 1000.0,
            burst: 100,
            key: None,
            max_keys: 10_000,
        }),
        concurrency: Some(ConcurrencyGenes {
            max_in_flight: 64,
            adaptive: true,
        }),
    }
}

fn bench(c: &mut Criterion) {
    let model = model();
    let run = |scenario| Run {
        model: &model,
        scenario,
        duration: Duration::from_secs(60),
        rate: None,
        slo_latency: Duration::from_millis(300),
        client_timeout: Duration::from_secs(5),
        seed: 1,
    };
    let nominal = Prepared::new(run(Scenario::Nominal));
    let failing = Prepared::new(run("upstream-failure:high"
        .parse()
        .expect("a known scenario")));
    let mut group = c.benchmark_group("simulator");
    group.throughput(Throughput::Elements(nominal.requests() as u64));
    group.sample_size(20);
    let cases = [
        ("no_policies", &nominal, Genome::default()),
        ("every_policy", &nominal, every_policy()),
        (
            "every_policy_upstream_failure_high",
            &failing,
            every_policy(),
        ),
    ];
    for (name, prepared, genome) in cases {
        group.throughput(Throughput::Elements(prepared.requests() as u64));
        group.bench_function(name, |b| {
            b.iter_custom(|iterations| {
                let start = thread_cpu();
                for _ in 0..iterations {
                    black_box(prepared.simulate(black_box(&genome)));
                }
                thread_cpu() - start
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
