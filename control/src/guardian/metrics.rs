//! The proposal metrics of DESIGN §6: `rafael_proposals_pending` (a gauge) and
//! `rafael_proposals_total{state}` (a counter of proposals entering each state).
//!
//! Whoever moves a proposal calls [`proposal_entered`] once the store holds the new state; at
//! start-up [`set_pending`] seeds the gauge from the store, because pending proposals outlive
//! the process that counted them.

use metrics::{counter, describe_counter, describe_gauge, gauge};

use crate::guardian::proposal::ProposalState;

/// Proposals waiting for approval now.
pub const PROPOSALS_PENDING: &str = "rafael_proposals_pending";

/// Proposals that entered each state, by `state`.
pub const PROPOSALS_TOTAL: &str = "rafael_proposals_total";

/// Rollbacks, by route and reason (`goodput`, `p99` from the watch; `manual` by hand).
pub const ROLLBACKS_TOTAL: &str = "rafael_guardian_rollbacks_total";

/// Registers HELP text for the proposal metrics.
pub fn describe() {
    describe_counter!(
        ROLLBACKS_TOTAL,
        "Genomes rolled back, by route and reason (goodput or p99 from the watch, manual by hand)."
    );
    describe_gauge!(PROPOSALS_PENDING, "Proposals waiting for approval now.");
    describe_gauge!(
        super::service::CANARY_ACTIVE,
        "1 while a canary runs on the route, else 0."
    );
    describe_counter!(
        rafael_proxy::snapshot::CANARY_REQUESTS_TOTAL,
        "Requests of a route with a canary, by cohort (stable, canary) and class (success, client_error, server_error)."
    );
    describe_counter!(
        PROPOSALS_TOTAL,
        "Proposals that entered each state (pending when made, then approved, applied, kept, rolled_back, rejected, expired or superseded)."
    );
}

/// Sets the pending gauge to `count`, the store's count of pending proposals.
pub fn set_pending(count: u64) {
    // A gauge is an f64; counts of proposals are far below 2^53.
    gauge!(PROPOSALS_PENDING).set(count as f64);
}

/// Counts a proposal entering `to` from `from` (`None` for a new proposal), and moves the
/// pending gauge when it starts or stops waiting.
pub fn proposal_entered(from: Option<ProposalState>, to: ProposalState) {
    counter!(PROPOSALS_TOTAL, "state" => to.as_str()).increment(1);
    let was_pending = from == Some(ProposalState::Pending);
    let is_pending = to == ProposalState::Pending;
    if is_pending && !was_pending {
        gauge!(PROPOSALS_PENDING).increment(1.0);
    } else if was_pending && !is_pending {
        gauge!(PROPOSALS_PENDING).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;

    #[test]
    fn the_gauge_follows_proposals_into_and_out_of_pending() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            // Two left pending by the previous process, then one made, two decided, one
            // applied after its approval.
            set_pending(2);
            proposal_entered(None, ProposalState::Pending);
            proposal_entered(Some(ProposalState::Pending), ProposalState::Approved);
            proposal_entered(Some(ProposalState::Pending), ProposalState::Superseded);
            proposal_entered(Some(ProposalState::Approved), ProposalState::Applied);
        });
        let text = handle.render();
        let value = |series: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
                .and_then(|v| v.parse::<f64>().ok())
        };
        assert_eq!(value(PROPOSALS_PENDING), Some(1.0), "{text}");
        for state in ["pending", "approved", "superseded", "applied"] {
            let series = format!("{PROPOSALS_TOTAL}{{state=\"{state}\"}}");
            assert_eq!(value(&series), Some(1.0), "{series}: {text}");
        }
        assert!(text.contains("# HELP rafael_proposals_pending"), "{text}");
    }
}
