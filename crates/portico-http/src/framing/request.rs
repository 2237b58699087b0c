//! The client-side guard: every request head on a connection is judged before hyper's
//! HTTP/1 parser sees any of it, for the life of the connection.
//!
//! The guard follows the framing of the byte stream (heads, Content-Length bodies,
//! chunked bodies and trailers). hyper only ever gets complete heads the guard
//! accepted: a partial head is held until its blank line arrives (bounded by the
//! listener's `max_header_bytes`). A refused head is replaced by a stand-in request
//! (`GET / HTTP/1.1`) and the stream ends there for hyper; the service asks
//! [`GuardCtl::refusal`] for each request it gets and answers the stand-in with the
//! refusal's status and `Connection: close`. A malformed chunk line fails the body
//! instead (hyper gets bytes its chunk parser refuses).
//!
//! After a request that may switch protocols (`Upgrade:` or CONNECT) the guard holds the
//! bytes that follow until the service says whether it did ([`GuardCtl::decided`]): after
//! a 101 they are the tunnel's and pass unchanged; otherwise they are the next request
//! and are judged as usual. After an h2 preface the h2 stack frames everything.
//!
//! RFC 9112 §6 as applied (nginx's answer differs where docs/http.md says so):
//! Content-Length with Transfer-Encoding, more than one Content-Length, an invalid
//! Content-Length, Transfer-Encoding in an HTTP/1.0 request, `chunked` not last or more
//! than once, an empty Transfer-Encoding: 400; a coding other than chunked before the
//! final `chunked`: 501; a head over the limit: 431.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use http::StatusCode;
use tokio::io::{AsyncRead, ReadBuf};

use super::{chunk_size, find_head_end, read_head, Why, MAX_CHUNK_LINE};

/// What hyper gets in place of a refused head: a request it parses, which the service
/// recognises by its index on the connection.
const STAND_IN: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
/// Fails hyper's chunk parser whatever came before it on the chunk line.
const BAD_CHUNK: &[u8] = b"\r\0";

/// A refused request: its index on the connection (0 = the first), the answer, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub index: u64,
    pub status: StatusCode,
    pub why: Why,
}

/// What the guard and the service tell each other about one connection.
#[derive(Debug, Default)]
pub struct GuardCtl {
    has_refusal: AtomicBool,
    refusal: Mutex<Option<Refusal>>,
    /// The index + 1 of the request whose protocol switch is awaited (0: none).
    awaiting: AtomicU64,
    decision: Mutex<Decision>,
}

#[derive(Debug, Default)]
struct Decision {
    upgraded: Option<bool>,
    waker: Option<Waker>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl GuardCtl {
    /// The refusal for request `index` of this connection, if the guard refused it.
    pub fn refusal(&self, index: u64) -> Option<Refusal> {
        if !self.has_refusal.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.refusal).filter(|r| r.index == index)
    }

    /// Request `index` was answered: `upgraded` when the connection now belongs to
    /// another protocol (101, or 2xx to CONNECT). Cheap when the guard awaits nothing.
    pub fn decided(&self, index: u64, upgraded: bool) {
        if self.awaiting.load(Ordering::Acquire) != index + 1 {
            return;
        }
        let mut d = lock(&self.decision);
        d.upgraded = Some(upgraded);
        if let Some(w) = d.waker.take() {
            w.wake();
        }
    }

    fn refuse(&self, r: Refusal) {
        *lock(&self.refusal) = Some(r);
        self.has_refusal.store(true, Ordering::Release);
    }

    fn await_decision(&self, index: u64) {
        lock(&self.decision).upgraded = None;
        self.awaiting.store(index + 1, Ordering::Release);
    }

    fn poll_decision(&self, cx: &Context<'_>) -> Option<bool> {
        let mut d = lock(&self.decision);
        match d.upgraded.take() {
            Some(u) => {
                self.awaiting.store(0, Ordering::Release);
                Some(u)
            }
            None => {
                d.waker = Some(cx.waker().clone());
                None
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a request head.
    Head,
    /// This many body bytes remain.
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after chunk data: bytes seen of it.
    ChunkEnd(u8),
    Trailers,
}

/// Why [`Scanner::scan`] stopped before the end of its input.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// Every byte was accepted.
    End,
    /// The bytes from the stop are an incomplete head.
    PartialHead,
    /// The bytes from the stop follow a request that may switch protocols.
    Hold,
    /// The head starting at the stop is refused.
    RefuseHead(StatusCode, Why),
    /// The body is malformed at the stop.
    RefuseBody(Why),
    /// An h2 preface starts at the stop: no more HTTP/1 framing.
    Passthrough,
}

/// The framing state machine, with no IO.
#[derive(Debug)]
struct Scanner {
    state: State,
    /// Longest head accepted.
    max_head: usize,
    /// Heads accepted so far: the index the next one gets.
    heads: u64,
    /// The message being read may switch protocols once it ends.
    upgrade: bool,
    /// Bytes of the partial head at the start of the next input already searched.
    head_searched: usize,
    /// The chunk-size or trailer line being read.
    line: Vec<u8>,
    /// Bytes of trailers so far.
    trailer_bytes: usize,
}

impl Scanner {
    fn new(max_head: usize) -> Self {
        Self {
            state: State::Head,
            max_head,
            heads: 0,
            upgrade: false,
            head_searched: 0,
            line: Vec::new(),
            trailer_bytes: 0,
        }
    }

    /// Runs `bytes` through the state machine: how many leading bytes are accepted, and
    /// why it stopped there. A partial head at the end is not accepted (it comes again,
    /// longer, next time).
    fn scan(&mut self, bytes: &[u8]) -> (usize, Stop) {
        let mut i = 0;
        while i < bytes.len() {
            match self.state {
                State::Head => {
                    // Leading empty lines before a request are allowed (RFC 9112 §2.2).
                    if matches!(bytes[i], b'\r' | b'\n') {
                        i += 1;
                        continue;
                    }
                    let rest = &bytes[i..];
                    let Some(n) = find_head_end(rest, self.head_searched) else {
                        if rest.len() > self.max_head {
                            return (
                                i,
                                Stop::RefuseHead(
                                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                                    "request head over max_header_bytes",
                                ),
                            );
                        }
                        self.head_searched = rest.len();
                        return (i, Stop::PartialHead);
                    };
                    self.head_searched = 0;
                    if self.heads == 0 && rest.starts_with(b"PRI * HTTP/2.0") {
                        return (i, Stop::Passthrough);
                    }
                    if n > self.max_head {
                        return (
                            i,
                            Stop::RefuseHead(
                                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                                "request head over max_header_bytes",
                            ),
                        );
                    }
                    match judge(&rest[..n]) {
                        Ok((next, upgrade)) => {
                            i += n;
                            self.heads += 1;
                            self.upgrade = upgrade;
                            self.state = next;
                            if next == State::Head && self.message_done() {
                                return (i, Stop::Hold);
                            }
                        }
                        Err((status, why)) => return (i, Stop::RefuseHead(status, why)),
                    }
                }
                State::Body(n) => {
                    let take = n.min((bytes.len() - i) as u64);
                    i += take as usize;
                    if take == n {
                        self.state = State::Head;
                        if self.message_done() {
                            return (i, Stop::Hold);
                        }
                    } else {
                        self.state = State::Body(n - take);
                    }
                }
                State::ChunkSize | State::Trailers => {
                    let b = bytes[i];
                    if b != b'\n' {
                        self.line.push(b);
                        i += 1;
                        if self.line.len() > MAX_CHUNK_LINE {
                            return (i, Stop::RefuseBody("a chunk or trailer line over 4 KiB"));
                        }
                        if self.state == State::Trailers {
                            self.trailer_bytes += 1;
                            if self.trailer_bytes > self.max_head {
                                return (i, Stop::RefuseBody("trailers over max_header_bytes"));
                            }
                        }
                        continue;
                    }
                    let line = std::mem::take(&mut self.line);
                    let Some(line) = line.strip_suffix(b"\r") else {
                        return (i, Stop::RefuseBody("a bare LF ends a chunk line"));
                    };
                    i += 1;
                    if self.state == State::Trailers {
                        if line.is_empty() {
                            self.state = State::Head;
                            if self.message_done() {
                                return (i, Stop::Hold);
                            }
                        }
                        continue;
                    }
                    self.state = match chunk_size(line) {
                        Some(0) => {
                            self.trailer_bytes = 0;
                            State::Trailers
                        }
                        Some(n) => State::ChunkData(n),
                        None => return (i - 1, Stop::RefuseBody("an invalid chunk size")),
                    };
                }
                State::ChunkData(n) => {
                    let take = n.min((bytes.len() - i) as u64);
                    i += take as usize;
                    self.state = if take == n {
                        State::ChunkEnd(0)
                    } else {
                        State::ChunkData(n - take)
                    };
                }
                State::ChunkEnd(seen) => {
                    let want = if seen == 0 { b'\r' } else { b'\n' };
                    if bytes[i] != want {
                        return (i, Stop::RefuseBody("chunk data not followed by CRLF"));
                    }
                    i += 1;
                    self.state = if seen == 0 {
                        State::ChunkEnd(1)
                    } else {
                        State::ChunkSize
                    };
                }
            }
        }
        (i, Stop::End)
    }

    /// A message just ended: whether its request may switch protocols (the bytes after
    /// it then wait for the service's answer).
    fn message_done(&mut self) -> bool {
        std::mem::take(&mut self.upgrade)
    }
}

/// What a complete request head means for the bytes after it: the next state, and
/// whether the request may switch protocols; or its refusal.
fn judge(head: &[u8]) -> Result<(State, bool), (StatusCode, Why)> {
    let bad = |why| (StatusCode::BAD_REQUEST, why);
    let f = read_head(head).map_err(bad)?;
    let start = &head[..f.start_len];
    let http10 = start.ends_with(b"HTTP/1.0");
    let connect = start.starts_with(b"CONNECT ");
    if f.transfer_encoding {
        if http10 {
            return Err(bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        if f.length_count > 0 || f.bad_length {
            return Err(bad("Content-Length with Transfer-Encoding"));
        }
        if f.codings == 0 {
            return Err(bad("an empty Transfer-Encoding"));
        }
        if f.chunked_twice() {
            return Err(bad("chunked applied more than once"));
        }
        if !f.chunked_last {
            return Err(bad("a final transfer coding other than chunked"));
        }
        if f.codings > 1 {
            return Err((
                StatusCode::NOT_IMPLEMENTED,
                "a transfer coding other than chunked",
            ));
        }
        return Ok((State::ChunkSize, f.upgrade || connect));
    }
    if f.bad_length {
        return Err(bad("an invalid Content-Length"));
    }
    if f.length_count > 1 {
        return Err(bad("more than one Content-Length"));
    }
    let next = match f.length {
        Some(n) if n > 0 => State::Body(n),
        _ => State::Head,
    };
    Ok((next, f.upgrade || connect))
}

/// How the guard delivers bytes now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Scan,
    /// Waiting for the service to say whether request `.0` switched protocols.
    Await(u64),
    Passthrough,
    /// Nothing more for hyper (after a refusal).
    Ended,
}

pub struct FramingGuard<S> {
    inner: S,
    scanner: Scanner,
    mode: Mode,
    ctl: Arc<GuardCtl>,
    /// A head held back from hyper must be complete within this (hyper's own
    /// header_read_timeout only runs once it has seen bytes of a head).
    header_timeout: std::time::Duration,
    head_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes read but not yet judged or released: a partial head, or what follows a
    /// request that may switch protocols.
    carry: Vec<u8>,
    /// Accepted bytes waiting for room in hyper's buffer.
    out: Vec<u8>,
    out_pos: usize,
}

impl<S> FramingGuard<S> {
    /// `max_head`: the longest request head (the listener's max_header_bytes);
    /// `header_timeout`: how long a head may take once it started.
    pub fn new(
        inner: S,
        max_head: usize,
        header_timeout: std::time::Duration,
        ctl: Arc<GuardCtl>,
    ) -> Self {
        Self {
            inner,
            scanner: Scanner::new(max_head),
            mode: Mode::Scan,
            ctl,
            header_timeout,
            head_timer: None,
            carry: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
        }
    }

    /// Acts on why a scan stopped; `tail` is the input from the stop on.
    fn after(&mut self, stop: Stop, tail: &[u8]) {
        if stop != Stop::PartialHead {
            self.head_timer = None;
        }
        match stop {
            Stop::End => {}
            Stop::PartialHead => {
                self.carry.extend_from_slice(tail);
                if self.head_timer.is_none() {
                    self.head_timer = Some(Box::pin(tokio::time::sleep(self.header_timeout)));
                }
            }
            Stop::Hold => {
                self.carry.extend_from_slice(tail);
                let index = self.scanner.heads - 1;
                self.ctl.await_decision(index);
                self.mode = Mode::Await(index);
            }
            Stop::Passthrough => {
                self.out.extend_from_slice(tail);
                self.mode = Mode::Passthrough;
            }
            Stop::RefuseHead(status, why) => {
                tracing::info!(status = status.as_u16(), "request refused: {why}");
                self.ctl.refuse(Refusal {
                    index: self.scanner.heads,
                    status,
                    why,
                });
                self.out.extend_from_slice(STAND_IN);
                self.mode = Mode::Ended;
            }
            Stop::RefuseBody(why) => {
                tracing::info!("request body refused: {why}");
                self.out.extend_from_slice(BAD_CHUNK);
                self.mode = Mode::Ended;
            }
        }
    }

    /// Judges the carried bytes again (more arrived, or a protocol switch was declined).
    fn rescan_carry(&mut self) {
        let carry = std::mem::take(&mut self.carry);
        let (ok, stop) = self.scanner.scan(&carry);
        self.out.extend_from_slice(&carry[..ok]);
        self.after(stop, &carry[ok..]);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FramingGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.out_pos < this.out.len() {
                let n = (this.out.len() - this.out_pos).min(buf.remaining());
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            match this.mode {
                // hyper answers the stand-in with `Connection: close` and stops reading.
                Mode::Ended => return Poll::Pending,
                Mode::Passthrough => {
                    if !this.carry.is_empty() {
                        this.out = std::mem::take(&mut this.carry);
                        continue;
                    }
                    return Pin::new(&mut this.inner).poll_read(cx, buf);
                }
                Mode::Await(_) => match this.ctl.poll_decision(cx) {
                    None => return Poll::Pending,
                    Some(true) => this.mode = Mode::Passthrough,
                    Some(false) => {
                        this.mode = Mode::Scan;
                        this.rescan_carry();
                    }
                },
                Mode::Scan if this.carry.is_empty() => {
                    // The common case: read straight into hyper's buffer and cut it
                    // where the guard stops.
                    let before = buf.filled().len();
                    std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                    let filled = buf.filled().len();
                    if filled == before {
                        return Poll::Ready(Ok(())); // EOF, between messages
                    }
                    let (ok, stop) = this.scanner.scan(&buf.filled()[before..]);
                    if stop != Stop::End {
                        let tail = buf.filled()[before + ok..].to_vec();
                        buf.set_filled(before + ok);
                        this.after(stop, &tail);
                    }
                    if buf.filled().len() > before {
                        return Poll::Ready(Ok(()));
                    }
                }
                Mode::Scan => {
                    // A head is being collected: read more behind it, within
                    // header_timeout of its first byte.
                    let mut chunk = [0u8; 4096];
                    let mut rb = ReadBuf::new(&mut chunk);
                    if Pin::new(&mut this.inner)
                        .poll_read(cx, &mut rb)?
                        .is_pending()
                    {
                        if let Some(t) = this.head_timer.as_mut() {
                            if t.as_mut().poll(cx).is_ready() {
                                return Poll::Ready(Err(io::Error::new(
                                    io::ErrorKind::TimedOut,
                                    "request head not complete within header_timeout",
                                )));
                            }
                        }
                        return Poll::Pending;
                    }
                    if rb.filled().is_empty() {
                        // EOF inside a head: hyper never saw any of it.
                        this.carry.clear();
                        return Poll::Ready(Ok(()));
                    }
                    this.carry.extend_from_slice(rb.filled());
                    this.rescan_carry();
                }
            }
        }
    }
}

super::write_through!(FramingGuard);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// What hyper would read from `input` delivered in pieces split at `cuts`, with the
    /// service declining every protocol switch; and the refusal, if any.
    async fn through(input: &[u8], cuts: &[usize]) -> (Vec<u8>, Option<Refusal>) {
        let (mut tx, rx) = tokio::io::duplex(1 << 20);
        let ctl = Arc::new(GuardCtl::default());
        let mut g = FramingGuard::new(
            rx,
            64 * 1024,
            std::time::Duration::from_secs(10),
            Arc::clone(&ctl),
        );
        let mut last = 0;
        for &c in cuts.iter().chain(std::iter::once(&input.len())) {
            tokio::io::AsyncWriteExt::write_all(&mut tx, &input[last..c])
                .await
                .unwrap();
            last = c;
        }
        drop(tx);
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            // a request that may switch protocols: decline it
            let pending = ctl.awaiting.load(Ordering::Acquire);
            if pending > 0 {
                ctl.decided(pending - 1, false);
            }
            if g.mode == Mode::Ended && g.out_pos == g.out.len() {
                break; // after a refusal hyper gets nothing more
            }
            match g.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => panic!("{e}"),
            }
        }
        let refusal = (0..16).find_map(|i| ctl.refusal(i));
        (out, refusal)
    }

    async fn every_cut(input: &[u8]) -> Vec<(Vec<u8>, Option<Refusal>)> {
        let mut all = Vec::new();
        for c in 0..=input.len() {
            all.push(through(input, &[c]).await);
        }
        all
    }

    #[tokio::test]
    async fn clean_streams_pass_unchanged() {
        let input: &[u8] = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
GET /b HTTP/1.1\r\nHost: a\r\n\r\n\
POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n\
GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\
GET /d HTTP/1.1\r\nHost: a\r\n\r\n";
        for (out, refusal) in every_cut(input).await {
            assert_eq!(out, input);
            assert_eq!(refusal, None);
        }
    }

    #[tokio::test]
    async fn refused_heads_become_a_stand_in_after_the_previous_request() {
        let first: &[u8] = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
        let cases: &[(&[u8], u16)] = &[
            (b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
            (b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\nHost: a\r\n\r\n", 400),
            (b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd", 400),
            (b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\nabcd", 400),
            (b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
            (b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
            (b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 400),
            (b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
            (b"POST /x HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\n", 400),
            (b"GET /x HTTP/1.1\r\nHost: a\r\nX: 1\r\n y\r\n\r\n", 400),
        ];
        for &(bad, status) in cases {
            let input = [first, bad].concat();
            for (cut, (out, refusal)) in every_cut(&input).await.into_iter().enumerate() {
                let what = String::from_utf8_lossy(bad);
                assert_eq!(out, [first, STAND_IN].concat(), "cut {cut} of {what}");
                let r = refusal.expect("refused");
                assert_eq!((r.index, r.status.as_u16()), (1, status), "{what}");
            }
        }
    }

    #[tokio::test]
    async fn the_guard_holds_after_a_declined_upgrade_and_a_long_chunk_line() {
        let upgrade: &[u8] =
            b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        let bad: &[u8] =
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
        let input = [upgrade, bad].concat();
        for (out, refusal) in every_cut(&input).await {
            assert_eq!(out, [upgrade, STAND_IN].concat());
            assert_eq!(refusal.map(|r| r.index), Some(1));
        }
        let long_ext = format!("5;{}\r\nhello\r\n0\r\n\r\n", "x".repeat(5000));
        let chunked: &[u8] = b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        let input = [chunked, long_ext.as_bytes(), bad].concat();
        let (out, _) = through(&input, &[]).await;
        assert!(out.ends_with(BAD_CHUNK), "the body fails");
        assert!(
            !out.windows(bad.len()).any(|w| w == bad),
            "nothing after it"
        );
    }

    #[tokio::test]
    async fn bad_chunk_lines_fail_the_body() {
        let head: &[u8] = b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        for body in [
            &b"+5\r\nhello\r\n0\r\n\r\n"[..],
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"10000000000000000\r\n",
        ] {
            let input = [head, body].concat();
            for (out, refusal) in every_cut(&input).await {
                assert!(out.starts_with(head));
                assert!(
                    out.ends_with(BAD_CHUNK),
                    "{:?}",
                    String::from_utf8_lossy(body)
                );
                assert_eq!(refusal, None);
            }
        }
    }

    #[tokio::test]
    async fn h2_steps_aside_and_oversized_heads_are_431() {
        let h2: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04Content-Length: 1\r\nTransfer-Encoding: x\r\n\r\n";
        for (out, _) in every_cut(h2).await {
            assert_eq!(out, h2);
        }
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(70 * 1024));
        let (out, refusal) = through(big.as_bytes(), &[1000, 30000]).await;
        assert_eq!(out, STAND_IN);
        assert_eq!(refusal.map(|r| r.status.as_u16()), Some(431));
    }
}
