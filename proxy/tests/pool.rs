//! The upstream connection pool: reuse, stale connections, abandoned bodies, idle eviction.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::*;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
};

#[tokio::test]
async fn a_pooled_connection_closed_by_the_upstream_is_replaced_transparently() {
    // An upstream that answers keep-alive, then closes the connection anyway, every time:
    // the pooled connection is stale by the time the next request checks it out.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                while reader.read_line(&mut line).await.unwrap_or(0) > 0 {
                    if line == "\r\n" {
                        break;
                    }
                    line.clear();
                }
                let stream = reader.get_mut();
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    let proxy = proxy(&simple_config(addr, "")).await;
    let client = h1_client();
    for i in 0..50 {
        let (status, _, body) = get(&client, &proxy.url("/")).await;
        assert_eq!(
            (status.as_u16(), &body[..]),
            (200, &b"ok"[..]),
            "request {i}"
        );
    }
}

#[tokio::test]
async fn a_body_abandoned_half_way_takes_its_connection_with_it() {
    let upstream = upstream(Proto::Http1, None, |req| async move {
        if req.uri().path() == "/big" {
            let chunk = Bytes::from(vec![0u8; 64 * 1024]);
            let frames = (0..1024).map(move |_| Ok::<_, BoxError>(Frame::data(chunk.clone())));
            Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed())
        } else {
            text(200, "small")
        }
    })
    .await;
    let proxy = proxy(&simple_config(upstream.addr, "")).await;
    let client = h1_client();
    let response = client
        .request(
            Request::get(proxy.url("/big"))
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    // The next exchange cannot reuse a connection with half a body still on it.
    let fresh = h1_client();
    let (status, _, body) = get(&fresh, &proxy.url("/small")).await;
    assert_eq!((status.as_u16(), &body[..]), (200, &b"small"[..]));
    assert_eq!(upstream.connections(), 2);
    assert!(
        eventually(Duration::from_secs(5), || upstream.closed() >= 1).await,
        "the abandoned upstream connection is closed"
    );
}

#[tokio::test]
async fn idle_pooled_connections_are_closed_after_the_pool_idle_timeout() {
    let upstream = upstream(Proto::Http1, None, |_| async { text(200, "ok") }).await;
    let config = config_with(upstream.addr, "", "pool_idle_timeout = \"200ms\"", "");
    let proxy = proxy(&config).await;
    assert_eq!(get(&h1_client(), &proxy.url("/")).await.0, 200);
    assert_eq!(upstream.connections(), 1);
    assert!(
        eventually(Duration::from_secs(10), || upstream.closed() == 1).await,
        "the idle pooled connection was not closed"
    );
    // A new request opens a new connection.
    assert_eq!(get(&h1_client(), &proxy.url("/")).await.0, 200);
    assert_eq!(upstream.connections(), 2);
}

#[tokio::test]
async fn concurrent_requests_get_their_own_connections_and_all_return_to_the_pool() {
    let upstream = upstream(Proto::Http1, None, |_| async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        text(200, "ok")
    })
    .await;
    let proxy = proxy(&simple_config(upstream.addr, "")).await;
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let client = h1_client();
            let url = proxy.url("/");
            tokio::spawn(async move { get(&client, &url).await.0 })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), 200);
    }
    let opened = upstream.connections();
    assert!(opened > 1 && opened <= 16, "{opened}");
    let snapshot = proxy.handle.load();
    let endpoint = &snapshot.routes()[0].upstream().endpoints()[0];
    assert!(
        eventually(Duration::from_secs(5), || endpoint.idle_connections()
            == opened)
        .await,
        "{} of {opened} connections back in the pool",
        endpoint.idle_connections()
    );
    assert_eq!(endpoint.in_flight(), 0);
}

#[tokio::test]
async fn an_early_answer_to_an_upload_reaches_the_client_and_retires_the_connection() {
    // The upstream refuses the upload from its head alone, answers 413 at once, and then
    // swallows whatever body still comes, as a careful server does.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                let mut upload = false;
                while reader.read_line(&mut line).await.unwrap_or(0) > 0 {
                    if line == "\r\n" {
                        break;
                    }
                    upload |= line
                        .to_ascii_lowercase()
                        .starts_with("content-length: 8388608");
                    line.clear();
                }
                if upload {
                    reader
                        .get_mut()
                        .write_all(
                            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\n\r\ntoo big!",
                        )
                        .await
                        .unwrap();
                    let mut sink = [0u8; 65536];
                    while tokio::io::AsyncReadExt::read(&mut reader, &mut sink)
                        .await
                        .unwrap_or(0)
                        > 0
                    {}
                } else {
                    let _ = reader
                        .get_mut()
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                    let mut sink = [0u8; 1024];
                    while tokio::io::AsyncReadExt::read(&mut reader, &mut sink)
                        .await
                        .unwrap_or(0)
                        > 0
                    {}
                }
            });
        }
    });
    let proxy = proxy(&simple_config(addr, "")).await;
    let client = h1_client();
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let frames = (0..128).map(move |_| Ok::<_, BoxError>(Frame::data(chunk.clone())));
    let request = Request::post(proxy.url("/upload"))
        .header("content-length", "8388608")
        .body(StreamBody::new(futures_util::stream::iter(frames)).boxed())
        .unwrap();
    let (status, _, body) = send(&client, request).await;
    assert_eq!((status.as_u16(), &body[..]), (413, &b"too big!"[..]));
    // The connection was mid-upload when the answer ended: it must not carry the next request.
    let (status, _, _) = get(&h1_client(), &proxy.url("/next")).await;
    assert_eq!(status, 200);
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_upstreams_keep_alive_timeout_bounds_reuse() {
    // `timeout=1` leaves no safe time to reuse (rafael retires a second early); `timeout=30`
    // leaves plenty.
    for (timeout, expected_connections) in [(1, 3), (30, 1)] {
        let upstream = upstream(Proto::Http1, None, move |_| async move {
            Response::builder()
                .header("keep-alive", format!("timeout={timeout}, max=100"))
                .body(full("ok"))
                .unwrap()
        })
        .await;
        let proxy = proxy(&simple_config(upstream.addr, "")).await;
        let client = h1_client();
        for _ in 0..3 {
            assert_eq!(get(&client, &proxy.url("/")).await.0, 200);
        }
        assert_eq!(
            upstream.connections(),
            expected_connections,
            "timeout={timeout}"
        );
    }
}
