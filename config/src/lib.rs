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

pub use error::{ConfigError, ConfigErrors};
pub use genome::{
    BreakerGenes, ConcurrencyGenes, Genome, MAX_REPLAY_BYTES, RateLimitGenes, RateLimitKey,
    RetryCondition, RetryGenes,
};
pub use load::{parse, parse_fault_rule};
pub use schema::{
    AdminConfig, ApprovalMode, ChaosConfig, Config, EvolutionConfig, FaultConfig, FaultStage,
    Guardrail, HostMatch, ListenerConfig, ListenerProtocol, ObjectiveWeights, Objectives,
    RouteConfig, RouteMatch, RuntimeConfig, ServerTls, StoreConfig, UpstreamConfig,
    UpstreamProtocol, UpstreamTls,
};
pub use units::{ByteRate, ByteSize, HumanDuration};
pub use validate::{
    MAX_ABORT_BODY_BYTES, MAX_FAULT_DELAY_MS, MAX_FAULT_RULES, MAX_NAME_BYTES,
    MAX_THROTTLE_BYTES_PER_SEC, MAX_TRUNCATE_BYTES, fault_rule_checks,
};
