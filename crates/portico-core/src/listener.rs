//! Bound endpoints, accept loops, connection limits, reload and drain.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use portico_config::ListenAddr;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{proxy_protocol, tls, ConnInfo, Connection, Service, Stream};

/// How an endpoint uses TLS.
#[derive(Clone)]
pub enum TlsMode {
    Off,
    /// TLS from the first byte (HTTPS, IMAPS …).
    Implicit(TlsAcceptor),
    /// Plain at first; the module may upgrade with [`Connection::start_tls`].
    StartTls(TlsAcceptor),
}

impl TlsMode {
    /// How the config says it: off, on, starttls.
    pub fn name(&self) -> &'static str {
        match self {
            TlsMode::Off => "off",
            TlsMode::Implicit(_) => "on",
            TlsMode::StartTls(_) => "starttls",
        }
    }
}

impl std::fmt::Debug for TlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsMode::Off => "Off",
            TlsMode::Implicit(_) => "Implicit",
            TlsMode::StartTls(_) => "StartTls",
        })
    }
}

/// Everything the core needs to run one bound address.
#[derive(Clone)]
pub struct EndpointSpec {
    pub addr: ListenAddr,
    pub name: String,
    pub tls: TlsMode,
    pub proxy_protocol: bool,
    /// Bounds the PROXY header read and the TLS handshake.
    pub handshake_timeout: Duration,
    pub max_connections: usize,
    pub service: Arc<dyn Service>,
}

/// Counters per endpoint, for /status and /metrics.
#[derive(Debug, Default)]
pub struct EndpointStats {
    pub accepted: AtomicU64,
    pub active: AtomicUsize,
    /// Of the active ones, those idle between requests and parked (nginx's "Waiting").
    pub waiting: AtomicUsize,
    /// Connections dropped before the module saw them (bad PROXY header, TLS failure).
    pub handshake_failures: AtomicU64,
}

struct EndpointState {
    spec: EndpointSpec,
    limit: Arc<Semaphore>,
}

struct Running {
    state: Arc<ArcSwap<EndpointState>>,
    stop: CancellationToken,
    stats: Arc<EndpointStats>,
    /// Duplicates of the endpoint's sockets, for [`ListenerSet::handover`].
    sockets: Vec<StdBound>,
}

/// A bound socket, before a worker registers it with its runtime.
pub(crate) enum StdBound {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl StdBound {
    fn try_clone(&self) -> io::Result<Self> {
        Ok(match self {
            StdBound::Tcp(l) => StdBound::Tcp(l.try_clone()?),
            StdBound::Unix(l) => StdBound::Unix(l.try_clone()?),
        })
    }

    /// Registers the socket with the current (worker) runtime.
    fn register(self) -> io::Result<Bound> {
        Ok(match self {
            StdBound::Tcp(l) => Bound::Tcp(TcpListener::from_std(l)?),
            StdBound::Unix(l) => Bound::Unix(UnixListener::from_std(l)?),
        })
    }
}

thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The index of the worker thread running the caller (0 outside workers). Modules use it
/// to keep per-worker state, such as idle upstream connections, without sharing it
/// across threads.
pub fn worker_id() -> usize {
    WORKER.with(|w| w.get())
}

/// The set of running endpoints, served by worker threads that each run their own
/// single-threaded runtime (thread per core, like nginx's worker processes): a
/// connection, its requests and its upstream connections stay on one thread.
pub struct ListenerSet {
    workers: Vec<tokio::runtime::Handle>,
    /// Stops the worker runtimes when the set is dropped.
    workers_stop: CancellationToken,
    running: Mutex<HashMap<ListenAddr, Running>>,
    /// Sockets received at start, not yet claimed by an endpoint.
    inherited: Mutex<Vec<(ListenAddr, StdBound)>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    next_id: Arc<AtomicU64>,
}

impl Drop for ListenerSet {
    fn drop(&mut self) {
        self.workers_stop.cancel();
    }
}

/// Whether an IPv6 address is bound IPv6-only: yes, except the wildcard `[::]:PORT`
/// when no `0.0.0.0:PORT` is listed beside it — that one takes IPv4 connections too
/// (as IPv4-mapped addresses), so `listen = ["[::]:8080"]` serves both families.
fn v6_only(addr: &ListenAddr, specs: &[EndpointSpec]) -> bool {
    let ListenAddr::Tcp(a) = addr else {
        return true;
    };
    if !a.ip().is_unspecified() || !a.is_ipv6() {
        return true;
    }
    specs.iter().any(|s| {
        matches!(&s.addr, ListenAddr::Tcp(o) if o.is_ipv4() && o.ip().is_unspecified() && o.port() == a.port())
    })
}

/// Binds `addr` once per worker: TCP sockets share the port with SO_REUSEPORT so the
/// kernel spreads connections over the workers; a Unix socket is bound once and shared.
/// `v6only`: an IPv6 socket takes IPv6 only. `[::]:PORT` alone takes IPv4 too (nginx's
/// `ipv6only=off`), unless `0.0.0.0:PORT` is listed as well ([`v6_only`]).
fn bind(addr: &ListenAddr, workers: usize, v6only: bool) -> io::Result<Vec<StdBound>> {
    match addr {
        ListenAddr::Tcp(a) => {
            if workers > 1 && a.port() != 0 {
                // SO_REUSEPORT would also let this process share a port that another
                // one (a second portico started by mistake) already listens on, and the
                // kernel would split connections between them. Refuse, as a plain bind
                // does: a probe without SO_REUSEPORT fails on a port in use.
                let probe = socket2::Socket::new(
                    socket2::Domain::for_address(*a),
                    socket2::Type::STREAM,
                    Some(socket2::Protocol::TCP),
                )?;
                probe.set_reuse_address(true)?;
                if a.is_ipv6() {
                    probe.set_only_v6(v6only)?;
                }
                probe.bind(&(*a).into())?;
            }
            let mut out = Vec::with_capacity(workers);
            for _ in 0..workers {
                let domain = socket2::Domain::for_address(*a);
                let s = socket2::Socket::new(
                    domain,
                    socket2::Type::STREAM,
                    Some(socket2::Protocol::TCP),
                )?;
                s.set_reuse_address(true)?;
                if workers > 1 {
                    s.set_reuse_port(true)?;
                }
                if a.is_ipv6() {
                    s.set_only_v6(v6only)?;
                }
                s.set_nonblocking(true)?;
                s.bind(&(*a).into())?;
                s.listen(1024)?;
                out.push(StdBound::Tcp(s.into()));
            }
            Ok(out)
        }
        ListenAddr::Unix(p) => {
            if p.exists() {
                // A socket file left by a process that died: remove it, unless something
                // still answers on it.
                if std::os::unix::net::UnixStream::connect(p).is_ok() {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("{} is in use by another process", p.display()),
                    ));
                }
                std::fs::remove_file(p)?;
            }
            let l = std::os::unix::net::UnixListener::bind(p)?;
            l.set_nonblocking(true)?;
            let mut out = Vec::with_capacity(workers);
            for _ in 1..workers {
                out.push(StdBound::Unix(l.try_clone()?));
            }
            out.push(StdBound::Unix(l));
            Ok(out)
        }
    }
}

impl ListenerSet {
    /// Starts `workers` worker threads (at least one).
    pub fn new(workers: usize) -> io::Result<Self> {
        let workers_stop = CancellationToken::new();
        let shutdown = CancellationToken::new();
        let mut handles = Vec::new();
        for i in 0..workers.max(1) {
            let (tx, rx) = std::sync::mpsc::channel();
            let stop = workers_stop.clone();
            let lot_stop = shutdown.clone();
            std::thread::Builder::new()
                .name(format!("portico-w{i}"))
                .spawn(move || {
                    WORKER.with(|w| w.set(i));
                    crate::idle::enable();
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .on_thread_park(crate::idle::run)
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(rt.handle().clone()));
                    // this worker's idle connections wait in its lot (crate::park)
                    rt.spawn(crate::park::run_lot(lot_stop));
                    rt.block_on(stop.cancelled());
                })?;
            let handle = rx
                .recv()
                .map_err(|_| io::Error::other("worker thread died at start"))??;
            handles.push(handle);
        }
        Ok(Self {
            workers: handles,
            workers_stop,
            running: Mutex::new(HashMap::new()),
            inherited: Mutex::new(Vec::new()),
            tracker: TaskTracker::new(),
            shutdown,
            next_id: Arc::new(AtomicU64::new(1)),
        })
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Sockets received at start (systemd, or an upgrade's old process): the next
    /// [`apply`](Self::apply) serves each listener whose address one of them is bound to
    /// on it instead of binding, and closes the ones no listener claims.
    pub fn adopt(&self, inherited: crate::Inherited) {
        let mut mine = self.inherited.lock().unwrap_or_else(|p| p.into_inner());
        mine.extend(inherited.sockets);
    }

    /// Duplicates of every listening socket, for a new process to serve on
    /// (`portico upgrade`); this process goes on accepting on them until it drains.
    pub fn handover(&self) -> io::Result<Vec<std::os::fd::OwnedFd>> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for r in running.values() {
            out.extend(crate::handover::duplicates(&r.sockets)?);
        }
        Ok(out)
    }

    /// Makes the running endpoints match `specs`: running addresses get the new service
    /// and TLS settings for new connections, new addresses are bound, addresses no longer
    /// listed stop accepting (their open connections go on). If any new address cannot be
    /// bound, nothing changes and the error names the address.
    pub fn apply(&self, specs: Vec<EndpointSpec>) -> Result<(), (ListenAddr, io::Error)> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let mut inherited = self.inherited.lock().unwrap_or_else(|p| p.into_inner());
        let mut bound = Vec::new();
        for spec in &specs {
            if !running.contains_key(&spec.addr) && !inherited.iter().any(|(a, _)| *a == spec.addr)
            {
                let v6only = v6_only(&spec.addr, &specs);
                let b = bind(&spec.addr, self.workers.len(), v6only)
                    .map_err(|e| (spec.addr.clone(), e))?;
                bound.push((spec.addr.clone(), b));
            }
        }
        let wanted: Vec<ListenAddr> = specs.iter().map(|s| s.addr.clone()).collect();
        running.retain(|addr, r| {
            let keep = wanted.contains(addr);
            if !keep {
                tracing::info!(listen = %addr, "listener removed: no longer accepting");
                r.stop.cancel();
                remove_socket_file(addr);
            }
            keep
        });
        let mut bound: HashMap<ListenAddr, Vec<StdBound>> = bound.into_iter().collect();
        for (addr, socket) in std::mem::take(&mut *inherited) {
            if wanted.contains(&addr) && !running.contains_key(&addr) {
                bound.entry(addr).or_default().push(socket);
            } else {
                tracing::warn!(listen = %addr, "an inherited socket matches no listener of the config: closed");
            }
        }
        drop(inherited);
        for spec in specs {
            let addr = spec.addr.clone();
            if let Some(r) = running.get(&addr) {
                let old = r.state.load();
                let limit = if old.spec.max_connections == spec.max_connections {
                    Arc::clone(&old.limit)
                } else {
                    Arc::new(Semaphore::new(spec.max_connections))
                };
                r.state.store(Arc::new(EndpointState { spec, limit }));
            } else if let Some(b) = bound.remove(&addr) {
                let sockets = match duplicate_all(&b) {
                    Ok(d) => d,
                    Err(e) => return Err((addr, e)),
                };
                let b = match spread(b, self.workers.len()) {
                    Ok(b) => b,
                    Err(e) => return Err((addr, e)),
                };
                tracing::info!(listen = %addr, listener = %spec.name, tls = spec.tls.name(), "listening");
                let limit = Arc::new(Semaphore::new(spec.max_connections));
                let state = Arc::new(ArcSwap::from_pointee(EndpointState { spec, limit }));
                let stop = self.shutdown.child_token();
                let stats = Arc::new(EndpointStats::default());
                for (worker, socket) in b {
                    let worker = &self.workers[worker];
                    let ctx = AcceptCtx {
                        addr: addr.clone(),
                        state: Arc::clone(&state),
                        stop: stop.clone(),
                        stats: Arc::clone(&stats),
                        tracker: self.tracker.clone(),
                        shutdown: self.shutdown.clone(),
                        next_id: Arc::clone(&self.next_id),
                    };
                    // tracked: `shutdown` returns only once every accept loop has
                    // dropped its socket (the kernel accepts nothing more)
                    let tracker = self.tracker.clone();
                    worker.spawn(tracker.track_future(async move {
                        match socket.register() {
                            Ok(l) => accept_loop(l, ctx).await,
                            Err(e) => tracing::error!(listen = %ctx.addr, error = %e, "cannot register listener"),
                        }
                    }));
                }
                running.insert(
                    addr,
                    Running {
                        state,
                        stop,
                        stats,
                        sockets,
                    },
                );
            }
        }
        Ok(())
    }

    /// (address, listener name, counters) of every running endpoint.
    pub fn stats(&self) -> Vec<(ListenAddr, String, Arc<EndpointStats>)> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = running
            .iter()
            .map(|(a, r)| {
                (
                    a.clone(),
                    r.state.load().spec.name.clone(),
                    Arc::clone(&r.stats),
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Connections being served now, across every endpoint.
    pub fn open_connections(&self) -> usize {
        self.tracker.len()
    }

    /// Stops accepting, tells every connection to finish, and waits up to `timeout`.
    /// Returns whether every connection finished in time.
    pub async fn shutdown(&self, timeout: Duration) -> bool {
        self.drain(timeout, true).await
    }

    /// As [`shutdown`](Self::shutdown), after [`handover`](Self::handover): the new
    /// process serves on the same sockets, so Unix socket files stay where they are.
    pub async fn shutdown_handed_over(&self, timeout: Duration) -> bool {
        self.drain(timeout, false).await
    }

    async fn drain(&self, timeout: Duration, remove_socket_files: bool) -> bool {
        {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            for (addr, r) in running.iter_mut() {
                r.stop.cancel();
                r.sockets.clear();
                if remove_socket_files {
                    remove_socket_file(addr);
                }
            }
        }
        self.shutdown.cancel();
        self.tracker.close();
        tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_ok()
    }
}

fn duplicate_all(sockets: &[StdBound]) -> io::Result<Vec<StdBound>> {
    sockets.iter().map(StdBound::try_clone).collect()
}

/// Which worker serves which socket: each socket goes to one worker, round robin; with
/// fewer sockets than workers (one from systemd, or an old process with fewer workers),
/// the workers share them, so every worker accepts and no socket goes unserved.
fn spread(sockets: Vec<StdBound>, workers: usize) -> io::Result<Vec<(usize, StdBound)>> {
    let workers = workers.max(1);
    let n = sockets.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity(n.max(workers));
    for w in n..workers {
        out.push((w, sockets[w % n].try_clone()?));
    }
    out.extend(
        sockets
            .into_iter()
            .enumerate()
            .map(|(i, s)| (i % workers, s)),
    );
    Ok(out)
}

fn remove_socket_file(addr: &ListenAddr) {
    if let ListenAddr::Unix(p) = addr {
        let _ = std::fs::remove_file(p);
    }
}

struct AcceptCtx {
    addr: ListenAddr,
    state: Arc<ArcSwap<EndpointState>>,
    stop: CancellationToken,
    stats: Arc<EndpointStats>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    next_id: Arc<AtomicU64>,
}

async fn accept_loop(listener: Bound, ctx: AcceptCtx) {
    // one shutdown token for this loop's connections (they all run on this worker):
    // none allocated per connection, and their waits for it share no lock with
    // another worker's
    let conn_shutdown = ctx.shutdown.child_token();
    loop {
        let accepted = tokio::select! {
            _ = ctx.stop.cancelled() => break,
            r = accept(&listener) => r,
        };
        let (stream, peer, local) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(listen = %ctx.addr, error = %e, "accept failed");
                // Out of file descriptors and the like: give the process a moment.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        ctx.stats.accepted.fetch_add(1, Ordering::Relaxed);
        // At max_connections this worker stops accepting until a connection ends: new
        // clients wait in the kernel backlog (at most one accepted client per worker
        // waits here, unserved).
        let limit = Arc::clone(&ctx.state.load().limit);
        let permit = tokio::select! {
            _ = ctx.stop.cancelled() => break,
            p = limit.acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let state = ctx.state.load_full();
        let info = ConnInfo {
            id: ctx.next_id.fetch_add(1, Ordering::Relaxed),
            listener: Arc::from(state.spec.name.as_str()),
            listen: ctx.addr.clone(),
            peer,
            local,
            tls: None,
            proxied: false,
        };
        ctx.stats.active.fetch_add(1, Ordering::Relaxed);
        let held = Held {
            _permit: permit,
            active: ActiveGuard(Arc::clone(&ctx.stats)),
            _tracked: ctx.tracker.token(),
        };
        let shutdown = conn_shutdown.clone();
        tokio::spawn(handle(stream, info, state, held, shutdown));
    }
}

async fn accept(l: &Bound) -> io::Result<(Stream, Option<SocketAddr>, Option<SocketAddr>)> {
    match l {
        Bound::Tcp(l) => {
            let (s, peer) = l.accept().await?;
            let _ = s.set_nodelay(true);
            let local = s.local_addr().ok().map(unmapped);
            Ok((Stream::Tcp(s), Some(unmapped(peer)), local))
        }
        Bound::Unix(l) => {
            let (s, _) = l.accept().await?;
            Ok((Stream::Unix(s), None, None))
        }
    }
}

/// An IPv4 client of a dual-stack `[::]` socket arrives as `::ffff:a.b.c.d`: modules,
/// logs and access lists see it as the IPv4 address it is.
fn unmapped(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

/// What an open connection holds in the core, from accept to close — parked or not:
/// its place under `max_connections`, its count in the endpoint's `active`, and its
/// count in the tracker that drain waits on.
pub(crate) struct Held {
    _permit: OwnedSemaphorePermit,
    active: ActiveGuard,
    _tracked: tokio_util::task::task_tracker::TaskTrackerToken,
}

impl Held {
    /// Counts the connection in its endpoint's `waiting` while the guard lives.
    pub(crate) fn waiting(&self) -> WaitingGuard {
        let stats = Arc::clone(&self.active.0);
        stats.waiting.fetch_add(1, Ordering::Relaxed);
        WaitingGuard(stats)
    }
}

pub(crate) struct WaitingGuard(Arc<EndpointStats>);

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

struct ActiveGuard(Arc<EndpointStats>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn handle(
    stream: Stream,
    info: ConnInfo,
    state: Arc<EndpointState>,
    held: Held,
    shutdown: CancellationToken,
) {
    // boxed: the PROXY header read, the TLS peek and handshake live only while they
    // run, not in every connection's task for its whole life
    let stats = &held.active.0;
    let Some((stream, info, starttls)) =
        crate::boxed(|| prelude(stream, info, &state, stats)).await
    else {
        return;
    };
    let conn = Connection {
        stream,
        info,
        shutdown,
        starttls,
    };
    let served = Arc::clone(&state.spec.service).serve(conn);
    drop(state);
    crate::park::serve(served, held).await;
}

/// What comes before the service: the PROXY protocol header, the TLS handshake (or the
/// module's word for plaintext on a TLS port). `None`: the connection ends here.
async fn prelude(
    mut stream: Stream,
    mut info: ConnInfo,
    state: &EndpointState,
    stats: &EndpointStats,
) -> Option<(Stream, ConnInfo, Option<TlsAcceptor>)> {
    let spec = &state.spec;
    let deadline = spec.handshake_timeout;
    if spec.proxy_protocol {
        match tokio::time::timeout(deadline, proxy_protocol::read_header(&mut stream)).await {
            Ok(Ok(Some((src, dst)))) => {
                info.peer = Some(src);
                info.local = Some(dst);
                info.proxied = true;
            }
            Ok(Ok(None)) => info.proxied = true,
            Ok(Err(e)) => {
                stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                tracing::info!(conn = info.id, peer = %crate::OrDash(info.peer), error = %e, "connection closed");
                return None;
            }
            Err(_) => {
                stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                tracing::info!(conn = info.id, peer = %crate::OrDash(info.peer), "PROXY protocol header timed out");
                return None;
            }
        }
    }
    let mut starttls = None;
    match &spec.tls {
        TlsMode::Off => {}
        TlsMode::StartTls(a) => starttls = Some(a.clone()),
        TlsMode::Implicit(acceptor) => {
            // A TLS client speaks first with a handshake record (0x16); anything else
            // is plaintext on a TLS port: the module may have a word for it.
            if let (Stream::Tcp(tcp), Some(answer)) = (&stream, spec.service.plain_on_tls()) {
                let mut first = [0u8; 1];
                let peeked = tokio::time::timeout(deadline, tcp.peek(&mut first)).await;
                if matches!(peeked, Ok(Ok(1))) && first[0] != 0x16 {
                    stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(conn = info.id, peer = %crate::OrDash(info.peer),
                        "plaintext sent to a TLS port: answered and closed");
                    let _ = tokio::time::timeout(deadline, async {
                        use tokio::io::AsyncWriteExt;
                        stream.write_all(answer).await?;
                        stream.shutdown().await
                    })
                    .await;
                    return None;
                }
            }
            // boxed: the handshake's state (rustls's buffers) lives only while it runs,
            // not in every connection's task for its whole life
            match tokio::time::timeout(deadline, crate::boxed(|| acceptor.accept(stream))).await {
                Ok(Ok(tls)) => {
                    info.tls = Some(tls::info_of(&tls));
                    if info.tls.as_ref().and_then(|t| t.alpn.as_deref()) == Some(tls::ACME_TLS_ALPN)
                    {
                        // an ACME CA validating TLS-ALPN-01: the handshake was the answer
                        return None;
                    }
                    stream = Stream::Tls(Box::new(tls));
                }
                Ok(Err(e)) => {
                    stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(conn = info.id, peer = %crate::OrDash(info.peer), error = %e, "TLS handshake failed");
                    return None;
                }
                Err(_) => {
                    stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(conn = info.id, peer = %crate::OrDash(info.peer), "TLS handshake timed out");
                    return None;
                }
            }
        }
    }
    Some((stream, info, starttls))
}
