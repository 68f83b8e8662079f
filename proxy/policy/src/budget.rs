//! The retry budget: retries allowed as a share of requests, plus a small floor per second.
//!
//! A fixed `max_attempts` alone multiplies load exactly when the upstream can least take it: at
//! three attempts, an outage triples the traffic hitting it. A budget caps retries as a share of
//! the requests the route is actually serving (`budget_ratio`), so a total outage costs at most
//! `1 + budget_ratio` attempts per request, while a trickle of traffic still gets
//! `budget_min_per_sec` retries each second for its occasional failure.
//!
//! Accounting is per one-second window: in every window, `retries <= budget_ratio * requests +
//! budget_min_per_sec`, so over any run of whole windows the bound
//! `retries <= budget_ratio * requests + budget_min_per_sec * seconds` holds exactly. The whole
//! state is one `u64` (window, requests, retries), updated with one compare-and-swap, and the
//! counts are facts rather than parameters: a genome swap keeps them as they are.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::Nanos;

const SECOND: Nanos = 1_000_000_000;
const COUNT_BITS: u32 = 20;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const WINDOW_MASK: u64 = (1 << (64 - 2 * COUNT_BITS)) - 1;

/// The budget's parameters, from the route's retry genes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetParams {
    /// Retries allowed per request served.
    pub ratio: f64,
    /// Retries allowed each second whatever the ratio says.
    pub min_per_sec: u32,
}

// === impl BudgetParams ===

impl BudgetParams {
    /// The budget a route's retry genes describe.
    pub fn from_genes(genes: &rafael_config::RetryGenes) -> Self {
        Self {
            ratio: genes.budget_ratio,
            min_per_sec: genes.budget_min_per_sec,
        }
    }
}

/// A route's retry budget, shared by all its requests.
#[derive(Debug, Default)]
pub struct RetryBudget {
    /// window (24 bits) | requests (20 bits) | retries (20 bits); counts saturate.
    state: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    index: u64,
    requests: u64,
    retries: u64,
}

// === impl RetryBudget ===

impl RetryBudget {
    /// Counts a request at `now`: it adds `ratio` to what may be retried.
    #[inline]
    pub fn deposit(&self, now: Nanos) {
        self.update(now, |window| {
            window.requests = (window.requests + 1).min(COUNT_MAX);
            true
        });
    }

    /// Takes one retry from the budget at `now`; false when the budget is spent.
    #[inline]
    pub fn withdraw(&self, now: Nanos, params: &BudgetParams) -> bool {
        self.update(now, |window| {
            let allowed = params.ratio * window.requests as f64 + f64::from(params.min_per_sec);
            if (window.retries + 1) as f64 > allowed || window.retries == COUNT_MAX {
                return false;
            }
            window.retries += 1;
            true
        })
    }

    /// Requests and retries counted in the window holding `now`.
    pub fn counts(&self, now: Nanos) -> (u64, u64) {
        let window = Window::unpack(self.state.load(Ordering::Relaxed));
        if window.index == window_index(now) {
            (window.requests, window.retries)
        } else {
            (0, 0)
        }
    }

    fn update(&self, now: Nanos, change: impl Fn(&mut Window) -> bool) -> bool {
        let index = window_index(now);
        self.state
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |packed| {
                let mut window = Window::unpack(packed);
                if window.index != index {
                    window = Window {
                        index,
                        requests: 0,
                        retries: 0,
                    };
                }
                change(&mut window).then(|| window.pack())
            })
            .is_ok()
    }
}

fn window_index(now: Nanos) -> u64 {
    (now / SECOND) & WINDOW_MASK
}

// === impl Window ===

impl Window {
    fn unpack(packed: u64) -> Self {
        Self {
            index: packed >> (2 * COUNT_BITS),
            requests: (packed >> COUNT_BITS) & COUNT_MAX,
            retries: packed & COUNT_MAX,
        }
    }

    fn pack(self) -> u64 {
        (self.index << (2 * COUNT_BITS)) | (self.requests << COUNT_BITS) | self.retries
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_floor_allows_retries_without_traffic_and_the_ratio_adds_to_it() {
        let budget = RetryBudget::default();
        let params = BudgetParams {
            ratio: 0.5,
            min_per_sec: 2,
        };
        let now = 5 * SECOND;
        assert!(budget.withdraw(now, &params));
        assert!(budget.withdraw(now, &params));
        assert!(!budget.withdraw(now, &params));
        for _ in 0..4 {
            budget.deposit(now);
        }
        assert!(budget.withdraw(now, &params));
        assert!(budget.withdraw(now, &params));
        assert!(!budget.withdraw(now, &params));
        // A new second starts a new window.
        assert!(budget.withdraw(now + SECOND, &params));
        assert_eq!(budget.counts(now + SECOND), (0, 1));
    }

    #[derive(Debug, Clone)]
    enum Event {
        Request(u64),
        Retry(u64),
    }

    fn events() -> impl Strategy<Value = Vec<Event>> {
        prop::collection::vec(
            prop_oneof![
                (0u64..300_000_000).prop_map(Event::Request),
                (0u64..300_000_000).prop_map(Event::Retry),
            ],
            1..600,
        )
    }

    proptest! {
        /// Over every run of whole seconds, retries stay within
        /// `ratio * requests + min_per_sec * seconds`.
        #[test]
        fn retries_never_exceed_the_budget(
            ratio in 0.0f64..2.0,
            min_per_sec in 0u32..20,
            events in events(),
        ) {
            let params = BudgetParams { ratio, min_per_sec };
            let budget = RetryBudget::default();
            let mut now = 3 * SECOND + 123;
            let mut per_second: Vec<(u64, u64)> = Vec::new();
            let first = now / SECOND;
            for event in events {
                let (gap, retry) = match event {
                    Event::Request(gap) => (gap, false),
                    Event::Retry(gap) => (gap, true),
                };
                now += gap;
                let second = (now / SECOND - first) as usize;
                if per_second.len() <= second {
                    per_second.resize(second + 1, (0, 0));
                }
                if !retry {
                    budget.deposit(now);
                    per_second[second].0 += 1;
                } else if budget.withdraw(now, &params) {
                    per_second[second].1 += 1;
                }
            }
            for start in 0..per_second.len() {
                let (mut requests, mut retries) = (0, 0);
                for (seconds, (req, ret)) in per_second[start..].iter().enumerate() {
                    requests += req;
                    retries += ret;
                    let allowed = ratio * requests as f64
                        + f64::from(min_per_sec) * (seconds + 1) as f64;
                    prop_assert!(retries as f64 <= allowed + 1e-9,
                        "{retries} retries for {requests} requests over {} s", seconds + 1);
                }
            }
        }
    }
}
