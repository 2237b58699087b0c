//! A request body read straight off the connection: Content-Length or chunked (RFC
//! 9112 §6–7), bounded lines, trailers read and dropped (as nginx does). The body owns
//! the connection's reading side while the request is in flight and gives it back —
//! with what is left of the framing — when it ends or is dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{oneshot, Notify};

use super::Reader;
use crate::body::BoxError;
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
    Done,
    /// The framing broke: the connection cannot carry another request.
    Broken,
}

/// The reading side handed back to the connection.
pub struct Returned {
    pub reader: Reader,
    pub framing: Framing,
}

pub struct H1Body {
    reader: Option<Reader>,
    framing: Framing,
    max_trailers: usize,
    back: Option<oneshot::Sender<Returned>>,
    /// Set while a `100 Continue` is owed: asked for at the first read.
    expect: Option<Arc<Notify>>,
}

impl H1Body {
    pub fn new(
        reader: Reader,
        framing: Framing,
        max_trailers: usize,
        back: oneshot::Sender<Returned>,
        expect: Option<Arc<Notify>>,
    ) -> Self {
        Self {
            reader: Some(reader),
            framing,
            max_trailers,
            back: Some(back),
            expect,
        }
    }

    fn give_back(&mut self) {
        if let (Some(reader), Some(back)) = (self.reader.take(), self.back.take()) {
            let _ = back.send(Returned {
                reader,
                framing: self.framing,
            });
        }
    }

    fn fail(&mut self, why: &'static str) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.framing = Framing::Broken;
        self.give_back();
        Poll::Ready(Some(Err(why.into())))
    }
}

impl Drop for H1Body {
    fn drop(&mut self) {
        self.give_back();
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(n) = this.expect.take() {
            n.notify_one();
        }
        loop {
            let Some(r) = this.reader.as_mut() else {
                return Poll::Ready(None);
            };
            match this.framing {
                Framing::Done | Framing::Broken => {
                    this.give_back();
                    return Poll::Ready(None);
                }
                Framing::Length(0) => {
                    this.framing = Framing::Done;
                }
                Framing::Length(n) | Framing::ChunkData(n) => {
                    if r.buf.is_empty() {
                        match ready!(r.poll_fill(cx)) {
                            Ok(0) => return this.fail("the client closed before its body ended"),
                            Ok(_) => {}
                            Err(_) => return this.fail("reading the request body failed"),
                        }
                    }
                    let take = n.min(r.buf.len() as u64);
                    let data = r.buf.split_to(take as usize).freeze();
                    let left = n - take;
                    this.framing = match this.framing {
                        Framing::Length(_) if left == 0 => Framing::Done,
                        Framing::Length(_) => Framing::Length(left),
                        _ if left == 0 => Framing::ChunkEnd,
                        _ => Framing::ChunkData(left),
                    };
                    if this.framing == Framing::Done {
                        this.give_back();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::ChunkEnd => {
                    if r.buf.len() < 2 {
                        match ready!(r.poll_fill(cx)) {
                            Ok(0) | Err(_) => {
                                return this.fail("the client closed inside a chunked body")
                            }
                            Ok(_) => continue,
                        }
                    }
                    if &r.buf[..2] != b"\r\n" {
                        return this.fail("chunk data not followed by CRLF");
                    }
                    r.buf.advance(2);
                    this.framing = Framing::ChunkSize;
                }
                Framing::ChunkSize | Framing::Trailers(_) => {
                    let Some(nl) = memchr::memchr(b'\n', &r.buf) else {
                        if r.buf.len() > MAX_CHUNK_LINE {
                            return this.fail("a chunk or trailer line over 4 KiB");
                        }
                        match ready!(r.poll_fill(cx)) {
                            Ok(0) | Err(_) => {
                                return this.fail("the client closed inside a chunked body")
                            }
                            Ok(_) => continue,
                        }
                    };
                    if nl > MAX_CHUNK_LINE {
                        return this.fail("a chunk or trailer line over 4 KiB");
                    }
                    let line = r.buf.split_to(nl + 1);
                    let Some(line) = line[..nl].strip_suffix(b"\r") else {
                        return this.fail("a bare LF ends a chunk line");
                    };
                    this.framing = match this.framing {
                        Framing::Trailers(_) if line.is_empty() => Framing::Done,
                        Framing::Trailers(seen) => {
                            let seen = seen + line.len() + 2;
                            if seen > this.max_trailers {
                                return this.fail("trailers over max_header_bytes");
                            }
                            Framing::Trailers(seen)
                        }
                        _ => match chunk_size(line) {
                            Some(0) => Framing::Trailers(0),
                            Some(n) => Framing::ChunkData(n),
                            None => return this.fail("an invalid chunk size"),
                        },
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
