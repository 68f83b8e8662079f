//! Proposals (DESIGN §7.5): a candidate genome for one route with its evidence, and the
//! states it moves through.
//!
//! `pending → approved → (canary →) applied → kept | rolled_back`, or `rejected`, `expired`
//! (its TTL passed, or the route's genome changed under it), `superseded` (a newer proposal for
//! the same route). Issue 9 creates proposals and leaves them `pending`; the guardian (issue 10)
//! moves them on.

use rafael_config::Genome;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    evolution::{
        fitness::Objectives,
        genes::{GENES, SECTIONS, has_section, section_value},
        model::Fidelity,
    },
    guardian::{approval::Decision, guardrails::Violation},
};

/// A proposal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// Its id (assigned by the store).
    pub id: i64,
    /// The route.
    pub route: String,
    /// `evolution` or `manual`.
    pub source: Source,
    /// Who made it: `rafael` for evolution, the token's name for a hand-written one.
    pub author: String,
    /// Where it stands.
    pub state: ProposalState,
    /// When it was made (RFC 3339).
    pub created_at: String,
    /// When a pending proposal expires (RFC 3339).
    pub expires_at: String,
    /// The route's generation it was made against.
    pub base_generation: u64,
    /// The candidate genome.
    pub genome: Genome,
    /// What changes, gene by gene, from the genome of `base_generation`.
    pub diff: Vec<GeneChange>,
    /// Simulated impact per scenario.
    pub predicted: Vec<Predicted>,
    /// The model it was evaluated on, and how far to trust it.
    pub model: ModelEvidence,
    /// `"passed"`, or the rules it breaks.
    pub guardrails: GuardrailVerdict,
    /// Approvals so far.
    pub approvals: Vec<Approval>,
    /// The canary, once one runs (issue 10).
    pub canary: Option<Value>,
    /// The watch after a swap (issue 10).
    pub watch: Option<Value>,
    /// The evolution round that made it, when evolution did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_id: Option<i64>,
}

/// Who made a proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// An evolution round.
    Evolution,
    /// A person (`POST /v1/proposals`).
    Manual,
}

/// Where a proposal stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProposalState {
    /// Waiting for approval.
    Pending,
    /// Approved, not yet applied.
    Approved,
    /// Serving a share of the route's requests as a canary.
    Canary,
    /// Live, under watch.
    Applied,
    /// Passed its watch.
    Kept,
    /// Undone by the watch or by hand.
    RolledBack,
    /// Refused by an approver, a guardrail or its canary.
    Rejected,
    /// Its TTL passed, or the route's genome moved past its base generation.
    Expired,
    /// A newer proposal for the same route replaced it.
    Superseded,
}

/// One gene that changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneChange {
    /// Its key path (`retry.max_attempts`; a section's name when the section comes or goes).
    pub gene: String,
    /// Before (`null` when absent).
    pub from: Value,
    /// After (`null` when absent).
    pub to: Value,
}

/// The simulated impact in one scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Predicted {
    /// The scenario's name.
    pub scenario: String,
    /// The scenario drives the model past what was observed.
    pub extrapolated: bool,
    /// The incumbent's objectives (means over the seeds).
    pub incumbent: Objectives,
    /// The candidate's.
    pub candidate: Objectives,
}

/// The model behind a proposal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelEvidence {
    /// When it was fitted.
    pub fitted_at: String,
    /// The model check.
    pub fidelity: Option<Fidelity>,
    /// Whether the model check passed.
    pub trusted: bool,
}

/// The guardrail check's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum GuardrailVerdict {
    /// `"passed"`.
    Passed(Passed),
    /// The rules broken.
    Refused(Vec<Violation>),
}

/// The word `passed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Passed {
    /// Every rule holds.
    Passed,
}

/// One approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    /// The approver's token name.
    pub by: String,
    /// When (RFC 3339).
    pub at: String,
    /// Their comment.
    pub comment: Option<String>,
    /// For or against (`approve` when absent: stored before rejects were kept here).
    #[serde(default)]
    pub decision: Decision,
}

// === impl ProposalState ===

impl ProposalState {
    /// Every state, in the order a proposal moves through them (for filters that name one).
    pub const ALL: [Self; 9] = [
        Self::Pending,
        Self::Approved,
        Self::Canary,
        Self::Applied,
        Self::Kept,
        Self::RolledBack,
        Self::Rejected,
        Self::Expired,
        Self::Superseded,
    ];

    /// The state named `name` ([`ProposalState::as_str`]'s spelling).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == name)
    }

    /// Its name, as stored and as the API's `state` filter spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Canary => "canary",
            Self::Applied => "applied",
            Self::Kept => "kept",
            Self::RolledBack => "rolled_back",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Superseded => "superseded",
        }
    }
}

/// What changes from `before` to `after`, gene by gene: sections that come or go by their
/// name, numeric genes by their key path, and the condition sets and `adaptive` flag.
pub fn diff(before: &Genome, after: &Genome) -> Vec<GeneChange> {
    let mut changes = Vec::new();
    let json = |value: Option<serde_json::Value>| value.unwrap_or(Value::Null);
    // A section that comes or goes is one change (its genes with it); the timeout is a gene.
    let changed_sections: Vec<&str> = SECTIONS
        .iter()
        .copied()
        .filter(|s| *s != "timeout" && has_section(before, s) != has_section(after, s))
        .collect();
    for section in &changed_sections {
        changes.push(GeneChange {
            gene: (*section).to_owned(),
            from: section_value(before, section),
            to: section_value(after, section),
        });
    }
    for gene in GENES {
        if changed_sections.contains(&gene.section) {
            continue;
        }
        let (a, b) = ((gene.get)(before), (gene.get)(after));
        if a != b {
            // An integer gene reads as one (`3 → 2`, as DESIGN §7.5 shows it), not `3.0`.
            let value = |v: f64| {
                if gene.integer && v.fract() == 0.0 && v.abs() < 9.0e15 {
                    Value::from(v as i64)
                } else {
                    Value::from(v)
                }
            };
            changes.push(GeneChange {
                gene: gene.path.to_owned(),
                from: json(a.map(value)),
                to: json(b.map(value)),
            });
        }
    }
    if let (Some(a), Some(b)) = (&before.retry, &after.retry) {
        if a.retry_on != b.retry_on {
            changes.push(GeneChange {
                gene: "retry.retry_on".into(),
                from: json(serde_json::to_value(&a.retry_on).ok()),
                to: json(serde_json::to_value(&b.retry_on).ok()),
            });
        }
    }
    if let (Some(a), Some(b)) = (&before.circuit_breaker, &after.circuit_breaker) {
        if a.failure_on != b.failure_on {
            changes.push(GeneChange {
                gene: "circuit_breaker.failure_on".into(),
                from: json(serde_json::to_value(&a.failure_on).ok()),
                to: json(serde_json::to_value(&b.failure_on).ok()),
            });
        }
    }
    if let (Some(a), Some(b)) = (&before.concurrency, &after.concurrency) {
        if a.adaptive != b.adaptive {
            changes.push(GeneChange {
                gene: "concurrency.adaptive".into(),
                from: Value::from(a.adaptive),
                to: Value::from(b.adaptive),
            });
        }
    }
    changes
}

#[cfg(test)]
pub(crate) mod tests {
    use rafael_config::RetryGenes;
    use serde_json::json;

    use super::*;
    use crate::evolution::model::Check;

    fn objectives(goodput: f64) -> Objectives {
        Objectives {
            goodput,
            latency: 0.1,
            amplification: 1.2,
            rejected: 0.0,
            fitness: goodput - 0.1,
        }
    }

    /// A pending evolution proposal for `route` made at `created_at`.
    pub(crate) fn pending(route: &str, created_at: &str) -> Proposal {
        Proposal {
            id: 0,
            route: route.to_owned(),
            source: Source::Evolution,
            author: "rafael".to_owned(),
            state: ProposalState::Pending,
            created_at: created_at.to_owned(),
            expires_at: "2025-01-02T00:00:00Z".to_owned(),
            base_generation: 3,
            genome: Genome {
                retry: Some(RetryGenes {
                    max_attempts: 2,
                    ..RetryGenes::default()
                }),
                ..Genome::default()
            },
            diff: vec![GeneChange {
                gene: "retry.max_attempts".to_owned(),
                from: json!(3),
                to: json!(2),
            }],
            predicted: vec![Predicted {
                scenario: "steady".to_owned(),
                extrapolated: false,
                incumbent: objectives(0.95),
                candidate: objectives(0.97),
            }],
            model: ModelEvidence {
                fitted_at: "2025-01-01T00:00:00Z".to_owned(),
                fidelity: Some(Fidelity {
                    goodput: Check::new(0.95, 0.96),
                    p50_ms: Check::new(20.0, 21.0),
                    p99_ms: Check::new(200.0, 190.0),
                    amplification: Check::new(1.2, 1.2),
                    trusted: true,
                    reason: None,
                }),
                trusted: true,
            },
            guardrails: GuardrailVerdict::Passed(Passed::Passed),
            approvals: Vec::new(),
            canary: None,
            watch: None,
            round_id: Some(1),
        }
    }
}
