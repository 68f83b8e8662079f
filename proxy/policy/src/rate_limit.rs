//! The generic cell rate algorithm (GCRA): a token bucket kept as one timestamp.
//!
//! The state is the *theoretical arrival time* (TAT): when the bucket would be full again if
//! nothing else arrived. An arrival is admitted when the TAT is at most `tolerance` ahead of
//! now, and pushes it one `interval` further. One integer per limit, updated with one
//! compare-and-swap, and exact: in any window of length `t` at most `rps * t + burst` requests
//! are admitted (the property test at the end checks it).
//!
//! Per-key limits ([`KeyedRateLimit`]) keep one TAT per key in a bounded table of two
//! generations: a flood of distinct keys turns generations over instead of growing memory, and
//! a key that keeps sending is moved to the young generation each time, so it is never evicted
//! while it is being limited. Keys are stored as 64-bit keyed hashes (SipHash with a random
//! key per table), so a table costs the same whatever the clients send as keys, and nobody can
//! craft keys that collide.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use rafael_config::RateLimitGenes;

use crate::Nanos;

/// The parameters of one limit: how far apart admissions are, and how far ahead of now the
/// bucket may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    interval: Nanos,
    tolerance: Nanos,
}

/// Why an arrival was refused: the time until the same arrival would be admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Nanoseconds until an arrival would be admitted.
    pub retry_after: Nanos,
}

/// One shared limit (a route's).
#[derive(Debug, Default)]
pub struct RateLimitState {
    tat: AtomicU64,
}

/// One limit per client key, in a table bounded by `max_keys`.
#[derive(Debug)]
pub struct KeyedRateLimit {
    hasher: RandomState,
    table: Mutex<KeyTable>,
}

#[derive(Debug)]
struct KeyTable {
    young: HashMap<u64, Nanos>,
    old: HashMap<u64, Nanos>,
    generation: usize,
}

// === impl Gcra ===

impl Gcra {
    /// `rps` sustained, `burst` at once. `rps` must be positive and finite (the config
    /// validates 0.001..=10M); `burst` below 1 is taken as 1.
    pub fn new(rps: f64, burst: u32) -> Self {
        // Rounded up, so the admitted rate never exceeds `rps`.
        let interval = (1e9 / rps).ceil().clamp(1.0, u64::MAX as f64) as u64;
        let tolerance = interval.saturating_mul(u64::from(burst.max(1) - 1));
        Self {
            interval,
            tolerance,
        }
    }

    /// The limit a route's genes describe.
    pub fn from_genes(genes: &RateLimitGenes) -> Self {
        Self::new(genes.rps, genes.burst)
    }

    /// Nanoseconds between admissions at the sustained rate.
    #[inline]
    pub fn interval(&self) -> Nanos {
        self.interval
    }

    /// Decides one arrival at `now` against `tat`: the new TAT, or how long to wait.
    #[inline]
    pub fn check(&self, tat: Nanos, now: Nanos) -> Result<Nanos, Refused> {
        let base = tat.max(now);
        let ahead = base - now;
        if ahead > self.tolerance {
            Err(Refused {
                retry_after: ahead - self.tolerance,
            })
        } else {
            Ok(base.saturating_add(self.interval))
        }
    }

    /// Carries a TAT computed under `self` over to `next`: the backlog (how many admissions
    /// ahead of now the bucket is) is kept, in `next`'s interval. A route at its limit stays at
    /// its limit across a swap instead of getting a fresh burst.
    pub fn rescale(&self, next: &Gcra, tat: Nanos, now: Nanos) -> Nanos {
        if self == next || tat <= now {
            return tat;
        }
        let owed = (tat - now) as f64 / self.interval as f64;
        now.saturating_add((owed * next.interval as f64) as u64)
    }
}

// === impl RateLimitState ===

impl RateLimitState {
    /// Admits or refuses one arrival at `now`.
    #[inline]
    pub fn admit(&self, gcra: &Gcra, now: Nanos) -> Result<(), Refused> {
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = gcra.check(tat, now)?;
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(actual) => tat = actual,
            }
        }
    }

    /// Rescales the state from `from` to `to` (see [`Gcra::rescale`]).
    pub fn rescale(&self, from: &Gcra, to: &Gcra, now: Nanos) {
        let _ = self
            .tat
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                Some(from.rescale(to, tat, now))
            });
    }
}

// === impl KeyedRateLimit ===

impl KeyedRateLimit {
    /// A table holding at most `max(max_keys, 2)` keys.
    pub fn new(max_keys: u32) -> Self {
        let generation = (max_keys as usize / 2).max(1);
        Self {
            hasher: RandomState::new(),
            table: Mutex::new(KeyTable {
                young: HashMap::with_capacity(generation.min(1024)),
                old: HashMap::new(),
                generation,
            }),
        }
    }

    /// Admits or refuses one arrival of `key` at `now`.
    pub fn admit(&self, gcra: &Gcra, key: &[u8], now: Nanos) -> Result<(), Refused> {
        // Hashed before the lock is taken: a long key does not hold other clients up.
        let key = self.hasher.hash_one(key);
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let tat = match table.young.get_mut(&key) {
            Some(tat) => {
                let result = gcra.check(*tat, now);
                if let Ok(next) = result {
                    *tat = next;
                }
                return result.map(drop);
            }
            None => table.old.remove(&key).unwrap_or(0),
        };
        let result = gcra.check(tat, now);
        // Refused or not, the key was just seen: it moves to the young generation.
        table.insert(key, result.unwrap_or(tat));
        result.map(drop)
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        table.young.len() + table.old.len()
    }

    /// True when no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rescales every key's state from `from` to `to`, and re-bounds the table to `max_keys`.
    pub fn rescale(&self, from: &Gcra, to: &Gcra, max_keys: u32, now: Nanos) {
        let mut guard = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let table = &mut *guard;
        table.generation = (max_keys as usize / 2).max(1);
        for tat in table.young.values_mut().chain(table.old.values_mut()) {
            *tat = from.rescale(to, *tat, now);
        }
        if table.young.len() > table.generation {
            table.old = std::mem::take(&mut table.young);
        }
        if table.old.len() > table.generation {
            table.old.clear();
        }
    }
}

// === impl KeyTable ===

impl KeyTable {
    fn insert(&mut self, key: u64, tat: Nanos) {
        if self.young.len() >= self.generation {
            // The old generation holds keys not seen for a whole generation: drop them.
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(key, tat);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SECOND: Nanos = 1_000_000_000;

    #[test]
    fn a_burst_is_admitted_at_once_then_the_sustained_rate() {
        let gcra = Gcra::new(10.0, 5);
        let state = RateLimitState::default();
        let now = 7 * SECOND;
        for _ in 0..5 {
            assert_eq!(state.admit(&gcra, now), Ok(()));
        }
        let refused = state.admit(&gcra, now).unwrap_err();
        assert_eq!(refused.retry_after, SECOND / 10);
        assert_eq!(state.admit(&gcra, now + SECOND / 10), Ok(()));
        assert!(state.admit(&gcra, now + SECOND / 10).is_err());
    }

    #[test]
    fn a_limited_route_stays_limited_across_a_rescale() {
        let before = Gcra::new(10.0, 10);
        let state = RateLimitState::default();
        while state.admit(&before, SECOND).is_ok() {}
        // Twice the rate: the backlog of ten admissions now clears in half the time.
        let after = Gcra::new(20.0, 10);
        state.rescale(&before, &after, SECOND);
        assert!(state.admit(&after, SECOND).is_err());
        assert!(state.admit(&after, SECOND + SECOND / 20).is_ok());
    }

    #[test]
    fn a_flood_of_distinct_keys_stays_within_max_keys() {
        let gcra = Gcra::new(1.0, 1);
        let limit = KeyedRateLimit::new(1_000);
        let heavy = b"heavy-client";
        let mut heavy_admitted = 0;
        for i in 0..100_000u32 {
            let now = Nanos::from(i) * 1_000; // 1 µs apart: 0.1 s in all
            limit
                .admit(&gcra, &i.to_be_bytes(), now)
                .expect("each key is new");
            if limit.admit(&gcra, heavy, now).is_ok() {
                heavy_admitted += 1;
            }
            assert!(limit.len() <= 1_000);
        }
        // The heavy key was seen throughout, so it was never evicted and never got a new burst.
        assert_eq!(heavy_admitted, 1);
    }

    proptest! {
        /// In every window, admissions stay within `rps * t + burst`.
        #[test]
        fn admissions_never_exceed_rate_times_window_plus_burst(
            rps in 0.5f64..2_000.0,
            burst in 1u32..50,
            gaps in prop::collection::vec(0u64..20_000_000, 1..400),
        ) {
            let gcra = Gcra::new(rps, burst);
            let state = RateLimitState::default();
            let mut now = SECOND;
            let mut admitted = Vec::new();
            for gap in gaps {
                now += gap;
                if state.admit(&gcra, now).is_ok() {
                    admitted.push(now);
                }
            }
            for (i, start) in admitted.iter().enumerate() {
                for (j, end) in admitted.iter().enumerate().skip(i) {
                    let count = (j - i + 1) as f64;
                    let window = (end - start) as f64 / 1e9;
                    prop_assert!(
                        count <= rps * window + f64::from(burst) + 1e-9,
                        "{count} admitted in {window} s at {rps}/s burst {burst}"
                    );
                }
            }
        }

        /// A refusal's `retry_after` is exactly when the next arrival is admitted.
        #[test]
        fn retry_after_is_exact(rps in 0.5f64..2_000.0, burst in 1u32..20) {
            let gcra = Gcra::new(rps, burst);
            let state = RateLimitState::default();
            let now = SECOND;
            let refused = loop {
                if let Err(refused) = state.admit(&gcra, now) {
                    break refused;
                }
            };
            prop_assert!(state.admit(&gcra, now + refused.retry_after - 1).is_err());
            prop_assert!(state.admit(&gcra, now + refused.retry_after).is_ok());
        }
    }
}
