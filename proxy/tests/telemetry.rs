//! The telemetry windows agree with what a real client observed over the same period.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::StatusCode;
use rafael_proxy::telemetry::{Outcome, Window};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_agree_with_what_the_client_saw() {
    let count = Arc::new(AtomicUsize::new(0));
    let app = upstream(Proto::Http1, None, move |_| {
        let i = count.fetch_add(1, Ordering::SeqCst);
        async move {
            if i % 4 == 3 {
                text(500, "broken")
            } else {
                text(200, "ok")
            }
        }
    })
    .await;
    let proxy = proxy(&simple_config(
        app.addr,
        r#"[routes.policy]
rate_limit = { rps = 300, burst = 20 }"#,
    ))
    .await;
    let telemetry = proxy.handle.telemetry();
    let from = telemetry.now();
    let started = tokio::time::Instant::now();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let url = proxy.url("/");
            tokio::spawn(async move {
                let client = h1_client();
                let mut seen = [0u64; 3];
                while started.elapsed() < Duration::from_millis(1_500) {
                    match get(&client, &url).await.0 {
                        StatusCode::OK => seen[0] += 1,
                        StatusCode::INTERNAL_SERVER_ERROR => seen[1] += 1,
                        StatusCode::TOO_MANY_REQUESTS => seen[2] += 1,
                        other => panic!("unexpected {other}"),
                    }
                }
                seen
            })
        })
        .collect();
    let mut seen = [0u64; 3];
    for worker in workers {
        for (total, count) in seen.iter_mut().zip(worker.await.unwrap()) {
            *total += count;
        }
    }
    let to = telemetry.now();
    let route = telemetry.route("r").unwrap();
    let windows = route.windows(from, to);
    assert!(windows.len() >= 2, "{} windows", windows.len());
    let mut total = windows[0].clone();
    for window in &windows[1..] {
        total.merge(window);
    }
    let requests: u64 = seen.iter().sum();
    assert_eq!(total.requests, requests);
    assert_eq!(total.outcome(Outcome::Success), seen[0]);
    assert_eq!(total.outcome(Outcome::ServerError), seen[1]);
    assert_eq!(total.outcome(Outcome::RateLimited), seen[2]);
    assert!(seen[2] > 0, "the rate limit was never reached");
    assert_eq!(total.responses(), requests);
    assert_eq!(total.latency.iter().sum::<u64>(), requests);
    assert_eq!(total.attempts, app.requests() as u64);
    assert!(total.peak_in_flight >= 1 && total.peak_in_flight <= 4);
    // Per second, too: each window's responses are the requests it saw finish, and the
    // seconds together hold all of them.
    let per_second: u64 = windows.iter().map(Window::responses).sum();
    assert_eq!(per_second, requests);

    // The sample rings hold the newest requests and attempts, in the same clock.
    let arrivals = route.arrivals();
    assert!(!arrivals.is_empty());
    assert!(arrivals.iter().all(|&t| t >= from && t <= to));
    let attempts = route.attempts();
    assert!(!attempts.is_empty());
    assert!(
        attempts
            .iter()
            .all(|a| a.start >= from && a.start <= to && a.attempt == 1)
    );
}
