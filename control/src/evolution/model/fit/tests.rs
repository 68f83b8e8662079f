//! The fit against synthetic telemetry drawn from a known process: a FIFO pool of N workers
//! behind open (Poisson) arrivals, sampled the way the data plane samples.

use std::{cmp::Reverse, collections::BinaryHeap};

use rafael_proxy::telemetry::{SAMPLE_ALL_BELOW, SAMPLE_CAPACITY, SAMPLE_EVERY};

use super::*;

const T0: Nanos = 100 * SECOND;

/// The process the telemetry is drawn from.
#[derive(Debug, Clone)]
struct Truth {
    workers: usize,
    service_ms: f64,
    /// (seconds, arrivals per second), in order.
    phases: Vec<(u64, f64)>,
    error: f64,
    /// (first second, seconds, failure probability).
    bursts: Vec<(u64, u64, f64)>,
    /// (first second, seconds, service time factor).
    brownouts: Vec<(u64, u64, f64)>,
    seed: u64,
}

impl Truth {
    fn new(workers: usize, service_ms: f64, phases: &[(u64, f64)]) -> Self {
        Self {
            workers,
            service_ms,
            phases: phases.to_vec(),
            error: 0.0,
            bursts: vec![],
            brownouts: vec![],
            seed: 7,
        }
    }

    fn during(periods: &[(u64, u64, f64)], second: u64) -> Option<f64> {
        periods
            .iter()
            .find(|(start, secs, _)| (*start..start + secs).contains(&second))
            .map(|p| p.2)
    }

    /// Runs the queue and records what rafael's telemetry would hold.
    fn telemetry(&self) -> Telemetry {
        let mut rng = fastrand::Rng::with_seed(self.seed);
        let total: u64 = self.phases.iter().map(|p| p.0).sum();
        let mut windows: Vec<Window> = (0..total)
            .map(|s| {
                let mut w = empty_window();
                w.start = T0 + s * SECOND;
                w
            })
            .collect();
        let mut free: BinaryHeap<Reverse<Nanos>> = (0..self.workers).map(|_| Reverse(T0)).collect();
        let mut in_flight: BinaryHeap<Reverse<Nanos>> = BinaryHeap::new();
        let mut attempts = Vec::new();
        let mut t = T0 as f64;
        let mut phase_start = T0 as f64;
        for &(secs, rate) in &self.phases {
            let phase_end = phase_start + (secs * SECOND) as f64;
            loop {
                t += -(1.0 - rng.f64()).ln() / rate * 1e9;
                if t >= phase_end {
                    t = phase_end;
                    break;
                }
                let start = t as Nanos;
                let second = (start - T0) / SECOND;
                while in_flight.peek().is_some_and(|f| f.0 <= start) {
                    in_flight.pop();
                }
                let factor = Self::during(&self.brownouts, second).unwrap_or(1.0);
                let service = self.service_ms * factor * (0.9 + 0.2 * rng.f64()) * 1e6;
                let Reverse(worker_free) = free.pop().unwrap();
                let finish = worker_free.max(start) + service as Nanos;
                free.push(Reverse(finish));
                in_flight.push(Reverse(finish));
                let error = Self::during(&self.bursts, second).unwrap_or(self.error);
                let window = &mut windows[second as usize];
                let seen = window.requests;
                window.requests += 1;
                window.attempts += 1;
                let sampled =
                    seen < SAMPLE_ALL_BELOW || (seen - SAMPLE_ALL_BELOW) % SAMPLE_EVERY == 0;
                if sampled {
                    let failed = rng.f64() < error;
                    attempts.push(AttemptSample {
                        start,
                        endpoint: 0,
                        attempt: 1,
                        in_flight: in_flight.len() as u32,
                        latency: finish - start,
                        outcome: u8::from(failed),
                        fault: false,
                        status_5xx: failed.then_some(503),
                    });
                }
            }
            phase_start = phase_end;
        }
        let keep = attempts.len().saturating_sub(SAMPLE_CAPACITY);
        let now = T0 + total * SECOND + 1;
        Telemetry {
            route: "r".into(),
            fitted_at: "2026-01-01T00:00:00Z".into(),
            windows,
            attempts: attempts.split_off(keep),
            arrivals: Vec::new(),
            endpoints: vec!["10.0.0.5:8080".into()],
            now,
            settled: now,
        }
    }
}

fn empty_window() -> Window {
    Window {
        start: 0,
        requests: 0,
        outcomes: [0; 7],
        attempts: 0,
        retries: 0,
        peak_in_flight: 0,
        latency_sum: 0,
        latency: [0; rafael_proxy::telemetry::LATENCY_BUCKETS],
    }
}

fn within(value: f64, truth: f64, tolerance: f64) -> bool {
    (value - truth).abs() <= tolerance * truth
}

#[test]
fn a_pool_of_four_workers_at_20ms_fits_its_knee_within_ten_percent() {
    let truth = Truth::new(4, 20.0, &[(20, 100.0), (6, 260.0), (10, 50.0)]);
    let model = fit(&truth.telemetry(), 1000).unwrap();
    let endpoint = &model.endpoints[0];
    let capacity = endpoint.capacity.expect("the overload shows a knee");
    assert!(within(capacity.concurrency, 4.0, 0.1), "{capacity:?}");
    assert!(
        within(capacity.throughput_per_sec, 200.0, 0.1),
        "{capacity:?}"
    );
    assert!(!capacity.timeouts_in_fit);
    // Failures in the queue waited too; how long the upstream takes to fail is unqueued.
    let mut truth = truth.clone();
    truth.error = 0.05;
    let failure = fit(&truth.telemetry(), 1000).unwrap().endpoints[0].failure;
    assert!(within(failure.latency_p50_ms, 20.0, 0.1), "{failure:?}");
    assert!(
        within(endpoint.service_time.p50_ms, 20.0, 0.1),
        "{:?}",
        endpoint.service_time
    );
    assert!(
        endpoint.service_time.p99_ms < 25.0,
        "{:?}",
        endpoint.service_time
    );
    // Queueing under load is not a brownout.
    assert!(model.regimes.is_empty(), "{:?}", model.regimes);
    let high = endpoint.by_load.last().unwrap();
    assert!(high.in_flight > 40 && high.p50_ms > 100.0, "{high:?}");
}

#[test]
fn an_endpoint_never_driven_past_its_workers_has_no_capacity() {
    let truth = Truth::new(8, 20.0, &[(60, 80.0)]);
    let model = fit(&truth.telemetry(), 1000).unwrap();
    let endpoint = &model.endpoints[0];
    assert_eq!(endpoint.capacity, None, "{:?}", endpoint.by_load);
    assert!(within(endpoint.service_time.p50_ms, 20.0, 0.1));
}

#[test]
fn a_steady_five_percent_error_rate_is_not_a_burst() {
    for seed in 1..=5 {
        let mut truth = Truth::new(8, 20.0, &[(60, 100.0)]);
        truth.error = 0.05;
        truth.seed = seed;
        let model = fit(&truth.telemetry(), 1000).unwrap();
        let failure = model.endpoints[0].failure;
        assert!((failure.rate - 0.05).abs() < 0.01, "{failure:?}");
        assert_eq!(failure.mean_burst_secs, 0.0, "seed {seed}: {failure:?}");
        assert_eq!(failure.burst_rate, 0.0);
        assert_eq!(failure.status, Some(503));
        assert!(model.regimes.is_empty(), "{:?}", model.regimes);
    }
}

#[test]
fn a_ten_second_burst_of_eighty_percent_errors_is_one_burst() {
    let mut truth = Truth::new(8, 20.0, &[(60, 100.0)]);
    truth.error = 0.05;
    truth.bursts = vec![(30, 10, 0.8)];
    let model = fit(&truth.telemetry(), 1000).unwrap();
    let failure = model.endpoints[0].failure;
    assert!((failure.mean_burst_secs - 10.0).abs() <= 1.0, "{failure:?}");
    assert!((failure.burst_rate - 0.8).abs() < 0.05, "{failure:?}");
    assert!((failure.healthy_rate - 0.05).abs() < 0.015, "{failure:?}");
    // The ring holds the last 4,096 samples, about 41 of the 60 seconds.
    let healthy = model.sampled_secs as f64 - 10.0;
    assert!(
        (failure.mean_healthy_secs - healthy).abs() <= 1.0,
        "{failure:?}"
    );
    let outage = &model.regimes[0];
    assert_eq!(outage.kind, RegimeKind::Outage);
    assert_eq!(
        outage.periods,
        [Period {
            start_sec: 30,
            secs: 10,
            service_time: None,
        }]
    );
    assert!(
        (outage.share - 10.0 / model.sampled_secs as f64).abs() < 0.02,
        "{outage:?}"
    );
}

#[test]
fn a_brownout_is_a_regime_with_its_factor_and_not_a_knee() {
    let mut truth = Truth::new(32, 20.0, &[(60, 100.0)]);
    truth.brownouts = vec![(20, 10, 5.0)];
    let model = fit(&truth.telemetry(), 1000).unwrap();
    let brownout = &model.regimes[0];
    assert_eq!(brownout.kind, RegimeKind::Brownout, "{:?}", model.regimes);
    assert_eq!(brownout.periods.len(), 1, "{brownout:?}");
    let period = brownout.periods[0];
    assert!(
        period.start_sec.abs_diff(20) <= 1 && period.secs.abs_diff(10) <= 1,
        "{period:?}"
    );
    assert!(
        within(brownout.service_time_factor, 5.0, 0.2),
        "{brownout:?}"
    );
    let endpoint = &model.endpoints[0];
    assert_eq!(endpoint.capacity, None, "{:?}", endpoint.by_load);
    assert!(within(endpoint.service_time.p50_ms, 20.0, 0.1));
}

#[test]
fn too_little_traffic_is_refused_with_the_counts() {
    let truth = Truth::new(4, 20.0, &[(10, 50.0)]);
    let telemetry = truth.telemetry();
    let requests: u64 = telemetry.windows.iter().map(|w| w.requests).sum();
    assert_eq!(
        fit(&telemetry, 2000),
        Err(FitError::NotEnoughTelemetry {
            requests,
            needed: 2000
        })
    );
}

#[test]
fn injected_faults_are_not_the_upstreams_failures() {
    let mut truth = Truth::new(8, 20.0, &[(30, 100.0)]);
    truth.error = 0.3;
    let mut telemetry = truth.telemetry();
    for attempt in &mut telemetry.attempts {
        attempt.fault = attempt.outcome != 0;
    }
    let model = fit(&telemetry, 1000).unwrap();
    assert_eq!(model.endpoints[0].failure.rate, 0.0);
}

#[test]
fn arrivals_come_from_every_request_and_sampling_is_weighted_back() {
    // Above 100 a second only some attempts are sampled; failures in the busy seconds must
    // still count for what they are.
    let mut truth = Truth::new(64, 5.0, &[(20, 50.0), (20, 800.0)]);
    truth.bursts = vec![(20, 20, 0.1)];
    let model = fit(&truth.telemetry(), 1000).unwrap();
    assert_eq!(model.window_secs, 40);
    assert!(
        within(model.arrivals.rate_per_sec, 425.0, 0.05),
        "{:?}",
        model.arrivals.rate_per_sec
    );
    // Two rates: the per-second counts are far from Poisson.
    assert!(model.arrivals.burstiness > 50.0);
    let rate = model.endpoints[0].failure.rate;
    // 16,000 of 17,000 attempts are in the failing half: about 9.4%, not the 3% of samples.
    assert!((rate - 0.094).abs() < 0.01, "{rate}");
}

#[test]
fn a_burst_grows_into_the_partly_failing_seconds_beside_it_and_no_further() {
    // 20 attempts a second; second 15 fails half of them, the seconds beside it three each
    // (a burst's partial edges), and second 3, alone, three as well.
    let mut seconds = Seconds::default();
    for second in 0..33usize {
        let failures = match second {
            15 => 10,
            14 | 16 | 3 => 3,
            _ => 0,
        };
        for i in 0..20 {
            seconds.add(second, i < failures);
        }
    }
    assert_eq!(seconds.degraded().seconds, [14, 15, 16]);
}

#[test]
fn a_knee_is_found_when_sparse_buckets_push_its_onset_past_four_workers() {
    // A 4-worker pool at 21 ms: flat up to 4 in flight, 21 ms more per 4 queued beyond. Few
    // attempts met 5 to 19 in flight (a queue builds fast), so the first bucket trusted past
    // the flat ones is 20's, five times the pool.
    let mut successes = Vec::new();
    for k in 1..=3u32 {
        successes.extend((0..200).map(|_| (k, 21.0, 1.0, false)));
    }
    for k in 5..=19u32 {
        successes.extend((0..2).map(|_| (k, 21.0 * f64::from(k) / 4.0, 1.0, false)));
    }
    for k in (20..=400u32).step_by(4) {
        successes.extend((0..10).map(|_| (k, 21.0 * f64::from(k) / 4.0, 1.0, false)));
    }
    let triples: Vec<(u32, f64, f64)> = successes.iter().map(|s| (s.0, s.1, s.2)).collect();
    let by_load = buckets(&triples);
    let onset = by_load
        .iter()
        .filter(|b| b.samples >= MIN_BUCKET_SAMPLES)
        .find(|b| b.in_flight > 3)
        .unwrap();
    assert_eq!(onset.in_flight, 20);
    let capacity = knee(&successes, &by_load, 150.0).expect("a knee");
    assert!((capacity.concurrency - 4.0).abs() < 0.3, "{capacity:?}");
    assert!(
        (capacity.throughput_per_sec - 4.0 / 0.021).abs() < 10.0,
        "{capacity:?}"
    );
}

#[test]
fn a_slowdown_under_steady_arrivals_is_not_a_knee_below_what_was_served() {
    // 8 workers at 12 ms answered 300 a second; then every request took four times as long
    // and a queue grew: 5 ms more per attempt in flight, as a 200-a-second queue would give.
    let mut successes = Vec::new();
    for k in 3..=5u32 {
        successes.extend((0..150).map(|_| (k, 12.0, 1.0, false)));
    }
    for k in (8..=48u32).step_by(4) {
        successes.extend((0..12).map(|_| (k, 5.0 * f64::from(k), 1.0, false)));
    }
    let triples: Vec<(u32, f64, f64)> = successes.iter().map(|s| (s.0, s.1, s.2)).collect();
    let by_load = buckets(&triples);
    let queue = knee(&successes, &by_load, 150.0).expect("a knee, had it served less");
    assert!((queue.throughput_per_sec - 200.0).abs() < 10.0, "{queue:?}");
    assert_eq!(knee(&successes, &by_load, 300.0), None);
}

#[test]
fn a_burst_filling_half_the_window_is_a_burst_not_a_steady_rate() {
    // httpbin's bad day in examples/httpbin-gunicorn: 40% failures for 12 s of 24, none
    // otherwise. The whole window's rate (20%) must not be taken for the healthy one.
    let mut truth = Truth::new(8, 3.0, &[(24, 40.0)]);
    truth.bursts = vec![(4, 12, 0.4)];
    let model = fit(&truth.telemetry(), 500).unwrap();
    let failure = model.endpoints[0].failure;
    assert!(failure.healthy_rate < 0.02, "{failure:?}");
    assert!((failure.burst_rate - 0.4).abs() < 0.08, "{failure:?}");
    assert!((failure.mean_burst_secs - 12.0).abs() <= 2.0, "{failure:?}");
    // And a steady rate with no burst stays one.
    let mut steady = Truth::new(8, 3.0, &[(24, 40.0)]);
    steady.error = 0.2;
    let failure = fit(&steady.telemetry(), 500).unwrap().endpoints[0].failure;
    assert!((failure.healthy_rate - 0.2).abs() < 0.04, "{failure:?}");
    assert_eq!(failure.mean_burst_secs, 0.0, "{failure:?}");
}
