//! Portico's own HTTP/1.1 client connection to an upstream, driven inline by the
//! request's task (no connection task, no channel between them: the request writes its
//! head, streams its body, reads the answer's head and then its body straight off the
//! socket).
//!
//! Response heads are judged as the request engine judges requests (framing rules of
//! crate::framing: Content-Length with Transfer-Encoding, lengths that differ or are not
//! numbers, `chunked` twice, a bad first chunk line — a 502 before anything reaches the
//! client); bodies are decoded by [`super::decode`]. Header names are noted in the case
//! the upstream wrote them when any is not Title-Case ([`super::OriginalCase`]).
//!
//! The upstream may answer before it has taken the whole request body (a 413, a
//! redirect): while the body is sent the connection is watched for an answer, which
//! then wins; such a connection is not reused.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::decode::{Framing, Step};
use super::{HeadBuf, Io, OriginalCase, Upgraded};
use crate::body::{BoxError, HttpBody};
use crate::framing::{find_head_end, first_chunk_ok, split_fields, HeadFraming, FEW_FIELDS};

/// A response head larger than this is refused (502), like nginx's "upstream sent too
/// big header" (nginx's limit is its proxy_buffer_size, 4–8 KiB by default).
pub const MAX_HEAD: usize = 64 * 1024;
/// Response header fields accepted.
const MAX_FIELDS: usize = 128;
/// Trailer bytes read (and dropped) at the end of a chunked response.
const MAX_TRAILERS: usize = 64 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A connection that had carried a request before was closed or reset before a byte
    /// of the answer arrived: the server's keep-alive ended as the request went out.
    #[error("the upstream closed a kept-alive connection before answering")]
    Stale,
    #[error("upstream closed the connection before the response header")]
    Closed,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("upstream sent an invalid response header: {0}")]
    Invalid(String),
    #[error("the client's request body failed")]
    Body(#[source] BoxError),
}

/// A response head as the upstream sent it.
pub struct ResponseHead {
    pub parts: http::response::Parts,
    /// How its body is delimited (before the request method and status are applied).
    pub framing: Framing,
    /// The upstream keeps the connection open after this response.
    pub keep_alive: bool,
}

/// Parses the response head in `head` (through its blank line); `after` is what
/// followed it in the same read. The status line is read here rather than by httparse,
/// because uWSGI echoes SERVER_PROTOCOL (`HTTP/2.0` for an h2 client) as its version.
pub fn parse_response_head(head: Bytes, after: &[u8]) -> Result<ResponseHead, String> {
    let eol = memchr::memchr(b'\n', &head).ok_or("no status line")?;
    let line = head[..eol].strip_suffix(b"\r").unwrap_or(&head[..eol]);
    let bad = || format!("bad status line {:?}", String::from_utf8_lossy(line));
    let (version, rest) = match line.strip_prefix(b"HTTP/") {
        Some(r) if r.len() >= 7 && r[3] == b' ' => (&r[..3], &r[4..]),
        _ => return Err(bad()),
    };
    let code = &rest[..3];
    if !code.iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(|&b| b != b' ') {
        return Err(bad());
    }
    let status = std::str::from_utf8(code)
        .ok()
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(bad)?;
    let reason = rest.get(4..).unwrap_or(b"");
    let version = if version == b"1.0" {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut few = [httparse::EMPTY_HEADER; FEW_FIELDS];
    let parsed = match split_fields(&head[eol + 1..], &mut few, MAX_FIELDS) {
        Ok(Some((_, h))) => h,
        Ok(None) => return Err("an incomplete response head".into()),
        Err(e) => return Err(e.to_string()),
    };
    // One pass over the fields: the map, the framing facts (crate::framing's rules, read
    // from the fields httparse split: it refuses obs-fold and whitespace before a colon
    // in a response, so no line can frame the message differently), Connection's tokens
    // and whether every name is Title-Case.
    let mut framing = HeadFraming::default();
    let (mut close, mut keep) = (false, false);
    let mut headers = HeaderMap::with_capacity(parsed.len());
    let mut title_case = true;
    for f in parsed.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| format!("bad header name {:?}", f.name))?;
        let value = HeaderValue::from_maybe_shared(head.slice_ref(f.value))
            .map_err(|_| format!("bad value for {}", f.name))?;
        if name == header::CONTENT_LENGTH {
            framing.content_length(f.value);
        } else if name == header::TRANSFER_ENCODING {
            framing.transfer_encoding(f.value);
        } else if name == header::CONNECTION {
            let (c, k) = super::connection_tokens(f.value);
            (close, keep) = (close | c, keep | k);
        }
        title_case &= super::is_title_case(f.name.as_bytes());
        headers.append(name, value);
    }
    framing.check_response()?;
    let body = if framing.transfer_encoding {
        if framing.chunked_last {
            if !first_chunk_ok(after) {
                return Err("an invalid chunk size".into());
            }
            Framing::ChunkSize
        } else {
            Framing::UntilClose
        }
    } else {
        framing.length.map_or(Framing::UntilClose, Framing::Length)
    };
    let keep_alive = match version {
        Version::HTTP_10 => keep,
        _ => !close,
    };
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = status;
    parts.version = version;
    if reason != status.canonical_reason().unwrap_or("").as_bytes() {
        if let Ok(r) = hyper::ext::ReasonPhrase::try_from(head.slice_ref(reason)) {
            parts.extensions.insert(r);
        }
    }
    if !title_case {
        let mut names = HeaderMap::with_capacity(parsed.len());
        for f in parsed.iter() {
            if let Ok(name) = HeaderName::from_bytes(f.name.as_bytes()) {
                names.append(name, head.slice_ref(f.name.as_bytes()));
            }
        }
        parts.extensions.insert(OriginalCase(names));
    }
    parts.headers = headers;
    Ok(ResponseHead {
        parts,
        framing: body,
        keep_alive,
    })
}

/// Whether a response to `method` with `status` has a body at all.
pub fn has_body(method: &Method, status: StatusCode) -> bool {
    !(method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

/// The fields a proxy sets on an upstream request (Host and X-Forwarded-*), written
/// with its head in place of any of the same names the request's map holds: four
/// hashed map inserts fewer per request.
#[derive(Clone, Debug, Default)]
pub struct Forwarded {
    /// Host, and X-Forwarded-Host.
    pub host: Option<HeaderValue>,
    pub x_forwarded_for: Option<HeaderValue>,
    pub x_forwarded_proto: Option<HeaderValue>,
}

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

impl Forwarded {
    /// The same fields put in `h`, replacing those there (for a head that is not
    /// written here: an h2 upstream's, an upgrade's).
    pub fn insert_into(self, h: &mut HeaderMap) {
        for (name, value) in self.x_forwarded() {
            h.insert(name, value.clone());
        }
        if let Some(host) = self.host {
            h.insert(header::HOST, host);
        }
    }

    /// The X-Forwarded-* fields that are set.
    fn x_forwarded(&self) -> impl Iterator<Item = (HeaderName, &HeaderValue)> {
        [
            (X_FORWARDED_FOR, self.x_forwarded_for.as_ref()),
            (X_FORWARDED_PROTO, self.x_forwarded_proto.as_ref()),
            (X_FORWARDED_HOST, self.host.as_ref()),
        ]
        .into_iter()
        .filter_map(|(n, v)| Some((n, v?)))
    }

    /// Whether a field named `name` gives way to one of these.
    fn replaces(&self, name: &HeaderName) -> bool {
        match name.as_str().len() {
            4 => self.host.is_some() && name == header::HOST,
            15 => self.x_forwarded_for.is_some() && name == X_FORWARDED_FOR,
            16 => self.host.is_some() && name == X_FORWARDED_HOST,
            17 => self.x_forwarded_proto.is_some() && name == X_FORWARDED_PROTO,
            _ => false,
        }
    }
}

/// One HTTP/1.1 connection to an upstream server.
pub struct Conn {
    io: Io,
    buf: BytesMut,
    /// Requests this connection has carried to their end.
    served: u32,
}

/// How the request body goes on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    None,
    Length(u64),
    Chunked,
}

impl Conn {
    pub fn new(io: Io) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            served: 0,
        }
    }

    /// Whether the server closed this (idle) connection, or sent something unasked:
    /// either way it cannot carry a request. Looks without waiting.
    pub fn is_closed(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut byte = [0u8; 1];
        let mut rb = ReadBuf::new(&mut byte);
        !matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut rb),
            Poll::Pending
        )
    }

    /// Sends `head` with `body` and reads the final response head (1xx interim answers
    /// are skipped). The caller bounds the wait (read and send timeouts).
    pub async fn send(
        &mut self,
        head: &http::request::Parts,
        added: &Forwarded,
        body: HttpBody,
    ) -> Result<ResponseHead, Error> {
        let reused = self.served > 0;
        let out = self
            .write_head(head, added, &body)
            .await
            .map_err(|e| stale(e, reused, 0))?;
        let mut complete = true;
        if out != Out::None {
            complete = self.send_body(body, out).await.map_err(|e| match e {
                Error::Io(e) => stale(e, reused, self.buf.len()),
                e => e,
            })?;
        }
        let mut resp = self.read_response_head(reused).await?;
        if !has_body(&head.method, resp.parts.status) {
            resp.framing = Framing::Done;
        }
        resp.keep_alive &= complete && resp.framing != Framing::UntilClose;
        Ok(resp)
    }

    /// The connection's bytes after a 101, for the tunnel.
    pub fn upgraded(self) -> Upgraded {
        Upgraded::from_buffer(self.io, &self.buf)
    }

    async fn write_head(
        &mut self,
        p: &http::request::Parts,
        added: &Forwarded,
        body: &HttpBody,
    ) -> io::Result<Out> {
        fn field(buf: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
            buf.extend_from_slice(name.as_str().as_bytes());
            buf.extend_from_slice(b": ");
            buf.extend_from_slice(value.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        let mut buf = HeadBuf::take();
        buf.extend_from_slice(p.method.as_str().as_bytes());
        buf.push(b' ');
        match p.uri.path_and_query() {
            Some(pq) => buf.extend_from_slice(pq.as_str().as_bytes()),
            None if p.method == Method::OPTIONS => buf.push(b'*'),
            None => buf.push(b'/'),
        }
        buf.extend_from_slice(b" HTTP/1.1\r\n");
        // Host first, as the client (and nginx) write it; the other added fields last
        if let Some(host) = &added.host {
            field(&mut buf, &header::HOST, host);
        }
        let mut declared = None;
        for (name, value) in p.headers.iter() {
            if added.replaces(name) {
                continue;
            }
            if declared.is_none() && name == header::CONTENT_LENGTH {
                declared = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok());
            }
            field(&mut buf, name, value);
        }
        for (name, value) in added.x_forwarded() {
            field(&mut buf, &name, value);
        }
        let out = match (declared, body.size_hint().exact()) {
            (Some(n), _) => Out::Length(n),
            (None, Some(n)) => {
                if n > 0 || matches!(p.method, Method::POST | Method::PUT | Method::PATCH) {
                    buf.extend_from_slice(b"content-length: ");
                    buf.extend_from_slice(n.to_string().as_bytes());
                    buf.extend_from_slice(b"\r\n");
                }
                Out::Length(n)
            }
            (None, None) => {
                buf.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Out::Chunked
            }
        };
        buf.extend_from_slice(b"\r\n");
        self.io.write_all(&buf).await?;
        self.io.flush().await?;
        Ok(match out {
            Out::Length(0) => Out::None,
            o => o,
        })
    }

    /// Streams the request body. Returns false when the upstream's final answer arrived
    /// before the body was all sent (the rest is not sent).
    async fn send_body(&mut self, body: HttpBody, out: Out) -> Result<bool, Error> {
        let mut body = std::pin::pin!(body);
        let mut left = match out {
            Out::Length(n) => n,
            _ => u64::MAX,
        };
        let mut queue: std::collections::VecDeque<Bytes> = std::collections::VecDeque::new();
        let mut ended = false;
        let mut searched = 0;
        poll_fn(|cx| loop {
            // the upstream may answer before taking the whole body
            match self.poll_fill(cx) {
                Poll::Ready(Ok(0)) if self.buf.is_empty() => {
                    return Poll::Ready(Err(Error::Io(io::ErrorKind::UnexpectedEof.into())))
                }
                Poll::Ready(Ok(n)) => {
                    if interim_skipped(&mut self.buf, &mut searched)? || n == 0 {
                        return Poll::Ready(Ok(false));
                    }
                    continue;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::Io(e))),
                Poll::Pending => {}
            }
            if let Some(front) = queue.front_mut() {
                let n = ready!(Pin::new(&mut self.io).poll_write(cx, front))?;
                if n == 0 {
                    return Poll::Ready(Err(Error::Io(io::ErrorKind::WriteZero.into())));
                }
                front.advance(n);
                if front.is_empty() {
                    queue.pop_front();
                }
                continue;
            }
            if ended {
                ready!(Pin::new(&mut self.io).poll_flush(cx))?;
                return Poll::Ready(Ok(true));
            }
            match ready!(body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue; // request trailers are dropped, as nginx does
                    };
                    if data.is_empty() {
                        continue;
                    }
                    if out == Out::Chunked {
                        queue.push_back(Bytes::from(format!("{:x}\r\n", data.len())));
                        queue.push_back(data);
                        queue.push_back(Bytes::from_static(b"\r\n"));
                    } else {
                        let n = data.len() as u64;
                        if n > left {
                            return Poll::Ready(Err(Error::Body(
                                "the request body is longer than its Content-Length".into(),
                            )));
                        }
                        left -= n;
                        queue.push_back(data);
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(Error::Body(e))),
                None => {
                    match out {
                        Out::Chunked => queue.push_back(Bytes::from_static(b"0\r\n\r\n")),
                        _ if left > 0 => {
                            return Poll::Ready(Err(Error::Body(
                                "the request body ended before its Content-Length".into(),
                            )))
                        }
                        _ => {}
                    }
                    ended = true;
                }
            }
        })
        .await
    }

    async fn read_response_head(&mut self, reused: bool) -> Result<ResponseHead, Error> {
        let mut searched = 0;
        loop {
            if let Some(end) = find_head_end(&self.buf, searched) {
                let head = self.buf.split_to(end).freeze();
                searched = 0;
                let resp = parse_response_head(head, &self.buf).map_err(Error::Invalid)?;
                let status = resp.parts.status;
                if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
                    continue;
                }
                return Ok(resp);
            }
            searched = self.buf.len();
            if searched > MAX_HEAD {
                return Err(Error::Invalid(format!(
                    "a head over {} KiB",
                    MAX_HEAD / 1024
                )));
            }
            let got = poll_fn(|cx| self.poll_fill(cx)).await;
            match got {
                Ok(0) if reused && self.buf.is_empty() => return Err(Error::Stale),
                Ok(0) => return Err(Error::Closed),
                Ok(_) => {}
                Err(e) => return Err(stale(e, reused, self.buf.len())),
            }
        }
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(8 * 1024);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// The next piece of the response body framed by `framing`; `None` at its end
    /// (then the connection may carry the next request, if the head allowed).
    pub fn poll_body(
        &mut self,
        framing: &mut Framing,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Error>>> {
        loop {
            match framing.step(&mut self.buf, MAX_TRAILERS) {
                Ok(Step::Data(d)) => {
                    if framing.is_done() {
                        self.served += 1;
                    }
                    return Poll::Ready(Some(Ok(d)));
                }
                Ok(Step::End) => {
                    self.served += 1;
                    return Poll::Ready(None);
                }
                Ok(Step::NeedMore) => {}
                Err(why) => return Poll::Ready(Some(Err(Error::Invalid(why.into())))),
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) if framing.ends_at_close() => {
                    *framing = Framing::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    *framing = Framing::Broken;
                    return Poll::Ready(Some(Err(Error::Closed)));
                }
                Ok(_) => {}
                Err(e) => {
                    *framing = Framing::Broken;
                    return Poll::Ready(Some(Err(Error::Io(e))));
                }
            }
        }
    }

    /// The whole body when it is already here (a small answer that came with its
    /// head): taken, and the exchange is over.
    pub fn take_whole(&mut self, framing: &mut Framing) -> Option<Bytes> {
        match *framing {
            Framing::Done => Some(Bytes::new()),
            Framing::Length(n) if self.buf.len() as u64 >= n => {
                *framing = Framing::Done;
                self.served += 1;
                Some(self.buf.split_to(n as usize).freeze())
            }
            _ => None,
        }
        .inspect(|_| {
            if self.served == 0 {
                self.served = 1;
            }
        })
    }

    /// Bytes left over past the end of a response: a server that sends more than it
    /// framed cannot be trusted with another request.
    pub fn is_clean(&self) -> bool {
        self.buf.is_empty()
    }
}

/// After a read that found bytes while the body was going out: drops complete 1xx
/// interim heads; true when a final head is complete.
fn interim_skipped(buf: &mut BytesMut, searched: &mut usize) -> Result<bool, Error> {
    loop {
        let Some(end) = find_head_end(buf, *searched) else {
            *searched = buf.len();
            if *searched > MAX_HEAD {
                return Err(Error::Invalid(format!(
                    "a head over {} KiB",
                    MAX_HEAD / 1024
                )));
            }
            return Ok(false);
        };
        let interim = buf.starts_with(b"HTTP/1.1 1") || buf.starts_with(b"HTTP/1.0 1");
        if !interim || buf.starts_with(b"HTTP/1.1 101") {
            return Ok(true);
        }
        buf.advance(end);
        *searched = 0;
    }
}

/// A failure writing or reading on a reused connection before any answer came is the
/// keep-alive race, not the server's fault.
fn stale(e: io::Error, reused: bool, answered: usize) -> Error {
    let hung_up = matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
    );
    if reused && answered == 0 && hung_up {
        Error::Stale
    } else {
        Error::Io(e)
    }
}

#[cfg(test)]
mod tests;
