//! Calibration: what the fit cannot see, inferred by simulation.
//!
//! The fit reads the upstream from the attempts that answered. Where most attempts timed out
//! (the model's `censored_secs`) that reading fails: a capacity drop behind a queue, with
//! retries on timeouts, makes every attempt wait past its deadline, and the few that answer
//! are the lucky ones. Their latencies say little about the upstream, and an endpoint that was
//! never saturated while healthy has no fitted capacity, so the simulator has no queue for a
//! storm to grow in. The model check then refuses the model, rightly, and no round proposes.
//!
//! What is missing is a few numbers the telemetry constrains only through their consequences:
//! the workers of the endpoints with no fitted capacity, and, for each run of censored
//! seconds, when the slowdown began, how long it lasted and how slow it was (the queue it
//! leaves behind outlasts it, so the censored seconds are longer than the slowdown). They are
//! chosen the way one calibrates any simulator: the incumbent genome is replayed on the model
//! with each candidate's values, and the values kept are those under which the replay best
//! matches what the route did second by second: the share of requests answered as goodput,
//! the attempts per request and the mean latency, the series a storm writes into the windows
//! (the latency also rules out too few workers, which would queue in the healthy seconds).
//! The search is coordinate descent over small grids: workers (a ladder of powers of √2) and
//! factors (1.5 to 32) together, since what a drop leaves is their ratio, then the start (the
//! censored run's first second or one of the two before), then the length (a √2 ladder and
//! the current length's neighbours), repeated until nothing improves.
//!
//! A window does not always pin the workers down. What a drop does with the incumbent is
//! mostly set by the capacity left during it (workers over slowed service time); the workers
//! themselves show only in how fast the queue drains afterwards, and a storm still running at
//! the window's end never shows it. So after the search every worker count is scored with its
//! best factor, and of those whose replay is about as close as the best (within
//! [`PLAUSIBLE_LOSS`]), the model takes the fewest: a genome is then judged on the least
//! capacity the evidence allows, never on a drain nobody saw. The range is published
//! (`calibration.workers_range`).
//!
//! The values are inferred, not observed, and the model says so (`calibration`); the model
//! check then judges the calibrated model like any other, and it replaces the fitted one only
//! when its worst check error is smaller.

use std::{collections::HashMap, time::Duration};

use rafael_config::{Config, Genome};
use rafael_proxy::telemetry::Window;

use super::{
    CalibratedBrownout, Calibration, Capacity, Model, Period, Regime, RegimeKind, check::Observed,
    fit::SATURATED_FACTOR,
};
use crate::evolution::{
    scenario::Scenario,
    sim::{self, upstream::log_normal},
};

/// Service time factors tried for a brownout.
const FACTORS: [f64; 10] = [1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0];
/// Workers tried for an endpoint with no fitted capacity: powers of √2, rounded (also the
/// coarse grid of a brownout's length in seconds).
const WORKERS: [u32; 17] = [
    1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128, 181, 256, 362,
];
/// A worker count is plausible when its best replay's loss is within this share of the best
/// one's, plus [`LOSS_NOISE`].
const PLAUSIBLE_LOSS: f64 = 0.25;
/// The loss one seed's noise alone makes (per-second shares of a few hundred requests).
const LOSS_NOISE: f64 = 0.002;
/// Passes over every coordinate at most.
const MAX_PASSES: usize = 4;
/// Requests one calibration run simulates at most: a busy route's window is cut to its newest
/// part, as the model check does.
const MAX_RUN_REQUESTS: u64 = 50_000;
/// Healthy seconds replayed before the first censored run (enough to show that too few
/// workers would queue there).
const LEAD_SECS: u32 = 5;
/// The seed of every calibration run (one seed: the loss compares shapes, not noise).
const SEED: u64 = 0x6361_6c69_6272_6174;

/// The unknowns of one calibration.
#[derive(Debug, Clone, PartialEq)]
struct Unknowns {
    workers: Option<u32>,
    brownouts: Vec<CalibratedBrownout>,
}

/// The window's part the calibration replays, and what the route did in each of its seconds.
struct Target<'m> {
    /// The model cut to the replayed part, with the fitted brownouts over censored seconds
    /// removed.
    base: Model,
    /// Seconds of the full window before the replayed part.
    cut: u32,
    /// Per replayed second: goodput share, attempts per request and mean latency of the
    /// answers (nanoseconds), `None` without requests.
    seconds: Vec<Option<(f64, f64, Option<f64>)>>,
    incumbent: &'m Genome,
    slo: Duration,
    client_timeout: Duration,
}

/// The model with the unknowns of its censored seconds calibrated, or `None` when it has no
/// censored seconds in the part replayed, `windows` (the complete windows it was fitted on)
/// do not match it, or no candidate replays the window better than the fitted model.
pub fn calibrate(
    model: &Model,
    windows: &[Window],
    incumbent: &Genome,
    config: &Config,
) -> Option<Model> {
    if model.censored_secs.is_empty() || windows.len() as u64 != model.window_secs {
        return None;
    }
    let cut = u32::try_from(model.window_secs - model.replay_secs(MAX_RUN_REQUESTS)).ok()?;
    let runs = censored_runs(&model.censored_secs, cut);
    let first = runs.first()?.0;
    // The replay starts a few healthy seconds before the first censored run: what came
    // earlier leaves no queue behind, and every second replayed is paid for hundreds of times.
    let cut = cut.max(first.saturating_sub(LEAD_SECS));
    let secs = model.window_secs - u64::from(cut);
    let objectives = &config.evolution.objectives;
    let slo = objectives.slo_latency.get();
    let target = Target {
        base: without_brownouts_over(&model.last_seconds(secs), &runs, cut),
        cut,
        seconds: windows[cut as usize..]
            .iter()
            .map(|w| {
                (w.requests > 0).then(|| {
                    let observed = Observed::of(std::slice::from_ref(w), slo);
                    let answered = w.responses();
                    let latency = (answered > 0).then(|| w.latency_sum as f64 / answered as f64);
                    (observed.goodput, observed.amplification, latency)
                })
            })
            .collect(),
        incumbent,
        slo,
        client_timeout: objectives.client_timeout.get(),
    };
    let loss_before = target.loss_of(&model.last_seconds(secs));
    let needs_workers = model.endpoints.iter().any(|e| e.capacity.is_none());
    let floor = unqueued_floor(model);
    let ladder: Vec<u32> = if needs_workers {
        WORKERS.iter().copied().filter(|&w| w >= floor).collect()
    } else {
        Vec::new()
    };
    let mut best = Unknowns {
        workers: ladder.get(ladder.len() / 3).copied(),
        brownouts: runs
            .iter()
            .map(|&(start, length)| CalibratedBrownout {
                start_sec: start.saturating_sub(1).max(cut),
                secs: (length / 2).max(1),
                service_time_factor: 4.0,
            })
            .collect(),
    };
    let mut search = Search {
        target: &target,
        loss: f64::MAX,
        simulations: 0,
        seen: HashMap::new(),
    };
    search.loss = search.score(&best);
    for _ in 0..MAX_PASSES {
        let before = best.clone();
        for (i, &(start, length)) in runs.iter().enumerate() {
            let end = start + length;
            // Workers and this brownout's factor together: a drop leaves their ratio.
            let pairs: Vec<Unknowns> = ladder
                .iter()
                .map(|&w| Some(w))
                .chain(ladder.is_empty().then_some(None))
                .flat_map(|workers| FACTORS.iter().map(move |&factor| (workers, factor)))
                .map(|(workers, factor)| {
                    let mut candidate = best.clone();
                    candidate.workers = workers;
                    candidate.brownouts[i].service_time_factor = factor;
                    candidate
                })
                .collect();
            best = search.best_of(best, pairs);
            // The slowdown starts up to two seconds before its censored run (the queue takes
            // a moment to push attempts past their deadline) or with it.
            let starts: Vec<Unknowns> = (start.saturating_sub(2).max(cut)..=start)
                .map(|s| {
                    let mut candidate = best.clone();
                    let brownout = &mut candidate.brownouts[i];
                    brownout.start_sec = s;
                    brownout.secs = brownout.secs.min(end - s);
                    candidate
                })
                .collect();
            best = search.best_of(best, starts);
            // Lengths on the √2 ladder, the whole run, and the current one's neighbours (the
            // next pass refines from there): a long storm has tens of them.
            let most = end - best.brownouts[i].start_sec;
            let current = best.brownouts[i].secs;
            let mut lengths: Vec<u32> = WORKERS
                .iter()
                .copied()
                .chain([current.saturating_sub(1), current + 1, most])
                .filter(|&l| (1..=most).contains(&l))
                .collect();
            lengths.sort_unstable();
            lengths.dedup();
            let lengths: Vec<Unknowns> = lengths
                .into_iter()
                .map(|l| {
                    let mut candidate = best.clone();
                    candidate.brownouts[i].secs = l;
                    candidate
                })
                .collect();
            best = search.best_of(best, lengths);
        }
        if best == before {
            break;
        }
    }
    // Every worker count with its best factors, and the fewest that replay about as well.
    let mut profile: Vec<(u32, f64, Unknowns)> = Vec::new();
    for &workers in &ladder {
        let mut at = Unknowns {
            workers: Some(workers),
            ..best.clone()
        };
        for i in 0..runs.len() {
            let factors: Vec<Unknowns> = FACTORS
                .iter()
                .map(|&factor| {
                    let mut candidate = at.clone();
                    candidate.brownouts[i].service_time_factor = factor;
                    candidate
                })
                .collect();
            at = search.best_of_all(factors);
            // Then finer than the grid (steps of 2^(1/4) and 2^(1/8)): with the workers
            // fixed, the capacity left during the drop moves with the factor alone.
            for step in [0.25, 0.125] {
                let factor = at.brownouts[i].service_time_factor;
                let mut finer = vec![at.clone()];
                for direction in [-1.0, 1.0] {
                    let mut candidate = at.clone();
                    candidate.brownouts[i].service_time_factor =
                        factor * f64::powf(2.0, direction * step);
                    finer.push(candidate);
                }
                at = search.best_of_all(finer);
            }
        }
        let loss = search.score(&at);
        profile.push((workers, loss, at));
    }
    let best_loss = profile.iter().map(|p| p.1).fold(search.loss, f64::min);
    let plausible: Vec<&(u32, f64, Unknowns)> = profile
        .iter()
        .filter(|p| p.1 <= best_loss * (1.0 + PLAUSIBLE_LOSS) + LOSS_NOISE)
        .collect();
    let workers_range = match (plausible.first(), plausible.last()) {
        (Some(low), Some(high)) => Some([low.0, high.0]),
        _ => None,
    };
    let (chosen, loss) = match plausible.first() {
        Some((_, loss, unknowns)) => (unknowns.clone(), *loss),
        None => (best, search.loss),
    };
    if loss >= loss_before {
        return None;
    }
    let mut calibrated = target.apply(&without_brownouts_over(model, &runs, 0), 0, &chosen);
    calibrated.fidelity = None;
    calibrated.calibration = Some(Calibration {
        workers: chosen.workers,
        workers_range,
        brownouts: chosen.brownouts,
        loss_before,
        loss,
        simulations: search.simulations,
    });
    Some(calibrated)
}

/// The coordinate descent's state: the best loss so far, the simulations run, and every loss
/// computed (a pass's grid meets points of the last one, and the profile the last pass's).
struct Search<'t, 'm> {
    target: &'t Target<'m>,
    loss: f64,
    simulations: u32,
    seen: HashMap<UnknownsKey, f64>,
}

/// [`Unknowns`] as a map key (factors by their bits).
type UnknownsKey = (Option<u32>, Vec<(u32, u32, u64)>);

impl Search<'_, '_> {
    /// The loss of `unknowns`, simulated once.
    fn score(&mut self, unknowns: &Unknowns) -> f64 {
        let key = (
            unknowns.workers,
            unknowns
                .brownouts
                .iter()
                .map(|b| (b.start_sec, b.secs, b.service_time_factor.to_bits()))
                .collect(),
        );
        if let Some(&loss) = self.seen.get(&key) {
            return loss;
        }
        self.simulations += 1;
        let loss = self.target.loss(unknowns);
        self.seen.insert(key, loss);
        loss
    }

    /// `best`, or the first of `candidates` that replays the window better than it.
    fn best_of(&mut self, mut best: Unknowns, candidates: Vec<Unknowns>) -> Unknowns {
        for candidate in candidates {
            if candidate == best {
                continue;
            }
            let loss = self.score(&candidate);
            if loss < self.loss {
                self.loss = loss;
                best = candidate;
            }
        }
        best
    }

    /// The best of `candidates`, whatever the best so far.
    fn best_of_all(&mut self, candidates: Vec<Unknowns>) -> Unknowns {
        let mut best: Option<(f64, Unknowns)> = None;
        for candidate in candidates {
            let loss = self.score(&candidate);
            if best.as_ref().is_none_or(|b| loss < b.0) {
                best = Some((loss, candidate));
            }
        }
        best.map(|b| b.1)
            .unwrap_or_else(|| unreachable!("no candidates"))
    }
}

/// Runs of censored seconds at or after `cut`, as `(first second, length)`.
fn censored_runs(censored: &[u32], cut: u32) -> Vec<(u32, u32)> {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for &second in censored.iter().filter(|&&s| s >= cut) {
        match runs.last_mut() {
            Some((start, length)) if *start + *length == second => *length += 1,
            _ => runs.push((second, 1)),
        }
    }
    runs
}

/// `model` without its route-wide brownout periods that overlap a censored run (`runs` in the
/// full window's seconds, `model` starting `cut` seconds into it): their latencies are the
/// lucky attempts', and the calibrated brownouts take their place.
fn without_brownouts_over(model: &Model, runs: &[(u32, u32)], cut: u32) -> Model {
    let mut model = model.clone();
    for regime in &mut model.regimes {
        if regime.kind != RegimeKind::Brownout || regime.endpoint.is_some() {
            continue;
        }
        regime.periods.retain(|p| {
            let (start, end) = (p.start_sec + cut, p.start_sec + cut + p.secs);
            // The seconds just before a censored run are its onset, read by the calibration.
            !runs
                .iter()
                .any(|&(s, l)| start < s + l && s.saturating_sub(2) < end)
        });
    }
    model.regimes.retain(|r| !r.periods.is_empty());
    model
}

/// The least workers an endpoint with no fitted capacity can have: the highest load at which
/// it still answered at its unloaded speed.
fn unqueued_floor(model: &Model) -> u32 {
    model
        .endpoints
        .iter()
        .filter(|e| e.capacity.is_none())
        .filter_map(|e| {
            let base = e.by_load.iter().find(|b| b.samples >= 10)?;
            e.by_load
                .iter()
                .filter(|b| b.samples >= 10 && b.p50_ms < SATURATED_FACTOR * base.p50_ms)
                .map(|b| b.in_flight)
                .max()
        })
        .max()
        .unwrap_or(1)
        .max(1)
}

// === impl Target ===

impl Target<'_> {
    /// The loss of the base model with `unknowns`.
    fn loss(&self, unknowns: &Unknowns) -> f64 {
        self.loss_of(&self.apply(&self.base, self.cut, unknowns))
    }

    /// `base` (starting `cut` seconds into the window) with `unknowns` set.
    fn apply(&self, base: &Model, cut: u32, unknowns: &Unknowns) -> Model {
        let mut model = base.clone();
        if let Some(workers) = unknowns.workers {
            for endpoint in model.endpoints.iter_mut().filter(|e| e.capacity.is_none()) {
                let (mu, sigma) =
                    log_normal(endpoint.service_time.p50_ms, endpoint.service_time.p99_ms);
                let mean_secs = (mu + sigma * sigma / 2.0).exp() / 1e9;
                endpoint.capacity = Some(Capacity {
                    concurrency: f64::from(workers),
                    throughput_per_sec: f64::from(workers) / mean_secs.max(1e-6),
                    timeouts_in_fit: true,
                });
            }
        }
        for brownout in &unknowns.brownouts {
            let Some(start) = brownout.start_sec.checked_sub(cut) else {
                continue;
            };
            model.regimes.push(Regime {
                kind: RegimeKind::Brownout,
                endpoint: None,
                share: f64::from(brownout.secs) / model.window_secs.max(1) as f64,
                mean_secs: f64::from(brownout.secs),
                service_time_factor: brownout.service_time_factor,
                failure_rate: 0.0,
                periods: vec![Period {
                    start_sec: start,
                    secs: brownout.secs,
                    service_time: None,
                }],
            });
        }
        model
    }

    /// Mean over the replayed seconds with requests of the squared difference in goodput
    /// share plus the squared relative differences in attempts per request and in mean
    /// latency, the incumbent replayed on `model`.
    fn loss_of(&self, model: &Model) -> f64 {
        let report = sim::simulate(
            sim::Run {
                model,
                scenario: Scenario::Observed,
                duration: Duration::from_secs(model.window_secs.max(1)),
                rate: None,
                slo_latency: self.slo,
                client_timeout: self.client_timeout,
                seed: SEED,
            },
            self.incumbent,
        );
        let (mut sum, mut n) = (0.0, 0u32);
        for (observed, simulated) in self.seconds.iter().zip(&report.seconds) {
            let (Some((goodput, amplification, latency)), true) = (observed, simulated.offered > 0)
            else {
                continue;
            };
            let offered = f64::from(simulated.offered);
            let simulated_goodput = f64::from(simulated.good) / offered;
            let simulated_amplification = f64::from(simulated.attempts) / offered;
            sum += (simulated_goodput - goodput).powi(2)
                + ((simulated_amplification - amplification) / amplification.max(1.0)).powi(2);
            if let (Some(observed), true) = (latency, simulated.answered > 0) {
                let simulated = simulated.latency_sum as f64 / f64::from(simulated.answered);
                sum += ((simulated - observed) / observed.max(1.0)).powi(2);
            }
            n += 1;
        }
        if n == 0 { f64::MAX } else { sum / f64::from(n) }
    }
}

#[cfg(test)]
mod tests;
