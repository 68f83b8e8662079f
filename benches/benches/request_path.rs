//! Per-request cost of rafael's own work on the request path (routing, header rewriting,
//! request ids), against a baseline every proxy pays: cloning the request's header map.
//!
//! `cargo bench -p rafael-benches --bench request_path`; compare each figure to the baseline
//! printed in the same run.

use std::{collections::BTreeMap, hint::black_box};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, Uri, Version};
use rafael_config::{HostMatch, RouteMatch};
use rafael_proxy::{
    headers::{Forwarded, prepare_request, prepare_response},
    router::Matcher,
};

fn typical_request_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("host", "orders.shop.test"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, br"),
        ("authorization", "Bearer 0123456789abcdef"),
        ("x-tenant", "blue"),
        ("connection", "keep-alive"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
}

fn routes() -> Vec<Matcher> {
    (0..10)
        .map(|i| {
            Matcher::new(&RouteMatch {
                host: Some(HostMatch::Suffix("shop.test".into())),
                path_prefix: Some(format!("/service-{i}")),
                methods: Some(vec!["GET".into(), "HEAD".into()]),
                headers: BTreeMap::from([("x-tenant".to_owned(), "blue".to_owned())]),
            })
        })
        .collect()
}

fn request_path(c: &mut Criterion) {
    let headers = typical_request_headers();
    let forwarded = Forwarded::new("10.0.0.7".parse().expect("valid IP"), false);
    let matchers = routes();
    let uri: Uri = "/service-9/orders/42?expand=items"
        .parse()
        .expect("valid URI");

    let mut group = c.benchmark_group("request_path");
    group.bench_function("baseline_clone_headers", |b| {
        b.iter(|| black_box(headers.clone()))
    });
    group.bench_function("prepare_request", |b| {
        b.iter(|| {
            let mut h = headers.clone();
            black_box(prepare_request(
                &mut h,
                Version::HTTP_11,
                None,
                &forwarded,
                false,
            ));
            h
        })
    });
    group.bench_function("prepare_response", |b| {
        let id = HeaderValue::from_static("0f8c2b1e-8f64-4b8e-9d7e-2f1f1c7d9a10");
        b.iter(|| {
            let mut h = headers.clone();
            prepare_response(&mut h, Version::HTTP_11, id.clone());
            h
        })
    });
    group.bench_function("route_match_last_of_10", |b| {
        b.iter(|| {
            black_box(
                matchers
                    .iter()
                    .position(|m| m.matches(&Method::GET, &uri, &headers)),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, request_path);
criterion_main!(benches);
