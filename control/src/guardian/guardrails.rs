//! Guardrails and invariants: the rules every proposed genome obeys.
//!
//! From `[guardian]`: per-gene `min`/`max` (`guardrails`), `max_step` (the most relative change
//! of any numeric gene in one proposal, against the incumbent), and `frozen` (genes or whole
//! sections a proposal never changes). Always, whatever the config says:
//! - the genome passes `Genome::validate` (every gene inside the bounds an engine runs with);
//! - `retry.per_try_timeout <= timeout`, and `max_attempts` attempts of `per_try_timeout` plus
//!   the longest backoffs between them fit in `timeout` (otherwise the last attempts are
//!   promised time they never get);
//! - `retry.budget_ratio <= 1` (a budget above one retry per request lets retries multiply
//!   the load an upstream in trouble sees);
//! - `concurrency.max_in_flight >= 1`;
//! - `retry_non_idempotent` is never turned on: repeating a POST is a safety property of the
//!   service, not a tuning knob;
//! - a route's deadline (`timeout`) is never removed, only moved: without one a request waits
//!   on a hung upstream for as long as its client does, which no simulated gain is worth (a
//!   retry storm's round once proposed dropping it, since the simulated clients gave up first).
//!
//! An incumbent already outside a guardrail may move into it in one proposal however far that
//! is: the bound is a rule, the step only a pace.
//!
//! [`check`] names every violation with the gene's key path and the rule; [`repair`] moves a
//! candidate inside the rules, or gives up on it.

use std::{collections::BTreeMap, fmt, time::Duration};

use rafael_config::{ConfigErrors, Genome, Guardrail};
use serde::{Deserialize, Serialize};

use crate::evolution::genes::{GENES, Gene, SECTIONS, copy_section, section_value};

/// The rules of `[guardian]` that bound genomes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Guardrails {
    /// Per gene path, its bounds.
    pub bounds: BTreeMap<String, Guardrail>,
    /// Most relative change of a numeric gene in one proposal.
    pub max_step: Option<f64>,
    /// Gene paths or sections never changed.
    pub frozen: Vec<String>,
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    /// The gene's key path.
    pub gene: String,
    /// The rule, in words.
    pub rule: String,
}

// === impl Guardrails ===

impl Guardrails {
    /// The rules of `config`: `[guardian]`, with `[evolution].guardrails` (their old place)
    /// still read (validation refuses a file that sets both).
    pub fn from_config(config: &rafael_config::Config) -> Self {
        Self {
            bounds: config.guardrails().clone(),
            max_step: Some(config.guardian.max_step),
            frozen: config.guardian.frozen.clone(),
        }
    }

    fn frozen(&self, path: &str, section: &str) -> bool {
        self.frozen.iter().any(|f| f == path || f == section)
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.gene, self.rule)
    }
}

/// Every rule `candidate` breaks, as a change from `incumbent`.
pub fn check(candidate: &Genome, incumbent: &Genome, rails: &Guardrails) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut push = |gene: &str, rule: String| {
        violations.push(Violation {
            gene: gene.to_owned(),
            rule,
        })
    };
    let mut errors = ConfigErrors::default();
    candidate.validate("policy", &mut errors);
    for error in errors.iter() {
        push(
            error.path.trim_start_matches("policy."),
            error.message.clone(),
        );
    }
    for section in SECTIONS {
        if rails.frozen.iter().any(|f| f == section)
            && section_value(candidate, section) != section_value(incumbent, section)
        {
            push(section, "frozen: a proposal never changes it".into());
        }
    }
    for gene in GENES {
        let (Some(value), before) = ((gene.get)(candidate), (gene.get)(incumbent)) else {
            continue;
        };
        if let Some(bound) = rails.bounds.get(gene.path) {
            if bound.min.is_some_and(|min| value < min) {
                push(
                    gene.path,
                    format!(
                        "guardrail min {}, got {value}",
                        bound.min.unwrap_or_default()
                    ),
                );
            }
            if bound.max.is_some_and(|max| value > max) {
                push(
                    gene.path,
                    format!(
                        "guardrail max {}, got {value}",
                        bound.max.unwrap_or_default()
                    ),
                );
            }
        }
        if rails.frozen.iter().any(|f| f == gene.path) && Some(value) != before {
            push(gene.path, "frozen: a proposal never changes it".into());
        }
        // An incumbent outside its guardrail may move into it in one step, however far.
        let incumbent_outside = rails
            .bounds
            .get(gene.path)
            .zip(before)
            .is_some_and(|(b, v)| {
                b.min.is_some_and(|min| v < min) || b.max.is_some_and(|max| v > max)
            });
        if let (Some(step), Some(before), false) = (rails.max_step, before, incumbent_outside) {
            if step_of(before, value) > step + 1e-9 {
                push(
                    gene.path,
                    format!(
                        "max_step {step}: {before} to {value} is a change of {:.2}",
                        step_of(before, value)
                    ),
                );
            }
        }
    }
    if incumbent.timeout.is_some() && candidate.timeout.is_none() {
        push(
            "timeout",
            "never removed by a proposal (a route keeps a deadline)".into(),
        );
    }
    if let Some(retry) = &candidate.retry {
        if retry.budget_ratio > 1.0 {
            push(
                "retry.budget_ratio",
                format!("must be at most 1, got {}", retry.budget_ratio),
            );
        }
        let turned_on = retry.retry_non_idempotent
            && !incumbent
                .retry
                .as_ref()
                .is_some_and(|r| r.retry_non_idempotent);
        if turned_on {
            push(
                "retry.retry_non_idempotent",
                "never turned on by a proposal".into(),
            );
        }
        if let (Some(timeout), Some(needed)) = (candidate.timeout, attempts_need(candidate)) {
            if needed > timeout.get() {
                push(
                    "retry.max_attempts",
                    format!(
                        "{} attempts of {} plus backoff need {:?}, more than the timeout {}",
                        retry.max_attempts,
                        retry
                            .per_try_timeout
                            .map(|t| t.to_string())
                            .unwrap_or_default(),
                        needed,
                        timeout
                    ),
                );
            }
        }
    }
    violations
}

/// `candidate` moved inside every rule, or `None` when it cannot be without undoing what
/// makes it a candidate.
pub fn repair(mut candidate: Genome, incumbent: &Genome, rails: &Guardrails) -> Option<Genome> {
    for section in SECTIONS {
        if rails.frozen.iter().any(|f| f == section) {
            copy_section(&mut candidate, incumbent, section);
        }
    }
    if candidate.timeout.is_none() {
        candidate.timeout = incumbent.timeout;
    }
    if let Some(retry) = candidate.retry.as_mut() {
        retry.retry_non_idempotent &= incumbent
            .retry
            .as_ref()
            .is_some_and(|r| r.retry_non_idempotent);
    }
    for gene in GENES {
        let Some(mut value) = (gene.get)(&candidate) else {
            continue;
        };
        let before = (gene.get)(incumbent);
        if rails.frozen(gene.path, gene.section) {
            if let Some(before) = before {
                (gene.set)(&mut candidate, before);
            }
            continue;
        }
        value = value.clamp(gene.min, gene.max);
        if let (Some(step), Some(before)) = (rails.max_step, before) {
            value = within_step(gene, before, value, step);
        }
        // The guardrail last: it is a hard bound, the step only a pace.
        if let Some(bound) = rails.bounds.get(gene.path) {
            value = value.clamp(bound.min.unwrap_or(f64::MIN), bound.max.unwrap_or(f64::MAX));
        }
        (gene.set)(
            &mut candidate,
            if gene.integer { value.round() } else { value },
        );
    }
    if let Some(retry) = candidate.retry.as_mut() {
        if retry.backoff_max < retry.backoff_base {
            retry.backoff_max = retry.backoff_base;
        }
        if let (Some(timeout), Some(per_try)) = (candidate.timeout, retry.per_try_timeout) {
            if per_try > timeout {
                retry.per_try_timeout = Some(timeout);
            }
        }
    }
    // Fewer attempts until they fit the timeout.
    while let (Some(timeout), Some(needed)) = (candidate.timeout, attempts_need(&candidate)) {
        let Some(retry) = candidate.retry.as_mut() else {
            break;
        };
        if needed <= timeout.get() || retry.max_attempts <= 1 {
            break;
        }
        retry.max_attempts -= 1;
    }
    check(&candidate, incumbent, rails)
        .is_empty()
        .then_some(candidate)
}

/// The time `max_attempts` attempts of `per_try_timeout` and the longest backoffs between
/// them take; `None` without a per-try timeout (then the route timeout bounds them all).
fn attempts_need(genome: &Genome) -> Option<Duration> {
    let retry = genome.retry.as_ref()?;
    let per_try = retry.per_try_timeout?.get();
    let attempts = retry.max_attempts.max(1);
    let backoff: Duration = (1..attempts)
        .map(|n| {
            let doublings = (n - 1).min(31);
            retry
                .backoff_base
                .get()
                .saturating_mul(1 << doublings)
                .min(retry.backoff_max.get())
        })
        .sum();
    Some(per_try.saturating_mul(attempts).saturating_add(backoff))
}

/// Relative change from `before` to `after` (absolute when `before` is zero).
fn step_of(before: f64, after: f64) -> f64 {
    if before.abs() > f64::EPSILON {
        (after - before).abs() / before.abs()
    } else {
        after.abs()
    }
}

/// `value` moved to within `step` of `before`; integers rounded toward `before`, so rounding
/// never takes them past the step.
fn within_step(gene: &Gene, before: f64, value: f64, step: f64) -> f64 {
    let lo = before - before.abs() * step;
    let hi = before + before.abs() * step;
    let value = value.clamp(lo.min(hi), lo.max(hi));
    if gene.integer {
        let rounded = value.round();
        if step_of(before, rounded) > step {
            if rounded > before {
                rounded - 1.0
            } else {
                rounded + 1.0
            }
        } else {
            rounded
        }
    } else {
        value
    }
}
