//! A request body read straight off the connection (framing decoded by
//! [`super::decode`]). The body owns
//! the connection's reading side while the request is in flight and gives it back —
//! with what is left of the framing — when it ends or is dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{oneshot, Notify};

pub use super::decode::Framing;
use super::decode::Step;
use super::Reader;
use crate::body::BoxError;

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
            match this.framing.step(&mut r.buf, this.max_trailers) {
                Ok(Step::Data(data)) => {
                    if this.framing.is_done() {
                        this.give_back();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::End) => {
                    this.give_back();
                    return Poll::Ready(None);
                }
                Ok(Step::NeedMore) => match ready!(r.poll_fill(cx)) {
                    Ok(0) => return this.fail("the client closed before its body ended"),
                    Ok(_) => {}
                    Err(_) => return this.fail("reading the request body failed"),
                },
                Err(why) => return this.fail(why),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing.exact() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
