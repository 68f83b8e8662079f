//! The data plane's clock: nanoseconds since a fixed origin, read from tokio's clock so tests
//! with paused time drive the policy engines, the telemetry and the deadlines alike.

use std::{sync::OnceLock, time::Duration};

use crate::policy::Nanos;

/// The data plane's clock for the policy engines: nanoseconds since a fixed origin, read from
/// tokio's clock so tests with paused time drive the engines too.
pub fn now() -> Nanos {
    let elapsed = tokio::time::Instant::now()
        .into_std()
        .saturating_duration_since(origin());
    crate::policy::nanos(elapsed)
}

/// The tokio instant of `at` (a [`now`] reading): deadlines computed from a time already read
/// cost no further clock read.
pub fn instant(at: Nanos) -> tokio::time::Instant {
    tokio::time::Instant::from_std(origin() + Duration::from_nanos(at))
}

/// The [`now`] reading of a std instant (the origin, if it is earlier): for deadlines given as
/// instants, such as hyper's timers.
pub fn from_std(at: std::time::Instant) -> Nanos {
    crate::policy::nanos(at.saturating_duration_since(origin()))
}

fn origin() -> std::time::Instant {
    static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
    *ORIGIN.get_or_init(|| {
        // An hour back, so a paused tokio clock that started a moment before this first call
        // still reads after the origin.
        let now = std::time::Instant::now();
        now.checked_sub(Duration::from_secs(3600)).unwrap_or(now)
    })
}
