//! HTTP/1 body framing, decoded (RFC 9112 §6–7): one decoder for every body Portico
//! reads off an HTTP/1 wire — a client's request body (crate::h1::body), an HTTP
//! upstream's response (crate::h1::client) and a uwsgi app's raw HTTP answer. Chunk
//! lines are bounded and must end in CRLF; trailers are read, bounded and dropped (as
//! nginx does). No IO here: the caller reads more when told [`Step::NeedMore`].

use bytes::{Buf, Bytes, BytesMut};

use crate::framing::{chunk_size, MAX_CHUNK_LINE};

/// Where a body's framing stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Bytes of a Content-Length body still to come.
    Length(u64),
    /// Before a chunk-size line.
    ChunkSize,
    /// Bytes of chunk data still to come.
    ChunkData(u64),
    /// The CRLF after chunk data.
    ChunkEnd,
    /// Trailer lines, and their bytes so far.
    Trailers(usize),
    /// A response delimited by the end of the connection.
    UntilClose,
    Done,
    /// The framing broke: the connection cannot carry another message.
    Broken,
}

/// What one call of [`Framing::step`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Data(Bytes),
    /// `buf` holds no more of the body: read more, then call again.
    NeedMore,
    /// The body is complete (what is left in `buf` belongs to the next message).
    End,
}

impl Framing {
    /// Decodes from `buf` until it yields data, needs more, or the body ends.
    /// `max_trailers` bounds the trailer section's bytes. An error leaves `Broken`.
    pub fn step(&mut self, buf: &mut BytesMut, max_trailers: usize) -> Result<Step, &'static str> {
        let r = self.step_inner(buf, max_trailers);
        if r.is_err() {
            *self = Framing::Broken;
        }
        r
    }

    fn step_inner(
        &mut self,
        buf: &mut BytesMut,
        max_trailers: usize,
    ) -> Result<Step, &'static str> {
        loop {
            match *self {
                Framing::Done => return Ok(Step::End),
                Framing::Broken => return Err("the body's framing broke earlier"),
                Framing::Length(0) => *self = Framing::Done,
                Framing::UntilClose if buf.is_empty() => return Ok(Step::NeedMore),
                Framing::UntilClose => return Ok(Step::Data(buf.split().freeze())),
                Framing::Length(n) | Framing::ChunkData(n) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let take = n.min(buf.len() as u64);
                    let data = buf.split_to(take as usize).freeze();
                    let left = n - take;
                    *self = match *self {
                        Framing::Length(_) if left == 0 => Framing::Done,
                        Framing::Length(_) => Framing::Length(left),
                        _ if left == 0 => Framing::ChunkEnd,
                        _ => Framing::ChunkData(left),
                    };
                    return Ok(Step::Data(data));
                }
                Framing::ChunkEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("chunk data not followed by CRLF");
                    }
                    buf.advance(2);
                    *self = Framing::ChunkSize;
                }
                Framing::ChunkSize | Framing::Trailers(_) => {
                    let Some(nl) = memchr::memchr(b'\n', buf) else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err("a chunk or trailer line over 4 KiB");
                        }
                        return Ok(Step::NeedMore);
                    };
                    if nl > MAX_CHUNK_LINE {
                        return Err("a chunk or trailer line over 4 KiB");
                    }
                    let line = buf.split_to(nl + 1);
                    let Some(line) = line[..nl].strip_suffix(b"\r") else {
                        return Err("a bare LF ends a chunk line");
                    };
                    *self = match *self {
                        Framing::Trailers(_) if line.is_empty() => Framing::Done,
                        Framing::Trailers(seen) => {
                            let seen = seen + line.len() + 2;
                            if seen > max_trailers {
                                return Err("trailers over max_header_bytes");
                            }
                            Framing::Trailers(seen)
                        }
                        _ => match chunk_size(line) {
                            Some(0) => Framing::Trailers(0),
                            Some(n) => Framing::ChunkData(n),
                            None => return Err("an invalid chunk size"),
                        },
                    };
                }
            }
        }
    }

    /// At the end of the stream: whether that ends the body (a close-delimited one, or
    /// one already complete) rather than cutting it short.
    pub fn ends_at_close(&self) -> bool {
        matches!(
            self,
            Framing::UntilClose | Framing::Done | Framing::Length(0)
        )
    }

    pub fn is_done(&self) -> bool {
        matches!(self, Framing::Done | Framing::Length(0))
    }

    /// The exact number of body bytes left, when the framing says.
    pub fn exact(&self) -> Option<u64> {
        match self {
            Framing::Length(n) => Some(*n),
            Framing::Done => Some(0),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(
        wire: &[u8],
        cut: usize,
        start: Framing,
    ) -> Result<(Vec<u8>, bool), &'static str> {
        let mut f = start;
        let mut buf = BytesMut::from(&wire[..cut]);
        let mut got = Vec::new();
        let mut fed = false;
        loop {
            match f.step(&mut buf, 1024)? {
                Step::Data(b) => got.extend_from_slice(&b),
                Step::End => return Ok((got, true)),
                Step::NeedMore if !fed => {
                    buf.extend_from_slice(&wire[cut..]);
                    fed = true;
                }
                Step::NeedMore => return Ok((got, false)),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        for cut in 0..wire.len() {
            let (got, ended) = decode_all(wire, cut, Framing::ChunkSize).unwrap();
            assert!(ended, "cut at {cut}");
            assert_eq!(got, b"hello world");
        }
    }

    #[test]
    fn lengths_and_close_delimited_bodies() {
        let (got, ended) = decode_all(b"abcdef", 2, Framing::Length(4)).unwrap();
        assert_eq!((got.as_slice(), ended), (&b"abcd"[..], true));
        let (got, ended) = decode_all(b"abcdef", 2, Framing::UntilClose).unwrap();
        assert_eq!((got.as_slice(), ended), (&b"abcdef"[..], false));
        assert!(Framing::UntilClose.ends_at_close());
        assert!(!Framing::Length(3).ends_at_close());
        assert!(!Framing::ChunkSize.ends_at_close());
    }

    #[test]
    fn bad_framing_is_an_error_and_stays_broken() {
        for (bad, start) in [
            (&b"zz\r\nabc\r\n"[..], Framing::ChunkSize),
            (b"+3\r\nabc\r\n", Framing::ChunkSize),
            (b"3\nabc\r\n", Framing::ChunkSize),
            (b"3\r\nabcXY", Framing::ChunkSize),
            (b"0\r\nX: yyyyyyyyyyyyyyyy\r\n", Framing::ChunkSize),
        ] {
            let mut f = start;
            let mut buf = BytesMut::from(bad);
            let r = (0..8).try_for_each(|_| f.step(&mut buf, 8).map(|_| ()));
            assert!(r.is_err(), "{:?}", String::from_utf8_lossy(bad));
            assert_eq!(f, Framing::Broken);
        }
        let mut long = BytesMut::from(&[b'1'; MAX_CHUNK_LINE + 2][..]);
        assert!(Framing::ChunkSize.step(&mut long, 8).is_err());
    }
}
