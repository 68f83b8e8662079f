//! The one body type the proxy moves in both directions, so the hot path streams hyper's
//! `Incoming` bodies without boxing them.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

use crate::{server::RequestActive, upstream::InFlight};

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
    /// A response body streamed from an upstream endpoint; the endpoint (for balancing) and
    /// the downstream connection (for idle detection) count as busy until it ends or drops.
    Upstream {
        /// The upstream response body.
        body: Incoming,
        /// Released when the body is finished.
        in_flight: Option<(InFlight, RequestActive)>,
    },
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
            Self::Upstream { body, in_flight } => {
                let polled = Pin::new(body).poll_frame(cx);
                if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
                    in_flight.take();
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
