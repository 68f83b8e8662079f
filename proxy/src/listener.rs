//! The HTTP server settings of a listener's connections, built once per snapshot.

use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioExecutor, TokioTimer},
    server::conn::auto,
};
use rafael_config::{ListenerConfig, ListenerProtocol};

/// Response bytes buffered per HTTP/2 stream.
const MAX_SEND_BUF_BYTES: usize = 64 * 1024;

/// How a listener serves its connections.
#[derive(Clone)]
pub enum HttpServer {
    /// HTTP/1.1 only: hyper's HTTP/1.1 connection itself, without the auto builder's version
    /// sniffing (a first read into a rewind buffer, then its check on every read).
    Http1(http1::Builder),
    /// HTTP/2 only, or either protocol by the client's first bytes.
    Auto(auto::Builder<TokioExecutor>),
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http1(builder) => f.debug_tuple("Http1").field(builder).finish(),
            Self::Auto(_) => f.write_str("Auto"),
        }
    }
}

/// The HTTP/1.1 settings, on hyper's own builder or the auto builder's HTTP/1.1 half (two types
/// with the same methods). hyper's limits sit above ours, as a backstop: rafael checks
/// `max_header_bytes` itself so that an oversized head gets a JSON 431 and a metric, not a bare
/// one.
macro_rules! http1_settings {
    ($builder:expr, $listener:expr, $max_buf:expr) => {
        $builder
            .timer(TokioTimer::new())
            .header_read_timeout($listener.header_read_timeout.get())
            .max_buf_size($max_buf)
            .max_headers(1024)
            .keep_alive(true)
    };
}

/// The server settings of a listener's connections.
pub fn http_builder(listener: &ListenerConfig) -> HttpServer {
    let max_header = usize::try_from(listener.max_header_bytes.bytes()).unwrap_or(usize::MAX);
    let max_buf = max_header.saturating_mul(2).max(16 * 1024);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder = match listener.protocol {
        ListenerProtocol::Auto => builder,
        ListenerProtocol::Http1 => {
            let mut http1 = http1::Builder::new();
            http1_settings!(http1, listener, max_buf);
            return HttpServer::Http1(http1);
        }
        ListenerProtocol::Http2 => builder.http2_only(),
    };
    http1_settings!(builder.http1(), listener, max_buf);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(max_header.saturating_mul(2)).unwrap_or(u32::MAX))
        .max_concurrent_streams(listener.max_concurrent_streams)
        // Response data buffered per stream, whatever window the client advertises: a client
        // that opens its window wide and never reads holds at most this much per stream (with
        // hyper's default of 400 KB, 5 such connections held 2.3 GB).
        .max_send_buf_size(MAX_SEND_BUF_BYTES)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    HttpServer::Auto(builder)
}
