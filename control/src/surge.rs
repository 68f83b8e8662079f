//! The bounded load generator behind the `surge` threat: real extra requests at one route,
//! sent only to that route's own listener on this host (loopback), at a capped rate and for a
//! capped time, with a cap on requests in flight, so an experiment can never become a flood
//! pointed elsewhere.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use rafael_config::{HostMatch, RouteConfig};
use serde::Serialize;
use tokio::{sync::watch, time::MissedTickBehavior};

/// The highest rate a surge may send.
pub const MAX_RATE: u32 = 2_000;
/// Requests a surge keeps in flight at most.
pub const MAX_IN_FLIGHT: usize = 128;
/// Longest a surge request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What a surge sends.
#[derive(Debug, Clone)]
pub struct SurgePlan {
    /// Where: the route's listener, on loopback.
    pub target: SocketAddr,
    /// The request's method, path, host and headers, built to match the route.
    pub method: Method,
    /// Path.
    pub path: String,
    /// `Host` header.
    pub host: String,
    /// Headers the route requires.
    pub headers: Vec<(String, String)>,
    /// Requests per second (capped at [`MAX_RATE`]).
    pub rate: u32,
}

/// What a surge did.
#[derive(Debug, Default, Serialize)]
pub struct SurgeCounts {
    /// Requests sent.
    pub sent: AtomicU64,
    /// Answered with a 2xx or 3xx.
    pub ok: AtomicU64,
    /// Answered otherwise, or failed.
    pub failed: AtomicU64,
    /// Not sent because [`MAX_IN_FLIGHT`] were in flight.
    pub skipped: AtomicU64,
}

// === impl SurgePlan ===

impl SurgePlan {
    /// A plan for `route`, served by a listener bound to `listener`, at `rate`.
    pub fn for_route(route: &RouteConfig, listener: SocketAddr, rate: u32) -> Self {
        // Only ever this host: a wildcard bind is reached on loopback.
        let ip = if listener.ip().is_unspecified() {
            match listener.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            }
        } else {
            listener.ip()
        };
        let host = match &route.match_.host {
            Some(HostMatch::Exact(host)) => host.clone(),
            Some(HostMatch::Suffix(suffix)) => format!("surge.{suffix}"),
            None => "surge.rafael.invalid".to_owned(),
        };
        let method = route
            .match_
            .methods
            .as_ref()
            .and_then(|m| {
                if m.iter().any(|m| m == "GET") {
                    None
                } else {
                    m.first().cloned()
                }
            })
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
            .unwrap_or(Method::GET);
        Self {
            target: SocketAddr::new(ip, listener.port()),
            method,
            path: route
                .match_
                .path_prefix
                .clone()
                .unwrap_or_else(|| "/".to_owned()),
            host,
            headers: route
                .match_
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            rate: rate.clamp(1, MAX_RATE),
        }
    }

    /// Sends at the plan's rate until `stop` says so; returns what it did.
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> Arc<SurgeCounts> {
        let counts = Arc::new(SurgeCounts::default());
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(self.rate)));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let uri = format!("http://{}{}", self.target, self.path);
        // Every request belongs to this set: when the surge stops, the ones still out are
        // cancelled with it, so a surge never outlives its experiment.
        let mut requests = tokio::task::JoinSet::new();
        loop {
            while requests.try_join_next().is_some() {}
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => break,
            }
            if *stop.borrow() {
                break;
            }
            let Ok(slot) = in_flight.clone().try_acquire_owned() else {
                counts.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let mut request = Request::builder()
                .method(self.method.clone())
                .uri(&uri)
                .header(http::header::HOST, &self.host)
                .header("x-rafael-surge", "1");
            for (name, value) in &self.headers {
                request = request.header(name, value);
            }
            let Ok(request) = request.body(Empty::new()) else {
                break;
            };
            counts.sent.fetch_add(1, Ordering::Relaxed);
            let (client, counts) = (client.clone(), counts.clone());
            requests.spawn(async move {
                let _slot = slot;
                let exchange = async {
                    let response = client.request(request).await.ok()?;
                    let success = response.status().as_u16() < 400;
                    // Read and drop the body frame by frame: nothing is kept.
                    let mut body = response.into_body();
                    while let Some(frame) = body.frame().await {
                        frame.ok()?;
                    }
                    Some(success)
                };
                let ok = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or(false);
                let counter = if ok { &counts.ok } else { &counts.failed };
                counter.fetch_add(1, Ordering::Relaxed);
            });
        }
        // A grace period for the last answers, then the rest are cancelled (counted failed).
        let grace = tokio::time::sleep(Duration::from_secs(2));
        tokio::pin!(grace);
        loop {
            tokio::select! {
                next = requests.join_next() => if next.is_none() { break },
                () = &mut grace => {
                    let cancelled = requests.len() as u64;
                    requests.abort_all();
                    counts.failed.fetch_add(cancelled, Ordering::Relaxed);
                    break;
                }
            }
        }
        counts
    }
}
