//! The one body type the proxy moves in both directions, so the hot path streams hyper's
//! `Incoming` bodies without boxing them.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

use crate::upstream::ResponseGuard;

/// A request or response body: streamed from a peer, or produced by rafael itself.
#[derive(Debug, Default)]
pub enum Body {
    /// No body.
    #[default]
    Empty,
    /// A body rafael produced (an error document), sent in one frame.
    Full(Option<Bytes>),
    /// A body streamed from the other side, as hyper received it.
    Streaming(Incoming),
    /// A response body streamed from an upstream endpoint. Until it ends, the endpoint (for
    /// balancing) and the downstream connection (for idle detection) count as busy and the
    /// upstream connection stays out of the pool.
    Upstream {
        /// The upstream response body.
        body: Incoming,
        /// Finished when the body ends or is dropped.
        guard: Option<ResponseGuard>,
    },
}

// === impl Body ===

impl Body {
    /// A body of `bytes`, sent in one frame.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::Full(Some(bytes.into()))
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        // hyper stops polling a body that reports its end, so a fully read body may be dropped
        // without ever yielding `None`: its connection is still reusable.
        if let Self::Upstream { body, guard } = self {
            if let Some(guard) = guard.take() {
                guard.finish(http_body::Body::is_end_stream(body));
            }
        }
    }
}

impl From<Incoming> for Body {
    fn from(body: Incoming) -> Self {
        Self::Streaming(body)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        // Every variant is `Unpin`, so the projection is a plain mutable borrow.
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Self::Streaming(body) => Pin::new(body).poll_frame(cx),
            Self::Upstream { body, guard } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => {
                        if let Some(guard) = guard.take() {
                            guard.finish(true);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => drop(guard.take()),
                    _ => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Full(bytes) => bytes.is_none(),
            Self::Streaming(body) | Self::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Streaming(body) | Self::Upstream { body, .. } => body.size_hint(),
        }
    }
}
