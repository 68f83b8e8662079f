//! The policy engines: circuit breaker, GCRA rate limiter, retry budget, backoff and adaptive
//! concurrency limit.
//!
//! They are sans-IO: plain state machines that take the time (and, where they need it,
//! randomness) as arguments and never read a clock, sleep or spawn. The data plane drives them
//! with real time from its tower layers; the control plane's simulator will drive the same code
//! with a virtual clock, so a policy evaluated in simulation is the policy that runs.
//!
//! State that many requests share (a route's rate limit, its retry budget, its in-flight count)
//! is kept in atomics; the breaker and the adaptive limit, whose updates touch several fields at
//! once, are plain `&mut self` machines that the data plane guards with a short lock.

pub mod backoff;
pub mod breaker;
pub mod budget;
pub mod concurrency;
pub mod fault;
pub mod rate_limit;

use std::time::Duration;

/// A point in time: nanoseconds since an origin the caller picks (process start for live
/// traffic, zero for a simulation). Engines only ever compare and subtract these.
pub type Nanos = u64;

/// `duration` in nanoseconds, saturating at about 584 years.
pub fn nanos(duration: Duration) -> Nanos {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}
