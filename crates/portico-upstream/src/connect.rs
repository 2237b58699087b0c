//! Connecting to a server over TCP or a Unix socket, with a timeout.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use portico_config::PeerAddr;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

pin_project! {
    /// A connection to an upstream server.
    #[project = PeerStreamProj]
    #[derive(Debug)]
    pub enum PeerStream {
        Tcp { #[pin] inner: TcpStream },
        Unix { #[pin] inner: UnixStream },
    }
}

/// Connects to `addr`, giving up after `timeout` with `ErrorKind::TimedOut`. TCP
/// connections have Nagle's algorithm off (TCP_NODELAY).
pub async fn connect(addr: &PeerAddr, timeout: Duration) -> io::Result<PeerStream> {
    connect_with(addr, timeout, true).await
}

/// [`connect`], with TCP_NODELAY only if `nodelay`: a protocol that sends its whole
/// request in one write and then only reads (uwsgi without a body) saves the syscall.
pub async fn connect_with(
    addr: &PeerAddr,
    timeout: Duration,
    nodelay: bool,
) -> io::Result<PeerStream> {
    let fut = async {
        match addr {
            PeerAddr::Tcp(a) => {
                let s = TcpStream::connect(a).await?;
                if nodelay {
                    s.set_nodelay(true)?;
                }
                Ok(PeerStream::Tcp { inner: s })
            }
            PeerAddr::Host { host, port } => {
                let s = TcpStream::connect((host.as_str(), *port)).await?;
                if nodelay {
                    s.set_nodelay(true)?;
                }
                Ok(PeerStream::Tcp { inner: s })
            }
            PeerAddr::Unix(p) => Ok(PeerStream::Unix {
                inner: UnixStream::connect(p).await?,
            }),
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect to {addr} timed out after {timeout:?}"),
        )),
    }
}

impl PeerStream {
    /// The server's IP address (`None` on a Unix socket).
    pub fn peer_ip(&self) -> Option<std::net::IpAddr> {
        match self {
            PeerStream::Tcp { inner } => inner.peer_addr().ok().map(|a| a.ip()),
            PeerStream::Unix { .. } => None,
        }
    }

    /// For an idle pooled connection: true while the server has neither closed it nor
    /// sent anything unasked (a read would block).
    pub fn is_idle_usable(&self) -> bool {
        let mut probe = [0u8; 1];
        let r = match self {
            PeerStream::Tcp { inner } => inner.try_read(&mut probe),
            PeerStream::Unix { inner } => inner.try_read(&mut probe),
        };
        matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.project() {
            PeerStreamProj::Tcp { inner } => inner.poll_read(cx, buf),
            PeerStreamProj::Unix { inner } => inner.poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.project() {
            PeerStreamProj::Tcp { inner } => inner.poll_write(cx, buf),
            PeerStreamProj::Unix { inner } => inner.poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.project() {
            PeerStreamProj::Tcp { inner } => inner.poll_write_vectored(cx, bufs),
            PeerStreamProj::Unix { inner } => inner.poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.project() {
            PeerStreamProj::Tcp { inner } => inner.poll_flush(cx),
            PeerStreamProj::Unix { inner } => inner.poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.project() {
            PeerStreamProj::Tcp { inner } => inner.poll_shutdown(cx),
            PeerStreamProj::Unix { inner } => inner.poll_shutdown(cx),
        }
    }
}
