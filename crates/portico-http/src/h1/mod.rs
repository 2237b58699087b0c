//! Portico's own HTTP/1.x server connection (RFC 9112), in place of hyper's.
//!
//! One task per connection reads a request head, judges its framing
//! (framing::request's rules: what is ambiguous is refused before anything acts on
//! it), hands the service an `http::Request` whose body reads straight off the
//! connection, and writes the answer: head and the first body bytes in one write when
//! they are ready together, Content-Length or chunked as the body allows, `Date`, and
//! header names in the case the upstream wrote them ([`OriginalCase`]) or Title-Case
//! (the standard irregular spellings, such as `ETag`, as written: [`IRREGULAR`]).
//!
//! What an idle keep-alive connection holds is the point: no buffer at all between
//! requests — reads wait on a per-thread scratch buffer, and bytes are kept only once
//! they arrive — so thousands of idle clients cost little more than their sockets.
//!
//! An h2 preface on the first request hands the connection (and the bytes read) back
//! to the caller for hyper's h2 server; a 101 answer hands it to the upgrade's taker.

pub mod body;
pub mod client;
pub mod decode;
mod split;

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::body::{HttpBody, InBody};
use crate::framing::request::{judge_request as judge, BodyStart};
use crate::framing::HeadFraming;
use crate::framing::{find_head_end, Why};
use crate::sendfile::{Region, Sendfile};
use portico_core::{FileChunk, FileSend};

/// The connection as the engine gets it (the listener's stream behind its send
/// timeout, or a test's pipe).
pub type Io = Box<dyn crate::upgrade::ConnIo>;

/// Header fields a request or an answer usually gains on its way through (a proxy's
/// X-Forwarded-For/-Proto/-Host; a cache hit's Age and status header).
pub const ADDED_HEADERS: usize = 4;
/// Request header fields accepted (more: 431, as hyper and nginx's large buffers).
const MAX_HEADERS: usize = 100;
/// A request body left unread after its answer is read and dropped up to this, so the
/// connection can carry the next request; a longer one closes it.
const DISCARD_MAX: u64 = 1 << 20;

/// The reading side of a connection and what was read but not yet used.
pub struct Reader {
    io: split::ReadSide,
    pub buf: BytesMut,
}

thread_local! {
    /// Where a connection with nothing buffered reads into (one per worker thread).
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; 16 * 1024].into_boxed_slice());
}

impl Reader {
    /// Reads more into `buf`; `Ok(0)` at the end of the stream.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.is_empty() && self.buf.capacity() < 2048 {
            // nothing kept: read into the thread's scratch, keep only what came
            let io = &mut self.io;
            let buf = &mut self.buf;
            return SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                let mut rb = ReadBuf::new(&mut s[..]);
                ready!(Pin::new(io).poll_read(cx, &mut rb))?;
                buf.extend_from_slice(rb.filled());
                Poll::Ready(Ok(rb.filled().len()))
            });
        }
        self.buf.reserve(4096);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }
}

/// Header names as the upstream wrote them, for the answer to the client: each name's
/// original spellings in order of appearance.
#[derive(Debug, Clone, Default)]
pub struct OriginalCase(pub HeaderMap<Bytes>);

/// A head refused before the service saw it: the service answers the stand-in request
/// carrying this with `status` (and logs it), and the connection closes.
#[derive(Debug, Clone, Copy)]
pub struct Refused {
    pub status: StatusCode,
    pub why: Why,
}

/// The connection, handed to whoever takes a 101's tunnel: the bytes the client sent
/// after its request come first.
pub struct Upgraded {
    io: Io,
    prefix: Bytes,
}

impl Upgraded {
    /// `io`, with `prefix` read first.
    pub fn new(io: Io, prefix: Bytes) -> Self {
        Self { io, prefix }
    }

    /// `io`, with what is left in a connection's read buffer read first: copied out,
    /// so a tunnel that lives for hours does not keep the buffer it came in.
    pub fn from_buffer(io: Io, left: &BytesMut) -> Self {
        let prefix = if left.is_empty() {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(left)
        };
        Self { io, prefix }
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let head = self.prefix.split_to(n);
            buf.put_slice(&head);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// In a request that may switch protocols: resolves to the connection once the answer
/// was a 101 (dropped otherwise). Taken once (extensions must be cloneable).
#[derive(Clone)]
pub struct PendingUpgrade(Arc<std::sync::Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl PendingUpgrade {
    pub fn take(&self) -> Option<oneshot::Receiver<Upgraded>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// How the connection's limits apply.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub max_head: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// How long a draining connection may still bring a request.
    pub drain_grace: Duration,
    /// Hand an idle connection back ([`Next::Idle`]) once it has waited this long for a
    /// request (`None`: wait in the task until the idle timeout).
    pub park_after: Option<Duration>,
}

/// What is left of the connection when the engine is done with it.
pub enum Next {
    Closed,
    /// An h2 preface: the connection for hyper's h2 server, with the bytes read.
    H2(Io, Bytes),
    /// Idle for `park_after`, nothing read of a next request: the connection, to be
    /// parked until it speaks or `until` (its idle timeout) passes; `serve` goes on
    /// with it afterwards.
    Idle {
        io: Io,
        until: Instant,
        /// No request came yet (an h2 preface still may).
        first: bool,
    },
}

/// What a request head says about its connection.
#[derive(Clone, Copy)]
struct Facts {
    body: BodyStart,
    keep_alive: bool,
    expect_continue: bool,
    may_upgrade: bool,
}

enum Got {
    Head(Box<http::request::Parts>, Facts),
    Refused(Refused),
    H2,
    /// Idle for `park_after`; the idle timeout is the instant.
    Idle(Instant),
    Closed,
}

/// Serves HTTP/1 requests on `io` until the client or the limits end it, or it idles
/// ([`Settings::park_after`]). `first`: no request came on it yet (an h2 preface may).
pub async fn serve<F, Fut>(
    io: Io,
    s: Settings,
    mut first: bool,
    shutdown: &CancellationToken,
    handle: F,
) -> Next
where
    F: Fn(Request<InBody>) -> Fut,
    Fut: Future<Output = Response<HttpBody>>,
{
    let (rd, mut wr) = split::split(io);
    let mut reader = Reader {
        io: rd,
        buf: BytesMut::new(),
    };
    let mut drain: Option<Instant> = None;
    // One timer and one shutdown watch for all of the connection's waits for a head: a
    // tokio timer made per wait is put in the worker's timer wheel and taken out again
    // each time, a shutdown watch made per wait joins and leaves the token's waiters;
    // a later deadline on a timer already in the wheel is a store.
    let mut waits = Waits {
        timer: Box::pin(tokio::time::sleep_until(Instant::now() + s.idle_timeout)),
        shutdown: Box::pin(shutdown.cancelled()),
    };
    loop {
        let got = next_head(&mut reader, &s, first, &mut waits, &mut drain).await;
        let (req, head) = match got {
            Got::Closed => return Next::Closed,
            Got::Idle(until) => {
                return match reader.io.unsplit(wr) {
                    Some(io) => Next::Idle { io, until, first },
                    None => Next::Closed,
                };
            }
            Got::H2 => {
                return match reader.io.unsplit(wr) {
                    Some(io) => Next::H2(io, reader.buf.freeze()),
                    None => Next::Closed,
                };
            }
            Got::Refused(r) => {
                let mut req = Request::new(InBody::Empty);
                req.extensions_mut().insert(r);
                (req, None)
            }
            Got::Head(parts, facts) => (Request::from_parts(*parts, InBody::Empty), Some(facts)),
        };
        first = false;
        // one exchange boxed: an idle connection's task holds only the wait above
        match portico_core::boxed(|| exchange(reader, wr, req, head, &s, shutdown, &handle)).await {
            After::Again(r, w) => (reader, wr) = (r, w),
            After::End(next) => return next,
        }
        if reader.buf.is_empty() {
            // idle: hold no buffer
            reader.buf = BytesMut::new();
        }
    }
}

/// How an exchange left the connection.
enum After {
    /// Ready for the next request.
    Again(Reader, split::WriteSide),
    End(Next),
}

/// One request on the connection: its body wired to the reader, the service's answer
/// written, the reading side taken back.
async fn exchange<F, Fut>(
    reader: Reader,
    mut wr: split::WriteSide,
    mut req: Request<InBody>,
    head: Option<Facts>,
    s: &Settings,
    shutdown: &CancellationToken,
    handle: &F,
) -> After
where
    F: Fn(Request<InBody>) -> Fut,
    Fut: Future<Output = Response<HttpBody>>,
{
    let is_head = req.method() == Method::HEAD;
    let version = req.version();
    let mut keep_alive = head.as_ref().is_some_and(|h| h.keep_alive);
    let continue_wanted = head
        .as_ref()
        .is_some_and(|h| h.expect_continue)
        .then(|| Arc::new(Notify::new()));
    let mut back = None;
    let mut upgrade_tx = None;
    let mut reader_here = Some(reader);
    if let Some(h) = &head {
        if h.may_upgrade {
            let (tx, rx) = oneshot::channel();
            req.extensions_mut()
                .insert(PendingUpgrade(Arc::new(std::sync::Mutex::new(Some(rx)))));
            upgrade_tx = Some(tx);
        }
        let framing = match h.body {
            BodyStart::None => None,
            BodyStart::Length(n) => Some(body::Framing::Length(n)),
            BodyStart::Chunked => Some(body::Framing::ChunkSize),
        };
        if let Some((framing, r)) = framing.and_then(|f| Some((f, reader_here.take()?))) {
            let (tx, rx) = oneshot::channel();
            back = Some(rx);
            let expect = continue_wanted.clone();
            *req.body_mut() = InBody::H1(body::H1Body::new(r, framing, s.max_head, tx, expect));
        }
    }
    // boxed, as the answer's writing: the service's future is large, and the 100
    // Continue select below would copy it
    let mut fut = portico_core::boxed(|| handle(req));
    let resp = match &continue_wanted {
        None => fut.await,
        Some(wanted) => {
            let mut continued = false;
            loop {
                tokio::select! {
                    resp = &mut fut => break resp,
                    _ = wanted.notified(), if !continued => {
                        continued = true;
                        if wr.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err()
                            || wr.flush().await.is_err()
                        {
                            return After::End(Next::Closed);
                        }
                    }
                }
            }
        }
    };
    if head.is_none() || shutdown.is_cancelled() {
        keep_alive = false;
    }
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS && upgrade_tx.is_some();
    let meta = Meta {
        head: is_head,
        version,
        keep_alive: keep_alive && !switching,
        switching,
    };
    let keep = match portico_core::boxed(|| write_response(&mut wr, resp, &meta)).await {
        Ok(k) => k,
        Err(e) => {
            tracing::debug!(error = %e, "writing the answer failed");
            return After::End(Next::Closed);
        }
    };
    if switching {
        let (Some(tx), Some(r)) = (upgrade_tx, reader_here) else {
            return After::End(Next::Closed);
        };
        if let Some(io) = r.io.unsplit(wr) {
            let _ = tx.send(Upgraded::from_buffer(io, &r.buf));
        }
        return After::End(Next::Closed);
    }
    // the reading side back from the body, what is left of it read and dropped
    let reader = match (reader_here, back) {
        (Some(r), _) => r,
        (None, Some(rx)) if keep => match tokio::time::timeout(Duration::from_secs(1), rx).await {
            Ok(Ok(ret)) => match discard(ret, s).await {
                Some(r) => r,
                None => return After::End(close(wr).await),
            },
            _ => return After::End(close(wr).await),
        },
        _ => return After::End(close(wr).await),
    };
    if !keep {
        return After::End(close(wr).await);
    }
    After::Again(reader, wr)
}

async fn close(mut wr: split::WriteSide) -> Next {
    let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
    Next::Closed
}

/// Reads and drops what the service left of a body, when that is short.
async fn discard(ret: body::Returned, s: &Settings) -> Option<Reader> {
    let body::Returned {
        mut reader,
        framing,
    } = ret;
    let mut left = match framing {
        body::Framing::Done => return Some(reader),
        body::Framing::Length(n) if n <= DISCARD_MAX => n,
        _ => return None,
    };
    let deadline = Instant::now() + s.header_timeout;
    while left > 0 {
        if reader.buf.is_empty() {
            match tokio::time::timeout_at(deadline, reader.fill()).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
        let take = left.min(reader.buf.len() as u64);
        let _ = reader.buf.split_to(take as usize);
        left -= take;
    }
    Some(reader)
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Waits for and reads the next request head.
/// What a connection waits on besides its client, made once per connection.
struct Waits<'a> {
    timer: Pin<Box<tokio::time::Sleep>>,
    shutdown: Pin<Box<tokio_util::sync::WaitForCancellationFuture<'a>>>,
}

async fn next_head(
    r: &mut Reader,
    s: &Settings,
    first: bool,
    waits: &mut Waits<'_>,
    drain: &mut Option<Instant>,
) -> Got {
    let now = Instant::now();
    let idle_until = now + s.idle_timeout;
    let park_at = s.park_after.map(|p| now + p).filter(|p| *p < idle_until);
    let mut head_until: Option<Instant> = None;
    let mut searched = 0;
    loop {
        // leading empty lines before a request are allowed (RFC 9112 §2.2)
        let blank = r
            .buf
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        if blank > 0 {
            let _ = r.buf.split_to(blank);
            searched = 0;
        }
        if !r.buf.is_empty() {
            if first {
                let n = r.buf.len().min(H2_PREFACE.len());
                if r.buf[..n] == H2_PREFACE[..n] {
                    if n == H2_PREFACE.len() {
                        return Got::H2;
                    }
                } else if let Some(end) = find_head_end(&r.buf, searched) {
                    return parse(r, end, s);
                }
            } else if let Some(end) = find_head_end(&r.buf, searched) {
                return parse(r, end, s);
            }
            searched = r.buf.len();
            if r.buf.len() > s.max_head {
                return Got::Refused(Refused {
                    status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    why: "request head over max_header_bytes",
                });
            }
            head_until.get_or_insert_with(|| Instant::now() + s.header_timeout);
        }
        let (until, park) = match (head_until, *drain, park_at) {
            (Some(h), _, _) => (h, false),
            (None, Some(d), _) => (d.min(idle_until), false),
            (None, None, Some(p)) if r.buf.is_empty() => (p, true),
            (None, None, _) => (idle_until, false),
        };
        if waits.timer.deadline() != until {
            waits.timer.as_mut().reset(until);
        }
        tokio::select! {
            read = r.fill() => match read {
                Ok(0) | Err(_) => return Got::Closed,
                Ok(_) => {}
            },
            _ = waits.timer.as_mut() => {
                return if park { Got::Idle(idle_until) } else { Got::Closed };
            }
            _ = waits.shutdown.as_mut(), if drain.is_none() && head_until.is_none() => {
                *drain = Some(Instant::now() + s.drain_grace.min(s.idle_timeout));
            }
        }
    }
}

/// Parses the complete head at the start of `r.buf` (`end` bytes).
fn parse(r: &mut Reader, end: usize, s: &Settings) -> Got {
    let refuse = |status, why| Got::Refused(Refused { status, why });
    if end > s.max_head {
        return refuse(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request head over max_header_bytes",
        );
    }
    let bytes = r.buf.split_to(end).freeze();
    // not initialised first (3.2 KB a request): httparse writes the fields it splits
    let mut fields =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(&bytes, &mut fields) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return refuse(StatusCode::BAD_REQUEST, "an incomplete request head")
        }
        Err(httparse::Error::TooManyHeaders) => {
            return refuse(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "more than 100 header fields",
            )
        }
        Err(_) => return refuse(StatusCode::BAD_REQUEST, "a malformed request head"),
    }
    let bad = |why| refuse(StatusCode::BAD_REQUEST, why);
    let Some(method) = req
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
    else {
        return bad("an invalid method");
    };
    let path = req.path.unwrap_or("");
    let Ok(uri) = Uri::from_maybe_shared(bytes.slice_ref(path.as_bytes())) else {
        // the http crate holds targets up to 64 KiB (hyper answers 414 beyond too)
        if path.len() >= usize::from(u16::MAX) - 1 {
            return refuse(StatusCode::URI_TOO_LONG, "a request target over 64 KiB");
        }
        return bad("an invalid request target");
    };
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    // room for what the pipeline adds (a proxy's X-Forwarded-*, Host): a map that
    // grows is rehashed whole
    let mut headers = HeaderMap::with_capacity(req.headers.len() + ADDED_HEADERS);
    // the framing fields and Connection's and Expect's tokens read in the same pass
    // (httparse has refused what could hide a field: obs-fold, whitespace before a colon)
    let mut framing = HeadFraming::default();
    let (mut close, mut keep, mut continue_token) = (false, false, false);
    for f in req.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(f.name.as_bytes()),
            HeaderValue::from_maybe_shared(bytes.slice_ref(f.value)),
        ) else {
            return bad("an invalid header field");
        };
        if name == header::CONNECTION {
            let (c, k) = connection_tokens(f.value);
            (close, keep) = (close | c, keep | k);
        } else if name == header::EXPECT {
            continue_token |= value_has_token(f.value, b"100-continue");
        } else {
            framing.field(&name, f.value);
        }
        headers.append(name, value);
    }
    let (body, may_upgrade) = match judge(
        &framing,
        version == Version::HTTP_10,
        method == Method::CONNECT,
    ) {
        Ok(j) => j,
        Err((status, why)) => return refuse(status, why),
    };
    let keep_alive = match version {
        Version::HTTP_10 => keep,
        _ => !close,
    };
    let expect_continue = version == Version::HTTP_11 && body != BodyStart::None && continue_token;
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Got::Head(
        Box::new(parts),
        Facts {
            body,
            keep_alive,
            expect_continue,
            may_upgrade,
        },
    )
}

struct Meta {
    head: bool,
    version: Version,
    keep_alive: bool,
    switching: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    None,
    Length(u64),
    Chunked,
    Close,
}

/// Data frames up to this are copied into the head's buffer; bigger ones are written
/// from where they are.
const COALESCE: usize = 16 * 1024;

/// Writes the answer; whether the connection can carry another request.
async fn write_response(
    wr: &mut split::WriteSide,
    resp: Response<HttpBody>,
    m: &Meta,
) -> io::Result<bool> {
    let (mut parts, body) = resp.into_parts();
    let status = parts.status;
    // one pass of cheap name comparisons instead of a hashed lookup per field
    let (mut declared, mut has_date, mut has_connection, mut close) = (None, false, false, false);
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH {
            declared = declared.or_else(|| {
                let v = value.to_str().ok()?;
                v.trim().parse::<u64>().ok()
            });
        } else if name == header::DATE {
            has_date = true;
        } else if name == header::CONNECTION {
            has_connection = true;
            close |= value_has_token(value.as_bytes(), b"close");
        }
    }
    let mut keep = m.keep_alive && !close;
    let no_body = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut add_length = None;
    let out = if no_body {
        Out::None
    } else if let Some(n) = declared {
        Out::Length(n)
    } else if let Some(n) = body.size_hint().exact() {
        add_length = Some(n);
        Out::Length(n)
    } else if m.head {
        Out::None
    } else if m.version == Version::HTTP_11 {
        Out::Chunked
    } else {
        keep = false;
        Out::Close
    };
    let mut buf = HeadBuf::take();
    buf.extend_from_slice(b"HTTP/1.1 ");
    buf.extend_from_slice(status.as_str().as_bytes());
    buf.push(b' ');
    match parts.extensions.get::<hyper::ext::ReasonPhrase>() {
        Some(r) => buf.extend_from_slice(r.as_bytes()),
        None => buf.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes()),
    }
    buf.extend_from_slice(b"\r\n");
    let original = parts.extensions.get::<OriginalCase>();
    let mut last: Option<&HeaderName> = None;
    let mut nth = 0;
    for (name, value) in parts.headers.iter() {
        if name == header::TRANSFER_ENCODING {
            // the framing is the engine's to choose
            continue;
        }
        nth = if last == Some(name) { nth + 1 } else { 0 };
        last = Some(name);
        match original.and_then(|o| o.0.get_all(name).iter().nth(nth)) {
            Some(orig) => buf.extend_from_slice(orig),
            None => title_case(&mut buf, name.as_str().as_bytes()),
        }
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    if !has_date {
        buf.extend_from_slice(b"Date: ");
        date(&mut buf);
        buf.extend_from_slice(b"\r\n");
    }
    if let Some(n) = add_length {
        buf.extend_from_slice(b"Content-Length: ");
        buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    if out == Out::Chunked {
        buf.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    if !has_connection && !m.switching {
        if !keep {
            buf.extend_from_slice(b"Connection: close\r\n");
        } else if m.version == Version::HTTP_10 {
            buf.extend_from_slice(b"Connection: keep-alive\r\n");
        }
    }
    buf.extend_from_slice(b"\r\n");
    if m.head || out == Out::None {
        wr.write_all(&buf).await?;
        wr.flush().await?;
        return Ok(keep);
    }
    let mut sent: u64 = 0;
    if let Out::Length(n) = out {
        // a file region goes out from the socket's side when the socket takes it
        let offer = parts.extensions.remove::<Sendfile>();
        if let Some((offer, region)) = offer
            .filter(|_| wr.can_sendfile())
            .and_then(|o| o.take().map(|r| (o, r)))
        {
            // sendfile: the head and the file leave together, in full segments (nginx's
            // tcp_nopush); a copy writes them in one call anyway
            let corked = offer.how() == FileSend::Sendfile && wr.set_cork(true).is_ok();
            sent = send_file(wr, &buf, &region, n, &offer).await?;
            buf.clear();
            if corked {
                wr.set_cork(false)?;
            }
        }
    }
    let mut body = std::pin::pin!(body);
    let mut trailers = None;
    let mut failed = false;
    loop {
        // what is ready now rides with what is buffered; only then wait
        let polled = std::future::poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await;
        let frame = match polled {
            Poll::Ready(f) => f,
            Poll::Pending => {
                if !buf.is_empty() {
                    wr.write_all(&buf).await?;
                    wr.flush().await?;
                    buf.clear();
                }
                std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await
            }
        };
        let Some(frame) = frame else { break };
        let Ok(frame) = frame else {
            failed = true;
            break;
        };
        let data = match frame.into_data() {
            Ok(d) => d,
            Err(f) => {
                trailers = f.into_trailers().ok();
                continue;
            }
        };
        let data = match out {
            Out::Length(n) => {
                let room = n.saturating_sub(sent);
                if (data.len() as u64) > room {
                    failed = true;
                    data.slice(..room as usize)
                } else {
                    data
                }
            }
            _ => data,
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        let chunked = out == Out::Chunked;
        if chunked {
            buf.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        }
        if data.len() <= COALESCE {
            buf.extend_from_slice(&data);
            if chunked {
                buf.extend_from_slice(b"\r\n");
            }
        } else {
            let mut all = bytes::Buf::chain(&buf[..], data);
            wr.write_all_buf(&mut all).await?;
            buf.clear();
            if chunked {
                buf.extend_from_slice(b"\r\n");
            }
        }
        if buf.len() > COALESCE {
            wr.write_all(&buf).await?;
            buf.clear();
        }
    }
    match out {
        Out::Chunked if !failed => {
            buf.extend_from_slice(b"0\r\n");
            if let Some(t) = &trailers {
                for (name, value) in t {
                    title_case(&mut buf, name.as_str().as_bytes());
                    buf.extend_from_slice(b": ");
                    buf.extend_from_slice(value.as_bytes());
                    buf.extend_from_slice(b"\r\n");
                }
            }
            buf.extend_from_slice(b"\r\n");
        }
        Out::Length(n) if sent < n => failed = true,
        _ => {}
    }
    if !buf.is_empty() {
        wr.write_all(&buf).await?;
    }
    wr.flush().await?;
    Ok(keep && !failed && out != Out::Close)
}

/// The most one sendfile(2) call is asked to send (as nginx's `sendfile_max_chunk`),
/// so a fast client of a large file does not hold the worker in one call.
const SENDFILE_MAX: u64 = 2 << 20;

/// The least a copy asks for after the socket took less than it was offered.
const COPY_MIN: u64 = 16 * 1024;

/// What one answer sends from a file before the worker's other connections get a turn
/// (a reader as fast as the sender would otherwise keep the worker to itself, and the
/// others' files would finish late).
const FAIR_SHARE: u64 = 1 << 20;

/// Sends `head`, then `r` (at most `room` bytes: the length the head declared) from
/// the socket's side ([`portico_core::Stream::poll_send_file`]); the file's bytes sent
/// (fewer when the file shrank since it was opened).
async fn send_file(
    wr: &split::WriteSide,
    mut head: &[u8],
    r: &Region,
    room: u64,
    offer: &Sendfile,
) -> io::Result<u64> {
    let how = offer.how();
    let want = r.len.min(room);
    let most = match how {
        FileSend::Sendfile => SENDFILE_MAX,
        FileSend::Copy => portico_core::COPY_CHUNK as u64,
    };
    // a copy re-reads what the socket did not take: after a short write, ask for about
    // what the socket took, then double again while it takes everything
    let mut ask = most;
    let (mut done, mut turn) = (0, 0);
    while done < want || !head.is_empty() {
        let c = FileChunk {
            head,
            file: &r.file,
            offset: r.offset + done,
            len: (want - done).min(ask) as usize,
            how,
        };
        let n = std::future::poll_fn(|cx| wr.poll_send_file(cx, &c)).await?;
        if n == 0 {
            break;
        }
        let h = n.min(head.len());
        head = &head[h..];
        let file = (n - h) as u64;
        done += file;
        offer.add_sent(file);
        if how == FileSend::Copy {
            // the file's bytes that rode with the head in this write
            let offered = (c.len as u64).min(most.saturating_sub(c.head.len() as u64));
            ask = if file < offered {
                file.max(COPY_MIN)
            } else {
                (ask * 2).min(most)
            };
        }
        turn += file;
        if turn >= FAIR_SHARE {
            turn = 0;
            tokio::task::yield_now().await;
        } else {
            tokio::task::consume_budget().await;
        }
    }
    Ok(done)
}

/// Whether a comma-separated field `name` (Connection, Upgrade, Expect) lists `token`
/// (case-insensitive).
pub fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .any(|v| value_has_token(v.as_bytes(), token.as_bytes()))
}

/// What a Connection field's value says: (`close`, `keep-alive`) among its tokens.
pub fn connection_tokens(value: &[u8]) -> (bool, bool) {
    // the usual field is the one token, as written
    match value {
        b"keep-alive" => (false, true),
        b"close" => (true, false),
        _ => (
            value_has_token(value, b"close"),
            value_has_token(value, b"keep-alive"),
        ),
    }
}

/// Whether a comma-separated field value lists `token` (ASCII case aside).
pub fn value_has_token(value: &[u8], token: &[u8]) -> bool {
    // the usual field holds the one token: no split
    match memchr::memchr(b',', value) {
        None => value.trim_ascii().eq_ignore_ascii_case(token),
        Some(_) => value
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token)),
    }
}

/// Standard names whose usual spelling is not plain Title-Case (as the RFCs, nginx and
/// Apache write them): [`title_case`] writes these.
const IRREGULAR: [&[u8]; 6] = [
    b"ETag",
    b"WWW-Authenticate",
    b"Content-MD5",
    b"X-XSS-Protection",
    b"TE",
    b"DNT",
];

fn irregular(name: &[u8]) -> Option<&'static [u8]> {
    // the lengths of IRREGULAR's names: most names are none of them (runs per field)
    if !matches!(name.len(), 2 | 3 | 4 | 11 | 16) {
        return None;
    }
    IRREGULAR
        .iter()
        .copied()
        .find(|s| s.len() == name.len() && s.eq_ignore_ascii_case(name))
}

/// Whether `name` is spelled as [`title_case`] would write it.
pub fn is_title_case(name: &[u8]) -> bool {
    // upper case at the start and after each `-`, lower case elsewhere
    let mut prev = b'-';
    let mut plain = true;
    for &b in name {
        plain &= if prev == b'-' {
            !b.is_ascii_lowercase()
        } else {
            !b.is_ascii_uppercase()
        };
        prev = b;
    }
    match irregular(name) {
        Some(s) => s == name,
        None => plain,
    }
}

/// The buffer an answer's head (and small body frames) is written into: one per
/// thread, lent to one answer at a time, so neither an allocation per answer nor a
/// buffer per idle connection.
struct HeadBuf(Vec<u8>);

thread_local! {
    static HEAD_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl HeadBuf {
    fn take() -> Self {
        let mut v = HEAD_BUF.with(|b| std::mem::take(&mut *b.borrow_mut()));
        v.clear();
        if v.capacity() == 0 {
            v.reserve(4096);
        }
        HeadBuf(v)
    }
}

impl Drop for HeadBuf {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        if v.capacity() <= 4 * COALESCE {
            HEAD_BUF.with(|b| *b.borrow_mut() = v);
        }
    }
}

impl std::ops::Deref for HeadBuf {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for HeadBuf {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

/// The spelling on the wire of the names most answers carry, for a lower-case `name`:
/// one match on the bytes (by length, then a compare), not a Title-Casing byte by byte.
fn spelled(name: &[u8]) -> Option<&'static [u8]> {
    Some(match name {
        b"content-type" => b"Content-Type",
        b"content-length" => b"Content-Length",
        b"server" => b"Server",
        b"date" => b"Date",
        b"last-modified" => b"Last-Modified",
        b"accept-ranges" => b"Accept-Ranges",
        b"cache-control" => b"Cache-Control",
        b"content-encoding" => b"Content-Encoding",
        b"vary" => b"Vary",
        b"expires" => b"Expires",
        b"location" => b"Location",
        b"connection" => b"Connection",
        b"set-cookie" => b"Set-Cookie",
        _ => return None,
    })
}

/// `content-type` → `Content-Type` (`etag` → `ETag`: [`IRREGULAR`]), for a lower-case
/// `name` (a `HeaderName`'s).
fn title_case(buf: &mut Vec<u8>, name: &[u8]) {
    if let Some(s) = spelled(name).or_else(|| irregular(name)) {
        buf.extend_from_slice(s);
        return;
    }
    let start = buf.len();
    buf.extend_from_slice(name);
    let mut up = true;
    for b in &mut buf[start..] {
        if up {
            b.make_ascii_uppercase();
        }
        up = *b == b'-';
    }
}

/// Today's `Date` value, made once a second per thread.
fn date(buf: &mut Vec<u8>) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs || d.1.is_empty() {
            *d = (secs, httpdate::fmt_http_date(now));
        }
        buf.extend_from_slice(d.1.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_values_say_close_or_keep_alive() {
        for (value, said) in [
            ("keep-alive", (false, true)),
            ("close", (true, false)),
            ("Keep-Alive", (false, true)),
            (" CLOSE", (true, false)),
            ("Upgrade, close", (true, false)),
            ("keep-alive, Upgrade", (false, true)),
            ("upgrade", (false, false)),
            ("closed", (false, false)),
        ] {
            assert_eq!(connection_tokens(value.as_bytes()), said, "{value:?}");
        }
    }

    #[test]
    fn tokens_are_found_in_any_element_whatever_their_case() {
        for (value, found) in [
            ("close", true),
            (" Close ", true),
            ("keep-alive, close", true),
            ("keep-alive,CLOSE ", true),
            ("closed", false),
            ("x, close2", false),
            ("", false),
        ] {
            assert_eq!(
                value_has_token(value.as_bytes(), b"close"),
                found,
                "{value:?}"
            );
        }
        for name in IRREGULAR {
            assert!(is_title_case(name));
            assert!(!is_title_case(&name.to_ascii_lowercase()));
        }
        assert!(is_title_case(b"Content-Type") && !is_title_case(b"content-Type"));
        assert!(!is_title_case(b"Etag"), "ETag is written ETag");
    }

    #[test]
    fn the_spelled_names_are_their_title_case() {
        for name in [
            "content-type",
            "content-length",
            "server",
            "date",
            "last-modified",
            "accept-ranges",
            "cache-control",
            "content-encoding",
            "vary",
            "expires",
            "location",
            "connection",
            "set-cookie",
        ] {
            let mut plain = Vec::new();
            let mut up = true;
            for b in name.bytes() {
                plain.push(if up { b.to_ascii_uppercase() } else { b });
                up = b == b'-';
            }
            assert_eq!(spelled(name.as_bytes()), Some(&plain[..]), "{name}");
        }
        for written in IRREGULAR {
            let mut b = Vec::new();
            title_case(&mut b, written.to_ascii_lowercase().as_slice());
            assert_eq!(b, written);
        }
        let mut w = Vec::new();
        title_case(&mut w, b"x-backend");
        assert_eq!(w, b"X-Backend");
    }

    #[test]
    fn names_are_title_cased() {
        let mut b = Vec::new();
        title_case(&mut b, b"x-forwarded-for");
        assert_eq!(b, b"X-Forwarded-For");
        assert!(is_title_case(b"X-Forwarded-For"));
        assert!(!is_title_case(b"content-type"));
        // the standard irregular spellings: written so, and so no case note is needed
        for (lower, written) in [
            (&b"etag"[..], &b"ETag"[..]),
            (b"www-authenticate", b"WWW-Authenticate"),
            (b"te", b"TE"),
        ] {
            let mut b = Vec::new();
            title_case(&mut b, lower);
            assert_eq!(b, written);
            assert!(is_title_case(written));
        }
        // an upstream that wrote "Etag" keeps its spelling (it is not what we write)
        assert!(!is_title_case(b"Etag"));
    }
}

#[cfg(test)]
mod engine_tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::AsyncReadExt;

    fn settings() -> Settings {
        Settings {
            max_head: 8192,
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            drain_grace: Duration::from_secs(1),
            park_after: None,
        }
    }

    /// Serves `input` (sent at once, then the client's side closed for writing) with a
    /// service answering `METHOD PATH BODY-LENGTH` (or the refusal's status); returns
    /// everything written back.
    async fn exchange(input: &[u8]) -> String {
        let (client, server) = tokio::io::duplex(1 << 20);
        let token = CancellationToken::new();
        let task = tokio::spawn(async move {
            serve(
                Box::new(server),
                settings(),
                true,
                &token,
                |req| async move {
                    if let Some(r) = req.extensions().get::<Refused>() {
                        let mut resp = Response::new(crate::body::full("refused"));
                        *resp.status_mut() = r.status;
                        resp.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        return resp;
                    }
                    let (parts, body) = req.into_parts();
                    let n = match body.collect().await {
                        Ok(b) => b.to_bytes().len().to_string(),
                        Err(e) => format!("error: {e}"),
                    };
                    Response::new(crate::body::full(format!(
                        "{} {} {n}",
                        parts.method,
                        parts.uri.path()
                    )))
                },
            )
            .await
        });
        let (mut rd, mut wr) = tokio::io::split(client);
        wr.write_all(input).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), rd.read_to_end(&mut out)).await;
        drop(wr);
        task.abort();
        String::from_utf8_lossy(&out).into_owned()
    }

    /// One read from the client's side, bounded in time.
    async fn read_some<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut [u8]) -> usize {
        tokio::time::timeout(Duration::from_secs(3), rd.read(buf))
            .await
            .unwrap()
            .unwrap()
    }

    fn bodies(out: &str) -> Vec<String> {
        out.split("HTTP/1.1 ")
            .skip(1)
            .map(|r| {
                let status = &r[..3];
                let body = r.split("\r\n\r\n").nth(1).unwrap_or("");
                format!("{status} {body}")
            })
            .collect()
    }

    #[tokio::test]
    async fn pipelined_requests_with_bodies_are_answered_in_order() {
        let out = exchange(
            b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
GET /b HTTP/1.1\r\nHost: a\r\n\r\n\
POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n3\r\nabc\r\n0\r\nT: 1\r\n\r\n\
GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\
GET /d HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(
            bodies(&out),
            [
                "200 POST /a 5",
                "200 GET /b 0",
                "200 POST /c 8",
                "200 GET /ws 0",
                "200 GET /d 0"
            ],
            "{out}"
        );
        assert!(out.contains("Content-Length: 9\r\n"), "{out}");
        assert!(out.contains("Date: "), "{out}");
    }

    #[tokio::test]
    async fn an_ambiguous_head_after_a_good_one_is_refused_and_ends_the_connection() {
        let out = exchange(
            b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n\
POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
GET /never HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .await;
        assert_eq!(bodies(&out), ["200 GET /a 0", "400 refused"], "{out}");
    }

    #[tokio::test]
    async fn bad_chunk_lines_fail_the_body_and_the_connection() {
        for body in [
            &b"+5\r\nhello\r\n0\r\n\r\n"[..],
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"10000000000000000\r\n",
        ] {
            let input = [
                &b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                body,
                b"GET /never HTTP/1.1\r\nHost: a\r\n\r\n",
            ]
            .concat();
            let out = exchange(&input).await;
            let b = bodies(&out);
            assert_eq!(b.len(), 1, "{out}");
            assert!(b[0].starts_with("200 POST /c error"), "{out}");
        }
    }

    #[tokio::test]
    async fn head_answers_carry_no_body_and_http_1_0_closes() {
        let out = exchange(b"HEAD /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.0\r\n\r\nGET /never HTTP/1.1\r\n\r\n").await;
        let answers: Vec<&str> = out.split("HTTP/1.1 ").skip(1).collect();
        assert_eq!(answers.len(), 2, "{out}");
        assert!(
            answers[0].contains("Content-Length: 9\r\n") && answers[0].ends_with("\r\n\r\n"),
            "{out}"
        );
        assert!(answers[1].contains("Connection: close\r\n"), "{out}");
        assert!(answers[1].ends_with("GET /b 0"), "{out}");
    }

    /// `Expect: 100-continue`: the interim answer goes out when the service reads the
    /// body, and not at all when it answers without reading.
    #[tokio::test]
    async fn continue_is_sent_when_the_body_is_read() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let token = CancellationToken::new();
        let task = tokio::spawn(async move {
            serve(
                Box::new(server),
                settings(),
                true,
                &token,
                |req| async move {
                    let n = req
                        .into_body()
                        .collect()
                        .await
                        .map_or(0, |b| b.to_bytes().len());
                    Response::new(crate::body::full(format!("got {n}")))
                },
            )
            .await
        });
        let (mut rd, mut wr) = tokio::io::split(client);
        wr.write_all(
            b"POST /a HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
        )
        .await
        .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = read_some(&mut rd, &mut buf).await;
        assert_eq!(&buf[..n], b"HTTP/1.1 100 Continue\r\n\r\n");
        wr.write_all(b"abc").await.unwrap();
        let n = read_some(&mut rd, &mut buf).await;
        let got = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(
            got.starts_with("HTTP/1.1 200 OK") && got.ends_with("got 3"),
            "{got}"
        );
        task.abort();

        let (client, server) = tokio::io::duplex(1 << 16);
        let token = CancellationToken::new();
        let task = tokio::spawn(async move {
            serve(Box::new(server), settings(), true, &token, |_req| async {
                let mut r = Response::new(crate::body::full("no"));
                *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
                r
            })
            .await
        });
        let (mut rd, mut wr) = tokio::io::split(client);
        wr.write_all(b"POST /a HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 999999999\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = read_some(&mut rd, &mut buf).await;
        let got = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(got.starts_with("HTTP/1.1 413"), "{got}");
        task.abort();
    }

    /// A 101 hands the connection, and what the client sent after its request, to
    /// the upgrade's taker.
    #[tokio::test]
    async fn a_101_hands_the_connection_over() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let token = CancellationToken::new();
        tokio::spawn(async move {
            serve(
                Box::new(server),
                settings(),
                true,
                &token,
                |mut req| async move {
                    let up = crate::upgrade::ClientUpgrade::of(&mut req);
                    tokio::spawn(async move {
                        let mut io = up.stream().await.unwrap();
                        let mut b = [0u8; 5];
                        io.read_exact(&mut b).await.unwrap();
                        io.write_all(&b).await.unwrap();
                    });
                    let mut r = Response::new(crate::body::empty());
                    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    r.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                    r.headers_mut()
                        .insert(header::UPGRADE, HeaderValue::from_static("echo"));
                    r
                },
            )
            .await
        });
        let (mut rd, mut wr) = tokio::io::split(client);
        wr.write_all(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\nhel",
        )
        .await
        .unwrap();
        wr.write_all(b"lo").await.unwrap();
        let mut out = Vec::new();
        let mut b = [0u8; 1024];
        while !out.ends_with(b"hello") {
            let n = read_some(&mut rd, &mut b).await;
            assert!(n > 0, "{}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&b[..n]);
        }
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{text}"
        );
        assert!(
            !text.contains("Content-Length") && !text.contains("Transfer-Encoding"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn oversized_heads_are_431_and_h2_is_handed_back() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10_000));
        assert_eq!(bodies(&exchange(big.as_bytes()).await), ["431 refused"]);
        let (mut client, server) = tokio::io::duplex(1 << 16);
        client.write_all(H2_PREFACE).await.unwrap();
        client
            .write_all(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .unwrap();
        let token = CancellationToken::new();
        let next = serve(Box::new(server), settings(), true, &token, |_req| async {
            Response::new(crate::body::empty())
        })
        .await;
        match next {
            Next::H2(_, prefix) => assert!(prefix.starts_with(H2_PREFACE)),
            _ => panic!("h2 not handed back"),
        }
    }

    /// Serves what `input` sends on a connection that may park after 200 ms.
    async fn idle_after(input: &[u8], drain: bool) -> (Next, Instant, String) {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        client.write_all(input).await.unwrap();
        let s = Settings {
            park_after: Some(Duration::from_millis(200)),
            ..settings()
        };
        let token = CancellationToken::new();
        if drain {
            token.cancel();
        }
        let start = Instant::now();
        let next = serve(Box::new(server), s, true, &token, |_req| async {
            Response::new(crate::body::full("ok"))
        })
        .await;
        let mut out = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_millis(10), client.read(&mut out))
            .await
            .map_or(0, |r| r.unwrap_or(0));
        (next, start, String::from_utf8_lossy(&out[..n]).into_owned())
    }

    fn next_io(next: &Next) -> &'static str {
        match next {
            Next::Closed => "closed",
            Next::H2(..) => "h2",
            Next::Idle { .. } => "idle",
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_handed_back_to_be_parked() {
        // after a request: idle, its deadline the idle timeout from the answer
        let (next, start, out) = idle_after(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", false).await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        let Next::Idle { until, first, .. } = next else {
            panic!("not handed back: {}", next_io(&next));
        };
        assert!(!first);
        assert_eq!(until - start, Duration::from_secs(5));
        // before any request: idle too, and an h2 preface may still come
        let (next, _, out) = idle_after(b"", false).await;
        assert_eq!(out, "");
        assert!(matches!(next, Next::Idle { first: true, .. }));
        // half a head is not idle: it is waited for, then timed out
        let (next, start, _) = idle_after(b"GET / HTTP/1.1\r\n", false).await;
        assert!(matches!(next, Next::Closed));
        assert!(Instant::now() - start >= Duration::from_secs(5));
        // draining: never parked, closed after the drain grace
        let (next, start, _) = idle_after(b"", true).await;
        assert!(matches!(next, Next::Closed));
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
    }
}
