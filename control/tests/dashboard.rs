//! The dashboard (issue 11) in a real headless browser: Debian's Chromium, driven by
//! playwright-core (`control/tests/browser/dashboard.mjs`), against the real binary with a
//! tokens file and live traffic. The script acts as an operator; this test then checks through
//! the API that what the script did happened (the proposal approved by the token's owner with
//! its comment and applied, the experiment stopped, the figures it read plausible), and keeps
//! the screenshots under `target/dashboard-screenshots/`.
//!
//! Needs Chromium and the script's node_modules: `.ci/setup` installs both.
#![allow(clippy::unwrap_used)]

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use rafael_control::auth::{Role, add_token};
use serde_json::{Value, json};
use support::{Rafael, http_get, http_get_with, http_post_with, json_of, worker_pool::WorkerPool};

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn screenshots(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/dashboard-screenshots")
        .join(name)
}

/// Runs the browser script in `mode` with `env`; what it saw.
fn drive(mode: &str, env: &[(&str, String)]) -> Value {
    let dir = browser_dir();
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed in {}: `.ci/setup` installs it (npm ci there) and Debian's chromium",
        dir.display()
    );
    let mut command = Command::new("node");
    command.arg("dashboard.mjs").arg(mode).current_dir(&dir);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command
        .output()
        .expect("node is needed: `.ci/setup` installs it with npm");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the browser script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    for path in seen["screenshots"].as_array().unwrap() {
        let png = std::fs::read(path.as_str().unwrap()).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{path}: not a screenshot"
        );
    }
    seen
}

/// The test's config: one route with retries and a breaker on `upstream`, manual approval by
/// one approver, a short watch; with `admin` (the tokens file and the store path, TOML lines)
/// added to its `[admin]` table.
fn config(upstream: std::net::SocketAddr, admin: &str) -> String {
    support::config_text(
        upstream,
        r#"[routes.policy]
timeout = "2s"
retry = { max_attempts = 3, retry_on = ["5xx"] }
circuit_breaker = { consecutive_failures = 20 }

[evolution]
min_requests = 200

[guardian]
approval = "manual"
approvals_required = 1
watch = { duration = "5s" }
"#,
    )
    .replacen(
        "bind = \"127.0.0.1:0\"\n",
        &format!("bind = \"127.0.0.1:0\"\n{admin}\n"),
        1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_logs_in_watches_approves_and_runs_an_experiment_in_a_real_browser() {
    let pool = WorkerPool::new(8, Duration::from_millis(3))
        .errors(0.02)
        .seed(11)
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    let ada = add_token(&tokens, "ada", Role::Admin).unwrap();
    let olga = add_token(&tokens, "olga", Role::Operator).unwrap();
    let store = dir.path().join("rafael.db");
    let text = config(
        pool.address,
        &format!("tokens_file = {tokens:?}\n\n[store]\npath = {store:?}"),
    );
    let path = dir.path().join("rafael.toml");
    std::fs::write(&path, text).unwrap();
    let rafael = tokio::task::spawn_blocking(move || Rafael::start(&path))
        .await
        .unwrap();
    let (proxy, admin) = (rafael.proxy, rafael.admin);
    // Steady traffic for the whole test; the browser script adds its own burst.
    let traffic = tokio::spawn(support::load::open_loop(
        proxy,
        "/work",
        40.0,
        90,
        Duration::from_secs(3),
        |_| {},
    ));
    // A hand-written proposal by the operator, for the admin to approve in the browser, once
    // the route has the telemetry a model needs (so the proposal has simulated evidence).
    let bearer = format!("Authorization: Bearer {olga}\r\n");
    let viewer = format!("Authorization: Bearer {ada}\r\n");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let viewer = viewer.clone();
        let (status, _, body) = tokio::task::spawn_blocking(move || {
            http_get_with(admin, "/v1/routes/main/model", &viewer)
        })
        .await
        .unwrap();
        if status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let proposal = tokio::task::spawn_blocking(move || {
        let genome = json!({"route": "main", "genome": {"timeout": "2s",
            "retry": {"max_attempts": 2, "retry_on": ["5xx"]},
            "circuit_breaker": {"consecutive_failures": 20}}});
        let (status, body) = http_post_with(admin, "/v1/proposals", &genome.to_string(), &bearer);
        assert_eq!(status, 201, "{body}");
        json_of(&body)["id"].as_i64().unwrap()
    })
    .await
    .unwrap();

    let shots = screenshots("operator");
    let env = vec![
        ("RAFAEL_ADMIN", format!("http://{admin}")),
        ("RAFAEL_PROXY", format!("http://{proxy}")),
        ("RAFAEL_TOKEN", ada.clone()),
        ("RAFAEL_PROPOSAL", proposal.to_string()),
        ("SCREENSHOTS", shots.display().to_string()),
    ];
    let seen = tokio::task::spawn_blocking(move || drive("operate", &env))
        .await
        .unwrap();
    eprintln!("the browser saw: {seen}");
    traffic.abort();

    // What the browser read was live and plausible.
    let rate = &seen["rate"];
    assert!(rate["before"].as_f64().unwrap() > 5.0, "{seen}");
    assert!(
        rate["after"].as_f64().unwrap() > rate["before"].as_f64().unwrap() + 10.0,
        "{seen}"
    );
    assert_eq!(seen["route_generation"], 1, "{seen}");
    assert!(seen["diff_rows"].as_u64().unwrap() >= 1, "{seen}");
    assert!(seen["predicted_rows"].as_u64().unwrap() >= 1, "{seen}");
    assert_eq!(seen["login_asked_again"], false, "{seen}");
    assert!(seen["operations"].as_u64().unwrap() >= 30, "{seen}");
    assert!(seen["screenshots"].as_array().unwrap().len() >= 9, "{seen}");

    // What the browser did, as the API tells it.
    let view = format!("Authorization: Bearer {ada}\r\n");
    let experiment = seen["experiment"].as_i64().unwrap();
    let (approved, stopped, routes, audit) = tokio::task::spawn_blocking(move || {
        let get = |path: &str| json_of(&http_get_with(admin, path, &view).2);
        (
            get(&format!("/v1/proposals/{proposal}")),
            get(&format!("/v1/experiments/{experiment}")),
            get("/v1/routes"),
            get("/v1/audit?limit=1000"),
        )
    })
    .await
    .unwrap();
    assert!(
        ["applied", "kept"].contains(&approved["state"].as_str().unwrap()),
        "{approved}"
    );
    let approval = &approved["approvals"][0];
    assert_eq!(approval["by"], "ada", "{approved}");
    assert_eq!(
        approval["comment"], "approved from the dashboard test",
        "{approved}"
    );
    assert_eq!(routes["routes"][0]["generation"], 2, "{routes}");
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    let actions: Vec<(String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_owned(),
                e["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for expected in [
        ("olga", "proposal.created"),
        ("ada", "proposal.approved"),
        ("ada", "experiment.started"),
        ("ada", "experiment.stopped"),
    ] {
        assert!(
            actions
                .iter()
                .any(|(actor, action)| actor == expected.0 && action == expected.1),
            "{expected:?} not in {actions:?}"
        );
    }
    // Without a token the API is closed to the page's calls: the page itself is open.
    let (status, _, page) = tokio::task::spawn_blocking(move || http_get(admin, "/"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("/assets/app.js"), "{page}");
    let (status, _, _) = tokio::task::spawn_blocking(move || http_get(admin, "/v1/events"))
        .await
        .unwrap();
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_rafael_without_tokens_asks_nothing() {
    let pool = WorkerPool::new(4, Duration::from_millis(2))
        .seed(12)
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rafael.toml");
    std::fs::write(&path, config(pool.address, "")).unwrap();
    let rafael = tokio::task::spawn_blocking(move || Rafael::start(&path))
        .await
        .unwrap();
    let env = vec![
        ("RAFAEL_ADMIN", format!("http://{}", rafael.admin)),
        ("SCREENSHOTS", screenshots("open").display().to_string()),
    ];
    let seen = tokio::task::spawn_blocking(move || drive("open", &env))
        .await
        .unwrap();
    assert_eq!(seen["login_asked"], false, "{seen}");
    drop(rafael);
}
