//! Config values for this crate's tests and benches (one place, so a new config field
//! is added once): servers and upstreams with the file format's defaults.

use std::time::Duration;

use portico_config::{Balance, PeerAddr, ServerConfig, UpstreamConfig};

/// A server at `addr` with `weight` and otherwise default settings.
pub fn server_config(addr: PeerAddr, weight: u32) -> ServerConfig {
    ServerConfig {
        addr,
        weight,
        max_fails: 1,
        fail_timeout: Duration::from_secs(10),
        backup: false,
        max_conns: 0,
        drain: false,
        slow_start: Duration::ZERO,
    }
}

/// An upstream named "u" with `servers` and otherwise default settings.
pub fn upstream_config(balance: Balance, servers: Vec<ServerConfig>) -> UpstreamConfig {
    UpstreamConfig {
        name: "u".into(),
        balance,
        hash_key: None,
        servers,
        keepalive: 0,
        keepalive_timeout: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(1),
        read_timeout: Duration::from_secs(1),
        send_timeout: Duration::from_secs(1),
        tries: 0,
        next_upstream: Default::default(),
        next_upstream_timeout: Duration::ZERO,
        queue: 0,
        queue_timeout: Duration::from_secs(1),
        resolve: None,
        health: None,
        max_vars: 65_535,
        tls: None,
    }
}
