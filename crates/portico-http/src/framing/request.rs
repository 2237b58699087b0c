//! The framing of a request head, judged before anything acts on it.
//!
//! The HTTP/1 engine (crate::h1) asks [`judge_request`] about every complete head: how
//! its body is framed, whether it may switch protocols, or why it is refused. RFC 9112
//! §6 as applied (nginx's answer differs where docs/http.md says so): Content-Length
//! with Transfer-Encoding, more than one Content-Length, an invalid Content-Length,
//! Transfer-Encoding in an HTTP/1.0 request, `chunked` not last or more than once, an
//! empty Transfer-Encoding, an obs-fold line: 400; a coding other than chunked before
//! the final `chunked`: 501. Chunk lines are the engine's body reader's to judge.

use http::StatusCode;

use super::{read_head, Why};

/// How a request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyStart {
    None,
    Length(u64),
    Chunked,
}

/// How the body of the request with this complete head is framed, and whether the
/// request may switch protocols; or why the head is refused, and with what status.
pub fn judge_request(head: &[u8]) -> Result<(BodyStart, bool), (StatusCode, Why)> {
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
        return Ok((BodyStart::Chunked, f.upgrade || connect));
    }
    if f.bad_length {
        return Err(bad("an invalid Content-Length"));
    }
    if f.length_count > 1 {
        return Err(bad("more than one Content-Length"));
    }
    let next = match f.length {
        Some(n) if n > 0 => BodyStart::Length(n),
        _ => BodyStart::None,
    };
    Ok((next, f.upgrade || connect))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ambiguous_heads_are_refused() {
        let cases: &[(&[u8], u16)] = &[
            (b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\nHost: a\r\n\r\n", 400),
            (b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n", 400),
            (b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\n", 400),
            (b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
            (b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
            (b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 400),
            (b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
            (b"POST /x HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\n", 400),
            (b"GET /x HTTP/1.1\r\nHost: a\r\nX: 1\r\n y\r\n\r\n", 400),
        ];
        for &(head, status) in cases {
            let got = judge_request(head).map_err(|(s, _)| s.as_u16());
            assert_eq!(got, Err(status), "{}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn framings_and_switches() {
        let j = |h: &[u8]| judge_request(h).ok();
        assert_eq!(
            j(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some((BodyStart::None, false))
        );
        assert_eq!(
            j(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"),
            Some((BodyStart::Length(5), false))
        );
        assert_eq!(
            j(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            Some((BodyStart::None, false))
        );
        assert_eq!(
            j(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some((BodyStart::Chunked, false))
        );
        assert_eq!(
            j(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
            Some((BodyStart::None, true))
        );
    }
}
