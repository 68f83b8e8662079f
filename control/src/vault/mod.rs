//! The vault (DESIGN §7.8): reusable policy patterns, each a genome with when to use it.
//!
//! - The built-in catalogue (`catalogue.toml`, embedded) holds patterns for kinds of upstream
//!   (gRPC services, event loops, WSGI worker pools, JVM thread pools, database APIs,
//!   serverless cold starts, third-party quotas, ...) and the seed's four (adaptive retry,
//!   circuit breaker, rate limiter, request protection).
//! - [`search`] finds patterns by free text, category, tag and stack.
//! - [`resolve`] gives a route with `pattern = "NAME"` that pattern's genome, its own
//!   `[routes.policy]` sections on top.
//! - [`seeds`] are the patterns evolution starts its first generation from.

use std::sync::OnceLock;

use rafael_config::{Config, ConfigError, ConfigErrors, Genome};
use serde::{Deserialize, Serialize};

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
    pub learned_from: Option<serde_json::Value>,
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

/// The built-in patterns evolution starts from for a route running `incumbent`: each pattern
/// with the incumbent's rate limit in place of its own (a rate limit is a promise to clients
/// that no model can know, so the search never invents or moves one from a pattern), and its
/// timeout where it has none. The search repairs them into the guardrails or drops them.
pub fn seeds(incumbent: &Genome) -> Vec<Genome> {
    catalogue()
        .iter()
        .map(|p| {
            let mut genome = p.genome.clone();
            genome.rate_limit = incumbent.rate_limit.clone();
            if genome.timeout.is_none() {
                genome.timeout = incumbent.timeout;
            }
            genome
        })
        .filter(|g| g != incumbent)
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
        let mut config = rafael_config::parse(
            r#"
[[listeners]]
name = "in"
bind = "127.0.0.1:0"
[[upstreams]]
name = "app"
endpoints = ["127.0.0.1:9"]
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
        )
        .unwrap();
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
    fn evolution_seeds_keep_the_incumbents_rate_limit() {
        let incumbent = Genome {
            timeout: Some(rafael_config::HumanDuration::from_secs(2)),
            ..Genome::default()
        };
        let seeds = seeds(&incumbent);
        assert!(seeds.len() >= 12);
        assert!(seeds.iter().all(|g| g.rate_limit.is_none()));
    }
}
