//! Exponential backoff with full jitter.
//!
//! Each retry waits a uniformly random time between zero and `min(backoff_max, backoff_base *
//! 2^(retry - 1))`. Full jitter spreads the retries of many clients that failed together, so
//! they do not come back as a synchronized wave; of the common schemes it completes contended
//! work with the least total load (AWS Architecture Blog, "Exponential Backoff And Jitter").
//! The randomness is an argument, so a simulation can replay it.

use std::time::Duration;

/// The wait before retry number `retry` (1 for the first retry), for `random` in `[0, 1)`.
#[inline]
pub fn full_jitter(base: Duration, max: Duration, retry: u32, random: f64) -> Duration {
    let doublings = retry.saturating_sub(1).min(31);
    let ceiling = base.saturating_mul(1 << doublings).min(max);
    ceiling.mul_f64(random.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_ceiling_doubles_up_to_the_cap() {
        let base = Duration::from_millis(25);
        let max = Duration::from_millis(250);
        let ceilings: Vec<u128> = (1..=6)
            .map(|retry| full_jitter(base, max, retry, 1.0).as_millis())
            .collect();
        assert_eq!(ceilings, [25, 50, 100, 200, 250, 250]);
        assert_eq!(full_jitter(base, max, 3, 0.5), Duration::from_millis(50));
    }

    proptest! {
        #[test]
        fn backoff_stays_within_zero_and_the_cap(
            base_ms in 1u64..60_000,
            extra_ms in 0u64..600_000,
            retry in 0u32..100,
            random in 0.0f64..1.0,
        ) {
            let base = Duration::from_millis(base_ms);
            let max = base + Duration::from_millis(extra_ms);
            let wait = full_jitter(base, max, retry, random);
            prop_assert!(wait <= max);
        }
    }
}
