//! A route's live policy: its genome compiled into engine parameters, and the engine state that
//! requests share (rate limit buckets, retry budget, in-flight count, adaptive limit, one
//! breaker per upstream endpoint).
//!
//! Parameters belong to a snapshot; state outlives it. When a snapshot is rebuilt (a reload or
//! a genome swap) each route's state is carried over from the previous snapshot's route of the
//! same name, when the new snapshot goes live ([`RoutePolicy::activate`]; a rejected one changes
//! nothing): kept as it is when its parameters did not change, rescaled when they did (a
//! rate-limited route stays limited, a breaker keeps its window and its open state, the learned
//! concurrency limit stays within the new ceiling), and reset only when its meaning changed
//! (a per-key limit that now keys on something else).

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use metrics::{Counter, Gauge, counter, gauge};
use rafael_config::{Genome, RateLimitKey};

use crate::{
    metrics::{
        BREAKER_STATE, BREAKER_TRANSITIONS_TOTAL, CONCURRENCY_LIMIT, GENOME_GENERATION, IN_FLIGHT,
        RATE_LIMITED_TOTAL, RETRIES_SKIPPED_TOTAL, RETRIES_TOTAL, SHED_TOTAL, SKIP_REASONS,
        SkipReason,
    },
    policy::{
        Nanos,
        breaker::{Admission, AttemptResult, Breaker, BreakerParams, BreakerState, Transition},
        budget::{BudgetParams, RetryBudget},
        concurrency::{AdaptiveLimit, InFlightCount},
        rate_limit::{Gcra, KeyedRateLimit, RateLimitState},
    },
    telemetry::RouteTelemetry,
};

/// Everything the policy layers need for one route in one snapshot.
#[derive(Debug)]
pub struct RoutePolicy {
    genome: Genome,
    /// Bumped each time the genome changes (a swap or a reload that changed it).
    generation: u64,
    gcra: Option<Gcra>,
    /// The limit of the policy this one replaces, to rescale the shared bucket from.
    previous_gcra: Option<Gcra>,
    budget: Option<BudgetParams>,
    breaker: Option<BreakerParams>,
    state: Arc<PolicyState>,
    breakers: Box<[Arc<EndpointBreaker>]>,
    metrics: PolicyMetrics,
}

/// Engine state shared by a route's requests across snapshots.
#[derive(Debug, Default)]
struct PolicyState {
    rate_limit: RateLimitState,
    keyed: Mutex<Option<(RateLimitKey, Arc<KeyedRateLimit>)>>,
    budget: RetryBudget,
    in_flight: InFlightCount,
    adaptive: Mutex<Option<AdaptiveLimit>>,
    /// The adaptive limit's current value, published whenever it moves, so admitting a request
    /// reads an atomic instead of taking the engine's lock.
    adaptive_limit: AtomicU32,
    telemetry: Arc<RouteTelemetry>,
    /// Retries skipped, all reasons (the metrics have them by reason).
    skipped: AtomicU64,
}

/// One endpoint's breaker, with its metric handles.
#[derive(Debug)]
pub struct EndpointBreaker {
    address: String,
    /// The engine's state and epoch (`state | epoch << 8`), readable without the lock: the
    /// closed fast path.
    state: AtomicU64,
    engine: Mutex<Breaker>,
    state_gauge: Gauge,
    /// Transitions to closed, half-open and open.
    transitions: [Counter; 3],
    /// Transitions to open.
    trips: AtomicU64,
}

/// A concurrency slot held until the response body ends.
#[derive(Debug)]
pub struct Permit {
    state: Arc<PolicyState>,
    gauge: Gauge,
}

#[derive(Debug)]
struct PolicyMetrics {
    retries: Counter,
    skipped: [Counter; SKIP_REASONS.len()],
    rate_limited: Counter,
    shed: Counter,
    limit: Gauge,
    in_flight: Gauge,
    generation: Gauge,
}

// === impl RoutePolicy ===

impl RoutePolicy {
    /// Compiles `genome` for route `name` served by the upstream endpoints at `endpoints`
    /// (addresses, in the upstream's order), carrying state over from `previous` (the same
    /// route in the snapshot being replaced).
    pub fn build<'a>(
        name: &str,
        genome: &Genome,
        endpoints: impl IntoIterator<Item = &'a str>,
        previous: Option<&RoutePolicy>,
    ) -> Self {
        let gcra = genome.rate_limit.as_ref().map(Gcra::from_genes);
        let budget = genome.retry.as_ref().map(BudgetParams::from_genes);
        let breaker = genome
            .circuit_breaker
            .as_ref()
            .map(BreakerParams::from_genes);
        let state = previous.map_or_else(Arc::default, |p| p.state.clone());
        let generation = match previous {
            Some(p) if p.genome == *genome => p.generation,
            Some(p) => p.generation + 1,
            None => 1,
        };

        // Breakers: one per endpoint, kept by address (params are per call, so a changed genome
        // rescales them lazily; see `Breaker::record`).
        let breakers = match &breaker {
            None => Box::default(),
            Some(_) => endpoints
                .into_iter()
                .map(|address| {
                    previous
                        .and_then(|p| p.breakers.iter().find(|b| b.address == address))
                        .cloned()
                        .unwrap_or_else(|| Arc::new(EndpointBreaker::new(name, address)))
                })
                .collect(),
        };

        Self {
            genome: genome.clone(),
            generation,
            gcra,
            previous_gcra: previous.and_then(|p| p.gcra),
            budget,
            breaker,
            state,
            breakers,
            metrics: PolicyMetrics::new(name),
        }
    }

    /// Makes this policy the live one: carries the shared engine state over to its parameters
    /// (see the module doc) and publishes its gauges. Called once, just before its snapshot is
    /// stored; a snapshot that is built and then rejected never touches the live state.
    pub fn activate(&self, now: Nanos) {
        let genome = &self.genome;
        let state = &self.state;
        // Rate limit: rescale the backlog to the new rate; a new key kind starts a new table.
        if let (Some(before), Some(after)) = (self.previous_gcra, self.gcra) {
            state.rate_limit.rescale(&before, &after, now);
        }
        {
            let mut keyed = state.keyed.lock().unwrap_or_else(PoisonError::into_inner);
            *keyed = match (genome.rate_limit.as_ref(), keyed.take()) {
                (Some(genes), Some((key, table))) if genes.key.as_ref() == Some(&key) => {
                    if let (Some(before), Some(after)) = (self.previous_gcra, self.gcra) {
                        table.rescale(&before, &after, genes.max_keys, now);
                    }
                    Some((key, table))
                }
                (Some(genes), _) => genes
                    .key
                    .clone()
                    .map(|key| (key, Arc::new(KeyedRateLimit::new(genes.max_keys)))),
                (None, _) => None,
            };
        }
        let limit = {
            let mut adaptive = state
                .adaptive
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *adaptive = match (genome.concurrency.as_ref(), adaptive.take()) {
                (Some(genes), Some(mut limit)) if genes.adaptive => {
                    limit.rescale(genes.max_in_flight);
                    Some(limit)
                }
                (Some(genes), _) if genes.adaptive => Some(AdaptiveLimit::new(genes.max_in_flight)),
                _ => None,
            };
            if let Some(limit) = adaptive.as_ref() {
                state.adaptive_limit.store(limit.limit(), Ordering::Relaxed);
            }
            match genome.concurrency.as_ref() {
                Some(genes) => adaptive
                    .as_ref()
                    .map_or(genes.max_in_flight, AdaptiveLimit::limit),
                None => 0,
            }
        };
        self.metrics.limit.set(f64::from(limit));
        self.metrics.generation.set(self.generation as f64);
        for breaker in self.breakers.iter() {
            breaker.state_gauge.set(f64::from(breaker.state() as u8));
        }
    }

    /// The genome.
    pub fn genome(&self) -> &Genome {
        &self.genome
    }

    /// How many times this route's genome changed since it was first built, plus one; or
    /// the generation the control plane's lineage gave it ([`RoutePolicy::set_generation`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Numbers this policy `generation` (before it is activated).
    pub fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    /// Admits or refuses one request by the route's rate limit. `key` is the client key when
    /// the limit is per key (`None` then means the request has no key: it shares the route's
    /// limit).
    pub fn admit_rate(&self, key: Option<&[u8]>, now: Nanos) -> Result<(), Duration> {
        let Some(gcra) = &self.gcra else {
            return Ok(());
        };
        let keyed = match key {
            Some(key) => self
                .state
                .keyed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .map(|(_, table)| table.clone())
                .map(|table| table.admit(gcra, key, now)),
            None => None,
        };
        let result = keyed.unwrap_or_else(|| self.state.rate_limit.admit(gcra, now));
        result.map_err(|refused| {
            self.metrics.rate_limited.increment(1);
            Duration::from_nanos(refused.retry_after)
        })
    }

    /// Takes a concurrency slot, or `None` when the route is at its limit (counted as shed).
    /// Returns the slot and the in-flight count including it.
    pub fn acquire(&self) -> Option<(Permit, u32)> {
        let in_flight = match &self.genome.concurrency {
            None => self.state.in_flight.acquire(),
            Some(genes) => {
                let limit = if genes.adaptive {
                    self.adaptive_limit().unwrap_or(genes.max_in_flight)
                } else {
                    genes.max_in_flight
                };
                match self.state.in_flight.try_acquire(limit) {
                    Some(count) => count,
                    None => {
                        self.metrics.shed.increment(1);
                        return None;
                    }
                }
            }
        };
        self.metrics.in_flight.increment(1.0);
        let permit = Permit {
            state: self.state.clone(),
            gauge: self.metrics.in_flight.clone(),
        };
        Some((permit, in_flight))
    }

    /// The adaptive limit now, when the route has one.
    pub fn adaptive_limit(&self) -> Option<u32> {
        let adaptive = self.genome.concurrency.as_ref().is_some_and(|g| g.adaptive);
        adaptive.then(|| self.state.adaptive_limit.load(Ordering::Relaxed))
    }

    /// Feeds an attempt latency to the adaptive limit (when the route has one).
    pub fn sample_latency(&self, now: Nanos, rtt: Duration, in_flight: u32) {
        let Some(genes) = self.genome.concurrency.as_ref().filter(|g| g.adaptive) else {
            return;
        };
        let mut adaptive = self
            .state
            .adaptive
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(limit) = adaptive.as_mut() {
            let rtt = crate::policy::nanos(rtt);
            if let Some(changed) = limit.sample(now, rtt, in_flight, genes.max_in_flight) {
                self.state.adaptive_limit.store(changed, Ordering::Relaxed);
                self.metrics.limit.set(f64::from(changed));
            }
        }
    }

    /// Counts a request against the retry budget.
    pub fn deposit(&self, now: Nanos) {
        if self.budget.is_some() {
            self.state.budget.deposit(now);
        }
    }

    /// Takes a retry from the budget (counted as a retry when granted); false when it is
    /// spent, which the caller counts as a skip.
    pub fn withdraw(&self, now: Nanos) -> bool {
        let Some(params) = &self.budget else {
            return false;
        };
        let granted = self.state.budget.withdraw(now, params);
        if granted {
            self.metrics.retries.increment(1);
            self.state.telemetry.retry(now);
        }
        granted
    }

    /// Counts a retry that was not made, and why.
    pub fn skip(&self, reason: SkipReason) {
        self.metrics.skipped[reason as usize].increment(1);
        self.state.skipped.fetch_add(1, Ordering::Relaxed);
    }

    /// Retries skipped since the route was first built (all reasons).
    pub fn retries_skipped(&self) -> u64 {
        self.state.skipped.load(Ordering::Relaxed)
    }

    /// Times any of the route's breakers opened since they were created.
    pub fn breaker_trips(&self) -> u64 {
        self.breakers
            .iter()
            .map(|b| b.trips.load(Ordering::Relaxed))
            .sum()
    }

    /// The breaker thresholds and the breaker of endpoint `index`, when the route has them.
    pub fn breaker(&self, index: usize) -> Option<(&BreakerParams, &EndpointBreaker)> {
        Some((self.breaker.as_ref()?, self.breakers.get(index)?))
    }

    /// Every endpoint's breaker, in the upstream's endpoint order (empty without breakers).
    pub fn breakers(&self) -> &[Arc<EndpointBreaker>] {
        &self.breakers
    }

    /// The route's telemetry (DESIGN §8).
    pub fn telemetry(&self) -> &Arc<RouteTelemetry> {
        &self.state.telemetry
    }

    /// Requests in flight on the route now.
    pub fn in_flight(&self) -> u32 {
        self.state.in_flight.get()
    }
}

// === impl EndpointBreaker ===

impl EndpointBreaker {
    fn new(route: &str, address: &str) -> Self {
        let labels = |to: &'static str| counter!(BREAKER_TRANSITIONS_TOTAL, "route" => route.to_owned(), "endpoint" => address.to_owned(), "to" => to);
        let state_gauge =
            gauge!(BREAKER_STATE, "route" => route.to_owned(), "endpoint" => address.to_owned());
        Self {
            address: address.to_owned(),
            state: AtomicU64::new(BreakerState::Closed as u64),
            engine: Mutex::new(Breaker::default()),
            state_gauge,
            transitions: [labels("closed"), labels("half_open"), labels("open")],
            trips: AtomicU64::new(0),
        }
    }

    /// The endpoint's address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The state now (an open breaker whose time is up reads open until an attempt tries it).
    pub fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) & 0xFF {
            0 => BreakerState::Closed,
            1 => BreakerState::HalfOpen,
            _ => BreakerState::Open,
        }
    }

    /// True when an attempt at `now` would be admitted. Closed breakers answer without a lock.
    pub fn available(&self, now: Nanos, params: &BreakerParams) -> bool {
        self.state() == BreakerState::Closed || self.lock().available(now, params)
    }

    /// Decides one attempt.
    pub fn admit(&self, now: Nanos, params: &BreakerParams) -> Admission {
        let mirror = self.state.load(Ordering::Acquire);
        if mirror & 0xFF == BreakerState::Closed as u64 {
            return Admission::Allowed {
                epoch: (mirror >> 8) as u32,
            };
        }
        let mut engine = self.lock();
        let (admission, transition) = engine.admit(now, params);
        self.publish(&engine, transition);
        admission
    }

    /// Records how an attempt admitted as `admission` ended.
    pub fn record(
        &self,
        now: Nanos,
        params: &BreakerParams,
        admission: Admission,
        result: AttemptResult,
    ) {
        let mut engine = self.lock();
        let transition = engine.record(now, params, admission, result);
        self.publish(&engine, transition);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.engine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, engine: &Breaker, transition: Option<Transition>) {
        if let Some(transition) = transition {
            let to = transition.to as u8;
            let mirror = u64::from(to) | u64::from(engine.epoch()) << 8;
            self.state.store(mirror, Ordering::Release);
            self.state_gauge.set(f64::from(to));
            self.transitions[usize::from(to)].increment(1);
            if transition.to == BreakerState::Open {
                self.trips.fetch_add(1, Ordering::Relaxed);
            }
            tracing::info!(endpoint = %self.address, from = ?transition.from, to = ?transition.to, "circuit breaker");
        }
    }
}

// === impl Permit ===

impl Drop for Permit {
    fn drop(&mut self) {
        self.state.in_flight.release();
        self.gauge.decrement(1.0);
    }
}

// === impl PolicyMetrics ===

impl PolicyMetrics {
    fn new(route: &str) -> Self {
        let route = route.to_owned();
        Self {
            retries: counter!(RETRIES_TOTAL, "route" => route.clone()),
            skipped: SKIP_REASONS.map(
                |reason| counter!(RETRIES_SKIPPED_TOTAL, "route" => route.clone(), "reason" => reason),
            ),
            rate_limited: counter!(RATE_LIMITED_TOTAL, "route" => route.clone()),
            shed: counter!(SHED_TOTAL, "route" => route.clone()),
            limit: gauge!(CONCURRENCY_LIMIT, "route" => route.clone()),
            in_flight: gauge!(IN_FLIGHT, "route" => route.clone()),
            generation: gauge!(GENOME_GENERATION, "route" => route),
        }
    }
}
