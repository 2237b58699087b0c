//! Connecting to a server over TCP or a Unix socket, with a timeout.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use portico_config::PeerAddr;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
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
    Ok(connect_sending(addr, timeout, true, &[]).await?.0)
}

/// [`connect`], sending `first` as soon as the connection allows, and TCP_NODELAY only
/// if `nodelay` (a protocol that sends its whole request in one write and then only
/// reads saves the syscall). Returns how much of `first` went out; the caller writes
/// the rest.
///
/// On loopback and fast links the handshake is done when `connect()` returns, so the
/// request goes out in the same turn of the event loop instead of after a round trip
/// through epoll for "writable" (and without the SO_ERROR check that a successful send
/// makes moot). A connection that is still being set up falls back to waiting.
pub async fn connect_sending(
    addr: &PeerAddr,
    timeout: Duration,
    nodelay: bool,
    first: &[u8],
) -> io::Result<(PeerStream, usize)> {
    let fut = async {
        match addr {
            PeerAddr::Tcp(a) => {
                let sock = Socket::new(
                    Domain::for_address(*a),
                    Type::STREAM.nonblocking().cloexec(),
                    Some(Protocol::TCP),
                )?;
                if nodelay {
                    sock.set_tcp_nodelay(true)?;
                }
                let sent = start(&sock, &(*a).into(), first)?;
                let inner = TcpStream::from_std(std::net::TcpStream::from(sock))?;
                if sent == 0 {
                    inner.writable().await?;
                    if let Some(e) = inner.take_error()? {
                        return Err(e);
                    }
                }
                Ok((PeerStream::Tcp { inner }, sent))
            }
            PeerAddr::Host { host, port } => {
                let s = TcpStream::connect((host.as_str(), *port)).await?;
                if nodelay {
                    s.set_nodelay(true)?;
                }
                Ok((PeerStream::Tcp { inner: s }, 0))
            }
            PeerAddr::Unix(p) => {
                let sock = Socket::new(Domain::UNIX, Type::STREAM.nonblocking().cloexec(), None)?;
                let sent = start(&sock, &SockAddr::unix(p)?, first)?;
                let inner = UnixStream::from_std(std::os::unix::net::UnixStream::from(sock))?;
                if sent == 0 {
                    inner.writable().await?;
                    if let Some(e) = inner.take_error()? {
                        return Err(e);
                    }
                }
                Ok((PeerStream::Unix { inner }, sent))
            }
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

/// Starts connecting the non-blocking `sock` and, if the connection is already up,
/// sends what it can of `first` (how much is returned; 0 means "wait for writable").
/// A Unix socket whose listen queue is full fails with WouldBlock, as in tokio's and
/// nginx's connect.
fn start(sock: &Socket, addr: &SockAddr, first: &[u8]) -> io::Result<usize> {
    match sock.connect(addr) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    if first.is_empty() {
        return Ok(0);
    }
    match sock.send_with_flags(first, libc::MSG_NOSIGNAL) {
        Ok(n) => Ok(n),
        // Still in the handshake (or no room): the caller waits.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected
            ) =>
        {
            Ok(0)
        }
        Err(e) => Err(e),
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

    /// Makes the coming close a reset (SO_LINGER 0) instead of a FIN: for a connection
    /// whose exchange is complete and that the server closes after one request (uwsgi,
    /// FastCGI without keep-conn), this spares both kernels the FIN handshake and the
    /// server a TIME_WAIT socket per request. No-op on Unix sockets.
    pub fn reset_on_close(&self) {
        if let PeerStream::Tcp { inner } = self {
            let _ = socket2::SockRef::from(inner).set_linger(Some(Duration::ZERO));
        }
    }

    /// Moves the connection's readiness registration to the runtime of the calling
    /// task. For a connection taken from a pool that worker threads share: otherwise
    /// every event of a connection opened on another worker reaches this one through
    /// that worker's thread (a wake-up of each per event).
    pub fn rehome(self) -> io::Result<PeerStream> {
        Ok(match self {
            PeerStream::Tcp { inner } => PeerStream::Tcp {
                inner: TcpStream::from_std(inner.into_std()?)?,
            },
            PeerStream::Unix { inner } => PeerStream::Unix {
                inner: UnixStream::from_std(inner.into_std()?)?,
            },
        })
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
