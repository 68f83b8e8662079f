//! What the simulator and round benchmarks share: a worker-pool endpoint model and the bench
//! thread's CPU clock.

use std::time::Duration;

use rafael_control::evolution::model::{Capacity, EndpointModel, Failure, LoadBucket, ServiceTime};
use rustix::time::{ClockId, clock_gettime};

/// An endpoint of `workers` workers at 20 ms (p99 45 ms) saturating at `throughput` a second,
/// failing 5% of attempts with `status`.
pub fn endpoint(address: &str, workers: f64, throughput: f64, status: u16) -> EndpointModel {
    EndpointModel {
        endpoint: address.into(),
        samples: 4096,
        service_time: ServiceTime {
            p50_ms: 20.0,
            p99_ms: 45.0,
        },
        by_load: vec![LoadBucket {
            in_flight: (workers * 4.0) as u32,
            samples: 100,
            p50_ms: 80.0,
            p99_ms: 120.0,
        }],
        capacity: Some(Capacity {
            concurrency: workers,
            throughput_per_sec: throughput,
            timeouts_in_fit: false,
        }),
        failure: Failure {
            rate: 0.05,
            healthy_rate: 0.05,
            burst_rate: 0.0,
            mean_burst_secs: 0.0,
            mean_healthy_secs: 0.0,
            status: Some(status),
            latency_p50_ms: 20.0,
            latency_p99_ms: 20.0,
        },
        timeout_rate: 0.0,
        abandoned_work: true,
    }
}

/// CPU time the calling thread has used.
pub fn thread_cpu() -> Duration {
    let t = clock_gettime(ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}
