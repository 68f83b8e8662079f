//! Fault rules of the Chaos Forge: what to inject, at which stage, into which share of the
//! requests, and the cap on faults in progress at once.
//!
//! Sans-IO like the other engines: whether a rule fires and how long a jittered delay lasts
//! are decided from randomness the caller passes in, so a simulation replays them exactly.

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use rafael_config::{FaultConfig, FaultStage};

use crate::{Nanos, nanos};

/// What a rule injects.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// Wait before going on: uniformly between `min` and `max`.
    Delay {
        /// Shortest delay.
        min: Duration,
        /// Longest delay.
        max: Duration,
    },
    /// Answer with `status` (and `body`) instead of going on.
    Abort {
        /// The status.
        status: u16,
        /// The body, when set.
        body: Option<String>,
    },
    /// Reset the connection (HTTP/1.1) or stream (HTTP/2).
    Reset,
    /// Let the response body through at this many bytes per second.
    Throttle {
        /// The rate.
        bytes_per_sec: u64,
    },
    /// Cut the response body after this many bytes.
    Truncate {
        /// Bytes let through.
        after: u64,
    },
    /// Never answer.
    Blackhole,
    /// Slow down with load, as a CPU-starved upstream does: `per_request` for each request in
    /// flight on the route, up to `max`.
    Brownout {
        /// Added latency per request in flight.
        per_request: Duration,
        /// Cap on the added latency.
        max: Duration,
    },
    /// Pause and restart, as an upstream in a GC or swap storm does: every `period`, attempts
    /// arriving in the first `stall` of it wait for the stall to end, and `reset_percent` of
    /// them are then reset (the restart).
    Stall {
        /// Length of one cycle.
        period: Duration,
        /// The stall at the start of each cycle.
        stall: Duration,
        /// Share of stalled attempts reset at the end of the stall, 0..=100.
        reset_percent: f64,
    },
}

/// One rule, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRule {
    /// What it injects.
    pub kind: FaultKind,
    /// Where.
    pub stage: FaultStage,
    /// Share of requests (downstream) or attempts (upstream) it fires on, 0..=100.
    pub percent: f64,
    /// When set, it fires only on requests carrying this header with the chaos secret.
    pub only_with_header: Option<String>,
}

/// What a rule that fired does to one request or attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Effect {
    /// Wait this long, then go on, or reset (a stall's restart).
    Delay {
        /// How long.
        wait: Duration,
        /// Reset instead of going on.
        then_reset: bool,
    },
    /// Answer with this status instead of going on.
    Abort {
        /// The status.
        status: u16,
    },
    /// Reset now.
    Reset,
    /// Go on, and slow or cut the response body (throttle, truncate).
    Body,
    /// Never answer: the attempt's or request's own deadline ends it.
    Blackhole,
}

/// Faults in progress, all rules together, against `[chaos].max_active_faults`.
#[derive(Debug, Default)]
pub struct ActiveFaults {
    count: AtomicU32,
}

// === impl FaultRule ===

impl FaultRule {
    /// The rule a validated `[[faults]]` entry describes (validation guarantees one kind).
    pub fn from_config(config: &FaultConfig) -> Option<Self> {
        let kind = if let Some(min) = config.delay {
            FaultKind::Delay {
                min: min.get(),
                max: config.delay_max.unwrap_or(min).get(),
            }
        } else if let Some(status) = config.abort {
            FaultKind::Abort {
                status,
                body: config.abort_body.clone(),
            }
        } else if config.reset {
            FaultKind::Reset
        } else if let Some(rate) = config.throttle {
            FaultKind::Throttle {
                bytes_per_sec: rate.bytes_per_sec.max(1),
            }
        } else if let Some(size) = config.truncate {
            FaultKind::Truncate { after: size.0 }
        } else if config.blackhole {
            FaultKind::Blackhole
        } else {
            return None;
        };
        Some(Self {
            kind,
            stage: config.stage,
            percent: config.percent,
            only_with_header: config.only_with_header.clone(),
        })
    }

    /// Whether the rule fires for one request or attempt at `now`. `targeted` says whether it
    /// carries the rule's header with the right secret (only asked for rules that have one);
    /// `random` is uniform in `[0, 1)`. A stall rule fires only inside a stall window.
    pub fn fires(&self, targeted: impl FnOnce(&str) -> bool, now: Nanos, random: f64) -> bool {
        if let Some(header) = &self.only_with_header {
            if !targeted(header) {
                return false;
            }
        }
        if self.stall_left(now).is_none() && matches!(self.kind, FaultKind::Stall { .. }) {
            return false;
        }
        random * 100.0 < self.percent
    }

    /// For a stall rule, how much of the current stall window is left at `now` (`None`
    /// outside a window, and for other kinds).
    pub fn stall_left(&self, now: Nanos) -> Option<Duration> {
        let FaultKind::Stall { period, stall, .. } = self.kind else {
            return None;
        };
        let phase = now % nanos(period).max(1);
        let stall = nanos(stall);
        (phase < stall).then(|| Duration::from_nanos(stall - phase))
    }

    /// For a brownout rule, the delay with `in_flight` requests in flight.
    pub fn brownout_delay(&self, in_flight: u32) -> Duration {
        match self.kind {
            FaultKind::Brownout { per_request, max } => {
                per_request.saturating_mul(in_flight).min(max)
            }
            _ => Duration::ZERO,
        }
    }

    /// The delay to inject, for `random` uniform in `[0, 1)` (zero for other kinds).
    pub fn delay(&self, random: f64) -> Duration {
        match self.kind {
            // Validation keeps max >= min; saturating all the same, so no rule can panic.
            FaultKind::Delay { min, max } => {
                min + max.saturating_sub(min).mul_f64(random.clamp(0.0, 1.0))
            }
            _ => Duration::ZERO,
        }
    }

    /// What the rule does when it fired at `now` on a request or attempt that met `in_flight`
    /// requests in flight. `random`, uniform in `[0, 1)`, jitters a delay or decides a
    /// stall's reset.
    pub fn effect(&self, in_flight: u32, now: Nanos, random: f64) -> Effect {
        match &self.kind {
            FaultKind::Delay { .. } => Effect::Delay {
                wait: self.delay(random),
                then_reset: false,
            },
            FaultKind::Brownout { .. } => Effect::Delay {
                wait: self.brownout_delay(in_flight),
                then_reset: false,
            },
            FaultKind::Stall { reset_percent, .. } => Effect::Delay {
                wait: self.stall_left(now).unwrap_or_default(),
                then_reset: random * 100.0 < *reset_percent,
            },
            FaultKind::Abort { status, .. } => Effect::Abort { status: *status },
            FaultKind::Reset => Effect::Reset,
            FaultKind::Throttle { .. } | FaultKind::Truncate { .. } => Effect::Body,
            FaultKind::Blackhole => Effect::Blackhole,
        }
    }

    /// The `kind` label of `rafael_faults_injected_total`.
    pub fn kind_label(&self) -> &'static str {
        match self.kind {
            FaultKind::Delay { .. } => "delay",
            FaultKind::Abort { .. } => "abort",
            FaultKind::Reset => "reset",
            FaultKind::Throttle { .. } => "throttle",
            FaultKind::Truncate { .. } => "truncate",
            FaultKind::Blackhole => "blackhole",
            FaultKind::Brownout { .. } => "brownout",
            FaultKind::Stall { .. } => "stall",
        }
    }
}

/// The index of the first of `rules` at `stage` that fires at `now`: one fault per request or
/// attempt, earlier rules first. `targeted(i)` says whether the request carries rule `i`'s
/// header with the secret; `random` draws one uniform number in `[0, 1)` per rule tried.
pub fn first_firing<'r>(
    rules: impl IntoIterator<Item = &'r FaultRule>,
    stage: FaultStage,
    targeted: impl Fn(usize) -> bool,
    now: Nanos,
    mut random: impl FnMut() -> f64,
) -> Option<usize> {
    rules
        .into_iter()
        .enumerate()
        .filter(|(_, rule)| rule.stage == stage)
        .find(|(i, rule)| rule.fires(|_| targeted(*i), now, random()))
        .map(|(i, _)| i)
}

/// The gRPC status an injected HTTP status stands for, as gRPC maps HTTP statuses
/// (grpc/doc/http-grpc-status-mapping.md): 400 INTERNAL, 401 UNAUTHENTICATED, 403
/// PERMISSION_DENIED, 404 UNIMPLEMENTED, 429/502/503/504 UNAVAILABLE, other UNKNOWN.
pub fn grpc_status(http_status: u16) -> u8 {
    match http_status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

// === impl ActiveFaults ===

impl ActiveFaults {
    /// Takes a slot when fewer than `limit` faults are in progress.
    pub fn try_begin(&self, limit: u32) -> bool {
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives a slot back.
    pub fn end(&self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }

    /// Faults in progress now.
    pub fn get(&self) -> u32 {
        self.count.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn rule(percent: f64, header: Option<&str>) -> FaultRule {
        FaultRule {
            kind: FaultKind::Delay {
                min: Duration::from_millis(100),
                max: Duration::from_millis(300),
            },
            stage: FaultStage::Upstream,
            percent,
            only_with_header: header.map(str::to_owned),
        }
    }

    #[test]
    fn targeted_rules_fire_only_with_the_secret() {
        let targeted = rule(100.0, Some("x-rafael-chaos"));
        assert!(!targeted.fires(|_| false, 0, 0.0));
        assert!(targeted.fires(|h| h == "x-rafael-chaos", 0, 0.0));
        assert!(rule(100.0, None).fires(|_| unreachable!(), 0, 0.99));
        assert!(!rule(0.0, None).fires(|_| true, 0, 0.0));
    }

    #[test]
    fn delays_spread_between_their_bounds() {
        let r = rule(100.0, None);
        assert_eq!(r.delay(0.0), Duration::from_millis(100));
        assert_eq!(r.delay(0.5), Duration::from_millis(200));
    }

    #[test]
    fn stalls_come_in_windows_and_brownouts_grow_with_load() {
        let stall = FaultRule {
            kind: FaultKind::Stall {
                period: Duration::from_secs(10),
                stall: Duration::from_secs(2),
                reset_percent: 50.0,
            },
            ..rule(100.0, None)
        };
        let second = 1_000_000_000;
        assert_eq!(
            stall.stall_left(20 * second + second / 2),
            Some(Duration::from_millis(1_500))
        );
        assert_eq!(stall.stall_left(25 * second), None);
        assert!(stall.fires(|_| true, 21 * second, 0.5));
        assert!(!stall.fires(|_| true, 23 * second, 0.5));
        let brownout = FaultRule {
            kind: FaultKind::Brownout {
                per_request: Duration::from_millis(5),
                max: Duration::from_millis(100),
            },
            ..rule(100.0, None)
        };
        assert_eq!(brownout.brownout_delay(4), Duration::from_millis(20));
        assert_eq!(brownout.brownout_delay(400), Duration::from_millis(100));
    }

    #[test]
    fn active_faults_stop_at_the_cap() {
        let active = ActiveFaults::default();
        assert!(active.try_begin(2));
        assert!(active.try_begin(2));
        assert!(!active.try_begin(2));
        active.end();
        assert!(active.try_begin(2));
        assert_eq!(active.get(), 2);
    }

    proptest! {
        /// Over many draws a rule fires on its percentage of them.
        #[test]
        fn a_rule_fires_on_its_share(percent in 0.0f64..=100.0, seed in any::<u64>()) {
            let r = rule(percent, None);
            let mut rng = fastrand::Rng::with_seed(seed);
            let fired = (0..10_000).filter(|_| r.fires(|_| true, 0, rng.f64())).count() as f64;
            let expected = percent * 100.0;
            prop_assert!((fired - expected).abs() <= 300.0, "{fired} fired, expected {expected}");
        }
    }
}
