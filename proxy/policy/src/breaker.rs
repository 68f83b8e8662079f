//! The circuit breaker of one upstream endpoint.
//!
//! Closed, it counts attempts in a sliding window of ten buckets and opens when one of its
//! thresholds holds: `consecutive_failures` in a row, or, once the window holds `min_requests`,
//! a failure share of `failure_rate` or a slow-call share of `slow_call_rate`. Open, it refuses
//! every attempt for `open_for`, doubled on each repeated trip up to `open_for_max`. Then it is
//! half-open: it admits `half_open_probes` probes; all of them succeeding closes it, any one
//! failing opens it again. The only transitions are closed -> open -> half-open -> closed|open.
//!
//! Every admission carries the breaker's epoch (bumped on each transition), and its outcome is
//! reported with that admission: outcomes of attempts admitted in an earlier epoch (a request
//! that left before the breaker opened, a probe of an earlier half-open period) are ignored,
//! and a probe that never finishes gives its slot back to its own period only.

use std::time::Duration;

use rafael_config::BreakerGenes;

use crate::{Nanos, nanos};

const BUCKETS: usize = 10;

/// The three states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BreakerState {
    /// Attempts flow; outcomes are counted.
    Closed = 0,
    /// A few probes are admitted to test the endpoint.
    HalfOpen = 1,
    /// Every attempt is refused.
    Open = 2,
}

/// The breaker's thresholds, from the route's genes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerParams {
    /// Failures in a row that open it.
    pub consecutive_failures: u32,
    /// Failure share over the window that opens it.
    pub failure_rate: f64,
    /// Sliding window length.
    pub window: Nanos,
    /// Attempts in the window before the shares count.
    pub min_requests: u32,
    /// An attempt at least this slow is a slow call.
    pub slow_call: Nanos,
    /// Slow-call share over the window that opens it.
    pub slow_call_rate: f64,
    /// Open time on the first trip.
    pub open_for: Nanos,
    /// Cap on the open time as trips repeat.
    pub open_for_max: Nanos,
    /// Probes admitted while half-open.
    pub half_open_probes: u32,
}

/// What the breaker says to an attempt. An admitted attempt reports its outcome with this
/// value (see [`Breaker::record`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead.
    Allowed {
        /// The breaker's epoch at admission.
        epoch: u32,
    },
    /// Half-open: go ahead as a probe.
    Probe {
        /// The breaker's epoch at admission.
        epoch: u32,
    },
    /// Open (or half-open with every probe slot taken).
    Refused,
}

/// How an admitted attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    /// A response that is not a failure, after this long.
    Success(Duration),
    /// A failure (5xx, connect error, reset, timeout), after this long.
    Failure(Duration),
    /// Abandoned before it ended (the client left, or the route deadline cut short an attempt
    /// that started late); it says nothing about the endpoint.
    Cancelled,
}

/// A change of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: BreakerState,
    /// The state after.
    pub to: BreakerState,
}

/// One endpoint's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    state: BreakerState,
    consecutive: u32,
    buckets: [Bucket; BUCKETS],
    bucket_width: Nanos,
    open_until: Nanos,
    trips: u32,
    closed_at: Nanos,
    probes_admitted: u32,
    probes_succeeded: u32,
    epoch: u32,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    index: u64,
    total: u32,
    failures: u32,
    slow: u32,
}

// === impl BreakerParams ===

impl BreakerParams {
    /// The thresholds a route's genes describe.
    pub fn from_genes(genes: &BreakerGenes) -> Self {
        Self {
            consecutive_failures: genes.consecutive_failures,
            failure_rate: genes.failure_rate,
            window: nanos(genes.window.get()),
            min_requests: genes.min_requests,
            slow_call: nanos(genes.slow_call_duration.get()),
            slow_call_rate: genes.slow_call_rate,
            open_for: nanos(genes.open_for.get()),
            open_for_max: nanos(genes.open_for_max.get()),
            half_open_probes: genes.half_open_probes,
        }
    }

    fn bucket_width(&self) -> Nanos {
        (self.window / BUCKETS as u64).max(1)
    }
}

// === impl Breaker ===

impl Default for Breaker {
    fn default() -> Self {
        Self {
            state: BreakerState::Closed,
            consecutive: 0,
            buckets: [Bucket::default(); BUCKETS],
            bucket_width: 0,
            open_until: 0,
            trips: 0,
            closed_at: 0,
            probes_admitted: 0,
            probes_succeeded: 0,
            epoch: 0,
        }
    }
}

impl Breaker {
    /// The current state (an open breaker whose time is up still reads open until the next
    /// [`Breaker::admit`]).
    #[inline]
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Bumped on every transition; admissions carry it.
    #[inline]
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// True when an attempt at `now` would be admitted, without admitting it.
    #[inline]
    pub fn available(&self, now: Nanos, params: &BreakerParams) -> bool {
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open => now >= self.open_until,
            BreakerState::HalfOpen => self.probes_admitted < params.half_open_probes,
        }
    }

    /// Decides one attempt at `now`.
    pub fn admit(&mut self, now: Nanos, params: &BreakerParams) -> (Admission, Option<Transition>) {
        let mut transition = None;
        if self.state == BreakerState::Open {
            if now < self.open_until {
                return (Admission::Refused, None);
            }
            transition = Some(self.enter(BreakerState::HalfOpen));
            self.probes_admitted = 0;
            self.probes_succeeded = 0;
        }
        let epoch = self.epoch;
        let admission = match self.state {
            BreakerState::Closed => Admission::Allowed { epoch },
            BreakerState::HalfOpen if self.probes_admitted < params.half_open_probes => {
                self.probes_admitted += 1;
                Admission::Probe { epoch }
            }
            BreakerState::HalfOpen | BreakerState::Open => Admission::Refused,
        };
        (admission, transition)
    }

    /// Records how an attempt admitted as `admission` ended. Outcomes from an earlier epoch
    /// are ignored.
    pub fn record(
        &mut self,
        now: Nanos,
        params: &BreakerParams,
        admission: Admission,
        result: AttemptResult,
    ) -> Option<Transition> {
        let (probe, epoch) = match admission {
            Admission::Allowed { epoch } => (false, epoch),
            Admission::Probe { epoch } => (true, epoch),
            Admission::Refused => return None,
        };
        if epoch != self.epoch {
            return None;
        }
        let (failed, slow) = match result {
            AttemptResult::Success(latency) => (false, nanos(latency) >= params.slow_call),
            AttemptResult::Failure(latency) => (true, nanos(latency) >= params.slow_call),
            AttemptResult::Cancelled => {
                if probe {
                    self.probes_admitted = self.probes_admitted.saturating_sub(1);
                }
                return None;
            }
        };
        if probe {
            if failed || slow {
                return Some(self.trip(now, params));
            }
            self.probes_succeeded += 1;
            if self.probes_succeeded >= params.half_open_probes {
                self.consecutive = 0;
                self.buckets = [Bucket::default(); BUCKETS];
                self.closed_at = now;
                return Some(self.enter(BreakerState::Closed));
            }
            return None;
        }
        self.consecutive = if failed { self.consecutive + 1 } else { 0 };
        let bucket = self.bucket(now, params);
        bucket.total += 1;
        bucket.failures += u32::from(failed);
        bucket.slow += u32::from(slow);
        if !failed && !slow {
            // A fast success lowers both shares: it cannot open the breaker.
            return None;
        }
        let (total, failures, slow_calls) = self.window_counts(now);
        let over_rates = total >= params.min_requests
            && (f64::from(failures) >= params.failure_rate * f64::from(total)
                || f64::from(slow_calls) >= params.slow_call_rate * f64::from(total));
        (self.consecutive >= params.consecutive_failures || over_rates)
            .then(|| self.trip(now, params))
    }

    /// Attempts, failures and slow calls in the window ending at `now`.
    pub fn window_counts(&self, now: Nanos) -> (u32, u32, u32) {
        let current = now / self.bucket_width.max(1);
        self.buckets
            .iter()
            .filter(|b| b.total > 0 && current.saturating_sub(b.index) < BUCKETS as u64)
            .fold((0, 0, 0), |(t, f, s), b| {
                (t + b.total, f + b.failures, s + b.slow)
            })
    }

    fn trip(&mut self, now: Nanos, params: &BreakerParams) -> Transition {
        // A trip soon after closing (or straight from half-open) is a repeat: the open time
        // doubles. A breaker that stayed closed for a whole window starts over.
        let repeated = self.state == BreakerState::HalfOpen
            || (self.trips > 0 && now.saturating_sub(self.closed_at) < params.window);
        self.trips = if repeated {
            self.trips.saturating_add(1)
        } else {
            1
        };
        let doublings = (self.trips - 1).min(32);
        let open_for = params
            .open_for
            .saturating_mul(1 << doublings)
            .min(params.open_for_max.max(params.open_for));
        self.open_until = now.saturating_add(open_for);
        self.enter(BreakerState::Open)
    }

    fn enter(&mut self, to: BreakerState) -> Transition {
        let from = std::mem::replace(&mut self.state, to);
        self.epoch = self.epoch.wrapping_add(1);
        Transition { from, to }
    }

    /// The bucket for `now`, re-bucketing the window first if the params changed its width
    /// (a swap rescales the window: its counts move to the current bucket rather than vanish).
    fn bucket(&mut self, now: Nanos, params: &BreakerParams) -> &mut Bucket {
        let width = params.bucket_width();
        if width != self.bucket_width {
            let (total, failures, slow) = self.window_counts(now);
            self.buckets = [Bucket::default(); BUCKETS];
            self.bucket_width = width;
            let index = now / width;
            self.buckets[(index % BUCKETS as u64) as usize] = Bucket {
                index,
                total,
                failures,
                slow,
            };
        }
        let index = now / width;
        let bucket = &mut self.buckets[(index % BUCKETS as u64) as usize];
        if bucket.index != index {
            *bucket = Bucket {
                index,
                ..Bucket::default()
            };
        }
        bucket
    }
}

#[cfg(test)]
mod tests;
