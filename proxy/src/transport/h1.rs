//! A lean HTTP/1.1 client codec for upstream exchanges (RFC 9112), driven by the downstream
//! request's own task.
//!
//! hyper's client runs each connection as its own task and hands requests, responses and body
//! chunks across channels; measured on this machine that costs about 3 µs of CPU per request,
//! a fifth of the whole proxy's budget (benches/README.md). Here the request's task writes the
//! head, parses the response head in place (httparse, header values sliced from the read buffer
//! without copying) and decodes the body as the downstream side polls it. hyper still serves
//! every downstream connection and every HTTP/2 upstream.
//!
//! Framing follows RFC 9112 §6.3: no body for `HEAD`, 1xx, 204 and 304; `Transfer-Encoding`
//! ending in `chunked` wins over `Content-Length`; conflicting lengths are an error; otherwise
//! the body runs to the end of the connection. A connection is reused only after a response
//! whose end was known from its framing, with nothing left over in the buffer.

use std::{
    collections::VecDeque,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker, ready},
    time::Duration,
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version,
    header::CONTENT_LENGTH, request::Parts,
};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::{
    failure::BoxError,
    headers::AddedFields,
    transport::{
        connector::UpstreamIo,
        pool::{IdlePool, Reusable},
    },
};

/// What the codec can send as a request body: any body of bytes that fails with a boxed error
/// (the proxy's [`crate::Body`] in practice).
pub trait UploadBody: http_body::Body<Data = Bytes, Error = BoxError> + Unpin + Default {}

impl<B: http_body::Body<Data = Bytes, Error = BoxError> + Unpin + Default> UploadBody for B {}

/// Largest response head accepted.
const MAX_HEAD_BYTES: usize = 96 * 1024;
/// Most response header fields accepted.
const MAX_HEADERS: usize = 128;
/// Response fields tracked without allocating; more spill to the heap.
const INLINE_FIELDS: usize = 24;
/// Longest chunk-size or trailer line accepted.
const MAX_LINE_BYTES: usize = 8 * 1024;
/// How much the read buffer grows by when it needs room.
const READ_RESERVE_BYTES: usize = 16 * 1024;

/// One HTTP/1.1 connection to an endpoint, with its buffers.
#[derive(Debug)]
pub struct H1Connection {
    io: UpstreamIo,
    read_buf: BytesMut,
    write_buf: BytesMut,
    reused: bool,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// A reused connection turned out closed before any byte of a response: the request may be
    /// sent again on another connection (when it had no body to lose).
    #[error("pooled connection was closed by the upstream: {0}")]
    Stale(#[source] Box<ExchangeError>),
    /// Reading or writing the connection failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The upstream broke the protocol.
    #[error("invalid response: {0}")]
    Protocol(String),
    /// The connection closed before a byte of the response came: on a reused connection, the
    /// upstream closed it while it sat idle.
    #[error("invalid response: connection closed before a response")]
    ClosedBeforeResponse,
    /// The downstream request body failed while being forwarded: the client's fault.
    #[error("request body failed: {0}")]
    RequestBody(BoxError),
}

/// A parsed response head and how its body is framed.
#[derive(Debug)]
pub struct ResponseHead<B> {
    /// Status, version and headers; the body comes from [`H1Body`].
    pub response: Response<()>,
    framing: Framing,
    keep_alive: bool,
    /// How long the upstream said it keeps an idle connection (`Keep-Alive: timeout=N`), less a
    /// second so rafael retires the connection before the upstream closes it under a request.
    idle_limit: Option<Duration>,
    /// The rest of the request body, when the upstream answered before taking all of it: the
    /// response body keeps sending it (HTTP/1.1 exchanges may be full duplex).
    upload: Option<Box<Upload<B>>>,
}

/// A request body on its way to the upstream: frames are queued as they come from the client
/// and written with vectored writes, without copying their data.
#[derive(Debug)]
struct Upload<B> {
    body: B,
    chunked: bool,
    queue: VecDeque<Bytes>,
    body_done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// A response body decoded from an HTTP/1.1 connection as the downstream side reads it. Once
/// the body has ended cleanly, the connection goes back to its endpoint's pool.
#[derive(Debug)]
pub struct H1Body<B> {
    // Boxed, here and in the pool: a connection is allocated once, and the body that carries
    // it through every layer of the response path stays small to move.
    conn: Option<Box<H1Connection>>,
    decode: Decode,
    keep_alive: bool,
    idle_limit: Option<Duration>,
    upload: Option<Box<Upload<B>>>,
    pool: Option<PoolReturn>,
}

/// Where a connection goes back to once its exchange has ended.
#[derive(Debug)]
pub struct PoolReturn {
    /// The endpoint's idle connections.
    pub pool: Arc<IdlePool<H1Connection>>,
    /// The most it keeps.
    pub max_idle: usize,
}

#[derive(Debug)]
enum Decode {
    Length(u64),
    UntilClose,
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    Trailers(Box<HeaderMap>),
    Done,
}

// === impl H1Connection ===

impl H1Connection {
    /// Wraps a freshly connected stream.
    pub fn new(io: UpstreamIo) -> Box<Self> {
        Box::new(Self {
            io,
            read_buf: BytesMut::with_capacity(READ_RESERVE_BYTES),
            write_buf: BytesMut::with_capacity(1024),
            reused: false,
        })
    }

    /// True when the connection looks usable for another exchange: the peer has not closed it
    /// and sent nothing unasked. Costs no system call when the socket has no pending event.
    pub fn is_open(&mut self) -> bool {
        if !self.read_buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut probe),
            Poll::Pending
        )
    }

    /// Marks the connection as taken from the pool.
    pub fn mark_reused(&mut self) {
        self.reused = true;
    }

    /// Sends the request (head from `parts`, then `body`) and reads the response head.
    ///
    /// A request without a body leaves `body` untouched, so after an [`ExchangeError::Stale`]
    /// failure the caller may send it again. A request body is moved into the exchange and
    /// keeps streaming, while the response is read, until it ends.
    pub async fn exchange<B: UploadBody>(
        &mut self,
        parts: &Parts,
        added: &AddedFields,
        body: &mut B,
    ) -> Result<ResponseHead<B>, ExchangeError> {
        let has_body = !body.is_end_stream();
        let chunked = has_body && !parts.headers.contains_key(CONTENT_LENGTH);
        encode_head(&mut self.write_buf, parts, added, chunked);
        let mut upload = None;
        if has_body {
            let mut queue = VecDeque::with_capacity(4);
            queue.push_back(self.write_buf.split().freeze());
            upload = Some(Box::new(Upload {
                body: std::mem::take(body),
                chunked,
                queue,
                body_done: false,
            }));
        } else if let Err(error) = self.io.write_all(&self.write_buf).await {
            self.write_buf.clear();
            return Err(self.stale_or(error.into(), has_body));
        }
        self.write_buf.clear();
        match self.read_head(&parts.method, &mut upload).await {
            Ok(mut head) => {
                head.upload = upload.filter(|u| !u.is_done());
                Ok(head)
            }
            Err(error) => Err(self.stale_or(error, has_body)),
        }
    }

    /// Classifies a failure of a reused connection before any response byte as stale.
    fn stale_or(&self, error: ExchangeError, has_body: bool) -> ExchangeError {
        let retryable = self.reused && self.read_buf.is_empty() && !has_body;
        match error {
            error @ (ExchangeError::Io(_) | ExchangeError::ClosedBeforeResponse) if retryable => {
                ExchangeError::Stale(Box::new(error))
            }
            other => other,
        }
    }

    /// Reads until a final response head is complete, skipping interim (1xx) responses other
    /// than 101, while sending `upload` as far as the client and the upstream allow.
    async fn read_head<B: UploadBody>(
        &mut self,
        method: &Method,
        upload: &mut Option<Box<Upload<B>>>,
    ) -> Result<ResponseHead<B>, ExchangeError> {
        let mut write_error = None;
        std::future::poll_fn(|cx| {
            if let Some(up) = upload.as_mut() {
                if write_error.is_none() {
                    match up.poll_send(&mut self.io, cx) {
                        // The client broke its body: the exchange is over, and dropping it
                        // closes the upstream connection mid-request, so the upstream stops
                        // working on it too.
                        Poll::Ready(Err(error @ ExchangeError::RequestBody(_))) => {
                            return Poll::Ready(Err(error));
                        }
                        // The upstream may still answer (413, say); keep reading for it.
                        Poll::Ready(Err(error)) => write_error = Some(error),
                        _ => {}
                    }
                }
            }
            loop {
                if !self.read_buf.is_empty() {
                    if let Some(head) = self.parse_head(method)? {
                        return Poll::Ready(Ok(head));
                    }
                    if self.read_buf.len() > MAX_HEAD_BYTES {
                        return Poll::Ready(Err(ExchangeError::Protocol(format!(
                            "response head larger than {MAX_HEAD_BYTES} bytes"
                        ))));
                    }
                }
                match ready!(poll_fill(self, cx)) {
                    Ok(0) => {
                        return Poll::Ready(Err(match write_error.take() {
                            Some(error) => error,
                            None if self.read_buf.is_empty() => ExchangeError::ClosedBeforeResponse,
                            None => ExchangeError::Protocol(
                                "connection closed in the middle of the response head".to_owned(),
                            ),
                        }));
                    }
                    Ok(_) => {}
                    Err(error) => return Poll::Ready(Err(write_error.take().unwrap_or(error))),
                }
            }
        })
        .await
        .map(|mut head: ResponseHead<B>| {
            if write_error.is_some() {
                // Part of the request never arrived: the connection cannot be trusted after this.
                head.keep_alive = false;
                *upload = None;
            }
            head
        })
    }

    /// Parses a complete head from the read buffer, or `None` when more bytes are needed.
    fn parse_head<B>(&mut self, method: &Method) -> Result<Option<ResponseHead<B>>, ExchangeError> {
        loop {
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut fields);
            let len = match parsed.parse(&self.read_buf) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(e) => return Err(ExchangeError::Protocol(e.to_string())),
            };
            let code = parsed.code.unwrap_or(0);
            let status = StatusCode::from_u16(code)
                .map_err(|_| ExchangeError::Protocol(format!("invalid status {code}")))?;
            if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
                // 100 Continue, 103 Early Hints: the final response follows.
                self.read_buf.advance(len);
                continue;
            }
            let version = if parsed.version == Some(0) {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            };
            // One pass over the fields: the framing ones are read here and hop-by-hop ones are
            // left out of the map (so the response needs no stripping later), and the rest are
            // recorded as spans, to be sliced out of one frozen buffer without copying.
            let switching = status == StatusCode::SWITCHING_PROTOCOLS;
            let base = self.read_buf.as_ptr() as usize;
            let mut framing_fields = FramingFields::default();
            // Offsets fit u32 (heads are capped at MAX_HEAD_BYTES); a small inline array covers
            // ordinary responses without zeroing a large one, and the rest spill to a Vec.
            let mut spans = [(0u32, 0u32, 0u32, 0u32); INLINE_FIELDS];
            let mut spilled = Vec::new();
            let mut kept = 0;
            for field in parsed.headers.iter() {
                if framing_fields.absorb(field.name, field.value, switching)? {
                    let span = (
                        (field.name.as_ptr() as usize - base) as u32,
                        field.name.len() as u32,
                        (field.value.as_ptr() as usize - base) as u32,
                        field.value.len() as u32,
                    );
                    match spans.get_mut(kept) {
                        Some(slot) => *slot = span,
                        None => spilled.push(span),
                    }
                    kept += 1;
                }
            }
            let (framing, keep_alive) = framing_fields.framing(status, version, method)?;
            let idle_limit = framing_fields
                .keep_alive_timeout
                .map(|t| t.saturating_sub(Duration::from_secs(1)));
            let head = self.read_buf.split_to(len).freeze();
            // Room for the `Via` and `x-request-id` the response gets on its way downstream.
            let mut headers = HeaderMap::with_capacity(kept + 2);
            for &(name, name_len, value, value_len) in
                spans[..kept.min(INLINE_FIELDS)].iter().chain(&spilled)
            {
                let (name, name_len) = (name as usize, name_len as usize);
                let (value, value_len) = (value as usize, value_len as usize);
                let name = HeaderName::from_bytes(&head[name..name + name_len])
                    .map_err(|e| ExchangeError::Protocol(e.to_string()))?;
                let value = HeaderValue::from_maybe_shared(head.slice(value..value + value_len))
                    .map_err(|e| ExchangeError::Protocol(e.to_string()))?;
                headers.append(name, value);
            }
            for named in framing_fields.connection_named() {
                // Fields the upstream marked hop-by-hop by naming them in `Connection`.
                headers.remove(named);
            }
            let mut response = Response::new(());
            *response.status_mut() = status;
            *response.version_mut() = version;
            *response.headers_mut() = headers;
            return Ok(Some(ResponseHead {
                response,
                framing,
                keep_alive,
                idle_limit,
                upload: None,
            }));
        }
    }

    /// The stream and any bytes already read past the response head, for a protocol switch.
    pub fn into_upgraded(self) -> (UpstreamIo, Bytes) {
        (self.io, self.read_buf.freeze())
    }
}

impl Reusable for H1Connection {
    fn is_open(&mut self) -> bool {
        H1Connection::is_open(self)
    }

    fn mark_reused(&mut self) {
        H1Connection::mark_reused(self);
    }
}

// === impl Upload ===

impl<B: UploadBody> Upload<B> {
    /// True once the whole body, framing included, has been written.
    fn is_done(&self) -> bool {
        self.body_done && self.queue.is_empty()
    }

    /// Moves body frames from the client to the upstream until one side has to wait; ready
    /// once everything is written.
    fn poll_send(
        &mut self,
        io: &mut UpstreamIo,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), ExchangeError>> {
        loop {
            if !self.queue.is_empty() {
                let slices: Vec<io::IoSlice<'_>> = self
                    .queue
                    .iter()
                    .take(16)
                    .map(|b| io::IoSlice::new(b))
                    .collect();
                let mut written = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices))?;
                if written == 0 {
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                }
                while written > 0 {
                    let Some(front) = self.queue.front_mut() else {
                        break;
                    };
                    if written >= front.len() {
                        written -= front.len();
                        self.queue.pop_front();
                    } else {
                        front.advance(written);
                        written = 0;
                    }
                }
                continue;
            }
            if self.body_done {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => {
                        if self.chunked {
                            self.queue
                                .push_back(Bytes::from(format!("{:x}\r\n", data.len())));
                            self.queue.push_back(data);
                            self.queue.push_back(Bytes::from_static(b"\r\n"));
                        } else {
                            self.queue.push_back(data);
                        }
                    }
                    Err(frame) => {
                        if let (Ok(trailers), true) = (frame.into_trailers(), self.chunked) {
                            let mut last = BytesMut::from(&b"0\r\n"[..]);
                            for (name, value) in &trailers {
                                put_field(&mut last, name, value);
                            }
                            last.put_slice(b"\r\n");
                            self.queue.push_back(last.freeze());
                            self.body_done = true;
                        }
                    }
                },
                None => {
                    if self.chunked {
                        self.queue.push_back(Bytes::from_static(b"0\r\n\r\n"));
                    }
                    self.body_done = true;
                }
                Some(Err(error)) => return Poll::Ready(Err(ExchangeError::RequestBody(error))),
            }
        }
    }
}

/// Writes the request line and fields, the request's own then this hop's. The request target
/// is the origin form.
fn encode_head(buf: &mut BytesMut, parts: &Parts, added: &AddedFields, chunked: bool) {
    buf.clear();
    buf.put_slice(parts.method.as_str().as_bytes());
    buf.put_u8(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    buf.put_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    buf.put_slice(b" HTTP/1.1\r\n");
    for (name, value) in parts.headers.iter().chain(added.iter()) {
        put_field(buf, name, value);
    }
    if chunked {
        buf.put_slice(b"transfer-encoding: chunked\r\n");
    }
    buf.put_slice(b"\r\n");
}

fn put_field(buf: &mut BytesMut, name: &HeaderName, value: &HeaderValue) {
    buf.put_slice(name.as_str().as_bytes());
    buf.put_slice(b": ");
    buf.put_slice(value.as_bytes());
    buf.put_slice(b"\r\n");
}

/// What a response head says about its own framing and connection, gathered while its fields
/// are read.
#[derive(Debug, Default)]
struct FramingFields {
    close: bool,
    keep_alive_token: bool,
    /// Names listed in `Connection` besides `close`, `keep-alive` and `upgrade`: rare.
    named: Vec<HeaderName>,
    transfer_encoding: bool,
    chunked_last: bool,
    content_length: Option<u64>,
    /// The `timeout` parameter of `Keep-Alive` (RFC 2068 §19.7.1.1), which servers such as
    /// Node.js (5 s) and Apache send to say when they close idle connections.
    keep_alive_timeout: Option<Duration>,
}

impl FramingFields {
    /// Reads one field; returns whether it belongs in the forwarded response (hop-by-hop
    /// fields do not, except the protocol-switch ones of a 101).
    fn absorb(&mut self, name: &str, value: &[u8], switching: bool) -> Result<bool, ExchangeError> {
        let text = || std::str::from_utf8(value).unwrap_or("");
        let is = |expected: &str| name.eq_ignore_ascii_case(expected);
        if is("content-length") {
            for part in text().split(',') {
                let parsed = parse_digits(part.trim(), 10).ok_or_else(|| {
                    ExchangeError::Protocol(format!("invalid content-length {:?}", text()))
                })?;
                if self.content_length.is_some_and(|l| l != parsed) {
                    return Err(ExchangeError::Protocol(
                        "conflicting content-length values".into(),
                    ));
                }
                self.content_length = Some(parsed);
            }
            return Ok(true);
        }
        if is("connection") {
            for token in text().split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if token.eq_ignore_ascii_case("close") {
                    self.close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    self.keep_alive_token = true;
                } else if !token.eq_ignore_ascii_case("upgrade") {
                    if let Ok(named) = HeaderName::from_bytes(token.as_bytes()) {
                        self.named.push(named);
                    }
                }
            }
            return Ok(switching);
        }
        if is("transfer-encoding") {
            self.transfer_encoding = true;
            if let Some(last) = text().split(',').map(str::trim).next_back() {
                self.chunked_last = last.eq_ignore_ascii_case("chunked");
            }
            return Ok(false);
        }
        if is("keep-alive") {
            self.keep_alive_timeout = text().split(',').find_map(|param| {
                let (key, value) = param.split_once('=')?;
                key.trim()
                    .eq_ignore_ascii_case("timeout")
                    .then(|| value.trim().parse::<u64>().ok().map(Duration::from_secs))?
            });
            return Ok(false);
        }
        if is("upgrade") {
            return Ok(switching);
        }
        Ok(!(is("proxy-connection") || is("te")))
    }

    fn connection_named(&self) -> impl Iterator<Item = &HeaderName> {
        self.named.iter()
    }

    /// How the body is delimited, and whether the connection survives it (RFC 9112 §6.3).
    fn framing(
        &self,
        status: StatusCode,
        version: Version,
        method: &Method,
    ) -> Result<(Framing, bool), ExchangeError> {
        let mut keep_alive = if version == Version::HTTP_11 {
            !self.close
        } else {
            self.keep_alive_token && !self.close
        };
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Ok((Framing::Empty, false));
        }
        if *method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok((Framing::Empty, keep_alive));
        }
        if self.transfer_encoding {
            // A message with both framings may be an attempt at smuggling: never reuse after it.
            if self.content_length.is_some() {
                keep_alive = false;
            }
            return Ok(if self.chunked_last {
                (Framing::Chunked, keep_alive)
            } else {
                (Framing::UntilClose, false)
            });
        }
        Ok(match self.content_length {
            Some(0) => (Framing::Empty, keep_alive),
            Some(n) => (Framing::Length(n), keep_alive),
            None => (Framing::UntilClose, false),
        })
    }
}

// === impl H1Body ===

impl<B: UploadBody> H1Body<B> {
    /// The body of `head`, read from `conn`; the connection returns to `pool` when it ends.
    pub fn new(
        conn: Box<H1Connection>,
        head: &mut ResponseHead<B>,
        pool: Option<PoolReturn>,
    ) -> Self {
        let decode = match head.framing {
            Framing::Empty => Decode::Done,
            Framing::Length(n) => Decode::Length(n),
            Framing::Chunked => Decode::ChunkSize,
            Framing::UntilClose => Decode::UntilClose,
        };
        let mut body = Self {
            conn: Some(conn),
            decode,
            keep_alive: head.keep_alive,
            idle_limit: head.idle_limit,
            upload: head.upload.take(),
            pool,
        };
        if matches!(body.decode, Decode::Done) {
            body.finish();
        }
        body
    }

    /// True once the body has been read to its end.
    pub fn is_complete(&self) -> bool {
        matches!(self.decode, Decode::Done)
    }

    /// Hands the connection back to the pool if its exchange ended cleanly.
    fn finish(&mut self) {
        self.decode = Decode::Done;
        let (Some(mut conn), Some(pool)) = (self.conn.take(), self.pool.take()) else {
            return;
        };
        // A request body still on its way means the upstream answered early: the connection is
        // mid-message and cannot carry another exchange.
        if self.keep_alive && self.upload.is_none() && conn.read_buf.is_empty() {
            conn.write_buf.clear();
            pool.pool.release(conn, pool.max_idle, self.idle_limit);
        }
    }

    fn poll_decode(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        if let (Some(upload), Some(conn)) = (self.upload.as_mut(), self.conn.as_mut()) {
            match upload.poll_send(&mut conn.io, cx) {
                Poll::Ready(Ok(())) => self.upload = None,
                // The client's body failing is the client's problem; the response may still end.
                Poll::Ready(Err(_)) => {
                    self.upload = None;
                    self.keep_alive = false;
                }
                Poll::Pending => {}
            }
        }
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut self.decode {
                Decode::Done => return Poll::Ready(None),
                Decode::Length(0) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Decode::Length(remaining) => {
                    if conn.read_buf.is_empty() {
                        ready!(poll_more(conn, cx))?;
                        continue;
                    }
                    let data = take_counted(&mut conn.read_buf, remaining);
                    if *remaining == 0 {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decode::UntilClose => {
                    if conn.read_buf.is_empty() {
                        if ready!(poll_fill(conn, cx))? == 0 {
                            self.keep_alive = false;
                            self.finish();
                            return Poll::Ready(None);
                        }
                        continue;
                    }
                    let data = conn.read_buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decode::ChunkSize => match take_line(&mut conn.read_buf)? {
                    Some(line) => {
                        let digits = line.split(|b| *b == b';').next().unwrap_or_default();
                        let size = std::str::from_utf8(digits)
                            .ok()
                            // Whitespace may only precede a chunk extension (RFC 9112 §7.1.1).
                            .and_then(|d| parse_digits(d.trim_end_matches([' ', '\t']), 16))
                            .ok_or_else(|| ExchangeError::Protocol("invalid chunk size".into()))?;
                        self.decode = if size == 0 {
                            Decode::Trailers(Box::default())
                        } else {
                            Decode::ChunkData(size)
                        };
                    }
                    None => ready!(poll_more(conn, cx))?,
                },
                Decode::ChunkData(remaining) => {
                    if conn.read_buf.is_empty() {
                        ready!(poll_more(conn, cx))?;
                        continue;
                    }
                    let data = take_counted(&mut conn.read_buf, remaining);
                    if *remaining == 0 {
                        self.decode = Decode::ChunkDataEnd;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decode::ChunkDataEnd => match take_line(&mut conn.read_buf)? {
                    Some(line) if line.is_empty() => self.decode = Decode::ChunkSize,
                    Some(_) => {
                        return Poll::Ready(Some(Err(ExchangeError::Protocol(
                            "chunk data longer than its size".into(),
                        ))));
                    }
                    None => ready!(poll_more(conn, cx))?,
                },
                Decode::Trailers(fields) => match take_line(&mut conn.read_buf)? {
                    Some(line) if line.is_empty() => {
                        let fields = std::mem::take(&mut **fields);
                        self.finish();
                        if fields.is_empty() {
                            return Poll::Ready(None);
                        }
                        return Poll::Ready(Some(Ok(Frame::trailers(fields))));
                    }
                    Some(line) => {
                        let (name, value) = parse_field(&line)?;
                        fields.append(name, value);
                    }
                    None => ready!(poll_more(conn, cx))?,
                },
            }
        }
    }
}

impl<B: UploadBody> http_body::Body for H1Body<B> {
    type Data = Bytes;
    type Error = ExchangeError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        let this = self.get_mut();
        let polled = this.poll_decode(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            // A broken body leaves the connection in an unknown state: close it.
            this.conn = None;
            this.decode = Decode::Done;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.decode, Decode::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.decode {
            Decode::Done => SizeHint::with_exact(0),
            Decode::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// A number written only with digits of `radix`: no sign, no spaces, no overflow. The standard
/// parsers accept a leading `+`, which a length field must not have (a smuggling favourite).
fn parse_digits(text: &str, radix: u32) -> Option<u64> {
    if text.is_empty() || !text.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(text, radix).ok()
}

fn truncated() -> ExchangeError {
    ExchangeError::Protocol("connection closed before the response body ended".into())
}

/// Reads more of a body whose end is not reached yet: the end of the stream is an error.
fn poll_more(conn: &mut H1Connection, cx: &mut Context<'_>) -> Poll<Result<(), ExchangeError>> {
    match ready!(poll_fill(conn, cx)) {
        Ok(0) => Poll::Ready(Err(truncated())),
        Ok(_) => Poll::Ready(Ok(())),
        Err(error) => Poll::Ready(Err(error)),
    }
}

/// Takes up to `remaining` bytes off the front of `buf`, counting them off.
fn take_counted(buf: &mut BytesMut, remaining: &mut u64) -> Bytes {
    let take = usize::try_from(*remaining)
        .unwrap_or(usize::MAX)
        .min(buf.len());
    *remaining -= take as u64;
    buf.split_to(take).freeze()
}

/// Reads more bytes into the connection's buffer; `Ok(0)` is the end of the stream.
fn poll_fill(conn: &mut H1Connection, cx: &mut Context<'_>) -> Poll<Result<usize, ExchangeError>> {
    conn.read_buf.reserve(READ_RESERVE_BYTES);
    let read = ready!(tokio_util::io::poll_read_buf(
        Pin::new(&mut conn.io),
        cx,
        &mut conn.read_buf
    ));
    Poll::Ready(read.map_err(ExchangeError::Io))
}

/// Takes one CRLF-terminated line (without the CRLF) off the front of `buf`.
fn take_line(buf: &mut BytesMut) -> Result<Option<Bytes>, ExchangeError> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(end) => {
            let line = buf.split_to(end).freeze();
            buf.advance(2);
            Ok(Some(line))
        }
        None if buf.len() > MAX_LINE_BYTES => Err(ExchangeError::Protocol(format!(
            "line longer than {MAX_LINE_BYTES} bytes in a chunked body"
        ))),
        None => Ok(None),
    }
}

fn parse_field(line: &[u8]) -> Result<(HeaderName, HeaderValue), ExchangeError> {
    let colon = line
        .iter()
        .position(|b| *b == b':')
        .ok_or_else(|| ExchangeError::Protocol("invalid trailer field".into()))?;
    let name = HeaderName::from_bytes(&line[..colon])
        .map_err(|e| ExchangeError::Protocol(e.to_string()))?;
    let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii())
        .map_err(|e| ExchangeError::Protocol(e.to_string()))?;
    Ok((name, value))
}

#[cfg(test)]
mod tests;
