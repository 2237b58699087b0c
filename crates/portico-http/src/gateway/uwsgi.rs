//! `via = "uwsgi"`: one request per connection (uWSGI closes it after the answer): the
//! packet (header + vars), the body streamed after it, then the app's raw HTTP/1.x
//! response parsed and relayed, its body framed by Content-Length, chunked, or close.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use portico_upstream::{connect_sending, Pick};

use super::io::{Conn, Failure, RequestBody, MAX_HEAD};
use super::Head;
use crate::body::HttpBody;

/// Sends one request on a fresh connection and reads the response head.
pub async fn attempt(
    pick: &Pick,
    cfg: &portico_config::UpstreamConfig,
    packet: &[u8],
    body: &mut RequestBody,
    no_body: bool,
) -> Result<(Head, Reader), Failure> {
    // The packet goes in one write; only a body written after it needs TCP_NODELAY.
    let nodelay = !matches!(body, RequestBody::Empty);
    let (stream, sent) = connect_sending(pick.server.addr(), cfg.connect_timeout, nodelay, packet)
        .await
        .map_err(Failure::Connect)?;
    let mut conn = Conn::new(stream);
    conn.write_all(&packet[sent..], cfg.send_timeout)
        .await
        .map_err(|e| too_large_for_app(e, packet.len() - 4))?;
    let sent = body
        .send(&mut conn, cfg.send_timeout, |d, out| {
            out.extend_from_slice(d)
        })
        .await;
    if let Err(e) = sent {
        // An app may answer (413, 400) without reading the body: use that answer if
        // one arrives, else report the write failure.
        if matches!(e, Failure::Client(_)) {
            return Err(e);
        }
        return read_head(conn, cfg.read_timeout, no_body)
            .await
            .map_err(|_| e);
    }
    read_head(conn, cfg.read_timeout, no_body)
        .await
        .map_err(|e| too_large_for_app(e, packet.len() - 4))
}

/// A connection closed or reset with no answer after a vars block over uWSGI's default
/// buffer-size is taken for uWSGI refusing it (it logs "invalid request block size").
fn too_large_for_app(e: Failure, vars: usize) -> Failure {
    let hung_up = match &e {
        Failure::Closed => true,
        Failure::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        _ => false,
    };
    if hung_up && vars > UWSGI_BUFFER_SIZE {
        Failure::TooLargeForApp(vars)
    } else {
        e
    }
}

/// uWSGI's default `buffer-size`: the largest vars block it reads.
const UWSGI_BUFFER_SIZE: usize = 4096;

async fn read_head(
    mut conn: Conn,
    timeout: Duration,
    no_body: bool,
) -> Result<(Head, Reader), Failure> {
    loop {
        if !conn.buf.is_empty() {
            if let Some((used, head, framing)) = parse_head(&conn.buf)? {
                conn.buf.advance(used);
                let framing = if no_body || !head.status_has_body() {
                    conn.stream.reset_on_close();
                    Framing::Done
                } else {
                    framing
                };
                return Ok((
                    head,
                    Reader {
                        conn,
                        framing,
                        timeout,
                    },
                ));
            }
        }
        if conn.fill(timeout, MAX_HEAD).await? == 0 {
            return Err(Failure::Closed);
        }
    }
}

/// Parses an HTTP response head: `None` until it is complete. The status line is read
/// here rather than by httparse, because uWSGI echoes SERVER_PROTOCOL (`HTTP/2.0` for
/// an h2 client) as its version.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, Head, Framing)>, Failure> {
    let Some(eol) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() > MAX_HEAD {
            Err(Failure::Invalid("status line too long".into()))
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&buf[..eol])
        .map_err(|_| Failure::Invalid("status line is not text".into()))?
        .trim_end_matches('\r');
    let bad = || Failure::Invalid(format!("bad status line {line:?}"));
    let mut words = line.splitn(3, ' ');
    let version = words.next().ok_or_else(bad)?;
    let code = words.next().ok_or_else(bad)?;
    if !version.starts_with("HTTP/") || code.len() != 3 {
        return Err(bad());
    }
    let status = code
        .parse::<u16>()
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(bad)?;
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let (used, parsed) = match httparse::parse_headers(&buf[eol + 1..], &mut headers) {
        Ok(httparse::Status::Complete((n, h))) => (eol + 1 + n, h),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Failure::Invalid(e.to_string())),
    };
    let mut map = HeaderMap::with_capacity(parsed.len());
    super::append_headers(&mut map, parsed)?;
    // The same framing rules as for HTTP upstreams (crate::framing::response).
    crate::framing::read_head(&buf[..used])
        .and_then(|f| f.check_response())
        .map_err(|why| Failure::Invalid(why.into()))?;
    let framing = framing(&map)?;
    if matches!(framing, Framing::Chunked(_)) && !crate::framing::first_chunk_ok(&buf[used..]) {
        return Err(Failure::Invalid("an invalid chunk size".into()));
    }
    Ok(Some((
        used,
        Head {
            status,
            headers: map,
        },
        framing,
    )))
}

fn framing(h: &HeaderMap) -> Result<Framing, Failure> {
    if let Some(te) = h.get(http::header::TRANSFER_ENCODING) {
        let chunked = te
            .to_str()
            .ok()
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        return Ok(if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::Close
        });
    }
    let mut lengths = h.get_all(http::header::CONTENT_LENGTH).iter();
    match (lengths.next(), lengths.next()) {
        (None, _) => Ok(Framing::Close),
        (Some(v), None) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Framing::Length)
            .ok_or_else(|| Failure::Invalid("bad Content-Length".into())),
        (Some(_), Some(_)) => Err(Failure::Invalid("repeated Content-Length".into())),
    }
}

enum Framing {
    Done,
    Length(u64),
    Chunked(Chunk),
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailer,
}

/// What one step of chunked decoding found.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Data(Bytes),
    NeedMore,
    End,
}

/// The longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4096;

fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, String> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) => Ok(Some(buf.split_to(i + 1))),
        None if buf.len() > MAX_LINE => Err("chunk line too long".into()),
        None => Ok(None),
    }
}

/// Decodes as much chunked framing as `buf` holds.
fn decode_chunked(buf: &mut BytesMut, st: &mut Chunk) -> Result<Step, String> {
    loop {
        match *st {
            Chunk::Size => {
                let Some(line) = take_line(buf)? else {
                    return Ok(Step::NeedMore);
                };
                let line = line.strip_suffix(b"\n").unwrap_or(&line);
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let size = crate::framing::chunk_size(line).ok_or("bad chunk size")?;
                *st = if size == 0 {
                    Chunk::Trailer
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let n = (buf.len() as u64).min(left) as usize;
                *st = if n as u64 == left {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left - n as u64)
                };
                return Ok(Step::Data(buf.split_to(n).freeze()));
            }
            Chunk::DataEnd => {
                if buf.starts_with(b"\r\n") {
                    buf.advance(2);
                } else if buf.starts_with(b"\n") {
                    buf.advance(1);
                } else if buf.len() < 2 {
                    return Ok(Step::NeedMore);
                } else {
                    return Err("chunk without CRLF".into());
                }
                *st = Chunk::Size;
            }
            Chunk::Trailer => {
                let Some(line) = take_line(buf)? else {
                    return Ok(Step::NeedMore);
                };
                if line.trim_ascii().is_empty() {
                    return Ok(Step::End);
                }
            }
        }
    }
}

/// The rest of the app's response.
pub struct Reader {
    conn: Conn,
    framing: Framing,
    timeout: Duration,
}

impl super::io::Pieces for Reader {
    async fn next(&mut self) -> Result<Option<Bytes>, Failure> {
        loop {
            match &mut self.framing {
                Framing::Done => return Ok(None),
                Framing::Length(0) => return Ok(self.finish()),
                Framing::Length(left) => {
                    if !self.conn.buf.is_empty() {
                        let n = (self.conn.buf.len() as u64).min(*left) as usize;
                        *left -= n as u64;
                        return Ok(Some(self.conn.buf.split_to(n).freeze()));
                    }
                }
                Framing::Close => {
                    if !self.conn.buf.is_empty() {
                        return Ok(Some(self.conn.buf.split().freeze()));
                    }
                }
                Framing::Chunked(st) => match decode_chunked(&mut self.conn.buf, st) {
                    Ok(Step::Data(b)) => return Ok(Some(b)),
                    Ok(Step::End) => return Ok(self.finish()),
                    Ok(Step::NeedMore) => {}
                    Err(e) => return Err(Failure::Invalid(e)),
                },
            }
            let n = self.conn.fill(self.timeout, 64 * 1024 + MAX_LINE).await?;
            if n == 0 {
                if let Framing::Close = self.framing {
                    return Ok(self.finish());
                }
                return Err(Failure::Invalid("response body cut short".into()));
            }
        }
    }

    fn abandon(&mut self, error: &Failure) {
        tracing::warn!(error = %error, "uwsgi response body failed");
        self.framing = Framing::Done;
    }
}

impl Reader {
    /// The response is complete: uWSGI closes the connection after it, so ours ends
    /// with a reset (see [`portico_upstream::PeerStream::reset_on_close`]).
    fn finish(&mut self) -> Option<Bytes> {
        self.framing = Framing::Done;
        self.conn.stream.reset_on_close();
        None
    }

    /// The response body; the pick succeeds when it ends, fails if it breaks.
    pub fn into_body(mut self, pick: Pick) -> HttpBody {
        // A small answer often arrives whole with its head: hand it over as it is and
        // let the connection go now.
        if let Framing::Length(n) = self.framing {
            if self.conn.buf.len() as u64 == n {
                pick.success();
                self.conn.stream.reset_on_close();
                return crate::body::full(self.conn.buf.split().freeze());
            }
        }
        super::io::body_of(self, pick)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n";
        for cut in 0..wire.len() {
            let mut st = Chunk::Size;
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            let mut ended = false;
            let mut fed = false;
            loop {
                match decode_chunked(&mut buf, &mut st).unwrap() {
                    Step::Data(b) => got.extend_from_slice(&b),
                    Step::End => {
                        ended = true;
                        break;
                    }
                    Step::NeedMore if !fed => {
                        buf.extend_from_slice(&wire[cut..]);
                        fed = true;
                    }
                    Step::NeedMore => break,
                }
            }
            assert!(ended, "cut at {cut}");
            assert_eq!(got, b"hello world");
        }
        let mut st = Chunk::Size;
        assert!(decode_chunked(&mut BytesMut::from(&b"zz\r\n"[..]), &mut st).is_err());
    }

    #[test]
    fn heads_parse_with_their_framing() {
        let wire = b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nabc";
        let (used, head, framing) = parse_head(wire).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::CREATED);
        assert_eq!(head.headers.get_all("set-cookie").iter().count(), 2);
        assert!(matches!(framing, Framing::Length(3)));
        assert_eq!(&wire[used..], b"abc");
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nX: y").unwrap().is_none());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
                .is_err()
        );
        let (_, h, f) = parse_head(b"HTTP/2.0 204\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.status, StatusCode::NO_CONTENT);
        let (_, _, f2) = parse_head(b"HTTP/1.0 200 OK\r\n\r\n").unwrap().unwrap();
        assert!(matches!(f2, Framing::Close));
        assert!(matches!(f, Framing::Close));
    }

    #[test]
    fn ambiguous_app_responses_are_refused() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        ] {
            assert!(parse_head(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut buf = BytesMut::from(&b"+3\r\nabc\r\n"[..]);
        assert!(decode_chunked(&mut buf, &mut Chunk::Size).is_err());
    }
}
