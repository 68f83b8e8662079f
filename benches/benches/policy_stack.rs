//! Per-request cost of the route stack (DESIGN §2): every policy on, against a healthy
//! upstream that answers at once, compared in the same run with the innermost service called
//! directly (passthrough) and with the same stack on a route without policies.
//!
//! `cargo bench -p rafael-benches --bench policy_stack`. The upstream is an in-memory service
//! so the figures are the layers' own work: engines, bookkeeping, the boxed futures.

use std::{
    future::Future,
    hint::black_box,
    pin::pin,
    sync::Arc,
    task::{Context, Poll, Waker},
};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderValue, Request, Response};
use rafael_proxy::{
    Body, ProxyError, SnapshotHandle,
    headers::{Forwarded, prepare_request},
    layer::{
        Attempt, Breaker, Concurrency, PolicyRequest, RateLimit, ResponseFuture, Retry, Timeout,
        now,
    },
    snapshot::Route,
    upstream::{Exchange, RequestHead},
};
use tower::Service;

/// Answers every attempt with an empty 200, at once.
#[derive(Debug, Clone, Copy)]
struct Healthy;

impl Service<Attempt> for Healthy {
    type Response = Exchange;
    type Error = ProxyError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Attempt) -> Self::Future {
        Box::pin(std::future::ready(Ok(Exchange {
            response: Response::new(Body::Empty),
            upgraded: None,
            endpoint: 0,
            answered_at: 0,
            injected: false,
        })))
    }
}

/// Two routes on one upstream: "plain" without a genome, "full" with every policy on (the
/// genome the end-to-end harness's `rafael-policies` peer runs).
const CONFIG: &str = concat!(
    r#"
[[listeners]]
name = "in"
bind = "127.0.0.1:0"

[[upstreams]]
name = "app"
endpoints = ["127.0.0.1:9", "127.0.0.1:10", "127.0.0.1:11"]

[[routes]]
name = "plain"
listener = "in"
upstream = "app"
match = { path_prefix = "/plain" }

[[routes]]
name = "full"
listener = "in"
upstream = "app"
"#,
    include_str!("../e2e/rafael-policies.toml")
);

/// Polls a future that completes without waiting (the upstream answers at once).
fn run<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the bench upstream answers at once"),
    }
}

fn head() -> Arc<RequestHead> {
    let (mut parts, ()) = Request::get("/orders/42")
        .header("host", "orders.shop.test")
        .header("accept", "application/json")
        .body(())
        .expect("valid request")
        .into_parts();
    let forwarded = Forwarded::new("10.0.0.7".parse().expect("valid IP"), false);
    let added = prepare_request(&mut parts.headers, parts.version, None, &forwarded, false);
    Arc::new(RequestHead {
        parts,
        added,
        targets: Default::default(),
    })
}

fn request(route: &Arc<Route>, head: &Arc<RequestHead>) -> PolicyRequest {
    PolicyRequest {
        route: route.clone(),
        head: head.clone(),
        body: Body::Empty,
        client_ip: HeaderValue::from_static("10.0.0.7"),
        arrived: now(),
        sampled: false,
        permit: None,
        deadline: None,
    }
}

fn policy_stack(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _entered = runtime.enter();
    let config = rafael_config::parse(CONFIG).expect("bench config");
    let handle = SnapshotHandle::new(config).expect("bench snapshot");
    let snapshot = handle.load();
    let plain = snapshot.route("plain").expect("plain route").clone();
    let full = snapshot.route("full").expect("full route").clone();
    let head = head();
    let stack = || {
        RateLimit::new(Concurrency::new(Timeout::new(Retry::new(Breaker::new(
            Healthy,
        )))))
    };

    let mut group = c.benchmark_group("policy_stack");
    group.bench_function("passthrough", |b| {
        b.iter(|| {
            let attempt = Attempt {
                route: plain.clone(),
                head: head.clone(),
                body: Body::Empty,
                number: 1,
                avoid: None,
                per_try_timeout: None,
                deadline: None,
                endpoint: 0,
                sampled: false,
                permit: None,
                in_flight: 1,
                start: 0,
            };
            black_box(run(Healthy.call(attempt)).map(|e| e.endpoint))
        })
    });
    group.bench_function("stack_no_policies", |b| {
        b.iter(|| black_box(run(stack().call(request(&plain, &head))).map(|e| e.endpoint)))
    });
    group.bench_function("stack_all_policies", |b| {
        b.iter(|| black_box(run(stack().call(request(&full, &head))).map(|e| e.endpoint)))
    });
    group.finish();
}

criterion_group!(benches, policy_stack);
criterion_main!(benches);
