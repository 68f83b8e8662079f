//! RAFAEL's policy engines and the decisions built on them: circuit breaker, GCRA rate
//! limiter, retry budget, backoff, adaptive concurrency limit, fault rules, and the sans-IO
//! decisions the request path makes with them (how an attempt ended, whether to retry it,
//! which endpoint the next one goes to).
//!
//! Everything here is sans-IO: plain state machines and functions that take the time (and,
//! where they need it, randomness) as arguments and never read a clock, sleep or spawn. This
//! crate depends on neither tokio nor hyper, so the compiler checks it. The data plane drives
//! it with real time from its tower layers; the control plane's simulator drives the same code
//! with a virtual clock, so a policy evaluated in simulation is the policy that runs.
//!
//! State that many requests share (a route's rate limit, its retry budget, its in-flight count)
//! is kept in atomics; the breaker and the adaptive limit, whose updates touch several fields at
//! once, are plain `&mut self` machines that the data plane guards with a short lock.

pub mod backoff;
pub mod breaker;
pub mod budget;
pub mod choice;
pub mod concurrency;
pub mod fault;
pub mod outcome;
pub mod rate_limit;
pub mod retry;

use std::time::Duration;

/// A point in time: nanoseconds since an origin the caller picks (process start for live
/// traffic, zero for a simulation). Engines only ever compare and subtract these.
pub type Nanos = u64;

/// `duration` in nanoseconds, saturating at about 584 years.
#[inline]
pub fn nanos(duration: Duration) -> Nanos {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}
