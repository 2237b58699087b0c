//! The validated, internal configuration. Nothing here is parsed from text any more:
//! durations are `Duration`s, addresses are typed, references between sections resolved.
//! Modules read these types; they never see the raw file format.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub runtime: Runtime,
    pub log: Log,
    pub admin: Option<Admin>,
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    pub listeners: Vec<ListenerConfig>,
    pub rate_limits: BTreeMap<String, RateLimitConfig>,
    pub conn_limits: BTreeMap<String, ConnLimitConfig>,
    pub maps: BTreeMap<String, MapConfig>,
    pub caches: BTreeMap<String, CacheZoneConfig>,
}

/// `[caches.NAME]`: a response cache zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheZoneConfig {
    pub name: String,
    /// Bytes the memory tier holds.
    pub memory: u64,
    /// The disk tier: directory and bound in bytes.
    pub disk: Option<(PathBuf, u64)>,
}

/// Why a stale object may be served instead of the upstream's answer (nginx's
/// `proxy_cache_use_stale`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UseStale {
    /// The upstream could not be reached or broke (Portico's own 502).
    pub error: bool,
    /// The upstream timed out (Portico's own 504).
    pub timeout: bool,
    /// Another request is refreshing the object.
    pub updating: bool,
    /// The upstream answered one of these statuses.
    pub statuses: Vec<u16>,
}

/// A route's `cache` sub-table.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteCache {
    pub zone: String,
    pub key: KeyTemplate,
    /// Freshness per status (`None`: any) when the upstream gives none.
    pub valid: Vec<(Option<u16>, Duration)>,
    pub use_stale: UseStale,
    pub background_update: bool,
    pub lock: bool,
    pub lock_timeout: Duration,
    /// Any rendering non-empty and not "0": not looked up, not stored.
    pub bypass: Vec<KeyTemplate>,
    /// Any rendering non-empty and not "0": not stored (still looked up).
    pub no_store: Vec<KeyTemplate>,
    /// Methods looked up and stored (uppercase; GET and HEAD by default).
    pub methods: Vec<String>,
    pub store_with_cookies: bool,
    pub store_authorized: bool,
    pub status_header: Option<String>,
    pub max_object: u64,
}

/// `[maps.NAME]`: nginx's map and geo. `$map_NAME` is the value for the request.
#[derive(Debug, Clone, PartialEq)]
pub struct MapConfig {
    pub name: String,
    pub source: KeyTemplate,
    /// Address ranges (the source is an address): the longest prefix wins.
    pub cidr: Vec<(Cidr, String)>,
    /// Exact values, compared as they are.
    pub exact: Vec<(String, String)>,
    /// `~regex` (`~*` without case) values, tried after the exact ones, in the order
    /// of their text.
    pub regex: Vec<(String, String)>,
    pub default: String,
    /// A MaxMind DB (GeoIP2/GeoLite2) and the path of the field read from the
    /// source address's record; its value then goes through `exact`/`regex` if any.
    pub mmdb: Option<(PathBuf, Vec<String>)>,
}

impl MapConfig {
    /// Every value the map can give; `None` when an mmdb field is used as it is.
    pub fn values(&self) -> Option<std::collections::BTreeSet<&str>> {
        if self.mmdb.is_some() && self.exact.is_empty() && self.regex.is_empty() {
            return None;
        }
        let all = self
            .cidr
            .iter()
            .map(|(_, v)| v.as_str())
            .chain(self.exact.iter().map(|(_, v)| v.as_str()))
            .chain(self.regex.iter().map(|(_, v)| v.as_str()))
            .chain([self.default.as_str()])
            .collect();
        Some(all)
    }
}

/// `[rate_limits.NAME]`: nginx's limit_req.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    pub name: String,
    pub key: KeyTemplate,
    /// Thousandths of a request per second.
    pub rate_milli: u64,
    pub burst: u64,
    pub nodelay: bool,
    /// The most keys tracked (least recently used dropped first).
    pub keys: usize,
    /// Answer to a refused request (429 by default).
    pub status: u16,
    /// The level of the log line per refusal (nginx limit_req_log_level; delays one
    /// level lower).
    pub log_level: LogLevel,
    /// `redis://…`: the bucket shared by every instance using that Redis.
    pub store: Option<String>,
}

/// `[conn_limits.NAME]`: nginx's limit_conn.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnLimitConfig {
    pub name: String,
    pub key: KeyTemplate,
    pub max: u32,
    /// Answer to a refused request (503 by default, as nginx).
    pub status: u16,
    pub log_level: LogLevel,
}

/// A log level for lines a config controls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

/// One `access` rule: `allow`/`deny` an address range, or everyone (`from = None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessRule {
    pub allow: bool,
    pub from: Option<Cidr>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Runtime {
    /// Worker threads; 0 means one per core.
    pub workers: usize,
    pub shutdown_timeout: Duration,
    pub pid_file: Option<PathBuf>,
    /// How long `portico upgrade` waits for the new binary to report ready.
    pub upgrade_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AccessLogTarget {
    Stdout,
    Off,
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Log {
    pub level: String,
    pub format: LogFormat,
    pub access_log: AccessLogTarget,
    /// `combined` (nginx), `json`, or a `log.formats` name.
    pub access_log_format: AccessFormat,
    /// The process log's second destination, besides stderr.
    pub file: Option<ProcessLog>,
}

/// How an access log line is written.
#[derive(Debug, Clone, PartialEq)]
pub enum AccessFormat {
    /// nginx's `combined`.
    Combined,
    /// One JSON object per line with Portico's fields.
    Json,
    /// A `log.formats` template.
    Template(LogTemplate),
}

/// A named `log.formats` template (nginx log_format).
#[derive(Debug, Clone, PartialEq)]
pub struct LogTemplate {
    pub name: String,
    pub template: KeyTemplate,
    pub escape: LogEscape,
}

/// How variable values are escaped in a log line (nginx's `escape=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogEscape {
    /// `"`, `\` and bytes outside printable ASCII as `\xHH`.
    Default,
    /// As inside a JSON string.
    Json,
    None,
}

/// Where the process log also goes.
#[derive(Debug, Clone, PartialEq)]
pub enum ProcessLog {
    File(PathBuf),
    /// RFC 5424 datagrams to a local syslog socket (`syslog:unix:/dev/log`).
    SyslogUnix(PathBuf),
    /// RFC 5424 over UDP (`syslog:udp:127.0.0.1:514`).
    SyslogUdp(SocketAddr),
}

/// A route's own access log.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum RouteAccessLog {
    /// The global `log.access_log`.
    #[default]
    Inherit,
    Off,
    To {
        target: AccessLogTarget,
        format: AccessFormat,
        /// Written only when this renders to something other than "" and "0".
        condition: Option<KeyTemplate>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    pub listen: ListenAddr,
}

/// An address Portico listens on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// An address Portico connects to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
    /// A host name, resolved when connecting.
    Host {
        host: String,
        port: u16,
    },
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Tcp(a) => write!(f, "{a}"),
            PeerAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            PeerAddr::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    IpHash,
    Hash,
    RandomTwo,
    LeastTime,
}

impl Balance {
    /// The name the config uses (`round_robin`, …), for status pages and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConn => "least_conn",
            Balance::IpHash => "ip_hash",
            Balance::Hash => "hash",
            Balance::RandomTwo => "random_two",
            Balance::LeastTime => "least_time",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub name: String,
    pub balance: Balance,
    pub hash_key: Option<KeyTemplate>,
    pub servers: Vec<ServerConfig>,
    /// Idle pooled connections kept per server.
    pub keepalive: usize,
    pub keepalive_timeout: Duration,
    pub connect_timeout: Duration,
    /// Longest wait for the response head, and between two reads of the response body.
    pub read_timeout: Duration,
    pub send_timeout: Duration,
    /// How many servers one request may try; 0 = every server once.
    pub tries: usize,
    /// Which outcomes send an (eligible) request to the next server.
    pub next_upstream: NextUpstream,
    /// No further tries once this much time has passed (zero = no limit).
    pub next_upstream_timeout: Duration,
    /// Requests that may wait when every server is at max_conns (0 = none wait: 503).
    pub queue: usize,
    pub queue_timeout: Duration,
    /// Re-resolve host-name servers on this interval, one server per address.
    pub resolve: Option<Duration>,
    pub health: Option<HealthConfig>,
    /// uwsgi: the largest vars block sent (match uWSGI's `buffer-size`); bigger → 431.
    pub max_vars: usize,
    /// https to the servers (`via = "http"` routes and the active health check).
    pub tls: Option<UpstreamTls>,
}

/// TLS towards an upstream's servers.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTls {
    /// The name sent as SNI and verified in the certificate; `None`: the server's host
    /// name, or for an IP address its address (no SNI is sent for an address).
    pub sni: Option<String>,
    /// Verify the server's certificate (default), against `ca` or the system roots.
    pub verify: bool,
    pub ca: Option<PathBuf>,
    /// A client certificate and key (mTLS).
    pub client: Option<(PathBuf, PathBuf)>,
    /// Offer h2 by ALPN and speak HTTP/2 when the server takes it (gRPC).
    pub h2: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub addr: PeerAddr,
    pub weight: u32,
    pub max_fails: u32,
    pub fail_timeout: Duration,
    pub backup: bool,
    pub max_conns: usize,
    pub drain: bool,
    /// After the server comes back, its weight ramps up from 1 over this time.
    pub slow_start: Duration,
}

/// nginx's `proxy_next_upstream` conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NextUpstream {
    pub error: bool,
    pub timeout: bool,
    pub http_500: bool,
    pub http_502: bool,
    pub http_503: bool,
    pub http_504: bool,
}

impl NextUpstream {
    /// Whether an answer with `status` is passed over for the next server.
    pub fn on_status(&self, status: u16) -> bool {
        match status {
            500 => self.http_500,
            502 => self.http_502,
            503 => self.http_503,
            504 => self.http_504,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthCheck {
    Tcp,
    Http,
    Uwsgi,
    Fastcgi,
    Smtp,
    Imap,
    Pop3,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// `None`: the default probe of the module that uses the upstream.
    pub check: Option<HealthCheck>,
    pub uri: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub passes: u32,
    pub fails: u32,
    /// Accepted status range, inclusive.
    pub status: (u16, u16),
    pub body: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Smtp,
    Imap,
    Pop3,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Http => "http",
            Protocol::Smtp => "smtp",
            Protocol::Imap => "imap",
            Protocol::Pop3 => "pop3",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartTls {
    Off,
    On,
    Only,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: Vec<ListenAddr>,
    pub protocol: Protocol,
    pub server_names: Vec<String>,
    pub tls: Option<TlsConfig>,
    pub proxy_protocol: bool,
    pub limits: Limits,
    pub routes: Vec<Route>,
    pub starttls: StartTls,
    pub auth_http: Option<String>,
    pub upstream: Option<String>,
    /// Mail listeners' front-end settings (defaults for other listeners).
    pub mail: MailConfig,
    /// nginx `set_real_ip_from` / `real_ip_header` (HTTP listeners).
    pub real_ip: Option<RealIp>,
    /// The error pages of requests no route takes (unknown path, bad request); routes
    /// without their own inherit them (nginx's server-level `error_page`).
    pub error_pages: ErrorPages,
    /// Mail listeners: `[rate_limits]` applied to login attempts and `[conn_limits]` to
    /// sessions, keyed on the client address.
    pub rate_limit: Vec<String>,
    pub conn_limit: Vec<String>,
}

/// Where the client address comes from when the peer is a trusted proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealIp {
    pub from: Vec<Cidr>,
    /// The header to read (lowercase), or `None` for `proxy_protocol` (the listener's
    /// PROXY header already gives the address).
    pub header: Option<String>,
    /// Walk the header from the right past every trusted address (nginx
    /// `real_ip_recursive on`); else take the last address.
    pub recursive: bool,
}

/// An address range, `10.0.0.0/8` or `::1` (a single address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: std::net::IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or CIDR range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length is 0 to {max}"))?
        };
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` is in the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let bits = |a: IpAddr| -> u128 {
            match a {
                IpAddr::V4(v) => u128::from(u32::from(v)),
                IpAddr::V6(v) => u128::from(v),
            }
        };
        let width = if self.addr.is_ipv4() { 32 } else { 128 };
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        if self.prefix == 0 {
            return true;
        }
        let shift = width - u32::from(self.prefix);
        bits(ip) >> shift == bits(self.addr) >> shift
    }
}

/// A mail listener's front end: replies, limits, timeouts, the lookup's extra headers.
#[derive(Debug, Clone, PartialEq)]
pub struct MailConfig {
    pub greeting: Option<String>,
    pub capabilities: Vec<String>,
    /// Advertised login methods: "plain", "login".
    pub auth: Vec<String>,
    pub max_errors: u32,
    pub timeout: Duration,
    pub login_timeout: Duration,
    pub auth_timeout: Duration,
    pub connect_timeout: Duration,
    pub proxy_timeout: Duration,
    pub xclient: bool,
    /// SMTP: AUTH to the backend with the user's credentials ("plain" / "login").
    pub backend_auth: Option<String>,
    pub auth_http_headers: Vec<(String, String)>,
    pub max_login_failures: u32,
    pub login_failure_window: Duration,
    pub backend_proxy_protocol: bool,
    pub pass_client_cert: bool,
    pub backend_tls: BackendTlsMode,
    pub backend_tls_ca: std::path::PathBuf,
    pub backend_tls_name: Option<String>,
}

/// TLS towards mail backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendTlsMode {
    Off,
    /// TLS from the first byte (993/995/465).
    On,
    /// The protocol's STARTTLS / STLS after the greeting.
    StartTls,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// One or more certificates for the listener's names (RSA and ECDSA: the client's
    /// signature algorithms choose).
    pub certs: Vec<CertFiles>,
    /// ALPN protocols offered, most preferred first.
    pub alpn: Vec<String>,
    /// TLS 1.3 only (else 1.2 and 1.3).
    pub tls13_only: bool,
    pub client_auth: Option<ClientAuth>,
    /// Certificates from an ACME CA (then `certs` is empty: the stored or placeholder
    /// certificate is chosen when the acceptor is built).
    pub acme: Option<AcmeConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AcmeConfig {
    /// TLS-ALPN-01 on the TLS listener (else HTTP-01 on an HTTP listener).
    pub tls_alpn: bool,
    pub directory: String,
    pub email: Option<String>,
    pub domains: Vec<String>,
    pub storage: PathBuf,
    pub directory_ca: Option<PathBuf>,
    pub renew_before: Duration,
    pub check_every: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The OCSP response to staple.
    pub ocsp: Option<Ocsp>,
}

/// Where a certificate's stapled OCSP response comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Ocsp {
    /// A DER response in a file, re-read on reload.
    File(PathBuf),
    /// Fetched by Portico from the responder the certificate names (its Authority
    /// Information Access), refreshed before it expires.
    Fetch,
}

/// Client certificates checked against `ca`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientAuth {
    pub ca: PathBuf,
    /// Without a certificate the handshake fails (else it goes on, unverified).
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_timeout: Duration,
    pub send_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    /// 0 = no limit.
    pub max_body_bytes: u64,
    /// An upgraded (WebSocket) connection with no data either way for this long closes.
    pub websocket_idle_timeout: Duration,
    /// An upgraded connection closes after this long whatever happens (zero = never).
    pub websocket_max_lifetime: Duration,
    /// Request headers whose names contain `_` are kept (nginx `underscores_in_headers`);
    /// by default they are dropped before anything sees them.
    pub underscores_in_headers: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// How the route is written, for logs: `/static/`, `= /favicon.ico`, `~ \.php$`,
    /// `^~ /media/`, `@app` (nginx's notation).
    pub path: String,
    pub matcher: RouteMatch,
    /// `@name` reaches it from try_files and error_pages.
    pub name: Option<String>,
    /// Methods allowed (uppercase; GET implies HEAD); empty = any. Others get 405.
    pub methods: Vec<String>,
    pub action: RouteAction,
    /// Overrides the listener's `max_body_bytes` for this route.
    pub max_body_bytes: Option<u64>,
    /// Set/removed on the request towards the upstream (gateways: as HTTP_* vars).
    pub request_headers: HeaderRules,
    /// Set/removed on the response to the client.
    pub response_headers: HeaderRules,
    /// nginx `rewrite`s, in order.
    pub rewrite: Vec<Rewrite>,
    /// nginx `try_files`.
    pub try_files: Option<TryFiles>,
    /// On-the-fly compression of responses (the route's, else the listener's).
    pub compress: Option<Compress>,
    /// `charset`: appended to text/* and JSON Content-Types that name none.
    pub charset: Option<String>,
    /// Reachable only by internal redirects (rewrite, try_files, X-Accel-Redirect); a
    /// client asking for it directly gets 404 (nginx `internal`).
    pub internal: bool,
    /// nginx `error_page` (and `proxy_intercept_errors`), the route's or the listener's.
    pub error_pages: ErrorPages,
    /// nginx `proxy_cookie_path` / `_domain` / `_flags` on upstream answers.
    pub cookies: CookieRules,
    /// Names of `[rate_limits]` that apply (all of them, nginx's order of limit_req).
    pub rate_limit: Vec<String>,
    /// Names of `[conn_limits]` that apply.
    pub conn_limit: Vec<String>,
    /// nginx allow/deny, first match wins; empty: everyone.
    pub access: Vec<AccessRule>,
    /// nginx auth_basic with an htpasswd file.
    pub basic_auth: Option<BasicAuth>,
    /// nginx auth_request: a subrequest decides.
    pub auth_request: Option<AuthRequest>,
    /// The response cache (proxy, uwsgi and FastCGI routes).
    pub cache: Option<RouteCache>,
    pub access_log: RouteAccessLog,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BasicAuth {
    pub realm: String,
    pub htpasswd: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuthRequest {
    /// An upstream reached over HTTP.
    pub upstream: String,
    /// The path (and query) asked of it.
    pub uri: String,
    /// Headers of its 2xx answer copied into the request to the route's upstream.
    pub copy_headers: Vec<String>,
}

/// Changes to the Set-Cookie headers of an upstream's answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CookieRules {
    /// `Path` prefix → its replacement (a template); the longest matching prefix wins.
    pub path: Vec<(String, KeyTemplate)>,
    /// `Domain` (compared without case and a leading dot) → its replacement.
    pub domain: Vec<(String, KeyTemplate)>,
    /// Cookie name (or `*` for every cookie) → flags set or removed.
    pub flags: Vec<(String, Vec<CookieFlag>)>,
}

impl CookieRules {
    pub fn is_empty(&self) -> bool {
        self.path.is_empty() && self.domain.is_empty() && self.flags.is_empty()
    }
}

/// One of nginx's `proxy_cookie_flags` words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieFlag {
    Secure,
    HttpOnly,
    SameSite(SameSite),
    NoSecure,
    NoHttpOnly,
    NoSameSite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

/// `error_pages`: answers with these statuses are replaced by an internal request to
/// another URI; the client keeps the original status (nginx `error_page CODE URI`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ErrorPages {
    /// By status, ascending.
    pub pages: Vec<(u16, ErrorPage)>,
    /// `intercept_errors`: upstream answers with those statuses are replaced too, not
    /// only Portico's own.
    pub intercept: bool,
}

impl ErrorPages {
    pub fn get(&self, status: u16) -> Option<&ErrorPage> {
        self.pages
            .binary_search_by_key(&status, |(s, _)| *s)
            .ok()
            .map(|i| &self.pages[i].1)
    }

    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ErrorPage {
    /// A URI (with `?args`) matched against the routes, internal ones included.
    Uri(KeyTemplate),
    /// `@name`: that route.
    Named(String),
    /// `http://…` or `https://…`: a 302 there (nginx).
    Redirect(KeyTemplate),
}

/// `compress`: which codings, for which types, from which size, at which levels.
#[derive(Debug, Clone, PartialEq)]
pub struct Compress {
    /// In the server's order of preference.
    pub algorithms: Vec<Coding>,
    /// MIME patterns: `text/*` or `application/json`.
    pub types: Vec<String>,
    pub min_bytes: u64,
    pub gzip_level: u32,
    pub br_level: u32,
    pub zstd_level: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    Br,
    Zstd,
}

impl Coding {
    pub fn token(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Br => "br",
            Coding::Zstd => "zstd",
        }
    }
}

/// One `rewrite`: `from` (a regex on `$uri`) replaced by `to` (its captures as `$N`).
#[derive(Debug, Clone, PartialEq)]
pub struct Rewrite {
    pub from: String,
    pub to: KeyTemplate,
    pub flag: RewriteFlag,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewriteFlag {
    /// No flag: the next rewrite sees the new URI.
    Continue,
    /// Stop rewriting and find the route for the new URI (at most 10 times).
    Last,
    /// Stop rewriting and go on in this route with the new URI.
    Break,
    /// 302 to the new URI.
    Redirect,
    /// 301 to the new URI.
    Permanent,
}

/// `try_files`: paths to look for under the route's root, then where to go.
#[derive(Debug, Clone, PartialEq)]
pub struct TryFiles {
    pub files: Vec<KeyTemplate>,
    pub fallback: Fallback,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Fallback {
    /// A URI (with `?args`): the routes are matched again for it.
    Uri(KeyTemplate),
    /// `@name`: that route.
    Named(String),
    /// `=404`: that status.
    Status(u16),
}

/// How a route matches a request path; precedence is nginx's: exact, then the longest
/// prefix if it has `prefix_wins`, then regexes in file order, then the longest prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteMatch {
    /// `path`: a prefix; `wins` is nginx's `^~` (beats regex routes).
    Prefix { path: String, wins: bool },
    /// `exact`: the whole path (nginx `=`).
    Exact(String),
    /// `regex`: a Rust regex on the path (`(?i)` for nginx's `~*`); `captures` groups.
    Regex { source: String, captures: usize },
    /// Only a `name`: reached by `@name` alone.
    Named,
}

/// Header changes with templated values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderRules {
    pub set: Vec<(String, KeyTemplate)>,
    pub remove: Vec<String>,
    /// Response headers: set on any status, not only 2xx/3xx (nginx `always`).
    pub always: bool,
}

impl HeaderRules {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum RouteAction {
    Static(StaticConfig),
    Proxy(ProxyRoute),
    /// `return`: an answer made by Portico.
    Return(ReturnConfig),
    /// No content of its own: only `rewrite` or `try_files` lead elsewhere (a request
    /// that stays is a 404).
    Empty,
}

/// nginx `return`: a status with a `location` (redirects) or a `body`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReturnConfig {
    pub status: u16,
    pub location: Option<KeyTemplate>,
    pub body: Option<KeyTemplate>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StaticConfig {
    /// With `alias`, the directory that replaces `alias_of`; else nginx's `root` (the
    /// whole path appended).
    pub root: PathBuf,
    pub index: Vec<String>,
    /// `alias`: the route's prefix, replaced by `root` in the file path.
    pub alias_of: Option<String>,
    /// `expires`: Cache-Control max-age and Expires on what is served.
    pub expires: Option<Expires>,
    /// Serve FILE.br / FILE.zst / FILE.gz beside FILE to clients that accept them.
    pub precompressed: bool,
    /// nginx `sendfile`: files over the in-memory table's size go to plain sockets
    /// with sendfile(2) rather than copied through a per-worker buffer.
    pub sendfile: bool,
}

/// nginx `expires`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expires {
    /// `"30d"`: max-age of that many seconds, Expires that far ahead.
    After(Duration),
    /// `"epoch"`: Expires in 1970, `Cache-Control: no-cache`.
    Epoch,
    /// `"max"`: Expires in 2037, max-age of 10 years.
    Max,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Http,
    Uwsgi,
    Fastcgi,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProxyRoute {
    /// The upstream (with `upstream_by`: the first of `upstream_choices`).
    pub upstream: String,
    /// `upstream = "app-$map_region"`: the name rendered per request.
    pub upstream_by: Option<KeyTemplate>,
    /// Every upstream the route can reach (one without `upstream_by`).
    pub upstream_choices: Vec<String>,
    pub via: Via,
    /// Extra uwsgi/FastCGI vars; each replaces a default var of the same name.
    pub params: Vec<(String, KeyTemplate)>,
    /// DOCUMENT_ROOT (and the base of SCRIPT_FILENAME).
    pub root: Option<PathBuf>,
    /// FastCGI: appended to a path ending in `/` for SCRIPT_NAME (nginx `fastcgi_index`).
    pub index: Option<String>,
    /// FastCGI: nginx `fastcgi_split_path_info`, a regex with two captures.
    pub split_path_info: Option<String>,
    /// uwsgi packet modifiers (nginx `uwsgi_modifier1`/`uwsgi_modifier2`).
    pub modifier1: u8,
    pub modifier2: u8,
    /// `via = "http"`: the matched prefix is replaced by this (nginx `proxy_pass
    /// http://up/`).
    pub upstream_path: Option<String>,
    /// Read the whole request body (memory, then a temp file) before an upstream
    /// connection is taken: on by default for uwsgi and FastCGI (nginx's
    /// `*_request_buffering on`), off for `via = "http"` (bodies stream).
    pub request_buffering: bool,
}

/// A key template such as `"$request_uri"` or `"$http_x_tenant:$cookie_session"`: text
/// with variables, rendered per request by the module that knows their values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    pub source: String,
    pub parts: Vec<KeyPart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    Literal(String),
    /// `$request_uri`: path and query as the client sent them.
    RequestUri,
    /// `$uri` or `$document_uri`: the normalized (percent-decoded) path.
    Uri,
    /// `$args` or `$query_string`: the query string.
    Args,
    /// `$host`: the Host header (or h2 :authority).
    Host,
    /// `$remote_addr`: the client address.
    RemoteAddr,
    /// `$user`: the authenticated mail user.
    User,
    /// `$http_NAME`: a request header, NAME with `_` for `-`, lowercase.
    Header(String),
    /// `$cookie_NAME`: a cookie value.
    Cookie(String),
    /// A request fact only gateways (uwsgi, FastCGI `params`) render.
    Gateway(GatewayVar),
    /// `$1` … `$9`: a capture of the matched regex route.
    Capture(u8),
    /// `$map_NAME`: the value `[maps.NAME]` gives this request.
    Map(String),
    /// `$upstream_cache_status`: HIT, MISS, … on a cached route (empty elsewhere).
    CacheStatus,
    /// A fact known once the response is done; only in `log.formats` templates.
    Log(LogVar),
    /// A fact of the connection's TLS session (`$ssl_protocol`, `$ssl_client_s_dn` …);
    /// empty on a plain connection.
    Ssl(SslVar),
}

/// nginx's `$ssl_*` variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslVar {
    Protocol,
    Cipher,
    ServerName,
    /// SUCCESS with a verified client certificate, NONE without one.
    ClientVerify,
    ClientSDn,
    ClientIDn,
    ClientSerial,
    ClientFingerprint,
    /// PEM, its lines after the first starting with a tab (nginx's form; for headers use
    /// the escaped one).
    ClientCert,
    /// PEM, percent-encoded.
    ClientEscapedCert,
}

const SSL_VARS: [(&str, SslVar); 10] = [
    ("ssl_protocol", SslVar::Protocol),
    ("ssl_cipher", SslVar::Cipher),
    ("ssl_server_name", SslVar::ServerName),
    ("ssl_client_verify", SslVar::ClientVerify),
    ("ssl_client_s_dn", SslVar::ClientSDn),
    ("ssl_client_i_dn", SslVar::ClientIDn),
    ("ssl_client_serial", SslVar::ClientSerial),
    ("ssl_client_fingerprint", SslVar::ClientFingerprint),
    ("ssl_client_cert", SslVar::ClientCert),
    ("ssl_client_escaped_cert", SslVar::ClientEscapedCert),
];

/// The variables only a log format has: what the response was and took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogVar {
    /// `$request`: `METHOD URI PROTOCOL`, as sent.
    Request,
    Status,
    BodyBytesSent,
    /// `$bytes_sent`: the body and the response head.
    BytesSent,
    /// Seconds with milliseconds, from the first byte read to the last sent.
    RequestTime,
    UpstreamResponseTime,
    UpstreamAddr,
    UpstreamStatus,
    TimeLocal,
    TimeIso8601,
    /// Seconds since the epoch with milliseconds.
    Msec,
    /// The connection's serial number.
    Connection,
    Pid,
}

const LOG_VARS: [(&str, LogVar); 13] = [
    ("request", LogVar::Request),
    ("status", LogVar::Status),
    ("body_bytes_sent", LogVar::BodyBytesSent),
    ("bytes_sent", LogVar::BytesSent),
    ("request_time", LogVar::RequestTime),
    ("upstream_response_time", LogVar::UpstreamResponseTime),
    ("upstream_addr", LogVar::UpstreamAddr),
    ("upstream_status", LogVar::UpstreamStatus),
    ("time_local", LogVar::TimeLocal),
    ("time_iso8601", LogVar::TimeIso8601),
    ("msec", LogVar::Msec),
    ("connection", LogVar::Connection),
    ("pid", LogVar::Pid),
];

/// The nginx variables a uwsgi/FastCGI `params` value may use on top of the hash-key ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayVar {
    RequestMethod,
    ContentType,
    ContentLength,
    DocumentRoot,
    ServerProtocol,
    Scheme,
    Https,
    RemotePort,
    RemoteUser,
    ServerAddr,
    ServerPort,
    ServerName,
    FastcgiScriptName,
    FastcgiPathInfo,
    RequestFilename,
}

const GATEWAY_VARS: [(&str, GatewayVar); 15] = [
    ("request_method", GatewayVar::RequestMethod),
    ("content_type", GatewayVar::ContentType),
    ("content_length", GatewayVar::ContentLength),
    ("document_root", GatewayVar::DocumentRoot),
    ("server_protocol", GatewayVar::ServerProtocol),
    ("scheme", GatewayVar::Scheme),
    ("https", GatewayVar::Https),
    ("remote_port", GatewayVar::RemotePort),
    ("remote_user", GatewayVar::RemoteUser),
    ("server_addr", GatewayVar::ServerAddr),
    ("server_port", GatewayVar::ServerPort),
    ("server_name", GatewayVar::ServerName),
    ("fastcgi_script_name", GatewayVar::FastcgiScriptName),
    ("fastcgi_path_info", GatewayVar::FastcgiPathInfo),
    ("request_filename", GatewayVar::RequestFilename),
];

impl KeyTemplate {
    /// The highest capture (`$N`) the template uses, 0 for none.
    pub fn max_capture(&self) -> usize {
        self.parts
            .iter()
            .filter_map(|p| match p {
                KeyPart::Capture(n) => Some(usize::from(*n)),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// Parses a `hash_key`: not empty, and only the variables a balancer can use
    /// ($request_uri, $uri, $args, $host, $remote_addr, $user, $http_NAME, $cookie_NAME).
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = Self::parse_value(s)?;
        if t.parts.is_empty() {
            return Err("an empty hash_key hashes every request alike".into());
        }
        if t.parts.iter().any(|p| {
            matches!(
                p,
                KeyPart::Gateway(_) | KeyPart::Capture(_) | KeyPart::CacheStatus
            )
        }) {
            return Err(
                "hash_key takes $request_uri, $uri, $args, $host, $remote_addr, $user, $http_NAME or $cookie_NAME".into(),
            );
        }
        Ok(t)
    }

    /// Parses a template such as a uwsgi/FastCGI `params` value: any text (empty too)
    /// with nginx variables, `$name` or `${name}`.
    pub fn parse_value(s: &str) -> Result<Self, String> {
        Self::parse_with(s, false)
    }

    /// Parses a `log.formats` template: the variables of [`parse_value`](Self::parse_value)
    /// and the log's own ([`LogVar`]: `$status`, `$request_time`, `$time_local` …).
    pub fn parse_log(s: &str) -> Result<Self, String> {
        Self::parse_with(s, true)
    }

    fn parse_with(s: &str, log: bool) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(at) = rest.find('$') {
            if at > 0 {
                parts.push(KeyPart::Literal(rest[..at].to_string()));
            }
            let after = &rest[at + 1..];
            if let Some(d) = after.bytes().next().filter(u8::is_ascii_digit) {
                // `$1`: one digit, as nginx reads it (`$1x` is `$1` then `x`).
                if d == b'0' {
                    return Err(format!("$0 in {s:?}: captures are $1 to $9"));
                }
                parts.push(KeyPart::Capture(d - b'0'));
                rest = &after[1..];
                continue;
            }
            let (name, tail) = match after.strip_prefix('{') {
                Some(braced) => {
                    let end = braced
                        .find('}')
                        .ok_or_else(|| format!("unclosed ${{ in {s:?}"))?;
                    (&braced[..end], &braced[end + 1..])
                }
                None => {
                    let end = after
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(after.len());
                    (&after[..end], &after[end..])
                }
            };
            let part = match name {
                "request_uri" => KeyPart::RequestUri,
                "uri" | "document_uri" => KeyPart::Uri,
                "args" | "query_string" => KeyPart::Args,
                "host" => KeyPart::Host,
                "remote_addr" => KeyPart::RemoteAddr,
                "user" => KeyPart::User,
                "upstream_cache_status" => KeyPart::CacheStatus,
                n if n.starts_with("http_") && n.len() > 5 => {
                    KeyPart::Header(n[5..].replace('_', "-").to_ascii_lowercase())
                }
                n if n.starts_with("cookie_") && n.len() > 7 => KeyPart::Cookie(n[7..].to_string()),
                n if n.starts_with("map_") && n.len() > 4 => {
                    let name = &n[4..];
                    if !crate::validate::map_is_known(name) {
                        return Err(format!("${n}: no [maps.{name}]"));
                    }
                    KeyPart::Map(name.to_string())
                }
                n if SSL_VARS.iter().any(|(name, _)| *name == n) => SSL_VARS
                    .iter()
                    .find(|(name, _)| *name == n)
                    .map_or(KeyPart::Literal(String::new()), |(_, v)| KeyPart::Ssl(*v)),
                n => match GATEWAY_VARS.iter().find(|(name, _)| *name == n) {
                    Some((_, v)) => KeyPart::Gateway(*v),
                    None if LOG_VARS.iter().any(|(name, _)| *name == n) => {
                        match LOG_VARS.iter().find(|(name, _)| *name == n && log) {
                            Some((_, v)) => KeyPart::Log(*v),
                            None => {
                                return Err(format!(
                                    "${n} is known once the response is done: only log formats (log.formats) take it"
                                ))
                            }
                        }
                    }
                    None => {
                        return Err(format!(
                            "unknown variable ${n}: use $request_uri, $uri, $args, $host, $remote_addr, $user, $http_NAME, $cookie_NAME, $map_NAME, $upstream_cache_status or a gateway variable ($request_method, $document_root, $fastcgi_script_name, …)"
                        ))
                    }
                },
            };
            parts.push(part);
            rest = tail;
        }
        if !rest.is_empty() {
            parts.push(KeyPart::Literal(rest.to_string()));
        }
        Ok(Self {
            source: s.to_string(),
            parts,
        })
    }
}
