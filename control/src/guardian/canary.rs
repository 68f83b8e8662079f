//! The canary judge (DESIGN §7.6): the candidate serves `[guardian].canary.percent` of the
//! route's requests, with engine state of its own, beside the stable genome serving the rest;
//! the two cohorts are compared live.
//!
//! - **Errors**: the share of requests not answered with success, by a one-sided
//!   two-proportion z-test of "the canary's error share exceeds the stable cohort's by more
//!   than `[guardian].watch.max_goodput_drop`" (the same tolerance the watch gives a drop).
//! - **Latency, as experienced**: a one-sided Mann-Whitney U test of "a canary request fares
//!   worse than a stable one", where an error ranks behind every answer (a retry that turns a
//!   fast 503 into a success 30 ms later helped that user; a plain latency test would fail
//!   the very canary that fixed the errors). It is computed exactly over the telemetry's
//!   log-linear latency buckets (ties within a bucket at mid-rank, with the tie-corrected
//!   variance), and an effect size must also hold: the probability that a canary request
//!   fares worse than a stable one (ties counted half) above [`MIN_SUPERIORITY`], so
//!   thousands of requests do not fail a canary over a microsecond. The telemetry's
//!   histograms hold every answer without its outcome, so a cohort's errors are taken to be
//!   its fastest answers (true of 5xx answers, which come back quickly; a timeout is slow,
//!   and then the approximation reads its cohort's successes slower than they were: it errs
//!   against the cohort with more timeouts).
//!
//! Both tests run at 99% ([`CONFIDENCE`]); neither is judged on fewer than
//! [`MIN_JUDGED`] canary requests. A failure at any checkpoint fails the canary at once (the
//! candidate never reaches 100%); at the end of `duration` with at least `min_requests`
//! canary requests and no failure it passes and is promoted; with fewer it is `inconclusive`
//! and waits for a person.

use rafael_proxy::telemetry::{Outcome, Window};
use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, Normal};

use crate::evolution::model::check::quantile_ms;

/// Confidence of both tests.
pub const CONFIDENCE: f64 = 0.99;
/// Canary requests below which neither test is judged (the normal approximations need them).
pub const MIN_JUDGED: u64 = 30;
/// The probability that a canary request is slower than a stable one, above which a
/// significant latency difference fails the canary (0.56: Vargha and Delaney's "small").
pub const MIN_SUPERIORITY: f64 = 0.56;

/// One cohort's requests in the canary's windows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Cohort {
    /// Requests answered.
    pub answered: u64,
    /// Those not answered with success (5xx, timeouts, refusals by rafael).
    pub errors: u64,
    /// Their latency histogram (the telemetry's buckets).
    pub latency: Vec<u64>,
}

/// A cohort's figures, as the proposal's `canary` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CohortFigures {
    /// Requests answered.
    pub requests: u64,
    /// Share not answered with success.
    pub error_share: f64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
}

/// One test's result.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TestResult {
    /// The statistic (standard normal under "no worse").
    pub z: f64,
    /// One-sided p-value.
    pub p_value: f64,
    /// The effect: the error shares' difference, or the probability a canary request is slower.
    pub effect: f64,
    /// Whether it says the canary is worse.
    pub worse: bool,
}

/// What a checkpoint found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    /// The stable cohort.
    pub stable: CohortFigures,
    /// The canary cohort.
    pub canary: CohortFigures,
    /// The error test (`None` below [`MIN_JUDGED`]).
    pub errors: Option<TestResult>,
    /// The latency test (`None` below [`MIN_JUDGED`]).
    pub latency: Option<TestResult>,
}

// === impl Cohort ===

impl Cohort {
    /// The requests answered in `windows`.
    pub fn of(windows: &[Window]) -> Self {
        let mut cohort = Self::default();
        for window in windows {
            let answered = window.responses();
            cohort.answered += answered;
            cohort.errors += answered.saturating_sub(window.outcome(Outcome::Success));
            if cohort.latency.len() < window.latency.len() {
                cohort.latency.resize(window.latency.len(), 0);
            }
            for (sum, count) in cohort.latency.iter_mut().zip(window.latency.iter()) {
                *sum += count;
            }
        }
        cohort
    }

    /// Its figures.
    pub fn figures(&self) -> CohortFigures {
        CohortFigures {
            requests: self.answered,
            error_share: share(self.errors, self.answered),
            p50_ms: quantile_ms(&self.latency, 0.5),
            p99_ms: quantile_ms(&self.latency, 0.99),
        }
    }
}

/// Compares the cohorts; `tolerance` is the error share's allowed excess.
pub fn compare(stable: &Cohort, canary: &Cohort, tolerance: f64) -> Comparison {
    let judged = canary.answered >= MIN_JUDGED && stable.answered >= MIN_JUDGED;
    Comparison {
        stable: stable.figures(),
        canary: canary.figures(),
        errors: judged.then(|| error_test(stable, canary, tolerance)),
        latency: judged.then(|| latency_test(stable, canary)),
    }
}

impl Comparison {
    /// Whether either test says the canary is worse.
    pub fn worse(&self) -> bool {
        self.errors.is_some_and(|t| t.worse) || self.latency.is_some_and(|t| t.worse)
    }
}

fn critical() -> f64 {
    Normal::standard().inverse_cdf(CONFIDENCE)
}

fn upper_tail(z: f64) -> f64 {
    1.0 - Normal::standard().cdf(z)
}

/// "The canary's error share exceeds the stable one's by more than `tolerance`": one-sided,
/// unpooled variances.
pub fn error_test(stable: &Cohort, canary: &Cohort, tolerance: f64) -> TestResult {
    let (p1, n1) = (
        share(stable.errors, stable.answered),
        stable.answered.max(1) as f64,
    );
    let (p2, n2) = (
        share(canary.errors, canary.answered),
        canary.answered.max(1) as f64,
    );
    let excess = p2 - p1 - tolerance;
    let se = (p1 * (1.0 - p1) / n1 + p2 * (1.0 - p2) / n2).sqrt();
    let z = finite_z(excess, se);
    TestResult {
        z,
        p_value: upper_tail(z),
        effect: p2 - p1,
        worse: z > critical(),
    }
}

/// Mann-Whitney U of "canary requests fare worse", over histograms with the same buckets,
/// each cohort's errors ranked behind every answer (see the module's doc).
pub fn latency_test(stable: &Cohort, canary: &Cohort) -> TestResult {
    let (stable, canary) = (&experienced(stable), &experienced(canary));
    let buckets = stable.len().max(canary.len());
    let at = |h: &[u64], i: usize| h.get(i).copied().unwrap_or(0) as f64;
    let (n1, n2) = (
        stable.iter().sum::<u64>() as f64,
        canary.iter().sum::<u64>() as f64,
    );
    let n = n1 + n2;
    if n1 == 0.0 || n2 == 0.0 {
        return TestResult {
            z: 0.0,
            p_value: 1.0,
            effect: 0.5,
            worse: false,
        };
    }
    // U for the canary: each canary request scores the stable requests faster than it, and
    // half of those in its own bucket.
    let (mut u, mut below, mut ties) = (0.0, 0.0, 0.0);
    for i in 0..buckets {
        let (s, c) = (at(stable, i), at(canary, i));
        u += c * (below + s / 2.0);
        below += s;
        let t = s + c;
        ties += t * t * t - t;
    }
    let mean = n1 * n2 / 2.0;
    let variance = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    let z = if variance > 0.0 {
        (u - mean) / variance.sqrt()
    } else {
        0.0
    };
    let superiority = u / (n1 * n2);
    TestResult {
        z,
        p_value: upper_tail(z),
        effect: superiority,
        worse: z > critical() && superiority > MIN_SUPERIORITY,
    }
}

/// `cohort`'s latency histogram with its errors moved from its fastest answers to a bucket
/// behind every other (one past the histogram's last).
fn experienced(cohort: &Cohort) -> Vec<u64> {
    let mut histogram = cohort.latency.clone();
    let total: u64 = histogram.iter().sum();
    let mut errors = cohort.errors.min(total);
    let moved = errors;
    for count in histogram.iter_mut() {
        let take = errors.min(*count);
        *count -= take;
        errors -= take;
        if errors == 0 {
            break;
        }
    }
    histogram.push(moved);
    histogram
}

/// Largest |z| a test reports: beyond any critical value, and finite, so the result survives
/// JSON (which has no infinity: an infinite z was stored as `null`, and the record holding it
/// no longer parsed).
pub const Z_LIMIT: f64 = 1.0e6;

/// `excess / se`, with no spread at all read as certainty either way, within [`Z_LIMIT`].
pub fn finite_z(excess: f64, se: f64) -> f64 {
    let z = if se > 0.0 {
        excess / se
    } else if excess > 0.0 {
        Z_LIMIT
    } else {
        -Z_LIMIT
    };
    z.clamp(-Z_LIMIT, Z_LIMIT)
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cohort(answered: u64, errors: u64, latency: &[u64]) -> Cohort {
        Cohort {
            answered,
            errors,
            latency: latency.to_vec(),
        }
    }

    #[test]
    fn mann_whitney_u_matches_a_worked_example() {
        // Stable {1, 2, 3}, canary {2, 3, 4, 5} in buckets 1..=5: pairs where the canary is
        // larger: 2>1; 3>1,2; 4>1,2,3; 5>1,2,3; ties 2=2, 3=3 count half: U = 1+2+3+3 + 1 = 10.
        let stable = cohort(3, 0, &[0, 1, 1, 1, 0, 0]);
        let canary = cohort(4, 0, &[0, 0, 1, 1, 1, 1]);
        let test = latency_test(&stable, &canary);
        assert!((test.effect - 10.0 / 12.0).abs() < 1e-12, "{test:?}");
        // mean 6, tie-corrected variance 3*4/12 * (8 - (6+6)/(7*6)) = 7.714...
        let expected = (10.0 - 6.0) / (12.0_f64 / 12.0 * (8.0 - 12.0 / 42.0)).sqrt();
        assert!((test.z - expected).abs() < 1e-9, "{test:?} vs {expected}");
        // Too few to be significant at 99%.
        assert!(!test.worse);
    }

    #[test]
    fn the_latency_test_needs_significance_and_a_real_effect() {
        // Same distribution: z near 0.
        let same = cohort(1000, 0, &[0, 500, 500]);
        assert!(!latency_test(&same, &same).worse);
        assert!(latency_test(&same, &same).z.abs() < 1e-9);
        // The canary a bucket slower for most requests: worse.
        let slower = cohort(1000, 0, &[0, 100, 900]);
        let test = latency_test(&same, &slower);
        assert!(test.worse, "{test:?}");
        // Faster: not worse (one-sided).
        let faster = cohort(1000, 0, &[0, 900, 100]);
        assert!(!latency_test(&same, &faster).worse);
        // A tiny shift over a huge sample is significant but too small to fail it.
        let big = cohort(1_000_000, 0, &[0, 500_000, 500_000]);
        let nudged = cohort(1_000_000, 0, &[0, 490_000, 510_000]);
        let test = latency_test(&big, &nudged);
        assert!(test.z > 5.0 && !test.worse, "{test:?}");
    }

    #[test]
    fn an_error_fares_worse_than_a_slower_success() {
        // Stable: 20% fast errors, the rest at bucket 1. Canary: the errors retried into
        // successes at bucket 2 (slower), none left. As experienced, the canary is better.
        let stable = cohort(1000, 200, &[0, 1000, 0]);
        let canary = cohort(1000, 0, &[0, 800, 200]);
        let test = latency_test(&stable, &canary);
        assert!(!test.worse && test.z < 0.0, "{test:?}");
        // Slower with the same errors: worse.
        let slower = cohort(1000, 200, &[0, 200, 800]);
        assert!(latency_test(&stable, &slower).worse);
    }

    #[test]
    fn the_error_test_fails_a_canary_clearly_worse_beyond_the_tolerance() {
        let stable = cohort(2000, 10, &[]);
        // Retries off on a 20% error upstream.
        let worse = cohort(200, 40, &[]);
        assert!(error_test(&stable, &worse, 0.02).worse);
        // Within the tolerance: 1.5 points more.
        let close = cohort(20_000, 400, &[]);
        assert!(!error_test(&stable, &close, 0.02).worse);
        // Better: never worse.
        let better = cohort(200, 0, &[]);
        assert!(!error_test(&stable, &better, 0.02).worse);
    }

    #[test]
    fn a_result_without_any_error_survives_json() {
        // Both cohorts perfect: no spread, and the record must still parse afterwards.
        let perfect = cohort(500, 0, &[0, 500]);
        let test = error_test(&perfect, &perfect, 0.02);
        assert!(test.z.is_finite() && !test.worse, "{test:?}");
        let back: TestResult = serde_json::from_value(serde_json::to_value(test).unwrap()).unwrap();
        assert_eq!(back, test);
    }

    #[test]
    fn nothing_is_judged_on_a_handful_of_canary_requests() {
        let stable = cohort(2000, 10, &[0, 2000]);
        let few = cohort(10, 10, &[0, 0, 10]);
        let comparison = compare(&stable, &few, 0.02);
        assert!(comparison.errors.is_none() && comparison.latency.is_none());
        assert!(!comparison.worse());
    }
}
