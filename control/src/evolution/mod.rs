//! The learning half of the control plane (DESIGN §7.1-7.4): fit a model of each route's
//! upstream from its telemetry, simulate genomes against it under chaos, score them and evolve
//! better ones.
//!
//! - [`model`]: what the upstream is like (service time and its growth with load, capacity,
//!   failures and their bursts, bad regimes, arrivals, abandoned work), fitted from telemetry;
//! - [`scenario`]: the conditions a genome is simulated under;
//! - [`sim`]: the discrete-event simulator running the real engines against the model.

pub mod fitness;
pub mod genes;
pub mod model;
pub mod round;
pub mod scenario;
pub mod search;
pub mod sim;
pub mod simulate;
#[cfg(test)]
mod testing;

/// Registers HELP text for the control plane's evolution metrics.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        model::check::MODEL_ERROR,
        "Relative error of the model check (goodput, p50, p99, amplification), by route."
    );
}
