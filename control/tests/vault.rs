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

/// Saving patterns by hand (issue 11): only approvers may, through the API and `rafael vault
/// save`, from a genome file or a route's lineage; a name is taken once, a bad pattern is
/// refused with every finding's key path, each save is audited, and the patterns outlive a
/// restart.
#[test]
fn approvers_save_patterns_that_are_checked_audited_searchable_and_kept() {
    use rafael_control::auth::{Role, add_token};
    let upstream = support::upstream("ok", Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    let bob = add_token(&tokens, "bob", Role::Approver).unwrap();
    let olga = add_token(&tokens, "olga", Role::Operator).unwrap();
    let store = dir.path().join("rafael.db");
    let text = support::config_text(upstream, "[routes.policy]\ntimeout = \"2s\"").replacen(
        "bind = \"127.0.0.1:0\"\n",
        &format!("bind = \"127.0.0.1:0\"\ntokens_file = {tokens:?}\n"),
        1,
    ) + &format!("\n[store]\npath = {store:?}\n");
    let path = dir.path().join("rafael.toml");
    std::fs::write(&path, text).unwrap();
    let genome_file = dir.path().join("genome.toml");
    std::fs::write(
        &genome_file,
        "timeout = \"800ms\"\nretry = { max_attempts = 2, per_try_timeout = \"300ms\", retry_on = [\"reset\", \"connect-failure\", \"gateway-error\"] }\n",
    )
    .unwrap();
    let rafael = Rafael::start(&path);
    let admin = format!("http://{}", rafael.admin);
    let save = |token: &str, args: &[&str]| {
        let mut all = vec!["vault", "save"];
        all.extend(args);
        all.extend(["--admin", &admin, "--token", token]);
        cli(&all)
    };
    let description = "Orders reads on our gRPC mesh: two tries, 300 ms each.";
    let genome = genome_file.to_str().unwrap();

    // An operator may not; an approver may, once per name.
    let (code, _, stderr) = save(
        &olga,
        &[
            "orders-read",
            "--description",
            description,
            "--genome",
            genome,
        ],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("403") || stderr.contains("forbidden"),
        "{stderr}"
    );
    let (code, stdout, stderr) = save(
        &bob,
        &[
            "orders-read",
            "--description",
            description,
            "--genome",
            genome,
            "--stack",
            "grpc",
            "--tag",
            "orders",
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("saved pattern orders-read (retry)"),
        "{stdout}"
    );
    let (code, _, stderr) = save(
        &bob,
        &[
            "orders-read",
            "--description",
            description,
            "--genome",
            genome,
        ],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("exists"), "{stderr}");
    // From the route's lineage: generation 1 is what the file gave it.
    let (code, _, stderr) = save(
        &bob,
        &[
            "main-as-configured",
            "--description",
            "What main ran when it was set up by hand.",
            "--route",
            "main",
            "--generation",
            "1",
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let (code, _, stderr) = save(
        &bob,
        &[
            "from-nowhere",
            "--description",
            "A generation the lineage never had.",
            "--route",
            "main",
            "--generation",
            "9",
        ],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no generation 9"), "{stderr}");
    // Every finding at once, each with its key path.
    let bearer = format!("Authorization: Bearer {bob}\r\n");
    let bad = serde_json::json!({
        "name": "Not A Name",
        "category": "magic",
        "description": "short",
        "genome": {"retry": {"max_attempts": 3, "retry_non_idempotent": true, "budget_ratio": 2.0}},
    });
    let (status, body) = support::http_post_with(
        rafael.admin,
        "/v1/vault/patterns",
        &bad.to_string(),
        &bearer,
    );
    assert_eq!(status, 422, "{body}");
    for key in [
        "name",
        "category",
        "description",
        "genome.retry.retry_non_idempotent",
        "genome.retry.budget_ratio",
    ] {
        assert!(body.contains(key), "{key} missing: {body}");
    }
    let both = serde_json::json!({
        "name": "both", "description": "a genome and a generation at once",
        "genome": {}, "from": {"route": "main", "generation": 1},
    });
    let (status, body) = support::http_post_with(
        rafael.admin,
        "/v1/vault/patterns",
        &both.to_string(),
        &bearer,
    );
    assert_eq!(status, 400, "{body}");

    let check = |rafael: &Rafael| {
        let view = format!("Authorization: Bearer {olga}\r\n");
        let (status, _, body) = support::http_get_with(
            rafael.admin,
            "/v1/vault/patterns?stack=grpc&tag=orders",
            &view,
        );
        assert_eq!(status, 200, "{body}");
        let found = json_of(&body)["patterns"].as_array().unwrap().clone();
        assert_eq!(found.len(), 1, "{body}");
        let pattern = &found[0];
        assert_eq!(pattern["source"], "learned");
        assert_eq!(pattern["author"], "bob");
        assert_eq!(
            pattern["genome"]["retry"]["per_try_timeout"], "300ms",
            "{pattern}"
        );
        let (_, _, body) =
            support::http_get_with(rafael.admin, "/v1/vault/patterns/main-as-configured", &view);
        let pattern = json_of(&body);
        assert_eq!(pattern["genome"]["timeout"], "2s", "{pattern}");
        assert_eq!(pattern["category"], "timeout", "{pattern}");
        assert_eq!(pattern["learned_from"]["generation"], 1, "{pattern}");
        let (_, _, body) = support::http_get_with(rafael.admin, "/v1/audit", &view);
        let saved: Vec<String> = json_of(&body)["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "vault.saved")
            .map(|e| {
                format!(
                    "{} {}",
                    e["actor"].as_str().unwrap(),
                    e["target"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(
            saved,
            ["bob pattern/orders-read", "bob pattern/main-as-configured"]
        );
        let (status, _, body) = support::http_get_with(rafael.admin, "/v1/audit/verify", &view);
        assert_eq!(status, 200, "{body}");
    };
    check(&rafael);
    drop(rafael);
    let rafael = Rafael::start(&path);
    check(&rafael);
    let (code, stdout, stderr) = cli(&[
        "vault",
        "show",
        "orders-read",
        "--admin",
        &format!("http://{}", rafael.admin),
        "--token",
        &olga,
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("paste these lines") && stdout.contains("per_try_timeout = \"300ms\""),
        "{stdout}"
    );
}
