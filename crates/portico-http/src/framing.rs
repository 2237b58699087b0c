//! A request-smuggling guard in front of hyper's HTTP/1 parser.
//!
//! hyper accepts a request with both Content-Length and Transfer-Encoding (it frames by
//! Transfer-Encoding and closes the connection afterwards) and merges repeated
//! Content-Length headers with equal values. nginx answers both with 400, and so does
//! Portico: this wrapper follows the message framing of the client's byte stream (heads,
//! Content-Length bodies, chunked bodies), looks at each request head before hyper sees
//! its end, and when the framing is ambiguous it replaces the rest of the head with a
//! byte hyper's parser refuses, so hyper answers 400 and closes the connection.
//!
//! It inspects only: bytes are passed on unchanged otherwise. After an h2 preface, an
//! Upgrade or CONNECT request, or a head it cannot follow, it steps aside and lets
//! hyper judge alone.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest head followed; a longer one is left to hyper's own limit (431).
const MAX_HEAD: usize = 256 * 1024;
const MAX_CHUNK_LINE: usize = 4096;
/// Makes any partial request head invalid for httparse, whatever came before it.
const POISON: &[u8] = b"\0\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a request head.
    Head,
    /// This many body bytes remain.
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after chunk data: bytes left.
    ChunkEnd(u8),
    Trailers,
    /// No more inspection.
    Passthrough,
    /// The poison was delivered; the stream ends here for the parser.
    Poisoned,
}

/// What a complete head means for the bytes after it.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Next(State),
    Ambiguous,
}

pub struct FramingGuard<S> {
    inner: S,
    state: State,
    /// The head being collected (only while in `State::Head`).
    head: Vec<u8>,
    /// The chunk-size or trailer line being collected.
    line: Vec<u8>,
    pending: Vec<u8>,
}

impl<S> FramingGuard<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            state: State::Head,
            head: Vec::new(),
            line: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// Runs `bytes` through the framing state machine. Returns `Some(offset)` when the
    /// head that starts at `offset` in `bytes` (0 if it started earlier) is ambiguous.
    fn scan(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        let mut head_start = 0;
        while i < bytes.len() {
            match self.state {
                State::Passthrough | State::Poisoned => return None,
                State::Head => {
                    if self.head.is_empty() {
                        head_start = i;
                    }
                    // Leading empty lines before a request are allowed (RFC 9112 §2.2).
                    if self.head.is_empty() && (bytes[i] == b'\r' || bytes[i] == b'\n') {
                        i += 1;
                        continue;
                    }
                    let rest = &bytes[i..];
                    let before = self.head.len();
                    let end = find_head_end(&self.head, rest);
                    if let (0, Some(n)) = (before, end) {
                        // The whole head is in this read (the common case): no copy.
                        i += n;
                        match judge(&rest[..n]) {
                            Verdict::Next(s) => self.state = s,
                            Verdict::Ambiguous => return Some(head_start),
                        }
                        continue;
                    }
                    let take = end.unwrap_or(rest.len());
                    self.head.extend_from_slice(&rest[..take]);
                    i += take;
                    if ends_head(&self.head) {
                        let verdict = judge(&self.head);
                        self.head.clear();
                        match verdict {
                            Verdict::Next(s) => self.state = s,
                            Verdict::Ambiguous => {
                                return Some(if before == 0 { head_start } else { 0 });
                            }
                        }
                    } else if self.head.len() > MAX_HEAD {
                        self.state = State::Passthrough;
                        self.head = Vec::new();
                    }
                }
                State::Body(n) => {
                    let take = n.min((bytes.len() - i) as u64);
                    i += take as usize;
                    self.state = if take == n {
                        State::Head
                    } else {
                        State::Body(n - take)
                    };
                }
                State::ChunkSize | State::Trailers => {
                    let b = bytes[i];
                    i += 1;
                    if b != b'\n' {
                        self.line.push(b);
                        if self.line.len() > MAX_CHUNK_LINE {
                            self.state = State::Passthrough;
                        }
                        continue;
                    }
                    let line = std::mem::take(&mut self.line);
                    let line = line.strip_suffix(b"\r").unwrap_or(&line);
                    self.state = if self.state == State::Trailers {
                        if line.is_empty() {
                            State::Head
                        } else {
                            State::Trailers
                        }
                    } else {
                        let size = line.split(|&c| c == b';').next().unwrap_or(b"");
                        match std::str::from_utf8(size)
                            .ok()
                            .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                        {
                            Some(0) => State::Trailers,
                            Some(n) => State::ChunkData(n),
                            None => State::Passthrough, // hyper will refuse it
                        }
                    };
                }
                State::ChunkData(n) => {
                    let take = n.min((bytes.len() - i) as u64);
                    i += take as usize;
                    self.state = if take == n {
                        State::ChunkEnd(2)
                    } else {
                        State::ChunkData(n - take)
                    };
                }
                State::ChunkEnd(n) => {
                    i += 1;
                    self.state = if n == 1 {
                        State::ChunkSize
                    } else {
                        State::ChunkEnd(n - 1)
                    };
                }
            }
        }
        None
    }
}

/// How many bytes of `rest` complete the head (through its blank line), if it ends there.
/// The terminator may straddle `head` and `rest`.
fn find_head_end(head: &[u8], rest: &[u8]) -> Option<usize> {
    let at = |i: isize| -> Option<u8> {
        if i >= 0 {
            rest.get(i as usize).copied()
        } else {
            let h = head.len() as isize + i;
            (h >= 0).then(|| head[h as usize])
        }
    };
    rest.iter().enumerate().find_map(|(k, &b)| {
        let k = k as isize;
        let blank = b == b'\n'
            && (at(k - 1) == Some(b'\n') || (at(k - 1) == Some(b'\r') && at(k - 2) == Some(b'\n')));
        blank.then_some(k as usize + 1)
    })
}

fn ends_head(head: &[u8]) -> bool {
    head.ends_with(b"\n\n") || head.ends_with(b"\n\r\n")
}

fn judge(head: &[u8]) -> Verdict {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().unwrap_or(b"");
    if request_line.starts_with(b"PRI * HTTP/2.0") {
        return Verdict::Next(State::Passthrough);
    }
    let connect = request_line.starts_with(b"CONNECT ");
    let mut content_lengths = 0;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut upgrade = false;
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &line[..colon];
        let value = trim(&line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            content_lengths += 1 + value.iter().filter(|&&b| b == b',').count();
            length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
            chunked = value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| trim(last).eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        }
    }
    if (transfer_encoding && content_lengths > 0) || content_lengths > 1 {
        return Verdict::Ambiguous;
    }
    if connect || upgrade {
        return Verdict::Next(State::Passthrough);
    }
    Verdict::Next(match (transfer_encoding, chunked, length) {
        (true, true, _) => State::ChunkSize,
        (true, false, _) => State::Passthrough, // hyper refuses it
        (false, _, Some(0)) => State::Head,
        (false, _, Some(n)) => State::Body(n),
        (false, _, None) if content_lengths > 0 => State::Passthrough, // invalid: hyper 400s
        (false, _, None) => State::Head,
    })
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

impl<S: AsyncRead + Unpin> AsyncRead for FramingGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.pending.is_empty() {
            let n = this.pending.len().min(buf.remaining());
            buf.put_slice(&this.pending[..n]);
            this.pending.drain(..n);
            return Poll::Ready(Ok(()));
        }
        match this.state {
            State::Poisoned => return Poll::Ready(Ok(())),
            State::Passthrough => return Pin::new(&mut this.inner).poll_read(cx, buf),
            _ => {}
        }
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if let Some(at) = this.scan(&buf.filled()[before..]) {
            tracing::info!("ambiguous request framing (Content-Length with Transfer-Encoding, or repeated Content-Length): 400");
            buf.set_filled(before + at);
            this.state = State::Poisoned;
            // Never return an empty read (that means EOF): deliver what fits now.
            let n = POISON.len().min(buf.remaining());
            buf.put_slice(&POISON[..n]);
            this.pending.extend_from_slice(&POISON[n..]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FramingGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` split at `cut` and returns what the parser would see.
    fn run(input: &[u8], cut: usize) -> Vec<u8> {
        let mut g = FramingGuard::new(());
        let mut out = Vec::new();
        for part in [&input[..cut], &input[cut..]] {
            if g.state == State::Poisoned {
                break;
            }
            match g.scan(part) {
                Some(at) => {
                    out.extend_from_slice(&part[..at]);
                    out.extend_from_slice(POISON);
                    g.state = State::Poisoned;
                }
                None => out.extend_from_slice(part),
            }
        }
        out
    }

    fn every_cut(input: &[u8]) -> Vec<Vec<u8>> {
        (0..=input.len()).map(|c| run(input, c)).collect()
    }

    #[test]
    fn clean_streams_pass_unchanged() {
        let input: &[u8] = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
GET /b HTTP/1.1\r\nHost: a\r\n\r\n\
POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n\
GET /d HTTP/1.1\r\nHost: a\r\n\r\n";
        for out in every_cut(input) {
            assert_eq!(out, input);
        }
    }

    #[test]
    fn ambiguous_heads_are_poisoned_after_the_previous_request() {
        let first: &[u8] = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
        for bad in [
            &b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\nHost: a\r\n\r\n",
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\nabcd",
        ] {
            let input = [first, bad].concat();
            for (cut, out) in every_cut(&input).into_iter().enumerate() {
                assert!(out.starts_with(first), "cut {cut}");
                assert!(out.ends_with(POISON), "cut {cut}: {:?}", String::from_utf8_lossy(&out));
                // the poison always follows a strict prefix of the bad head
                let head_part = &out[first.len()..out.len() - POISON.len()];
                assert!(bad.starts_with(head_part) && head_part.len() < bad.len(), "cut {cut}");
            }
        }
    }

    #[test]
    fn h2_and_upgrades_step_aside() {
        let h2: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04Content-Length: 1\r\nTransfer-Encoding: x\r\n\r\n";
        for out in every_cut(h2) {
            assert_eq!(out, h2);
        }
        let ws: &[u8] = b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        for out in every_cut(ws) {
            assert_eq!(out, ws);
        }
    }
}
