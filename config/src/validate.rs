//! Semantic checks on a decoded config: references, uniqueness, addresses and bounds.

use std::collections::{HashMap, HashSet};

use crate::{
    Config, ConfigErrors, FaultConfig, ListenerConfig, RouteConfig, UpstreamConfig,
    genome::{binary_size, check_duration, check_fraction, check_range, check_size, http_token},
};

/// Longest listener, upstream or route name: names become Prometheus label values and admin
/// API paths, so a runaway one would bloat every scrape.
pub const MAX_NAME_BYTES: usize = 128;
/// Most fault rules on one route, for the file's `[[faults]]` and for one experiment: each
/// request is checked against every rule of its route.
pub const MAX_FAULT_RULES: usize = 64;
/// Largest `abort_body`: it is copied into every aborted response.
pub const MAX_ABORT_BODY_BYTES: u64 = 64 * 1024;
/// Longest `delay` and `delay_max`, in milliseconds (1 h): an experiment lasts at most
/// 10 minutes, and a standing delay longer than an hour is a typo, not a test.
pub const MAX_FAULT_DELAY_MS: u64 = 3_600_000;
/// Largest `truncate`: the cut must be reachable by a real response.
pub const MAX_TRUNCATE_BYTES: u64 = 1 << 40;
/// Fastest `throttle`: above 1 GiB/s a throttle slows nothing down.
pub const MAX_THROTTLE_BYTES_PER_SEC: u64 = 1 << 30;

/// Records every semantic problem in `config`.
pub(crate) fn config(config: &Config, errors: &mut ConfigErrors) {
    if config.listeners.is_empty() {
        errors.push("listeners", "at least one [[listeners]] is required");
    }
    check_duration(
        errors,
        "runtime.drain_timeout",
        config.runtime.drain_timeout,
        0,
        3_600_000,
    );
    if let Some(threads) = config.runtime.worker_threads {
        check_range(errors, "runtime.worker_threads", threads, 1, 1024);
    }
    if config.admin.tokens_file.is_none() && !config.admin.bind.ip().is_loopback() {
        // Without tokens every caller is admin: only acceptable when only this host can call.
        errors.push(
            "admin.tokens_file",
            format!(
                "required when admin.bind ({}) is not a loopback address",
                config.admin.bind
            ),
        );
    }

    let listeners = unique_names(
        config.listeners.iter().map(|l| l.name.as_str()),
        "listeners",
        errors,
    );
    let upstreams = unique_names(
        config.upstreams.iter().map(|u| u.name.as_str()),
        "upstreams",
        errors,
    );
    let routes = unique_names(
        config.routes.iter().map(|r| r.name.as_str()),
        "routes",
        errors,
    );
    for (i, route) in config.routes.iter().enumerate() {
        // `/v1/evolution/rounds/{id}` would shadow `/v1/evolution/{route}/run` for this name.
        if route.name == "rounds" {
            errors.push(
                format!("routes[{i}].name"),
                "\"rounds\" is reserved (the admin API's /v1/evolution/rounds)",
            );
        }
    }

    let mut binds = HashMap::new();
    for (i, listener) in config.listeners.iter().enumerate() {
        let path = format!("listeners[{i}]");
        listener_checks(listener, &path, errors);
        // Port 0 asks the OS for a fresh port, so two such listeners never collide.
        if listener.bind.port() == 0 {
            continue;
        }
        if let Some(previous) = binds.insert(listener.bind, i) {
            errors.push(
                format!("{path}.bind"),
                format!(
                    "{} is already bound by listeners[{previous}]",
                    listener.bind
                ),
            );
        }
        if listener.bind == config.admin.bind {
            errors.push(format!("{path}.bind"), "is the admin listener's address");
        }
    }
    for (i, upstream) in config.upstreams.iter().enumerate() {
        upstream_checks(upstream, &format!("upstreams[{i}]"), errors);
    }
    for (i, route) in config.routes.iter().enumerate() {
        route_checks(
            route,
            &format!("routes[{i}]"),
            &listeners,
            &upstreams,
            errors,
        );
    }
    check_range(
        errors,
        "chaos.max_active_faults",
        config.chaos.max_active_faults,
        0,
        1_000_000,
    );
    let mut rules_per_route: HashMap<&str, usize> = HashMap::new();
    for (i, fault) in config.faults.iter().enumerate() {
        fault_checks(fault, &format!("faults[{i}]"), &routes, config, errors);
        let count = rules_per_route.entry(fault.route.as_str()).or_default();
        *count += 1;
        if *count == MAX_FAULT_RULES + 1 {
            errors.push(
                format!("faults[{i}].route"),
                format!(
                    "route {:?} has more than {MAX_FAULT_RULES} fault rules",
                    fault.route
                ),
            );
        }
    }
    check_duration(
        errors,
        "evolution.interval",
        config.evolution.interval,
        1_000,
        7 * 86_400_000,
    );
    // A fit on fewer than a few hundred attempts cannot tell a burst from noise; above ten
    // million the ten-minute window of a route never holds enough.
    check_range(
        errors,
        "evolution.min_requests",
        config.evolution.min_requests,
        100,
        10_000_000,
    );
    check_fraction(
        errors,
        "evolution.max_model_error",
        config.evolution.max_model_error,
        0.0,
        10.0,
    );
    check_duration(
        errors,
        "evolution.objectives.slo_latency",
        config.evolution.objectives.slo_latency,
        1,
        600_000,
    );
    let evolution = &config.evolution;
    check_range(
        errors,
        "evolution.population",
        evolution.population,
        1,
        1_000,
    );
    check_range(errors, "evolution.parents", evolution.parents, 1, 100);
    check_range(
        errors,
        "evolution.generations",
        evolution.generations,
        0,
        1_000,
    );
    check_range(errors, "evolution.seeds", evolution.seeds, 1, 100);
    check_fraction(errors, "evolution.margin", evolution.margin, 0.0, 1.0);
    // A full evaluation runs every scenario and seed for this long: ten minutes is the
    // telemetry window, and longer only repeats it.
    check_duration(
        errors,
        "evolution.duration",
        evolution.duration,
        1_000,
        600_000,
    );
    check_duration(
        errors,
        "evolution.objectives.client_timeout",
        evolution.objectives.client_timeout,
        1,
        3_600_000,
    );
    if evolution.scenarios.is_empty() {
        errors.push("evolution.scenarios", "must name at least one scenario");
    }
    for (i, scenario) in evolution.scenarios.iter().enumerate() {
        if let Some(problem) = scenario_problem(scenario) {
            errors.push(format!("evolution.scenarios[{i}]"), problem);
        }
    }
    if !evolution.guardrails.is_empty() && !config.guardian.guardrails.is_empty() {
        errors.push(
            "evolution.guardrails",
            "set in both [evolution] (its old place) and [guardian]: keep [guardian].guardrails",
        );
    }
    for (section, rails) in [
        ("evolution", &evolution.guardrails),
        ("guardian", &config.guardian.guardrails),
    ] {
        for (gene, guardrail) in rails {
            let path = format!("{section}.guardrails.\"{gene}\"");
            if !crate::GENE_PATHS.contains(&gene.as_str()) {
                errors.push(
                    path.clone(),
                    format!(
                        "unknown gene; expected one of {}",
                        crate::GENE_PATHS.join(", ")
                    ),
                );
            }
            if let (Some(min), Some(max)) = (guardrail.min, guardrail.max) {
                if min > max {
                    errors.push(path, format!("min ({min}) is above max ({max})"));
                }
            }
        }
    }
    if evolution.approval.is_some() && config.guardian.approval.is_some() {
        errors.push(
            "evolution.approval",
            "set in both [evolution] (its old place) and [guardian]: keep [guardian].approval",
        );
    }
    let guardian = &config.guardian;
    check_range(
        errors,
        "guardian.approvals_required",
        guardian.approvals_required,
        1,
        10,
    );
    if let Some(canary) = &guardian.canary {
        // At most half: a canary is the smaller cohort, the stable one its control.
        check_fraction(errors, "guardian.canary.percent", canary.percent, 0.1, 50.0);
        check_duration(
            errors,
            "guardian.canary.duration",
            canary.duration,
            1_000,
            86_400_000,
        );
        check_range(
            errors,
            "guardian.canary.min_requests",
            canary.min_requests,
            1,
            10_000_000,
        );
    }
    let watch = &guardian.watch;
    check_duration(
        errors,
        "guardian.watch.duration",
        watch.duration,
        0,
        86_400_000,
    );
    check_fraction(
        errors,
        "guardian.watch.max_goodput_drop",
        watch.max_goodput_drop,
        0.0,
        1.0,
    );
    check_fraction(
        errors,
        "guardian.watch.max_p99_increase",
        watch.max_p99_increase,
        0.0,
        100.0,
    );
    check_fraction(errors, "guardian.max_step", guardian.max_step, 0.01, 100.0);
    check_duration(
        errors,
        "guardian.proposal_ttl",
        guardian.proposal_ttl,
        1_000,
        30 * 86_400_000,
    );
    for (i, frozen) in guardian.frozen.iter().enumerate() {
        let known = crate::GENE_PATHS.contains(&frozen.as_str())
            || crate::GENOME_SECTIONS.contains(&frozen.as_str())
            || matches!(
                frozen.as_str(),
                "retry.retry_on" | "circuit_breaker.failure_on" | "concurrency.adaptive"
            );
        if !known {
            errors.push(
                format!("guardian.frozen[{i}]"),
                format!("unknown gene or section {frozen:?}"),
            );
        }
    }
}

/// What is wrong with a scenario name, if anything.
pub fn scenario_problem(name: &str) -> Option<String> {
    if matches!(name, "observed" | "nominal") {
        return None;
    }
    let expected = || {
        format!(
            "unknown scenario {name:?}: expected observed, nominal or THREAT:SEVERITY with THREAT one of {}",
            crate::THREATS.join(", ")
        )
    };
    let Some((threat, severity)) = name.split_once(':') else {
        return Some(expected());
    };
    if !crate::THREATS.contains(&threat) {
        return Some(expected());
    }
    if !crate::SEVERITIES.contains(&severity) {
        return Some(format!(
            "unknown severity {severity:?} in scenario {name:?}: expected {}",
            crate::SEVERITIES.join(", ")
        ));
    }
    None
}

fn unique_names<'a>(
    names: impl Iterator<Item = &'a str>,
    section: &str,
    errors: &mut ConfigErrors,
) -> HashSet<&'a str> {
    let mut seen = HashSet::new();
    for (i, name) in names.enumerate() {
        let path = format!("{section}[{i}].name");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            errors.push(
                &path,
                format!("must be non-empty letters, digits, '-', '_' or '.', got {name:?}"),
            );
        }
        if name.len() > MAX_NAME_BYTES {
            errors.push(
                &path,
                format!("must be at most {MAX_NAME_BYTES} bytes, got {}", name.len()),
            );
        }
        if !seen.insert(name) {
            errors.push(path, format!("duplicate name {name:?}"));
        }
    }
    seen
}

fn listener_checks(listener: &ListenerConfig, path: &str, errors: &mut ConfigErrors) {
    check_duration(
        errors,
        &format!("{path}.header_read_timeout"),
        listener.header_read_timeout,
        1,
        600_000,
    );
    check_duration(
        errors,
        &format!("{path}.idle_timeout"),
        listener.idle_timeout,
        1,
        86_400_000,
    );
    let max = listener.max_header_bytes.bytes();
    if !(1024..=1024 * 1024).contains(&max) {
        errors.push(
            format!("{path}.max_header_bytes"),
            format!("must be 1KiB..=1MiB, got {max} bytes"),
        );
    }
    check_duration(
        errors,
        &format!("{path}.body_read_timeout"),
        listener.body_read_timeout,
        1,
        3_600_000,
    );
    check_duration(
        errors,
        &format!("{path}.send_timeout"),
        listener.send_timeout,
        1,
        3_600_000,
    );
    check_range(
        errors,
        &format!("{path}.max_connections"),
        listener.max_connections,
        1,
        1_000_000,
    );
    check_range(
        errors,
        &format!("{path}.max_concurrent_streams"),
        listener.max_concurrent_streams,
        1,
        1024,
    );
    check_range(
        errors,
        &format!("{path}.backlog"),
        listener.backlog,
        1,
        65_535,
    );
}

fn upstream_checks(upstream: &UpstreamConfig, path: &str, errors: &mut ConfigErrors) {
    if upstream.endpoints.is_empty() {
        errors.push(
            format!("{path}.endpoints"),
            "at least one endpoint is required",
        );
    }
    for (i, endpoint) in upstream.endpoints.iter().enumerate() {
        if let Err(message) = check_authority(endpoint) {
            errors.push(format!("{path}.endpoints[{i}]"), message);
        }
    }
    check_duration(
        errors,
        &format!("{path}.connect_timeout"),
        upstream.connect_timeout,
        1,
        600_000,
    );
    check_duration(
        errors,
        &format!("{path}.pool_idle_timeout"),
        upstream.pool_idle_timeout,
        1,
        86_400_000,
    );
    check_range(
        errors,
        &format!("{path}.pool_max_idle_per_endpoint"),
        upstream.pool_max_idle_per_endpoint,
        0,
        100_000,
    );
    if let Some(tls) = &upstream.tls {
        if let Some(name) = &tls.server_name {
            if name.is_empty() {
                errors.push(format!("{path}.tls.server_name"), "must not be empty");
            }
        }
    }
}

/// An endpoint is `host:port` with a port; the host is an IP, `[v6]` or a DNS name.
fn check_authority(endpoint: &str) -> Result<(), String> {
    let expected = "expected host:port, such as \"127.0.0.1:8080\" or \"app.internal:80\"";
    let (host, port) = endpoint
        .rsplit_once(':')
        .ok_or_else(|| format!("{endpoint:?} has no port; {expected}"))?;
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{endpoint:?} has an invalid port; {expected}"))?;
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    };
    if host_ok {
        Ok(())
    } else {
        Err(format!("{endpoint:?} has an invalid host; {expected}"))
    }
}

fn route_checks(
    route: &RouteConfig,
    path: &str,
    listeners: &HashSet<&str>,
    upstreams: &HashSet<&str>,
    errors: &mut ConfigErrors,
) {
    if !listeners.contains(route.listener.as_str()) {
        errors.push(
            format!("{path}.listener"),
            format!("no listener is named {:?}", route.listener),
        );
    }
    if !upstreams.contains(route.upstream.as_str()) {
        errors.push(
            format!("{path}.upstream"),
            format!("no upstream is named {:?}", route.upstream),
        );
    }
    for (i, upgrade) in route.upgrades.iter().enumerate() {
        let key = format!("{path}.upgrades[{i}]");
        if upgrade.eq_ignore_ascii_case("h2c") {
            // rafael speaks HTTP/2 to clients itself; a spliced h2c connection would bypass
            // routing and every policy for whatever the client sends next.
            errors.push(key, "h2c upgrades are never forwarded");
        } else if !http_token(upgrade) {
            errors.push(
                key,
                format!("must be a protocol name such as \"websocket\", got {upgrade:?}"),
            );
        }
    }
    if let Some(prefix) = &route.match_.path_prefix {
        if !prefix.starts_with('/') {
            errors.push(
                format!("{path}.match.path_prefix"),
                format!("must start with '/', got {prefix:?}"),
            );
        }
    }
    if let Some(methods) = &route.match_.methods {
        if methods.is_empty() {
            errors.push(
                format!("{path}.match.methods"),
                "must list at least one method (leave it out to match all)",
            );
        }
        for (i, method) in methods.iter().enumerate() {
            if !http_token(method) || method.bytes().any(|b| b.is_ascii_lowercase()) {
                errors.push(
                    format!("{path}.match.methods[{i}]"),
                    format!("must be an upper-case HTTP method such as \"GET\", got {method:?}"),
                );
            }
        }
    }
    for (name, value) in &route.match_.headers {
        if !http_token(name) {
            errors.push(
                format!("{path}.match.headers.{name}"),
                "is not a valid header name",
            );
        }
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            errors.push(
                format!("{path}.match.headers.{name}"),
                "value must not contain control characters",
            );
        }
    }
    route.policy.validate(&format!("{path}.policy"), errors);
}

fn fault_checks(
    fault: &FaultConfig,
    path: &str,
    routes: &HashSet<&str>,
    config: &Config,
    errors: &mut ConfigErrors,
) {
    if !routes.contains(fault.route.as_str()) {
        errors.push(
            format!("{path}.route"),
            format!("no route is named {:?}", fault.route),
        );
    }
    fault_rule_checks(fault, path, config, errors);
}

/// The checks of one fault rule that do not depend on the rest of the config but `[chaos]`:
/// also what an experiment's rules must pass.
pub fn fault_rule_checks(
    fault: &FaultConfig,
    path: &str,
    config: &Config,
    errors: &mut ConfigErrors,
) {
    if !(0.0..=100.0).contains(&fault.percent) {
        errors.push(
            format!("{path}.percent"),
            format!("must be 0..=100, got {}", fault.percent),
        );
    }
    let kinds = [
        fault.delay.is_some(),
        fault.abort.is_some(),
        fault.reset,
        fault.throttle.is_some(),
        fault.truncate.is_some(),
        fault.blackhole,
    ];
    match kinds.iter().filter(|k| **k).count() {
        0 => errors.push(
            path,
            "names no fault; set one of delay, abort, reset, throttle, truncate, blackhole",
        ),
        1 => {}
        _ => errors.push(
            path,
            "names more than one fault; write one [[faults]] rule for each",
        ),
    }
    for (key, delay) in [("delay", fault.delay), ("delay_max", fault.delay_max)] {
        if let Some(delay) = delay {
            check_duration(
                errors,
                &format!("{path}.{key}"),
                delay,
                0,
                MAX_FAULT_DELAY_MS,
            );
        }
    }
    if let Some(body) = &fault.abort_body {
        check_size(
            errors,
            &format!("{path}.abort_body"),
            body.len() as u64,
            MAX_ABORT_BODY_BYTES,
        );
    }
    if let Some(size) = fault.truncate {
        check_size(
            errors,
            &format!("{path}.truncate"),
            size.bytes(),
            MAX_TRUNCATE_BYTES,
        );
    }
    if let Some(rate) = fault.throttle {
        if rate.bytes_per_sec > MAX_THROTTLE_BYTES_PER_SEC {
            errors.push(
                format!("{path}.throttle"),
                format!(
                    "must be at most {}/s, got {rate}",
                    binary_size(MAX_THROTTLE_BYTES_PER_SEC)
                ),
            );
        }
    }
    if let (Some(min), Some(max)) = (fault.delay, fault.delay_max) {
        if max < min {
            errors.push(
                format!("{path}.delay_max"),
                format!("must be at least delay ({min}), got {max}"),
            );
        }
    } else if fault.delay_max.is_some() {
        errors.push(format!("{path}.delay_max"), "needs delay");
    }
    if fault.abort_body.is_some() && fault.abort.is_none() {
        errors.push(format!("{path}.abort_body"), "needs abort");
    }
    if fault.throttle.is_some_and(|rate| rate.bytes_per_sec == 0) {
        errors.push(
            format!("{path}.throttle"),
            "must be above 0 bytes per second",
        );
    }
    if let Some(code) = fault.abort {
        if !(200..=599).contains(&code) {
            errors.push(
                format!("{path}.abort"),
                format!("must be a status code 200..=599, got {code}"),
            );
        }
    }
    if let Some(header) = &fault.only_with_header {
        if !http_token(header) {
            errors.push(
                format!("{path}.only_with_header"),
                format!("is not a valid header name: {header:?}"),
            );
        }
        if config
            .chaos
            .header_secret
            .as_deref()
            .unwrap_or("")
            .is_empty()
        {
            errors.push(
                format!("{path}.only_with_header"),
                "needs chaos.header_secret to be set",
            );
        }
    }
}
