//! How an upstream attempt ended, in the terms every policy decides by.
//!
//! The data plane turns its typed result (a response, or an error with a side) into an
//! [`AttemptEnd`] once per attempt; the simulator produces one from its upstream model. The
//! retry decision (`retry_on`), the breaker's failure classification (`failure_on`) and the
//! attempt counters all read this one value, so the live path and the simulation classify an
//! attempt by the same rules.

use std::time::Duration;

use rafael_config::{BreakerGenes, RetryCondition};

use crate::breaker::AttemptResult;

/// Attempt outcomes, the `outcome` label of `rafael_upstream_attempts_total`.
pub const ATTEMPT_OUTCOMES: [&str; 5] =
    ["success", "http_5xx", "connect_error", "timeout", "reset"];

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptEnd {
    /// The upstream answered with this status.
    Status(u16),
    /// No connection could be made.
    ConnectFailure,
    /// The connection was not made within `connect_timeout`.
    ConnectTimeout,
    /// The connection or stream failed after the request was sent.
    Reset,
    /// The attempt's own deadline (`per_try_timeout`) passed.
    AttemptTimeout,
    /// The route's deadline passed during the attempt.
    RouteTimeout,
}

/// Index of an attempt outcome in [`ATTEMPT_OUTCOMES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A response that is not a 5xx.
    Success = 0,
    /// A 5xx response.
    Http5xx = 1,
    /// No connection could be made.
    ConnectError = 2,
    /// A deadline passed.
    Timeout = 3,
    /// The connection failed after the request was sent.
    Reset = 4,
}

// === impl AttemptEnd ===

impl AttemptEnd {
    /// True when this ending meets `condition` (the vocabulary of `retry_on` and of the
    /// breaker's `failure_on`; `timeout` covers both the per-try and the route deadline).
    #[inline]
    pub fn meets(self, condition: &RetryCondition) -> bool {
        match (condition, self) {
            (RetryCondition::ServerError, Self::Status(status)) => (500..600).contains(&status),
            (RetryCondition::GatewayError, Self::Status(status)) => {
                matches!(status, 502..=504)
            }
            (RetryCondition::Status(code), Self::Status(status)) => status == *code,
            (RetryCondition::ConnectFailure, Self::ConnectFailure | Self::ConnectTimeout)
            | (RetryCondition::Reset, Self::Reset)
            | (RetryCondition::Timeout, Self::AttemptTimeout | Self::RouteTimeout) => true,
            _ => false,
        }
    }

    /// The counter this ending goes to.
    #[inline]
    pub fn outcome(self) -> AttemptOutcome {
        match self {
            Self::Status(status) if (500..600).contains(&status) => AttemptOutcome::Http5xx,
            Self::Status(_) => AttemptOutcome::Success,
            Self::ConnectFailure => AttemptOutcome::ConnectError,
            Self::ConnectTimeout | Self::AttemptTimeout | Self::RouteTimeout => {
                AttemptOutcome::Timeout
            }
            Self::Reset => AttemptOutcome::Reset,
        }
    }

    /// What the endpoint's breaker records for this ending after `latency`: a failure when it
    /// meets one of `failure_on`, otherwise a success (slow calls are the breaker's to judge).
    #[inline]
    pub fn breaker_result(self, genes: &BreakerGenes, latency: Duration) -> AttemptResult {
        if genes
            .failure_on
            .iter()
            .any(|condition| self.meets(condition))
        {
            AttemptResult::Failure(latency)
        } else {
            AttemptResult::Success(latency)
        }
    }
}

/// Whether an attempt cut off by the route's deadline says anything about its endpoint.
///
/// An attempt that ran for a fair share of the route timeout (half of it or more) before the
/// deadline cut it off is charged to its endpoint like any timeout; one that started late (a
/// retry with little time left) is not, so a slow first attempt elsewhere cannot open a healthy
/// endpoint's breaker. Every other ending is always charged.
#[inline]
pub fn charged(end: AttemptEnd, started_at: u64, deadline: Option<u64>, timeout: Duration) -> bool {
    match (end, deadline) {
        (AttemptEnd::RouteTimeout, Some(at)) => {
            at.saturating_sub(started_at) >= crate::nanos(timeout) / 2
        }
        _ => true,
    }
}

// === impl AttemptOutcome ===

impl AttemptOutcome {
    /// The outcome of an attempt that got a response with `status`.
    #[inline]
    pub fn of_status(status: u16) -> Self {
        AttemptEnd::Status(status).outcome()
    }

    /// Its `outcome` label.
    pub fn label(self) -> &'static str {
        ATTEMPT_OUTCOMES[self as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_meet_the_endings_their_names_say() {
        use RetryCondition::*;
        let cases = [
            (ServerError, AttemptEnd::Status(500), true),
            (ServerError, AttemptEnd::Status(599), true),
            (ServerError, AttemptEnd::Status(404), false),
            (GatewayError, AttemptEnd::Status(503), true),
            (GatewayError, AttemptEnd::Status(500), false),
            (Status(429), AttemptEnd::Status(429), true),
            (Status(429), AttemptEnd::Status(503), false),
            (ConnectFailure, AttemptEnd::ConnectTimeout, true),
            (ConnectFailure, AttemptEnd::Reset, false),
            (Reset, AttemptEnd::Reset, true),
            (Timeout, AttemptEnd::AttemptTimeout, true),
            (Timeout, AttemptEnd::RouteTimeout, true),
            (Timeout, AttemptEnd::Status(504), false),
        ];
        for (condition, end, meets) in cases {
            assert_eq!(end.meets(&condition), meets, "{condition:?} {end:?}");
        }
    }

    #[test]
    fn a_late_retry_cut_off_by_the_deadline_is_not_charged() {
        let timeout = Duration::from_secs(2);
        let deadline = Some(2_000_000_000);
        assert!(charged(AttemptEnd::RouteTimeout, 0, deadline, timeout));
        assert!(!charged(
            AttemptEnd::RouteTimeout,
            1_500_000_000,
            deadline,
            timeout
        ));
        assert!(charged(AttemptEnd::Reset, 1_500_000_000, deadline, timeout));
    }
}
