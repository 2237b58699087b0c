//! Message framing checked on the bytes (RFC 9112 §6).
//!
//! What a proxy must not pass on: a request with both Content-Length and
//! Transfer-Encoding, repeated Content-Length (even with equal values), `chunked,
//! chunked`; a response with Content-Length and Transfer-Encoding (nginx frames those
//! by Transfer-Encoding and relays them; Portico, as HAProxy, refuses them).
//!
//! - [`request::judge_request`]: every request head Portico's HTTP/1 engine (crate::h1)
//!   reads is judged before anything acts on it: a refused head becomes a 400/501/431
//!   answer and the connection ends; the body's framing comes from here.
//! - [`HeadFraming::check_response`] for every response head Portico's HTTP/1 client
//!   (crate::h1::client) and the uwsgi gateway read: an ambiguous response head (or a
//!   bad first chunk line that came with it) makes the response a 502 before anything
//!   of it reaches the client.
//!
//! This module holds what both directions share: reading the framing fields of a head
//! httparse has split (it refuses obs-fold, whitespace before a colon, a bare CR and a
//! name that is not a token, so no line it accepts can frame a message differently),
//! chunk lines, the end of a head. No IO here.

pub mod request;

use http::header::{self, HeaderName};

/// Longest chunk-size line (with extensions) or trailer line accepted.
pub const MAX_CHUNK_LINE: usize = 4096;

/// What the framing headers of one head say (read without allocating: this runs for
/// every request and every upstream response).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HeadFraming {
    /// The first Content-Length value.
    pub length: Option<u64>,
    /// Content-Length values seen, each element of each field (`5, 5` is two).
    pub length_count: usize,
    /// Two Content-Length values differ.
    pub lengths_differ: bool,
    /// A Content-Length that is not a plain decimal number.
    pub bad_length: bool,
    /// Transfer codings across every Transfer-Encoding field.
    pub codings: usize,
    /// How many of them are `chunked`.
    pub chunked: usize,
    /// The last one is `chunked`.
    pub chunked_last: bool,
    /// A Transfer-Encoding field was present (even an empty one).
    pub transfer_encoding: bool,
    pub upgrade: bool,
}

/// Why a head is refused: a fixed reason, for the log.
pub type Why = &'static str;

impl HeadFraming {
    /// Notes one field of the head if it frames the message (Content-Length,
    /// Transfer-Encoding) or may switch protocols (Upgrade).
    pub fn field(&mut self, name: &HeaderName, value: &[u8]) {
        if name == header::CONTENT_LENGTH {
            self.content_length(value);
        } else if name == header::TRANSFER_ENCODING {
            self.transfer_encoding(value);
        } else if name == header::UPGRADE {
            self.upgrade = true;
        }
    }

    /// Notes one Content-Length field's value (every comma-separated element of it).
    pub fn content_length(&mut self, value: &[u8]) {
        for v in value.split(|&b| b == b',') {
            match parse_decimal(trim_ows(v)) {
                Some(n) => {
                    self.length_count += 1;
                    self.lengths_differ |= self.length.is_some_and(|first| first != n);
                    self.length.get_or_insert(n);
                }
                None => self.bad_length = true,
            }
        }
    }

    /// Notes one Transfer-Encoding field's value (its codings, in order).
    pub fn transfer_encoding(&mut self, value: &[u8]) {
        self.transfer_encoding = true;
        for c in value.split(|&b| b == b',') {
            // A coding may carry parameters (`gzip;x=y`): the name decides.
            let name = trim_ows(c.split(|&b| b == b';').next().unwrap_or(b""));
            if !name.is_empty() {
                let chunked = name.eq_ignore_ascii_case(b"chunked");
                self.codings += 1;
                self.chunked += usize::from(chunked);
                self.chunked_last = chunked;
            }
        }
    }

    /// The transfer codings contain `chunked` more than once.
    pub fn chunked_twice(&self) -> bool {
        self.chunked > 1
    }

    /// The rules for a response from an upstream (HAProxy's, stricter than nginx's):
    /// Content-Length with Transfer-Encoding, an invalid Content-Length, Content-Length
    /// values that differ, or `chunked` twice make it unusable. Equal repeated
    /// Content-Length values are one (RFC 9110 §8.6).
    pub fn check_response(&self) -> Result<(), Why> {
        if self.transfer_encoding && (self.length_count > 0 || self.bad_length) {
            return Err("Content-Length with Transfer-Encoding");
        }
        if self.bad_length {
            return Err("an invalid Content-Length");
        }
        if self.lengths_differ {
            return Err("Content-Length values that differ");
        }
        if self.chunked_twice() {
            return Err("chunked applied more than once");
        }
        Ok(())
    }
}

/// Header fields a head's first parse has room for (`[httparse::EMPTY_HEADER;
/// FEW_FIELDS]`, the caller's): the array is initialised on every head (32 bytes a
/// field), so it is sized for the usual head, not the largest.
pub const FEW_FIELDS: usize = 24;

/// The header fields httparse split: in the caller's array, or (more than it holds) in
/// a vector.
pub enum Fields<'h, 'b> {
    Few(&'h [httparse::Header<'b>]),
    Many(Vec<httparse::Header<'b>>),
}

impl<'b> std::ops::Deref for Fields<'_, 'b> {
    type Target = [httparse::Header<'b>];
    fn deref(&self) -> &Self::Target {
        match self {
            Fields::Few(f) => f,
            Fields::Many(v) => v,
        }
    }
}

/// Splits the header fields of `src` (through the blank line) with httparse, with how
/// many bytes they took: first into `few`, then, when there are more, again with room
/// for `max`. `Ok(None)` while the head is incomplete.
pub fn split_fields<'h, 'b>(
    src: &'b [u8],
    few: &'h mut [httparse::Header<'b>],
    max: usize,
) -> Result<Option<(usize, Fields<'h, 'b>)>, httparse::Error> {
    let room = few.len();
    match httparse::parse_headers(src, few) {
        Ok(httparse::Status::Complete((used, h))) => return Ok(Some((used, Fields::Few(h)))),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) if max > room => {}
        Err(e) => return Err(e),
    }
    let mut many = vec![httparse::EMPTY_HEADER; max];
    match httparse::parse_headers(src, &mut many)? {
        httparse::Status::Complete((used, h)) => {
            let n = h.len();
            many.truncate(n);
            Ok(Some((used, Fields::Many(many))))
        }
        httparse::Status::Partial => Ok(None),
    }
}

/// Whether the first chunk-size line in `after` (the bytes after a chunked head) is
/// valid, or not complete yet.
pub fn first_chunk_ok(after: &[u8]) -> bool {
    match after
        .iter()
        .take(MAX_CHUNK_LINE + 2)
        .position(|&b| b == b'\n')
    {
        Some(nl) => after[..nl]
            .strip_suffix(b"\r")
            .is_some_and(|l| chunk_size(l).is_some()),
        None => after.len() <= MAX_CHUNK_LINE + 1,
    }
}

/// `1*DIGIT`, no sign, no whitespace, no overflow.
fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    // 19 digits cannot overflow a u64
    v.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// A chunk-size line (without its CRLF) as RFC 9112 §7.1 writes it: hex digits (leading
/// zeros allowed) whose value fits in 64 bits, optional whitespace, optional
/// `;extensions`. `None` for anything else (`0x10`, `+5`, `-1`, an overflowing size, a
/// bare CR).
pub fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return None;
    }
    let rest = trim_ows(&line[digits..]);
    if !(rest.is_empty() || rest[0] == b';') || rest.contains(&b'\r') {
        return None;
    }
    line[..digits].iter().try_fold(0u64, |n, &d| {
        let d = char::from(d).to_digit(16)?;
        n.checked_mul(16)?.checked_add(u64::from(d))
    })
}

/// How many bytes of `rest` complete the head (through its blank line), if it ends
/// there; `from` bytes of `rest` were already searched without finding the end.
pub fn find_head_end(rest: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(2);
    memchr::memchr_iter(b'\n', &rest[start..]).find_map(|k| {
        let k = start + k;
        let blank = (k >= 1 && rest[k - 1] == b'\n')
            || (k >= 2 && rest[k - 1] == b'\r' && rest[k - 2] == b'\n');
        blank.then_some(k + 1)
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_as_rfc_9112_writes_them() {
        assert_eq!(chunk_size(b"1a"), Some(26));
        assert_eq!(chunk_size(b"5;name=value"), Some(5));
        assert_eq!(chunk_size(b"5 ;x"), Some(5));
        assert_eq!(chunk_size(b"0"), Some(0));
        assert_eq!(chunk_size(b"00000000000000005"), Some(5));
        assert_eq!(chunk_size(b"ffffffffffffffff"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"+5",
            b"-1",
            b"0x5",
            b" 5",
            b"5 5",
            b"12345678901234567",
            b"ffffffffffffffff0",
            b"5\rx",
            b"g",
        ] {
            assert_eq!(chunk_size(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    /// The framing `head`'s fields say, split by httparse as the engine and the
    /// client split them; `None` when httparse refuses the head.
    pub(crate) fn framing_of(head: &[u8]) -> Option<HeadFraming> {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let parsed = if head.starts_with(b"HTTP/") {
            let mut r = httparse::Response::new(&mut fields);
            r.parse(head).ok()?;
            r.headers.len()
        } else {
            let mut r = httparse::Request::new(&mut fields);
            r.parse(head).ok()?;
            r.headers.len()
        };
        let mut f = HeadFraming::default();
        for field in &fields[..parsed] {
            let name = HeaderName::from_bytes(field.name.as_bytes()).ok()?;
            f.field(&name, field.value);
        }
        Some(f)
    }

    #[test]
    fn framing_fields_are_read() {
        let ok = framing_of(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\nTransfer-Encoding: gzip, Chunked\r\nUpgrade: x\r\n\r\n").unwrap();
        assert_eq!(
            (ok.length, ok.length_count, ok.lengths_differ),
            (Some(5), 2, false)
        );
        assert_eq!((ok.codings, ok.chunked, ok.chunked_last), (2, 1, true));
        assert!(ok.upgrade && ok.transfer_encoding && !ok.bad_length);
        let two = framing_of(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n")
            .unwrap();
        assert!(two.lengths_differ);
        // what could hide a framing field is refused by httparse: obs-fold (in requests
        // and responses), whitespace before the colon
        assert!(framing_of(b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n").is_none());
        assert!(framing_of(b"GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n").is_none());
        assert!(framing_of(b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n").is_none());
        assert!(framing_of(b"GET / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n").is_none());
        assert!(
            framing_of(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\rX: y\r\n\r\n").is_none()
        );
        assert!(
            framing_of(b"GET / HTTP/1.1\r\nContent-Length: +5\r\n\r\n")
                .unwrap()
                .bad_length
        );
    }

    #[test]
    fn many_fields_are_split_past_the_first_try() {
        let mut head = Vec::new();
        for i in 0..40 {
            head.extend_from_slice(format!("X-{i}: {i}\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        let mut few = [httparse::EMPTY_HEADER; FEW_FIELDS];
        let (used, f) = split_fields(&head, &mut few, 64).unwrap().unwrap();
        assert_eq!((used, f.len()), (head.len(), 40));
        assert_eq!((f[39].name, f[39].value), ("X-39", &b"39"[..]));
        let mut few = [httparse::EMPTY_HEADER; FEW_FIELDS];
        let more = split_fields(&head, &mut few, 32);
        assert!(matches!(more, Err(httparse::Error::TooManyHeaders)));
        let mut few = [httparse::EMPTY_HEADER; FEW_FIELDS];
        let more = split_fields(&head, &mut few, FEW_FIELDS);
        assert!(matches!(more, Err(httparse::Error::TooManyHeaders)));
        let mut few = [httparse::EMPTY_HEADER; FEW_FIELDS];
        let (_, f) = split_fields(b"A: b\r\n\r\n", &mut few, 64)
            .unwrap()
            .unwrap();
        assert!(matches!(f, Fields::Few(_)) && f.len() == 1);
        let mut few = [httparse::EMPTY_HEADER; FEW_FIELDS];
        assert!(split_fields(b"A: b\r\n", &mut few, 64).unwrap().is_none());
    }

    #[test]
    fn head_ends_are_found_from_a_hint() {
        let h = b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest";
        assert_eq!(find_head_end(h, 0), Some(h.len() - 4));
        assert_eq!(find_head_end(h, 23), Some(h.len() - 4));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\nA: b\n\n", 0), Some(21));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nA: b\r\n", 0), None);
    }
}
