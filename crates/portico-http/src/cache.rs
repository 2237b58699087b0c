//! The response cache in the request pipeline: the adapter between a route's `cache`
//! settings and `portico_cache`. A cached object is a content source like an upstream:
//! [`serve`] stands where the content phase fetches from the upstream (HTTP, uwsgi or
//! FastCGI alike, through one `fetch`), after the access phase (a cached page never
//! bypasses allow/deny, auth or limits) and before the response filters (redirect and
//! cookie rewriting, header rules, charset, compression), which apply to hits as to
//! fresh answers. What is stored is the upstream's answer as it came, in its own
//! encoding.
//!
//! nginx's choices where RFC 9111 leaves room: the client's Cache-Control is not
//! obeyed (a client cannot force upstream work); the client's conditional and range
//! headers are not sent upstream (the cache asks for the whole object, then answers
//! them itself); a HEAD miss goes upstream as HEAD and is not stored.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use portico_cache::{freshness, CacheStatus, Filler, Lock, Meta, Object, Zone};

use crate::body::{self, HttpBody};
use crate::compress;
use crate::conditional::{not_modified, requested_range, RangeResult};
use crate::errors::{self, error_response};
use crate::proxy::UpstreamAddr;
use crate::vars::Vars;

/// A route's cache settings, compiled.
pub(crate) struct CompiledCache {
    pub zone: Arc<Zone>,
    pub cfg: portico_config::RouteCache,
    /// What a fetch needs, shared with background refreshes.
    settings: Arc<Settings>,
    status_header: Option<HeaderName>,
    methods: Vec<Method>,
    /// The route's compression: hits are compressed once per stored object.
    compress: Option<portico_config::Compress>,
}

impl CompiledCache {
    pub fn compile(
        cfg: &portico_config::RouteCache,
        compress: Option<&portico_config::Compress>,
        zones: &portico_cache::Zones,
    ) -> Result<Self, String> {
        let zone = zones
            .zones
            .get(&cfg.zone)
            .cloned()
            .ok_or_else(|| format!("no cache zone named {:?}", cfg.zone))?;
        Ok(Self {
            zone,
            settings: Arc::new(Settings {
                policy: portico_cache::Policy {
                    valid: cfg.valid.clone(),
                    store_with_cookies: cfg.store_with_cookies,
                },
                use_stale: cfg.use_stale.clone(),
                max_object: cfg.max_object,
            }),
            status_header: match &cfg.status_header {
                Some(h) => Some(HeaderName::from_bytes(h.as_bytes()).map_err(|e| e.to_string())?),
                None => None,
            },
            methods: cfg
                .methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                .collect(),
            cfg: cfg.clone(),
            compress: compress.cloned(),
        })
    }

    /// What the cache makes of this request, rendered while the request's variables
    /// are at hand; `None` when the cache has no part in it (a method it does not
    /// store).
    pub fn plan(&self, vars: &Vars<'_>, method: &Method, headers: &HeaderMap) -> Option<Plan> {
        if !self.methods.contains(method) {
            return None;
        }
        let mut key = Vec::with_capacity(96);
        vars.render(&self.cfg.key, &mut key);
        let any = |ts: &[portico_config::KeyTemplate]| {
            ts.iter().any(|t| {
                let mut v = Vec::new();
                vars.render(t, &mut v);
                !v.is_empty() && v != b"0"
            })
        };
        let authorized = headers.contains_key(header::AUTHORIZATION) && !self.cfg.store_authorized;
        Some(Plan {
            // the rendered bytes as they are (one copy fewer) unless they are not UTF-8
            key: String::from_utf8(key)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            bypass: authorized || any(&self.cfg.bypass),
            no_store: any(&self.cfg.no_store),
        })
    }
}

/// One request's dealings with the cache.
pub(crate) struct Plan {
    pub key: String,
    /// Not looked up, not stored.
    bypass: bool,
    /// Looked up, not stored.
    no_store: bool,
}

/// The cache status of an answer, kept on the response for the filters after the
/// content phase (`$upstream_cache_status`).
#[derive(Clone, Copy)]
pub(crate) struct Status(pub CacheStatus);

fn now_ms() -> u64 {
    freshness::unix_ms(std::time::SystemTime::now())
}

/// A fetch that outlives the request (a background refresh).
pub(crate) type BoxFetch =
    std::pin::Pin<Box<dyn std::future::Future<Output = (Response<HttpBody>, UpstreamAddr)> + Send>>;

/// A fetch, owned.
pub(crate) type Detached = Box<dyn FnOnce(Request<body::InBody>) -> BoxFetch + Send>;

/// Fetches from the upstream: the content phase without the cache.
pub(crate) trait Fetch {
    async fn fetch(&self, req: Request<body::InBody>) -> (Response<HttpBody>, UpstreamAddr);

    /// The same fetch, owned, for a refresh that goes on after the client's answer
    /// (`background_update`).
    fn detach(&self) -> Option<Detached>;
}

/// The content phase of a request on a cached route.
pub(crate) async fn serve(
    c: &CompiledCache,
    plan: Plan,
    req: Request<body::InBody>,
    source: &impl Fetch,
) -> (Response<HttpBody>, UpstreamAddr) {
    let zone = &c.zone;
    if plan.bypass {
        zone.stats.count(CacheStatus::Bypass);
        // boxed, as the misses below: a hit's future is then the size of a hit
        let (resp, up) = portico_core::boxed(|| source.fetch(req)).await;
        return (c.mark(resp, CacheStatus::Bypass), up);
    }
    let found = zone.lookup(&plan.key, req.headers()).await;
    let now = now_ms();
    let Some(stale) = found else {
        return portico_core::boxed(|| miss(c, plan, req, source)).await;
    };
    if stale.meta.times.is_fresh(now) {
        return c.hit(&stale, &req, CacheStatus::Hit).await;
    }
    // stale: served while someone else refreshes it, or refreshed by this request
    let t = &stale.meta.times;
    let may_update =
        !t.must_revalidate && (c.cfg.use_stale.updating || t.may_serve_while_revalidating(now));
    if may_update && zone.is_filling(&plan.key) {
        return c.hit(&stale, &req, CacheStatus::Updating).await;
    }
    if may_update && c.cfg.background_update {
        if let (Lock::Leader(guard), Some(detached)) = (zone.lock(&plan.key), source.detach()) {
            let refresh = refresh_request(&req, Some(&stale));
            let (c2, key, stale2) = (Arc::clone(zone), plan.key.clone(), Arc::clone(&stale));
            let settings = Arc::clone(&c.settings);
            let headers = req.headers().clone();
            tokio::spawn(async move {
                let fetched = fetch_and_store(
                    &settings,
                    &c2,
                    &key,
                    false,
                    refresh,
                    &headers,
                    Some(guard),
                    Some(stale2),
                    detached,
                )
                .await;
                if let Fetched::Stored((resp, _)) = fetched {
                    // drain the body into the cache: nobody else reads it
                    let mut body = resp.into_body();
                    while let Some(Ok(_)) = body.frame().await {}
                }
            });
        }
        return c.hit(&stale, &req, CacheStatus::Updating).await;
    }
    let mut guard = None;
    if c.cfg.lock {
        match zone.lock(&plan.key) {
            Lock::Leader(g) => guard = Some(g),
            Lock::Wait(rx) => {
                if may_update {
                    return c.hit(&stale, &req, CacheStatus::Updating).await;
                }
                portico_cache::wait_fill(rx, c.cfg.lock_timeout).await;
                if let Some(o) = zone.lookup(&plan.key, req.headers()).await {
                    if o.meta.times.is_fresh(now_ms()) {
                        return c.hit(&o, &req, CacheStatus::Hit).await;
                    }
                }
            }
        }
    }
    portico_core::boxed(|| go_upstream(c, plan, req, source, guard, Some(stale))).await
}

async fn miss(
    c: &CompiledCache,
    plan: Plan,
    req: Request<body::InBody>,
    source: &impl Fetch,
) -> (Response<HttpBody>, UpstreamAddr) {
    let mut guard = None;
    if c.cfg.lock && req.method() != Method::HEAD {
        match c.zone.lock(&plan.key) {
            Lock::Leader(g) => guard = Some(g),
            Lock::Wait(rx) => {
                // the one fetching it answers for all: wait (bounded), then look again;
                // still nothing (not storable, or too slow): fetch without the lock
                portico_cache::wait_fill(rx, c.cfg.lock_timeout).await;
                if let Some(o) = c.zone.lookup(&plan.key, req.headers()).await {
                    if o.meta.times.is_fresh(now_ms()) {
                        return c.hit(&o, &req, CacheStatus::Hit).await;
                    }
                }
            }
        }
    }
    go_upstream(c, plan, req, source, guard, None).await
}

/// A refresh or miss answered by the upstream, on behalf of the client.
async fn go_upstream(
    c: &CompiledCache,
    plan: Plan,
    req: Request<body::InBody>,
    source: &impl Fetch,
    guard: Option<portico_cache::FillGuard>,
    stale: Option<Arc<Object>>,
) -> (Response<HttpBody>, UpstreamAddr) {
    let miss_status = if stale.is_some() {
        CacheStatus::Expired
    } else {
        CacheStatus::Miss
    };
    let client = req.headers().clone();
    let method = req.method().clone();
    let (parts, body) = req.into_parts();
    let mut upstream_req = Request::from_parts(parts, body);
    strip_conditionals(upstream_req.headers_mut());
    if let Some(o) = &stale {
        add_validators(upstream_req.headers_mut(), o);
    }
    let head_only = method == Method::HEAD;
    let fetched = fetch_and_store(
        &c.settings,
        &c.zone,
        &plan.key,
        plan.no_store || head_only,
        upstream_req,
        &client,
        guard,
        stale.clone(),
        |r| source.fetch(r),
    )
    .await;
    let client_req = ClientHead {
        method: &method,
        headers: &client,
    };
    match fetched {
        Fetched::Revalidated(o) => c.stored(&o, &client_req, CacheStatus::Revalidated).await,
        Fetched::UseStale(o) => c.stored(&o, &client_req, CacheStatus::Stale).await,
        Fetched::Stored((resp, up)) | Fetched::Passed((resp, up)) => {
            c.zone.stats.count(miss_status);
            let resp = answer_fresh(resp, &client_req);
            (c.mark(resp, miss_status), up)
        }
    }
}

/// What a cache fetch needs of the route's settings (a background refresh outlives
/// the request: it holds them by `Arc`).
struct Settings {
    policy: portico_cache::Policy,
    use_stale: portico_config::UseStale,
    max_object: u64,
}

enum Fetched {
    /// The upstream said 304: the stored object, refreshed.
    Revalidated(Arc<Object>),
    /// The upstream failed and the stale object may stand in.
    UseStale(Arc<Object>),
    /// The upstream's answer, its body going into the cache as it is read.
    Stored((Response<HttpBody>, UpstreamAddr)),
    /// The upstream's answer, not stored.
    Passed((Response<HttpBody>, UpstreamAddr)),
}

#[allow(clippy::too_many_arguments)]
async fn fetch_and_store<F, Fut>(
    s: &Settings,
    zone: &Arc<Zone>,
    key: &str,
    no_store: bool,
    req: Request<body::InBody>,
    client: &HeaderMap,
    guard: Option<portico_cache::FillGuard>,
    stale: Option<Arc<Object>>,
    fetch: F,
) -> Fetched
where
    F: FnOnce(Request<body::InBody>) -> Fut,
    Fut: std::future::Future<Output = (Response<HttpBody>, UpstreamAddr)>,
{
    let request_ms = now_ms();
    let (resp, up) = fetch(req).await;
    let response_ms = now_ms();
    let status = resp.status();
    let own = errors::is_own(&resp);
    if let Some(o) = &stale {
        if status == StatusCode::NOT_MODIFIED && !own {
            let mut meta = o.meta.clone();
            freshness::refresh_headers(&mut meta.headers, resp.headers());
            return match freshness::storable(
                &s.policy,
                meta.status,
                &meta.headers,
                request_ms,
                response_ms,
            ) {
                Ok(times) => {
                    meta.times = times;
                    let body = o.body.clone();
                    let refreshed = zone.insert(Object { meta, body });
                    drop(guard);
                    Fetched::Revalidated(refreshed)
                }
                Err(_) => {
                    zone.purge_key(key);
                    Fetched::Revalidated(Arc::new(Object {
                        meta,
                        body: o.body.clone(),
                    }))
                }
            };
        }
        let allowed = if own {
            (s.use_stale.error
                && matches!(
                    status,
                    StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
                ))
                || (status == StatusCode::GATEWAY_TIMEOUT && s.use_stale.timeout)
        } else {
            s.use_stale.statuses.contains(&status.as_u16())
        };
        let t = &o.meta.times;
        let error_like = status.is_server_error();
        if !t.must_revalidate && (allowed || (error_like && t.may_serve_on_error(response_ms))) {
            return Fetched::UseStale(Arc::clone(o));
        }
    }
    if no_store || own || resp.headers().contains_key("x-accel-redirect") {
        return Fetched::Passed((resp, up));
    }
    let times = match freshness::storable(
        &s.policy,
        status.as_u16(),
        resp.headers(),
        request_ms,
        response_ms,
    ) {
        Ok(t) => t,
        Err(why) => {
            tracing::debug!(key, ?why, "cache: not stored");
            return Fetched::Passed((resp, up));
        }
    };
    let names = portico_cache::vary_names(resp.headers());
    let vary = names
        .iter()
        .map(|n| (n.clone(), portico_cache::vary_value(client, n)))
        .collect();
    let expected = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let meta = Meta {
        key: key.to_string(),
        status: status.as_u16(),
        headers: stored_headers(resp.headers()),
        times,
        vary,
        upstream: up.as_deref().map(str::to_string),
    };
    match Filler::new(Arc::clone(zone), meta, expected, s.max_object, guard) {
        Some(filler) => {
            let (parts, body) = resp.into_parts();
            let body = body::Filling::new(body, filler).boxed();
            Fetched::Stored((Response::from_parts(parts, body), up))
        }
        None => Fetched::Passed((resp, up)),
    }
}

/// The upstream's headers as stored: all but the per-answer ones a hit makes anew.
fn stored_headers(h: &HeaderMap) -> HeaderMap {
    let mut out = freshness::owned_headers(h);
    for name in [
        header::CONTENT_LENGTH,
        header::AGE,
        header::TRANSFER_ENCODING,
    ] {
        out.remove(name);
    }
    out.remove("x-accel-expires");
    out
}

/// The client's conditional and range headers are the cache's to answer.
fn strip_conditionals(h: &mut HeaderMap) {
    for name in [
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_MATCH,
        header::IF_UNMODIFIED_SINCE,
        header::RANGE,
        header::IF_RANGE,
    ] {
        h.remove(name);
    }
}

/// Revalidation: the stored object's validators.
fn add_validators(h: &mut HeaderMap, o: &Object) {
    if let Some(etag) = o.meta.headers.get(header::ETAG) {
        h.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(lm) = o.meta.headers.get(header::LAST_MODIFIED) {
        h.insert(header::IF_MODIFIED_SINCE, lm.clone());
    }
}

/// A GET for a background refresh: the client's request head, unconditional but for
/// the stored object's validators, without a body.
fn refresh_request(req: &Request<body::InBody>, stale: Option<&Object>) -> Request<body::InBody> {
    let mut r = Request::new(body::InBody::Empty);
    *r.method_mut() = Method::GET;
    *r.uri_mut() = req.uri().clone();
    *r.version_mut() = req.version();
    let mut h = req.headers().clone();
    for name in [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::EXPECT,
    ] {
        h.remove(name);
    }
    strip_conditionals(&mut h);
    if let Some(o) = stale {
        add_validators(&mut h, o);
    }
    *r.headers_mut() = h;
    r
}

struct ClientHead<'a> {
    method: &'a Method,
    headers: &'a HeaderMap,
}

/// The client's conditionals against an answer just fetched (whose validators are
/// the upstream's): a match is a 304. The body still goes into the cache, read in the
/// background.
fn answer_fresh(resp: Response<HttpBody>, client: &ClientHead<'_>) -> Response<HttpBody> {
    if resp.status() != StatusCode::OK || errors::is_own(&resp) {
        return resp;
    }
    let h = resp.headers();
    let etag = h.get(header::ETAG).and_then(|v| v.to_str().ok());
    let lm = h
        .get(header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .map(|t| freshness::unix_ms(t) / 1000);
    if !not_modified(client.headers, etag, lm) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    tokio::spawn(async move {
        let mut body = body;
        while let Some(Ok(_)) = body.frame().await {}
    });
    parts.status = StatusCode::NOT_MODIFIED;
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::TRANSFER_ENCODING);
    Response::from_parts(parts, body::empty())
}

/// A copy of stored headers with room for what a hit adds (Age, Content-Length, the
/// status header): a clone has none, and a map that grows is rehashed whole.
fn with_room(stored: &HeaderMap) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(stored.len() + crate::h1::ADDED_HEADERS);
    for (k, v) in stored {
        h.append(k.clone(), v.clone());
    }
    h
}

impl CompiledCache {
    async fn hit(
        &self,
        o: &Object,
        req: &Request<body::InBody>,
        status: CacheStatus,
    ) -> (Response<HttpBody>, UpstreamAddr) {
        let head = ClientHead {
            method: req.method(),
            headers: req.headers(),
        };
        // no upstream took part: `$upstream_addr` is `-`, as nginx's on a HIT
        (self.answer(o, &head, status).await, None)
    }

    /// An answer from a stored object on behalf of an upstream request (revalidated,
    /// or stale standing in): `$upstream_addr` is the server that gave it.
    async fn stored(
        &self,
        o: &Object,
        req: &ClientHead<'_>,
        status: CacheStatus,
    ) -> (Response<HttpBody>, UpstreamAddr) {
        let resp = self.answer(o, req, status).await;
        (resp, o.meta.upstream.as_deref().map(Arc::from))
    }

    /// An answer from a stored object: its status and headers with Age, the client's
    /// conditionals (304) and range (206, 416) answered, no body for HEAD.
    async fn answer(
        &self,
        o: &Object,
        req: &ClientHead<'_>,
        status: CacheStatus,
    ) -> Response<HttpBody> {
        self.zone.stats.count(status);
        let mut headers = with_room(&o.meta.headers);
        headers.insert(
            header::AGE,
            HeaderValue::from(o.meta.times.age_secs(now_ms())),
        );
        let mut code = StatusCode::from_u16(o.meta.status).unwrap_or(StatusCode::OK);
        let size = o.body.len() as u64;
        let mut body = o.body.clone();
        if code == StatusCode::OK {
            // a request with no validator and no range (most hits) skips the stored
            // validators' lookups and the date parse
            let asks = [
                header::IF_NONE_MATCH,
                header::IF_MODIFIED_SINCE,
                header::RANGE,
            ]
            .iter()
            .any(|h| req.headers.contains_key(h));
            let range = if asks {
                let etag = headers.get(header::ETAG).and_then(|v| v.to_str().ok());
                let lm_text = headers
                    .get(header::LAST_MODIFIED)
                    .and_then(|v| v.to_str().ok());
                let lm = lm_text
                    .and_then(|v| httpdate::parse_http_date(v).ok())
                    .map(|t| freshness::unix_ms(t) / 1000);
                if not_modified(req.headers, etag, lm) {
                    let mut r = Response::new(body::empty());
                    *r.status_mut() = StatusCode::NOT_MODIFIED;
                    *r.headers_mut() = headers;
                    return self.mark(r, status);
                }
                requested_range(req.headers, size, etag, lm_text)
            } else {
                None
            };
            match range {
                Some(RangeResult::Range(a, b)) => {
                    if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{b}/{size}")) {
                        headers.insert(header::CONTENT_RANGE, v);
                    }
                    body = body.slice(a as usize..=b as usize);
                    code = StatusCode::PARTIAL_CONTENT;
                }
                Some(RangeResult::Unsatisfiable) => {
                    let mut r = error_response(StatusCode::RANGE_NOT_SATISFIABLE);
                    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                        r.headers_mut().insert(header::CONTENT_RANGE, v);
                    }
                    return self.mark(r, status);
                }
                Some(RangeResult::Ignore) | None => {
                    if let Some(encoded) = self.compressed(o, req).await {
                        let mut headers = with_room(&encoded.meta.headers);
                        headers.insert(
                            header::AGE,
                            HeaderValue::from(o.meta.times.age_secs(now_ms())),
                        );
                        headers.insert(
                            header::CONTENT_LENGTH,
                            HeaderValue::from(encoded.body.len()),
                        );
                        let mut r = Response::new(body::full(encoded.body.clone()));
                        *r.headers_mut() = headers;
                        return self.mark(r, status);
                    }
                }
            }
            headers.insert(
                header::ACCEPT_RANGES,
                const { HeaderValue::from_static("bytes") },
            );
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let body = if *req.method == Method::HEAD {
            body::empty()
        } else {
            body::full(body)
        };
        let mut r = Response::new(body);
        *r.status_mut() = code;
        *r.headers_mut() = headers;
        self.mark(r, status)
    }

    /// The object encoded for this client when the route compresses and the client
    /// accepts a coding: compressed once per stored object and coding, then stored
    /// beside it (a refreshed object has another identity, so a stale encoding is never
    /// served), not per hit.
    async fn compressed(&self, o: &Object, req: &ClientHead<'_>) -> Option<Arc<Object>> {
        let cfg = self.compress.as_ref()?;
        let accept = req.headers.get(header::ACCEPT_ENCODING);
        let status = StatusCode::from_u16(o.meta.status).ok()?;
        let mut probe = o.meta.headers.clone();
        probe.insert(header::CONTENT_LENGTH, HeaderValue::from(o.body.len()));
        let compress::Decision::Encode(coding) =
            compress::decide(cfg, req.method, accept, status, &probe)
        else {
            return None;
        };
        let key = format!(
            "{}\0{}:{}:{}",
            o.meta.key,
            o.meta.times.response_ms,
            o.body.len(),
            coding.token()
        );
        let none = HeaderMap::new();
        if let Some(found) = self.zone.lookup(&key, &none).await {
            return Some(found);
        }
        let (cfg2, body) = (cfg.clone(), o.body.clone());
        let encoded = if body.len() > 64 * 1024 {
            tokio::task::spawn_blocking(move || compress::encode_whole(coding, &cfg2, &body))
                .await
                .ok()?
        } else {
            compress::encode_whole(coding, &cfg2, &body)
        };
        let encoded = match encoded {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(coding = coding.token(), error = %e, "cache: cannot compress a stored object");
                return None;
            }
        };
        let mut headers = o.meta.headers.clone();
        compress::encoded_headers(&mut headers, coding);
        let meta = Meta {
            key,
            status: o.meta.status,
            headers,
            times: o.meta.times,
            vary: Vec::new(),
            upstream: o.meta.upstream.clone(),
        };
        Some(self.zone.insert(Object {
            meta,
            body: encoded.into(),
        }))
    }

    /// Notes the status on the response (and in the status header, when configured).
    fn mark(&self, mut resp: Response<HttpBody>, status: CacheStatus) -> Response<HttpBody> {
        if let Some(h) = &self.status_header {
            resp.headers_mut()
                .insert(h.clone(), HeaderValue::from_static(status.as_str()));
        }
        resp.extensions_mut().insert(Status(status));
        resp
    }
}
