//! Concurrency limits: a count of requests in flight checked against a limit, and the adaptive,
//! gradient-style limit that follows the upstream's latency.
//!
//! The adaptive limit compares a long-term average of the attempt latency (the latency the
//! upstream has when it is not overloaded) with the short-term one. While they agree the limit
//! grows by about its square root per window; when the short-term latency rises above
//! `TOLERANCE` times the long-term one, a queue is building upstream and the limit shrinks in
//! proportion (never below half per window). This is the gradient idea of Netflix's
//! concurrency-limits (Gradient2), made sans-IO: the caller passes each latency sample and the
//! time. When the route does not use half its limit, the limit does not grow: demand, not the
//! upstream, was what held the latency down. While a queue is building, the long-term average
//! learns ten times slower, so the queue is not taken for the upstream's normal latency.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::Nanos;

/// How far the short-term latency may exceed the long-term one before the limit shrinks.
const TOLERANCE: f64 = 1.5;
/// Weight of one window in the long-term average (about the last 100 windows).
const LONG_WEIGHT: f64 = 0.01;
/// The same weight while a queue is building: the baseline must not learn the queue as normal,
/// but it must still, slowly, follow an upstream that became slower at every load.
const LONG_WEIGHT_QUEUEING: f64 = 0.001;
/// Weight of a new estimate in the limit (smooths the limit's own movement).
const SMOOTHING: f64 = 0.2;
/// Length of a short-term window.
const WINDOW: Nanos = 100_000_000;
/// Samples a window needs before it counts.
const MIN_SAMPLES: u32 = 8;

/// Requests in flight on a route. Kept across genome swaps: it counts requests, which a swap
/// does not change.
#[derive(Debug, Default)]
pub struct InFlightCount {
    count: AtomicU32,
}

/// The adaptive limit's state.
#[derive(Debug, Clone)]
pub struct AdaptiveLimit {
    limit: f64,
    long_rtt: f64,
    window_start: Nanos,
    window_sum: f64,
    window_samples: u32,
    window_peak_in_flight: u32,
}

// === impl InFlightCount ===

impl InFlightCount {
    /// Takes a slot if fewer than `limit` are taken; returns the count including it.
    #[inline]
    pub fn try_acquire(&self, limit: u32) -> Option<u32> {
        // A compare-and-swap rather than add-then-undo: concurrent callers at the limit never
        // see a count inflated by each other's refused attempts.
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |count| {
                (count < limit).then_some(count + 1)
            })
            .ok()
            .map(|previous| previous + 1)
    }

    /// Takes a slot whatever the count (for routes without a limit, to keep the count true).
    #[inline]
    pub fn acquire(&self) -> u32 {
        self.count.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Gives a slot back.
    #[inline]
    pub fn release(&self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }

    /// Slots taken now.
    #[inline]
    pub fn get(&self) -> u32 {
        self.count.load(Ordering::Acquire)
    }
}

// === impl AdaptiveLimit ===

impl AdaptiveLimit {
    /// Starts at `max`: the operator's ceiling is trusted until latency says otherwise, so a
    /// fresh start never sheds traffic the upstream could take.
    pub fn new(max: u32) -> Self {
        Self {
            limit: f64::from(max.max(1)),
            long_rtt: 0.0,
            window_start: 0,
            window_sum: 0.0,
            window_samples: 0,
            window_peak_in_flight: 0,
        }
    }

    /// The current limit.
    #[inline]
    pub fn limit(&self) -> u32 {
        self.limit as u32
    }

    /// The long-term latency estimate, in nanoseconds (zero before the first window).
    pub fn long_rtt(&self) -> f64 {
        self.long_rtt
    }

    /// Feeds one attempt's latency (`rtt`, nanoseconds) seen at `now` while `in_flight`
    /// requests were in flight. Returns the new limit when a window closed and it moved.
    pub fn sample(&mut self, now: Nanos, rtt: Nanos, in_flight: u32, max: u32) -> Option<u32> {
        if self.window_samples == 0 {
            self.window_start = now;
        }
        self.window_sum += rtt as f64;
        self.window_samples += 1;
        self.window_peak_in_flight = self.window_peak_in_flight.max(in_flight);
        if now.saturating_sub(self.window_start) < WINDOW || self.window_samples < MIN_SAMPLES {
            return None;
        }
        let short_rtt = (self.window_sum / f64::from(self.window_samples)).max(1.0);
        let peak = self.window_peak_in_flight;
        self.window_sum = 0.0;
        self.window_samples = 0;
        self.window_peak_in_flight = 0;

        if self.long_rtt == 0.0 {
            self.long_rtt = short_rtt;
        } else {
            let queueing = short_rtt > TOLERANCE * self.long_rtt;
            let weight = if queueing {
                LONG_WEIGHT_QUEUEING
            } else {
                LONG_WEIGHT
            };
            self.long_rtt += (short_rtt - self.long_rtt) * weight;
        }
        // The upstream got faster (or the baseline learned a queue): let the baseline come
        // down quickly, so the gradient compares against what the upstream does now.
        if self.long_rtt > 2.0 * short_rtt {
            self.long_rtt *= 0.95;
        }
        let before = self.limit();
        let gradient = (TOLERANCE * self.long_rtt / short_rtt).clamp(0.5, 1.0);
        let mut estimate = self.limit * gradient + self.limit.sqrt();
        if f64::from(peak) < self.limit / 2.0 {
            // Demand-limited: no evidence the upstream can take more.
            estimate = estimate.min(self.limit);
        }
        self.limit = (self.limit * (1.0 - SMOOTHING) + estimate * SMOOTHING)
            .clamp(1.0, f64::from(max.max(1)));
        (self.limit() != before).then(|| self.limit())
    }

    /// Keeps the learned limit across a swap, within the new ceiling.
    pub fn rescale(&mut self, max: u32) {
        self.limit = self.limit.min(f64::from(max.max(1)));
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MS: Nanos = 1_000_000;

    /// Drives the limit with an upstream whose latency is `base` up to `capacity` requests in
    /// flight and grows linearly with the queue beyond it; demand always fills the limit.
    fn run(limit: &mut AdaptiveLimit, capacity: u32, windows: u64, start: Nanos) -> Nanos {
        let mut now = start;
        for _ in 0..windows {
            for _ in 0..MIN_SAMPLES {
                let in_flight = limit.limit();
                let queue = in_flight.saturating_sub(capacity);
                let rtt = 10 * MS + 10 * MS * u64::from(queue) / u64::from(capacity);
                limit.sample(now, rtt, in_flight, 1_000);
                now += WINDOW / u64::from(MIN_SAMPLES);
            }
        }
        now
    }

    #[test]
    fn the_limit_falls_toward_capacity_when_latency_rises_with_load() {
        let mut limit = AdaptiveLimit::new(1_000);
        // Learn the baseline at a capacity above the limit, then the upstream loses capacity.
        let now = run(&mut limit, 2_000, 50, 0);
        assert_eq!(limit.limit(), 1_000);
        run(&mut limit, 100, 300, now);
        assert!(
            (60..=250).contains(&limit.limit()),
            "limit {} should settle near the capacity of 100",
            limit.limit()
        );
    }

    #[test]
    fn the_limit_does_not_grow_without_demand() {
        let mut limit = AdaptiveLimit::new(100);
        limit.limit = 20.0;
        let mut now = 0;
        for _ in 0..1_000 {
            limit.sample(now, 10 * MS, 3, 100);
            now += 10 * MS;
        }
        assert_eq!(limit.limit(), 20);
    }

    #[test]
    fn in_flight_slots_are_refused_at_the_limit() {
        let count = InFlightCount::default();
        assert_eq!(count.try_acquire(2), Some(1));
        assert_eq!(count.try_acquire(2), Some(2));
        assert_eq!(count.try_acquire(2), None);
        count.release();
        assert_eq!(count.try_acquire(2), Some(2));
        assert_eq!(count.get(), 2);
    }

    proptest! {
        #[test]
        fn the_limit_stays_within_one_and_the_ceiling(
            samples in prop::collection::vec((0u64..50, 1u64..5_000, 0u32..2_000), 1..2_000),
            max in 1u32..1_000,
        ) {
            let mut limit = AdaptiveLimit::new(max);
            let mut now = 0;
            for (gap, rtt, in_flight) in samples {
                now += gap * MS;
                limit.sample(now, rtt * MS, in_flight, max);
                prop_assert!((1..=max).contains(&limit.limit()));
            }
        }
    }
}
