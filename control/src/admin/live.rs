//! What the dashboard watches (DESIGN §9): every route's figures now (`live` in `GET
//! /v1/routes`), a route's per-second series for its charts (`GET
//! /v1/routes/{route}/series?secs=N`), and `GET /v1/events`, server-sent events:
//!
//! - `routes` every second: the figures of every route (as in `GET /v1/routes`);
//! - `breaker` when an endpoint's breaker changes state: `{route, endpoint, from, to}`;
//! - one event per new audit entry, named by its action's family (`proposal`, `genome`,
//!   `canary`, `experiment`, `guardrail`, `evolution`, `vault`, `config`), the entry as data:
//!   proposals, swaps, rollbacks and experiments are all audited, so the audit log is their
//!   one source.
//!
//! Each client's stream reads the snapshot and the audit log itself once a second: nothing on
//! the request path knows a dashboard is open, and a slow client only slows its own stream.

use std::{collections::BTreeMap, convert::Infallible, time::Duration};

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use rafael_proxy::{
    Snapshot,
    policy::{Nanos, breaker::BreakerState},
    snapshot::Route,
    telemetry::{Outcome, Window},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{AdminState, ApiPath, ApiQuery, error};

const SECOND: Nanos = 1_000_000_000;
/// Complete seconds the figures "now" cover: enough requests for a p99 at modest rates, short
/// enough that a change shows within seconds.
pub const LIVE_SECS: u64 = 10;
/// Most seconds a series answers (the telemetry ring holds ten minutes).
const MAX_SERIES_SECS: u64 = 600;
/// Audit entries one tick of the event stream sends at most (the rest follow a second later).
const AUDIT_BATCH: u32 = 200;

/// One route's figures over the last [`LIVE_SECS`] complete seconds, and its state now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteLive {
    /// Requests a second.
    pub rate: f64,
    /// Share of answered requests that were not 5xx, rafael's own refusals included; `None`
    /// without answers.
    pub success: Option<f64>,
    /// p99 latency, milliseconds (the upper bound of its histogram bucket).
    pub p99_ms: Option<f64>,
    /// Upstream attempts per request.
    pub amplification: Option<f64>,
    /// Requests in flight now.
    pub in_flight: u32,
    /// The live genome's generation.
    pub generation: u64,
    /// Whether a canary runs on the route.
    pub canary: bool,
    /// Each endpoint: address, attempts in flight, breaker state (`None` without a breaker).
    pub endpoints: Vec<EndpointLive>,
}

/// One endpoint's state now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointLive {
    /// Its address.
    pub address: String,
    /// Attempts in flight on it.
    pub in_flight: usize,
    /// `closed`, `half_open` or `open`; `None` when the route has no breaker.
    pub breaker: Option<&'static str>,
}

fn breaker_name(state: BreakerState) -> &'static str {
    match state {
        BreakerState::Closed => "closed",
        BreakerState::HalfOpen => "half_open",
        BreakerState::Open => "open",
    }
}

/// The complete seconds of `route`'s telemetry in the last `secs` (the running one is not).
fn recent(route: &Route, secs: u64, now: Nanos) -> Vec<Window> {
    let end = now - now % SECOND;
    route
        .live()
        .telemetry()
        .windows(end.saturating_sub(secs * SECOND), end)
        .into_iter()
        .filter(|w| w.start + SECOND <= end)
        .collect()
}

fn success_of(window: &Window) -> Option<f64> {
    let answered = window.responses();
    (answered > 0).then(|| {
        let failed = window.outcome(Outcome::ServerError)
            + window.outcome(Outcome::BreakerOpen)
            + window.outcome(Outcome::Shed)
            + window.outcome(Outcome::Timeout);
        1.0 - failed as f64 / answered as f64
    })
}

fn p99_of(window: &Window) -> Option<f64> {
    window.latency_quantile(0.99).map(|n| n as f64 / 1e6)
}

/// `route`'s figures now.
pub fn route_live(route: &Route) -> RouteLive {
    let now = rafael_proxy::layer::now();
    let windows = recent(route, LIVE_SECS, now);
    let mut total = windows.first().cloned();
    for window in windows.iter().skip(1) {
        if let Some(total) = total.as_mut() {
            total.merge(window);
        }
    }
    let secs = windows.len().max(1) as f64;
    let requests = total.as_ref().map_or(0, |t| t.requests);
    let breakers = route.live().breakers();
    RouteLive {
        rate: requests as f64 / secs,
        success: total.as_ref().and_then(success_of),
        p99_ms: total.as_ref().and_then(p99_of),
        amplification: total
            .as_ref()
            .filter(|t| t.requests > 0)
            .map(|t| t.attempts as f64 / t.requests as f64),
        in_flight: route.live().in_flight(),
        generation: route.live().generation(),
        canary: route.canary().is_some(),
        endpoints: route
            .upstream()
            .endpoints()
            .iter()
            .enumerate()
            .map(|(i, endpoint)| EndpointLive {
                address: endpoint.address().to_owned(),
                in_flight: endpoint.in_flight(),
                breaker: breakers.get(i).map(|b| breaker_name(b.state())),
            })
            .collect(),
    }
}

/// Every route's figures now, by name.
pub fn routes_live(snapshot: &Snapshot) -> BTreeMap<String, RouteLive> {
    snapshot
        .routes()
        .iter()
        .map(|route| (route.name().to_owned(), route_live(route)))
        .collect()
}

#[derive(Debug, Deserialize)]
pub(super) struct SeriesQuery {
    secs: Option<u64>,
}

/// `GET /v1/routes/{route}/series?secs=N`: the last N complete seconds (300 by default, 600
/// at most), one entry per second: its start (Unix seconds), requests, success share, p99.
pub(super) async fn route_series(
    State(state): State<AdminState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<SeriesQuery>,
) -> Response {
    let snapshot = state.snapshot.load();
    let Some(route) = snapshot.route(&name) else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no route named {name:?}"),
        );
    };
    let secs = query.secs.unwrap_or(300).clamp(1, MAX_SERIES_SECS);
    let now = rafael_proxy::layer::now();
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let points: Vec<Value> = recent(route, secs, now)
        .iter()
        .map(|w| {
            json!({
                "t": (unix_now - (now.saturating_sub(w.start)) as f64 / 1e9).floor(),
                "requests": w.requests,
                "success": success_of(w),
                "p99_ms": p99_of(w),
            })
        })
        .collect();
    Json(json!({ "route": name, "secs": secs, "points": points })).into_response()
}

/// The family of an audit action: `proposal.approved` is a `proposal` event.
fn family(action: &str) -> &str {
    action.split('.').next().unwrap_or(action)
}

/// What one client's stream remembers between ticks.
struct Watch {
    state: AdminState,
    after: i64,
    breakers: BTreeMap<(String, String), &'static str>,
    ticker: tokio::time::Interval,
    pending: std::collections::VecDeque<Event>,
}

impl Watch {
    /// The events of one tick: breaker changes, new audit entries, then the routes.
    async fn tick(&mut self) -> Vec<Event> {
        self.ticker.tick().await;
        let snapshot = self.state.snapshot.load();
        let live = routes_live(&snapshot);
        let mut events = Vec::new();
        for (route, figures) in &live {
            for endpoint in &figures.endpoints {
                let Some(to) = endpoint.breaker else { continue };
                let key = (route.clone(), endpoint.address.clone());
                let from = self.breakers.insert(key, to);
                if from.is_some_and(|from| from != to) {
                    events.push(json_event(
                        "breaker",
                        &json!({"route": route, "endpoint": endpoint.address, "from": from, "to": to}),
                    ));
                }
            }
        }
        let audit = self.state.audit.clone();
        let after = self.after;
        if let Ok(Ok(entries)) =
            tokio::task::spawn_blocking(move || audit.list(after, AUDIT_BATCH)).await
        {
            for entry in entries {
                self.after = self.after.max(entry.id);
                let value = serde_json::to_value(&entry).unwrap_or(Value::Null);
                events.push(json_event(family(&entry.action), &value).id(entry.id.to_string()));
            }
        }
        events.push(json_event(
            "routes",
            &json!({"version": snapshot.version(), "routes": live}),
        ));
        events
    }
}

fn json_event(name: &str, data: &Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

/// `GET /v1/events`: the dashboard's server-sent events (see the module's documentation). The
/// first event, `hello`, carries the newest audit id; entries after it follow as they come.
pub(super) async fn events(State(state): State<AdminState>) -> Response {
    let audit = state.audit.clone();
    let head = tokio::task::spawn_blocking(move || audit.latest_id()).await;
    let after = match head {
        Ok(Ok(id)) => id,
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, "store", &e.to_string()),
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                &e.to_string(),
            );
        }
    };
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let watch = Watch {
        state,
        after,
        breakers: BTreeMap::new(),
        ticker,
        pending: std::collections::VecDeque::from([json_event(
            "hello",
            &json!({"audit_id": after}),
        )]),
    };
    let stream = futures_util::stream::unfold(watch, |mut watch| async move {
        loop {
            if let Some(event) = watch.pending.pop_front() {
                return Some((Ok::<Event, Infallible>(event), watch));
            }
            let events = watch.tick().await;
            watch.pending.extend(events);
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// `GET /v1/threats`: the Chaos Forge's threat table, every threat at every severity with what
/// it injects in words (what `POST /v1/experiments` and `POST /v1/simulate` take by name).
pub(super) async fn threats() -> Response {
    let table: Vec<Value> = crate::chaos::THREATS
        .iter()
        .flat_map(|&threat| {
            crate::chaos::SEVERITIES.iter().map(move |&severity| {
                json!({
                    "threat": threat,
                    "severity": severity,
                    "injects": crate::chaos::describe_threat(threat, severity),
                })
            })
        })
        .collect();
    Json(json!({ "threats": table })).into_response()
}
