//! The admin endpoints (/status JSON, /metrics Prometheus text, /health) and the
//! embedded default's welcome page.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{HeaderValue, CONTENT_TYPE, SERVER};
use http::{Response, StatusCode};
use portico_core::ListenerSet;
use portico_upstream::UpstreamHandle;
use serde_json::json;

use crate::body::{full, HttpBody};
use crate::errors::{error_response, SERVER_NAME, SERVER_VALUE};
use crate::Metrics;

/// Everything /status and /metrics report. The upstream list is swapped on reload.
pub struct StatusSource {
    pub listeners: Arc<ListenerSet>,
    pub upstreams: ArcSwap<Vec<Arc<UpstreamHandle>>>,
    /// The rate and conn limits of the running config.
    pub limits: ArcSwap<portico_limits::Limiters>,
    /// The cache zones of the running config.
    pub caches: ArcSwap<portico_cache::Zones>,
    pub metrics: Arc<Metrics>,
    pub started: Instant,
    pub reloads: AtomicU64,
    pub failed_reloads: AtomicU64,
    /// Access-log lines dropped because the writer could not keep up (every access log
    /// of the process's life counts here).
    pub access_log_dropped: Arc<AtomicU64>,
    /// When the process started, for `portico_start_time_seconds`.
    pub started_at: std::time::SystemTime,
}

impl StatusSource {
    pub fn new(listeners: Arc<ListenerSet>, metrics: Arc<Metrics>) -> Self {
        Self {
            listeners,
            upstreams: ArcSwap::from_pointee(Vec::new()),
            limits: ArcSwap::from_pointee(portico_limits::Limiters::default()),
            caches: ArcSwap::from_pointee(portico_cache::Zones::default()),
            metrics,
            started: Instant::now(),
            reloads: AtomicU64::new(0),
            failed_reloads: AtomicU64::new(0),
            access_log_dropped: Arc::default(),
            started_at: std::time::SystemTime::now(),
        }
    }

    pub fn status_json(&self) -> serde_json::Value {
        let listeners: Vec<_> = self
            .listeners
            .stats()
            .into_iter()
            .map(|(addr, name, s)| {
                json!({
                    "name": name,
                    "listen": addr.to_string(),
                    "connections_accepted": s.accepted.load(Ordering::Relaxed),
                    "connections_active": s.active.load(Ordering::Relaxed),
                    "connections_waiting": s.waiting.load(Ordering::Relaxed),
                    "handshake_failures": s.handshake_failures.load(Ordering::Relaxed),
                })
            })
            .collect();
        let http: serde_json::Map<String, serde_json::Value> = self
            .metrics
            .sites()
            .into_iter()
            .map(|(name, s)| {
                let c = |i: usize| s.by_class[i].load(Ordering::Relaxed);
                (
                    name,
                    json!({
                        "requests": s.requests.load(Ordering::Relaxed),
                        "responses": {"1xx": c(0), "2xx": c(1), "3xx": c(2), "4xx": c(3), "5xx": c(4)},
                        "bytes_sent": s.bytes_sent.load(Ordering::Relaxed),
                    }),
                )
            })
            .collect();
        let upstreams: serde_json::Map<String, serde_json::Value> = self
            .upstreams
            .load()
            .iter()
            .map(|h| {
                let u = h.load();
                let servers: Vec<_> = u
                    .servers
                    .iter()
                    .map(|s| {
                        json!({
                            "addr": s.addr().to_string(),
                            "state": s.state(),
                            "weight": s.config.weight,
                            "backup": s.config.backup,
                            "active": s.stats.active.load(Ordering::Relaxed),
                            "requests": s.stats.requests.load(Ordering::Relaxed),
                            "failures": s.stats.failures.load(Ordering::Relaxed),
                            "unavailable": s.stats.unavailable.load(Ordering::Relaxed),
                            "health_checks": {
                                "passes_in_row": s.health.passes_in_row.load(Ordering::Relaxed),
                                "fails_in_row": s.health.fails_in_row.load(Ordering::Relaxed),
                                "failed": s.health.failed_checks.load(Ordering::Relaxed),
                            },
                        })
                    })
                    .collect();
                (
                    u.name().to_string(),
                    json!({
                        "balance": u.config.balance.as_str(),
                        "tls": h.tls.as_ref().map(|t| json!({ "h2": t.h2 })),
                        "servers": servers,
                    }),
                )
            })
            .collect();
        let lim = self.limits.load();
        let rate: serde_json::Map<String, serde_json::Value> = lim
            .rate
            .iter()
            .map(|(n, l)| {
                let s = &l.stats;
                (
                    n.clone(),
                    json!({
                        "passed": s.passed.load(Ordering::Relaxed),
                        "delayed": s.delayed.load(Ordering::Relaxed),
                        "refused": s.refused.load(Ordering::Relaxed),
                        "evicted": s.evicted.load(Ordering::Relaxed),
                        "keys": l.keys(),
                        "max_keys": l.config.keys,
                        "store": l.store.as_ref().map(|s| json!({
                            "url": s.url,
                            "state": s.state().as_str(),
                            "fallbacks": s.fallbacks.load(Ordering::Relaxed),
                        })),
                    }),
                )
            })
            .collect();
        let conn: serde_json::Map<String, serde_json::Value> = lim
            .conn
            .iter()
            .map(|(n, l)| {
                (
                    n.clone(),
                    json!({
                        "passed": l.stats.passed.load(Ordering::Relaxed),
                        "refused": l.stats.refused.load(Ordering::Relaxed),
                        "keys_in_flight": l.keys(),
                    }),
                )
            })
            .collect();
        json!({
            "server": SERVER_NAME,
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "reloads": self.reloads.load(Ordering::Relaxed),
            "failed_reloads": self.failed_reloads.load(Ordering::Relaxed),
            "certificates": portico_acme::status().iter().map(|c| json!({
                "domains": c.domains,
                "not_after": c.not_after,
                "renewals": c.renewals,
                "last_error": c.last_error,
            })).collect::<Vec<_>>(),
            "ocsp": portico_acme::ocsp::status().iter().map(|o| json!({
                "cert": o.cert,
                "responder": o.responder,
                "status": o.status,
                "next_update": o.next_update,
                "fetches": o.fetches,
                "last_error": o.last_error,
            })).collect::<Vec<_>>(),
            "access_log_dropped": self.access_log_dropped.load(Ordering::Relaxed),
            "connections_open": self.listeners.open_connections(),
            "listeners": listeners,
            "http": http,
            "upstreams": upstreams,
            "rate_limits": rate,
            "conn_limits": conn,
            "caches": self.caches_json(),
        })
    }

    fn caches_json(&self) -> serde_json::Value {
        let zones = self.caches.load();
        let map: serde_json::Map<String, serde_json::Value> = zones
            .zones
            .iter()
            .map(|(name, z)| {
                let u = z.usage();
                let st = &z.stats;
                let lookups: serde_json::Map<String, serde_json::Value> =
                    portico_cache::CacheStatus::ALL
                        .iter()
                        .map(|s| (s.as_str().to_ascii_lowercase(), json!(st.lookups(*s))))
                        .collect();
                let disk = z.disk.as_ref().map(|d| {
                    json!({
                        "path": d.root().display().to_string(),
                        "bytes": u.disk_bytes,
                        "max_bytes": d.max(),
                        "objects": u.disk_objects,
                        "evictions": d.evictions.load(Ordering::Relaxed),
                        "torn": d.torn.load(Ordering::Relaxed),
                        "write_errors": d.write_errors.load(Ordering::Relaxed),
                    })
                });
                (
                    name.clone(),
                    json!({
                        "memory": {
                            "bytes": u.memory_bytes,
                            "max_bytes": z.settings.memory,
                            "entries": u.memory_entries,
                            "evictions": st.memory_evictions.load(Ordering::Relaxed),
                        },
                        "disk": disk,
                        "lookups": lookups,
                        "stores": st.stores.load(Ordering::Relaxed),
                        "stored_bytes": st.stored_bytes.load(Ordering::Relaxed),
                        "not_stored": st.not_stored.load(Ordering::Relaxed),
                        "purged": st.purged.load(Ordering::Relaxed),
                    }),
                )
            })
            .collect();
        serde_json::Value::Object(map)
    }

    fn cache_metrics(&self, out: &mut String) {
        let zones = self.caches.load();
        if zones.zones.is_empty() {
            return;
        }
        let mut lookups = Vec::new();
        let (mut bytes, mut max, mut entries, mut evictions) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut stores, mut stored_bytes) = (Vec::new(), Vec::new());
        for (name, z) in &zones.zones {
            let zone = esc(name);
            for s in portico_cache::CacheStatus::ALL {
                lookups.push((
                    format!("zone=\"{zone}\",status=\"{}\"", s.as_str()),
                    z.stats.lookups(s),
                ));
            }
            let u = z.usage();
            let mem = format!("zone=\"{zone}\",tier=\"memory\"");
            bytes.push((mem.clone(), u.memory_bytes));
            max.push((mem.clone(), z.settings.memory));
            entries.push((mem.clone(), u.memory_entries));
            evictions.push((mem, z.stats.memory_evictions.load(Ordering::Relaxed)));
            if let Some(d) = &z.disk {
                let disk = format!("zone=\"{zone}\",tier=\"disk\"");
                bytes.push((disk.clone(), u.disk_bytes));
                max.push((disk.clone(), d.max()));
                entries.push((disk.clone(), u.disk_objects));
                evictions.push((disk, d.evictions.load(Ordering::Relaxed)));
            }
            stores.push((
                format!("zone=\"{zone}\""),
                z.stats.stores.load(Ordering::Relaxed),
            ));
            stored_bytes.push((
                format!("zone=\"{zone}\""),
                z.stats.stored_bytes.load(Ordering::Relaxed),
            ));
        }
        let rows = [
            ("portico_cache_requests_total", "counter", "Requests on cached routes, by cache status (HIT, MISS, EXPIRED, STALE, UPDATING, REVALIDATED, BYPASS).", lookups),
            ("portico_cache_bytes", "gauge", "Bytes a cache zone holds, per tier.", bytes),
            ("portico_cache_max_bytes", "gauge", "The bound of a cache zone's tier, in bytes.", max),
            ("portico_cache_entries", "gauge", "Entries (objects and Vary markers) a zone's tier holds.", entries),
            ("portico_cache_evictions_total", "counter", "Objects evicted to stay within a tier's bound.", evictions),
            ("portico_cache_stores_total", "counter", "Objects stored.", stores),
            ("portico_cache_stored_bytes_total", "counter", "Body bytes of the objects stored.", stored_bytes),
        ];
        for (name, kind, help, r) in rows {
            family(out, name, kind, help, r);
        }
    }

    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        let listeners = self.listeners.stats();
        let l = |f: &dyn Fn(&portico_core::EndpointStats) -> u64| {
            listeners
                .iter()
                .map(|(a, n, s)| {
                    (
                        format!("listener=\"{}\",listen=\"{}\"", esc(n), esc(&a.to_string())),
                        f(s),
                    )
                })
                .collect::<Vec<_>>()
        };
        family(
            &mut out,
            "portico_connections_accepted_total",
            "counter",
            "Connections accepted.",
            l(&|s| s.accepted.load(Ordering::Relaxed)),
        );
        family(
            &mut out,
            "portico_connections_active",
            "gauge",
            "Connections open now.",
            l(&|s| s.active.load(Ordering::Relaxed) as u64),
        );
        family(
            &mut out,
            "portico_connections_waiting",
            "gauge",
            "Open connections idle between requests, parked without a task.",
            l(&|s| s.waiting.load(Ordering::Relaxed) as u64),
        );
        family(
            &mut out,
            "portico_handshake_failures_total",
            "counter",
            "Connections closed during the PROXY header or TLS handshake.",
            l(&|s| s.handshake_failures.load(Ordering::Relaxed)),
        );
        let sites = self.metrics.sites();
        let mut rows = Vec::new();
        for (name, s) in &sites {
            for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
                rows.push((
                    format!("listener=\"{}\",class=\"{class}\"", esc(name)),
                    s.by_class[i].load(Ordering::Relaxed),
                ));
            }
        }
        family(
            &mut out,
            "portico_http_responses_total",
            "counter",
            "HTTP responses by status class.",
            rows,
        );
        let mut rows = Vec::new();
        for (name, s) in &sites {
            for (i, c) in s.by_status.iter().enumerate() {
                let n = c.load(Ordering::Relaxed);
                if n > 0 {
                    rows.push((
                        format!("listener=\"{}\",code=\"{}\"", esc(name), i + 100),
                        n,
                    ));
                }
            }
        }
        family(
            &mut out,
            "portico_http_responses_by_code_total",
            "counter",
            "HTTP responses by status code (codes seen so far).",
            rows,
        );
        family(
            &mut out,
            "portico_http_response_bytes_total",
            "counter",
            "HTTP response body bytes sent.",
            sites
                .iter()
                .map(|(n, s)| {
                    (
                        format!("listener=\"{}\"", esc(n)),
                        s.bytes_sent.load(Ordering::Relaxed),
                    )
                })
                .collect(),
        );
        let ups: Vec<_> = self.upstreams.load().iter().map(|h| h.load()).collect();
        let servers = |f: &dyn Fn(&portico_upstream::Server) -> u64| {
            let mut rows = Vec::new();
            for u in ups.iter() {
                for s in &u.servers {
                    rows.push((
                        format!(
                            "upstream=\"{}\",server=\"{}\"",
                            esc(u.name()),
                            esc(&s.addr().to_string())
                        ),
                        f(s),
                    ));
                }
            }
            rows
        };
        family(
            &mut out,
            "portico_upstream_server_up",
            "gauge",
            "1 when the server takes requests, 0 when unavailable or draining.",
            servers(&|s| u64::from(s.state() == portico_upstream::ServerState::Up)),
        );
        family(
            &mut out,
            "portico_upstream_requests_total",
            "counter",
            "Requests sent to the server.",
            servers(&|s| s.stats.requests.load(Ordering::Relaxed)),
        );
        family(
            &mut out,
            "portico_upstream_failures_total",
            "counter",
            "Requests that failed on the server (connect error, timeout).",
            servers(&|s| s.stats.failures.load(Ordering::Relaxed)),
        );
        family(
            &mut out,
            "portico_upstream_active",
            "gauge",
            "Requests in flight on the server.",
            servers(&|s| s.stats.active.load(Ordering::Relaxed) as u64),
        );
        // histograms: name_bucket{…,le}, name_sum, name_count
        fn histogram(
            out: &mut String,
            name: &str,
            help: &str,
            rows: Vec<(String, &portico_core::histogram::Histogram)>,
        ) {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} histogram");
            for (labels, h) in rows {
                let (buckets, count, sum) = h.snapshot();
                for (le, n) in buckets {
                    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {n}");
                }
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
                let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
                let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
            }
        }
        histogram(
            &mut out,
            "portico_http_request_duration_seconds",
            "From the request head to the last byte of the answer, per listener.",
            sites
                .iter()
                .map(|(n, s)| (format!("listener=\"{}\"", esc(n)), &s.duration))
                .collect(),
        );
        let routes = self.metrics.routes();
        histogram(
            &mut out,
            "portico_http_route_duration_seconds",
            "Request head to the answer's last byte, per route (as written in the config).",
            routes
                .iter()
                .map(|((l, r), h)| {
                    (
                        format!("listener=\"{}\",route=\"{}\"", esc(l), esc(r)),
                        &**h,
                    )
                })
                .collect(),
        );
        let mut rows = Vec::new();
        for u in ups.iter() {
            for s in &u.servers {
                rows.push((
                    format!(
                        "upstream=\"{}\",server=\"{}\"",
                        esc(u.name()),
                        esc(&s.addr().to_string())
                    ),
                    &s.stats.response_time,
                ));
            }
        }
        histogram(
            &mut out,
            "portico_upstream_response_seconds",
            "Time to the upstream's response header, per server.",
            rows,
        );
        let lim = self.limits.load();
        let mut rows = Vec::new();
        for (n, l) in &lim.rate {
            for (outcome, c) in [
                ("passed", &l.stats.passed),
                ("delayed", &l.stats.delayed),
                ("refused", &l.stats.refused),
            ] {
                rows.push((
                    format!("limit=\"{}\",outcome=\"{outcome}\"", esc(n)),
                    c.load(Ordering::Relaxed),
                ));
            }
        }
        family(
            &mut out,
            "portico_rate_limit_requests_total",
            "counter",
            "Requests a rate limit let through at once, delayed, or refused.",
            rows,
        );
        family(
            &mut out,
            "portico_rate_limit_keys",
            "gauge",
            "Keys a rate limit tracks now.",
            lim.rate
                .iter()
                .map(|(n, l)| (format!("limit=\"{}\"", esc(n)), l.keys() as u64))
                .collect(),
        );
        let mut rows = Vec::new();
        for (n, l) in &lim.conn {
            for (outcome, c) in [("passed", &l.stats.passed), ("refused", &l.stats.refused)] {
                rows.push((
                    format!("limit=\"{}\",outcome=\"{outcome}\"", esc(n)),
                    c.load(Ordering::Relaxed),
                ));
            }
        }
        family(
            &mut out,
            "portico_conn_limit_requests_total",
            "counter",
            "Requests a conn limit let through or refused.",
            rows,
        );
        family(
            &mut out,
            "portico_reloads_total",
            "counter",
            "Successful configuration reloads.",
            vec![(String::new(), self.reloads.load(Ordering::Relaxed))],
        );
        family(
            &mut out,
            "portico_reloads_failed_total",
            "counter",
            "Reloads refused (the running config kept serving).",
            vec![(String::new(), self.failed_reloads.load(Ordering::Relaxed))],
        );
        family(
            &mut out,
            "portico_access_log_dropped_total",
            "counter",
            "Access-log lines dropped because the writer could not keep up.",
            vec![(
                String::new(),
                self.access_log_dropped.load(Ordering::Relaxed),
            )],
        );
        family(
            &mut out,
            "portico_build_info",
            "gauge",
            "Always 1; the version is a label.",
            vec![(format!("version=\"{}\"", env!("CARGO_PKG_VERSION")), 1)],
        );
        // what other modules registered (mail logins, …)
        for (name, help, rows) in portico_core::counters::global().snapshot() {
            family(&mut out, name, "counter", help, rows);
        }
        let process = process_facts();
        family(
            &mut out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory (from /proc/self/statm).",
            vec![(String::new(), process.rss_bytes)],
        );
        family(
            &mut out,
            "process_open_fds",
            "gauge",
            "Open file descriptors (connections, listeners, files).",
            vec![(String::new(), process.open_fds)],
        );
        family(
            &mut out,
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time, in whole seconds (from /proc/self/stat).",
            vec![(String::new(), process.cpu_seconds)],
        );
        family(
            &mut out,
            "portico_start_time_seconds",
            "gauge",
            "When the process started, in seconds since the Unix epoch.",
            vec![(
                String::new(),
                self.started_at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            )],
        );
        self.cache_metrics(&mut out);
        out.replace("{}", "")
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str, rows: Vec<(String, u64)>) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in rows {
        let _ = writeln!(out, "{name}{{{labels}}} {v}");
    }
}

/// What /proc says of this process (zeros where it cannot be read).
struct ProcessFacts {
    rss_bytes: u64,
    open_fds: u64,
    cpu_seconds: u64,
}

fn process_facts() -> ProcessFacts {
    let page = 4096;
    let rss_bytes = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * page);
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    // utime and stime, fields 14 and 15, after the parenthesised command name
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(") ")?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    ProcessFacts {
        rss_bytes,
        open_fds,
        // the kernel's USER_HZ is 100 on every Linux Portico runs on
        cpu_seconds: ticks / 100,
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<HttpBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(SERVER, SERVER_VALUE);
    r
}

const WELCOME: &str = "<!DOCTYPE html>
<html>
<head><title>Welcome to Portico</title></head>
<body>
<h1>Welcome to Portico</h1>
<p>If you see this page, Portico is running on its embedded default configuration.</p>
<p>Write a <code>portico.toml</code> (see the README) to proxy your apps; live counters are at
<a href=\"/status\">/status</a>.</p>
</body>
</html>
";

/// Serves the admin paths, or (for `admin = false`) the welcome page and /status.
pub fn serve(
    status: &StatusSource,
    method: &http::Method,
    path: &str,
    query: Option<&str>,
    admin: bool,
) -> Response<HttpBody> {
    if let (Some(zone), true) = (path.strip_prefix("/cache/"), admin) {
        return purge(status, method, zone, query);
    }
    match (path, admin) {
        ("/status", _) => {
            let body = serde_json::to_string_pretty(&status.status_json()).unwrap_or_default();
            text(StatusCode::OK, "application/json", body + "\n")
        }
        ("/metrics", true) => text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            status.metrics_text(),
        ),
        ("/health", true) => text(StatusCode::OK, "text/plain", "ok\n".into()),
        ("/", false) => text(StatusCode::OK, "text/html", WELCOME.into()),
        _ => error_response(StatusCode::NOT_FOUND),
    }
}

/// `DELETE /cache/ZONE?key=K` (K the rendered key, percent-encoded) or `?prefix=P`:
/// 200 with `{"purged": N}`, 404 when nothing matched.
fn purge(
    status: &StatusSource,
    method: &http::Method,
    zone: &str,
    query: Option<&str>,
) -> Response<HttpBody> {
    if method != http::Method::DELETE {
        let mut r = error_response(StatusCode::METHOD_NOT_ALLOWED);
        r.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("DELETE"));
        return r;
    }
    let zones = status.caches.load();
    let Some(z) = zones.zones.get(zone) else {
        return text(
            StatusCode::NOT_FOUND,
            "application/json",
            format!(
                "{}\n",
                json!({ "error": format!("no cache zone {zone:?}") })
            ),
        );
    };
    let mut key = None;
    let mut prefix = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "key" => key = Some(v.into_owned()),
            "prefix" => prefix = Some(v.into_owned()),
            _ => {}
        }
    }
    let purged = match (key, prefix) {
        (Some(k), None) => z.purge_key(&k),
        (None, Some(p)) => z.purge_prefix(&p),
        _ => {
            return text(
                StatusCode::BAD_REQUEST,
                "application/json",
                format!("{}\n", json!({ "error": "give key=KEY or prefix=PREFIX" })),
            )
        }
    };
    tracing::info!(zone, purged, "cache purge");
    let code = if purged == 0 {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    text(
        code,
        "application/json",
        format!("{}\n", json!({ "purged": purged })),
    )
}
