//! The config file contract: the documented example parses, and bad files report every error
//! with its key path.

use std::time::Duration;

use rafael_config::{ListenerProtocol, RetryCondition, UpstreamProtocol, parse};

const DESIGN_EXAMPLE: &str = r#"
[admin]
bind = "127.0.0.1:9901"

[store]
path = "rafael.db"

[[listeners]]
name = "inbound"
bind = "0.0.0.0:15001"
protocol = "auto"

[[upstreams]]
name = "app"
endpoints = ["127.0.0.1:8080"]

[[routes]]
name = "orders-read"
listener = "inbound"
upstream = "app"
match = { path_prefix = "/orders", methods = ["GET", "HEAD"] }
pattern = "idempotent-read"

[routes.policy]
timeout = "2s"
retry = { max_attempts = 3, per_try_timeout = "500ms", backoff_base = "25ms", backoff_max = "250ms",
          retry_on = ["connect-failure", "reset", "5xx"], budget_ratio = 0.2, budget_min_per_sec = 10,
          max_replay_bytes = 65536 }
circuit_breaker = { consecutive_failures = 5, failure_rate = 0.5, window = "10s", min_requests = 20,
                    slow_call_duration = "1s", slow_call_rate = 1.0, open_for = "5s", half_open_probes = 3 }
rate_limit = { rps = 500, burst = 100 }
concurrency = { max_in_flight = 256, adaptive = false }

[chaos]
header_secret = "change-me"
max_active_faults = 100

[[faults]]
route = "orders-read"
stage = "upstream"
percent = 5.0
delay = "200ms"

[evolution]
enabled = true
interval = "10m"
approval = "manual"
objectives = { slo_latency = "300ms", weights = { goodput = 1.0, latency = 0.3, amplification = 0.2, rejected = 0.5 } }
guardrails = { "retry.max_attempts" = { max = 4 }, "rate_limit.rps" = { min = 100 } }
"#;

fn errors_of(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("expected errors"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn design_example_parses_with_every_section() {
    let config = parse(DESIGN_EXAMPLE).expect("the documented example is valid");
    assert_eq!(config.listeners[0].protocol, ListenerProtocol::Auto);
    assert_eq!(config.listeners[0].max_header_bytes.bytes(), 65536);
    assert_eq!(config.upstreams[0].protocol, UpstreamProtocol::Http1);
    let route = &config.routes[0];
    assert_eq!(route.match_.path_prefix.as_deref(), Some("/orders"));
    let retry = route.policy.retry.as_ref().expect("retry genes");
    assert_eq!(
        retry.per_try_timeout.map(|d| d.get()),
        Some(Duration::from_millis(500))
    );
    assert_eq!(retry.retry_on[2], RetryCondition::ServerError);
    assert_eq!(
        route.policy.timeout.map(|d| d.get()),
        Some(Duration::from_secs(2))
    );
    assert_eq!(
        config.evolution.guardrails["retry.max_attempts"].max,
        Some(4.0)
    );
    assert_eq!(
        config.faults[0].delay.map(|d| d.get()),
        Some(Duration::from_millis(200))
    );
}

#[test]
fn every_error_is_reported_with_its_key_path() {
    let text = r#"
[[listeners]]
name = "in"
bind = "127.0.0.1:0"
max_header_bytes = "12 parsecs"

[[listeners]]
name = "in"
bind = "127.0.0.1:0"
colour = "blue"
flavour = "mint"

[[upstreams]]
name = "app"
endpoints = ["127.0.0.1:8080"]

[[routes]]
name = "r"
listener = "in"
upstream = "app"
[routes.policy]
retry = { max_attempts = 0 }
"#;
    let errors = errors_of(text);
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("listeners[0].max_header_bytes: invalid size")),
        "{errors:?}"
    );
    assert!(
        errors.contains(&"listeners[1].colour: unknown key".to_owned()),
        "{errors:?}"
    );
    assert!(
        errors.contains(&"listeners[1].flavour: unknown key".to_owned()),
        "{errors:?}"
    );
}

#[test]
fn semantic_errors_are_all_collected() {
    let text = r#"
[admin]
bind = "0.0.0.0:9901"

[[listeners]]
name = "in"
bind = "127.0.0.1:15001"

[[listeners]]
name = "in"
bind = "127.0.0.1:15001"

[[upstreams]]
name = "app"
endpoints = ["localhost", "10.0.0.1:0"]

[[routes]]
name = "r"
listener = "nowhere"
upstream = "ghost"
match = { path_prefix = "orders", methods = ["get"] }
[routes.policy]
retry = { max_attempts = 0, backoff_base = "1s", backoff_max = "10ms", retry_on = [700] }
circuit_breaker = { failure_on = ["5xx", 42] }
"#;
    let errors = errors_of(text);
    for expected in [
        "listeners[1].name: duplicate name \"in\"",
        "listeners[1].bind: 127.0.0.1:15001 is already bound by listeners[0]",
        "upstreams[0].endpoints[0]: \"localhost\" has no port",
        "upstreams[0].endpoints[1]: \"10.0.0.1:0\" has an invalid port",
        "routes[0].listener: no listener is named \"nowhere\"",
        "routes[0].upstream: no upstream is named \"ghost\"",
        "routes[0].match.path_prefix: must start with '/'",
        "routes[0].match.methods[0]: must be an upper-case HTTP method",
        "routes[0].policy.retry.max_attempts: must be 1..=10, got 0",
        "routes[0].policy.retry.backoff_max: must be at least backoff_base",
        "routes[0].policy.retry.retry_on[0]: must be an HTTP status code 100..=599, got 700",
        "routes[0].policy.circuit_breaker.failure_on[1]: must be an HTTP status code",
        "admin.tokens_file: required when admin.bind (0.0.0.0:9901) is not a loopback address",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(expected)),
            "missing {expected:?} in {errors:#?}"
        );
    }
}

#[test]
fn unknown_sections_and_nested_keys_are_errors() {
    let text = r#"
[[listeners]]
name = "in"
bind = "127.0.0.1:15001"
tls = { cert = "c.pem", key = "k.pem", password = "x" }

[admn]
bind = "127.0.0.1:1"
"#;
    let errors = errors_of(text);
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("admn: unknown section")),
        "{errors:?}"
    );
    assert!(
        errors.contains(&"listeners[0].tls.password: unknown key".to_owned()),
        "{errors:?}"
    );
}

#[test]
fn syntax_errors_name_the_line() {
    let errors = errors_of("[[listeners]]\nname = \"in\"\nbind = \n");
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with("line 3: TOML syntax error"),
        "{errors:?}"
    );
}

#[test]
fn sizes_and_durations_accept_their_documented_forms() {
    let text = r#"
[runtime]
drain_timeout = "1m 30s"

[[listeners]]
name = "in"
bind = "127.0.0.1:15001"
max_header_bytes = "16KiB"
header_read_timeout = "250ms"
"#;
    let config = parse(text).expect("valid");
    assert_eq!(config.runtime.drain_timeout.get(), Duration::from_secs(90));
    assert_eq!(config.listeners[0].max_header_bytes.bytes(), 16 * 1024);
    assert_eq!(
        config.listeners[0].header_read_timeout.get(),
        Duration::from_millis(250)
    );

    let errors =
        errors_of("[[listeners]]\nname = \"in\"\nbind = \"127.0.0.1:1\"\nidle_timeout = 60\n");
    assert!(
        errors[0].starts_with("listeners[0].idle_timeout: invalid type: integer"),
        "{errors:?}"
    );
}

/// An unknown key does not hide the file's other errors: one pass reports them all (issue 11).
/// A value of the wrong type does, and says so: checking defaults in its place would invent
/// errors the file does not have.
#[test]
fn unknown_keys_are_reported_with_every_other_error_in_one_pass() {
    let text = r#"
[admin]
bind = "127.0.0.1:9901"
bogus = 1
[[listeners]]
name = "in"
bind = "127.0.0.1:0"
extra = "x"
[[upstreams]]
name = "app"
endpoints = []
[[routes]]
name = "r"
listener = "nope"
upstream = "app"
[routes.policy]
timeout = "0s"
[surprise]
"#;
    let errors = parse(text).unwrap_err().to_string();
    for expected in [
        "admin.bogus: unknown key",
        "listeners[0].extra: unknown key",
        "surprise: unknown section",
        "upstreams[0].endpoints: at least one endpoint is required",
        "routes[0].listener: no listener is named \"nope\"",
        "routes[0].policy.timeout: must be 1ms..=1h",
    ] {
        assert!(
            errors.contains(expected),
            "{expected:?} missing from:\n{errors}"
        );
    }
    let typed = text.replace("timeout = \"0s\"", "timeout = 3");
    let errors = parse(&typed).unwrap_err().to_string();
    assert!(errors.contains("routes[0].policy.timeout"), "{errors}");
    assert!(errors.contains("admin.bogus: unknown key"), "{errors}");
    assert!(
        errors.contains("run once the values above decode"),
        "{errors}"
    );
    assert!(!errors.contains("at least one endpoint"), "{errors}");
}
