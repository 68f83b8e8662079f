//! The request path: check the head, route, rewrite headers, pick an endpoint,
//! forward, and relay the response (or rescue an error into a JSON response).
//!
//! The snapshot is loaded here, once per request, and everything after uses that one version:
//! the route's policy layers ([`crate::layer`]) run between the header rewrite and the relay.

use std::{sync::Arc, time::Duration};

use http::{HeaderValue, Method, Request, Response, Version, header::TRANSFER_ENCODING};
use hyper::body::Incoming;
use metrics::counter;
use tokio::{io::AsyncWriteExt, sync::mpsc};
use tracing::{debug, warn};

use tower::Service;

use crate::{
    Body, ProxyError, SnapshotHandle,
    body::ClientBody,
    clock,
    failure::UpstreamFailure,
    guard::Activity,
    headers::{self, Forwarded, HostError},
    layer::{self, PolicyRequest},
    metrics::{DOWNSTREAM_REJECTED_TOTAL, RouteMetrics},
    telemetry::Outcome,
    upstream::{Exchange, RequestHead, UpstreamIo},
};

/// Per-connection state shared by its requests.
#[derive(Debug)]
pub(crate) struct Connection {
    pub(crate) handle: SnapshotHandle,
    pub(crate) listener: usize,
    pub(crate) listener_name: Arc<str>,
    pub(crate) forwarded: Forwarded,
    pub(crate) activity: Arc<Activity>,
    /// Held by upgraded tunnels so draining waits for them too.
    pub(crate) drain: mpsc::Sender<()>,
}

/// Serves one downstream request. Every error becomes a response, except an injected reset:
/// returned as the service's error, it makes hyper close the connection (HTTP/1.1) or reset the
/// stream (HTTP/2) without answering.
pub(crate) async fn proxy(
    connection: Arc<Connection>,
    mut request: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let started = clock::now();
    let active = connection.activity.begin();
    let snapshot = connection.handle.load();
    let version = request.version();
    let Some(listener) = snapshot.listener(connection.listener) else {
        return Ok(ProxyError::BadRequest("listener is gone").into_response());
    };

    if let Err(error) = check_head(&mut request, &listener.config) {
        counter!(DOWNSTREAM_REJECTED_TOTAL, "listener" => connection.listener_name.to_string(), "reason" => error.code())
            .increment(1);
        return Ok(finish(
            snapshot.unmatched_metrics(),
            error.into_response(),
            version,
            headers::new_request_id(),
            Duration::from_nanos(clock::now().saturating_sub(started)),
        ));
    }

    let Some(route) = listener
        .route(request.method(), request.uri(), request.headers())
        .cloned()
    else {
        let error = ProxyError::NoRoute {
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
        };
        let id =
            headers::client_request_id(request.headers()).unwrap_or_else(headers::new_request_id);
        return Ok(finish(
            snapshot.unmatched_metrics(),
            error.into_response(),
            version,
            id,
            Duration::from_nanos(clock::now().saturating_sub(started)),
        ));
    };

    // An HTTP/2 upstream cannot switch protocols, and a route splices only the upgrades it
    // allows: any other such request goes as a plain one, its `Upgrade` field dropped.
    let upgrade = route.upstream().supports_upgrades()
        && headers::is_upgrade_request(version, request.headers())
        && route.allows_upgrade(request.headers());
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    let targets = route
        .faults()
        .map(|faults| faults.take_targets(&mut parts.headers))
        .unwrap_or_default();
    let added = headers::prepare_request(
        &mut parts.headers,
        version,
        parts.uri.authority(),
        &connection.forwarded,
        upgrade,
    );
    let request_id = added.request_id().clone();
    // A canary on the route takes its share of requests by their id.
    let (route, cohort) = match route.cohort(request_id.as_bytes()) {
        None => (route, None),
        Some((Some(canary), counters)) => (canary, Some(counters)),
        Some((None, counters)) => (route, Some(counters)),
    };

    let arrived = started;
    let telemetry = route.live().telemetry();
    let sampled = telemetry.arrival(arrived);
    let request = PolicyRequest {
        route: route.clone(),
        head: Arc::new(RequestHead {
            parts,
            added,
            targets,
        }),
        body: Body::Streaming(ClientBody::new(
            body,
            listener.config.body_read_timeout.get(),
        )),
        client_ip: connection.forwarded.client_ip.clone(),
        arrived,
        sampled,
        permit: None,
        deadline: None,
    };
    // Every layer is always ready (they reject in `call`), so no `poll_ready` is needed.
    let result = layer::stack().call(request).await;

    let metrics = route.metrics();
    let mut outcome = None;
    let answered_at = result.as_ref().map_or(0, |exchange| exchange.answered_at);
    let response = match result {
        Ok(Exchange {
            mut response,
            upgraded,
            endpoint,
            ..
        }) => match (upgraded, downstream_upgrade) {
            (Some(upstream), Some(downstream)) => {
                tunnel(&connection, downstream, upstream);
                response
            }
            (Some(_), None) => {
                let reason = "switched protocols without being asked to";
                route
                    .upstream()
                    .error_at(endpoint, UpstreamFailure::Protocol, reason)
                    .into_response()
            }
            (None, _) => {
                if let Body::Upstream { guard, .. } = response.body_mut() {
                    guard.active = Some(active);
                }
                response
            }
        },
        Err(ProxyError::InjectedReset) => {
            let now = clock::now();
            telemetry.complete(now, Outcome::ServerError, now.saturating_sub(started));
            if let Some(counters) = &cohort {
                counters[2].increment(1);
            }
            return Err(ProxyError::InjectedReset);
        }
        Err(error) => {
            debug!(route = route.name(), side = ?error.side(), %error, "answering with an error");
            outcome = match error {
                ProxyError::RateLimited(_) => Some(Outcome::RateLimited),
                ProxyError::BreakerOpen(_) => Some(Outcome::BreakerOpen),
                ProxyError::Shed(_) => Some(Outcome::Shed),
                ProxyError::Timeout(_) | ProxyError::AttemptTimedOut(_) => Some(Outcome::Timeout),
                _ => None,
            };
            error.into_response()
        }
    };
    let status = response.status();
    let outcome = outcome.unwrap_or(if status.is_server_error() {
        Outcome::ServerError
    } else if status.is_client_error() {
        Outcome::ClientError
    } else {
        Outcome::Success
    });
    // The response head's arrival is the end of the request's latency (the relay that follows
    // is part of the response, not of the wait for it).
    let finished = if answered_at == 0 {
        clock::now()
    } else {
        answered_at
    };
    let elapsed = finished.saturating_sub(started);
    telemetry.complete(finished, outcome, elapsed);
    if let Some(counters) = &cohort {
        let class = if status.is_server_error() {
            2
        } else if status.is_client_error() {
            1
        } else {
            0
        };
        counters[class].increment(1);
    }
    Ok(finish(
        metrics,
        response,
        version,
        request_id,
        Duration::from_nanos(elapsed),
    ))
}

/// Stamps the headers every response carries (relayed or made here) and records it.
fn finish(
    metrics: &RouteMetrics,
    mut response: Response<Body>,
    version: Version,
    request_id: HeaderValue,
    elapsed: Duration,
) -> Response<Body> {
    headers::prepare_response(response.headers_mut(), version, request_id);
    metrics.record_response(response.status(), elapsed);
    response
}

/// Rejects heads a reverse proxy should not forward (oversized ones, `CONNECT`, an untrustworthy
/// host, transfer codings other than chunked), and makes `Host` agree with the target.
fn check_head<B>(
    request: &mut Request<B>,
    listener: &rafael_config::ListenerConfig,
) -> Result<(), ProxyError> {
    let limit = usize::try_from(listener.max_header_bytes.bytes()).unwrap_or(usize::MAX);
    // Request line plus each field line as sent on the wire ("name: value\r\n").
    let uri = request.uri();
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len() + 3)
        + uri.scheme_str().map_or(0, str::len);
    let mut size = request.method().as_str().len() + target + 12;
    for (name, value) in request.headers() {
        size += name.as_str().len() + value.len() + 4;
    }
    if size > limit {
        return Err(ProxyError::HeadersTooLarge { size, limit });
    }
    if request.method() == Method::CONNECT {
        return Err(ProxyError::BadRequest(
            "CONNECT is not supported by a reverse proxy",
        ));
    }
    let version = request.version();
    let (authority, headers) = (request.uri().authority().cloned(), request.headers_mut());
    headers::normalize_host(headers, version, authority.as_ref()).map_err(|error| {
        ProxyError::BadRequest(match error {
            HostError::Repeated => "more than one Host field",
            HostError::Missing => "an HTTP/1.1 request needs a Host field",
            HostError::Invalid => "the Host is not a valid authority",
        })
    })?;
    if let Some(codings) = headers.get(TRANSFER_ENCODING) {
        // hyper decodes `chunked` and refuses a message whose last coding is not chunked; any
        // other coding before it would be lost on the way upstream (RFC 9112 §6.1: 501).
        let only_chunked = headers.get_all(TRANSFER_ENCODING).iter().count() == 1
            && codings.as_bytes().eq_ignore_ascii_case(b"chunked");
        if !only_chunked {
            return Err(ProxyError::NotImplemented(
                "transfer codings other than chunked are not supported",
            ));
        }
    }
    Ok(())
}

/// Splices an upgraded downstream connection to the upgraded upstream one, both ways.
fn tunnel(
    connection: &Connection,
    downstream: hyper::upgrade::OnUpgrade,
    (mut upstream, early): (UpstreamIo, bytes::Bytes),
) {
    let drain = connection.drain.clone();
    tokio::spawn(async move {
        let _drain = drain;
        let downstream = match downstream.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                warn!(%error, "protocol upgrade failed");
                return;
            }
        };
        let mut downstream = hyper_util::rt::TokioIo::new(downstream);
        // Bytes the upstream sent right after its 101 were read with the head: pass them on.
        if !early.is_empty() && downstream.write_all(&early).await.is_err() {
            return;
        }
        if let Err(error) = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
            debug!(%error, "upgraded connection ended");
        }
    });
}
