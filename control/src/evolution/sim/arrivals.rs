//! The arrival stream: when requests arrive in a run.
//!
//! Without a `rate`, the observed per-second counts are replayed (wrapping around when the run
//! is longer than the window), each second's requests spread within it as the observed ones
//! were (`spacing_cv`: at uniform random instants for Poisson-like traffic, on an even beat
//! with jitter for steadier clients): the counts, and so the burstiness the route saw, are
//! kept exactly. With a `rate`, arrivals
//! are a Poisson process at that rate. A surge adds its own Poisson process on top.

use rand::{RngExt, SeedableRng, rngs::Xoshiro256PlusPlus};
use rand_distr::{Distribution, Exp};

use super::Run;
use crate::evolution::model::Model;
use rafael_proxy::policy::{Nanos, nanos};

const SECOND: Nanos = 1_000_000_000;
/// Tells the arrival stream's seed from the other streams'.
const STREAM: u64 = 0x6172_7269_7661_6c73;

/// Arrival times, sorted, nanoseconds from the start of the run.
#[derive(Debug, Clone, Default)]
pub struct Arrivals {
    times: Vec<Nanos>,
}

// === impl Arrivals ===

impl Arrivals {
    /// The arrivals of `run`.
    pub fn generate(run: &Run<'_>) -> Self {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(run.seed ^ STREAM);
        let end = nanos(run.duration);
        let mut times = Vec::new();
        let timeline = &run.model.arrivals.per_second;
        match run.rate {
            Some(rate) => poisson(&mut rng, rate, end, &mut times),
            None if timeline.is_empty() => {
                poisson(&mut rng, run.model.arrivals.rate_per_sec, end, &mut times)
            }
            None => {
                let offset = window_offset(run) as usize;
                let seconds = end.div_ceil(SECOND);
                // Spacing as measured: uniform instants for Poisson-like clients (CV 1); even
                // slots with a uniform jitter of `cv * sqrt(6)` slots for steadier ones (the
                // gap between two such slots has that CV).
                let jitter = (run.model.arrivals.spacing_cv * 6f64.sqrt()).max(0.0);
                for second in 0..seconds {
                    let index = (offset + second as usize) % timeline.len();
                    let start = second * SECOND;
                    let count = timeline[index];
                    let slot = SECOND as f64 / f64::from(count.max(1));
                    for i in 0..count {
                        let within = if jitter >= 1.0 {
                            rng.random_range(0..SECOND)
                        } else {
                            let centre = (f64::from(i) + 0.5) * slot;
                            let offset = (rng.random::<f64>() - 0.5) * jitter * slot;
                            (centre + offset).clamp(0.0, (SECOND - 1) as f64) as Nanos
                        };
                        let at = start + within;
                        if at < end {
                            times.push(at);
                        }
                    }
                }
            }
        }
        let extra = run.scenario.extra_rate();
        if extra > 0.0 {
            poisson(&mut rng, extra, end, &mut times);
        }
        times.sort_unstable();
        Self { times }
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.times.len()
    }

    /// None at all.
    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
    }

    /// Arrival `i`.
    pub fn get(&self, i: usize) -> Option<Nanos> {
        self.times.get(i).copied()
    }
}

/// Where in the fitted window a replay starts, seconds. The `observed` scenario starts a
/// quarter of the run before the first bad regime, so a run shorter than the window still
/// meets it; every other replay starts at the window's start.
pub fn window_offset(run: &Run<'_>) -> u32 {
    if !run.scenario.replays_regimes() {
        return 0;
    }
    let window = u32::try_from(run.model.window_secs).unwrap_or(u32::MAX);
    let length = u32::try_from(run.duration.as_secs()).unwrap_or(u32::MAX);
    let first = first_regime_start(run.model);
    match first {
        Some(start) if length < window => start
            .saturating_sub(length / 4)
            .min(window.saturating_sub(length)),
        _ => 0,
    }
}

fn first_regime_start(model: &Model) -> Option<u32> {
    model
        .regimes
        .iter()
        .flat_map(|regime| regime.periods.iter())
        .map(|period| period.start_sec)
        .min()
}

/// Appends a Poisson process at `rate` per second over `0..end`.
fn poisson(rng: &mut Xoshiro256PlusPlus, rate: f64, end: Nanos, times: &mut Vec<Nanos>) {
    let Ok(gaps) = Exp::new(rate.max(0.0) / SECOND as f64) else {
        return;
    };
    if rate <= 0.0 {
        return;
    }
    let mut at = 0.0;
    loop {
        at += gaps.sample(rng);
        if at >= end as f64 {
            break;
        }
        times.push(at as Nanos);
    }
}
