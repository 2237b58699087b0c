//! The accepted stream handed to a protocol module, whatever it came over.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::server::TlsStream;

/// A client connection: plain TCP, a Unix socket, or TLS over either.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream<Stream>>),
}

impl Stream {
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// Whether [`Stream::poll_sendfile`] can send on this stream: a plain socket (TLS
    /// needs the bytes in user space to encrypt them).
    pub fn can_sendfile(&self) -> bool {
        !self.is_tls()
    }

    /// Corks (`on`) or uncorks a TCP socket (TCP_CORK, as nginx's `tcp_nopush`): while
    /// corked, only full segments leave, so an answer's head and the file sent after it
    /// go out together; uncorking sends what is left. A no-op on other streams.
    pub fn set_cork(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => socket2::SockRef::from(s).set_tcp_cork(on),
            Stream::Unix(_) | Stream::Tls(_) => Ok(()),
        }
    }

    /// Sends up to `len` bytes of `file` from `offset` with sendfile(2): from the page
    /// cache to the socket, without a copy through user space. `Ok(0)` when the file
    /// ends before `offset`. On a TLS stream: an `Unsupported` error (ask
    /// [`Stream::can_sendfile`] first).
    pub fn poll_sendfile(
        &self,
        cx: &mut Context<'_>,
        file: &std::fs::File,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        let Ok(off) = nix::libc::off_t::try_from(offset) else {
            return Poll::Ready(Err(io::Error::from(io::ErrorKind::InvalidInput)));
        };
        let send = |fd: std::os::fd::BorrowedFd<'_>| {
            let mut off = off;
            nix::sys::sendfile::sendfile(fd, file, Some(&mut off), len).map_err(io::Error::from)
        };
        use std::os::fd::AsFd;
        use tokio::io::Interest;
        loop {
            let r = match self {
                Stream::Tcp(s) => {
                    std::task::ready!(s.poll_write_ready(cx))?;
                    s.try_io(Interest::WRITABLE, || send(s.as_fd()))
                }
                Stream::Unix(s) => {
                    std::task::ready!(s.poll_write_ready(cx))?;
                    s.try_io(Interest::WRITABLE, || send(s.as_fd()))
                }
                Stream::Tls(_) => Err(io::Error::from(io::ErrorKind::Unsupported)),
            };
            match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Tcp($s) => {
                let $s = Pin::new($s);
                $e
            }
            Stream::Unix($s) => {
                let $s = Pin::new($s);
                $e
            }
            Stream::Tls($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}
