//! The access phase of a route (after its methods, before its content): the
//! allow/deny list, then authentication (basic_auth, then auth_request), then the rate
//! limits, then the conn limits — the order of the edge protection contract. The policies are portico-limits'; this module renders their
//! keys with the request's variables and turns a refusal into an answer.

use std::net::IpAddr;
use std::time::Duration;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, EXPECT, RETRY_AFTER,
    TRANSFER_ENCODING, WWW_AUTHENTICATE,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use portico_config::LogLevel;
use portico_limits::conn::ConnGuard;
use portico_limits::rate::{check_all, Combined};

use crate::body::HttpBody;
use crate::errors::error_response;
use crate::proxy;
use crate::route::{AuthRequest, BasicAuth, Edge};
use crate::vars::Vars;

/// What the access phase decided.
pub(crate) enum Admit {
    /// Go on, after `delay`, holding `guards` until the answer is sent, with `headers`
    /// (from an auth_request answer) added to the request.
    Go {
        guards: Vec<ConnGuard>,
        delay: Duration,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    Refuse(Response<HttpBody>),
}

/// What the access phase needs of the request besides its variables.
pub(crate) struct Asking<'a> {
    pub client: Option<IpAddr>,
    pub headers: &'a HeaderMap,
    pub method: &'a Method,
    /// For an auth_request: who the client is, as an upstream is told.
    pub side: proxy::ClientSide,
}

/// A log line at a level the config chose.
macro_rules! log_at {
    ($level:expr, $($arg:tt)+) => {
        match $level {
            LogLevel::Error => tracing::error!($($arg)+),
            LogLevel::Warn => tracing::warn!($($arg)+),
            LogLevel::Info => tracing::info!($($arg)+),
            LogLevel::Debug => tracing::debug!($($arg)+),
        }
    };
}

/// One level less (nginx logs delays a level below refusals).
fn lower(l: LogLevel) -> LogLevel {
    match l {
        LogLevel::Error => LogLevel::Warn,
        LogLevel::Warn => LogLevel::Info,
        LogLevel::Info | LogLevel::Debug => LogLevel::Debug,
    }
}

pub(crate) async fn check(edge: &Edge, ask: Asking<'_>, vars: &Vars<'_>) -> Admit {
    let uri = vars.uri;
    let client = ask.client;
    if !edge.access.is_empty() {
        // no address (a Unix socket listener): only rules for `all` can match
        let allowed = match client {
            Some(ip) => edge.access.allows(ip),
            None => edge.access.allows_unknown(),
        };
        if !allowed {
            tracing::warn!(client = %portico_core::OrDash(client), %uri, "access forbidden by rule: 403");
            return Admit::Refuse(error_response(StatusCode::FORBIDDEN));
        }
    }
    if let Some(b) = &edge.basic {
        if let Err(refused) = basic(b, ask.headers, client, uri).await {
            return Admit::Refuse(refused);
        }
    }
    let mut headers = Vec::new();
    if let Some(a) = &edge.auth_request {
        match auth_request(a, &ask, uri).await {
            Ok(h) => headers = h,
            Err(refused) => return Admit::Refuse(refused),
        }
    }
    let mut delay = Duration::ZERO;
    if !edge.rate.is_empty() {
        let keys: Vec<Vec<u8>> = edge
            .rate
            .iter()
            .map(|l| {
                let mut k = Vec::with_capacity(32);
                vars.render(&l.config.key, &mut k);
                k
            })
            .collect();
        match check_all(&edge.rate, &keys).await {
            Combined::Pass { delay: d } => delay = d,
            Combined::Refused { by, retry_after } => {
                let c = &by.config;
                log_at!(c.log_level, limit = %c.name, client = %portico_core::OrDash(client), %uri,
                    retry_after_ms = retry_after.as_millis() as u64,
                    "limiting requests: refused with {}", c.status);
                let status =
                    StatusCode::from_u16(c.status).unwrap_or(StatusCode::TOO_MANY_REQUESTS);
                let mut resp = error_response(status);
                let secs = retry_after.as_millis().div_ceil(1000).max(1) as u64;
                resp.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(secs));
                return Admit::Refuse(resp);
            }
        }
        if !delay.is_zero() {
            if let Some(l) = edge.rate.first() {
                log_at!(lower(l.config.log_level), client = %portico_core::OrDash(client), %uri,
                    delay_ms = delay.as_millis() as u64, "limiting requests: delayed");
            }
        }
    }
    let mut guards = Vec::with_capacity(edge.conn.len());
    for l in &edge.conn {
        let mut key = Vec::with_capacity(32);
        vars.render(&l.config.key, &mut key);
        if key.is_empty() {
            continue;
        }
        match l.acquire(&key) {
            Some(g) => guards.push(g),
            None => {
                let c = &l.config;
                log_at!(c.log_level, limit = %c.name, client = %portico_core::OrDash(client), %uri,
                    "limiting connections: {} in flight, refused with {}", c.max, c.status);
                let status =
                    StatusCode::from_u16(c.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                return Admit::Refuse(error_response(status));
            }
        }
    }
    Admit::Go {
        guards,
        delay,
        headers,
    }
}

/// The user and password of a `Basic` Authorization header.
fn credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = portico_core::base64::decode(b64.trim().as_bytes())?;
    let text = String::from_utf8(raw).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// nginx auth_basic: 401 with the realm's challenge unless the credentials are in the
/// file (bcrypt checks run on the blocking pool, off the event loop).
async fn basic(
    b: &BasicAuth,
    headers: &HeaderMap,
    client: Option<IpAddr>,
    uri: &http::Uri,
) -> Result<(), Response<HttpBody>> {
    let challenge = || {
        let mut r = error_response(StatusCode::UNAUTHORIZED);
        r.headers_mut()
            .insert(WWW_AUTHENTICATE, b.challenge.clone());
        r
    };
    let Some((user, password)) = credentials(headers) else {
        tracing::info!(client = %portico_core::OrDash(client), %uri, "no user/password was provided for basic authentication: 401");
        return Err(challenge());
    };
    let ok = if b.users.is_quick(&user) {
        b.users.check(&user, &password)
    } else {
        let users = std::sync::Arc::clone(&b.users);
        let u = user.clone();
        tokio::task::spawn_blocking(move || users.check(&u, &password))
            .await
            .unwrap_or(false)
    };
    if ok {
        return Ok(());
    }
    tracing::warn!(client = %portico_core::OrDash(client), %uri, user = %user, "basic authentication failed (unknown user or password mismatch): 401");
    Err(challenge())
}

/// nginx auth_request: the request's method and headers (no body) go to the auth
/// upstream at its URI, with X-Original-URI and X-Original-Method; a 2xx lets the
/// request in (its `copy_headers` are added to it), 401 and 403 are the client's answer
/// (401 with the auth service's WWW-Authenticate), anything else is 500.
async fn auth_request(
    a: &AuthRequest,
    ask: &Asking<'_>,
    uri: &http::Uri,
) -> Result<Vec<(HeaderName, HeaderValue)>, Response<HttpBody>> {
    let mut headers = ask.headers.clone();
    for h in [CONTENT_LENGTH, TRANSFER_ENCODING, EXPECT] {
        headers.remove(h);
    }
    if let Ok(v) = HeaderValue::from_str(&uri.to_string()) {
        headers.insert(HeaderName::from_static("x-original-uri"), v);
    }
    if let Ok(v) = HeaderValue::from_str(ask.method.as_str()) {
        headers.insert(HeaderName::from_static("x-original-method"), v);
    }
    let mut sub = Request::new(crate::body::empty());
    *sub.method_mut() = ask.method.clone();
    *sub.uri_mut() = a.uri.clone();
    *sub.headers_mut() = headers;
    let (resp, server) = portico_core::boxed(|| proxy::forward(&a.upstream, sub, &ask.side)).await;
    let status = resp.status();
    let (parts, mut body) = resp.into_parts();
    // read a small answer to its end, so its connection goes back to the pool
    let drain = async move {
        let mut read = 0;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |d| d.len());
            if read > 64 * 1024 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
    match status.as_u16() {
        200..=299 => Ok(a
            .copy
            .iter()
            .filter_map(|n| parts.headers.get(n).map(|v| (n.clone(), v.clone())))
            .collect()),
        401 => {
            let mut r = error_response(StatusCode::UNAUTHORIZED);
            if let Some(v) = parts.headers.get(WWW_AUTHENTICATE) {
                r.headers_mut().insert(WWW_AUTHENTICATE, v.clone());
            }
            Err(r)
        }
        403 => Err(error_response(StatusCode::FORBIDDEN)),
        other => {
            tracing::error!(%uri, auth = server.as_deref().unwrap_or("-"), status = other,
                "auth request unexpected status: 500");
            Err(error_response(StatusCode::INTERNAL_SERVER_ERROR))
        }
    }
}
