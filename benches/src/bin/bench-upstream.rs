//! The end-to-end benchmark's upstream: answers every request with the 13 bytes
//! `Hello, World!`, keep-alive, on one thread.
//!
//! `bench-upstream [--h2c] ADDR [ADDR...]` listens on every address given (the reload scenario's
//! upstreams have a hundred endpoints). Without `--h2c` it serves HTTP/1.1 only, with hyper's
//! HTTP/1.1 server as it always did; with `--h2c` it serves HTTP/1.1 and cleartext HTTP/2 with
//! prior knowledge on the same port (hyper-util's auto builder reads the connection preface).

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;

fn main() -> std::io::Result<()> {
    let mut h2c = false;
    let mut addrs = Vec::new();
    for arg in std::env::args().skip(1) {
        if arg == "--h2c" {
            h2c = true;
        } else {
            addrs.push(arg);
        }
    }
    if addrs.is_empty() {
        addrs.push("127.0.0.1:18080".to_owned());
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let mut listeners = Vec::with_capacity(addrs.len());
            for addr in &addrs {
                // A backlog above TcpListener::bind's 128: the memory scenario's 1,000-connection
                // burst makes a proxy open hundreds of upstream connections at once, and a
                // dropped SYN there would be charged to the proxy as a connect timeout.
                let addr: std::net::SocketAddr = addr.parse().map_err(std::io::Error::other)?;
                let socket = if addr.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                socket.set_reuseaddr(true)?;
                socket.bind(addr)?;
                listeners.push(socket.listen(4096)?);
            }
            let mut tasks = tokio::task::JoinSet::new();
            for listener in listeners {
                tasks.spawn(serve(listener, h2c));
            }
            while let Some(done) = tasks.join_next().await {
                done.map_err(std::io::Error::other)??;
            }
            Ok(())
        })
}

async fn serve(listener: TcpListener, h2c: bool) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let service = service_fn(|_: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                    b"Hello, World!",
                ))))
            });
            // A client closing its connection is the normal end of a benchmark run.
            if h2c {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            } else {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
        });
    }
}
