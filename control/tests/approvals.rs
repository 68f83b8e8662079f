//! Approving and rejecting proposals over the admin API (issue 10): real tokens in a tokens
//! file, a real store file, the real router. Who may (roles, the author), how approvals count
//! (`approvals_required = 2`, the same approver twice), a reject ending it, and every decision
//! in the audit chain, which still verifies.
#![allow(clippy::unwrap_used)]

mod support;

use std::{collections::HashMap, sync::Arc};

use axum::body::Body;
use http::{Request, StatusCode};
use rafael_control::{
    auth::{Auth, Role, add_token},
    guardian::proposal::{Proposal, Source},
    store::Store,
};
use serde_json::Value;
use support::{admin_router_with, sample_proposal};
use tower::ServiceExt;

const CONFIG: &str = r#"
[[listeners]]
name = "in"
bind = "127.0.0.1:0"
[[upstreams]]
name = "app"
endpoints = ["127.0.0.1:9"]
[[routes]]
name = "orders"
listener = "in"
upstream = "app"
[[routes]]
name = "users"
listener = "in"
upstream = "app"

[guardian]
approvals_required = 2
"#;

/// A store holding proposal 1 (orders, by evolution) and 2 (users, written by alice), and a
/// tokens file with one token per person.
struct Fixture {
    dir: tempfile::TempDir,
    store: Arc<Store>,
    secrets: HashMap<&'static str, String>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("rafael.db")).unwrap());
        store.insert_proposal(&sample_proposal("orders")).unwrap();
        let by_alice = Proposal {
            source: Source::Manual,
            author: "alice".into(),
            ..sample_proposal("users")
        };
        store.insert_proposal(&by_alice).unwrap();
        let tokens = dir.path().join("tokens.toml");
        let secrets = [
            ("vic", Role::Viewer),
            ("olga", Role::Operator),
            ("alice", Role::Approver),
            ("bob", Role::Approver),
            ("carol", Role::Approver),
            ("root", Role::Admin),
        ]
        .into_iter()
        .map(|(name, role)| (name, add_token(&tokens, name, role).unwrap()))
        .collect();
        Self {
            dir,
            store,
            secrets,
        }
    }

    /// `who` POSTs `body` to `path`: the status and the JSON answer.
    async fn post(&self, who: &str, path: &str, body: &str) -> (StatusCode, Value) {
        let auth = Auth::load(Some(&self.dir.path().join("tokens.toml"))).unwrap();
        let router = admin_router_with(CONFIG, self.store.clone(), auth);
        let mut request =
            Request::post(path).header("authorization", format!("Bearer {}", self.secrets[who]));
        if !body.is_empty() {
            request = request.header("content-type", "application/json");
        }
        let response = router
            .oneshot(request.body(Body::from(body.to_owned())).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    async fn get(&self, path: &str) -> Value {
        let auth = Auth::load(Some(&self.dir.path().join("tokens.toml"))).unwrap();
        let router = admin_router_with(CONFIG, self.store.clone(), auth);
        let request = Request::get(path)
            .header("authorization", format!("Bearer {}", self.secrets["vic"]))
            .body(Body::empty())
            .unwrap();
        let response = router.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }
}

#[tokio::test]
async fn viewers_and_operators_may_not_decide_and_the_author_may_not_approve() {
    let fixture = Fixture::new();
    for who in ["vic", "olga"] {
        let (status, body) = fixture.post(who, "/v1/proposals/1/approve", "").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{who}: {body}");
        let (status, _) = fixture.post(who, "/v1/proposals/1/reject", "").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{who}");
    }
    let (status, body) = fixture.post("alice", "/v1/proposals/2/approve", "").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("its author"),
        "{body}"
    );
    // Nothing was recorded by any of them.
    let proposal = fixture.get("/v1/proposals/2").await;
    assert_eq!(proposal["state"], "pending");
    assert_eq!(proposal["approvals"], Value::Array(Vec::new()));
}

#[tokio::test]
async fn two_distinct_approvers_approve_and_one_reject_ends_a_proposal() {
    let fixture = Fixture::new();
    let (status, first) = fixture
        .post(
            "bob",
            "/v1/proposals/1/approve",
            r#"{"comment": "predicted +0.17 goodput"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["state"], "pending");
    // The same approver again changes nothing.
    let (status, again) = fixture.post("bob", "/v1/proposals/1/approve", "").await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["state"], "pending");
    assert_eq!(again["approvals"].as_array().unwrap().len(), 1);
    let (status, second) = fixture.post("carol", "/v1/proposals/1/approve", "").await;
    assert_eq!(status, StatusCode::OK, "{second}");
    // The approval that completes it applies it: generation 2 of the route, under watch.
    assert_eq!(second["state"], "applied");
    assert_eq!(second["watch"]["state"], "watching", "{second}");
    assert_eq!(second["watch"]["generation"], 2, "{second}");
    let lineage = fixture.get("/v1/routes/orders/genomes").await;
    assert_eq!(lineage["generation"], 2, "{lineage}");
    assert_eq!(lineage["genomes"][0]["source"], "proposal", "{lineage}");
    assert_eq!(lineage["genomes"][0]["proposal_id"], 1, "{lineage}");
    assert_eq!(lineage["genomes"][0]["actor"], "carol", "{lineage}");
    assert_eq!(
        lineage["genomes"][0]["genome"], second["genome"],
        "{lineage}"
    );
    assert_eq!(lineage["genomes"][1]["source"], "file", "{lineage}");
    let approvals = second["approvals"].as_array().unwrap();
    assert_eq!(approvals[0]["by"], "bob");
    assert_eq!(approvals[0]["comment"], "predicted +0.17 goodput");
    assert_eq!(approvals[1]["by"], "carol");
    // Settled: a further decision is a conflict, and the store agrees.
    let (status, body) = fixture.post("root", "/v1/proposals/1/reject", "").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(fixture.get("/v1/proposals/1").await["state"], "applied");

    fixture.post("bob", "/v1/proposals/2/approve", "").await;
    let (status, rejected) = fixture
        .post(
            "carol",
            "/v1/proposals/2/reject",
            r#"{"comment": "not during the sale"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rejected}");
    assert_eq!(rejected["state"], "rejected");
    assert_eq!(rejected["approvals"][1]["decision"], "reject");

    // Every decision is in the audit chain with its actor, and the chain verifies.
    let audit = fixture.get("/v1/audit").await;
    let decisions: Vec<(String, String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"].as_str().unwrap().starts_with("proposal."))
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_owned(),
                e["action"].as_str().unwrap().to_owned(),
                e["target"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("bob", "proposal.approved", "proposal/1"),
        ("carol", "proposal.approved", "proposal/1"),
        ("bob", "proposal.approved", "proposal/2"),
        ("carol", "proposal.rejected", "proposal/2"),
    ]
    .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()));
    assert_eq!(decisions, expected, "{audit}");
    assert_eq!(fixture.get("/v1/audit/verify").await["ok"], true);
}

#[tokio::test]
async fn an_unknown_proposal_is_404_and_a_bad_body_400() {
    let fixture = Fixture::new();
    let (status, _) = fixture.post("bob", "/v1/proposals/99/approve", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = fixture
        .post("bob", "/v1/proposals/1/approve", r#"{"coment": "typo"}"#)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let long = format!(r#"{{"comment": "{}"}}"#, "x".repeat(2001));
    let (status, body) = fixture.post("bob", "/v1/proposals/1/approve", &long).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(fixture.get("/v1/proposals/1").await["state"], "pending");
}

/// The same rules through the real binary and its CLI: `rafael proposals approve|reject`
/// against a running rafael with a tokens file, exit codes and all.
#[test]
fn the_cli_approves_and_rejects_through_a_running_rafael() {
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("rafael.db");
    {
        let store = Store::open(&store_path).unwrap();
        store.insert_proposal(&sample_proposal("main")).unwrap();
        store.insert_proposal(&sample_proposal("main")).unwrap();
    }
    let tokens = dir.path().join("tokens.toml");
    let bob = add_token(&tokens, "bob", Role::Approver).unwrap();
    let carol = add_token(&tokens, "carol", Role::Approver).unwrap();
    let vic = add_token(&tokens, "vic", Role::Viewer).unwrap();
    let olga = add_token(&tokens, "olga", Role::Operator).unwrap();
    let text =
        support::config_text("127.0.0.1:9".parse().unwrap(), "").replacen(
            "bind = \"127.0.0.1:0\"\n",
            &format!("bind = \"127.0.0.1:0\"\ntokens_file = {tokens:?}\n"),
            1,
        ) + &format!("\n[store]\npath = {store_path:?}\n\n[guardian]\napprovals_required = 2\n");
    let config = dir.path().join("rafael.toml");
    std::fs::write(&config, text).unwrap();
    let rafael = support::Rafael::start(&config);
    let admin = format!("http://{}", rafael.admin);
    let cli = |token: &str, args: &[&str]| {
        let output = std::process::Command::new(support::RAFAEL)
            .args(["proposals"])
            .args(args)
            .args(["--json", "--admin", &admin, "--token", token])
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let state = |stdout: &str| -> String {
        let proposal: Value = serde_json::from_str(stdout).unwrap();
        proposal["state"].as_str().unwrap().to_owned()
    };

    let (code, _, stderr) = cli(&vic, &["approve", "1"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("403"), "{stderr}");
    let (code, stdout, stderr) = cli(&bob, &["approve", "1", "--comment", "looks right"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(state(&stdout), "pending");
    let (code, stdout, stderr) = cli(&bob, &["reject", "2", "--comment", "not today"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(state(&stdout), "rejected");
    let (code, stdout, stderr) = cli(&carol, &["approve", "1"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(state(&stdout), "applied");
    let (code, _, stderr) = cli(&carol, &["reject", "1"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("409"), "{stderr}");
    // A hand-written one from a genome file; a refused one says why and stores nothing.
    let file = dir.path().join("genome.toml");
    std::fs::write(
        &file,
        "timeout = \"2s\"\nretry = { max_attempts = 2, retry_on = [\"5xx\"] }\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let (code, stdout, stderr) = cli(&olga, &["create", "main", "--genome", file]);
    assert_eq!(code, Some(0), "{stderr}");
    let created: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (created["id"].as_i64(), created["author"].as_str()),
        (Some(3), Some("olga"))
    );
    let unsafe_genome = dir.path().join("unsafe.toml");
    std::fs::write(
        &unsafe_genome,
        "retry = { max_attempts = 2, retry_non_idempotent = true }\n",
    )
    .unwrap();
    let (code, _, stderr) = cli(
        &olga,
        &[
            "create",
            "main",
            "--genome",
            unsafe_genome.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("422") && stderr.contains("retry.retry_non_idempotent"),
        "{stderr}"
    );
    // Kept across a restart: the store has it.
    let mut rafael = rafael;
    rafael.signal("TERM");
    assert_eq!(
        rafael.wait(std::time::Duration::from_secs(20)).code(),
        Some(0)
    );
    let store = Store::open(&store_path).unwrap();
    let approved = store.proposal(1).unwrap().unwrap();
    assert_eq!(approved.state.as_str(), "applied");
    assert_eq!(
        store.latest_genome("main").unwrap().unwrap().proposal_id,
        Some(1)
    );
    assert_eq!(
        approved.approvals[0].comment.as_deref(),
        Some("looks right")
    );
    assert_eq!(
        store.proposal(2).unwrap().unwrap().state.as_str(),
        "rejected"
    );
}

#[tokio::test]
async fn a_hand_written_proposal_is_checked_stored_pending_and_decided_like_evolution_s() {
    let fixture = Fixture::new();
    let genome = r#"{"route": "orders", "genome": {"timeout": "2s",
        "retry": {"max_attempts": 2, "retry_on": ["5xx"]}}}"#;
    let (status, body) = fixture.post("vic", "/v1/proposals", genome).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, proposal) = fixture.post("olga", "/v1/proposals", genome).await;
    assert_eq!(status, StatusCode::CREATED, "{proposal}");
    assert_eq!(proposal["source"], "manual");
    assert_eq!(proposal["author"], "olga");
    assert_eq!(proposal["state"], "pending");
    assert_eq!(proposal["id"], 3);
    // No telemetry on this route yet: no simulated evidence, and the model says so.
    assert_eq!(proposal["model"]["trusted"], false);
    let genes: Vec<&str> = proposal["diff"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["gene"].as_str().unwrap())
        .collect();
    assert!(
        genes.contains(&"timeout") && genes.contains(&"retry"),
        "{genes:?}"
    );
    // It supersedes the older pending proposal of its route.
    assert_eq!(fixture.get("/v1/proposals/1").await["state"], "superseded");
    // Approved like any other: its author is olga, so alice counts.
    fixture.post("alice", "/v1/proposals/3/approve", "").await;
    let (_, approved) = fixture.post("bob", "/v1/proposals/3/approve", "").await;
    assert_eq!(approved["state"], "applied", "{approved}");

    // Refusals: a guardrail (an invariant here), an invalid genome, an unknown route.
    let (status, refused) = fixture
        .post(
            "olga",
            "/v1/proposals",
            r#"{"route": "users", "genome": {"retry": {"max_attempts": 2, "retry_non_idempotent": true}}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["error"], "guardrail_refused");
    assert_eq!(
        refused["violations"][0]["gene"], "retry.retry_non_idempotent",
        "{refused}"
    );
    let (status, invalid) = fixture
        .post(
            "olga",
            "/v1/proposals",
            r#"{"route": "users", "genome": {"retry": {"max_attempts": 0}}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{invalid}");
    assert!(
        invalid["detail"]
            .as_str()
            .unwrap()
            .contains("genome.retry.max_attempts"),
        "{invalid}"
    );
    let (status, _) = fixture
        .post(
            "olga",
            "/v1/proposals",
            r#"{"route": "nope", "genome": {}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Nothing refused was stored; the refusal is in the audit chain, which verifies.
    assert_eq!(
        fixture.get("/v1/proposals?route=users").await["proposals"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let audit = fixture.get("/v1/audit").await;
    let refusals: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "guardrail.refused")
        .collect();
    assert_eq!(refusals.len(), 1, "{audit}");
    assert_eq!(refusals[0]["actor"], "olga");
    let created: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "proposal.created")
        .collect();
    assert_eq!(created.last().unwrap()["actor"], "olga");
    assert_eq!(fixture.get("/v1/audit/verify").await["ok"], true);
}

#[tokio::test]
async fn a_proposal_past_its_ttl_is_expired_not_approved() {
    let fixture = Fixture::new();
    let stale = Proposal {
        expires_at: "2020-01-01T00:00:00Z".into(),
        ..sample_proposal("users")
    };
    let id = fixture.store.insert_proposal(&stale).unwrap();
    let (status, body) = fixture
        .post("bob", &format!("/v1/proposals/{id}/approve"), "")
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("expired"),
        "{body}"
    );
    let proposal = fixture.get(&format!("/v1/proposals/{id}")).await;
    assert_eq!(proposal["state"], "expired");
    assert_eq!(proposal["approvals"], Value::Array(Vec::new()));
}
