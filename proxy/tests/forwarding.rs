//! Forwarding semantics through real sockets: headers per RFC 9110, routing, balancing, pooling.
#![allow(clippy::unwrap_used)]

mod support;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::Request;
use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Mutex,
};

/// Echoes the request's method, path and headers back as text lines.
async fn echo_upstream() -> TestUpstream {
    upstream(Proto::Http1, None, |req| async move {
        let mut lines = vec![format!("{} {}", req.method(), req.uri())];
        for (name, value) in req.headers() {
            lines.push(format!("{}: {}", name, value.to_str().unwrap_or("?")));
        }
        text(200, &lines.join("\n"))
    })
    .await
}

fn header_lines(body: &Bytes) -> Vec<String> {
    String::from_utf8_lossy(body)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn hop_by_hop_headers_stay_on_their_hop() {
    let upstream = echo_upstream().await;
    let proxy = proxy(&simple_config(upstream.addr, "")).await;

    // A raw request, so nothing in a client library tidies the headers for us.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let request = "GET /a?b=1 HTTP/1.1\r\nHost: svc.local\r\nConnection: keep-alive, x-hop\r\n\
        X-Hop: secret\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers, gzip\r\n\
        Upgrade: h2c\r\nX-End: kept\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let lower = response.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{response}");
    let echoed: Vec<&str> = lower.split("\r\n\r\n").nth(1).unwrap().lines().collect();
    assert_eq!(echoed[0], "get /a?b=1");
    for gone in ["x-hop:", "keep-alive:", "proxy-connection:", "upgrade:"] {
        assert!(
            !echoed.iter().any(|l| l.starts_with(gone)),
            "{gone} forwarded: {echoed:?}"
        );
    }
    assert!(echoed.contains(&"te: trailers"), "{echoed:?}");
    assert!(echoed.contains(&"x-end: kept"), "{echoed:?}");
    assert!(echoed.contains(&"host: svc.local"), "{echoed:?}");
}

#[tokio::test]
async fn forwarding_headers_and_request_ids() {
    let upstream = echo_upstream().await;
    let proxy = proxy(&simple_config(upstream.addr, "")).await;
    let client = h1_client();

    let request = Request::get(proxy.url("/x"))
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-request-id", "req-42")
        .body(full(Bytes::new()))
        .unwrap();
    let (status, headers, body) = send(&client, request).await;
    assert_eq!(status, 200);
    let echoed = header_lines(&body);
    assert!(
        echoed.contains(&"x-forwarded-for: 203.0.113.9, 127.0.0.1".to_owned()),
        "{echoed:?}"
    );
    assert!(
        echoed.contains(&"x-forwarded-proto: http".to_owned()),
        "{echoed:?}"
    );
    assert!(
        echoed.contains(&format!("x-forwarded-host: {}", proxy.addr)),
        "{echoed:?}"
    );
    assert!(echoed.contains(&"via: 1.1 rafael".to_owned()), "{echoed:?}");
    assert!(
        echoed.contains(&"x-request-id: req-42".to_owned()),
        "{echoed:?}"
    );
    assert_eq!(
        headers["x-request-id"], "req-42",
        "the id is returned to the client"
    );
    assert_eq!(headers["via"], "1.1 rafael");

    let (_, headers, body) = get(&client, &proxy.url("/y")).await;
    let generated = headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(generated.len(), 36, "a UUID is generated: {generated}");
    assert!(header_lines(&body).contains(&format!("x-request-id: {generated}")));
}

#[tokio::test]
async fn routes_match_host_prefix_methods_and_headers_first_match_wins() {
    let a = upstream(Proto::Http1, None, |_| async { text(200, "a") }).await;
    let b = upstream(Proto::Http1, None, |_| async { text(200, "b") }).await;
    let c = upstream(Proto::Http1, None, |_| async { text(200, "c") }).await;
    let config = format!(
        r#"
[[listeners]]
name = "in"
bind = "127.0.0.1:0"

[[upstreams]]
name = "a"
endpoints = ["{}"]
[[upstreams]]
name = "b"
endpoints = ["{}"]
[[upstreams]]
name = "c"
endpoints = ["{}"]

[[routes]]
name = "canary"
listener = "in"
upstream = "c"
match = {{ path_prefix = "/orders", headers = {{ x-canary = "1" }} }}

[[routes]]
name = "orders-read"
listener = "in"
upstream = "a"
match = {{ host = "*.shop.test", path_prefix = "/orders", methods = ["GET", "HEAD"] }}

[[routes]]
name = "orders-any"
listener = "in"
upstream = "b"
match = {{ path_prefix = "/orders" }}
"#,
        a.addr, b.addr, c.addr
    );
    let proxy = proxy(&config).await;
    let client = h1_client();
    let call = |method: &str, host: &str, path: &str, canary: bool| {
        let mut builder = Request::builder()
            .method(method)
            .uri(proxy.url(path))
            .header("host", host);
        if canary {
            builder = builder.header("x-canary", "1");
        }
        builder.body(full(Bytes::new())).unwrap()
    };
    let body =
        |r: (http::StatusCode, http::HeaderMap, Bytes)| String::from_utf8_lossy(&r.2).into_owned();

    assert_eq!(
        body(send(&client, call("GET", "eu.shop.test", "/orders/1", false)).await),
        "a"
    );
    assert_eq!(
        body(send(&client, call("POST", "eu.shop.test", "/orders/1", false)).await),
        "b"
    );
    assert_eq!(
        body(send(&client, call("GET", "other.test", "/orders/1", false)).await),
        "b"
    );
    assert_eq!(
        body(send(&client, call("GET", "eu.shop.test", "/orders/1", true)).await),
        "c"
    );

    let (status, headers, body) = send(&client, call("GET", "eu.shop.test", "/users", false)).await;
    assert_eq!(status, 404);
    assert_eq!(headers["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"], "no_route");
    assert!(
        json["detail"].as_str().unwrap().contains("/users"),
        "{json}"
    );
}

#[tokio::test]
async fn power_of_two_choices_prefers_the_less_loaded_endpoint() {
    // `slow` holds every request until released; `fast` answers at once.
    let gate = Arc::new(Mutex::new(()));
    let held = gate.clone().lock_owned().await;
    let slow = {
        let gate = gate.clone();
        upstream(Proto::Http1, None, move |_| {
            let gate = gate.clone();
            async move {
                let _open = gate.lock().await;
                text(200, "slow")
            }
        })
        .await
    };
    let fast = upstream(Proto::Http1, None, |_| async { text(200, "fast") }).await;
    let config = format!(
        r#"
[[listeners]]
name = "in"
bind = "127.0.0.1:0"
[[upstreams]]
name = "app"
endpoints = ["{}", "{}"]
[[routes]]
name = "r"
listener = "in"
upstream = "app"
"#,
        slow.addr, fast.addr
    );
    let proxy = proxy(&config).await;
    let client = h1_client();

    // With two endpoints P2C compares both every time: once `slow` holds a request, every
    // later request goes to `fast` until `slow` frees up.
    let mut pending = Vec::new();
    while slow.requests() == 0 {
        let client = client.clone();
        let url = proxy.url("/");
        pending.push(tokio::spawn(async move { get(&client, &url).await }));
        assert!(
            eventually(Duration::from_secs(5), || slow.requests() + fast.requests()
                >= pending.len())
            .await,
            "requests reach the upstreams"
        );
    }
    let fast_before = fast.requests();
    for _ in 0..50 {
        let (_, _, body) = get(&client, &proxy.url("/")).await;
        assert_eq!(&body[..], b"fast");
    }
    assert_eq!(fast.requests(), fast_before + 50);
    drop(held);
    for p in pending {
        assert_eq!(p.await.unwrap().0, 200);
    }
}

#[tokio::test]
async fn upstream_connections_are_pooled_and_kept_alive() {
    let upstream = upstream(Proto::Http1, None, |_| async { text(200, "ok") }).await;
    let proxy = proxy(&simple_config(upstream.addr, "")).await;
    let client = h1_client();
    for _ in 0..200 {
        assert_eq!(get(&client, &proxy.url("/")).await.0, 200);
    }
    assert_eq!(upstream.requests(), 200);
    assert_eq!(
        upstream.connections(),
        1,
        "sequential requests reuse one pooled connection"
    );
}

#[tokio::test]
async fn an_http10_request_without_host_gets_one_for_the_http11_upstream() {
    let upstream = echo_upstream().await;
    let proxy = proxy(&simple_config(upstream.addr, "")).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /old HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    assert!(
        response.contains(&format!("host: {}", upstream.addr)),
        "{response}"
    );
    assert!(
        response.to_ascii_lowercase().contains("via: 1.0 rafael"),
        "{response}"
    );
}

#[tokio::test]
async fn connection_close_from_the_client_is_not_forwarded() {
    let upstream = echo_upstream().await;
    let proxy = proxy(&simple_config(upstream.addr, "")).await;
    let client = h1_client();
    let request = Request::get(proxy.url("/"))
        .header("connection", "close")
        .body(full(Bytes::new()))
        .unwrap();
    let (status, _, body) = send(&client, request).await;
    assert_eq!(status, 200);
    assert!(
        !header_lines(&body)
            .iter()
            .any(|l| l.starts_with("connection:"))
    );
    // The upstream connection stays pooled even though the client asked to close its own.
    assert_eq!(get(&client, &proxy.url("/")).await.0, 200);
    assert_eq!(upstream.connections(), 1);
}
