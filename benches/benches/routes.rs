//! Whether route matching and endpoint choice stay flat as a config grows.
//!
//! `cargo bench -p rafael-benches --bench routes`:
//! - `route_match/{first,last,none}/N`: a listener's route lookup (`Snapshot` built from a
//!   `rafael_config` config, then `listener(0).route(..)`, what every request does) with N = 10,
//!   100, 1,000 routes, for a request that the first route takes, one that only the last takes,
//!   and one that none takes (the 404 path);
//! - `snapshot_build/N`: compiling a config of N routes over 100 endpoints, every route with a
//!   circuit breaker (a breaker per route and endpoint): the data plane's share of a reload;
//! - `endpoint_choice/{no_breakers,breakers,half_open}/E`: `rafael_policy::choice::choose`
//!   (power of two choices, the request path's and the simulator's) over E = 1, 10, 100
//!   endpoints, without breakers, with closed breakers, and with every other breaker open.
//!
//! Measurement times are short so the whole bench runs in well under a minute.

use std::{hint::black_box, time::Duration};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, Uri};
use rafael_config::BreakerGenes;
use rafael_proxy::{
    Snapshot,
    policy::{
        Nanos,
        breaker::{Admission, AttemptResult, Breaker, BreakerParams},
        choice::{self, Endpoints},
    },
};

const ROUTES: [usize; 3] = [10, 100, 1_000];
const ENDPOINTS: [usize; 3] = [1, 10, 100];

/// A config of `routes` routes on one listener, each matching its own path prefix, methods and
/// a header (the shapes `request_path` benches), all to one upstream of `endpoints` endpoints;
/// `breakers` gives every route a circuit breaker.
fn config(routes: usize, endpoints: usize, breakers: bool) -> String {
    let mut text = String::from(
        "[[listeners]]\nname = \"in\"\nbind = \"127.0.0.1:0\"\n\n[[upstreams]]\nname = \"app\"\nendpoints = [",
    );
    let list: Vec<String> = (0..endpoints)
        .map(|i| format!("\"127.0.0.1:{}\"", 20_000 + i))
        .collect();
    text.push_str(&list.join(", "));
    text.push_str("]\n");
    for i in 0..routes {
        text.push_str(&format!(
            "\n[[routes]]\nname = \"r{i}\"\nlistener = \"in\"\nupstream = \"app\"\n\
             match = {{ path_prefix = \"/service-{i}/\", methods = [\"GET\", \"HEAD\"], \
             headers = {{ x-tenant = \"blue\" }} }}\n"
        ));
        if breakers {
            text.push_str("[routes.policy]\ncircuit_breaker = { consecutive_failures = 5 }\n");
        }
    }
    text
}

fn snapshot(routes: usize, endpoints: usize, breakers: bool) -> Snapshot {
    let config = rafael_config::parse(&config(routes, endpoints, breakers)).expect("bench config");
    Snapshot::build(config, 1, None).expect("bench snapshot")
}

fn headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("host", "orders.shop.test"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "application/json"),
        ("x-tenant", "blue"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
}

fn route_match(c: &mut Criterion) {
    let headers = headers();
    let method = Method::GET;
    let mut group = c.benchmark_group("route_match");
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_secs(1));
    for routes in ROUTES {
        let snapshot = snapshot(routes, 1, false);
        let listener = snapshot.listener(0).expect("one listener");
        let cases = [
            (
                "first",
                "/service-0/orders/42".to_owned(),
                Some("r0".to_owned()),
            ),
            (
                "last",
                format!("/service-{}/orders/42", routes - 1),
                Some(format!("r{}", routes - 1)),
            ),
            ("none", "/nowhere/orders/42".to_owned(), None),
        ];
        for (name, path, expected) in cases {
            let uri: Uri = path.parse().expect("valid URI");
            let found = listener
                .route(&method, &uri, &headers)
                .map(|r| r.name().to_owned());
            assert_eq!(found, expected, "{name} of {routes}");
            group.bench_with_input(BenchmarkId::new(name, routes), &uri, |b, uri| {
                b.iter(|| {
                    black_box(listener.route(black_box(&method), black_box(uri), &headers))
                        .is_some()
                })
            });
        }
    }
    group.finish();
}

fn snapshot_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot_build");
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_secs(2));
    group.sample_size(10);
    for routes in ROUTES {
        let text = config(routes, 100, true);
        group.bench_with_input(BenchmarkId::from_parameter(routes), &text, |b, text| {
            b.iter(|| {
                let config = rafael_config::parse(text).expect("bench config");
                black_box(Snapshot::build(config, 1, None).expect("bench snapshot"))
            })
        });
    }
    group.finish();
}

/// Endpoints as the choice reads them: in-flight counts and, optionally, a breaker each.
struct Fixed {
    loads: Vec<usize>,
    breakers: Vec<Breaker>,
    params: BreakerParams,
}

impl Fixed {
    /// `count` endpoints with spread loads; `breakers` gives each a closed breaker, and
    /// `half_open` opens every other one.
    fn new(count: usize, breakers: bool, half_open: bool) -> Self {
        let params = BreakerParams::from_genes(&BreakerGenes {
            consecutive_failures: 1,
            ..BreakerGenes::default()
        });
        let mut all = vec![Breaker::default(); if breakers { count } else { 0 }];
        if half_open {
            for breaker in all.iter_mut().step_by(2) {
                let (admission, _) = breaker.admit(0, &params);
                breaker.record(
                    0,
                    &params,
                    admission,
                    AttemptResult::Failure(Duration::from_millis(1)),
                );
            }
        }
        Self {
            loads: (0..count).map(|i| i % 7).collect(),
            breakers: all,
            params,
        }
    }
}

impl Endpoints for Fixed {
    fn count(&self) -> usize {
        self.loads.len()
    }
    fn load(&self, i: usize) -> usize {
        self.loads[i]
    }
    fn has_breakers(&self) -> bool {
        !self.breakers.is_empty()
    }
    fn available(&self, i: usize, now: Nanos) -> bool {
        self.breakers[i].available(now, &self.params)
    }
    fn admit(&mut self, i: usize, now: Nanos) -> Admission {
        let params = self.params;
        self.breakers[i].admit(now, &params).0
    }
}

fn endpoint_choice(c: &mut Criterion) {
    let mut group = c.benchmark_group("endpoint_choice");
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_secs(1));
    // A fixed xorshift, so every run draws the same endpoints.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut pick = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    // One millisecond after the half-open case's breakers opened: they are still open.
    let now: Nanos = 1_000_000;
    for (name, breakers, half_open) in [
        ("no_breakers", false, false),
        ("breakers", true, false),
        ("half_open", true, true),
    ] {
        for count in ENDPOINTS {
            if half_open && count == 1 {
                continue; // its one breaker open: nothing to choose
            }
            let mut endpoints = Fixed::new(count, breakers, half_open);
            assert!(choice::choose(&mut endpoints, None, now, &mut pick).is_some());
            group.bench_function(BenchmarkId::new(name, count), |b| {
                b.iter(|| {
                    black_box(choice::choose(
                        &mut endpoints,
                        black_box(None),
                        now,
                        &mut pick,
                    ))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, route_match, snapshot_build, endpoint_choice);
criterion_main!(benches);
