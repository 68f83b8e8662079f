//! The vault over the API: `GET /v1/vault/patterns[?q=&category=&tag=&stack=]` and `GET
//! /v1/vault/patterns/{name}`.

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::{AdminState, ApiPath, ApiQuery, error};
use crate::vault::{self, CATEGORIES, Query};

/// The patterns a query matches, built-in ones first.
pub(super) async fn patterns(
    State(_state): State<AdminState>,
    ApiQuery(query): ApiQuery<Query>,
) -> Response {
    if let Some(category) = &query.category
        && !CATEGORIES.contains(&category.as_str())
    {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!(
                "category: {category:?} is none of {}",
                CATEGORIES.join(", ")
            ),
        );
    }
    let found = vault::search(vault::catalogue(), &query);
    Json(json!({ "patterns": found })).into_response()
}

/// One pattern.
pub(super) async fn pattern(
    State(_state): State<AdminState>,
    ApiPath(name): ApiPath<String>,
) -> Response {
    match vault::builtin_pattern(&name) {
        Some(pattern) => Json(pattern).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no pattern named {name:?}"),
        ),
    }
}
