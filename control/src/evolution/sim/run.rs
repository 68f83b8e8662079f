//! The event loop: one genome, one prepared run.
//!
//! Requests go through the stages of DESIGN §2 in the data plane's order — downstream faults,
//! rate limit, concurrency, timeout, retry, breaker with endpoint choice, upstream faults, the
//! upstream — each stage deciding through the same `rafael_policy` engine or function as its
//! tower layer. Events are kept in one binary heap ordered by (time, sequence), so equal
//! times resolve in the order they were scheduled and a run is deterministic. Slots of
//! finished requests, attempts and jobs are reused; an event carries its slot's generation, so
//! an event for a slot that moved on (a deadline for an attempt that already answered) is
//! recognised and dropped instead of cancelled, which a binary heap cannot do cheaply.

use std::{cmp::Reverse, collections::BinaryHeap, time::Duration};

use rafael_config::{FaultStage, Genome};
use rafael_proxy::policy::{
    Nanos,
    breaker::{Admission, AttemptResult, Breaker, BreakerParams},
    budget::{BudgetParams, RetryBudget},
    choice::{self, Endpoints},
    concurrency::{AdaptiveLimit, InFlightCount},
    fault::{Effect, FaultRule, first_firing},
    nanos,
    outcome::{AttemptEnd, AttemptOutcome, charged},
    rate_limit::{Gcra, RateLimitState},
    retry::{AfterAttempt, Retry, decide},
};
use rafael_proxy::telemetry::{LATENCY_BUCKETS, latency_bucket};
use rand::{RngExt, SeedableRng, rngs::Xoshiro256PlusPlus};

use super::{
    Prepared, Report, SecondCounts,
    upstream::{Server, Shape},
};

/// Tells the policy stream's seed from the other streams'.
const STREAM: u64 = 0x706f_6c69_6379_2121;

/// One genome's run.
pub(super) struct Simulation<'p, 'a> {
    prepared: &'p Prepared<'a>,
    genome: &'p Genome,
    now: Nanos,
    events: BinaryHeap<Reverse<Event>>,
    sequence: u64,
    next_arrival: usize,
    requests: Slab<Request>,
    attempts: Slab<Attempt>,
    jobs: Slab<Job>,
    servers: Vec<Server>,
    shapes: Vec<Shape>,
    peaks: Vec<u32>,
    engines: Engines,
    faults: Vec<FaultRule>,
    rng: Xoshiro256PlusPlus,
    latencies: Vec<Nanos>,
    report: Report,
}

/// The route's engines, as the data plane's `RoutePolicy` holds them.
struct Engines {
    gcra: Option<Gcra>,
    rate: RateLimitState,
    in_flight: InFlightCount,
    adaptive: Option<AdaptiveLimit>,
    budget: Option<(BudgetParams, RetryBudget)>,
    breakers: Option<(BreakerParams, Vec<Breaker>)>,
}

/// A scheduled event. Ordered by time, then by the order it was scheduled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Event {
    at: Nanos,
    sequence: u64,
    kind: Kind,
    slot: u32,
    generation: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// A downstream fault's delay ended: the request goes on (or is reset).
    DownstreamDone,
    /// A backoff ended: the request's next attempt starts.
    Begin,
    /// An upstream fault's delay ended: the attempt reaches its endpoint (or is reset).
    Submit,
    /// A job's service ended.
    JobDone,
    /// An attempt's deadline (per-try or route) passed.
    Deadline,
    /// The client gave up.
    ClientGone,
}

#[derive(Debug, Clone, Copy)]
struct Request {
    /// Arrival index: the key of its upstream draws.
    index: u32,
    arrived: Nanos,
    deadline: Option<Nanos>,
    attempts: u32,
    permit: bool,
    avoid: Option<usize>,
    /// The attempt in flight, as (slot, generation).
    attempt: Option<(u32, u32)>,
    /// A downstream fault's delay ends in a reset.
    then_reset: bool,
}

#[derive(Debug, Clone, Copy)]
struct Attempt {
    request: (u32, u32),
    endpoint: usize,
    number: u32,
    started: Nanos,
    admission: Admission,
    /// Requests in flight on the route when it started (what the adaptive limit reads).
    route_in_flight: u32,
    per_try_at: Option<Nanos>,
    job: Option<(u32, u32)>,
    then_reset: bool,
}

#[derive(Debug, Clone, Copy)]
struct Job {
    attempt: (u32, u32),
    endpoint: usize,
    service: Nanos,
    fails: bool,
    state: JobState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobState {
    Queued,
    Running,
    /// Dropped from the queue (rafael gave up on it and the upstream does not keep working).
    Cancelled,
    /// Its worker was freed early, for the same reason; its `JobDone` is void.
    Freed,
}

/// A vector of reusable slots, each with a generation.
struct Slab<T> {
    slots: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
}

/// What a request's answer was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Relayed or synthesized with this status.
    Status(u16),
    /// Refused by rafael's own policies (429, shed, every breaker open).
    Rejected,
    /// The connection was reset (an injected downstream reset).
    Reset,
}

// === impl Simulation ===

impl<'p, 'a> Simulation<'p, 'a> {
    pub(super) fn new(prepared: &'p Prepared<'a>, genome: &'p Genome) -> Self {
        let model = prepared.run.model;
        let shapes: Vec<Shape> = model.endpoints.iter().map(Shape::new).collect();
        let endpoints = shapes.len().max(1);
        let engines = Engines {
            gcra: genome.rate_limit.as_ref().map(Gcra::from_genes),
            rate: RateLimitState::default(),
            in_flight: InFlightCount::default(),
            adaptive: genome
                .concurrency
                .as_ref()
                .filter(|genes| genes.adaptive)
                .map(|genes| AdaptiveLimit::new(genes.max_in_flight)),
            budget: genome
                .retry
                .as_ref()
                .map(|genes| (BudgetParams::from_genes(genes), RetryBudget::default())),
            breakers: genome.circuit_breaker.as_ref().map(|genes| {
                let breakers = (0..endpoints).map(|_| Breaker::default()).collect();
                (BreakerParams::from_genes(genes), breakers)
            }),
        };
        let requests = prepared.requests();
        Self {
            prepared,
            genome,
            now: 0,
            events: BinaryHeap::with_capacity(1024),
            sequence: 0,
            next_arrival: 0,
            requests: Slab::new(),
            attempts: Slab::new(),
            jobs: Slab::new(),
            servers: vec![Server::default(); endpoints],
            peaks: vec![0; endpoints],
            shapes,
            engines,
            faults: prepared.run.scenario.faults(),
            rng: Xoshiro256PlusPlus::seed_from_u64(prepared.run.seed ^ STREAM),
            latencies: Vec::with_capacity(requests),
            report: Report {
                offered: requests as u64,
                // One more than the run's: answers sent after it ends land there.
                seconds: vec![
                    SecondCounts::default();
                    prepared.run.duration.as_secs() as usize + 1
                ],
                ..Report::default()
            },
        }
    }

    /// Runs to the end: every arrival, and every event they cause.
    pub(super) fn run(mut self) -> Report {
        loop {
            let arrival = self.prepared.arrivals.get(self.next_arrival);
            let next = self.events.peek().map(|e| e.0.at);
            match (arrival, next) {
                (Some(at), Some(event)) if at <= event => self.arrive(at),
                (Some(at), None) => self.arrive(at),
                (_, Some(_)) => {
                    let Some(Reverse(event)) = self.events.pop() else {
                        break;
                    };
                    self.now = event.at;
                    self.dispatch(event);
                }
                (None, None) => break,
            }
        }
        self.finish_report()
    }

    fn schedule(&mut self, at: Nanos, kind: Kind, (slot, generation): (u32, u32)) {
        self.sequence += 1;
        self.events.push(Reverse(Event {
            at,
            sequence: self.sequence,
            kind,
            slot,
            generation,
        }));
    }

    fn dispatch(&mut self, event: Event) {
        let key = (event.slot, event.generation);
        match event.kind {
            Kind::DownstreamDone => {
                if let Some(request) = self.requests.get(key).copied() {
                    if request.then_reset {
                        self.answer(key, Answer::Reset);
                    } else {
                        self.admit(key);
                    }
                }
            }
            Kind::Begin => {
                if self.requests.get(key).is_some() {
                    self.begin(key);
                }
            }
            Kind::Submit => {
                if let Some(attempt) = self.attempts.get(key).copied() {
                    if attempt.then_reset {
                        self.end_attempt(key, AttemptEnd::Reset);
                    } else {
                        self.submit(key);
                    }
                }
            }
            Kind::JobDone => self.job_done(key),
            Kind::Deadline => {
                if let Some(attempt) = self.attempts.get(key).copied() {
                    let end = if attempt.per_try_at == Some(self.now) {
                        AttemptEnd::AttemptTimeout
                    } else {
                        AttemptEnd::RouteTimeout
                    };
                    self.abandon_job(attempt.job);
                    self.end_attempt(key, end);
                }
            }
            Kind::ClientGone => self.client_gone(key),
        }
    }

    // --- the request's stages, outer to inner ---

    fn arrive(&mut self, at: Nanos) {
        self.now = at;
        let index = u32::try_from(self.next_arrival).unwrap_or(u32::MAX);
        self.next_arrival += 1;
        self.second(at).offered += 1;
        let deadline = self
            .genome
            .timeout
            .map(|t| at.saturating_add(nanos(t.get())));
        let key = self.requests.insert(Request {
            index,
            arrived: at,
            deadline,
            attempts: 0,
            permit: false,
            avoid: None,
            attempt: None,
            then_reset: false,
        });
        let gives_up = at.saturating_add(nanos(self.prepared.run.client_timeout));
        if deadline.is_none_or(|deadline| deadline > gives_up) {
            self.schedule(gives_up, Kind::ClientGone, key);
        }
        // Downstream faults: what the client sees; the policies never do.
        let in_flight = self.engines.in_flight.get() + 1;
        let Some(effect) = self.fire(FaultStage::Downstream, in_flight) else {
            return self.admit(key);
        };
        match effect {
            Effect::Delay { wait, then_reset } => {
                let until = at.saturating_add(nanos(wait));
                match deadline.filter(|deadline| *deadline < until) {
                    Some(deadline) => {
                        // Outside the timeout layer, the stage keeps the deadline itself.
                        if let Some(request) = self.requests.get_mut(key) {
                            request.then_reset = false;
                        }
                        self.schedule(deadline, Kind::DownstreamDone, key);
                        // Marked as a timeout when it fires: the deadline is past by then.
                    }
                    None => {
                        if let Some(request) = self.requests.get_mut(key) {
                            request.then_reset = then_reset;
                        }
                        self.schedule(until, Kind::DownstreamDone, key);
                    }
                }
            }
            Effect::Abort { status } => self.answer(key, Answer::Status(status)),
            Effect::Reset => self.answer(key, Answer::Reset),
            Effect::Body => self.admit(key),
            Effect::Blackhole => {
                if let Some(deadline) = deadline {
                    self.schedule(deadline, Kind::DownstreamDone, key);
                }
            }
        }
    }

    /// Rate limit, concurrency limit, retry budget deposit; then the first attempt.
    fn admit(&mut self, key: (u32, u32)) {
        let Some(request) = self.requests.get(key).copied() else {
            return;
        };
        if request
            .deadline
            .is_some_and(|deadline| self.now >= deadline)
        {
            // A downstream delay ran into the deadline.
            return self.answer(key, Answer::Status(504));
        }
        if let Some(gcra) = &self.engines.gcra {
            if self.engines.rate.admit(gcra, self.now).is_err() {
                return self.answer(key, Answer::Rejected);
            }
        }
        let acquired = match &self.genome.concurrency {
            None => Some(self.engines.in_flight.acquire()),
            Some(genes) => {
                let limit = match &self.engines.adaptive {
                    Some(adaptive) => adaptive.limit(),
                    None => genes.max_in_flight,
                };
                self.engines.in_flight.try_acquire(limit)
            }
        };
        if acquired.is_none() {
            return self.answer(key, Answer::Rejected);
        }
        if let Some(request) = self.requests.get_mut(key) {
            request.permit = true;
        }
        if let Some((_, budget)) = &self.engines.budget {
            budget.deposit(self.now);
        }
        self.begin(key);
    }

    /// Chooses an endpoint for the request's next attempt and starts it.
    fn begin(&mut self, key: (u32, u32)) {
        let Some(request) = self.requests.get(key).copied() else {
            return;
        };
        let chosen = {
            let mut endpoints = SimEndpoints {
                servers: &self.servers,
                breakers: self.engines.breakers.as_mut(),
            };
            let rng = &mut self.rng;
            choice::choose(&mut endpoints, request.avoid, self.now, &mut |n| {
                rng.random_range(0..n)
            })
        };
        let Some((endpoint, admission)) = chosen else {
            return self.answer(key, Answer::Rejected);
        };
        let number = request.attempts + 1;
        self.report.attempts += 1;
        self.second(self.now).attempts += 1;
        if number > 1 {
            self.report.retries += 1;
        }
        let per_try_at = self
            .genome
            .retry
            .as_ref()
            .and_then(|genes| genes.per_try_timeout)
            .map(|timeout| self.now.saturating_add(nanos(timeout.get())));
        let attempt = self.attempts.insert(Attempt {
            request: key,
            endpoint,
            number,
            started: self.now,
            admission,
            route_in_flight: self.engines.in_flight.get(),
            per_try_at,
            job: None,
            then_reset: false,
        });
        if let Some(request) = self.requests.get_mut(key) {
            request.attempts = number;
            request.attempt = Some(attempt);
        }
        self.servers[endpoint].in_flight += 1;
        let deadline = match (per_try_at, request.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(at) = deadline {
            self.schedule(at, Kind::Deadline, attempt);
        }
        // Upstream faults: the upstream as the policies see it.
        let in_flight = self.engines.in_flight.get();
        let Some(effect) = self.fire(FaultStage::Upstream, in_flight) else {
            return self.submit(attempt);
        };
        match effect {
            Effect::Delay { wait, then_reset } => {
                if let Some(state) = self.attempts.get_mut(attempt) {
                    state.then_reset = then_reset;
                }
                self.schedule(self.now.saturating_add(nanos(wait)), Kind::Submit, attempt);
            }
            Effect::Abort { status } => self.end_attempt(attempt, AttemptEnd::Status(status)),
            Effect::Reset => self.end_attempt(attempt, AttemptEnd::Reset),
            Effect::Body => self.submit(attempt),
            // The attempt's own deadline ends it; without one, the client's patience.
            Effect::Blackhole => {}
        }
    }

    /// The attempt reaches its endpoint: a worker takes it, or it queues.
    fn submit(&mut self, key: (u32, u32)) {
        let Some(attempt) = self.attempts.get(key).copied() else {
            return;
        };
        let Some(request) = self.requests.get(attempt.request).copied() else {
            return;
        };
        let endpoint = attempt.endpoint;
        let Some(shape) = self.shapes.get(endpoint) else {
            // A model without endpoints: nothing answers.
            return;
        };
        let draw = shape.draw(
            &self.prepared.upstream,
            endpoint,
            self.prepared.run.seed,
            request.index,
            attempt.number,
            self.now,
        );
        let job = self.jobs.insert(Job {
            attempt: key,
            endpoint,
            service: draw.service,
            fails: draw.fails,
            state: JobState::Queued,
        });
        if let Some(state) = self.attempts.get_mut(key) {
            state.job = Some(job);
        }
        if self.servers[endpoint].has_free_worker(&self.shapes[endpoint]) {
            self.start_job(job);
        } else {
            self.servers[endpoint].queue.push_back(job.0);
        }
        let load = self.servers[endpoint].busy + self.servers[endpoint].queue.len() as u32;
        self.peaks[endpoint] = self.peaks[endpoint].max(load);
    }

    fn start_job(&mut self, key: (u32, u32)) {
        let Some(job) = self.jobs.get_mut(key) else {
            return;
        };
        job.state = JobState::Running;
        let (endpoint, service) = (job.endpoint, job.service);
        self.servers[endpoint].busy += 1;
        self.schedule(self.now.saturating_add(service), Kind::JobDone, key);
    }

    fn job_done(&mut self, key: (u32, u32)) {
        let Some(job) = self.jobs.remove(key) else {
            return;
        };
        if job.state == JobState::Freed {
            return;
        }
        self.servers[job.endpoint].busy -= 1;
        if self.attempts.get(job.attempt).is_some() {
            let end = if job.fails {
                match self.shapes[job.endpoint].failure_status {
                    Some(status) => AttemptEnd::Status(status),
                    None => AttemptEnd::Reset,
                }
            } else {
                AttemptEnd::Status(200)
            };
            if let Some(attempt) = self.attempts.get_mut(job.attempt) {
                attempt.job = None;
            }
            self.end_attempt(job.attempt, end);
        }
        self.start_next(job.endpoint);
    }

    /// Hands free workers of `endpoint` to its queue.
    fn start_next(&mut self, endpoint: usize) {
        while self.servers[endpoint].has_free_worker(&self.shapes[endpoint]) {
            let Some(slot) = self.servers[endpoint].queue.pop_front() else {
                break;
            };
            let key = (slot, self.jobs.generation(slot));
            match self.jobs.get(key).map(|job| job.state) {
                Some(JobState::Cancelled) => {
                    self.jobs.remove(key);
                }
                Some(_) => self.start_job(key),
                None => {}
            }
        }
    }

    /// rafael gave up on the attempt that holds `job`: the upstream keeps working on it
    /// (abandoned work), or drops it.
    fn abandon_job(&mut self, job: Option<(u32, u32)>) {
        let Some(key) = job else {
            return;
        };
        let Some(state) = self.jobs.get_mut(key) else {
            return;
        };
        let endpoint = state.endpoint;
        if self.shapes[endpoint].abandoned_work {
            return;
        }
        match state.state {
            JobState::Queued => state.state = JobState::Cancelled,
            JobState::Running => {
                state.state = JobState::Freed;
                self.servers[endpoint].busy -= 1;
                self.start_next(endpoint);
            }
            JobState::Cancelled | JobState::Freed => {}
        }
    }

    /// The breaker layer's and the retry layer's work after an attempt ended.
    fn end_attempt(&mut self, key: (u32, u32), end: AttemptEnd) {
        let Some(attempt) = self.attempts.remove(key) else {
            return;
        };
        let Some(request) = self.requests.get(attempt.request).copied() else {
            return;
        };
        self.servers[attempt.endpoint].in_flight -= 1;
        let latency = Duration::from_nanos(self.now.saturating_sub(attempt.started));
        let timeout = self.genome.timeout.map(|t| t.get()).unwrap_or_default();
        let fair = charged(end, attempt.started, request.deadline, timeout);
        if let (Some((params, breakers)), Some(genes)) = (
            self.engines.breakers.as_mut(),
            self.genome.circuit_breaker.as_ref(),
        ) {
            let result = if fair {
                end.breaker_result(genes, latency)
            } else {
                AttemptResult::Cancelled
            };
            breakers[attempt.endpoint].record(self.now, params, attempt.admission, result);
        }
        if end.outcome() == AttemptOutcome::Success {
            if let (Some(limit), Some(genes)) = (
                self.engines.adaptive.as_mut(),
                self.genome.concurrency.as_ref(),
            ) {
                limit.sample(
                    self.now,
                    nanos(latency),
                    attempt.route_in_flight,
                    genes.max_in_flight,
                );
            }
        }
        if let Some(state) = self.requests.get_mut(attempt.request) {
            state.attempt = None;
        }
        let decision = match &self.genome.retry {
            None => Retry::Relay,
            Some(genes) => {
                let after = AfterAttempt {
                    end: Some(end),
                    attempt: attempt.number,
                    idempotent: true,
                    replayable: true,
                    retry_after: None,
                    deadline: request.deadline,
                    now: self.now,
                    random: self.rng.random(),
                };
                let budget = self.engines.budget.as_ref();
                decide(genes, &after, |at| {
                    budget.is_some_and(|(params, budget)| budget.withdraw(at, params))
                })
            }
        };
        match decision {
            Retry::After(wait) => {
                if let Some(state) = self.requests.get_mut(attempt.request) {
                    state.avoid = Some(attempt.endpoint);
                }
                let at = self.now.saturating_add(nanos(wait));
                self.schedule(at, Kind::Begin, attempt.request);
            }
            Retry::Relay | Retry::Skip(_) => {
                let status = match end {
                    AttemptEnd::Status(status) => status,
                    AttemptEnd::ConnectFailure | AttemptEnd::Reset => 502,
                    AttemptEnd::ConnectTimeout
                    | AttemptEnd::AttemptTimeout
                    | AttemptEnd::RouteTimeout => 504,
                };
                self.answer(attempt.request, Answer::Status(status));
            }
        }
    }

    fn client_gone(&mut self, key: (u32, u32)) {
        let Some(request) = self.requests.remove(key) else {
            return;
        };
        self.report.abandoned += 1;
        if let Some(attempt) = request.attempt.and_then(|a| self.attempts.remove(a)) {
            self.servers[attempt.endpoint].in_flight -= 1;
            if let Some((params, breakers)) = self.engines.breakers.as_mut() {
                breakers[attempt.endpoint].record(
                    self.now,
                    params,
                    attempt.admission,
                    AttemptResult::Cancelled,
                );
            }
            self.abandon_job(attempt.job);
        }
        if request.permit {
            self.engines.in_flight.release();
        }
    }

    /// The per-second counts of the second holding `at` (the extra last one for any moment
    /// past the run's end).
    fn second(&mut self, at: Nanos) -> &mut SecondCounts {
        let seconds = &mut self.report.seconds;
        let last = seconds.len() - 1;
        &mut seconds[((at / 1_000_000_000) as usize).min(last)]
    }

    /// The request is answered: counted, and its slot freed.
    fn answer(&mut self, key: (u32, u32), answer: Answer) {
        let Some(request) = self.requests.remove(key) else {
            return;
        };
        if request.permit {
            self.engines.in_flight.release();
        }
        let latency = self.now.saturating_sub(request.arrived);
        self.report.answered += 1;
        self.latencies.push(latency);
        let second = self.second(self.now);
        second.answered += 1;
        second.latency_sum += latency;
        match answer {
            Answer::Status(status) => {
                if (200..300).contains(&status) && latency <= nanos(self.prepared.run.slo_latency) {
                    self.report.good += 1;
                    self.second(self.now).good += 1;
                }
                if status == 504 {
                    self.report.timed_out += 1;
                }
            }
            Answer::Rejected => self.report.rejected += 1,
            Answer::Reset => {}
        }
    }

    /// What the first fault rule of `stage` that fires now does to a request or attempt that
    /// meets `in_flight` requests in flight.
    fn fire(&mut self, stage: FaultStage, in_flight: u32) -> Option<Effect> {
        if self.faults.is_empty() {
            return None;
        }
        let rng = &mut self.rng;
        let index = first_firing(&self.faults, stage, |_| false, self.now, || rng.random())?;
        let rule = self.faults.get(index)?;
        Some(rule.effect(in_flight, self.now, self.rng.random()))
    }

    fn finish_report(mut self) -> Report {
        let quantile = |sorted: &mut Vec<Nanos>, q: f64| -> Duration {
            if sorted.is_empty() {
                return Duration::ZERO;
            }
            let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
            let (_, value, _) = sorted.select_nth_unstable(rank);
            Duration::from_nanos(*value)
        };
        let mut histogram = vec![0; LATENCY_BUCKETS];
        for latency in &self.latencies {
            histogram[latency_bucket(*latency)] += 1;
        }
        self.report.histogram = histogram;
        self.report.p50 = quantile(&mut self.latencies, 0.5);
        self.report.p99 = quantile(&mut self.latencies, 0.99);
        self.report.extrapolated = self
            .shapes
            .iter()
            .zip(&self.peaks)
            .any(|(shape, peak)| shape.workers.is_none() && *peak > shape.observed_peak.max(1));
        self.report
    }
}

/// The endpoints as the choice reads them in a simulation.
struct SimEndpoints<'s> {
    servers: &'s [Server],
    breakers: Option<&'s mut (BreakerParams, Vec<Breaker>)>,
}

impl Endpoints for SimEndpoints<'_> {
    fn count(&self) -> usize {
        self.servers.len()
    }

    fn load(&self, i: usize) -> usize {
        self.servers[i].in_flight
    }

    fn has_breakers(&self) -> bool {
        self.breakers.is_some()
    }

    fn available(&self, i: usize, now: Nanos) -> bool {
        self.breakers
            .as_ref()
            .is_some_and(|(params, breakers)| breakers[i].available(now, params))
    }

    fn admit(&mut self, i: usize, now: Nanos) -> Admission {
        match self.breakers.as_mut() {
            Some((params, breakers)) => breakers[i].admit(now, params).0,
            None => Admission::Refused,
        }
    }
}

// === impl Slab ===

impl<T> Slab<T> {
    fn new() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    fn insert(&mut self, value: T) -> (u32, u32) {
        match self.free.pop() {
            Some(slot) => {
                let entry = &mut self.slots[slot as usize];
                entry.0 = entry.0.wrapping_add(1);
                entry.1 = Some(value);
                (slot, entry.0)
            }
            None => {
                let slot = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
                self.slots.push((0, Some(value)));
                (slot, 0)
            }
        }
    }

    fn generation(&self, slot: u32) -> u32 {
        self.slots.get(slot as usize).map_or(0, |entry| entry.0)
    }

    fn get(&self, (slot, generation): (u32, u32)) -> Option<&T> {
        match self.slots.get(slot as usize) {
            Some((g, value)) if *g == generation => value.as_ref(),
            _ => None,
        }
    }

    fn get_mut(&mut self, (slot, generation): (u32, u32)) -> Option<&mut T> {
        match self.slots.get_mut(slot as usize) {
            Some((g, value)) if *g == generation => value.as_mut(),
            _ => None,
        }
    }

    fn remove(&mut self, (slot, generation): (u32, u32)) -> Option<T> {
        match self.slots.get_mut(slot as usize) {
            Some((g, value)) if *g == generation => {
                let taken = value.take();
                if taken.is_some() {
                    self.free.push(slot);
                }
                taken
            }
            _ => None,
        }
    }
}
