//! The guardian (DESIGN §7.6): what stands between a candidate genome and live traffic.
//!
//! - [`guardrails`]: per-gene bounds, the most one proposal may move a gene, frozen genes, and
//!   the invariants that always hold. Evolution repairs or drops every genome against them
//!   before evaluating it, so an unacceptable genome is never proposed.
//! - [`proposal`]: a candidate genome with its evidence, and its states.
//! - [`approval`]: who counts as an approver, and when a proposal is approved or rejected.
//! - [`expiry`]: pending proposals past their TTL or their base generation.
//! - [`lineage`]: every genome a route has run, and how the config file and the lineage meet
//!   at start-up and on reload.
//! - [`service`]: the guardian at run time: apply, watch, rollback, restore, reload.
//! - [`canary`]: the judge of a candidate against the stable cohort, live.
//! - [`watch`]: the judge of a genome after its swap.
//! - [`metrics`]: the proposal gauge and counter, and the call that keeps them current.

pub mod approval;
pub mod canary;
pub mod expiry;
pub mod guardrails;
pub mod lineage;
pub mod metrics;
pub mod proposal;
pub mod series;
pub mod service;
pub mod watch;

pub use service::{Guardian, GuardianError};
