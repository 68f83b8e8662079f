//! The one body type the proxy moves in both directions, so the hot path streams bodies without
//! boxing them.

use std::{
    collections::VecDeque,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

use crate::upstream::{H1Body, ResponseGuard};

/// Errors a body can end with: hyper's, or the HTTP/1.1 upstream codec's.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request or response body: streamed from a peer, or produced by rafael itself.
#[derive(Debug, Default)]
pub enum Body {
    /// No body.
    #[default]
    Empty,
    /// A body rafael produced (an error document), sent in one frame.
    Full(Option<Bytes>),
    /// A request body streamed from the downstream client, as hyper received it.
    Streaming(Incoming),
    /// A request body partly read already (into a replay buffer that overflowed): the frames
    /// read, then the rest.
    Prefixed {
        /// Frames read so far, sent first.
        frames: VecDeque<Frame<Bytes>>,
        /// The rest of the body.
        rest: Box<Body>,
    },
    /// A response body streamed from an upstream endpoint. Until it ends, the endpoint (for
    /// balancing) and the downstream connection (for idle detection) count as busy.
    Upstream {
        /// The upstream response body.
        body: UpstreamBody,
        /// Dropped when the body ends or is dropped.
        guard: ResponseGuard,
    },
}

/// A response body as the upstream protocol delivers it.
#[derive(Debug)]
pub enum UpstreamBody {
    /// From rafael's HTTP/1.1 codec; returns its connection to the pool when it ends.
    Http1(H1Body),
    /// From hyper's HTTP/2 client.
    Http2(Incoming),
}

// === impl Body ===

impl Body {
    /// A body of `bytes`, sent in one frame.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::Full(Some(bytes.into()))
    }
}

impl From<Incoming> for Body {
    fn from(body: Incoming) -> Self {
        Self::Streaming(body)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // Every variant is `Unpin`, so the projection is a plain mutable borrow.
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Self::Streaming(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Self::Prefixed { frames, rest } => match frames.pop_front() {
                Some(frame) => Poll::Ready(Some(Ok(frame))),
                None => Pin::new(rest.as_mut()).poll_frame(cx),
            },
            Self::Upstream { body, guard } => {
                let polled = match body {
                    UpstreamBody::Http1(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
                    UpstreamBody::Http2(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
                };
                if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
                    std::mem::take(guard);
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Full(bytes) => bytes.is_none(),
            Self::Streaming(body) => body.is_end_stream(),
            Self::Prefixed { frames, rest } => frames.is_empty() && rest.is_end_stream(),
            Self::Upstream { body, .. } => match body {
                UpstreamBody::Http1(body) => body.is_end_stream(),
                UpstreamBody::Http2(body) => body.is_end_stream(),
            },
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Streaming(body) => body.size_hint(),
            Self::Prefixed { frames, rest } => {
                let read: u64 = frames
                    .iter()
                    .filter_map(|f| f.data_ref())
                    .map(|d| d.len() as u64)
                    .sum();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.size_hint().lower() + read);
                if let Some(upper) = rest.size_hint().upper() {
                    hint.set_upper(upper + read);
                }
                hint
            }
            Self::Upstream { body, .. } => match body {
                UpstreamBody::Http1(body) => body.size_hint(),
                UpstreamBody::Http2(body) => body.size_hint(),
            },
        }
    }
}
