//! TLS with certificates generated at test time: termination on a listener (ALPN h2 and
//! http/1.1) and origination to an upstream (custom CA, SNI name).
#![allow(clippy::unwrap_used)]

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use support::*;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

async fn tls_request(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
    alpn: &'static [u8],
) -> (String, http::StatusCode, String) {
    let connector = TlsConnector::from(client_tls(ca, &[alpn]));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("proxy.test").unwrap(), tcp)
        .await
        .unwrap();
    let negotiated = String::from_utf8_lossy(tls.get_ref().1.alpn_protocol().unwrap()).into_owned();
    let io = TokioIo::new(tls);
    let request = Request::get("https://proxy.test/hello")
        .body(full(Bytes::new()))
        .unwrap();
    let response = if alpn == b"h2" {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(conn);
        sender.send_request(request).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        sender.send_request(request).await.unwrap()
    };
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        negotiated,
        status,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// One TLS listener with the PEM `cert` and `key`, one catch-all route to `upstream`.
fn tls_listener_config(
    cert: &std::path::Path,
    key: &std::path::Path,
    upstream: std::net::SocketAddr,
) -> String {
    format!(
        r#"
[[listeners]]
name = "in"
bind = "127.0.0.1:0"
tls = {{ cert = "{}", key = "{}" }}
[[upstreams]]
name = "app"
endpoints = ["{upstream}"]
[[routes]]
name = "r"
listener = "in"
upstream = "app"
"#,
        cert.display(),
        key.display(),
    )
}

#[tokio::test]
async fn listener_terminates_tls_with_alpn_for_both_protocols() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_cert(dir.path(), &["proxy.test"]);
    let upstream = upstream(Proto::Http1, None, |req| async move {
        let proto = req.headers()["x-forwarded-proto"]
            .to_str()
            .unwrap()
            .to_owned();
        text(200, &proto)
    })
    .await;
    let config = tls_listener_config(&cert, &key, upstream.addr);
    let proxy = proxy(&config).await;
    for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
        let (negotiated, status, body) = tls_request(proxy.addr, &cert, alpn).await;
        assert_eq!(negotiated.as_bytes(), alpn);
        assert_eq!(status, 200);
        assert_eq!(body, "https", "X-Forwarded-Proto says the client used TLS");
    }
}

#[tokio::test]
async fn upstream_tls_checks_the_custom_ca_and_sends_the_sni_name() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_cert(dir.path(), &["backend.internal"]);
    let (other_cert, _) = write_cert(dir.path(), &["someone-else.test"]);
    let server = server_tls(&cert, &key);
    let upstream = upstream(Proto::Auto, Some(server), |req| async move {
        text(200, &format!("{:?}", req.version()))
    })
    .await;
    let config = |ca: &std::path::Path, name: &str, protocol: &str| {
        format!(
            r#"
[[listeners]]
name = "in"
bind = "127.0.0.1:0"
[[upstreams]]
name = "app"
endpoints = ["{}"]
protocol = "{protocol}"
tls = {{ ca = "{}", server_name = "{name}" }}
[[routes]]
name = "r"
listener = "in"
upstream = "app"
"#,
            upstream.addr,
            ca.display()
        )
    };
    let client = h1_client();

    for (protocol, expected) in [("http1", "HTTP/1.1"), ("http2", "HTTP/2.0")] {
        let good = proxy(&config(&cert, "backend.internal", protocol)).await;
        let (status, _, body) = get(&client, &good.url("/")).await;
        assert_eq!(status, 200);
        assert_eq!(
            &body[..],
            expected.as_bytes(),
            "ALPN picks the upstream protocol"
        );
    }

    // The certificate is valid, but not for this name: the handshake must fail, as a 502.
    let wrong_name = proxy(&config(&cert, "impostor.internal", "http1")).await;
    let (status, _, body) = get(&client, &wrong_name.url("/")).await;
    assert_eq!(status, 502);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"], "upstream_unreachable");
    assert!(json["detail"].as_str().unwrap().contains("tls"), "{json}");

    // A CA that did not sign the certificate: also refused.
    let wrong_ca = proxy(&config(&other_cert, "backend.internal", "http1")).await;
    assert_eq!(get(&client, &wrong_ca.url("/")).await.0, 502);
}

#[tokio::test]
async fn a_reload_rotates_the_listener_certificate_for_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (first_cert, first_key) = write_cert(dir.path(), &["proxy.test"]);
    let live_cert = dir.path().join("live.crt");
    let live_key = dir.path().join("live.key");
    std::fs::copy(&first_cert, &live_cert).unwrap();
    std::fs::copy(&first_key, &live_key).unwrap();
    let upstream = upstream(Proto::Http1, None, |_| async { text(200, "ok") }).await;
    let config = tls_listener_config(&live_cert, &live_key, upstream.addr);
    let proxy = proxy(&config).await;
    assert_eq!(
        tls_request(proxy.addr, &first_cert, b"http/1.1").await.1,
        200
    );

    // cert-manager style rotation: new files in place, then a reload.
    let rotated = dir.path().join("rotated");
    std::fs::create_dir(&rotated).unwrap();
    let (second_cert, second_key) = write_cert(&rotated, &["proxy.test"]);
    std::fs::copy(&second_cert, &live_cert).unwrap();
    std::fs::copy(&second_key, &live_key).unwrap();
    proxy
        .handle
        .reload(rafael_config::parse(&config).unwrap())
        .unwrap();

    assert_eq!(
        tls_request(proxy.addr, &second_cert, b"http/1.1").await.1,
        200
    );
    let connector = TlsConnector::from(client_tls(&first_cert, &[b"http/1.1"]));
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let handshake = connector
        .connect(ServerName::try_from("proxy.test").unwrap(), tcp)
        .await;
    assert!(
        handshake.is_err(),
        "the old certificate is no longer served"
    );
}
