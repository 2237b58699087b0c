//! `via = "uwsgi"`: one request per connection (uWSGI closes it after the answer): the
//! packet (header + vars), the body streamed after it, then the app's raw HTTP/1.x
//! response parsed and relayed, its body framed by Content-Length, chunked, or close.

use std::time::Duration;

use bytes::Bytes;
use portico_upstream::{connect_sending, Pick};

use super::io::{Conn, Failure, RequestBody, MAX_HEAD};
use super::Head;
use crate::body::HttpBody;
use crate::framing::{find_head_end, MAX_CHUNK_LINE};
use crate::h1::client::parse_response_head;
use crate::h1::decode::{Framing, Step};

/// Trailer bytes read (and dropped) after a chunked answer.
const MAX_TRAILERS: usize = 64 * 1024;

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
        if let Some(end) = find_head_end(&conn.buf, 0) {
            let head = conn.buf.split_to(end).freeze();
            let (head, framing) = parse_head(head, &conn.buf)?;
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
        if conn.buf.len() > MAX_HEAD {
            return Err(Failure::Invalid("a response head over 64 KiB".into()));
        }
        if conn.fill(timeout, MAX_HEAD + 1).await? == 0 {
            return Err(Failure::Closed);
        }
    }
}

/// The app's raw HTTP/1.x response head, judged and parsed as an HTTP upstream's is
/// (crate::h1::client).
fn parse_head(head: Bytes, after: &[u8]) -> Result<(Head, Framing), Failure> {
    let parsed = parse_response_head(head, after).map_err(Failure::Invalid)?;
    Ok((
        Head {
            status: parsed.parts.status,
            headers: parsed.parts.headers,
        },
        parsed.framing,
    ))
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
            match self.framing.step(&mut self.conn.buf, MAX_TRAILERS) {
                Ok(Step::Data(b)) => return Ok(Some(b)),
                Ok(Step::End) => return Ok(self.finish()),
                Ok(Step::NeedMore) => {}
                Err(why) => return Err(Failure::Invalid(why.into())),
            }
            let n = self
                .conn
                .fill(self.timeout, 64 * 1024 + MAX_CHUNK_LINE)
                .await?;
            if n == 0 {
                if self.framing.ends_at_close() {
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
    use http::StatusCode;

    use super::*;

    fn parse(wire: &[u8]) -> Result<Option<(usize, Head, Framing)>, Failure> {
        let Some(end) = find_head_end(wire, 0) else {
            return Ok(None);
        };
        let (head, framing) = parse_head(Bytes::copy_from_slice(&wire[..end]), &wire[end..])?;
        Ok(Some((end, head, framing)))
    }

    #[test]
    fn heads_parse_with_their_framing() {
        let wire = b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nabc";
        let (used, head, framing) = parse(wire).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::CREATED);
        assert_eq!(head.headers.get_all("set-cookie").iter().count(), 2);
        assert_eq!(framing, Framing::Length(3));
        assert_eq!(&wire[used..], b"abc");
        assert!(parse(b"HTTP/1.1 200 OK\r\nX: y").unwrap().is_none());
        assert!(parse(b"garbage\r\n\r\n").is_err());
        assert!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").is_err()
        );
        let (_, h, f) = parse(b"HTTP/2.0 204\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.status, StatusCode::NO_CONTENT);
        let (_, _, f2) = parse(b"HTTP/1.0 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!(f2, Framing::UntilClose);
        assert_eq!(f, Framing::UntilClose);
    }

    #[test]
    fn ambiguous_app_responses_are_refused() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
