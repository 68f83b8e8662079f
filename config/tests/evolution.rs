//! `[evolution]` and `[guardian]`: every key with its default, and every bad value reported
//! with its key path.
#![allow(clippy::unwrap_used)]

use rafael_config::{AggregateMode, parse, scenario_problem};

const BASE: &str = r#"
[[listeners]]
name = "in"
bind = "127.0.0.1:0"

[[upstreams]]
name = "app"
endpoints = ["127.0.0.1:8080"]

[[routes]]
name = "main"
listener = "in"
upstream = "app"
"#;

fn errors_of(extra: &str) -> Vec<String> {
    match parse(&format!("{BASE}\n{extra}")) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn defaults_are_the_design_s() {
    let config = parse(BASE).unwrap();
    let evolution = &config.evolution;
    assert_eq!((evolution.population, evolution.parents), (16, 4));
    assert_eq!((evolution.generations, evolution.seeds), (12, 5));
    assert_eq!(evolution.scenarios.len(), 6);
    assert_eq!(evolution.scenarios[0], "observed");
    assert_eq!(evolution.aggregate, AggregateMode::Mean);
    assert_eq!(evolution.margin, 0.02);
    assert_eq!(evolution.objectives.client_timeout.get().as_secs(), 5);
    assert_eq!(config.guardian.max_step, 0.5);
    assert!(config.guardian.frozen.is_empty());
    assert!(config.routes[0].evolve);
}

#[test]
fn the_keys_of_the_design_parse() {
    let config = parse(&format!(
        r#"{BASE}
evolve = false

[evolution]
population = 8
generations = 3
seeds = 2
scenarios = ["observed", "latency:high"]
aggregate = "worst"
margin = 0.05
objectives = {{ slo_latency = "200ms", client_timeout = "2s" }}

[guardian]
max_step = 0.25
frozen = ["rate_limit", "retry.max_attempts"]
guardrails = {{ "retry.max_attempts" = {{ max = 4 }}, "rate_limit.rps" = {{ min = 100 }} }}
"#
    ))
    .unwrap();
    assert!(!config.routes[0].evolve);
    assert_eq!(config.evolution.aggregate, AggregateMode::Worst);
    assert_eq!(
        config.guardian.guardrails["retry.max_attempts"].max,
        Some(4.0)
    );
    assert_eq!(config.guardian.frozen.len(), 2);
}

#[test]
fn bad_values_name_their_key_path() {
    let cases = [
        (
            "[evolution]\nscenarios = [\"observed\", \"earthquake:high\"]",
            "evolution.scenarios[1]: unknown scenario \"earthquake:high\"",
        ),
        (
            "[evolution]\nscenarios = [\"latency:extreme\"]",
            "evolution.scenarios[0]: unknown severity \"extreme\"",
        ),
        (
            "[evolution]\nscenarios = []",
            "evolution.scenarios: must name at least one",
        ),
        (
            "[evolution]\npopulation = 0",
            "evolution.population: must be 1..=1000",
        ),
        (
            "[evolution]\nmargin = 2.0",
            "evolution.margin: must be 0..=1",
        ),
        ("[evolution]\nduration = \"20m\"", "evolution.duration"),
        ("[evolution]\naggregate = \"median\"", "evolution.aggregate"),
        (
            "[guardian]\nguardrails = { \"retry.attempts\" = { max = 4 } }",
            "guardian.guardrails.\"retry.attempts\": unknown gene",
        ),
        (
            "[guardian]\nguardrails = { \"retry.max_attempts\" = { min = 5, max = 4 } }",
            "min (5) is above max (4)",
        ),
        (
            "[guardian]\nfrozen = [\"retries\"]",
            "guardian.frozen[0]: unknown gene or section \"retries\"",
        ),
        ("[guardian]\nmax_step = 0", "guardian.max_step"),
        ("[guardian]\ncanary = { percent = 10 }", "guardian.canary"),
        (
            "[evolution]\nguardrails = { \"retry.max_attempts\" = { max = 4 } }\n[guardian]\nguardrails = { \"retry.max_attempts\" = { max = 3 } }",
            "evolution.guardrails: set in both",
        ),
    ];
    for (extra, expected) in cases {
        let errors = errors_of(extra);
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{extra}: expected {expected:?} in {errors:?}"
        );
    }
}

#[test]
fn a_route_cannot_be_named_rounds() {
    let text = BASE.replace("name = \"main\"", "name = \"rounds\"");
    let errors: Vec<String> = parse(&text)
        .unwrap_err()
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("routes[0].name") && e.contains("reserved")),
        "{errors:?}"
    );
}

#[test]
fn every_threat_and_severity_is_a_scenario() {
    for threat in rafael_config::THREATS {
        for severity in rafael_config::SEVERITIES {
            assert_eq!(scenario_problem(&format!("{threat}:{severity}")), None);
        }
    }
    assert!(scenario_problem("latency").is_some());
}
