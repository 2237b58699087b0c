//! The configuration file format, as users write it.
//!
//! These structs mirror the TOML/YAML tree key for key (`deny_unknown_fields`), keep
//! durations, addresses and paths as strings, and carry no behaviour: `validate` turns
//! them into the internal [`crate::Config`]. Defaults live here, in one place.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub runtime: RawRuntime,
    pub log: RawLog,
    pub admin: Option<RawAdmin>,
    pub upstreams: BTreeMap<String, RawUpstream>,
    pub listeners: Vec<RawListener>,
    pub rate_limits: BTreeMap<String, RawRateLimit>,
    pub conn_limits: BTreeMap<String, RawConnLimit>,
    pub maps: BTreeMap<String, RawMap>,
    pub caches: BTreeMap<String, RawCacheZone>,
}

/// `[caches.NAME]`: a response cache zone (nginx proxy_cache_path).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCacheZone {
    pub memory: Option<Size>,
    pub disk: Option<RawCacheDisk>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCacheDisk {
    pub path: Option<String>,
    pub max: Option<Size>,
}

/// A route's `cache` sub-table (nginx proxy_cache, uwsgi_cache, fastcgi_cache and their
/// `_valid`, `_use_stale`, `_lock`, `_bypass`, `_no_cache`, `_methods` directives).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRouteCache {
    pub zone: Option<String>,
    pub key: Option<String>,
    pub valid: BTreeMap<String, String>,
    pub use_stale: Vec<String>,
    pub background_update: bool,
    pub lock: bool,
    pub lock_timeout: Option<String>,
    pub bypass: Vec<String>,
    pub no_store: Vec<String>,
    pub methods: Option<Vec<String>>,
    pub store_with_cookies: bool,
    pub store_authorized: bool,
    pub status_header: Option<String>,
    pub max_object: Option<Size>,
}

/// `[maps.NAME]` (nginx map / geo).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMap {
    pub source: Option<String>,
    pub cidr: BTreeMap<String, String>,
    pub values: BTreeMap<String, String>,
    pub default: Option<String>,
    pub mmdb: Option<String>,
    pub field: Option<String>,
}

/// `[rate_limits.NAME]` (nginx limit_req_zone + limit_req).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRateLimit {
    pub key: Option<String>,
    pub rate: Option<String>,
    pub burst: u64,
    pub nodelay: bool,
    pub keys: Option<usize>,
    pub status: Option<u16>,
    pub log_level: Option<String>,
    pub store: Option<String>,
}

/// `basic_auth = { realm, htpasswd }` (nginx auth_basic + auth_basic_user_file).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBasicAuth {
    pub realm: Option<String>,
    pub htpasswd: Option<String>,
}

/// `auth_request = { upstream, uri, copy_headers }` (nginx auth_request).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuthRequest {
    pub upstream: Option<String>,
    pub uri: Option<String>,
    pub copy_headers: Vec<String>,
}

/// `[conn_limits.NAME]` (nginx limit_conn_zone + limit_conn).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConnLimit {
    pub key: Option<String>,
    pub max: Option<u32>,
    pub status: Option<u16>,
    pub log_level: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRuntime {
    pub workers: usize,
    pub shutdown_timeout: String,
    pub pid_file: Option<String>,
    pub upgrade_timeout: String,
}

impl Default for RawRuntime {
    fn default() -> Self {
        Self {
            workers: 0,
            shutdown_timeout: "30s".into(),
            pid_file: None,
            upgrade_timeout: "30s".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    pub level: String,
    pub format: String,
    pub access_log: String,
    pub access_log_format: String,
    /// Named access log formats (nginx log_format).
    pub formats: BTreeMap<String, RawLogFormat>,
    /// The process log, besides stderr: a file, or `syslog:unix:PATH` / `syslog:udp:HOST:PORT`.
    pub file: Option<String>,
}

/// A `log.formats` entry: a template (nginx's default escaping), or one with `escape`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RawLogFormat {
    Template(String),
    Full(RawLogFormatFull),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogFormatFull {
    pub template: String,
    /// default (nginx: `"`, `\` and non-printable bytes as \xHH), json or none.
    pub escape: Option<String>,
}

/// A route's `access_log`: "off", or where and how.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RawRouteAccessLog {
    Word(String),
    To(RawRouteAccessLogTo),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteAccessLogTo {
    /// A file, or "stdout"; the global `log.access_log` when left out.
    pub path: Option<String>,
    /// combined, json or a `log.formats` name; the global format when left out.
    pub format: Option<String>,
    /// Log only when this renders to something other than "" or "0" (nginx's `if=`).
    #[serde(rename = "if")]
    pub condition: Option<String>,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
            access_log: "stdout".into(),
            access_log_format: "combined".into(),
            formats: BTreeMap::new(),
            file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    pub listen: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9901".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstream {
    pub balance: String,
    pub hash_key: Option<String>,
    pub servers: Vec<RawServer>,
    pub keepalive: usize,
    pub keepalive_timeout: String,
    pub connect_timeout: String,
    pub read_timeout: String,
    pub send_timeout: String,
    pub tries: usize,
    pub next_upstream: Vec<String>,
    pub next_upstream_timeout: String,
    pub queue: usize,
    pub queue_timeout: String,
    pub resolve: Option<String>,
    pub health: Option<RawHealth>,
    pub max_vars: usize,
    pub tls: Option<RawUpstreamTls>,
}

/// `tls = { sni, verify, ca, cert, key, h2 }` on an upstream: https to its servers.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstreamTls {
    pub sni: Option<String>,
    pub verify: Option<bool>,
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub h2: bool,
}

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            balance: "round_robin".into(),
            hash_key: None,
            servers: Vec::new(),
            keepalive: 32,
            keepalive_timeout: "60s".into(),
            connect_timeout: "5s".into(),
            read_timeout: "60s".into(),
            send_timeout: "60s".into(),
            tries: 0,
            next_upstream: vec!["error".into(), "timeout".into()],
            next_upstream_timeout: "0s".into(),
            queue: 0,
            queue_timeout: "10s".into(),
            resolve: None,
            health: None,
            max_vars: 65_535,
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub addr: String,
    pub weight: u32,
    pub max_fails: u32,
    pub fail_timeout: String,
    pub backup: bool,
    pub max_conns: usize,
    pub drain: bool,
    pub slow_start: String,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            addr: String::new(),
            weight: 1,
            max_fails: 1,
            fail_timeout: "10s".into(),
            backup: false,
            max_conns: 0,
            drain: false,
            slow_start: "0s".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHealth {
    pub check: Option<String>,
    pub uri: String,
    pub interval: String,
    pub timeout: String,
    pub passes: u32,
    pub fails: u32,
    pub status: Option<String>,
    pub body: Option<String>,
}

impl Default for RawHealth {
    fn default() -> Self {
        Self {
            check: None,
            uri: "/".into(),
            interval: "5s".into(),
            timeout: "2s".into(),
            passes: 1,
            fails: 1,
            status: None,
            body: None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawListener {
    pub name: Option<String>,
    /// A list, or one address as a string.
    #[serde(deserialize_with = "one_or_many")]
    pub listen: Vec<String>,
    pub protocol: Option<String>,
    pub server_names: Vec<String>,
    pub tls: Option<RawTls>,
    pub proxy_protocol: bool,
    pub limits: RawLimits,
    pub routes: Vec<RawRoute>,
    pub starttls: Option<String>,
    pub auth_http: Option<String>,
    pub upstream: Option<String>,
    pub mail: Option<RawMail>,
    pub compress: Option<RawCompress>,
    pub real_ip: Option<RawRealIp>,
    /// Defaults for routes that give none, and the pages for requests no route takes.
    pub error_pages: Option<BTreeMap<String, String>>,
    pub intercept_errors: Option<bool>,
    /// Mail listeners: limits keyed on the client address (logins, sessions).
    pub rate_limit: Vec<String>,
    pub conn_limit: Vec<String>,
}

/// `[listeners.mail]`: the mail front end's settings (nginx's names in comments).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMail {
    /// The greeting text after `* OK` / `+OK` / `220 NAME` (default nginx's).
    pub greeting: Option<String>,
    /// imap_capabilities / pop3_capabilities / smtp_capabilities (default nginx's).
    pub capabilities: Option<Vec<String>>,
    /// imap_auth / smtp_auth: the methods advertised (plain, login).
    pub auth: Option<Vec<String>>,
    /// Invalid commands before the session is closed (max_errors).
    pub max_errors: u32,
    /// Waiting for a client command before login (timeout).
    pub timeout: String,
    /// The whole session before login: greeting to an accepted login.
    pub login_timeout: String,
    /// The auth_http exchange (auth_http_timeout).
    pub auth_timeout: String,
    /// Connecting and logging in to the backend.
    pub connect_timeout: String,
    /// The tunnel with nothing moving either way (proxy_timeout).
    pub proxy_timeout: String,
    /// SMTP: XCLIENT to backends that advertise it (xclient).
    pub xclient: bool,
    /// SMTP: log in to the backend with the user's credentials: off, plain, login.
    pub backend_auth: String,
    /// Extra headers sent to the auth server (auth_http_header).
    pub auth_http_headers: BTreeMap<String, String>,
    /// Failed logins one client address may have within `login_failure_window` before
    /// its further attempts are refused without a lookup; 0 = no limit.
    pub max_login_failures: u32,
    pub login_failure_window: String,
    /// Send a PROXY protocol v2 header with the client's address to backends.
    pub backend_proxy_protocol: bool,
    /// Auth-SSL-Cert (the client certificate, URL-encoded PEM) to the auth server
    /// (nginx's `auth_http_pass_client_cert`).
    pub pass_client_cert: bool,
    /// TLS to backends: off, on (implicit), starttls.
    pub backend_tls: String,
    /// The CA bundle backend certificates are verified against.
    pub backend_tls_ca: String,
    /// The name backend certificates must carry; default: the backend's IP address.
    pub backend_tls_name: Option<String>,
}

impl Default for RawMail {
    fn default() -> Self {
        Self {
            greeting: None,
            capabilities: None,
            auth: None,
            max_errors: 5,
            timeout: "60s".into(),
            login_timeout: "5m".into(),
            auth_timeout: "60s".into(),
            connect_timeout: "60s".into(),
            proxy_timeout: "24h".into(),
            xclient: true,
            backend_auth: "off".into(),
            auth_http_headers: BTreeMap::new(),
            max_login_failures: 0,
            login_failure_window: "5m".into(),
            backend_proxy_protocol: false,
            pass_client_cert: false,
            backend_tls: "off".into(),
            backend_tls_ca: "/etc/ssl/certs/ca-certificates.crt".into(),
            backend_tls_name: None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTls {
    /// One certificate (or `certs` for several).
    pub cert: Option<String>,
    pub key: Option<String>,
    /// Several certificates for the same names (RSA and ECDSA), chosen per client.
    pub certs: Vec<RawCert>,
    pub alpn: Option<Vec<String>>,
    /// "1.2" (the default: TLS 1.2 and 1.3) or "1.3".
    pub min_version: Option<String>,
    pub client_auth: Option<RawClientAuth>,
    /// A DER OCSP response for `cert`, stapled (re-read on reload).
    pub ocsp: Option<String>,
    /// Certificates obtained and renewed from an ACME CA.
    pub acme: Option<RawAcme>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    pub directory: String,
    pub email: Option<String>,
    pub domains: Vec<String>,
    pub challenge: Option<String>,
    pub storage: String,
    /// A CA bundle for the directory's own HTTPS (a private CA, pebble).
    pub directory_ca: Option<String>,
    /// Renew when the certificate has less than this left (default 30d).
    pub renew_before: Option<String>,
    /// How often expiry is looked at (default 12h).
    pub check_every: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawCert {
    pub cert: String,
    pub key: String,
    pub ocsp: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientAuth {
    pub ca: String,
    /// required (the default) or optional.
    pub mode: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    pub header_timeout: String,
    pub idle_timeout: String,
    pub body_timeout: String,
    pub send_timeout: String,
    pub max_connections: usize,
    pub max_header_bytes: Size,
    pub max_body_bytes: Size,
    pub websocket_idle_timeout: String,
    pub websocket_max_lifetime: String,
    pub underscores_in_headers: bool,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            header_timeout: "10s".into(),
            idle_timeout: "75s".into(),
            body_timeout: "60s".into(),
            send_timeout: "60s".into(),
            max_connections: 10_000,
            max_header_bytes: Size(65_536),
            max_body_bytes: Size(0),
            websocket_idle_timeout: "1h".into(),
            websocket_max_lifetime: "0s".into(),
            underscores_in_headers: false,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRoute {
    pub path: String,
    pub exact: Option<String>,
    pub regex: Option<String>,
    pub prefix_wins: bool,
    pub name: Option<String>,
    pub methods: Option<Vec<String>>,
    #[serde(rename = "return")]
    pub ret: Option<RawReturn>,
    pub request_headers: Option<RawHeaderRules>,
    pub response_headers: Option<RawHeaderRules>,
    pub rewrite: Vec<RawRewrite>,
    pub try_files: Option<Vec<String>>,
    pub upstream_path: Option<String>,
    pub compress: Option<RawCompress>,
    pub charset: Option<String>,
    pub internal: bool,
    /// `"404" = "/404.html"`; a key may list several statuses (`"502 503 504"`).
    pub error_pages: Option<BTreeMap<String, String>>,
    pub intercept_errors: Option<bool>,
    /// nginx proxy_cookie_path / _domain / _flags on the upstream's Set-Cookie.
    pub cookie_path: Option<BTreeMap<String, String>>,
    pub cookie_domain: Option<BTreeMap<String, String>>,
    pub cookie_flags: Option<BTreeMap<String, Vec<String>>>,
    pub rate_limit: Vec<String>,
    pub conn_limit: Vec<String>,
    pub access: Vec<String>,
    pub basic_auth: Option<RawBasicAuth>,
    pub auth_request: Option<RawAuthRequest>,
    pub cache: Option<RawRouteCache>,
    pub access_log: Option<RawRouteAccessLog>,
    pub upstream: Option<String>,
    pub via: Option<String>,
    #[serde(rename = "static")]
    pub static_files: Option<RawStatic>,
    pub params: BTreeMap<String, String>,
    pub root: Option<String>,
    pub index: Option<String>,
    pub split_path_info: Option<String>,
    pub modifier1: Option<u8>,
    pub modifier2: Option<u8>,
    pub max_body_bytes: Option<Size>,
    pub request_buffering: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawReturn {
    pub status: u16,
    pub location: Option<String>,
    pub body: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRealIp {
    pub from: Vec<String>,
    pub header: Option<String>,
    pub recursive: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCompress {
    pub algorithms: Option<Vec<String>>,
    pub types: Option<Vec<String>>,
    pub min_bytes: Option<Size>,
    pub levels: BTreeMap<String, i32>,
    /// `false` on a route turns the listener's compression off there.
    pub enabled: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRewrite {
    pub from: String,
    pub to: String,
    pub flag: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHeaderRules {
    pub set: BTreeMap<String, String>,
    pub remove: Vec<String>,
    /// response_headers only: set whatever the status (nginx's `always`).
    pub always: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStatic {
    pub root: String,
    pub alias: Option<String>,
    pub expires: Option<String>,
    pub precompressed: bool,
    pub index: Vec<String>,
    pub sendfile: bool,
}

/// A size in bytes, written as a number (`1048576`) or as nginx writes sizes: `512k`,
/// `10m`, `1g` (powers of 1024; `K`, `M`, `G` too, and `KiB`, `MiB`, `GiB`, `MB`, …
/// which mean the same powers of 1024).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Size(pub u64);

impl Size {
    /// ```
    /// use portico_config::raw::Size;
    /// assert_eq!(Size::parse("1048576"), Ok(1_048_576));
    /// assert_eq!(Size::parse("512k"), Ok(512 * 1024));
    /// assert_eq!(Size::parse("10m"), Ok(10 << 20));
    /// assert_eq!(Size::parse("1G"), Ok(1 << 30));
    /// assert_eq!(Size::parse("256MiB"), Ok(256 << 20));
    /// assert_eq!(Size::parse("10 GB"), Ok(10 << 30));
    /// assert_eq!(Size::parse("8kib"), Ok(8 << 10));
    /// assert!(Size::parse("10x").is_err());
    /// assert!(Size::parse("m").is_err());
    /// assert!(Size::parse("-1k").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<u64, String> {
        let mut t = text.trim();
        for suffix in ["ib", "iB", "IB", "Ib", "b", "B"] {
            match t.strip_suffix(suffix) {
                Some(rest) if rest.ends_with(|c: char| "kKmMgG".contains(c)) => {
                    t = rest;
                    break;
                }
                _ => {}
            }
        }
        let (digits, unit) = match t.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], Some(c.to_ascii_lowercase())),
            _ => (t, None),
        };
        let bad = || {
            format!("invalid size {text:?}: a number of bytes, or 512k, 10m, 1g (or 512KiB, 10MiB, 1GiB)")
        };
        let n: u64 = digits.trim().parse().map_err(|_| bad())?;
        let mult: u64 = match unit {
            None => 1,
            Some('k') => 1 << 10,
            Some('m') => 1 << 20,
            Some('g') => 1 << 30,
            Some(_) => return Err(bad()),
        };
        n.checked_mul(mult).ok_or_else(bad)
    }
}

impl Serialize for Size {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a size: a number of bytes, or \"512k\", \"10m\", \"1g\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom(format!("invalid size {v}: sizes are not negative")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Size, E> {
                Size::parse(v).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A list of strings, or one string for a list of one (`listen = "127.0.0.1:80"`, or
/// one address from an env var).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}
