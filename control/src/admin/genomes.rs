//! Routes and their lineage: `GET /v1/routes`, `GET /v1/routes/{route}/genomes`, and `POST
//! /v1/routes/{route}/rollback` (approver).

use axum::{
    Extension, Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::json;

use super::{AdminState, ApiJson, ApiPath, ApiQuery, MAX_COMMENT_CHARS, error, on_store};
use crate::{auth::Caller, guardian::GuardianError};

#[derive(Debug, Deserialize)]
pub(super) struct LineageQuery {
    limit: Option<u32>,
}

/// The body of a rollback.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RollbackBody {
    /// The generation whose genome goes live again.
    to: u64,
    comment: Option<String>,
}

/// Every route with its live genome, generation and the snapshot version.
pub(super) async fn routes_list(State(state): State<AdminState>) -> Response {
    let snapshot = state.snapshot.load();
    let routes: Vec<_> = snapshot
        .routes()
        .iter()
        .map(|route| {
            json!({
                "name": route.name(),
                "upstream": route.upstream().name(),
                "generation": route.live().generation(),
                "genome": route.policy(),
                "live": super::live::route_live(route),
            })
        })
        .collect();
    Json(json!({ "version": snapshot.version(), "routes": routes })).into_response()
}

/// The route's lineage, newest first.
pub(super) async fn route_genomes(
    State(state): State<AdminState>,
    ApiPath(route): ApiPath<String>,
    ApiQuery(query): ApiQuery<LineageQuery>,
) -> Response {
    let live = state
        .snapshot
        .load()
        .route(&route)
        .map(|r| r.live().generation());
    let limit = super::list_limit(query.limit);
    let guardian = state.guardian.clone();
    let name = route.clone();
    match on_store(&state, move |_| guardian.lineage(&name, limit)).await {
        Ok(genomes) if genomes.is_empty() && live.is_none() => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no route named {route:?}"),
        ),
        Ok(genomes) => {
            Json(json!({ "route": route, "generation": live, "genomes": genomes })).into_response()
        }
        Err(response) => response,
    }
}

/// Makes an earlier generation's genome live again, as a new generation.
pub(super) async fn route_rollback(
    State(state): State<AdminState>,
    Extension(caller): Extension<Caller>,
    ApiPath(route): ApiPath<String>,
    ApiJson(body): ApiJson<RollbackBody>,
) -> Response {
    let comment = body.comment.filter(|c| !c.trim().is_empty());
    if comment
        .as_ref()
        .is_some_and(|c| c.chars().count() > MAX_COMMENT_CHARS)
    {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("comment: at most {MAX_COMMENT_CHARS} characters"),
        );
    }
    let guardian = state.guardian.clone();
    let done = tokio::task::spawn_blocking(move || {
        guardian.rollback(&route, body.to, &caller.name, comment)
    })
    .await;
    match done {
        Ok(Ok(record)) => Json(record).into_response(),
        Ok(Err(e)) => guardian_error(&e),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}

/// A guardian refusal as the API's answer.
pub(super) fn guardian_error(e: &GuardianError) -> Response {
    let status = match e {
        GuardianError::NoSuchRoute(_)
        | GuardianError::NoSuchProposal(_)
        | GuardianError::NoSuchGeneration { .. } => StatusCode::NOT_FOUND,
        GuardianError::AlreadyLive { .. }
        | GuardianError::NotApproved { .. }
        | GuardianError::Expired { .. } => StatusCode::CONFLICT,
        GuardianError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        GuardianError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::CONFLICT => "conflict",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid",
        _ => "store",
    };
    error(status, code, &e.to_string())
}
