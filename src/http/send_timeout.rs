//! `limits.send_timeout`: a write towards the client that makes no progress for that long
//! fails with `TimedOut`, which ends the connection (as nginx's `send_timeout`). A client that
//! stops reading a large answer otherwise holds its connection, its request and whatever the
//! request holds (an upstream slot) for as long as it likes.
//!
//! The timer runs only while a write is blocked: a write that goes through (any bytes) stops
//! it, so a slow but moving reader is never cut, and a connection that writes without blocking
//! never touches the timer wheel. Reads pass through unchanged.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `inner` whose writes fail once blocked for `limit`.
pub struct SendTimeout<T> {
    inner: T,
    limit: Duration,
    /// Allocated at the first blocked write, reset at later ones.
    timer: Option<Pin<Box<Sleep>>>,
    /// A write is blocked and the timer runs for it.
    blocked: bool,
}

impl<T> SendTimeout<T> {
    pub fn new(inner: T, limit: Duration) -> Self {
        SendTimeout {
            inner,
            limit,
            timer: None,
            blocked: false,
        }
    }

    /// Passes a ready result on (progress: the timer stops); on `Pending`, starts the timer if
    /// it is not running and fails once it has run out.
    fn watch<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.blocked = false;
            return polled;
        }
        if !self.blocked {
            self.blocked = true;
            let deadline = Instant::now() + self.limit;
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let expired = match &mut self.timer {
            Some(timer) => timer.as_mut().poll(cx).is_ready(),
            None => false,
        };
        if expired {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing for send_timeout",
            )));
        }
        Poll::Pending
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SendTimeout<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, polled)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SendTimeout<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_blocked_write_fails_after_the_limit_a_moving_one_does_not() {
        let limit = Duration::from_millis(300);
        let (near, mut far) = tokio::io::duplex(8);
        let mut io = SendTimeout::new(near, limit);
        // A reader that takes 8 bytes every 200 ms never lets a write block for 300 ms.
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 8];
            while got.len() < 32 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let n = far.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            far
        });
        io.write_all(&[7u8; 40]).await.unwrap();
        let far = reader.await.unwrap();
        // Now nobody reads: the 8 bytes left fill the pipe and the next write blocks.
        let began = Instant::now();
        let err = io.write_all(&[7u8; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let waited = began.elapsed();
        assert!(waited >= limit && waited < limit * 10, "{waited:?}");
        drop(far);
    }
}
