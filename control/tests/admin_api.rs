//! The admin router against its OpenAPI document: every documented operation is served, and
//! every endpoint DESIGN §5 names but the document does not list answers 404.
#![allow(clippy::unwrap_used)]

mod support;

use axum::body::Body;
use http::{Method, Request, StatusCode};
use rafael_control::openapi::{OPERATIONS, document};
use support::local_admin_router;
use tower::ServiceExt;

/// Every endpoint of DESIGN §5, as (method, a concrete path).
const DESIGN_ENDPOINTS: &[(&str, &str)] = &[
    ("GET", "/metrics"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/v1/routes"),
    ("GET", "/v1/routes/r/genomes"),
    ("GET", "/v1/routes/r/model"),
    ("GET", "/v1/proposals"),
    ("POST", "/v1/proposals"),
    ("GET", "/v1/proposals/1"),
    ("POST", "/v1/proposals/1/approve"),
    ("POST", "/v1/proposals/1/reject"),
    ("POST", "/v1/evolution/r/run"),
    ("GET", "/v1/evolution/rounds"),
    ("GET", "/v1/evolution/rounds/1"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/audit/verify"),
    ("GET", "/v1/experiments"),
    ("POST", "/v1/experiments"),
    ("GET", "/v1/experiments/1"),
    ("POST", "/v1/experiments/1/stop"),
    ("GET", "/v1/experiments/1/report"),
    ("POST", "/v1/simulate"),
    ("GET", "/v1/vault/patterns"),
    ("GET", "/v1/vault/patterns/adaptive-retry"),
    ("POST", "/v1/vault/patterns"),
    ("GET", "/v1/events"),
];

fn app() -> axum::Router {
    local_admin_router(
        r#"
[[listeners]]
name = "in"
bind = "127.0.0.1:0"
[[upstreams]]
name = "app"
endpoints = ["127.0.0.1:9"]
[[routes]]
name = "r"
listener = "in"
upstream = "app"
"#,
    )
}

/// True when the router has a route for `method` `path` (whatever that route answers).
async fn served(method: &str, path: &str) -> bool {
    let request = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(path)
        .body(Body::empty())
        .unwrap();
    let response = app().oneshot(request).await.unwrap();
    let status = response.status();
    // An event stream never ends: that it is one is the answer.
    if response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
    {
        return true;
    }
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let fallback = String::from_utf8_lossy(&body).contains("no_such_endpoint");
    !(status == StatusCode::METHOD_NOT_ALLOWED || status == StatusCode::NOT_FOUND && fallback)
}

/// `template` (with `{id}` or `{route}` segments) matches the concrete `path`.
fn matches(template: &str, path: &str) -> bool {
    let (t, p): (Vec<_>, Vec<_>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len() && t.iter().zip(&p).all(|(t, p)| t.starts_with('{') || t == p)
}

#[tokio::test]
async fn every_documented_operation_is_served_and_nothing_else_is() {
    for op in OPERATIONS {
        let path = op.path.replace("{id}", "1").replace("{route}", "r");
        assert!(
            served(&op.method.to_uppercase(), &path).await,
            "{} {} is documented but not served",
            op.method,
            op.path
        );
    }
    for (method, path) in DESIGN_ENDPOINTS {
        let documented = OPERATIONS
            .iter()
            .any(|op| op.method.eq_ignore_ascii_case(method) && matches(op.path, path));
        if !documented {
            assert!(
                !served(method, path).await,
                "{method} {path} is served but not in the OpenAPI document"
            );
        }
    }
}

#[tokio::test]
async fn the_document_describes_each_operation_and_its_auth() {
    let response = app()
        .oneshot(
            Request::get("/v1/openapi.json")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let served: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(served, document());
    assert_eq!(served["openapi"], "3.1.0");
    for op in OPERATIONS {
        let operation = &served["paths"][op.path][op.method];
        assert!(operation.is_object(), "{} {}", op.method, op.path);
        assert_eq!(
            operation["security"].is_array(),
            op.permission.is_some(),
            "{}",
            op.path
        );
        if op.permission.is_some() {
            assert!(operation["responses"]["401"].is_object());
            assert!(operation["responses"]["403"].is_object());
        }
    }
}

#[tokio::test]
async fn without_tokens_only_requests_to_this_host_are_served() {
    for (host, expected) in [
        ("localhost:9901", StatusCode::OK),
        ("127.0.0.1:9901", StatusCode::OK),
        ("[::1]:9901", StatusCode::OK),
        ("rebound.attacker.example", StatusCode::FORBIDDEN),
    ] {
        let request = Request::get("/v1/audit")
            .header("host", host)
            .body(Body::empty())
            .unwrap();
        let status = app().oneshot(request).await.unwrap().status();
        assert_eq!(status, expected, "Host: {host}");
    }
}

/// (status, JSON body) of a GET through the router.
async fn get_json(path: &str) -> (StatusCode, serde_json::Value) {
    let response = app()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn a_model_needs_a_known_route_and_enough_telemetry() {
    let (status, body) = get_json("/v1/routes/nope/model").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not_found", "{body}");
    let (status, body) = get_json("/v1/routes/r/model").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        body,
        serde_json::json!({"error": "not enough telemetry", "detail": {"requests": 0, "needed": 2000}})
    );
    let documented = &document()["paths"]["/v1/routes/{route}/model"]["get"]["responses"];
    assert!(documented["404"].is_object() && documented["409"].is_object());
}
