//! The model fit against a real upstream whose truth the test knows (issue 9): a pool of 4
//! workers at 20 ms behind the real rafael binary, driven by an open-loop client first at half
//! its capacity and then past it, so the knee is visible; `GET /v1/routes/main/model` must
//! find the pool's throughput, service time and error share.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    net::SocketAddr,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use support::{
    RAFAEL, Rafael, http_get, json_of, run_bounded, worker_pool::WorkerPool, write_config,
};

const WORKERS: usize = 4;
const SERVICE: Duration = Duration::from_millis(20);
const ERRORS: f64 = 0.05;

/// Sends GETs to `proxy` at `rate` a second for `secs` seconds, whatever the answers take
/// (open loop: the next request does not wait for the last); returns when all are answered.
async fn open_loop(proxy: SocketAddr, rate: f64, secs: f64, answered: Arc<AtomicU64>) {
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build_http::<Empty<Bytes>>();
    let count = (rate * secs) as u64;
    let start = tokio::time::Instant::now();
    let mut requests = Vec::new();
    for i in 0..count {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        let client = client.clone();
        let answered = answered.clone();
        let uri: hyper::Uri = format!("http://{proxy}/work").parse().unwrap();
        requests.push(tokio::spawn(async move {
            if let Ok(response) = client.get(uri).await {
                let _ = response.into_body().collect().await;
            }
            answered.fetch_add(1, Ordering::Relaxed);
        }));
    }
    for request in requests {
        request.await.unwrap();
    }
}

async fn get_model(admin: SocketAddr) -> (u16, serde_json::Value) {
    tokio::task::spawn_blocking(move || {
        let (status, _, body) = http_get(admin, "/v1/routes/main/model");
        (status, json_of(&body))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fitted_model_finds_the_pools_capacity_service_time_and_errors() {
    let pool = WorkerPool::new(WORKERS, SERVICE)
        .jitter(Duration::from_millis(2))
        .errors(ERRORS)
        .seed(7)
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    // A timeout well above the longest queue the overload builds, and no retries: every
    // attempt is one request, as the fit assumes.
    let config = write_config(
        dir.path(),
        pool.address,
        "[routes.policy]\ntimeout = \"8s\"\n",
    );
    let rafael = tokio::task::spawn_blocking(move || Rafael::start(&config))
        .await
        .unwrap();
    let admin = format!("http://{}", rafael.admin);

    // Before traffic: the CLI says why there is no model, and exits 1.
    let (code, stderr) = run_bounded(
        &[
            "model".as_ref(),
            "main".as_ref(),
            "--admin".as_ref(),
            admin.as_ref(),
        ],
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("not enough telemetry: 0 requests"),
        "{stderr}"
    );
    let (code, _) = run_bounded(&["model".as_ref()], Duration::from_secs(10)).unwrap();
    assert_eq!(code, Some(2), "a missing route is bad usage");

    // Half the capacity (N/S = 200/s), then a quarter above it: the queue grows by about
    // 50 requests a second for 7 s, to a wait of about 2 s, under the 8 s timeout.
    let answered = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    open_loop(rafael.proxy, 100.0, 8.0, answered.clone()).await;
    open_loop(rafael.proxy, 250.0, 7.0, answered.clone()).await;
    let sent = answered.load(Ordering::Relaxed);
    assert_eq!(sent, 800 + 1750);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );

    let (status, model) = get_model(rafael.admin).await;
    assert_eq!(status, 200, "{model}");
    let (served, failed_share) = pool.served();
    let truth_service = pool.mean_service();
    let truth_throughput = WORKERS as f64 / truth_service.as_secs_f64();
    let endpoint = &model["endpoints"][0];
    let capacity = &endpoint["capacity"];
    eprintln!(
        "truth: {served} served, {failed_share:.3} failed, mean service {truth_service:?}, \
         throughput {truth_throughput:.1}/s; fitted: {}",
        serde_json::to_string(endpoint).unwrap()
    );
    assert_eq!(model["requests"], sent);
    assert_eq!(endpoint["endpoint"], pool.address.to_string());
    // The pool's own service time is the nominal one, give or take the timer's rounding.
    let nominal = SERVICE.as_secs_f64();
    assert!((truth_service.as_secs_f64() - nominal).abs() < 0.1 * nominal);

    let throughput = capacity["throughput_per_sec"]
        .as_f64()
        .expect("a knee was seen");
    assert!(
        (throughput - truth_throughput).abs() < 0.15 * truth_throughput,
        "throughput {throughput:.1}/s, truth {truth_throughput:.1}/s"
    );
    let concurrency = capacity["concurrency"].as_f64().unwrap();
    assert!(
        (concurrency - WORKERS as f64).abs() < 0.15 * WORKERS as f64,
        "{concurrency}"
    );
    let p50 = endpoint["service_time"]["p50_ms"].as_f64().unwrap();
    let truth_ms = truth_service.as_secs_f64() * 1e3;
    assert!(
        (p50 - truth_ms).abs() < 0.15 * truth_ms,
        "p50 {p50} ms, truth {truth_ms:.1} ms"
    );
    let rate = endpoint["failure"]["rate"].as_f64().unwrap();
    assert!((rate - ERRORS).abs() < 0.02, "error share {rate}");
    assert_eq!(
        endpoint["failure"]["mean_burst_secs"], 0.0,
        "a steady rate is not a burst"
    );
    assert_eq!(endpoint["failure"]["status"], 500);
    assert_eq!(
        model["regimes"],
        serde_json::json!([]),
        "queueing is not a brownout"
    );
    // The model check: the live genome simulated on this model with the observed arrivals,
    // against what the route did in the same window (issue 9: relative errors under 0.15).
    let fidelity = &model["fidelity"];
    eprintln!("fidelity: {fidelity}");
    for metric in ["goodput", "p50_ms", "p99_ms", "amplification"] {
        let error = fidelity[metric]["error"]
            .as_f64()
            .expect("a checked figure");
        assert!(error < 0.15, "{metric}: {}", fidelity[metric]);
    }
    assert_eq!(fidelity["trusted"], true, "{fidelity}");
    let metrics = tokio::task::spawn_blocking({
        let admin = rafael.admin;
        move || http_get(admin, "/metrics").2
    })
    .await
    .unwrap();
    let error = support::metric_value(
        &metrics,
        "rafael_model_error{route=\"main\",metric=\"p99\"}",
    );
    assert!(error.is_some_and(|e| e < 0.15), "{error:?}");

    // The CLI prints the same model for a reader.
    let output = Command::new(RAFAEL)
        .args(["model", "main", "--admin", &admin])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("endpoint {}", pool.address)))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("capacity") && line.contains("/s"), "{text}");
    assert!(text.contains("regimes: none"), "{text}");
}
