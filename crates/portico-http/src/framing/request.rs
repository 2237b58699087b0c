//! The framing of a request head, judged before anything acts on it.
//!
//! The HTTP/1 engine (crate::h1) asks [`judge_request`] about every request head it has
//! split, with what its fields said ([`HeadFraming`]): how its body is framed, whether
//! it may switch protocols, or why it is refused. RFC 9112
//! §6 as applied (nginx's answer differs where docs/http.md says so): Content-Length
//! with Transfer-Encoding, more than one Content-Length, an invalid Content-Length,
//! Transfer-Encoding in an HTTP/1.0 request, `chunked` not last or more than once, an
//! empty Transfer-Encoding, an obs-fold line: 400; a coding other than chunked before
//! the final `chunked`: 501. Chunk lines are the engine's body reader's to judge.

use http::StatusCode;

use super::{HeadFraming, Why};

/// How a request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyStart {
    None,
    Length(u64),
    Chunked,
}

/// How the body of a request is framed, and whether it may switch protocols; or why
/// its head is refused, and with what status. `f` is what the head's fields said,
/// `http10` whether it is an HTTP/1.0 request, `connect` whether its method is CONNECT.
pub fn judge_request(
    f: &HeadFraming,
    http10: bool,
    connect: bool,
) -> Result<(BodyStart, bool), (StatusCode, Why)> {
    let bad = |why| (StatusCode::BAD_REQUEST, why);
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

    /// The judgement of a whole head (400 when httparse refuses it, as the engine does).
    fn judge(head: &[u8]) -> Result<(BodyStart, bool), u16> {
        let f = crate::framing::tests::framing_of(head).ok_or(400u16)?;
        let http10 = head
            .split(|&b| b == b'\n')
            .next()
            .is_some_and(|l| l.trim_ascii_end().ends_with(b"HTTP/1.0"));
        judge_request(&f, http10, head.starts_with(b"CONNECT ")).map_err(|(s, _)| s.as_u16())
    }

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
            let got = judge(head);
            assert_eq!(got, Err(status), "{}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn framings_and_switches() {
        let j = |h: &[u8]| judge(h).ok();
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
