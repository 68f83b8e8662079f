//! Fitting a [`Model`] from a copy of a route's telemetry (DESIGN §7.1, §8).
//!
//! [`fit`] is a pure function of the copy (no clock, no I/O), so it is tested on synthetic
//! telemetry drawn from a known process; [`fit_route`] copies a live route's telemetry and
//! calls it. The method, per endpoint:
//!
//! - **Load buckets**: successful attempts by the endpoint's in-flight count at their start
//!   (`k`, itself included), exact up to 8 and four buckets per doubling above.
//! - **Capacity**: a pool of N workers with service time S answers in about S while `k <= N`
//!   and in about `S·k/N` beyond, because each attempt ahead in the queue adds `S/N`. So the
//!   *slope* of latency over `k` in the saturated region is `1 / throughput`; it is fitted by
//!   least squares with a free intercept, and `N = mean service time × throughput`. An
//!   endpoint counts as seen saturated only when a load bucket above the lowest one has a
//!   median at least [`SATURATED_FACTOR`] times the lowest one's, at least
//!   [`MIN_SATURATED_SAMPLES`] successes lie at or above that load, and the fitted slope is
//!   positive, precise (standard error under [`MAX_SLOPE_ERROR`] of it) and adds at least one
//!   service time across the loads seen. Otherwise `capacity` is `None`: no knee is invented
//!   from flat data.
//! - **Abandoned work**: rafael's in-flight count drops an attempt when it times out, while an
//!   HTTP/1.1 server usually keeps working on it, so after timeouts the server is busier than
//!   `k` says and latency at a given `k` reads high. Seconds near a timed-out attempt are left
//!   out of the capacity fit when enough saturated seconds remain without them; when not, the
//!   fit uses them and says so (`timeouts_in_fit`). The slope, unlike `k·S/latency`, is not
//!   moved by a steady backlog of abandoned work, only by one that changes with `k`.
//! - **Service time**: quantiles of successful attempts at `k <= N` (every success when the
//!   endpoint was never saturated), outside brownouts and the seconds beside them (partly
//!   slow); fault-injected attempts never count. A brownout period's own distribution, from its
//!   hundred or so successes, is the log-normal through their median and quartiles.
//! - **Failures** (5xx, connect errors, resets; a timeout is the genome's deadline meeting the
//!   upstream's latency, which the simulator derives, so it is reported apart): the overall
//!   rate, and a two-state process. A second is *degraded* when its failure share is both
//!   far above the healthy rate (an exact binomial tail as thin as a normal one at
//!   [`BURST_Z`]) and at least double it; the healthy rate is re-estimated without degraded
//!   seconds until it settles. A steady 5% rate almost never passes (about 1 second in 10,000
//!   at 100 samples a second).
//! - **Regimes** (route-wide, and a brownout of one endpoint among others as its own): brownout
//!   seconds, where successes took at least
//!   [`BROWNOUT_FACTOR`] times their load bucket's median (so queueing under load is not
//!   mistaken for a brownout), and outage seconds, degraded as above over all endpoints.
//! - **Arrivals**: from the per-second windows, which count every request over the whole
//!   horizon; the sampled arrival times are thinned 1 in 8 above 100 requests a second and
//!   hold only the last 4,096, so they are not used.
//!
//! Samples are thinned above 100 requests a second, so each is weighted by its second's
//! attempts over that second's samples; and the ring holds 4,096 attempts, so the endpoint
//! figures cover only its newest part of the window (`sampled_secs`).

use std::collections::BTreeMap;

use rafael_proxy::{
    SnapshotHandle,
    metrics::ATTEMPT_OUTCOMES,
    policy::Nanos,
    telemetry::{AttemptSample, WINDOW_SECONDS, Window},
};

use super::{
    Arrivals, Capacity, EndpointModel, Failure, LoadBucket, Model, Period, Regime, RegimeKind,
    ServiceTime,
};

#[cfg(test)]
mod tests;

const SECOND: Nanos = 1_000_000_000;
/// A bucket's median this many times the lowest bucket's marks the knee: jitter alone does not
/// move a median of 10 or more samples by half.
pub const SATURATED_FACTOR: f64 = 1.5;
/// Successes at or above the knee needed to fit a slope.
pub const MIN_SATURATED_SAMPLES: usize = 50;
/// Largest standard error of the slope, relative to it, for a capacity to be reported.
pub const MAX_SLOPE_ERROR: f64 = 0.2;
/// One-sided z of a degraded second's failures against the healthy rate.
pub const BURST_Z: f64 = 4.0;
/// One-sided z of the failures of a second next to degraded ones, which joins them: the
/// weaker of the two thresholds of the degraded test's hysteresis.
pub const EDGE_Z: f64 = 2.0;
/// Successes this many times slower than their load bucket's median make a brownout second.
pub const BROWNOUT_FACTOR: f64 = 2.0;
/// How far what an endpoint answered a second may exceed a fitted capacity's throughput
/// (the slope's own error is up to [`MAX_SLOPE_ERROR`], and sampled counts are noisy).
const SERVED_TOLERANCE: f64 = 1.3;
/// Samples a bucket needs before its median is trusted as a reference.
const MIN_BUCKET_SAMPLES: u64 = 10;
/// Samples a second needs before it can be called degraded or a brownout.
const MIN_SECOND_SAMPLES: u64 = 5;
/// Seconds after a timed-out attempt ends in which the server may still work on it.
const ABANDONED_SECS: u64 = 2;
/// How far back [`fit_route`] waits for attempts still running on a route with no timeout.
const UNSETTLED_SECS: u64 = 30;

/// A copy of one route's telemetry: everything [`fit`] reads.
#[derive(Debug, Clone, Default)]
pub struct Telemetry {
    /// The route's name.
    pub route: String,
    /// When the copy was taken (RFC 3339), stamped on the model.
    pub fitted_at: String,
    /// Per-second windows, oldest first.
    pub windows: Vec<Window>,
    /// Attempt samples, oldest first.
    pub attempts: Vec<AttemptSample>,
    /// Request arrival samples, oldest first.
    pub arrivals: Vec<Nanos>,
    /// Endpoint addresses, by endpoint index.
    pub endpoints: Vec<String>,
    /// The data plane clock when the copy was taken: its second is still running.
    pub now: Nanos,
    /// Attempts that started at or after this may still be running, and only the quick ones
    /// among them have reported; they are left out so the slow ones are not missed.
    pub settled: Nanos,
}

/// Why no model was fitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FitError {
    /// The window holds fewer requests than a fit needs.
    #[error("not enough telemetry: {requests} requests, {needed} needed")]
    NotEnoughTelemetry {
        /// Requests in the window.
        requests: u64,
        /// `[evolution].min_requests`.
        needed: u64,
    },
    /// No live route has this name.
    #[error("no route named {0:?}")]
    NoSuchRoute(String),
}

/// `(value, weight)` pairs.
type Weighted = Vec<(f64, f64)>;

/// One attempt sample as the fit sees it.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Seconds from the window's start.
    second: usize,
    endpoint: usize,
    k: u32,
    latency_ms: f64,
    class: Class,
    weight: f64,
    /// The 5xx status it answered, if any.
    status: Option<u16>,
}

/// What an attempt's outcome says about the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Success,
    Failure(u8),
    Timeout,
}

/// Seconds with their sample and failure counts (raw, for binomial tests).
#[derive(Debug, Clone, Default)]
struct Seconds {
    counts: BTreeMap<usize, (u64, u64)>,
}

/// The degraded seconds of a failure process.
#[derive(Debug, Clone, Default)]
struct Degraded {
    healthy_rate: f64,
    seconds: Vec<usize>,
}

// === fit ===

/// Fits the model of `telemetry`'s route; `min_requests` is `[evolution].min_requests`.
pub fn fit(telemetry: &Telemetry, min_requests: u64) -> Result<Model, FitError> {
    let windows = complete_windows(telemetry);
    let requests: u64 = windows.iter().map(|w| w.requests).sum();
    if requests < min_requests || windows.is_empty() {
        return Err(FitError::NotEnoughTelemetry {
            requests,
            needed: min_requests,
        });
    }
    let samples = samples(telemetry, windows);
    let (first, last) = match (samples.first(), samples.last()) {
        (Some(a), Some(b)) => (a.second, b.second),
        _ => (0, 0),
    };
    let covered = if samples.is_empty() {
        0
    } else {
        last - first + 1
    };
    let timeouts = abandoned_seconds(&samples);
    let endpoints = telemetry.endpoints.len();
    // Queueing first, on every second; then the seconds slower than queueing explains are
    // brownouts, and the load fit is redone without them.
    let first_pass: Vec<Expected> = (0..endpoints)
        .map(|e| load_fit(&samples, e, &[], &timeouts).expected)
        .collect();
    let brownout = brownout_seconds(&samples, &first_pass, None);
    // One endpoint slow among healthy ones is its own brownout: the route-wide median cannot
    // see it, and replaying it on every endpoint would be wrong.
    let own_brownouts: Vec<Vec<usize>> = (0..endpoints)
        .map(|e| {
            if endpoints < 2 {
                return Vec::new();
            }
            let slow = brownout_seconds(&samples, &first_pass, Some(e));
            fill_silent_gaps(&slow, &samples, e)
                .into_iter()
                .filter(|second| brownout.binary_search(second).is_err())
                .collect()
        })
        .collect();
    let fits: Vec<LoadFit> = (0..endpoints)
        .map(|e| {
            let mut slow = brownout.clone();
            slow.extend(&own_brownouts[e]);
            slow.sort_unstable();
            load_fit(&samples, e, &slow, &timeouts)
        })
        .collect();
    let expected: Vec<Expected> = fits.iter().map(|f| f.expected).collect();
    let mut regimes = regimes(&samples, &expected, &brownout, covered);
    for (e, seconds) in own_brownouts.iter().enumerate() {
        if seconds.is_empty() {
            continue;
        }
        let of_endpoint: Vec<Sample> = samples
            .iter()
            .filter(|s| s.endpoint == e)
            .copied()
            .collect();
        for mut regime in regimes_of(&of_endpoint, &expected, seconds, covered) {
            regime.endpoint = telemetry.endpoints.get(e).cloned();
            regimes.push(regime);
        }
    }
    let endpoints = telemetry
        .endpoints
        .iter()
        .zip(fits)
        .enumerate()
        .map(|(index, (address, load))| endpoint_model(address, index, load, &samples, covered))
        .collect();
    Ok(Model {
        route: telemetry.route.clone(),
        fitted_at: telemetry.fitted_at.clone(),
        window_secs: windows.len() as u64,
        sampled_secs: covered as u64,
        requests,
        arrivals: arrivals(windows, &telemetry.arrivals),
        endpoints,
        regimes,
        censored_secs: censored_seconds(&samples),
        calibration: None,
        fidelity: None,
    })
}

/// Copies `route`'s telemetry from the live snapshot, fits it (with `[evolution].min_requests`,
/// stamped now), and runs the model check of the
/// route's live genome on it (published as `rafael_model_error`).
pub fn fit_route(snapshots: &SnapshotHandle, route: &str) -> Result<Model, FitError> {
    fit_route_since(snapshots, route, 0)
}

/// [`fit_route`] on the windows since `since` (the data plane clock) only, within the
/// horizon: the upstream as it behaved since then, which is what the guardian's watch
/// replays the previous genome on after a swap.
pub fn fit_route_since(
    snapshots: &SnapshotHandle,
    route: &str,
    since: Nanos,
) -> Result<Model, FitError> {
    let snapshot = snapshots.load();
    let min_requests = u64::from(snapshot.config().evolution.min_requests);
    let fitted_at = crate::store::now();
    let live = snapshot
        .route(route)
        .ok_or_else(|| FitError::NoSuchRoute(route.to_owned()))?;
    let telemetry = live.live().telemetry();
    let now = rafael_proxy::layer::now();
    let from = now
        .saturating_sub(WINDOW_SECONDS as u64 * SECOND)
        .max(since);
    let endpoints = live.upstream().endpoints();
    // With nothing in flight every attempt has reported; otherwise the route's deadline bounds
    // how long the unreported ones can have been running.
    let busy = endpoints.iter().any(|e| e.in_flight() > 0);
    let settled = if busy {
        let horizon = live.policy().timeout.map_or(UNSETTLED_SECS * SECOND, |t| {
            rafael_proxy::policy::nanos(t.get())
        });
        now.saturating_sub(horizon)
    } else {
        now
    };
    let copy = Telemetry {
        route: route.to_owned(),
        fitted_at,
        windows: telemetry.windows(from, now),
        attempts: telemetry.attempts(),
        arrivals: telemetry.arrivals(),
        endpoints: endpoints.iter().map(|e| e.address().to_owned()).collect(),
        now,
        settled,
    };
    let mut model = fit(&copy, min_requests)?;
    let windows = complete_windows(&copy);
    let mut fidelity = super::check::check(&model, windows, live.policy(), snapshot.config());
    // Where attempts timed out the fit could not see the upstream; the calibration infers it
    // by simulation, and the calibrated model is kept only if the check finds it closer.
    if !fidelity.trusted
        && let Some(calibrated) =
            super::calibrate(&model, windows, live.policy(), snapshot.config())
    {
        let recheck = super::check::check(&calibrated, windows, live.policy(), snapshot.config());
        if recheck.worst_error() < fidelity.worst_error() {
            model = calibrated;
            fidelity = recheck;
        }
    }
    super::check::publish(route, &fidelity);
    model.fidelity = Some(fidelity);
    Ok(model)
}

/// The windows of whole seconds before `now`'s, from the first with a request to the last
/// with any traffic (a request, an answer or an attempt): the quiet seconds after the traffic
/// stopped say nothing of the upstream, and leaving them out keeps a model fitted a few
/// seconds later the same model.
fn complete_windows(telemetry: &Telemetry) -> &[Window] {
    let complete = telemetry
        .windows
        .iter()
        .take_while(|w| w.start + SECOND <= telemetry.now)
        .count();
    let windows = &telemetry.windows[..complete];
    let first = windows
        .iter()
        .position(|w| w.requests > 0)
        .unwrap_or(complete);
    // A second that answered a request or started an attempt is part of the traffic (a
    // queue drains after the last arrival).
    let last = windows
        .iter()
        .rposition(|w| w.requests > 0 || w.responses() > 0 || w.attempts > 0)
        .map_or(first, |last| last + 1);
    &windows[first..last.max(first)]
}

fn arrivals(windows: &[Window], samples: &[Nanos]) -> Arrivals {
    let per_second: Vec<u32> = windows
        .iter()
        .map(|w| u32::try_from(w.requests).unwrap_or(u32::MAX))
        .collect();
    let n = per_second.len().max(1) as f64;
    let mean = per_second.iter().map(|&c| f64::from(c)).sum::<f64>() / n;
    let variance = per_second
        .iter()
        .map(|&c| (f64::from(c) - mean).powi(2))
        .sum::<f64>()
        / n;
    Arrivals {
        rate_per_sec: mean,
        burstiness: if mean > 0.0 { variance / mean } else { 0.0 },
        per_second,
        spacing_cv: spacing_cv(windows, samples),
    }
}

/// The coefficient of variation of the gaps between consecutive arrivals, from the arrival
/// samples. Every request is sampled until a second has seen `SAMPLE_ALL_BELOW`, so the first
/// samples of each second are consecutive arrivals; only their gaps are used (the thinned rest
/// would measure every eighth arrival). Poisson (1) when too few gaps were seen to say.
fn spacing_cv(windows: &[Window], samples: &[Nanos]) -> f64 {
    let (Some(first), Some(last)) = (windows.first(), windows.last()) else {
        return Arrivals::poisson_spacing();
    };
    let mut by_second: BTreeMap<u64, Vec<Nanos>> = BTreeMap::new();
    for &at in samples
        .iter()
        .filter(|&&at| at >= first.start && at < last.start + SECOND)
    {
        by_second.entry(at / SECOND).or_default().push(at);
    }
    let mut gaps = Vec::new();
    for times in by_second.values_mut() {
        times.sort_unstable();
        let exact = times
            .len()
            .min(rafael_proxy::telemetry::SAMPLE_ALL_BELOW as usize);
        gaps.extend(times[..exact].windows(2).map(|w| (w[1] - w[0]) as f64));
    }
    if gaps.len() < 100 {
        return Arrivals::poisson_spacing();
    }
    let n = gaps.len() as f64;
    let mean = gaps.iter().sum::<f64>() / n;
    let variance = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / n;
    if mean > 0.0 {
        (variance.sqrt() / mean).min(3.0)
    } else {
        Arrivals::poisson_spacing()
    }
}

/// The settled, genuine (not fault-injected) samples inside the window, weighted by their
/// second's thinning. When the ring does not reach back to the window's first attempts, its
/// oldest second is partly overwritten, so that second is dropped rather than over-weighted.
fn samples(telemetry: &Telemetry, windows: &[Window]) -> Vec<Sample> {
    let start = windows.first().map_or(0, |w| w.start);
    let end = (start + windows.len() as u64 * SECOND).min(telemetry.settled);
    let in_window: Vec<&AttemptSample> = telemetry
        .attempts
        .iter()
        .filter(|a| a.start >= start && a.start < end)
        .collect();
    let mut per_second = vec![0u64; windows.len()];
    for attempt in &in_window {
        per_second[((attempt.start - start) / SECOND) as usize] += 1;
    }
    let oldest = per_second.iter().position(|&n| n > 0);
    let truncated = oldest.is_some_and(|s| windows[..s].iter().any(|w| w.attempts > 0));
    let mut samples: Vec<Sample> = in_window
        .into_iter()
        .filter(|a| !a.fault)
        .filter_map(|a| {
            let second = ((a.start - start) / SECOND) as usize;
            if truncated && Some(second) == oldest {
                return None;
            }
            let class = match ATTEMPT_OUTCOMES.get(usize::from(a.outcome)).copied() {
                Some("success") => Class::Success,
                Some("timeout") => Class::Timeout,
                _ => Class::Failure(a.outcome),
            };
            Some(Sample {
                second,
                endpoint: usize::from(a.endpoint),
                k: a.in_flight.max(1),
                latency_ms: a.latency as f64 / 1e6,
                class,
                status: a.status_5xx,
                weight: (windows[second].attempts as f64 / per_second[second] as f64).max(1.0),
            })
        })
        .collect();
    samples.sort_by_key(|s| s.second);
    samples
}

// === load buckets and capacity ===

/// The lower bound of `k`'s load bucket: exact below 8, four buckets per doubling above.
fn bucket_of(k: u32) -> u32 {
    if k < 8 {
        return k;
    }
    let shift = 31 - k.leading_zeros() - 2;
    (k >> shift) << shift
}

/// Load buckets of `successes` (`(k, latency, weight)`), lowest first.
fn buckets(successes: &[(u32, f64, f64)]) -> Vec<LoadBucket> {
    let mut by_bucket: BTreeMap<u32, Vec<(f64, f64)>> = BTreeMap::new();
    for &(k, latency, weight) in successes {
        by_bucket
            .entry(bucket_of(k))
            .or_default()
            .push((latency, weight));
    }
    by_bucket
        .into_iter()
        .map(|(in_flight, mut values)| LoadBucket {
            in_flight,
            samples: values.len() as u64,
            p50_ms: quantile(&mut values, 0.5),
            p99_ms: quantile(&mut values, 0.99),
        })
        .collect()
}

/// Fits the knee from `successes` (`(k, latency ms, weight, near a timeout)`); `served` is
/// what the endpoint answered per second in its busiest seconds, which no capacity can be
/// below.
fn knee(
    successes: &[(u32, f64, f64, bool)],
    buckets: &[LoadBucket],
    served: f64,
) -> Option<Capacity> {
    let trusted: Vec<&LoadBucket> = buckets
        .iter()
        .filter(|b| b.samples >= MIN_BUCKET_SAMPLES)
        .collect();
    let base = trusted.first()?;
    let at = trusted
        .iter()
        .position(|b| b.in_flight > base.in_flight && b.p50_ms >= SATURATED_FACTOR * base.p50_ms)?;
    let onset = trusted[at];
    // The medians turned somewhere above the last trusted bucket below the onset.
    let still_flat = trusted[at.saturating_sub(1)].in_flight;
    let saturated = |with_timeouts: bool| -> Vec<(f64, f64)> {
        successes
            .iter()
            .filter(|s| s.0 >= onset.in_flight && (with_timeouts || !s.3))
            .map(|s| (f64::from(s.0), s.1 / 1e3))
            .collect()
    };
    let clean = saturated(false);
    let (points, timeouts_in_fit) = if clean.len() >= MIN_SATURATED_SAMPLES {
        (clean, false)
    } else {
        (saturated(true), true)
    };
    if points.len() < MIN_SATURATED_SAMPLES {
        return None;
    }
    let (slope, error) = slope(&points)?;
    let span = points.iter().map(|p| p.0).fold(f64::MIN, f64::max)
        - points.iter().map(|p| p.0).fold(f64::MAX, f64::min);
    let precise = slope > 0.0 && error < MAX_SLOPE_ERROR * slope;
    if !precise || slope * span < base.p50_ms / 1e3 {
        return None;
    }
    let throughput = 1.0 / slope;
    // An upstream that answered more a second than the slope allows was not queueing at that
    // slope: a slowdown under steady arrivals (a brownout the first pass has not yet set
    // apart) raises load and latency together, along a line as straight as a queue's.
    if served > SERVED_TOLERANCE * throughput {
        return None;
    }
    let implied = base.p50_ms / 1e3 * throughput;
    // Queueing puts the median's knee near 1.5 N; a slope that implies a pool far from where
    // the medians turned is not queueing (a brownout raises load and latency together). Where
    // they turned is known only between the last flat bucket and the onset one, and sparse
    // buckets in between (fewer than MIN_BUCKET_SAMPLES each) widen that: the pool is
    // accepted when the range `0.75 N ..= 4 N` meets it. Comparing the onset bucket alone
    // rejected a true 4-worker pool in about one run in four (onset 16, implied 3.99).
    if f64::from(onset.in_flight) < 0.75 * implied || f64::from(still_flat) >= 4.0 * implied {
        return None;
    }
    // Below the knee: first guess from the lowest bucket, then the loads the fit says are
    // unqueued.
    let mut concurrency = implied;
    for _ in 0..2 {
        let limit = concurrency.floor().max(f64::from(base.in_flight));
        let below: Vec<(f64, f64)> = successes
            .iter()
            .filter(|s| f64::from(s.0) <= limit)
            .map(|s| (s.1, s.2))
            .collect();
        concurrency = trimmed_mean(&below) / 1e3 * throughput;
    }
    Some(Capacity {
        concurrency,
        throughput_per_sec: throughput,
        timeouts_in_fit,
    })
}

/// Least-squares slope of `y` over `x` with a free intercept, and its standard error.
fn slope(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if sxx <= 0.0 || n < 3.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let slope = sxy / sxx;
    let intercept = mean_y - slope * mean_x;
    let residuals: f64 = points
        .iter()
        .map(|p| (p.1 - intercept - slope * p.0).powi(2))
        .sum();
    let error = (residuals / (n - 2.0) / sxx).sqrt();
    Some((slope, error))
}

// === endpoints ===

/// What an endpoint's latency should be at a load: the lowest bucket's median, grown by
/// `k / N` past the knee when there is one.
#[derive(Debug, Clone, Copy, Default)]
struct Expected {
    base_ms: f64,
    concurrency: Option<f64>,
}

/// The load side of one endpoint's fit.
#[derive(Debug, Clone)]
struct LoadFit {
    by_load: Vec<LoadBucket>,
    capacity: Option<Capacity>,
    service_time: ServiceTime,
    expected: Expected,
}

/// Fits endpoint `index`'s load buckets, knee and service time from its successes outside
/// `brownout` seconds.
fn load_fit(samples: &[Sample], index: usize, brownout: &[usize], timeouts: &[usize]) -> LoadFit {
    // The endpoint's successes outside the brownouts: what the load fit, the served rate and
    // the service time all read.
    let own: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.endpoint == index && s.class == Class::Success)
        .filter(|s| brownout.binary_search(&s.second).is_err())
        .collect();
    let successes: Vec<(u32, f64, f64, bool)> = own
        .iter()
        .map(|s| {
            let near_timeout = timeouts.binary_search(&s.second).is_ok();
            (s.k, s.latency_ms, s.weight, near_timeout)
        })
        .collect();
    let triples: Vec<(u32, f64, f64)> = successes.iter().map(|s| (s.0, s.1, s.2)).collect();
    let by_load = buckets(&triples);
    let capacity = knee(&successes, &by_load, served(&own));
    let unqueued = unqueued(capacity);
    // A brownout's first and last seconds are partly slow: the regime test counts a second
    // by its median, so a few slow answers of the seconds beside a period leak into the
    // healthy ones and would be the healthy p99 (151 ms against a 7 ms median in the demo).
    let beside_brownout = |second: usize| {
        brownout.binary_search(&(second + 1)).is_ok()
            || second
                .checked_sub(1)
                .is_some_and(|before| brownout.binary_search(&before).is_ok())
    };
    let unqueued_successes = || own.iter().filter(|s| s.k <= unqueued);
    let mut service: Weighted = unqueued_successes()
        .filter(|s| !beside_brownout(s.second))
        .map(|s| (s.latency_ms, s.weight))
        .collect();
    if service.is_empty() {
        service = unqueued_successes()
            .map(|s| (s.latency_ms, s.weight))
            .collect();
    }
    let base_ms = by_load
        .iter()
        .find(|b| b.samples >= MIN_BUCKET_SAMPLES)
        .map_or(0.0, |b| b.p50_ms);
    LoadFit {
        service_time: ServiceTime {
            p50_ms: quantile(&mut service, 0.5),
            p99_ms: quantile(&mut service, 0.99),
        },
        expected: Expected {
            base_ms,
            concurrency: capacity.map(|c| c.concurrency),
        },
        by_load,
        capacity,
    }
}

/// What an endpoint answered per second in its busiest seconds, from its `successes`: the
/// third busiest (weighted back from the sampling), so one second's sampling noise does not
/// set it.
fn served(successes: &[&Sample]) -> f64 {
    let mut per_second: BTreeMap<usize, f64> = BTreeMap::new();
    for s in successes {
        *per_second.entry(s.second).or_default() += s.weight;
    }
    let mut rates: Vec<f64> = per_second.into_values().collect();
    rates.sort_unstable_by(|a, b| b.total_cmp(a));
    rates.get(2).or(rates.last()).copied().unwrap_or(0.0)
}

fn endpoint_model(
    address: &str,
    index: usize,
    load: LoadFit,
    samples: &[Sample],
    covered: usize,
) -> EndpointModel {
    let own: Vec<&Sample> = samples.iter().filter(|s| s.endpoint == index).collect();
    let total: f64 = own.iter().map(|s| s.weight).sum();
    // A fold from +0.0: an empty f64 sum is -0.0, which would print as such.
    let timed_out = own
        .iter()
        .filter(|s| s.class == Class::Timeout)
        .fold(0.0, |sum, s| sum + s.weight);
    EndpointModel {
        endpoint: address.to_owned(),
        samples: own.len() as u64,
        service_time: load.service_time,
        by_load: load.by_load,
        capacity: load.capacity,
        failure: failure(&own, covered, unqueued(load.capacity)),
        timeout_rate: if total > 0.0 { timed_out / total } else { 0.0 },
        // Only the absence of evidence: rafael cannot see a server's workers. What would flip
        // it is latency at a given load that does not rise after timeouts (the server dropped
        // the work), which needs saturated seconds with and without timeouts to compare.
        abandoned_work: true,
    }
}

/// The highest load at which attempts do not queue: every load when no knee was seen.
fn unqueued(capacity: Option<Capacity>) -> u32 {
    capacity.map_or(u32::MAX, |c| (c.concurrency.floor() as u32).max(1))
}

/// Seconds in which at least half of the attempts (weighted, over every endpoint) timed out.
fn censored_seconds(samples: &[Sample]) -> Vec<u32> {
    let mut by_second: BTreeMap<usize, (u64, f64, f64)> = BTreeMap::new();
    for s in samples {
        let entry = by_second.entry(s.second).or_default();
        entry.0 += 1;
        entry.1 += s.weight;
        if s.class == Class::Timeout {
            entry.2 += s.weight;
        }
    }
    by_second
        .into_iter()
        .filter(|(_, (n, all, timed_out))| *n >= MIN_SECOND_SAMPLES && 2.0 * timed_out >= *all)
        .filter_map(|(second, _)| u32::try_from(second).ok())
        .collect()
}

/// Seconds in which a server may still be working on an attempt rafael timed out.
fn abandoned_seconds(samples: &[Sample]) -> Vec<usize> {
    let mut seconds: Vec<usize> = samples
        .iter()
        .filter(|s| s.class == Class::Timeout)
        .flat_map(|s| {
            let end = s.second + (s.latency_ms / 1e3).ceil() as usize;
            s.second..=end + ABANDONED_SECS as usize
        })
        .collect();
    seconds.sort_unstable();
    seconds.dedup();
    seconds
}

/// The failure process of one endpoint's samples, judged (time-out apart) attempt by attempt;
/// the failures' latency from loads up to `unqueued`, as the service time, so time spent
/// queueing is not taken for how long the upstream takes to fail.
fn failure(own: &[&Sample], covered: usize, unqueued: u32) -> Failure {
    let judged: Vec<&&Sample> = own.iter().filter(|s| s.class != Class::Timeout).collect();
    let total: f64 = judged.iter().map(|s| s.weight).sum();
    let failed: Vec<&&&Sample> = judged
        .iter()
        .filter(|s| matches!(s.class, Class::Failure(_)))
        .collect();
    let failed_weight = failed.iter().fold(0.0, |sum, s| sum + s.weight);
    let mut seconds = Seconds::default();
    for s in &judged {
        seconds.add(s.second, matches!(s.class, Class::Failure(_)));
    }
    let degraded = seconds.degraded();
    let runs = runs(&degraded.seconds);
    let (burst_n, burst_f) = degraded
        .seconds
        .iter()
        .filter_map(|s| seconds.counts.get(s))
        .fold((0, 0), |(n, f), &(a, b)| (n + a, f + b));
    let mut latencies: Weighted = failed
        .iter()
        .filter(|s| s.k <= unqueued)
        .map(|s| (s.latency_ms, s.weight))
        .collect();
    Failure {
        rate: if total > 0.0 {
            failed_weight / total
        } else {
            0.0
        },
        healthy_rate: degraded.healthy_rate,
        burst_rate: ratio(burst_f, burst_n),
        mean_burst_secs: mean_length(&runs),
        mean_healthy_secs: if runs.is_empty() {
            0.0
        } else {
            covered.saturating_sub(degraded.seconds.len()) as f64 / runs.len() as f64
        },
        status: status(&failed),
        latency_p50_ms: quantile(&mut latencies, 0.5),
        latency_p99_ms: quantile(&mut latencies, 0.99),
    }
}

/// The status failures answer with: the most common 5xx when most failures are 5xx (500 when
/// the samples carry no code), `None` when most are resets or refused connections. The code
/// matters: a retry on `gateway-error` fires for a 503 and not for a 500.
fn status(failed: &[&&&Sample]) -> Option<u16> {
    let http_5xx = ATTEMPT_OUTCOMES.iter().position(|&o| o == "http_5xx");
    let fives: Vec<&&&Sample> = failed
        .iter()
        .filter(|s| matches!(s.class, Class::Failure(o) if Some(usize::from(o)) == http_5xx))
        .copied()
        .collect();
    if fives.len() * 2 <= failed.len() {
        return None;
    }
    let mut counts: BTreeMap<u16, usize> = BTreeMap::new();
    for sample in &fives {
        *counts.entry(sample.status.unwrap_or(500)).or_default() += 1;
    }
    // Most common first; among equals, the lowest code (a stable choice).
    counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        .map(|(status, _)| status)
}

// === regimes ===

/// Seconds whose successes (of `endpoint`, or of all) took at least [`BROWNOUT_FACTOR`] times
/// what their load explains.
fn brownout_seconds(
    samples: &[Sample],
    expected: &[Expected],
    endpoint: Option<usize>,
) -> Vec<usize> {
    // One endpoint's seconds hold few of its answers (power of two choices steers load away
    // from a slow one), so one answer is enough there; a route's second needs several.
    let needed = if endpoint.is_some() {
        1
    } else {
        MIN_SECOND_SAMPLES
    };
    let mut by_second: BTreeMap<usize, Vec<(f64, f64)>> = BTreeMap::new();
    for (s, ratio) in
        ratios(samples, expected).filter(|(s, _)| endpoint.is_none_or(|e| s.endpoint == e))
    {
        by_second
            .entry(s.second)
            .or_default()
            .push((ratio, s.weight));
    }
    by_second
        .into_iter()
        .filter(|(_, ratios)| ratios.len() as u64 >= needed)
        .filter_map(|(second, mut ratios)| {
            (quantile(&mut ratios, 0.5) >= BROWNOUT_FACTOR).then_some(second)
        })
        .collect()
}

/// `slow` seconds of `endpoint`, with the seconds between two of them in which the endpoint
/// answered nothing at all: a slow endpoint that load balancing avoids goes quiet, and its
/// silence is the slowness, not health.
fn fill_silent_gaps(slow: &[usize], samples: &[Sample], endpoint: usize) -> Vec<usize> {
    let answered: std::collections::BTreeSet<usize> = samples
        .iter()
        .filter(|s| s.endpoint == endpoint && s.class == Class::Success)
        .map(|s| s.second)
        .collect();
    let mut filled = Vec::with_capacity(slow.len());
    for pair in slow.windows(2) {
        filled.push(pair[0]);
        let (from, to) = (pair[0] + 1, pair[1]);
        if to > from && (from..to).all(|second| !answered.contains(&second)) {
            filled.extend(from..to);
        }
    }
    filled.extend(slow.last());
    filled
}

/// Each success with its latency over what its load explains.
fn ratios<'a>(
    samples: &'a [Sample],
    expected: &'a [Expected],
) -> impl Iterator<Item = (&'a Sample, f64)> + 'a {
    samples
        .iter()
        .filter(|s| s.class == Class::Success)
        .filter_map(move |s| {
            let reference = expected.get(s.endpoint)?.at(s.k);
            (reference > 0.0).then(|| (s, s.latency_ms / reference))
        })
}

/// The brownout regime of one endpoint's `samples` over its own slow `seconds`.
fn regimes_of(
    samples: &[Sample],
    expected: &[Expected],
    seconds: &[usize],
    covered: usize,
) -> Vec<Regime> {
    regimes(samples, expected, seconds, covered)
        .into_iter()
        .filter(|r| r.kind == RegimeKind::Brownout)
        .collect()
}

fn regimes(
    samples: &[Sample],
    expected: &[Expected],
    brownout: &[usize],
    covered: usize,
) -> Vec<Regime> {
    let mut seconds = Seconds::default();
    for s in samples.iter().filter(|s| s.class != Class::Timeout) {
        seconds.add(s.second, matches!(s.class, Class::Failure(_)));
    }
    let outage = seconds.degraded().seconds;
    [
        (RegimeKind::Brownout, brownout.to_vec()),
        (RegimeKind::Outage, outage),
    ]
    .into_iter()
    .filter(|(_, secs)| !secs.is_empty())
    .map(|(kind, secs)| {
        let inside = |second: usize| secs.binary_search(&second).is_ok();
        let (mut during, mut outside): (Weighted, Weighted) = (vec![], vec![]);
        for (s, ratio) in ratios(samples, expected) {
            if inside(s.second) {
                during.push((ratio, s.weight));
            } else {
                outside.push((ratio, s.weight));
            }
        }
        let factor = match (quantile(&mut during, 0.5), quantile(&mut outside, 0.5)) {
            (d, o) if d > 0.0 && o > 0.0 => d / o,
            _ => 1.0,
        };
        let (n, f) = secs
            .iter()
            .filter_map(|s| seconds.counts.get(s))
            .fold((0, 0), |(n, f), &(a, b)| (n + a, f + b));
        let runs = runs(&secs);
        // A brownout period's own distribution, from its successes.
        let own = |start: usize, length: usize| {
            let mut latencies: Weighted = samples
                .iter()
                .filter(|s| {
                    s.class == Class::Success && (start..start + length).contains(&s.second)
                })
                .map(|s| (s.latency_ms, s.weight))
                .collect();
            (kind == RegimeKind::Brownout && latencies.len() as u64 >= MIN_SECOND_SAMPLES * 2)
                .then(|| log_normal(&mut latencies))
        };
        Regime {
            kind,
            endpoint: None,
            share: secs.len() as f64 / covered.max(1) as f64,
            mean_secs: mean_length(&runs),
            service_time_factor: factor,
            failure_rate: ratio(f, n),
            periods: runs
                .into_iter()
                .map(|(start, secs)| Period {
                    start_sec: u32::try_from(start).unwrap_or(u32::MAX),
                    secs: u32::try_from(secs).unwrap_or(u32::MAX),
                    service_time: own(start, secs),
                })
                .collect(),
        }
    })
    .collect()
}

// === impl Expected ===

impl Expected {
    /// The latency load `k` explains, milliseconds.
    fn at(&self, k: u32) -> f64 {
        let queued = self
            .concurrency
            .map_or(1.0, |n| (f64::from(k) / n).max(1.0));
        self.base_ms * queued
    }
}

// === impl Seconds ===

impl Seconds {
    fn add(&mut self, second: usize, failed: bool) {
        let entry = self.counts.entry(second).or_default();
        entry.0 += 1;
        entry.1 += u64::from(failed);
    }

    /// The degraded seconds: failures far above the healthy rate, which is re-estimated
    /// without them until the set stops changing.
    /// The failure rate of the quieter half: the seconds with the lowest failure shares, up to
    /// half of all attempts. The first guess at the healthy rate. The whole window's rate is a
    /// bad guess whenever a burst fills much of it: a burst at 40% over half the window makes
    /// that rate 20%, and a burst second then reads as merely twice it, too little to flag,
    /// so the burst is fitted as a steady 20% (seen with httpbin's bad day in
    /// examples/httpbin-gunicorn). The quieter half holds no burst second while bursts fill
    /// less than half the window; when they fill more, the guess is the burst's rate, no
    /// second is flagged and the steady rate is what the fit reports, as before. A quiet half
    /// without failures does not prove a rate of zero: it is read as three failures in its
    /// attempts (the rule of three, a 95% upper bound), so a lone second with three failures
    /// is not a burst on its own.
    fn quiet_half_rate(&self) -> f64 {
        let mut shares: Vec<(u64, u64)> = self.counts.values().copied().collect();
        shares.sort_by(|a, b| {
            let share = |&(n, f): &(u64, u64)| f as f64 / n.max(1) as f64;
            share(a).total_cmp(&share(b))
        });
        let total: u64 = shares.iter().map(|(n, _)| n).sum();
        let (mut n, mut f) = (0, 0);
        for (a, b) in shares {
            if n * 2 >= total {
                break;
            }
            n += a;
            f += b;
        }
        ratio(f.max(3), n).min(1.0)
    }

    fn degraded(&self) -> Degraded {
        let mut healthy = self.quiet_half_rate();
        let tail = burst_tail();
        let mut seconds: Vec<usize> = Vec::new();
        for _ in 0..10 {
            let flagged: Vec<usize> = self
                .counts
                .iter()
                .filter(|(_, (n, f))| degraded_second(*n, *f, healthy, tail))
                .map(|(&s, _)| s)
                .collect();
            let (n, f) = self
                .counts
                .iter()
                .filter(|(s, _)| flagged.binary_search(s).is_err())
                .fold((0, 0), |(n, f), (_, &(a, b))| (n + a, f + b));
            healthy = ratio(f, n);
            if flagged == seconds {
                break;
            }
            seconds = flagged;
        }
        // Hysteresis, as an edge detector thresholds: a burst's first and last seconds are
        // partly in it, so a run of degraded seconds grows into neighbours that pass a weaker
        // test ([`EDGE_Z`]) while a second alone must pass the strong one. Without it the
        // demo's 3.3 s outage was fitted as 2 s, and replays tripped its breaker too rarely.
        let edge = edge_tail();
        loop {
            let grown: Vec<usize> = seconds
                .iter()
                .flat_map(|&s| [s.checked_sub(1), Some(s + 1)])
                .flatten()
                .filter(|s| seconds.binary_search(s).is_err())
                .filter(|s| {
                    self.counts
                        .get(s)
                        .is_some_and(|&(n, f)| degraded_second(n, f, healthy, edge))
                })
                .collect();
            if grown.is_empty() {
                break;
            }
            seconds.extend(grown);
            seconds.sort_unstable();
            seconds.dedup();
        }
        Degraded {
            healthy_rate: healthy,
            seconds,
        }
    }
}

/// Whether `f` failures in `n` attempts are far above a healthy `rate`: at least double it
/// (and 10 points above), and no likelier at the healthy rate than `tail` ([`burst_tail`]).
/// The chance is the exact binomial tail: with the few attempts of a quiet route's second the
/// normal approximation is far too thin there (3 failures of 16 at a 2% rate read as z = 4.8,
/// where the binomial chance is 1 in 270, and the demo's slow phase grew a spurious outage
/// second in about one run of four).
fn degraded_second(n: u64, f: u64, rate: f64, tail: f64) -> bool {
    use statrs::distribution::{Binomial, DiscreteCDF};
    if n < MIN_SECOND_SAMPLES || f < 3 {
        return false;
    }
    let share = f as f64 / n as f64;
    if share < 2.0 * rate || share < rate + 0.1 {
        return false;
    }
    // A floor on the rate: a healthy process that never failed still may.
    let Ok(healthy) = Binomial::new(rate.clamp(0.001, 0.999), n) else {
        return false;
    };
    // P(X >= f) = P(X > f - 1).
    healthy.sf(f - 1) <= tail
}

/// The chance of a standard normal draw beyond [`BURST_Z`]: how unlikely a degraded second's
/// failures must be at the healthy rate.
fn burst_tail() -> f64 {
    use statrs::distribution::{ContinuousCDF, Normal};
    Normal::standard().sf(BURST_Z)
}

/// The same beyond [`EDGE_Z`]: how unlikely the failures of a second next to degraded ones
/// must be.
fn edge_tail() -> f64 {
    use statrs::distribution::{ContinuousCDF, Normal};
    Normal::standard().sf(EDGE_Z)
}

// === statistics ===

/// The log-normal distribution the simulator draws from, fitted to a brownout period's
/// weighted latencies by their median and their quartiles: `σ = ln(p75 / p25) / 1.349`,
/// reported as the median and `p99 = p50 · e^(2.326 σ)`. The empirical 99th percentile of a
/// period's hundred or so latencies would be its one or two slowest, and its first and last
/// seconds are partly healthy, where the quartiles do not move. A tail heavier than log-normal
/// is then what the model check's p99 sees, not what the fit hides.
fn log_normal(values: &mut [(f64, f64)]) -> ServiceTime {
    const Z_QUARTILE_SPAN: f64 = 1.349;
    let p50 = quantile(values, 0.5);
    let (p25, p75) = (quantile(values, 0.25), quantile(values, 0.75));
    let sigma = if p25 > 0.0 && p75 >= p25 {
        (p75 / p25).ln() / Z_QUARTILE_SPAN
    } else {
        0.0
    };
    ServiceTime {
        p50_ms: p50,
        p99_ms: p50 * (crate::evolution::sim::upstream::Z99 * sigma).exp(),
    }
}

/// The weighted quantile `q` of `(value, weight)`; 0 for none.
fn quantile(values: &mut [(f64, f64)], q: f64) -> f64 {
    values.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: f64 = values.iter().map(|v| v.1).sum();
    let mut seen = 0.0;
    for &(value, weight) in values.iter() {
        seen += weight;
        if seen >= q * total {
            return value;
        }
    }
    values.last().map_or(0.0, |v| v.0)
}

/// The weighted mean of `(value, weight)` below its 99th percentile, so a few stragglers
/// (a GC pause, a reconnect) do not move the capacity.
fn trimmed_mean(values: &[(f64, f64)]) -> f64 {
    let mut sorted = values.to_vec();
    let cutoff = quantile(&mut sorted, 0.99);
    let (sum, weight) = sorted
        .iter()
        .filter(|v| v.0 <= cutoff)
        .fold((0.0, 0.0), |(s, w), v| (s + v.0 * v.1, w + v.1));
    if weight > 0.0 { sum / weight } else { 0.0 }
}

/// Runs of consecutive seconds in sorted `seconds`: (first, length).
fn runs(seconds: &[usize]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for &second in seconds {
        match runs.last_mut() {
            Some((start, length)) if *start + *length == second => *length += 1,
            _ => runs.push((second, 1)),
        }
    }
    runs
}

fn mean_length(runs: &[(usize, usize)]) -> f64 {
    if runs.is_empty() {
        0.0
    } else {
        runs.iter().map(|r| r.1).sum::<usize>() as f64 / runs.len() as f64
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}
