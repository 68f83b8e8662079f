//! The retry decision: after an attempt, whether to make another, and after how long.
//!
//! An attempt is retried when its ending is in the route's `retry_on`, attempts remain, and
//! none of the [`SkipReason`]s holds, checked in this order:
//! - `non_idempotent`: the method is not idempotent (RFC 9110 §9.2.2) and the route does not
//!   set `retry_non_idempotent`;
//! - `body_too_large`: the request body was larger than `max_replay_bytes`, so it was streamed
//!   once and cannot be sent again;
//! - `retry_after`: the upstream's `Retry-After` asks for a longer wait than `backoff_max`
//!   (retrying sooner than the upstream asked would only earn the same answer);
//! - `deadline`: the backoff would end past the route's deadline (the answer at hand is
//!   relayed rather than a 504 later);
//! - `budget`: the route's retry budget is spent.
//!
//! The wait is full-jitter backoff, or the upstream's `Retry-After` when that is longer. A
//! route timeout is never retried: another attempt would have no time at all.

use std::time::Duration;

use rafael_config::RetryGenes;

use crate::{Nanos, backoff::full_jitter, nanos, outcome::AttemptEnd};

/// Why a retry was not made: the `reason` label of `rafael_retries_skipped_total`.
pub const SKIP_REASONS: [&str; 5] = [
    "budget",
    "body_too_large",
    "non_idempotent",
    "retry_after",
    "deadline",
];

/// Index of a reason in [`SKIP_REASONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The route's retry budget was spent.
    Budget = 0,
    /// The request body was larger than `max_replay_bytes`, so it could not be sent again.
    BodyTooLarge = 1,
    /// The method is not idempotent and the route does not opt in.
    NonIdempotent = 2,
    /// The upstream's `Retry-After` asked for a longer wait than `backoff_max`.
    RetryAfter = 3,
    /// The backoff would end past the route's deadline.
    Deadline = 4,
}

/// What the request knows after attempt number `attempt` ended.
#[derive(Debug, Clone, Copy)]
pub struct AfterAttempt {
    /// How the attempt ended; `None` when it ended without an outcome a policy can read
    /// (the client's body failed, say): never retried.
    pub end: Option<AttemptEnd>,
    /// The attempt's number, 1 for the first.
    pub attempt: u32,
    /// The method may be repeated (RFC 9110 §9.2.2).
    pub idempotent: bool,
    /// The request body can be sent again (it had none, or it fit the replay buffer).
    pub replayable: bool,
    /// The wait the upstream's `Retry-After` asked for.
    pub retry_after: Option<Duration>,
    /// The route's deadline.
    pub deadline: Option<Nanos>,
    /// Now.
    pub now: Nanos,
    /// Uniform in `[0, 1)`: the backoff's jitter.
    pub random: f64,
}

/// The decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Relay this attempt's answer: its ending is not one the route retries, or attempts ran
    /// out.
    Relay,
    /// Relay this attempt's answer; a retry was due but not made, for this reason.
    Skip(SkipReason),
    /// Wait this long, then attempt again.
    After(Duration),
}

/// True when an attempt that ended as `end` is one the route retries and attempts remain: the
/// first check of [`decide`], which a caller may make alone to skip gathering the rest of
/// [`AfterAttempt`] for the common answer that succeeded.
#[inline]
pub fn qualifies(genes: &RetryGenes, end: Option<AttemptEnd>, attempt: u32) -> bool {
    end.is_some_and(|end| {
        end != AttemptEnd::RouteTimeout && genes.retry_on.iter().any(|c| end.meets(c))
    }) && attempt < genes.max_attempts
}

/// Decides whether to retry. `withdraw(now)` takes a retry from the route's budget and is
/// called only when every other check passed, so a retry that would not be made never spends
/// the budget.
pub fn decide(
    genes: &RetryGenes,
    after: &AfterAttempt,
    withdraw: impl FnOnce(Nanos) -> bool,
) -> Retry {
    if !qualifies(genes, after.end, after.attempt) {
        return Retry::Relay;
    }
    if !after.idempotent && !genes.retry_non_idempotent {
        return Retry::Skip(SkipReason::NonIdempotent);
    }
    if !after.replayable {
        return Retry::Skip(SkipReason::BodyTooLarge);
    }
    if after
        .retry_after
        .is_some_and(|wait| wait > genes.backoff_max.get())
    {
        return Retry::Skip(SkipReason::RetryAfter);
    }
    let jitter = full_jitter(
        genes.backoff_base.get(),
        genes.backoff_max.get(),
        after.attempt,
        after.random,
    );
    let wait = jitter.max(after.retry_after.unwrap_or_default());
    if after
        .deadline
        .is_some_and(|deadline| after.now.saturating_add(nanos(wait)) >= deadline)
    {
        return Retry::Skip(SkipReason::Deadline);
    }
    if !withdraw(after.now) {
        return Retry::Skip(SkipReason::Budget);
    }
    Retry::After(wait)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rafael_config::{HumanDuration, RetryCondition};

    use super::*;

    fn genes() -> RetryGenes {
        RetryGenes {
            max_attempts: 3,
            backoff_base: HumanDuration::from_millis(25),
            backoff_max: HumanDuration::from_millis(250),
            retry_on: vec![RetryCondition::ServerError, RetryCondition::Reset],
            ..RetryGenes::default()
        }
    }

    fn after(end: AttemptEnd) -> AfterAttempt {
        AfterAttempt {
            end: Some(end),
            attempt: 1,
            idempotent: true,
            replayable: true,
            retry_after: None,
            deadline: None,
            now: 1_000_000_000,
            random: 0.5,
        }
    }

    #[test]
    fn each_check_refuses_in_its_turn_and_only_the_last_spends_the_budget() {
        let genes = genes();
        let never = |_| panic!("the budget must not be asked");
        assert_eq!(
            decide(&genes, &after(AttemptEnd::Status(200)), never),
            Retry::Relay
        );
        assert_eq!(
            decide(&genes, &after(AttemptEnd::RouteTimeout), never),
            Retry::Relay
        );
        let last = AfterAttempt {
            attempt: 3,
            ..after(AttemptEnd::Reset)
        };
        assert_eq!(decide(&genes, &last, never), Retry::Relay);
        let post = AfterAttempt {
            idempotent: false,
            ..after(AttemptEnd::Reset)
        };
        assert_eq!(
            decide(&genes, &post, never),
            Retry::Skip(SkipReason::NonIdempotent)
        );
        let large = AfterAttempt {
            replayable: false,
            ..after(AttemptEnd::Reset)
        };
        assert_eq!(
            decide(&genes, &large, never),
            Retry::Skip(SkipReason::BodyTooLarge)
        );
        let asked = AfterAttempt {
            retry_after: Some(Duration::from_secs(1)),
            ..after(AttemptEnd::Status(503))
        };
        assert_eq!(
            decide(&genes, &asked, never),
            Retry::Skip(SkipReason::RetryAfter)
        );
        let late = AfterAttempt {
            deadline: Some(1_010_000_000),
            ..after(AttemptEnd::Reset)
        };
        assert_eq!(
            decide(&genes, &late, never),
            Retry::Skip(SkipReason::Deadline)
        );
        assert_eq!(
            decide(&genes, &after(AttemptEnd::Reset), |_| false),
            Retry::Skip(SkipReason::Budget)
        );
        assert_eq!(
            decide(&genes, &after(AttemptEnd::Reset), |_| true),
            Retry::After(Duration::from_micros(12_500))
        );
    }

    proptest! {
        /// The wait never ends past the deadline, is at least what the upstream asked, and is
        /// at most `backoff_max` or the upstream's ask.
        #[test]
        fn the_wait_respects_the_deadline_and_retry_after(
            attempt in 1u32..3,
            random in 0.0f64..1.0,
            asked_ms in proptest::option::of(0u64..400),
            deadline_ms in proptest::option::of(1u64..600),
        ) {
            let genes = genes();
            let now = 5_000_000_000;
            let after = AfterAttempt {
                attempt,
                random,
                retry_after: asked_ms.map(Duration::from_millis),
                deadline: deadline_ms.map(|ms| now + ms * 1_000_000),
                now,
                ..after(AttemptEnd::Status(502))
            };
            if let Retry::After(wait) = decide(&genes, &after, |_| true) {
                let asked = after.retry_after.unwrap_or_default();
                prop_assert!(wait >= asked);
                prop_assert!(wait <= genes.backoff_max.get().max(asked));
                if let Some(deadline) = after.deadline {
                    prop_assert!(now + nanos(wait) < deadline);
                }
            }
        }
    }
}
