//! The genome as evolution and the guardrails see it: a table of numeric genes, each with its
//! key path, its bounds (those of `Genome::validate`), its scale and a reader and writer.
//!
//! Evolution mutates genes in a normalized space: a log-scaled gene (durations, rates, sizes)
//! moves by factors, a linear one (shares) by amounts, an integer one is rounded after the
//! move. The guardrails read the same table, so a bound names the same key path a user writes
//! in `[guardian].guardrails` (`"retry.max_attempts" = { max = 4 }`).

use rafael_config::{Genome, HumanDuration};

/// How a gene moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// By factors (durations, rates, counts that span decades).
    Log,
    /// By amounts (shares).
    Linear,
}

/// One numeric gene.
#[derive(Debug, Clone, Copy)]
pub struct Gene {
    /// Its key path under a route's policy.
    pub path: &'static str,
    /// The section it belongs to (`retry`, `circuit_breaker`, ...; `timeout` is its own).
    pub section: &'static str,
    /// Lowest value `Genome::validate` accepts.
    pub min: f64,
    /// Highest value `Genome::validate` accepts.
    pub max: f64,
    /// How it moves.
    pub scale: Scale,
    /// Rounded to whole numbers.
    pub integer: bool,
    /// Its value, when its section (and, for optional genes, the gene) is set.
    pub get: fn(&Genome) -> Option<f64>,
    /// Writes it, when its section is set.
    pub set: fn(&mut Genome, f64),
}

/// The sections evolution switches on and off.
pub const SECTIONS: [&str; 5] = [
    "timeout",
    "retry",
    "circuit_breaker",
    "rate_limit",
    "concurrency",
];

fn secs(duration: HumanDuration) -> f64 {
    duration.get().as_secs_f64()
}

fn duration(value: f64) -> HumanDuration {
    // Whole milliseconds: what a person would write, and what `Genome::validate` bounds.
    HumanDuration::from_millis((value * 1000.0).round().max(1.0) as u64)
}

fn count(value: f64) -> u32 {
    value.round().clamp(0.0, f64::from(u32::MAX)) as u32
}

macro_rules! gene {
    ($path:literal, $section:literal, $min:expr, $max:expr, $scale:ident, $integer:literal,
     |$g:ident| $get:expr, |$s:ident, $v:ident| $set:expr) => {
        Gene {
            path: $path,
            section: $section,
            min: $min,
            max: $max,
            scale: Scale::$scale,
            integer: $integer,
            get: |$g: &Genome| $get,
            set: |$s: &mut Genome, $v: f64| $set,
        }
    };
}

/// Every numeric gene.
pub const GENES: &[Gene] = &[
    gene!(
        "timeout",
        "timeout",
        0.001,
        3600.0,
        Log,
        false,
        |g| g.timeout.map(secs),
        |g, v| g.timeout = Some(duration(v))
    ),
    gene!(
        "retry.max_attempts",
        "retry",
        1.0,
        10.0,
        Linear,
        true,
        |g| g.retry.as_ref().map(|r| f64::from(r.max_attempts)),
        |g, v| if let Some(r) = g.retry.as_mut() {
            r.max_attempts = count(v)
        }
    ),
    gene!(
        "retry.per_try_timeout",
        "retry",
        0.001,
        600.0,
        Log,
        false,
        |g| g.retry.as_ref().and_then(|r| r.per_try_timeout).map(secs),
        |g, v| if let Some(r) = g.retry.as_mut() {
            r.per_try_timeout = Some(duration(v))
        }
    ),
    gene!(
        "retry.backoff_base",
        "retry",
        0.001,
        60.0,
        Log,
        false,
        |g| g.retry.as_ref().map(|r| secs(r.backoff_base)),
        |g, v| if let Some(r) = g.retry.as_mut() {
            r.backoff_base = duration(v)
        }
    ),
    gene!(
        "retry.backoff_max",
        "retry",
        0.001,
        600.0,
        Log,
        false,
        |g| g.retry.as_ref().map(|r| secs(r.backoff_max)),
        |g, v| if let Some(r) = g.retry.as_mut() {
            r.backoff_max = duration(v)
        }
    ),
    gene!(
        "retry.budget_ratio",
        "retry",
        0.0,
        1.0,
        Linear,
        false,
        |g| g.retry.as_ref().map(|r| r.budget_ratio),
        |g, v| if let Some(r) = g.retry.as_mut() {
            r.budget_ratio = v
        }
    ),
    gene!(
        "retry.budget_min_per_sec",
        "retry",
        1.0,
        100_000.0,
        Log,
        true,
        |g| g.retry.as_ref().map(|r| f64::from(r.budget_min_per_sec)),
        |g, v| if let Some(r) = g.retry.as_mut() {
            r.budget_min_per_sec = count(v)
        }
    ),
    gene!(
        "circuit_breaker.consecutive_failures",
        "circuit_breaker",
        1.0,
        10_000.0,
        Log,
        true,
        |g| g
            .circuit_breaker
            .as_ref()
            .map(|b| f64::from(b.consecutive_failures)),
        |g, v| if let Some(b) = g.circuit_breaker.as_mut() {
            b.consecutive_failures = count(v)
        }
    ),
    gene!(
        "circuit_breaker.failure_rate",
        "circuit_breaker",
        0.01,
        1.0,
        Linear,
        false,
        |g| g.circuit_breaker.as_ref().map(|b| b.failure_rate),
        |g, v| if let Some(b) = g.circuit_breaker.as_mut() {
            b.failure_rate = v
        }
    ),
    gene!(
        "circuit_breaker.window",
        "circuit_breaker",
        1.0,
        600.0,
        Log,
        false,
        |g| g.circuit_breaker.as_ref().map(|b| secs(b.window)),
        |g, v| if let Some(b) = g.circuit_breaker.as_mut() {
            b.window = duration(v)
        }
    ),
    gene!(
        "circuit_breaker.min_requests",
        "circuit_breaker",
        1.0,
        100_000.0,
        Log,
        true,
        |g| g
            .circuit_breaker
            .as_ref()
            .map(|b| f64::from(b.min_requests)),
        |g, v| if let Some(b) = g.circuit_breaker.as_mut() {
            b.min_requests = count(v)
        }
    ),
    gene!(
        "circuit_breaker.slow_call_duration",
        "circuit_breaker",
        0.001,
        600.0,
        Log,
        false,
        |g| g
            .circuit_breaker
            .as_ref()
            .map(|b| secs(b.slow_call_duration)),
        |g, v| if let Some(b) = g.circuit_breaker.as_mut() {
            b.slow_call_duration = duration(v)
        }
    ),
    gene!(
        "circuit_breaker.slow_call_rate",
        "circuit_breaker",
        0.01,
        1.0,
        Linear,
        false,
        |g| g.circuit_breaker.as_ref().map(|b| b.slow_call_rate),
        |g, v| if let Some(b) = g.circuit_breaker.as_mut() {
            b.slow_call_rate = v
        }
    ),
    gene!(
        "circuit_breaker.open_for",
        "circuit_breaker",
        0.001,
        3600.0,
        Log,
        false,
        |g| g.circuit_breaker.as_ref().map(|b| secs(b.open_for)),
        |g, v| if let Some(b) = g.circuit_breaker.as_mut() {
            b.open_for = duration(v)
        }
    ),
    gene!(
        "circuit_breaker.half_open_probes",
        "circuit_breaker",
        1.0,
        100.0,
        Log,
        true,
        |g| g
            .circuit_breaker
            .as_ref()
            .map(|b| f64::from(b.half_open_probes)),
        |g, v| if let Some(b) = g.circuit_breaker.as_mut() {
            b.half_open_probes = count(v)
        }
    ),
    gene!(
        "rate_limit.rps",
        "rate_limit",
        0.001,
        10_000_000.0,
        Log,
        false,
        |g| g.rate_limit.as_ref().map(|l| l.rps),
        |g, v| if let Some(l) = g.rate_limit.as_mut() {
            l.rps = v
        }
    ),
    gene!(
        "rate_limit.burst",
        "rate_limit",
        1.0,
        10_000_000.0,
        Log,
        true,
        |g| g.rate_limit.as_ref().map(|l| f64::from(l.burst)),
        |g, v| if let Some(l) = g.rate_limit.as_mut() {
            l.burst = count(v)
        }
    ),
    gene!(
        "concurrency.max_in_flight",
        "concurrency",
        1.0,
        1_000_000.0,
        Log,
        true,
        |g| g.concurrency.as_ref().map(|c| f64::from(c.max_in_flight)),
        |g, v| if let Some(c) = g.concurrency.as_mut() {
            c.max_in_flight = count(v)
        }
    ),
];

/// Whether `genome` has `section` (one of [`SECTIONS`]).
pub fn has_section(genome: &Genome, section: &str) -> bool {
    match section {
        "timeout" => genome.timeout.is_some(),
        "retry" => genome.retry.is_some(),
        "circuit_breaker" => genome.circuit_breaker.is_some(),
        "rate_limit" => genome.rate_limit.is_some(),
        "concurrency" => genome.concurrency.is_some(),
        _ => false,
    }
}

/// `section` of `genome` as JSON, `null` when it is absent.
pub fn section_value(genome: &Genome, section: &str) -> serde_json::Value {
    let value = match section {
        "timeout" => serde_json::to_value(genome.timeout),
        "retry" => serde_json::to_value(&genome.retry),
        "circuit_breaker" => serde_json::to_value(&genome.circuit_breaker),
        "rate_limit" => serde_json::to_value(&genome.rate_limit),
        "concurrency" => serde_json::to_value(&genome.concurrency),
        _ => Ok(serde_json::Value::Null),
    };
    value.unwrap_or(serde_json::Value::Null)
}

/// Gives `genome` the `section` of `from` (absent when it is absent there).
pub fn copy_section(genome: &mut Genome, from: &Genome, section: &str) {
    match section {
        "timeout" => genome.timeout = from.timeout,
        "retry" => genome.retry = from.retry.clone(),
        "circuit_breaker" => genome.circuit_breaker = from.circuit_breaker.clone(),
        "rate_limit" => genome.rate_limit = from.rate_limit.clone(),
        "concurrency" => genome.concurrency = from.concurrency.clone(),
        _ => {}
    }
}

/// The gene at `path`.
pub fn gene(path: &str) -> Option<&'static Gene> {
    GENES.iter().find(|gene| gene.path == path)
}

// === impl Gene ===

impl Gene {
    /// `value` mapped to `[0, 1]` over the gene's bounds, in its scale.
    pub fn normalize(&self, value: f64) -> f64 {
        let (lo, hi, v) = self.scaled(value);
        if hi > lo {
            ((v - lo) / (hi - lo)).clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    /// The value at `position` in `[0, 1]`, rounded when the gene is an integer.
    pub fn denormalize(&self, position: f64) -> f64 {
        let (lo, hi, _) = self.scaled(self.min);
        let v = lo + position.clamp(0.0, 1.0) * (hi - lo);
        let value = match self.scale {
            Scale::Log => v.exp(),
            Scale::Linear => v,
        };
        let value = value.clamp(self.min, self.max);
        if self.integer { value.round() } else { value }
    }

    fn scaled(&self, value: f64) -> (f64, f64, f64) {
        match self.scale {
            // Log of the value; a zero lower bound is moved to a small positive one.
            Scale::Log => (
                self.min.max(1e-6).ln(),
                self.max.max(1e-6).ln(),
                value.max(1e-6).ln(),
            ),
            Scale::Linear => (self.min, self.max, value),
        }
    }

    /// The gene's key path relative to its section ("max_attempts" for "retry.max_attempts").
    pub fn in_section(&self) -> &'static str {
        self.path
            .split_once('.')
            .map_or(self.path, |(_, gene)| gene)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_the_genes_the_config_names() {
        let paths: Vec<&str> = GENES.iter().map(|g| g.path).collect();
        assert_eq!(paths, rafael_config::GENE_PATHS);
        assert_eq!(SECTIONS, rafael_config::GENOME_SECTIONS);
    }

    #[test]
    fn normalizing_round_trips_inside_the_bounds() {
        for gene in GENES {
            for position in [0.0, 0.25, 0.5, 1.0] {
                let value = gene.denormalize(position);
                assert!(
                    (gene.min..=gene.max).contains(&value),
                    "{} {value}",
                    gene.path
                );
                if !gene.integer {
                    assert!(
                        (gene.normalize(value) - position).abs() < 1e-9,
                        "{}",
                        gene.path
                    );
                }
            }
        }
    }
}
