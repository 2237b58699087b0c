//! A listener's routes compiled for serving, and the per-route steps of the request
//! pipeline that are not content: the method check (405), `return`, and the header
//! rules on the request towards the upstream and on the response.
//!
//! Each step is compiled once per config generation from `portico_config::Route` and
//! holds no reference to the others; `HttpService::dispatch` walks them in nginx's
//! order: find the route (`router`), check the method, `return` or content (static,
//! proxy, gateway), then the response header rules.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use portico_config::{
    Fallback, HeaderRules, KeyTemplate, ListenerConfig, ReturnConfig, RewriteFlag, RouteAction,
    RouteMatch,
};

use crate::body::{full, HttpBody};
use crate::errors::error_response;
use crate::router::Router;
use crate::vars::Vars;
use crate::{gateway, HttpUpstream};

/// What a route answers with.
pub(crate) enum Content {
    Static(portico_config::StaticConfig),
    Proxy(Arc<HttpUpstream>),
    Gateway(Arc<gateway::GatewayRoute>),
    Return(ReturnConfig),
    /// Only rewrites or try_files: a request that stays here is a 404.
    Empty,
}

/// One compiled `rewrite`.
pub(crate) struct Rewrite {
    pub from: regex::Regex,
    pub to: KeyTemplate,
    pub flag: RewriteFlag,
}

/// `try_files`, with the root its paths are looked up under.
pub(crate) struct TryFiles {
    pub files: Vec<KeyTemplate>,
    pub fallback: Fallback,
    pub root: std::path::PathBuf,
}

pub(crate) struct CompiledRoute {
    pub content: Content,
    pub max_body_bytes: u64,
    /// `via = "http"`: read the whole body before taking an upstream connection.
    pub request_buffering: bool,
    /// Allowed methods; empty = any.
    methods: Vec<Method>,
    allow: Option<HeaderValue>,
    pub request_headers: Rules,
    pub response_headers: Rules,
    pub rewrites: Vec<Rewrite>,
    pub try_files: Option<TryFiles>,
    /// `via = "http"` with `upstream_path`: (the matched prefix, its replacement).
    pub upstream_path: Option<(String, String)>,
    /// `via = "http"`: the route's prefix ("/" for other matchers), what an upstream's
    /// own address in a Location is replaced by (nginx's `proxy_redirect default`).
    pub redirect_to: Option<String>,
    pub compress: Option<portico_config::Compress>,
    /// `; charset=…` for text/* and JSON answers that name none.
    pub charset: Option<String>,
    /// Only internal redirects reach it.
    pub internal: bool,
    pub error_pages: portico_config::ErrorPages,
    /// proxy_cookie_path / _domain / _flags.
    pub cookies: portico_config::CookieRules,
    /// The access phase: allow/deny, then the limits.
    pub edge: Edge,
    /// The response cache, on proxy and gateway routes.
    pub cache: Option<crate::cache::CompiledCache>,
    /// The response header rules use `$upstream_cache_status`: rendered after the
    /// content phase.
    pub late_response_headers: bool,
    /// `upstream = "app-$map_region"`: the name's template and the upstreams it can be
    /// (`content` holds the first).
    pub choose: Option<(KeyTemplate, UpstreamTable)>,
    /// This route's request durations (/metrics), kept across reloads by its name.
    pub timer: crate::RouteTimer,
    /// Its own access log (`off` is a log that writes nothing); None: the global one.
    pub access_log: Option<crate::AccessLog>,
}

/// The upstreams a map-chosen name can be, by name.
pub(crate) type UpstreamTable = std::collections::HashMap<Vec<u8>, Arc<HttpUpstream>>;

/// A route's edge protection, in the order it applies (the access phase).
pub(crate) struct Edge {
    pub access: portico_limits::access::AccessList,
    pub basic: Option<BasicAuth>,
    pub auth_request: Option<AuthRequest>,
    pub rate: Vec<Arc<portico_limits::rate::RateLimiter>>,
    pub conn: Vec<Arc<portico_limits::conn::ConnLimiter>>,
}

impl Edge {
    pub fn is_empty(&self) -> bool {
        self.access.is_empty()
            && self.basic.is_none()
            && self.auth_request.is_none()
            && self.rate.is_empty()
            && self.conn.is_empty()
    }
}

/// `basic_auth`: the file (read when the config generation is built) and the
/// WWW-Authenticate challenge.
pub(crate) struct BasicAuth {
    pub users: Arc<portico_limits::htpasswd::Htpasswd>,
    pub challenge: HeaderValue,
}

/// `auth_request`: the upstream asked, the URI, the headers copied from its 2xx.
pub(crate) struct AuthRequest {
    pub upstream: Arc<HttpUpstream>,
    pub uri: http::Uri,
    pub copy: Vec<HeaderName>,
}

/// A listener's routes and the router over them.
pub(crate) struct Routes {
    pub routes: Vec<CompiledRoute>,
    pub router: Router,
    /// The error pages of requests no route takes.
    pub listener_pages: portico_config::ErrorPages,
    /// Whether any route or the listener has error pages (the request's head is kept
    /// for them only then).
    pub error_pages: bool,
}

impl Routes {
    pub fn compile(
        l: &ListenerConfig,
        upstreams: &BTreeMap<String, Arc<HttpUpstream>>,
        limiters: &portico_limits::Limiters,
        caches: &portico_cache::Zones,
        metrics: &crate::Metrics,
        logs: &crate::access_log::Writers,
    ) -> Result<Self, String> {
        let mut routes = Vec::new();
        for r in &l.routes {
            let access_log = match &r.access_log {
                portico_config::RouteAccessLog::Inherit => None,
                portico_config::RouteAccessLog::Off => Some(crate::AccessLog::default()),
                portico_config::RouteAccessLog::To {
                    target,
                    format,
                    condition,
                } => Some(logs.log(target, format, condition.as_ref()).map_err(|e| {
                    format!("listener {} route {}: access_log: {e}", l.name, r.path)
                })?),
            };
            let content = match &r.action {
                RouteAction::Static(s) => Content::Static(s.clone()),
                RouteAction::Return(ret) => Content::Return(ret.clone()),
                RouteAction::Empty => Content::Empty,
                RouteAction::Proxy(p) => {
                    let up = upstreams
                        .get(&p.upstream)
                        .cloned()
                        .ok_or_else(|| format!("no upstream named {:?}", p.upstream))?;
                    match p.via {
                        portico_config::Via::Http => Content::Proxy(up),
                        _ => Content::Gateway(Arc::new(gateway::GatewayRoute::new(p, up)?)),
                    }
                }
            };
            let request_buffering = match &r.action {
                RouteAction::Proxy(p) => p.request_buffering,
                _ => false,
            };
            let methods: Vec<Method> = r
                .methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                .collect();
            let allow = (!methods.is_empty())
                .then(|| {
                    let list: Vec<&str> = methods.iter().map(Method::as_str).collect();
                    HeaderValue::from_str(&list.join(", ")).ok()
                })
                .flatten();
            let rewrites = r
                .rewrite
                .iter()
                .map(|rw| {
                    Ok(Rewrite {
                        from: regex::Regex::new(&rw.from).map_err(|e| e.to_string())?,
                        to: rw.to.clone(),
                        flag: rw.flag,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            let root = match &r.action {
                RouteAction::Static(s) => Some(s.root.clone()),
                RouteAction::Proxy(p) => p.root.clone(),
                _ => None,
            };
            let try_files = match (&r.try_files, root) {
                (Some(t), Some(root)) => Some(TryFiles {
                    files: t.files.clone(),
                    fallback: t.fallback.clone(),
                    root,
                }),
                _ => None,
            };
            let upstream_path = match (&r.action, &r.matcher) {
                (RouteAction::Proxy(p), RouteMatch::Prefix { path, .. }) => {
                    p.upstream_path.clone().map(|to| (path.clone(), to))
                }
                (RouteAction::Proxy(p), _) => p.upstream_path.clone().map(|to| (String::new(), to)),
                _ => None,
            };
            let redirect_to = match (&r.action, &r.matcher) {
                (RouteAction::Proxy(p), RouteMatch::Prefix { path, .. })
                    if p.via == portico_config::Via::Http =>
                {
                    Some(path.clone())
                }
                (RouteAction::Proxy(p), _) if p.via == portico_config::Via::Http => {
                    Some("/".to_string())
                }
                _ => None,
            };
            let cache = match &r.cache {
                Some(c) => Some(crate::cache::CompiledCache::compile(
                    c,
                    r.compress.as_ref(),
                    caches,
                )?),
                None => None,
            };
            let late_response_headers = cache.is_some()
                && r.response_headers
                    .set
                    .iter()
                    .any(|(_, t)| t.parts.contains(&portico_config::KeyPart::CacheStatus));
            routes.push(CompiledRoute {
                access_log,
                cache,
                late_response_headers,
                redirect_to,
                compress: r.compress.clone(),
                charset: r.charset.clone(),
                internal: r.internal,
                error_pages: r.error_pages.clone(),
                cookies: r.cookies.clone(),
                timer: metrics.route(&l.name, &r.path),
                choose: match &r.action {
                    RouteAction::Proxy(p) => match &p.upstream_by {
                        Some(t) => Some((
                            t.clone(),
                            p.upstream_choices
                                .iter()
                                .map(|n| {
                                    upstreams
                                        .get(n)
                                        .cloned()
                                        .map(|u| (n.as_bytes().to_vec(), u))
                                        .ok_or_else(|| format!("no upstream named {n:?}"))
                                })
                                .collect::<Result<_, String>>()?,
                        )),
                        None => None,
                    },
                    _ => None,
                },
                edge: Edge {
                    access: portico_limits::access::AccessList::new(r.access.clone()),
                    basic: match &r.basic_auth {
                        Some(b) => Some(BasicAuth {
                            users: Arc::new(portico_limits::htpasswd::Htpasswd::read(&b.htpasswd)?),
                            challenge: HeaderValue::from_str(&format!(
                                "Basic realm=\"{}\"",
                                b.realm
                            ))
                            .map_err(|e| format!("basic_auth realm: {e}"))?,
                        }),
                        None => None,
                    },
                    auth_request: match &r.auth_request {
                        Some(a) => Some(AuthRequest {
                            upstream: upstreams
                                .get(&a.upstream)
                                .cloned()
                                .ok_or_else(|| format!("no upstream named {:?}", a.upstream))?,
                            uri: a
                                .uri
                                .parse()
                                .map_err(|e| format!("auth_request uri: {e}"))?,
                            copy: a
                                .copy_headers
                                .iter()
                                .map(|h| {
                                    HeaderName::from_bytes(h.as_bytes())
                                        .map_err(|e| format!("{h}: {e}"))
                                })
                                .collect::<Result<_, String>>()?,
                        }),
                        None => None,
                    },
                    rate: r
                        .rate_limit
                        .iter()
                        .map(|n| {
                            limiters
                                .rate
                                .get(n)
                                .cloned()
                                .ok_or_else(|| format!("no rate limit named {n:?}"))
                        })
                        .collect::<Result<_, String>>()?,
                    conn: r
                        .conn_limit
                        .iter()
                        .map(|n| {
                            limiters
                                .conn
                                .get(n)
                                .cloned()
                                .ok_or_else(|| format!("no conn limit named {n:?}"))
                        })
                        .collect::<Result<_, String>>()?,
                },
                rewrites,
                try_files,
                upstream_path,
                content,
                max_body_bytes: r.max_body_bytes.unwrap_or(l.limits.max_body_bytes),
                request_buffering,
                methods,
                allow,
                request_headers: Rules::compile(&r.request_headers)?,
                response_headers: Rules::compile(&r.response_headers)?,
            });
        }
        let router = Router::new(
            l.routes
                .iter()
                .map(|r| (&r.matcher, r.name.as_deref(), uses_captures(r))),
        )?;
        let error_pages =
            !l.error_pages.is_empty() || routes.iter().any(|r| !r.error_pages.is_empty());
        Ok(Self {
            routes,
            router,
            listener_pages: l.error_pages.clone(),
            error_pages,
        })
    }
}

/// Whether any template of the route reads `$1` … `$9`.
fn uses_captures(r: &portico_config::Route) -> bool {
    let in_rules = |h: &HeaderRules| h.set.iter().any(|(_, t)| t.max_capture() > 0);
    let in_content = match &r.action {
        RouteAction::Return(ret) => [&ret.location, &ret.body]
            .into_iter()
            .flatten()
            .any(|t| t.max_capture() > 0),
        RouteAction::Proxy(p) => p.params.iter().any(|(_, t)| t.max_capture() > 0),
        RouteAction::Static(_) | RouteAction::Empty => false,
    };
    let in_try = r.try_files.as_ref().is_some_and(|t| {
        t.files.iter().any(|f| f.max_capture() > 0)
            || matches!(&t.fallback, Fallback::Uri(u) if u.max_capture() > 0)
    });
    let in_cookies = r
        .cookies
        .path
        .iter()
        .chain(&r.cookies.domain)
        .any(|(_, t)| t.max_capture() > 0);
    in_content
        || in_try
        || in_cookies
        || in_rules(&r.request_headers)
        || in_rules(&r.response_headers)
}

impl CompiledRoute {
    /// 405 with Allow when the route lists methods and `m` is not one of them.
    pub fn refuse_method(&self, m: &Method) -> Option<Response<HttpBody>> {
        if self.methods.is_empty() || self.methods.contains(m) {
            return None;
        }
        let mut resp = error_response(StatusCode::METHOD_NOT_ALLOWED);
        if let Some(a) = &self.allow {
            resp.headers_mut().insert(header::ALLOW, a.clone());
        }
        Some(resp)
    }
}

/// nginx `return`: a redirect (its Location made absolute as nginx's
/// `absolute_redirect on` does, from the scheme and the Host the client sent) with
/// nginx's small HTML page, or a text body.
pub(crate) fn answer(r: &ReturnConfig, vars: &Vars<'_>) -> Response<HttpBody> {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Some(loc) = &r.location {
        let mut out = Vec::with_capacity(64);
        vars.render(loc, &mut out);
        let out = absolute(vars.tls, vars.host, vars.server_name, out);
        let mut resp = error_response(status);
        resp.headers_mut().remove(header::CONNECTION);
        match HeaderValue::from_bytes(&out) {
            Ok(v) => {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            Err(_) => {
                tracing::warn!("a return location rendered to an invalid header value");
                return error_response(StatusCode::INTERNAL_SERVER_ERROR);
            }
        }
        return resp;
    }
    if r.body.is_none() && r.status >= 400 {
        // nginx `return 404;`: its own page, which error_page may replace
        return error_response(status);
    }
    let mut body = Vec::new();
    if let Some(b) = &r.body {
        vars.render(b, &mut body);
    }
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// A redirect's Location made absolute as nginx's `absolute_redirect on` does: a path
/// gets the scheme and the Host the client sent (else the server name).
pub(crate) fn absolute(
    tls: bool,
    host: Option<&HeaderValue>,
    server_name: &str,
    location: Vec<u8>,
) -> Vec<u8> {
    if !location.starts_with(b"/") || location.starts_with(b"//") {
        return location;
    }
    let mut abs = if tls {
        b"https://".to_vec()
    } else {
        b"http://".to_vec()
    };
    match host {
        Some(h) => abs.extend_from_slice(h.as_bytes()),
        None => abs.extend_from_slice(server_name.as_bytes()),
    }
    abs.extend_from_slice(&location);
    abs
}

/// nginx's `proxy_redirect default`: a Location or Refresh naming the upstream server
/// itself (`http://127.0.0.1:8000/…`, where the app is bound — with `upstream_path`, that
/// path) gets the route's prefix instead, so the client is sent back through Portico.
/// `base` (`http://host` as the client asked) makes the Location absolute, as nginx's
/// `absolute_redirect on`.
pub(crate) fn rewrite_redirects(
    route: &CompiledRoute,
    server: &str,
    base: &str,
    h: &mut HeaderMap,
) {
    let Some(to) = &route.redirect_to else {
        return;
    };
    if server.starts_with("unix:") {
        return;
    }
    let up_path = route
        .upstream_path
        .as_ref()
        .map_or("/", |(_, p)| p.as_str());
    let from = format!("http://{server}{up_path}");
    for name in [header::LOCATION, header::REFRESH] {
        let Some(v) = h.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let Some(at) = v.find(&from) else {
            continue;
        };
        // Location: at the start; Refresh: after `N; url=`
        if at != 0 && name == header::LOCATION {
            continue;
        }
        let base = if name == header::LOCATION { base } else { "" };
        let new = format!("{}{base}{to}{}", &v[..at], &v[at + from.len()..]);
        if let Ok(v) = HeaderValue::from_str(&new) {
            h.insert(name, v);
        }
    }
}

/// nginx `charset`: `; charset=NAME` added to a text/* or JSON Content-Type that names
/// no charset.
pub(crate) fn add_charset(h: &mut HeaderMap, charset: &str) {
    let Some(ct) = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return;
    };
    let lower = ct.to_ascii_lowercase();
    let essence = lower.split(';').next().unwrap_or("").trim();
    let texty =
        essence.starts_with("text/") || essence == "application/json" || essence.ends_with("+json");
    if !texty || lower.contains("charset=") {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(&format!("{ct}; charset={charset}")) {
        h.insert(header::CONTENT_TYPE, v);
    }
}

/// `request_headers` / `response_headers` compiled: names parsed once.
#[derive(Debug, Default)]
pub(crate) struct Rules {
    set: Vec<(HeaderName, KeyTemplate)>,
    remove: Vec<HeaderName>,
    always: bool,
}

/// A rule's values rendered for one request (before the request is handed on, so the
/// response side needs no borrow of it).
#[derive(Debug, Default)]
pub(crate) struct Rendered(Vec<(HeaderName, HeaderValue)>);

impl Rules {
    fn compile(h: &HeaderRules) -> Result<Self, String> {
        let name = |n: &str| HeaderName::from_bytes(n.as_bytes()).map_err(|e| format!("{n}: {e}"));
        Ok(Self {
            set: h
                .set
                .iter()
                .map(|(n, t)| Ok((name(n)?, t.clone())))
                .collect::<Result<_, String>>()?,
            remove: h.remove.iter().map(|n| name(n)).collect::<Result<_, _>>()?,
            always: h.always,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    pub fn render(&self, vars: &Vars<'_>) -> Rendered {
        Rendered(
            self.set
                .iter()
                .filter_map(|(n, t)| Some((n.clone(), vars.header_value(t)?)))
                .collect(),
        )
    }

    /// Applies the rules: removals, then (with `set`) the set values, each replacing any
    /// header of that name.
    pub fn apply(&self, values: Rendered, h: &mut HeaderMap, set: bool) {
        for n in &self.remove {
            h.remove(n);
        }
        if set {
            for (n, v) in values.0 {
                h.insert(n, v);
            }
        }
    }

    /// Whether response rules apply to `status`: always with `always`, else only to
    /// 200, 201, 204, 206, 301, 302, 303, 304, 307 and 308 (nginx's add_header rule).
    pub fn applies_to(&self, status: StatusCode) -> bool {
        self.always
            || matches!(
                status.as_u16(),
                200 | 201 | 204 | 206 | 301 | 302 | 303 | 304 | 307 | 308
            )
    }
}
