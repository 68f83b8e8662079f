//! `rafael demo`: a built-in flaky service, rafael in front of it, and bounded traffic.
//!
//! The demo service behaves like a dependency having a bad day, on a 90-second cycle: healthy,
//! then slow, then failing a large share of requests, then recovering. The traffic generator
//! sends a modest, fixed rate for a bounded time and prints what a client saw.

use std::{
    convert::Infallible,
    io::Write,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
};
use tokio::net::TcpListener;
use tracing::{debug, info};

/// The shipped demo config, with `{upstream}`, `{listen}`, `{admin}` and `{min_requests}`
/// placeholders.
pub const DEMO_CONFIG: &str = include_str!("../demo/demo.toml");

/// One phase of the demo service's cycle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Phase {
    /// Name printed in logs.
    pub name: &'static str,
    /// Latency in milliseconds: its median and its 99th percentile. Latencies are drawn from
    /// the log-normal distribution through them, right-skewed as real services' are.
    pub latency_ms: (u64, u64),
    /// Share of requests answered 503.
    pub error_rate: f64,
}

const CYCLE: [(u64, Phase); 4] = [
    (
        40,
        Phase {
            name: "healthy",
            latency_ms: (6, 15),
            error_rate: 0.005,
        },
    ),
    (
        20,
        Phase {
            name: "slow",
            latency_ms: (180, 400),
            error_rate: 0.05,
        },
    ),
    (
        10,
        Phase {
            name: "failing",
            latency_ms: (12, 30),
            error_rate: 0.4,
        },
    ),
    (
        20,
        Phase {
            name: "recovering",
            latency_ms: (30, 60),
            error_rate: 0.01,
        },
    ),
];

/// The phase the demo service is in `elapsed` after it started.
pub fn phase_at(elapsed: Duration) -> Phase {
    let period: u64 = CYCLE.iter().map(|(secs, _)| secs).sum();
    let mut t = elapsed.as_secs() % period;
    for (secs, phase) in CYCLE {
        if t < secs {
            return phase;
        }
        t -= secs;
    }
    CYCLE[0].1
}

/// How long after the start the first bad day (slow, then failing) is over.
pub fn first_bad_day_ends() -> Duration {
    let until_recovering: u64 = CYCLE
        .iter()
        .take_while(|(_, phase)| phase.name != "recovering")
        .map(|(secs, _)| secs)
        .sum();
    Duration::from_secs(until_recovering)
}

/// Starts the demo service on `listener`, its cycle running `speed` times faster than real
/// time (1 for the demo; tests run it faster); runs until the runtime stops.
pub fn spawn_service(listener: TcpListener, speed: f64) {
    let started = Instant::now();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service =
                service_fn(move |request: Request<Incoming>| answer(started, speed, request));
            tokio::spawn(async move {
                let served = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
                if let Err(error) = served {
                    debug!(%error, "demo service connection ended");
                }
            });
        }
    });
}

async fn answer(
    started: Instant,
    speed: f64,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let phase = phase_at(started.elapsed().mul_f64(speed.max(0.01)));
    let (median, p99) = phase.latency_ms;
    tokio::time::sleep(log_normal(median as f64, p99 as f64)).await;
    let (status, body) = if fastrand::f64() < phase.error_rate {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(r#"{{"error":"demo service is {}"}}"#, phase.name),
        )
    } else {
        (
            StatusCode::OK,
            format!(
                r#"{{"path":"{}","phase":"{}"}}"#,
                request.uri().path().escape_default(),
                phase.name
            ),
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// Runs one evolution round on `route` through the admin API at `admin` once `delay` has
/// passed (the end of the first bad day), waits for it, and prints what it found and how to
/// see it. Polling a round twice a second is what a person at the terminal would do.
pub async fn evolve_after_the_bad_day(admin: SocketAddr, route: &str, delay: Duration) {
    tokio::time::sleep(delay).await;
    let base = format!("http://{admin}");
    let print = |line: String| {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
    };
    let run = format!("{base}/v1/evolution/{route}/run");
    let round = match crate::client::call("POST", &run, None, None).await {
        Ok((202, text)) => serde_json::from_str::<serde_json::Value>(&text).unwrap_or_default(),
        Ok((status, text)) => {
            print(format!(
                "  evolution      could not start a round ({status}): {text}"
            ));
            return;
        }
        Err(error) => {
            print(format!("  evolution      could not start a round: {error}"));
            return;
        }
    };
    let id = round["id"].as_i64().unwrap_or_default();
    print(format!(
        "\n  evolution      the bad day is over: round {id} is fitting the service and evolving {route}'s genome"
    ));
    let mut round = round;
    let deadline = Instant::now() + Duration::from_secs(600);
    while round["state"] == "running" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let url = format!("{base}/v1/evolution/rounds/{id}");
        if let Ok((200, text)) = crate::client::call("GET", &url, None, None).await {
            round = serde_json::from_str(&text).unwrap_or(round);
        }
    }
    let reason = round["reason"].as_str().unwrap_or_default();
    match round["proposal_id"].as_i64() {
        Some(proposal) => print(format!(
            "  evolution      proposal {proposal} for {route} is pending ({reason})\n  \
             see it         rafael proposals show {proposal} --admin {base}\n  \
             or             {base}/v1/proposals/{proposal}\n"
        )),
        None => print(format!(
            "  evolution      round {id} ended {}: {reason}\n",
            round["result"].as_str().unwrap_or("without a proposal")
        )),
    }
}

/// A log-normal latency through `median` and `p99` (milliseconds).
fn log_normal(median: f64, p99: f64) -> Duration {
    // The distribution the simulator draws service times from, so the demo's day is one the
    // model can describe.
    let (mu, sigma) = crate::evolution::sim::upstream::log_normal(median, p99);
    let mut rng =
        <rand::rngs::Xoshiro256PlusPlus as rand::SeedableRng>::seed_from_u64(fastrand::u64(..));
    let z: f64 = rand_distr::Distribution::sample(&rand_distr::StandardNormal, &mut rng);
    Duration::from_nanos((mu + sigma * z).exp().min(60e9) as u64)
}

/// What the traffic generator saw.
#[derive(Debug, Default)]
pub struct TrafficStats {
    /// Responses with 2xx.
    pub ok: AtomicU64,
    /// Responses with 4xx or 5xx.
    pub failed: AtomicU64,
    /// Requests that got no response at all.
    pub errors: AtomicU64,
}

/// Sends `rate` requests per second to `target` for at most `duration`, printing a summary every
/// ten seconds. Bounded in rate, in duration and in concurrency (at most `rate` in flight).
pub async fn run_traffic(target: SocketAddr, rate: u32, duration: Duration) -> Arc<TrafficStats> {
    let stats = Arc::new(TrafficStats::default());
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(rate.max(1) as usize));
    let deadline = Instant::now() + duration;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    let mut report = Instant::now() + Duration::from_secs(10);
    let mut sent: u64 = 0;
    while Instant::now() < deadline {
        tick.tick().await;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            continue;
        };
        sent += 1;
        let path = if sent % 5 == 0 {
            "/inventory".to_owned()
        } else {
            format!("/orders/{}", sent % 100)
        };
        let uri = format!("http://{target}{path}");
        let client = client.clone();
        let seen = stats.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let Ok(request) = Request::get(uri).body(Empty::new()) else {
                return;
            };
            match client.request(request).await {
                Ok(response) => {
                    let success = response.status().is_success();
                    let _ = response.into_body().collect().await;
                    let counter = if success { &seen.ok } else { &seen.failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    seen.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        if Instant::now() >= report {
            report += Duration::from_secs(10);
            info!(
                ok = stats.ok.load(Ordering::Relaxed),
                failed = stats.failed.load(Ordering::Relaxed),
                no_response = stats.errors.load(Ordering::Relaxed),
                "demo traffic so far"
            );
        }
    }
    info!("demo traffic finished; rafael keeps running until Ctrl-C");
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_configs_are_valid() {
        let demo = DEMO_CONFIG
            .replace("{upstream}", "127.0.0.1:8080")
            .replace("{listen}", "127.0.0.1:15001")
            .replace("{admin}", "127.0.0.1:9901")
            .replace("{min_requests}", "1000");
        let demo = rafael_config::parse(&demo).expect("the demo config is valid");
        assert_eq!(demo.routes.len(), 2);
        let example = include_str!("../../deploy/rafael.toml");
        rafael_config::parse(example).expect("deploy/rafael.toml is valid");
    }

    #[test]
    fn the_cycle_has_a_bad_day() {
        assert_eq!(phase_at(Duration::from_secs(0)).name, "healthy");
        assert_eq!(phase_at(Duration::from_secs(45)).name, "slow");
        assert_eq!(phase_at(Duration::from_secs(65)).name, "failing");
        assert_eq!(phase_at(Duration::from_secs(75)).name, "recovering");
        assert_eq!(phase_at(Duration::from_secs(90)).name, "healthy");
        assert!(phase_at(Duration::from_secs(65)).error_rate > 0.3);
    }
}
