//! The vault (issue 11): the built-in catalogue over the admin API and the CLI of a running
//! rafael, and `pattern = "NAME"` on a route, through `rafael config check` and live.
#![allow(clippy::unwrap_used)]

mod support;

use std::{process::Command, time::Duration};

use support::{RAFAEL, Rafael, config_check, http_get, json_of};

fn cli(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(RAFAEL).args(args).output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_route_starts_from_its_pattern_and_the_vault_is_searchable_by_api_and_cli() {
    let upstream = support::upstream("ok", Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    // An unknown pattern is a config error with its key path, and the patterns there are.
    let bad = support::config_text(upstream, "pattern = \"no-such-pattern\"");
    let (code, _, stderr) = config_check(dir.path(), &bad);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("routes[0].pattern") && stderr.contains("python-wsgi-workers"),
        "{stderr}"
    );
    // A known one, its timeout overridden by the route's own policy.
    let text = support::config_text(
        upstream,
        "pattern = \"python-wsgi-workers\"\n[routes.policy]\ntimeout = \"3s\"",
    );
    let (code, _, stderr) = config_check(dir.path(), &text);
    assert_eq!(code, Some(0), "{stderr}");
    let path = dir.path().join("rafael.toml");
    std::fs::write(&path, text).unwrap();
    let rafael = Rafael::start(&path);
    assert_eq!(http_get(rafael.proxy, "/").0, 200);
    let routes = json_of(&http_get(rafael.admin, "/v1/routes").2);
    let genome = &routes["routes"][0]["genome"];
    assert_eq!(genome["timeout"], "3s", "{genome}");
    assert_eq!(genome["concurrency"]["max_in_flight"], 8, "{genome}");
    assert_eq!(
        genome["retry"]["retry_on"],
        serde_json::json!(["connect-failure", "reset"])
    );

    // The API: every filter, and 404 / 400.
    let (status, _, body) = http_get(rafael.admin, "/v1/vault/patterns");
    assert_eq!(status, 200);
    assert!(
        json_of(&body)["patterns"].as_array().unwrap().len() >= 12,
        "{body}"
    );
    let names = |path: &str| -> Vec<String> {
        json_of(&http_get(rafael.admin, path).2)["patterns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    // `any`-stack composites come too, after the grpc one.
    let grpc = names("/v1/vault/patterns?stack=grpc&category=composite");
    assert_eq!(
        grpc.first().map(String::as_str),
        Some("grpc-unary"),
        "{grpc:?}"
    );
    assert!(
        !grpc
            .iter()
            .any(|n| n == "adaptive-retry" || n == "jvm-thread-pool"),
        "{grpc:?}"
    );
    assert_eq!(
        names("/v1/vault/patterns?q=connection%20pool"),
        ["database-api"]
    );
    assert_eq!(
        names("/v1/vault/patterns?tag=cold-start"),
        ["serverless-cold-start"]
    );
    let (status, _, body) = http_get(rafael.admin, "/v1/vault/patterns/circuit-breaker");
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_of(&body)["source"], "builtin");
    assert_eq!(http_get(rafael.admin, "/v1/vault/patterns/nope").0, 404);
    assert_eq!(
        http_get(rafael.admin, "/v1/vault/patterns?category=magic").0,
        400
    );

    // The CLI.
    let admin = format!("http://{}", rafael.admin);
    let (code, stdout, stderr) = cli(&["vault", "search", "thread", "pool", "--admin", &admin]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("jvm-thread-pool"), "{stdout}");
    assert!(!stdout.contains("adaptive-retry"), "{stdout}");
    let (code, stdout, stderr) = cli(&["vault", "search", "--stack", "node", "--admin", &admin]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("node-event-loop"), "{stdout}");
    let (code, stdout, stderr) = cli(&["vault", "show", "third-party-quota", "--admin", &admin]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("[routes.policy]") && stdout.contains("rps = 10.0"),
        "{stdout}"
    );
    // The genome it prints pastes into a config as a route's policy.
    let printed = stdout.split_once("[routes.policy]\n").unwrap().1;
    let document: toml::Value = toml::from_str(&format!("[routes.policy]\n{printed}")).unwrap();
    let genome: rafael_config::Genome = document["routes"]["policy"].clone().try_into().unwrap();
    assert_eq!(genome.rate_limit.map(|r| r.rps), Some(10.0), "{printed}");
}
