//! Portico's mail module: one public SMTP, IMAP or POP3 endpoint per listener. Each
//! login is looked up over HTTP with nginx's `auth_http` protocol, then the session is
//! logged in to the backend mail server the answer names (or one the shared balancer
//! picks from the listener's upstream) and tunnelled (`portico_core::relay`).
//!
//! Shared by the protocols: [`session`] (client IO, STARTTLS, the lookup, the backend
//! connection, the tunnel), [`auth_http`], [`sasl`]. Per protocol: its codec, its
//! pre-authentication state and its backend login ([`imap`], [`pop3`], [`smtp`]).

pub mod auth_http;
pub mod backend;
pub mod imap;
mod io;
pub mod pop3;
mod sasl;
pub mod session;
pub mod smtp;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use portico_config::{ListenerConfig, Protocol, StartTls};
use portico_core::{BoxFuture, Connection, Service};
use portico_upstream::UpstreamHandle;

/// A mail listener's settings, compiled.
#[derive(Debug)]
pub struct MailSettings {
    pub protocol: Protocol,
    /// The name in SMTP greetings and EHLO answers: the first `server_names` entry.
    pub server_name: String,
    pub auth: auth_http::AuthClient,
    pub starttls: StartTls,
    /// The listener's upstream, for answers without Auth-Server.
    pub upstream: Option<Arc<UpstreamHandle>>,
    /// Every upstream, for `Auth-Server: pool:NAME`.
    pub pools: BTreeMap<String, Arc<UpstreamHandle>>,
    /// The greeting text (after `* OK`, `+OK`, `220 NAME`); `None`: nginx's.
    pub greeting: Option<String>,
    pub capabilities: Vec<String>,
    /// Advertised login methods, upper-cased: PLAIN, LOGIN.
    pub auth_methods: Vec<String>,
    /// SMTP: XCLIENT to backends that advertise it.
    pub xclient: bool,
    /// SMTP: AUTH PLAIN or LOGIN to the backend with the user's credentials.
    pub backend_auth: Option<String>,
    /// Extra headers for the auth server (nginx `auth_http_header`).
    pub auth_headers: Vec<(String, String)>,
    /// Failed logins per client address.
    pub throttle: session::Throttle,
    /// `rate_limit`: login attempts per client address.
    pub login_limits: Vec<Arc<portico_limits::rate::RateLimiter>>,
    /// `conn_limit`: sessions per client address.
    pub session_limits: Vec<Arc<portico_limits::conn::ConnLimiter>>,
    /// Login outcomes for /metrics.
    pub logins: LoginCounters,
    /// A PROXY protocol v2 header with the client's address first on backend connections.
    pub backend_proxy_protocol: bool,
    /// The listener verifies client certificates: the auth request says what it saw.
    pub client_auth: bool,
    pub pass_client_cert: bool,
    /// TLS towards backends (`None`: plain).
    pub backend_tls: Option<backend::BackendTls>,
    /// Longest command line before authentication.
    pub max_line: usize,
    /// Invalid commands before the session is closed (nginx `max_errors`).
    pub max_errors: u32,
    /// Waiting for the client's next command before login.
    pub command_timeout: Duration,
    /// The whole session before login (greeting to an accepted login).
    pub login_timeout: Duration,
    pub send_timeout: Duration,
    /// The auth_http exchange (nginx `auth_http_timeout`).
    pub auth_timeout: Duration,
    /// Connecting and logging in to the backend.
    pub connect_timeout: Duration,
    /// The tunnel with nothing moving either way (nginx `proxy_timeout`).
    pub idle_timeout: Duration,
    /// After shutdown begins, tunnels go on this long.
    pub drain: Duration,
}

impl MailSettings {
    pub fn new(
        l: &ListenerConfig,
        pools: &BTreeMap<String, Arc<UpstreamHandle>>,
        limiters: &portico_limits::Limiters,
        drain: Duration,
    ) -> Result<Self, String> {
        let m = &l.mail;
        let named = |n: &String| format!("no limit named {n:?}");
        let auth = l
            .auth_http
            .as_deref()
            .ok_or_else(|| format!("listener {}: a mail listener needs auth_http", l.name))
            .and_then(auth_http::AuthUrl::parse)
            .map(auth_http::AuthClient::new)?;
        let upstream = match &l.upstream {
            Some(name) => Some(
                pools
                    .get(name)
                    .cloned()
                    .ok_or_else(|| format!("no upstream named {name:?}"))?,
            ),
            None => None,
        };
        Ok(Self {
            protocol: l.protocol,
            server_name: l
                .server_names
                .first()
                .cloned()
                .unwrap_or_else(|| "localhost".into()),
            auth,
            starttls: l.starttls,
            upstream,
            pools: pools.clone(),
            greeting: m.greeting.clone(),
            capabilities: m.capabilities.clone(),
            auth_methods: m.auth.iter().map(|a| a.to_ascii_uppercase()).collect(),
            xclient: m.xclient,
            backend_auth: m.backend_auth.clone(),
            auth_headers: m.auth_http_headers.clone(),
            throttle: session::Throttle::new(m.max_login_failures, m.login_failure_window),
            logins: LoginCounters::new(&l.name, l.protocol),
            login_limits: l
                .rate_limit
                .iter()
                .map(|n| limiters.rate.get(n).cloned().ok_or_else(|| named(n)))
                .collect::<Result<_, _>>()?,
            session_limits: l
                .conn_limit
                .iter()
                .map(|n| limiters.conn.get(n).cloned().ok_or_else(|| named(n)))
                .collect::<Result<_, _>>()?,
            backend_proxy_protocol: m.backend_proxy_protocol,
            client_auth: l.tls.as_ref().is_some_and(|t| t.client_auth.is_some()),
            pass_client_cert: m.pass_client_cert,
            backend_tls: match m.backend_tls {
                portico_config::BackendTlsMode::Off => None,
                mode => Some(backend::BackendTls {
                    mode,
                    connector: portico_core::tls::build_connector(&m.backend_tls_ca)
                        .map_err(|e| format!("listener {}: backend_tls_ca: {e}", l.name))?,
                    name: m.backend_tls_name.clone(),
                }),
            },
            max_line: 8192,
            max_errors: m.max_errors,
            command_timeout: m.timeout,
            login_timeout: m.login_timeout,
            send_timeout: l.limits.send_timeout,
            auth_timeout: m.auth_timeout,
            connect_timeout: m.connect_timeout,
            idle_timeout: m.proxy_timeout,
            drain,
        })
    }
}

/// `portico_mail_logins_total{listener,protocol,outcome}`: accepted (the backend took
/// the session), refused (by the auth server), limited (rate limit or failed-login
/// throttle), failed (auth server or backend unreachable, or an answer unusable).
#[derive(Debug, Clone)]
pub struct LoginCounters {
    pub accepted: Arc<std::sync::atomic::AtomicU64>,
    pub refused: Arc<std::sync::atomic::AtomicU64>,
    pub limited: Arc<std::sync::atomic::AtomicU64>,
    pub failed: Arc<std::sync::atomic::AtomicU64>,
    /// `portico_mail_auth_lookups_total{…,outcome}`: the auth_http server's answers —
    /// ok, refused, error (unreachable, timed out, unusable).
    pub lookup_ok: Arc<std::sync::atomic::AtomicU64>,
    pub lookup_refused: Arc<std::sync::atomic::AtomicU64>,
    pub lookup_error: Arc<std::sync::atomic::AtomicU64>,
}

impl LoginCounters {
    fn new(listener: &str, protocol: Protocol) -> Self {
        let c = |outcome: &str| {
            portico_core::counters::global().counter(
                "portico_mail_logins_total",
                "Mail logins by outcome: accepted, refused (auth server), limited (rate limit, throttle), failed (auth server or backend unreachable).",
                format!("listener=\"{listener}\",protocol=\"{protocol}\",outcome=\"{outcome}\""),
            )
        };
        let lookup = |outcome: &str| {
            portico_core::counters::global().counter(
                "portico_mail_auth_lookups_total",
                "auth_http lookups by outcome: ok, refused, error (unreachable, timed out, unusable answer).",
                format!("listener=\"{listener}\",protocol=\"{protocol}\",outcome=\"{outcome}\""),
            )
        };
        Self {
            accepted: c("accepted"),
            refused: c("refused"),
            limited: c("limited"),
            failed: c("failed"),
            lookup_ok: lookup("ok"),
            lookup_refused: lookup("refused"),
            lookup_error: lookup("error"),
        }
    }
}

/// Serves one mail protocol on one bound address.
pub struct MailService {
    cfg: Arc<MailSettings>,
}

impl MailService {
    pub fn new(cfg: MailSettings) -> Self {
        Self { cfg: Arc::new(cfg) }
    }
}

impl Service for MailService {
    fn serve(self: Arc<Self>, conn: Connection) -> BoxFuture {
        let cfg = Arc::clone(&self.cfg);
        portico_core::done(async move {
            // conn_limit: the session holds its places until it ends
            let ip = conn.info.peer.map(|p| p.ip());
            let key = ip.map(|ip| ip.to_string()).unwrap_or_default();
            let mut guards = Vec::with_capacity(cfg.session_limits.len());
            for l in &cfg.session_limits {
                match l.acquire(key.as_bytes()) {
                    Some(g) => guards.push(g),
                    None => {
                        tracing::warn!(limit = %l.config.name, client = %key, protocol = %cfg.protocol,
                            "limiting connections: {} sessions from this address, refused", l.config.max);
                        let mut session = session::Session::new(conn, Arc::clone(&cfg));
                        let line: &[u8] = match cfg.protocol {
                            Protocol::Imap => b"* BYE Too many connections from your address\r\n",
                            Protocol::Pop3 => b"-ERR Too many connections from your address\r\n",
                            _ => b"421 4.7.0 Too many connections from your address\r\n",
                        };
                        let _ = session.send(line).await;
                        return;
                    }
                }
            }
            let session = session::Session::new(conn, cfg);
            let handoff = session.handoff();
            // The front end (greeting, capabilities, STARTTLS, login) boxed and ended
            // before the tunnel runs: neither the largest protocol's state machine nor
            // the login's stays in the task of a session that idles for hours.
            let front: session::Tunnel = match session.cfg.protocol {
                Protocol::Imap => Box::pin(imap::Imap::serve(session)),
                Protocol::Pop3 => Box::pin(pop3::Pop3::serve(session)),
                Protocol::Smtp => Box::pin(smtp::Smtp::serve(session)),
                // Never built: assemble makes mail services for mail listeners only.
                Protocol::Http => return,
            };
            front.await;
            if let Some(tunnel) = handoff.take() {
                tunnel.await;
            }
            drop(guards);
        })
    }
}
