//! A downstream connection's send timeout (nginx `send_timeout`): a client that takes nothing
//! of what rafael writes for the listener's `send_timeout` is disconnected, so a client that
//! stops reading cannot hold a request, its upstream connection and its buffers forever.
//!
//! The timer is armed only when a write would block, and the clock read once per blocked
//! stretch: a client that keeps up costs one branch per write.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

/// Wraps a client connection; writes fail with [`io::ErrorKind::TimedOut`] once the client
/// has taken no byte for `timeout`.
#[derive(Debug)]
pub struct SendTimeout<I> {
    inner: I,
    stall: StallTimer,
}

/// Times a stretch of waiting: ready once one stretch has lasted `timeout`. The timer is armed
/// on the first wait (boxed, as most waits never happen), the clock read once per stretch, and
/// the timer reset at most once per timeout period. Shared with the request body's read
/// timeout ([`crate::body::ClientBody`]).
#[derive(Debug)]
pub(crate) struct StallTimer {
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// When the current stretch began, while it lasts.
    since: Option<Instant>,
}

// === impl SendTimeout ===

impl<I> SendTimeout<I> {
    /// Wraps `inner`.
    pub fn new(inner: I, timeout: Duration) -> Self {
        Self {
            inner,
            stall: StallTimer::new(timeout),
        }
    }

    /// Passes a write's readiness through, timing how long writes stay blocked.
    fn track<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stall.progressed();
            return polled;
        }
        ready!(self.stall.poll_stalled(cx));
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, SendTimedOut)))
    }
}

/// The error inside the [`io::ErrorKind::TimedOut`] a [`SendTimeout`] write fails with, so the
/// server can tell it from any other timeout.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the client took nothing for send_timeout")]
pub struct SendTimedOut;

// === impl StallTimer ===

impl StallTimer {
    /// A timer for stretches of `timeout`.
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            timer: None,
            since: None,
        }
    }

    /// The timeout it was made with.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The awaited thing moved: the current stretch, if any, is over.
    pub(crate) fn progressed(&mut self) {
        self.since = None;
    }

    /// Called while waiting: ready once this stretch of waiting has lasted the timeout.
    pub(crate) fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let since = *self.since.get_or_insert_with(Instant::now);
        let deadline = since + self.timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        loop {
            ready!(timer.as_mut().poll(cx));
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            // Set for an earlier stretch: move it to this one's deadline.
            timer.as_mut().reset(deadline);
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for SendTimeout<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for SendTimeout<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.track(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.track(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.track(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.track(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_stops_is_cut_off_after_the_timeout_and_one_that_reads_is_not() {
        let (client, server) = tokio::io::duplex(1024);
        let mut writer = SendTimeout::new(server, Duration::from_secs(5));
        let started = Instant::now();
        // Nobody reads `client`: the first kilobyte fits, then writes block until the timeout.
        let error = loop {
            if let Err(error) = writer.write_all(&[0u8; 512]).await {
                break error;
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
            "{waited:?}"
        );
        drop(client);

        // A slow reader that takes something every 4 s never trips a 5 s timeout.
        let (mut client, server) = tokio::io::duplex(1024);
        let mut writer = SendTimeout::new(server, Duration::from_secs(5));
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 1024];
            let mut total = 0;
            while total < 16 * 1024 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                total += client.read(&mut buf).await.unwrap();
            }
        });
        for _ in 0..32 {
            writer.write_all(&[1u8; 512]).await.unwrap();
        }
        reader.await.unwrap();
    }
}
