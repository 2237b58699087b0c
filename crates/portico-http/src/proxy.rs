//! `via = "http"`: forwarding a request to an upstream chosen by the shared balancer.
//!
//! Connections are HTTP/1.1 (Portico's own client, `crate::h1::client`, driven by the
//! request's task) or h2 over TLS (hyper's), kept alive in a per-server [`IdlePool`]. An
//! HTTP/1.1 connection goes back to the pool only once its response body has been read
//! to the end. Bodies stream both ways with backpressure (the next frame is read only
//! when the peer took the last one).

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use portico_core::worker_id;
use portico_upstream::tls::{speaks_h2, TlsConnector};
use portico_upstream::{connect, IdlePool, NoServer, Pick, SelectCtx, UpstreamHandle};

use crate::body::{
    client_body_status, empty, empty as empty_body, BodyState, BoxError, GapTimer, HttpBody,
    Progress, Tracked,
};
use crate::errors::error_response;
use crate::h1;
use crate::h1::client::{Forwarded, X_FORWARDED_FOR};

/// One connection to an upstream server: HTTP/1.1 (Portico's own client, one exchange
/// at a time, pooled between them), or HTTP/2 over TLS when ALPN agreed (hyper's;
/// multiplexed: the pool keeps it while requests share it).
enum Sender {
    H1(h1::client::Conn),
    H2(hyper::client::conn::http2::SendRequest<HttpBody>),
}

impl Sender {
    fn is_closed(&mut self) -> bool {
        match self {
            Sender::H1(conn) => conn.is_closed(),
            Sender::H2(send) => send.is_closed(),
        }
    }

    /// Another handle on an h2 connection, for one more request on it.
    fn share(&self) -> Option<Sender> {
        match self {
            Sender::H1(_) => None,
            Sender::H2(send) => Some(Sender::H2(send.clone())),
        }
    }
}

/// Why one try on a connection failed.
enum SendError {
    /// Nothing of it reached the server (an h2 connection that closed first, a kept-alive
    /// HTTP/1.1 connection the server had closed): it may go again, with its body.
    Unsent(Option<Box<Request<HttpBody>>>, BoxError),
    Failed(BoxError),
}

/// The answer on its way: hyper's h2 response, or the head read by Portico's own
/// HTTP/1.1 client with the connection its body comes on.
enum Answer {
    H1(h1::client::ResponseHead, h1::client::Conn),
    H2(Response<hyper::body::Incoming>, Sender),
}

impl Answer {
    fn status(&self) -> StatusCode {
        match self {
            Answer::H1(head, _) => head.parts.status,
            Answer::H2(resp, _) => resp.status(),
        }
    }
}

/// Sends `req` on `sender` (which it takes: an HTTP/1.1 connection travels with its
/// response body until that ends).
async fn send(
    sender: Sender,
    mut req: Request<HttpBody>,
    added: &Forwarded,
) -> Result<Answer, SendError> {
    match sender {
        Sender::H1(mut conn) => {
            let (head, body) = req.into_parts();
            let empty = body.is_end_stream();
            match conn.send(&head, added, body).await {
                Ok(resp) => Ok(Answer::H1(resp, conn)),
                Err(h1::client::Error::Stale) if empty && is_idempotent(&head.method) => {
                    Err(SendError::Unsent(
                        Some(Box::new(Request::from_parts(head, empty_body()))),
                        h1::client::Error::Stale.into(),
                    ))
                }
                Err(e) => Err(SendError::Failed(e.into())),
            }
        }
        Sender::H2(mut send) => {
            if let Err(e) = send.ready().await {
                return Err(SendError::Unsent(None, e.into()));
            }
            let shared = Sender::H2(send.clone());
            added.clone().insert_into(req.headers_mut());
            match send.try_send_request(h2_head(req)).await {
                Ok(resp) => Ok(Answer::H2(resp, shared)),
                Err(mut e) => {
                    let unsent = e.take_message();
                    let err = e.into_error();
                    match unsent {
                        Some(r) => Err(SendError::Unsent(Some(Box::new(r)), err.into())),
                        None => Err(SendError::Failed(err.into())),
                    }
                }
            }
        }
    }
}

/// An HTTP/1.1-shaped upstream request made fit for h2: an absolute URI (`:scheme`,
/// `:authority` from the Host), no Host header, and `te: trailers` kept (gRPC).
fn h2_head(req: Request<HttpBody>) -> Request<HttpBody> {
    let (mut parts, body) = req.into_parts();
    parts.version = Version::HTTP_2;
    let authority = parts
        .headers
        .remove(header::HOST)
        .and_then(|h| h.to_str().ok().map(str::to_string));
    if let (Some(a), Some(pq)) = (authority, parts.uri.path_and_query()) {
        if let Ok(uri) = format!("https://{a}{}", pq.as_str()).parse() {
            parts.uri = uri;
        }
    }
    if parts.extensions.get::<WantsTrailers>().is_some() {
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    Request::from_parts(parts, body)
}

/// The client sent `TE: trailers` (removed as hop-by-hop; an h2 upstream gets it back).
#[derive(Clone, Copy)]
struct WantsTrailers;

/// An upstream as the HTTP module uses it: the shared balancer's current generation,
/// with an idle connection pool attached to each server (so pools follow servers across
/// reloads and re-resolutions).
pub struct HttpUpstream {
    pub handle: Arc<UpstreamHandle>,
    workers: usize,
}

impl HttpUpstream {
    /// `workers`: the number of worker threads (idle connections are kept per worker).
    pub fn new(handle: Arc<UpstreamHandle>, workers: usize) -> Self {
        Self { handle, workers }
    }

    /// The idle pool of `server`; `None` if another module owns the server's slot.
    fn pool(
        &self,
        server: &portico_upstream::Server,
        cfg: &portico_config::UpstreamConfig,
    ) -> Option<Arc<IdlePool<Sender>>> {
        // HTTP servers do not spend a worker on an idle connection: a burst's excess is
        // kept for reuse a while
        server.ext_or_init(|| {
            IdlePool::new(cfg.keepalive, cfg.keepalive_timeout, self.workers).with_grace()
        })
    }
}

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1).
/// Connection first (its tokens name more fields to remove).
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including those the Connection header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names (cheap comparisons of standard headers) notes which are
    // there; only those are looked up again to be removed. Most requests carry none;
    // most answers only Connection.
    let mut present = 0u16;
    // a Connection field that is more than `keep-alive` or `close` (it may name others)
    let mut names_more = false;
    for (k, v) in headers.iter() {
        // the names' lengths first: most fields are none of these
        if !matches!(k.as_str().len(), 2 | 7 | 10 | 16..=19) {
            continue;
        }
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present |= 1 << i;
            if i == 0 {
                let v = v.as_bytes().trim_ascii();
                names_more |=
                    !(v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close"));
            }
        }
    }
    if present == 0 {
        return;
    }
    if names_more {
        // `keep-alive` and `close` (the usual tokens) name no other header to remove
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for (i, h) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(h);
        }
    }
}

pub(crate) fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

/// What the proxy needs to know about the client side of one request.
pub struct ClientSide {
    pub peer_ip: Option<IpAddr>,
    /// `peer_ip` as a header value, made once per connection.
    pub peer_value: Option<HeaderValue>,
    pub tls: bool,
    /// The host the request is for (its authority, else Host, else the listener's
    /// name): the upstream's Host and X-Forwarded-Host.
    pub host: Option<HeaderValue>,
    /// The rendered `hash_key` when the upstream balances by hash.
    pub hash_key: Option<Vec<u8>>,
}

/// The request head as an upstream gets it: hop-by-hop fields gone, HTTP/1.1,
/// origin-form. What the proxy adds (Host, X-Forwarded-*) is returned, for the HTTP/1
/// client to write with the head (or [`Forwarded::insert_into`] the map, for any other).
fn to_upstream_head(parts: &mut http::request::Parts, client: &ClientSide) -> Forwarded {
    if parts.version == Version::HTTP_2 {
        join_cookies(&mut parts.headers);
    }
    if h1::has_token(&parts.headers, header::TE, "trailers") {
        parts.extensions.insert(WantsTrailers);
    }
    let added = prepare_request_headers(&mut parts.headers, client);
    parts.version = Version::HTTP_11;
    // An absolute-form or h2 URI becomes origin-form for the upstream.
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        if let Some(pq) = parts.uri.path_and_query() {
            if let Ok(uri) = pq.as_str().parse() {
                parts.uri = uri;
            }
        }
    }
    added
}

/// The value of cookie `name` in the request's Cookie headers ($cookie_NAME).
pub(crate) fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The upstream server that answered, for the access log.
pub type UpstreamAddr = Option<Arc<str>>;

/// The servers one request tries, as the upstream's `tries` and `next_upstream_timeout`
/// allow: the selection loop the HTTP proxy and the uwsgi/FastCGI gateways share.
pub(crate) struct Tries<'a> {
    upstream: &'a portico_upstream::Upstream,
    client_ip: Option<IpAddr>,
    /// The request's URI, for log lines.
    uri: &'a http::Uri,
    key: Option<&'a [u8]>,
    /// Servers (by index) tried so far.
    pub tried: Vec<usize>,
    /// One of them was a panic try (every server was out): no second one.
    panicked: bool,
    max: usize,
    first: std::time::Instant,
    /// The status the client gets when no try succeeds.
    pub last_status: StatusCode,
    pub last_addr: UpstreamAddr,
}

impl<'a> Tries<'a> {
    pub fn new(
        upstream: &'a portico_upstream::Upstream,
        client_ip: Option<IpAddr>,
        key: Option<&'a [u8]>,
        uri: &'a http::Uri,
    ) -> Self {
        Self {
            upstream,
            client_ip,
            uri,
            key,
            tried: Vec::new(),
            panicked: false,
            max: upstream.max_tries(),
            first: std::time::Instant::now(),
            last_status: StatusCode::BAD_GATEWAY,
            last_addr: None,
        }
    }

    /// Whether one more server may be tried.
    pub fn left(&self) -> bool {
        let timeout = self.upstream.config.next_upstream_timeout;
        self.tried.len() < self.max
            && (self.tried.is_empty() || timeout.is_zero() || self.first.elapsed() < timeout)
    }

    fn ctx(&self) -> SelectCtx<'_> {
        SelectCtx {
            client_ip: self.client_ip,
            exclude: &self.tried,
            key: self.key,
            panicked: self.panicked,
        }
    }

    /// The next server, waiting in the queue if the upstream has one; `None` when the
    /// tries are used up or no server can be had (`last_status` then says why).
    pub async fn next(&mut self) -> Option<(Pick, Arc<str>)> {
        if !self.left() {
            return None;
        }
        let name = &self.upstream.config.name;
        let pick = match self.upstream.select_queued(&self.ctx()).await {
            Ok(p) => p,
            Err(NoServer::NoneAvailable) => {
                if self.tried.is_empty() {
                    tracing::error!(upstream = %name, client = %portico_core::OrDash(self.client_ip),
                        uri = %self.uri, "no live upstreams");
                }
                return None;
            }
            Err(e) => {
                tracing::warn!(upstream = %name, "{e}");
                self.last_status = StatusCode::SERVICE_UNAVAILABLE;
                return None;
            }
        };
        self.tried.push(pick.index);
        self.panicked |= pick.panic;
        let addr = Arc::clone(pick.server.label());
        self.last_addr = Some(Arc::clone(&addr));
        Some((pick, addr))
    }

    /// The last server is to be tried again (its connection died before the request
    /// left): it no longer counts as tried.
    pub fn forget_last(&mut self, was_panic: bool) {
        self.tried.pop();
        self.panicked &= !was_panic;
    }

    /// Whether a server not tried yet is available now (before passing over an answer).
    pub fn another_exists(&self) -> bool {
        self.upstream.select(&self.ctx()).is_some()
    }

    /// The error answer after the last failed try.
    pub fn give_up(self) -> (Response<HttpBody>, UpstreamAddr) {
        (error_response(self.last_status), self.last_addr)
    }
}

/// Forwards `req` to `up`. Further servers are tried as the upstream's `next_upstream`
/// policy allows (nginx's `proxy_next_upstream`): after a connect error or timeout for
/// any request (nothing was sent); after an error, timeout or listed 5xx answer only for
/// idempotent requests without a body; never past `tries` servers or
/// `next_upstream_timeout`. When the last try was a listed 5xx, that answer is relayed.
pub async fn forward(
    up: &HttpUpstream,
    req: Request<HttpBody>,
    client: &ClientSide,
) -> (Response<HttpBody>, UpstreamAddr) {
    let (mut parts, body) = req.into_parts();
    let upstream = up.handle.load();
    let cfg = &upstream.config;
    let policy = cfg.next_upstream;
    let added = to_upstream_head(&mut parts, client);
    let empty_body = body.is_end_stream();
    let retry_after_send = empty_body && is_idempotent(&parts.method);
    let mut body = Some(body);
    let uri = parts.uri.clone();
    let mut tries = Tries::new(&upstream, client.peer_ip, client.hash_key.as_deref(), &uri);
    let mut resends = 0;

    while let Some((pick, addr)) = tries.next().await {
        let pool = up.pool(&pick.server, cfg);

        // A pooled connection the server has not closed, or a new one.
        let mut pooled = pool
            .as_ref()
            .and_then(|p| p.take(worker_id(), |s| !s.is_closed()));
        // an h2 connection stays in the pool while this request uses it
        if let (Some(p), Some(shared)) = (&pool, pooled.as_ref().and_then(Sender::share)) {
            if let Some(own) = pooled.replace(shared) {
                p.put(worker_id(), own);
            }
        }
        let sender = match pooled {
            Some(s) => s,
            // boxed: a new connection (TLS, an h2 handshake) is a large state machine,
            // and inline it would be built and moved with every request
            None => match portico_core::boxed(|| {
                open(&pick, cfg.connect_timeout, up.handle.tls.as_deref(), true)
            })
            .await
            {
                Ok(s) => {
                    if let (Some(p), Some(shared)) = (&pool, s.share()) {
                        p.put(worker_id(), shared);
                    }
                    s
                }
                Err(e) => {
                    tracing::warn!(upstream = %cfg.name, server = %addr, uri = %uri, error = %e, "connect failed");
                    let timed_out = e.kind() == std::io::ErrorKind::TimedOut;
                    tries.last_status = if timed_out {
                        StatusCode::GATEWAY_TIMEOUT
                    } else {
                        StatusCode::BAD_GATEWAY
                    };
                    pick.failure();
                    // Nothing was sent: any request may go on, if the policy says so.
                    if (timed_out && policy.timeout) || (!timed_out && policy.error) {
                        continue;
                    }
                    break;
                }
            },
        };

        let this_body = if empty_body {
            empty()
        } else {
            match body.take() {
                Some(b) => b,
                None => break, // consumed by an earlier attempt: cannot be resent
            }
        };
        // Keep a copy of the head only if this request may be sent again.
        let may_resend = retry_after_send && tries.left();
        let head = if may_resend {
            parts.clone()
        } else {
            std::mem::replace(&mut parts, Request::new(()).into_parts().0)
        };
        // The response timeout starts once the request is sent: a client uploading
        // slowly is not the upstream's delay (and never counts against it).
        let progress = (!empty_body).then(Progress::new);
        let this_body = match &progress {
            Some(p) => Tracked::new(this_body, Arc::clone(p)).boxed(),
            None => this_body,
        };
        let req = Request::from_parts(head, this_body);
        let started = std::time::Instant::now();
        // boxed: built in place of being moved through the timeout's layers
        let sent = response_within(
            portico_core::boxed(|| send(sender, req, &added)),
            progress.as_deref(),
            cfg.read_timeout,
            cfg.send_timeout,
        )
        .await;
        match sent {
            Ok(Ok(answer)) => {
                pick.record_latency(started.elapsed());
                let status = answer.status().as_u16();
                // A listed 5xx goes to the next server when there is one to go to;
                // otherwise this answer is relayed, as nginx relays the last one.
                if policy.on_status(status)
                    && retry_after_send
                    && tries.left()
                    && tries.another_exists()
                {
                    tracing::warn!(upstream = %cfg.name, server = %addr, uri = %uri, status,
                        "upstream answered {status}: trying the next server");
                    pick.failure();
                    continue;
                }
                if status == 101 {
                    // nothing here asked to switch protocols
                    tracing::warn!(upstream = %cfg.name, server = %addr, uri = %uri, "upstream switched protocols unasked");
                    pick.failure();
                    tries.last_status = StatusCode::BAD_GATEWAY;
                    break;
                }
                return (
                    finish_response(answer, pool, pick, cfg.read_timeout),
                    Some(addr),
                );
            }
            Ok(Err(e)) => {
                let (unsent, err) = match e {
                    SendError::Unsent(req, e) => (req, e),
                    SendError::Failed(e) => (None, e),
                };
                if let Some(status) = client_body_status(&*err) {
                    // The client's body failed, not the server: do not blame it.
                    return (error_response(status), Some(addr));
                }
                tracing::warn!(upstream = %cfg.name, server = %addr, uri = %uri, error = %err, "upstream request failed");
                if let Some(req) = unsent {
                    // The connection died before the request reached the server:
                    // resend it, body and all, without blaming the server.
                    if resends < 2 {
                        resends += 1;
                        let (head, unsent_body) = (*req).into_parts();
                        parts = head;
                        body = Some(unsent_body);
                        tries.forget_last(pick.panic);
                        continue;
                    }
                }
                pick.failure();
                tries.last_status = StatusCode::BAD_GATEWAY;
                if !(retry_after_send && policy.error) {
                    break;
                }
            }
            Err(what) => {
                tracing::warn!(upstream = %cfg.name, server = %addr, uri = %uri, "upstream timed out {what}");
                pick.failure();
                tries.last_status = StatusCode::GATEWAY_TIMEOUT;
                if !(retry_after_send && policy.timeout) {
                    break;
                }
            }
        }
    }
    tries.give_up()
}

/// Waits for the response head: `read_timeout` from when the request (its body, if
/// `body` tracks one) was wholly sent. While the body waits on the client, no upstream
/// timer runs (the client's `body_timeout` does); while the upstream does not take the
/// body, `send_timeout` (nginx's proxy_send_timeout). Err says which timer ran out.
async fn response_within<F: std::future::Future>(
    fut: F,
    body: Option<&Progress>,
    read_timeout: Duration,
    send_timeout: Duration,
) -> Result<F::Output, &'static str> {
    const HEAD: &str = "waiting for the response header (read_timeout)";
    let Some(body) = body else {
        return tokio::time::timeout(read_timeout, fut)
            .await
            .map_err(|_| HEAD);
    };
    const SEND: &str = "sending the request body: the upstream took none (send_timeout)";
    tokio::pin!(fut);
    loop {
        let wait = match body.state() {
            BodyState::Done(ago) if ago >= read_timeout => return Err(HEAD),
            BodyState::Handed(ago) if ago >= send_timeout => return Err(SEND),
            BodyState::Done(ago) => read_timeout - ago,
            BodyState::Handed(ago) => send_timeout - ago,
            BodyState::Waiting => read_timeout.max(send_timeout),
        };
        tokio::select! {
            r = &mut fut => return Ok(r),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// A new connection to the picked server: TCP or a Unix socket, then TLS when the
/// upstream has `tls` (h2 when `h2_ok`, the upstream's `h2` and the server's ALPN all
/// agree). HTTP/1.1 response header names keep the case the upstream wrote (relayed so
/// to HTTP/1.1 clients).
async fn open(
    pick: &Pick,
    timeout: Duration,
    tls: Option<&TlsConnector>,
    h2_ok: bool,
) -> std::io::Result<Sender> {
    let addr = pick.server.addr();
    let stream = connect(addr, timeout).await?;
    let Some(tls) = tls else {
        return h1(stream).await;
    };
    let handshake = tls.connect(stream, addr, h2_ok);
    let stream = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TLS handshake timed out (connect_timeout)",
            )
        })??;
    if !speaks_h2(&stream) {
        return h1(stream).await;
    }
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream h2 connection ended");
        }
    });
    Ok(Sender::H2(send))
}

async fn h1<S: crate::upgrade::ConnIo + 'static>(stream: S) -> std::io::Result<Sender> {
    Ok(Sender::H1(h1::client::Conn::new(Box::new(stream))))
}

fn prepare_request_headers(h: &mut HeaderMap, client: &ClientSide) -> Forwarded {
    strip_hop_by_hop(h);
    let x_forwarded_for = client.peer_value.as_ref().and_then(|ip| {
        match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prev) if !prev.trim().is_empty() => HeaderValue::from_str(&format!(
                "{prev}, {}",
                client.peer_ip.map(|i| i.to_string()).unwrap_or_default()
            ))
            .ok(),
            _ => Some(ip.clone()),
        }
    });
    Forwarded {
        x_forwarded_for,
        x_forwarded_proto: Some(HeaderValue::from_static(if client.tls {
            "https"
        } else {
            "http"
        })),
        // The request's authority replaces a Host header (absolute-form targets,
        // RFC 9112 §3.2.2), and gives h2 requests (`:authority`) the Host an HTTP/1.1
        // upstream needs; it is X-Forwarded-Host too.
        host: client.host.clone(),
    }
}

/// h2 clients may split Cookie into several fields (RFC 9113 §8.2.3): an HTTP/1.1
/// upstream gets them as one, joined with "; ".
fn join_cookies(h: &mut HeaderMap) {
    let mut all = h.get_all(header::COOKIE).iter();
    if let (Some(first), Some(_)) = (all.next(), all.next()) {
        let mut joined = first.as_bytes().to_vec();
        for v in h.get_all(header::COOKIE).iter().skip(1) {
            joined.extend_from_slice(b"; ");
            joined.extend_from_slice(v.as_bytes());
        }
        if let Ok(v) = HeaderValue::from_bytes(&joined) {
            h.insert(header::COOKIE, v);
        }
    }
}

fn finish_response(
    answer: Answer,
    pool: Option<Arc<IdlePool<Sender>>>,
    pick: Pick,
    read_timeout: Duration,
) -> Response<HttpBody> {
    let (mut parts, inner) = match answer {
        Answer::H2(resp, sender) => {
            let (parts, body) = resp.into_parts();
            (
                parts,
                Inner::H2 {
                    body,
                    _sender: sender,
                },
            )
        }
        Answer::H1(head, mut conn) => {
            let h1::client::ResponseHead {
                mut parts,
                mut framing,
                keep_alive,
            } = head;
            // A small answer often came whole with its head: the connection goes back
            // to the pool at once.
            if let Some(whole) = conn.take_whole(&mut framing) {
                strip_hop_by_hop(&mut parts.headers);
                release_h1(conn, keep_alive, pool.as_ref());
                pick.success();
                return Response::from_parts(parts, crate::body::full(whole));
            }
            let inner = Inner::H1 {
                conn: Some(conn),
                framing,
                keep: keep_alive,
            };
            (parts, inner)
        }
    };
    strip_hop_by_hop(&mut parts.headers);
    let body = UpstreamBody {
        inner,
        gap: GapTimer::new(read_timeout),
        done: Some((pool, pick)),
    };
    Response::from_parts(parts, body.boxed())
}

/// Back to the pool, when the upstream keeps it and sent nothing past the response.
fn release_h1(conn: h1::client::Conn, keep: bool, pool: Option<&Arc<IdlePool<Sender>>>) {
    if let Some(pool) = pool.filter(|_| keep && conn.is_clean()) {
        pool.put(worker_id(), Sender::H1(conn));
    }
}

#[derive(Debug, thiserror::Error)]
#[error("upstream sent no response data for {0:?}")]
struct UpstreamBodyTimeout(Duration);

/// The upstream's response body on its way to the client. At its end an HTTP/1.1
/// connection goes back to the pool and the server is counted healthy.
struct UpstreamBody {
    inner: Inner,
    gap: GapTimer,
    done: Option<(Option<Arc<IdlePool<Sender>>>, Pick)>,
}

enum Inner {
    H1 {
        conn: Option<h1::client::Conn>,
        framing: h1::decode::Framing,
        keep: bool,
    },
    H2 {
        body: hyper::body::Incoming,
        /// The stream's handle on its connection (which stays in the pool).
        _sender: Sender,
    },
}

impl UpstreamBody {
    fn release(&mut self) {
        let Some((pool, pick)) = self.done.take() else {
            return;
        };
        pick.success();
        if let Inner::H1 {
            conn,
            framing,
            keep,
        } = &mut self.inner
        {
            if let Some(c) = conn.take().filter(|_| framing.is_done()) {
                release_h1(c, *keep, pool.as_ref());
            }
        }
    }

    fn fail(&mut self) {
        if let Some((_, pick)) = self.done.take() {
            pick.failure();
        }
        if let Inner::H1 { conn, .. } = &mut self.inner {
            *conn = None;
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            Inner::H1 {
                conn: Some(conn),
                framing,
                ..
            } => conn
                .poll_body(framing, cx)
                .map(|o| o.map(|r| r.map(Frame::data).map_err(BoxError::from))),
            Inner::H1 { conn: None, .. } => Poll::Ready(None),
            Inner::H2 { body, .. } => Pin::new(body)
                .poll_frame(cx)
                .map(|o| o.map(|r| r.map_err(BoxError::from))),
        };
        match polled {
            Poll::Pending => {
                if this.gap.poll_expired(cx) {
                    this.fail();
                    return Poll::Ready(Some(Err(UpstreamBodyTimeout(this.gap.timeout()).into())));
                }
                Poll::Pending
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.gap.progress();
                if this.is_end_stream() {
                    this.release();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.fail();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.release();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::H1 { conn, framing, .. } => conn.is_none() || framing.is_done(),
            Inner::H2 { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::H1 { framing, .. } => match framing.exact() {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::default(),
            },
            Inner::H2 { body, .. } => body.size_hint(),
        }
    }
}

/// The tunnel an upgrade hands to the WebSocket module, to be run as its own task.
pub type Tunnel = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Forwards a WebSocket opening on a fresh upstream connection, always as an HTTP/1.1
/// `Upgrade: websocket` request: an h2 extended CONNECT from the client (RFC 8441) is
/// translated, and the upstream's 101 answered with 200 on the h2 stream.
/// Only when the upstream answers 101 are both connections upgraded and handed to
/// [`portico_websocket::tunnel`] (returned as a [`Tunnel`]); any other answer is relayed
/// as a normal response. The pick stays in flight while the tunnel is open, so
/// least_conn counts open tunnels; an upstream that fails mid-stream is reported to
/// passive health.
pub async fn forward_upgrade(
    up: &HttpUpstream,
    mut parts: http::request::Parts,
    client: &ClientSide,
    on_client: crate::upgrade::ClientUpgrade,
    limits: portico_websocket::TunnelLimits,
    shutdown: tokio_util::sync::CancellationToken,
) -> (Response<HttpBody>, UpstreamAddr, Option<Tunnel>) {
    let upstream = up.handle.load();
    let cfg = &upstream.config;
    let from_h2 = parts.version == Version::HTTP_2;
    let upgrade = parts.headers.get(header::UPGRADE).cloned();
    to_upstream_head(&mut parts, client).insert_into(&mut parts.headers);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if from_h2 {
        parts.method = http::Method::GET;
        parts.extensions.remove::<hyper::ext::Protocol>();
        parts
            .headers
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(key) = HeaderValue::from_str(&websocket_key()) {
            parts.headers.insert(header::SEC_WEBSOCKET_KEY, key);
        }
    } else if let Some(u) = upgrade {
        parts.headers.insert(header::UPGRADE, u);
    }
    let mut on_client = Some(on_client);
    let uri = parts.uri.clone();
    let mut tries = Tries::new(&upstream, client.peer_ip, client.hash_key.as_deref(), &uri);
    while let Some((pick, addr)) = tries.next().await {
        let opened = portico_core::boxed(|| {
            open(&pick, cfg.connect_timeout, up.handle.tls.as_deref(), false)
        })
        .await;
        let mut conn = match opened {
            Ok(Sender::H1(conn)) => conn,
            Ok(Sender::H2(_)) => {
                tracing::warn!(upstream = %cfg.name, server = %addr, uri = %uri, "an upgrade needs HTTP/1.1, the server chose h2");
                break;
            }
            Err(e) => {
                tracing::warn!(upstream = %cfg.name, server = %addr, uri = %uri, error = %e, "connect failed");
                pick.failure();
                if cfg.next_upstream.error {
                    continue;
                }
                break;
            }
        };
        let answer = tokio::time::timeout(
            cfg.read_timeout,
            conn.send(&parts, &Forwarded::default(), empty()),
        )
        .await;
        match answer {
            Ok(Ok(resp)) if resp.parts.status == StatusCode::SWITCHING_PROTOCOLS => {
                let mut head = resp.parts;
                if from_h2 {
                    // RFC 8441: a 2xx opens the stream; the 101 handshake headers stay
                    // on the upstream side.
                    head.status = StatusCode::OK;
                    for h in [
                        header::UPGRADE,
                        header::CONNECTION,
                        header::SEC_WEBSOCKET_ACCEPT,
                    ] {
                        head.headers.remove(h);
                    }
                }
                let Some(on_client) = on_client.take() else {
                    break;
                };
                let on_upstream = conn.upgraded();
                let tunnel = async move {
                    match on_client.stream().await {
                        Ok(c) => {
                            let end =
                                portico_websocket::tunnel(c, on_upstream, limits, shutdown).await;
                            tracing::debug!(?end, "websocket tunnel ended");
                            if end == portico_websocket::TunnelEnd::UpstreamError {
                                pick.failure();
                            } else {
                                pick.success();
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "upgrade did not complete"),
                    }
                };
                return (
                    Response::from_parts(head, empty()),
                    Some(addr),
                    Some(Box::pin(tunnel)),
                );
            }
            Ok(Ok(resp)) => {
                // Not upgraded: an ordinary answer, relayed; this connection is not reused.
                let resp = finish_response(Answer::H1(resp, conn), None, pick, cfg.read_timeout);
                return (resp, Some(addr), None);
            }
            Ok(Err(e)) => {
                tracing::warn!(upstream = %cfg.name, server = %addr, uri = %uri, error = %e, "upstream upgrade request failed");
                pick.failure();
                if !cfg.next_upstream.error {
                    break;
                }
            }
            Err(_) => {
                tracing::warn!(upstream = %cfg.name, server = %addr, uri = %uri, "upstream timed out answering the upgrade");
                pick.failure();
                tries.last_status = StatusCode::GATEWAY_TIMEOUT;
                if !cfg.next_upstream.timeout {
                    break;
                }
            }
        }
    }
    let (resp, addr) = tries.give_up();
    (resp, addr, None)
}

/// A fresh Sec-WebSocket-Key: 16 random bytes, base64. A handshake nonce, not a secret.
fn websocket_key() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut bytes = [0u8; 16];
    for chunk in bytes.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    portico_core::base64::encode(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_fields_and_the_ones_connection_names_are_removed() {
        let map = |fields: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in fields {
                h.append(*k, HeaderValue::from_static(v));
            }
            h
        };
        let mut h = map(&[
            ("connection", "keep-alive"),
            ("connection", " X-Secret , close"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("upgrade", "h2c"),
            ("te", "trailers"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(
            h.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
            ["x-kept"]
        );
        // the usual tokens name nothing else
        let mut h = map(&[("connection", "Keep-Alive"), ("close", "1"), ("date", "x")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
        assert!(!h.contains_key(header::CONNECTION));
    }

    #[test]
    fn websocket_keys_are_fresh() {
        assert_eq!(websocket_key().len(), 24);
        assert_ne!(websocket_key(), websocket_key());
    }
}
