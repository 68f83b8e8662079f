//! The Chaos Forge's live experiments: timed faults on one route, watched against the route's
//! steady state, stopped by their duration, an operator, or an abort condition, and always
//! removed afterwards. Each ends in a report.
//!
//! An experiment runs as one task: it measures the steady state (the route's telemetry over the
//! 10 s before it starts), adds its fault rules to the route ([`SnapshotHandle::set_extra_faults`]),
//! checks its abort conditions every second against the telemetry since it started, then removes
//! the rules (a guard removes them even if the task is dropped), measures 3 s of recovery, and
//! writes the report. State changes go to the store and the audit log; on start-up, experiments
//! a killed rafael left running are marked `interrupted` (their faults lived in memory only).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError, atomic::Ordering},
    time::{Duration, SystemTime},
};

use metrics::{describe_gauge, gauge};
use rafael_config::{ConfigErrors, FaultStage, HumanDuration, MAX_FAULT_RULES};
use rafael_proxy::{
    SnapshotHandle,
    layer::fault::ExtraFaults,
    policy::{
        Nanos,
        fault::{FaultKind, FaultRule},
    },
    telemetry::{Outcome, Window},
};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{
    audit::AuditLog,
    store::{Store, StoreError},
    surge::SurgePlan,
};

/// `rafael_experiments_active`.
pub const EXPERIMENTS_ACTIVE: &str = "rafael_experiments_active";

const SECOND: Nanos = 1_000_000_000;
/// Seconds of steady state measured before an experiment.
const STEADY_SECONDS: u64 = 10;
/// Seconds of recovery measured after it.
const AFTER_SECONDS: u64 = 3;
/// Longest experiment accepted: the telemetry keeps ten minutes of windows, and the abort
/// conditions and the report must see the whole experiment.
const MAX_DURATION: Duration = Duration::from_secs(600);

/// What an operator asks for (`POST /v1/experiments`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    /// The route to inject into.
    pub route: String,
    /// A named threat (with `severity`), instead of explicit `faults`.
    #[serde(default)]
    pub threat: Option<Threat>,
    /// The threat's severity.
    #[serde(default)]
    pub severity: Option<Severity>,
    /// Explicit fault rules (the `[[faults]]` keys, without `route`).
    #[serde(default)]
    pub faults: Option<Vec<Value>>,
    /// How long it runs.
    pub duration: HumanDuration,
    /// Overrides every rule's share of traffic, 0..=100.
    #[serde(default)]
    pub percent: Option<f64>,
    /// Recorded with the experiment (its random draws come from the data plane's generator).
    #[serde(default)]
    pub seed: Option<u64>,
    /// Conditions that stop it early: `error_rate > 0.3`, `p99 > 2s`, `p50 > 500ms`.
    #[serde(default)]
    pub abort_when: Vec<String>,
}

/// The operator's vocabulary of failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Threat {
    /// The upstream answers slowly.
    Latency,
    /// The upstream (a database behind it, say) fails requests.
    UpstreamFailure,
    /// A flood of traffic: real extra requests from the bounded load generator.
    Surge,
    /// The upstream slows in proportion to load (a CPU spike).
    Brownout,
    /// Stall windows and resets (an upstream that pauses and restarts).
    MemoryPressure,
}

/// How hard a threat hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Mild.
    Low,
    /// Noticeable.
    Medium,
    /// Severe.
    High,
    /// Total.
    Critical,
}

/// A condition that aborts an experiment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AbortCondition {
    /// Client-visible error share above this.
    ErrorRate(f64),
    /// p99 latency above this.
    P99(Duration),
    /// p50 latency above this.
    P50(Duration),
}

/// Why an experiment request is refused (400).
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// The spec is wrong.
    #[error("{0}")]
    Invalid(String),
    /// No such experiment.
    #[error("no experiment {0}")]
    NotFound(i64),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An experiment as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Experiment {
    /// Its id.
    pub id: i64,
    /// The route.
    pub route: String,
    /// `running`, `completed`, `aborted`, `stopped` or `interrupted`.
    pub state: String,
    /// When it started (RFC 3339).
    pub started_at: Option<String>,
    /// When it ends or ended.
    pub ends_at: Option<String>,
    /// Its fault rules.
    pub faults: Value,
    /// Its abort conditions.
    pub abort_when: Value,
    /// Why it stopped early.
    pub abort_reason: Option<String>,
}

/// Steady-state figures of a period.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Period {
    /// Responses.
    pub requests: u64,
    /// Client-visible error share: 5xx, rejections and timeouts.
    pub error_rate: f64,
    /// Median latency, ms (bucket bound).
    pub p50_ms: Option<f64>,
    /// p99 latency, ms (bucket bound).
    pub p99_ms: Option<f64>,
    /// Upstream attempts per request.
    pub attempts_per_request: f64,
    /// Retries sent.
    pub retries: u64,
    /// Requests refused by the rate limit.
    pub rate_limited: u64,
    /// Requests refused because every breaker was open.
    pub breaker_open: u64,
    /// Requests shed by the concurrency limit.
    pub shed: u64,
    /// Requests that hit a deadline.
    pub timeouts: u64,
}

/// Runs and records experiments.
#[derive(Debug, Clone)]
pub struct Chaos {
    snapshots: SnapshotHandle,
    store: Arc<Store>,
    audit: AuditLog,
    running: Arc<Mutex<HashMap<i64, watch::Sender<Option<String>>>>>,
    /// Bound listener addresses by name, for the surge generator.
    listeners: Arc<Mutex<HashMap<String, SocketAddr>>>,
    /// Held while an experiment starts.
    starting: Arc<Mutex<()>>,
}

// === impl Chaos ===

impl Chaos {
    /// The forge over `snapshots`, recording in `store` and `audit`. Experiments a previous
    /// process left running are marked interrupted here.
    pub fn new(
        snapshots: SnapshotHandle,
        store: Arc<Store>,
        audit: AuditLog,
    ) -> Result<Self, StoreError> {
        describe_gauge!(EXPERIMENTS_ACTIVE, "Chaos experiments running now.");
        gauge!(EXPERIMENTS_ACTIVE).set(0.0);
        let interrupted: Vec<(i64, String)> = store.with(|c| {
            let mut statement = c.prepare(
                "SELECT id, route FROM experiments WHERE state IN ('pending', 'running')",
            )?;
            let rows = statement.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })?;
        for (id, route) in interrupted {
            store.with(|c| {
                c.execute(
                    "UPDATE experiments SET state = 'interrupted',
                     abort_reason = 'rafael stopped while it ran; its faults ended with it'
                     WHERE id = ?1",
                    [id],
                )
            })?;
            audit.append(
                "rafael",
                "experiment.interrupted",
                &id.to_string(),
                json!({ "route": route }),
            )?;
            warn!(id, route, "experiment interrupted by a restart");
        }
        Ok(Self {
            snapshots,
            store,
            audit,
            running: Arc::default(),
            listeners: Arc::default(),
            starting: Arc::default(),
        })
    }

    /// Tells the forge where the listeners are bound (a surge targets its route's own).
    pub fn set_listeners(&self, listeners: impl IntoIterator<Item = (String, SocketAddr)>) {
        let mut map = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.extend(listeners);
    }

    /// The surge plan of `spec`, when it is a surge.
    fn surge_plan(&self, spec: &ExperimentSpec) -> Result<Option<SurgePlan>, ChaosError> {
        let (Some(Threat::Surge), Some(severity)) = (spec.threat, spec.severity) else {
            return Ok(None);
        };
        let snapshot = self.snapshots.load();
        let route = snapshot
            .config()
            .routes
            .iter()
            .find(|r| r.name == spec.route)
            .ok_or_else(|| {
                ChaosError::Invalid(format!("route: no route named {:?}", spec.route))
            })?;
        let listener = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&route.listener)
            .copied()
            .ok_or_else(|| {
                ChaosError::Invalid(format!("listener {:?} is not bound", route.listener))
            })?;
        let rate = surge_rate(severity);
        Ok(Some(SurgePlan::for_route(route, listener, rate)))
    }

    /// Validates `spec` and starts it; `actor` is recorded as who started it.
    pub fn start(&self, spec: ExperimentSpec, actor: &str) -> Result<Experiment, ChaosError> {
        let surge = self.surge_plan(&spec)?;
        let rules = if surge.is_some() {
            Vec::new()
        } else {
            rules_of(&spec, self.snapshots.load().config())?
        };
        let conditions = spec
            .abort_when
            .iter()
            .map(|c| parse_condition(c))
            .collect::<Result<Vec<_>, _>>()?;
        let duration = spec.duration.get();
        if duration.is_zero() || duration > MAX_DURATION {
            return Err(ChaosError::Invalid(format!(
                "duration: must be 1s..=10m (the telemetry's horizon), got {}",
                spec.duration
            )));
        }
        if self.snapshots.load().route(&spec.route).is_none() {
            return Err(ChaosError::Invalid(format!(
                "route: no route named {:?}",
                spec.route
            )));
        }
        // One start at a time: the busy check, the insert and the faults going in are one step,
        // so two requests cannot both start an experiment on a route.
        let _starting = self.starting.lock().unwrap_or_else(PoisonError::into_inner);
        // A store deleted under rafael would take the experiment's rows into an unlinked file.
        self.store.check_present()?;
        let busy = self.store.with(|c| {
            c.query_row(
                "SELECT 1 FROM experiments WHERE route = ?1 AND state = 'running' LIMIT 1",
                [&spec.route],
                |_| Ok(()),
            )
            .optional()
        })?;
        if busy.is_some() {
            return Err(ChaosError::Invalid(format!(
                "route {:?} already has a running experiment",
                spec.route
            )));
        }
        let started = SystemTime::now();
        let started_at = humantime::format_rfc3339_millis(started).to_string();
        let ends_at = humantime::format_rfc3339_millis(started + duration).to_string();
        let mut faults = json!(rules.iter().map(describe_rule).collect::<Vec<_>>());
        if let (Some(plan), Some(list)) = (&surge, faults.as_array_mut()) {
            list.push(json!({ "kind": "surge", "rate_per_sec": plan.rate, "target": plan.target.to_string(), "path": plan.path }));
        }
        let spec_json = serde_json::to_string(&spec).unwrap_or_default();
        let id = self.store.with(|c| {
            c.execute(
                "INSERT INTO experiments (route, state, spec, faults, abort_when, started_at, ends_at)
                 VALUES (?1, 'running', ?2, ?3, ?4, ?5, ?6)",
                params![
                    spec.route,
                    spec_json,
                    faults.to_string(),
                    json!(spec.abort_when).to_string(),
                    started_at,
                    ends_at
                ],
            )?;
            Ok(c.last_insert_rowid())
        })?;
        let extra = Arc::new(ExtraFaults {
            rules,
            ..ExtraFaults::default()
        });
        let telemetry = self.snapshots.telemetry();
        let before_at = telemetry.now();
        // Audited before the faults go in: an experiment that cannot be recorded never runs.
        if let Err(e) = self.audit.append(
            actor,
            "experiment.started",
            &id.to_string(),
            json!({ "route": spec.route, "faults": faults, "duration": spec.duration.to_string(), "abort_when": spec.abort_when }),
        ) {
            let _ = self.finish(id, "aborted", Some(format!("not recorded: {e}")), json!(null));
            return Err(e.into());
        }
        if let Err(errors) = self
            .snapshots
            .set_extra_faults(&spec.route, Some(extra.clone()))
        {
            self.finish(id, "aborted", Some(errors.to_string()), json!(null))?;
            return Err(ChaosError::Invalid(errors.to_string()));
        }
        info!(id, route = %spec.route, "experiment started");
        let (stop_tx, stop_rx) = watch::channel(None);
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, stop_tx);
        gauge!(EXPERIMENTS_ACTIVE).increment(1.0);
        let chaos = self.clone();
        let route = spec.route.clone();
        tokio::spawn(async move {
            chaos
                .run(
                    id, route, extra, surge, conditions, duration, before_at, stop_rx,
                )
                .await;
        });
        self.get(id)
    }

    /// Stops a running experiment on an operator's word.
    pub fn stop(&self, id: i64, actor: &str) -> Result<Experiment, ChaosError> {
        if let Some(stop) = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
        {
            let _ = stop.send(Some(actor.to_owned()));
        }
        self.get(id)
    }

    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        id: i64,
        route: String,
        extra: Arc<ExtraFaults>,
        surge: Option<SurgePlan>,
        conditions: Vec<AbortCondition>,
        duration: Duration,
        started: Nanos,
        mut stop: watch::Receiver<Option<String>>,
    ) {
        // Whatever happens to this task, the faults come out.
        let guard = RemoveFaults {
            snapshots: self.snapshots.clone(),
            route: route.clone(),
        };
        let telemetry = self.snapshots.telemetry();
        // Windows are whole seconds: the steady state is the ten seconds before the one the
        // experiment started in, and the recovery starts with the second after it ended.
        let start_second = started / SECOND * SECOND;
        let steady = period(
            &telemetry,
            &route,
            start_second.saturating_sub(STEADY_SECONDS * SECOND),
            start_second.saturating_sub(1),
        );
        let counters = |snapshots: &SnapshotHandle| {
            let snapshot = snapshots.load();
            snapshot.route(&route).map_or((0, 0), |r| {
                (r.live().retries_skipped(), r.live().breaker_trips())
            })
        };
        let (skipped_before, trips_before) = counters(&self.snapshots);
        let deadline = tokio::time::Instant::now() + duration;
        let (surge_stop, surge_task) = match surge {
            Some(plan) => {
                let (tx, rx) = watch::channel(false);
                (Some(tx), Some(tokio::spawn(plan.run(rx))))
            }
            None => (None, None),
        };
        let mut during;
        let (state, reason, actor) = loop {
            let tick = tokio::time::sleep(
                Duration::from_secs(1)
                    .min(deadline.saturating_duration_since(tokio::time::Instant::now())),
            );
            tokio::select! {
                _ = tick => {}
                _ = stop.changed() => {
                    let actor = stop.borrow().clone().unwrap_or_else(|| "rafael".to_owned());
                    during = period(&telemetry, &route, start_second, telemetry.now());
                    break ("stopped", Some(format!("stopped by {actor}")), actor);
                }
            }
            during = period(&telemetry, &route, start_second, telemetry.now());
            if let Some(reason) = conditions.iter().find_map(|c| breached(c, &during)) {
                break ("aborted", Some(reason), "rafael".to_owned());
            }
            if tokio::time::Instant::now() >= deadline {
                break ("completed", None, "rafael".to_owned());
            }
        };
        let ended = telemetry.now();
        let (skipped_after, trips_after) = counters(&self.snapshots);
        drop(guard);
        if let Some(stop) = surge_stop {
            let _ = stop.send(true);
        }
        let surge_counts = match surge_task {
            Some(task) => task.await.ok(),
            None => None,
        };
        gauge!(EXPERIMENTS_ACTIVE).decrement(1.0);
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        let action = format!("experiment.{state}");
        let (chaos, audit_route, audit_reason, audit_actor) =
            (self.clone(), route.clone(), reason.clone(), actor.clone());
        let recorded = tokio::task::spawn_blocking(move || {
            chaos.audit.append(
                &audit_actor,
                &action,
                &id.to_string(),
                json!({ "route": audit_route, "reason": audit_reason }),
            )
        })
        .await;
        if let Ok(Err(e)) = recorded {
            warn!("cannot write the audit log: {e}");
        }
        info!(
            id,
            route,
            state,
            reason = reason.as_deref().unwrap_or(""),
            "experiment ended"
        );
        // The state is final now; the report follows once the recovery has been watched.
        self.finish_blocking(id, state, reason.clone(), json!(null))
            .await;
        tokio::time::sleep(Duration::from_secs(AFTER_SECONDS + 1)).await;
        let after_from = (ended / SECOND + 1) * SECOND;
        let after = period(&telemetry, &route, after_from, telemetry.now());
        let mut report = report(
            state,
            reason.as_deref(),
            &steady,
            &during,
            &after,
            extra.injected.load(Ordering::Relaxed),
            &extra.rules,
        );
        if let Some(counts) = surge_counts {
            report["injected"]["surge"] = json!(&*counts);
        }
        report["policies"]["retries_skipped"] = json!(skipped_after.saturating_sub(skipped_before));
        report["policies"]["breaker_trips"] = json!(trips_after.saturating_sub(trips_before));
        self.finish_blocking(id, state, reason, report).await;
    }

    /// [`Chaos::finish`] on the blocking pool (SQLite is synchronous).
    async fn finish_blocking(
        &self,
        id: i64,
        state: &'static str,
        reason: Option<String>,
        report: Value,
    ) {
        let chaos = self.clone();
        let done =
            tokio::task::spawn_blocking(move || chaos.finish(id, state, reason, report)).await;
        if let Ok(Err(e)) = done {
            warn!("cannot record experiment {id}: {e}");
        }
    }

    fn finish(
        &self,
        id: i64,
        state: &str,
        reason: Option<String>,
        report: Value,
    ) -> Result<(), StoreError> {
        self.store.with(|c| {
            c.execute(
                "UPDATE experiments SET state = ?2, abort_reason = ?3, report = ?4 WHERE id = ?1",
                params![
                    id,
                    state,
                    reason,
                    (!report.is_null()).then(|| report.to_string())
                ],
            )
        })?;
        Ok(())
    }

    /// Every experiment, newest first.
    pub fn list(&self) -> Result<Vec<Experiment>, ChaosError> {
        Ok(self.store.with(|c| {
            let mut statement = c.prepare(
                "SELECT id, route, state, started_at, ends_at, faults, abort_when, abort_reason
                 FROM experiments ORDER BY id DESC",
            )?;
            let rows = statement.query_map([], experiment_row)?;
            rows.collect()
        })?)
    }

    /// One experiment.
    pub fn get(&self, id: i64) -> Result<Experiment, ChaosError> {
        self.store
            .with(|c| {
                c.query_row(
                    "SELECT id, route, state, started_at, ends_at, faults, abort_when, abort_reason
                     FROM experiments WHERE id = ?1",
                    [id],
                    experiment_row,
                )
                .optional()
            })?
            .ok_or(ChaosError::NotFound(id))
    }

    /// Its report: `None` until it has one.
    pub fn report(&self, id: i64) -> Result<Option<Value>, ChaosError> {
        let text: Option<Option<String>> = self.store.with(|c| {
            c.query_row("SELECT report FROM experiments WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
        })?;
        match text {
            None => Err(ChaosError::NotFound(id)),
            Some(text) => Ok(text.and_then(|t| serde_json::from_str(&t).ok())),
        }
    }
}

/// Removes an experiment's faults from its route when dropped.
struct RemoveFaults {
    snapshots: SnapshotHandle,
    route: String,
}

impl Drop for RemoveFaults {
    fn drop(&mut self) {
        if let Err(e) = self.snapshots.set_extra_faults(&self.route, None) {
            warn!(route = %self.route, "cannot remove an experiment's faults: {e}");
        }
    }
}

fn experiment_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Experiment> {
    let faults: String = row.get(5)?;
    let abort_when: String = row.get(6)?;
    Ok(Experiment {
        id: row.get(0)?,
        route: row.get(1)?,
        state: row.get(2)?,
        started_at: row.get(3)?,
        ends_at: row.get(4)?,
        faults: serde_json::from_str(&faults).unwrap_or(Value::Null),
        abort_when: serde_json::from_str(&abort_when).unwrap_or(Value::Null),
        abort_reason: row.get(7)?,
    })
}

/// The fault rules an experiment injects: its explicit `faults`, or its threat's mix.
fn rules_of(
    spec: &ExperimentSpec,
    live: &rafael_config::Config,
) -> Result<Vec<FaultRule>, ChaosError> {
    let mut rules = match (&spec.faults, spec.threat, spec.severity) {
        (Some(faults), None, None) => explicit_rules(faults, &spec.route, live)?,
        (None, Some(threat), Some(severity)) => threat_rules(threat, severity)?,
        _ => {
            return Err(ChaosError::Invalid(
                "give either faults, or threat and severity".to_owned(),
            ));
        }
    };
    if rules.is_empty() {
        return Err(ChaosError::Invalid(
            "faults: at least one is needed".to_owned(),
        ));
    }
    if let Some(percent) = spec.percent {
        if !(0.0..=100.0).contains(&percent) {
            return Err(ChaosError::Invalid("percent: must be 0..=100".to_owned()));
        }
        for rule in &mut rules {
            rule.percent = percent;
        }
    }
    Ok(rules)
}

/// An experiment's explicit `faults`, decoded and checked by the config file's own rules
/// (unknown keys, bounds), every problem reported at once under `faults[i]`.
fn explicit_rules(
    faults: &[Value],
    route: &str,
    live: &rafael_config::Config,
) -> Result<Vec<FaultRule>, ChaosError> {
    // Checked before decoding any: a body of 10,000 rules costs one comparison.
    if faults.len() > MAX_FAULT_RULES {
        return Err(ChaosError::Invalid(format!(
            "faults: at most {MAX_FAULT_RULES} rules, got {}",
            faults.len()
        )));
    }
    let mut errors = ConfigErrors::default();
    let mut rules = Vec::with_capacity(faults.len());
    for (i, value) in faults.iter().enumerate() {
        let path = format!("faults[{i}]");
        let mut value = value.clone();
        if let Some(map) = value.as_object_mut() {
            map.insert("route".into(), json!(route));
        }
        match rafael_config::parse_fault_rule(value, &path, live) {
            Ok(config) => match FaultRule::from_config(&config) {
                Some(rule) => rules.push(rule),
                None => errors.push(path, "names no fault"),
            },
            Err(found) => errors.0.extend(found.0),
        }
    }
    errors
        .into_result(rules)
        .map_err(|errors| ChaosError::Invalid(errors.to_string()))
}

/// Extra requests per second a `surge` of `severity` sends (the README's table).
pub fn surge_rate(severity: Severity) -> u32 {
    [50, 200, 500, 1_000][severity as usize]
}

/// What each threat injects at each severity (the README has this table).
pub fn threat_rules(threat: Threat, severity: Severity) -> Result<Vec<FaultRule>, ChaosError> {
    let level = severity as usize;
    let rule = |kind, percent| FaultRule {
        kind,
        stage: FaultStage::Upstream,
        percent,
        only_with_header: None,
    };
    match threat {
        Threat::Latency => {
            let (min, max) = [(100, 200), (250, 500), (1_000, 2_000), (3_000, 6_000)][level];
            let percent = [25.0, 50.0, 75.0, 100.0][level];
            Ok(vec![rule(
                FaultKind::Delay {
                    min: Duration::from_millis(min),
                    max: Duration::from_millis(max),
                },
                percent,
            )])
        }
        Threat::UpstreamFailure => {
            let percent = [5.0, 20.0, 50.0, 100.0][level];
            Ok(vec![rule(
                FaultKind::Abort {
                    status: 503,
                    body: None,
                },
                percent,
            )])
        }
        Threat::Brownout => {
            let per_request = [1, 5, 20, 50][level];
            let max = [200, 1_000, 3_000, 10_000][level];
            Ok(vec![rule(
                FaultKind::Brownout {
                    per_request: Duration::from_millis(per_request),
                    max: Duration::from_millis(max),
                },
                100.0,
            )])
        }
        Threat::MemoryPressure => {
            let (period, stall, resets) = [
                (10, 200, 5.0),
                (10, 1_000, 10.0),
                (8, 2_000, 25.0),
                (10, 5_000, 50.0),
            ][level];
            Ok(vec![rule(
                FaultKind::Stall {
                    period: Duration::from_secs(period),
                    stall: Duration::from_millis(stall),
                    reset_percent: resets,
                },
                100.0,
            )])
        }
        // A surge is traffic, not a fault rule: see `surge::SurgePlan`.
        Threat::Surge => Ok(Vec::new()),
    }
}

/// Every threat, in the table's order.
pub const THREATS: [Threat; 5] = [
    Threat::Latency,
    Threat::UpstreamFailure,
    Threat::Surge,
    Threat::Brownout,
    Threat::MemoryPressure,
];
/// Every severity, mildest first.
pub const SEVERITIES: [Severity; 4] = [
    Severity::Low,
    Severity::Medium,
    Severity::High,
    Severity::Critical,
];

/// What `threat` at `severity` does, in words (the dashboard's threat table).
pub fn describe_threat(threat: Threat, severity: Severity) -> String {
    let ms = |d: Duration| d.as_millis();
    if threat == Threat::Surge {
        return format!("{} extra requests a second", surge_rate(severity));
    }
    threat_rules(threat, severity)
        .unwrap_or_default()
        .iter()
        .map(|rule| {
            let what = match &rule.kind {
                FaultKind::Delay { min, max } => format!("{}-{} ms delay", ms(*min), ms(*max)),
                FaultKind::Abort { status, .. } => format!("{status} answers"),
                FaultKind::Brownout { per_request, max } => format!(
                    "{} ms more per request in flight, up to {} ms",
                    ms(*per_request),
                    ms(*max)
                ),
                FaultKind::Stall {
                    period,
                    stall,
                    reset_percent,
                } => format!(
                    "{} ms stall every {} s, {reset_percent}% of requests reset",
                    ms(*stall),
                    period.as_secs()
                ),
                other => format!("{other:?}"),
            };
            format!("{what} on {}% of requests", rule.percent)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Parses `error_rate > 0.3`, `p99 > 2s`, `p50 > 500ms`.
pub fn parse_condition(text: &str) -> Result<AbortCondition, ChaosError> {
    let invalid = || {
        ChaosError::Invalid(format!(
            "abort_when: {text:?} is not `error_rate > FRACTION`, `p99 > DURATION` or `p50 > DURATION`"
        ))
    };
    let (metric, value) = text.split_once('>').ok_or_else(invalid)?;
    let value = value.trim();
    match metric.trim() {
        "error_rate" => value
            .parse::<f64>()
            .ok()
            .filter(|v| (0.0..=1.0).contains(v))
            .map(AbortCondition::ErrorRate)
            .ok_or_else(invalid),
        "p99" => humantime::parse_duration(value)
            .map(AbortCondition::P99)
            .map_err(|_| invalid()),
        "p50" => humantime::parse_duration(value)
            .map(AbortCondition::P50)
            .map_err(|_| invalid()),
        _ => Err(invalid()),
    }
}

/// The reason `condition` stops the experiment, when it holds.
fn breached(condition: &AbortCondition, during: &Period) -> Option<String> {
    match *condition {
        AbortCondition::ErrorRate(limit) if during.requests > 0 && during.error_rate > limit => {
            Some(format!("error_rate {:.3} > {limit}", during.error_rate))
        }
        AbortCondition::P99(limit) => during
            .p99_ms
            .filter(|p| *p > limit.as_secs_f64() * 1e3)
            .map(|p| format!("p99 {p:.0}ms > {limit:?}")),
        AbortCondition::P50(limit) => during
            .p50_ms
            .filter(|p| *p > limit.as_secs_f64() * 1e3)
            .map(|p| format!("p50 {p:.0}ms > {limit:?}")),
        AbortCondition::ErrorRate(_) => None,
    }
}

/// The route's figures from `from` to `to` (telemetry windows, whole seconds).
fn period(
    telemetry: &rafael_proxy::TelemetryHandle,
    route: &str,
    from: Nanos,
    to: Nanos,
) -> Period {
    let Some(route) = telemetry.route(route) else {
        return Period::default();
    };
    let windows = route.windows(from, to.max(from));
    let mut total: Option<Window> = None;
    for window in &windows {
        match total.as_mut() {
            None => total = Some(window.clone()),
            Some(total) => total.merge(window),
        }
    }
    let Some(total) = total else {
        return Period::default();
    };
    let responses = total.responses();
    let failed = total.outcome(Outcome::ServerError)
        + total.outcome(Outcome::RateLimited)
        + total.outcome(Outcome::BreakerOpen)
        + total.outcome(Outcome::Shed)
        + total.outcome(Outcome::Timeout);
    let ms = |q: f64| total.latency_quantile(q).map(|n| n as f64 / 1e6);
    Period {
        requests: responses,
        error_rate: if responses == 0 {
            0.0
        } else {
            failed as f64 / responses as f64
        },
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        attempts_per_request: if responses == 0 {
            0.0
        } else {
            total.attempts as f64 / responses as f64
        },
        retries: total.retries,
        rate_limited: total.outcome(Outcome::RateLimited),
        breaker_open: total.outcome(Outcome::BreakerOpen),
        shed: total.outcome(Outcome::Shed),
        timeouts: total.outcome(Outcome::Timeout),
    }
}

fn describe_rule(rule: &FaultRule) -> Value {
    let stage = match rule.stage {
        FaultStage::Upstream => "upstream",
        FaultStage::Downstream => "downstream",
    };
    let mut value = json!({ "kind": rule.kind_label(), "stage": stage, "percent": rule.percent });
    match &rule.kind {
        FaultKind::Delay { min, max } => {
            value["delay"] = json!(humantime::format_duration(*min).to_string());
            value["delay_max"] = json!(humantime::format_duration(*max).to_string());
        }
        FaultKind::Abort { status, .. } => value["abort"] = json!(status),
        FaultKind::Throttle { bytes_per_sec } => {
            value["throttle_bytes_per_sec"] = json!(bytes_per_sec)
        }
        FaultKind::Truncate { after } => value["truncate"] = json!(after),
        FaultKind::Brownout { per_request, max } => {
            value["per_request_in_flight"] =
                json!(humantime::format_duration(*per_request).to_string());
            value["max"] = json!(humantime::format_duration(*max).to_string());
        }
        FaultKind::Stall {
            period,
            stall,
            reset_percent,
        } => {
            value["period"] = json!(humantime::format_duration(*period).to_string());
            value["stall"] = json!(humantime::format_duration(*stall).to_string());
            value["reset_percent"] = json!(reset_percent);
        }
        FaultKind::Reset | FaultKind::Blackhole => {}
    }
    value
}

/// The report: the three periods, what was injected, what the policies did, a verdict, and
/// recommendations drawn from those figures.
fn report(
    state: &str,
    reason: Option<&str>,
    steady: &Period,
    during: &Period,
    after: &Period,
    injected: u64,
    rules: &[FaultRule],
) -> Value {
    let degraded = during.error_rate > steady.error_rate + 0.05;
    let recovered = after.requests == 0 || after.error_rate <= steady.error_rate + 0.05;
    let verdict = match (state, degraded, recovered) {
        ("aborted", _, _) => "aborted: the steady state broke beyond its abort condition",
        (_, false, true) => {
            "resilient: client-visible errors stayed within 5 points of the steady state"
        }
        (_, true, true) => {
            "degraded: clients saw more errors while the faults ran, and the route recovered"
        }
        (_, _, false) => "not recovered: errors stayed high after the faults were removed",
    };
    let mut recommendations = Vec::new();
    // Policy advice follows from upstream-stage faults only: downstream ones bypass the policies.
    let upstream = |r: &&FaultRule| r.stage == FaultStage::Upstream;
    let aborts = rules
        .iter()
        .filter(upstream)
        .any(|r| matches!(r.kind, FaultKind::Abort { .. } | FaultKind::Reset));
    let delays = rules.iter().filter(upstream).any(|r| {
        matches!(
            r.kind,
            FaultKind::Delay { .. }
                | FaultKind::Blackhole
                | FaultKind::Brownout { .. }
                | FaultKind::Stall { .. }
        )
    });
    if !rules.iter().any(|r| r.stage == FaultStage::Upstream) {
        recommendations.push(
            "These faults were injected at stage downstream, where policies do not act: run them at stage upstream to test the route's genome.".to_owned(),
        );
    }
    if aborts && degraded && during.retries == 0 {
        recommendations.push(format!(
            "Clients saw {:.0}% errors and no retry was sent: add a retry policy with retry_on = [\"gateway-error\", \"reset\"] and a budget.",
            during.error_rate * 100.0
        ));
    }
    if aborts && during.error_rate > 0.5 && during.breaker_open == 0 {
        recommendations.push(
            "More than half the requests failed and no circuit breaker shed load: add circuit_breaker so a failing upstream is not hammered.".to_owned(),
        );
    }
    if during.attempts_per_request > 1.5 {
        recommendations.push(format!(
            "Retries multiplied load by {:.2}x: lower retry.budget_ratio or max_attempts.",
            during.attempts_per_request
        ));
    }
    if delays {
        if let (Some(p99), Some(base)) = (during.p99_ms, steady.p99_ms) {
            if p99 > 4.0 * base.max(1.0) && during.timeouts == 0 {
                recommendations.push(format!(
                    "p99 rose from {base:.0} ms to {p99:.0} ms and nothing timed out: set a route timeout and a retry.per_try_timeout."
                ));
            }
        }
    }
    if recommendations.is_empty() {
        recommendations.push("No change suggested by these figures.".to_owned());
    }
    json!({
        "state": state,
        "abort_reason": reason,
        "steady_state": steady,
        "during": during,
        "after": after,
        "injected": { "faults": rules.iter().map(describe_rule).collect::<Vec<_>>(), "count": injected },
        "policies": {
            "retries": during.retries,
            "attempts_per_request": during.attempts_per_request,
            "rate_limited": during.rate_limited,
            "breaker_open": during.breaker_open,
            "shed": during.shed,
            "timeouts": during.timeouts,
        },
        "verdict": verdict,
        "recommendations": recommendations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abort_conditions_parse_and_bad_ones_are_refused() {
        assert_eq!(
            parse_condition("error_rate > 0.3").unwrap(),
            AbortCondition::ErrorRate(0.3)
        );
        assert_eq!(
            parse_condition(" p99 > 2s ").unwrap(),
            AbortCondition::P99(Duration::from_secs(2))
        );
        assert!(parse_condition("error_rate > 3").is_err());
        assert!(parse_condition("latency > 1s").is_err());
        assert!(parse_condition("p99 2s").is_err());
    }

    #[test]
    fn every_threat_level_is_defined_or_refused_clearly() {
        for severity in [
            Severity::Low,
            Severity::Medium,
            Severity::High,
            Severity::Critical,
        ] {
            let latency = threat_rules(Threat::Latency, severity).unwrap();
            assert!(matches!(latency[0].kind, FaultKind::Delay { .. }));
            let failure = threat_rules(Threat::UpstreamFailure, severity).unwrap();
            assert!(matches!(
                failure[0].kind,
                FaultKind::Abort { status: 503, .. }
            ));
        }
        assert_eq!(
            threat_rules(Threat::UpstreamFailure, Severity::Critical).unwrap()[0].percent,
            100.0
        );
        assert!(matches!(
            threat_rules(Threat::Brownout, Severity::High).unwrap()[0].kind,
            FaultKind::Brownout { .. }
        ));
        assert!(matches!(
            threat_rules(Threat::MemoryPressure, Severity::Low).unwrap()[0].kind,
            FaultKind::Stall { .. }
        ));
        assert!(
            threat_rules(Threat::Surge, Severity::Low)
                .unwrap()
                .is_empty()
        );
    }
}
