//! Rounds in a running rafael: started on demand (`POST /v1/evolution/{route}/run`) or every
//! `[evolution].interval`, each on its own low-priority thread so a round never competes with
//! the data plane for CPU time, stored, audited (`evolution.round`, `proposal.created`) and
//! counted (`rafael_evolution_rounds_total{route,result}`).

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex, PoisonError},
    time::{Instant, SystemTime},
};

use metrics::{counter, gauge};
use rafael_proxy::SnapshotHandle;
use serde_json::json;
use tracing::{info, warn};

use super::{Round, RoundResult, RoundState, evolve, run::predict};
use crate::{
    audit::{AuditLog, action},
    evolution::model::{FitError, Model, fit_route},
    guardian::{
        guardrails::{Guardrails, Violation, check},
        metrics::proposal_entered,
        proposal::{
            GuardrailVerdict, ModelEvidence, Passed, Proposal, ProposalState, Source, diff,
        },
    },
    store::{Store, StoreError, now},
};

/// `rafael_evolution_rounds_total{route,result}`.
pub const ROUNDS_TOTAL: &str = "rafael_evolution_rounds_total";
/// `rafael_evolution_best_fitness{route}`.
pub const BEST_FITNESS: &str = "rafael_evolution_best_fitness";
/// `rafael_evolution_round_seconds{route}`: how long the last round took.
pub const ROUND_SECONDS: &str = "rafael_evolution_round_seconds";
/// The actor of evolution's audit entries.
const ACTOR: &str = "rafael";

/// Starts and records rounds.
#[derive(Debug, Clone)]
pub struct Evolution {
    snapshots: SnapshotHandle,
    store: Arc<Store>,
    audit: AuditLog,
    /// Routes with a round running: one at a time per route.
    running: Arc<Mutex<BTreeSet<String>>>,
    /// Told of every proposal made (with `approval = "auto"` it approves and applies it).
    guardian: Option<crate::guardian::Guardian>,
}

/// Why a round could not start.
#[derive(Debug, thiserror::Error)]
pub enum RoundError {
    /// No live route has this name.
    #[error("no route named {0:?}")]
    NoSuchRoute(String),
    /// A round is running on the route already.
    #[error("a round is already running on route {0:?}")]
    Busy(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a hand-written proposal was not made.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// No live route has this name.
    #[error("no route named {0:?}")]
    NoSuchRoute(String),
    /// The genome is the route's live one.
    #[error("the genome is route {0:?}'s live genome: nothing to propose")]
    Unchanged(String),
    /// It breaks guardrails or invariants (each with the gene's key path and the rule).
    #[error("refused by the guardrails: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Refused(Vec<Violation>),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

// === impl Evolution ===

impl Evolution {
    /// Rounds over the routes of `snapshots`, recorded in `store` and `audit`.
    pub fn new(snapshots: SnapshotHandle, store: Arc<Store>, audit: AuditLog) -> Self {
        Self {
            snapshots,
            store,
            audit,
            running: Arc::default(),
            guardian: None,
        }
    }

    /// Hands every proposal made to `guardian`.
    pub fn with_guardian(mut self, guardian: crate::guardian::Guardian) -> Self {
        self.guardian = Some(guardian);
        self
    }

    /// Starts a round on `route` and returns it as stored (`running`, or `skipped` with the
    /// reason when the route cannot evolve now). Blocking: call from the blocking pool.
    pub fn start(&self, route: &str, seed: Option<u64>) -> Result<Round, RoundError> {
        let snapshot = self.snapshots.load();
        let Some(index) = snapshot
            .config()
            .routes
            .iter()
            .position(|r| r.name == route)
        else {
            return Err(RoundError::NoSuchRoute(route.to_owned()));
        };
        {
            let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            if !running.insert(route.to_owned()) {
                return Err(RoundError::Busy(route.to_owned()));
            }
        }
        let mut round = Round::running(route, now());
        let inserted = self.store.insert_round(&round);
        round.id = match inserted {
            Ok(id) => id,
            Err(error) => {
                self.release(route);
                return Err(error.into());
            }
        };
        if !snapshot.config().routes[index].evolve {
            let reason =
                format!("evolution is off for this route (routes[{index}].evolve = false)");
            return Ok(self.finish_skipped(round, reason));
        }
        let this = self.clone();
        let mut background = round.clone();
        let seed = seed.unwrap_or(1);
        let spawned = std::thread::Builder::new()
            .name("rafael-evolve".into())
            .spawn(move || {
                // Below the data plane's threads: a round may take every idle cycle, never one
                // a request is waiting for.
                crate::evolution::lower_priority();
                this.run(&mut background, seed);
                this.release(&background.route);
            });
        if let Err(error) = spawned {
            let reason = format!("cannot start the round's thread: {error}");
            round.state = RoundState::Failed;
            round.result = Some(RoundResult::Failed);
            round.reason = Some(reason);
            round.ended_at = Some(now());
            self.record(&round);
            self.release(route);
        }
        Ok(round)
    }

    /// Starts a round on every route that evolves, one after the other, every `interval`.
    pub fn spawn_timer(&self, interval: std::time::Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let snapshot = this.snapshots.load();
                let routes: Vec<String> = snapshot
                    .config()
                    .routes
                    .iter()
                    .filter(|r| r.evolve)
                    .map(|r| r.name.clone())
                    .collect();
                for route in routes {
                    let this = this.clone();
                    let started =
                        tokio::task::spawn_blocking(move || this.start(&route, None)).await;
                    if let Ok(Err(error)) = started {
                        warn!(%error, "evolution round did not start");
                    }
                }
            }
        })
    }

    fn release(&self, route: &str) {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(route);
    }

    /// The round's work, on its thread.
    fn run(&self, round: &mut Round, seed: u64) {
        let started = Instant::now();
        let snapshot = self.snapshots.load();
        let config = snapshot.config().clone();
        let route = round.route.clone();
        let model = match fit_route(&self.snapshots, &route) {
            Ok(model) => model,
            Err(FitError::NotEnoughTelemetry { requests, needed }) => {
                let reason = format!("not enough telemetry: {requests} requests, {needed} needed");
                self.finish_skipped(round.clone(), reason);
                return;
            }
            Err(error) => {
                self.finish_skipped(round.clone(), error.to_string());
                return;
            }
        };
        let trusted = model.fidelity.as_ref().is_some_and(|f| f.trusted);
        if !trusted {
            let reason = model
                .fidelity
                .as_ref()
                .and_then(|f| f.reason.clone())
                .unwrap_or_else(|| "model not trusted".into());
            self.finish_skipped(round.clone(), reason);
            return;
        }
        let Some(live) = snapshot.route(&route) else {
            self.finish_skipped(round.clone(), format!("route {route:?} is gone"));
            return;
        };
        let incumbent = live.policy().clone();
        let base_generation = live.live().generation();
        // The vault's patterns that fit this model; a store that cannot list its own is no
        // reason to skip the round, the built-in ones are always there.
        let patterns = crate::vault::all(&self.store).unwrap_or_else(|error| {
            warn!(%error, "cannot read the vault's stored patterns; the round uses the built-in ones");
            crate::vault::catalogue().to_vec()
        });
        let seeds = crate::vault::seeds(&patterns, &model, &incumbent, &route);
        round.patterns = seeds.iter().map(|(name, _)| name.clone()).collect();
        let seeds: Vec<_> = seeds.into_iter().map(|(_, genome)| genome).collect();
        let verdict = evolve(&model, &incumbent, &config, seed, &seeds);
        round.generations = verdict.generations;
        round.evaluations = verdict.evaluations;
        round.incumbent_fitness = Some(verdict.incumbent_fitness);
        round.best_fitness = Some(verdict.best_fitness);
        round.reason = Some(verdict.reason.clone());
        round.result = Some(verdict.result);
        round.state = RoundState::Completed;
        if let Some(candidate) = verdict.candidate {
            let proposal = Proposal {
                id: 0,
                route: route.clone(),
                source: Source::Evolution,
                author: ACTOR.into(),
                state: ProposalState::Pending,
                created_at: now(),
                expires_at: humantime::format_rfc3339_seconds(
                    SystemTime::now() + config.guardian.proposal_ttl.get(),
                )
                .to_string(),
                base_generation,
                diff: diff(&incumbent, &candidate),
                genome: candidate,
                predicted: verdict.predicted,
                model: evidence(&model),
                guardrails: GuardrailVerdict::Passed(Passed::Passed),
                approvals: Vec::new(),
                canary: None,
                watch: None,
                round_id: Some(round.id),
            };
            match self.propose(proposal) {
                Ok(id) => round.proposal_id = Some(id),
                Err(error) => {
                    round.state = RoundState::Failed;
                    round.result = Some(RoundResult::Failed);
                    round.reason = Some(format!("cannot store the proposal: {error}"));
                }
            }
        }
        round.ended_at = Some(now());
        gauge!(BEST_FITNESS, "route" => route.clone()).set(verdict.best_fitness);
        gauge!(ROUND_SECONDS, "route" => route.clone()).set(started.elapsed().as_secs_f64());
        info!(
            route,
            round = round.id,
            result = ?round.result,
            seconds = started.elapsed().as_secs_f64(),
            "evolution round"
        );
        self.record(round);
    }

    /// A hand-written proposal of `genome` for `route` by `author` (a token's name): checked
    /// against the guardrails and invariants as evolution's are (a refusal is audited as
    /// `guardrail.refused` and nothing is stored), given the same simulated evidence on the
    /// route's model fitted now (none, untrusted, when the route lacks telemetry), stored
    /// `pending`, superseding older pending ones, and audited. Blocking: the evidence takes
    /// a round's full runs; call it from a low-priority thread.
    pub fn propose_by_hand(
        &self,
        route: &str,
        genome: rafael_config::Genome,
        author: &str,
    ) -> Result<Proposal, ProposeError> {
        let snapshot = self.snapshots.load();
        let config = snapshot.config().clone();
        let live = snapshot
            .route(route)
            .ok_or_else(|| ProposeError::NoSuchRoute(route.to_owned()))?;
        let incumbent = live.policy().clone();
        let base_generation = live.live().generation();
        if genome == incumbent {
            return Err(ProposeError::Unchanged(route.to_owned()));
        }
        let violations = check(&genome, &incumbent, &Guardrails::from_config(&config));
        if !violations.is_empty() {
            if let Err(error) = self.audit.append(
                author,
                action::GUARDRAIL_REFUSED,
                &format!("route/{route}"),
                json!({ "source": "manual", "violations": violations, "genome": genome }),
            ) {
                warn!(%error, "cannot append to the audit log");
            }
            return Err(ProposeError::Refused(violations));
        }
        let (predicted, model) = match fit_route(&self.snapshots, route) {
            Ok(model) => {
                // Seed 1, as a round without one: the same telemetry gives the same evidence.
                (
                    predict(&model, &incumbent, &genome, &config, 1),
                    evidence(&model),
                )
            }
            Err(error) => {
                info!(route, %error, "hand-written proposal without simulated evidence");
                (
                    Vec::new(),
                    ModelEvidence {
                        fitted_at: String::new(),
                        fidelity: None,
                        trusted: false,
                    },
                )
            }
        };
        let mut proposal = Proposal {
            id: 0,
            route: route.to_owned(),
            source: Source::Manual,
            author: author.to_owned(),
            state: ProposalState::Pending,
            created_at: now(),
            expires_at: humantime::format_rfc3339_seconds(
                SystemTime::now() + config.guardian.proposal_ttl.get(),
            )
            .to_string(),
            base_generation,
            diff: diff(&incumbent, &genome),
            genome,
            predicted,
            model,
            guardrails: GuardrailVerdict::Passed(Passed::Passed),
            approvals: Vec::new(),
            canary: None,
            watch: None,
            round_id: None,
        };
        proposal.id = self.propose(proposal.clone())?;
        // The guardian may have moved it on (approved and applied it) already.
        Ok(self.store.proposal(proposal.id)?.unwrap_or(proposal))
    }

    /// Stores a proposal, supersedes older pending ones of its route, and audits both.
    fn propose(&self, mut proposal: Proposal) -> Result<i64, StoreError> {
        let id = self.store.insert_proposal(&proposal)?;
        proposal.id = id;
        for superseded in self.store.supersede_pending(&proposal.route, id)? {
            proposal_entered(Some(ProposalState::Pending), ProposalState::Superseded);
            self.audit_entry(
                action::PROPOSAL_SUPERSEDED,
                &format!("proposal/{superseded}"),
                json!({"by": id}),
            );
        }
        let actor = match proposal.source {
            Source::Evolution => ACTOR,
            Source::Manual => proposal.author.as_str(),
        };
        let created = self.audit.append(
            actor,
            action::PROPOSAL_CREATED,
            &format!("proposal/{id}"),
            json!({
                "route": proposal.route,
                "source": proposal.source,
                "round": proposal.round_id,
                "diff": proposal.diff,
                "base_generation": proposal.base_generation,
            }),
        );
        if let Err(error) = created {
            warn!(%error, "cannot append to the audit log");
        }
        proposal_entered(None, proposal.state);
        if let Some(guardian) = &self.guardian
            && let Err(error) = guardian.proposed(id)
        {
            warn!(%error, proposal = id, "the guardian could not act on the proposal");
        }
        Ok(id)
    }

    fn finish_skipped(&self, mut round: Round, reason: String) -> Round {
        round.state = RoundState::Skipped;
        round.result = Some(RoundResult::Skipped);
        round.reason = Some(reason);
        round.ended_at = Some(now());
        self.record(&round);
        self.release(&round.route);
        round
    }

    /// Stores the round's end, audits and counts it.
    fn record(&self, round: &Round) {
        if let Err(error) = self.store.update_round(round) {
            warn!(%error, round = round.id, "cannot store the round");
        }
        let result = round.result.unwrap_or(RoundResult::Failed);
        counter!(ROUNDS_TOTAL, "route" => round.route.clone(), "result" => result.as_str())
            .increment(1);
        self.audit_entry(
            action::EVOLUTION_ROUND,
            &format!("route/{}", round.route),
            json!({
                "round": round.id,
                "result": result.as_str(),
                "reason": round.reason,
                "proposal": round.proposal_id,
                "incumbent_fitness": round.incumbent_fitness,
                "best_fitness": round.best_fitness,
                "evaluations": round.evaluations,
            }),
        );
    }

    fn audit_entry(&self, action: &str, target: &str, details: serde_json::Value) {
        if let Err(error) = self.audit.append(ACTOR, action, target, details) {
            warn!(%error, action, "cannot append to the audit log");
        }
    }
}

/// The model summary a proposal keeps.
fn evidence(model: &Model) -> ModelEvidence {
    ModelEvidence {
        fitted_at: model.fitted_at.clone(),
        trusted: model.fidelity.as_ref().is_some_and(|f| f.trusted),
        fidelity: model.fidelity.clone(),
    }
}
