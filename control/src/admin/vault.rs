//! The vault over the API: `GET /v1/vault/patterns[?q=&category=&tag=&stack=]`, `GET
//! /v1/vault/patterns/{name}` and `POST /v1/vault/patterns` (approver: save a genome, given
//! or from a route's lineage, as a pattern).

use axum::{
    Extension, Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use rafael_config::Genome;
use serde::Deserialize;
use serde_json::json;

use super::{AdminState, ApiJson, ApiPath, ApiQuery, Caller, error};
use crate::{
    audit::action,
    vault::{self, CATEGORIES, Pattern, Query, SaveError},
};

/// The patterns a query matches: built-in ones first, then the stored ones, newest first.
pub(super) async fn patterns(
    State(state): State<AdminState>,
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
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || vault::all(&store)).await {
        Ok(Ok(all)) => {
            let found = vault::search(&all, &query);
            Json(json!({ "patterns": found })).into_response()
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", &e.to_string()),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}

/// One pattern.
pub(super) async fn pattern(
    State(state): State<AdminState>,
    ApiPath(name): ApiPath<String>,
) -> Response {
    let store = state.store.clone();
    let wanted = name.clone();
    match tokio::task::spawn_blocking(move || vault::find(&store, &wanted)).await {
        Ok(Ok(Some(pattern))) => Json(pattern).into_response(),
        Ok(Ok(None)) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no pattern named {name:?}"),
        ),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", &e.to_string()),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}

/// A pattern to save: a genome, or the generation of a route's lineage to take it from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewPattern {
    name: String,
    description: String,
    /// Derived from the genome's sections when not given.
    category: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    /// `["any"]` when not given.
    #[serde(default)]
    stacks: Vec<String>,
    genome: Option<Genome>,
    from: Option<Generation>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Generation {
    route: String,
    generation: u64,
}

/// Saves a pattern (201 with it): 400 for a body that names both or neither of `genome` and
/// `from`, 404 for a generation the lineage lacks, 422 with every finding for an invalid
/// pattern, 409 for a name taken. Audited `vault.saved`.
pub(super) async fn save(
    State(state): State<AdminState>,
    Extension(caller): Extension<Caller>,
    ApiJson(request): ApiJson<NewPattern>,
) -> Response {
    let store = state.store.clone();
    let audit = state.audit.clone();
    let actor = caller.name.clone();
    let saved = tokio::task::spawn_blocking(move || -> Result<Pattern, Box<Response>> {
        let (genome, learned_from) = match (request.genome, request.from) {
            (Some(genome), None) => (genome, None),
            (None, Some(from)) => {
                let record = store
                    .genome_at(&from.route, from.generation)
                    .map_err(|e| Box::new(error(StatusCode::INTERNAL_SERVER_ERROR, "store", &e.to_string())))?
                    .ok_or_else(|| {
                        Box::new(error(
                            StatusCode::NOT_FOUND,
                            "not_found",
                            &format!(
                                "route {:?} has no generation {}",
                                from.route, from.generation
                            ),
                        ))
                    })?;
                let from = json!({
                    "route": from.route,
                    "generation": from.generation,
                    "model": null,
                });
                (record.genome, Some(from))
            }
            _ => {
                return Err(Box::new(error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "give the pattern's genome, or `from` {\"route\", \"generation\"} to take it from a route's lineage, not both",
                )));
            }
        };
        let pattern = Pattern {
            category: request
                .category
                .unwrap_or_else(|| vault::category_of(&genome).to_owned()),
            name: request.name,
            tags: request.tags,
            stacks: if request.stacks.is_empty() {
                vec!["any".to_owned()]
            } else {
                request.stacks
            },
            description: request.description,
            genome,
            source: "learned".to_owned(),
            learned_from,
            created_at: Some(
                crate::store::now(),
            ),
            author: Some(actor.clone()),
        };
        match vault::save(&store, &pattern) {
            Ok(()) => {}
            Err(SaveError::Invalid(errors)) => {
                let detail: Vec<String> = errors.iter().map(ToString::to_string).collect();
                return Err(Box::new(error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid",
                    &detail.join("; "),
                )));
            }
            Err(e @ SaveError::Taken(_)) => {
                return Err(Box::new(error(StatusCode::CONFLICT, "conflict", &e.to_string())));
            }
            Err(SaveError::Store(e)) => {
                return Err(Box::new(error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "store",
                    &e.to_string(),
                )));
            }
        }
        audit
            .append(
                &actor,
                action::VAULT_SAVED,
                &format!("pattern/{}", pattern.name),
                json!({
                    "source": pattern.source,
                    "learned_from": pattern.learned_from,
                    "genome": pattern.genome,
                }),
            )
            .map_err(|e| Box::new(error(StatusCode::INTERNAL_SERVER_ERROR, "audit", &e.to_string())))?;
        Ok(pattern)
    })
    .await;
    match saved {
        Ok(Ok(pattern)) => (StatusCode::CREATED, Json(pattern)).into_response(),
        Ok(Err(response)) => *response,
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}
