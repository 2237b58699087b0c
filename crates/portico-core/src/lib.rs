//! Portico's protocol-agnostic listener core.
//!
//! The core binds addresses (TCP, IPv4/IPv6, Unix sockets), accepts connections under a
//! per-endpoint limit, reads an optional PROXY protocol header, terminates TLS (or leaves
//! it for a later STARTTLS), and hands each connection to a [`Service`]: a protocol
//! module. It knows no protocol. Reload ([`ListenerSet::apply`]) swaps the service and TLS
//! settings of running endpoints in place, binds new ones and closes removed ones, without
//! touching open connections; [`ListenerSet::shutdown`] drains.
//!
//! Where to look instead: protocol behaviour is in the module crates (`portico-http`),
//! upstream choice in `portico-upstream`, config parsing in `portico-config`.

pub mod base64;
pub mod counters;
pub mod files;
mod handover;
pub mod histogram;
pub mod idle;
mod listener;
mod names;
pub mod ocsp;
mod park;
pub mod proxy_protocol;
pub mod relay;
mod stream;
pub mod tls;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use portico_config::ListenAddr;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use handover::Inherited;
pub use listener::{worker_id, EndpointSpec, EndpointStats, ListenerSet, TlsMode};

/// An optional value in a log line: the value, or `-` — never Rust's `Some(…)` /
/// `None` in what an operator reads.
pub struct OrDash<T>(pub Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for OrDash<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}
pub use names::server_name_matches;
pub use stream::{FileChunk, FileSend, Stream, COPY_CHUNK};
pub use tls::{CertSpec, ClientCert, TlsInfo};

/// The future a service returns for one connection.
pub type BoxFuture = Pin<Box<dyn Future<Output = Served> + Send + 'static>>;

/// How a connection's service future ends.
pub enum Served {
    /// The connection is over (closed, or handed on to a task of the module's).
    Done,
    /// The connection is idle, waiting for its client: the core parks the socket — no
    /// task, no registration with the runtime — until the client sends something (or
    /// hangs up) and then runs `resume` in a new task; at `until` it closes the socket;
    /// at shutdown it resumes at once, so the module drains the connection as any
    /// other. Only plain sockets park; a TLS stream is resumed at once.
    Idle(Idle),
}

/// An idle connection handed back to the core (see [`Served::Idle`]).
pub struct Idle {
    pub stream: Stream,
    pub until: tokio::time::Instant,
    pub resume: Resume,
}

/// What goes on with a parked connection once its client speaks.
pub type Resume = Box<dyn FnOnce(Stream) -> BoxFuture + Send>;

/// A future boxed where it is made: the box is allocated first and `make`'s future
/// written into it, so a state of kilobytes (an HTTP request pipeline's layers) is not
/// built on the stack and then copied into the box, as `Box::pin(make())` does.
#[inline(always)]
pub fn boxed<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

/// A service future for a connection that never parks: `f`, then [`Served::Done`].
pub fn done(f: impl Future<Output = ()> + Send + 'static) -> BoxFuture {
    crate::boxed(|| async move {
        f.await;
        Served::Done
    })
}

/// A protocol module: serves accepted connections.
///
/// Implementations must return once `conn.shutdown` is cancelled and their open work is
/// finished (or cut short), so that shutdown can drain.
pub trait Service: Send + Sync + 'static {
    fn serve(self: Arc<Self>, conn: Connection) -> BoxFuture;

    /// What to send a client that speaks plaintext to a TLS port before closing (nginx
    /// answers HTTP with 400 "The plain HTTP request was sent to HTTPS port"); `None`:
    /// close without a word.
    fn plain_on_tls(&self) -> Option<&'static [u8]> {
        None
    }
}

/// Facts about one accepted connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// A process-unique id, for logs.
    pub id: u64,
    /// The name of the listener (the first one configured on this address).
    pub listener: Arc<str>,
    /// The address this connection was accepted on.
    pub listen: ListenAddr,
    /// The client: from the PROXY header when there was one; `None` on Unix sockets.
    pub peer: Option<SocketAddr>,
    /// The local address: from the PROXY header when there was one.
    pub local: Option<SocketAddr>,
    /// Set once TLS is up (implicit TLS, or after STARTTLS).
    pub tls: Option<TlsInfo>,
    /// Whether the addresses came from a PROXY protocol header.
    pub proxied: bool,
}

/// An accepted connection, handed to a [`Service`].
pub struct Connection {
    pub stream: Stream,
    pub info: ConnInfo,
    /// Cancelled when the process shuts down: finish open work, then return.
    pub shutdown: CancellationToken,
    starttls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("info", &self.info)
            .field("starttls", &self.starttls.is_some())
            .finish()
    }
}

impl Connection {
    /// Whether this listener allows a STARTTLS upgrade now.
    pub fn can_start_tls(&self) -> bool {
        self.starttls.is_some() && !self.stream.is_tls()
    }

    /// Upgrades the plain stream to TLS (STARTTLS). The caller must discard anything it
    /// read ahead from the plain stream before this (CVE-2011-0411 class).
    pub async fn start_tls(self) -> io::Result<Connection> {
        let Some(acceptor) = self.starttls.clone().filter(|_| !self.stream.is_tls()) else {
            return Err(io::Error::other("STARTTLS is not enabled on this listener"));
        };
        let tls = acceptor.accept(self.stream).await?;
        let mut info = self.info;
        info.tls = Some(tls::info_of(&tls));
        Ok(Connection {
            stream: Stream::Tls(Box::new(tls)),
            info,
            shutdown: self.shutdown,
            starttls: None,
        })
    }
}

#[cfg(test)]
mod tests;
