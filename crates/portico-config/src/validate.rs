//! Raw file structs → internal [`Config`], collecting *every* error with its origin.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::model::*;
use crate::raw::*;
use crate::source::{Layers, Origin};
use crate::ConfigError;

/// Parses "250ms", "10s", "5m", "1h", "2d"; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid duration {s:?}: expected a number and a unit, like \"250ms\" or \"10s\"")
    })?;
    let ms = match unit {
        "ms" => n,
        "" | "s" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        "d" => n.saturating_mul(86_400_000),
        other => {
            return Err(format!(
                "invalid duration {s:?}: unknown unit {other:?} (use ms, s, m, h or d)"
            ))
        }
    };
    Ok(Duration::from_millis(ms))
}

/// Parses `unix:/path` or `host:port` / `[v6]:port` listen addresses.
fn parse_listen(s: &str, base: &Path) -> Result<ListenAddr, String> {
    if let Some(p) = s.strip_prefix("unix:") {
        if p.is_empty() {
            return Err("unix: needs a socket path".into());
        }
        return Ok(ListenAddr::Unix(resolve(base, p)));
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(ListenAddr::Tcp(a));
    }
    if let Some((host, port)) = s.rsplit_once(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("invalid port in listen address {s:?}"))?;
        if host == "*" {
            return Ok(ListenAddr::Tcp(SocketAddr::from(([0, 0, 0, 0], port))));
        }
        if host == "localhost" {
            return Ok(ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], port))));
        }
        if let Ok(mut addrs) = (host, port).to_socket_addrs() {
            if let Some(a) = addrs.next() {
                return Ok(ListenAddr::Tcp(a));
            }
        }
        return Err(format!("cannot resolve listen address {s:?}"));
    }
    if let Ok(port) = s.parse::<u16>() {
        return Ok(ListenAddr::Tcp(SocketAddr::from(([0, 0, 0, 0], port))));
    }
    Err(format!(
        "invalid listen address {s:?}: expected \"HOST:PORT\", \"[V6]:PORT\" or \"unix:/PATH\""
    ))
}

fn parse_peer(s: &str, base: &Path) -> Result<PeerAddr, String> {
    if s.is_empty() {
        return Err("a server needs an addr".into());
    }
    if let Some(p) = s.strip_prefix("unix:") {
        if p.is_empty() {
            return Err("unix: needs a socket path".into());
        }
        return Ok(PeerAddr::Unix(resolve(base, p)));
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(PeerAddr::Tcp(a));
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.contains(['/', ' ']) => {
            let port: u16 = port
                .parse()
                .map_err(|_| format!("invalid port in server address {s:?}"))?;
            Ok(PeerAddr::Host {
                host: host.trim_matches(['[', ']']).to_string(),
                port,
            })
        }
        _ => Err(format!(
            "invalid server address {s:?}: expected \"HOST:PORT\", \"[V6]:PORT\" or \"unix:/PATH\""
        )),
    }
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

struct Validator<'a> {
    layers: &'a Layers,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    fn err(&mut self, path: &str, message: impl Into<String>) {
        let origin = self.layers.origin(path);
        self.errors
            .push(ConfigError::at(origin, path, message.into()));
    }

    /// The directory relative paths at `path` are resolved against: the directory of the
    /// file that set the value, else the working directory.
    fn base(&self, path: &str) -> PathBuf {
        match self.layers.origin(path) {
            Origin::File { path, .. } => path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(".")),
            _ => PathBuf::from("."),
        }
    }

    fn duration(&mut self, path: &str, s: &str) -> Duration {
        parse_duration(s).unwrap_or_else(|e| {
            self.err(path, e);
            Duration::ZERO
        })
    }

    fn one_of<T: Copy>(&mut self, path: &str, s: &str, options: &[(&str, T)]) -> Option<T> {
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == s) {
            return Some(*v);
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        self.err(
            path,
            format!("invalid value {s:?}: expected one of {}", names.join(", ")),
        );
        None
    }
}

thread_local! {
    /// The `[maps]` names of the config being validated: `$map_NAME` in any template
    /// parsed meanwhile must name one (templates are parsed in many places; this keeps
    /// the one parser the judge).
    static KNOWN_MAPS: std::cell::RefCell<Option<std::collections::BTreeSet<String>>> =
        const { std::cell::RefCell::new(None) };
}

/// Whether `$map_NAME` names a map of the config being validated (outside a
/// validation, any name).
pub(crate) fn map_is_known(name: &str) -> bool {
    KNOWN_MAPS.with(|k| k.borrow().as_ref().is_none_or(|m| m.contains(name)))
}

/// Sets the known maps for the validation in progress, until dropped.
struct MapsInScope;

impl MapsInScope {
    fn new(names: impl Iterator<Item = String>) -> Self {
        KNOWN_MAPS.with(|k| *k.borrow_mut() = Some(names.collect()));
        MapsInScope
    }
}

impl Drop for MapsInScope {
    fn drop(&mut self) {
        KNOWN_MAPS.with(|k| *k.borrow_mut() = None);
    }
}

/// The validated config, or every error found.
pub(crate) fn validate(raw: &RawConfig, layers: &Layers) -> Result<Config, Vec<ConfigError>> {
    let mut v = Validator {
        layers,
        errors: Vec::new(),
    };
    let _maps_in_scope = MapsInScope::new(raw.maps.keys().cloned());
    let maps: BTreeMap<String, MapConfig> = raw
        .maps
        .iter()
        .filter_map(|(name, m)| {
            validate_map(&mut v, &format!("maps.{name}"), name, m).map(|c| (name.clone(), c))
        })
        .collect();
    map_cycles(&mut v, &maps);

    let runtime = Runtime {
        workers: raw.runtime.workers,
        shutdown_timeout: v.duration("runtime.shutdown_timeout", &raw.runtime.shutdown_timeout),
        pid_file: raw
            .runtime
            .pid_file
            .as_ref()
            .map(|p| resolve(&v.base("runtime.pid_file"), p)),
        upgrade_timeout: v.duration("runtime.upgrade_timeout", &raw.runtime.upgrade_timeout),
    };

    let level = raw.log.level.to_ascii_lowercase();
    if !["error", "warn", "info", "debug", "trace"].contains(&level.as_str()) {
        v.err(
            "log.level",
            format!(
                "invalid value {:?}: expected one of error, warn, info, debug, trace",
                raw.log.level
            ),
        );
    }
    let formats = [("text", LogFormat::Text), ("json", LogFormat::Json)];
    let format = v
        .one_of("log.format", &raw.log.format, &formats)
        .unwrap_or(LogFormat::Text);
    let mut log_formats = BTreeMap::new();
    for (name, f) in &raw.log.formats {
        let p = format!("log.formats.{name}");
        if ["combined", "json", "off"].contains(&name.as_str()) {
            v.err(
                &p,
                format!("{name:?} is a built-in format: give yours another name"),
            );
            continue;
        }
        let (text, escape, tp) = match f {
            RawLogFormat::Template(t) => (t, None, p.clone()),
            RawLogFormat::Full(full) => (
                &full.template,
                full.escape.as_deref(),
                format!("{p}.template"),
            ),
        };
        let escapes = [
            ("default", LogEscape::Default),
            ("json", LogEscape::Json),
            ("none", LogEscape::None),
        ];
        let escape = match escape {
            None => LogEscape::Default,
            Some(e) => v
                .one_of(&format!("{p}.escape"), e, &escapes)
                .unwrap_or(LogEscape::Default),
        };
        match KeyTemplate::parse_log(text) {
            Ok(template) => {
                log_formats.insert(
                    name.clone(),
                    LogTemplate {
                        name: name.clone(),
                        template,
                        escape,
                    },
                );
            }
            Err(e) => v.err(&tp, e),
        }
    }
    let access_log_format = access_format(
        &mut v,
        "log.access_log_format",
        &raw.log.access_log_format,
        &log_formats,
    )
    .unwrap_or(AccessFormat::Combined);
    let access_log = access_target(&mut v, "log.access_log", &raw.log.access_log)
        .unwrap_or(AccessLogTarget::Off);
    let file = raw
        .log
        .file
        .as_deref()
        .and_then(|f| process_log(&mut v, "log.file", f));
    let log = Log {
        level,
        format,
        access_log,
        access_log_format,
        file,
    };

    let admin =
        raw.admin
            .as_ref()
            .and_then(|a| match parse_listen(&a.listen, &v.base("admin.listen")) {
                Ok(listen) => Some(Admin { listen }),
                Err(e) => {
                    v.err("admin.listen", e);
                    None
                }
            });

    let mut upstreams = BTreeMap::new();
    for (name, u) in &raw.upstreams {
        let p = format!("upstreams.{name}");
        if let Some(cfg) = validate_upstream(&mut v, &p, name, u) {
            upstreams.insert(name.clone(), cfg);
        }
    }

    let rate_limits: BTreeMap<String, RateLimitConfig> = raw
        .rate_limits
        .iter()
        .filter_map(|(name, r)| {
            validate_rate_limit(&mut v, &format!("rate_limits.{name}"), name, r)
                .map(|c| (name.clone(), c))
        })
        .collect();
    let conn_limits: BTreeMap<String, ConnLimitConfig> = raw
        .conn_limits
        .iter()
        .filter_map(|(name, r)| {
            validate_conn_limit(&mut v, &format!("conn_limits.{name}"), name, r)
                .map(|c| (name.clone(), c))
        })
        .collect();
    let caches: BTreeMap<String, CacheZoneConfig> = raw
        .caches
        .iter()
        .filter_map(|(name, c)| {
            validate_cache_zone(&mut v, &format!("caches.{name}"), name, c)
                .map(|c| (name.clone(), c))
        })
        .collect();
    let known = Known {
        log: &log,
        log_formats: &log_formats,
        maps: &maps,
        caches: &raw.caches,
        upstreams: &upstreams,
        rate_limits: &raw.rate_limits,
        conn_limits: &raw.conn_limits,
    };

    let mut listeners = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    for (i, l) in raw.listeners.iter().enumerate() {
        let p = format!("listeners.{i}");
        let cfg = validate_listener(&mut v, &p, i, l, &known);
        if let Some(prev) = names.insert(cfg.name.clone(), i) {
            v.err(
                &format!("{p}.name"),
                format!(
                    "listener name {:?} is already used by listeners.{prev}",
                    cfg.name
                ),
            );
        }
        listeners.push(cfg);
    }
    check_shared_addresses(&mut v, &listeners, admin.as_ref());

    if v.errors.is_empty() {
        Ok(Config {
            runtime,
            log,
            admin,
            upstreams,
            listeners,
            rate_limits,
            conn_limits,
            maps,
            caches,
        })
    } else {
        Err(v.errors)
    }
}

fn validate_map(v: &mut Validator<'_>, p: &str, name: &str, m: &RawMap) -> Option<MapConfig> {
    let source = match m.source.as_deref() {
        None => {
            v.err(
                &format!("{p}.source"),
                "a map needs a source template, e.g. source = \"$remote_addr\"",
            );
            None
        }
        Some(s) => match KeyTemplate::parse_value(s) {
            Ok(t) if t.max_capture() > 0 => {
                v.err(
                    &format!("{p}.source"),
                    "a map's source cannot use regex captures",
                );
                None
            }
            Ok(t) => Some(t),
            Err(e) => {
                v.err(&format!("{p}.source"), e);
                None
            }
        },
    };
    let mmdb = match (&m.mmdb, &m.field) {
        (None, None) => None,
        (Some(f), Some(field)) => {
            let path = resolve(&v.base(&format!("{p}.mmdb")), f);
            if let Err(e) = std::fs::metadata(&path) {
                v.err(
                    &format!("{p}.mmdb"),
                    format!("cannot read {}: {e}", path.display()),
                );
            }
            let steps: Vec<String> = field.split('.').map(str::to_string).collect();
            if steps.iter().any(String::is_empty) {
                v.err(
                    &format!("{p}.field"),
                    format!("{field:?}: a path such as \"country.iso_code\""),
                );
            }
            if !m.cidr.is_empty() {
                v.err(p, "a map reads an mmdb file or cidr ranges, not both");
            }
            Some((path, steps))
        }
        (Some(_), None) => {
            v.err(
                &format!("{p}.field"),
                "an mmdb map needs field = \"country.iso_code\" (a path into the record)",
            );
            None
        }
        (None, Some(_)) => {
            v.err(&format!("{p}.mmdb"), "field goes with mmdb = \"FILE.mmdb\"");
            None
        }
    };
    let mut cidr = Vec::new();
    for (range, value) in &m.cidr {
        match Cidr::parse(range) {
            Ok(c) => cidr.push((c, value.clone())),
            Err(e) => v.err(&format!("{p}.cidr.{range}"), e),
        }
    }
    let mut exact = Vec::new();
    let mut regex = Vec::new();
    for (pattern, value) in &m.values {
        let re = match (pattern.strip_prefix("~*"), pattern.strip_prefix('~')) {
            (Some(r), _) => Some(format!("(?i){r}")),
            (None, Some(r)) => Some(r.to_string()),
            (None, None) => None,
        };
        match re {
            Some(r) => match regex::Regex::new(&r) {
                Ok(_) => regex.push((r, value.clone())),
                Err(e) => v.err(
                    &format!("{p}.values.{pattern}"),
                    format!("bad regex: {}", one_line(&e)),
                ),
            },
            None => exact.push((pattern.clone(), value.clone())),
        }
    }
    let has_values = !exact.is_empty() || !regex.is_empty();
    if !cidr.is_empty() && has_values && mmdb.is_none() {
        v.err(
            p,
            "a map has cidr ranges (an address source) or values, not both",
        );
    }
    Some(MapConfig {
        name: name.to_string(),
        source: source?,
        cidr,
        exact,
        regex,
        default: m.default.clone().unwrap_or_default(),
        mmdb,
    })
}

/// A map whose source uses itself, directly or through others, has no value.
fn map_cycles(v: &mut Validator<'_>, maps: &BTreeMap<String, MapConfig>) {
    fn uses(m: &MapConfig) -> impl Iterator<Item = &str> {
        m.source.parts.iter().filter_map(|p| match p {
            KeyPart::Map(n) => Some(n.as_str()),
            _ => None,
        })
    }
    for start in maps.keys() {
        let mut stack: Vec<&str> = vec![start];
        let mut seen = std::collections::BTreeSet::new();
        while let Some(at) = stack.pop() {
            for next in maps.get(at).into_iter().flat_map(uses) {
                if next == start {
                    v.err(
                        &format!("maps.{start}.source"),
                        format!("$map_{start} depends on itself (through $map_{at})"),
                    );
                    return;
                }
                if seen.insert(next) {
                    stack.push(next);
                }
            }
        }
    }
}

/// The upstream names `upstream = "app-$map_region"` can give: every value of every
/// map it uses, in every combination (`None` if it uses anything but maps).
fn upstream_choices(t: &KeyTemplate, maps: &BTreeMap<String, MapConfig>) -> Option<Vec<String>> {
    let mut names = vec![String::new()];
    for part in &t.parts {
        match part {
            KeyPart::Literal(s) => names.iter_mut().for_each(|n| n.push_str(s)),
            KeyPart::Map(m) => {
                let values = maps.get(m)?.values()?;
                names = names
                    .iter()
                    .flat_map(|n| values.iter().map(move |v| format!("{n}{v}")))
                    .collect();
            }
            _ => return None,
        }
    }
    Some(names)
}

/// "no upstream named …", with the nearest name when one is near.
fn no_upstream(name: &str, upstreams: &BTreeMap<String, UpstreamConfig>) -> String {
    match crate::closest(name, upstreams.keys().map(String::as_str)) {
        Some(near) => format!("no upstream named {name:?} (did you mean {near:?}?)"),
        None => format!("no upstream named {name:?}"),
    }
}

/// An HTTP token (RFC 9110 §5.6.2): what a header name is.
fn is_token(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// What routes may name: upstreams and limits.
/// `log.access_log` or a route's `path`: stdout, off, or a file (relative to the file
/// that says it).
fn access_target(v: &mut Validator<'_>, p: &str, s: &str) -> Option<AccessLogTarget> {
    Some(match s {
        "stdout" => AccessLogTarget::Stdout,
        "off" => AccessLogTarget::Off,
        "" => {
            v.err(p, "expected stdout, off or a file path");
            return None;
        }
        path => AccessLogTarget::File(resolve(&v.base(p), path)),
    })
}

/// `combined`, `json`, or a name of `log.formats` (with a "did you mean").
fn access_format(
    v: &mut Validator<'_>,
    p: &str,
    s: &str,
    formats: &BTreeMap<String, LogTemplate>,
) -> Option<AccessFormat> {
    match s {
        "combined" => Some(AccessFormat::Combined),
        "json" => Some(AccessFormat::Json),
        name => match formats.get(name) {
            Some(t) => Some(AccessFormat::Template(t.clone())),
            None => {
                let mut names: Vec<&str> = vec!["combined", "json"];
                names.extend(formats.keys().map(String::as_str));
                let hint = crate::closest(name, names.into_iter())
                    .map(|c| format!(" (did you mean {c:?}?)"))
                    .unwrap_or_default();
                v.err(
                    p,
                    format!(
                        "unknown format {name:?}{hint}: expected combined, json or a name of [log.formats]"
                    ),
                );
                None
            }
        },
    }
}

/// `log.file`: a path, `syslog:unix:PATH` or `syslog:udp:HOST:PORT`.
fn process_log(v: &mut Validator<'_>, p: &str, s: &str) -> Option<ProcessLog> {
    if let Some(rest) = s.strip_prefix("syslog:") {
        if let Some(path) = rest.strip_prefix("unix:") {
            return Some(ProcessLog::SyslogUnix(PathBuf::from(path)));
        }
        if let Some(addr) = rest.strip_prefix("udp:") {
            match addr.parse::<std::net::SocketAddr>() {
                Ok(a) => return Some(ProcessLog::SyslogUdp(a)),
                Err(_) => {
                    v.err(
                        p,
                        format!("{addr:?} is not IP:PORT (syslog:udp:127.0.0.1:514)"),
                    );
                    return None;
                }
            }
        }
        v.err(
            p,
            "expected syslog:unix:/dev/log or syslog:udp:IP:PORT after \"syslog:\"",
        );
        return None;
    }
    if s.is_empty() {
        v.err(
            p,
            "expected a file path, syslog:unix:PATH or syslog:udp:IP:PORT",
        );
        return None;
    }
    Some(ProcessLog::File(resolve(&v.base(p), s)))
}

fn route_access_log(
    v: &mut Validator<'_>,
    p: &str,
    raw: &RawRouteAccessLog,
    known: &Known<'_>,
) -> RouteAccessLog {
    match raw {
        RawRouteAccessLog::Word(w) if w == "off" => RouteAccessLog::Off,
        RawRouteAccessLog::Word(w) => {
            v.err(
                p,
                format!("{w:?}: expected \"off\" or {{ path, format, if }}"),
            );
            RouteAccessLog::Inherit
        }
        RawRouteAccessLog::To(to) => {
            let target = match &to.path {
                Some(path) => access_target(v, &format!("{p}.path"), path),
                None => Some(known.log.access_log.clone()),
            };
            let format = match &to.format {
                Some(f) => access_format(v, &format!("{p}.format"), f, known.log_formats),
                None => Some(known.log.access_log_format.clone()),
            };
            let condition = to.condition.as_ref().and_then(|c| {
                KeyTemplate::parse_log(c)
                    .map_err(|e| v.err(&format!("{p}.if"), e))
                    .ok()
            });
            match (target, format) {
                (Some(AccessLogTarget::Off), _) => RouteAccessLog::Off,
                (Some(target), Some(format)) => RouteAccessLog::To {
                    target,
                    format,
                    condition,
                },
                _ => RouteAccessLog::Inherit,
            }
        }
    }
}

/// A TLS file the listener names: it must be readable (relative to the config file).
fn tls_file(v: &mut Validator<'_>, kp: &str, val: &str) -> PathBuf {
    if val.is_empty() {
        v.err(kp, "expected a file path");
        return PathBuf::new();
    }
    let path = resolve(&v.base(kp), val);
    if let Err(e) = std::fs::metadata(&path) {
        v.err(kp, format!("cannot read {}: {e}", path.display()));
    }
    path
}

struct Known<'a> {
    log: &'a Log,
    log_formats: &'a BTreeMap<String, LogTemplate>,
    maps: &'a BTreeMap<String, MapConfig>,
    caches: &'a BTreeMap<String, RawCacheZone>,
    upstreams: &'a BTreeMap<String, UpstreamConfig>,
    rate_limits: &'a BTreeMap<String, RawRateLimit>,
    conn_limits: &'a BTreeMap<String, RawConnLimit>,
}

fn limit_key(v: &mut Validator<'_>, p: &str, key: Option<&str>) -> Option<KeyTemplate> {
    let Some(k) = key else {
        v.err(
            &format!("{p}.key"),
            "a limit needs a key template, e.g. key = \"$remote_addr\"",
        );
        return None;
    };
    match KeyTemplate::parse(k) {
        Ok(t) if t.max_capture() > 0 => {
            v.err(
                &format!("{p}.key"),
                "a limit's key cannot use regex captures",
            );
            None
        }
        Ok(t) => Some(t),
        Err(e) => {
            v.err(&format!("{p}.key"), e);
            None
        }
    }
}

fn log_level(v: &mut Validator<'_>, k: &str, given: Option<&str>) -> LogLevel {
    let levels = [
        ("error", LogLevel::Error),
        ("warn", LogLevel::Warn),
        ("info", LogLevel::Info),
        ("debug", LogLevel::Debug),
    ];
    v.one_of(k, given.unwrap_or("error"), &levels)
        .unwrap_or(LogLevel::Error)
}

fn refusal_status(v: &mut Validator<'_>, k: &str, given: Option<u16>, default: u16) -> u16 {
    let s = given.unwrap_or(default);
    if !(400..=599).contains(&s) {
        v.err(k, "a refusal status is from 400 to 599");
    }
    s
}

fn validate_cache_zone(
    v: &mut Validator<'_>,
    p: &str,
    name: &str,
    c: &RawCacheZone,
) -> Option<CacheZoneConfig> {
    let memory = c.memory.map_or(64 << 20, |s| s.0);
    if memory == 0 {
        v.err(
            &format!("{p}.memory"),
            "a zone needs some memory (e.g. \"256MiB\")",
        );
    }
    let disk = c.disk.as_ref().and_then(|d| {
        let k = format!("{p}.disk");
        let Some(path) = &d.path else {
            v.err(&k, "a disk tier needs path = \"DIR\" (and max = \"10GiB\")");
            return None;
        };
        let path = resolve(&v.base(&format!("{k}.path")), path);
        let max = match d.max {
            Some(m) if m.0 > 0 => m.0,
            Some(_) => {
                v.err(
                    &format!("{k}.max"),
                    "a disk tier's max is more than 0 bytes",
                );
                0
            }
            None => {
                v.err(
                    &format!("{k}.max"),
                    "a disk tier needs max = \"10GiB\" (its bound)",
                );
                0
            }
        };
        Some((path, max))
    });
    Some(CacheZoneConfig {
        name: name.to_string(),
        memory,
        disk,
    })
}

/// The statuses `use_stale = ["http_NNN"]` may name (nginx's, plus any 5xx written
/// out), and `http_5xx` for all of 500..=599.
fn use_stale(v: &mut Validator<'_>, k: &str, raw: &[String]) -> UseStale {
    let mut u = UseStale::default();
    for (i, item) in raw.iter().enumerate() {
        match item.as_str() {
            "error" | "invalid_header" => u.error = true,
            "timeout" => u.timeout = true,
            "updating" => u.updating = true,
            "http_5xx" => u.statuses.extend(500..=599),
            other => match other
                .strip_prefix("http_")
                .and_then(|n| n.parse::<u16>().ok())
                .filter(|n| (400..=599).contains(n))
            {
                Some(n) => u.statuses.push(n),
                None => v.err(
                    &format!("{k}.{i}"),
                    format!(
                        "{other:?}: use_stale takes error, timeout, updating, http_500, http_502, http_503, http_504, http_403, http_404, http_429 or http_5xx"
                    ),
                ),
            },
        }
    }
    u
}

fn route_cache(
    v: &mut Validator<'_>,
    k: &str,
    c: &RawRouteCache,
    known: &Known<'_>,
) -> Option<RouteCache> {
    let zone = match &c.zone {
        Some(z) if known.caches.contains_key(z) => z.clone(),
        Some(z) => {
            let hint = match crate::closest(z, known.caches.keys().map(String::as_str)) {
                Some(n) => format!(" (did you mean {n:?}?)"),
                None => String::new(),
            };
            v.err(&format!("{k}.zone"), format!("no [caches.{z}]{hint}"));
            String::new()
        }
        None => {
            v.err(
                &format!("{k}.zone"),
                "a route's cache needs zone = \"NAME\" ([caches.NAME])",
            );
            return None;
        }
    };
    let template =
        |v: &mut Validator<'_>, key: &str, text: &str| match KeyTemplate::parse_value(text) {
            Ok(t) if t.max_capture() > 0 => {
                // captures are per route: allowed (the route is known when the key renders)
                Some(t)
            }
            Ok(t) => Some(t),
            Err(e) => {
                v.err(key, e);
                None
            }
        };
    let key_text = c.key.as_deref().unwrap_or("$scheme$host$request_uri");
    let key = template(v, &format!("{k}.key"), key_text);
    if key.as_ref().is_some_and(|t| t.parts.is_empty()) {
        v.err(
            &format!("{k}.key"),
            "an empty key makes every request one object",
        );
    }
    if key
        .as_ref()
        .is_some_and(|t| t.parts.contains(&KeyPart::CacheStatus))
    {
        v.err(
            &format!("{k}.key"),
            "$upstream_cache_status is not known before the lookup",
        );
    }
    let mut valid = Vec::new();
    for (statuses, d) in &c.valid {
        let vk = format!("{k}.valid.{statuses}");
        let d = v.duration(&vk, d);
        for s in statuses.split_whitespace() {
            if s == "any" {
                valid.push((None, d));
                continue;
            }
            match s.parse::<u16>() {
                Ok(n) if (200..=599).contains(&n) => valid.push((Some(n), d)),
                _ => v.err(&vk, format!("{s:?}: a status (200 to 599) or \"any\"")),
            }
        }
    }
    let lock_timeout = c
        .lock_timeout
        .as_deref()
        .map_or(Duration::from_secs(5), |t| {
            v.duration(&format!("{k}.lock_timeout"), t)
        });
    let conditions = |v: &mut Validator<'_>, name: &str, raw: &[String]| -> Vec<KeyTemplate> {
        raw.iter()
            .enumerate()
            .filter_map(|(i, t)| template(v, &format!("{k}.{name}.{i}"), t))
            .collect()
    };
    let bypass = conditions(v, "bypass", &c.bypass);
    let no_store = conditions(v, "no_store", &c.no_store);
    let methods = match &c.methods {
        None => vec!["GET".to_string(), "HEAD".to_string()],
        Some(m) => {
            let mut out = Vec::new();
            for (i, name) in m.iter().enumerate() {
                let up = name.to_ascii_uppercase();
                if !["GET", "HEAD", "POST"].contains(&up.as_str()) {
                    v.err(
                        &format!("{k}.methods.{i}"),
                        format!("{name:?}: a cache stores GET, HEAD or POST answers"),
                    );
                }
                out.push(up);
            }
            if out.iter().any(|m| m == "GET") && !out.iter().any(|m| m == "HEAD") {
                out.push("HEAD".into());
            }
            out
        }
    };
    let status_header = c.status_header.clone().filter(|h| {
        let ok = is_token(h);
        if !ok {
            v.err(
                &format!("{k}.status_header"),
                format!("{h:?} is not a header name"),
            );
        }
        ok
    });
    let max_object = c.max_object.map_or(8 << 20, |s| s.0);
    let zone_memory = known
        .caches
        .get(&zone)
        .and_then(|z| z.memory)
        .map_or(64 << 20, |s| s.0);
    let zone_disk = known
        .caches
        .get(&zone)
        .and_then(|z| z.disk.as_ref())
        .and_then(|d| d.max)
        .map_or(0, |s| s.0);
    if known.caches.contains_key(&zone) && max_object > zone_memory.max(zone_disk) {
        v.err(
            &format!("{k}.max_object"),
            format!("max_object ({max_object} bytes) is larger than [caches.{zone}] can hold"),
        );
    }
    Some(RouteCache {
        zone,
        key: key?,
        valid,
        use_stale: use_stale(v, &format!("{k}.use_stale"), &c.use_stale),
        background_update: c.background_update,
        lock: c.lock,
        lock_timeout,
        bypass,
        no_store,
        methods,
        store_with_cookies: c.store_with_cookies,
        store_authorized: c.store_authorized,
        status_header,
        max_object,
    })
}

fn validate_rate_limit(
    v: &mut Validator<'_>,
    p: &str,
    name: &str,
    r: &RawRateLimit,
) -> Option<RateLimitConfig> {
    let key = limit_key(v, p, r.key.as_deref());
    let rate = match r.rate.as_deref() {
        None => {
            v.err(
                &format!("{p}.rate"),
                "a rate limit needs a rate: \"10r/s\" or \"600r/m\"",
            );
            None
        }
        Some(t) => match parse_rate(t) {
            Ok(r) => Some(r),
            Err(e) => {
                v.err(&format!("{p}.rate"), e);
                None
            }
        },
    };
    let keys = r.keys.unwrap_or(100_000);
    if keys == 0 {
        v.err(&format!("{p}.keys"), "keys must be at least 1");
    }
    if let Some(s) = &r.store {
        let known = ["redis://", "rediss://", "redis+unix://", "unix://"];
        if !known.iter().any(|k| s.starts_with(k)) {
            v.err(
                &format!("{p}.store"),
                format!("{s:?}: a store is redis://HOST:PORT/DB (or rediss://, unix://)"),
            );
        }
    }
    let status = refusal_status(v, &format!("{p}.status"), r.status, 429);
    let log_level = log_level(v, &format!("{p}.log_level"), r.log_level.as_deref());
    Some(RateLimitConfig {
        name: name.to_string(),
        key: key?,
        rate_milli: rate?,
        burst: r.burst,
        nodelay: r.nodelay,
        keys: keys.max(1),
        status,
        log_level,
        store: r.store.clone(),
    })
}

/// nginx's `10r/s` / `600r/m` in thousandths of a request per second (nginx's own
/// arithmetic: r/m is truncated to whole thousandths per second).
///
/// ```
/// assert_eq!(portico_config::parse_rate("10r/s"), Ok(10_000));
/// assert_eq!(portico_config::parse_rate("600r/m"), Ok(10_000));
/// assert_eq!(portico_config::parse_rate("1r/m"), Ok(16));
/// assert!(portico_config::parse_rate("10/s").is_err());
/// assert!(portico_config::parse_rate("0r/s").is_err());
/// ```
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?}: a rate is N r/s or N r/m (\"10r/s\", \"600r/m\")");
    let (n, per) = text.trim().split_once("r/").ok_or_else(bad)?;
    let n: u64 = n.trim().parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(format!("{text:?}: a rate of 0 lets nothing through"));
    }
    match per.trim() {
        "s" => Ok(n * 1000),
        "m" => Ok((n * 1000 / 60).max(1)),
        _ => Err(bad()),
    }
}

fn validate_conn_limit(
    v: &mut Validator<'_>,
    p: &str,
    name: &str,
    r: &RawConnLimit,
) -> Option<ConnLimitConfig> {
    let key = limit_key(v, p, r.key.as_deref());
    let max = match r.max {
        Some(m) if m > 0 => Some(m),
        Some(_) => {
            v.err(&format!("{p}.max"), "max must be at least 1");
            None
        }
        None => {
            v.err(
                &format!("{p}.max"),
                "a conn limit needs max (requests in flight per key)",
            );
            None
        }
    };
    let status = refusal_status(v, &format!("{p}.status"), r.status, 503);
    let log_level = log_level(v, &format!("{p}.log_level"), r.log_level.as_deref());
    Some(ConnLimitConfig {
        name: name.to_string(),
        key: key?,
        max: max?,
        status,
        log_level,
    })
}

/// `access = ["allow 10.0.0.0/8", "allow ::1", "deny all"]`.
fn access_rules(v: &mut Validator<'_>, k: &str, raw: &[String]) -> Vec<AccessRule> {
    let mut out = Vec::new();
    for (i, rule) in raw.iter().enumerate() {
        let kk = format!("{k}.{i}");
        let mut words = rule.split_whitespace();
        let allow = match words.next() {
            Some("allow") => true,
            Some("deny") => false,
            _ => {
                v.err(
                    &kk,
                    format!("{rule:?}: a rule is \"allow ADDRESS\", \"deny CIDR\" or \"deny all\""),
                );
                continue;
            }
        };
        let from = match (words.next(), words.next()) {
            (Some("all"), None) => None,
            (Some(c), None) => match Cidr::parse(c) {
                Ok(c) => Some(c),
                Err(e) => {
                    v.err(&kk, e);
                    continue;
                }
            },
            _ => {
                v.err(
                    &kk,
                    format!(
                        "{rule:?}: one address, CIDR range or `all` after {}",
                        if allow { "allow" } else { "deny" }
                    ),
                );
                continue;
            }
        };
        out.push(AccessRule { allow, from });
    }
    out
}

fn validate_upstream(
    v: &mut Validator<'_>,
    p: &str,
    name: &str,
    u: &RawUpstream,
) -> Option<UpstreamConfig> {
    let balances = [
        ("round_robin", Balance::RoundRobin),
        ("least_conn", Balance::LeastConn),
        ("ip_hash", Balance::IpHash),
        ("hash", Balance::Hash),
        ("random_two", Balance::RandomTwo),
        ("least_time", Balance::LeastTime),
    ];
    let balance = v.one_of(&format!("{p}.balance"), &u.balance, &balances);
    let mut next_upstream = NextUpstream::default();
    for (i, cond) in u.next_upstream.iter().enumerate() {
        let flag = match cond.as_str() {
            "error" => &mut next_upstream.error,
            "timeout" => &mut next_upstream.timeout,
            "http_500" => &mut next_upstream.http_500,
            "http_502" => &mut next_upstream.http_502,
            "http_503" => &mut next_upstream.http_503,
            "http_504" => &mut next_upstream.http_504,
            "off" => continue,
            other => {
                v.err(
                    &format!("{p}.next_upstream.{i}"),
                    format!("invalid value {other:?}: expected error, timeout, http_500, http_502, http_503, http_504 or off"),
                );
                continue;
            }
        };
        *flag = true;
    }
    let hash_key = u
        .hash_key
        .as_deref()
        .and_then(|k| match KeyTemplate::parse(k) {
            Ok(t) => Some(t),
            Err(e) => {
                v.err(&format!("{p}.hash_key"), e);
                None
            }
        });
    if balance == Some(Balance::Hash) && u.hash_key.is_none() {
        v.err(
            &format!("{p}.hash_key"),
            "balance = \"hash\" needs a hash_key, e.g. \"$request_uri\"",
        );
    }
    if u.servers.is_empty() {
        v.err(
            &format!("{p}.servers"),
            "an upstream needs at least one server",
        );
    }
    let mut servers = Vec::new();
    for (i, s) in u.servers.iter().enumerate() {
        let sp = format!("{p}.servers.{i}");
        let addr = match parse_peer(&s.addr, &v.base(&format!("{sp}.addr"))) {
            Ok(a) => Some(a),
            Err(e) => {
                v.err(&format!("{sp}.addr"), e);
                None
            }
        };
        if s.weight == 0 {
            v.err(&format!("{sp}.weight"), "weight must be at least 1");
        }
        let fail_timeout = v.duration(&format!("{sp}.fail_timeout"), &s.fail_timeout);
        let slow_start = v.duration(&format!("{sp}.slow_start"), &s.slow_start);
        if let Some(addr) = addr {
            servers.push(ServerConfig {
                addr,
                weight: s.weight.max(1),
                max_fails: s.max_fails,
                fail_timeout,
                backup: s.backup,
                max_conns: s.max_conns,
                drain: s.drain,
                slow_start,
            });
        }
    }
    let health = u.health.as_ref().map(|h| {
        let hp = format!("{p}.health");
        let checks = [
            ("tcp", HealthCheck::Tcp),
            ("http", HealthCheck::Http),
            ("uwsgi", HealthCheck::Uwsgi),
            ("fastcgi", HealthCheck::Fastcgi),
            ("smtp", HealthCheck::Smtp),
            ("imap", HealthCheck::Imap),
            ("pop3", HealthCheck::Pop3),
        ];
        let check = h
            .check
            .as_deref()
            .and_then(|c| v.one_of(&format!("{hp}.check"), c, &checks));
        let status = match h.status.as_deref() {
            None => (200, 399),
            Some(s) => parse_status_range(s).unwrap_or_else(|| {
                v.err(
                    &format!("{hp}.status"),
                    format!("invalid status range {s:?}: expected \"200\" or \"200-399\""),
                );
                (200, 399)
            }),
        };
        if !h.uri.starts_with('/') {
            v.err(&format!("{hp}.uri"), "uri must start with /");
        }
        HealthConfig {
            check,
            uri: h.uri.clone(),
            interval: v.duration(&format!("{hp}.interval"), &h.interval),
            timeout: v.duration(&format!("{hp}.timeout"), &h.timeout),
            passes: h.passes.max(1),
            fails: h.fails.max(1),
            status,
            body: h.body.clone(),
        }
    });
    Some(UpstreamConfig {
        name: name.to_string(),
        balance: balance?,
        hash_key,
        servers,
        keepalive: u.keepalive,
        keepalive_timeout: v.duration(&format!("{p}.keepalive_timeout"), &u.keepalive_timeout),
        connect_timeout: v.duration(&format!("{p}.connect_timeout"), &u.connect_timeout),
        read_timeout: v.duration(&format!("{p}.read_timeout"), &u.read_timeout),
        send_timeout: v.duration(&format!("{p}.send_timeout"), &u.send_timeout),
        tries: u.tries,
        next_upstream,
        next_upstream_timeout: v.duration(
            &format!("{p}.next_upstream_timeout"),
            &u.next_upstream_timeout,
        ),
        queue: u.queue,
        queue_timeout: v.duration(&format!("{p}.queue_timeout"), &u.queue_timeout),
        resolve: u.resolve.as_ref().map(|r| {
            let d = v.duration(&format!("{p}.resolve"), r);
            if d.is_zero() {
                v.err(
                    &format!("{p}.resolve"),
                    "resolve needs an interval of at least 1s",
                );
            }
            d
        }),
        health,
        tls: u
            .tls
            .as_ref()
            .map(|t| upstream_tls(v, &format!("{p}.tls"), t)),
        max_vars: {
            if !(1..=65_535).contains(&u.max_vars) {
                v.err(
                    &format!("{p}.max_vars"),
                    "max_vars is between 1 and 65535 (the uwsgi packet limit)",
                );
            }
            u.max_vars.clamp(1, 65_535)
        },
    })
}

fn parse_status_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: u16 = a.trim().parse().ok()?;
    let b: u16 = b.trim().parse().ok()?;
    ((100..=599).contains(&a) && (a..=599).contains(&b)).then_some((a, b))
}

fn validate_listener(
    v: &mut Validator<'_>,
    p: &str,
    index: usize,
    l: &RawListener,
    known: &Known<'_>,
) -> ListenerConfig {
    let upstreams = known.upstreams;
    let protocols = [
        ("http", Protocol::Http),
        ("smtp", Protocol::Smtp),
        ("imap", Protocol::Imap),
        ("pop3", Protocol::Pop3),
    ];
    let protocol = v
        .one_of(
            &format!("{p}.protocol"),
            l.protocol.as_deref().unwrap_or("http"),
            &protocols,
        )
        .unwrap_or(Protocol::Http);
    if l.listen.is_empty() {
        v.err(
            &format!("{p}.listen"),
            "a listener needs at least one address",
        );
    }
    let mut listen = Vec::new();
    for (i, a) in l.listen.iter().enumerate() {
        let ap = format!("{p}.listen.{i}");
        match parse_listen(a, &v.base(&ap)) {
            Ok(addr) => listen.push(addr),
            Err(e) => v.err(&ap, e),
        }
    }
    for (i, n) in l.server_names.iter().enumerate() {
        let valid = !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '*' | '_'))
            && (!n.contains('*') || (n.starts_with("*.") && n.matches('*').count() == 1));
        if !valid {
            v.err(
                &format!("{p}.server_names.{i}"),
                format!("invalid server name {n:?}: use \"example.com\" or \"*.example.com\""),
            );
        }
    }
    let tls = l.tls.as_ref().map(|t| {
        let tp = format!("{p}.tls");
        let file = |v: &mut Validator<'_>, key: &str, val: &str| tls_file(v, &format!("{tp}.{key}"), val);
        let ocsp = |v: &mut Validator<'_>, key: &str, val: &str| match val {
            "fetch" => Ocsp::Fetch,
            _ => Ocsp::File(tls_file(v, &format!("{tp}.{key}"), val)),
        };
        let mut certs = Vec::new();
        match (&t.cert, &t.key, t.certs.is_empty()) {
            (Some(c), Some(k), true) => certs.push(CertFiles {
                cert: file(v, "cert", c),
                key: file(v, "key", k),
                ocsp: t.ocsp.as_deref().map(|o| ocsp(v, "ocsp", o)),
            }),
            (None, None, false) => {
                for (i, c) in t.certs.iter().enumerate() {
                    certs.push(CertFiles {
                        cert: file(v, &format!("certs.{i}.cert"), &c.cert),
                        key: file(v, &format!("certs.{i}.key"), &c.key),
                        ocsp: c.ocsp.as_deref().map(|o| ocsp(v, &format!("certs.{i}.ocsp"), o)),
                    });
                }
                if t.ocsp.is_some() {
                    v.err(&format!("{tp}.ocsp"), "with certs, each certificate names its own ocsp");
                }
            }
            (_, _, false) => v.err(
                &format!("{tp}.certs"),
                "give cert and key, or certs = [{ cert, key }, …], not both",
            ),
            (None, None, true) if t.acme.is_some() => {}
            (None, _, true) => v.err(&format!("{tp}.cert"), "tls needs a cert file (or certs, or acme)"),
            (Some(_), None, true) => v.err(&format!("{tp}.key"), "tls needs a key file"),
        }
        let alpn = t.alpn.clone().unwrap_or_else(|| {
            if protocol == Protocol::Http {
                vec!["h2".into(), "http/1.1".into()]
            } else {
                Vec::new()
            }
        });
        let tls13_only = match t.min_version.as_deref() {
            None | Some("1.2") => false,
            Some("1.3") => true,
            Some(other) => {
                let why = if ["1.0", "1.1"].contains(&other) {
                    " (TLS 1.0 and 1.1 are not offered: rustls does not implement them; docs/http.md says what to do)"
                } else {
                    ""
                };
                v.err(
                    &format!("{tp}.min_version"),
                    format!("{other:?}: expected \"1.2\" or \"1.3\"{why}"),
                );
                false
            }
        };
        let client_auth = t.client_auth.as_ref().map(|c| {
            let ca = file(v, "client_auth.ca", &c.ca);
            let required = match c.mode.as_deref() {
                None | Some("required") => true,
                Some("optional") => false,
                Some(m) => {
                    v.err(
                        &format!("{tp}.client_auth.mode"),
                        format!("{m:?}: expected \"required\" or \"optional\""),
                    );
                    true
                }
            };
            ClientAuth { ca, required }
        });
        let acme = t.acme.as_ref().map(|a| {
            let ap = format!("{tp}.acme");
            if !certs.is_empty() {
                v.err(&ap, "acme obtains the certificate: give no cert/certs beside it");
            }
            let tls_alpn = match a.challenge.as_deref() {
                None | Some("http-01") => false,
                Some("tls-alpn-01") => true,
                Some(c) => {
                    v.err(
                        &format!("{ap}.challenge"),
                        format!("{c:?}: expected \"http-01\" or \"tls-alpn-01\""),
                    );
                    false
                }
            };
            if a.domains.is_empty() {
                v.err(&format!("{ap}.domains"), "name at least one domain");
            }
            if !a.directory.starts_with("https://") && !a.directory.starts_with("http://") {
                v.err(&format!("{ap}.directory"), "expected the directory's URL (https://…/directory)");
            }
            if a.storage.is_empty() {
                v.err(&format!("{ap}.storage"), "expected a directory for the account and certificates");
            }
            AcmeConfig {
                tls_alpn,
                directory: a.directory.clone(),
                email: a.email.clone(),
                domains: a.domains.clone(),
                storage: resolve(&v.base(&format!("{ap}.storage")), &a.storage),
                directory_ca: a
                    .directory_ca
                    .as_deref()
                    .map(|c| tls_file(v, &format!("{ap}.directory_ca"), c)),
                renew_before: v.duration(
                    &format!("{ap}.renew_before"),
                    a.renew_before.as_deref().unwrap_or("30d"),
                ),
                check_every: v.duration(
                    &format!("{ap}.check_every"),
                    a.check_every.as_deref().unwrap_or("12h"),
                ),
            }
        });
        TlsConfig {
            certs,
            alpn,
            tls13_only,
            client_auth,
            acme,
        }
    });
    let lp = format!("{p}.limits");
    let limits = Limits {
        header_timeout: v.duration(&format!("{lp}.header_timeout"), &l.limits.header_timeout),
        idle_timeout: v.duration(&format!("{lp}.idle_timeout"), &l.limits.idle_timeout),
        body_timeout: v.duration(&format!("{lp}.body_timeout"), &l.limits.body_timeout),
        send_timeout: v.duration(&format!("{lp}.send_timeout"), &l.limits.send_timeout),
        max_connections: l.limits.max_connections,
        max_header_bytes: usize::try_from(l.limits.max_header_bytes.0).unwrap_or(usize::MAX),
        max_body_bytes: l.limits.max_body_bytes.0,
        websocket_idle_timeout: v.duration(
            &format!("{lp}.websocket_idle_timeout"),
            &l.limits.websocket_idle_timeout,
        ),
        websocket_max_lifetime: v.duration(
            &format!("{lp}.websocket_max_lifetime"),
            &l.limits.websocket_max_lifetime,
        ),
        underscores_in_headers: l.limits.underscores_in_headers,
    };
    if limits.max_connections == 0 {
        v.err(&format!("{lp}.max_connections"), "must be at least 1");
    }
    if limits.max_header_bytes < 1024 {
        v.err(&format!("{lp}.max_header_bytes"), "must be at least 1024");
    }

    let mut routes = Vec::new();
    let listener_pages = l
        .error_pages
        .as_ref()
        .map(|m| error_pages(v, &format!("{p}.error_pages"), m))
        .unwrap_or_default();
    let listener_intercept = l.intercept_errors.unwrap_or(false);
    if protocol != Protocol::Http {
        not_here(
            v,
            p,
            &[
                ("error_pages", l.error_pages.is_some()),
                ("intercept_errors", l.intercept_errors.is_some()),
            ],
            "applies to http listeners",
        );
    }
    if protocol == Protocol::Http {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut seen_exact: HashMap<&str, usize> = HashMap::new();
        let mut seen_names: HashMap<&str, usize> = HashMap::new();
        for (i, r) in l.routes.iter().enumerate() {
            let rp = format!("{p}.routes.{i}");
            if !r.path.is_empty() {
                if let Some(prev) = seen.insert(r.path.as_str(), i) {
                    v.err(
                        &format!("{rp}.path"),
                        format!("path {:?} is already routed by {p}.routes.{prev}", r.path),
                    );
                }
            }
            if let Some(e) = &r.exact {
                if let Some(prev) = seen_exact.insert(e.as_str(), i) {
                    v.err(
                        &format!("{rp}.exact"),
                        format!("exact {e:?} is already routed by {p}.routes.{prev}"),
                    );
                }
            }
            if let Some(n) = &r.name {
                if let Some(prev) = seen_names.insert(n.as_str(), i) {
                    v.err(
                        &format!("{rp}.name"),
                        format!("name {n:?} is already taken by {p}.routes.{prev}"),
                    );
                }
            }
            if let Some(mut route) = validate_route(v, &rp, r, known) {
                route.compress = compress(
                    v,
                    &format!("{rp}.compress"),
                    r.compress.as_ref(),
                    l.compress.as_ref(),
                    &format!("{p}.compress"),
                );
                if r.error_pages.is_none() {
                    route.error_pages.pages = listener_pages.clone();
                }
                route.error_pages.intercept = r.intercept_errors.unwrap_or(listener_intercept);
                routes.push(route);
            }
        }
        if routes.len() == l.routes.len() {
            // (with a route refused, indices would not be the config's)
            rewrite_loops(v, p, &routes);
        }
        for (i, r) in l.routes.iter().enumerate() {
            let named = r
                .try_files
                .as_ref()
                .and_then(|t| t.last())
                .and_then(|f| f.strip_prefix('@'));
            if let Some(n) = named {
                if !l.routes.iter().any(|o| o.name.as_deref() == Some(n)) {
                    let last = r.try_files.as_ref().map_or(0, |t| t.len() - 1);
                    v.err(
                        &format!("{p}.routes.{i}.try_files.{last}"),
                        format!("@{n}: no route has name = {n:?}"),
                    );
                }
            }
        }
        let named_pages = l.error_pages.iter().map(|m| (p.to_string(), m)).chain(
            l.routes.iter().enumerate().filter_map(|(i, r)| {
                r.error_pages
                    .as_ref()
                    .map(|m| (format!("{p}.routes.{i}"), m))
            }),
        );
        for (at, pages) in named_pages {
            for (code, target) in pages {
                if let Some(n) = target.strip_prefix('@') {
                    if !l.routes.iter().any(|o| o.name.as_deref() == Some(n)) {
                        v.err(
                            &format!("{at}.error_pages.{code}"),
                            format!("@{n}: no route has name = {n:?}"),
                        );
                    }
                }
            }
        }
        if l.auth_http.is_some() {
            v.err(
                &format!("{p}.auth_http"),
                "auth_http is for mail listeners (smtp, imap, pop3)",
            );
        }
        if l.starttls.is_some() {
            v.err(
                &format!("{p}.starttls"),
                "starttls is for mail listeners (smtp, imap, pop3)",
            );
        }
    } else {
        if !l.routes.is_empty() {
            v.err(&format!("{p}.routes"), "routes are for http listeners");
        }
        match l.auth_http.as_deref() {
            None => v.err(
                &format!("{p}.protocol"),
                format!("a {protocol} listener needs auth_http = \"http://HOST:PORT/PATH\""),
            ),
            Some(u) if !u.starts_with("http://") || u.len() <= "http://".len() => v.err(
                &format!("{p}.auth_http"),
                format!("auth_http {u:?}: expected an http://HOST[:PORT]/PATH URL"),
            ),
            Some(_) => {}
        }
    }
    let starttls = match l.starttls.as_deref() {
        None => StartTls::Off,
        Some(s) => v
            .one_of(
                &format!("{p}.starttls"),
                s,
                &[
                    ("off", StartTls::Off),
                    ("on", StartTls::On),
                    ("only", StartTls::Only),
                ],
            )
            .unwrap_or(StartTls::Off),
    };
    if let Some(u) = &l.upstream {
        if !upstreams.contains_key(u) {
            v.err(&format!("{p}.upstream"), no_upstream(u, upstreams));
        }
    }
    let mail = validate_mail(v, &format!("{p}.mail"), protocol, l.mail.as_ref());
    if protocol == Protocol::Http && l.mail.is_some() {
        v.err(
            &format!("{p}.mail"),
            "mail settings are for smtp, imap and pop3 listeners",
        );
    }
    let real_ip = l.real_ip.as_ref().map(|r| {
        let k = format!("{p}.real_ip");
        if protocol != Protocol::Http {
            v.err(
                &k,
                "real_ip is for http listeners (mail listeners take proxy_protocol)",
            );
        }
        let from = r
            .from
            .iter()
            .enumerate()
            .filter_map(|(i, c)| match Cidr::parse(c) {
                Ok(c) => Some(c),
                Err(e) => {
                    v.err(&format!("{k}.from.{i}"), e);
                    None
                }
            })
            .collect::<Vec<_>>();
        if r.from.is_empty() {
            v.err(
                &format!("{k}.from"),
                "list the proxies to trust (CIDR ranges)",
            );
        }
        let header = match r.header.as_deref() {
            None => Some("x-forwarded-for".to_string()),
            Some("proxy_protocol") => {
                if !l.proxy_protocol {
                    v.err(
                        &format!("{k}.header"),
                        "proxy_protocol needs proxy_protocol = true on the listener",
                    );
                }
                None
            }
            Some(h)
                if !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                Some(h.to_ascii_lowercase())
            }
            Some(h) => {
                v.err(
                    &format!("{k}.header"),
                    format!("{h:?} is not a header name"),
                );
                None
            }
        };
        RealIp {
            from,
            header,
            recursive: r.recursive.unwrap_or(true),
        }
    });
    if protocol == Protocol::Http {
        not_here(
            v,
            p,
            &[
                ("rate_limit", !l.rate_limit.is_empty()),
                ("conn_limit", !l.conn_limit.is_empty()),
            ],
            "on an http listener goes on its routes",
        );
    }
    for (i, n) in l.rate_limit.iter().enumerate() {
        if !known.rate_limits.contains_key(n) {
            v.err(
                &format!("{p}.rate_limit.{i}"),
                format!("no [rate_limits.{n}]"),
            );
        }
    }
    for (i, n) in l.conn_limit.iter().enumerate() {
        if !known.conn_limits.contains_key(n) {
            v.err(
                &format!("{p}.conn_limit.{i}"),
                format!("no [conn_limits.{n}]"),
            );
        }
    }
    ListenerConfig {
        rate_limit: l.rate_limit.clone(),
        conn_limit: l.conn_limit.clone(),
        error_pages: ErrorPages {
            pages: listener_pages,
            intercept: listener_intercept,
        },
        real_ip,
        mail,
        name: l.name.clone().unwrap_or_else(|| format!("listener{index}")),
        listen,
        protocol,
        server_names: l.server_names.clone(),
        tls,
        proxy_protocol: l.proxy_protocol,
        limits,
        routes,
        starttls,
        auth_http: l.auth_http.clone(),
        upstream: l.upstream.clone(),
    }
}

fn validate_mail(
    v: &mut Validator<'_>,
    p: &str,
    protocol: Protocol,
    m: Option<&RawMail>,
) -> MailConfig {
    let default = RawMail::default();
    let m = m.unwrap_or(&default);
    let (caps, auth): (&[&str], &[&str]) = match protocol {
        Protocol::Imap => (&["IMAP4", "IMAP4rev1", "UIDPLUS"], &["plain"]),
        Protocol::Pop3 => (&["TOP", "USER", "UIDL"], &["plain", "login"]),
        Protocol::Smtp | Protocol::Http => (&[], &["plain", "login"]),
    };
    let owned = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let auth = m.auth.clone().unwrap_or_else(|| owned(auth));
    for (i, a) in auth.iter().enumerate() {
        let ok = matches!(a.as_str(), "plain" | "login" | "cram-md5")
            || (a == "none" && protocol == Protocol::Smtp)
            || (a == "apop" && protocol == Protocol::Pop3);
        if !ok {
            v.err(
                &format!("{p}.auth.{i}"),
                format!(
                    "auth method {a:?}: expected plain, login, cram-md5 (none for smtp, apop for pop3)"
                ),
            );
        }
    }
    let capabilities = m.capabilities.clone().unwrap_or_else(|| owned(caps));
    for (i, c) in capabilities.iter().enumerate() {
        if c.is_empty() || c.bytes().any(|b| b.is_ascii_control()) {
            v.err(
                &format!("{p}.capabilities.{i}"),
                "a capability is text on one line",
            );
        }
    }
    if m.greeting
        .as_deref()
        .is_some_and(|g| g.bytes().any(|b| b.is_ascii_control()))
    {
        v.err(&format!("{p}.greeting"), "the greeting is text on one line");
    }
    let mut headers = Vec::new();
    for (name, value) in &m.auth_http_headers {
        if !is_token(name) || value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            v.err(
                &format!("{p}.auth_http_headers.{name}"),
                "a header name is a token and its value one line",
            );
        }
        headers.push((name.clone(), value.clone()));
    }
    if m.max_errors == 0 {
        v.err(&format!("{p}.max_errors"), "must be at least 1");
    }
    MailConfig {
        greeting: m.greeting.clone(),
        capabilities,
        auth,
        max_errors: m.max_errors.max(1),
        timeout: v.duration(&format!("{p}.timeout"), &m.timeout),
        login_timeout: v.duration(&format!("{p}.login_timeout"), &m.login_timeout),
        auth_timeout: v.duration(&format!("{p}.auth_timeout"), &m.auth_timeout),
        connect_timeout: v.duration(&format!("{p}.connect_timeout"), &m.connect_timeout),
        proxy_timeout: v.duration(&format!("{p}.proxy_timeout"), &m.proxy_timeout),
        xclient: m.xclient,
        backend_auth: match m.backend_auth.as_str() {
            "off" => None,
            "plain" | "login" if protocol == Protocol::Smtp => Some(m.backend_auth.clone()),
            other => {
                v.err(
                    &format!("{p}.backend_auth"),
                    format!(
                        "backend_auth {other:?}: expected off, or plain or login on smtp listeners"
                    ),
                );
                None
            }
        },
        auth_http_headers: headers,
        max_login_failures: m.max_login_failures,
        login_failure_window: v.duration(
            &format!("{p}.login_failure_window"),
            &m.login_failure_window,
        ),
        backend_proxy_protocol: m.backend_proxy_protocol,
        pass_client_cert: m.pass_client_cert,
        backend_tls: v
            .one_of(
                &format!("{p}.backend_tls"),
                &m.backend_tls,
                &[
                    ("off", BackendTlsMode::Off),
                    ("on", BackendTlsMode::On),
                    ("starttls", BackendTlsMode::StartTls),
                ],
            )
            .unwrap_or(BackendTlsMode::Off),
        backend_tls_ca: resolve(&v.base(&format!("{p}.backend_tls_ca")), &m.backend_tls_ca),
        backend_tls_name: m.backend_tls_name.clone(),
    }
}

fn validate_route(
    v: &mut Validator<'_>,
    rp: &str,
    r: &RawRoute,
    known: &Known<'_>,
) -> Option<Route> {
    let upstreams = known.upstreams;
    for (i, n) in r.rate_limit.iter().enumerate() {
        if !known.rate_limits.contains_key(n) {
            v.err(
                &format!("{rp}.rate_limit.{i}"),
                format!("no [rate_limits.{n}]"),
            );
        }
    }
    for (i, n) in r.conn_limit.iter().enumerate() {
        if !known.conn_limits.contains_key(n) {
            v.err(
                &format!("{rp}.conn_limit.{i}"),
                format!("no [conn_limits.{n}]"),
            );
        }
    }
    let access = access_rules(v, &format!("{rp}.access"), &r.access);
    let basic_auth = r.basic_auth.as_ref().map(|b| {
        let k = format!("{rp}.basic_auth");
        let realm = b.realm.clone().unwrap_or_else(|| "Restricted".into());
        if realm.contains('"') || realm.chars().any(char::is_control) {
            v.err(
                &format!("{k}.realm"),
                "a realm has no quotes or control characters",
            );
        }
        let htpasswd = match &b.htpasswd {
            Some(f) => {
                let path = resolve(&v.base(&format!("{k}.htpasswd")), f);
                if let Err(e) = std::fs::read(&path) {
                    v.err(
                        &format!("{k}.htpasswd"),
                        format!("cannot read {}: {e}", path.display()),
                    );
                }
                path
            }
            None => {
                v.err(&k, "basic_auth needs htpasswd = \"FILE\"");
                PathBuf::new()
            }
        };
        BasicAuth { realm, htpasswd }
    });
    let auth_request = r.auth_request.as_ref().and_then(|a| {
        let k = format!("{rp}.auth_request");
        let Some(up) = &a.upstream else {
            v.err(
                &k,
                "auth_request needs upstream = \"NAME\" (asked over HTTP)",
            );
            return None;
        };
        if !upstreams.contains_key(up) {
            v.err(&format!("{k}.upstream"), no_upstream(up, upstreams));
        }
        let uri = a.uri.clone().unwrap_or_else(|| "/".into());
        if !uri.starts_with('/') || uri.bytes().any(|b| b <= b' ' || b == 0x7f) {
            v.err(
                &format!("{k}.uri"),
                format!("{uri:?}: a path such as \"/verify\""),
            );
        }
        for (i, h) in a.copy_headers.iter().enumerate() {
            if !is_token(h) {
                v.err(
                    &format!("{k}.copy_headers.{i}"),
                    format!("{h:?} is not a header name"),
                );
            }
        }
        Some(AuthRequest {
            upstream: up.clone(),
            uri,
            copy_headers: a
                .copy_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        })
    });
    let cache = r
        .cache
        .as_ref()
        .and_then(|c| route_cache(v, &format!("{rp}.cache"), c, known));
    let access_log = r
        .access_log
        .as_ref()
        .map(|a| route_access_log(v, &format!("{rp}.access_log"), a, known))
        .unwrap_or_default();
    let matcher = route_match(v, rp, r)?;
    let captures = match &matcher {
        RouteMatch::Regex { captures, .. } => *captures,
        _ => 0,
    };
    let name = r.name.clone();
    if let Some(n) = &name {
        if n.is_empty() || n.starts_with('@') || n.contains(char::is_whitespace) {
            v.err(
                &format!("{rp}.name"),
                "a route name is a word (written without @; try_files says @NAME)",
            );
        }
    }
    let methods = route_methods(v, rp, r.methods.as_deref());
    let template = |v: &mut Validator<'_>, key: &str, text: &str| -> Option<KeyTemplate> {
        match KeyTemplate::parse_value(text) {
            Ok(t) if t.max_capture() > captures => {
                let why = if captures == 0 {
                    format!(
                        "${} needs a regex route with that many captures",
                        t.max_capture()
                    )
                } else {
                    format!(
                        "${} but the regex has {captures} capture(s)",
                        t.max_capture()
                    )
                };
                v.err(key, why);
                None
            }
            Ok(t) => Some(t),
            Err(e) => {
                v.err(key, e);
                None
            }
        }
    };
    let request_headers = header_rules(
        v,
        &format!("{rp}.request_headers"),
        r.request_headers.as_ref(),
        &template,
        false,
    );
    let response_headers = header_rules(
        v,
        &format!("{rp}.response_headers"),
        r.response_headers.as_ref(),
        &template,
        true,
    );
    let contents = [
        r.static_files.is_some(),
        r.upstream.is_some(),
        r.ret.is_some(),
    ];
    if contents.iter().filter(|c| **c).count() > 1 {
        v.err(rp, "a route has one of `static`, `upstream` or `return`");
        return None;
    }
    let rewrite = rewrites(v, rp, &r.rewrite);
    let try_files = try_files(v, rp, r, &template);
    let cookies = cookie_rules(v, rp, r, &template);
    let own_error_pages = r
        .error_pages
        .as_ref()
        .map(|m| error_pages(v, &format!("{rp}.error_pages"), m))
        .unwrap_or_default();
    if r.upstream_path.is_some() && r.upstream.is_none() {
        v.err(
            &format!("{rp}.upstream_path"),
            "upstream_path applies to routes with an upstream",
        );
    }
    let action = match (&r.static_files, &r.upstream) {
        (None, None) if r.ret.is_none() && (!rewrite.is_empty() || try_files.is_some()) => {
            RouteAction::Empty
        }
        (None, None) => {
            let Some(ret) = &r.ret else {
                v.err(
                    rp,
                    "a route needs `static = { root = ... }`, `upstream = \"NAME\"`, `return = { status = ... }`, or `rewrite`/`try_files` leading elsewhere",
                );
                return None;
            };
            let rk = format!("{rp}.return");
            let redirect = matches!(ret.status, 301 | 302 | 303 | 307 | 308);
            if !(200..=599).contains(&ret.status) {
                v.err(&format!("{rk}.status"), "a status from 200 to 599");
            }
            if redirect && ret.location.is_none() {
                v.err(
                    &format!("{rk}.location"),
                    format!("a {} redirect needs a location", ret.status),
                );
            }
            if !redirect && ret.location.is_some() {
                v.err(
                    &format!("{rk}.location"),
                    "a location goes with 301, 302, 303, 307 or 308",
                );
            }
            if ret.location.is_some() && ret.body.is_some() {
                v.err(&rk, "a return has a location or a body, not both");
            }
            not_here(
                v,
                rp,
                &[
                    ("request_buffering", r.request_buffering.is_some()),
                    ("max_body_bytes", r.max_body_bytes.is_some()),
                ],
                "applies to routes with an upstream",
            );
            RouteAction::Return(ReturnConfig {
                status: ret.status,
                location: ret
                    .location
                    .as_deref()
                    .and_then(|l| template(v, &format!("{rk}.location"), l)),
                body: ret
                    .body
                    .as_deref()
                    .and_then(|b| template(v, &format!("{rk}.body"), b)),
            })
        }
        (Some(_), Some(_)) => unreachable_both(v, rp)?,
        (Some(s), None) => {
            if r.request_buffering.is_some() {
                v.err(
                    &format!("{rp}.request_buffering"),
                    "request_buffering applies to routes with an upstream",
                );
            }
            let sk = format!("{rp}.static");
            let (dir, alias_of) = match (&s.alias, s.root.is_empty()) {
                (Some(_), false) => {
                    v.err(&sk, "alias and root exclude each other");
                    (s.root.as_str(), None)
                }
                (Some(a), true) => {
                    let prefix = match (&r.path, &r.exact) {
                        (p, _) if !p.is_empty() => Some(p.clone()),
                        (_, Some(e)) => Some(e.clone()),
                        _ => None,
                    };
                    if prefix.is_none() {
                        v.err(
                            &format!("{sk}.alias"),
                            "alias replaces a `path` or `exact`: use it on such a route",
                        );
                    }
                    if prefix.as_deref().is_some_and(|p| p.ends_with('/')) != a.ends_with('/') {
                        v.err(
                            &format!("{sk}.alias"),
                            "alias and the route path end alike: both with / or neither (nginx)",
                        );
                    }
                    (a.as_str(), prefix)
                }
                (None, true) => {
                    v.err(
                        &format!("{sk}.root"),
                        "static needs a root directory (or an alias)",
                    );
                    ("", None)
                }
                (None, false) => (s.root.as_str(), None),
            };
            let which = if alias_of.is_some() { "alias" } else { "root" };
            let root = resolve(&v.base(&format!("{sk}.{which}")), dir);
            let index = if s.index.is_empty() {
                vec!["index.html".to_string()]
            } else {
                s.index.clone()
            };
            let expires = match s.expires.as_deref() {
                None | Some("off") => None,
                Some("epoch") => Some(Expires::Epoch),
                Some("max") => Some(Expires::Max),
                Some(d) => Some(Expires::After(v.duration(&format!("{sk}.expires"), d))),
            };
            RouteAction::Static(StaticConfig {
                root,
                index,
                alias_of,
                expires,
                precompressed: s.precompressed,
                sendfile: s.sendfile,
            })
        }
        (None, Some(u)) => {
            let by = if u.contains('$') {
                match KeyTemplate::parse_value(u) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        v.err(&format!("{rp}.upstream"), e);
                        return None;
                    }
                }
            } else {
                None
            };
            let choices = match &by {
                None => vec![u.clone()],
                Some(t) => match upstream_choices(t, known.maps) {
                    Some(c) => c,
                    None => {
                        v.err(
                            &format!("{rp}.upstream"),
                            "an upstream name may only use $map_NAME variables of maps whose values are listed (an mmdb map needs `values` mapping its field to names)",
                        );
                        return None;
                    }
                },
            };
            for c in &choices {
                if !upstreams.contains_key(c) {
                    let why = if by.is_some() {
                        format!("{u:?} can be {c:?}, but no upstream has that name")
                    } else {
                        no_upstream(u, upstreams)
                    };
                    v.err(&format!("{rp}.upstream"), why);
                }
            }
            if by.is_some() && r.via.as_deref().is_some_and(|via| via != "http") {
                v.err(
                    &format!("{rp}.upstream"),
                    "an upstream chosen by a map is for via = \"http\" routes",
                );
            }
            let via = v.one_of(
                &format!("{rp}.via"),
                r.via.as_deref().unwrap_or("http"),
                &[
                    ("http", Via::Http),
                    ("uwsgi", Via::Uwsgi),
                    ("fastcgi", Via::Fastcgi),
                ],
            )?;
            if via == Via::Http {
                not_here(
                    v,
                    rp,
                    &[
                        ("params", !r.params.is_empty()),
                        ("root", r.root.is_some()),
                        ("index", r.index.is_some()),
                        ("split_path_info", r.split_path_info.is_some()),
                        ("modifier1", r.modifier1.is_some()),
                        ("modifier2", r.modifier2.is_some()),
                    ],
                    "applies to via = \"uwsgi\" or \"fastcgi\" routes",
                );
            }
            if via != Via::Http && upstreams.get(u).is_some_and(|up| up.tls.is_some()) {
                v.err(
                    &format!("{rp}.via"),
                    format!(
                        "upstream {u:?} has tls: TLS to upstreams is for via = \"http\" routes"
                    ),
                );
            }
            if via == Via::Uwsgi {
                not_here(
                    v,
                    rp,
                    &[
                        ("index", r.index.is_some()),
                        ("split_path_info", r.split_path_info.is_some()),
                    ],
                    "applies to via = \"fastcgi\" routes",
                );
            }
            let mut params = Vec::new();
            for (name, value) in &r.params {
                let key = format!("{rp}.params.{name}");
                if name.is_empty() || name.bytes().any(|b| b == 0 || b.is_ascii_whitespace()) {
                    v.err(&key, "a param name is not empty and has no spaces or NUL");
                }
                match KeyTemplate::parse_value(value) {
                    Ok(t) => params.push((name.clone(), t)),
                    Err(e) => v.err(&key, e),
                }
            }
            if let Some(re) = &r.split_path_info {
                match regex::Regex::new(re) {
                    Ok(c) if c.captures_len() >= 3 => {}
                    Ok(_) => v.err(
                        &format!("{rp}.split_path_info"),
                        "split_path_info needs two captures: the script name and the path info",
                    ),
                    Err(e) => {
                        let one_line = one_line(&e);
                        v.err(
                            &format!("{rp}.split_path_info"),
                            format!("bad regex: {one_line}"),
                        )
                    }
                }
            }
            RouteAction::Proxy(ProxyRoute {
                upstream: choices.first().cloned().unwrap_or_else(|| u.clone()),
                upstream_by: by,
                upstream_choices: choices,
                via,
                params,
                root: r
                    .root
                    .as_ref()
                    .map(|root| resolve(&v.base(&format!("{rp}.root")), root)),
                index: r.index.clone(),
                split_path_info: r.split_path_info.clone(),
                modifier1: r.modifier1.unwrap_or(0),
                modifier2: r.modifier2.unwrap_or(0),
                request_buffering: r.request_buffering.unwrap_or(via != Via::Http),
                upstream_path: match (&r.upstream_path, via) {
                    (Some(p), Via::Http) => {
                        if !p.starts_with('/') {
                            v.err(
                                &format!("{rp}.upstream_path"),
                                "upstream_path starts with /",
                            );
                        }
                        Some(p.clone())
                    }
                    (Some(_), _) => {
                        v.err(
                            &format!("{rp}.upstream_path"),
                            "upstream_path applies to via = \"http\" routes",
                        );
                        None
                    }
                    (None, _) => None,
                },
            })
        }
    };
    if r.cache.is_some() && !matches!(action, RouteAction::Proxy(_)) {
        v.err(
            &format!("{rp}.cache"),
            "cache applies to routes with an upstream (via http, uwsgi or fastcgi)",
        );
    }
    Some(Route {
        path: describe(&matcher, name.as_deref()),
        matcher,
        name,
        methods,
        action,
        max_body_bytes: r.max_body_bytes.map(|s| s.0),
        request_headers: request_headers.unwrap_or_default(),
        response_headers: response_headers.unwrap_or_default(),
        rewrite,
        try_files,
        compress: None,
        internal: r.internal,
        cookies,
        rate_limit: r.rate_limit.clone(),
        conn_limit: r.conn_limit.clone(),
        access,
        basic_auth,
        auth_request,
        cache,
        access_log,
        error_pages: ErrorPages {
            pages: own_error_pages,
            intercept: r.intercept_errors.unwrap_or(false),
        },
        charset: match r.charset.as_deref() {
            Some(c)
                if c.is_empty()
                    || !c
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) =>
            {
                v.err(
                    &format!("{rp}.charset"),
                    format!("{c:?} is not a charset name"),
                );
                None
            }
            other => other.map(str::to_string),
        },
    })
}

/// The compression of a route: its own `compress` (`enabled = false` turns the
/// listener's off), else the listener's. Defaults: zstd, br, gzip; text types, JSON,
/// JavaScript, SVG; 256 bytes; levels gzip 3, br 4, zstd 1 (measured:
/// docs/performance.md, "Compression levels").
fn compress(
    v: &mut Validator<'_>,
    key: &str,
    route: Option<&RawCompress>,
    listener: Option<&RawCompress>,
    listener_key: &str,
) -> Option<Compress> {
    let (raw, key) = match (route, listener) {
        (Some(r), _) => (r, key),
        (None, Some(l)) => (l, listener_key),
        (None, None) => return None,
    };
    if raw.enabled == Some(false) {
        return None;
    }
    let mut algorithms = Vec::new();
    let names = raw
        .algorithms
        .clone()
        .unwrap_or_else(|| vec!["zstd".into(), "br".into(), "gzip".into()]);
    for (i, a) in names.iter().enumerate() {
        match v.one_of(
            &format!("{key}.algorithms.{i}"),
            a,
            &[
                ("gzip", Coding::Gzip),
                ("br", Coding::Br),
                ("zstd", Coding::Zstd),
            ],
        ) {
            Some(c) if !algorithms.contains(&c) => algorithms.push(c),
            _ => {}
        }
    }
    let types = raw.types.clone().unwrap_or_else(|| {
        [
            "text/*",
            "application/json",
            "application/javascript",
            "application/xml",
            "image/svg+xml",
        ]
        .map(String::from)
        .to_vec()
    });
    for (i, t) in types.iter().enumerate() {
        let ok = t.split_once('/').is_some_and(|(a, b)| {
            let token = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&c))
            };
            token(a) && (b == "*" || token(b))
        });
        if !ok {
            v.err(
                &format!("{key}.types.{i}"),
                format!("{t:?} is not a MIME pattern (type/subtype or type/*)"),
            );
        }
    }
    let level =
        |v: &mut Validator<'_>, name: &str, default: i32, range: std::ops::RangeInclusive<i32>| {
            let l = raw.levels.get(name).copied().unwrap_or(default);
            if !range.contains(&l) {
                v.err(
                    &format!("{key}.levels.{name}"),
                    format!("{name} levels are {}..={}", range.start(), range.end()),
                );
            }
            l.clamp(*range.start(), *range.end())
        };
    for name in raw.levels.keys() {
        if !matches!(name.as_str(), "gzip" | "br" | "zstd") {
            v.err(
                &format!("{key}.levels.{name}"),
                "levels are for gzip, br and zstd",
            );
        }
    }
    Some(Compress {
        algorithms,
        types: types.iter().map(|t| t.to_ascii_lowercase()).collect(),
        min_bytes: raw.min_bytes.map_or(256, |s| s.0),
        gzip_level: level(v, "gzip", 3, 1..=9) as u32,
        br_level: level(v, "br", 4, 0..=11) as u32,
        zstd_level: level(v, "zstd", 1, 1..=19),
    })
}

/// A rewrite loop that can be seen without a request: a rule whose `to` is plain text
/// (no variables) that its own `from` matches again, on a route that the new URI comes
/// back to (and no exact route elsewhere takes). At run time a loop stops after 10 steps
/// with 500; `check` refuses the ones it can see. `routes` are in file order (indices
/// are the config's).
fn rewrite_loops(v: &mut Validator<'_>, p: &str, routes: &[Route]) {
    for (i, r) in routes.iter().enumerate() {
        for (k, rw) in r.rewrite.iter().enumerate() {
            if !matches!(rw.flag, RewriteFlag::Last | RewriteFlag::Continue) {
                continue;
            }
            let literal: Option<String> = rw
                .to
                .parts
                .iter()
                .map(|part| match part {
                    KeyPart::Literal(t) => Some(t.as_str()),
                    _ => None,
                })
                .collect();
            let Some(target) = literal else { continue };
            let path = target.split('?').next().unwrap_or("");
            let again = regex::Regex::new(&rw.from).is_ok_and(|re| re.is_match(path));
            let back = match &r.matcher {
                RouteMatch::Prefix { path: pre, .. } => path.starts_with(pre.as_str()),
                RouteMatch::Exact(e) => e == path,
                RouteMatch::Regex { source, .. } => {
                    regex::Regex::new(source).is_ok_and(|re| re.is_match(path))
                }
                RouteMatch::Named => false,
            };
            let taken_elsewhere = routes
                .iter()
                .enumerate()
                .any(|(j, o)| j != i && matches!(&o.matcher, RouteMatch::Exact(e) if e == path));
            if again && back && !taken_elsewhere {
                v.err(
                    &format!("{p}.routes.{i}.rewrite.{k}.to"),
                    format!(
                        "rewrite to {target:?} comes back to this route and matches again: a loop"
                    ),
                );
            }
        }
    }
}

/// `rewrite = [{ from, to, flag }]`: each `from` a regex, `to` a template whose `$N` the
/// regex has, `flag` one of last, break, redirect, permanent (none: go on).
fn rewrites(v: &mut Validator<'_>, rp: &str, raw: &[RawRewrite]) -> Vec<Rewrite> {
    let mut out = Vec::new();
    for (i, rw) in raw.iter().enumerate() {
        let k = format!("{rp}.rewrite.{i}");
        let captures = match regex::Regex::new(&rw.from) {
            Ok(re) => re.captures_len() - 1,
            Err(e) => {
                let one_line = one_line(&e);
                v.err(&format!("{k}.from"), format!("bad regex: {one_line}"));
                continue;
            }
        };
        let to = match KeyTemplate::parse_value(&rw.to) {
            Ok(t) if t.max_capture() > captures => {
                v.err(
                    &format!("{k}.to"),
                    format!("${} but `from` has {captures} capture(s)", t.max_capture()),
                );
                continue;
            }
            Ok(t) if t.parts.is_empty() => {
                v.err(&format!("{k}.to"), "rewrite to nothing");
                continue;
            }
            Ok(t) => t,
            Err(e) => {
                v.err(&format!("{k}.to"), e);
                continue;
            }
        };
        let flag = match rw.flag.as_deref() {
            None => Some(RewriteFlag::Continue),
            Some(f) => v.one_of(
                &format!("{k}.flag"),
                f,
                &[
                    ("last", RewriteFlag::Last),
                    ("break", RewriteFlag::Break),
                    ("redirect", RewriteFlag::Redirect),
                    ("permanent", RewriteFlag::Permanent),
                ],
            ),
        };
        if let Some(flag) = flag {
            out.push(Rewrite {
                from: rw.from.clone(),
                to,
                flag,
            });
        }
    }
    out
}

/// `try_files = ["$uri", "$uri/", "/index.php?$args"]`: paths under the route's root
/// (its `static.root`, or the gateway `root`), the last a URI, `@name` or `=CODE`.
fn try_files(
    v: &mut Validator<'_>,
    rp: &str,
    r: &RawRoute,
    template: &dyn Fn(&mut Validator<'_>, &str, &str) -> Option<KeyTemplate>,
) -> Option<TryFiles> {
    let list = r.try_files.as_ref()?;
    let k = format!("{rp}.try_files");
    let Some((last, files)) = list.split_last() else {
        v.err(&k, "try_files lists files to try and then where to go");
        return None;
    };
    if files.is_empty() {
        v.err(
            &k,
            "try_files needs at least one file to try before the fallback",
        );
    }
    let has_root = r.static_files.is_some() || r.root.is_some();
    if r.static_files.as_ref().is_some_and(|s| s.alias.is_some()) {
        v.err(&k, "try_files looks under a root, not an alias (nginx's try_files with alias is a known trap): use root");
    }
    if !has_root {
        v.err(
            &k,
            "try_files looks under a root: give the route `static = { root }` or `root`",
        );
    }
    let files = files
        .iter()
        .enumerate()
        .filter_map(|(i, f)| template(v, &format!("{k}.{i}"), f))
        .collect();
    let lk = format!("{k}.{}", list.len() - 1);
    let fallback = if let Some(code) = last.strip_prefix('=') {
        match code.parse::<u16>() {
            Ok(c) if (200..=599).contains(&c) => Fallback::Status(c),
            _ => {
                v.err(
                    &lk,
                    format!("{last:?}: =CODE with a status from 200 to 599"),
                );
                return None;
            }
        }
    } else if let Some(name) = last.strip_prefix('@') {
        Fallback::Named(name.to_string())
    } else if last.starts_with('/') || last.starts_with('$') {
        Fallback::Uri(template(v, &lk, last)?)
    } else {
        v.err(
            &lk,
            format!("{last:?}: the last entry is a URI, @name or =CODE"),
        );
        return None;
    };
    Some(TryFiles { files, fallback })
}

/// `cookie_path = { "/app/" = "/" }`, `cookie_domain = { "localhost" = "$host" }`,
/// `cookie_flags = { "*" = ["secure", "httponly", "samesite=lax"] }` (nginx
/// proxy_cookie_*): on routes with an upstream; replacements are templates.
fn cookie_rules(
    v: &mut Validator<'_>,
    rp: &str,
    r: &RawRoute,
    template: &dyn Fn(&mut Validator<'_>, &str, &str) -> Option<KeyTemplate>,
) -> CookieRules {
    if r.upstream.is_none() {
        not_here(
            v,
            rp,
            &[
                ("cookie_path", r.cookie_path.is_some()),
                ("cookie_domain", r.cookie_domain.is_some()),
                ("cookie_flags", r.cookie_flags.is_some()),
            ],
            "applies to routes with an upstream (it changes the upstream's Set-Cookie)",
        );
        return CookieRules::default();
    }
    let mut out = CookieRules::default();
    for (from, to) in r.cookie_path.iter().flatten() {
        let k = format!("{rp}.cookie_path.{from}");
        if !from.starts_with('/') {
            v.err(&k, format!("{from:?}: a cookie path starts with /"));
        } else if let Some(t) = template(v, &k, to) {
            out.path.push((from.clone(), t));
        }
    }
    // the longest prefix first: the first that matches wins
    out.path.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
    for (from, to) in r.cookie_domain.iter().flatten() {
        let k = format!("{rp}.cookie_domain.{from}");
        let from = from.trim_start_matches('.').to_ascii_lowercase();
        if from.is_empty() {
            v.err(&k, "name the domain the app sets");
        } else if let Some(t) = template(v, &k, to) {
            out.domain.push((from, t));
        }
    }
    for (name, flags) in r.cookie_flags.iter().flatten() {
        let k = format!("{rp}.cookie_flags.{name}");
        let mut parsed = Vec::new();
        for (i, f) in flags.iter().enumerate() {
            let flag = match f.to_ascii_lowercase().as_str() {
                "secure" => CookieFlag::Secure,
                "httponly" => CookieFlag::HttpOnly,
                "samesite=strict" => CookieFlag::SameSite(SameSite::Strict),
                "samesite=lax" => CookieFlag::SameSite(SameSite::Lax),
                "samesite=none" => CookieFlag::SameSite(SameSite::None),
                "nosecure" => CookieFlag::NoSecure,
                "nohttponly" => CookieFlag::NoHttpOnly,
                "nosamesite" => CookieFlag::NoSameSite,
                other => {
                    v.err(
                        &format!("{k}.{i}"),
                        format!("{other:?}: the flags are secure, httponly, samesite=strict|lax|none, nosecure, nohttponly, nosamesite"),
                    );
                    continue;
                }
            };
            parsed.push(flag);
        }
        out.flags.push((name.clone(), parsed));
    }
    out
}

/// `tls = { sni, verify, ca, cert, key, h2 }` on an upstream: the files must be readable
/// (checked as `run` reads them), cert and key go together.
fn upstream_tls(v: &mut Validator<'_>, k: &str, t: &RawUpstreamTls) -> UpstreamTls {
    let mut file = |key: &str, val: &str| -> PathBuf {
        let kp = format!("{k}.{key}");
        let path = resolve(&v.base(&kp), val);
        if let Err(e) = std::fs::read(&path) {
            v.err(&kp, format!("cannot read {}: {e}", path.display()));
        }
        path
    };
    let ca = t.ca.as_deref().map(|c| file("ca", c));
    let client = match (&t.cert, &t.key) {
        (Some(c), Some(kf)) => Some((file("cert", c), file("key", kf))),
        (None, None) => None,
        (Some(_), None) => {
            v.err(&format!("{k}.key"), "a client cert needs its key");
            None
        }
        (None, Some(_)) => {
            v.err(&format!("{k}.cert"), "a client key needs its cert");
            None
        }
    };
    if let Some(n) = &t.sni {
        let valid = !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        if !valid {
            v.err(&format!("{k}.sni"), format!("{n:?} is not a host name"));
        }
    }
    if t.verify == Some(false) && t.ca.is_some() {
        v.err(&format!("{k}.ca"), "ca is for verify = true");
    }
    UpstreamTls {
        sni: t.sni.clone(),
        verify: t.verify.unwrap_or(true),
        ca,
        client,
        h2: t.h2,
    }
}

/// `error_pages = { "404" = "/404.html", "502 503 504" = "/50x.html" }`: statuses from
/// 300 to 599 (nginx's range), each to a URI, `@name` or an `http(s)://` redirect.
fn error_pages(
    v: &mut Validator<'_>,
    k: &str,
    raw: &BTreeMap<String, String>,
) -> Vec<(u16, ErrorPage)> {
    // rendered for the request as the client sent it: no route's captures
    let template =
        |v: &mut Validator<'_>, key: &str, text: &str| match KeyTemplate::parse_value(text) {
            Ok(t) if t.max_capture() > 0 => {
                v.err(
                    key,
                    format!(
                        "${}: error pages are rendered without a route's captures",
                        t.max_capture()
                    ),
                );
                None
            }
            Ok(t) => Some(t),
            Err(e) => {
                v.err(key, e);
                None
            }
        };
    let mut out: Vec<(u16, ErrorPage)> = Vec::new();
    for (codes, target) in raw {
        let kk = format!("{k}.{codes}");
        let page = if let Some(name) = target.strip_prefix('@') {
            Some(ErrorPage::Named(name.to_string()))
        } else if target.starts_with("http://") || target.starts_with("https://") {
            template(v, &kk, target).map(ErrorPage::Redirect)
        } else if target.starts_with('/') || target.starts_with('$') {
            template(v, &kk, target).map(ErrorPage::Uri)
        } else {
            v.err(
                &kk,
                format!("{target:?}: an error page is a URI (/...), @name or an http(s):// URL"),
            );
            None
        };
        let list: Vec<&str> = codes
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|c| !c.is_empty())
            .collect();
        if list.is_empty() {
            v.err(
                &kk,
                "name the status(es) the page is for: \"404\" or \"502 504\"",
            );
        }
        for c in list {
            match c.parse::<u16>() {
                Ok(code) if (300..=599).contains(&code) => {
                    if out.iter().any(|(s, _)| *s == code) {
                        v.err(&kk, format!("{code} has an error page already"));
                    } else if let Some(page) = &page {
                        out.push((code, page.clone()));
                    }
                }
                _ => v.err(
                    &kk,
                    format!("{c:?}: error pages are for statuses from 300 to 599"),
                ),
            }
        }
    }
    out.sort_by_key(|(s, _)| *s);
    out
}

/// Errors for keys given where they do not apply: `(key, given)`, and why not.
fn not_here(v: &mut Validator<'_>, rp: &str, keys: &[(&str, bool)], why: &str) {
    for (key, given) in keys {
        if *given {
            v.err(&format!("{rp}.{key}"), format!("{key} {why}"));
        }
    }
}

/// A regex crate error on one line.
fn one_line(e: &regex::Error) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Never reached (checked before): keeps the match total without a panic.
fn unreachable_both(v: &mut Validator<'_>, rp: &str) -> Option<RouteAction> {
    v.err(rp, "a route has one of `static`, `upstream` or `return`");
    None
}

/// The route in nginx's notation, for logs.
fn describe(m: &RouteMatch, name: Option<&str>) -> String {
    match m {
        RouteMatch::Prefix { path, wins: false } => path.clone(),
        RouteMatch::Prefix { path, wins: true } => format!("^~ {path}"),
        RouteMatch::Exact(p) => format!("= {p}"),
        RouteMatch::Regex { source, .. } => format!("~ {source}"),
        RouteMatch::Named => format!("@{}", name.unwrap_or("")),
    }
}

/// One of `path`, `exact`, `regex` (or only a `name`).
fn route_match(v: &mut Validator<'_>, rp: &str, r: &RawRoute) -> Option<RouteMatch> {
    let given = [!r.path.is_empty(), r.exact.is_some(), r.regex.is_some()];
    if given.iter().filter(|g| **g).count() > 1 {
        v.err(rp, "a route matches by one of `path`, `exact` or `regex`");
        return None;
    }
    if r.prefix_wins && r.path.is_empty() {
        v.err(
            &format!("{rp}.prefix_wins"),
            "prefix_wins goes with a `path` prefix",
        );
    }
    let slash = |v: &mut Validator<'_>, key: &str, p: &str| {
        if !p.starts_with('/') {
            v.err(&format!("{rp}.{key}"), "a route path must start with /");
        }
    };
    if !r.path.is_empty() {
        slash(v, "path", &r.path);
        return Some(RouteMatch::Prefix {
            path: r.path.clone(),
            wins: r.prefix_wins,
        });
    }
    if let Some(e) = &r.exact {
        slash(v, "exact", e);
        return Some(RouteMatch::Exact(e.clone()));
    }
    if let Some(re) = &r.regex {
        return match regex::Regex::new(re) {
            Ok(c) => Some(RouteMatch::Regex {
                source: re.clone(),
                captures: c.captures_len() - 1,
            }),
            Err(e) => {
                let one_line = one_line(&e);
                v.err(&format!("{rp}.regex"), format!("bad regex: {one_line}"));
                None
            }
        };
    }
    if r.name.is_some() {
        return Some(RouteMatch::Named);
    }
    v.err(rp, "a route needs `path`, `exact`, `regex` or a `name`");
    None
}

/// `methods`: HTTP method tokens, uppercase; GET allows HEAD too.
fn route_methods(v: &mut Validator<'_>, rp: &str, methods: Option<&[String]>) -> Vec<String> {
    let Some(methods) = methods else {
        return Vec::new();
    };
    if methods.is_empty() {
        v.err(
            &format!("{rp}.methods"),
            "list at least one method (or leave methods out)",
        );
    }
    let mut out = Vec::new();
    for (i, m) in methods.iter().enumerate() {
        let up = m.to_ascii_uppercase();
        if up.is_empty()
            || !up
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
        {
            v.err(
                &format!("{rp}.methods.{i}"),
                format!("{m:?} is not a method name"),
            );
            continue;
        }
        if !out.contains(&up) {
            out.push(up);
        }
    }
    if out.iter().any(|m| m == "GET") && !out.iter().any(|m| m == "HEAD") {
        out.push("HEAD".into());
    }
    out
}

/// `request_headers` / `response_headers`: valid header names, templated values.
fn header_rules(
    v: &mut Validator<'_>,
    key: &str,
    raw: Option<&RawHeaderRules>,
    template: &dyn Fn(&mut Validator<'_>, &str, &str) -> Option<KeyTemplate>,
    response: bool,
) -> Option<HeaderRules> {
    let raw = raw?;
    let token = is_token;
    let mut rules = HeaderRules::default();
    for (name, value) in &raw.set {
        let k = format!("{key}.set.{name}");
        if !token(name) {
            v.err(&k, format!("{name:?} is not a valid header name"));
            continue;
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            v.err(&k, "a header value is one line");
            continue;
        }
        if let Some(t) = template(v, &k, value) {
            rules.set.push((name.clone(), t));
        }
    }
    for (i, name) in raw.remove.iter().enumerate() {
        if token(name) {
            rules.remove.push(name.clone());
        } else {
            v.err(
                &format!("{key}.remove.{i}"),
                format!("{name:?} is not a valid header name"),
            );
        }
    }
    match (raw.always, response) {
        (Some(a), true) => rules.always = a,
        (Some(_), false) => v.err(
            &format!("{key}.always"),
            "always applies to response_headers",
        ),
        (None, _) => {}
    }
    Some(rules)
}

/// Listeners may share an address (virtual hosts), but then they must agree on how the
/// connection is accepted: protocol, TLS or not, PROXY protocol or not.
fn check_shared_addresses(
    v: &mut Validator<'_>,
    listeners: &[ListenerConfig],
    admin: Option<&Admin>,
) {
    let mut first: HashMap<&ListenAddr, usize> = HashMap::new();
    for (i, l) in listeners.iter().enumerate() {
        for (j, a) in l.listen.iter().enumerate() {
            if admin.is_some_and(|ad| &ad.listen == a) {
                v.err(
                    &format!("listeners.{i}.listen.{j}"),
                    format!("{a} is also the admin listener's address"),
                );
            }
            match first.get(a) {
                None => {
                    first.insert(a, i);
                }
                Some(&k) if k == i => {
                    v.err(
                        &format!("listeners.{i}.listen.{j}"),
                        format!("{a} is listed twice"),
                    );
                }
                Some(&k) => {
                    let o = &listeners[k];
                    let mismatch = if o.protocol != l.protocol {
                        Some("protocol")
                    } else if o.tls.is_some() != l.tls.is_some() {
                        Some("tls")
                    } else if o.proxy_protocol != l.proxy_protocol {
                        Some("proxy_protocol")
                    } else if l.protocol != Protocol::Http {
                        Some("protocol (only http listeners can share an address)")
                    } else {
                        None
                    };
                    if let Some(what) = mismatch {
                        v.err(
                            &format!("listeners.{i}.listen.{j}"),
                            format!(
                                "{a} is shared with listeners.{k} ({:?}) but {what} differs",
                                o.name
                            ),
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn listen_addresses() {
        let base = Path::new("/etc/portico");
        assert_eq!(
            parse_listen("127.0.0.1:80", base),
            Ok(ListenAddr::Tcp("127.0.0.1:80".parse().unwrap()))
        );
        assert_eq!(
            parse_listen("[::1]:80", base),
            Ok(ListenAddr::Tcp("[::1]:80".parse().unwrap()))
        );
        assert_eq!(
            parse_listen("unix:run/p.sock", base),
            Ok(ListenAddr::Unix("/etc/portico/run/p.sock".into()))
        );
        assert!(parse_listen("127.0.0.1:99999", base).is_err());
        assert!(parse_listen("nonsense", base).is_err());
    }

    #[test]
    fn peer_addresses() {
        let base = Path::new("/");
        assert_eq!(
            parse_peer("backend.local:8000", base),
            Ok(PeerAddr::Host {
                host: "backend.local".into(),
                port: 8000
            })
        );
        assert!(parse_peer("", base).is_err());
        assert!(parse_peer("noport", base).is_err());
    }

    #[test]
    fn key_templates() {
        let t = KeyTemplate::parse("$http_x_tenant:${cookie_sid}/$request_uri").unwrap();
        assert_eq!(
            t.parts,
            vec![
                KeyPart::Header("x-tenant".into()),
                KeyPart::Literal(":".into()),
                KeyPart::Cookie("sid".into()),
                KeyPart::Literal("/".into()),
                KeyPart::RequestUri,
            ]
        );
        assert!(KeyTemplate::parse("$nope").is_err());
        assert!(KeyTemplate::parse("${unclosed").is_err());
        assert!(KeyTemplate::parse("").is_err());
    }

    #[test]
    fn status_ranges() {
        assert_eq!(parse_status_range("200"), Some((200, 200)));
        assert_eq!(parse_status_range("200-399"), Some((200, 399)));
        assert_eq!(parse_status_range("399-200"), None);
        assert_eq!(parse_status_range("abc"), None);
    }
}
