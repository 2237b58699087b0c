//! `via = "uwsgi"` and `via = "fastcgi"`: an HTTP request turned into an app-server
//! protocol towards a server the shared balancer picks, and the app's answer back into
//! HTTP.
//!
//! Shared by both: the CGI environment ([`env`]), the request body (streamed when its
//! length is known, else buffered first so CONTENT_LENGTH can be sent — [`io`]), the
//! retry loop over the upstream's servers, and the response head checks. The wire
//! formats are the codec crates `portico-uwsgi` and `portico-fastcgi`.

mod env;
mod fastcgi;
mod io;
mod uwsgi;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use portico_config::{KeyTemplate, ProxyRoute, Via};

use crate::body::{ClientBody, HttpBody};
use crate::errors::error_response;
use crate::proxy::{is_idempotent, strip_hop_by_hop, HttpUpstream, Tries, UpstreamAddr};
use crate::spool::Spool;
use crate::vars::Vars;
use env::Flavor;
use io::{Failure, RequestBody};

/// A response head from an app.
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

impl Head {
    /// 1xx, 204 and 304 answers carry no body.
    fn status_has_body(&self) -> bool {
        !(self.status.is_informational()
            || self.status == StatusCode::NO_CONTENT
            || self.status == StatusCode::NOT_MODIFIED)
    }
}

/// Appends parsed header lines; a name or value HTTP cannot carry is an invalid answer.
fn append_headers(map: &mut HeaderMap, parsed: &[httparse::Header<'_>]) -> Result<(), Failure> {
    for h in parsed {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| Failure::Invalid(format!("bad header name {:?}", h.name)))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| Failure::Invalid(format!("bad value for {}", h.name)))?;
        map.append(name, value);
    }
    Ok(())
}

enum Proto {
    Uwsgi {
        modifier1: u8,
        modifier2: u8,
    },
    Fastcgi {
        index: Option<String>,
        split: Option<regex::Regex>,
    },
}

/// A uwsgi or FastCGI route, compiled.
pub struct GatewayRoute {
    pub upstream: Arc<HttpUpstream>,
    proto: Proto,
    params: Vec<(String, KeyTemplate)>,
    root: String,
    /// Read the whole body before taking a connection (the route's request_buffering).
    buffering: bool,
}

impl GatewayRoute {
    pub fn new(p: &ProxyRoute, upstream: Arc<HttpUpstream>) -> Result<Self, String> {
        let proto = match p.via {
            Via::Uwsgi => Proto::Uwsgi {
                modifier1: p.modifier1,
                modifier2: p.modifier2,
            },
            Via::Fastcgi => Proto::Fastcgi {
                index: p.index.clone(),
                split: p
                    .split_path_info
                    .as_deref()
                    .map(regex::Regex::new)
                    .transpose()
                    .map_err(|e| format!("split_path_info: {e}"))?,
            },
            Via::Http => return Err("a gateway route needs via = uwsgi or fastcgi".into()),
        };
        Ok(Self {
            upstream,
            proto,
            params: p.params.clone(),
            buffering: p.request_buffering,
            root: p
                .root
                .as_ref()
                .map(|r| r.to_string_lossy().trim_end_matches('/').to_string())
                .unwrap_or_default(),
        })
    }
}

/// The client side of one gateway request.
pub struct Client<'a> {
    pub path: &'a str,
    pub host: Option<&'a HeaderValue>,
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub tls: bool,
    pub ssl: Option<&'a portico_core::TlsInfo>,
    pub server_name: &'a str,
    pub hash_key: Option<Vec<u8>>,
    pub max_body_bytes: u64,
    pub body_timeout: std::time::Duration,
    pub underscores: bool,
    pub captures: Option<&'a crate::vars::Captures>,
    /// The query string after rewrites, when they changed it.
    pub args: Option<&'a str>,
    pub maps: &'a portico_limits::maps::Maps,
    /// An access log may write this request: the app's answer is timed.
    pub timed: bool,
}

/// A process-unique request number, for the app's STDERR lines in the log.
fn next_request_id() -> u64 {
    static SEQ: AtomicU64 = AtomicU64::new(1);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// nginx's `fastcgi_split_path_info` and `fastcgi_index`: SCRIPT_NAME and PATH_INFO.
fn split_script<'a>(
    path: &'a str,
    index: Option<&str>,
    split: Option<&regex::Regex>,
) -> (Cow<'a, str>, &'a str) {
    let (script, info) = match split.and_then(|re| re.captures(path)) {
        Some(c) => (
            c.get(1).map_or("", |m| m.as_str()),
            c.get(2).map_or("", |m| m.as_str()),
        ),
        None => (path, ""),
    };
    match index {
        Some(i) if script.ends_with('/') => (Cow::Owned(format!("{script}{i}")), info),
        _ => (Cow::Borrowed(script), info),
    }
}

enum Reader {
    Uwsgi(uwsgi::Reader),
    Fastcgi(fastcgi::Reader),
}

/// Forwards one request through `route`, trying further servers as the upstream's
/// `next_upstream` policy allows: after a connect failure (nothing was sent) or an
/// overloaded FastCGI server always; after a failure past that point only for an
/// idempotent request whose body can be sent again (none, or buffered).
pub async fn forward(
    route: &GatewayRoute,
    parts: http::request::Parts,
    body: crate::body::InBody,
    client: Client<'_>,
) -> (Response<HttpBody>, UpstreamAddr) {
    let request = next_request_id();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let limited = |b| ClientBody::new(b, client.max_body_bytes, client.body_timeout).boxed();
    let (mut body, content_length) = if body.is_end_stream() && declared.unwrap_or(0) == 0 {
        (RequestBody::Empty, declared)
    } else if declared.is_some() && !route.buffering {
        (RequestBody::Stream(Some(limited(body))), declared)
    } else {
        match Spool::read(limited(body)).await {
            Ok(s) => {
                let len = s.len;
                (RequestBody::Spooled(s), Some(len))
            }
            Err(status) => return (error_response(status), None),
        }
    };
    // `$upstream_response_time` starts here, once a buffered body is read
    let upstream_started = tokio::time::Instant::now();

    let (script_name, path_info) = match &route.proto {
        Proto::Fastcgi { index, split } => {
            split_script(client.path, index.as_deref(), split.as_ref())
        }
        Proto::Uwsgi { .. } => (Cow::Borrowed(client.path), ""),
    };
    let facts = Vars {
        method: &parts.method,
        uri: &parts.uri,
        path: client.path,
        version: parts.version,
        headers: &parts.headers,
        host: client.host,
        peer: client.peer,
        local: client.local,
        tls: client.tls,
        server_name: client.server_name,
        content_length,
        document_root: &route.root,
        script_name,
        path_info,
        underscores: client.underscores,
        captures: client.captures,
        args: client.args,
        maps: Some(client.maps),
        cache_status: None,
        ssl: client.ssl,
    };
    let upstream = route.upstream.handle.load();
    let cfg = &upstream.config;
    let wire = match &route.proto {
        Proto::Uwsgi {
            modifier1,
            modifier2,
        } => {
            let vars = facts.vars(Flavor::Uwsgi, &route.params);
            let pairs: Vec<(&[u8], &[u8])> =
                vars.iter().map(|(n, v)| (n.as_bytes(), &v[..])).collect();
            match portico_uwsgi::encode_request(*modifier1, *modifier2, &pairs, cfg.max_vars) {
                Ok(p) => p,
                Err(e) => {
                    let largest = vars
                        .iter()
                        .filter(|(n, _)| n.starts_with("HTTP_"))
                        .max_by_key(|(n, v)| n.len() + v.len());
                    let (name, size) =
                        largest.map_or(("-", 0), |(n, v)| (n.as_ref(), n.len() + v.len()));
                    tracing::warn!(upstream = %cfg.name,
                        "request refused with 431: {e} (upstream max_vars); the largest header var is {name} ({size} bytes)");
                    return (
                        error_response(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
                        None,
                    );
                }
            }
        }
        Proto::Fastcgi { split, .. } => {
            let vars = facts.vars(
                Flavor::Fastcgi {
                    path_info: split.is_some(),
                },
                &route.params,
            );
            match fastcgi::encode_params(&vars) {
                Ok(wire) => wire,
                Err(var) => {
                    // The request's fault, refused before anything is sent: a URI var
                    // is 414 (as nginx answers a URI over its buffers), a header 431.
                    let status = if var.starts_with("HTTP_") {
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
                    } else {
                        StatusCode::URI_TOO_LONG
                    };
                    tracing::warn!(upstream = %cfg.name, var,
                        "request refused with {}: FastCGI var {var} over 64 KiB (one record)", status.as_u16());
                    return (error_response(status), None);
                }
            }
        }
    };
    let no_body = parts.method == Method::HEAD;
    let idempotent = is_idempotent(&parts.method);
    drop(facts);

    let policy = cfg.next_upstream;
    let mut tries = Tries::new(
        &upstream,
        client.peer.map(|p| p.ip()),
        client.hash_key.as_deref(),
        &parts.uri,
    );
    while let Some((pick, addr)) = tries.next().await {
        let started = std::time::Instant::now();
        let result = match &route.proto {
            Proto::Uwsgi { .. } => uwsgi::attempt(&pick, cfg, &wire, &mut body, no_body)
                .await
                .map(|(h, r)| (h, Reader::Uwsgi(r))),
            Proto::Fastcgi { .. } => fastcgi::attempt(&pick, cfg, &wire, &mut body, request)
                .await
                .map(|(h, r)| (h, Reader::Fastcgi(r))),
        };
        let resendable = idempotent && body.resendable();
        match result {
            Ok((mut head, reader)) => {
                pick.record_latency(started.elapsed());
                let status = head.status.as_u16();
                if policy.on_status(status) && resendable && tries.left() && tries.another_exists()
                {
                    tracing::warn!(upstream = %cfg.name, server = %addr, status,
                        "app answered {status}: trying the next server");
                    drop(reader); // its connection before its place under max_conns
                    pick.failure();
                    continue;
                }
                strip_hop_by_hop(&mut head.headers);
                let body = if no_body || !head.status_has_body() {
                    // The connection goes back before the place under max_conns is
                    // freed, so the request handed that place finds it in the pool.
                    if let Reader::Fastcgi(r) = reader {
                        r.finish_buffered();
                    }
                    pick.success();
                    crate::body::empty()
                } else {
                    match reader {
                        Reader::Uwsgi(r) => r.into_body(pick),
                        Reader::Fastcgi(r) => io::body_of(r, pick),
                    }
                };
                let mut resp = Response::new(body);
                *resp.status_mut() = head.status;
                *resp.headers_mut() = head.headers;
                let resp = if client.timed {
                    crate::body::UpstreamTiming::attach(resp, upstream_started)
                } else {
                    resp
                };
                return (resp, Some(addr));
            }
            Err(f) => {
                tries.last_status = f.status();
                if let Failure::Client(status) = f {
                    return (error_response(status), Some(addr));
                }
                tracing::warn!(upstream = %cfg.name, server = %addr, request, error = %f, "app server request failed");
                let (nothing_sent, wanted) = match &f {
                    Failure::Connect(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                        (true, policy.timeout)
                    }
                    Failure::Connect(_) => (true, policy.error),
                    Failure::Overloaded => (true, true),
                    Failure::Timeout(_) => (false, policy.timeout),
                    Failure::Invalid(_) => (false, false),
                    _ => (false, policy.error),
                };
                if f.blames_server() {
                    pick.failure();
                }
                if !(wanted && (nothing_sent || resendable)) {
                    break;
                }
            }
        }
    }
    tries.give_up()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_path_info_and_index_as_nginx() {
        let re = regex::Regex::new(r"^(.+?\.php)(/.*)$").unwrap();
        let (s, i) = split_script("/app/index.php/a/b", Some("index.php"), Some(&re));
        assert_eq!((s.as_ref(), i), ("/app/index.php", "/a/b"));
        let (s, i) = split_script("/app/", Some("index.php"), Some(&re));
        assert_eq!((s.as_ref(), i), ("/app/index.php", ""));
        let (s, i) = split_script("/x.php", None, None);
        assert_eq!((s.as_ref(), i), ("/x.php", ""));
    }
}
