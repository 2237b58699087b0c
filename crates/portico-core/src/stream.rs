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

    /// Whether [`Stream::poll_send_file`] can send on this stream: a plain socket (TLS
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

    /// Sends `c.head`, then up to `c.len` bytes of `c.file` from `c.offset`, in one
    /// system call when the socket is ready: the bytes written, the head's first (a
    /// caller whose head was not written whole sends the rest of it again). `Ok(0)`
    /// when there is no head left and the file ends before `offset`. On a TLS stream:
    /// an `Unsupported` error (ask [`Stream::can_sendfile`] first).
    ///
    /// [`FileSend::Sendfile`] writes the head, then calls sendfile(2) for the file.
    /// [`FileSend::Copy`] reads the head and the file into this thread's scratch buffer
    /// and writes that: the connection holds no buffer of its own, and what the socket
    /// did not take is read again (from the page cache) at the next call.
    pub fn poll_send_file(
        &self,
        cx: &mut Context<'_>,
        c: &FileChunk<'_>,
    ) -> Poll<io::Result<usize>> {
        use std::os::fd::AsFd;
        use tokio::io::Interest;
        let Ok(off) = nix::libc::off_t::try_from(c.offset) else {
            return Poll::Ready(Err(io::Error::from(io::ErrorKind::InvalidInput)));
        };
        let sendfile = |fd: std::os::fd::BorrowedFd<'_>| {
            let mut off = off;
            nix::sys::sendfile::sendfile(fd, c.file, Some(&mut off), c.len).map_err(io::Error::from)
        };
        // TcpStream and UnixStream have the same readiness calls, but no common trait
        macro_rules! send {
            ($s:ident) => {{
                std::task::ready!($s.poll_write_ready(cx))?;
                match c.how {
                    FileSend::Sendfile if c.head.is_empty() => {
                        $s.try_io(Interest::WRITABLE, || sendfile($s.as_fd()))
                    }
                    FileSend::Sendfile => $s.try_write(c.head),
                    FileSend::Copy => copy_out(c, |b| $s.try_write(b)),
                }
            }};
        }
        loop {
            let r = match self {
                Stream::Tcp(s) => send!(s),
                Stream::Unix(s) => send!(s),
                Stream::Tls(_) => Err(io::Error::from(io::ErrorKind::Unsupported)),
            };
            match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }
}

/// How a file region goes to a plain socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileSend {
    /// sendfile(2): no copy through user space; the socket's queue holds page-cache
    /// pages, four kilobytes each.
    Sendfile,
    /// pread(2) into the worker thread's scratch buffer, then one write(2) of the head
    /// and the file's bytes together.
    Copy,
}

/// What one [`Stream::poll_send_file`] call offers: a head, then a file region.
#[derive(Debug, Clone, Copy)]
pub struct FileChunk<'a> {
    pub head: &'a [u8],
    pub file: &'a std::fs::File,
    pub offset: u64,
    pub len: usize,
    pub how: FileSend,
}

/// The most one [`FileSend::Copy`] write carries (the scratch buffer's size, one per
/// thread that sends files).
pub const COPY_CHUNK: usize = 256 * 1024;

thread_local! {
    static SCRATCH: std::cell::RefCell<Option<Box<[u8]>>> = const { std::cell::RefCell::new(None) };
}

/// [`FileSend::Copy`]: the head and up to [`COPY_CHUNK`] bytes of the file, read
/// into this thread's scratch buffer and handed to `write` at once.
fn copy_out(
    c: &FileChunk<'_>,
    write: impl FnOnce(&[u8]) -> io::Result<usize>,
) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    SCRATCH.with(|cell| {
        let mut cell = cell.borrow_mut();
        let b = cell.get_or_insert_with(|| vec![0; COPY_CHUNK].into_boxed_slice());
        let h = c.head.len().min(COPY_CHUNK);
        b[..h].copy_from_slice(&c.head[..h]);
        let want = c.len.min(COPY_CHUNK - h);
        let mut got = 0;
        while got < want {
            match c
                .file
                .read_at(&mut b[h + got..h + want], c.offset + got as u64)
            {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if h + got == 0 {
            return Ok(0);
        }
        write(&b[..h + got])
    })
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
