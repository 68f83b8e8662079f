//! The route genome against real upstreams that misbehave on cue: retries, budget, breaker,
//! rate limit, concurrency, timeouts and hot swaps, seen by a real client.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, StatusCode};
use rafael_config::Genome;
use support::*;
use tokio::sync::Semaphore;

/// An upstream that answers 503 to every `n`th request and 200 to the rest.
async fn failing_every(n: usize) -> TestUpstream {
    let count = Arc::new(AtomicUsize::new(0));
    upstream(Proto::Http1, None, move |_| {
        let i = count.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if i % n == 0 {
                text(503, "down")
            } else {
                text(200, "ok")
            }
        }
    })
    .await
}

/// An upstream that answers 500 while `failing` is set.
async fn switchable(failing: Arc<AtomicBool>) -> TestUpstream {
    upstream(Proto::Http1, None, move |_| {
        let fail = failing.load(Ordering::SeqCst);
        async move {
            if fail {
                text(500, "broken")
            } else {
                text(200, "ok")
            }
        }
    })
    .await
}

fn error_code(body: &Bytes) -> String {
    let json: serde_json::Value = serde_json::from_slice(body).expect("JSON error body");
    json["error"].as_str().expect("error field").to_owned()
}

#[tokio::test]
async fn retries_recover_transient_failures() {
    let app = failing_every(3).await;
    let proxy = proxy(&simple_config(
        app.addr,
        r#"[routes.policy]
retry = { max_attempts = 3, backoff_base = "1ms", backoff_max = "2ms", retry_on = ["gateway-error"], budget_ratio = 1.0 }"#,
    ))
    .await;
    let client = h1_client();
    for i in 0..30 {
        let (status, _, body) = get(&client, &proxy.url("/")).await;
        assert_eq!(status, StatusCode::OK, "request {i}: {body:?}");
    }
    // Every third attempt failed and was retried: the 30th success was attempt 44 (44 - 44/3).
    assert_eq!(app.requests(), 44);
}

#[tokio::test]
async fn a_total_outage_costs_at_most_one_plus_the_budget_per_request() {
    let app = failing_every(1).await;
    let proxy = proxy(&simple_config(
        app.addr,
        r#"[routes.policy]
retry = { max_attempts = 5, backoff_base = "1ms", backoff_max = "1ms", retry_on = ["5xx"], budget_ratio = 0.2, budget_min_per_sec = 2 }"#,
    ))
    .await;
    let client = h1_client();
    let started = std::time::Instant::now();
    let requests = 200;
    for _ in 0..requests {
        let (status, _, _) = get(&client, &proxy.url("/")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    let seconds = started.elapsed().as_secs() + 1;
    let attempts = app.requests() as u64;
    // Without a budget, five attempts each: 1,000. With it: 1.2 per request plus the floor.
    let bound = requests + requests / 5 + 2 * (seconds + 1);
    assert!(
        attempts > requests && attempts <= bound,
        "{attempts} attempts for {requests} requests (bound {bound})"
    );
}

#[tokio::test]
async fn non_idempotent_requests_are_not_retried_unless_the_route_opts_in() {
    for (opt_in, expected_attempts) in [(false, 1), (true, 2)] {
        let app = failing_every(1).await;
        let proxy = proxy(&simple_config(
            app.addr,
            &format!(
                r#"[routes.policy]
retry = {{ max_attempts = 2, backoff_base = "1ms", backoff_max = "1ms", retry_on = ["5xx"], retry_non_idempotent = {opt_in} }}"#
            ),
        ))
        .await;
        let request = Request::post(proxy.url("/orders"))
            .body(full("order"))
            .unwrap();
        let (status, _, _) = send(&h1_client(), request).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(app.requests(), expected_attempts, "opt-in {opt_in}");
    }
}

#[tokio::test]
async fn bodies_are_replayed_up_to_max_replay_bytes_and_larger_ones_sent_once() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let app = {
        let seen = seen.clone();
        upstream(Proto::Http1, None, move |request| {
            let seen = seen.clone();
            let first = count.fetch_add(1, Ordering::SeqCst) % 2 == 0;
            async move {
                use http_body_util::BodyExt;
                let body = request.into_body().collect().await.unwrap().to_bytes();
                seen.lock().unwrap().push(body.len());
                if first {
                    text(503, "try again")
                } else {
                    text(200, "stored")
                }
            }
        })
        .await
    };
    let proxy = proxy(&simple_config(
        app.addr,
        r#"[routes.policy]
retry = { max_attempts = 2, backoff_base = "1ms", backoff_max = "1ms", retry_on = ["503"], max_replay_bytes = "1KiB" }"#,
    ))
    .await;
    let client = h1_client();
    let small = Request::put(proxy.url("/doc"))
        .body(full(vec![b'a'; 1000]))
        .unwrap();
    assert_eq!(send(&client, small).await.0, StatusCode::OK);
    assert_eq!(*seen.lock().unwrap(), [1000, 1000]);

    let large = Request::put(proxy.url("/doc"))
        .body(full(vec![b'b'; 5000]))
        .unwrap();
    assert_eq!(
        send(&client, large).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(*seen.lock().unwrap(), [1000, 1000, 5000]);
}

#[tokio::test]
async fn a_retry_after_longer_than_backoff_max_is_not_retried_sooner() {
    let app = upstream(Proto::Http1, None, |_| async {
        http::Response::builder()
            .status(503)
            .header("retry-after", "30")
            .body(full("later"))
            .unwrap()
    })
    .await;
    let proxy = proxy(&simple_config(
        app.addr,
        r#"[routes.policy]
retry = { max_attempts = 3, backoff_max = "1s", retry_on = ["503"] }"#,
    ))
    .await;
    let (status, headers, _) = get(&h1_client(), &proxy.url("/")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        headers["retry-after"], "30",
        "the upstream's answer is relayed"
    );
    assert_eq!(app.requests(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opens_at_its_threshold_sheds_load_and_recovers_through_half_open() {
    let failing = Arc::new(AtomicBool::new(true));
    let app = switchable(failing.clone()).await;
    let proxy = proxy(&simple_config(
        app.addr,
        r#"[routes.policy]
circuit_breaker = { consecutive_failures = 5, open_for = "5s", half_open_probes = 2 }"#,
    ))
    .await;
    let client = h1_client();
    for _ in 0..5 {
        assert_eq!(get(&client, &proxy.url("/")).await.0, 500);
    }
    let opened = tokio::time::Instant::now();
    // Open: rafael answers itself and the upstream sees nothing more.
    for _ in 0..20 {
        let (status, _, body) = get(&client, &proxy.url("/")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error_code(&body), "circuit_open");
    }
    assert_eq!(app.requests(), 5);

    // The upstream recovers; after open_for the breaker lets probes through and closes.
    failing.store(false, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, _) = get(&client, &proxy.url("/")).await;
        if status == StatusCode::OK {
            let open_for = opened.elapsed();
            assert!(
                open_for >= Duration::from_secs(5) && open_for < Duration::from_millis(5_100),
                "half-opened after {open_for:?}"
            );
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            tokio::time::Instant::now() < deadline,
            "breaker never half-opened"
        );
        // Polling for the open period to end; the upstream sees no request meanwhile.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..10 {
        assert_eq!(get(&client, &proxy.url("/")).await.0, StatusCode::OK);
    }
    let snapshot = proxy.handle.load();
    let breaker = &snapshot.route("r").unwrap().live().breakers()[0];
    assert_eq!(
        breaker.state(),
        rafael_proxy::policy::breaker::BreakerState::Closed
    );
}

#[tokio::test]
async fn failure_on_decides_what_the_breaker_counts() {
    let failing = Arc::new(AtomicBool::new(true));
    let app = switchable(failing).await;
    // 500s come from the handler, not from an unhealthy endpoint: this route does not count them.
    let proxy = proxy(&simple_config(
        app.addr,
        r#"[routes.policy]
circuit_breaker = { consecutive_failures = 2, failure_on = ["gateway-error", "connect-failure", "reset", "timeout"] }"#,
    ))
    .await;
    let client = h1_client();
    for _ in 0..10 {
        assert_eq!(get(&client, &proxy.url("/")).await.0, 500);
    }
    assert_eq!(app.requests(), 10);
}

#[tokio::test]
async fn the_balancer_skips_an_endpoint_whose_breaker_is_open() {
    let healthy = upstream(Proto::Http1, None, |_| async { text(200, "ok") }).await;
    // A port with nothing listening: connections are refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = format!(
        r#"
[[listeners]]
name = "in"
bind = "127.0.0.1:0"

[[upstreams]]
name = "app"
endpoints = ["{}", "{dead}"]

[[routes]]
name = "r"
listener = "in"
upstream = "app"
[routes.policy]
retry = {{ max_attempts = 2, backoff_base = "1ms", backoff_max = "1ms", retry_on = ["connect-failure"], budget_ratio = 1.0 }}
circuit_breaker = {{ consecutive_failures = 3, open_for = "1h", open_for_max = "1h" }}
"#,
        healthy.addr
    );
    let proxy = proxy(&config).await;
    let client = h1_client();
    for i in 0..100 {
        let (status, _, body) = get(&client, &proxy.url("/")).await;
        assert_eq!(status, StatusCode::OK, "request {i}: {body:?}");
    }
    let snapshot = proxy.handle.load();
    let breakers = snapshot.route("r").unwrap().live().breakers();
    assert_eq!(
        breakers[1].state(),
        rafael_proxy::policy::breaker::BreakerState::Open
    );
    // Once open, every request went to the healthy endpoint first time.
    let before = healthy.requests();
    for _ in 0..20 {
        assert_eq!(get(&client, &proxy.url("/")).await.0, StatusCode::OK);
    }
    assert_eq!(healthy.requests(), before + 20);
}

#[tokio::test]
async fn the_rate_limit_holds_its_rate_within_five_percent_and_says_when_to_come_back() {
    let app = upstream(Proto::Http1, None, |_| async { text(200, "ok") }).await;
    let proxy = proxy(&simple_config(
        app.addr,
        r#"[routes.policy]
rate_limit = { rps = 200, burst = 10 }"#,
    ))
    .await;
    let admitted = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let started = tokio::time::Instant::now();
    let run_for = Duration::from_secs(2);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (admitted, refused) = (admitted.clone(), refused.clone());
            let url = proxy.url("/");
            tokio::spawn(async move {
                let client = h1_client();
                while started.elapsed() < run_for {
                    let (status, headers, body) = get(&client, &url).await;
                    match status {
                        StatusCode::OK => admitted.fetch_add(1, Ordering::SeqCst),
                        StatusCode::TOO_MANY_REQUESTS => {
                            assert_eq!(headers["retry-after"], "1");
                            assert_eq!(error_code(&body), "rate_limited");
                            refused.fetch_add(1, Ordering::SeqCst)
                        }
                        other => panic!("unexpected {other}"),
                    };
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let admitted = admitted.load(Ordering::SeqCst) as f64;
    let expected = 200.0 * elapsed + 10.0;
    assert!(
        refused.load(Ordering::SeqCst) > 0,
        "the clients never hit the limit"
    );
    assert!(
        (admitted - expected).abs() <= expected * 0.05,
        "{admitted} admitted in {elapsed:.2} s; expected {expected:.0} ± 5%"
    );
    assert_eq!(app.requests() as f64, admitted);
}

#[tokio::test]
async fn per_key_limits_keep_clients_apart() {
    let app = upstream(Proto::Http1, None, |_| async { text(200, "ok") }).await;
    let proxy = proxy(&simple_config(
        app.addr,
        r#"[routes.policy]
rate_limit = { rps = 0.01, burst = 3, key = "header:x-api-key" }"#,
    ))
    .await;
    let client = h1_client();
    let call = |key: &'static str| {
        let request = Request::get(proxy.url("/"))
            .header("x-api-key", key)
            .body(full(""))
            .unwrap();
        send(&client, request)
    };
    for _ in 0..3 {
        assert_eq!(call("alice").await.0, StatusCode::OK);
    }
    assert_eq!(call("alice").await.0, StatusCode::TOO_MANY_REQUESTS);
    // Another key has its own burst.
    assert_eq!(call("bob").await.0, StatusCode::OK);
}

#[tokio::test]
async fn concurrency_above_max_in_flight_is_shed_at_once() {
    let gate = Arc::new(Semaphore::new(0));
    let app = {
        let gate = gate.clone();
        upstream(Proto::Http1, None, move |_| {
            let gate = gate.clone();
            async move {
                gate.acquire().await.unwrap().forget();
                text(200, "ok")
            }
        })
        .await
    };
    let proxy = proxy(&simple_config(
        app.addr,
        r#"[routes.policy]
concurrency = { max_in_flight = 2 }"#,
    ))
    .await;
    let held: Vec<_> = (0..2)
        .map(|_| {
            let url = proxy.url("/");
            tokio::spawn(async move { get(&h1_client(), &url).await.0 })
        })
        .collect();
    assert!(eventually(Duration::from_secs(10), || app.requests() == 2).await);
    for _ in 0..3 {
        let (status, _, body) = get(&h1_client(), &proxy.url("/")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error_code(&body), "overloaded");
    }
    gate.add_permits(2);
    for request in held {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    // The slots came back with the response bodies.
    gate.add_permits(1);
    assert_eq!(get(&h1_client(), &proxy.url("/")).await.0, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn the_route_timeout_fires_at_its_deadline() {
    let app = upstream(Proto::Http1, None, |_| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        text(200, "late")
    })
    .await;
    let proxy = proxy(&simple_config(
        app.addr,
        r#"[routes.policy]
timeout = "2s""#,
    ))
    .await;
    let started = tokio::time::Instant::now();
    let (status, _, body) = get(&h1_client(), &proxy.url("/")).await;
    let elapsed = started.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(error_code(&body), "timeout");
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_millis(2_100),
        "answered after {elapsed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn per_try_timeouts_move_on_to_the_next_attempt() {
    let count = Arc::new(AtomicUsize::new(0));
    let app = upstream(Proto::Http1, None, move |_| {
        let slow = count.fetch_add(1, Ordering::SeqCst) < 2;
        async move {
            if slow {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            text(200, "ok")
        }
    })
    .await;
    let proxy = proxy(&simple_config(
        app.addr,
        r#"[routes.policy]
timeout = "5s"
retry = { max_attempts = 3, per_try_timeout = "300ms", backoff_base = "1ms", backoff_max = "1ms", retry_on = ["timeout"] }"#,
    ))
    .await;
    let started = tokio::time::Instant::now();
    let (status, _, _) = get(&h1_client(), &proxy.url("/")).await;
    let elapsed = started.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert!(
        elapsed >= Duration::from_millis(600) && elapsed < Duration::from_millis(700),
        "two attempts timed out at 300 ms each; answered after {elapsed:?}"
    );
    assert_eq!(app.requests(), 3);
}

#[tokio::test]
async fn a_rate_limited_route_stays_limited_across_a_swap() {
    let app = upstream(Proto::Http1, None, |_| async { text(200, "ok") }).await;
    let proxy = proxy(&simple_config(
        app.addr,
        r#"[routes.policy]
rate_limit = { rps = 0.01, burst = 5 }"#,
    ))
    .await;
    let client = h1_client();
    for _ in 0..5 {
        assert_eq!(get(&client, &proxy.url("/")).await.0, StatusCode::OK);
    }
    assert_eq!(
        get(&client, &proxy.url("/")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    let policies = proxy.handle.policies();
    let mut genome = policies.genome("r").unwrap();
    genome.rate_limit.as_mut().unwrap().rps = 0.02;
    genome.rate_limit.as_mut().unwrap().burst = 8;
    policies.swap("r", genome).unwrap();
    assert_eq!(policies.generation("r"), Some(2));
    // Still five admissions owed at the new rate: three of the new burst of eight remain.
    for _ in 0..3 {
        assert_eq!(get(&client, &proxy.url("/")).await.0, StatusCode::OK);
    }
    assert_eq!(
        get(&client, &proxy.url("/")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn a_request_keeps_its_genome_across_attempts_when_a_swap_lands_mid_request() {
    let gate = Arc::new(Semaphore::new(0));
    let count = Arc::new(AtomicUsize::new(0));
    let app = {
        let gate = gate.clone();
        upstream(Proto::Http1, None, move |_| {
            let first = count.fetch_add(1, Ordering::SeqCst) == 0;
            let gate = gate.clone();
            async move {
                if first {
                    gate.acquire().await.unwrap().forget();
                    text(503, "first attempt fails")
                } else {
                    text(200, "ok")
                }
            }
        })
        .await
    };
    let proxy = proxy(&simple_config(
        app.addr,
        r#"[routes.policy]
retry = { max_attempts = 2, backoff_base = "1ms", backoff_max = "1ms", retry_on = ["503"] }"#,
    ))
    .await;
    let url = proxy.url("/");
    let request = tokio::spawn(async move { get(&h1_client(), &url).await.0 });
    assert!(eventually(Duration::from_secs(10), || app.requests() == 1).await);
    // The new genome has no retries; the request in flight keeps the one it started with.
    proxy
        .handle
        .policies()
        .swap("r", Genome::default())
        .unwrap();
    gate.add_permits(1);
    assert_eq!(request.await.unwrap(), StatusCode::OK);
    assert_eq!(app.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_swaps_under_traffic_fail_no_request() {
    let app = upstream(Proto::Http1, None, |_| async { text(200, "ok") }).await;
    let proxy = proxy(&simple_config(
        app.addr,
        r#"[routes.policy]
timeout = "10s"
retry = { max_attempts = 2, retry_on = ["connect-failure"] }
circuit_breaker = { consecutive_failures = 5 }
rate_limit = { rps = 1000000, burst = 100000 }
concurrency = { max_in_flight = 1000 }"#,
    ))
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, url) = (stop.clone(), proxy.url("/"));
            tokio::spawn(async move {
                let client = h1_client();
                let mut done = 0;
                while !stop.load(Ordering::SeqCst) {
                    let (status, _, body) = get(&client, &url).await;
                    assert_eq!(status, StatusCode::OK, "{body:?}");
                    done += 1;
                }
                done
            })
        })
        .collect();
    let policies = proxy.handle.policies();
    let base = policies.genome("r").unwrap();
    for i in 0..1_000u32 {
        let mut genome = base.clone();
        let retry = genome.retry.as_mut().unwrap();
        retry.max_attempts = 2 + i % 3;
        genome.rate_limit.as_mut().unwrap().rps = 1_000_000.0 + f64::from(i % 7);
        genome.concurrency.as_mut().unwrap().max_in_flight = 1_000 + i % 5;
        genome.concurrency.as_mut().unwrap().adaptive = i % 2 == 0;
        genome
            .circuit_breaker
            .as_mut()
            .unwrap()
            .consecutive_failures = 5 + i % 4;
        policies.swap("r", genome).unwrap();
        if i % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for worker in workers {
        total += worker.await.unwrap();
    }
    assert!(total > 0);
    assert_eq!(policies.generation("r"), Some(1_001));
}

#[tokio::test]
async fn an_invalid_genome_is_refused_and_changes_nothing() {
    let app = upstream(Proto::Http1, None, |_| async { text(200, "ok") }).await;
    let proxy = proxy(&simple_config(app.addr, "")).await;
    let policies = proxy.handle.policies();
    let version = proxy.handle.load().version();
    let genome = Genome {
        retry: Some(rafael_config::RetryGenes {
            max_attempts: 0,
            ..Default::default()
        }),
        ..Genome::default()
    };
    let errors = policies.swap("r", genome).unwrap_err().to_string();
    assert!(
        errors.contains("routes[0].policy.retry.max_attempts"),
        "{errors}"
    );
    assert_eq!(proxy.handle.load().version(), version);
    assert!(policies.swap("nope", Genome::default()).is_err());
}

#[tokio::test(start_paused = true)]
async fn the_adaptive_limit_falls_when_the_upstream_queues() {
    // An upstream with room for 8 requests at once: beyond that, each one waits behind the rest.
    let busy = Arc::new(AtomicUsize::new(0));
    let app = {
        let busy = busy.clone();
        upstream(Proto::Http1, None, move |_| {
            let busy = busy.clone();
            async move {
                let ahead = busy.fetch_add(1, Ordering::SeqCst);
                let queue = ahead.saturating_sub(8) as u64;
                tokio::time::sleep(Duration::from_millis(5 + 5 * queue)).await;
                busy.fetch_sub(1, Ordering::SeqCst);
                text(200, "ok")
            }
        })
        .await
    };
    let proxy = proxy(&simple_config(
        app.addr,
        r#"[routes.policy]
concurrency = { max_in_flight = 256, adaptive = true }"#,
    ))
    .await;
    let limit = || {
        let snapshot = proxy.handle.load();
        snapshot
            .route("r")
            .unwrap()
            .live()
            .adaptive_limit()
            .unwrap()
    };
    assert_eq!(limit(), 256);
    let run = |workers: usize, requests: usize| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let url = proxy.url("/");
                tokio::spawn(async move {
                    let client = h1_client();
                    let mut shed = 0;
                    for _ in 0..requests {
                        match get(&client, &url).await.0 {
                            StatusCode::OK => {}
                            StatusCode::SERVICE_UNAVAILABLE => shed += 1,
                            other => panic!("unexpected {other}"),
                        }
                    }
                    shed
                })
            })
            .collect();
        async move {
            let mut shed = 0;
            for handle in handles {
                shed += handle.await.unwrap();
            }
            shed
        }
    };
    // Light load teaches the limit the upstream's unloaded latency...
    assert_eq!(run(4, 200).await, 0);
    assert_eq!(limit(), 256);
    // ...then 64 clients at once build a queue upstream, and the limit comes down toward the
    // upstream's capacity.
    run(64, 60).await;
    let after = limit();
    assert!(after < 128, "the limit stayed at {after}");
}

#[tokio::test]
async fn a_rejected_reload_leaves_the_live_policy_state_alone() {
    let app = upstream(Proto::Http1, None, |_| async { text(200, "ok") }).await;
    let config = |rps: &str, tls: &str| {
        config_with(
            app.addr,
            tls,
            "",
            &format!("[routes.policy]\nrate_limit = {{ rps = {rps}, burst = 3 }}"),
        )
    };
    let proxy = proxy(&config("0.01", "")).await;
    let client = h1_client();
    for _ in 0..3 {
        assert_eq!(get(&client, &proxy.url("/")).await.0, StatusCode::OK);
    }
    assert_eq!(
        get(&client, &proxy.url("/")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // A new rate in a file that fails as a whole (its listener's certificate cannot be read,
    // which is found after the routes are built): the bucket must not have been rescaled to a
    // rate that never went live.
    let rejected = rafael_config::parse(&config(
        "1000",
        r#"tls = { cert = "/nonexistent/cert.pem", key = "/nonexistent/key.pem" }"#,
    ))
    .unwrap();
    assert!(proxy.handle.reload(rejected).is_err());
    assert_eq!(
        get(&client, &proxy.url("/")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test(start_paused = true)]
async fn a_backoff_that_would_outlast_the_deadline_relays_the_answer_at_hand() {
    let app = upstream(Proto::Http1, None, |_| async {
        http::Response::builder()
            .status(503)
            .header("retry-after", "2")
            .body(full("busy"))
            .unwrap()
    })
    .await;
    let proxy = proxy(&simple_config(
        app.addr,
        r#"[routes.policy]
timeout = "1s"
retry = { max_attempts = 3, backoff_max = "5s", retry_on = ["503"] }"#,
    ))
    .await;
    let started = tokio::time::Instant::now();
    let (status, _, body) = get(&h1_client(), &proxy.url("/")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body:?}");
    assert_eq!(body, "busy");
    assert!(started.elapsed() < Duration::from_millis(100));
    assert_eq!(app.requests(), 1);
}

#[tokio::test]
async fn retries_replay_bodies_over_http2_both_ways() {
    let count = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let app = {
        let bodies = bodies.clone();
        upstream(Proto::Http2, None, move |request| {
            let fail = count.fetch_add(1, Ordering::SeqCst) % 2 == 0;
            let bodies = bodies.clone();
            async move {
                use http_body_util::BodyExt;
                let body = request.into_body().collect().await.unwrap().to_bytes();
                bodies.lock().unwrap().push(body);
                if fail {
                    text(502, "bad gateway")
                } else {
                    text(200, "stored")
                }
            }
        })
        .await
    };
    let proxy = proxy(&config_with(
        app.addr,
        "",
        r#"protocol = "http2""#,
        r#"[routes.policy]
retry = { max_attempts = 2, backoff_base = "1ms", backoff_max = "1ms", retry_on = ["gateway-error"], budget_ratio = 1.0 }"#,
    ))
    .await;
    let client = h2c_client();
    for i in 0..5 {
        let request = Request::put(proxy.url("/doc"))
            .body(full(format!("document {i}")))
            .unwrap();
        let (status, _, body) = send(&client, request).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"stored"[..]));
    }
    // Each document reached the upstream twice, whole both times.
    let bodies = bodies.lock().unwrap();
    assert_eq!(bodies.len(), 10);
    for (i, pair) in bodies.chunks(2).enumerate() {
        let expected = format!("document {i}");
        assert_eq!(pair, [expected.as_bytes(), expected.as_bytes()]);
    }
}
