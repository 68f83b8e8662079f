//! The HTTP server settings of a listener's connections, built once per snapshot.

use std::time::Duration;

use hyper_util::{
    rt::{TokioExecutor, TokioTimer},
    server::conn::auto,
};
use rafael_config::{ListenerConfig, ListenerProtocol};

/// Response bytes buffered per HTTP/2 stream.
const MAX_SEND_BUF_BYTES: usize = 64 * 1024;

/// The server settings of a listener's connections.
pub fn http_builder(listener: &ListenerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder = match listener.protocol {
        ListenerProtocol::Auto => builder,
        ListenerProtocol::Http1 => builder.http1_only(),
        ListenerProtocol::Http2 => builder.http2_only(),
    };
    let max_header = usize::try_from(listener.max_header_bytes.bytes()).unwrap_or(usize::MAX);
    // hyper's own limits sit above ours, as a backstop: rafael checks `max_header_bytes` itself
    // so that an oversized head gets a JSON 431 and a metric, not a bare one.
    builder
        .http1()
        .timer(crate::deadline::QueueTimer)
        .header_read_timeout(listener.header_read_timeout.get())
        .max_buf_size(max_header.saturating_mul(2).max(16 * 1024))
        .max_headers(1024)
        .keep_alive(true);
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
    builder
}
