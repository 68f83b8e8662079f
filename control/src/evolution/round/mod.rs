//! Evolution rounds (DESIGN §7.4): one round takes a route from its telemetry to a proposal,
//! or to the reason there is none.

mod run;
pub mod service;

use serde::{Deserialize, Serialize};

pub use run::{Verdict, evolve, predict};
pub use service::{Evolution, ProposeError, RoundError};

/// A round, as stored and as `GET /v1/evolution/rounds` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Round {
    /// Its id (assigned by the store).
    pub id: i64,
    /// The route.
    pub route: String,
    /// Where it stands.
    pub state: RoundState,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it ended (RFC 3339), once it has.
    pub ended_at: Option<String>,
    /// Generations run.
    pub generations: u32,
    /// Distinct genomes evaluated.
    pub evaluations: u32,
    /// The incumbent's fitness on the full evaluation.
    pub incumbent_fitness: Option<f64>,
    /// The best genome's.
    pub best_fitness: Option<f64>,
    /// The proposal it made, if any.
    pub proposal_id: Option<i64>,
    /// How it ended: `proposed`, `no_improvement`, or why it was skipped or failed.
    pub reason: Option<String>,
    /// `proposed`, `no_improvement`, `skipped` or `failed` (the metric's `result` label),
    /// once it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<RoundResult>,
    /// The vault patterns its first generation started from, best fitting first.
    #[serde(default)]
    pub patterns: Vec<String>,
}

/// Where a round stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoundState {
    /// Simulating.
    Running,
    /// Ended with or without a proposal.
    Completed,
    /// Ended in an error.
    Failed,
    /// Not run: the route lacked telemetry, evolution is off for it, or its model is not
    /// trusted.
    Skipped,
}

/// How a round ended (`rafael_evolution_rounds_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoundResult {
    /// It made a proposal.
    Proposed,
    /// Nothing beat the incumbent by the margin.
    NoImprovement,
    /// It did not run.
    Skipped,
    /// It failed.
    Failed,
}

// === impl Round ===

impl Round {
    /// A round of `route` that starts now (at `started_at`), before the store gives it an id.
    pub fn running(route: &str, started_at: String) -> Self {
        Self {
            id: 0,
            route: route.to_owned(),
            state: RoundState::Running,
            started_at,
            ended_at: None,
            generations: 0,
            evaluations: 0,
            incumbent_fitness: None,
            best_fitness: None,
            proposal_id: None,
            reason: None,
            result: None,
            patterns: Vec::new(),
        }
    }
}

// === impl RoundState ===

impl RoundState {
    /// Its name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }
}

// === impl RoundResult ===

impl RoundResult {
    /// Its label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Proposed => "proposed",
            Self::NoImprovement => "no_improvement",
            Self::Skipped => "skipped",
            Self::Failed => "failed",
        }
    }
}
