//! The Chaos Forge's live faults, seen by real clients: each kind, both stages, header
//! targeting and the cap on faults in progress.

mod support;

use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use rafael_proxy::telemetry::Window;
use support::*;

/// A route `r` to `app` with the given policy and fault rules.
fn faulted(app: std::net::SocketAddr, policy: &str, faults: &str) -> String {
    format!(
        "{}\n{policy}\n[chaos]\nheader_secret = \"s3cret\"\nmax_active_faults = 100\n{faults}",
        simple_config(app, "")
    )
}

async fn hello() -> TestUpstream {
    upstream(Proto::Http1, None, |_| async { text(200, "hello") }).await
}

/// Attempts the telemetry saw on route `r` so far.
fn attempts(proxy: &TestProxy) -> u64 {
    let telemetry = proxy.handle.telemetry();
    let route = telemetry.route("r").expect("route r exists");
    route
        .windows(0, telemetry.now())
        .iter()
        .map(|w: &Window| w.attempts)
        .sum()
}

#[tokio::test(start_paused = true)]
async fn a_delay_holds_the_request_for_its_time() {
    let app = hello().await;
    let proxy = proxy(&faulted(
        app.addr,
        "",
        "[[faults]]\nroute = \"r\"\nstage = \"downstream\"\ndelay = \"2s\"\ndelay_max = \"3s\"",
    ))
    .await;
    let started = tokio::time::Instant::now();
    let (status, _, body) = get(&h1_client(), &proxy.url("/")).await;
    let elapsed = started.elapsed();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed <= Duration::from_millis(3_050),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn an_abort_answers_for_the_upstream_and_grpc_gets_a_grpc_status() {
    let app = hello().await;
    let proxy = proxy(&faulted(
        app.addr,
        "",
        "[[faults]]\nroute = \"r\"\nstage = \"downstream\"\nabort = 503\nabort_body = \"chaos says no\"",
    ))
    .await;
    let (status, headers, body) = get(&h1_client(), &proxy.url("/")).await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::SERVICE_UNAVAILABLE, &b"chaos says no"[..])
    );
    assert_eq!(headers["x-rafael-fault"], "abort");

    let request = Request::post(proxy.url("/shop.Orders/Get"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(""))
        .unwrap();
    let (status, headers, _) = send(&h2c_client(), request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["grpc-status"], "14", "UNAVAILABLE for a 503");
    assert_eq!(app.requests(), 0);
}

#[tokio::test]
async fn a_downstream_reset_drops_the_connection_without_an_answer() {
    let app = hello().await;
    let proxy = proxy(&faulted(
        app.addr,
        "",
        "[[faults]]\nroute = \"r\"\nstage = \"downstream\"\nreset = true",
    ))
    .await;
    let request = Request::get(proxy.url("/")).body(full("")).unwrap();
    // The connection was made, then closed with no response on it.
    let error = h1_client().request(request).await.unwrap_err();
    assert!(!error.is_connect(), "{error:?}");
    assert_eq!(app.requests(), 0);
}

#[tokio::test]
async fn upstream_stage_aborts_are_retried_and_broken_out_but_downstream_ones_are_not() {
    let policy = r#"[routes.policy]
retry = { max_attempts = 2, backoff_base = "1ms", backoff_max = "1ms", retry_on = ["5xx"], budget_ratio = 1.0 }
circuit_breaker = { consecutive_failures = 4, open_for = "1h", open_for_max = "1h" }"#;
    for (stage, expected_attempts) in [("upstream", 4), ("downstream", 0)] {
        let app = hello().await;
        let proxy = proxy(&faulted(
            app.addr,
            policy,
            &format!("[[faults]]\nroute = \"r\"\nstage = \"{stage}\"\nabort = 503"),
        ))
        .await;
        let client = h1_client();
        let mut codes = Vec::new();
        for _ in 0..3 {
            let (status, headers, body) = get(&client, &proxy.url("/")).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            codes.push(headers.get("x-rafael-fault").map_or_else(
                || String::from_utf8_lossy(&body).into_owned(),
                |_| "injected".into(),
            ));
        }
        assert_eq!(app.requests(), 0);
        assert_eq!(attempts(&proxy), expected_attempts, "{stage}: {codes:?}");
        // The telemetry's attempt samples say which attempts met an injected fault.
        let samples = proxy
            .handle
            .telemetry()
            .route("r")
            .expect("route r exists")
            .attempts();
        assert_eq!(samples.len() as u64, expected_attempts);
        assert!(samples.iter().all(|sample| sample.fault));
        let snapshot = proxy.handle.load();
        let breaker = snapshot.route("r").unwrap().live().breakers()[0].state();
        match stage {
            // Two requests of two attempts each trip the breaker; the third is shed by it.
            "upstream" => {
                assert_eq!(breaker, rafael_proxy::policy::breaker::BreakerState::Open);
                assert!(codes[2].contains("circuit_open"), "{codes:?}");
            }
            _ => {
                assert_eq!(breaker, rafael_proxy::policy::breaker::BreakerState::Closed);
                assert!(codes.iter().all(|c| c == "injected"), "{codes:?}");
            }
        }
    }
}

#[tokio::test]
async fn a_targeted_fault_needs_the_right_secret() {
    let app = hello().await;
    let proxy = proxy(&faulted(
        app.addr,
        "",
        "[[faults]]\nroute = \"r\"\nabort = 500\nonly_with_header = \"x-rafael-chaos\"",
    ))
    .await;
    let client = h1_client();
    let with = |secret: Option<&'static str>| {
        let mut request = Request::get(proxy.url("/"));
        if let Some(secret) = secret {
            request = request.header("x-rafael-chaos", secret);
        }
        send(&client, request.body(full("")).unwrap())
    };
    assert_eq!(with(None).await.0, StatusCode::OK);
    assert_eq!(with(Some("guess")).await.0, StatusCode::OK);
    assert_eq!(
        with(Some("s3cret")).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(app.requests(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_throttle_paces_the_response_body() {
    let app = upstream(Proto::Http1, None, |_| async {
        http::Response::new(full(vec![b'x'; 64 * 1024]))
    })
    .await;
    let proxy = proxy(&faulted(
        app.addr,
        "",
        "[[faults]]\nroute = \"r\"\nthrottle = \"32KiB/s\"",
    ))
    .await;
    let started = tokio::time::Instant::now();
    let (status, _, body) = get(&h1_client(), &proxy.url("/")).await;
    let elapsed = started.elapsed();
    assert_eq!((status, body.len()), (StatusCode::OK, 64 * 1024));
    // 64 KiB at 32 KiB/s: the last twentieth-of-a-second chunk goes out just before 2 s.
    assert!(
        elapsed >= Duration::from_millis(1_900) && elapsed < Duration::from_millis(2_100),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn a_truncate_cuts_the_body_short() {
    let app = upstream(Proto::Http1, None, |_| async {
        http::Response::new(full(vec![b'x'; 10_000]))
    })
    .await;
    let proxy = proxy(&faulted(
        app.addr,
        "",
        "[[faults]]\nroute = \"r\"\ntruncate = 1000",
    ))
    .await;
    let request = Request::get(proxy.url("/")).body(full("")).unwrap();
    let response = h1_client().request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = 0;
    let ended = loop {
        match body.frame().await {
            Some(Ok(frame)) => received += frame.data_ref().map_or(0, |d| d.len()),
            Some(Err(_)) => break "error",
            None => break "end",
        }
    };
    assert_eq!((received, ended), (1000, "error"));
}

#[tokio::test(start_paused = true)]
async fn a_blackhole_answers_nothing_until_the_route_timeout() {
    let app = hello().await;
    let proxy = proxy(&faulted(
        app.addr,
        "[routes.policy]\ntimeout = \"1s\"",
        "[[faults]]\nroute = \"r\"\nblackhole = true",
    ))
    .await;
    let started = tokio::time::Instant::now();
    let (status, _, _) = get(&h1_client(), &proxy.url("/")).await;
    let elapsed = started.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_millis(1_100),
        "{elapsed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn max_active_faults_holds_under_concurrency() {
    let app = hello().await;
    let config = faulted(
        app.addr,
        "",
        "[[faults]]\nroute = \"r\"\nstage = \"downstream\"\ndelay = \"1s\"",
    )
    .replace("max_active_faults = 100", "max_active_faults = 2");
    let proxy = proxy(&config).await;
    let started = tokio::time::Instant::now();
    let requests: Vec<_> = (0..10)
        .map(|_| {
            let url = proxy.url("/");
            tokio::spawn(async move {
                let (status, _, _) = get(&h1_client(), &url).await;
                assert_eq!(status, StatusCode::OK);
                tokio::time::Instant::now() - started
            })
        })
        .collect();
    let mut delayed = 0;
    for request in requests {
        if request.await.unwrap() >= Duration::from_secs(1) {
            delayed += 1;
        }
    }
    assert_eq!(delayed, 2, "only two faults may be in progress at once");
}

#[tokio::test]
async fn run_time_faults_come_and_go_and_survive_a_reload() {
    use std::sync::{Arc, atomic::Ordering};

    use rafael_config::FaultStage;
    use rafael_proxy::{
        layer::fault::ExtraFaults,
        policy::fault::{FaultKind, FaultRule},
    };

    let app = hello().await;
    let config = faulted(app.addr, "", "");
    let proxy = proxy(&config).await;
    let client = h1_client();
    let extra = Arc::new(ExtraFaults {
        rules: vec![FaultRule {
            kind: FaultKind::Abort {
                status: 503,
                body: None,
            },
            stage: FaultStage::Downstream,
            percent: 100.0,
            only_with_header: None,
        }],
        ..ExtraFaults::default()
    });
    proxy
        .handle
        .set_extra_faults("r", Some(extra.clone()))
        .unwrap();
    assert_eq!(get(&client, &proxy.url("/")).await.0, 503);
    proxy
        .handle
        .reload(rafael_config::parse(&config).unwrap())
        .unwrap();
    assert_eq!(
        get(&client, &proxy.url("/")).await.0,
        503,
        "kept across a reload"
    );
    assert_eq!(extra.injected.load(Ordering::Relaxed), 2);
    proxy.handle.set_extra_faults("r", None).unwrap();
    assert_eq!(get(&client, &proxy.url("/")).await.0, 200);
    assert_eq!(app.requests(), 1);
}

#[tokio::test(start_paused = true)]
async fn memory_pressure_stalls_then_resets_and_brownouts_grow_with_load() {
    use std::sync::Arc;

    use rafael_config::FaultStage;
    use rafael_proxy::{
        layer::{fault::ExtraFaults, now},
        policy::fault::{FaultKind, FaultRule},
    };

    let app = hello().await;
    let proxy = proxy(&faulted(app.addr, "", "")).await;
    let stall = |reset_percent| {
        Arc::new(ExtraFaults {
            rules: vec![FaultRule {
                kind: FaultKind::Stall {
                    period: Duration::from_secs(10),
                    stall: Duration::from_secs(2),
                    reset_percent,
                },
                stage: FaultStage::Downstream,
                percent: 100.0,
                only_with_header: None,
            }],
            ..ExtraFaults::default()
        })
    };
    // Move the (paused) clock to the start of a stall window.
    let to_window = |now: u64| Duration::from_nanos(10_000_000_000 - now % 10_000_000_000);
    proxy
        .handle
        .set_extra_faults("r", Some(stall(0.0)))
        .unwrap();
    tokio::time::sleep(to_window(now())).await;
    let started = tokio::time::Instant::now();
    assert_eq!(get(&h1_client(), &proxy.url("/")).await.0, StatusCode::OK);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1_990) && waited <= Duration::from_millis(2_050),
        "{waited:?}"
    );
    // Outside the window nothing happens.
    let started = tokio::time::Instant::now();
    assert_eq!(get(&h1_client(), &proxy.url("/")).await.0, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_millis(50));

    // With every stalled request reset at the end of the stall: the restart.
    proxy
        .handle
        .set_extra_faults("r", Some(stall(100.0)))
        .unwrap();
    tokio::time::sleep(to_window(now())).await;
    let request = Request::get(proxy.url("/")).body(full("")).unwrap();
    assert!(h1_client().request(request).await.is_err());

    // A brownout at the upstream stage: each request in flight on the route adds 100 ms, so
    // five at once wait 100 to 500 ms.
    let brownout = Arc::new(ExtraFaults {
        rules: vec![FaultRule {
            kind: FaultKind::Brownout {
                per_request: Duration::from_millis(100),
                max: Duration::from_secs(5),
            },
            stage: FaultStage::Upstream,
            percent: 100.0,
            only_with_header: None,
        }],
        ..ExtraFaults::default()
    });
    proxy.handle.set_extra_faults("r", Some(brownout)).unwrap();
    let started = tokio::time::Instant::now();
    let requests: Vec<_> = (0..5)
        .map(|_| {
            let url = proxy.url("/");
            tokio::spawn(async move {
                assert_eq!(get(&h1_client(), &url).await.0, StatusCode::OK);
                started.elapsed()
            })
        })
        .collect();
    let mut waits = Vec::new();
    for request in requests {
        waits.push(request.await.unwrap());
    }
    waits.sort();
    assert!(waits[0] >= Duration::from_millis(100), "{waits:?}");
    assert!(waits[4] >= Duration::from_millis(450), "{waits:?}");
}

#[tokio::test]
async fn a_downstream_reset_over_http2_resets_the_stream() {
    let app = hello().await;
    let proxy = proxy(&faulted(
        app.addr,
        "",
        "[[faults]]\nroute = \"r\"\nstage = \"downstream\"\nreset = true\nonly_with_header = \"x-rafael-chaos\"",
    ))
    .await;
    let client = h2c_client();
    let reset = Request::get(proxy.url("/"))
        .header("x-rafael-chaos", "s3cret")
        .body(full(""))
        .unwrap();
    let error = client.request(reset).await.unwrap_err();
    assert!(!error.is_connect(), "{error:?}");
    // The client's next request is answered normally.
    let (status, _, body) = get(&client, &proxy.url("/")).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));
    assert_eq!(app.requests(), 1);
}
