//! `[evolution]` and `[guardian]`: every key with its default, and every bad value reported
//! with its key path.
#![allow(clippy::unwrap_used)]

use rafael_config::{AggregateMode, ApprovalMode, parse, scenario_problem};

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
    let guardian = &config.guardian;
    assert_eq!(config.approval(), ApprovalMode::Manual);
    assert_eq!(guardian.approvals_required, 1);
    assert_eq!(guardian.proposal_ttl.get().as_secs(), 24 * 3600);
    assert_eq!(guardian.canary, None);
    assert_eq!(guardian.watch.duration.get().as_secs(), 300);
    assert_eq!(guardian.watch.max_goodput_drop, 0.02);
    assert_eq!(guardian.watch.max_p99_increase, 0.25);
    assert!(config.deprecations().is_empty());
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
approval = "auto"
approvals_required = 2
proposal_ttl = "1h"
max_step = 0.25
frozen = ["rate_limit", "retry.max_attempts"]
guardrails = {{ "retry.max_attempts" = {{ max = 4 }}, "rate_limit.rps" = {{ min = 100 }} }}
canary = {{ percent = 5, duration = "30s", min_requests = 200 }}
watch = {{ duration = "10m", max_goodput_drop = 0.05, max_p99_increase = 0.5 }}
"#
    ))
    .unwrap();
    assert_eq!(config.approval(), ApprovalMode::Auto);
    let guardian = &config.guardian;
    assert_eq!(guardian.approvals_required, 2);
    assert_eq!(guardian.proposal_ttl.get().as_secs(), 3600);
    let canary = guardian.canary.unwrap();
    assert_eq!(
        (
            canary.percent,
            canary.duration.get().as_secs(),
            canary.min_requests
        ),
        (5.0, 30, 200)
    );
    assert_eq!(guardian.watch.duration.get().as_secs(), 600);
    assert_eq!(guardian.watch.max_goodput_drop, 0.05);
    assert_eq!(guardian.watch.max_p99_increase, 0.5);
    assert!(!config.routes[0].evolve);
    assert_eq!(config.evolution.aggregate, AggregateMode::Worst);
    assert_eq!(
        config.guardian.guardrails["retry.max_attempts"].max,
        Some(4.0)
    );
    assert_eq!(config.guardian.frozen.len(), 2);
    // A canary's keys default one by one; a watch of 0s applies without watching.
    let partial = parse(&format!(
        "{BASE}
[guardian]
canary = {{ percent = 20 }}
watch = {{ duration = \"0s\" }}
"
    ))
    .unwrap();
    assert_eq!(partial.guardian.canary.unwrap().min_requests, 500);
    assert!(partial.guardian.watch.duration.get().is_zero());
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
        ("[guardian]\napproval = \"sometimes\"", "guardian.approval"),
        (
            "[guardian]\napprovals_required = 0",
            "guardian.approvals_required: must be 1..=10, got 0",
        ),
        (
            "[guardian]\ncanary = { percent = 80 }",
            "guardian.canary.percent: must be 0.1..=50, got 80",
        ),
        (
            "[guardian]\ncanary = { share = 10 }",
            "guardian.canary.share: unknown key",
        ),
        (
            "[guardian]\ncanary = { duration = \"0s\" }",
            "guardian.canary.duration: must be 1s..=1day",
        ),
        (
            "[guardian]\ncanary = { min_requests = 0 }",
            "guardian.canary.min_requests: must be 1..=10000000, got 0",
        ),
        (
            "[guardian]\nwatch = { max_goodput_drop = 2 }",
            "guardian.watch.max_goodput_drop: must be 0..=1, got 2",
        ),
        (
            "[guardian]\nwatch = { max_p99_increase = -1 }",
            "guardian.watch.max_p99_increase",
        ),
        (
            "[guardian]\nwatch = { duration = \"2days\" }",
            "guardian.watch.duration",
        ),
        (
            "[evolution]\napproval = \"auto\"\n[guardian]\napproval = \"manual\"",
            "evolution.approval: set in both",
        ),
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
fn the_old_places_of_approval_and_guardrails_still_work_with_a_warning() {
    let config = parse(&format!(
        "{BASE}\n[evolution]\napproval = \"auto\"\nguardrails = {{ \"retry.max_attempts\" = {{ max = 4 }} }}\n"
    ))
    .unwrap();
    assert_eq!(config.approval(), ApprovalMode::Auto);
    assert_eq!(config.guardrails()["retry.max_attempts"].max, Some(4.0));
    let warnings: Vec<String> = config
        .deprecations()
        .iter()
        .map(|w| w.to_string())
        .collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].starts_with("evolution.approval: deprecated: moved to [guardian].approval"),
        "{warnings:?}"
    );
    assert!(
        warnings[1].starts_with("evolution.guardrails: deprecated"),
        "{warnings:?}"
    );
    // The new place wins and warns of nothing.
    let config = parse(&format!(
        "{BASE}\n[guardian]\napproval = \"auto\"\nguardrails = {{ \"retry.max_attempts\" = {{ max = 3 }} }}\n"
    ))
    .unwrap();
    assert_eq!(config.guardrails()["retry.max_attempts"].max, Some(3.0));
    assert!(config.deprecations().is_empty());
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
