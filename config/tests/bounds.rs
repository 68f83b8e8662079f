//! Every duration, size and name in the config file has an upper bound, reported with its key
//! path (issue 8): a file cannot ask for a delay of centuries, a replay buffer of exabytes or
//! a Prometheus label of megabytes.
#![allow(clippy::unwrap_used)]

use rafael_config::{Config, ConfigErrors, parse, parse_fault_rule};

/// A valid file with every duration and size key set to `duration` and `size`.
fn every_key(duration: &str, size: &str) -> String {
    format!(
        r#"
[runtime]
drain_timeout = "{duration}"

[chaos]
header_secret = "s"

[[listeners]]
name = "in"
bind = "127.0.0.1:0"
header_read_timeout = "{duration}"
idle_timeout = "{duration}"
max_header_bytes = "{size}"

[[upstreams]]
name = "app"
endpoints = ["127.0.0.1:8080"]
connect_timeout = "{duration}"
pool_idle_timeout = "{duration}"

[[routes]]
name = "main"
listener = "in"
upstream = "app"

[routes.policy]
timeout = "{duration}"
retry = {{ per_try_timeout = "{duration}", backoff_base = "{duration}", backoff_max = "{duration}",
          max_replay_bytes = "{size}" }}
circuit_breaker = {{ window = "{duration}", slow_call_duration = "{duration}",
                    open_for = "{duration}", open_for_max = "{duration}" }}

[[faults]]
route = "main"
delay = "{duration}"
delay_max = "{duration}"

[[faults]]
route = "main"
truncate = "{size}"

[[faults]]
route = "main"
throttle = "{size}/s"

[evolution]
interval = "{duration}"
objectives = {{ slo_latency = "{duration}" }}
"#
    )
}

fn errors_of(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("expected errors"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn every_duration_and_size_key_has_an_upper_bound_named_by_its_path() {
    parse(&every_key("1s", "16KiB")).expect("moderate values are valid");
    let errors = errors_of(&every_key("500000000years", "1PiB"));
    for key in [
        "runtime.drain_timeout",
        "listeners[0].header_read_timeout",
        "listeners[0].idle_timeout",
        "listeners[0].max_header_bytes",
        "upstreams[0].connect_timeout",
        "upstreams[0].pool_idle_timeout",
        "routes[0].policy.timeout",
        "routes[0].policy.retry.per_try_timeout",
        "routes[0].policy.retry.backoff_base",
        "routes[0].policy.retry.backoff_max",
        "routes[0].policy.retry.max_replay_bytes",
        "routes[0].policy.circuit_breaker.window",
        "routes[0].policy.circuit_breaker.slow_call_duration",
        "routes[0].policy.circuit_breaker.open_for",
        "routes[0].policy.circuit_breaker.open_for_max",
        "faults[0].delay",
        "faults[0].delay_max",
        "faults[1].truncate",
        "faults[2].throttle",
        "evolution.interval",
        "evolution.objectives.slo_latency",
    ] {
        let prefix = format!("{key}: must be ");
        assert!(
            errors.iter().any(|e| e.starts_with(&prefix)),
            "{key} has no upper bound:\n{}",
            errors.join("\n")
        );
    }
}

#[test]
fn fault_bounds_use_the_existing_wording() {
    let errors = errors_of(&every_key("2h", "16KiB"));
    assert!(
        errors.contains(&"faults[0].delay: must be 0s..=1h, got 2h".to_owned()),
        "{errors:#?}"
    );
    let text = every_key("1s", "16KiB").replace(
        "truncate = \"16KiB\"",
        &format!("abort = 503\nabort_body = \"{}\"", "b".repeat(65 * 1024)),
    );
    let errors = errors_of(&text);
    assert_eq!(
        errors,
        ["faults[1].abort_body: must be at most 64KiB, got 66560 bytes"]
    );
}

#[test]
fn a_route_takes_at_most_64_standing_fault_rules() {
    let base = every_key("1s", "16KiB");
    let rule = "\n[[faults]]\nroute = \"main\"\nreset = true\n";
    // The file has three rules for `main` already.
    parse(&format!("{base}{}", rule.repeat(61))).expect("64 rules are allowed");
    let errors = errors_of(&format!("{base}{}", rule.repeat(62)));
    assert_eq!(
        errors,
        ["faults[64].route: route \"main\" has more than 64 fault rules"]
    );
}

#[test]
fn names_are_at_most_128_bytes() {
    let base = every_key("1s", "16KiB");
    let long = "r".repeat(129);
    let text = base
        .replace("name = \"main\"", &format!("name = \"{long}\""))
        .replace("route = \"main\"", &format!("route = \"{long}\""));
    assert_eq!(
        errors_of(&text),
        ["routes[0].name: must be at most 128 bytes, got 129"]
    );
}

/// The admin API decodes an experiment's rules with the file's own decoder.
#[test]
fn a_fault_rule_from_elsewhere_is_checked_as_the_files_are() {
    let config: Config = parse(&every_key("1s", "16KiB")).unwrap();
    let rule = |text: &str| -> Result<_, ConfigErrors> {
        let value: toml::Value = toml::from_str::<toml::Table>(text).unwrap().into();
        parse_fault_rule(value, "faults[3]", &config)
    };
    let ok = rule("route = \"main\"\ndelay = \"10ms\"\npercent = 5.0").unwrap();
    assert_eq!(ok.percent, 5.0);
    let errors = rule("route = \"main\"\ndelay = \"10ms\"\npercnt = 5.0").unwrap_err();
    assert_eq!(errors.to_string(), "faults[3].percnt: unknown key");
    let errors = rule("route = \"main\"\ndelay = \"2h\"").unwrap_err();
    assert_eq!(
        errors.to_string(),
        "faults[3].delay: must be 0s..=1h, got 2h"
    );
    let errors = rule("route = \"main\"\ndelay = 5").unwrap_err();
    assert!(
        errors.to_string().starts_with("faults[3].delay: "),
        "{errors}"
    );
}

#[test]
fn the_model_keys_default_and_are_bounded_by_their_paths() {
    let base = every_key("1s", "16KiB");
    let config: Config = parse(&base).unwrap();
    assert_eq!(config.evolution.min_requests, 2000);
    assert_eq!(config.evolution.max_model_error, 0.15);
    let set = |extra: &str| base.replace("[evolution]\n", &format!("[evolution]\n{extra}\n"));
    let config = parse(&set("min_requests = 500\nmax_model_error = 0.3")).unwrap();
    assert_eq!(
        (
            config.evolution.min_requests,
            config.evolution.max_model_error
        ),
        (500, 0.3)
    );
    assert_eq!(
        errors_of(&set("min_requests = 0\nmax_model_error = -0.1")),
        [
            "evolution.min_requests: must be 100..=10000000, got 0",
            "evolution.max_model_error: must be 0..=10, got -0.1",
        ]
    );
    assert_eq!(
        errors_of(&set("max_model_error = nan")),
        ["evolution.max_model_error: must be 0..=10, got NaN"]
    );
}

#[test]
fn a_listeners_backlog_defaults_to_1024_and_is_bounded_by_its_path() {
    let base = every_key("1s", "16KiB");
    assert_eq!(parse(&base).unwrap().listeners[0].backlog, 1024);
    let set = |backlog: &str| {
        base.replace(
            "bind = \"127.0.0.1:0\"\n",
            &format!("bind = \"127.0.0.1:0\"\nbacklog = {backlog}\n"),
        )
    };
    assert_eq!(parse(&set("4096")).unwrap().listeners[0].backlog, 4096);
    assert_eq!(
        errors_of(&set("0")),
        ["listeners[0].backlog: must be 1..=65535, got 0"]
    );
    assert_eq!(
        errors_of(&set("70000")),
        ["listeners[0].backlog: must be 1..=65535, got 70000"]
    );
}
