//! Body types and the wrappers that enforce limits and report completion.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every response Portico sends and every request it forwards.
pub type HttpBody = BoxBody<Bytes, BoxError>;

pub fn full(data: impl Into<Bytes>) -> HttpBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> HttpBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Why a request body stopped early; decides the status code.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("request body larger than {0} bytes")]
    TooLarge(u64),
    #[error("no request body data for {0:?}")]
    Timeout(Duration),
    #[error("bad request body: {0}")]
    Invalid(BoxError),
}

/// The status for a request whose client body failed, when `e` or an error that caused
/// it is a [`ClientBodyError`] (limits are enforced by `ClientBody`).
pub fn client_body_status(e: &(dyn std::error::Error + 'static)) -> Option<StatusCode> {
    let mut source = Some(e);
    while let Some(e) = source {
        if let Some(c) = e.downcast_ref::<ClientBodyError>() {
            return Some(match c {
                ClientBodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                ClientBodyError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
                ClientBodyError::Invalid(_) => StatusCode::BAD_REQUEST,
            });
        }
        source = e.source();
    }
    None
}

/// [`client_body_status`] for an error known to come from the client's body.
pub fn client_status(e: &(dyn std::error::Error + 'static)) -> StatusCode {
    client_body_status(e).unwrap_or(StatusCode::BAD_REQUEST)
}

/// A timeout on the gap between two pieces of progress (reads, writes, frames). The
/// timer is only armed once an operation has to wait, so an operation that is ready at
/// once costs no timer at all.
pub struct GapTimer {
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl GapTimer {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            sleep: None,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Call when the operation is pending: true once it has waited `timeout` since the
    /// last progress.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let timeout = self.timeout;
        self.sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)))
            .as_mut()
            .poll(cx)
            .is_ready()
    }

    /// Call when the operation made progress.
    pub fn progress(&mut self) {
        if let Some(s) = self.sleep.as_mut() {
            s.as_mut().reset(Instant::now() + self.timeout);
        }
    }
}

/// A request body as the pipeline carries it: the client's, or none for an internal
/// request (an error page, an X-Accel-Redirect), which is always a GET or HEAD.
pub enum InBody {
    /// An h2 stream's (hyper's).
    Client(hyper::body::Incoming),
    /// An HTTP/1 request's, read by Portico's engine.
    H1(crate::h1::body::H1Body),
    Empty,
}

impl Body for InBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            InBody::Client(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            InBody::H1(b) => Pin::new(b).poll_frame(cx),
            InBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            InBody::Client(b) => b.is_end_stream(),
            InBody::H1(b) => b.is_end_stream(),
            InBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            InBody::Client(b) => b.size_hint(),
            InBody::H1(b) => b.size_hint(),
            InBody::Empty => SizeHint::with_exact(0),
        }
    }
}

pin_project! {
    /// The client's request body on its way upstream: bounded in size, and in time
    /// between two reads.
    pub struct ClientBody {
        #[pin]
        inner: InBody,
        limit: u64,
        seen: u64,
        gap: GapTimer,
    }
}

impl ClientBody {
    pub fn new(inner: InBody, limit: u64, timeout: Duration) -> Self {
        Self {
            inner,
            limit,
            seen: 0,
            gap: GapTimer::new(timeout),
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Pending => {
                if this.gap.poll_expired(cx) {
                    return Poll::Ready(Some(Err(
                        ClientBodyError::Timeout(this.gap.timeout()).into()
                    )));
                }
                Poll::Pending
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    *this.seen += d.len() as u64;
                    if *this.limit > 0 && *this.seen > *this.limit {
                        return Poll::Ready(Some(Err(
                            ClientBodyError::TooLarge(*this.limit).into()
                        )));
                    }
                }
                this.gap.progress();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(ClientBodyError::Invalid(e).into()))),
            Poll::Ready(None) => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// Wraps a response body: counts the bytes sent and calls `on_done` once, when the
    /// body ends or is dropped (client gone), with the count and whether it completed.
    pub struct Observed<F: FnOnce(u64, bool)> {
        #[pin]
        inner: HttpBody,
        sent: u64,
        on_done: Option<F>,
    }

    impl<F: FnOnce(u64, bool)> PinnedDrop for Observed<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(f) = this.on_done.take() {
                f(*this.sent, false);
            }
        }
    }
}

impl<F: FnOnce(u64, bool)> Observed<F> {
    pub fn new(inner: HttpBody, on_done: F) -> Self {
        Self {
            inner,
            sent: 0,
            on_done: Some(on_done),
        }
    }
}

impl<F: FnOnce(u64, bool)> Body for Observed<F> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let r = ready!(this.inner.poll_frame(cx));
        match &r {
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    *this.sent += d.len() as u64;
                }
            }
            None => {
                if let Some(f) = this.on_done.take() {
                    f(*this.sent, true);
                }
            }
            Some(Err(_)) => {}
        }
        Poll::Ready(r)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a body's consumer did last, for a watcher outside the task that polls it.
#[derive(Debug)]
pub struct Progress {
    start: Instant,
    /// When the last frame was handed on, as ms since `start` + 1; 0 while the body
    /// waits on its source.
    handed_ms: std::sync::atomic::AtomicU64,
    /// When the body ended (or failed), as ms since `start` + 1; 0 before.
    done_ms: std::sync::atomic::AtomicU64,
}

/// A body's state as [`Progress`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyState {
    /// Waiting on its source for the next frame.
    Waiting,
    /// A frame was handed on this long ago and the next one not asked for since.
    Handed(Duration),
    /// Ended this long ago.
    Done(Duration),
}

impl Progress {
    pub fn new() -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            start: Instant::now(),
            handed_ms: std::sync::atomic::AtomicU64::new(0),
            done_ms: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64 + 1
    }

    fn record<T>(&self, r: &Poll<Option<Result<T, BoxError>>>) {
        use std::sync::atomic::Ordering;
        match r {
            Poll::Pending => self.handed_ms.store(0, Ordering::Release),
            Poll::Ready(Some(Ok(_))) => self.handed_ms.store(self.now_ms(), Ordering::Release),
            Poll::Ready(_) => self.finish(),
        }
    }

    fn finish(&self) {
        let _ = self.done_ms.compare_exchange(
            0,
            self.now_ms(),
            std::sync::atomic::Ordering::AcqRel,
            std::sync::atomic::Ordering::Acquire,
        );
    }

    pub fn state(&self) -> BodyState {
        use std::sync::atomic::Ordering;
        let now = self.now_ms();
        let ago = |ms: u64| Duration::from_millis(now.saturating_sub(ms));
        match (
            self.done_ms.load(Ordering::Acquire),
            self.handed_ms.load(Ordering::Acquire),
        ) {
            (0, 0) => BodyState::Waiting,
            (0, handed) => BodyState::Handed(ago(handed)),
            (done, _) => BodyState::Done(ago(done)),
        }
    }
}

pin_project! {
    /// A body whose consumer's progress a [`Progress`] reports.
    pub struct Tracked {
        #[pin]
        inner: HttpBody,
        progress: std::sync::Arc<Progress>,
    }
}

impl Tracked {
    pub fn new(inner: HttpBody, progress: std::sync::Arc<Progress>) -> Self {
        Self { inner, progress }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        this.progress.record(&r);
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body on an h2 stream, watched for a client that stops taking data: h2
/// polls a body only when the stream's flow-control window has room, so a client that
/// keeps its window shut would hold the body — and the upstream connection behind it —
/// for as long as the connection lives. Once `send_timeout` passes after a frame was
/// handed on without the next one being asked for, a watchdog task drops the inner
/// body (freeing the upstream side) and calls `on_stall`; the stream then fails on its
/// next poll. Waiting on the upstream (the inner body pending) is not a stall.
pub struct StallWatched {
    inner: std::sync::Arc<std::sync::Mutex<Option<HttpBody>>>,
    progress: std::sync::Arc<Progress>,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("the client took no data for {0:?} (send_timeout)")]
struct Stalled(Duration);

impl StallWatched {
    pub fn new(
        body: HttpBody,
        timeout: Duration,
        on_stall: impl FnOnce() + Send + 'static,
    ) -> Self {
        let inner = std::sync::Arc::new(std::sync::Mutex::new(Some(body)));
        let progress = Progress::new();
        let (slot, seen) = (
            std::sync::Arc::downgrade(&inner),
            std::sync::Arc::clone(&progress),
        );
        tokio::spawn(async move {
            let mut wait = timeout;
            loop {
                tokio::time::sleep(wait).await;
                wait = match seen.state() {
                    BodyState::Done(_) => return,
                    BodyState::Waiting => timeout,
                    BodyState::Handed(ago) if ago < timeout => timeout - ago,
                    BodyState::Handed(_) => break,
                };
            }
            let Some(slot) = slot.upgrade() else { return };
            let body = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
            drop(body); // frees the upstream connection and the request's place
            on_stall();
        });
        Self {
            inner,
            progress,
            timeout,
        }
    }
}

impl Body for StallWatched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut slot = this.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(body) = slot.as_mut() else {
            return Poll::Ready(Some(Err(Stalled(this.timeout).into())));
        };
        let r = Pin::new(body).poll_frame(cx);
        this.progress.record(&r);
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or_else(SizeHint::default, |b| b.size_hint())
    }
}

impl Drop for StallWatched {
    fn drop(&mut self) {
        self.progress.finish();
    }
}

pin_project! {
    /// A response body sent at most `rate` bytes per second (an upstream's
    /// `X-Accel-Limit-Rate`, nginx's `limit_rate`): after each frame the next waits
    /// until the bytes sent so far are due.
    pub struct RateLimited {
        #[pin]
        inner: HttpBody,
        rate: u64,
        sent: u64,
        started: Instant,
        #[pin]
        wait: Option<Sleep>,
    }
}

impl RateLimited {
    pub fn new(inner: HttpBody, rate: u64) -> Self {
        Self {
            inner,
            rate: rate.max(1),
            sent: 0,
            started: Instant::now(),
            wait: None,
        }
    }
}

impl Body for RateLimited {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Some(w) = this.wait.as_mut().as_pin_mut() {
            ready!(w.poll(cx));
            this.wait.set(None);
        }
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(Ok(f)) = &frame {
            if let Some(d) = f.data_ref() {
                *this.sent += d.len() as u64;
                let due =
                    *this.started + Duration::from_secs_f64(*this.sent as f64 / *this.rate as f64);
                if due > Instant::now() {
                    this.wait.set(Some(tokio::time::sleep_until(due)));
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// A body that keeps `held` (conn-limit places) alive as long as it is: until it is
    /// sent, or dropped with the client gone.
    pub struct Holding<T> {
        #[pin]
        inner: HttpBody,
        held: T,
    }
}

impl<T> Holding<T> {
    pub fn new(inner: HttpBody, held: T) -> Self {
        Self { inner, held }
    }
}

impl<T> Body for Holding<T> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 3 frames of 1000 bytes at 1000 B/s: each next frame is due a second after the
    /// last (on tokio's paused clock, so no wall-clock timing).
    #[tokio::test(start_paused = true)]
    async fn a_limited_body_waits_until_its_bytes_are_due() {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = (0..3)
            .map(|_| Ok(Frame::data(Bytes::from(vec![b'x'; 1000]))))
            .collect();
        let inner = http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed();
        let mut body = std::pin::pin!(RateLimited::new(inner, 1000));
        let start = Instant::now();
        let mut at = Vec::new();
        while let Some(f) = body.as_mut().frame().await {
            assert_eq!(f.unwrap().into_data().unwrap().len(), 1000);
            at.push(start.elapsed().as_secs());
        }
        assert_eq!(at, vec![0, 1, 2]);
    }
}

pin_project! {
    /// A response body on its way to the client and, piece by piece, into the cache:
    /// the object is stored when the body has ended whole; an error or a client gone
    /// before the end (the body dropped) leaves nothing stored.
    pub struct Filling {
        #[pin]
        inner: HttpBody,
        filler: Option<portico_cache::Filler>,
    }
}

impl Filling {
    pub fn new(inner: HttpBody, filler: portico_cache::Filler) -> Self {
        let mut filler = Some(filler);
        if inner.is_end_stream() {
            // nothing will be polled: an empty body is complete now
            if let Some(f) = filler.take() {
                f.finish();
            }
        }
        Self { inner, filler }
    }
}

impl Body for Filling {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(d), Some(filler)) = (f.data_ref(), this.filler.as_mut()) {
                    filler.push(d);
                }
                // a consumer may stop at is_end_stream, or once it has the bytes the
                // Content-Length promised, without polling for the end
                let complete = this.filler.as_ref().is_some_and(|f| f.is_complete());
                if complete || this.inner.is_end_stream() {
                    if let Some(f) = this.filler.take() {
                        f.finish();
                    }
                }
            }
            Some(Err(_)) => *this.filler = None,
            None => {
                if let Some(f) = this.filler.take() {
                    f.finish();
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// When the request went to the upstream that answered it, and the status it sent:
/// `$upstream_response_time` (from then to the answer's end: Portico streams answers,
/// so the upstream's last byte is passed on as it is read) and `$upstream_status`.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamTiming {
    started: Instant,
    pub status: u16,
}

impl UpstreamTiming {
    /// `resp` (an upstream's, its request sent at `started`) with its timing in the
    /// extensions.
    pub fn attach(
        mut resp: http::Response<HttpBody>,
        started: Instant,
    ) -> http::Response<HttpBody> {
        let status = resp.status().as_u16();
        resp.extensions_mut()
            .insert(UpstreamTiming { started, status });
        resp
    }

    /// From the request to the upstream until now (called when the answer has ended).
    pub fn took(&self) -> Duration {
        self.started.elapsed()
    }
}
