//! Protocols through real sockets: HTTP/1.1 and HTTP/2 both sides, h2c, streaming bodies,
//! chunked encoding, trailers (a gRPC-shaped call), and HTTP/1.1 upgrades.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

fn version_upstream(proto: Proto) -> impl std::future::Future<Output = TestUpstream> {
    upstream(proto, None, |req| async move {
        text(200, &format!("{:?}", req.version()))
    })
}

fn config_with_protocol(upstream: std::net::SocketAddr, protocol: &str) -> String {
    config_with(
        upstream,
        "protocol = \"auto\"",
        &format!("protocol = \"{protocol}\""),
        "",
    )
}

#[tokio::test]
async fn auto_listener_serves_http1_and_h2c_on_one_port() {
    let upstream = version_upstream(Proto::Http1).await;
    let proxy = proxy(&config_with_protocol(upstream.addr, "http1")).await;

    let (status, headers, body) = get(&h1_client(), &proxy.url("/")).await;
    assert_eq!((status.as_u16(), &body[..]), (200, &b"HTTP/1.1"[..]));
    assert_eq!(headers["via"], "1.1 rafael");

    let (status, headers, body) = get(&h2c_client(), &proxy.url("/")).await;
    assert_eq!(status, 200);
    assert_eq!(
        &body[..],
        b"HTTP/1.1",
        "an h2c request reaches an HTTP/1.1 upstream"
    );
    assert_eq!(headers["via"], "2 rafael");
}

#[tokio::test]
async fn http2_upstreams_see_the_client_host_as_authority() {
    let upstream = upstream(Proto::Http2, None, |req| async move {
        let authority = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let host_headers = req.headers().get_all("host").iter().count();
        text(200, &format!("{authority} {host_headers}"))
    })
    .await;
    let proxy = proxy(&config_with_protocol(upstream.addr, "http2")).await;
    let request = Request::get(proxy.url("/"))
        .header("host", "orders.internal:8443")
        .body(full(Bytes::new()))
        .unwrap();
    let (status, _, body) = send(&h1_client(), request).await;
    assert_eq!(status, 200);
    assert_eq!(
        &body[..],
        b"orders.internal:8443 0",
        "host moves to :authority, once"
    );
}

#[tokio::test]
async fn http2_upstreams_are_spoken_to_in_http2_and_multiplexed() {
    let upstream = version_upstream(Proto::Http2).await;
    let proxy = proxy(&config_with_protocol(upstream.addr, "http2")).await;
    let client = h1_client();
    let calls = (0..20).map(|_| {
        let client = client.clone();
        let url = proxy.url("/");
        tokio::spawn(async move { get(&client, &url).await })
    });
    for call in calls.collect::<Vec<_>>() {
        let (status, _, body) = call.await.unwrap();
        assert_eq!((status.as_u16(), &body[..]), (200, &b"HTTP/2.0"[..]));
    }
    assert_eq!(
        upstream.connections(),
        1,
        "HTTP/2 multiplexes on one upstream connection"
    );
}

#[tokio::test]
async fn grpc_call_with_trailers_works_end_to_end_over_h2c() {
    // A unary gRPC exchange: length-prefixed message, `te: trailers`, status in trailers.
    let upstream = upstream(Proto::Http2, None, |req| async move {
        assert_eq!(req.headers()["te"], "trailers");
        assert_eq!(req.headers()["content-type"], "application/grpc");
        let message = req.into_body().collect().await.unwrap().to_bytes();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("grpc-message", HeaderValue::from_static("done"));
        let frames = vec![
            Ok::<_, BoxError>(Frame::data(message)),
            Ok(Frame::trailers(trailers)),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        Response::builder()
            .header("content-type", "application/grpc")
            .body(body.boxed())
            .unwrap()
    })
    .await;
    let proxy = proxy(&config_with_protocol(upstream.addr, "http2")).await;

    let mut message = vec![0u8];
    message.extend_from_slice(&5u32.to_be_bytes());
    message.extend_from_slice(b"hello");
    let request = Request::post(proxy.url("/echo.Echo/Say"))
        .version(Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(message.clone()))
        .unwrap();
    let response = h2c_client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .expect("trailers reach the client");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "done");
    assert_eq!(&collected.to_bytes()[..], &message[..]);
}

#[tokio::test]
async fn chunked_bodies_stream_both_ways() {
    // The upstream echoes the request body as it arrives, chunk for chunk.
    let upstream = upstream(Proto::Http1, None, |req| async move {
        Response::new(req.into_body().map_err(|e| Box::new(e) as BoxError).boxed())
    })
    .await;
    let proxy = proxy(&simple_config(upstream.addr, "")).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .await
        .unwrap();
    // The first chunk comes back before the request body is finished: nothing is buffered.
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("hello") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("first chunk relayed before the body ended")
            .unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&seen).to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    stream.write_all(b"6\r\n world\r\n0\r\n\r\n").await.unwrap();
    while !String::from_utf8_lossy(&seen).ends_with("0\r\n\r\n") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed early");
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).contains(" world"));
}

#[tokio::test]
async fn large_bodies_stream_through_in_both_directions() {
    const SIZE: usize = 64 * 1024 * 1024;
    // Upload: the upstream counts bytes; download: it generates them.
    let upstream = upstream(Proto::Http1, None, |req| async move {
        if req.uri().path() == "/download" {
            let chunk = Bytes::from(vec![7u8; 64 * 1024]);
            let frames =
                (0..SIZE / chunk.len()).map(move |_| Ok::<_, BoxError>(Frame::data(chunk.clone())));
            Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed())
        } else {
            let mut body = req.into_body();
            let mut total = 0usize;
            while let Some(frame) = body.frame().await {
                total += frame.unwrap().into_data().map(|d| d.len()).unwrap_or(0);
            }
            text(200, &total.to_string())
        }
    })
    .await;
    let proxy = proxy(&simple_config(upstream.addr, "")).await;
    let client = h1_client();

    let chunk = Bytes::from(vec![1u8; 64 * 1024]);
    let frames =
        (0..SIZE / chunk.len()).map(move |_| Ok::<_, BoxError>(Frame::data(chunk.clone())));
    let request = Request::post(proxy.url("/upload"))
        .body(StreamBody::new(futures_util::stream::iter(frames)).boxed())
        .unwrap();
    let (status, _, body) = send(&client, request).await;
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8_lossy(&body), SIZE.to_string());

    let response = client
        .request(
            Request::get(proxy.url("/download"))
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = response.into_body();
    let mut total = 0;
    while let Some(frame) = body.frame().await {
        total += frame.unwrap().into_data().map(|d| d.len()).unwrap_or(0);
    }
    assert_eq!(total, SIZE);
}

#[tokio::test]
async fn http1_upgrades_are_spliced_both_ways() {
    // The upstream accepts an upgrade to a toy protocol and echoes upper-cased bytes.
    let upstream = upstream(Proto::Http1, None, |mut req| async move {
        assert_eq!(req.headers()["upgrade"], "echo");
        assert_eq!(req.headers()["connection"], "upgrade");
        tokio::spawn(async move {
            let upgraded = hyper::upgrade::on(&mut req).await.unwrap();
            let mut io = hyper_util::rt::TokioIo::new(upgraded);
            let mut buf = [0u8; 64];
            loop {
                let n = io.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                let upper: Vec<u8> = buf[..n].to_ascii_uppercase();
                io.write_all(&upper).await.unwrap();
            }
        });
        Response::builder()
            .status(101)
            .header("upgrade", "echo")
            .header("connection", "upgrade")
            .body(full(Bytes::new()))
            .unwrap()
    })
    .await;
    // Only the upgrades a route lists are spliced (WebSocket by default).
    let proxy = proxy(&simple_config(upstream.addr, r#"upgrades = ["echo"]"#)).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    for word in ["ping", "rafael"] {
        stream.write_all(word.as_bytes()).await.unwrap();
        let mut echoed = vec![0u8; word.len()];
        stream.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed, word.to_ascii_uppercase().as_bytes());
    }
}
