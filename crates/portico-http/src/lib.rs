//! Portico's HTTP module: HTTP/1.1 and h2 (ALPN, or h2c with prior knowledge) on hyper,
//! virtual hosts by server name, routes matched as nginx's locations, the access log,
//! and the admin endpoints.
//!
//! One [`HttpService`] serves one bound address; it holds the [`Site`]s (listeners)
//! sharing that address. Per request (`HttpService::dispatch`, nginx's phases): pick the
//! site by Host (else the first), normalize the path, find the route (`router`), check
//! its methods, render what its templates need (`vars`), then `return` or the content
//! ([`static_files`], [`proxy`], [`gateway`]), then the response header rules (`route`).
//! The balancer is `portico-upstream`; accept, TLS and drain are `portico-core`.

pub mod access_log;
pub mod admin;
pub mod body;
mod cache;
mod compress;
mod conditional;
mod cookies;
mod edge;
mod errors;
mod framing;
pub mod gateway;
mod h1;
mod io;
pub mod path;
pub mod proxy;
mod route;
mod router;
mod sendfile;
mod spool;
pub mod static_files;
mod upgrade;
pub mod vars;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use portico_config::{Limits, ListenerConfig};
use portico_core::{server_name_matches, BoxFuture, Connection, Served, Service};
use tokio::time::Instant;

pub use access_log::AccessLog;
pub use admin::StatusSource;
pub use errors::error_response;
pub use proxy::HttpUpstream;

use body::{ClientBody, HttpBody, Observed};
use upgrade::ClientUpgrade;

/// nginx's answer to plain HTTP on an HTTPS port (its 497, sent as 400).
const PLAIN_ON_TLS: &[u8] = b"HTTP/1.1 400 Bad Request\r\nServer: portico\r\nContent-Type: text/html\r\nContent-Length: 220\r\nConnection: close\r\n\r\n<html>\r\n<head><title>400 The plain HTTP request was sent to HTTPS port</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n<center>The plain HTTP request was sent to HTTPS port</center>\r\n</body>\r\n</html>\r\n";

/// The health probe for an upstream this module speaks to with `via`, when its
/// `health` block names no `check`.
pub fn default_health_check(via: portico_config::Via) -> portico_config::HealthCheck {
    match via {
        portico_config::Via::Http => portico_config::HealthCheck::Http,
        portico_config::Via::Uwsgi => portico_config::HealthCheck::Uwsgi,
        portico_config::Via::Fastcgi => portico_config::HealthCheck::Fastcgi,
    }
}

/// Request counters per listener, kept across reloads.
#[derive(Debug)]
pub struct SiteStats {
    pub requests: AtomicU64,
    /// Responses by class: 1xx … 5xx.
    pub by_class: [AtomicU64; 5],
    /// Responses by status, 100 to 599 (index: status − 100).
    pub by_status: Box<[AtomicU64]>,
    pub bytes_sent: AtomicU64,
    /// From the request head to the last byte of the answer (or the client gone).
    pub duration: portico_core::histogram::Histogram,
}

impl Default for SiteStats {
    fn default() -> Self {
        Self {
            requests: AtomicU64::new(0),
            by_class: Default::default(),
            by_status: (100..600).map(|_| AtomicU64::new(0)).collect(),
            bytes_sent: AtomicU64::new(0),
            duration: Default::default(),
        }
    }
}

/// Counters that outlive a reload, keyed by listener name.
#[derive(Debug, Default)]
pub struct Metrics {
    sites: Mutex<BTreeMap<String, Arc<SiteStats>>>,
    /// Request durations per (listener, route as written), kept across reloads.
    routes: Mutex<BTreeMap<(String, String), Arc<portico_core::histogram::Histogram>>>,
}

/// A route's request-duration histogram.
pub(crate) type RouteTimer = Arc<portico_core::histogram::Histogram>;

impl Metrics {
    pub(crate) fn route(&self, listener: &str, route: &str) -> RouteTimer {
        let mut r = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(
            r.entry((listener.to_string(), route.to_string()))
                .or_default(),
        )
    }

    pub fn routes(&self) -> Vec<((String, String), RouteTimer)> {
        let r = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        r.iter().map(|(k, v)| (k.clone(), Arc::clone(v))).collect()
    }

    pub fn site(&self, name: &str) -> Arc<SiteStats> {
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(sites.entry(name.to_string()).or_default())
    }

    pub fn sites(&self) -> Vec<(String, Arc<SiteStats>)> {
        let sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        sites
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect()
    }
}

enum SiteKind {
    Routes(Box<route::Routes>),
    /// A listener without routes: the welcome page and /status.
    Welcome,
    /// The admin listener: /status, /metrics, /health.
    Admin,
}

/// One HTTP listener as compiled for serving.
pub struct Site {
    name: String,
    server_names: Vec<String>,
    limits: Limits,
    kind: SiteKind,
    stats: Arc<SiteStats>,
    real_ip: Option<portico_config::RealIp>,
    /// `[maps]`, for `$map_NAME`.
    maps: Arc<portico_limits::maps::Maps>,
    /// Some route has an access log of its own (or `off`).
    route_logs: bool,
}

impl Site {
    fn has_route_logs(&self) -> bool {
        self.route_logs
    }

    /// Compiles `l`; `upstreams` must hold every upstream its routes name.
    pub fn new(
        l: &ListenerConfig,
        upstreams: &BTreeMap<String, Arc<HttpUpstream>>,
        limiters: &portico_limits::Limiters,
        caches: &portico_cache::Zones,
        metrics: &Metrics,
        logs: &access_log::Writers,
    ) -> Result<Self, String> {
        let kind = if l.routes.is_empty() {
            SiteKind::Welcome
        } else {
            SiteKind::Routes(Box::new(route::Routes::compile(
                l, upstreams, limiters, caches, metrics, logs,
            )?))
        };
        let route_logs = l
            .routes
            .iter()
            .any(|r| r.access_log != portico_config::RouteAccessLog::Inherit);
        Ok(Self {
            route_logs,
            name: l.name.clone(),
            server_names: l.server_names.clone(),
            limits: l.limits.clone(),
            kind,
            stats: metrics.site(&l.name),
            real_ip: l.real_ip.clone(),
            maps: Arc::clone(&limiters.maps),
        })
    }

    /// The admin site.
    pub fn admin(limits: Limits, metrics: &Metrics) -> Self {
        Self {
            name: "admin".into(),
            server_names: Vec::new(),
            limits,
            kind: SiteKind::Admin,
            stats: metrics.site("admin"),
            real_ip: None,
            maps: Arc::default(),
            route_logs: false,
        }
    }
}

/// What the HTTP module shares across its services.
#[derive(Clone)]
pub struct Shared {
    pub access_log: AccessLog,
    /// The generation's log destinations (routes' own logs open theirs here).
    pub logs: access_log::Writers,
    pub status: Arc<StatusSource>,
    /// How long open tunnels (WebSocket) may go on after shutdown begins.
    pub drain: std::time::Duration,
}

/// Serves HTTP on one bound address for the sites sharing it.
pub struct HttpService {
    sites: Vec<Arc<Site>>,
    shared: Shared,
}

impl HttpService {
    /// `sites` must not be empty; the first is the default virtual host.
    pub fn new(sites: Vec<Site>, shared: Shared) -> Self {
        Self {
            sites: sites.into_iter().map(Arc::new).collect(),
            shared,
        }
    }

    fn site_for(&self, host: Option<&str>) -> &Arc<Site> {
        if let Some(host) = host {
            for exact in [true, false] {
                if let Some(s) = self.sites.iter().find(|s| {
                    s.server_names
                        .iter()
                        .any(|n| n.starts_with('*') != exact && server_name_matches(n, host))
                }) {
                    return s;
                }
            }
        }
        &self.sites[0]
    }
}

/// Per-connection facts and the state the idle timer needs.
struct ConnState {
    /// The connection's serial number (`$connection`).
    id: u64,
    /// The TLS session (`$ssl_*`).
    tls_info: Option<Arc<portico_core::TlsInfo>>,
    peer: Option<std::net::SocketAddr>,
    local: Option<std::net::SocketAddr>,
    peer_value: Option<HeaderValue>,
    tls: bool,
    sni: Option<String>,
    in_flight: AtomicUsize,
    shutdown: tokio_util::sync::CancellationToken,
    /// What only upgrades and h2 need, made when first needed: an idle HTTP/1
    /// connection (parked) keeps the rest only.
    extra: std::sync::OnceLock<Box<ConnExtra>>,
    /// When the last request finished, as ms since `start`.
    last_done_ms: AtomicU64,
    start: Instant,
    /// The connection speaks h2 (it carried an h2 request).
    h2: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct ConnExtra {
    /// Upgraded connections (WebSocket tunnels) this connection handed on: the
    /// connection's task lives until they end, so drain waits for them.
    tunnels: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// h2 streams whose client stopped taking data for send_timeout (their upstream
    /// side is gone; the stream itself only ends with the connection).
    stalled: AtomicUsize,
    stall: tokio::sync::Notify,
}

impl ConnState {
    fn extra(&self) -> &ConnExtra {
        self.extra.get_or_init(Box::default)
    }

    fn finish(&self) {
        self.last_done_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Service for HttpService {
    fn plain_on_tls(&self) -> Option<&'static [u8]> {
        Some(PLAIN_ON_TLS)
    }

    fn serve(self: Arc<Self>, conn: Connection) -> BoxFuture {
        // made before the future: what it holds while the connection idles is what it
        // captures (a ConnInfo or a Limits kept in it would stay for the connection's life)
        let Connection {
            stream,
            info,
            shutdown,
            ..
        } = conn;
        let state = Arc::new(ConnState {
            id: info.id,
            tls_info: info.tls.clone().map(Arc::new),
            peer: info.peer,
            local: info.local,
            peer_value: info
                .peer
                .and_then(|p| HeaderValue::from_str(&p.ip().to_string()).ok()),
            tls: info.tls.is_some(),
            sni: info.tls.as_ref().and_then(|t| t.sni.clone()),
            in_flight: AtomicUsize::new(0),
            shutdown: shutdown.clone(),
            extra: std::sync::OnceLock::new(),
            last_done_ms: AtomicU64::new(0),
            start: Instant::now(),
            h2: Default::default(),
        });
        let io = self.client_io(stream);
        let alpn_h2 = info.tls.as_ref().and_then(|t| t.alpn.as_deref()) == Some(b"h2");
        drop(info);
        if alpn_h2 {
            return portico_core::boxed(|| async move {
                // boxed: hyper's h2 connection is large, and only h2 clients need it
                portico_core::boxed(|| self.serve_h2(io, bytes::Bytes::new(), &state, &shutdown))
                    .await;
                state.wait_for_tunnels().await;
                Served::Done
            });
        }
        self.serve_h1(io, true, state)
    }
}

/// How long a kept-alive HTTP/1 connection waits for its next request in its task
/// before it is parked (`portico_core::Served::Idle`): a client that sends requests
/// back to back never pays for the trip (a few syscalls and a task), and a burst of
/// clients that then go quiet never holds thousands of tasks at once (bench/idle.sh,
/// 9,000 connections: 1,226 B each after 200 ms, 809 B after 20, 770 B after 1).
const PARK_AFTER: std::time::Duration = std::time::Duration::from_millis(20);

impl ConnState {
    /// Waits for the WebSocket tunnels this connection handed on.
    async fn wait_for_tunnels(&self) {
        let Some(extra) = self.extra.get() else {
            return;
        };
        let tunnels = std::mem::take(&mut *extra.tunnels.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tunnels {
            let _ = t.await;
        }
    }
}

impl HttpService {
    /// The client's stream as the engines take it: behind its send timeout.
    fn client_io(&self, stream: portico_core::Stream) -> h1::Io {
        Box::new(io::SendTimeoutIo::new(
            stream,
            self.sites[0].limits.send_timeout,
        ))
    }

    /// HTTP/1 on a connection (`first`: nothing came on it yet), until it ends, turns
    /// out to be h2 (a preface), or idles: then it is handed to the core to park, and
    /// goes on here when the client speaks.
    fn serve_h1(self: Arc<Self>, io: h1::Io, first: bool, state: Arc<ConnState>) -> BoxFuture {
        let limits = &self.sites[0].limits;
        let settings = h1::Settings {
            max_head: limits.max_header_bytes.max(8192),
            header_timeout: limits.header_timeout,
            idle_timeout: limits.idle_timeout,
            drain_grace: DRAIN_GRACE,
            park_after: (!state.tls).then_some(PARK_AFTER),
        };
        portico_core::boxed(|| async move {
            let shutdown = state.shutdown.clone();
            let this = Arc::clone(&self);
            let svc_state = Arc::clone(&state);
            let next = h1::serve(io, settings, first, &shutdown, |req| {
                Arc::clone(&this).handle(req, Arc::clone(&svc_state))
            })
            .await;
            match next {
                h1::Next::Idle { io, until, first } => {
                    if let Some(stream) = io.into_stream() {
                        let resume: portico_core::Resume = Box::new(move |stream| {
                            let io = self.client_io(stream);
                            self.serve_h1(io, first, state)
                        });
                        return Served::Idle(portico_core::Idle {
                            stream,
                            until,
                            resume,
                        });
                    }
                }
                h1::Next::H2(io, prefix) => {
                    // boxed: hyper's h2 connection is large, and only h2 clients need it
                    portico_core::boxed(|| self.serve_h2(io, prefix, &state, &shutdown)).await;
                }
                h1::Next::Closed => {}
            }
            state.wait_for_tunnels().await;
            Served::Done
        })
    }

    /// An h2 connection (ALPN h2, or an h2 preface on a plain connection: `prefix` is
    /// what was read of it), through hyper's h2 server, until the client, a drain or
    /// the idle timeout ends it.
    async fn serve_h2(
        self: &Arc<Self>,
        io: h1::Io,
        prefix: bytes::Bytes,
        state: &Arc<ConnState>,
        shutdown: &tokio_util::sync::CancellationToken,
    ) {
        let limits = &self.sites[0].limits;
        let id = state.id;
        state.h2.store(true, Ordering::Relaxed);
        let svc_state = Arc::clone(state);
        let this = Arc::clone(self);
        // boxed: hyper spawns each stream's future as a task, moving it on the way
        // (`handle`'s state is some 5.5 KB; a box is one pointer)
        let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let this = Arc::clone(&this);
            let state = Arc::clone(&svc_state);
            portico_core::boxed(|| async move {
                Ok::<_, Infallible>(this.handle(req.map(body::InBody::Client), state).await)
            })
        });
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(256)
            .enable_connect_protocol();
        let conn = builder.serve_connection(TokioIo::new(h1::Upgraded::new(io, prefix)), svc);
        tokio::pin!(conn);
        let mut closing = false;
        loop {
            let idle_deadline = state.start
                + std::time::Duration::from_millis(state.last_done_ms.load(Ordering::Relaxed))
                + limits.idle_timeout;
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(conn = id, error = %e, "h2 connection ended with an error");
                    }
                    break;
                }
                // draining: GOAWAY at once (clients retry what it names as unprocessed)
                _ = shutdown.cancelled(), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = state.extra().stall.notified() => {
                    // Only stalled streams left: they would hold the connection
                    // (a graceful close waits for them) forever.
                    if state.in_flight.load(Ordering::Relaxed) == 0 {
                        tracing::info!(conn = id, "closing an h2 connection whose client stopped reading");
                        break;
                    }
                }
                _ = tokio::time::sleep_until(idle_deadline), if !closing => {
                    let idle_for = state.start.elapsed().as_millis() as u64
                        - state.last_done_ms.load(Ordering::Relaxed).min(state.start.elapsed().as_millis() as u64);
                    if state.in_flight.load(Ordering::Relaxed) == 0
                        && state.extra().stalled.load(Ordering::Relaxed) > 0
                    {
                        break;
                    }
                    if state.in_flight.load(Ordering::Relaxed) == 0
                        && idle_for >= limits.idle_timeout.as_millis() as u64
                    {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    } else if state.in_flight.load(Ordering::Relaxed) > 0 {
                        // busy: look again one idle period from now
                        state.last_done_ms.store(state.start.elapsed().as_millis() as u64, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// How long a draining HTTP/1 connection may still carry a request (answered with
/// `Connection: close`) before it is closed; at most the listener's idle timeout.
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// A WebSocket opening: an HTTP/1.1 `Upgrade: websocket` request, or an h2 extended
/// CONNECT with `:protocol = websocket` (RFC 8441).
fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    if req.version() == Version::HTTP_2 {
        return req.method() == http::Method::CONNECT
            && req
                .extensions()
                .get::<hyper::ext::Protocol>()
                .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
    }
    let has = |name, token| h1::has_token(req.headers(), name, token);
    req.version() == Version::HTTP_11
        && req.method() == http::Method::GET
        && has(header::UPGRADE, "websocket")
        && has(header::CONNECTION, "upgrade")
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

/// The host the request is for (RFC 9112 §3.2.2, RFC 9113 §8.3.1): the authority of an
/// absolute-form target or the h2 `:authority`, else the Host header. 400 when an
/// HTTP/1.1 or h2 request has neither, when Host is repeated or not a valid host (even
/// beside an authority, which then replaces it), or when an h2 request's Host names
/// another host than its `:authority`.
fn request_host<B>(req: &Request<B>) -> Result<Option<HeaderValue>, StatusCode> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let header_host = hosts.next();
    if hosts.next().is_some() || header_host.is_some_and(|h| !valid_host(h.as_bytes())) {
        return Err(StatusCode::BAD_REQUEST);
    }
    let value = match (req.uri().authority(), header_host) {
        (Some(a), h) => {
            let a = HeaderValue::from_str(a.as_str()).map_err(|_| StatusCode::BAD_REQUEST)?;
            let differs = h.is_some_and(|h| !h.as_bytes().eq_ignore_ascii_case(a.as_bytes()));
            if req.version() == Version::HTTP_2 && differs {
                return Err(StatusCode::BAD_REQUEST);
            }
            Some(a)
        }
        // validated above
        (None, Some(h)) => return Ok(Some(h.clone())),
        (None, None) if matches!(req.version(), Version::HTTP_11 | Version::HTTP_2) => {
            return Err(StatusCode::BAD_REQUEST)
        }
        (None, None) => None,
    };
    match &value {
        Some(v) if !valid_host(v.as_bytes()) => Err(StatusCode::BAD_REQUEST),
        _ => Ok(value),
    }
}

/// A host with an optional port, as a Host header carries it: a reg-name or IPv4
/// address, or an IPv6 literal in brackets; no spaces, paths, queries or user info.
fn valid_host(b: &[u8]) -> bool {
    !b.is_empty() && b.iter().all(|&c| HOST_BYTES[usize::from(c)])
}

/// The bytes [`valid_host`] lets through, as a table (one load per byte on every request).
static HOST_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_');
        c += 1;
    }
    t
};

/// The Host an upstream gets for a request that named none (HTTP/1.0 without Host): the
/// listener's first server name, else the address the request came in on (nginx's
/// `$host` falls back to the server name the same way).
fn default_host(site: &Site, local: Option<std::net::SocketAddr>) -> Option<HeaderValue> {
    let name = site
        .server_names
        .iter()
        .find(|n| !n.starts_with('*') && !n.starts_with('~'))
        .cloned()
        .or_else(|| local.map(|a| a.to_string()))?;
    HeaderValue::from_str(&name).ok()
}

/// The host without its port (`[::1]:80` → `[::1]`).
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map(|(h, _)| &host[..h.len() + 1])
            .unwrap_or(host);
    }
    // memchr, as the engine's other byte searches: `split_once(':')` runs the char
    // searcher, on every request
    match memchr::memchr(b':', host.as_bytes()) {
        Some(i) => &host[..i],
        None => host,
    }
}

impl HttpService {
    /// An access log (the listener's, or one of `site`'s routes') may write a request.
    fn may_log(&self, site: &Site) -> bool {
        self.shared.access_log.is_on() || site.has_route_logs()
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<body::InBody>,
        conn: Arc<ConnState>,
    ) -> Response<HttpBody> {
        conn.in_flight.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let h2 = req.version() == Version::HTTP_2;
        let refused = req.extensions().get::<h1::Refused>().copied();
        if let Some(r) = refused {
            tracing::info!(status = r.status.as_u16(), "request refused: {}", r.why);
        }
        let connect = req.method() == http::Method::CONNECT;
        let host = request_host(&req);
        let site = Arc::clone(match &host {
            Ok(h) => self.site_for(
                h.as_ref()
                    .and_then(|v| v.to_str().ok())
                    .map(host_name)
                    .or(conn.sni.as_deref()),
            ),
            Err(_) => &self.sites[0],
        });
        let peer = Peer::of(&conn, &site, req.headers());
        let may_log = self.may_log(&site);
        // what the line needs of the request, kept as the request holds it (shared
        // buffers, not copies): made into text only when the line is written
        let log_fields = may_log.then(|| LogFields {
            time: SystemTime::now(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: version_str(req.version()),
            referer: req.headers().get(header::REFERER).cloned(),
            user_agent: req.headers().get(header::USER_AGENT).cloned(),
            host: host.as_ref().ok().and_then(|h| h.clone()),
        });
        let mut route_timer: Option<RouteTimer> = None;
        // an ACME CA validating a certificate this process orders (HTTP-01), on any
        // listener, before the routes
        let acme = refused
            .is_none()
            .then(|| portico_acme::answer_http01(req.uri().path()))
            .flatten();
        let (mut resp, upstream) = match (refused, host) {
            (None, _) if acme.is_some() => {
                let body = acme.unwrap_or_default();
                let mut resp = Response::new(body::full(bytes::Bytes::from(body)));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                (resp, None)
            }
            (Some(r), _) => {
                let mut resp = error_response(r.status);
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                (resp, None)
            }
            (None, Err(status)) => (error_response(status), None),
            (None, Ok(host)) => {
                let (resp, upstream, timer) = self.dispatch(req, &site, &conn, &peer, host).await;
                route_timer = timer;
                (resp, upstream)
            }
        };
        if !h2 {
            let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS
                || (connect && resp.status().is_success());
            if conn.shutdown.is_cancelled() && !switched {
                // draining: this answer ends the connection, and says so, so the client
                // sends its next request on a new one (to the process that serves now)
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
        }

        let status = resp.status().as_u16();
        site.stats.requests.fetch_add(1, Ordering::Relaxed);
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        site.stats.by_class[class].fetch_add(1, Ordering::Relaxed);
        if let Some(c) = site
            .stats
            .by_status
            .get(usize::from(status).wrapping_sub(100))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }

        // the log the route chose (its own, or off), with what the request gave it
        let (log, pending) = match resp.extensions_mut().remove::<RouteLog>() {
            Some(r) => (r.log, r.pending),
            None => (self.shared.access_log.clone(), None),
        };
        let cache_status = resp
            .extensions()
            .get::<cache::Status>()
            .map(|s| s.0.as_str());
        let (parts, body) = resp.into_parts();
        // the head as it goes out: status line, headers, blank line
        // (`$bytes_sent`: only for a log)
        let head_bytes = if log_fields.is_some() {
            17 + parts
                .headers
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len() + 4)
                .sum::<usize>() as u64
        } else {
            0
        };
        let conn_id = conn.id;
        let stall_conn = Arc::clone(&conn);
        let stats = Arc::clone(&site.stats);
        let site_name = site.name.clone();
        // a file the engine sent with sendfile(2) never passes as frames
        let sendfile = parts.extensions.get::<sendfile::Sendfile>().cloned();
        let upstream_timing = parts.extensions.get::<body::UpstreamTiming>().copied();
        let body = Observed::new(body, move |framed, _complete| {
            let bytes = framed + sendfile.map_or(0, |s| s.sent());
            stats.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
            let took = started.elapsed();
            stats.duration.observe(took);
            if let Some(t) = &route_timer {
                t.observe(took);
            }
            if let Some(f) = log_fields.filter(|_| log.is_on()) {
                let referer = f.referer.as_ref().map(|v| log_text(v));
                let user_agent = f.user_agent.as_ref().map(|v| log_text(v));
                log.log(
                    &access_log::Entry {
                        remote: peer.ip,
                        time: f.time,
                        method: f.method.as_str(),
                        uri: f.uri.path_and_query().map_or("/", |p| p.as_str()),
                        version: f.version,
                        status,
                        bytes,
                        referer: referer.as_deref(),
                        user_agent: user_agent.as_deref(),
                        host: f.host.as_ref().and_then(|v| v.to_str().ok()),
                        duration: started.elapsed(),
                        upstream: upstream.as_deref(),
                        upstream_time: upstream_timing.map(|t| t.took()),
                        upstream_status: upstream_timing.map(|t| t.status),
                        listener: &site_name,
                        conn: conn_id,
                        head_bytes,
                        cache_status,
                    },
                    pending.as_deref(),
                );
            }
            conn.finish();
        });
        if h2 && !body.is_end_stream() {
            // h2 polls a body only while the client's window has room: watch for a
            // client that keeps it shut (HTTP/1 writes fail in SendTimeoutIo instead).
            let watched = Arc::clone(&stall_conn);
            let body = body::StallWatched::new(body.boxed(), site.limits.send_timeout, move || {
                tracing::info!("h2 stream ended: the client took no data for send_timeout");
                watched.extra().stalled.fetch_add(1, Ordering::Relaxed);
                watched.extra().stall.notify_one();
            });
            return Response::from_parts(parts, body.boxed());
        }
        Response::from_parts(parts, body.boxed())
    }

    async fn dispatch(
        &self,
        req: Request<body::InBody>,
        site: &Arc<Site>,
        conn: &ConnState,
        peer: &Peer,
        host: Option<HeaderValue>,
    ) -> (Response<HttpBody>, proxy::UpstreamAddr, Option<RouteTimer>) {
        let mut req = req;
        if !site.limits.underscores_in_headers {
            drop_underscored(req.headers_mut());
        }
        let routes = match &site.kind {
            SiteKind::Routes(r) => r,
            kind => {
                let Ok(path) = path::normalize(req.uri().path()) else {
                    return (error_response(StatusCode::BAD_REQUEST), None, None);
                };
                let admin = matches!(kind, SiteKind::Admin);
                let resp = admin::serve(
                    &self.shared.status,
                    req.method(),
                    &path,
                    req.uri().query(),
                    admin,
                );
                return (resp, None, None);
            }
        };
        // what an error page needs of the request once it has gone on (only where a
        // route or the listener has error pages)
        let saved = routes.error_pages.then(|| Saved {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        });
        let at = Ctx {
            site,
            conn,
            peer,
            host: host.as_ref(),
        };
        let out = self.run(req, Entry::client(), routes, &at).await;
        let timer = out.route.map(|i| Arc::clone(&routes.routes[i].timer));
        let (resp, upstream) = match saved {
            Some(saved) => portico_core::boxed(|| self.error_page(out, saved, routes, &at)).await,
            None => (out.resp, out.upstream),
        };
        (resp, upstream, timer)
    }

    /// nginx's `error_page`: an answer with a status that has a page (Portico's own, or
    /// with `intercept_errors` an upstream's) is replaced by an internal GET (HEAD stays
    /// HEAD) of the page's URI, answered with the original status. An error page that
    /// fails itself is answered as it failed (nginx's `recursive_error_pages off`).
    async fn error_page(
        &self,
        out: Outcome,
        saved: Saved,
        routes: &route::Routes,
        at: &Ctx<'_>,
    ) -> (Response<HttpBody>, proxy::UpstreamAddr) {
        let status = out.resp.status();
        let pages = out
            .route
            .map_or(&routes.listener_pages, |i| &routes.routes[i].error_pages);
        let Some(page) = pages.get(status.as_u16()) else {
            return (out.resp, out.upstream);
        };
        if !errors::is_own(&out.resp) && !pages.intercept {
            return (out.resp, out.upstream);
        }
        let mut req = internal_request(&saved.method, unconditional(saved.headers));
        let path = path::normalize(saved.uri.path()).unwrap_or(std::borrow::Cow::Borrowed("/"));
        let ctx = at.req(&req, &saved.uri);
        let mut entry = Entry::internal(Some(status));
        let mut resp = match page {
            portico_config::ErrorPage::Redirect(t) => {
                let ret = portico_config::ReturnConfig {
                    status: 302,
                    location: Some(t.clone()),
                    body: None,
                };
                route::answer(&ret, &ctx.vars(&path, None, None))
            }
            portico_config::ErrorPage::Named(name) => match routes.router.named(name) {
                Some(i) => {
                    entry.named = Some(i);
                    *req.uri_mut() = saved.uri.clone();
                    portico_core::boxed(|| self.run(req, entry, routes, at))
                        .await
                        .resp
                }
                None => error_response(StatusCode::INTERNAL_SERVER_ERROR),
            },
            portico_config::ErrorPage::Uri(t) => {
                let target = ctx.render(t, &path, None, None);
                match target.parse::<http::Uri>() {
                    Ok(u) => {
                        *req.uri_mut() = u;
                        portico_core::boxed(|| self.run(req, entry, routes, at))
                            .await
                            .resp
                    }
                    Err(e) => {
                        tracing::error!(%target, error = %e, "an error page rendered to an invalid URI: 500");
                        error_response(StatusCode::INTERNAL_SERVER_ERROR)
                    }
                }
            }
        };
        // what the client needs of the answer the page replaces
        for name in [header::WWW_AUTHENTICATE, header::ALLOW, header::RETRY_AFTER] {
            if let Some(v) = out.resp.headers().get(&name) {
                resp.headers_mut().insert(name, v.clone());
            }
        }
        if let Some(v) = out.resp.headers().get(header::CONNECTION) {
            resp.headers_mut().insert(header::CONNECTION, v.clone());
        }
        (resp, out.upstream)
    }

    /// The request pipeline of one (client or internal) request on a listener with
    /// routes: find the route, rewrite phase, index, access (methods), content, then
    /// the header and body filters.
    async fn run(
        &self,
        req: Request<body::InBody>,
        entry: Entry,
        routes: &route::Routes,
        at: &Ctx<'_>,
    ) -> Outcome {
        let (site, conn, peer) = (at.site, at.conn, at.peer);
        let host = at.host;
        // an answer before the content phase goes to the route's log (with what the
        // entry knows: the request's part is not rendered yet)
        let answer = |mut resp: Response<HttpBody>, route: Option<usize>| {
            if let Some(log) = route.and_then(|i| routes.routes[i].access_log.as_ref()) {
                resp.extensions_mut().insert(RouteLog {
                    log: log.clone(),
                    pending: None,
                });
            }
            Outcome {
                resp,
                upstream: None,
                route,
            }
        };
        let mut req = req;
        let on_upgrade =
            (!entry.internal && is_websocket_upgrade(&req)).then(|| ClientUpgrade::of(&mut req));
        // The path borrows a clone of the URI (a reference count), not the request,
        // which goes on to the content phase.
        let uri = req.uri().clone();
        let Ok(path) = path::normalize(uri.path()) else {
            return answer(error_response(StatusCode::BAD_REQUEST), None);
        };
        // rewrite phase: find the route (nginx's precedence), rewrites and try_files
        // may send the request to another (at most MAX_INTERNAL times)
        let mut at_uri = Internal {
            path,
            args: None,
            changed: entry.internal,
            named: entry.named,
        };
        let mut steps = entry.depth;
        let (index, route, captures) = loop {
            if steps > MAX_INTERNAL {
                tracing::error!(uri = %uri, "more than {MAX_INTERNAL} internal redirects (rewrite, try_files, index, error page, X-Accel-Redirect): 500");
                return answer(error_response(StatusCode::INTERNAL_SERVER_ERROR), None);
            }
            steps += 1;
            let found = match at_uri.named.take() {
                Some(i) => router::Found {
                    route: i,
                    captures: None,
                },
                None => match routes.router.find(&at_uri.path) {
                    Some(f) => f,
                    None => return answer(error_response(StatusCode::NOT_FOUND), None),
                },
            };
            let route = &routes.routes[found.route];
            if route.internal && !at_uri.changed && steps == entry.depth + 1 {
                return answer(error_response(StatusCode::NOT_FOUND), None);
            }
            match self.rewrite_phase(route, &req, &uri, &mut at_uri, found.captures.as_ref(), at) {
                Step::Go => {}
                Step::Again => continue,
                Step::Answer(resp) => return answer(resp, Some(found.route)),
            }
            // index: a directory's index file is an internal redirect, as nginx's
            // index module (so /wp-admin/ becomes /wp-admin/index.php and reaches the
            // PHP route, never the static one)
            if let route::Content::Static(cfg) = &route.content {
                if at_uri.path.ends_with('/') {
                    let dir = static_files::file_for(cfg, &at_uri.path);
                    let found = dir.and_then(|d| cfg.index.iter().find(|i| d.join(i).is_file()));
                    if let Some(index) = found {
                        at_uri.path.to_mut().push_str(index);
                        at_uri.changed = true;
                        continue;
                    }
                }
            }
            break (found.route, route, found.captures);
        };
        let path: &str = &at_uri.path;
        let args = at_uri.args.as_deref();
        // access phase: the route's methods, then its edge protection (allow/deny,
        // rate limits, conn limits)
        if let Some(refused) = route.refuse_method(req.method()) {
            return answer(refused, Some(index));
        }
        let ctx = at.req(&req, &uri);
        let vars = ctx.vars(path, args, captures.as_ref());
        let route_log = route.access_log.as_ref().unwrap_or(&self.shared.access_log);
        let log_pending = route_log.pending(&vars).map(Arc::new);
        let mut held = Vec::new();
        let mut auth_headers = Vec::new();
        if !route.edge.is_empty() {
            let ask = edge::Asking {
                client: peer.ip,
                headers: req.headers(),
                method: req.method(),
                side: proxy::ClientSide {
                    peer_ip: peer.ip,
                    peer_value: peer.value.clone(),
                    tls: conn.tls,
                    host: host.cloned().or_else(|| default_host(site, conn.local)),
                    hash_key: None,
                },
            };
            match portico_core::boxed(|| edge::check(&route.edge, ask, &vars)).await {
                edge::Admit::Refuse(resp) => return answer(resp, Some(index)),
                edge::Admit::Go {
                    guards,
                    delay,
                    headers,
                } => {
                    held = guards;
                    auth_headers = headers;
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
        // the header rules' values come from the request: rendered before it goes on
        let response_values = (!route.response_headers.is_empty() && !route.late_response_headers)
            .then(|| route.response_headers.render(&vars));
        let request_values =
            (!route.request_headers.is_empty()).then(|| route.request_headers.render(&vars));
        let cookie_values =
            (!route.cookies.is_empty()).then(|| cookies::render(&route.cookies, &vars));
        // `upstream = "app-$map_region"`: this request's upstream
        let chosen = route.choose.as_ref().and_then(|(t, table)| {
            let mut name = Vec::with_capacity(32);
            vars.render(t, &mut name);
            table.get(name.as_slice()).cloned()
        });
        let hash_key = match (&route.content, &chosen) {
            (_, Some(up)) => up.handle.template.hash_key.as_ref(),
            (route::Content::Proxy(up), None) => up.handle.template.hash_key.as_ref(),
            (route::Content::Gateway(g), None) => g.upstream.handle.template.hash_key.as_ref(),
            _ => None,
        }
        .map(|t| {
            let mut key = Vec::with_capacity(64);
            vars.render(t, &mut key);
            key
        });
        let returned = match &route.content {
            route::Content::Return(r) => Some(route::answer(r, &vars)),
            _ => None,
        };
        // what proxy_redirect needs of the request: the Host the client asked for
        let redirect_host = route.redirect_to.as_ref().and(host.cloned());
        // what an X-Accel-Redirect needs of the request
        let accel = match &route.content {
            route::Content::Proxy(_) | route::Content::Gateway(_) => {
                Some((req.method().clone(), accel_headers(req.headers())))
            }
            _ => None,
        };
        // what the body filter needs from the request
        let compress_for = route.compress.as_ref().map(|c| {
            (
                c,
                req.method().clone(),
                req.headers().get(header::ACCEPT_ENCODING).cloned(),
            )
        });
        let cache_plan = route
            .cache
            .as_ref()
            .and_then(|c| c.plan(&vars, req.method(), req.headers()));
        // `$upstream_cache_status` in a response header: rendered once the cache has
        // answered, from a copy of the request head
        let late = route.late_response_headers.then(|| Saved {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        });
        drop(vars);
        let (mut resp, upstream) = match returned {
            Some(resp) => (resp, None),
            None => {
                for (name, value) in auth_headers {
                    req.headers_mut().insert(name, value);
                }
                if let Some(values) = request_values {
                    route.request_headers.apply(values, req.headers_mut(), true);
                }
                // An HTTP upstream gets the changed URI; gateways keep REQUEST_URI as
                // the client sent it and take $uri/$args as their vars.
                let http = matches!(route.content, route::Content::Proxy(_));
                if http && (at_uri.changed || route.upstream_path.is_some()) {
                    set_upstream_target(&mut req, route, path, args);
                }
                let src = Source {
                    site,
                    route_index: index,
                    route,
                    path,
                    args,
                    peer,
                    local: conn.local,
                    tls: conn.tls,
                    ssl: conn.tls_info.as_deref(),
                    host: host.cloned(),
                    hash_key,
                    captures: captures.as_ref(),
                    chosen,
                    timed: self.may_log(site),
                };
                match (&route.cache, cache_plan) {
                    (Some(c), Some(plan)) if on_upgrade.is_none() => {
                        portico_core::boxed(|| cache::serve(c, plan, req, &src)).await
                    }
                    _ => self.content(req, src, conn, on_upgrade).await,
                }
            }
        };
        // proxy_redirect default: the app's own address in a redirect points back here
        if let Some(server) = &upstream {
            if resp.status().is_redirection() || resp.headers().contains_key(header::REFRESH) {
                let base = format!(
                    "{}://{}",
                    if conn.tls { "https" } else { "http" },
                    redirect_host
                        .as_ref()
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or("")
                );
                route::rewrite_redirects(route, server, &base, resp.headers_mut());
            }
        }
        // proxy_cookie_*: the app's Set-Cookie as the client sees the site
        if let (Some(values), Some(_)) = (&cookie_values, &upstream) {
            cookies::apply(&route.cookies, values, resp.headers_mut());
        }
        // a static directory's 301 points at an absolute URL, as nginx's
        if matches!(route.content, route::Content::Static(_)) && resp.status().is_redirection() {
            let relative = resp
                .headers()
                .get(header::LOCATION)
                .filter(|l| l.as_bytes().starts_with(b"/"))
                .map(|l| l.as_bytes().to_vec());
            if let Some(loc) = relative {
                let server_name = site.server_names.first().map_or("", String::as_str);
                let abs = route::absolute(conn.tls, host, server_name, loc);
                if let Ok(v) = HeaderValue::from_bytes(&abs) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
            }
        }
        // nginx's X-Accel-* from the app: read, then never passed to the client
        let mut limit_rate = None;
        if upstream.is_some() {
            limit_rate = resp
                .headers()
                .get(X_ACCEL_LIMIT_RATE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|r| *r > 0);
        }
        // X-Accel-Redirect: the upstream hands the answer to another (usually
        // `internal`) route, as Django, Discourse and Mailu do for downloads
        if let (Some(target), Some((method, headers))) = (accel_target(&resp), accel) {
            let inner = Entry {
                depth: steps,
                ..Entry::internal(entry.keep_status)
            };
            let mut out = self
                .accel_redirect(&target, resp, &method, headers, inner, routes, at)
                .await;
            out.resp = hold(accel_filters(out.resp, limit_rate), held);
            return out;
        }
        if upstream.is_some() {
            resp = accel_filters(resp, limit_rate);
        }
        // an error page answers with the status it replaces
        if let Some(s) = entry.keep_status {
            if resp.status().as_u16() < 400 {
                *resp.status_mut() = s;
            }
        }
        // header filter: the route's response headers
        let response_values = match late {
            Some(saved) => {
                let status = resp.extensions().get::<cache::Status>().map(|s| s.0);
                let mut r = Request::new(body::InBody::Empty);
                *r.method_mut() = saved.method;
                *r.headers_mut() = saved.headers;
                let ctx = at.req(&r, &saved.uri);
                let mut vars = ctx.vars(path, args, captures.as_ref());
                vars.cache_status = status.map(portico_cache::CacheStatus::as_str);
                Some(route.response_headers.render(&vars))
            }
            None => response_values,
        };
        if let Some(values) = response_values {
            let set = route.response_headers.applies_to(resp.status());
            route
                .response_headers
                .apply(values, resp.headers_mut(), set);
        }
        // charset filter
        if let Some(c) = &route.charset {
            route::add_charset(resp.headers_mut(), c);
        }
        // body filter: compression
        if let Some((cfg, method, accept)) = compress_for {
            resp = compress::filter(cfg, &method, accept.as_ref(), resp);
        }
        if route.access_log.is_some() || log_pending.is_some() {
            resp.extensions_mut().insert(RouteLog {
                log: route_log.clone(),
                pending: log_pending,
            });
        }
        Outcome {
            resp: hold(resp, held),
            upstream,
            route: Some(index),
        }
    }

    /// Serves an upstream's X-Accel-Redirect: an internal GET (HEAD stays HEAD) of the
    /// URI it names (with its query), matched against the routes, internal ones
    /// included, served by whichever route takes it. The headers nginx keeps from the
    /// upstream's answer (Content-Type, Content-Disposition, Set-Cookie, Cache-Control,
    /// Expires, Accept-Ranges) override the new answer's.
    #[allow(clippy::too_many_arguments)]
    async fn accel_redirect(
        &self,
        target: &str,
        upstream_resp: Response<HttpBody>,
        method: &http::Method,
        headers: http::HeaderMap,
        entry: Entry,
        routes: &route::Routes,
        at: &Ctx<'_>,
    ) -> Outcome {
        let mut req = internal_request(method, headers);
        match target.parse::<http::Uri>() {
            Ok(u) => *req.uri_mut() = u,
            Err(e) => {
                tracing::error!(target, error = %e, "X-Accel-Redirect to an invalid URI: 500");
                return Outcome {
                    resp: error_response(StatusCode::INTERNAL_SERVER_ERROR),
                    upstream: None,
                    route: None,
                };
            }
        }
        let mut out = portico_core::boxed(|| self.run(req, entry, routes, at)).await;
        if out.resp.status().is_success() {
            let h = upstream_resp.headers();
            for name in [
                header::CONTENT_TYPE,
                header::CONTENT_DISPOSITION,
                header::CACHE_CONTROL,
                header::EXPIRES,
                header::ACCEPT_RANGES,
            ] {
                if let Some(v) = h.get(&name) {
                    out.resp.headers_mut().insert(name, v.clone());
                }
            }
            for v in h.get_all(header::SET_COOKIE) {
                out.resp.headers_mut().append(header::SET_COOKIE, v.clone());
            }
        }
        out
    }

    /// The route's rewrites, then its try_files, on the request where it is now.
    fn rewrite_phase(
        &self,
        route: &route::CompiledRoute,
        req: &Request<body::InBody>,
        uri: &http::Uri,
        at: &mut Internal,
        captures: Option<&vars::Captures>,
        on: &Ctx<'_>,
    ) -> Step {
        let site = on.site;
        let ctx = on.req(req, uri);
        for rw in &route.rewrites {
            let Some(caps) = vars::Captures::of(&rw.from, &at.path) else {
                continue;
            };
            let old_args = at
                .args
                .clone()
                .unwrap_or_else(|| uri.query().unwrap_or("").to_string());
            let target = ctx.render(&rw.to, &at.path, at.args.as_deref(), Some(&caps));
            use portico_config::RewriteFlag as F;
            let external = target.starts_with("http://") || target.starts_with("https://");
            if external || matches!(rw.flag, F::Redirect | F::Permanent) {
                let status = if rw.flag == F::Permanent { 301 } else { 302 };
                let (p, q) = split_target(&target, &old_args);
                let location = match q.or(Some(old_args)).filter(|q| !q.is_empty()) {
                    Some(q) => format!("{p}?{q}"),
                    None => p,
                };
                let ret = portico_config::ReturnConfig {
                    status,
                    location: Some(literal(&location)),
                    body: None,
                };
                let v = ctx.vars(&at.path, None, None);
                return Step::Answer(route::answer(&ret, &v));
            }
            let (p, q) = split_target(&target, &old_args);
            at.path = p.into();
            if q.is_some() {
                at.args = q;
            }
            at.changed = true;
            match rw.flag {
                F::Last => return Step::Again,
                F::Break => break,
                _ => {}
            }
        }
        let Some(tf) = &route.try_files else {
            return Step::Go;
        };
        for f in &tf.files {
            let candidate = ctx.render(f, &at.path, at.args.as_deref(), captures);
            let candidate = candidate.split('?').next().unwrap_or("");
            if !candidate.starts_with('/') || candidate.split('/').any(|s| s == "..") {
                continue;
            }
            let on_disk = static_files::join_root(&tf.root, candidate);
            let hit = if candidate.ends_with('/') {
                on_disk.is_dir()
            } else {
                on_disk.is_file()
            };
            if hit {
                // `$uri/` found for a path without its slash: left as it is, so the
                // static route answers 301 to the slashed path (as nginx does)
                let slash_only =
                    candidate.len() == at.path.len() + 1 && candidate.starts_with(&*at.path);
                if candidate != at.path && !slash_only {
                    at.path = candidate.to_string().into();
                    at.changed = true;
                }
                return Step::Go;
            }
        }
        match &tf.fallback {
            portico_config::Fallback::Status(code) => Step::Answer(error_response(
                StatusCode::from_u16(*code).unwrap_or(StatusCode::NOT_FOUND),
            )),
            portico_config::Fallback::Named(name) => match route_index(site, name) {
                Some(i) => {
                    at.named = Some(i);
                    Step::Again
                }
                None => Step::Answer(error_response(StatusCode::INTERNAL_SERVER_ERROR)),
            },
            portico_config::Fallback::Uri(t) => {
                let target = ctx.render(t, &at.path, at.args.as_deref(), captures);
                let (p, q) = match target.split_once('?') {
                    Some((p, q)) => (p.to_string(), Some(q.to_string())),
                    None => (target, None),
                };
                at.path = p.into();
                at.args = q.or(at.args.take());
                at.changed = true;
                Step::Again
            }
        }
    }

    /// The content phase: a static file, a WebSocket tunnel, or the request forwarded
    /// to an upstream over HTTP or a gateway.
    ///
    /// Each source's future is boxed, here and in `fetch`, `run` and `dispatch`: an async
    /// fn's state holds every future it awaits, so unboxed the request pipeline was a
    /// state machine of some hundred KB, copied level by level as it was built (memcpy
    /// was 30 % of a proxied GET's instructions) and kept by hyper for each connection's
    /// life. Boxed, `handle` is ~2 KB; the allocations cost less than the copies
    /// (`bench/instructions.sh`, docs/performance.md).
    async fn content(
        &self,
        req: Request<body::InBody>,
        src: Source<'_>,
        conn: &ConnState,
        on_upgrade: Option<ClientUpgrade>,
    ) -> (Response<HttpBody>, proxy::UpstreamAddr) {
        let route = src.route;
        if let route::Content::Static(cfg) = &route.content {
            let resp = portico_core::boxed(|| {
                static_files::serve(
                    cfg,
                    req.method(),
                    src.path,
                    req.uri().query(),
                    req.headers(),
                )
            })
            .await;
            return (resp, None);
        }
        let (route::Content::Proxy(up), Some(on_upgrade)) = (&route.content, on_upgrade) else {
            return portico_core::boxed(|| fetch(req, src)).await;
        };
        let up = src.chosen.as_ref().unwrap_or(up);
        let (parts, _body) = req.into_parts();
        let client = src.client_side();
        let limits = portico_websocket::TunnelLimits {
            idle: src.site.limits.websocket_idle_timeout,
            max_lifetime: src.site.limits.websocket_max_lifetime,
            drain: self
                .shared
                .drain
                .saturating_sub(std::time::Duration::from_millis(500)),
        };
        let (resp, addr, tunnel) = portico_core::boxed(|| {
            proxy::forward_upgrade(
                up,
                parts,
                &client,
                on_upgrade,
                limits,
                conn.shutdown.clone(),
            )
        })
        .await;
        if let Some(t) = tunnel {
            let handle = tokio::spawn(t);
            conn.extra()
                .tunnels
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(handle);
        }
        (resp, addr)
    }
}

/// Where the content phase takes a request: the route and the facts of the request
/// its upstream (HTTP, uwsgi or FastCGI) needs.
struct Source<'a> {
    site: &'a Arc<Site>,
    route_index: usize,
    route: &'a route::CompiledRoute,
    path: &'a str,
    args: Option<&'a str>,
    peer: &'a Peer,
    local: Option<std::net::SocketAddr>,
    tls: bool,
    ssl: Option<&'a portico_core::TlsInfo>,
    host: Option<HeaderValue>,
    hash_key: Option<Vec<u8>>,
    captures: Option<&'a vars::Captures>,
    chosen: Option<Arc<HttpUpstream>>,
    /// An access log may write this request: an upstream's answer is timed.
    timed: bool,
}

impl Source<'_> {
    fn client_side(&self) -> proxy::ClientSide {
        proxy::ClientSide {
            peer_ip: self.peer.ip,
            peer_value: self.peer.value.clone(),
            tls: self.tls,
            host: self
                .host
                .clone()
                .or_else(|| default_host(self.site, self.local)),
            hash_key: self.hash_key.clone(),
        }
    }

    /// The same source, owned (for a fetch that outlives the request).
    fn to_owned(&self) -> OwnedSource {
        OwnedSource {
            site: Arc::clone(self.site),
            route_index: self.route_index,
            path: self.path.to_string(),
            args: self.args.map(str::to_string),
            peer: self.peer.clone(),
            local: self.local,
            tls: self.tls,
            ssl: self.ssl.map(|t| Arc::new(t.clone())),
            host: self.host.clone(),
            hash_key: self.hash_key.clone(),
            captures: self.captures.cloned(),
            chosen: self.chosen.clone(),
            timed: self.timed,
        }
    }
}

struct OwnedSource {
    site: Arc<Site>,
    route_index: usize,
    path: String,
    args: Option<String>,
    peer: Peer,
    local: Option<std::net::SocketAddr>,
    tls: bool,
    ssl: Option<Arc<portico_core::TlsInfo>>,
    host: Option<HeaderValue>,
    hash_key: Option<Vec<u8>>,
    captures: Option<vars::Captures>,
    chosen: Option<Arc<HttpUpstream>>,
    timed: bool,
}

impl OwnedSource {
    async fn fetch(self, req: Request<body::InBody>) -> (Response<HttpBody>, proxy::UpstreamAddr) {
        let SiteKind::Routes(routes) = &self.site.kind else {
            return (error_response(StatusCode::NOT_FOUND), None);
        };
        let Some(route) = routes.routes.get(self.route_index) else {
            return (error_response(StatusCode::NOT_FOUND), None);
        };
        let src = Source {
            site: &self.site,
            route_index: self.route_index,
            route,
            path: &self.path,
            args: self.args.as_deref(),
            peer: &self.peer,
            local: self.local,
            tls: self.tls,
            ssl: self.ssl.as_deref(),
            host: self.host.clone(),
            hash_key: self.hash_key.clone(),
            captures: self.captures.as_ref(),
            chosen: self.chosen.clone(),
            timed: self.timed,
        };
        fetch(req, src).await
    }
}

impl cache::Fetch for Source<'_> {
    async fn fetch(&self, req: Request<body::InBody>) -> (Response<HttpBody>, proxy::UpstreamAddr) {
        let src = Source {
            host: self.host.clone(),
            hash_key: self.hash_key.clone(),
            chosen: self.chosen.clone(),
            ..*self
        };
        fetch(req, src).await
    }

    fn detach(&self) -> Option<cache::Detached> {
        let owned = self.to_owned();
        Some(Box::new(move |req| {
            portico_core::boxed(|| owned.fetch(req))
        }))
    }
}

/// Sends a request to the route's upstream, over HTTP or a gateway (uwsgi, FastCGI);
/// an answer from one carries its [`body::UpstreamTiming`] (for the access log), timed
/// from when the request goes to the upstream (after a buffered body was read).
async fn fetch(
    req: Request<body::InBody>,
    src: Source<'_>,
) -> (Response<HttpBody>, proxy::UpstreamAddr) {
    let (route, site) = (src.route, src.site);
    let limit = route.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if limit > 0 && declared.is_some_and(|n| n > limit) {
        return (error_response(StatusCode::PAYLOAD_TOO_LARGE), None);
    }
    match &route.content {
        route::Content::Gateway(g) => {
            let (parts, body) = req.into_parts();
            let client = gateway::Client {
                path: src.path,
                host: src.host.as_ref(),
                peer: src.peer.addr,
                local: src.local,
                tls: src.tls,
                ssl: src.ssl,
                server_name: site.server_names.first().map_or("", String::as_str),
                hash_key: src.hash_key,
                max_body_bytes: limit,
                body_timeout: site.limits.body_timeout,
                underscores: site.limits.underscores_in_headers,
                captures: src.captures,
                args: src.args,
                maps: &site.maps,
                timed: src.timed,
            };
            portico_core::boxed(|| gateway::forward(g, parts, body, client)).await
        }
        route::Content::Static(_) | route::Content::Return(_) | route::Content::Empty => {
            (error_response(StatusCode::NOT_FOUND), None)
        }
        route::Content::Proxy(up) => {
            let up = src.chosen.as_ref().unwrap_or(up);
            let client = src.client_side();
            let (mut parts, body) = req.into_parts();
            let body = if body.is_end_stream() {
                body::empty()
            } else if route.request_buffering {
                // The whole body first, then an upstream connection: a slow client
                // holds no app worker (nginx's proxy_request_buffering on).
                let limited = ClientBody::new(body, limit, site.limits.body_timeout).boxed();
                match portico_core::boxed(|| spool::Spool::read(limited)).await {
                    Ok(s) => {
                        parts.headers.remove(header::TRANSFER_ENCODING);
                        parts.headers.insert(header::CONTENT_LENGTH, s.len.into());
                        s.into_body()
                    }
                    Err(status) => return (error_response(status), None),
                }
            } else {
                ClientBody::new(body, limit, site.limits.body_timeout).boxed()
            };
            // timed only for a log: the extension costs an allocation or three
            let started = src.timed.then(Instant::now);
            let (resp, addr) = portico_core::boxed(|| {
                proxy::forward(up, Request::from_parts(parts, body), &client)
            })
            .await;
            match (started, &addr) {
                (Some(started), Some(_)) => (body::UpstreamTiming::attach(resp, started), addr),
                _ => (resp, addr),
            }
        }
    }
}

/// The facts of one request the template renderer needs, apart from where routing has
/// taken it (`$uri`, `$args`, captures).
struct ReqCtx<'a> {
    req: &'a Request<body::InBody>,
    /// The URI as the client sent it (`$request_uri`).
    uri: &'a http::Uri,
    site: &'a Site,
    conn: &'a ConnState,
    peer: &'a Peer,
    host: Option<&'a HeaderValue>,
}

impl<'a> ReqCtx<'a> {
    fn vars<'b>(
        &'b self,
        path: &'b str,
        args: Option<&'b str>,
        captures: Option<&'b vars::Captures>,
    ) -> vars::Vars<'b> {
        vars::Vars {
            method: self.req.method(),
            uri: self.uri,
            path,
            version: self.req.version(),
            headers: self.req.headers(),
            host: self.host,
            peer: self.peer.addr,
            local: self.conn.local,
            tls: self.conn.tls,
            server_name: self.site.server_names.first().map_or("", String::as_str),
            content_length: None,
            document_root: "",
            script_name: std::borrow::Cow::Borrowed(""),
            path_info: "",
            underscores: self.site.limits.underscores_in_headers,
            captures,
            args,
            maps: Some(&self.site.maps),
            cache_status: None,
            ssl: self.conn.tls_info.as_deref(),
        }
    }

    fn render(
        &self,
        t: &portico_config::KeyTemplate,
        path: &str,
        args: Option<&str>,
        captures: Option<&vars::Captures>,
    ) -> String {
        let mut out = Vec::with_capacity(64);
        self.vars(path, args, captures).render(t, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Where a request is served: the site (listener), the connection, the client, the
/// Host it asked for. Shared by the client's request and the internal ones it leads to.
struct Ctx<'a> {
    site: &'a Arc<Site>,
    conn: &'a ConnState,
    peer: &'a Peer,
    host: Option<&'a HeaderValue>,
}

impl<'a> Ctx<'a> {
    fn req<'b>(&'b self, req: &'b Request<body::InBody>, uri: &'b http::Uri) -> ReqCtx<'b> {
        ReqCtx {
            req,
            uri,
            site: self.site,
            conn: self.conn,
            peer: self.peer,
            host: self.host,
        }
    }
}

/// How a request enters the pipeline.
struct Entry {
    /// An internal request (error page, X-Accel-Redirect): `internal` routes take it.
    internal: bool,
    /// Straight to this route (`@name`).
    named: Option<usize>,
    /// Internal redirects taken before this one.
    depth: usize,
    /// An error page's: the status it answers with.
    keep_status: Option<StatusCode>,
}

impl Entry {
    fn client() -> Self {
        Self {
            internal: false,
            named: None,
            depth: 0,
            keep_status: None,
        }
    }

    fn internal(keep_status: Option<StatusCode>) -> Self {
        Self {
            internal: true,
            named: None,
            depth: 1,
            keep_status,
        }
    }
}

/// What the pipeline answered, from which upstream, on which route (whose error pages
/// apply; none: the listener's).
/// The access log a routed request is written to (the route's own, or the global one
/// with a template's request-time part), carried to `handle` in the response.
#[derive(Clone)]
struct RouteLog {
    log: AccessLog,
    pending: Option<Arc<access_log::Pending>>,
}

struct Outcome {
    resp: Response<HttpBody>,
    upstream: proxy::UpstreamAddr,
    route: Option<usize>,
}

/// The client's request as an error page needs it after the request has gone on.
struct Saved {
    method: http::Method,
    uri: http::Uri,
    headers: http::HeaderMap,
}

/// An internal GET (HEAD stays HEAD) with no body, carrying the client's headers but
/// those of a body or an upgrade.
fn internal_request(method: &http::Method, mut headers: http::HeaderMap) -> Request<body::InBody> {
    for name in [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::CONTENT_TYPE,
        header::EXPECT,
        header::UPGRADE,
        header::CONNECTION,
    ] {
        headers.remove(name);
    }
    let mut req = Request::new(body::InBody::Empty);
    *req.method_mut() = if method == http::Method::HEAD {
        http::Method::HEAD
    } else {
        http::Method::GET
    };
    *req.headers_mut() = headers;
    req
}

/// Removes what would make an error page's request conditional or partial: the page
/// is sent whole, with the status it replaces (nginx's not-modified and range filters
/// skip error statuses).
fn unconditional(mut headers: http::HeaderMap) -> http::HeaderMap {
    for name in [
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
        header::RANGE,
    ] {
        headers.remove(name);
    }
    headers
}

/// The client of one request: the connection's peer, or with `real_ip` the address a
/// trusted proxy in front reported.
#[derive(Clone)]
struct Peer {
    addr: Option<std::net::SocketAddr>,
    ip: Option<IpAddr>,
    /// `ip` as a header value (X-Forwarded-For).
    value: Option<HeaderValue>,
}

impl Peer {
    fn of(conn: &ConnState, site: &Site, headers: &http::HeaderMap) -> Self {
        let own = || Peer {
            addr: conn.peer,
            ip: conn.peer.map(|p| p.ip()),
            value: conn.peer_value.clone(),
        };
        let (Some(cfg), Some(peer)) = (&site.real_ip, conn.peer) else {
            return own();
        };
        let Some(name) = &cfg.header else {
            return own(); // proxy_protocol: the core already took the PROXY address
        };
        match real_ip(cfg, name, peer.ip(), headers) {
            Some(ip) => Peer {
                addr: Some(std::net::SocketAddr::new(ip, peer.port())),
                ip: Some(ip),
                value: HeaderValue::from_str(&ip.to_string()).ok(),
            },
            None => own(),
        }
    }
}

/// nginx's realip module: when `peer` is trusted, the client is read from the header —
/// from the right, past every trusted address (`recursive`), else the last one. `None`
/// keeps the peer (not trusted, no header, or nothing usable in it).
fn real_ip(
    cfg: &portico_config::RealIp,
    header: &str,
    peer: IpAddr,
    headers: &http::HeaderMap,
) -> Option<IpAddr> {
    let trusted = |ip: IpAddr| cfg.from.iter().any(|c| c.contains(ip));
    if !trusted(peer) {
        return None;
    }
    let values: Vec<&str> = headers
        .get_all(header)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let mut hops = values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect::<Vec<_>>()
        .into_iter()
        .rev();
    let mut found = None;
    for hop in hops.by_ref() {
        let ip: IpAddr = hop.parse().ok()?;
        found = Some(ip);
        if !cfg.recursive || !trusted(ip) {
            break;
        }
    }
    found
}

const X_ACCEL_REDIRECT: header::HeaderName = header::HeaderName::from_static("x-accel-redirect");
const X_ACCEL_LIMIT_RATE: header::HeaderName =
    header::HeaderName::from_static("x-accel-limit-rate");

/// The URI of an upstream's `X-Accel-Redirect` answer, if it sent one.
fn accel_target(resp: &Response<HttpBody>) -> Option<String> {
    let v = resp.headers().get(X_ACCEL_REDIRECT)?.to_str().ok()?;
    v.starts_with('/').then(|| v.to_string())
}

/// Keeps `guards` (conn-limit places) until the answer's body is sent or dropped.
fn hold(
    resp: Response<HttpBody>,
    guards: Vec<portico_limits::conn::ConnGuard>,
) -> Response<HttpBody> {
    if guards.is_empty() {
        return resp;
    }
    resp.map(|b| body::Holding::new(b, guards).boxed())
}

/// Applies an app's `X-Accel-Limit-Rate` (bytes per second to the client) and removes
/// every `X-Accel-*` header, as nginx does. X-Accel-Buffering needs nothing (Portico
/// streams either way); X-Accel-Charset only recodes in nginx (with charset maps,
/// which Portico has not); X-Accel-Expires is not read (no cache yet).
fn accel_filters(mut resp: Response<HttpBody>, limit_rate: Option<u64>) -> Response<HttpBody> {
    let h = resp.headers_mut();
    if h.keys().any(|k| k.as_str().starts_with("x-accel-")) {
        let names: Vec<header::HeaderName> = h
            .keys()
            .filter(|k| k.as_str().starts_with("x-accel-"))
            .cloned()
            .collect();
        for n in names {
            h.remove(n);
        }
    }
    match limit_rate {
        Some(rate) => {
            // paced: not sent past the limit with sendfile
            resp.extensions_mut().remove::<sendfile::Sendfile>();
            resp.map(|b| body::RateLimited::new(b, rate).boxed())
        }
        None => resp,
    }
}

/// The request headers a static answer to an X-Accel-Redirect looks at (conditional and
/// range requests), kept before the request goes upstream.
fn accel_headers(h: &http::HeaderMap) -> http::HeaderMap {
    const WANTED: [header::HeaderName; 4] = [
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::RANGE,
        header::IF_RANGE,
    ];
    // one pass of cheap name comparisons: most requests carry none of them
    let mut out = http::HeaderMap::new();
    for (k, v) in h {
        if WANTED.contains(k) && !out.contains_key(k) {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// A template that is only `text`.
fn literal(text: &str) -> portico_config::KeyTemplate {
    portico_config::KeyTemplate {
        source: text.to_string(),
        parts: vec![portico_config::KeyPart::Literal(text.to_string())],
    }
}

/// The index of the route named `name` in `site`.
fn route_index(site: &Site, name: &str) -> Option<usize> {
    match &site.kind {
        SiteKind::Routes(r) => r.router.named(name),
        _ => None,
    }
}

/// How many internal redirects (rewrite `last`, try_files fallbacks, index files) one
/// request may take before it is a 500, as nginx's limit of 10.
const MAX_INTERNAL: usize = 10;

/// Where a request is while routes are found: its `$uri` and `$args` as rewrites left
/// them, and a named route to go to.
struct Internal<'a> {
    /// Borrowed from the request until a rewrite changes it (no copy on the hot path).
    path: std::borrow::Cow<'a, str>,
    /// `Some` once a rewrite or try_files set the query.
    args: Option<String>,
    /// The URI is not the client's any more: upstreams get the new one.
    changed: bool,
    named: Option<usize>,
}

/// What the rewrite phase decided.
enum Step {
    /// Go on in this route.
    Go,
    /// Find the route again (a `last` rewrite, a try_files fallback).
    Again,
    Answer(Response<HttpBody>),
}

/// The request target an upstream gets after a rewrite (nginx passes the changed,
/// normalized URI, encoded) or with `upstream_path` (the matched prefix replaced).
fn set_upstream_target<B>(
    req: &mut Request<B>,
    route: &route::CompiledRoute,
    path: &str,
    args: Option<&str>,
) {
    let mut target = match &route.upstream_path {
        Some((prefix, to)) if path.starts_with(prefix.as_str()) => {
            format!("{to}{}", path::encode(&path[prefix.len()..]))
        }
        Some((_, to)) => to.clone(),
        None => path::encode(path),
    };
    let query = args.or(req.uri().query());
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        target.push('?');
        target.push_str(q);
    }
    match target.parse::<http::Uri>() {
        Ok(u) => *req.uri_mut() = u,
        Err(e) => {
            tracing::warn!(%target, error = %e, "the rewritten URI is not a valid request target")
        }
    }
}

/// Splits a rendered rewrite or try_files target into path and query: the new query
/// is the target's, followed by the request's unless the target ends in `?` (nginx).
fn split_target(target: &str, old_args: &str) -> (String, Option<String>) {
    match target.split_once('?') {
        None => (target.to_string(), None),
        Some((p, "")) => (p.to_string(), Some(String::new())),
        Some((p, q)) if target.ends_with('?') => {
            (p.to_string(), Some(q.trim_end_matches('?').to_string()))
        }
        Some((p, q)) if old_args.is_empty() => (p.to_string(), Some(q.to_string())),
        Some((p, q)) => (p.to_string(), Some(format!("{q}&{old_args}"))),
    }
}

/// Removes request headers whose names contain `_` (nginx's `underscores_in_headers
/// off`): `X_Forwarded_Proto` must not reach an app that folds `_` into `-` and takes it
/// for `X-Forwarded-Proto`.
fn drop_underscored(h: &mut http::HeaderMap) {
    // a byte scan: `str::contains` sets up a searcher per name
    let underscored = |k: &header::HeaderName| k.as_str().bytes().any(|b| b == b'_');
    if !h.keys().any(underscored) {
        return;
    }
    let names: Vec<header::HeaderName> = h.keys().filter(|k| underscored(k)).cloned().collect();
    for n in names {
        tracing::debug!(header = %n, "request header with an underscore dropped (underscores_in_headers)");
        h.remove(n);
    }
}

/// A header's value as a log line takes it (bytes that are not UTF-8 as U+FFFD; no copy
/// when they are).
fn log_text(v: &HeaderValue) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(v.as_bytes())
}

struct LogFields {
    /// When the request came (`$time_local`): the clock is read only for a log.
    time: SystemTime,
    method: http::Method,
    uri: http::Uri,
    version: &'static str,
    referer: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    host: Option<HeaderValue>,
}
