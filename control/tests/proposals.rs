//! Proposals and evolution rounds over the admin API: records put in a real store file with
//! the store's own functions, read back through the router with their filters, 404s and 400s.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use axum::body::Body;
use http::{Request, StatusCode};
use rafael_control::{
    guardian::proposal::{Proposal, ProposalState},
    openapi::document,
    store::Store,
};
use serde_json::Value;
use support::{admin_router_over, sample_proposal, sample_round};
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
"#;

/// A store file in a temp dir holding: rounds 1 (orders), 2 (users), 3 (orders, which made
/// proposal 3); proposals 1 (orders, superseded by 3), 2 (users, pending), 3 (orders, pending).
struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("rafael.db")).unwrap());
        for route in ["orders", "users", "orders"] {
            store.insert_round(&sample_round(route)).unwrap();
        }
        for route in ["orders", "users", "orders"] {
            let proposal = Proposal {
                round_id: Some(3),
                ..sample_proposal(route)
            };
            store.insert_proposal(&proposal).unwrap();
        }
        let mut round = store.round(3).unwrap().unwrap();
        round.proposal_id = Some(3);
        store.update_round(&round).unwrap();
        assert_eq!(store.supersede_pending("orders", 3).unwrap(), [1]);
        Self { _dir: dir, store }
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let router = admin_router_over(CONFIG, self.store.clone());
        let response = router
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    /// The ids a list answered, in its order.
    async fn ids(&self, path: &str, key: &str) -> Vec<i64> {
        let (status, body) = self.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        body[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_i64().unwrap())
            .collect()
    }
}

#[tokio::test]
async fn proposals_are_listed_newest_first_and_filtered_by_state_and_route() {
    let fixture = Fixture::new();
    let ids = |path: &'static str| fixture.ids(path, "proposals");
    assert_eq!(ids("/v1/proposals").await, [3, 2, 1]);
    assert_eq!(ids("/v1/proposals?state=pending").await, [3, 2]);
    assert_eq!(ids("/v1/proposals?route=orders").await, [3, 1]);
    assert_eq!(ids("/v1/proposals?state=pending&route=orders").await, [3]);
    assert_eq!(ids("/v1/proposals?state=superseded").await, [1]);
    assert_eq!(ids("/v1/proposals?state=kept").await, Vec::<i64>::new());
    assert_eq!(ids("/v1/proposals?limit=2").await, [3, 2]);
    // A blank field filters nothing.
    assert_eq!(ids("/v1/proposals?state=&route=").await, [3, 2, 1]);
}

#[tokio::test]
async fn a_proposal_is_answered_whole_and_an_unknown_one_is_404() {
    let fixture = Fixture::new();
    let (status, body) = fixture.get("/v1/proposals/3").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let expected = Proposal {
        id: 3,
        round_id: Some(3),
        ..sample_proposal("orders")
    };
    assert_eq!(
        serde_json::from_value::<Proposal>(body.clone()).unwrap(),
        expected
    );
    assert_eq!(
        body["diff"],
        serde_json::json!([{"gene": "retry.max_attempts", "from": 3, "to": 2}])
    );
    assert_eq!(body["guardrails"], "passed");
    assert_eq!(body["state"], ProposalState::Pending.as_str());

    let (status, body) = fixture.get("/v1/proposals/99").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not_found");
    assert!(body["detail"].as_str().unwrap().contains("99"), "{body}");
    let (status, body) = fixture.get("/v1/proposals/abc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn an_unknown_state_is_a_400_that_names_it_and_the_known_ones() {
    let fixture = Fixture::new();
    let (status, body) = fixture.get("/v1/proposals?state=approvd").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "bad_request");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("\"approvd\""), "{detail}");
    assert!(
        detail.contains("approved") && detail.contains("rolled_back"),
        "{detail}"
    );
    let (status, _) = fixture.get("/v1/proposals?limit=many").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn rounds_are_listed_newest_first_by_route_and_read_one_by_one() {
    let fixture = Fixture::new();
    let ids = |path: &'static str| fixture.ids(path, "rounds");
    assert_eq!(ids("/v1/evolution/rounds").await, [3, 2, 1]);
    assert_eq!(ids("/v1/evolution/rounds?route=orders").await, [3, 1]);
    assert_eq!(
        ids("/v1/evolution/rounds?route=nope").await,
        Vec::<i64>::new()
    );
    assert_eq!(ids("/v1/evolution/rounds?limit=1").await, [3]);

    let (status, body) = fixture.get("/v1/evolution/rounds/3").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["proposal_id"], 3);
    assert_eq!(body["result"], "proposed");
    assert_eq!(body["evaluations"], 240);
    let (status, body) = fixture.get("/v1/evolution/rounds/99").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not_found");
}

#[test]
fn the_document_names_the_filters_and_the_404s() {
    let paths = &document()["paths"];
    let list = &paths["/v1/proposals"]["get"];
    let names: Vec<&str> = list["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["state", "route", "limit"]);
    assert!(list["responses"]["400"].is_object());
    let states = &document()["components"]["schemas"]["ProposalState"]["enum"];
    assert_eq!(states.as_array().unwrap().len(), ProposalState::ALL.len());
    for path in ["/v1/proposals/{id}", "/v1/evolution/rounds/{id}"] {
        assert!(paths[path]["get"]["responses"]["404"].is_object(), "{path}");
    }
}
