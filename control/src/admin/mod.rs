//! The admin listener (axum): `/metrics`, `/healthz`, `/readyz`, and the `/v1` API.
//!
//! It binds its own address, separate from traffic listeners, so scraping and probes never
//! compete with (or get routed like) proxied requests. `/metrics` and the probes are open (the
//! kubelet and Prometheus carry no tokens); every `/v1` endpoint needs a bearer token whose role
//! covers it (DESIGN §5): 401 without a valid token, 403 for a role that may not.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Extension, Json, Router,
    extract::{
        DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State,
        rejection::{JsonRejection, PathRejection, QueryRejection},
    },
    http::{StatusCode, header, request::Parts},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use metrics_exporter_prometheus::PrometheusHandle;
use rafael_proxy::SnapshotHandle;
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::json;

mod dashboard;
mod genomes;
mod live;
mod vault;

use crate::{
    audit::{AuditLog, action as audit_action},
    auth::{Auth, Caller, Permission},
    chaos::{Chaos, ChaosError, ExperimentSpec},
    evolution::{
        model::{FitError, fit_route},
        round::{Evolution, ProposeError, RoundError},
        simulate::SimulateRequest,
    },
    guardian::{
        approval::{Decision, Refusal, decide},
        expiry::{expire, expiry},
        proposal::ProposalState,
    },
    store::{Store, StoreError},
};

/// Largest request body the admin API reads (1 MiB, nginx's `client_max_body_size` default):
/// an experiment spec is a few KiB; anything near this is a mistake or an attack.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the admin handlers read.
#[derive(Clone, Debug)]
pub struct AdminState {
    /// Renders the Prometheus text.
    pub metrics: Option<PrometheusHandle>,
    /// True once every listener is bound and serving; false again while draining.
    pub ready: Arc<AtomicBool>,
    /// The live snapshot, for its version.
    pub snapshot: SnapshotHandle,
    /// Who may call `/v1`.
    pub auth: Arc<Auth>,
    /// The audit log.
    pub audit: AuditLog,
    /// Live experiments.
    pub chaos: Chaos,
    /// The store, whose health `/readyz` reports.
    pub store: Arc<Store>,
    /// Evolution rounds.
    pub evolution: Evolution,
    /// Applies approved proposals, rolls back, keeps the lineage.
    pub guardian: crate::guardian::Guardian,
}

/// [`Query`], whose rejection is the API's JSON error.
#[derive(Debug)]
struct ApiQuery<T>(T);

/// [`Path`], whose rejection is the API's JSON error.
#[derive(Debug)]
struct ApiPath<T>(T);

/// [`Json`], whose rejection is the API's JSON error (413 for a body over [`MAX_BODY_BYTES`]).
#[derive(Debug)]
struct ApiJson<T>(T);

#[derive(Debug, Deserialize)]
struct AuditQuery {
    #[serde(default)]
    after: i64,
    limit: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct ProposalQuery {
    state: Option<String>,
    route: Option<String>,
    limit: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct RoundQuery {
    route: Option<String>,
    limit: Option<u32>,
}

/// Most records one list answers when the query names no `limit` (and when it names more
/// than [`MAX_LIST`]).
const DEFAULT_LIST: u32 = 100;

/// The largest `limit` a list honours: a page of a thousand proposals is a few MiB of JSON.
const MAX_LIST: u32 = 1000;

/// The admin API's routes.
pub fn router(state: AdminState) -> Router {
    let read = Router::new()
        .route("/v1/audit", get(audit_list))
        .route("/v1/audit/verify", get(audit_verify))
        .route("/v1/experiments", get(experiments_list))
        .route("/v1/experiments/{id}", get(experiment_get))
        .route("/v1/experiments/{id}/report", get(experiment_report))
        .route("/v1/routes", get(genomes::routes_list))
        .route("/v1/routes/{route}/model", get(route_model))
        .route("/v1/routes/{route}/genomes", get(genomes::route_genomes))
        .route("/v1/routes/{route}/series", get(live::route_series))
        .route("/v1/events", get(live::events))
        .route("/v1/threats", get(live::threats))
        .route("/v1/vault/patterns", get(vault::patterns))
        .route("/v1/vault/patterns/{name}", get(vault::pattern))
        .route("/v1/proposals", get(proposals_list))
        .route("/v1/proposals/{id}", get(proposal_get))
        .route("/v1/evolution/rounds", get(rounds_list))
        .route("/v1/evolution/rounds/{id}", get(round_get))
        .route_layer(middleware::from_fn_with_state(
            (state.clone(), Permission::Read),
            authorize,
        ));
    let operate = Router::new()
        .route("/v1/experiments", post(experiment_start))
        .route("/v1/experiments/{id}/stop", post(experiment_stop))
        .route("/v1/evolution/{route}/run", post(evolution_run))
        .route("/v1/simulate", post(simulate))
        .route("/v1/proposals", post(proposal_create))
        .route_layer(middleware::from_fn_with_state(
            (state.clone(), Permission::Operate),
            authorize,
        ));
    let approve = Router::new()
        .route("/v1/proposals/{id}/approve", post(proposal_approve))
        .route("/v1/proposals/{id}/reject", post(proposal_reject))
        .route("/v1/routes/{route}/rollback", post(genomes::route_rollback))
        .route("/v1/vault/patterns", post(vault::save))
        .route_layer(middleware::from_fn_with_state(
            (state.clone(), Permission::Approve),
            authorize,
        ));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/openapi.json", get(openapi))
        .route("/", get(dashboard::index))
        .route("/assets/{file}", get(dashboard::asset))
        .merge(read)
        .merge(operate)
        .merge(approve)
        .fallback(not_found)
        .layer(middleware::from_fn(refuse_declared_oversize))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Answers 413 at once for a body declared larger than [`MAX_BODY_BYTES`], before any of it
/// is read; a body that does not declare its length is cut off by [`DefaultBodyLimit`].
async fn refuse_declared_oversize(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > MAX_BODY_BYTES as u64 => too_large(),
        _ => next.run(request).await,
    }
}

fn too_large() -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        &format!("the admin API reads request bodies of at most {MAX_BODY_BYTES} bytes"),
    )
}

/// An extractor's rejection as the API's JSON error, with the rejection's own status.
fn rejected(status: StatusCode, detail: &str) -> Response {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => too_large(),
        status if status.is_client_error() => error(status, "bad_request", detail),
        status => error(status, "internal", detail),
    }
}

/// Lets the request through when its token's role covers `permission`; the caller goes into
/// the request's extensions for handlers (and the audit actor).
async fn authorize(
    State((state, permission)): State<(AdminState, Permission)>,
    mut request: Request,
    next: Next,
) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if matches!(*state.auth, Auth::Local) && !local_host(&request) {
        // Without tokens every caller is admin, which is only safe for callers on this host:
        // a browser led here by a DNS-rebinding page sends a foreign Host, and is refused.
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "without a tokens file only requests to localhost, 127.0.0.1 or [::1] are served",
        );
    }
    let Some(caller) = state.auth.authenticate(header) else {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return response;
    };
    if !caller.role.may(permission) {
        let detail = format!("role {:?} may not {permission:?}", caller.role).to_lowercase();
        return error(StatusCode::FORBIDDEN, "forbidden", &detail);
    }
    request.extensions_mut().insert::<Caller>(caller);
    next.run(request).await
}

/// True when the request names this host wherever it names one: every `Host` header, and
/// the URI's authority (an absolute-form target `GET http://host/...`, or HTTP/2's
/// `:authority`). A request that names no host at all (HTTP/1.0) can only come from a client
/// that is not a browser, which a DNS-rebinding page needs.
fn local_host(request: &Request) -> bool {
    let headers_local = request
        .headers()
        .get_all(header::HOST)
        .iter()
        .all(|host| host.to_str().is_ok_and(loopback_name));
    let authority_local = request
        .uri()
        .authority()
        .is_none_or(|authority| loopback_name(authority.host()));
    headers_local && authority_local
}

/// True when `host` (`name`, `name:port`, `[v6]` or `[v6]:port`) is `localhost` or a loopback
/// address.
fn loopback_name(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn audit_list(
    State(state): State<AdminState>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Response {
    let limit = query.limit.unwrap_or(100).min(1000);
    let audit = state.audit.clone();
    match tokio::task::spawn_blocking(move || audit.list(query.after, limit)).await {
        Ok(Ok(entries)) => Json(json!({ "entries": entries })).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", &e.to_string()),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}

async fn audit_verify(State(state): State<AdminState>) -> Response {
    let audit = state.audit.clone();
    match tokio::task::spawn_blocking(move || audit.verify()).await {
        Ok(Ok(verification)) => Json(verification).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", &e.to_string()),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}

async fn experiment_start(
    State(state): State<AdminState>,
    Extension(caller): Extension<Caller>,
    ApiJson(spec): ApiJson<ExperimentSpec>,
) -> Response {
    let chaos = state.chaos.clone();
    match blocking(move || chaos.start(spec, &caller.name)).await {
        Ok(experiment) => (StatusCode::CREATED, Json(experiment)).into_response(),
        Err(e) => chaos_error(&e),
    }
}

/// `POST /v1/evolution/{route}/run`: starts a round and answers 202 with it (already
/// `skipped`, with its reason, when the route cannot evolve now). The body is optional:
/// `{"seed": N}` fixes the round's seed (default 1), so a round can be repeated exactly.
async fn evolution_run(
    State(state): State<AdminState>,
    ApiPath(route): ApiPath<String>,
    body: axum::body::Bytes,
) -> Response {
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RunRequest {
        seed: Option<u64>,
    }
    let seed = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice::<RunRequest>(&body) {
            Ok(request) => request.seed,
            Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
        }
    };
    let evolution = state.evolution.clone();
    let started = tokio::task::spawn_blocking(move || evolution.start(&route, seed)).await;
    match started {
        Ok(Ok(round)) => (StatusCode::ACCEPTED, Json(round)).into_response(),
        Ok(Err(e @ RoundError::NoSuchRoute(_))) => {
            error(StatusCode::NOT_FOUND, "not_found", &e.to_string())
        }
        Ok(Err(e @ RoundError::Busy(_))) => error(StatusCode::CONFLICT, "busy", &e.to_string()),
        Ok(Err(e @ RoundError::Store(_))) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, "store", &e.to_string())
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}

/// `POST /v1/simulate`: the route's live genome and the request's candidates under the
/// request's scenarios, on the route's model fitted now (DESIGN §7.2).
async fn simulate(
    State(state): State<AdminState>,
    ApiJson(request): ApiJson<SimulateRequest>,
) -> Response {
    if let Err(e) = request.validate() {
        return error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string());
    }
    let snapshots = state.snapshot.clone();
    // Simulation is CPU work: on a low-priority thread, as rounds are, not the blocking pool.
    let answer = crate::evolution::low_priority("rafael-simulate", move || {
        let snapshot = snapshots.load();
        let config = snapshot.config().clone();
        let incumbent = snapshot
            .route(&request.route)
            .map(|route| route.policy().clone())
            .ok_or_else(|| FitError::NoSuchRoute(request.route.clone()))?;
        let model = fit_route(&snapshots, &request.route)?;
        Ok::<_, FitError>(crate::evolution::simulate::simulate(
            &request, model, &incumbent, &config,
        ))
    })
    .await;
    match answer {
        Some(Ok(Ok(answer))) => Json(answer).into_response(),
        Some(Ok(Err(e))) => error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
        Some(Err(e)) => fit_error(&e),
        None => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the simulation thread failed",
        ),
    }
}

/// A model that could not be fitted: 404 for an unknown route, 409 for too little telemetry.
fn fit_error(e: &FitError) -> Response {
    match e {
        FitError::NoSuchRoute(_) => error(StatusCode::NOT_FOUND, "not_found", &e.to_string()),
        FitError::NotEnoughTelemetry { requests, needed } => (
            StatusCode::CONFLICT,
            Json(json!({
                "error": "not enough telemetry",
                "detail": { "requests": requests, "needed": needed }
            })),
        )
            .into_response(),
    }
}

async fn experiment_stop(
    State(state): State<AdminState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<i64>,
) -> Response {
    let chaos = state.chaos.clone();
    match blocking(move || chaos.stop(id, &caller.name)).await {
        Ok(experiment) => Json(experiment).into_response(),
        Err(e) => chaos_error(&e),
    }
}

async fn experiments_list(State(state): State<AdminState>) -> Response {
    let chaos = state.chaos.clone();
    match blocking(move || chaos.list()).await {
        Ok(experiments) => Json(json!({ "experiments": experiments })).into_response(),
        Err(e) => chaos_error(&e),
    }
}

async fn experiment_get(State(state): State<AdminState>, ApiPath(id): ApiPath<i64>) -> Response {
    let chaos = state.chaos.clone();
    match blocking(move || chaos.get(id)).await {
        Ok(experiment) => Json(experiment).into_response(),
        Err(e) => chaos_error(&e),
    }
}

async fn experiment_report(State(state): State<AdminState>, ApiPath(id): ApiPath<i64>) -> Response {
    let chaos = state.chaos.clone();
    match blocking(move || chaos.report(id)).await {
        Ok(Some(report)) => Json(report).into_response(),
        Ok(None) => error(
            StatusCode::CONFLICT,
            "not_ready",
            "the experiment has no report yet: it is running, or watching the recovery",
        ),
        Err(e) => chaos_error(&e),
    }
}

async fn proposals_list(
    State(state): State<AdminState>,
    ApiQuery(query): ApiQuery<ProposalQuery>,
) -> Response {
    // An empty parameter (a form's blank field) filters nothing rather than everything.
    let named = |value: Option<String>| value.filter(|v| !v.is_empty());
    let (state_name, route) = (named(query.state), named(query.route));
    let filter = match state_name
        .as_deref()
        .map(|name| (name, ProposalState::parse(name)))
    {
        None => None,
        Some((_, Some(known))) => Some(known),
        Some((name, None)) => {
            let known: Vec<&str> = ProposalState::ALL.iter().map(|s| s.as_str()).collect();
            let detail = format!("unknown state {name:?}; one of {}", known.join(", "));
            return error(StatusCode::BAD_REQUEST, "bad_request", &detail);
        }
    };
    let limit = list_limit(query.limit);
    let listed = on_store(&state, move |store| {
        store.proposals(filter, route.as_deref(), limit)
    })
    .await;
    match listed {
        Ok(proposals) => Json(json!({ "proposals": proposals })).into_response(),
        Err(response) => response,
    }
}

async fn proposal_get(State(state): State<AdminState>, ApiPath(id): ApiPath<i64>) -> Response {
    match on_store(&state, move |store| store.proposal(id)).await {
        Ok(Some(proposal)) => Json(proposal).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no proposal {id}"),
        ),
        Err(response) => response,
    }
}

/// The body of `POST /v1/proposals`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HandWritten {
    route: String,
    genome: rafael_config::Genome,
}

/// A hand-written proposal: validated (400 with key paths), checked against the guardrails
/// (422 naming each gene and rule, audited), given evolution's simulated evidence, stored
/// `pending` (201).
async fn proposal_create(
    State(state): State<AdminState>,
    Extension(caller): Extension<Caller>,
    ApiJson(request): ApiJson<HandWritten>,
) -> Response {
    let mut errors = rafael_config::ConfigErrors::default();
    request.genome.validate("genome", &mut errors);
    if !errors.is_empty() {
        let detail: Vec<String> = errors.iter().map(ToString::to_string).collect();
        return error(StatusCode::BAD_REQUEST, "bad_request", &detail.join("; "));
    }
    let evolution = state.evolution.clone();
    let answer = crate::evolution::low_priority("rafael-propose", move || {
        evolution.propose_by_hand(&request.route, request.genome, &caller.name)
    })
    .await;
    match answer {
        Some(Ok(proposal)) => (StatusCode::CREATED, Json(proposal)).into_response(),
        Some(Err(e @ ProposeError::NoSuchRoute(_))) => {
            error(StatusCode::NOT_FOUND, "not_found", &e.to_string())
        }
        Some(Err(e @ ProposeError::Unchanged(_))) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unchanged",
            &e.to_string(),
        ),
        Some(Err(ProposeError::Refused(violations))) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({
                "error": "guardrail_refused",
                "detail": ProposeError::Refused(violations.clone()).to_string(),
                "violations": violations,
            })),
        )
            .into_response(),
        Some(Err(ProposeError::Store(e))) => {
            tracing::error!("admin API: {e}");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                &e.to_string(),
            )
        }
        None => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the proposal thread failed",
        ),
    }
}

async fn proposal_approve(
    State(state): State<AdminState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<i64>,
    body: axum::body::Bytes,
) -> Response {
    proposal_decide(state, caller, id, Decision::Approve, &body).await
}

async fn proposal_reject(
    State(state): State<AdminState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<i64>,
    body: axum::body::Bytes,
) -> Response {
    proposal_decide(state, caller, id, Decision::Reject, &body).await
}

/// The body of an approve or reject: an optional comment (an empty body has none).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    comment: Option<String>,
}

/// Most characters of a decision's comment.
pub(crate) const MAX_COMMENT_CHARS: usize = 2000;

/// Records `caller`'s `decision` on proposal `id`: stored, audited and counted, answered with
/// the proposal. One decision at a time, so two approvers at once both count.
async fn proposal_decide(
    state: AdminState,
    caller: Caller,
    id: i64,
    decision: Decision,
    body: &[u8],
) -> Response {
    static DECISIONS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let parsed: Result<DecisionBody, _> = if body.iter().all(u8::is_ascii_whitespace) {
        Ok(DecisionBody::default())
    } else {
        serde_json::from_slice(body)
    };
    let comment = match parsed {
        Ok(body) => body.comment.filter(|c| !c.trim().is_empty()),
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
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
    let required = state.snapshot.load().config().guardian.approvals_required;
    let audit = state.audit.clone();
    let snapshots = state.snapshot.clone();
    let actor = caller.name.clone();
    let outcome = on_store(&state, move |store| {
        let _one_at_a_time = DECISIONS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(mut proposal) = store.proposal(id)? else {
            return Ok(Err(None));
        };
        // One that expired since the last sweep is expired now, and no longer decided on.
        let live = snapshots
            .load()
            .route(&proposal.route)
            .map(|route| route.live().generation());
        if let Some(why) = expiry(&proposal, std::time::SystemTime::now(), live) {
            expire(store, &audit, &mut proposal, why)?;
        }
        let at = crate::store::now();
        let before = proposal.state;
        let decided = match decide(
            &mut proposal,
            &caller.name,
            decision,
            comment.clone(),
            at,
            required,
        ) {
            Ok(decided) => decided,
            Err(refusal) => return Ok(Err(Some(refusal))),
        };
        if decided.counted {
            store.update_proposal(&proposal)?;
            // Each approval is audited, the ones short of `required` too (their `state`
            // says `pending`).
            let action = match decision {
                Decision::Approve => audit_action::PROPOSAL_APPROVED,
                Decision::Reject => audit_action::PROPOSAL_REJECTED,
            };
            audit.append(
                &caller.name,
                action,
                &format!("proposal/{id}"),
                json!({
                    "route": proposal.route,
                    "decision": decision.as_str(),
                    "comment": comment,
                    "approvals": decided.approvals,
                    "required": decided.required,
                    "state": decided.state.as_str(),
                }),
            )?;
            if decided.state != before {
                crate::guardian::metrics::proposal_entered(Some(before), decided.state);
            }
        }
        let approved = proposal.state == ProposalState::Approved && before != proposal.state;
        Ok(Ok((proposal, approved)))
    })
    .await;
    match outcome {
        // The decision that approved it applies it (its canary first, when one is set).
        Ok(Ok((proposal, true))) => {
            let guardian = state.guardian.clone();
            match tokio::task::spawn_blocking(move || guardian.approved(proposal.id, &actor)).await
            {
                Ok(Ok(applied)) => Json(applied).into_response(),
                Ok(Err(e)) => genomes::guardian_error(&e),
                Err(e) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    &e.to_string(),
                ),
            }
        }
        Ok(Ok((proposal, false))) => Json(proposal).into_response(),
        Ok(Err(None)) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no proposal {id}"),
        ),
        Ok(Err(Some(refusal @ Refusal::Author { .. }))) => {
            error(StatusCode::FORBIDDEN, "forbidden", &refusal.to_string())
        }
        Ok(Err(Some(refusal @ Refusal::NotPending { .. }))) => {
            error(StatusCode::CONFLICT, "conflict", &refusal.to_string())
        }
        Err(response) => response,
    }
}

async fn rounds_list(
    State(state): State<AdminState>,
    ApiQuery(query): ApiQuery<RoundQuery>,
) -> Response {
    let limit = list_limit(query.limit);
    let route = query.route.filter(|r| !r.is_empty());
    match on_store(&state, move |store| store.rounds(route.as_deref(), limit)).await {
        Ok(rounds) => Json(json!({ "rounds": rounds })).into_response(),
        Err(response) => response,
    }
}

async fn round_get(State(state): State<AdminState>, ApiPath(id): ApiPath<i64>) -> Response {
    match on_store(&state, move |store| store.round(id)).await {
        Ok(Some(round)) => Json(round).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no evolution round {id}"),
        ),
        Err(response) => response,
    }
}

/// The `limit` a list query asks for, within [`MAX_LIST`].
fn list_limit(asked: Option<u32>) -> u32 {
    asked.unwrap_or(DEFAULT_LIST).min(MAX_LIST)
}

/// Runs `work` on the store on the blocking pool (SQLite is synchronous, and the admin API
/// shares its runtime with the proxy); a failure is the API's 500, logged.
async fn on_store<T: Send + 'static>(
    state: &AdminState,
    work: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Response> {
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || work(&store)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => {
            tracing::error!("admin API: {e}");
            Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store",
                &e.to_string(),
            ))
        }
        Err(e) => {
            tracing::error!("admin API: a store task failed: {e}");
            Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                &e.to_string(),
            ))
        }
    }
}

/// The route's model, fitted now from its telemetry and checked by simulation, off the async
/// workers the proxy shares (the fit sorts thousands of samples, the check simulates the
/// window).
async fn route_model(State(state): State<AdminState>, ApiPath(route): ApiPath<String>) -> Response {
    let snapshots = state.snapshot.clone();
    let fitted =
        crate::evolution::low_priority("rafael-model", move || fit_route(&snapshots, &route)).await;
    match fitted {
        Some(Ok(model)) => Json(model).into_response(),
        Some(Err(e)) => fit_error(&e),
        None => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the model thread failed",
        ),
    }
}

/// Runs store work on the blocking pool: SQLite is synchronous, and the admin API shares its
/// runtime with the proxy.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ChaosError> + Send + 'static,
) -> Result<T, ChaosError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(ChaosError::Invalid(format!("internal: {e}"))))
}

fn chaos_error(e: &ChaosError) -> Response {
    match e {
        ChaosError::Invalid(detail) => error(StatusCode::BAD_REQUEST, "bad_request", detail),
        ChaosError::NotFound(_) => error(StatusCode::NOT_FOUND, "not_found", &e.to_string()),
        ChaosError::Store(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", &e.to_string()),
    }
}

fn error(status: StatusCode, code: &str, detail: &str) -> Response {
    (status, Json(json!({ "error": code, "detail": detail }))).into_response()
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

async fn openapi() -> impl IntoResponse {
    Json(crate::openapi::document())
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// 200 when rafael serves and its store is usable; 503 with the reason otherwise (starting,
/// draining, a store that failed its integrity check at start, or one deleted while running).
async fn readyz(State(state): State<AdminState>) -> Response {
    let version = state.snapshot.load().version();
    let not_ready = |reason: &str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "reason": reason, "policy_version": version})),
        )
            .into_response()
    };
    if !state.ready.load(Ordering::Acquire) {
        return not_ready("starting, or draining for shutdown");
    }
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.health()).await {
        Ok(Ok(())) => (
            StatusCode::OK,
            Json(json!({"status": "ready", "policy_version": version})),
        )
            .into_response(),
        Ok(Err(e)) => not_ready(&e.to_string()),
        Err(e) => not_ready(&format!("internal: {e}")),
    }
}

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "no_such_endpoint", "detail": "no such admin endpoint"})),
    )
}

// === impl ApiQuery, ApiPath, ApiJson ===

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| Self(value))
            .map_err(|rejection: QueryRejection| {
                rejected(rejection.status(), &rejection.body_text())
            })
    }
}

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| Self(value))
            .map_err(|rejection: PathRejection| {
                rejected(rejection.status(), &rejection.body_text())
            })
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        Json::<T>::from_request(request, state)
            .await
            .map(|Json(value)| Self(value))
            .map_err(|rejection: JsonRejection| {
                // axum answers 422 for JSON of the wrong shape; the API answers 400 for every
                // invalid spec, whether serde or its own checks find the problem.
                let status = match rejection.status() {
                    StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
                    status => status,
                };
                rejected(status, &rejection.body_text())
            })
    }
}
