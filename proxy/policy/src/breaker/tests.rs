use proptest::prelude::*;

use super::*;

const MS: Nanos = 1_000_000;
const FAST: Duration = Duration::from_millis(1);

fn params() -> BreakerParams {
    BreakerParams {
        consecutive_failures: 5,
        failure_rate: 0.5,
        window: 10_000 * MS,
        min_requests: 20,
        slow_call: 1_000 * MS,
        slow_call_rate: 1.0,
        open_for: 5_000 * MS,
        open_for_max: 60_000 * MS,
        half_open_probes: 3,
    }
}

fn attempt(breaker: &mut Breaker, now: Nanos, result: AttemptResult) -> Option<Transition> {
    let (admission, _) = breaker.admit(now, &params());
    assert_ne!(admission, Admission::Refused);
    breaker.record(now, &params(), admission, result)
}

fn is_probe(admission: Admission) -> bool {
    matches!(admission, Admission::Probe { .. })
}

#[test]
fn consecutive_failures_open_it_and_probes_close_it() {
    let mut breaker = Breaker::default();
    for i in 0..4 {
        assert_eq!(
            attempt(&mut breaker, i * MS, AttemptResult::Failure(FAST)),
            None
        );
    }
    let opened = attempt(&mut breaker, 4 * MS, AttemptResult::Failure(FAST));
    assert_eq!(opened.map(|t| t.to), Some(BreakerState::Open));
    assert_eq!(breaker.admit(5_000 * MS, &params()).0, Admission::Refused);

    let now = 4 * MS + 5_000 * MS;
    let (probe, transition) = breaker.admit(now, &params());
    assert!(is_probe(probe));
    assert_eq!(transition.map(|t| t.to), Some(BreakerState::HalfOpen));
    assert!(is_probe(breaker.admit(now, &params()).0));
    assert!(is_probe(breaker.admit(now, &params()).0));
    // Three probes out: a fourth attempt waits for their outcome.
    assert_eq!(breaker.admit(now, &params()).0, Admission::Refused);
    for _ in 0..2 {
        assert_eq!(
            breaker.record(now, &params(), probe, AttemptResult::Success(FAST)),
            None
        );
    }
    let closed = breaker.record(now, &params(), probe, AttemptResult::Success(FAST));
    assert_eq!(closed.map(|t| t.to), Some(BreakerState::Closed));
}

#[test]
fn the_failure_rate_counts_only_once_min_requests_are_in_the_window() {
    let mut breaker = Breaker::default();
    // Alternating: never four failures in a row, half of all attempts failing.
    for i in 0..19 {
        let result = if i % 2 == 0 {
            AttemptResult::Failure(FAST)
        } else {
            AttemptResult::Success(FAST)
        };
        assert_eq!(attempt(&mut breaker, i * MS, result), None, "attempt {i}");
    }
    let opened = attempt(&mut breaker, 19 * MS, AttemptResult::Failure(FAST));
    assert_eq!(opened.map(|t| t.to), Some(BreakerState::Open));
}

#[test]
fn slow_calls_open_it_at_their_own_rate() {
    let mut breaker = Breaker::default();
    let slow = AttemptResult::Success(Duration::from_secs(2));
    for i in 0..19 {
        assert_eq!(attempt(&mut breaker, i * MS, slow), None);
    }
    assert!(attempt(&mut breaker, 19 * MS, slow).is_some());
}

#[test]
fn old_buckets_leave_the_window() {
    let mut breaker = Breaker::default();
    for i in 0..15 {
        let result = if i % 4 == 0 {
            AttemptResult::Success(FAST)
        } else {
            AttemptResult::Failure(FAST)
        };
        assert_eq!(attempt(&mut breaker, i * MS, result), None);
    }
    // Eleven seconds later the fifteen attempts above are out of the ten-second window.
    let later = 11_000 * MS;
    for i in 0..19 {
        let result = if i % 2 == 0 {
            AttemptResult::Success(FAST)
        } else {
            AttemptResult::Failure(FAST)
        };
        assert_eq!(attempt(&mut breaker, later + i * MS, result), None);
    }
    assert_eq!(breaker.window_counts(later + 19 * MS), (19, 9, 0));
}

#[test]
fn repeated_trips_double_the_open_time_up_to_the_cap() {
    let mut breaker = Breaker::default();
    let mut now = 0;
    for _ in 0..5 {
        attempt(&mut breaker, now, AttemptResult::Failure(FAST));
    }
    let mut open_times = Vec::new();
    for _ in 0..6 {
        let opened_at = now;
        // Find when it lets a probe through, in 100 ms steps.
        let probe = loop {
            let (admission, _) = breaker.admit(now, &params());
            if is_probe(admission) {
                break admission;
            }
            now += 100 * MS;
        };
        open_times.push((now - opened_at) / MS);
        breaker.record(now, &params(), probe, AttemptResult::Failure(FAST));
    }
    assert_eq!(open_times, [5_000, 10_000, 20_000, 40_000, 60_000, 60_000]);
}

#[test]
fn an_abandoned_probe_gives_its_slot_back() {
    let mut breaker = Breaker::default();
    for i in 0..5 {
        attempt(&mut breaker, i, AttemptResult::Failure(FAST));
    }
    let now = 6_000 * MS;
    let probes: Vec<Admission> = (0..3).map(|_| breaker.admit(now, &params()).0).collect();
    assert!(probes.iter().copied().all(is_probe));
    assert_eq!(breaker.admit(now, &params()).0, Admission::Refused);
    breaker.record(now, &params(), probes[0], AttemptResult::Cancelled);
    assert!(is_probe(breaker.admit(now, &params()).0));
}

#[test]
fn late_probes_do_not_count_in_a_later_half_open_period() {
    let mut breaker = Breaker::default();
    for i in 0..5 {
        attempt(&mut breaker, i, AttemptResult::Failure(FAST));
    }
    let now = 6_000 * MS;
    let probes: Vec<Admission> = (0..3).map(|_| breaker.admit(now, &params()).0).collect();
    // One fails: open again (10 s on the second trip).
    let reopened = breaker.record(now, &params(), probes[0], AttemptResult::Failure(FAST));
    assert_eq!(reopened.map(|t| t.to), Some(BreakerState::Open));
    let later = now + 10_000 * MS;
    let fresh = breaker.admit(later, &params()).0;
    assert!(is_probe(fresh));
    // The two probes of the earlier period finish now: they neither close the breaker nor
    // free slots of this period.
    for late in &probes[1..] {
        assert_eq!(
            breaker.record(later, &params(), *late, AttemptResult::Success(FAST)),
            None
        );
        breaker.record(later, &params(), *late, AttemptResult::Cancelled);
    }
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    assert!(is_probe(breaker.admit(later, &params()).0));
    assert!(is_probe(breaker.admit(later, &params()).0));
    assert_eq!(breaker.admit(later, &params()).0, Admission::Refused);
}

#[derive(Debug, Clone)]
enum Step {
    Attempt {
        gap: u64,
        fail: bool,
        slow: bool,
        cancel: bool,
    },
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (
            0u64..2_000,
            any::<bool>(),
            any::<bool>(),
            prop::bool::weighted(0.05),
        )
            .prop_map(|(gap, fail, slow, cancel)| Step::Attempt {
                gap: gap * MS,
                fail,
                slow,
                cancel,
            }),
        1..500,
    )
}

proptest! {
    /// Every transition is closed -> open, open -> half-open, or half-open -> closed | open, and
    /// an open breaker admits nothing.
    #[test]
    fn transitions_follow_the_state_machine(
        steps in steps(),
        consecutive in 1u32..10,
        rate in 0.1f64..1.0,
        probes in 1u32..5,
    ) {
        let params = BreakerParams {
            consecutive_failures: consecutive,
            failure_rate: rate,
            min_requests: 5,
            half_open_probes: probes,
            ..params()
        };
        let mut breaker = Breaker::default();
        let mut now = 0;
        let mut pending = Vec::new();
        let check = |t: Option<Transition>| -> Result<(), TestCaseError> {
            if let Some(t) = t {
                let allowed = matches!(
                    (t.from, t.to),
                    (BreakerState::Closed, BreakerState::Open)
                        | (BreakerState::Open, BreakerState::HalfOpen)
                        | (BreakerState::HalfOpen, BreakerState::Closed | BreakerState::Open)
                );
                prop_assert!(allowed, "illegal transition {t:?}");
            }
            Ok(())
        };
        for Step::Attempt { gap, fail, slow, cancel } in steps {
            now += gap;
            let state_before = breaker.state();
            let (admission, transition) = breaker.admit(now, &params);
            check(transition)?;
            if state_before == BreakerState::Open && transition.is_none() {
                prop_assert_eq!(admission, Admission::Refused);
            }
            if admission == Admission::Refused {
                continue;
            }
            let latency = if slow { Duration::from_secs(2) } else { FAST };
            let result = match (cancel, fail) {
                (true, _) => AttemptResult::Cancelled,
                (false, true) => AttemptResult::Failure(latency),
                (false, false) => AttemptResult::Success(latency),
            };
            // Outcomes arrive out of order: some now, some after later admissions.
            pending.push((admission, result));
            if pending.len() > 2 || gap % 3 == 0 {
                let (admission, result) = pending.remove(0);
                check(breaker.record(now, &params, admission, result))?;
            }
        }
    }
}
