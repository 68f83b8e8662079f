//! What the request path's failures have in common, below every module that raises one: the
//! boxed error bodies end with, finding a cause in an error's chain, and the vocabulary every
//! error answers in: which side failed, and whether sending the request again could help (as
//! pingora's errors say), so no layer decides from an error's text.

/// Errors a body can end with: hyper's, or the HTTP/1.1 upstream codec's.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Which side of the proxy a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The downstream client: its request or its body.
    Client,
    /// The upstream: it could not be reached, broke the connection or the protocol, or did not
    /// answer in time.
    Upstream,
    /// Rafael itself: a policy refused the request (rate limit, concurrency, breaker), or a
    /// fault was injected.
    Proxy,
}

/// Whether a failed attempt may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retryable {
    /// The request never reached the upstream (no connection was made): sending it again is
    /// safe for any method.
    Unsent,
    /// The upstream may have acted on it: safe to send again only when the method is
    /// idempotent (or the route allows non-idempotent retries).
    IfIdempotent,
    /// Sending it again cannot help (the client's own failure, a policy's refusal).
    No,
}

/// How an upstream failed after the connection was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// The connection broke (reset, closed, or an I/O error) before the response was complete.
    Connection,
    /// The upstream broke HTTP: an invalid response, or a protocol switch nobody asked for.
    Protocol,
    /// An upstream-stage fault of the Chaos Forge reset the attempt; the policies see it as a
    /// reset, the telemetry as injected.
    Injected,
}

/// A response body cut short by an injected truncate fault.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("response truncated by an injected fault")]
pub struct InjectedTruncation;

/// The first error of type `T` in `error`'s chain of sources, `error` itself included.
pub(crate) fn cause<'a, T: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    std::iter::successors(Some(error), |e| e.source()).find_map(|e| e.downcast_ref::<T>())
}
