//! The vault (DESIGN §7.8): reusable policy patterns, each a genome with when to use it.
//!
//! - The built-in catalogue (`catalogue.toml`, embedded) holds patterns for kinds of upstream
//!   (gRPC services, event loops, WSGI worker pools, JVM thread pools, database APIs,
//!   serverless cold starts, third-party quotas, ...) and the seed's four (adaptive retry,
//!   circuit breaker, rate limiter, request protection).
//! - [`search`] finds patterns by free text, category, tag and stack.
//! - [`resolve`] gives a route with `pattern = "NAME"` that pattern's genome, its own
//!   `[routes.policy]` sections on top.
//! - [`seeds`] picks the patterns that fit a route's model for evolution's first generation.
//! - [`learned`] makes the pattern a kept genome leaves behind (saved when a watch ends
//!   `kept`), and [`save`] stores one an approver gives by hand; both live in the store, next
//!   to the built-in catalogue ([`all`], [`find`]).

use std::sync::OnceLock;

use rafael_config::{Config, ConfigError, ConfigErrors, Genome, RetryCondition};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    evolution::model::{Model, RegimeKind},
    guardian::guardrails::{Guardrails, check},
    store::{Store, StoreError, now},
};

/// Patterns evolution's first generation takes at most: each costs a round what a
/// generation's child costs, and the rest of the first generation is the incumbent, the peer
/// defaults and what the model suggests.
pub const MAX_SEEDS: usize = 4;
/// A pattern fits a route when its timeouts leave this much room over the route's healthy p99
/// service time.
const TIMEOUT_HEADROOM: f64 = 1.5;
/// ... and its static concurrency limit this much room over the route's usual in-flight.
const LIMIT_HEADROOM: f64 = 2.0;

/// A pattern.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pattern {
    /// Its name, unique in the vault (`adaptive-retry`).
    pub name: String,
    /// `retry`, `circuit-breaker`, `rate-limit`, `concurrency`, `timeout`, `protection` or
    /// `composite`.
    pub category: String,
    /// Free-form tags.
    pub tags: Vec<String>,
    /// Technology stacks it suits (`grpc`, `node`, `python-wsgi`, `jvm`, ...; `any`).
    pub stacks: Vec<String>,
    /// When to use it.
    pub description: String,
    /// The genome.
    pub genome: Genome,
    /// `builtin` or `learned`.
    #[serde(default = "builtin")]
    pub source: String,
    /// For a learned pattern: the route, generation and model summary it was learned on.
    #[serde(default)]
    pub learned_from: Option<Value>,
    /// When it was stored (RFC 3339); built-in patterns have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// Who stored it: a token name, `local`, or `rafael` for a learned one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
}

/// The categories a pattern may have.
pub const CATEGORIES: [&str; 7] = [
    "retry",
    "circuit-breaker",
    "rate-limit",
    "concurrency",
    "timeout",
    "protection",
    "composite",
];

/// A search of the vault; every field given must match.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Query {
    /// Words that must each appear in the name, description, tags or stacks (any case).
    pub q: Option<String>,
    /// The category.
    pub category: Option<String>,
    /// A tag.
    pub tag: Option<String>,
    /// A stack (`any` patterns match every stack).
    pub stack: Option<String>,
}

#[derive(Deserialize)]
struct Catalogue {
    patterns: Vec<Pattern>,
}

fn builtin() -> String {
    "builtin".to_owned()
}

/// The built-in patterns, parsed once.
pub fn catalogue() -> &'static [Pattern] {
    static CATALOGUE: OnceLock<Vec<Pattern>> = OnceLock::new();
    CATALOGUE.get_or_init(|| {
        // Checked by this module's tests: a catalogue that does not parse is a build defect.
        toml::from_str::<Catalogue>(include_str!("catalogue.toml"))
            .map(|c| c.patterns)
            .unwrap_or_default()
    })
}

/// The built-in pattern named `name`.
pub fn builtin_pattern(name: &str) -> Option<&'static Pattern> {
    catalogue().iter().find(|p| p.name == name)
}

/// The patterns of `patterns` that `query` matches, in their order.
pub fn search<'a>(patterns: &'a [Pattern], query: &Query) -> Vec<&'a Pattern> {
    let lower = |s: &str| s.to_lowercase();
    let words: Vec<String> = query
        .q
        .as_deref()
        .unwrap_or_default()
        .split_whitespace()
        .map(lower)
        .collect();
    patterns
        .iter()
        .filter(|p| {
            query
                .category
                .as_ref()
                .is_none_or(|c| lower(c) == p.category)
                && query
                    .tag
                    .as_ref()
                    .is_none_or(|t| p.tags.iter().any(|tag| lower(tag) == lower(t)))
                && query.stack.as_ref().is_none_or(|s| {
                    p.stacks
                        .iter()
                        .any(|stack| stack == "any" || lower(stack) == lower(s))
                })
                && {
                    let text = lower(&format!(
                        "{} {} {} {}",
                        p.name,
                        p.description,
                        p.tags.join(" "),
                        p.stacks.join(" ")
                    ));
                    words.iter().all(|w| text.contains(w.as_str()))
                }
        })
        .collect()
}

/// Gives every route of `config` that names a `pattern` the pattern's genome, with the
/// sections its own `[routes.policy]` sets on top (a route may take a pattern and change its
/// timeout). An unknown name is an error at `routes[i].pattern`, naming the patterns there are.
pub fn resolve(config: &mut Config) -> Result<(), ConfigErrors> {
    let mut errors = ConfigErrors::default();
    for (i, route) in config.routes.iter_mut().enumerate() {
        let Some(name) = &route.pattern else { continue };
        let Some(pattern) = builtin_pattern(name) else {
            let known: Vec<&str> = catalogue().iter().map(|p| p.name.as_str()).collect();
            errors.0.push(ConfigError::new(
                format!("routes[{i}].pattern"),
                format!(
                    "no pattern named {name:?} (built-in patterns: {}; `rafael vault search` lists them)",
                    known.join(", ")
                ),
            ));
            continue;
        };
        let own = std::mem::take(&mut route.policy);
        let mut genome = pattern.genome.clone();
        if own.timeout.is_some() {
            genome.timeout = own.timeout;
        }
        if own.retry.is_some() {
            genome.retry = own.retry;
        }
        if own.circuit_breaker.is_some() {
            genome.circuit_breaker = own.circuit_breaker;
        }
        if own.rate_limit.is_some() {
            genome.rate_limit = own.rate_limit;
        }
        if own.concurrency.is_some() {
            genome.concurrency = own.concurrency;
        }
        genome.validate(&format!("routes[{i}].policy"), &mut errors);
        route.policy = genome;
    }
    errors.into_result(())
}

/// Every pattern: the built-in ones in catalogue order, then the stored ones, newest first.
pub fn all(store: &Store) -> Result<Vec<Pattern>, StoreError> {
    let mut patterns = catalogue().to_vec();
    patterns.extend(store.patterns()?);
    Ok(patterns)
}

/// The pattern named `name`, built-in or stored.
pub fn find(store: &Store, name: &str) -> Result<Option<Pattern>, StoreError> {
    match builtin_pattern(name) {
        Some(pattern) => Ok(Some(pattern.clone())),
        None => store.pattern(name),
    }
}

/// The category a genome's sections make: the one section's, or `composite`.
pub fn category_of(genome: &Genome) -> &'static str {
    let sections = [
        (genome.retry.is_some(), "retry"),
        (genome.circuit_breaker.is_some(), "circuit-breaker"),
        (genome.rate_limit.is_some(), "rate-limit"),
        (genome.concurrency.is_some(), "concurrency"),
    ];
    let mut set = sections.iter().filter(|(on, _)| *on).map(|(_, name)| *name);
    match (set.next(), set.next()) {
        (Some(only), None) => only,
        (None, _) if genome.timeout.is_some() => "timeout",
        _ => "composite",
    }
}

/// What a learned pattern keeps of the model it was learned on: enough for a reader to tell
/// whether their upstream looks like it.
pub fn model_summary(model: &Model) -> Value {
    json!({
        "fitted_at": model.fitted_at,
        "window_secs": model.window_secs,
        "rate_per_sec": model.arrivals.rate_per_sec,
        "endpoints": model.endpoints.iter().map(|e| json!({
            "endpoint": e.endpoint,
            "service_p50_ms": e.service_time.p50_ms,
            "service_p99_ms": e.service_time.p99_ms,
            "capacity_concurrency": e.capacity.map(|c| c.concurrency),
            "failure_rate": e.failure.rate,
            "timeout_rate": e.timeout_rate,
        })).collect::<Vec<_>>(),
        "regimes": model.regimes.iter().map(|r| json!({
            "kind": r.kind,
            "share": r.share,
            "mean_secs": r.mean_secs,
        })).collect::<Vec<_>>(),
        "trusted": model.fidelity.as_ref().is_some_and(|f| f.trusted),
    })
}

/// The pattern generation `generation` of `route` leaves once its watch kept it: named
/// `learned-ROUTE-gGENERATION`, with the stacks of the pattern the route started from (or
/// `any`), `why` (the watch's figures in words) and the summary of `model` (the upstream
/// during the watch), when one was fitted.
pub fn learned(
    route: &str,
    generation: u64,
    genome: &Genome,
    stacks: Vec<String>,
    model: Option<&Model>,
    why: &str,
) -> Pattern {
    let slug: String = route
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let upstream = model.map_or_else(String::new, |m| {
        let slowest = m
            .endpoints
            .iter()
            .map(|e| e.service_time.p99_ms)
            .fold(0.0, f64::max);
        let failing = m.endpoints.iter().map(|e| e.failure.rate).fold(0.0, f64::max);
        format!(
            " The upstream then: {:.0} requests a second, healthy p99 service time {slowest:.0} ms, failure rate {:.1}%{}.",
            m.arrivals.rate_per_sec,
            failing * 100.0,
            if m.regimes.is_empty() {
                String::new()
            } else {
                format!(", {} bad period kind(s)", m.regimes.len())
            }
        )
    });
    Pattern {
        name: format!("learned-{slug}-g{generation}"),
        category: category_of(genome).to_owned(),
        tags: vec!["learned".to_owned(), slug],
        stacks: if stacks.is_empty() {
            vec!["any".to_owned()]
        } else {
            stacks
        },
        description: format!(
            "Learned on route {route:?}: generation {generation} passed its watch ({why}).{upstream} Fits upstreams that behave like that one; evolution on this route starts from it first."
        ),
        genome: genome.clone(),
        source: "learned".to_owned(),
        learned_from: Some(json!({
            "route": route,
            "generation": generation,
            "model": model.map(model_summary),
        })),
        created_at: Some(now()),
        author: Some(crate::guardian::service::ACTOR.to_owned()),
    }
}

/// Why a pattern was not saved.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// The pattern is not a valid one; every finding with its key path.
    #[error("{0}")]
    Invalid(ConfigErrors),
    /// A pattern has the name already.
    #[error("a pattern named {0:?} exists; patterns are never overwritten, pick another name")]
    Taken(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks `pattern` as an approver gave it and stores it (`source` `learned` by hand when it
/// names a route, else as given): a name of lower-case letters, digits and `-` that no pattern
/// has, a known category, stacks, a description, and a genome that validates and passes every
/// invariant; never one that retries non-idempotent requests.
pub fn save(store: &Store, pattern: &Pattern) -> Result<(), SaveError> {
    let mut errors = ConfigErrors::default();
    let name_ok = !pattern.name.is_empty()
        && pattern.name.len() <= 64
        && pattern
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !pattern.name.starts_with('-');
    if !name_ok {
        errors.0.push(ConfigError::new(
            "name",
            format!(
                "{:?}: 1 to 64 lower-case letters, digits and '-', not starting with '-'",
                pattern.name
            ),
        ));
    }
    if !CATEGORIES.contains(&pattern.category.as_str()) {
        errors.0.push(ConfigError::new(
            "category",
            format!(
                "{:?} is none of {}",
                pattern.category,
                CATEGORIES.join(", ")
            ),
        ));
    }
    if pattern.description.trim().len() < 20 {
        errors.0.push(ConfigError::new(
            "description",
            "say when to use the pattern (20 characters at least)",
        ));
    }
    pattern.genome.validate("genome", &mut errors);
    for violation in check(&pattern.genome, &pattern.genome, &Guardrails::default()) {
        errors.0.push(ConfigError::new(
            format!("genome.{}", violation.gene),
            violation.rule.clone(),
        ));
    }
    if pattern
        .genome
        .retry
        .as_ref()
        .is_some_and(|r| r.retry_non_idempotent)
    {
        errors.0.push(ConfigError::new(
            "genome.retry.retry_non_idempotent",
            "a pattern never retries non-idempotent requests: whether a route may is its own config's decision",
        ));
    }
    if !errors.is_empty() {
        return Err(SaveError::Invalid(errors));
    }
    if builtin_pattern(&pattern.name).is_some() || !store.insert_pattern(pattern)? {
        return Err(SaveError::Taken(pattern.name.clone()));
    }
    Ok(())
}

/// The patterns of `patterns` that fit `model`, for evolution's first generation on `route`
/// running `incumbent`: at most [`MAX_SEEDS`], each with its name, best first.
///
/// A pattern fits when its timeouts (the route's and the per-try one) leave
/// [`TIMEOUT_HEADROOM`] over the slowest endpoint's healthy p99 service time, and a static
/// concurrency limit leaves [`LIMIT_HEADROOM`] over the route's usual in-flight (arrival rate
/// times service time): a pattern that cuts or sheds the healthy traffic is for another
/// upstream. Of those, the ones learned on this route come first, then the ones that answer
/// more of what the model shows (failures: retries or a breaker; slowness or timeouts: a
/// per-try timeout with a breaker or retry that counts it; a capacity: a concurrency limit),
/// in vault order.
///
/// Each takes the incumbent's rate limit in place of its own (a rate limit is a promise to
/// clients that no model can know, so the search never invents or moves one from a pattern),
/// and the incumbent's timeout where it has none. The search repairs them into the guardrails
/// or drops them.
pub fn seeds(
    patterns: &[Pattern],
    model: &Model,
    incumbent: &Genome,
    route: &str,
) -> Vec<(String, Genome)> {
    let slowest_ms = model
        .endpoints
        .iter()
        .map(|e| e.service_time.p99_ms)
        .fold(0.0, f64::max);
    let usual_in_flight = model.arrivals.rate_per_sec
        * model
            .endpoints
            .iter()
            .map(|e| e.service_time.p50_ms)
            .fold(0.0, f64::max)
        / 1e3;
    let failing = model.endpoints.iter().any(|e| e.failure.rate > 0.0)
        || model.regimes.iter().any(|r| r.kind == RegimeKind::Outage);
    let slow = model.endpoints.iter().any(|e| e.timeout_rate > 0.0)
        || !model.censored_secs.is_empty()
        || model.regimes.iter().any(|r| r.kind == RegimeKind::Brownout);
    let bounded =
        model.endpoints.iter().any(|e| e.capacity.is_some()) || model.calibration.is_some();
    let mut fitting: Vec<(u32, usize, String, Genome)> = patterns
        .iter()
        .enumerate()
        .filter_map(|(order, p)| {
            let mut genome = p.genome.clone();
            genome.rate_limit = incumbent.rate_limit.clone();
            if genome.timeout.is_none() {
                genome.timeout = incumbent.timeout;
            }
            let room = |d: Option<std::time::Duration>| {
                d.is_none_or(|d| d.as_secs_f64() * 1e3 >= TIMEOUT_HEADROOM * slowest_ms)
            };
            let retry = genome.retry.as_ref();
            let fits = room(genome.timeout.map(|t| t.get()))
                && room(retry.and_then(|r| r.per_try_timeout).map(|t| t.get()))
                && genome.concurrency.as_ref().is_none_or(|c| {
                    c.adaptive || f64::from(c.max_in_flight) >= LIMIT_HEADROOM * usual_in_flight
                });
            if !fits || genome == *incumbent {
                return None;
            }
            let breaker = genome.circuit_breaker.as_ref();
            let counts_timeouts = breaker
                .is_some_and(|b| b.failure_on.contains(&RetryCondition::Timeout))
                || retry.is_some_and(|r| r.retry_on.contains(&RetryCondition::Timeout));
            let per_try = retry.is_some_and(|r| r.per_try_timeout.is_some());
            let answers = u32::from(failing && (retry.is_some() || breaker.is_some()))
                + u32::from(slow && per_try && counts_timeouts)
                + u32::from(bounded && genome.concurrency.is_some());
            let own = p.learned_from.as_ref().is_some_and(|l| l["route"] == route);
            Some((u32::from(own) * 10 + answers, order, p.name.clone(), genome))
        })
        .collect();
    // Learned ones are stored newest first, after the built-in ones: vault order otherwise.
    fitting.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    fitting
        .into_iter()
        .take(MAX_SEEDS)
        .map(|(_, _, name, genome)| (name, genome))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guardian::guardrails::{Guardrails, check};

    #[test]
    fn the_catalogue_parses_and_every_pattern_passes_the_invariants() {
        let patterns = catalogue();
        assert!(patterns.len() >= 12, "{} patterns", patterns.len());
        let rails = Guardrails::default();
        let mut names = std::collections::BTreeSet::new();
        for pattern in patterns {
            assert!(names.insert(&pattern.name), "{} twice", pattern.name);
            assert!(
                CATEGORIES.contains(&pattern.category.as_str()),
                "{}: category {}",
                pattern.name,
                pattern.category
            );
            assert!(
                pattern.description.len() > 80 && !pattern.stacks.is_empty(),
                "{}",
                pattern.name
            );
            let mut errors = ConfigErrors::default();
            pattern.genome.validate("genome", &mut errors);
            assert!(errors.is_empty(), "{}: {errors}", pattern.name);
            // The invariants (max_step and bounds are about a change, not a genome: checked
            // against itself, a pattern breaks only what always holds).
            let violations = check(&pattern.genome, &pattern.genome, &rails);
            assert!(violations.is_empty(), "{}: {violations:?}", pattern.name);
            assert!(
                pattern
                    .genome
                    .retry
                    .as_ref()
                    .is_none_or(|r| !r.retry_non_idempotent),
                "{}",
                pattern.name
            );
        }
        for seed in [
            "adaptive-retry",
            "circuit-breaker",
            "rate-limiter",
            "request-protection",
        ] {
            assert!(
                builtin_pattern(seed).is_some(),
                "the seed's {seed} is missing"
            );
        }
        for stack in [
            "grpc",
            "node",
            "python-wsgi",
            "jvm",
            "postgrest",
            "supabase",
            "lambda",
            "third-party",
        ] {
            let query = Query {
                stack: Some(stack.to_owned()),
                ..Query::default()
            };
            assert!(
                search(patterns, &query)
                    .iter()
                    .any(|p| p.stacks.iter().any(|s| s == stack)),
                "no pattern for {stack}"
            );
        }
    }

    #[test]
    fn search_matches_text_category_tag_and_stack_together() {
        let all = catalogue();
        let by =
            |q: Query| -> Vec<&str> { search(all, &q).iter().map(|p| p.name.as_str()).collect() };
        assert_eq!(
            by(Query {
                q: Some("Worker pool".into()),
                ..Query::default()
            }),
            ["python-wsgi-workers"]
        );
        let grpc = by(Query {
            stack: Some("grpc".into()),
            category: Some("composite".into()),
            ..Query::default()
        });
        assert!(
            grpc.contains(&"grpc-unary") && !grpc.contains(&"adaptive-retry"),
            "{grpc:?}"
        );
        assert_eq!(
            by(Query {
                tag: Some("429".into()),
                ..Query::default()
            }),
            ["third-party-quota"]
        );
        assert!(
            by(Query {
                q: Some("nothing-like-this".into()),
                ..Query::default()
            })
            .is_empty()
        );
    }

    #[test]
    fn a_route_takes_its_patterns_genome_under_its_own_sections() {
        let mut config = crate::testing::config(
            r#"
[[routes]]
name = "api"
listener = "in"
upstream = "app"
pattern = "grpc-unary"
[routes.policy]
timeout = "4s"
[[routes]]
name = "other"
listener = "in"
upstream = "app"
pattern = "no-such-thing"
"#,
        );
        let errors = resolve(&mut config).unwrap_err().to_string();
        assert!(
            errors.contains("routes[1].pattern") && errors.contains("grpc-unary"),
            "{errors}"
        );
        let api = &config.routes[0].policy;
        assert_eq!(
            api.timeout.map(|t| t.get()),
            Some(std::time::Duration::from_secs(4))
        );
        let pattern = &builtin_pattern("grpc-unary").unwrap().genome;
        assert_eq!(api.retry, pattern.retry);
        assert_eq!(api.circuit_breaker, pattern.circuit_breaker);
    }

    #[test]
    fn evolution_takes_the_patterns_that_fit_the_model_its_own_learned_ones_first() {
        let incumbent = Genome {
            timeout: Some(rafael_config::HumanDuration::from_secs(2)),
            ..Genome::default()
        };
        // 8 workers at 10 ms, 2% errors, 300 a second: about 3 in flight.
        let model = crate::evolution::testing::pool(8, 10.0, 0.02, 300.0);
        let names = |seeds: &[(String, Genome)]| -> Vec<String> {
            seeds.iter().map(|(n, _)| n.clone()).collect()
        };
        let first = seeds(catalogue(), &model, &incumbent, "api");
        assert_eq!(first.len(), MAX_SEEDS, "{:?}", names(&first));
        assert!(
            first
                .iter()
                .all(|(_, g)| g.rate_limit.is_none() && g.timeout.is_some())
        );
        // Failures and a capacity: every seed retries or breaks, and the best also limits.
        assert!(
            first
                .iter()
                .all(|(_, g)| g.retry.is_some() || g.circuit_breaker.is_some()),
            "{:?}",
            names(&first)
        );
        assert!(first[0].1.concurrency.is_some(), "{:?}", names(&first));
        // An upstream whose healthy answers take 3 s: no pattern with a shorter timeout fits.
        let slow = crate::evolution::testing::pool(8, 3000.0, 0.02, 2.0);
        for (name, genome) in seeds_of(&slow) {
            let timeout = genome.timeout.map_or(f64::MAX, |t| t.get().as_secs_f64());
            assert!(timeout >= 4.5, "{name}: {timeout}");
        }
        // A static limit below twice the usual in-flight (3,000 a second at 10 ms: 30) sheds
        // healthy traffic, so it does not fit.
        let busy = crate::evolution::testing::pool(64, 10.0, 0.02, 3000.0);
        for (name, genome) in seeds_of(&busy) {
            assert!(
                genome
                    .concurrency
                    .as_ref()
                    .is_none_or(|c| c.adaptive || c.max_in_flight >= 60),
                "{name}"
            );
        }
        // A pattern learned on this route comes first, one from another route does not jump
        // the queue.
        let mut patterns = catalogue().to_vec();
        let plain = Genome {
            timeout: Some(rafael_config::HumanDuration::from_secs(3)),
            ..Genome::default()
        };
        patterns.push(learned("other", 4, &plain, Vec::new(), None, "kept"));
        patterns.push(learned("api", 7, &plain, Vec::new(), Some(&model), "kept"));
        let ranked = seeds(&patterns, &model, &incumbent, "api");
        assert_eq!(ranked[0].0, "learned-api-g7");
        assert!(!names(&ranked).contains(&"learned-other-g4".to_owned()));
    }

    fn seeds_of(model: &Model) -> Vec<(String, Genome)> {
        let incumbent = Genome::default();
        let all = seeds(catalogue(), model, &incumbent, "api");
        assert!(!all.is_empty() || model.endpoints[0].service_time.p99_ms > 1000.0);
        all
    }

    #[test]
    fn a_saved_pattern_is_checked_named_once_and_found_after_the_built_in_ones() {
        let store = Store::in_memory().unwrap();
        let mut pattern = builtin_pattern("adaptive-retry").unwrap().clone();
        pattern.source = "learned".to_owned();
        // A built-in name is taken.
        assert!(matches!(save(&store, &pattern), Err(SaveError::Taken(_))));
        pattern.name = "Bad Name".to_owned();
        pattern.category = "magic".to_owned();
        if let Some(retry) = pattern.genome.retry.as_mut() {
            retry.retry_non_idempotent = true;
            retry.budget_ratio = 3.0;
        }
        let Err(SaveError::Invalid(errors)) = save(&store, &pattern) else {
            panic!("an invalid pattern was saved");
        };
        let text = errors.to_string();
        for path in [
            "name",
            "category",
            "genome.retry.retry_non_idempotent",
            "genome.retry.budget_ratio",
        ] {
            assert!(text.contains(path), "{path} missing from: {text}");
        }
        let mut good = builtin_pattern("adaptive-retry").unwrap().clone();
        good.name = "orders-read".to_owned();
        good.source = "learned".to_owned();
        save(&store, &good).unwrap();
        assert!(matches!(save(&store, &good), Err(SaveError::Taken(_))));
        let every = all(&store).unwrap();
        assert_eq!(every.len(), catalogue().len() + 1);
        assert_eq!(every.last().map(|p| p.name.as_str()), Some("orders-read"));
        assert_eq!(find(&store, "orders-read").unwrap(), Some(good));
        assert_eq!(category_of(&Genome::default()), "composite");
    }
}
