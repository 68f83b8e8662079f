//! A route's genome: the resilience policy genes (timeout, retry, circuit breaker, rate limit,
//! concurrency) with their bounds.
//!
//! The data plane applies them, the control plane mutates them, and both rely on [`Genome::validate`]
//! keeping every gene inside bounds an engine can run with.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::{ByteSize, ConfigErrors, HumanDuration};

/// Largest `retry.max_replay_bytes`: Envoy buffers at most its 1 MiB connection buffer for a
/// retry; 16 MiB leaves room for larger uploads while a route's replay buffers stay bounded.
pub const MAX_REPLAY_BYTES: u64 = 16 * 1024 * 1024;

/// The policy vector of one route. A section left out is not applied.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
pub struct Genome {
    /// Whole-request deadline, all attempts included.
    pub timeout: Option<HumanDuration>,
    /// Retry genes.
    pub retry: Option<RetryGenes>,
    /// Circuit breaker genes (per upstream endpoint).
    pub circuit_breaker: Option<BreakerGenes>,
    /// Rate limit genes.
    pub rate_limit: Option<RateLimitGenes>,
    /// Concurrency limit genes.
    pub concurrency: Option<ConcurrencyGenes>,
}

/// Budgeted retries with exponential backoff and full jitter.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RetryGenes {
    /// Attempts per request, the first one included.
    pub max_attempts: u32,
    /// Deadline of each attempt.
    pub per_try_timeout: Option<HumanDuration>,
    /// Backoff before the first retry (before jitter).
    pub backoff_base: HumanDuration,
    /// Cap on any one backoff.
    pub backoff_max: HumanDuration,
    /// Which outcomes are retried.
    pub retry_on: Vec<RetryCondition>,
    /// Retries allowed as a share of requests.
    pub budget_ratio: f64,
    /// Retries per second always allowed, whatever the ratio says.
    pub budget_min_per_sec: u32,
    /// Largest request body kept for replay.
    pub max_replay_bytes: ByteSize,
    /// Also retry methods that are not idempotent (POST, PATCH).
    pub retry_non_idempotent: bool,
}

/// When an attempt's outcome is worth another attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryCondition {
    /// The connection to the endpoint could not be made.
    ConnectFailure,
    /// The connection or stream was reset before a response arrived.
    Reset,
    /// Any 5xx response.
    ServerError,
    /// 502, 503 or 504.
    GatewayError,
    /// The attempt hit its per-try timeout.
    Timeout,
    /// This exact status code.
    Status(u16),
}

/// Circuit breaker thresholds, per upstream endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct BreakerGenes {
    /// Consecutive failures that open the breaker.
    pub consecutive_failures: u32,
    /// Failure share over `window` that opens the breaker.
    pub failure_rate: f64,
    /// Sliding window for the rates.
    pub window: HumanDuration,
    /// Requests in the window before the rates count.
    pub min_requests: u32,
    /// A response slower than this is a slow call.
    pub slow_call_duration: HumanDuration,
    /// Slow-call share over `window` that opens the breaker.
    pub slow_call_rate: f64,
    /// How long the breaker stays open on its first trip.
    pub open_for: HumanDuration,
    /// Cap on `open_for` as repeated trips grow it.
    pub open_for_max: HumanDuration,
    /// Probes admitted while half-open.
    pub half_open_probes: u32,
    /// Which attempt outcomes count as failures (the vocabulary of `retry_on`; `timeout`
    /// covers both the per-try and the route deadline).
    pub failure_on: Vec<RetryCondition>,
}

/// GCRA rate limit, per route or per client key.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct RateLimitGenes {
    /// Sustained requests per second.
    pub rps: f64,
    /// Requests admitted at once above the sustained rate.
    #[serde(default = "RateLimitGenes::default_burst")]
    pub burst: u32,
    /// Limit per client key instead of per route.
    #[serde(default)]
    pub key: Option<RateLimitKey>,
    /// Most distinct keys tracked at once (least recently seen are evicted).
    #[serde(default = "RateLimitGenes::default_max_keys")]
    pub max_keys: u32,
}

/// What a per-key rate limit keys on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateLimitKey {
    /// The value of this request header (`header:x-api-key`).
    Header(String),
    /// The client's IP address (`peer-ip`).
    PeerIp,
}

/// Limit on requests in flight to the upstream.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct ConcurrencyGenes {
    /// Static limit, or the ceiling of the adaptive one.
    pub max_in_flight: u32,
    /// Follow the upstream's latency with a gradient-style limit.
    pub adaptive: bool,
}

// === impl Genome ===

impl Genome {
    /// Records every gene outside its bounds under `path`.
    pub fn validate(&self, path: &str, errors: &mut ConfigErrors) {
        if let Some(timeout) = self.timeout {
            check_duration(errors, &format!("{path}.timeout"), timeout, 1, 3_600_000);
        }
        if let Some(retry) = &self.retry {
            retry.validate(&format!("{path}.retry"), errors);
            if let (Some(timeout), Some(per_try)) = (self.timeout, retry.per_try_timeout) {
                if per_try > timeout {
                    errors.push(
                        format!("{path}.retry.per_try_timeout"),
                        format!("must not exceed the route timeout ({timeout}), got {per_try}"),
                    );
                }
            }
        }
        if let Some(breaker) = &self.circuit_breaker {
            breaker.validate(&format!("{path}.circuit_breaker"), errors);
        }
        if let Some(limit) = &self.rate_limit {
            limit.validate(&format!("{path}.rate_limit"), errors);
        }
        if let Some(concurrency) = &self.concurrency {
            check_range(
                errors,
                &format!("{path}.concurrency.max_in_flight"),
                concurrency.max_in_flight,
                1,
                1_000_000,
            );
        }
    }
}

// === impl RetryGenes ===

impl Default for RetryGenes {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            per_try_timeout: None,
            backoff_base: HumanDuration::from_millis(25),
            backoff_max: HumanDuration::from_millis(250),
            retry_on: vec![
                RetryCondition::ConnectFailure,
                RetryCondition::Reset,
                RetryCondition::GatewayError,
            ],
            budget_ratio: 0.2,
            budget_min_per_sec: 10,
            max_replay_bytes: ByteSize(64 * 1024),
            retry_non_idempotent: false,
        }
    }
}

impl RetryGenes {
    fn validate(&self, path: &str, errors: &mut ConfigErrors) {
        check_range(
            errors,
            &format!("{path}.max_attempts"),
            self.max_attempts,
            1,
            10,
        );
        if let Some(per_try) = self.per_try_timeout {
            check_duration(
                errors,
                &format!("{path}.per_try_timeout"),
                per_try,
                1,
                600_000,
            );
        }
        check_duration(
            errors,
            &format!("{path}.backoff_base"),
            self.backoff_base,
            1,
            60_000,
        );
        check_duration(
            errors,
            &format!("{path}.backoff_max"),
            self.backoff_max,
            1,
            600_000,
        );
        if self.backoff_max < self.backoff_base {
            errors.push(
                format!("{path}.backoff_max"),
                format!(
                    "must be at least backoff_base ({}), got {}",
                    self.backoff_base, self.backoff_max
                ),
            );
        }
        check_fraction(
            errors,
            &format!("{path}.budget_ratio"),
            self.budget_ratio,
            0.0,
            10.0,
        );
        check_range(
            errors,
            &format!("{path}.budget_min_per_sec"),
            self.budget_min_per_sec,
            0,
            100_000,
        );
        // The replay buffer is held in memory for every request in flight on the route.
        check_size(
            errors,
            &format!("{path}.max_replay_bytes"),
            self.max_replay_bytes.bytes(),
            MAX_REPLAY_BYTES,
        );
        check_statuses(errors, &format!("{path}.retry_on"), &self.retry_on);
    }
}

// === impl RetryCondition ===

impl RetryCondition {
    const NAMES: &'static str =
        "connect-failure, reset, 5xx, gateway-error, timeout or a status code";
}

impl fmt::Display for RetryCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ConnectFailure => f.write_str("connect-failure"),
            Self::Reset => f.write_str("reset"),
            Self::ServerError => f.write_str("5xx"),
            Self::GatewayError => f.write_str("gateway-error"),
            Self::Timeout => f.write_str("timeout"),
            Self::Status(code) => write!(f, "{code}"),
        }
    }
}

impl std::str::FromStr for RetryCondition {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "connect-failure" => Self::ConnectFailure,
            "reset" => Self::Reset,
            "5xx" => Self::ServerError,
            "gateway-error" => Self::GatewayError,
            "timeout" => Self::Timeout,
            other => other.parse::<u16>().map(Self::Status).map_err(|_| {
                format!(
                    "unknown retry condition {other:?}; expected {}",
                    Self::NAMES
                )
            })?,
        })
    }
}

impl<'de> Deserialize<'de> for RetryCondition {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = RetryCondition;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(RetryCondition::NAMES)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u16::try_from(v)
                    .map(RetryCondition::Status)
                    .map_err(|_| E::custom(format!("not a status code: {v}")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                u16::try_from(v)
                    .map(RetryCondition::Status)
                    .map_err(|_| E::custom(format!("not a status code: {v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl Serialize for RetryCondition {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Status(code) => serializer.serialize_u16(*code),
            other => serializer.collect_str(other),
        }
    }
}

// === impl BreakerGenes ===

impl Default for BreakerGenes {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: HumanDuration::from_secs(10),
            min_requests: 20,
            slow_call_duration: HumanDuration::from_secs(1),
            slow_call_rate: 1.0,
            open_for: HumanDuration::from_secs(5),
            open_for_max: HumanDuration::from_secs(60),
            half_open_probes: 3,
            failure_on: vec![
                RetryCondition::ServerError,
                RetryCondition::ConnectFailure,
                RetryCondition::Reset,
                RetryCondition::Timeout,
            ],
        }
    }
}

impl BreakerGenes {
    fn validate(&self, path: &str, errors: &mut ConfigErrors) {
        check_range(
            errors,
            &format!("{path}.consecutive_failures"),
            self.consecutive_failures,
            1,
            10_000,
        );
        check_fraction(
            errors,
            &format!("{path}.failure_rate"),
            self.failure_rate,
            0.01,
            1.0,
        );
        check_duration(
            errors,
            &format!("{path}.window"),
            self.window,
            1_000,
            600_000,
        );
        check_range(
            errors,
            &format!("{path}.min_requests"),
            self.min_requests,
            1,
            100_000,
        );
        check_duration(
            errors,
            &format!("{path}.slow_call_duration"),
            self.slow_call_duration,
            1,
            600_000,
        );
        check_fraction(
            errors,
            &format!("{path}.slow_call_rate"),
            self.slow_call_rate,
            0.01,
            1.0,
        );
        check_duration(
            errors,
            &format!("{path}.open_for"),
            self.open_for,
            1,
            3_600_000,
        );
        check_duration(
            errors,
            &format!("{path}.open_for_max"),
            self.open_for_max,
            1,
            3_600_000,
        );
        if self.open_for_max < self.open_for {
            errors.push(
                format!("{path}.open_for_max"),
                format!(
                    "must be at least open_for ({}), got {}",
                    self.open_for, self.open_for_max
                ),
            );
        }
        check_range(
            errors,
            &format!("{path}.half_open_probes"),
            self.half_open_probes,
            1,
            1_000,
        );
        check_statuses(errors, &format!("{path}.failure_on"), &self.failure_on);
    }
}

// === impl RateLimitGenes ===

impl RateLimitGenes {
    fn default_burst() -> u32 {
        1
    }

    fn default_max_keys() -> u32 {
        10_000
    }

    fn validate(&self, path: &str, errors: &mut ConfigErrors) {
        check_fraction(
            errors,
            &format!("{path}.rps"),
            self.rps,
            0.001,
            10_000_000.0,
        );
        check_range(errors, &format!("{path}.burst"), self.burst, 1, 10_000_000);
        check_range(
            errors,
            &format!("{path}.max_keys"),
            self.max_keys,
            1,
            10_000_000,
        );
    }
}

// === impl RateLimitKey ===

impl fmt::Display for RateLimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header(name) => write!(f, "header:{name}"),
            Self::PeerIp => f.write_str("peer-ip"),
        }
    }
}

impl<'de> Deserialize<'de> for RateLimitKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text == "peer-ip" {
            return Ok(Self::PeerIp);
        }
        match text.strip_prefix("header:") {
            Some(name) if http_token(name) => Ok(Self::Header(name.to_ascii_lowercase())),
            _ => Err(de::Error::custom(format!(
                "invalid key {text:?}; expected \"header:NAME\" or \"peer-ip\""
            ))),
        }
    }
}

impl Serialize for RateLimitKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

// === impl ConcurrencyGenes ===

impl Default for ConcurrencyGenes {
    fn default() -> Self {
        Self {
            max_in_flight: 256,
            adaptive: false,
        }
    }
}

// === bounds checks ===

/// Status-code conditions must be HTTP status codes.
fn check_statuses(errors: &mut ConfigErrors, path: &str, conditions: &[RetryCondition]) {
    for (i, condition) in conditions.iter().enumerate() {
        if let RetryCondition::Status(code) = condition {
            if !(100..=599).contains(code) {
                errors.push(
                    format!("{path}[{i}]"),
                    format!("must be an HTTP status code 100..=599, got {code}"),
                );
            }
        }
    }
}

/// True when `name` is a valid HTTP header name (an RFC 9110 token).
pub(crate) fn http_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

pub(crate) fn check_range(errors: &mut ConfigErrors, path: &str, value: u32, min: u32, max: u32) {
    if !(min..=max).contains(&value) {
        errors.push(path, format!("must be {min}..={max}, got {value}"));
    }
}

pub(crate) fn check_fraction(
    errors: &mut ConfigErrors,
    path: &str,
    value: f64,
    min: f64,
    max: f64,
) {
    if !(min..=max).contains(&value) {
        errors.push(path, format!("must be {min}..={max}, got {value}"));
    }
}

/// Records an error unless `bytes` is at most `max`, in the wording of the other bounds.
pub(crate) fn check_size(errors: &mut ConfigErrors, path: &str, bytes: u64, max: u64) {
    if bytes > max {
        errors.push(
            path,
            format!("must be at most {}, got {bytes} bytes", binary_size(max)),
        );
    }
}

/// `max` in the largest binary unit that divides it exactly (`65536` is `64KiB`).
pub(crate) fn binary_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["TiB", "GiB", "MiB", "KiB", "B"];
    for (i, unit) in UNITS.iter().enumerate() {
        let scale = 1u64 << (10 * (UNITS.len() - 1 - i));
        if bytes >= scale && bytes % scale == 0 {
            return format!("{}{unit}", bytes / scale);
        }
    }
    format!("{bytes}B")
}

pub(crate) fn check_duration(
    errors: &mut ConfigErrors,
    path: &str,
    value: HumanDuration,
    min_ms: u64,
    max_ms: u64,
) {
    let ms = value.get().as_millis();
    if ms < u128::from(min_ms) || ms > u128::from(max_ms) {
        let min = HumanDuration::from_millis(min_ms);
        let max = HumanDuration::from_millis(max_ms);
        errors.push(path, format!("must be {min}..={max}, got {value}"));
    }
}
