//! Test harness: real hyper upstreams, a real rafael data plane, and real clients, all on
//! 127.0.0.1:0.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use rafael_proxy::{Server, SnapshotHandle, bind_listeners};
use tokio::{net::TcpListener, task::JoinHandle};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = BoxBody<Bytes, BoxError>;

/// Protocols an upstream serves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Proto {
    Http1,
    Http2,
    Auto,
}

/// A real hyper server that counts its connections and requests.
pub struct TestUpstream {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub closed: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TestUpstream {
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn full(body: impl Into<Bytes>) -> TestBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn text(status: u16, body: &str) -> Response<TestBody> {
    Response::builder()
        .status(status)
        .body(full(body.to_owned()))
        .unwrap()
}

/// Starts an upstream serving `handler`, optionally over TLS.
pub async fn upstream<F, Fut>(
    proto: Proto,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: F,
) -> TestUpstream
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let (conns, reqs, ends) = (connections.clone(), requests.clone(), closed.clone());
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            conns.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            let reqs = reqs.clone();
            let acceptor = acceptor.clone();
            let ends = ends.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    reqs.fetch_add(1, Ordering::SeqCst);
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder = match proto {
                    Proto::Http1 => builder.http1_only(),
                    Proto::Http2 => builder.http2_only(),
                    Proto::Auto => builder,
                };
                match acceptor {
                    None => {
                        let _ = builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .await;
                    }
                    Some(acceptor) => {
                        if let Ok(tls) = acceptor.accept(stream).await {
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                                .await;
                        }
                    }
                }
                ends.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    TestUpstream {
        addr,
        connections,
        closed,
        requests,
        task,
    }
}

/// A running data plane.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub handle: SnapshotHandle,
    pub server: Option<Server>,
}

impl TestProxy {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn listener(&self, name: &str) -> SocketAddr {
        self.server.as_ref().unwrap().address(name).unwrap()
    }
}

/// Starts rafael's data plane from config text, with every listener on port 0.
pub async fn proxy(config: &str) -> TestProxy {
    let config = rafael_config::parse(config).unwrap_or_else(|e| panic!("test config: {e}"));
    let listeners = bind_listeners(&config).await.unwrap();
    let handle = SnapshotHandle::new(config).unwrap_or_else(|e| panic!("snapshot: {e}"));
    let server = Server::start(handle.clone(), listeners).unwrap();
    let addr = server.addresses()[0].1;
    TestProxy {
        addr,
        handle,
        server: Some(server),
    }
}

/// A config with one listener `in`, one upstream `app` and one catch-all route `r`, with
/// extra TOML lines for each of the three sections.
pub fn config_with(
    upstream: SocketAddr,
    listener_extra: &str,
    upstream_extra: &str,
    route_extra: &str,
) -> String {
    format!(
        r#"
[[listeners]]
name = "in"
bind = "127.0.0.1:0"
{listener_extra}

[[upstreams]]
name = "app"
endpoints = ["{upstream}"]
{upstream_extra}

[[routes]]
name = "r"
listener = "in"
upstream = "app"
{route_extra}
"#
    )
}

/// [`config_with`] with extra TOML for the route only (`[routes.policy]` and the like).
pub fn simple_config(upstream: SocketAddr, extra: &str) -> String {
    config_with(upstream, "", "", extra)
}

pub type H1Client = Client<hyper_util::client::legacy::connect::HttpConnector, TestBody>;

pub fn h1_client() -> H1Client {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2c_client() -> H1Client {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Sends a GET and returns status, headers and body.
pub async fn get(client: &H1Client, url: &str) -> (http::StatusCode, http::HeaderMap, Bytes) {
    let request = Request::get(url).body(full(Bytes::new())).unwrap();
    send(client, request).await
}

pub async fn send(
    client: &H1Client,
    request: Request<TestBody>,
) -> (http::StatusCode, http::HeaderMap, Bytes) {
    let response = client.request(request).await.expect("response");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, body)
}

/// Polls `check` until it holds or `deadline` passes (no sleeps as synchronization: this waits
/// for a condition, not for a guess at how long something takes).
pub async fn eventually(deadline: Duration, mut check: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + deadline;
    while tokio::time::Instant::now() < end {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    check()
}

/// A self-signed certificate for `names`, as PEM files in `dir`: (cert, key).
pub fn write_cert(
    dir: &std::path::Path,
    names: &[&str],
) -> (std::path::PathBuf, std::path::PathBuf) {
    let certified = rcgen::generate_simple_self_signed(
        names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
    )
    .unwrap();
    let cert = dir.join(format!("{}.crt", names[0]));
    let key = dir.join(format!("{}.key", names[0]));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

/// A rustls server config from PEM files, with ALPN for h2 and http/1.1.
pub fn server_tls(cert: &std::path::Path, key: &std::path::Path) -> Arc<rustls::ServerConfig> {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(rafael_proxy::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A rustls client config trusting the PEM `ca`, offering `alpn`.
pub fn client_tls(ca: &std::path::Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(rafael_proxy::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}
