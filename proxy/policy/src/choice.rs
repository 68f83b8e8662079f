//! Endpoint choice: which endpoint an attempt goes to.
//!
//! Power of two choices (Mitzenmacher, "The Power of Two Choices in Randomized Load
//! Balancing"): pick two endpoints at random and send to the one with fewer attempts in flight.
//! It spreads load almost as well as least-loaded without a global scan, and unlike
//! least-loaded it does not herd every proxy onto the same endpoint at once.
//!
//! With breakers, endpoints whose breaker would refuse are not candidates; the endpoint the
//! previous attempt failed on is taken only when no other is available; an endpoint whose
//! breaker refuses at the last moment (its last probe slot just went) is passed over for the
//! next one. With every breaker open nothing is chosen, and the request fails fast.

use crate::{Nanos, breaker::Admission};

/// What the choice reads of a route's endpoints.
pub trait Endpoints {
    /// How many there are (at least one).
    fn count(&self) -> usize;
    /// Attempts in flight on endpoint `i`.
    fn load(&self, i: usize) -> usize;
    /// Whether the route has breakers at all.
    fn has_breakers(&self) -> bool;
    /// Whether endpoint `i`'s breaker would admit an attempt at `now`.
    fn available(&self, i: usize, now: Nanos) -> bool;
    /// Has endpoint `i`'s breaker admit one attempt at `now`.
    fn admit(&mut self, i: usize, now: Nanos) -> Admission;
}

/// Power of two choices among the endpoints `usable` accepts: the less loaded of two random
/// distinct ones; when neither of the two is usable, the first usable one after the first
/// pick. `pick(n)` draws uniformly from `0..n`.
pub fn power_of_two(
    count: usize,
    usable: impl Fn(usize) -> bool,
    load: impl Fn(usize) -> usize,
    pick: &mut impl FnMut(usize) -> usize,
) -> Option<usize> {
    if count <= 1 {
        return usable(0).then_some(0);
    }
    let a = pick(count);
    let mut b = pick(count - 1);
    if b >= a {
        b += 1;
    }
    match (usable(a), usable(b)) {
        (true, true) => Some(if load(b) < load(a) { b } else { a }),
        (true, false) => Some(a),
        (false, true) => Some(b),
        (false, false) => (1..count)
            .map(|step| (a + step) % count)
            .find(|&i| usable(i)),
    }
}

/// Chooses the endpoint of an attempt at `now` and has its breaker admit it, avoiding `avoid`
/// (the endpoint the previous attempt failed on) when another is available. `None` when no
/// breaker admits.
pub fn choose(
    endpoints: &mut impl Endpoints,
    avoid: Option<usize>,
    now: Nanos,
    pick: &mut impl FnMut(usize) -> usize,
) -> Option<(usize, Admission)> {
    let count = endpoints.count();
    if !endpoints.has_breakers() {
        // Without breakers every endpoint takes attempts; the failed one again when it is the
        // only one.
        let chosen =
            power_of_two(count, |i| Some(i) != avoid, |i| endpoints.load(i), pick).or(avoid)?;
        return Some((chosen, Admission::Allowed { epoch: 0 }));
    }
    let first = {
        let view = &*endpoints;
        power_of_two(
            count,
            |i| Some(i) != avoid && view.available(i, now),
            |i| view.load(i),
            pick,
        )
        .or_else(|| avoid.filter(|&i| view.available(i, now)))?
    };
    let mut admit = |i: usize| match endpoints.admit(i, now) {
        Admission::Refused => None,
        admission => Some((i, admission)),
    };
    admit(first).or_else(|| {
        (1..count).map(|step| (first + step) % count).find_map(|i| {
            if endpoints.available(i, now) {
                match endpoints.admit(i, now) {
                    Admission::Refused => None,
                    admission => Some((i, admission)),
                }
            } else {
                None
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Endpoints whose breakers are open or closed by a flag.
    struct Fixed {
        loads: Vec<usize>,
        open: Vec<bool>,
        breakers: bool,
    }

    impl Endpoints for Fixed {
        fn count(&self) -> usize {
            self.loads.len()
        }
        fn load(&self, i: usize) -> usize {
            self.loads[i]
        }
        fn has_breakers(&self) -> bool {
            self.breakers
        }
        fn available(&self, i: usize, _: Nanos) -> bool {
            !self.open[i]
        }
        fn admit(&mut self, i: usize, _: Nanos) -> Admission {
            if self.open[i] {
                Admission::Refused
            } else {
                Admission::Allowed { epoch: 0 }
            }
        }
    }

    fn seeded(seed: u64) -> impl FnMut(usize) -> usize {
        let mut rng = fastrand::Rng::with_seed(seed);
        move |n| rng.usize(..n)
    }

    #[test]
    fn the_less_loaded_of_two_wins_and_open_breakers_are_skipped() {
        let mut endpoints = Fixed {
            loads: vec![5, 0],
            open: vec![false, false],
            breakers: true,
        };
        let mut pick = seeded(1);
        for _ in 0..50 {
            assert_eq!(
                choose(&mut endpoints, None, 0, &mut pick).map(|c| c.0),
                Some(1)
            );
        }
        endpoints.open[1] = true;
        for _ in 0..50 {
            assert_eq!(
                choose(&mut endpoints, None, 0, &mut pick).map(|c| c.0),
                Some(0)
            );
        }
        endpoints.open[0] = true;
        assert_eq!(choose(&mut endpoints, None, 0, &mut pick), None);
    }

    #[test]
    fn the_failed_endpoint_is_avoided_unless_it_is_the_only_one_left() {
        let mut endpoints = Fixed {
            loads: vec![0, 9, 9],
            open: vec![false, false, true],
            breakers: true,
        };
        let mut pick = seeded(2);
        for _ in 0..50 {
            assert_eq!(
                choose(&mut endpoints, Some(0), 0, &mut pick).map(|c| c.0),
                Some(1)
            );
        }
        endpoints.open[1] = true;
        assert_eq!(
            choose(&mut endpoints, Some(0), 0, &mut pick).map(|c| c.0),
            Some(0)
        );
        endpoints.breakers = false;
        let mut single = Fixed {
            loads: vec![0],
            open: vec![false],
            breakers: false,
        };
        assert_eq!(
            choose(&mut single, Some(0), 0, &mut pick).map(|c| c.0),
            Some(0)
        );
    }
}
