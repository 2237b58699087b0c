//! The access phase of a route (after its methods, before its content): the
//! allow/deny list, then the rate limits, then the conn limits — the order of the edge
//! protection contract. The policies are portico-limits'; this module renders their
//! keys with the request's variables and turns a refusal into an answer.

use std::net::IpAddr;
use std::time::Duration;

use http::header::{HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use portico_config::LogLevel;
use portico_limits::conn::ConnGuard;
use portico_limits::rate::Verdict;

use crate::body::HttpBody;
use crate::errors::error_response;
use crate::route::Edge;
use crate::vars::Vars;

/// What the access phase decided.
pub(crate) enum Admit {
    /// Go on, after `delay`, holding `guards` until the answer is sent.
    Go {
        guards: Vec<ConnGuard>,
        delay: Duration,
    },
    Refuse(Response<HttpBody>),
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

pub(crate) fn check(edge: &Edge, client: Option<IpAddr>, vars: &Vars<'_>) -> Admit {
    let uri = vars.uri;
    if !edge.access.is_empty() {
        // no address (a Unix socket listener): only rules for `all` can match
        let allowed = match client {
            Some(ip) => edge.access.allows(ip),
            None => edge.access.allows_unknown(),
        };
        if !allowed {
            tracing::warn!(client = ?client, %uri, "access forbidden by rule: 403");
            return Admit::Refuse(error_response(StatusCode::FORBIDDEN));
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
        // nginx: every limit is looked at, the request counted in all only if none
        // refuses (the last one counts it at once)
        let last = edge.rate.len() - 1;
        for (i, (l, key)) in edge.rate.iter().zip(&keys).enumerate() {
            if key.is_empty() {
                continue; // nginx: an empty key is not limited
            }
            match l.check(key, i == last) {
                Verdict::Pass => {}
                Verdict::Delay(d) => delay = delay.max(d),
                Verdict::Refuse { retry_after } => {
                    let c = &l.config;
                    log_at!(c.log_level, limit = %c.name, client = ?client, %uri,
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
        }
        for (l, key) in edge.rate.iter().zip(&keys).take(last) {
            if !key.is_empty() {
                l.check(key, true);
            }
        }
        if !delay.is_zero() {
            if let Some(l) = edge.rate.first() {
                log_at!(lower(l.config.log_level), client = ?client, %uri,
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
                log_at!(c.log_level, limit = %c.name, client = ?client, %uri,
                    "limiting connections: {} in flight, refused with {}", c.max, c.status);
                let status =
                    StatusCode::from_u16(c.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                return Admit::Refuse(error_response(status));
            }
        }
    }
    Admit::Go { guards, delay }
}
