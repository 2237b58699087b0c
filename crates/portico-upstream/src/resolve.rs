//! Host names as servers: `resolve = "30s"` turns each `HOST:PORT` server into one
//! server per address (A and AAAA) and re-resolves on the interval, adding and removing
//! servers without a restart. The upstream modules use is an [`UpstreamHandle`]: the
//! current generation, swapped whole when the address set changes; servers that stay
//! keep their state (health, counters, module pools).

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use arc_swap::ArcSwap;
use portico_config::{PeerAddr, ServerConfig, UpstreamConfig};
use tokio_util::sync::CancellationToken;

use crate::Upstream;

/// An upstream as configured (host names unresolved) and its current generation.
#[derive(Debug)]
pub struct UpstreamHandle {
    pub template: UpstreamConfig,
    current: ArcSwap<Upstream>,
    /// `tls` on the upstream: how its servers are connected to.
    pub tls: Option<Arc<crate::tls::TlsConnector>>,
}

impl UpstreamHandle {
    pub fn new(template: UpstreamConfig, upstream: Upstream) -> Self {
        Self {
            template,
            current: ArcSwap::from_pointee(upstream),
            tls: None,
        }
    }

    /// [`UpstreamHandle::new`] with the upstream's TLS connector built (its files read).
    pub fn with_tls(template: UpstreamConfig, upstream: Upstream) -> Result<Self, String> {
        let tls = crate::tls::connector_for(template.tls.as_ref())?;
        Ok(Self {
            tls,
            ..Self::new(template, upstream)
        })
    }

    /// The current generation: pick from it for one request.
    pub fn load(&self) -> Arc<Upstream> {
        self.current.load_full()
    }

    pub fn name(&self) -> &str {
        &self.template.name
    }

    fn store(&self, upstream: Upstream) {
        self.current.store(Arc::new(upstream));
    }
}

/// `template` with every host-name server replaced by one server per address
/// (`resolved`), in a stable order. Without `resolve`, host names stay (resolved at
/// connect time).
fn expand_with(
    template: &UpstreamConfig,
    resolved: impl Fn(&str, u16) -> Vec<SocketAddr>,
) -> UpstreamConfig {
    let mut out = template.clone();
    if template.resolve.is_none() {
        return out;
    }
    out.servers = template
        .servers
        .iter()
        .flat_map(|s| match &s.addr {
            PeerAddr::Host { host, port } => {
                let mut addrs = resolved(host, *port);
                addrs.sort();
                addrs.dedup();
                addrs
                    .into_iter()
                    .map(|a| ServerConfig {
                        addr: PeerAddr::Tcp(a),
                        ..s.clone()
                    })
                    .collect::<Vec<_>>()
            }
            _ => vec![s.clone()],
        })
        .collect();
    out
}

/// Resolves now (blocking; at start and reload). A name that does not resolve yields no
/// server and a warning: the next resolution may find it.
pub fn expand(template: &UpstreamConfig) -> UpstreamConfig {
    expand_with(template, |host, port| {
        match (host, port).to_socket_addrs() {
            Ok(a) => a.collect(),
            Err(e) => {
                tracing::warn!(upstream = %template.name, %host, error = %e, "cannot resolve");
                Vec::new()
            }
        }
    })
}

/// Re-resolves `handle`'s host names every `resolve` interval until `stop`.
pub async fn run_resolver(handle: Arc<UpstreamHandle>, stop: CancellationToken) {
    let Some(every) = handle.template.resolve else {
        return;
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let mut answers = std::collections::HashMap::new();
        for s in &handle.template.servers {
            if let PeerAddr::Host { host, port } = &s.addr {
                match tokio::net::lookup_host((host.as_str(), *port)).await {
                    Ok(a) => {
                        answers.insert((host.clone(), *port), a.collect::<Vec<_>>());
                    }
                    Err(e) => {
                        // Keep the last known servers rather than emptying the upstream.
                        tracing::warn!(upstream = %handle.name(), %host, error = %e, "re-resolution failed; keeping the known addresses");
                        answers.clear();
                        break;
                    }
                }
            }
        }
        if answers.is_empty() {
            continue;
        }
        let next = expand_with(&handle.template, |h, p| {
            answers
                .get(&(h.to_string(), p))
                .cloned()
                .unwrap_or_default()
        });
        let current = handle.load();
        if next.servers != current.config.servers {
            let before: Vec<String> = current
                .servers
                .iter()
                .map(|s| s.addr().to_string())
                .collect();
            let after: Vec<String> = next.servers.iter().map(|s| s.addr.to_string()).collect();
            tracing::info!(upstream = %handle.name(), ?before, ?after, "servers changed after re-resolution");
            handle.store(Upstream::reusing(next, Some(&current)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn template(resolve: Option<Duration>) -> UpstreamConfig {
        use crate::fixtures::{server_config, upstream_config};
        let host = PeerAddr::Host {
            host: "app.internal".into(),
            port: 8000,
        };
        let servers = vec![
            server_config(host, 2),
            server_config(PeerAddr::Unix("/run/x.sock".into()), 2),
        ];
        UpstreamConfig {
            resolve,
            ..upstream_config(portico_config::Balance::RoundRobin, servers)
        }
    }

    #[test]
    fn host_names_become_one_server_per_address() {
        let t = template(Some(Duration::from_secs(30)));
        let got = expand_with(&t, |h, p| {
            assert_eq!((h, p), ("app.internal", 8000));
            vec![
                "10.0.0.2:8000".parse().unwrap(),
                "10.0.0.1:8000".parse().unwrap(),
                "[fd00::1]:8000".parse().unwrap(),
            ]
        });
        let addrs: Vec<String> = got.servers.iter().map(|s| s.addr.to_string()).collect();
        assert_eq!(
            addrs,
            vec![
                "10.0.0.1:8000",
                "10.0.0.2:8000",
                "[fd00::1]:8000",
                "unix:/run/x.sock"
            ]
        );
        assert!(
            got.servers.iter().all(|s| s.weight == 2),
            "settings are inherited"
        );
        // without `resolve`, names stay names
        let plain = expand_with(&template(None), |_, _| panic!("not resolved"));
        assert_eq!(plain.servers, template(None).servers);
    }

    #[test]
    fn a_new_generation_keeps_the_servers_that_stay() {
        let t = template(Some(Duration::from_secs(30)));
        let one = expand_with(&t, |_, _| {
            vec![
                "10.0.0.1:8000".parse().unwrap(),
                "10.0.0.2:8000".parse().unwrap(),
            ]
        });
        let first = Upstream::new(one);
        first.servers[0]
            .stats
            .requests
            .fetch_add(7, std::sync::atomic::Ordering::Relaxed);
        let two = expand_with(&t, |_, _| {
            vec![
                "10.0.0.1:8000".parse().unwrap(),
                "10.0.0.3:8000".parse().unwrap(),
            ]
        });
        let second = Upstream::reusing(two, Some(&first));
        assert!(
            Arc::ptr_eq(&first.servers[0], &second.servers[0]),
            "10.0.0.1 kept"
        );
        assert_eq!(second.servers[1].addr().to_string(), "10.0.0.3:8000");
        assert_eq!(
            second.servers[1]
                .stats
                .requests
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }
}
