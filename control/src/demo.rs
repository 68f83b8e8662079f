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

/// The demo guardian's canary and watch at `--speed 1` (shortened with the cycle).
pub const CANARY: Duration = Duration::from_secs(15);
/// See [`CANARY`].
pub const WATCH: Duration = Duration::from_secs(30);
/// A request answered 2xx within this counts as goodput (the demo config's `slo_latency`).
const SLO: Duration = Duration::from_millis(300);

/// One whole cycle of the demo service's day.
pub fn cycle() -> Duration {
    Duration::from_secs(CYCLE.iter().map(|(secs, _)| secs).sum())
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
/// passed (the end of the first bad day), waits for it, and prints what it found; then follows
/// its proposal through the guardian (approval, canary, swap, watch) and, one `cycle` of the
/// service's day after the swap, prints the goodput the traffic saw before and after it, and
/// how to inspect each step. Polling twice a second is what a person at the terminal would do.
pub async fn evolve_after_the_bad_day(
    admin: SocketAddr,
    route: &str,
    delay: Duration,
    cycle: Duration,
    stats: Arc<TrafficStats>,
) {
    tokio::time::sleep(delay).await;
    let base = format!("http://{admin}");
    let print = |line: String| {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
    };
    let get = |url: String| async move {
        match crate::client::call("GET", &url, None, None).await {
            Ok((200, text)) => serde_json::from_str::<serde_json::Value>(&text).ok(),
            _ => None,
        }
    };
    // A round that finds no proposal (a model it cannot trust, nothing better) is tried again
    // after the next bad day, as a sidecar's rounds every `interval` would.
    let mut attempt = 0;
    let (proposal, reason) = loop {
        attempt += 1;
        let Some(round) = one_round(&base, route, attempt).await else {
            return;
        };
        let id = round["id"].as_i64().unwrap_or_default();
        let reason = round["reason"].as_str().unwrap_or_default().to_owned();
        if let Some(proposal) = round["proposal_id"].as_i64() {
            break (proposal, reason);
        }
        let result = round["result"].as_str().unwrap_or("without a proposal");
        if attempt >= ROUND_ATTEMPTS {
            print(format!(
                "  evolution      round {id} ended {result}: {reason}\n"
            ));
            return;
        }
        print(format!(
            "  evolution      round {id} ended {result}: {reason}; another round after the next bad day"
        ));
        tokio::time::sleep(cycle).await;
    };
    print(format!(
        "  evolution      proposal {proposal} for {route} ({reason})\n  \
         see it         rafael proposals show {proposal} --admin {base}\n  \
         or             {base}/v1/proposals/{proposal}"
    ));
    // Follow it through the guardian, printing each state once.
    let (mut last, mut swapped) = (String::new(), None);
    let deadline = Instant::now() + cycle * 2 + Duration::from_secs(120);
    while Instant::now() < deadline {
        let Some(now) = get(format!("{base}/v1/proposals/{proposal}")).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let state = now["state"].as_str().unwrap_or_default().to_owned();
        if state != last {
            print(describe(&now, &state, route));
            if swapped.is_none() && matches!(state.as_str(), "applied" | "kept") {
                swapped = Some((Instant::now(), stats.counts()));
            }
            last = state.clone();
        }
        let waiting = state == "canary"
            && matches!(
                now["canary"]["state"].as_str(),
                Some("inconclusive" | "interrupted")
            );
        if waiting {
            print(format!(
                "  guardian       the canary is {}: {}\n  \
                 promote it     rafael proposals approve {proposal} --admin {base}",
                now["canary"]["state"].as_str().unwrap_or_default(),
                now["canary"]["reason"].as_str().unwrap_or_default()
            ));
        }
        let settled = !matches!(
            state.as_str(),
            "pending" | "approved" | "canary" | "applied"
        );
        if waiting || settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let Some((at, before)) = swapped else {
        print(format!(
            "  inspect        rafael audit list --admin {base}   (every step, hash-chained)\n"
        ));
        return;
    };
    // A whole day of the service on the new genome, bad part included.
    tokio::time::sleep(cycle.saturating_sub(at.elapsed())).await;
    let after = stats.counts();
    let share = |good: u64, sent: u64| {
        if sent == 0 {
            "-".to_owned()
        } else {
            format!("{:.1}%", 100.0 * good as f64 / sent as f64)
        }
    };
    print(format!(
        "\n  goodput        before the swap {} ({} requests); one service day after it {} ({} requests)\n  \
         inspect        rafael proposals show {proposal} --admin {base}\n                 \
         rafael genomes {route} --admin {base}\n                 \
         rafael audit verify --admin {base}\n",
        share(before.0, before.1),
        before.1,
        share(after.0 - before.0, after.1 - before.1),
        after.1 - before.1,
    ));
}

/// Rounds the demo runs, one after each bad day, until one proposes.
const ROUND_ATTEMPTS: u32 = 3;

/// Starts a round on `route` through the admin API at `base` and waits for its end, printing
/// that it started; `None` (said why) when it could not start.
async fn one_round(base: &str, route: &str, attempt: u32) -> Option<serde_json::Value> {
    let print = |line: String| {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
    };
    let run = format!("{base}/v1/evolution/{route}/run");
    let mut round = match crate::client::call("POST", &run, None, None).await {
        Ok((202, text)) => serde_json::from_str::<serde_json::Value>(&text).unwrap_or_default(),
        Ok((status, text)) => {
            print(format!(
                "  evolution      could not start a round ({status}): {text}"
            ));
            return None;
        }
        Err(error) => {
            print(format!("  evolution      could not start a round: {error}"));
            return None;
        }
    };
    let id = round["id"].as_i64().unwrap_or_default();
    let which = if attempt == 1 { "the" } else { "another" };
    print(format!(
        "\n  evolution      {which} bad day is over: round {id} is fitting the service and evolving {route}'s genome"
    ));
    let deadline = Instant::now() + Duration::from_secs(600);
    while round["state"] == "running" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let url = format!("{base}/v1/evolution/rounds/{id}");
        if let Ok((200, text)) = crate::client::call("GET", &url, None, None).await
            && let Ok(now) = serde_json::from_str(&text)
        {
            round = now;
        }
    }
    Some(round)
}

/// One line on `proposal` entering `state`.
fn describe(proposal: &serde_json::Value, state: &str, route: &str) -> String {
    let id = proposal["id"].as_i64().unwrap_or_default();
    let canary = &proposal["canary"];
    let watch = &proposal["watch"];
    let reason = |value: &serde_json::Value| value["reason"].as_str().unwrap_or("").to_owned();
    match state {
        "pending" => format!("  guardian       proposal {id} waits for approval"),
        "approved" => format!("  guardian       proposal {id} approved"),
        "canary" => format!(
            "  guardian       approved by rafael (approval = auto); canary on {}% of {route}'s requests until {}",
            canary["percent"],
            canary["ends_at"].as_str().unwrap_or("its end")
        ),
        "applied" => format!(
            "  guardian       {}generation {} is live on {route}; watched until {}",
            if canary.is_object() {
                "the canary passed: "
            } else {
                ""
            },
            watch["generation"],
            watch["ends_at"].as_str().unwrap_or("its end")
        ),
        "kept" => format!("  guardian       proposal {id} kept: {}", reason(watch)),
        "rolled_back" => format!("  guardian       rolled back: {}", reason(watch)),
        "rejected" => format!(
            "  guardian       proposal {id} rejected: {}",
            reason(canary)
        ),
        other => format!("  guardian       proposal {id} is {other}"),
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
    /// Requests sent.
    pub sent: AtomicU64,
    /// Responses with 2xx within the SLO (300 ms).
    pub good: AtomicU64,
    /// Responses with 2xx.
    pub ok: AtomicU64,
    /// Responses with 4xx or 5xx.
    pub failed: AtomicU64,
    /// Requests that got no response at all.
    pub errors: AtomicU64,
}

impl TrafficStats {
    /// (good, sent) so far: the requests still unanswered count as sent and not yet good.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.good.load(Ordering::Relaxed),
            self.sent.load(Ordering::Relaxed),
        )
    }
}

/// Sends `rate` requests per second to `target` for at most `duration`, counting into `stats`
/// and logging a summary every ten seconds. Bounded in rate, in duration and in concurrency
/// (at most `rate` in flight; a request the bound refuses counts as sent and not good).
pub async fn run_traffic(
    target: SocketAddr,
    rate: u32,
    duration: Duration,
    stats: Arc<TrafficStats>,
) -> Arc<TrafficStats> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(rate.max(1) as usize));
    let deadline = Instant::now() + duration;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    let mut report = Instant::now() + Duration::from_secs(10);
    let mut sent: u64 = 0;
    while Instant::now() < deadline {
        tick.tick().await;
        stats.sent.fetch_add(1, Ordering::Relaxed);
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
            let sent = Instant::now();
            match client.request(request).await {
                Ok(response) => {
                    let success = response.status().is_success();
                    let _ = response.into_body().collect().await;
                    let counter = if success { &seen.ok } else { &seen.failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                    if success && sent.elapsed() <= SLO {
                        seen.good.fetch_add(1, Ordering::Relaxed);
                    }
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
            .replace("{min_requests}", "1000")
            .replace("{canary}", "15s")
            .replace("{canary_requests}", "50")
            .replace("{watch}", "30s");
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
