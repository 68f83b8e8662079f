//! The `rafael` binary end to end: `config check`, `run` with signals and reloads, `/metrics`
//! checked by promtool, and bounded memory while streaming 1 GiB each way.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::*;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

#[test]
fn config_check_warns_of_keys_that_moved_and_still_accepts_them() {
    let dir = tempfile::tempdir().unwrap();
    let old = config_text(
        "127.0.0.1:8080".parse().unwrap(),
        "\n[evolution]\napproval = \"auto\"\nguardrails = { \"retry.max_attempts\" = { max = 4 } }\n",
    );
    let (code, stdout, stderr) = config_check(dir.path(), &old);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains(": ok ("), "{stdout}");
    assert!(
        stderr.contains("warning: evolution.approval: deprecated: moved to [guardian].approval"),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: evolution.guardrails: deprecated"),
        "{stderr}"
    );
    // Both places at once is an error, not a guess.
    let both = old.replace(
        "[evolution]",
        "[guardian]\napproval = \"manual\"\n\n[evolution]",
    );
    let (code, _, stderr) = config_check(dir.path(), &both);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("evolution.approval: set in both"),
        "{stderr}"
    );
}

#[test]
fn config_check_accepts_valid_files_and_lists_every_error_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let valid = config_text("127.0.0.1:8080".parse().unwrap(), "");
    let (code, stdout, stderr) = config_check(dir.path(), &valid);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("ok (1 listener(s), 1 upstream(s), 1 route(s))"),
        "{stdout}"
    );

    let unknown_and_invalid = valid
        .replace("bind = \"127.0.0.1:0\"\n\n[[upstreams]]", "bind = \"127.0.0.1:0\"\nidle_timout = \"5s\"\nmax_header_bytes = \"lots\"\n\n[[upstreams]]");
    let (code, _, stderr) = config_check(dir.path(), &unknown_and_invalid);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("listeners[0].idle_timout: unknown key"),
        "{stderr}"
    );
    assert!(
        stderr.contains("listeners[0].max_header_bytes: invalid size"),
        "{stderr}"
    );

    let dangling = valid
        .replace("endpoints = [\"127.0.0.1:8080\"]", "endpoints = []")
        .replace("upstream = \"app\"\n", "upstream = \"nope\"\n");
    let (code, _, stderr) = config_check(dir.path(), &dangling);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("upstreams[0].endpoints: at least one endpoint is required"),
        "{stderr}"
    );
    assert!(
        stderr.contains("routes[0].upstream: no upstream is named \"nope\""),
        "{stderr}"
    );

    // TLS files are checked too, with the key path of the listener.
    let missing_tls = valid.replace(
        "bind = \"127.0.0.1:0\"\n\n[[upstreams]]",
        "bind = \"127.0.0.1:0\"\ntls = { cert = \"/nonexistent.pem\", key = \"/nonexistent.key\" }\n\n[[upstreams]]",
    );
    let (code, _, stderr) = config_check(dir.path(), &missing_tls);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("listeners[0].tls: cannot read certificates from /nonexistent.pem"),
        "{stderr}"
    );

    // `run` refuses a bad file the same way.
    let bad = dir.path().join("checked.toml");
    let output = Command::new(RAFAEL)
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn serves_reports_metrics_promtool_accepts_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = upstream("hello", Duration::ZERO);
    let config = write_config(dir.path(), upstream, "");
    let mut rafael = Rafael::start(&config);

    let (status, _, body) = http_get(rafael.proxy, "/anything");
    assert_eq!((status, body.as_str()), (200, "hello"));
    assert_eq!(http_get(rafael.admin, "/healthz").0, 200);
    let (status, _, ready) = http_get(rafael.admin, "/readyz");
    assert_eq!(status, 200, "{ready}");

    let metrics = rafael.metrics();
    assert_eq!(
        metric_value(
            &metrics,
            r#"rafael_requests_total{route="main",code="200"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"rafael_upstream_attempts_total{route="main",outcome="success"}"#
        ),
        Some(1.0)
    );
    assert_eq!(metric_value(&metrics, "rafael_policy_version"), Some(1.0));
    assert!(
        metrics.contains(r#"rafael_request_duration_seconds_bucket{route="main",le="0.005"}"#),
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"rafael_request_duration_seconds_count{route="main"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"rafael_request_duration_seconds_bucket{route="main",le="+Inf"}"#
        ),
        Some(1.0)
    );
    assert!(metrics.contains(r#"rafael_connections_active{listener="in"}"#));

    assert_promtool_accepts(&metrics);

    rafael.signal("TERM");
    assert_eq!(rafael.wait(Duration::from_secs(20)).code(), Some(0));
}

#[test]
fn bad_requests_and_failing_upstreams_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = write_config(dir.path(), dead, "match = { path_prefix = \"/api\" }");
    let rafael = Rafael::start(&config);
    assert_eq!(http_get(rafael.proxy, "/api/x").0, 502);
    assert_eq!(http_get(rafael.proxy, "/other").0, 404);
    let mut stream = TcpStream::connect(rafael.proxy).unwrap();
    stream.write_all(b"BROKEN\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");

    let metrics = rafael.metrics();
    assert_eq!(
        metric_value(
            &metrics,
            r#"rafael_requests_total{route="main",code="502"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"rafael_upstream_attempts_total{route="main",outcome="connect_error"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"rafael_requests_total{route="unmatched",code="404"}"#
        ),
        Some(1.0)
    );
    assert!(
        eventually(Duration::from_secs(5), || metric_value(
            &rafael.metrics(),
            r#"rafael_connection_errors_total{listener="in",reason="malformed_request"}"#
        ) == Some(1.0)),
        "{}",
        rafael.metrics()
    );
}

#[test]
fn policy_metrics_report_retries_skips_breakers_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let policy = r#"
[routes.policy]
retry = { max_attempts = 3, backoff_base = "1ms", backoff_max = "1ms", retry_on = ["connect-failure"], budget_ratio = 0.0, budget_min_per_sec = 1 }
circuit_breaker = { consecutive_failures = 3, open_for = "1h", open_for_max = "1h" }
rate_limit = { rps = 0.01, burst = 6 }
concurrency = { max_in_flight = 8 }
"#;
    let config = write_config(dir.path(), dead, policy);
    let rafael = Rafael::start(&config);
    let statuses: Vec<u16> = (0..7).map(|_| http_get(rafael.proxy, "/").0).collect();
    // The first requests fail at the dead upstream (502), the breaker then answers (503), and
    // the seventh is over the rate limit's burst of six (429).
    assert_eq!(statuses[0], 502, "{statuses:?}");
    assert_eq!(&statuses[3..], [503, 503, 503, 429], "{statuses:?}");

    let metrics = rafael.metrics();
    let value = |series: &str| metric_value(&metrics, series);
    assert!(
        value(r#"rafael_retries_total{route="main"}"#) >= Some(1.0),
        "{metrics}"
    );
    assert!(
        value(r#"rafael_retries_skipped_total{route="main",reason="budget"}"#) >= Some(1.0),
        "{metrics}"
    );
    let endpoint = format!(r#"route="main",endpoint="{dead}""#);
    assert_eq!(
        value(&format!("rafael_circuit_breaker_state{{{endpoint}}}")),
        Some(2.0)
    );
    assert_eq!(
        value(&format!(
            r#"rafael_circuit_breaker_transitions_total{{{endpoint},to="open"}}"#
        )),
        Some(1.0)
    );
    assert_eq!(
        value(r#"rafael_rate_limited_total{route="main"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(r#"rafael_concurrency_limit{route="main"}"#),
        Some(8.0)
    );
    assert_eq!(value(r#"rafael_in_flight{route="main"}"#), Some(0.0));
    assert_eq!(
        value(r#"rafael_genome_generation{route="main"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(r#"rafael_requests_total{route="main",code="429"}"#),
        Some(1.0)
    );
    assert_promtool_accepts(&metrics);
}

#[test]
fn the_admin_api_wants_a_token_whose_role_covers_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    let add = |name: &str, role: &str| {
        let output = Command::new(RAFAEL)
            .args(["token", "add", name, "--role", role, "--file"])
            .arg(&tokens)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    };
    let viewer = add("dashboard", "viewer");
    assert!(viewer.starts_with("rfl_"), "{viewer}");
    let stored = std::fs::read_to_string(&tokens).unwrap();
    assert!(stored.contains("name = \"dashboard\"") && !stored.contains(&viewer));

    let upstream = upstream("hello", Duration::ZERO);
    let config = dir.path().join("rafael.toml");
    // The tokens file is found beside the config (relative paths are the config's).
    std::fs::write(
        &config,
        config_text(upstream, "").replace(
            "[admin]\nbind = \"127.0.0.1:0\"",
            "[admin]\nbind = \"127.0.0.1:0\"\ntokens_file = \"tokens.toml\"",
        ),
    )
    .unwrap();
    let rafael = Rafael::start(&config);

    let (status, head, body) = http_get(rafael.admin, "/v1/audit");
    assert_eq!(status, 401, "{body}");
    assert!(
        head.to_lowercase().contains("www-authenticate: bearer"),
        "{head}"
    );
    assert!(body.contains("\"error\":\"unauthorized\""), "{body}");
    let (status, _, _) = http_get_with(
        rafael.admin,
        "/v1/audit",
        "Authorization: Bearer rfl_guess\r\n",
    );
    assert_eq!(status, 401);

    let bearer = format!("Authorization: Bearer {viewer}\r\n");
    let (status, _, body) = http_get_with(rafael.admin, "/v1/audit", &bearer);
    assert_eq!(status, 200, "{body}");
    let listing: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(listing["entries"].is_array(), "{body}");
    let (status, _, body) = http_get_with(rafael.admin, "/v1/audit/verify", &bearer);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["ok"],
        true
    );
    // Probes and scraping stay open.
    assert_eq!(http_get(rafael.admin, "/metrics").0, 200);
    assert_eq!(http_get(rafael.admin, "/healthz").0, 200);
    drop(rafael);

    // Each role at the experiments boundary: viewers and approvers may read but not start
    // one; an operator may (its bad spec is then refused on its merits, 400, not 403).
    let operator = add("ci-operator", "operator");
    let approver = add("release-approver", "approver");
    let rafael = Rafael::start(&config);
    let post = |token: &str| {
        http_post_with(
            rafael.admin,
            "/v1/experiments",
            "{}",
            &format!("Authorization: Bearer {token}\r\n"),
        )
        .0
    };
    assert_eq!(post(&viewer), 403);
    assert_eq!(post(&approver), 403);
    assert_eq!(post(&operator), 400);
    assert_eq!(post("rfl_guess"), 401);
    for token in [&viewer, &operator, &approver] {
        let bearer = format!("Authorization: Bearer {token}\r\n");
        assert_eq!(
            http_get_with(rafael.admin, "/v1/experiments", &bearer).0,
            200
        );
    }
}

#[test]
fn sighup_and_file_changes_reload_and_invalid_files_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let first = upstream("first", Duration::ZERO);
    let second = upstream("second", Duration::ZERO);
    let config = write_config(dir.path(), first, "");
    let rafael = Rafael::start(&config);
    assert_eq!(http_get(rafael.proxy, "/").2, "first");

    // An invalid file, then SIGHUP: rejected, counted, and the running config stays.
    std::fs::write(
        &config,
        config_text(second, "").replace("name = \"main\"", "name = \"main\"\ncolour = \"red\""),
    )
    .unwrap();
    rafael.signal("HUP");
    assert!(eventually(Duration::from_secs(10), || metric_value(
        &rafael.metrics(),
        r#"rafael_config_reloads_total{result="error"}"#
    )
    .is_some_and(|v| v >= 1.0)));
    assert_eq!(http_get(rafael.proxy, "/").2, "first");
    assert_eq!(
        metric_value(&rafael.metrics(), "rafael_policy_version"),
        Some(1.0)
    );

    // A valid file: the watcher picks it up without a signal.
    std::fs::write(&config, config_text(second, "")).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || http_get(rafael.proxy, "/").2
            == "second"),
        "the file change was not applied"
    );
    let metrics = rafael.metrics();
    assert!(
        metric_value(&metrics, r#"rafael_config_reloads_total{result="success"}"#) >= Some(1.0),
        "{metrics}"
    );
    assert!(metric_value(&metrics, "rafael_policy_version") >= Some(2.0));

    // Both reloads are in the audit log, which the CLI reads from the store beside the config
    // while rafael runs.
    let audit = |args: &[&str]| {
        let output = Command::new(RAFAEL)
            .arg("audit")
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let (code, listing) = audit(&["list"]);
    assert_eq!(code, Some(0), "{listing}");
    let entries: Vec<serde_json::Value> = listing
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"config.rejected"), "{actions:?}");
    assert!(actions.contains(&"config.reloaded"), "{actions:?}");
    assert!(entries.iter().all(|e| e["actor"] == "rafael"));
    let (code, verdict) = audit(&["verify"]);
    assert_eq!(code, Some(0), "{verdict}");
    assert!(
        verdict.starts_with(&format!("ok: {} entries", entries.len())),
        "{verdict}"
    );

    // The running rafael verifies its chain (at start, every five minutes, on every call).
    assert_eq!(http_get(rafael.admin, "/v1/audit/verify").0, 200);
    assert!(
        rafael.metrics().contains("rafael_audit_chain_valid 1"),
        "{}",
        rafael.metrics()
    );

    // Someone edits the first entry in the database: verify names it and exits 1.
    let db = rusqlite::Connection::open(dir.path().join("rafael.db")).unwrap();
    db.execute("UPDATE audit SET actor = 'mallory' WHERE id = 1", [])
        .unwrap();
    let (code, verdict) = audit(&["verify"]);
    assert_eq!(code, Some(1), "{verdict}");
    assert!(verdict.starts_with("broken at entry 1:"), "{verdict}");

    // The same through the running rafael's admin API.
    let output = Command::new(RAFAEL)
        .args(["audit", "verify", "--admin"])
        .arg(format!("http://{}", rafael.admin))
        .output()
        .unwrap();
    let verdict = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{verdict}");
    assert!(verdict.starts_with("broken at entry 1:"), "{verdict}");
    // And the metric the alert on a broken chain reads says so.
    assert!(
        rafael.metrics().contains("rafael_audit_chain_valid 0"),
        "{}",
        rafael.metrics()
    );
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let slow = upstream("slow but complete", Duration::from_millis(1500));
    let config = write_config(dir.path(), slow, "");
    let mut rafael = Rafael::start(&config);
    let proxy = rafael.proxy;
    let in_flight = thread::spawn(move || http_get(proxy, "/"));
    // Wait until the request is inside rafael before signalling.
    assert!(eventually(Duration::from_secs(10), || {
        metric_value(
            &rafael.metrics(),
            r#"rafael_connections_active{listener="in"}"#,
        ) == Some(1.0)
    }));
    rafael.signal("TERM");
    // While draining, readiness fails so load balancers stop sending new requests.
    assert!(eventually(Duration::from_secs(5), || {
        http_get(rafael.admin, "/readyz").0 == 503
    }));
    let (status, _, body) = in_flight.join().unwrap();
    assert_eq!((status, body.as_str()), (200, "slow but complete"));
    assert_eq!(rafael.wait(Duration::from_secs(20)).code(), Some(0));
}

#[test]
fn a_gibibyte_each_way_streams_with_bounded_memory() {
    const GIB: u64 = 1024 * 1024 * 1024;
    // The upstream swallows uploads and generates downloads, both 1 GiB, with raw sockets.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push_str(&line);
                    if line == "\r\n" {
                        break;
                    }
                }
                if head.starts_with("POST") {
                    let copied =
                        std::io::copy(&mut reader.take(GIB), &mut std::io::sink()).unwrap();
                    let body = copied.to_string();
                    write!(
                        writer,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .unwrap();
                } else {
                    write!(writer, "HTTP/1.1 200 OK\r\nContent-Length: {GIB}\r\n\r\n").unwrap();
                    let chunk = vec![b'x'; 256 * 1024];
                    for _ in 0..GIB / chunk.len() as u64 {
                        writer.write_all(&chunk).unwrap();
                    }
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), upstream_addr, "");
    let rafael = Rafael::start(&config);

    let mut upload = TcpStream::connect(rafael.proxy).unwrap();
    write!(
        upload,
        "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {GIB}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b'u'; 256 * 1024];
    for _ in 0..GIB / chunk.len() as u64 {
        upload.write_all(&chunk).unwrap();
    }
    let mut response = String::new();
    upload.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200") && response.ends_with(&GIB.to_string()),
        "{response}"
    );

    let mut download = TcpStream::connect(rafael.proxy).unwrap();
    write!(
        download,
        "GET /download HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let total = std::io::copy(&mut download, &mut std::io::sink()).unwrap();
    assert!(total > GIB, "the whole body and its head arrived: {total}");

    let peak_mib = rafael.peak_rss_kib() / 1024;
    eprintln!("peak RSS after 1 GiB up and 1 GiB down: {peak_mib} MiB");
    assert!(peak_mib < 64, "peak RSS {peak_mib} MiB");
}

#[test]
fn slow_headers_are_cut_off_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = upstream("ok", Duration::ZERO);
    let path = dir.path().join("rafael.toml");
    let text = config_text(upstream, "").replace(
        "bind = \"127.0.0.1:0\"\n\n[[upstreams]]",
        "bind = \"127.0.0.1:0\"\nheader_read_timeout = \"200ms\"\n\n[[upstreams]]",
    );
    std::fs::write(&path, text).unwrap();
    let rafael = Rafael::start(&path);
    let mut stream = TcpStream::connect(rafael.proxy).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: slow\r\n")
        .unwrap();
    let mut rest = Vec::new();
    // The connection is closed on us: read_to_end returns instead of timing out.
    stream.read_to_end(&mut rest).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || metric_value(
            &rafael.metrics(),
            r#"rafael_connection_errors_total{listener="in",reason="header_read_timeout"}"#
        ) == Some(1.0)),
        "{}",
        rafael.metrics()
    );
}

#[test]
fn signals_the_instant_rafael_is_up_are_handled_not_fatal() {
    // SIGHUP's and SIGTERM's default action is to kill the process: the handlers must be in
    // place before rafael reports (logs) anything that says it is up.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), upstream("ok", Duration::ZERO), "");
    let mut rafael = Rafael::start(&config);
    rafael.signal("HUP");
    assert_eq!(
        http_get(rafael.proxy, "/").0,
        200,
        "still serving after SIGHUP"
    );
    let mut fresh = Rafael::start(&config);
    fresh.signal("TERM");
    assert_eq!(fresh.wait(Duration::from_secs(20)).code(), Some(0));
    rafael.signal("TERM");
    assert_eq!(rafael.wait(Duration::from_secs(20)).code(), Some(0));
}

#[test]
fn an_experiment_aborts_on_its_condition_removes_its_faults_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = upstream("hello", Duration::ZERO);
    let config = write_config(dir.path(), upstream, "");
    let rafael = Rafael::start(&config);
    // Steady traffic for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, proxy) = (stop.clone(), rafael.proxy);
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                http_get(proxy, "/");
                thread::sleep(Duration::from_millis(10));
            }
        })
    };

    let (status, body) = http_post(
        rafael.admin,
        "/v1/experiments",
        r#"{"route": "main", "faults": [{"stage": "downstream", "percent": 100, "abort": 503}],
            "duration": "60s", "abort_when": ["error_rate > 0.5", "p99 > 30s"]}"#,
    );
    assert_eq!(status, 201, "{body}");
    let experiment = json_of(&body);
    assert_eq!(experiment["state"], "running");
    let id = experiment["id"].as_i64().unwrap();

    // Every request now fails, so the condition holds within a second or two.
    let path = format!("/v1/experiments/{id}");
    assert!(
        eventually(Duration::from_secs(20), || json_of(
            &http_get(rafael.admin, &path).2
        )["state"]
            == "aborted"),
        "{}",
        http_get(rafael.admin, &path).2
    );
    let experiment = json_of(&http_get(rafael.admin, &path).2);
    assert!(
        experiment["abort_reason"]
            .as_str()
            .unwrap()
            .starts_with("error_rate"),
        "{experiment}"
    );
    // Its faults are gone.
    assert_eq!(http_get(rafael.proxy, "/").0, 200);

    let report_path = format!("/v1/experiments/{id}/report");
    assert!(eventually(Duration::from_secs(20), || http_get(
        rafael.admin,
        &report_path
    )
    .0 == 200));
    let report = json_of(&http_get(rafael.admin, &report_path).2);
    stop.store(true, Ordering::SeqCst);
    traffic.join().unwrap();
    assert!(
        report["verdict"].as_str().unwrap().starts_with("aborted"),
        "{report}"
    );
    assert!(
        report["injected"]["count"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert!(
        report["during"]["error_rate"].as_f64().unwrap() > 0.5,
        "{report}"
    );
    assert!(
        report["steady_state"]["error_rate"].as_f64().unwrap() < 0.01,
        "{report}"
    );
    assert!(!report["recommendations"].as_array().unwrap().is_empty());

    let metrics = rafael.metrics();
    assert_eq!(
        metric_value(&metrics, "rafael_experiments_active"),
        Some(0.0)
    );
    assert!(
        metric_value(
            &metrics,
            r#"rafael_faults_injected_total{route="main",kind="abort",stage="downstream"}"#
        ) > Some(0.0),
        "{metrics}"
    );
    let actions = audit_actions(rafael.admin);
    assert_eq!(actions, ["experiment.started", "experiment.aborted"]);
}

#[test]
fn a_killed_rafael_comes_back_with_the_experiment_interrupted_and_no_faults() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = upstream("hello", Duration::ZERO);
    let config = write_config(dir.path(), upstream, "");
    let mut rafael = Rafael::start(&config);
    let (status, body) = http_post(
        rafael.admin,
        "/v1/experiments",
        r#"{"route": "main", "faults": [{"stage": "downstream", "percent": 100, "delay": "5s"}],
            "duration": "10m"}"#,
    );
    assert_eq!(status, 201, "{body}");
    let id = json_of(&body)["id"].as_i64().unwrap();
    rafael.signal("KILL");
    rafael.wait(Duration::from_secs(10));

    let rafael = Rafael::start(&config);
    let (_, _, body) = http_get(rafael.admin, &format!("/v1/experiments/{id}"));
    let experiment = json_of(&body);
    assert_eq!(experiment["state"], "interrupted", "{experiment}");
    let started = Instant::now();
    assert_eq!(http_get(rafael.proxy, "/").0, 200);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the delay fault is still there"
    );
    let actions = audit_actions(rafael.admin);
    assert_eq!(actions, ["experiment.started", "experiment.interrupted"]);
}

#[test]
fn the_chaos_cli_runs_lists_stops_and_reports_through_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = upstream("hello", Duration::ZERO);
    // A genome for the report to describe: retries with no budget, a quick breaker.
    let config = write_config(
        dir.path(),
        upstream,
        r#"[routes.policy]
retry = { max_attempts = 2, retry_on = ["503"], budget_ratio = 0.0, budget_min_per_sec = 0 }
circuit_breaker = { consecutive_failures = 3, open_for = "1s" }"#,
    );
    let rafael = Rafael::start(&config);
    let admin = format!("http://{}", rafael.admin);
    let cli = |args: &[&str]| {
        let output = Command::new(RAFAEL)
            .arg("chaos")
            .args(args)
            .args(["--admin", &admin])
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, out, err) = cli(&[
        "run",
        "main",
        "--fault",
        r#"{"stage": "upstream", "abort": 503}"#,
        "--duration",
        "5m",
        "--abort-when",
        "p99 > 30s",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let experiment = json_of(&out);
    assert_eq!(experiment["state"], "running");
    let id = experiment["id"].to_string();
    for _ in 0..4 {
        assert_eq!(http_get(rafael.proxy, "/").0, 503, "the fault is live");
    }

    let (code, out, _) = cli(&["list"]);
    assert_eq!(code, Some(0));
    assert_eq!(json_of(&out)["experiments"][0]["id"].to_string(), id);
    let (code, _, err) = cli(&["stop", &id]);
    assert_eq!(code, Some(0), "{err}");
    assert!(eventually(Duration::from_secs(10), || http_get(
        rafael.proxy,
        "/"
    )
    .0 == 200));
    assert!(eventually(Duration::from_secs(20), || cli(&[
        "report", &id
    ])
    .0 == Some(0)));
    let report = json_of(&cli(&["report", &id]).1);
    assert_eq!(report["state"], "stopped");
    // What the policies did: every retry was refused by the empty budget, and the breaker
    // opened after three failures.
    assert!(
        report["policies"]["retries_skipped"].as_u64() >= Some(3),
        "{report}"
    );
    assert_eq!(report["policies"]["breaker_trips"], 1, "{report}");

    // A refused spec and an unreachable admin API both exit 1 with the reason.
    let (code, _, err) = cli(&[
        "run",
        "nope",
        "--threat",
        "latency",
        "--severity",
        "low",
        "--duration",
        "1m",
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no route named"), "{err}");
    let output = Command::new(RAFAEL)
        .args(["chaos", "list", "--admin", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn a_surge_sends_real_bounded_traffic_to_its_route() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = upstream("hello", Duration::ZERO);
    let config = write_config(dir.path(), upstream, "");
    let rafael = Rafael::start(&config);
    let (status, body) = http_post(
        rafael.admin,
        "/v1/experiments",
        r#"{"route": "main", "threat": "surge", "severity": "low", "duration": "2s"}"#,
    );
    assert_eq!(status, 201, "{body}");
    let id = json_of(&body)["id"].as_i64().unwrap();
    let path = format!("/v1/experiments/{id}/report");
    assert!(eventually(Duration::from_secs(30), || http_get(
        rafael.admin,
        &path
    )
    .0 == 200));
    let report = json_of(&http_get(rafael.admin, &path).2);
    assert_eq!(report["state"], "completed", "{report}");
    // 50 requests a second for 2 s, through rafael's own listener to the upstream.
    let surge = &report["injected"]["surge"];
    let sent = surge["sent"].as_u64().unwrap();
    assert!((80..=110).contains(&sent), "{report}");
    assert!(surge["ok"].as_u64().unwrap() >= sent - 5, "{report}");
    assert!(
        report["during"]["requests"].as_u64().unwrap() >= 80,
        "{report}"
    );
    let served = metric_value(
        &rafael.metrics(),
        r#"rafael_requests_total{route="main",code="200"}"#,
    );
    assert!(served >= Some(80.0), "{served:?}");
}

#[test]
fn the_proposals_cli_lists_and_shows_what_the_store_holds() {
    use rafael_control::{
        evolution::round::{RoundResult, RoundState},
        guardian::{
            guardrails::Violation,
            proposal::{GuardrailVerdict, ProposalState},
        },
        store::Store,
    };

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), upstream("hello", Duration::ZERO), "");
    // Records put in the store file before rafael opens it, as a previous run left them: a
    // proposal with passed guardrails, one refused, and a round a crash cut short.
    let parsed = rafael_config::parse(&std::fs::read_to_string(&config).unwrap()).unwrap();
    let store = Store::open(&rafael_control::app::store_path(&parsed, &config)).unwrap();
    let passed = store.insert_proposal(&sample_proposal("main")).unwrap();
    let mut refused = sample_proposal("main");
    refused.state = ProposalState::Rejected;
    refused.guardrails = GuardrailVerdict::Refused(vec![Violation {
        gene: "retry.max_attempts".to_owned(),
        rule: "moves at most 1 per proposal".to_owned(),
    }]);
    refused.predicted[0].scenario = "surge-high".to_owned();
    refused.predicted[0].extrapolated = true;
    let refused = store.insert_proposal(&refused).unwrap();
    let mut cut_short = sample_round("main");
    cut_short.state = RoundState::Running;
    cut_short.result = None;
    cut_short.ended_at = None;
    let round = store.insert_round(&cut_short).unwrap();
    drop(store);

    let rafael = Rafael::start(&config);
    let admin = format!("http://{}", rafael.admin);
    let cli = |args: &[&str]| {
        let output = Command::new(RAFAEL)
            .arg("proposals")
            .args(args)
            .args(["--admin", &admin])
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };

    let (code, out, err) = cli(&["list"]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    for column in ["ID", "ROUTE", "STATE", "SOURCE", "CREATED", "DIFF"] {
        assert!(lines[0].contains(column), "{out}");
    }
    // Newest first, each with its state, source and what it changes.
    assert!(lines[1].starts_with(&refused.to_string()), "{out}");
    assert!(lines[1].contains("rejected"), "{out}");
    assert!(lines[2].starts_with(&passed.to_string()), "{out}");
    for cell in ["main", "pending", "evolution", "retry.max_attempts 3→2"] {
        assert!(lines[2].contains(cell), "{cell}: {out}");
    }

    let (code, out, err) = cli(&["list", "--state", "pending", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let listed = json_of(&out);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{out}");
    assert_eq!(listed[0]["id"], passed);
    let (code, out, _) = cli(&["list", "--route", "other"]);
    assert_eq!((code, out.trim()), (Some(0), "no proposals"));

    let (code, out, err) = cli(&["show", &passed.to_string()]);
    assert_eq!(code, Some(0), "{err}");
    for line in [
        &format!("proposal {passed} for route main: pending"),
        "  retry.max_attempts 3→2",
        "  steady: goodput 0.950→0.960, latency 0.120→0.120, amplification 1.40→1.10, rejected 0.000→0.000; fitness 0.810→0.850",
        "guardrails: passed",
        "approvals: none",
    ] {
        assert!(out.lines().any(|l| l == line), "{line:?} in:\n{out}");
    }
    // The model's trust and its check's relative errors: |0.94 - 0.95| / 0.95 for goodput.
    assert!(
        out.contains("trusted; fidelity error goodput 0.011, p50 0.050, p99 0.050"),
        "{out}"
    );
    let (code, out, _) = cli(&["show", &refused.to_string()]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("  surge-high (extrapolated): goodput"),
        "{out}"
    );
    assert!(
        out.contains("guardrails: refused\n  retry.max_attempts: moves at most 1 per proposal"),
        "{out}"
    );
    let (code, out, _) = cli(&["show", &passed.to_string(), "--json"]);
    assert_eq!(code, Some(0));
    assert_eq!(json_of(&out)["diff"][0]["to"], 2);

    // An unknown id is the API's 404, exit 1; a bad state or a missing id is bad usage, exit 2.
    let (code, _, err) = cli(&["show", "99"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("404") && err.contains("no proposal 99"),
        "{err}"
    );
    let (code, _, err) = cli(&["list", "--state", "approvd"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("rolled_back"), "{err}");
    assert_eq!(cli(&["show"]).0, Some(2));

    // The round the crash cut short ended failed at start-up, audited.
    let (status, _, body) = http_get(rafael.admin, &format!("/v1/evolution/rounds/{round}"));
    assert_eq!(status, 200, "{body}");
    let round = json_of(&body);
    assert_eq!(round["state"], "failed");
    assert_eq!(round["result"], RoundResult::Failed.as_str());
    assert_eq!(round["reason"], "interrupted by a restart");
    assert_eq!(audit_actions(rafael.admin), ["evolution.round"]);
    let pending = metric_value(&rafael.metrics(), "rafael_proposals_pending");
    assert_eq!(pending, Some(1.0));
}

/// `rafael --version` names the commit it was built from, and `rafael completions SHELL`
/// prints scripts their shells accept (bash is checked by loading it; zsh and fish by their
/// own syntax check where they are installed).
#[test]
fn the_version_names_the_commit_and_completions_load() {
    let version = Command::new(RAFAEL).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match head {
        Some(commit) => assert_eq!(
            version.trim(),
            format!("rafael {} (commit {commit})", env!("CARGO_PKG_VERSION")),
        ),
        // A source tree without git (a tarball): the build says so rather than guess.
        None => assert!(version.contains("(commit "), "{version}"),
    }

    let script = |shell: &str| {
        let output = Command::new(RAFAEL)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(output.status.success());
        let text = String::from_utf8(output.stdout).unwrap();
        assert!(text.contains("vault") && text.contains("genomes"), "{text}");
        text
    };
    let dir = tempfile::tempdir().unwrap();
    let bash = dir.path().join("rafael.bash");
    std::fs::write(&bash, script("bash")).unwrap();
    let loaded = Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p rafael", bash.display()))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&loaded.stdout).contains("_rafael"),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    for shell in ["zsh", "fish"] {
        let path = dir.path().join(format!("rafael.{shell}"));
        std::fs::write(&path, script(shell)).unwrap();
        match Command::new(shell).arg("-n").arg(&path).output() {
            Ok(checked) => assert!(
                checked.status.success(),
                "{shell}: {}",
                String::from_utf8_lossy(&checked.stderr)
            ),
            Err(_) => eprintln!("skipped: {shell} is not installed"),
        }
    }
}
