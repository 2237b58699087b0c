//! The upstream-side guard: a response whose framing is ambiguous never reaches a client.
//!
//! hyper's client frames a response with both Content-Length and Transfer-Encoding by
//! the latter and relays it; nginx does too. Portico, as HAProxy, refuses it: this
//! wrapper reads each response head on an HTTP/1.1 upstream connection before hyper
//! completes it, and when the head is ambiguous — Content-Length with
//! Transfer-Encoding, Content-Length values that differ or are not numbers, `chunked`
//! twice, a malformed header line — or the first chunk-size line that came with it is
//! invalid, it turns the rest of the head into bytes hyper's parser refuses. The
//! request then fails as an upstream error (502, the connection is not reused).
//!
//! A bad chunk line later in the body is caught by hyper's chunk decoder; by then the
//! response head has gone to the client, so the client sees the body cut short (the
//! connection to it closes without the last chunk).
//!
//! The proxy marks the start of each exchange ([`ExchangeStart::begin`]) so the guard
//! knows the next bytes open a response head; between heads it only passes bytes on.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use super::{find_head_end, first_chunk_ok, read_head, Why};

/// Makes any partial response head invalid for httparse.
const POISON: &[u8] = b"\0\r\n\r\n";
/// Longest response head followed; hyper's own limit refuses longer ones.
const MAX_HEAD: usize = 256 * 1024;

/// Set before each request on a connection: the next bytes start a response head.
/// The guard leaves the last head's header names, as the upstream spelled them, here
/// (the client gets them in that case).
#[derive(Debug, Default)]
pub struct ExchangeStart {
    begun: AtomicBool,
    names: std::sync::Mutex<Vec<bytes::Bytes>>,
}

impl ExchangeStart {
    pub fn begin(&self) {
        self.begun.store(true, Ordering::Release);
    }

    /// The header names of the response head read last, in order (taken).
    pub fn take_names(&self) -> Vec<bytes::Bytes> {
        std::mem::take(&mut *self.names.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn record(&self, head: &[u8]) {
        let names = || {
            let mut from = 0;
            memchr::memchr_iter(b'\n', head).filter_map(move |nl| {
                let line = &head[from..nl];
                from = nl + 1;
                Some(&line[..memchr::memchr(b':', line)?])
            })
        };
        // the usual case, every name Title-Case: nothing to note (nothing allocated)
        let noted = if names().all(crate::h1::is_title_case) {
            Vec::new()
        } else {
            names().map(bytes::Bytes::copy_from_slice).collect()
        };
        *self.names.lock().unwrap_or_else(|p| p.into_inner()) = noted;
    }
}

pub struct ResponseGuard<S> {
    inner: S,
    start: Arc<ExchangeStart>,
    reading_head: bool,
    /// The part of the head read in earlier reads.
    head: Vec<u8>,
    poisoned: bool,
}

impl<S> ResponseGuard<S> {
    pub fn new(inner: S, start: Arc<ExchangeStart>) -> Self {
        Self {
            inner,
            start,
            reading_head: false,
            head: Vec::new(),
            poisoned: false,
        }
    }

    /// Looks at `bytes` (one read). Returns where to cut them and poison, when the head
    /// being read turns out bad.
    fn scan(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        while self.reading_head && i < bytes.len() {
            let head_start = i;
            let before = self.head.len();
            // The common case: the whole head in this read, judged where it lies.
            let (end, verdict) = if before == 0 {
                let Some(end) = find_head_end(&bytes[i..], 0) else {
                    self.keep_partial(&bytes[i..]);
                    return None;
                };
                self.start.record(&bytes[i..i + end]);
                (end, judge(&bytes[i..i + end], &bytes[i + end..]))
            } else {
                self.head.extend_from_slice(&bytes[i..]);
                let Some(end) = find_head_end(&self.head, before) else {
                    self.keep_partial(&[]);
                    return None;
                };
                let used = end - before;
                self.start.record(&self.head[..end]);
                (used, judge(&self.head[..end], &bytes[i + used..]))
            };
            self.head.clear();
            match verdict {
                Ok(Next::Another) => {}
                Ok(Next::Body) => self.reading_head = false,
                Err(why) => {
                    tracing::warn!("upstream response refused (502): {why}");
                    return Some(if before == 0 { head_start } else { 0 });
                }
            }
            i += end;
        }
        None
    }

    /// Keeps the start of a head that goes on in the next read (`more` is appended);
    /// past [`MAX_HEAD`] the guard gives up on it (hyper's own limit refuses it).
    fn keep_partial(&mut self, more: &[u8]) {
        self.head.extend_from_slice(more);
        if self.head.len() > MAX_HEAD {
            self.reading_head = false;
            self.head = Vec::new();
        }
    }
}

enum Next {
    /// An interim (1xx other than 101) response: another head follows.
    Another,
    /// The final head: the body (or a tunnel) follows.
    Body,
}

/// Judges a complete response head; `after` is what followed it in the same read.
fn judge(head: &[u8], after: &[u8]) -> Result<Next, Why> {
    let f = read_head(head)?;
    let status = head
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(0);
    f.check_response()?;
    if (100..200).contains(&status) && status != 101 {
        return Ok(Next::Another);
    }
    if f.chunked_last && !first_chunk_ok(after) {
        return Err("an invalid chunk size");
    }
    Ok(Next::Body)
}

impl<S: AsyncRead + Unpin> AsyncRead for ResponseGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.poisoned {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "ambiguous upstream response framing",
            )));
        }
        if this.start.begun.swap(false, Ordering::AcqRel) {
            this.reading_head = true;
            this.head.clear();
        }
        if !this.reading_head {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if let Some(cut) = this.scan(&buf.filled()[before..]) {
            buf.set_filled(before + cut);
            let n = POISON.len().min(buf.remaining());
            buf.put_slice(&POISON[..n]);
            this.poisoned = true;
        }
        Poll::Ready(Ok(()))
    }
}

super::write_through!(ResponseGuard);

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(wire: &[u8]) -> Result<(), Why> {
        let end = find_head_end(wire, 0).expect("a whole head");
        judge(&wire[..end], &wire[end..]).map(|_| ())
    }

    #[test]
    fn ambiguous_responses_are_refused() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\nabcd",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        ] {
            assert!(verdict(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        for good in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ] {
            assert!(verdict(good).is_ok(), "{:?}", String::from_utf8_lossy(good));
        }
    }

    #[test]
    fn the_poison_lands_inside_the_bad_head_at_any_cut() {
        let wire: &[u8] =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        for cut in 0..wire.len() {
            let mut g = ResponseGuard::new((), Arc::default());
            g.reading_head = true;
            let mut seen = Vec::new();
            let mut poisoned = false;
            for part in [&wire[..cut], &wire[cut..]] {
                match g.scan(part) {
                    Some(at) => {
                        seen.extend_from_slice(&part[..at]);
                        poisoned = true;
                        break;
                    }
                    None => seen.extend_from_slice(part),
                }
            }
            assert!(poisoned, "cut {cut}");
            // hyper never saw the whole bad head
            let head_end = 25 + find_head_end(&wire[25..], 0).unwrap();
            assert!(seen.len() < head_end, "cut {cut}");
            assert!(seen.starts_with(&wire[..seen.len()]));
        }
    }
}
