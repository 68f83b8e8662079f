//! The telemetry the control plane reads (DESIGN §8): per route, in memory and bounded.
//!
//! - **Per-second windows**, a ring of the last ten minutes: requests, client-visible outcomes
//!   by class, upstream attempts and retries, a log-linear latency histogram, and the peak
//!   number of requests in flight.
//! - **Attempt samples**, a fixed ring: start time, endpoint, attempt number, in-flight count at
//!   start, latency, outcome, and whether a fault was injected.
//! - **Arrivals**, a fixed ring of request start times, so a simulator can replay the real
//!   arrival process.
//!
//! The request path only does relaxed atomic operations here and never waits for a reader;
//! readers ([`crate::snapshot::TelemetryHandle`]) copy what they need. Samples are taken for every request while
//! a route sees fewer than [`SAMPLE_ALL_BELOW`] requests in the current second, and for one in
//! [`SAMPLE_EVERY`] above that, so a quiet route is fully observed and a busy one costs little.
//!
//! Memory per route: 600 windows of 15 counters and 46 histogram buckets (about 240 KiB), plus
//! two rings of 4,096 samples (about 160 KiB), allocated when the route sees its first request:
//! an idle route costs one pointer, so a config with thousands of routes that are rarely used
//! stays small (2,500 idle routes took 1 GB before).

use std::sync::{
    OnceLock,
    atomic::{AtomicU32, AtomicU64, Ordering, fence},
};

use crate::policy::Nanos;

/// Seconds of per-second windows kept.
pub const WINDOW_SECONDS: usize = 600;
/// Attempt samples and arrivals kept.
pub const SAMPLE_CAPACITY: usize = 4096;
/// Below this many requests in the current second, every request is sampled.
pub const SAMPLE_ALL_BELOW: u64 = 100;
/// Above it, one request in this many is sampled.
pub const SAMPLE_EVERY: u64 = 8;

const SECOND: Nanos = 1_000_000_000;
/// Latency buckets: below 2^14 ns (16 µs), then two per power of two up to 2^36 ns (69 s), then
/// the rest.
const FIRST_POWER: u32 = 14;
const LAST_POWER: u32 = 35;
/// Number of latency buckets.
pub const LATENCY_BUCKETS: usize = 2 + 2 * (LAST_POWER - FIRST_POWER + 1) as usize;
const RESETTING: u64 = u64::MAX;

/// A client-visible outcome class. Rejections by rafael's own policies have their own classes;
/// everything else is classed by status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 1xx, 2xx or 3xx.
    Success = 0,
    /// A 4xx other than a rate-limit refusal.
    ClientError = 1,
    /// A 5xx other than the rejections below (upstream 5xx, 502 from rafael).
    ServerError = 2,
    /// Refused by the route's rate limit (429).
    RateLimited = 3,
    /// Refused because every endpoint's breaker is open (503).
    BreakerOpen = 4,
    /// Shed by the route's concurrency limit (503).
    Shed = 5,
    /// The route or attempt deadline passed (504).
    Timeout = 6,
}

const OUTCOMES: usize = 7;

/// One route's telemetry. Kept across snapshots with the route's policy state.
#[derive(Debug, Default)]
pub struct RouteTelemetry {
    rings: OnceLock<Box<Rings>>,
}

/// The rings of a route that has seen traffic.
#[derive(Debug)]
struct Rings {
    windows: Box<[SecondWindow]>,
    attempts: Box<[SampleSlot]>,
    attempt_head: AtomicU64,
    arrivals: Box<[AtomicU64]>,
    arrival_head: AtomicU64,
    sequence: AtomicU64,
}

#[derive(Debug)]
struct SecondWindow {
    /// The second this slot holds, plus one (0: never used; `RESETTING`: being cleared).
    tag: AtomicU64,
    requests: AtomicU64,
    outcomes: [AtomicU64; OUTCOMES],
    attempts: AtomicU64,
    retries: AtomicU64,
    peak_in_flight: AtomicU64,
    latency_sum: AtomicU64,
    latency: [AtomicU32; LATENCY_BUCKETS],
}

/// A seqlock-guarded slot: `seq` is odd while a writer fills it.
#[derive(Debug, Default)]
struct SampleSlot {
    seq: AtomicU64,
    start: AtomicU64,
    latency: AtomicU64,
    /// endpoint (16 bits) | attempt (8) | outcome (8) | fault (1) and 5xx status - 499 (7) |
    /// in-flight (24).
    packed: AtomicU64,
}

/// What one upstream attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptSample {
    /// When it started.
    pub start: Nanos,
    /// Endpoint index in the upstream.
    pub endpoint: u16,
    /// 1 for the first attempt.
    pub attempt: u8,
    /// Attempts in flight on its endpoint when it started, itself included.
    pub in_flight: u32,
    /// Time to the response head (or the failure).
    pub latency: Nanos,
    /// Index into [`crate::metrics::ATTEMPT_OUTCOMES`].
    pub outcome: u8,
    /// Whether a fault was injected into it.
    pub fault: bool,
    /// The 5xx status it answered, when it answered one (what a retry's `gateway-error` or a
    /// status condition reads: a model must know 503 from 500).
    pub status_5xx: Option<u16>,
}

/// A copy of one second's window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Start of the second.
    pub start: Nanos,
    /// Requests that arrived.
    pub requests: u64,
    /// Responses by [`Outcome`] (indexed by its value).
    pub outcomes: [u64; OUTCOMES],
    /// Upstream attempts started.
    pub attempts: u64,
    /// Retries sent.
    pub retries: u64,
    /// Most requests in flight at once.
    pub peak_in_flight: u64,
    /// Sum of response latencies, nanoseconds.
    pub latency_sum: Nanos,
    /// Response latency histogram (see [`latency_bucket_bound`]).
    pub latency: [u64; LATENCY_BUCKETS],
}

// === impl RouteTelemetry ===

impl RouteTelemetry {
    /// The rings, allocated on first use (one acquire load afterwards).
    fn rings(&self) -> &Rings {
        self.rings.get_or_init(|| Box::new(Rings::new()))
    }

    /// Records a request arriving at `now`; returns whether it is sampled.
    pub fn arrival(&self, now: Nanos) -> bool {
        self.rings().arrival(now)
    }

    /// Records the route's in-flight count seen at `now`.
    pub fn in_flight(&self, now: Nanos, in_flight: u32) {
        self.rings().in_flight(now, in_flight);
    }

    /// Records a retry sent at `now`.
    pub fn retry(&self, now: Nanos) {
        self.rings().retry(now);
    }

    /// Records an upstream attempt (counted always, sampled when its request is).
    pub fn attempt(&self, sample: AttemptSample, sampled: bool) {
        self.rings().attempt(sample, sampled);
    }

    /// Records a response: its outcome class and latency, in the window of `now`.
    pub fn complete(&self, now: Nanos, outcome: Outcome, latency: Nanos) {
        self.rings().complete(now, outcome, latency);
    }

    /// Copies of the windows from `from` to `to` (inclusive, by second), oldest first; seconds
    /// without traffic come back empty.
    pub fn windows(&self, from: Nanos, to: Nanos) -> Vec<Window> {
        match self.rings.get() {
            Some(rings) => rings.windows(from, to),
            None => seconds(from, to)
                .map(|second| Window::empty(second * SECOND))
                .collect(),
        }
    }

    /// The attempt samples held, oldest first.
    pub fn attempts(&self) -> Vec<AttemptSample> {
        self.rings.get().map_or_else(Vec::new, |r| r.attempts())
    }

    /// The sampled arrival times held, oldest first.
    pub fn arrivals(&self) -> Vec<Nanos> {
        self.rings.get().map_or_else(Vec::new, |r| r.arrivals())
    }
}

/// The seconds from `from` to `to` (inclusive) that the windows can still hold.
fn seconds(from: Nanos, to: Nanos) -> std::ops::RangeInclusive<u64> {
    let (first, last) = (from / SECOND, to / SECOND);
    first.max((last + 1).saturating_sub(WINDOW_SECONDS as u64))..=last
}

// === impl Rings ===

impl Rings {
    fn new() -> Self {
        Self {
            windows: (0..WINDOW_SECONDS).map(|_| SecondWindow::new()).collect(),
            attempts: (0..SAMPLE_CAPACITY)
                .map(|_| SampleSlot::default())
                .collect(),
            attempt_head: AtomicU64::new(0),
            arrivals: (0..SAMPLE_CAPACITY).map(|_| AtomicU64::new(0)).collect(),
            arrival_head: AtomicU64::new(0),
            sequence: AtomicU64::new(0),
        }
    }

    fn arrival(&self, now: Nanos) -> bool {
        let seen = self
            .window(now)
            .map_or(0, |w| w.requests.fetch_add(1, Ordering::Relaxed));
        let sampled = seen < SAMPLE_ALL_BELOW
            || self.sequence.fetch_add(1, Ordering::Relaxed) % SAMPLE_EVERY == 0;
        if sampled {
            let at = self.arrival_head.fetch_add(1, Ordering::Relaxed);
            self.arrivals[(at % SAMPLE_CAPACITY as u64) as usize].store(now, Ordering::Relaxed);
        }
        sampled
    }

    fn in_flight(&self, now: Nanos, in_flight: u32) {
        if let Some(window) = self.window(now) {
            window
                .peak_in_flight
                .fetch_max(u64::from(in_flight), Ordering::Relaxed);
        }
    }

    fn retry(&self, now: Nanos) {
        if let Some(window) = self.window(now) {
            window.retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn attempt(&self, sample: AttemptSample, sampled: bool) {
        if let Some(window) = self.window(sample.start) {
            window.attempts.fetch_add(1, Ordering::Relaxed);
        }
        if !sampled {
            return;
        }
        let at = self.attempt_head.fetch_add(1, Ordering::Relaxed);
        let slot = &self.attempts[(at % SAMPLE_CAPACITY as u64) as usize];
        slot.seq.store(2 * at + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        slot.start.store(sample.start, Ordering::Relaxed);
        slot.latency.store(sample.latency, Ordering::Relaxed);
        let packed = u64::from(sample.endpoint)
            | u64::from(sample.attempt) << 16
            | u64::from(sample.outcome) << 24
            | u64::from(sample.fault) << 32
            // The fault byte's upper seven bits: 5xx status - 499 (1..=100), or 0.
            | u64::from(sample.status_5xx.filter(|s| (500..600).contains(s)).map_or(0, |s| s - 499))
                << 33
            | u64::from(sample.in_flight.min(0xFF_FFFF)) << 40;
        slot.packed.store(packed, Ordering::Relaxed);
        slot.seq.store(2 * at + 2, Ordering::Release);
    }

    fn complete(&self, now: Nanos, outcome: Outcome, latency: Nanos) {
        if let Some(window) = self.window(now) {
            window.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
            window.latency_sum.fetch_add(latency, Ordering::Relaxed);
            window.latency[latency_bucket(latency)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The window of `now`, cleared first if it still holds a second ten minutes old. `None`
    /// only if another writer is clearing it for far too long (the sample is dropped rather
    /// than waited for).
    fn window(&self, now: Nanos) -> Option<&SecondWindow> {
        let second = now / SECOND;
        let window = &self.windows[(second % WINDOW_SECONDS as u64) as usize];
        let tag = second + 1;
        for _ in 0..10_000 {
            let current = window.tag.load(Ordering::Acquire);
            if current == tag {
                return Some(window);
            }
            if current == RESETTING {
                std::hint::spin_loop();
                continue;
            }
            if current > tag {
                // A writer with a stale clock reading, ten minutes late: nothing to record into.
                return None;
            }
            if window
                .tag
                .compare_exchange(current, RESETTING, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                window.clear();
                window.tag.store(tag, Ordering::Release);
                return Some(window);
            }
        }
        None
    }

    fn windows(&self, from: Nanos, to: Nanos) -> Vec<Window> {
        seconds(from, to)
            .map(|second| {
                let slot = &self.windows[(second % WINDOW_SECONDS as u64) as usize];
                let mut window = Window::empty(second * SECOND);
                if slot.tag.load(Ordering::Acquire) == second + 1 {
                    slot.copy_into(&mut window);
                }
                window
            })
            .collect()
    }

    fn attempts(&self) -> Vec<AttemptSample> {
        let head = self.attempt_head.load(Ordering::Acquire);
        let start = head.saturating_sub(SAMPLE_CAPACITY as u64);
        (start..head)
            .filter_map(|at| {
                let slot = &self.attempts[(at % SAMPLE_CAPACITY as u64) as usize];
                let seq = slot.seq.load(Ordering::Acquire);
                if seq != 2 * at + 2 {
                    return None; // being written, or overwritten already
                }
                let start = slot.start.load(Ordering::Relaxed);
                let latency = slot.latency.load(Ordering::Relaxed);
                let packed = slot.packed.load(Ordering::Relaxed);
                fence(Ordering::Acquire);
                if slot.seq.load(Ordering::Relaxed) != seq {
                    return None;
                }
                Some(AttemptSample {
                    start,
                    endpoint: (packed & 0xFFFF) as u16,
                    attempt: (packed >> 16) as u8,
                    outcome: (packed >> 24) as u8,
                    fault: (packed >> 32) & 1 == 1,
                    status_5xx: match ((packed >> 33) & 0x7F) as u16 {
                        0 => None,
                        offset => Some(499 + offset),
                    },
                    in_flight: (packed >> 40) as u32,
                    latency,
                })
            })
            .collect()
    }

    fn arrivals(&self) -> Vec<Nanos> {
        let head = self.arrival_head.load(Ordering::Acquire);
        let start = head.saturating_sub(SAMPLE_CAPACITY as u64);
        let mut times: Vec<Nanos> = (start..head)
            .map(|at| self.arrivals[(at % SAMPLE_CAPACITY as u64) as usize].load(Ordering::Relaxed))
            .filter(|&t| t != 0)
            .collect();
        // Concurrent writers may have stored slightly out of order.
        times.sort_unstable();
        times
    }
}

// === impl SecondWindow ===

impl SecondWindow {
    fn new() -> Self {
        Self {
            tag: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            outcomes: std::array::from_fn(|_| AtomicU64::new(0)),
            attempts: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            peak_in_flight: AtomicU64::new(0),
            latency_sum: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }

    fn clear(&self) {
        let counters = [
            &self.requests,
            &self.attempts,
            &self.retries,
            &self.peak_in_flight,
            &self.latency_sum,
        ];
        for counter in counters.into_iter().chain(&self.outcomes) {
            counter.store(0, Ordering::Relaxed);
        }
        for bucket in &self.latency {
            bucket.store(0, Ordering::Relaxed);
        }
    }

    fn copy_into(&self, window: &mut Window) {
        window.requests = self.requests.load(Ordering::Relaxed);
        for (out, count) in window.outcomes.iter_mut().zip(&self.outcomes) {
            *out = count.load(Ordering::Relaxed);
        }
        window.attempts = self.attempts.load(Ordering::Relaxed);
        window.retries = self.retries.load(Ordering::Relaxed);
        window.peak_in_flight = self.peak_in_flight.load(Ordering::Relaxed);
        window.latency_sum = self.latency_sum.load(Ordering::Relaxed);
        for (out, count) in window.latency.iter_mut().zip(&self.latency) {
            *out = u64::from(count.load(Ordering::Relaxed));
        }
    }
}

// === impl Window ===

impl Window {
    fn empty(start: Nanos) -> Self {
        Self {
            start,
            requests: 0,
            outcomes: [0; OUTCOMES],
            attempts: 0,
            retries: 0,
            peak_in_flight: 0,
            latency_sum: 0,
            latency: [0; LATENCY_BUCKETS],
        }
    }

    /// Responses of one class.
    pub fn outcome(&self, outcome: Outcome) -> u64 {
        self.outcomes[outcome as usize]
    }

    /// Responses of every class.
    pub fn responses(&self) -> u64 {
        self.outcomes.iter().sum()
    }

    /// Adds `other` into this window (histograms are mergeable by construction).
    pub fn merge(&mut self, other: &Window) {
        self.requests += other.requests;
        for (a, b) in self.outcomes.iter_mut().zip(&other.outcomes) {
            *a += b;
        }
        self.attempts += other.attempts;
        self.retries += other.retries;
        self.peak_in_flight = self.peak_in_flight.max(other.peak_in_flight);
        self.latency_sum += other.latency_sum;
        for (a, b) in self.latency.iter_mut().zip(&other.latency) {
            *a += b;
        }
    }

    /// The latency at quantile `q` (0..=1): the upper bound of the bucket that holds it.
    pub fn latency_quantile(&self, q: f64) -> Option<Nanos> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, count) in self.latency.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(latency_bucket_bound(i));
            }
        }
        None
    }
}

/// The bucket of a latency of `nanos`.
pub fn latency_bucket(nanos: Nanos) -> usize {
    if nanos < 1 << FIRST_POWER {
        return 0;
    }
    let power = 63 - nanos.leading_zeros();
    if power > LAST_POWER {
        return LATENCY_BUCKETS - 1;
    }
    let half = ((nanos >> (power - 1)) & 1) as usize;
    1 + 2 * (power - FIRST_POWER) as usize + half
}

/// The exclusive upper bound of bucket `index`, nanoseconds (`u64::MAX` for the last).
pub fn latency_bucket_bound(index: usize) -> Nanos {
    if index == 0 {
        return 1 << FIRST_POWER;
    }
    if index >= LATENCY_BUCKETS - 1 {
        return u64::MAX;
    }
    let power = FIRST_POWER + ((index - 1) / 2) as u32;
    let half = ((index - 1) % 2) as u64;
    (1 << power) + (half + 1) * (1 << (power - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_log_linear_and_bounds_hold_their_values() {
        for nanos in [
            0,
            1,
            16_383,
            16_384,
            20_000,
            1_000_000,
            123_456_789,
            60 * SECOND,
        ] {
            let bucket = latency_bucket(nanos);
            assert!(nanos < latency_bucket_bound(bucket), "{nanos} in {bucket}");
            if bucket > 0 {
                assert!(
                    nanos >= latency_bucket_bound(bucket - 1),
                    "{nanos} in {bucket}"
                );
            }
        }
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn windows_count_per_second_and_reuse_slots_after_ten_minutes() {
        let telemetry = RouteTelemetry::default();
        let t0 = 5 * SECOND;
        telemetry.arrival(t0);
        telemetry.complete(t0 + 10, Outcome::Success, 2_000_000);
        telemetry.arrival(t0 + SECOND);
        telemetry.complete(t0 + SECOND, Outcome::RateLimited, 10_000);
        let windows = telemetry.windows(t0, t0 + SECOND);
        assert_eq!(windows.len(), 2);
        assert_eq!(windows[0].requests, 1);
        assert_eq!(windows[0].outcome(Outcome::Success), 1);
        assert_eq!(windows[1].outcome(Outcome::RateLimited), 1);
        assert_eq!(
            windows[0].latency_quantile(0.5),
            Some(latency_bucket_bound(latency_bucket(2_000_000)))
        );

        let later = t0 + WINDOW_SECONDS as u64 * SECOND;
        telemetry.arrival(later);
        let windows = telemetry.windows(later, later);
        assert_eq!(windows[0].requests, 1);
        assert_eq!(windows[0].responses(), 0, "the old second was cleared");
    }

    #[test]
    fn quiet_routes_sample_every_request_and_busy_ones_some() {
        let telemetry = RouteTelemetry::default();
        let now = 9 * SECOND;
        let sampled = (0..1_000).filter(|_| telemetry.arrival(now)).count() as u64;
        let expected = SAMPLE_ALL_BELOW + (1_000 - SAMPLE_ALL_BELOW) / SAMPLE_EVERY;
        assert!(sampled.abs_diff(expected) <= 1, "{sampled} sampled");
        assert_eq!(telemetry.arrivals().len() as u64, sampled);
    }

    #[test]
    fn attempt_samples_round_trip_and_the_ring_keeps_the_newest() {
        let telemetry = RouteTelemetry::default();
        for i in 0..(SAMPLE_CAPACITY as u64 + 10) {
            let sample = AttemptSample {
                start: SECOND + i,
                endpoint: 3,
                attempt: 2,
                in_flight: 17,
                latency: 5_000,
                outcome: 1,
                fault: i % 2 == 0,
                status_5xx: Some(503),
            };
            telemetry.attempt(sample, true);
        }
        let samples = telemetry.attempts();
        assert_eq!(samples.len(), SAMPLE_CAPACITY);
        assert_eq!(samples[0].start, SECOND + 10);
        assert_eq!(
            samples[0],
            AttemptSample {
                start: SECOND + 10,
                endpoint: 3,
                attempt: 2,
                in_flight: 17,
                latency: 5_000,
                outcome: 1,
                fault: true,
                status_5xx: Some(503),
            }
        );
    }
}
