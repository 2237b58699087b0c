//! What the three mail front ends share: the client session (bounded line reads with a
//! timeout, writes, STARTTLS with read-ahead discarded, max_errors), the auth_http
//! lookup and what follows from its answer (a refusal, with Auth-Wait a retry; a backend
//! picked by address or by the shared balancer), and the tunnel after the backend login.

use std::sync::Arc;
use std::time::Duration;

use portico_config::{BackendTlsMode, StartTls};
use portico_core::relay::{relay, AnyEnd, Goodbye, RelayEnd, RelayLimits};
use portico_core::Connection;
use portico_upstream::{connect, PeerStream, Pick, SelectCtx};

use crate::auth_http::{AuthAnswer, AuthRequest, Backend};
use crate::backend::BackendStream;
use crate::io::{write_all, LineIo, ReadError};
use crate::MailSettings;

/// A user's credentials as the client gave them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Auth-Method: plain (LOGIN, USER/PASS, AUTH PLAIN), login (AUTH LOGIN), cram-md5,
    /// apop, none (SMTP relay).
    pub method: &'static str,
    pub user: Vec<u8>,
    /// The password, or for cram-md5 and apop the client's digest.
    pub pass: Vec<u8>,
    /// cram-md5 / apop: the challenge the digest answers (Auth-Salt).
    pub salt: Option<Vec<u8>>,
}

impl Credentials {
    pub fn plain(user: Vec<u8>, pass: Vec<u8>) -> Self {
        Self::new("plain", user, pass)
    }

    pub fn new(method: &'static str, user: Vec<u8>, pass: Vec<u8>) -> Self {
        Self {
            method,
            user,
            pass,
            salt: None,
        }
    }

    /// Whether the password is a digest: the auth server must then send the real one
    /// (Auth-Pass) for the backend login.
    fn is_challenge(&self) -> bool {
        self.salt.is_some()
    }
}

/// One client connection before its backend is known.
pub struct Session {
    conn: Connection,
    io: LineIo,
    pub cfg: Arc<MailSettings>,
    errors: u32,
    attempts: u32,
    /// The challenge for APOP / CRAM-MD5, made once per session.
    salt: Option<Vec<u8>>,
    started: tokio::time::Instant,
    handoff: Handoff,
}

/// A tunnel to a backend, ready to run.
pub type Tunnel = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Where a session's tunnel is left once the backend accepted the login. The caller of
/// the protocol's front end (`MailService::serve`) runs it after that state machine has
/// ended, so an idle tunnel's task holds the tunnel and nothing of the login phases.
#[derive(Clone, Default)]
pub struct Handoff(Arc<std::sync::Mutex<Option<Tunnel>>>);

impl Handoff {
    fn put(&self, tunnel: Tunnel) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(tunnel);
    }

    pub fn take(&self) -> Option<Tunnel> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// How a SASL exchange ended.
#[derive(Debug)]
pub enum Sasl {
    Credentials(Credentials),
    /// The client answered `*`.
    Cancelled,
    /// A mechanism not offered.
    Unsupported,
    /// Not decodable.
    Invalid,
}

/// How a login attempt ended.
pub enum Outcome {
    /// The auth server said no: answer `status`; with `retry` (Auth-Wait) the session
    /// goes on after the wait, without it the session closes after the answer.
    Refused {
        session: Session,
        status: String,
        retry: bool,
        error_code: Option<String>,
    },
    /// The auth server or the backend could not be reached: a temporary failure, and
    /// the session closes. Never an open door.
    Failed(Session),
    /// Connected to the backend: log in there, then tunnel.
    Backend(BackendSession),
}

/// A login's outcome once the client has been answered.
pub enum Settled {
    /// Refused with Auth-Wait: the client may try again.
    Retry(Session),
    /// Refused without Auth-Wait, or a temporary failure: the session is over.
    Closed,
    /// Accepted: log in to the backend and tunnel.
    Backend(BackendSession),
}

impl Outcome {
    /// Answers a refusal with `refused(status, Auth-Error-Code)` and a temporary
    /// failure with `failed`, each protocol's own words, the same way for all three.
    pub async fn settle(
        self,
        refused: impl FnOnce(&str, Option<&str>) -> String,
        failed: &[u8],
    ) -> Settled {
        match self {
            Outcome::Refused {
                mut session,
                status,
                retry,
                error_code,
            } => {
                let line = refused(&status, error_code.as_deref());
                if session.send(line.as_bytes()).await.is_err() || !retry {
                    return Settled::Closed;
                }
                Settled::Retry(session)
            }
            Outcome::Failed(mut session) => {
                let _ = session.send(failed).await;
                Settled::Closed
            }
            Outcome::Backend(b) => Settled::Backend(b),
        }
    }
}

impl Session {
    pub fn new(conn: Connection, cfg: Arc<MailSettings>) -> Self {
        Self {
            conn,
            io: LineIo::new(),
            cfg,
            errors: 0,
            attempts: 0,
            salt: None,
            started: tokio::time::Instant::now(),
            handoff: Handoff::default(),
        }
    }

    /// Where this session's tunnel will be left (see [`Handoff`]).
    pub fn handoff(&self) -> Handoff {
        self.handoff.clone()
    }

    /// This session's challenge, as nginx makes it: `<RANDOM.TIME@NAME>`.
    pub fn salt(&mut self) -> Vec<u8> {
        use std::hash::{BuildHasher, Hasher};
        let name = self.cfg.server_name.clone();
        self.salt
            .get_or_insert_with(|| {
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u64(self.conn.info.id);
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                format!("<{}.{secs}@{name}>", h.finish()).into_bytes()
            })
            .clone()
    }

    pub async fn send(&mut self, data: &[u8]) -> std::io::Result<()> {
        write_all(&mut self.conn.stream, data, self.cfg.send_timeout).await
    }

    /// The next command line (bounded by `max_line`, within `command_timeout`).
    /// The next command line. A session still waiting for one when shutdown begins is
    /// closed at once (it has nothing in flight).
    pub async fn line(&mut self) -> Result<Vec<u8>, ReadError> {
        let t = self.wait_limit()?;
        let shutdown = self.conn.shutdown.clone();
        tokio::select! {
            r = self.io.read_line(&mut self.conn.stream, self.cfg.max_line, t) => r,
            _ = shutdown.cancelled() => Err(ReadError::Closed),
        }
    }

    pub async fn read_exact(&mut self, n: usize) -> Result<Vec<u8>, ReadError> {
        let t = self.wait_limit()?;
        self.io.read_exact(&mut self.conn.stream, n, t).await
    }

    /// How long the next read may wait: `timeout` per command, and the whole session
    /// before login within `login_timeout` (a client cannot hold a pre-login session
    /// open forever with NOOPs).
    fn wait_limit(&self) -> Result<Duration, ReadError> {
        let left = self
            .cfg
            .login_timeout
            .saturating_sub(self.started.elapsed());
        if left.is_zero() {
            return Err(ReadError::Timeout(self.cfg.login_timeout));
        }
        Ok(left.min(self.cfg.command_timeout))
    }

    /// STARTTLS is advertised and accepted: the listener has a certificate, the
    /// setting is on or only, and the connection is not TLS yet.
    pub fn starttls_offered(&self) -> bool {
        self.cfg.starttls != StartTls::Off && self.conn.can_start_tls()
    }

    /// `starttls = "only"` and not upgraded yet: no authentication allowed.
    pub fn starttls_required(&self) -> bool {
        self.cfg.starttls == StartTls::Only && !self.conn.stream.is_tls()
    }

    /// Sends `reply` and upgrades to TLS. Anything the client pipelined after the
    /// command in plain text is discarded, never read as if it came inside TLS.
    pub async fn start_tls(mut self, reply: &[u8]) -> Option<Session> {
        self.send(reply).await.ok()?;
        let dropped = self.io.discard();
        if dropped > 0 {
            tracing::warn!(
                conn = self.conn.info.id,
                bytes = dropped,
                "plaintext sent after STARTTLS discarded"
            );
        }
        // boxed: the handshake's state would otherwise stay in every session's task
        match Box::pin(self.conn.start_tls()).await {
            Ok(conn) => Some(Session {
                conn,
                io: self.io,
                cfg: self.cfg,
                errors: self.errors,
                attempts: self.attempts,
                salt: self.salt,
                started: self.started,
                handoff: self.handoff,
            }),
            Err(e) => {
                tracing::debug!(error = %e, "STARTTLS handshake failed");
                None
            }
        }
    }

    /// Counts a protocol error; true once `max_errors` is reached (close the session).
    pub fn count_error(&mut self) -> bool {
        self.errors += 1;
        self.errors >= self.cfg.max_errors
    }

    /// Answers a bad command with `reply` and counts it; `Err` once `max_errors` is
    /// reached (the session then closes).
    pub async fn reject(&mut self, reply: &[u8]) -> std::io::Result<()> {
        self.send(reply).await?;
        if self.count_error() {
            return Err(std::io::Error::other("too many errors"));
        }
        Ok(())
    }

    /// A continuation request (`prefix` is `+ ` for IMAP and POP3, `334 ` for SMTP) and
    /// the client's answer line.
    pub async fn continuation(
        &mut self,
        prefix: &[u8],
        prompt: &[u8],
    ) -> Result<Vec<u8>, ReadError> {
        let line = [prefix, prompt, b"\r\n"].concat();
        self.send(&line).await?;
        self.line().await
    }

    /// A SASL exchange for `mech` (PLAIN, LOGIN, CRAM-MD5 when configured), with the
    /// client's initial response if it sent one.
    pub async fn sasl(
        &mut self,
        mech: &[u8],
        initial: Option<Vec<u8>>,
        prefix: &[u8],
    ) -> Result<Sasl, ReadError> {
        let mech = String::from_utf8_lossy(mech).to_ascii_uppercase();
        let creds = match mech.as_str() {
            "PLAIN" => {
                let resp = match initial {
                    Some(r) => r,
                    None => self.continuation(prefix, b"").await?,
                };
                if resp == b"*" {
                    return Ok(Sasl::Cancelled);
                }
                crate::sasl::plain(&resp)
            }
            "LOGIN" => {
                let user = match initial {
                    Some(r) => r,
                    None => {
                        self.continuation(prefix, crate::sasl::USERNAME_PROMPT)
                            .await?
                    }
                };
                let pass = self
                    .continuation(prefix, crate::sasl::PASSWORD_PROMPT)
                    .await?;
                crate::sasl::login(&user, &pass)
            }
            "CRAM-MD5" if self.cfg.auth_methods.iter().any(|m| m == "CRAM-MD5") => {
                let salt = self.salt();
                let challenge = portico_core::base64::encode(&salt);
                let answer = self.continuation(prefix, challenge.as_bytes()).await?;
                crate::sasl::cram_md5(&answer, salt)
            }
            _ => return Ok(Sasl::Unsupported),
        };
        Ok(creds.map_or(Sasl::Invalid, Sasl::Credentials))
    }

    /// The end of an AUTH/AUTHENTICATE exchange (`got`, what the front end's SASL step
    /// returned): logs in with the credentials it produced (`login`), keeps the session
    /// when the exchange ended with an answer already sent (cancelled, invalid), ends it
    /// when the client is gone. `None`: the session is over (handed to a backend, or
    /// closed).
    pub async fn login_after<F, Fut>(
        self,
        got: Result<Option<Credentials>, ReadError>,
        login: F,
    ) -> Option<Session>
    where
        F: FnOnce(Session, Credentials) -> Fut,
        Fut: std::future::Future<Output = Option<Session>>,
    {
        match got {
            Ok(Some(creds)) => login(self, creds).await,
            Ok(None) => Some(self),
            Err(e) => {
                self.log_end(&e);
                None
            }
        }
    }

    pub fn log_end(&self, e: &ReadError) {
        tracing::debug!(conn = self.conn.info.id, error = %e, "mail session ended");
    }

    pub fn is_tls(&self) -> bool {
        self.conn.stream.is_tls()
    }

    pub fn client_ip(&self) -> Option<std::net::IpAddr> {
        self.conn.info.peer.map(|p| p.ip())
    }

    /// The client's address (from the PROXY header when there was one).
    pub fn peer(&self) -> Option<std::net::SocketAddr> {
        self.conn.info.peer
    }

    /// Asks the auth server about `creds`; on OK connects to the backend it names (or
    /// one of the listener's upstream, chosen by the balancer with the user as key).
    pub async fn authorize(self, creds: Credentials, protocol: &'static str) -> Outcome {
        self.authorize_with(creds, protocol, AuthRequest::default())
            .await
    }

    /// [`Session::authorize`] with protocol-specific request fields (SMTP's Helo/From/To).
    pub async fn authorize_with(
        self,
        creds: Credentials,
        protocol: &'static str,
        extra: AuthRequest,
    ) -> Outcome {
        // boxed: the auth server exchange and the backend connect are large state
        // machines, and inline they would stay in the session's task for as long as the
        // tunnel after them lasts
        Box::pin(self.authorize_inner(creds, protocol, extra)).await
    }

    async fn authorize_inner(
        mut self,
        creds: Credentials,
        protocol: &'static str,
        extra: AuthRequest,
    ) -> Outcome {
        self.attempts += 1;
        let ip = self.client_ip();
        if let Some(ip) = ip.filter(|ip| self.cfg.throttle.is_blocked(*ip)) {
            tracing::warn!(conn = self.conn.info.id, %ip, "login refused: too many failed logins from this address");
            self.count(|c| &c.limited);
            return Outcome::Refused {
                session: self,
                status: "Too many failed logins, try again later".into(),
                retry: false,
                error_code: Some("454 4.7.0".into()),
            };
        }
        // rate_limit: login attempts per client address (delayed or refused, as HTTP)
        if let Some(ip) = ip.filter(|_| !self.cfg.login_limits.is_empty()) {
            let limits = &self.cfg.login_limits;
            let keys = vec![ip.to_string().into_bytes(); limits.len()];
            let delay = match portico_limits::rate::check_all(limits, &keys).await {
                portico_limits::rate::Combined::Pass { delay } => delay,
                portico_limits::rate::Combined::Refused { by, retry_after } => {
                    tracing::warn!(conn = self.conn.info.id, limit = %by.config.name, %ip,
                        retry_after_ms = retry_after.as_millis() as u64,
                        "login refused: rate limit");
                    self.count(|c| &c.limited);
                    return Outcome::Refused {
                        session: self,
                        status: "Too many logins, try again later".into(),
                        retry: false,
                        error_code: Some("454 4.7.0".into()),
                    };
                }
            };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
        let request = AuthRequest {
            method: creds.method,
            user: creds.user.clone(),
            pass: creds.pass.clone(),
            protocol,
            attempt: self.attempts,
            client_ip: self.client_ip(),
            ssl: self.is_tls(),
            ssl_client: (self.cfg.client_auth && self.is_tls()).then(|| {
                let cert = self.conn.info.tls.as_ref().and_then(|t| t.client.clone());
                (cert, self.cfg.pass_client_cert)
            }),
            salt: creds.salt.clone(),
            extra_headers: self.cfg.auth_headers.clone(),
            proxy_protocol: match (
                self.conn.info.proxied,
                self.conn.info.peer,
                self.conn.info.local,
            ) {
                (true, Some(client), Some(server)) => Some((client, server)),
                _ => None,
            },
            ..extra
        };
        let answer = self.cfg.auth.lookup(&request, self.cfg.auth_timeout).await;
        self.count(|c| match &answer {
            Ok(AuthAnswer::Ok { .. }) => &c.lookup_ok,
            Ok(AuthAnswer::Refused { .. }) => &c.lookup_refused,
            Err(_) => &c.lookup_error,
        });
        let user_text = String::from_utf8_lossy(&creds.user).into_owned();
        let (server, user, pass) = match answer {
            Err(e) => {
                tracing::error!(conn = self.conn.info.id, user = %user_text, error = %e, "auth_http lookup failed");
                self.count(|c| &c.failed);
                return Outcome::Failed(self);
            }
            Ok(AuthAnswer::Refused {
                status,
                wait,
                error_code,
            }) => {
                tracing::warn!(conn = self.conn.info.id, client = %portico_core::OrDash(ip), protocol,
                    user = %user_text, %status, "login refused");
                self.count(|c| &c.refused);
                if let Some(ip) = ip {
                    self.cfg.throttle.failed(ip);
                }
                if let Some(w) = wait {
                    tokio::time::sleep(w).await;
                }
                return Outcome::Refused {
                    session: self,
                    status,
                    retry: wait.is_some(),
                    error_code,
                };
            }
            Ok(AuthAnswer::Ok { server, user, pass }) => (server, user, pass),
        };
        if creds.is_challenge() && pass.is_none() {
            tracing::error!(conn = self.conn.info.id, user = %user_text, method = creds.method,
                "the auth server sent no Auth-Pass: a digest cannot log in to the backend");
            self.count(|c| &c.failed);
            return Outcome::Failed(self);
        }
        let creds = Credentials {
            method: creds.method,
            user: user.unwrap_or(creds.user),
            pass: pass.unwrap_or(creds.pass),
            salt: None,
        };
        let connected = match self.connect_backend(server, &creds.user).await {
            Ok((mut stream, pick)) => match self.send_proxy_header(&mut stream).await {
                Ok(()) => self.implicit_tls(stream).await.map(|s| (s, pick)),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let (stream, pick) = match connected {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(conn = self.conn.info.id, user = %user_text, error = %e, "backend unreachable");
                self.count(|c| &c.failed);
                return Outcome::Failed(self);
            }
        };
        tracing::info!(conn = self.conn.info.id, user = %user_text, "login accepted");
        self.count(|c| &c.accepted);
        Outcome::Backend(BackendSession {
            session: self,
            stream,
            creds,
            pick,
        })
    }

    fn count(
        &self,
        which: impl Fn(&crate::LoginCounters) -> &std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) {
        which(&self.cfg.logins).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// With `backend_tls = "on"`: TLS from the first byte (after a PROXY header).
    async fn implicit_tls(&self, stream: PeerStream) -> Result<BackendStream, String> {
        let mut s = BackendStream::Plain(stream);
        if let Some(tls) = self
            .cfg
            .backend_tls
            .as_ref()
            .filter(|t| t.mode == BackendTlsMode::On)
        {
            tokio::time::timeout(self.cfg.connect_timeout, s.upgrade(tls))
                .await
                .map_err(|_| "TLS handshake with the backend timed out".to_string())?
                .map_err(|e| format!("TLS with the backend: {e}"))?;
        }
        Ok(s)
    }

    /// The STARTTLS settings a protocol's backend login must apply, if any.
    pub fn backend_starttls(&self) -> Option<crate::backend::BackendTls> {
        self.cfg
            .backend_tls
            .clone()
            .filter(|t| t.mode == BackendTlsMode::StartTls)
    }

    /// With `backend_proxy_protocol`: the client's and the listener's addresses as a
    /// PROXY v2 header, before anything else on the backend connection.
    async fn send_proxy_header(&self, stream: &mut PeerStream) -> Result<(), String> {
        if !self.cfg.backend_proxy_protocol {
            return Ok(());
        }
        let (Some(src), Some(dst)) = (self.conn.info.peer, self.conn.info.local) else {
            return Ok(()); // a Unix-socket client has no address to pass on
        };
        let header = portico_core::proxy_protocol::encode_v2(src, dst);
        write_all(stream, &header, self.cfg.connect_timeout)
            .await
            .map_err(|e| format!("PROXY header: {e}"))
    }

    async fn connect_backend(
        &self,
        server: Option<Backend>,
        user: &[u8],
    ) -> Result<(PeerStream, Option<Pick>), String> {
        let pool =
            match server {
                Some(Backend::Addr(a)) => {
                    let s = connect(&portico_config::PeerAddr::Tcp(a), self.cfg.connect_timeout)
                        .await
                        .map_err(|e| format!("{a}: {e}"))?;
                    return Ok((s, None));
                }
                Some(Backend::Pool(name)) => self
                    .cfg
                    .pools
                    .get(&name)
                    .ok_or_else(|| format!("Auth-Server names pool:{name}, no such upstream"))?,
                None => self.cfg.upstream.as_ref().ok_or(
                    "the auth server named no Auth-Server and the listener has no upstream",
                )?,
            };
        let upstream = pool.load();
        let ctx = SelectCtx {
            client_ip: self.client_ip(),
            exclude: &[],
            key: Some(user),
            panicked: false,
        };
        let pick = upstream
            .select_queued(&ctx)
            .await
            .map_err(|e| format!("upstream {}: {e}", upstream.name()))?;
        match connect(pick.server.addr(), self.cfg.connect_timeout).await {
            Ok(s) => Ok((s, Some(pick))),
            Err(e) => {
                let addr = pick.server.addr().to_string();
                pick.failure();
                Err(format!("{addr}: {e}"))
            }
        }
    }
}

/// Failed logins per client address within a window (on top of Auth-Wait): past the
/// limit, logins from the address are refused without asking the auth server. Bounded:
/// at most 65,536 addresses are remembered, the stalest forgotten first.
#[derive(Debug)]
pub struct Throttle {
    max: u32,
    window: Duration,
    seen: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (u32, std::time::Instant)>>,
}

impl Throttle {
    const MAX_ADDRESSES: usize = 65_536;

    /// `max = 0`: no limit.
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            max,
            window,
            seen: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn map(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<std::net::IpAddr, (u32, std::time::Instant)>,
    > {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_blocked(&self, ip: std::net::IpAddr) -> bool {
        if self.max == 0 {
            return false;
        }
        self.map()
            .get(&ip)
            .is_some_and(|(n, since)| *n >= self.max && since.elapsed() < self.window)
    }

    pub fn failed(&self, ip: std::net::IpAddr) {
        if self.max == 0 {
            return;
        }
        let now = std::time::Instant::now();
        let mut map = self.map();
        if map.len() >= Self::MAX_ADDRESSES && !map.contains_key(&ip) {
            let window = self.window;
            map.retain(|_, (_, since)| now.duration_since(*since) < window);
            if map.len() >= Self::MAX_ADDRESSES {
                if let Some(oldest) = map.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        let entry = map.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= self.window {
            *entry = (0, now);
        }
        entry.0 += 1;
    }
}

/// A session whose user was accepted, connected to its backend.
pub struct BackendSession {
    session: Session,
    stream: BackendStream,
    creds: Credentials,
    /// Held while the session lasts when the balancer chose the backend (least_conn
    /// counts sessions).
    pick: Option<Pick>,
}

/// How to log in to the backend.
pub type LoginFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<u8>, Vec<u8>>> + Send + 'a>>;

impl BackendSession {
    /// Logs in with `login` (which returns what to pass on to the client: the backend's
    /// answer, or on `Err` its refusal), then leaves the tunnel (`portico_core::relay`)
    /// in the session's [`Handoff`] for `MailService::serve` to run. Bytes either side
    /// sent ahead are passed on first, so pipelined commands are not lost.
    pub async fn run(
        mut self,
        login: impl for<'a> FnOnce(
            &'a mut LineIo,
            &'a mut BackendStream,
            &'a Credentials,
            Duration,
        ) -> LoginFuture<'a>,
    ) {
        let mut bio = LineIo::new();
        let t = self.session.cfg.connect_timeout;
        let result = login(&mut bio, &mut self.stream, &self.creds, t).await;
        let id = self.session.conn.info.id;
        match result {
            Err(to_client) => {
                tracing::warn!(conn = id, "backend refused the login");
                let _ = self.session.send(&to_client).await;
            }
            Ok(to_client) => {
                if self.session.send(&to_client).await.is_err() {
                    return;
                }
                let s = &mut self.session;
                // Commands the client pipelined after its login go to the backend, what
                // the backend sent after its answer to the client, before anything else.
                let ahead_client = std::mem::take(&mut s.io.buf);
                let ahead_backend = std::mem::take(&mut bio.buf);
                let t = s.cfg.send_timeout;
                if !ahead_client.is_empty()
                    && write_all(&mut self.stream, &ahead_client, t).await.is_err()
                {
                    return;
                }
                if !ahead_backend.is_empty() && s.send(&ahead_backend).await.is_err() {
                    return;
                }
                // An idle session should hold as little as possible while it lasts:
                // the tunnel runs outside the login's state machines (see Handoff).
                drop((ahead_client, ahead_backend, to_client, bio));
                s.io = LineIo::new();
                let slot = s.handoff.clone();
                slot.put(Box::pin(self.tunnel(id)));
            }
        }
    }

    /// Relays until both sides close or the tunnel is idle for `idle_timeout`.
    async fn tunnel(mut self, id: u64) {
        let s = &mut self.session;
        let limits = RelayLimits {
            idle: s.cfg.idle_timeout,
            max_lifetime: Duration::ZERO,
            drain: s.cfg.drain,
        };
        let end = relay(
            &mut s.conn.stream,
            &mut self.stream,
            limits,
            s.conn.shutdown.clone(),
            &mut AnyEnd,
            Goodbye::default(),
        )
        .await;
        tracing::debug!(conn = id, ?end, "mail tunnel ended");
        if let Some(p) = self.pick.take() {
            if end == RelayEnd::UpstreamError {
                p.failure();
            } else {
                p.success();
            }
        }
    }
}
