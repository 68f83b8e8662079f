//! The guardian end to end (issue 10), on the real binary and real traffic: an approved
//! proposal goes live as a new generation that survives SIGKILL and reloads by the rule, is
//! rolled back by hand; and the watch after a swap rolls back a genome that does worse than the
//! previous one would have, keeps one that is fine, and keeps one whose upstream turns bad
//! during the watch when the previous genome would have suffered as much. The upstream is a
//! worker pool whose error share the test sets, and the test's own client measures goodput.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use rafael_control::auth::{Role, add_token};
use serde_json::{Value, json};
use support::{
    RAFAEL, Rafael, audit_actions, eventually, http_get, http_get_with, http_post, http_post_with,
    json_of,
    load::{Answer, goodput, open_loop},
    metric_value,
    worker_pool::WorkerPool,
};

const SLO: Duration = Duration::from_millis(300);

/// A config with routes `main` and `other` on `upstream`, `main` with `policy` (TOML lines of
/// `[routes.policy]`), and `extra` at the end.
fn config(upstream: std::net::SocketAddr, policy: &str, extra: &str) -> String {
    support::config_text(
        upstream,
        &format!(
            "match = {{ path_prefix = \"/work\" }}\n[routes.policy]\n{policy}\n\n[[routes]]\nname = \"other\"\nlistener = \"in\"\nupstream = \"app\"\nmatch = {{ path_prefix = \"/other\" }}\n{extra}"
        ),
    )
}

fn route<'a>(routes: &'a Value, name: &str) -> &'a Value {
    routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap()
}

fn bearer(secret: &str) -> String {
    format!("Authorization: Bearer {secret}\r\n")
}

fn cli(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(RAFAEL).args(args).output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn with_tokens(text: &str, tokens: &Path) -> String {
    text.replacen(
        "bind = \"127.0.0.1:0\"\n",
        &format!("bind = \"127.0.0.1:0\"\ntokens_file = {tokens:?}\n"),
        1,
    )
}

#[test]
fn an_applied_genome_survives_sigkill_reloads_keep_it_unless_the_file_changed_it_and_any_generation_can_be_restored()
 {
    let upstream = support::upstream("ok", Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    let olga = add_token(&tokens, "olga", Role::Operator).unwrap();
    let bob = add_token(&tokens, "bob", Role::Approver).unwrap();
    let vic = add_token(&tokens, "vic", Role::Viewer).unwrap();
    let store = dir.path().join("rafael.db");
    let extra =
        format!("\n[store]\npath = {store:?}\n\n[guardian]\nwatch = {{ duration = \"0s\" }}\n");
    let file = |policy: &str, other: &str| {
        with_tokens(&config(upstream, policy, &extra), &tokens).replace(
            "match = { path_prefix = \"/other\" }\n",
            &format!("match = {{ path_prefix = \"/other\" }}\n{other}"),
        )
    };
    let path = dir.path().join("rafael.toml");
    std::fs::write(&path, file("timeout = \"2s\"", "")).unwrap();
    let mut rafael = Rafael::start(&path);

    // Olga writes a genome, Bob approves it: generation 2, live at once (no watch here).
    let candidate = json!({"timeout": "2s", "retry": {"max_attempts": 2, "retry_on": ["5xx"]}});
    let (status, created) = http_post_with(
        rafael.admin,
        "/v1/proposals",
        &json!({"route": "main", "genome": candidate}).to_string(),
        &bearer(&olga),
    );
    assert_eq!(status, 201, "{created}");
    let (status, applied) =
        http_post_with(rafael.admin, "/v1/proposals/1/approve", "", &bearer(&bob));
    assert_eq!(status, 200, "{applied}");
    let applied = json_of(&applied);
    assert_eq!(applied["state"], "kept", "{applied}");
    let live = |rafael: &Rafael| {
        let routes = json_of(&http_get_with(rafael.admin, "/v1/routes", &bearer(&vic)).2);
        let main = route(&routes, "main");
        (main["generation"].as_u64().unwrap(), main["genome"].clone())
    };
    let (generation, genome) = live(&rafael);
    assert_eq!(generation, 2);
    assert_eq!(genome["retry"]["max_attempts"], 2, "{genome}");
    assert!(
        rafael
            .metrics()
            .contains("rafael_genome_generation{route=\"main\"} 2")
    );
    // A second proposal waits, made against generation 2.
    let second = json!({"timeout": "2s", "retry": {"max_attempts": 3, "retry_on": ["5xx"]}});
    let (status, body) = http_post_with(
        rafael.admin,
        "/v1/proposals",
        &json!({"route": "main", "genome": second}).to_string(),
        &bearer(&olga),
    );
    assert_eq!(status, 201, "{body}");

    // SIGKILL: no drain, no goodbye. The same generation comes back, lineage and all.
    rafael.child.kill().unwrap();
    rafael.child.wait().unwrap();
    let rafael = Rafael::start(&path);
    assert_eq!(live(&rafael), (2, genome.clone()));
    let lineage = json_of(&http_get_with(rafael.admin, "/v1/routes/main/genomes", &bearer(&vic)).2);
    let sources: Vec<(u64, &str)> = lineage["genomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["generation"].as_u64().unwrap(),
                g["source"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(sources, [(2, "proposal"), (1, "file")], "{lineage}");
    let pending = json_of(&http_get_with(rafael.admin, "/v1/proposals/2", &bearer(&vic)).2);
    assert_eq!(pending["state"], "pending", "{pending}");
    // Traffic flows on the restored genome.
    assert_eq!(http_get(rafael.proxy, "/work").0, 200);

    // A reload that changes only the other route keeps main's swapped genome.
    std::fs::write(
        &path,
        file("timeout = \"2s\"", "[routes.policy]\ntimeout = \"3s\"\n"),
    )
    .unwrap();
    rafael.signal("HUP");
    assert!(eventually(Duration::from_secs(20), || {
        route(
            &json_of(&http_get_with(rafael.admin, "/v1/routes", &bearer(&vic)).2),
            "other",
        )["generation"]
            == 2
    }));
    assert_eq!(live(&rafael), (2, genome.clone()));
    // One that changes main's own policy: the file wins, as generation 3 with source file.
    std::fs::write(
        &path,
        file("timeout = \"4s\"", "[routes.policy]\ntimeout = \"3s\"\n"),
    )
    .unwrap();
    rafael.signal("HUP");
    assert!(eventually(Duration::from_secs(20), || live(&rafael).0 == 3));
    let from_file = live(&rafael).1;
    assert_eq!(
        (&from_file["timeout"], &from_file["retry"]),
        (&json!("4s"), &Value::Null),
        "{from_file}"
    );
    let lineage = json_of(&http_get_with(rafael.admin, "/v1/routes/main/genomes", &bearer(&vic)).2);
    assert_eq!(lineage["genomes"][0]["source"], "file", "{lineage}");
    // The pending proposal's base moved: it expires (the sweeper runs every 5 s).
    assert!(eventually(Duration::from_secs(20), || {
        json_of(&http_get_with(rafael.admin, "/v1/proposals/2", &bearer(&vic)).2)["state"]
            == "expired"
    }));

    // Back to generation 2's genome by hand: a viewer may not, an approver may.
    let admin = format!("http://{}", rafael.admin);
    let (code, _, stderr) = cli(&[
        "genomes", "rollback", "main", "--to", "2", "--admin", &admin, "--token", &vic,
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("403"), "{stderr}");
    let (code, stdout, stderr) = cli(&[
        "genomes",
        "rollback",
        "main",
        "--to",
        "2",
        "--comment",
        "the file's timeout was a mistake",
        "--admin",
        &admin,
        "--token",
        &bob,
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("generation 4"), "{stdout}");
    assert_eq!(live(&rafael), (4, genome.clone()));
    let (code, stdout, stderr) = cli(&["genomes", "main", "--admin", &admin, "--token", &vic]);
    assert_eq!(code, Some(0), "{stderr}");
    let first_row = stdout.lines().nth(1).unwrap_or_default();
    assert!(
        first_row.starts_with("live")
            && first_row.contains("rollback")
            && first_row.contains("restores 2"),
        "{stdout}"
    );
    // Rolling back to the live generation, or to one that never was, is refused.
    let (status, body) = http_post_with(
        rafael.admin,
        "/v1/routes/main/rollback",
        r#"{"to": 4}"#,
        &bearer(&bob),
    );
    assert_eq!(status, 409, "{body}");
    let (status, body) = http_post_with(
        rafael.admin,
        "/v1/routes/main/rollback",
        r#"{"to": 99}"#,
        &bearer(&bob),
    );
    assert_eq!(status, 404, "{body}");
    assert!(
        rafael
            .metrics()
            .contains("rafael_guardian_rollbacks_total{route=\"main\",reason=\"manual\"} 1")
    );

    // Every step is in the audit chain, and the chain verifies.
    let (code, stdout, stderr) = cli(&["audit", "verify", "--admin", &admin, "--token", &vic]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let audit = json_of(&http_get_with(rafael.admin, "/v1/audit", &bearer(&vic)).2);
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "proposal.created",
        "proposal.approved",
        "genome.applied",
        "proposal.expired",
        "genome.rolled_back",
    ] {
        assert!(actions.contains(&action), "{action} missing: {actions:?}");
    }
}

/// Watch settings for the live watch tests: 12 s, checkpoints every 2.4 s.
const WATCH: &str = r#"
[evolution]
min_requests = 300

[guardian]
approval = "auto"
watch = { duration = "12s", max_goodput_drop = 0.02, max_p99_increase = 0.5 }
"#;

/// Drives `rate` requests a second at `rafael` for `secs` seconds in the background.
fn traffic(
    proxy: std::net::SocketAddr,
    rate: f64,
    secs: u64,
) -> tokio::task::JoinHandle<Vec<Answer>> {
    tokio::spawn(open_loop(
        proxy,
        "/work",
        rate,
        secs,
        Duration::from_secs(5),
        |_| {},
    ))
}

/// Proposes `genome` for `main` (approved and applied at once: `approval = "auto"`), and
/// returns the proposal.
fn propose(admin: std::net::SocketAddr, genome: Value) -> Value {
    let (status, body) = http_post(
        admin,
        "/v1/proposals",
        &json!({"route": "main", "genome": genome}).to_string(),
    );
    assert_eq!(status, 201, "{body}");
    let proposal = json_of(&body);
    assert_eq!(proposal["state"], "applied", "{proposal}");
    proposal
}

/// Waits for proposal `id` to leave `applied`, and returns it.
async fn watched(admin: std::net::SocketAddr, id: i64, limit: Duration) -> Value {
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + limit;
        loop {
            let proposal = json_of(&http_get(admin, &format!("/v1/proposals/{id}")).2);
            if proposal["state"] != "applied" || Instant::now() > deadline {
                return proposal;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_genome_that_does_worse_than_the_previous_one_would_have_is_rolled_back_within_the_watch()
{
    // One attempt in five fails: the incumbent's retries hide it, the candidate has none.
    let pool = WorkerPool::new(8, Duration::from_millis(5))
        .errors(0.2)
        .seed(11)
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rafael.toml");
    let policy = "timeout = \"2s\"\nretry = { max_attempts = 3, retry_on = [\"5xx\"], budget_ratio = 1.0, budget_min_per_sec = 100 }";
    std::fs::write(&path, config(pool.address, policy, WATCH)).unwrap();
    let rafael = tokio::task::spawn_blocking(move || Rafael::start(&path))
        .await
        .unwrap();
    let rate = 100.0;
    let load = traffic(rafael.proxy, rate, 26);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let admin = rafael.admin;
    let proposal = tokio::task::spawn_blocking(move || propose(admin, json!({"timeout": "2s"})))
        .await
        .unwrap();
    let applied_at = Instant::now();
    let id = proposal["id"].as_i64().unwrap();
    let ended = watched(admin, id, Duration::from_secs(30)).await;
    let rolled_back_after = applied_at.elapsed();
    assert_eq!(ended["state"], "rolled_back", "{ended}");
    assert!(
        rolled_back_after < Duration::from_secs(12),
        "rolled back after {rolled_back_after:?}, past the 12 s watch"
    );
    let watch = &ended["watch"];
    assert_eq!(watch["state"], "rolled_back", "{watch}");
    let cf = &watch["counterfactual"];
    assert!(
        cf["previous"]["goodput"].as_f64().unwrap()
            > cf["current"]["goodput"].as_f64().unwrap() + 0.1,
        "{watch}"
    );
    let answers = load.await.unwrap();
    let (lineage, metrics, actions) = tokio::task::spawn_blocking(move || {
        (
            json_of(&http_get(admin, "/v1/routes/main/genomes").2),
            rafael.metrics(),
            audit_actions(admin),
        )
    })
    .await
    .unwrap();
    let newest = &lineage["genomes"][0];
    assert_eq!(
        (newest["source"].as_str(), newest["restores"].as_u64()),
        (Some("rollback"), Some(1)),
        "{lineage}"
    );
    assert_eq!(newest["genome"]["retry"]["max_attempts"], 3, "{lineage}");
    assert_eq!(
        metric_value(
            &metrics,
            "rafael_guardian_rollbacks_total{route=\"main\",reason=\"goodput\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        actions.contains(&"genome.rolled_back".to_owned()),
        "{actions:?}"
    );
    // What the client saw: the retries' goodput before, the candidate's while it was live, and
    // the retries' again once it was rolled back (the last 4 s of traffic).
    let before = goodput(&answers[..(5.0 * rate) as usize], SLO);
    let after = goodput(&answers[answers.len() - (4.0 * rate) as usize..], SLO);
    eprintln!(
        "watch rollback: before {before:.3}, after the rollback {after:.3}, rolled back after {rolled_back_after:?}; {watch}"
    );
    assert!(
        before > 0.97 && after > 0.97,
        "before {before}, after {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_genome_that_is_fine_is_kept_and_so_is_one_whose_upstream_turns_bad_during_the_watch() {
    // Two routes, two pools, one rafael: `main` gets a harmless change on a steady upstream;
    // `other` gets a harmless change, then its upstream starts failing a third of its requests.
    let steady = WorkerPool::new(8, Duration::from_millis(5))
        .errors(0.05)
        .seed(5)
        .start()
        .await;
    let turning = WorkerPool::new(8, Duration::from_millis(5))
        .seed(6)
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rafael.toml");
    let policy = "timeout = \"2s\"\nretry = { max_attempts = 3, retry_on = [\"5xx\"], budget_ratio = 1.0, budget_min_per_sec = 100 }";
    let text = config(steady.address, policy, WATCH)
        .replace(
            "upstream = \"app\"\nmatch = { path_prefix = \"/other\" }",
            "upstream = \"turning\"\nmatch = { path_prefix = \"/other\" }\n[routes.policy]\ntimeout = \"2s\"",
        )
        .replacen(
            "[[routes]]",
            &format!("[[upstreams]]\nname = \"turning\"\nendpoints = [\"{}\"]\n\n[[routes]]", turning.address),
            1,
        );
    std::fs::write(&path, text).unwrap();
    let rafael = tokio::task::spawn_blocking(move || Rafael::start(&path))
        .await
        .unwrap();
    let rate = 100.0;
    let main = traffic(rafael.proxy, rate, 24);
    let other = tokio::spawn(open_loop(
        rafael.proxy,
        "/other/work",
        rate,
        24,
        Duration::from_secs(5),
        |_| {},
    ));
    tokio::time::sleep(Duration::from_secs(6)).await;
    let admin = rafael.admin;
    let (fine, turned) = tokio::task::spawn_blocking(move || {
        let fine = propose(
            admin,
            json!({"timeout": "2s", "retry": {"max_attempts": 4, "retry_on": ["5xx"], "budget_ratio": 1.0, "budget_min_per_sec": 100}}),
        );
        let (status, body) = http_post(
            admin,
            "/v1/proposals",
            &json!({"route": "other", "genome": {"timeout": "3s"}}).to_string(),
        );
        assert_eq!(status, 201, "{body}");
        (fine, json_of(&body))
    })
    .await
    .unwrap();
    assert_eq!(turned["state"], "applied", "{turned}");
    // The bad period begins a second into the watch.
    tokio::time::sleep(Duration::from_secs(1)).await;
    turning.set_errors(0.35);
    let fine = watched(admin, fine["id"].as_i64().unwrap(), Duration::from_secs(40)).await;
    let turned = watched(
        admin,
        turned["id"].as_i64().unwrap(),
        Duration::from_secs(40),
    )
    .await;
    let (main, other) = (main.await.unwrap(), other.await.unwrap());
    eprintln!("fine: {}\nturned: {}", fine["watch"], turned["watch"]);
    assert_eq!(fine["state"], "kept", "{fine}");
    assert_eq!(fine["watch"]["state"], "kept", "{fine}");
    assert_eq!(turned["state"], "kept", "{turned}");
    // The bad period was seen: the route's goodput fell well past the limit, and the replay of
    // the previous genome in the same windows fell as far.
    let watch = &turned["watch"];
    let after = watch["after"]["goodput"].as_f64().unwrap();
    assert!(after < 0.8, "{watch}");
    let cf = &watch["counterfactual"];
    assert!(cf["previous"]["goodput"].as_f64().unwrap() < 0.8, "{watch}");
    // The client saw it too, on `other` only.
    let late = |answers: &[Answer]| goodput(&answers[answers.len() - (8.0 * rate) as usize..], SLO);
    assert!(
        late(&other) < 0.8 && late(&main) > 0.97,
        "{} {}",
        late(&other),
        late(&main)
    );
    // Each kept genome is now a learned pattern, with the upstream it was kept on, audited.
    let (learned, audit, verify) = tokio::task::spawn_blocking(move || {
        (
            json_of(&http_get(admin, "/v1/vault/patterns?tag=learned").2),
            json_of(&http_get(admin, "/v1/audit").2),
            http_get(admin, "/v1/audit/verify"),
        )
    })
    .await
    .unwrap();
    let learned = learned["patterns"].as_array().unwrap().clone();
    for (route, proposal) in [("main", &fine), ("other", &turned)] {
        let generation = proposal["watch"]["generation"].as_u64().unwrap();
        let name = format!("learned-{route}-g{generation}");
        let pattern = learned
            .iter()
            .find(|p| p["name"] == name.as_str())
            .unwrap_or_else(|| panic!("no {name} in {learned:?}"));
        assert_eq!(pattern["source"], "learned", "{pattern}");
        assert_eq!(pattern["genome"], proposal["genome"], "{pattern}");
        let from = &pattern["learned_from"];
        assert_eq!(from["route"], route, "{pattern}");
        assert!(
            from["model"]["rate_per_sec"].as_f64().unwrap() > 50.0,
            "{pattern}"
        );
    }
    let saved = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "vault.saved")
        .count();
    assert_eq!(saved, 2, "{audit}");
    assert_eq!(verify.0, 200, "{}", verify.2);
    let metrics = tokio::task::spawn_blocking(move || rafael.metrics())
        .await
        .unwrap();
    // The rollback counters exist from start-up (so `increase()` sees a first one) and none
    // counted.
    let rollbacks: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("rafael_guardian_rollbacks_total{"))
        .collect();
    assert!(
        !rollbacks.is_empty() && rollbacks.iter().all(|l| l.ends_with(" 0")),
        "{rollbacks:?}"
    );
}

/// A canary on a third of the route's requests for 8 s; no watch after (judged here alone).
const CANARY: &str = r#"
[guardian]
approval = "auto"
canary = { percent = 30, duration = "8s", min_requests = 100 }
watch = { duration = "0s" }
"#;

/// Each cohort as the client saw it (goodput, requests) and as the upstream saw it (distinct
/// request ids, attempts), for the requests in `range` of `answers` (request `i` was sent as
/// `{prefix}-{i}` by [`support::load::open_loop_ids`]).
fn cohorts(
    answers: &[Answer],
    range: std::ops::Range<usize>,
    prefix: &str,
    upstream: &std::collections::HashMap<String, u32>,
    percent: f64,
) -> [(f64, usize, usize, u32); 2] {
    [false, true].map(|canary| {
        let picked: Vec<(String, Answer)> = range
            .clone()
            .map(|i| (format!("{prefix}-{i}"), answers[i]))
            .filter(|(id, _)| rafael_proxy::canary_takes(id.as_bytes(), percent) == canary)
            .collect();
        let mine: Vec<Answer> = picked.iter().map(|(_, a)| *a).collect();
        let seen: Vec<u32> = picked
            .iter()
            .filter_map(|(id, _)| upstream.get(id).copied())
            .collect();
        (
            goodput(&mine, SLO),
            mine.len(),
            seen.len(),
            seen.into_iter().sum(),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_better_canary_passes_and_is_promoted_and_a_worse_one_fails_without_touching_the_stable_cohort()
 {
    // One attempt in five fails. Route `main` runs without retries and is offered retries
    // (better); route `other` runs with retries and is offered none (worse).
    let pool = WorkerPool::new(8, Duration::from_millis(5))
        .errors(0.2)
        .seed(21)
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rafael.toml");
    let retries = "timeout = \"2s\"\nretry = { max_attempts = 3, retry_on = [\"5xx\"], budget_ratio = 1.0, budget_min_per_sec = 100 }";
    let text = config(pool.address, "timeout = \"2s\"", CANARY).replace(
        "match = { path_prefix = \"/other\" }",
        &format!("match = {{ path_prefix = \"/other\" }}\n[routes.policy]\n{retries}"),
    );
    std::fs::write(&path, text).unwrap();
    let rafael = tokio::task::spawn_blocking(move || Rafael::start(&path))
        .await
        .unwrap();
    let rate = 100.0;
    let main = tokio::spawn(support::load::open_loop_ids(
        rafael.proxy,
        "/work",
        rate,
        14,
        Duration::from_secs(5),
        Some("c"),
        |_| {},
    ));
    let other = tokio::spawn(support::load::open_loop_ids(
        rafael.proxy,
        "/other/work",
        rate,
        14,
        Duration::from_secs(5),
        Some("o"),
        |_| {},
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let admin = rafael.admin;
    let (better, worse) = tokio::task::spawn_blocking(move || {
        let post = |route: &str, genome: Value| {
            let (status, body) = http_post(
                admin,
                "/v1/proposals",
                &json!({"route": route, "genome": genome}).to_string(),
            );
            assert_eq!(status, 201, "{body}");
            json_of(&body)
        };
        let better = post(
            "main",
            json!({"timeout": "2s", "retry": {"max_attempts": 3, "retry_on": ["5xx"], "budget_ratio": 1.0, "budget_min_per_sec": 100}}),
        );
        let worse = post("other", json!({"timeout": "2s"}));
        (better, worse)
    })
    .await
    .unwrap();
    let started = Instant::now();
    assert_eq!(better["state"], "canary", "{better}");
    assert_eq!(better["canary"]["state"], "running", "{better}");
    assert_eq!(worse["state"], "canary", "{worse}");
    let metrics = tokio::task::spawn_blocking(move || {
        let (_, _, text) = http_get(admin, "/metrics");
        text
    })
    .await
    .unwrap();
    assert!(
        metrics.contains("rafael_canary_active{route=\"main\"} 1"),
        "{metrics}"
    );

    // The worse one fails within its duration; the better one passes at its end.
    let worse = wait_state(
        admin,
        worse["id"].as_i64().unwrap(),
        "canary",
        Duration::from_secs(30),
    )
    .await;
    let worse_after = started.elapsed();
    let better = wait_state(
        admin,
        better["id"].as_i64().unwrap(),
        "canary",
        Duration::from_secs(30),
    )
    .await;
    eprintln!(
        "worse after {worse_after:?}: {}\nbetter: {}",
        worse["canary"], better["canary"]
    );
    assert_eq!(worse["state"], "rejected", "{worse}");
    assert_eq!(worse["canary"]["state"], "failed", "{worse}");
    assert!(
        worse_after < Duration::from_secs(8),
        "failed after {worse_after:?}"
    );
    assert_eq!(better["canary"]["state"], "passed", "{better}");
    assert_eq!(better["state"], "kept", "{better}");

    let (main, other) = (main.await.unwrap(), other.await.unwrap());
    let upstream = pool.attempts_by_id();
    let (routes, metrics) = tokio::task::spawn_blocking(move || {
        (json_of(&http_get(admin, "/v1/routes").2), rafael.metrics())
    })
    .await
    .unwrap();
    // The better genome is live on main (generation 2); the worse never reached other.
    assert_eq!(route(&routes, "main")["generation"], 2, "{routes}");
    assert_eq!(route(&routes, "other")["generation"], 1, "{routes}");
    assert_eq!(
        route(&routes, "other")["genome"]["retry"]["max_attempts"],
        3
    );
    assert!(
        metrics.contains("rafael_canary_active{route=\"main\"} 0"),
        "{metrics}"
    );
    let counted = |route: &str, cohort: &str| -> f64 {
        ["success", "client_error", "server_error"]
            .iter()
            .filter_map(|class| {
                metric_value(
                    &metrics,
                    &format!("rafael_canary_requests_total{{route=\"{route}\",cohort=\"{cohort}\",class=\"{class}\"}}"),
                )
            })
            .sum()
    };
    assert!(counted("main", "canary") >= 100.0, "{metrics}");

    // Each cohort counted from the upstream's side too, over the first two seconds of the
    // canaries (requests sent from 3.5 s to 5.5 s: `other`'s verdict came about 3 s in).
    let first = (3.5 * rate) as usize..(5.5 * rate) as usize;
    let [stable, canary] = cohorts(&other, first.clone(), "o", &upstream, 30.0);
    eprintln!("other during its canary: stable {stable:?}, canary {canary:?}");
    // The upstream saw every request of both cohorts: the canary's with one attempt each (no
    // retries), the stable's with its retries.
    assert_eq!(stable.1, stable.2, "{stable:?}");
    assert_eq!(canary.1, canary.2, "{canary:?}");
    assert_eq!(canary.3 as usize, canary.2, "{canary:?}");
    assert!(stable.3 as usize > stable.2, "{stable:?}");
    // The stable cohort was unaffected throughout: the retries' goodput over the whole run.
    let [stable_all, _] = cohorts(&other, 0..other.len(), "o", &upstream, 30.0);
    assert!(stable_all.0 > 0.97, "{stable_all:?}");
    // Main's cohorts over its canary: the candidate (retries) did better than the stable
    // cohort (none), and only its requests were retried.
    let trial = (3.5 * rate) as usize..(10.0 * rate) as usize;
    let [main_stable, main_canary] = cohorts(&main, trial, "c", &upstream, 30.0);
    eprintln!("main during its canary: stable {main_stable:?}, canary {main_canary:?}");
    assert!(
        main_canary.0 > main_stable.0 + 0.1,
        "{main_stable:?} {main_canary:?}"
    );
    assert!(main_canary.3 as usize > main_canary.2, "{main_canary:?}");
    assert_eq!(main_stable.3 as usize, main_stable.2, "{main_stable:?}");
}

/// Waits for proposal `id` to leave `state`, and returns it.
async fn wait_state(
    admin: std::net::SocketAddr,
    id: i64,
    state: &'static str,
    limit: Duration,
) -> Value {
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + limit;
        loop {
            let proposal = json_of(&http_get(admin, &format!("/v1/proposals/{id}")).2);
            if proposal["state"] != state || Instant::now() > deadline {
                return proposal;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap()
}

#[test]
fn a_canary_running_when_rafael_is_killed_comes_back_interrupted_and_an_approver_promotes_it() {
    let upstream = support::upstream("ok", Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    let olga = add_token(&tokens, "olga", Role::Operator).unwrap();
    let bob = add_token(&tokens, "bob", Role::Approver).unwrap();
    let store = dir.path().join("rafael.db");
    let extra = format!(
        "\n[store]\npath = {store:?}\n\n[guardian]\ncanary = {{ percent = 10, duration = \"10m\", min_requests = 100 }}\nwatch = {{ duration = \"0s\" }}\n"
    );
    let path = dir.path().join("rafael.toml");
    std::fs::write(
        &path,
        with_tokens(&config(upstream, "timeout = \"2s\"", &extra), &tokens),
    )
    .unwrap();
    let mut rafael = Rafael::start(&path);
    let genome = json!({"timeout": "3s"});
    let (status, body) = http_post_with(
        rafael.admin,
        "/v1/proposals",
        &json!({"route": "main", "genome": genome}).to_string(),
        &bearer(&olga),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = http_post_with(rafael.admin, "/v1/proposals/1/approve", "", &bearer(&bob));
    assert_eq!(status, 200, "{body}");
    let running = json_of(&body);
    assert_eq!(
        (
            running["state"].as_str(),
            running["canary"]["state"].as_str()
        ),
        (Some("canary"), Some("running")),
        "{running}"
    );
    assert!(
        rafael
            .metrics()
            .contains("rafael_canary_active{route=\"main\"} 1")
    );

    rafael.child.kill().unwrap();
    rafael.child.wait().unwrap();
    let rafael = Rafael::start(&path);
    let get = |path: &str| json_of(&http_get_with(rafael.admin, path, &bearer(&bob)).2);
    let back = get("/v1/proposals/1");
    assert_eq!(
        (back["state"].as_str(), back["canary"]["state"].as_str()),
        (Some("canary"), Some("interrupted")),
        "{back}"
    );
    let routes = get("/v1/routes");
    assert_eq!(route(&routes, "main")["generation"], 1, "{routes}");
    assert_eq!(
        route(&routes, "main")["genome"]["timeout"],
        "2s",
        "{routes}"
    );
    // Requests all run on the stable genome: no canary cohort is counted.
    for _ in 0..20 {
        assert_eq!(http_get(rafael.proxy, "/work").0, 200);
    }
    assert!(!rafael.metrics().contains("cohort=\"canary\""));
    // Its author may not promote it; an approver may, and it is applied.
    let (status, body) =
        http_post_with(rafael.admin, "/v1/proposals/1/approve", "", &bearer(&olga));
    assert_eq!(status, 403, "{body}");
    let (status, body) = http_post_with(
        rafael.admin,
        "/v1/proposals/1/approve",
        r#"{"comment": "seen enough before the restart"}"#,
        &bearer(&bob),
    );
    assert_eq!(status, 200, "{body}");
    let promoted = json_of(&body);
    assert_eq!(promoted["state"], "kept", "{promoted}");
    assert_eq!(promoted["canary"]["state"], "promoted", "{promoted}");
    assert_eq!(route(&get("/v1/routes"), "main")["generation"], 2);
    let actions: Vec<String> = get("/v1/audit")["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    for action in ["canary.started", "canary.interrupted", "genome.applied"] {
        assert!(actions.iter().any(|a| a == action), "{action}: {actions:?}");
    }
    assert_eq!(get("/v1/audit/verify")["ok"], true);
}

#[test]
fn every_kind_of_guardrail_violation_is_refused_with_its_key_path_and_never_goes_live() {
    let upstream = support::upstream("ok", Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[guardian]
approval = "auto"
max_step = 0.5
frozen = ["circuit_breaker"]
guardrails = { "retry.max_attempts" = { max = 4 } }
watch = { duration = "0s" }
"#;
    let policy = "timeout = \"2s\"\nretry = { max_attempts = 2, retry_on = [\"5xx\"] }\ncircuit_breaker = { consecutive_failures = 5 }";
    let path = dir.path().join("rafael.toml");
    std::fs::write(&path, config(upstream, policy, extra)).unwrap();
    let rafael = Rafael::start(&path);
    let refused = |genome: Value, gene: &str, rule: &str| {
        let (status, body) = http_post(
            rafael.admin,
            "/v1/proposals",
            &json!({"route": "main", "genome": genome}).to_string(),
        );
        assert_eq!(status, 422, "{body}");
        let violations = json_of(&body)["violations"].clone();
        let found = violations.as_array().into_iter().flatten().any(|v| {
            v["gene"].as_str().is_some_and(|g| g.starts_with(gene))
                && v["rule"].as_str().is_some_and(|r| r.contains(rule))
        });
        assert!(found, "{gene} / {rule}: {body}");
    };
    let breaker = json!({"consecutive_failures": 5});
    // Out of bounds: 5 attempts against a max of 4 (and a step of 2.5x).
    refused(
        json!({"timeout": "2s", "retry": {"max_attempts": 5, "retry_on": ["5xx"]}, "circuit_breaker": breaker}),
        "retry.max_attempts",
        "4",
    );
    // A step larger than max_step: the timeout from 2 s to 5 s.
    refused(
        json!({"timeout": "5s", "retry": {"max_attempts": 2, "retry_on": ["5xx"]}, "circuit_breaker": breaker}),
        "timeout",
        "max_step",
    );
    // A frozen section.
    refused(
        json!({"timeout": "2s", "retry": {"max_attempts": 2, "retry_on": ["5xx"]}, "circuit_breaker": {"consecutive_failures": 3}}),
        "circuit_breaker",
        "frozen",
    );
    // An invariant: never retry non-idempotent requests.
    refused(
        json!({"timeout": "2s", "retry": {"max_attempts": 2, "retry_on": ["5xx"], "retry_non_idempotent": true}, "circuit_breaker": breaker}),
        "retry.retry_non_idempotent",
        "never turned on",
    );
    // None of them became live or was stored, and each refusal is audited.
    let routes = json_of(&http_get(rafael.admin, "/v1/routes").2);
    assert_eq!(route(&routes, "main")["generation"], 1, "{routes}");
    let proposals = json_of(&http_get(rafael.admin, "/v1/proposals").2);
    assert_eq!(
        proposals["proposals"].as_array().unwrap().len(),
        0,
        "{proposals}"
    );
    let refusals = audit_actions(rafael.admin)
        .into_iter()
        .filter(|a| a == "guardrail.refused")
        .count();
    assert_eq!(refusals, 4);
}
