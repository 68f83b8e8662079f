//! Codec tests against scripted upstreams on real sockets.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::*;
use crate::Body;

/// An upstream that reads one request head and answers with `response` bytes verbatim.
async fn scripted(
    response: impl Into<Vec<u8>>,
) -> (Box<H1Connection>, tokio::task::JoinHandle<Vec<u8>>) {
    let response = response.into();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        // The client may hang up first, on a response it rejects: not this server's failure.
        let _ = stream.write_all(&response).await;
        let _ = stream.shutdown().await;
        // Keep the socket until the client is done.
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
        seen
    });
    let io = UpstreamIo::Plain(TcpStream::connect(addr).await.unwrap());
    (H1Connection::new(io), server)
}

fn nothing_added() -> AddedFields {
    AddedFields::new(HeaderValue::from_static("test-id"))
}

fn get(path: &str) -> (Parts, Body) {
    let (parts, ()) = Request::get(path)
        .header("host", "t")
        .body(())
        .unwrap()
        .into_parts();
    (parts, Body::Empty)
}

/// Sends `method /` to a scripted upstream answering `response`; the exchange's outcome.
async fn answer(
    method: Method,
    response: impl Into<Vec<u8>>,
) -> (Box<H1Connection>, Result<ResponseHead<Body>, ExchangeError>) {
    let (mut conn, _server) = scripted(response).await;
    let (mut parts, mut body) = get("/");
    parts.method = method;
    let head = conn.exchange(&parts, &nothing_added(), &mut body).await;
    (conn, head)
}

async fn read_all(mut body: H1Body<Body>) -> Result<(Bytes, Option<HeaderMap>), ExchangeError> {
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(chunk) => data.extend_from_slice(&chunk),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    Ok((Bytes::from(data), trailers))
}

#[tokio::test]
async fn content_length_body_and_keep_alive() {
    let (mut conn, server) =
        scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Multi: a\r\nX-Multi: b\r\n\r\nhello")
            .await;
    let (parts, mut body) = get("/p?q=1");
    let mut head = conn
        .exchange(&parts, &nothing_added(), &mut body)
        .await
        .unwrap();
    assert_eq!(head.response.status(), 200);
    assert_eq!(head.response.headers().get_all("x-multi").iter().count(), 2);
    assert!(head.keep_alive);
    let (data, _) = read_all(H1Body::new(conn, &mut head, None)).await.unwrap();
    assert_eq!(&data[..], b"hello");
    let request = String::from_utf8(server.await.unwrap()).unwrap();
    assert!(
        request.starts_with("GET /p?q=1 HTTP/1.1\r\nhost: t\r\n"),
        "{request}"
    );
}

#[tokio::test]
async fn chunked_body_with_extensions_and_trailers() {
    let (conn, head) = answer(Method::GET, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nGrpc-Status: 0\r\n\r\n").await;
    let mut head = head.unwrap();
    let (data, trailers) = read_all(H1Body::new(conn, &mut head, None)).await.unwrap();
    assert_eq!(&data[..], b"hello, world");
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
}

#[tokio::test]
async fn interim_responses_are_skipped() {
    let (conn, head) = answer(Method::GET, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n").await;
    let mut head = head.unwrap();
    assert_eq!(head.response.status(), 204);
    assert!(H1Body::new(conn, &mut head, None).is_complete());
}

#[tokio::test]
async fn a_body_without_framing_runs_to_the_close_and_is_not_reused() {
    let (conn, head) = answer(Method::GET, b"HTTP/1.1 200 OK\r\n\r\nuntil the end").await;
    let mut head = head.unwrap();
    assert!(!head.keep_alive);
    let (data, _) = read_all(H1Body::new(conn, &mut head, None)).await.unwrap();
    assert_eq!(&data[..], b"until the end");
}

#[tokio::test]
async fn truncated_and_malformed_responses_are_errors() {
    let (conn, head) = answer(
        Method::GET,
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    )
    .await;
    let mut head = head.unwrap();
    assert!(read_all(H1Body::new(conn, &mut head, None)).await.is_err());

    for bad in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\nabc",
        b"NOT HTTP AT ALL\r\n\r\n",
    ] {
        let error = answer(Method::GET, bad).await.1.unwrap_err();
        assert!(matches!(error, ExchangeError::Protocol(_)), "{error:?}");
    }
}

#[tokio::test]
async fn head_requests_have_no_body_even_with_a_length() {
    let (conn, head) = answer(
        Method::HEAD,
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
    )
    .await;
    let mut head = head.unwrap();
    assert_eq!(head.response.headers()["content-length"], "1000");
    assert!(H1Body::new(conn, &mut head, None).is_complete());
}

#[tokio::test]
async fn both_framings_mean_chunked_and_no_reuse() {
    let (conn, head) = answer(Method::GET, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n").await;
    let mut head = head.unwrap();
    assert!(!head.keep_alive);
    let (data, _) = read_all(H1Body::new(conn, &mut head, None)).await.unwrap();
    assert_eq!(&data[..], b"ok");
}

#[tokio::test]
async fn signed_chunk_sizes_are_rejected() {
    let (conn, head) = answer(
        Method::GET,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let mut head = head.unwrap();
    let error = read_all(H1Body::new(conn, &mut head, None))
        .await
        .unwrap_err();
    assert!(matches!(error, ExchangeError::Protocol(_)), "{error:?}");
}

#[test]
fn request_heads_use_the_origin_form() {
    let (parts, ()) = Request::post("http://svc.local:8080/a/b?c=d")
        .header("host", "svc.local")
        .header("content-type", "text/plain")
        .body(())
        .unwrap()
        .into_parts();
    let mut buf = BytesMut::new();
    let mut added = nothing_added();
    added.push(
        &crate::headers::VIA_NAME,
        HeaderValue::from_static("1.1 rafael"),
    );
    encode_head(&mut buf, &parts, &added, true);
    assert_eq!(
        &buf[..],
        b"POST /a/b?c=d HTTP/1.1\r\nhost: svc.local\r\ncontent-type: text/plain\r\nvia: 1.1 rafael\r\ntransfer-encoding: chunked\r\n\r\n"
    );
}

/// Feeds `response` to the codec from a real socket and drains the body.
async fn drive(response: Vec<u8>) -> Result<(), ExchangeError> {
    let (conn, head) = answer(Method::GET, response).await;
    read_all(H1Body::new(conn, &mut head?, None))
        .await
        .map(drop)
}

#[tokio::test]
async fn arbitrary_responses_end_in_a_response_or_an_error_never_a_hang() {
    // Mutations of valid responses (the interesting inputs) plus pure noise.
    let seeds: [&[u8]; 4] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\nuntil close",
    ];
    let mut rng = fastrand::Rng::with_seed(0x5afe);
    for case in 0..300 {
        let mut bytes = seeds[case % seeds.len()].to_vec();
        match case % 3 {
            0 => {
                for _ in 0..rng.usize(1..4) {
                    let i = rng.usize(..bytes.len());
                    bytes[i] = rng.u8(..);
                }
            }
            1 => bytes.truncate(rng.usize(..bytes.len())),
            _ => bytes = (0..rng.usize(0..200)).map(|_| rng.u8(..)).collect(),
        }
        let outcome = tokio::time::timeout(Duration::from_secs(5), drive(bytes.clone())).await;
        assert!(
            outcome.is_ok(),
            "case {case} hung on {:?}",
            String::from_utf8_lossy(&bytes)
        );
    }
}

#[tokio::test]
async fn hop_by_hop_response_fields_are_left_out_but_a_101_keeps_its_switch() {
    let (_, head) = answer(Method::GET, b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=30\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\nX-Kept: yes\r\nContent-Length: 0\r\n\r\n").await;
    let head = head.unwrap();
    let mut names: Vec<&str> = head.response.headers().keys().map(|n| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["content-length", "x-kept"]);
    assert_eq!(head.idle_limit, Some(Duration::from_secs(29)));

    let (_, head) = answer(
        Method::GET,
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await;
    let head = head.unwrap();
    assert_eq!(head.response.headers()["connection"], "Upgrade");
    assert_eq!(head.response.headers()["upgrade"], "websocket");
}

#[tokio::test]
async fn responses_with_many_fields_keep_them_all_in_order() {
    let mut response = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..60 {
        response.extend_from_slice(format!("X-Field-{i}: value-{i}\r\n").as_bytes());
    }
    response.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
    let (conn, head) = answer(Method::GET, response).await;
    let mut head = head.unwrap();
    assert_eq!(head.response.headers().len(), 61);
    for i in [0, 23, 24, 59] {
        assert_eq!(
            head.response.headers()[format!("x-field-{i}").as_str()],
            format!("value-{i}").as_str()
        );
    }
    let (data, _) = read_all(H1Body::new(conn, &mut head, None)).await.unwrap();
    assert_eq!(&data[..], b"ok");
}
