//! Models for the evolution tests, whose truth the tests know.

use crate::evolution::model::{
    Arrivals as ArrivalModel, Capacity, EndpointModel, Failure, LoadBucket, Model, ServiceTime,
};

/// One endpoint of `workers` workers at a fixed `service_ms`, failing `errors` of attempts
/// with 500, fed `rate` requests per second.
pub fn pool(workers: u32, service_ms: f64, errors: f64, rate: f64) -> Model {
    Model {
        route: "test".into(),
        fitted_at: "2026-12-01T10:00:00Z".into(),
        window_secs: 600,
        sampled_secs: 600,
        requests: 0,
        arrivals: ArrivalModel {
            rate_per_sec: rate,
            burstiness: 1.0,
            per_second: Vec::new(),
            spacing_cv: 1.0,
        },
        endpoints: vec![EndpointModel {
            endpoint: "127.0.0.1:1".into(),
            samples: 1000,
            service_time: ServiceTime {
                p50_ms: service_ms,
                p99_ms: service_ms,
            },
            by_load: vec![LoadBucket {
                in_flight: workers * 4,
                samples: 100,
                p50_ms: service_ms * 4.0,
                p99_ms: service_ms * 4.0,
            }],
            capacity: Some(Capacity {
                concurrency: f64::from(workers),
                throughput_per_sec: f64::from(workers) * 1000.0 / service_ms,
                timeouts_in_fit: false,
            }),
            failure: Failure {
                rate: errors,
                healthy_rate: errors,
                burst_rate: 0.0,
                mean_burst_secs: 0.0,
                mean_healthy_secs: 0.0,
                status: Some(500),
                latency_p50_ms: service_ms,
                latency_p99_ms: service_ms,
            },
            timeout_rate: 0.0,
            abandoned_work: true,
        }],
        regimes: Vec::new(),
        censored_secs: Vec::new(),
        calibration: None,
        fidelity: None,
    }
}
