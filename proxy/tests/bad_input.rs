//! Protection against bad input and failing upstreams: every case ends in the right status with
//! a JSON body, or a closed connection, never a hang or a panic.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

fn listener_config(
    upstream: std::net::SocketAddr,
    listener_extra: &str,
    upstream_extra: &str,
) -> String {
    config_with(upstream, listener_extra, upstream_extra, "")
}

/// Reads until the peer closes, returning what arrived; fails the test if that takes too long.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return all,
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
            Err(_) => panic!("connection still open after {limit:?}"),
        }
    }
}

/// Trickles a header byte every 50 ms, never finishing the head, until the proxy closes the
/// connection, and checks that it was closed between `at_least` and 5 s after `started`.
async fn assert_trickle_is_cut(stream: &mut TcpStream, started: Instant, at_least: Duration) {
    let trickle = async {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if stream.write_all(b"X").await.is_err() {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), trickle)
        .await
        .unwrap();
    read_until_closed(stream, Duration::from_secs(5)).await;
    let lived = started.elapsed();
    assert!(lived >= at_least, "closed too early: {lived:?}");
    assert!(lived < Duration::from_secs(5), "closed too late: {lived:?}");
}

fn json_error(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn slowloris_connections_are_closed_at_the_header_read_timeout() {
    let upstream = upstream(Proto::Http1, None, |_| async { text(200, "ok") }).await;
    let proxy = proxy(&listener_config(
        upstream.addr,
        r#"header_read_timeout = "300ms""#,
        "",
    ))
    .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Trickle a header byte now and then, never finishing the head.
    assert_trickle_is_cut(&mut stream, started, Duration::from_millis(300)).await;
    assert_eq!(upstream.requests(), 0);
}

#[tokio::test]
async fn a_slow_second_head_on_a_keep_alive_connection_is_cut_at_the_header_read_timeout() {
    // The first request's deadline counts from accept (rafael's watchdog); later ones are
    // hyper's timer, which rafael backs with its deadline queue. The idle timeout is far away,
    // so only the header read timeout can close this connection within the test's limit.
    let upstream = upstream(Proto::Http1, None, |_| async { text(200, "ok") }).await;
    let proxy = proxy(&listener_config(
        upstream.addr,
        "header_read_timeout = \"400ms\"\nidle_timeout = \"60s\"",
        "",
    ))
    .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.ends_with(b"\r\n\r\nok") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("the first response comes")
            .unwrap();
        assert!(n > 0, "closed before the first response: {seen:?}");
        seen.extend_from_slice(&buf[..n]);
    }
    let started = Instant::now();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // hyper's timer started as the first response went out, a moment before `started`.
    assert_trickle_is_cut(&mut stream, started, Duration::from_millis(300)).await;
    assert_eq!(upstream.requests(), 1);
}

#[tokio::test]
async fn oversized_heads_get_431_with_a_json_body() {
    let upstream = upstream(Proto::Http1, None, |_| async { text(200, "ok") }).await;
    let proxy = proxy(&listener_config(
        upstream.addr,
        r#"max_header_bytes = "2KiB""#,
        "",
    ))
    .await;
    let client = h1_client();
    let request = Request::get(proxy.url("/"))
        .header("x-big", "a".repeat(3000))
        .body(full(Bytes::new()))
        .unwrap();
    let (status, headers, body) = send(&client, request).await;
    assert_eq!(status, 431);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(json_error(&body)["error"], "headers_too_large");
    // A head just under the limit passes.
    let request = Request::get(proxy.url("/"))
        .header("x-big", "a".repeat(1500))
        .body(full(Bytes::new()))
        .unwrap();
    assert_eq!(send(&client, request).await.0, 200);
    assert_eq!(upstream.requests(), 1);
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let upstream = upstream(Proto::Http1, None, |_| async { text(200, "ok") }).await;
    let proxy = proxy(&listener_config(
        upstream.addr,
        "idle_timeout = \"300ms\"\nheader_read_timeout = \"30s\"",
        "",
    ))
    .await;
    for protocol in ["h2", "h1"] {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        if protocol == "h1" {
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
        } else {
            stream
                .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
                .await
                .unwrap();
        }
        let started = Instant::now();
        let seen = read_until_closed(&mut stream, Duration::from_secs(10)).await;
        let lived = started.elapsed();
        assert!(
            !seen.is_empty(),
            "{protocol}: the connection answered before closing"
        );
        assert!(
            lived >= Duration::from_millis(250),
            "{protocol}: closed too early: {lived:?}"
        );
        assert!(
            lived < Duration::from_secs(5),
            "{protocol}: closed too late: {lived:?}"
        );
    }
}

#[tokio::test]
async fn malformed_requests_get_400() {
    let upstream = upstream(Proto::Http1, None, |_| async { text(200, "ok") }).await;
    let proxy = proxy(&simple_config(upstream.addr, "")).await;
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(garbage).await.unwrap();
        let response = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        let response = String::from_utf8_lossy(&response);
        assert!(
            response.starts_with("HTTP/1.1 400"),
            "{garbage:?} -> {response}"
        );
    }
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    let response = String::from_utf8_lossy(&buf[..n]);
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.contains("\"bad_request\""), "{response}");
    assert_eq!(upstream.requests(), 0);
}

#[tokio::test]
async fn unreachable_upstream_is_a_502_with_json() {
    let port = {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap()
    };
    let proxy = proxy(&simple_config(port, "")).await;
    let (status, headers, body) = get(&h1_client(), &proxy.url("/")).await;
    assert_eq!(status, 502);
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers.contains_key("x-request-id"));
    let json = json_error(&body);
    assert_eq!(json["error"], "upstream_unreachable");
    assert!(
        json["detail"].as_str().unwrap().contains(&port.to_string()),
        "{json}"
    );
}

#[tokio::test]
async fn connect_timeout_is_a_504() {
    // A listener whose accept queue is full drops further SYNs, so a connect to it hangs.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full_listener = socket.listen(0).unwrap();
    let addr = full_listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await
        {
            fillers.push(stream);
        } else {
            break;
        }
    }
    let proxy = proxy(&listener_config(addr, "", r#"connect_timeout = "200ms""#)).await;
    let started = Instant::now();
    let (status, _, body) = get(&h1_client(), &proxy.url("/")).await;
    assert_eq!(status, 504, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json_error(&body)["error"], "upstream_connect_timeout");
    assert!(started.elapsed() >= Duration::from_millis(200));
    drop(full_listener);
}

#[tokio::test]
async fn route_timeout_is_a_504() {
    let upstream = upstream(Proto::Http1, None, |_| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        text(200, "late")
    })
    .await;
    let proxy = proxy(&simple_config(
        upstream.addr,
        "[routes.policy]\ntimeout = \"200ms\"",
    ))
    .await;
    let started = Instant::now();
    let (status, _, body) = get(&h1_client(), &proxy.url("/")).await;
    assert_eq!(status, 504);
    assert_eq!(json_error(&body)["error"], "timeout");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

#[tokio::test]
async fn random_bytes_never_hang_or_break_the_proxy() {
    let upstream = upstream(Proto::Http1, None, |_| async { text(200, "ok") }).await;
    let proxy = proxy(&listener_config(
        upstream.addr,
        r#"header_read_timeout = "500ms""#,
        "",
    ))
    .await;
    let mut rng = fastrand::Rng::with_seed(7);
    let mut tasks = Vec::new();
    for i in 0..64 {
        let len = rng.usize(1..2048);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        if i % 2 == 0 {
            // Half of them start like HTTP, to get past the first parser checks.
            let mut prefix = b"POST /x HTTP/1.1\r\n".to_vec();
            prefix.append(&mut bytes);
            bytes = prefix;
        }
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let _ = stream.write_all(&bytes).await;
            read_until_closed(&mut stream, Duration::from_secs(10)).await;
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        get(&h1_client(), &proxy.url("/")).await.0,
        200,
        "still serving"
    );
}
