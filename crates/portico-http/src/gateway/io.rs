//! What both gateways do on the wire: a connection with a bounded read buffer and
//! timed reads and writes, the request body (streamed, or buffered when its length is
//! not known up front), and turning an upstream reader into a streamed response body.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http_body_util::BodyExt;
use portico_upstream::PeerStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::body::{client_status, BoxError, HttpBody};
use crate::spool::{spool_error, Spool};

/// A response head larger than this is refused (502), like nginx's "upstream sent too
/// big header".
pub const MAX_HEAD: usize = 64 * 1024;

/// Why an exchange with an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    #[error("{0}")]
    Io(std::io::Error),
    #[error("no data from the upstream for {0:?}")]
    Timeout(Duration),
    #[error("upstream closed the connection before the response header")]
    Closed,
    /// uWSGI closes without a word on a vars block over its `buffer-size` (4096 by
    /// default): the request's fault, not the server's.
    #[error("the app closed the connection without answering a {0}-byte uwsgi vars block: over its buffer-size (4096 unless raised)?")]
    TooLargeForApp(usize),
    #[error("upstream sent an invalid response header: {0}")]
    Invalid(String),
    #[error("upstream is overloaded (FastCGI FCGI_OVERLOADED)")]
    Overloaded,
    #[error("the client's request body failed: {0}")]
    Client(StatusCode),
}

impl Failure {
    /// The status the client gets when this was the last try.
    pub fn status(&self) -> StatusCode {
        match self {
            Failure::Connect(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Failure::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Failure::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Client(s) => *s,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// Whether this counts against the server's passive health: not what the client
    /// caused (its body failed, or it sent more than the app takes), not an overloaded
    /// server asking to be left alone.
    pub fn blames_server(&self) -> bool {
        !matches!(
            self,
            Failure::Client(_) | Failure::Overloaded | Failure::TooLargeForApp(_)
        )
    }
}

/// A connection to an app server with what has been read but not used yet.
#[derive(Debug)]
pub struct Conn {
    pub stream: PeerStream,
    pub buf: BytesMut,
}

impl Conn {
    pub fn new(stream: PeerStream) -> Self {
        Self {
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
        }
    }

    /// Reads more into `buf`; `Ok(0)` at end of stream. `limit` bounds the buffer.
    pub async fn fill(&mut self, timeout: Duration, limit: usize) -> Result<usize, Failure> {
        if self.buf.len() >= limit {
            return Err(Failure::Invalid(format!(
                "more than {limit} bytes buffered"
            )));
        }
        self.buf.reserve(8 * 1024);
        match tokio::time::timeout(timeout, self.stream.read_buf(&mut self.buf)).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(Failure::Io(e)),
            Err(_) => Err(Failure::Timeout(timeout)),
        }
    }

    pub async fn write_all(&mut self, data: &[u8], timeout: Duration) -> Result<(), Failure> {
        match tokio::time::timeout(timeout, self.stream.write_all(data)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Failure::Io(e)),
            Err(_) => Err(Failure::Timeout(timeout)),
        }
    }
}

/// The client's request body as a gateway sends it.
pub enum RequestBody {
    Empty,
    /// Content-Length was sent: streamed as it arrives (once).
    Stream(Option<HttpBody>),
    /// Length unknown up front (chunked, or h2 without content-length): read first so
    /// CONTENT_LENGTH can be sent, as nginx does; may be sent again on a retry.
    Spooled(Spool),
}

impl RequestBody {
    /// Whether the body can be sent again to another server.
    pub fn resendable(&self) -> bool {
        !matches!(self, RequestBody::Stream(_))
    }

    /// Sends the body, each piece framed by `frame` (uwsgi: as is; FastCGI: STDIN records).
    pub async fn send(
        &mut self,
        conn: &mut Conn,
        timeout: Duration,
        frame: Framer,
    ) -> Result<(), Failure> {
        let mut out = Vec::new();
        match self {
            RequestBody::Empty => Ok(()),
            RequestBody::Stream(body) => {
                let Some(mut body) = body.take() else {
                    return Err(Failure::Invalid("request body already sent".into()));
                };
                while let Some(f) = body.frame().await {
                    let f = f.map_err(|e| Failure::Client(client_status(&*e)))?;
                    if let Ok(data) = f.into_data() {
                        write_framed(conn, &data, frame, &mut out, timeout).await?;
                    }
                }
                Ok(())
            }
            RequestBody::Spooled(spool) => {
                let failed = |e| Failure::Client(spool_error(e));
                let mut chunks = spool.chunks().await.map_err(failed)?;
                while let Some(chunk) = chunks.next().await.map_err(failed)? {
                    write_framed(conn, chunk, frame, &mut out, timeout).await?;
                }
                Ok(())
            }
        }
    }
}

/// Frames one piece of request body for the wire.
pub type Framer = fn(&[u8], &mut Vec<u8>);

async fn write_framed(
    conn: &mut Conn,
    data: &[u8],
    frame: Framer,
    out: &mut Vec<u8>,
    timeout: Duration,
) -> Result<(), Failure> {
    out.clear();
    frame(data, out);
    conn.write_all(out, timeout).await
}

/// An app server's answer, read piece by piece (uwsgi: HTTP framing; FastCGI: STDOUT
/// records).
pub trait Pieces: Send + 'static {
    /// The next piece of the body; `None` at its end.
    fn next(&mut self) -> impl std::future::Future<Output = Result<Option<Bytes>, Failure>> + Send;
    /// After `error`: log it and let the connection go (before the pick is counted, so a
    /// request waiting for the server finds it freed).
    fn abandon(&mut self, error: &Failure);
}

/// The response body over `pieces`: the pick succeeds when it ends, fails if it breaks.
pub fn body_of<P: Pieces>(pieces: P, pick: portico_upstream::Pick) -> HttpBody {
    streamed((pieces, Some(pick)), |(mut r, mut pick)| async move {
        match r.next().await {
            Ok(Some(b)) => Some((Ok(b), (r, pick))),
            Ok(None) => {
                if let Some(p) = pick.take() {
                    p.success();
                }
                None
            }
            Err(e) => {
                r.abandon(&e);
                if let Some(p) = pick.take() {
                    p.failure();
                }
                Some((Err(Box::new(e) as BoxError), (r, None)))
            }
        }
    })
}

/// A response body pulled from an upstream by `next` (one piece per call, `None` at the
/// end), streamed to the client with backpressure: the next piece is read only when
/// the client took the last one.
fn streamed<S, F, Fut>(state: S, next: F) -> HttpBody
where
    S: Send + 'static,
    F: FnMut(S) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Option<(Result<Bytes, BoxError>, S)>> + Send + 'static,
{
    BodyExt::boxed(Streamed {
        inner: std::sync::Mutex::new(Box::pin(futures_util::stream::unfold(state, next))),
    })
}

type PieceStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, BoxError>> + Send>>;

/// A body over a stream of pieces. The stream is only ever used through `&mut`, so the
/// mutex is never locked: it only makes the body `Sync`, as the boxed body type needs.
struct Streamed {
    inner: std::sync::Mutex<PieceStream>,
}

impl http_body::Body for Streamed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let stream = self
            .get_mut()
            .inner
            .get_mut()
            .unwrap_or_else(|p| p.into_inner());
        stream
            .as_mut()
            .poll_next(cx)
            .map(|o| o.map(|r| r.map(http_body::Frame::data)))
    }
}
