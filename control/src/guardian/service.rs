//! The guardian in a running rafael: what happens to a proposal once it is approved, and to a
//! genome once it is live.
//!
//! - **Apply** ([`Guardian::apply`]): the approved genome goes live through `PolicyHandle`
//!   as a new generation of the route's lineage, recorded in the store *before* the swap (a
//!   crash between the two restarts on the recorded genome, which is the approved one).
//! - **Watch** ([`super::watch`]): for `[guardian].watch.duration` after the swap, at
//!   checkpoints, the route is judged; a confirmed regression rolls back.
//! - **Rollback** ([`Guardian::rollback`]): an earlier generation's genome goes live again, as
//!   a new generation that says which one it restores.
//! - **Restore** and **reload** ([`Guardian::restore`], [`Guardian::reload`]): the lineage and
//!   the config file reconciled (see [`super::lineage`]).
//!
//! Every change of a live genome, by any of these paths, holds one lock, so an apply never
//! interleaves with a reload or a rollback and each reads the generation the other left.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use metrics::{counter, gauge};
use rafael_config::{ApprovalMode, Config, ConfigErrors, Genome};
use rafael_proxy::{CanarySpec, SnapshotHandle, policy::Nanos};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{info, warn};

use super::{
    approval::{Decision, distinct_approvals},
    canary::{Cohort, CohortFigures, TestResult, compare},
    expiry::{Expiry, expire},
    lineage::{self, GenomeRecord, LineageSource},
    metrics::{ROLLBACKS_TOTAL, proposal_entered},
    proposal::{Approval, GuardrailVerdict, Proposal, ProposalState},
    watch::{self, Counterfactual, Figures, Finding},
};
use crate::{
    audit::{AuditLog, action},
    evolution::model::fit_route_since,
    store::{Store, StoreError, now},
    vault,
};

/// The actor of the guardian's own steps.
pub const ACTOR: &str = "rafael";
/// Most generations a lineage listing returns.
pub const MAX_LINEAGE: u32 = 1000;
/// Seconds before the swap the watch's first baseline covers, at least and at most.
const BASELINE_SECS: (u64, u64) = (60, 600);
/// `rafael_canary_active{route}`.
pub const CANARY_ACTIVE: &str = "rafael_canary_active";
/// Checkpoints per canary, and the shortest and longest time between two.
const CANARY_CHECKPOINTS: u32 = 10;
const CANARY_CHECKPOINT_EVERY: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(10));
/// Checkpoints per watch, and the shortest and longest time between two.
const CHECKPOINTS: u32 = 5;
const CHECKPOINT_EVERY: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(60));

/// The guardian's run-time half.
#[derive(Debug, Clone)]
pub struct Guardian {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    snapshots: SnapshotHandle,
    store: Arc<Store>,
    audit: AuditLog,
    /// Held across every change of a live genome.
    changes: Mutex<()>,
    /// The watch running on each route.
    watches: Mutex<BTreeMap<String, tokio::task::AbortHandle>>,
    /// Where watches run (the runtime the guardian was made on).
    runtime: Option<tokio::runtime::Handle>,
}

/// Why the guardian did not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum GuardianError {
    /// No live route has this name.
    #[error("no route named {0:?}")]
    NoSuchRoute(String),
    /// No proposal has this id.
    #[error("no proposal {0}")]
    NoSuchProposal(i64),
    /// The lineage holds no such generation.
    #[error("route {route:?} has no generation {generation}")]
    NoSuchGeneration {
        /// The route.
        route: String,
        /// The generation asked for.
        generation: u64,
    },
    /// The generation asked for is the one live.
    #[error("generation {generation} is route {route:?}'s live generation already")]
    AlreadyLive {
        /// The route.
        route: String,
        /// Its live generation.
        generation: u64,
    },
    /// The proposal is not in a state that can be applied.
    #[error("proposal {id} is {state}, not approved")]
    NotApproved {
        /// The proposal.
        id: i64,
        /// Its state.
        state: &'static str,
    },
    /// The route's genome changed under the proposal; it expired.
    #[error("proposal {id} expired: {reason}")]
    Expired {
        /// The proposal.
        id: i64,
        /// Why.
        reason: String,
    },
    /// The genome does not validate (each error with its key path).
    #[error("the genome is invalid: {0}")]
    Invalid(ConfigErrors),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The watch after a swap, as the proposal keeps it (`watch` in DESIGN §7.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchRecord {
    /// `watching`, `kept`, `rolled_back`, or `replaced` (another change made it moot).
    pub state: String,
    /// When the genome went live (RFC 3339).
    pub started_at: String,
    /// When the watch ends (RFC 3339).
    pub ends_at: String,
    /// The generation watched.
    pub generation: u64,
    /// The generation it replaced (what a rollback restores).
    pub previous_generation: u64,
    /// The route before the swap; `None` when it had no traffic.
    pub before: Option<Figures>,
    /// The route since the swap, at the last checkpoint.
    pub after: Option<Figures>,
    /// The replay of both genomes since the swap, when a checkpoint needed one.
    pub counterfactual: Option<Counterfactual>,
    /// What the checkpoints found, at the last one.
    pub findings: Vec<Finding>,
    /// How it ended, in words.
    pub reason: Option<String>,
}

/// A canary, as the proposal keeps it (`canary` in DESIGN §7.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryRecord {
    /// `running`, `passed`, `failed`, `inconclusive`, or `interrupted` (a restart, or the
    /// route's genome changed under it).
    pub state: String,
    /// Share of the route's requests it served, percent.
    pub percent: f64,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When its duration ends (RFC 3339).
    pub ends_at: String,
    /// Canary requests it needs for a verdict.
    pub min_requests: u32,
    /// The stable cohort, at the last checkpoint.
    pub stable: Option<CohortFigures>,
    /// The canary cohort, at the last checkpoint.
    pub canary: Option<CohortFigures>,
    /// The error-share test.
    pub errors: Option<TestResult>,
    /// The latency test (Mann-Whitney U).
    pub latency: Option<TestResult>,
    /// The verdict, in words.
    pub reason: Option<String>,
}

/// One canary in progress.
#[derive(Debug, Clone)]
struct CanaryTask {
    proposal: i64,
    route: String,
    generation: u64,
    since: Nanos,
    duration: Duration,
    min_requests: u64,
}

fn canary_record(proposal: &Proposal) -> Option<CanaryRecord> {
    proposal
        .canary
        .clone()
        .and_then(|c| serde_json::from_value(c).ok())
}

/// One watch in progress.
#[derive(Debug, Clone)]
struct WatchTask {
    proposal: i64,
    route: String,
    generation: u64,
    previous: Genome,
    /// The data plane clock at the swap.
    since: Nanos,
    /// The watch's length from the swap.
    duration: Duration,
}

/// What a checkpoint decided.
enum Step {
    Continue,
    Done,
}

// === impl Guardian ===

impl Guardian {
    /// The guardian of the routes of `snapshots`, keeping its records in `store` and `audit`.
    /// Watches run on the current tokio runtime (none outside one: then nothing is watched).
    pub fn new(snapshots: SnapshotHandle, store: Arc<Store>, audit: AuditLog) -> Self {
        Self {
            inner: Arc::new(Inner {
                snapshots,
                store,
                audit,
                changes: Mutex::new(()),
                watches: Mutex::new(BTreeMap::new()),
                runtime: tokio::runtime::Handle::try_current().ok(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner
            .changes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// At start-up, before traffic: installs on every route the genome its lineage says is
    /// live (the file's policy where it changed while rafael was down), records what is new,
    /// and resumes the watches a previous process left running. Blocking.
    pub fn restore(&self) -> Result<(), StoreError> {
        let _changes = self.lock();
        let config = self.inner.snapshots.load().config().clone();
        let decisions = lineage::restore(&config, &self.inner.store, &now())?;
        self.install_all(&decisions)?;
        lineage::remember_file(&config, &self.inner.store)?;
        drop(_changes);
        self.resume_watches()
    }

    /// Reloads `config` (a new config file) keeping every genome the file did not change (see
    /// [`lineage::reconcile`]); returns the new snapshot version. Blocking.
    pub fn reload(&self, config: Config) -> Result<u64, ConfigErrors> {
        let _changes = self.lock();
        let store_error = |e: StoreError| {
            let mut errors = ConfigErrors::default();
            errors.push("store", format!("cannot reconcile the lineage: {e}"));
            errors
        };
        let policies = self.inner.snapshots.policies();
        let decisions = lineage::reconcile(
            &config,
            &self.inner.store,
            |route| Some((policies.genome(route)?, policies.generation(route)?)),
            &now(),
        )
        .map_err(store_error)?;
        let mut kept = config.clone();
        for (route, decision) in kept.routes.iter_mut().zip(&decisions) {
            route.policy = decision.genome.clone();
        }
        let version = self.inner.snapshots.reload(kept)?;
        self.install_all(&decisions).map_err(store_error)?;
        lineage::remember_file(&config, &self.inner.store).map_err(store_error)?;
        Ok(version)
    }

    /// Makes each decision's genome and generation live where they are not, and records the
    /// generations that are new. Callers hold the lock.
    fn install_all(&self, decisions: &[lineage::Decision]) -> Result<(), StoreError> {
        let policies = self.inner.snapshots.policies();
        for decision in decisions {
            if let Some(record) = &decision.record {
                self.inner.store.insert_genome(record)?;
                // The first generation is the file at first start: not a change worth an entry.
                if record.generation > 1 {
                    self.audit(
                        ACTOR,
                        action::GENOME_APPLIED,
                        &decision.route,
                        json!({ "generation": record.generation, "source": "file" }),
                    );
                }
                self.end_watch(
                    &decision.route,
                    "the config file changed the route's policy",
                );
            }
            let live = (
                policies.genome(&decision.route),
                policies.generation(&decision.route),
            );
            if live != (Some(decision.genome.clone()), Some(decision.generation)) {
                if let Err(errors) = policies.install(
                    &decision.route,
                    decision.genome.clone(),
                    decision.generation,
                ) {
                    warn!(route = decision.route, %errors, "cannot install the lineage's genome");
                }
            }
        }
        Ok(())
    }

    /// After proposal `id` is stored: with `approval = "auto"`, approves it as `rafael` when it
    /// passed every guardrail, and applies it. Blocking.
    pub fn proposed(&self, id: i64) -> Result<Option<Proposal>, GuardianError> {
        let config = self.inner.snapshots.load().config().clone();
        if config.approval() != ApprovalMode::Auto {
            return Ok(None);
        }
        let store = &self.inner.store;
        let mut proposal = store
            .proposal(id)?
            .ok_or(GuardianError::NoSuchProposal(id))?;
        if proposal.state != ProposalState::Pending
            || !matches!(proposal.guardrails, GuardrailVerdict::Passed(_))
        {
            return Ok(None);
        }
        proposal.approvals.push(Approval {
            by: ACTOR.to_owned(),
            at: now(),
            comment: Some("approval = \"auto\": within every guardrail".to_owned()),
            decision: Decision::Approve,
        });
        proposal.state = ProposalState::Approved;
        store.update_proposal(&proposal)?;
        self.audit(
            ACTOR,
            action::PROPOSAL_APPROVED,
            &format!("proposal/{id}"),
            json!({
                "route": proposal.route,
                "decision": "approve",
                "approval": "auto",
                "approvals": distinct_approvals(&proposal),
                "state": proposal.state.as_str(),
            }),
        );
        proposal_entered(Some(ProposalState::Pending), ProposalState::Approved);
        self.approved(id, ACTOR).map(Some)
    }

    /// Proposal `id` was just approved (by `actor`, the last approver): starts its canary when
    /// `[guardian].canary` is set, else applies it. A proposal whose canary already ran and
    /// waited for a person is applied: approving it promoted it. Blocking.
    pub fn approved(&self, id: i64, actor: &str) -> Result<Proposal, GuardianError> {
        let config = self.inner.snapshots.load().config().clone();
        let ran = self
            .inner
            .store
            .proposal(id)?
            .is_some_and(|p| p.canary.is_some());
        match config.guardian.canary {
            Some(canary) if !ran => self.start_canary(id, actor, canary),
            _ => self.apply(id, actor),
        }
    }

    /// Applies approved proposal `id`: a new generation, recorded, swapped in, audited
    /// (`genome.applied`), and watched when `[guardian].watch` is on. Blocking.
    pub fn apply(&self, id: i64, actor: &str) -> Result<Proposal, GuardianError> {
        let _changes = self.lock();
        let mut proposal = self
            .inner
            .store
            .proposal(id)?
            .ok_or(GuardianError::NoSuchProposal(id))?;
        if proposal.state != ProposalState::Approved {
            return Err(GuardianError::NotApproved {
                id,
                state: proposal.state.as_str(),
            });
        }
        self.apply_locked(&mut proposal, actor)?;
        Ok(proposal)
    }

    /// The genome and generation live on `proposal`'s route, when that generation is still
    /// the proposal's base; otherwise the proposal expires (approved against a genome that is
    /// no longer live, applying its diff would apply something nobody looked at).
    fn live_base(&self, proposal: &mut Proposal) -> Result<(Genome, u64), GuardianError> {
        let policies = self.inner.snapshots.policies();
        let route = proposal.route.clone();
        let (Some(genome), Some(live)) = (policies.genome(&route), policies.generation(&route))
        else {
            return Err(GuardianError::NoSuchRoute(route));
        };
        if live != proposal.base_generation {
            let why = Expiry::Generation {
                base: proposal.base_generation,
                live,
            };
            let before = proposal.state;
            proposal.state = ProposalState::Pending;
            expire(&self.inner.store, &self.inner.audit, proposal, why)?;
            if before != ProposalState::Pending {
                // `expire` moved the pending gauge for a proposal that was not pending.
                super::metrics::set_pending(
                    self.inner.store.proposal_count(ProposalState::Pending)?,
                );
            }
            return Err(GuardianError::Expired {
                id: proposal.id,
                reason: why.reason(),
            });
        }
        Ok((genome, live))
    }

    /// [`Guardian::apply`] of a proposal that is `approved` (or whose canary passed); callers
    /// hold the lock.
    fn apply_locked(&self, proposal: &mut Proposal, actor: &str) -> Result<(), GuardianError> {
        let (store, snapshots) = (&self.inner.store, &self.inner.snapshots);
        let id = proposal.id;
        let before_state = proposal.state;
        let (previous, live) = self.live_base(proposal)?;
        // A canary that waited for a person was promoted by this approval.
        if let Some(mut record) = canary_record(proposal)
            && (record.state == "inconclusive" || record.state == "interrupted")
        {
            record.state = "promoted".to_owned();
            record.reason = Some(format!("promoted by {actor}"));
            proposal.canary = Some(json_value(&record));
        }
        let policies = snapshots.policies();
        let route = proposal.route.clone();
        let config = snapshots.load().config().clone();
        let mut errors = ConfigErrors::default();
        let index = config.routes.iter().position(|r| r.name == route);
        proposal.genome.validate(
            &format!("routes[{}].policy", index.unwrap_or_default()),
            &mut errors,
        );
        if !errors.is_empty() {
            return Err(GuardianError::Invalid(errors));
        }
        let generation = self.next_generation(&route, live)?;
        let record = GenomeRecord {
            route: route.clone(),
            generation,
            genome: proposal.genome.clone(),
            source: LineageSource::Proposal,
            applied_at: now(),
            actor: actor.to_owned(),
            proposal_id: Some(id),
            restores: None,
            reason: None,
        };
        let before = self.baseline(&route, &config);
        store.insert_genome(&record)?;
        self.end_watch(&route, &format!("proposal {id} replaced it"));
        policies
            .install(&route, proposal.genome.clone(), generation)
            .map_err(GuardianError::Invalid)?;
        // From the next whole second: the one running now is partly the previous genome's.
        let since = next_second(rafael_proxy::layer::now());
        let settings = config.guardian.watch;
        let watching = !settings.duration.get().is_zero();
        let ends = SystemTime::now() + settings.duration.get();
        proposal.state = if watching {
            ProposalState::Applied
        } else {
            ProposalState::Kept
        };
        proposal.watch = watching.then(|| {
            json_value(&WatchRecord {
                state: "watching".to_owned(),
                started_at: record.applied_at.clone(),
                ends_at: humantime::format_rfc3339_seconds(ends).to_string(),
                generation,
                previous_generation: live,
                before,
                after: None,
                counterfactual: None,
                findings: Vec::new(),
                reason: None,
            })
        });
        store.update_proposal(proposal)?;
        proposal_entered(Some(before_state), proposal.state);
        self.audit(
            actor,
            action::GENOME_APPLIED,
            &route,
            json!({
                "generation": generation,
                "previous_generation": live,
                "proposal": id,
                "source": "proposal",
                "diff": proposal.diff,
                "watch": watching.then(|| settings.duration.to_string()),
            }),
        );
        info!(route, generation, proposal = id, "genome applied");
        // Pending proposals of the route were made against the generation just replaced.
        for mut pending in store.proposals(Some(ProposalState::Pending), Some(&route), 1000)? {
            let why = Expiry::Generation {
                base: pending.base_generation,
                live: generation,
            };
            expire(store, &self.inner.audit, &mut pending, why)?;
        }
        if watching {
            self.spawn_watch(WatchTask {
                proposal: id,
                route,
                generation,
                previous,
                since,
                duration: settings.duration.get(),
            });
        }
        Ok(())
    }

    /// Starts proposal `id`'s canary: the candidate serves `canary.percent` of the route's
    /// requests with engine state of its own, judged at checkpoints until `canary.duration`
    /// (see [`super::canary`]). Audited as `canary.started`. Blocking.
    fn start_canary(
        &self,
        id: i64,
        actor: &str,
        settings: rafael_config::CanaryConfig,
    ) -> Result<Proposal, GuardianError> {
        let _changes = self.lock();
        let store = &self.inner.store;
        let mut proposal = store
            .proposal(id)?
            .ok_or(GuardianError::NoSuchProposal(id))?;
        if proposal.state != ProposalState::Approved {
            return Err(GuardianError::NotApproved {
                id,
                state: proposal.state.as_str(),
            });
        }
        let (_, live) = self.live_base(&mut proposal)?;
        let route = proposal.route.clone();
        self.end_watch(&route, &format!("proposal {id}'s canary started"));
        self.inner
            .snapshots
            .policies()
            .set_canary(
                &route,
                Some(CanarySpec {
                    genome: proposal.genome.clone(),
                    percent: settings.percent,
                }),
            )
            .map_err(GuardianError::Invalid)?;
        gauge!(CANARY_ACTIVE, "route" => route.clone()).set(1.0);
        let started = SystemTime::now();
        let record = CanaryRecord {
            state: "running".to_owned(),
            percent: settings.percent,
            started_at: humantime::format_rfc3339_seconds(started).to_string(),
            ends_at: humantime::format_rfc3339_seconds(started + settings.duration.get())
                .to_string(),
            min_requests: settings.min_requests,
            stable: None,
            canary: None,
            errors: None,
            latency: None,
            reason: None,
        };
        proposal.state = ProposalState::Canary;
        proposal.canary = Some(json_value(&record));
        store.update_proposal(&proposal)?;
        proposal_entered(Some(ProposalState::Approved), ProposalState::Canary);
        self.audit(
            actor,
            action::CANARY_STARTED,
            &format!("proposal/{id}"),
            json!({
                "route": route,
                "generation": live,
                "percent": settings.percent,
                "duration": settings.duration.to_string(),
                "min_requests": settings.min_requests,
            }),
        );
        info!(
            route,
            proposal = id,
            percent = settings.percent,
            "canary started"
        );
        if let Some(runtime) = &self.inner.runtime {
            let this = self.clone();
            let task = CanaryTask {
                proposal: id,
                route: route.clone(),
                generation: live,
                since: next_second(rafael_proxy::layer::now()),
                duration: settings.duration.get(),
                min_requests: u64::from(settings.min_requests),
            };
            let handle = runtime.spawn(async move { this.canary(task).await });
            self.track(route, handle.abort_handle());
        }
        Ok(proposal)
    }

    /// The canary loop: checkpoints until a verdict.
    async fn canary(self, task: CanaryTask) {
        let every = (task.duration / CANARY_CHECKPOINTS)
            .clamp(CANARY_CHECKPOINT_EVERY.0, CANARY_CHECKPOINT_EVERY.1);
        let end = tokio::time::Instant::now() + task.duration;
        self.checkpoints("rafael-canary", every, end, move |this, last| {
            this.canary_checkpoint(&task, last)
        })
        .await;
    }

    /// Runs `checkpoint` every `every` until `end` (`last` at it) on a low-priority thread,
    /// until it says it is done.
    async fn checkpoints(
        &self,
        name: &'static str,
        every: Duration,
        end: tokio::time::Instant,
        checkpoint: impl Fn(&Self, bool) -> Step + Clone + Send + 'static,
    ) {
        loop {
            let next = (tokio::time::Instant::now() + every).min(end);
            tokio::time::sleep_until(next).await;
            let last = next >= end;
            let (this, checkpoint) = (self.clone(), checkpoint.clone());
            let step = crate::evolution::low_priority(name, move || checkpoint(&this, last)).await;
            match step {
                Some(Step::Continue) => {}
                Some(Step::Done) | None => break,
            }
        }
    }

    /// One checkpoint of a canary; `last` at the end of its duration.
    fn canary_checkpoint(&self, task: &CanaryTask, last: bool) -> Step {
        let _changes = self.lock();
        let store = &self.inner.store;
        let Ok(Some(mut proposal)) = store.proposal(task.proposal) else {
            return Step::Done;
        };
        let Some(mut record) = canary_record(&proposal) else {
            warn!(
                proposal = task.proposal,
                "the canary's record does not parse; it stops"
            );
            return Step::Done;
        };
        if proposal.state != ProposalState::Canary || record.state != "running" {
            return Step::Done;
        }
        let snapshot = self.inner.snapshots.load();
        let config = snapshot.config().clone();
        let route = snapshot.route(&task.route);
        let canary = route.and_then(|r| r.canary());
        let (Some(route), Some(canary)) = (route, canary) else {
            self.end_canary(
                &mut proposal,
                &mut record,
                "interrupted",
                "the canary was stopped",
            );
            return Step::Done;
        };
        if route.live().generation() != task.generation {
            self.stop_split(&task.route);
            record.state = "interrupted".to_owned();
            record.reason = Some("the route's genome changed under the canary".to_owned());
            proposal.canary = Some(json_value(&record));
            let why = Expiry::Generation {
                base: task.generation,
                live: route.live().generation(),
            };
            proposal.state = ProposalState::Pending;
            if let Err(error) = expire(store, &self.inner.audit, &mut proposal, why) {
                warn!(%error, "cannot expire the canary's proposal");
            }
            return Step::Done;
        }
        let now = rafael_proxy::layer::now();
        let stable = Cohort::of(&complete(
            route.live().telemetry().windows(task.since, now),
            now,
        ));
        let trial = Cohort::of(&complete(
            canary.live().telemetry().windows(task.since, now),
            now,
        ));
        let comparison = compare(&stable, &trial, config.guardian.watch.max_goodput_drop);
        record.stable = Some(comparison.stable);
        record.canary = Some(comparison.canary);
        record.errors = comparison.errors;
        record.latency = comparison.latency;
        let figures = json!({
            "route": task.route,
            "stable": comparison.stable,
            "canary": comparison.canary,
            "errors": comparison.errors,
            "latency": comparison.latency,
        });
        if comparison.worse() {
            let what = if comparison.errors.is_some_and(|t| t.worse) {
                format!(
                    "error share {:.3} against the stable cohort's {:.3}",
                    comparison.canary.error_share, comparison.stable.error_share
                )
            } else {
                format!(
                    "slower than the stable cohort (p99 {:.1} ms against {:.1} ms, a canary request slower {:.0}% of the time)",
                    comparison.canary.p99_ms,
                    comparison.stable.p99_ms,
                    comparison.latency.map_or(0.0, |t| t.effect * 100.0)
                )
            };
            self.stop_split(&task.route);
            record.state = "failed".to_owned();
            record.reason = Some(format!("the canary did worse: {what}"));
            proposal.canary = Some(json_value(&record));
            proposal.state = ProposalState::Rejected;
            match store.update_proposal(&proposal) {
                Ok(()) => proposal_entered(Some(ProposalState::Canary), ProposalState::Rejected),
                Err(error) => warn!(%error, "cannot store the canary's verdict"),
            }
            self.audit(
                ACTOR,
                action::CANARY_FAILED,
                &format!("proposal/{}", task.proposal),
                figures,
            );
            warn!(
                route = task.route,
                proposal = task.proposal,
                "canary failed: {what}"
            );
            return Step::Done;
        }
        if !last {
            proposal.canary = Some(json_value(&record));
            if let Err(error) = store.update_proposal(&proposal) {
                warn!(%error, "cannot store the canary's figures");
            }
            return Step::Continue;
        }
        self.stop_split(&task.route);
        if comparison.canary.requests < task.min_requests {
            record.state = "inconclusive".to_owned();
            record.reason = Some(format!(
                "{} canary requests in its duration, {} needed: an approver promotes or rejects it",
                comparison.canary.requests, task.min_requests
            ));
            proposal.canary = Some(json_value(&record));
            if let Err(error) = store.update_proposal(&proposal) {
                warn!(%error, "cannot store the canary's verdict");
            }
            self.audit(
                ACTOR,
                action::CANARY_INCONCLUSIVE,
                &format!("proposal/{}", task.proposal),
                figures,
            );
            return Step::Done;
        }
        record.state = "passed".to_owned();
        record.reason = Some("no worse than the stable cohort on errors and latency".to_owned());
        proposal.canary = Some(json_value(&record));
        self.audit(
            ACTOR,
            action::CANARY_PASSED,
            &format!("proposal/{}", task.proposal),
            figures,
        );
        if let Err(error) = self.apply_locked(&mut proposal, ACTOR) {
            warn!(%error, proposal = task.proposal, "cannot promote the canary");
        }
        Step::Done
    }

    /// Takes the canary split off `route` (the stable genome serves everything again).
    fn stop_split(&self, route: &str) {
        if let Err(errors) = self.inner.snapshots.policies().set_canary(route, None) {
            warn!(route, %errors, "cannot stop the canary");
        }
        gauge!(CANARY_ACTIVE, "route" => route.to_owned()).set(0.0);
    }

    /// Ends a canary that lost its split without a verdict: `state`, waiting for a person.
    fn end_canary(
        &self,
        proposal: &mut Proposal,
        record: &mut CanaryRecord,
        state: &str,
        why: &str,
    ) {
        record.state = state.to_owned();
        record.reason = Some(why.to_owned());
        proposal.canary = Some(json_value(record));
        if let Err(error) = self.inner.store.update_proposal(proposal) {
            warn!(%error, "cannot store the canary's end");
        }
        gauge!(CANARY_ACTIVE, "route" => proposal.route.clone()).set(0.0);
    }

    /// Makes generation `to`'s genome live again on `route`, as a new generation, by `actor`
    /// (an approver, by hand). Blocking.
    pub fn rollback(
        &self,
        route: &str,
        to: u64,
        actor: &str,
        comment: Option<String>,
    ) -> Result<GenomeRecord, GuardianError> {
        let _changes = self.lock();
        let reason = comment.unwrap_or_else(|| "by hand".to_owned());
        self.roll_back_locked(route, to, actor, &reason, "manual", json!({}))
    }

    /// The rollback itself; callers hold the lock. `metric` is the rollback counter's reason.
    fn roll_back_locked(
        &self,
        route: &str,
        to: u64,
        actor: &str,
        reason: &str,
        metric: &'static str,
        figures: serde_json::Value,
    ) -> Result<GenomeRecord, GuardianError> {
        let store = &self.inner.store;
        let policies = self.inner.snapshots.policies();
        let live = policies
            .generation(route)
            .ok_or_else(|| GuardianError::NoSuchRoute(route.to_owned()))?;
        if to == live {
            return Err(GuardianError::AlreadyLive {
                route: route.to_owned(),
                generation: live,
            });
        }
        let target =
            store
                .genome_at(route, to)?
                .ok_or_else(|| GuardianError::NoSuchGeneration {
                    route: route.to_owned(),
                    generation: to,
                })?;
        let current = store.genome_at(route, live)?;
        let generation = self.next_generation(route, live)?;
        let record = GenomeRecord {
            route: route.to_owned(),
            generation,
            genome: target.genome.clone(),
            source: LineageSource::Rollback,
            applied_at: now(),
            actor: actor.to_owned(),
            proposal_id: current.as_ref().and_then(|c| c.proposal_id),
            restores: Some(to),
            reason: Some(reason.to_owned()),
        };
        store.insert_genome(&record)?;
        policies
            .install(route, target.genome, generation)
            .map_err(GuardianError::Invalid)?;
        counter!(ROLLBACKS_TOTAL, "route" => route.to_owned(), "reason" => metric).increment(1);
        // The proposal that made the generation rolled back ends `rolled_back`.
        if let Some(id) = record.proposal_id
            && let Some(mut proposal) = store.proposal(id)?
            && matches!(proposal.state, ProposalState::Applied | ProposalState::Kept)
        {
            let before = proposal.state;
            proposal.state = ProposalState::RolledBack;
            if let Some(watch) = proposal.watch.as_mut().and_then(|w| w.as_object_mut()) {
                watch.insert("state".into(), json!("rolled_back"));
                watch.insert("reason".into(), json!(reason));
            }
            store.update_proposal(&proposal)?;
            proposal_entered(Some(before), ProposalState::RolledBack);
        }
        self.audit(
            actor,
            action::GENOME_ROLLED_BACK,
            route,
            json!({
                "generation": generation,
                "from_generation": live,
                "restores": to,
                "proposal": record.proposal_id,
                "reason": reason,
                "figures": figures,
            }),
        );
        warn!(
            route,
            generation,
            restores = to,
            reason,
            "genome rolled back"
        );
        self.abort_watch(route);
        Ok(record)
    }

    /// `route`'s lineage, newest first, at most `limit` generations.
    pub fn lineage(&self, route: &str, limit: u32) -> Result<Vec<GenomeRecord>, StoreError> {
        self.inner.store.lineage(route, limit.min(MAX_LINEAGE))
    }

    /// The route's traffic before now, as the watch's first baseline.
    fn baseline(&self, route: &str, config: &Config) -> Option<Figures> {
        let snapshot = self.inner.snapshots.load();
        let live = snapshot.route(route)?;
        let secs = config
            .guardian
            .watch
            .duration
            .get()
            .as_secs()
            .clamp(BASELINE_SECS.0, BASELINE_SECS.1);
        let now = rafael_proxy::layer::now();
        let windows = complete(
            live.live()
                .telemetry()
                .windows(now.saturating_sub(secs * SECOND), now),
            now,
        );
        Figures::of(&windows, config.evolution.objectives.slo_latency.get())
    }

    fn spawn_watch(&self, task: WatchTask) {
        let Some(runtime) = &self.inner.runtime else {
            warn!(
                route = task.route,
                "no runtime to watch the new genome on; it is kept unwatched"
            );
            return;
        };
        let route = task.route.clone();
        let this = self.clone();
        let handle = runtime.spawn(async move { this.watch(task).await });
        self.track(route, handle.abort_handle());
    }

    /// Records `handle` as the watch or canary running on `route`, aborting the one it
    /// replaces.
    fn track(&self, route: String, handle: tokio::task::AbortHandle) {
        let previous = self
            .inner
            .watches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(route, handle);
        if let Some(previous) = previous {
            previous.abort();
        }
    }

    /// The generation after the newest one `route` has had: one more than its lineage's
    /// newest, or than `live` when the lineage is behind it.
    fn next_generation(&self, route: &str, live: u64) -> Result<u64, StoreError> {
        Ok(self
            .inner
            .store
            .latest_genome(route)?
            .map_or(live, |l| l.generation.max(live))
            + 1)
    }

    fn abort_watch(&self, route: &str) {
        let running = self
            .inner
            .watches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(route);
        if let Some(running) = running {
            running.abort();
        }
    }

    /// Ends the watch on `route`, if one runs, because another change replaced its genome:
    /// its proposal ends `kept` (it was not rolled back), with `why`. Callers hold the lock.
    fn end_watch(&self, route: &str, why: &str) {
        self.abort_watch(route);
        let watched = self
            .inner
            .store
            .proposals(Some(ProposalState::Applied), Some(route), 10);
        for mut proposal in watched.unwrap_or_default() {
            self.finish(&mut proposal, "replaced", why);
        }
    }

    /// Marks applied `proposal` `kept`, its watch in `state` with `reason`.
    fn finish(&self, proposal: &mut Proposal, state: &str, reason: &str) {
        proposal.state = ProposalState::Kept;
        if let Some(watch) = proposal.watch.as_mut().and_then(|w| w.as_object_mut()) {
            watch.insert("state".into(), json!(state));
            watch.insert("reason".into(), json!(reason));
        }
        match self.inner.store.update_proposal(proposal) {
            Ok(()) => proposal_entered(Some(ProposalState::Applied), ProposalState::Kept),
            Err(error) => warn!(%error, proposal = proposal.id, "cannot store the watch's end"),
        }
    }

    /// The watch loop: checkpoints until the end, a rollback, or another change.
    async fn watch(self, task: WatchTask) {
        let every = (task.duration / CHECKPOINTS).clamp(CHECKPOINT_EVERY.0, CHECKPOINT_EVERY.1);
        let started = tokio::time::Instant::now();
        // Resumed after a restart, the watch has only what is left of its duration.
        let elapsed = Duration::from_nanos(rafael_proxy::layer::now().saturating_sub(task.since));
        let end = started + task.duration.saturating_sub(elapsed);
        self.checkpoints("rafael-watch", every, end, move |this, last| {
            this.checkpoint(&task, last)
        })
        .await;
    }

    /// One checkpoint of `task`; `last` at the watch's end.
    fn checkpoint(&self, task: &WatchTask, last: bool) -> Step {
        let store = &self.inner.store;
        let Ok(Some(mut proposal)) = store.proposal(task.proposal) else {
            return Step::Done;
        };
        if proposal.state != ProposalState::Applied {
            return Step::Done;
        }
        let snapshot = self.inner.snapshots.load();
        let config = snapshot.config().clone();
        let limits = config.guardian.watch;
        let Some(route) = snapshot.route(&task.route) else {
            let _changes = self.lock();
            self.finish(&mut proposal, "replaced", "the route was removed");
            return Step::Done;
        };
        if route.live().generation() != task.generation {
            let _changes = self.lock();
            self.finish(
                &mut proposal,
                "replaced",
                "another change replaced the genome",
            );
            return Step::Done;
        }
        let mut record: WatchRecord = match proposal
            .watch
            .clone()
            .and_then(|w| serde_json::from_value(w).ok())
        {
            Some(record) => record,
            None => {
                warn!(
                    proposal = task.proposal,
                    "the watch's record does not parse; it stops"
                );
                return Step::Done;
            }
        };
        let now = rafael_proxy::layer::now();
        let after = complete(route.live().telemetry().windows(task.since, now), now);
        let slo = config.evolution.objectives.slo_latency.get();
        record.after = Figures::of(&after, slo);
        let findings = match (&record.before, &record.after) {
            (Some(before), Some(after)) => watch::suspect(before, after, &limits),
            _ => Vec::new(),
        };
        record.findings = findings.clone();
        let mut verdict = None;
        // The model of the upstream since the swap, when this checkpoint fitted one.
        let mut fitted = None;
        if !findings.is_empty() {
            match fit_route_since(&self.inner.snapshots, &task.route, task.since) {
                Ok(model) => {
                    let cf = watch::counterfactual(&model, &task.previous, route.policy(), &config);
                    record.counterfactual = Some(cf);
                    verdict = findings
                        .iter()
                        .find(|f| f.confirmed_by(&cf, &limits))
                        .map(|f| {
                            (
                                *f,
                                format!(
                                    "{}; the previous genome, replayed on the upstream as it \
                                     behaved since the swap, would have done better (goodput \
                                     {:.3} against {:.3}, p99 {:.1} ms against {:.1} ms)",
                                    f.describe(&limits),
                                    cf.previous.goodput,
                                    cf.current.goodput,
                                    cf.previous.p99_ms,
                                    cf.current.p99_ms
                                ),
                            )
                        });
                    fitted = Some(model);
                }
                // No model yet: wait for more windows, and at the end err on the side of the
                // genome that ran before.
                Err(error) if last => {
                    verdict = Some((
                        findings[0],
                        format!(
                            "{}; no counterfactual could be made ({error})",
                            findings[0].describe(&limits)
                        ),
                    ));
                }
                Err(_) => {}
            }
        }
        // What the upstream was like while the genome was watched: the learned pattern's model
        // summary; the counterfactual's model when there was one, else fitted now, before the
        // lock (a fit is milliseconds of work, not a lock's).
        let learned_on = if last && verdict.is_none() {
            fitted.or_else(|| fit_route_since(&self.inner.snapshots, &task.route, task.since).ok())
        } else {
            None
        };
        let _changes = self.lock();
        // A change may have come while this checkpoint worked without the lock.
        if self.inner.snapshots.policies().generation(&task.route) != Some(task.generation) {
            self.finish(
                &mut proposal,
                "replaced",
                "another change replaced the genome",
            );
            return Step::Done;
        }
        if let Some((finding, reason)) = verdict {
            proposal.watch = Some(json_value(&record));
            if let Err(error) = store.update_proposal(&proposal) {
                warn!(%error, "cannot store the watch's figures");
            }
            let figures = json!({
                "before": record.before,
                "after": record.after,
                "counterfactual": record.counterfactual,
                "finding": finding,
            });
            if let Err(error) = self.roll_back_locked(
                &task.route,
                record.previous_generation,
                ACTOR,
                &reason,
                finding.metric(),
                figures,
            ) {
                warn!(%error, route = task.route, "the watch cannot roll back");
            }
            return Step::Done;
        }
        if last {
            record.state = "kept".to_owned();
            record.reason = Some(if findings.is_empty() {
                "no significant regression against the windows before the swap".to_owned()
            } else {
                "the previous genome would have done no better in the same windows".to_owned()
            });
            proposal.watch = Some(json_value(&record));
            proposal.state = ProposalState::Kept;
            match store.update_proposal(&proposal) {
                Ok(()) => proposal_entered(Some(ProposalState::Applied), ProposalState::Kept),
                Err(error) => warn!(%error, "cannot store the watch's end"),
            }
            self.audit(
                ACTOR,
                action::GENOME_KEPT,
                &task.route,
                json!({
                    "generation": task.generation,
                    "proposal": task.proposal,
                    "before": record.before,
                    "after": record.after,
                    "counterfactual": record.counterfactual,
                }),
            );
            info!(
                route = task.route,
                generation = task.generation,
                "genome kept"
            );
            self.learn(task, &config, &record, route.policy(), learned_on.as_ref());
            self.inner
                .watches
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&task.route);
            return Step::Done;
        }
        proposal.watch = Some(json_value(&record));
        if let Err(error) = store.update_proposal(&proposal) {
            warn!(%error, "cannot store the watch's figures");
        }
        Step::Continue
    }

    /// Saves the genome a watch kept as a learned pattern (DESIGN §7.8), audited
    /// `vault.saved`. A pattern of that name already stored (a route that was removed and
    /// added again) is left as it is. Callers hold the lock.
    fn learn(
        &self,
        task: &WatchTask,
        config: &Config,
        record: &WatchRecord,
        genome: &Genome,
        model: Option<&crate::evolution::model::Model>,
    ) {
        let stacks = config
            .routes
            .iter()
            .find(|r| r.name == task.route)
            .and_then(|r| r.pattern.as_deref())
            .and_then(vault::builtin_pattern)
            .map(|p| p.stacks.clone())
            .unwrap_or_default();
        let why = match (&record.before, &record.after) {
            (Some(before), Some(after)) => format!(
                "goodput {:.3} before the swap, {:.3} after; p99 {:.0} ms, then {:.0} ms",
                before.goodput, after.goodput, before.p99_ms, after.p99_ms
            ),
            _ => "no regression found".to_owned(),
        };
        let pattern = vault::learned(&task.route, task.generation, genome, stacks, model, &why);
        match self.inner.store.insert_pattern(&pattern) {
            Ok(true) => {
                self.audit(
                    ACTOR,
                    action::VAULT_SAVED,
                    &format!("pattern/{}", pattern.name),
                    json!({
                        "source": pattern.source,
                        "route": task.route,
                        "generation": task.generation,
                        "genome": pattern.genome,
                    }),
                );
                info!(pattern = pattern.name, "learned pattern saved");
            }
            Ok(false) => info!(
                pattern = pattern.name,
                "a pattern of this name exists; kept as it is"
            ),
            Err(error) => warn!(%error, "cannot save the learned pattern"),
        }
    }

    /// Watches that a previous process left running: resumed for what is left of them (their
    /// first baseline is stored with them; the windows since the restart are the new ones).
    fn resume_watches(&self) -> Result<(), StoreError> {
        // A canary ran in the previous process's memory: the stable genome is what restarted.
        for mut proposal in
            self.inner
                .store
                .proposals(Some(ProposalState::Canary), None, MAX_LINEAGE)?
        {
            let Some(mut record) = canary_record(&proposal) else {
                continue;
            };
            if record.state == "running" {
                self.end_canary(
                    &mut proposal,
                    &mut record,
                    "interrupted",
                    "rafael restarted while the canary ran; the stable genome is live: an approver promotes or rejects it",
                );
                self.audit(
                    ACTOR,
                    action::CANARY_INTERRUPTED,
                    &format!("proposal/{}", proposal.id),
                    json!({ "route": proposal.route }),
                );
            }
        }
        let policies = self.inner.snapshots.policies();
        for mut proposal in
            self.inner
                .store
                .proposals(Some(ProposalState::Applied), None, MAX_LINEAGE)?
        {
            let record: Option<WatchRecord> = proposal
                .watch
                .clone()
                .and_then(|w| serde_json::from_value(w).ok());
            let Some(record) = record else { continue };
            if policies.generation(&proposal.route) != Some(record.generation) {
                self.finish(
                    &mut proposal,
                    "replaced",
                    "another change replaced the genome",
                );
                continue;
            }
            let ends = humantime::parse_rfc3339_weak(&record.ends_at).unwrap_or(SystemTime::now());
            let left = ends
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            let Some(previous) = self
                .inner
                .store
                .genome_at(&proposal.route, record.previous_generation)?
            else {
                continue;
            };
            self.spawn_watch(WatchTask {
                proposal: proposal.id,
                route: proposal.route.clone(),
                generation: record.generation,
                previous: previous.genome,
                since: next_second(rafael_proxy::layer::now()),
                duration: left.max(Duration::from_secs(1)),
            });
        }
        Ok(())
    }

    fn audit(&self, actor: &str, action: &str, target: &str, details: serde_json::Value) {
        let target = if target.contains('/') {
            target.to_owned()
        } else {
            format!("route/{target}")
        };
        if let Err(error) = self.inner.audit.append(actor, action, &target, details) {
            warn!(%error, "cannot append to the audit log");
        }
    }
}

const SECOND: u64 = 1_000_000_000;

/// The start of the second after `at`'s.
fn next_second(at: Nanos) -> Nanos {
    (at / SECOND + 1) * SECOND
}

/// The whole seconds of `windows` (the one still running at `now` left out).
fn complete(
    mut windows: Vec<rafael_proxy::telemetry::Window>,
    now: Nanos,
) -> Vec<rafael_proxy::telemetry::Window> {
    windows.retain(|w| w.start + SECOND <= now);
    windows
}

fn json_value(value: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}
