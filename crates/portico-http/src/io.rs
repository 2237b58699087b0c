//! A client stream wrapper that enforces `send_timeout`: a write that makes no progress
//! for that long fails the connection (a client that stopped reading cannot pin memory
//! and a task forever).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::body::GapTimer;

pub struct SendTimeoutIo<S> {
    inner: S,
    gap: GapTimer,
}

impl<S> SendTimeoutIo<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            gap: GapTimer::new(timeout),
        }
    }

    fn check<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(v) => {
                self.gap.progress();
                Poll::Ready(v)
            }
            Poll::Pending if self.gap.poll_expired(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "client did not read for {:?} (send_timeout)",
                    self.gap.timeout()
                ),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SendTimeoutIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SendTimeoutIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A client connection: files sent from the kernel's side on plain sockets, under the same send timeout as
/// every write.
impl crate::upgrade::ConnIo for SendTimeoutIo<portico_core::Stream> {
    fn can_sendfile(&self) -> bool {
        self.inner.can_sendfile()
    }

    fn poll_send_file(
        &mut self,
        cx: &mut Context<'_>,
        c: &portico_core::FileChunk<'_>,
    ) -> Poll<io::Result<usize>> {
        let r = self.inner.poll_send_file(cx, c);
        self.check(cx, r)
    }

    fn set_cork(&self, on: bool) -> io::Result<()> {
        self.inner.set_cork(on)
    }

    fn into_stream(self: Box<Self>) -> Option<portico_core::Stream> {
        Some(self.inner)
    }
}
