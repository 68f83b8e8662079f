//! The admin listener (axum): `/metrics`, `/healthz`, `/readyz`.
//!
//! It binds its own address, separate from traffic listeners, so scraping and probes never
//! compete with (or get routed like) proxied requests.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use metrics_exporter_prometheus::PrometheusHandle;
use rafael_proxy::SnapshotHandle;
use serde_json::json;

/// What the admin handlers read.
#[derive(Clone, Debug)]
pub struct AdminState {
    /// Renders the Prometheus text.
    pub metrics: Option<PrometheusHandle>,
    /// True once every listener is bound and serving; false again while draining.
    pub ready: Arc<AtomicBool>,
    /// The live snapshot, for its version.
    pub snapshot: SnapshotHandle,
}

/// The admin API's routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(state)
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut text = state
        .metrics
        .as_ref()
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    rafael_proxy::histogram::render(&mut text);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let version = state.snapshot.load().version();
    if state.ready.load(Ordering::Acquire) {
        (
            StatusCode::OK,
            Json(json!({"status": "ready", "policy_version": version})),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "policy_version": version})),
        )
    }
}

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "not_found", "detail": "no such admin endpoint"})),
    )
}
