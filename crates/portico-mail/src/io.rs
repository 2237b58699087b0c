//! Line-oriented IO on a client or backend connection: a bounded read buffer, lines
//! read with a timeout, writes with a timeout.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why reading a line stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("connection closed")]
    Closed,
    #[error("no data for {0:?}")]
    Timeout(Duration),
    #[error("line longer than {0} bytes")]
    TooLong(usize),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What has been read from a stream and not used yet, and the reads that use it: lines
/// (bounded) and byte runs (IMAP literals). The stream is passed in, so it can be
/// swapped (STARTTLS) between calls; whatever was read ahead must then be discarded
/// ([`LineIo::discard`]).
#[derive(Debug, Default)]
pub struct LineIo {
    pub buf: BytesMut,
    /// Set after an over-long line until its end has been skipped.
    skipping: bool,
}

impl LineIo {
    pub fn new() -> Self {
        Self::default()
    }

    async fn fill<S: AsyncRead + Unpin>(
        &mut self,
        s: &mut S,
        timeout: Duration,
    ) -> Result<(), ReadError> {
        self.buf.reserve(2048);
        match tokio::time::timeout(timeout, s.read_buf(&mut self.buf)).await {
            Ok(Ok(0)) => Err(ReadError::Closed),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(ReadError::Io(e)),
            Err(_) => Err(ReadError::Timeout(timeout)),
        }
    }

    /// The next line without its CRLF (or LF). A line over `max` bytes is skipped to
    /// its end and reported once as [`ReadError::TooLong`]; the connection stays usable.
    pub async fn read_line<S: AsyncRead + Unpin>(
        &mut self,
        s: &mut S,
        max: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, ReadError> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line = self.buf.split_to(i + 1);
                if std::mem::take(&mut self.skipping) {
                    return Err(ReadError::TooLong(max));
                }
                line.truncate(i);
                if line.last() == Some(&b'\r') {
                    line.truncate(i - 1);
                }
                if line.len() > max {
                    return Err(ReadError::TooLong(max));
                }
                return Ok(line.to_vec());
            }
            if self.buf.len() > max {
                self.buf.clear();
                self.skipping = true;
            }
            self.fill(s, timeout).await?;
        }
    }

    /// Exactly `n` bytes (an IMAP literal).
    pub async fn read_exact<S: AsyncRead + Unpin>(
        &mut self,
        s: &mut S,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, ReadError> {
        while self.buf.len() < n {
            self.fill(s, timeout).await?;
        }
        let out = self.buf[..n].to_vec();
        self.buf.advance(n);
        Ok(out)
    }

    /// Forgets what was read ahead: before STARTTLS, plaintext pipelined after the
    /// command must never be taken as coming from inside TLS (CVE-2011-0411 class).
    pub fn discard(&mut self) -> usize {
        let n = self.buf.len();
        self.buf.clear();
        self.skipping = false;
        n
    }

    /// Whether bytes the peer sent are waiting unread (pipelined after a command).
    pub fn has_pending(&self) -> bool {
        !self.buf.is_empty()
    }
}

/// Writes `data` and flushes, within `timeout`.
pub async fn write_all<S: AsyncWrite + Unpin>(
    s: &mut S,
    data: &[u8],
    timeout: Duration,
) -> std::io::Result<()> {
    {
        match tokio::time::timeout(timeout, async {
            s.write_all(data).await?;
            s.flush().await
        })
        .await
        {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("write timed out after {timeout:?}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_long_lines_and_literals() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let mut io = LineIo::new();
        let t = Duration::from_secs(5);
        b.write_all(b"one\r\ntwo\n").await.unwrap();
        assert_eq!(io.read_line(&mut a, 16, t).await.unwrap(), b"one");
        assert_eq!(io.read_line(&mut a, 16, t).await.unwrap(), b"two");
        b.write_all(&[b'x'; 100]).await.unwrap();
        b.write_all(b"\r\nafter\r\nABCDEtail\r\n").await.unwrap();
        assert!(matches!(
            io.read_line(&mut a, 16, t).await,
            Err(ReadError::TooLong(16))
        ));
        assert_eq!(io.read_line(&mut a, 16, t).await.unwrap(), b"after");
        assert_eq!(io.read_exact(&mut a, 5, t).await.unwrap(), b"ABCDE");
        assert_eq!(io.read_line(&mut a, 16, t).await.unwrap(), b"tail");
        drop(b);
        assert!(matches!(
            io.read_line(&mut a, 16, t).await,
            Err(ReadError::Closed)
        ));
    }
}
