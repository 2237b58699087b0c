//! Config → running pieces: upstreams (kept across reloads when unchanged), one service
//! per bound address (listeners sharing an address become virtual hosts of one service),
//! TLS acceptors, and the admin endpoint.

use std::collections::BTreeMap;
use std::sync::Arc;

use portico_config::{
    Config, HealthCheck, Limits, ListenAddr, ListenerConfig, Protocol, RouteAction, StartTls,
};
use portico_core::{tls, CertSpec, EndpointSpec, TlsMode};
use portico_http::{HttpService, HttpUpstream, Shared, Site};
use portico_mail::{MailService, MailSettings};
use portico_upstream::{expand, run_resolver, Upstream, UpstreamHandle};

/// The upstreams of one config generation.
#[derive(Default, Clone)]
pub struct Upstreams {
    pub shared: BTreeMap<String, Arc<UpstreamHandle>>,
    pub http: BTreeMap<String, Arc<HttpUpstream>>,
    /// Stops an upstream's active health checker and resolver when its last generation
    /// is dropped.
    background: BTreeMap<String, Arc<tokio_util::sync::DropGuard>>,
}

impl Upstreams {
    /// Builds the upstreams of `config`. An upstream whose settings did not change is
    /// kept whole; otherwise servers whose settings did not change keep their state.
    /// Fails when an upstream's TLS files cannot be used.
    pub fn build(config: &Config, previous: &Upstreams, workers: usize) -> Result<Self, String> {
        let mut next = Upstreams::default();
        for (name, cfg) in &config.upstreams {
            let prev = previous.shared.get(name);
            if let Some(handle) = prev.filter(|h| &h.template == cfg) {
                next.shared.insert(name.clone(), Arc::clone(handle));
                if let Some(http) = previous.http.get(name) {
                    next.http.insert(name.clone(), Arc::clone(http));
                }
                if let Some(bg) = previous.background.get(name) {
                    next.background.insert(name.clone(), Arc::clone(bg));
                }
                continue;
            }
            let old = prev.map(|h| h.load());
            let upstream = Upstream::reusing(expand(cfg), old.as_deref());
            let handle = Arc::new(
                UpstreamHandle::with_tls(cfg.clone(), upstream)
                    .map_err(|e| format!("upstreams.{name}.tls: {e}"))?,
            );
            let stop = tokio_util::sync::CancellationToken::new();
            if let Some(health) = &cfg.health {
                tokio::spawn(portico_upstream::health::run_checks(
                    Arc::clone(&handle),
                    health.clone(),
                    default_check(config, name),
                    stop.clone(),
                ));
            }
            if cfg.resolve.is_some() {
                tokio::spawn(run_resolver(Arc::clone(&handle), stop.clone()));
            }
            next.background
                .insert(name.clone(), Arc::new(stop.drop_guard()));
            next.http.insert(
                name.clone(),
                Arc::new(HttpUpstream::new(Arc::clone(&handle), workers)),
            );
            next.shared.insert(name.clone(), handle);
        }
        Ok(next)
    }
}

/// The probe of the first module found using upstream `name` (each module declares
/// its own default); TCP connect for an upstream nobody uses yet.
fn default_check(config: &Config, name: &str) -> HealthCheck {
    let mail = config.listeners.iter().find_map(|l| {
        (l.upstream.as_deref() == Some(name)).then_some(match l.protocol {
            Protocol::Imap => HealthCheck::Imap,
            Protocol::Pop3 => HealthCheck::Pop3,
            Protocol::Smtp => HealthCheck::Smtp,
            Protocol::Http => HealthCheck::Tcp,
        })
    });
    config
        .listeners
        .iter()
        .flat_map(|l| &l.routes)
        .find_map(|r| match &r.action {
            RouteAction::Proxy(p) if p.upstream_choices.iter().any(|c| c == name) => {
                Some(portico_http::default_health_check(p.via))
            }
            _ => None,
        })
        .or(mail)
        .unwrap_or(HealthCheck::Tcp)
}

/// One endpoint spec per bound address, plus the admin endpoint.
pub fn endpoints(
    config: &Config,
    upstreams: &Upstreams,
    limiters: &portico_limits::Limiters,
    caches: &portico_cache::Zones,
    shared: &Shared,
) -> Result<Vec<EndpointSpec>, String> {
    let mut by_addr: Vec<(ListenAddr, Vec<&ListenerConfig>)> = Vec::new();
    for l in &config.listeners {
        for a in &l.listen {
            match by_addr.iter_mut().find(|(addr, _)| addr == a) {
                Some((_, ls)) => ls.push(l),
                None => by_addr.push((a.clone(), vec![l])),
            }
        }
    }
    let metrics = &shared.status.metrics;
    for l in &config.listeners {
        for r in &l.routes {
            if let RouteAction::Static(s) = &r.action {
                if !s.root.is_dir() {
                    tracing::warn!(listener = %l.name, route = %r.path, root = %s.root.display(),
                        "static root is not a directory: requests will get 404");
                }
            }
        }
    }
    let mut specs = Vec::new();
    for (addr, listeners) in by_addr {
        let first = listeners[0];
        let service: Arc<dyn portico_core::Service> = match first.protocol {
            Protocol::Http => {
                let sites = listeners
                    .iter()
                    .map(|l| Site::new(l, &upstreams.http, limiters, caches, metrics, &shared.logs))
                    .collect::<Result<Vec<_>, _>>()?;
                Arc::new(HttpService::new(sites, shared.clone()))
            }
            Protocol::Imap | Protocol::Pop3 | Protocol::Smtp => Arc::new(MailService::new(
                MailSettings::new(first, &upstreams.shared, limiters, shared.drain)?,
            )),
        };
        let certs: Vec<CertSpec> = listeners
            .iter()
            .filter_map(|l| {
                l.tls.as_ref().map(|t| {
                    let files = match &t.acme {
                        Some(a) => portico_acme::current_files(a).map(|f| vec![f]),
                        None => Ok(t.certs.clone()),
                    }?;
                    Ok::<_, String>(CertSpec {
                        names: l.server_names.clone(),
                        files,
                    })
                })
            })
            .collect::<Result<_, _>>()?;
        let tls = match &first.tls {
            None => TlsMode::Off,
            Some(t) => {
                let opts = tls::TlsOptions {
                    tls13_only: t.tls13_only,
                    client_auth: t.client_auth.clone(),
                    acme_alpn: t.acme.as_ref().is_some_and(|a| a.tls_alpn),
                };
                let acceptor =
                    tls::build_acceptor(&certs, &t.alpn, &opts).map_err(|e| e.to_string())?;
                // Mail listeners with starttls on/only begin in plain text.
                if first.protocol != Protocol::Http && first.starttls != StartTls::Off {
                    TlsMode::StartTls(acceptor)
                } else {
                    TlsMode::Implicit(acceptor)
                }
            }
        };
        specs.push(EndpointSpec {
            addr,
            name: first.name.clone(),
            tls,
            proxy_protocol: first.proxy_protocol,
            handshake_timeout: first.limits.header_timeout,
            max_connections: first.limits.max_connections,
            service,
        });
    }
    if let Some(admin) = &config.admin {
        let limits = Limits {
            header_timeout: std::time::Duration::from_secs(10),
            idle_timeout: std::time::Duration::from_secs(60),
            body_timeout: std::time::Duration::from_secs(10),
            send_timeout: std::time::Duration::from_secs(10),
            max_connections: 64,
            max_header_bytes: 16 * 1024,
            max_body_bytes: 0,
            websocket_idle_timeout: std::time::Duration::from_secs(60),
            websocket_max_lifetime: std::time::Duration::ZERO,
            underscores_in_headers: false,
        };
        specs.push(EndpointSpec {
            addr: admin.listen.clone(),
            name: "admin".into(),
            tls: TlsMode::Off,
            proxy_protocol: false,
            handshake_timeout: limits.header_timeout,
            max_connections: limits.max_connections,
            service: Arc::new(HttpService::new(
                vec![Site::admin(limits, metrics)],
                shared.clone(),
            )),
        });
    }
    Ok(specs)
}

/// The cache zones `config` defines, as the cache crate takes them.
pub fn cache_zones(config: &Config) -> Vec<portico_cache::ZoneSettings> {
    config
        .caches
        .values()
        .map(|c| portico_cache::ZoneSettings {
            name: c.name.clone(),
            memory: c.memory,
            disk: c.disk.clone(),
        })
        .collect()
}

/// The certificate files whose OCSP staple is fetched (`ocsp = "fetch"`).
pub fn ocsp_fetched(config: &Config) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for f in config
        .listeners
        .iter()
        .filter_map(|l| l.tls.as_ref())
        .flat_map(|t| &t.certs)
        .filter(|f| f.ocsp == Some(portico_config::Ocsp::Fetch))
    {
        if !out.contains(&f.cert) {
            out.push(f.cert.clone());
        }
    }
    out
}

/// The ACME blocks of a config's listeners, for the certificate manager.
pub fn acme_blocks(config: &Config) -> Vec<portico_config::AcmeConfig> {
    let mut out: Vec<portico_config::AcmeConfig> = Vec::new();
    for a in config
        .listeners
        .iter()
        .filter_map(|l| l.tls.as_ref().and_then(|t| t.acme.clone()))
    {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}
