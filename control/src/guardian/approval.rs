//! Approving and rejecting proposals (DESIGN §7.6): who counts, and when a proposal is
//! decided.
//!
//! A `manual` proposal needs `[guardian].approvals_required` approvals from distinct people,
//! none of them its author: the same approver approving twice counts once, and a second call
//! changes nothing. One reject by anyone who may approve ends it. The author may not approve
//! their own proposal, but may reject it (withdraw it). Only a `pending` proposal can be
//! decided on, or one whose canary ended without a verdict (`inconclusive`, `interrupted`):
//! then one approver promotes it, or rejects it. Every decision is kept on the proposal with
//! its comment.
//!
//! This is the pure part, a function of the proposal and the decision; the admin API stores
//! the result and audits it (`proposal.approved`, `proposal.rejected`).

use serde::{Deserialize, Serialize};

use super::proposal::{Approval, Proposal, ProposalState};

/// An approver's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// For.
    #[default]
    Approve,
    /// Against: ends the proposal.
    Reject,
}

/// What a decision did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decided {
    /// The proposal's state afterwards.
    pub state: ProposalState,
    /// False when it changed nothing (an approver approving again).
    pub counted: bool,
    /// Distinct approvals so far.
    pub approvals: u32,
    /// Approvals needed.
    pub required: u32,
}

/// Why a decision is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The proposal is past `pending`.
    #[error("proposal {id} is {state}: only a pending proposal can be approved or rejected")]
    NotPending {
        /// The proposal.
        id: i64,
        /// Its state.
        state: &'static str,
    },
    /// The author tried to approve their own proposal.
    #[error("{by} wrote proposal {id}: its author may reject it but never approve it")]
    Author {
        /// The proposal.
        id: i64,
        /// The author.
        by: String,
    },
}

// === impl Decision ===

impl Decision {
    /// Its name, as the audit action's suffix and the API spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Reject => "reject",
        }
    }
}

/// Records `by`'s `decision` on `proposal` at `at` (RFC 3339) with `comment`, against
/// `required` distinct approvals, and moves it to `approved` or `rejected` when that settles
/// it.
pub fn decide(
    proposal: &mut Proposal,
    by: &str,
    decision: Decision,
    comment: Option<String>,
    at: String,
    required: u32,
) -> Result<Decided, Refusal> {
    // A canary that ended short of evidence (or with a restart) waits for one person to
    // promote or reject it: it was approved already, by as many as it needed.
    let waiting = canary_waiting(proposal);
    if proposal.state != ProposalState::Pending && !waiting {
        return Err(Refusal::NotPending {
            id: proposal.id,
            state: proposal.state.as_str(),
        });
    }
    if decision == Decision::Approve && by == proposal.author {
        return Err(Refusal::Author {
            id: proposal.id,
            by: by.to_owned(),
        });
    }
    let required = if waiting { 1 } else { required.max(1) };
    let already = proposal
        .approvals
        .iter()
        .any(|a| a.by == by && a.decision == Decision::Approve);
    // Promoting a waiting canary is a new decision, by whoever approved it before too.
    let counted = waiting || !(decision == Decision::Approve && already);
    if counted {
        proposal.approvals.push(Approval {
            by: by.to_owned(),
            at,
            comment,
            decision,
        });
    }
    let approvals = distinct_approvals(proposal);
    proposal.state = match decision {
        Decision::Reject => ProposalState::Rejected,
        Decision::Approve if waiting => ProposalState::Approved,
        Decision::Approve if approvals >= required => ProposalState::Approved,
        Decision::Approve => ProposalState::Pending,
    };
    Ok(Decided {
        state: proposal.state,
        counted,
        approvals,
        required,
    })
}

/// Whether `proposal`'s canary ended without a verdict (`inconclusive`, or `interrupted` by
/// a restart) and waits for a person to promote or reject it.
pub fn canary_waiting(proposal: &Proposal) -> bool {
    proposal.state == ProposalState::Canary
        && proposal
            .canary
            .as_ref()
            .and_then(|c| c["state"].as_str())
            .is_some_and(|s| s == "inconclusive" || s == "interrupted")
}

/// Distinct people who approved `proposal`, its author never among them.
pub fn distinct_approvals(proposal: &Proposal) -> u32 {
    let mut people: Vec<&str> = proposal
        .approvals
        .iter()
        .filter(|a| a.decision == Decision::Approve && a.by != proposal.author)
        .map(|a| a.by.as_str())
        .collect();
    people.sort_unstable();
    people.dedup();
    u32::try_from(people.len()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guardian::proposal::tests::pending;

    fn sample(author: &str) -> Proposal {
        Proposal {
            id: 7,
            author: author.to_owned(),
            ..pending("orders", "2026-12-01T11:00:00Z")
        }
    }

    fn approve(p: &mut Proposal, by: &str, required: u32) -> Result<Decided, Refusal> {
        decide(
            p,
            by,
            Decision::Approve,
            Some(format!("{by} agrees")),
            "2026-12-01T12:00:00Z".into(),
            required,
        )
    }

    #[test]
    fn two_distinct_approvers_approve_and_the_same_one_twice_counts_once() {
        let mut proposal = sample("alice");
        let first = approve(&mut proposal, "bob", 2).unwrap();
        assert_eq!(first.state, ProposalState::Pending);
        assert_eq!((first.approvals, first.required), (1, 2));
        let again = approve(&mut proposal, "bob", 2).unwrap();
        assert!(!again.counted);
        assert_eq!(again.state, ProposalState::Pending);
        assert_eq!(proposal.approvals.len(), 1);
        let second = approve(&mut proposal, "carol", 2).unwrap();
        assert_eq!(second.state, ProposalState::Approved);
        assert_eq!(second.approvals, 2);
        assert_eq!(
            proposal.approvals[1].comment.as_deref(),
            Some("carol agrees")
        );
        // Decided: nothing more counts.
        assert!(matches!(
            approve(&mut proposal, "dave", 2),
            Err(Refusal::NotPending {
                state: "approved",
                ..
            })
        ));
    }

    #[test]
    fn the_author_never_approves_but_may_withdraw_and_one_reject_ends_it() {
        let mut proposal = sample("alice");
        let refused = approve(&mut proposal, "alice", 1).unwrap_err();
        assert!(refused.to_string().contains("its author"), "{refused}");
        assert!(proposal.approvals.is_empty());
        approve(&mut proposal, "bob", 2).unwrap();
        let rejected = decide(
            &mut proposal,
            "carol",
            Decision::Reject,
            Some("too eager".into()),
            "2026-12-01T12:01:00Z".into(),
            2,
        )
        .unwrap();
        assert_eq!(rejected.state, ProposalState::Rejected);
        assert_eq!(proposal.approvals[1].decision, Decision::Reject);
        let mut own = sample("alice");
        let withdrawn = decide(
            &mut own,
            "alice",
            Decision::Reject,
            None,
            "2026-12-01T12:02:00Z".into(),
            1,
        )
        .unwrap();
        assert_eq!(withdrawn.state, ProposalState::Rejected);
    }

    #[test]
    fn an_approval_stored_before_decisions_were_kept_reads_as_an_approval() {
        let approval: Approval =
            serde_json::from_str(r#"{"by": "bob", "at": "2026-12-01T12:00:00Z", "comment": null}"#)
                .unwrap();
        assert_eq!(approval.decision, Decision::Approve);
    }
}
