//! Opening connections to upstream endpoints: TCP with `TCP_NODELAY`, optional TLS with SNI and
//! ALPN, all under the upstream's `connect_timeout`.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::uri::Authority;
use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

/// Why a connection to an endpoint could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect and TLS handshake did not finish in time.
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    /// The TCP connection failed.
    #[error("tcp connect failed: {0}")]
    Tcp(#[source] io::Error),
    /// The TLS handshake failed.
    #[error("tls handshake failed: {0}")]
    Tls(#[source] io::Error),
    /// The URI names no endpoint or an invalid TLS server name.
    #[error("invalid endpoint: {0}")]
    Invalid(String),
}

/// Connects to the endpoint named by a request URI's authority.
#[derive(Clone)]
pub struct Connector {
    tls: Option<TlsOrigination>,
    connect_timeout: Duration,
}

#[derive(Clone)]
struct TlsOrigination {
    connector: TlsConnector,
    /// Fixed SNI name; `None` means the endpoint's host.
    server_name: Option<ServerName<'static>>,
}

/// A connection to an endpoint, plain or TLS.
#[derive(Debug)]
pub enum UpstreamIo {
    /// Clear-text TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

// === impl Connector ===

impl Connector {
    /// A connector with optional TLS (`tls`, with a fixed `server_name` or the endpoint's host).
    pub fn new(
        connect_timeout: Duration,
        tls: Option<(Arc<rustls::ClientConfig>, Option<String>)>,
    ) -> Result<Self, String> {
        let tls = match tls {
            None => None,
            Some((config, name)) => Some(TlsOrigination {
                connector: TlsConnector::from(config),
                server_name: name
                    .map(|n| {
                        ServerName::try_from(n.clone())
                            .map_err(|e| format!("invalid TLS server name {n:?}: {e}"))
                    })
                    .transpose()?,
            }),
        };
        Ok(Self {
            tls,
            connect_timeout,
        })
    }

    /// Connects to `authority` (TCP, then TLS when configured) within the connect timeout.
    pub async fn connect(&self, authority: &Authority) -> Result<UpstreamIo, ConnectError> {
        tokio::time::timeout(self.connect_timeout, self.connect_unbounded(authority))
            .await
            .map_err(|_| ConnectError::Timeout(self.connect_timeout))?
    }

    async fn connect_unbounded(&self, authority: &Authority) -> Result<UpstreamIo, ConnectError> {
        let tcp = TcpStream::connect(authority.as_str())
            .await
            .map_err(ConnectError::Tcp)?;
        // Small request/response exchanges must not wait for Nagle's algorithm.
        tcp.set_nodelay(true).map_err(ConnectError::Tcp)?;
        let Some(tls) = &self.tls else {
            return Ok(UpstreamIo::Plain(tcp));
        };
        let name = match &tls.server_name {
            Some(name) => name.clone(),
            None => ServerName::try_from(authority.host().trim_matches(['[', ']']).to_owned())
                .map_err(|e| ConnectError::Invalid(e.to_string()))?,
        };
        let stream = tls
            .connector
            .connect(name, tcp)
            .await
            .map_err(ConnectError::Tls)?;
        Ok(UpstreamIo::Tls(Box::new(stream)))
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("tls", &self.tls.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

// === impl UpstreamIo ===

impl UpstreamIo {
    /// True when TLS negotiated HTTP/2 through ALPN.
    pub fn negotiated_h2(&self) -> bool {
        match self {
            Self::Plain(_) => false,
            Self::Tls(stream) => stream.get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_flush(cx),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(io) => io.is_write_vectored(),
            Self::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
}
