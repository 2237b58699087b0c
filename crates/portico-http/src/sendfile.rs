//! A file region as an answer's body (static files too big for the per-worker table),
//! and the offer of that region to a writer that can send it from the page cache.
//!
//! [`file_body`] makes the body and a [`Sendfile`] offer that share one region; the
//! offer rides in the response's extensions. The HTTP/1 engine on a plain socket takes
//! the region before it polls the body and sends it from the socket's side as the offer
//! says ([`FileSend`]: copied through the worker's scratch buffer, or with sendfile(2))
//! — no buffer per connection, no allocation per chunk — and the body then ends at once.
//! Anyone else (h2, TLS, a test's pipe) just polls the body, which reads the file in
//! 64 KiB chunks. Whoever starts first has the region, so the bytes go out once.
//!
//! A filter that changes the body's bytes or their pace (compression, a rate limit)
//! must remove the offer from the extensions: the engine would send the file past it.

use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use portico_core::FileSend;

use crate::body::{BoxError, HttpBody};

/// Bytes read per body frame when the file goes through user space.
const CHUNK: u64 = 64 * 1024;

/// A part of an open file still to send.
pub struct Region {
    pub file: std::fs::File,
    pub offset: u64,
    pub len: u64,
}

struct Shared {
    region: Mutex<State>,
    /// How a writer that takes the region sends it.
    how: FileSend,
    /// Bytes sent from the socket's side, for the access log (the body's frames do not
    /// carry them).
    sent: AtomicU64,
}

struct State {
    /// `None` once taken by a sendfile writer.
    left: Option<Region>,
    /// Whether the body has read from it (then it is not offered any more).
    started: bool,
}

/// The offer of an answer's file region to a writer that can sendfile it.
#[derive(Clone)]
pub struct Sendfile(Arc<Shared>);

impl Sendfile {
    /// The region, if nobody has read from it yet; the body ends without sending.
    pub fn take(&self) -> Option<Region> {
        let mut s = lock(&self.0);
        if s.started {
            return None;
        }
        s.left.take()
    }

    /// How the region is to be sent (the route's `sendfile` setting).
    pub fn how(&self) -> FileSend {
        self.0.how
    }

    /// Notes `n` bytes sent from the socket's side.
    pub fn add_sent(&self, n: u64) {
        self.0.sent.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes sent from the socket's side so far.
    pub fn sent(&self) -> u64 {
        self.0.sent.load(Ordering::Relaxed)
    }
}

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
    s.region.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `len` bytes of `file` from `offset` as a body, with its offer to be sent `how`.
pub fn file_body(
    file: std::fs::File,
    offset: u64,
    len: u64,
    how: FileSend,
) -> (HttpBody, Sendfile) {
    let shared = Arc::new(Shared {
        region: Mutex::new(State {
            left: Some(Region { file, offset, len }),
            started: false,
        }),
        sent: AtomicU64::new(0),
        how,
    });
    let offer = Sendfile(Arc::clone(&shared));
    (FileBody(shared).boxed(), offer)
}

/// The region read in 64 KiB chunks, each when the client is ready for it. Reads are
/// plain blocking reads on the worker thread, as nginx does without `aio`: for
/// page-cached files a thread hop per read (tokio::fs) costs far more than the read.
struct FileBody(Arc<Shared>);

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut s = lock(&self.0);
        s.started = true;
        let Some(r) = s.left.as_mut().filter(|r| r.len > 0) else {
            return Poll::Ready(None);
        };
        let n = r.len.min(CHUNK) as usize;
        let mut buf = vec![0u8; n];
        let read = r.file.read_exact_at(&mut buf, r.offset).map(|()| {
            r.offset += n as u64;
            r.len -= n as u64;
            Frame::data(Bytes::from(buf))
        });
        Poll::Ready(Some(read.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        lock(&self.0).left.as_ref().is_none_or(|r| r.len == 0)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(lock(&self.0).left.as_ref().map_or(0, |r| r.len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_of(data: &[u8]) -> std::fs::File {
        let mut f = tempfile::tempfile().expect("temp file");
        f.write_all(data).expect("write");
        f
    }

    #[tokio::test]
    async fn the_body_reads_its_region_when_nobody_takes_it() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (body, offer) = file_body(file_of(&data), 10, 150_000, FileSend::Sendfile);
        let got = body.collect().await.expect("body").to_bytes();
        assert_eq!(&got[..], &data[10..150_010]);
        assert!(offer.take().is_none(), "a region read from is not offered");
    }

    #[tokio::test]
    async fn a_taken_region_ends_the_body_at_once() {
        let (body, offer) = file_body(file_of(b"hello world"), 6, 5, FileSend::Sendfile);
        let r = offer.take().expect("offered");
        assert_eq!((r.offset, r.len), (6, 5));
        assert!(offer.take().is_none(), "taken once");
        let got = body.collect().await.expect("body").to_bytes();
        assert!(got.is_empty());
    }

    #[tokio::test]
    async fn a_file_shorter_than_its_region_fails_the_body() {
        let (body, _offer) = file_body(file_of(b"short"), 0, 100, FileSend::Sendfile);
        assert!(body.collect().await.is_err());
    }
}
