//! The one body type the proxy moves in both directions, so the hot path streams bodies without
//! boxing them.

use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

pub use crate::failure::BoxError;
use crate::{
    failure::InjectedTruncation, faults::ActiveFault, guard::ResponseGuard,
    policy::fault::FaultKind, send_timeout::StallTimer, transport,
};

/// A response body from rafael's HTTP/1.1 codec, whose request body (still uploading when the
/// upstream answers early) is a [`Body`] too.
pub type H1Body = transport::H1Body<Body>;

/// A request or response body: streamed from a peer, or produced by rafael itself.
#[derive(Debug, Default)]
pub enum Body {
    /// No body.
    #[default]
    Empty,
    /// A body rafael produced (an error document), sent in one frame.
    Full(Option<Bytes>),
    /// A request body streamed from the downstream client.
    Streaming(ClientBody),
    /// A request body partly read already (into a replay buffer that overflowed): the frames
    /// read, then the rest.
    Prefixed {
        /// Frames read so far, sent first.
        frames: VecDeque<Frame<Bytes>>,
        /// The rest of the body.
        rest: Box<Body>,
    },
    /// A response body under an injected throttle or truncate fault.
    Faulted(Box<FaultedBody>),
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

impl Body {
    /// Where a failure of the client's body will be reported, for transports (hyper's HTTP/2
    /// client) that turn it into an error of their own. `None` for bodies that cannot fail.
    pub fn failure_report(&mut self) -> Option<Arc<OnceLock<ClientBodyError>>> {
        match self {
            Self::Streaming(body) => Some(body.failure_report()),
            Self::Prefixed { rest, .. } => rest.failure_report(),
            _ => None,
        }
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
            Self::Streaming(body) => body.poll_frame(cx).map_err(Into::into),
            Self::Prefixed { frames, rest } => match frames.pop_front() {
                Some(frame) => Poll::Ready(Some(Ok(frame))),
                None => Pin::new(rest.as_mut()).poll_frame(cx),
            },
            Self::Faulted(body) => body.poll_frame(cx),
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
            Self::Streaming(body) => body.incoming.is_end_stream(),
            Self::Prefixed { frames, rest } => frames.is_empty() && rest.is_end_stream(),
            Self::Faulted(body) => body.is_end_stream(),
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
            Self::Streaming(body) => body.incoming.size_hint(),
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
            Self::Faulted(_) => SizeHint::default(),
            Self::Upstream { body, .. } => match body {
                UpstreamBody::Http1(body) => body.size_hint(),
                UpstreamBody::Http2(body) => body.size_hint(),
            },
        }
    }
}

/// A request body as the downstream client sends it, with what rafael enforces on the way:
/// a read timeout (nginx `client_body_timeout`), errors that say the client broke its own
/// body (so nothing blames the upstream for it), and trailers without the fields RFC 9110
/// §6.5.1 forbids there.
#[derive(Debug)]
pub struct ClientBody {
    incoming: Incoming,
    /// How long rafael has been waiting for the next frame.
    stall: StallTimer,
    /// Where a failure is also reported (see [`Body::failure_report`]).
    report: Option<Arc<OnceLock<ClientBodyError>>>,
}

/// The client broke its own request body: the request fails with a 4xx, and the upstream is
/// not charged for it (no breaker failure, no retry).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{detail}")]
pub struct ClientBodyError {
    /// What went wrong.
    pub kind: ClientBodyErrorKind,
    detail: String,
}

/// How a client broke its request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientBodyErrorKind {
    /// The framing was invalid (a bad chunk size, say): 400.
    Malformed,
    /// The client went away or reset the stream before the body ended: 400.
    Aborted,
    /// The client sent nothing for the listener's `body_read_timeout`: 408.
    TimedOut,
}

/// Fields a sender must not put in trailers (RFC 9110 §6.5.1): framing, routing, request
/// modifiers, authentication, response control data and content metadata, and hop-by-hop
/// fields. They are dropped rather than forwarded.
const FORBIDDEN_TRAILERS: &[&str] = &[
    "age",
    "authorization",
    "cache-control",
    "connection",
    "content-encoding",
    "content-length",
    "content-range",
    "content-type",
    "cookie",
    "date",
    "expect",
    "expires",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "keep-alive",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "range",
    "retry-after",
    "set-cookie",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "vary",
    "www-authenticate",
];

// === impl ClientBody ===

impl ClientBody {
    /// The client's body, cut off when it sends nothing for `timeout`.
    pub fn new(incoming: Incoming, timeout: Duration) -> Self {
        Self {
            incoming,
            stall: StallTimer::new(timeout),
            report: None,
        }
    }

    fn failure_report(&mut self) -> Arc<OnceLock<ClientBodyError>> {
        self.report.get_or_insert_with(Arc::default).clone()
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match http_body::Body::poll_frame(Pin::new(&mut self.incoming), cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.stall.progressed();
                Poll::Ready(Some(Ok(match frame.into_trailers() {
                    Ok(mut trailers) => {
                        for name in FORBIDDEN_TRAILERS {
                            trailers.remove(*name);
                        }
                        Frame::trailers(trailers)
                    }
                    Err(frame) => frame,
                })))
            }
            Poll::Ready(Some(Err(error))) => {
                Poll::Ready(Some(Err(self.fail(ClientBodyError::from_hyper(&error)))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => self.poll_wait(cx),
        }
    }

    /// The body has nothing for now: pending, unless the wait has lasted the timeout.
    fn poll_wait(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        std::task::ready!(self.stall.poll_stalled(cx));
        let error = ClientBodyError {
            kind: ClientBodyErrorKind::TimedOut,
            detail: format!(
                "the request body sent nothing for {:?} (body_read_timeout)",
                self.stall.timeout()
            ),
        };
        Poll::Ready(Some(Err(self.fail(error))))
    }

    fn fail(&self, error: ClientBodyError) -> ClientBodyError {
        if let Some(report) = &self.report {
            let _ = report.set(error.clone());
        }
        error
    }
}

// === impl ClientBodyError ===

impl ClientBodyError {
    fn from_hyper(error: &hyper::Error) -> Self {
        let cause = std::error::Error::source(error);
        let invalid = cause
            .and_then(|cause| cause.downcast_ref::<std::io::Error>())
            .is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
                )
            });
        let kind = if error.is_parse() || (invalid && !error.is_incomplete_message()) {
            ClientBodyErrorKind::Malformed
        } else {
            ClientBodyErrorKind::Aborted
        };
        let detail = match (kind, cause) {
            (ClientBodyErrorKind::Malformed, Some(cause)) => {
                format!("the request body is malformed: {cause}")
            }
            (ClientBodyErrorKind::Malformed, None) => {
                format!("the request body is malformed: {error}")
            }
            _ => "the client went away before its request body ended".to_owned(),
        };
        Self { kind, detail }
    }

    /// The error a failed client body left in `error`'s chain, if it was one.
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Self> {
        crate::failure::cause(error)
    }
}

/// A response body slowed down or cut short by an injected fault; it holds the fault's slot
/// of `max_active_faults` until it ends.
#[derive(Debug)]
pub struct FaultedBody {
    inner: Body,
    /// Bytes per second, when throttled.
    throttle: Option<u64>,
    /// Bytes still let through, when truncated.
    truncate_left: Option<u64>,
    /// Data waiting for the throttle.
    pending: Option<Bytes>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The cut was made: the body ends with an error once what came before it is flushed.
    cut: bool,
    flushed: bool,
    done: bool,
    _slot: ActiveFault,
}

// === impl FaultedBody ===

impl FaultedBody {
    /// Wraps `inner` under `kind` (a throttle or a truncate; other kinds pass it through).
    pub fn new(inner: Body, kind: &FaultKind, slot: ActiveFault) -> Self {
        let (throttle, truncate_left) = match kind {
            FaultKind::Throttle { bytes_per_sec } => (Some((*bytes_per_sec).max(1)), None),
            FaultKind::Truncate { after } => (None, Some(*after)),
            _ => (None, None),
        };
        Self {
            inner,
            throttle,
            truncate_left,
            pending: None,
            sleep: None,
            cut: false,
            flushed: false,
            done: false,
            _slot: slot,
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if let Some(sleep) = self.sleep.as_mut() {
                std::task::ready!(sleep.as_mut().poll(cx));
                self.sleep = None;
            }
            if let (Some(mut data), Some(rate)) = (self.pending.take(), self.throttle) {
                // A twentieth of a second's worth at a time, so the rate holds within a chunk.
                let chunk = usize::try_from(rate / 20).unwrap_or(usize::MAX).max(1);
                if data.len() > chunk {
                    self.pending = Some(data.split_off(chunk));
                }
                let wait = std::time::Duration::from_secs_f64(data.len() as f64 / rate as f64);
                self.sleep = Some(Box::pin(tokio::time::sleep(wait)));
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if self.cut {
                if !self.flushed {
                    // Pause once so the server flushes the bytes let through before the
                    // connection (or stream) is torn down by the error below.
                    self.flushed = true;
                    self.sleep = Some(Box::pin(tokio::time::sleep(
                        std::time::Duration::from_millis(5),
                    )));
                    continue;
                }
                self.done = true;
                return Poll::Ready(Some(Err(InjectedTruncation.into())));
            }
            if self.done {
                return Poll::Ready(None);
            }
            let frame =
                match std::task::ready!(http_body::Body::poll_frame(Pin::new(&mut self.inner), cx))
                {
                    None => {
                        self.done = true;
                        return Poll::Ready(None);
                    }
                    Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                    Some(Ok(frame)) => frame,
                };
            let mut data = match frame.into_data() {
                Ok(data) => data,
                Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
            };
            if let Some(left) = self.truncate_left.as_mut() {
                if data.len() as u64 > *left {
                    data.truncate(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left = 0;
                    self.cut = true;
                } else {
                    *left -= data.len() as u64;
                }
            }
            if data.is_empty() {
                continue;
            }
            if self.throttle.is_some() {
                self.pending = Some(data);
                continue;
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.pending.is_none()
    }
}
