//! The two sides of one client connection: a request body reads from it while the
//! answer (or a `100 Continue`) is written to it.
//!
//! In place of `tokio::io::split`, whose halves hide the stream: the writing side here
//! can ask the connection itself for more than bytes — sendfile(2) on a plain socket
//! ([`WriteSide::poll_send_file`]). Each call holds the lock for one poll only (never
//! across an await), so the two sides never wait on each other; the stream keeps
//! separate read and write wakers, as with tokio's halves.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Io;

type Shared = Arc<Mutex<Io>>;

fn with<R>(s: &Shared, f: impl FnOnce(&mut Io) -> R) -> R {
    // a poll that panicked left the stream as any failed poll does: usable
    let mut io = s.lock().unwrap_or_else(PoisonError::into_inner);
    f(&mut io)
}

/// The connection's reading side.
pub struct ReadSide(Shared);

/// The connection's writing side.
pub struct WriteSide(Shared);

/// Splits `io` into its two sides.
pub fn split(io: Io) -> (ReadSide, WriteSide) {
    let s = Arc::new(Mutex::new(io));
    (ReadSide(Arc::clone(&s)), WriteSide(s))
}

impl ReadSide {
    /// The connection whole again; `None` when `w` is another connection's side.
    pub fn unsplit(self, w: WriteSide) -> Option<Io> {
        if !Arc::ptr_eq(&self.0, &w.0) {
            return None;
        }
        drop(w);
        let m = Arc::into_inner(self.0)?;
        Some(m.into_inner().unwrap_or_else(PoisonError::into_inner))
    }
}

impl WriteSide {
    /// Whether [`WriteSide::poll_send_file`] can send here.
    pub fn can_sendfile(&self) -> bool {
        with(&self.0, |io| io.can_sendfile())
    }

    /// Corks or uncorks the socket (TCP_CORK).
    pub fn set_cork(&self, on: bool) -> io::Result<()> {
        with(&self.0, |io| io.set_cork(on))
    }

    /// Sends a head and part of a file ([`portico_core::Stream::poll_send_file`]).
    pub fn poll_send_file(
        &self,
        cx: &mut Context<'_>,
        c: &portico_core::FileChunk<'_>,
    ) -> Poll<io::Result<usize>> {
        with(&self.0, |io| io.poll_send_file(cx, c))
    }
}

impl AsyncRead for ReadSide {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        with(&self.0, |io| Pin::new(io).poll_read(cx, buf))
    }
}

impl AsyncWrite for WriteSide {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        with(&self.0, |io| Pin::new(io).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        with(&self.0, |io| Pin::new(io).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        with(&self.0, |io| io.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        with(&self.0, |io| Pin::new(io).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        with(&self.0, |io| Pin::new(io).poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn both_sides_work_at_once_and_join_again() {
        let (client, server) = tokio::io::duplex(64);
        let (mut rd, mut wr) = split(Box::new(server));
        let (mut crd, mut cwr) = tokio::io::split(client);
        // the writing side fills the pipe while the reading side waits for bytes
        let reading = tokio::spawn(async move {
            let mut b = [0u8; 5];
            rd.read_exact(&mut b).await.map(|_| (rd, b))
        });
        wr.write_all(b"answer").await.expect("write");
        let mut got = [0u8; 6];
        crd.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"answer");
        cwr.write_all(b"hello").await.expect("client write");
        let (rd, b) = reading.await.expect("join").expect("read side");
        assert_eq!(&b, b"hello");
        assert!(!wr.can_sendfile(), "a pipe has no sendfile");
        let io = rd.unsplit(wr);
        assert!(io.is_some());
    }

    #[tokio::test]
    async fn sides_of_two_connections_do_not_join() {
        let (_c1, s1) = tokio::io::duplex(64);
        let (_c2, s2) = tokio::io::duplex(64);
        let (r1, _w1) = split(Box::new(s1));
        let (_r2, w2) = split(Box::new(s2));
        assert!(r1.unsplit(w2).is_none());
    }
}
