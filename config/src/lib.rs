//! RAFAEL's configuration: the TOML schema, the route genome, and validation that reports every
//! error with its key path.
//!
//! This crate is pure data. It reads a string and returns either a validated [`Config`] or a
//! [`ConfigErrors`] list; it never touches the network or the file system (the binary reads the
//! file, the proxy loads certificates), so the same code serves `rafael config check`, reloads
//! and the control plane.

mod error;
mod genome;
mod load;
mod schema;
mod units;
mod validate;

/// The key paths of a genome's numeric genes, as `[guardian].guardrails` names them (the control
/// plane's gene table must list the same, a test there checks it).
pub const GENE_PATHS: &[&str] = &[
    "timeout",
    "retry.max_attempts",
    "retry.per_try_timeout",
    "retry.backoff_base",
    "retry.backoff_max",
    "retry.budget_ratio",
    "retry.budget_min_per_sec",
    "circuit_breaker.consecutive_failures",
    "circuit_breaker.failure_rate",
    "circuit_breaker.window",
    "circuit_breaker.min_requests",
    "circuit_breaker.slow_call_duration",
    "circuit_breaker.slow_call_rate",
    "circuit_breaker.open_for",
    "circuit_breaker.half_open_probes",
    "rate_limit.rps",
    "rate_limit.burst",
    "concurrency.max_in_flight",
];

/// The sections of a genome, which `[guardian].frozen` may name whole.
pub const GENOME_SECTIONS: &[&str] = &[
    "timeout",
    "retry",
    "circuit_breaker",
    "rate_limit",
    "concurrency",
];

/// Threats of the Chaos Forge, as scenario names spell them.
pub const THREATS: &[&str] = &[
    "latency",
    "upstream-failure",
    "surge",
    "brownout",
    "memory-pressure",
];

/// Severities of the Chaos Forge.
pub const SEVERITIES: &[&str] = &["low", "medium", "high", "critical"];

pub use error::{ConfigError, ConfigErrors};
pub use genome::{
    BreakerGenes, ConcurrencyGenes, Genome, MAX_REPLAY_BYTES, RateLimitGenes, RateLimitKey,
    RetryCondition, RetryGenes,
};
pub use load::{parse, parse_fault_rule};
pub use schema::{
    AdminConfig, AggregateMode, ApprovalMode, CanaryConfig, ChaosConfig, Config, EvolutionConfig,
    FaultConfig, FaultStage, GuardianConfig, Guardrail, HostMatch, ListenerConfig,
    ListenerProtocol, ObjectiveWeights, Objectives, RouteConfig, RouteMatch, RuntimeConfig,
    ServerTls, StoreConfig, UpstreamConfig, UpstreamProtocol, UpstreamTls, WatchConfig,
};
pub use units::{ByteRate, ByteSize, HumanDuration};
pub use validate::{
    MAX_ABORT_BODY_BYTES, MAX_FAULT_DELAY_MS, MAX_FAULT_RULES, MAX_NAME_BYTES,
    MAX_THROTTLE_BYTES_PER_SEC, MAX_TRUNCATE_BYTES, fault_rule_checks, scenario_problem,
};
