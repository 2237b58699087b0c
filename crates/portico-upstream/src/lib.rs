//! The one upstream balancer every protocol module shares.
//!
//! An [`Upstream`] is a named group of servers built from an
//! [`portico_config::UpstreamConfig`]. Modules ask it for a server with
//! [`Upstream::select`], get a [`Pick`] (which counts the request as in flight until
//! dropped), connect with [`connect`], and report the outcome with [`Pick::success`] or
//! [`Pick::failure`]: that feeds passive health (nginx's `max_fails` / `fail_timeout`).
//! Which outcomes count as failures is the module's decision, not this crate's.
//! Idle connections are kept in an [`IdlePool`] per server, typed by the module.
//!
//! This crate knows no protocol: no HTTP, no mail. Protocol-specific probes and retries
//! live in the modules and talk to this crate through these small types.

mod connect;
#[doc(hidden)]
pub mod fixtures;
pub mod health;
mod pool;
mod queue;
mod resolve;
mod select;
pub mod tls;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use portico_config::{Balance, PeerAddr, ServerConfig, UpstreamConfig};
use serde::Serialize;

pub use connect::{connect, connect_sending, PeerStream};
pub use pool::IdlePool;
pub use resolve::{expand, run_resolver, UpstreamHandle};

/// Requests that may wait, per upstream, when a server's limit was announced by the
/// server (FastCGI FCGI_MAX_CONNS) and `queue` is not configured.
pub const LEARNED_LIMIT_QUEUE: usize = 1024;

/// A named group of servers and the state the balancer keeps about them.
#[derive(Debug)]
pub struct Upstream {
    pub config: UpstreamConfig,
    pub servers: Vec<Arc<Server>>,
    rr: Mutex<select::RoundRobin>,
    ring: select::Ring,
    freed: Arc<queue::Freed>,
    queued: AtomicUsize,
    /// One primary server and no backup (nginx's `single`): passive health never takes
    /// it out, since nothing else could serve.
    sole: bool,
}

/// One backend server: its config, passive-health state and counters.
#[derive(Debug)]
pub struct Server {
    pub config: ServerConfig,
    pub stats: ServerStats,
    /// Active health check state (all zero / healthy when no checks run).
    pub health: ActiveHealth,
    /// When passive health lets the server back in, as [`now_ms`]; 0 = not out. Read on
    /// every pick, so it is an atomic; the failure window below is locked only when
    /// something failed.
    down_until_ms: AtomicU64,
    /// When the server last came back into rotation, as [`now_ms`] (0 = never left):
    /// the start of its slow start.
    back_at_ms: AtomicU64,
    /// Per-server state a protocol module attaches (its idle connection pool): it lives
    /// as long as the server, across reloads and re-resolutions that keep the server.
    ext: std::sync::OnceLock<Arc<dyn std::any::Any + Send + Sync>>,
    /// A connection limit the server announced (FastCGI FCGI_MAX_CONNS), used when
    /// `max_conns` is not configured; 0 = none.
    learned_max_conns: AtomicUsize,
    /// Set while `passive` holds failures to forget on the next success.
    has_failures: std::sync::atomic::AtomicBool,
    passive: Mutex<Passive>,
    /// The address as logs and `$upstream_addr` write it, made once.
    label: Arc<str>,
}

/// Milliseconds since the first call, never 0.
fn now_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Counters shown on /status and /metrics.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub active: AtomicUsize,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    /// Times this server was marked unavailable by passive health.
    pub unavailable: AtomicU64,
    /// Moving average of the time to the response header, in microseconds (least_time).
    pub ewma_us: AtomicU64,
    /// Time to the response header (/metrics).
    pub response_time: portico_core::histogram::Histogram,
}

/// What the active checker knows about a server.
#[derive(Debug, Default)]
pub struct ActiveHealth {
    pub unhealthy: std::sync::atomic::AtomicBool,
    pub passes_in_row: std::sync::atomic::AtomicU32,
    pub fails_in_row: std::sync::atomic::AtomicU32,
    pub failed_checks: AtomicU64,
}

#[derive(Debug, Default)]
struct Passive {
    fails: u32,
    window_start: Option<Instant>,
}

/// What the balancer may use to pick a server.
#[derive(Debug, Default, Clone, Copy)]
pub struct SelectCtx<'a> {
    pub client_ip: Option<IpAddr>,
    /// Servers (by index) already tried for this request.
    pub exclude: &'a [usize],
    /// For `balance = "hash"`: the request's key, made by the module from `hash_key`.
    pub key: Option<&'a [u8]>,
    /// This request already had its one try of a server that passive health had taken
    /// out (see [`Pick::panic`]): no second one.
    pub panicked: bool,
}

/// A server chosen for one request; counts as in flight until dropped.
#[derive(Debug)]
pub struct Pick {
    pub index: usize,
    pub server: Arc<Server>,
    /// Every server of the group was out by passive health, so this one — the one whose
    /// `fail_timeout` ends soonest — is tried anyway (Envoy's "panic" routing). A
    /// success brings it back at once.
    pub panic: bool,
    /// The group's only server (see `Upstream::sole`).
    sole: bool,
    /// Wakes a request waiting in the upstream's queue when this one is done.
    freed: Arc<queue::Freed>,
}

/// Why no server could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoServer {
    /// Every server is down, unhealthy, draining or already tried (nginx's "no live
    /// upstreams").
    #[error("no live upstream server")]
    NoneAvailable,
    /// Every server is at max_conns and the queue is full.
    #[error("every server is at max_conns and the queue is full")]
    QueueFull,
    /// Every server stayed at max_conns for queue_timeout.
    #[error("no server freed up within queue_timeout")]
    QueueTimeout,
}

/// The server state shown to operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    Up,
    /// Out of rotation after max_fails failures, until fail_timeout passes.
    Unavailable,
    /// Out of rotation: the active health check failed `fails` times in a row.
    Unhealthy,
    /// `drain = true`: no new requests.
    Draining,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data half-updated in a
    // way that matters (counters and timestamps), so a poisoned lock is still used.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Server {
    fn new(config: ServerConfig) -> Self {
        Self {
            label: config.addr.to_string().into(),
            config,
            stats: ServerStats::default(),
            health: ActiveHealth::default(),
            down_until_ms: AtomicU64::new(0),
            back_at_ms: AtomicU64::new(0),
            ext: std::sync::OnceLock::new(),
            learned_max_conns: AtomicUsize::new(0),
            has_failures: std::sync::atomic::AtomicBool::new(false),
            passive: Mutex::new(Passive::default()),
        }
    }

    /// The module state attached to this server, made by `init` on first use. `None` if
    /// another module attached a different type first.
    pub fn ext_or_init<T: std::any::Any + Send + Sync>(
        &self,
        init: impl FnOnce() -> T,
    ) -> Option<Arc<T>> {
        let any = self
            .ext
            .get_or_init(|| Arc::new(init()) as Arc<dyn std::any::Any + Send + Sync>);
        Arc::clone(any).downcast::<T>().ok()
    }

    /// The concurrent request limit: `max_conns` when configured, else what the server
    /// announced ([`Server::learn_max_conns`]), else 0 (none).
    pub fn max_conns(&self) -> usize {
        match self.config.max_conns {
            0 => self.learned_max_conns.load(Ordering::Relaxed),
            n => n,
        }
    }

    /// Records the limit the server announced; it applies only where `max_conns` is not
    /// configured. Requests over it wait in the upstream's queue.
    pub fn learn_max_conns(&self, n: usize) {
        self.learned_max_conns.store(n, Ordering::Relaxed);
    }

    /// Whether the limit in force was announced by the server rather than configured.
    fn limit_is_learned(&self) -> bool {
        self.config.max_conns == 0 && self.learned_max_conns.load(Ordering::Relaxed) > 0
    }

    /// The weight to balance with now: during slow start it ramps from 1 up to the
    /// configured weight.
    pub fn effective_weight(&self) -> u32 {
        let weight = self.config.weight.max(1);
        let ramp = self.config.slow_start.as_millis() as u64;
        let back = self.back_at_ms.load(Ordering::Relaxed);
        if ramp == 0 || back == 0 {
            return weight;
        }
        let since = now_ms().saturating_sub(back);
        if since >= ramp {
            return weight;
        }
        ((u64::from(weight) * since / ramp) as u32).max(1)
    }

    /// Called by the active checker when the server comes back.
    pub(crate) fn came_back(&self) {
        self.back_at_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Up (not draining, down or unhealthy) and under a connection limit: a request may
    /// wait for it in the queue. Independent of how many requests are in flight right
    /// now, so a server freed between two looks is never mistaken for a dead one.
    fn may_queue(&self) -> bool {
        !self.config.drain
            && self.max_conns() > 0
            && !self.is_down()
            && !self.health.unhealthy.load(Ordering::Relaxed)
    }

    fn is_down(&self) -> bool {
        self.down_until().is_some()
    }

    pub fn addr(&self) -> &PeerAddr {
        &self.config.addr
    }

    /// The address as text (made once: requests log it).
    pub fn label(&self) -> &Arc<str> {
        &self.label
    }

    /// Counts one more request in flight; under a limit only if that stays within it
    /// (checked and counted in one step, so workers racing for the last place cannot
    /// both get it).
    fn claim(&self) -> bool {
        let max = self.max_conns();
        if max == 0 {
            self.stats.active.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        self.stats
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| {
                (a < max).then_some(a + 1)
            })
            .is_ok()
    }

    /// Whether this server may take a request now: not draining, under max_conns, and
    /// not out after failures.
    pub fn is_available(&self) -> bool {
        let max = self.max_conns();
        !self.config.drain
            && (max == 0 || self.stats.active.load(Ordering::Relaxed) < max)
            && !self.is_down()
            && !self.health.unhealthy.load(Ordering::Relaxed)
    }

    pub fn state(&self) -> ServerState {
        if self.config.drain {
            ServerState::Draining
        } else if self.health.unhealthy.load(Ordering::Relaxed) {
            ServerState::Unhealthy
        } else if self.is_down() {
            ServerState::Unavailable
        } else {
            ServerState::Up
        }
    }

    /// Counts a failure; `max_fails` of them within `fail_timeout` take the server out,
    /// unless it is its group's only server (`sole`), which nothing could replace.
    fn record_failure(&self, now: Instant, sole: bool) {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        let max_fails = self.config.max_fails;
        if max_fails == 0 || sole {
            return;
        }
        let fail_timeout = self.config.fail_timeout;
        let mut p = lock(&self.passive);
        self.has_failures.store(true, Ordering::Relaxed);
        if p.window_start
            .is_none_or(|s| now.duration_since(s) > fail_timeout)
        {
            p.window_start = Some(now);
            p.fails = 0;
        }
        p.fails += 1;
        if p.fails >= max_fails {
            let back = now_ms() + fail_timeout.as_millis() as u64;
            self.down_until_ms.store(back, Ordering::Relaxed);
            self.back_at_ms.store(back, Ordering::Relaxed);
            p.fails = 0;
            p.window_start = None;
            self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(server = %self.config.addr, fail_timeout = ?fail_timeout,
                "upstream server unavailable after {max_fails} failure(s)");
        }
    }

    fn record_success(&self) {
        if !self.has_failures.load(Ordering::Relaxed) {
            return;
        }
        let mut p = lock(&self.passive);
        p.fails = 0;
        p.window_start = None;
        if self.down_until_ms.swap(0, Ordering::Relaxed) != 0 {
            // Back before its fail_timeout ended (a panic try succeeded): slow start
            // begins now.
            self.back_at_ms.store(now_ms(), Ordering::Relaxed);
        }
        self.has_failures.store(false, Ordering::Relaxed);
    }

    /// When passive health lets the server back in, as [`now_ms`], if it is out now.
    fn down_until(&self) -> Option<u64> {
        let until = self.down_until_ms.load(Ordering::Relaxed);
        (until != 0 && now_ms() < until).then_some(until)
    }
}

impl Upstream {
    pub fn new(config: UpstreamConfig) -> Self {
        Self::reusing(config, None)
    }

    /// Builds the upstream for a new config generation, keeping the state (passive and
    /// active health, counters) of every server whose config did not change.
    pub fn reusing(config: UpstreamConfig, previous: Option<&Upstream>) -> Self {
        let mut old: Vec<&Arc<Server>> = previous
            .map(|p| p.servers.iter().collect())
            .unwrap_or_default();
        let servers: Vec<Arc<Server>> = config
            .servers
            .iter()
            .map(|cfg| match old.iter().position(|s| &s.config == cfg) {
                Some(i) => Arc::clone(old.remove(i)),
                None => Arc::new(Server::new(cfg.clone())),
            })
            .collect();
        let rr = select::RoundRobin::new(servers.len());
        let ring = select::Ring::new(&servers);
        let sole = servers.len() == 1 && !servers[0].config.backup;
        Self {
            config,
            servers,
            rr: Mutex::new(rr),
            ring,
            freed: Arc::new(queue::Freed::new()),
            queued: AtomicUsize::new(0),
            sole,
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Chooses a server for one request, or `None` when no server is available
    /// ("no live upstreams"). Backup servers are used only while every primary is out.
    pub fn select(&self, ctx: &SelectCtx<'_>) -> Option<Pick> {
        // A place under max_conns is claimed atomically: when another worker took the
        // last one between the look and the claim, look again.
        for _ in 0..=self.servers.len() {
            let (index, panic) = match self.choose(ctx) {
                Some(i) => (i, false),
                None => (self.panic_choice(ctx)?, true),
            };
            let server = &self.servers[index];
            if server.claim() {
                server.stats.requests.fetch_add(1, Ordering::Relaxed);
                if panic {
                    tracing::warn!(upstream = %self.config.name, server = %server.config.addr,
                        "every server is out after failures: trying the one back soonest");
                }
                return Some(Pick {
                    index,
                    server: Arc::clone(server),
                    panic,
                    sole: self.sole,
                    freed: Arc::clone(&self.freed),
                });
            }
        }
        None
    }

    /// When passive health has taken out every server that is not draining or
    /// unhealthy, the one whose `fail_timeout` ends soonest (not tried yet, under
    /// max_conns): a request is not answered 502 untried because of failures that may
    /// already be over (an app server restarted). `None` when any server is still in
    /// rotation, or this request had its panic try.
    fn panic_choice(&self, ctx: &SelectCtx<'_>) -> Option<usize> {
        if ctx.panicked {
            return None;
        }
        let mut best: Option<(u64, usize)> = None;
        for (i, s) in self.servers.iter().enumerate() {
            if s.config.drain || s.health.unhealthy.load(Ordering::Relaxed) {
                continue;
            }
            let until = s.down_until()?; // one in rotation: no panic
            let max = s.max_conns();
            let room = max == 0 || s.stats.active.load(Ordering::Relaxed) < max;
            if room && !ctx.exclude.contains(&i) && best.is_none_or(|(u, _)| until < u) {
                best = Some((until, i));
            }
        }
        best.map(|(_, i)| i)
    }

    /// The server the balancing method picks among those available now.
    fn choose(&self, ctx: &SelectCtx<'_>) -> Option<usize> {
        let usable = |i: usize, backup: bool| {
            let s = &self.servers[i];
            s.config.backup == backup && !ctx.exclude.contains(&i) && s.is_available()
        };
        let n = self.servers.len();
        let backup = if (0..n).any(|i| usable(i, false)) {
            false
        } else if (0..n).any(|i| usable(i, true)) {
            true
        } else {
            return None;
        };
        let ok = |i: usize| usable(i, backup);
        match self.config.balance {
            Balance::LeastConn => select::least_conn(&self.servers, ok),
            Balance::IpHash => select::ip_hash(&self.servers, ok, ctx.client_ip),
            Balance::RandomTwo => select::random_two(&self.servers, ok),
            Balance::LeastTime => select::least_time(&self.servers, ok),
            Balance::Hash => match ctx.key {
                Some(key) => self.ring.pick(key, ok),
                None => lock(&self.rr).pick(&self.servers, ok),
            },
            Balance::RoundRobin => lock(&self.rr).pick(&self.servers, ok),
        }
    }

    /// Like [`Upstream::select`], but when every eligible server is only at max_conns,
    /// waits (up to `queue` requests, each up to `queue_timeout`) for one to free up.
    pub async fn select_queued(&self, ctx: &SelectCtx<'_>) -> Result<Pick, NoServer> {
        if let Some(p) = self.select(ctx) {
            return Ok(p);
        }
        let waitable = |s: (usize, &Arc<Server>)| !ctx.exclude.contains(&s.0) && s.1.may_queue();
        let queue = self.queue_limit();
        if queue == 0 || !self.servers.iter().enumerate().any(waitable) {
            // One more look: a request may have finished since the first.
            if let Some(p) = self.select(ctx) {
                return Ok(p);
            }
            return Err(if self.servers.iter().enumerate().any(waitable) {
                NoServer::QueueFull
            } else {
                NoServer::NoneAvailable
            });
        }
        if self.queued.fetch_add(1, Ordering::Relaxed) >= queue {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(NoServer::QueueFull);
        }
        struct Leave<'a>(&'a AtomicUsize);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let _leave = Leave(&self.queued);
        let deadline = tokio::time::Instant::now() + self.config.queue_timeout;
        let (_waiting, notify) = self.freed.join();
        loop {
            let freed = notify.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(p) = self.select(ctx) {
                return Ok(p);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(NoServer::QueueTimeout);
            }
        }
    }

    /// How many requests may wait for a server under its limit: `queue`, or, when it is 0
    /// and a server announced its own limit, [`LEARNED_LIMIT_QUEUE`] (the requests the
    /// server's listen backlog would otherwise have held).
    fn queue_limit(&self) -> usize {
        if self.config.queue == 0 && self.servers.iter().any(|s| s.limit_is_learned()) {
            LEARNED_LIMIT_QUEUE
        } else {
            self.config.queue
        }
    }

    /// How many servers one request may try.
    pub fn max_tries(&self) -> usize {
        match self.config.tries {
            0 => self.servers.len(),
            n => n.min(self.servers.len()),
        }
        .max(1)
    }
}

impl Pick {
    /// Records how long the server took to answer (its response header, for HTTP):
    /// feeds `least_time`.
    pub fn record_latency(&self, took: std::time::Duration) {
        select::record_latency(&self.server, took);
        self.server.stats.response_time.observe(took);
    }

    /// The request got an answer the module counts as healthy.
    pub fn success(self) {
        self.server.record_success();
    }

    /// The request failed in a way the module counts against the server.
    pub fn failure(self) {
        self.server.record_failure(Instant::now(), self.sole);
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        self.server.stats.active.fetch_sub(1, Ordering::Relaxed);
        if self.server.max_conns() > 0 {
            self.freed.notify();
        }
    }
}

#[cfg(test)]
mod tests;
