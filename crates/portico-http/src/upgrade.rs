//! The client's side of a protocol switch (WebSocket): the HTTP/1 engine's connection
//! after a 101, or hyper's h2 stream after an extended CONNECT (RFC 8441).

use http::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::h1;

/// A byte stream a tunnel runs over.
pub trait TunnelIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> TunnelIo for T {}

/// A connection the HTTP/1 engine serves (Sync: request bodies read from it are).
pub trait ConnIo: AsyncRead + AsyncWrite + Unpin + Send + Sync {
    /// Whether [`ConnIo::poll_send_file`] can send on this connection.
    fn can_sendfile(&self) -> bool {
        false
    }

    /// Sends a head and part of a file from the socket's side
    /// ([`portico_core::Stream::poll_send_file`]); `Unsupported` where the connection
    /// cannot.
    fn poll_send_file(
        &mut self,
        _cx: &mut std::task::Context<'_>,
        _c: &portico_core::FileChunk<'_>,
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Err(std::io::ErrorKind::Unsupported.into()))
    }

    /// Corks or uncorks the connection's socket ([`portico_core::Stream::set_cork`]); a
    /// no-op where there is no TCP socket.
    fn set_cork(&self, _on: bool) -> std::io::Result<()> {
        Ok(())
    }

    /// The client's socket, for the core to park while the connection is idle
    /// ([`portico_core::Served::Idle`]); `None` where there is none to park.
    fn into_stream(self: Box<Self>) -> Option<portico_core::Stream> {
        None
    }
}

// Upstream connections and in-process pipes (the engine's tests) send bytes only.
impl ConnIo for portico_upstream::PeerStream {}
impl ConnIo for portico_upstream::tls::PeerTlsStream {}
impl ConnIo for tokio::io::DuplexStream {}

pub enum ClientUpgrade {
    H1(tokio::sync::oneshot::Receiver<h1::Upgraded>),
    H2(hyper::upgrade::OnUpgrade),
}

impl ClientUpgrade {
    /// The switch `req` may make (call before the request moves on).
    pub fn of<B>(req: &mut Request<B>) -> Self {
        match req
            .extensions_mut()
            .remove::<h1::PendingUpgrade>()
            .and_then(|p| p.take())
        {
            Some(rx) => ClientUpgrade::H1(rx),
            None => ClientUpgrade::H2(hyper::upgrade::on(req)),
        }
    }

    /// The client's stream, once the answer switching protocols has gone out.
    pub async fn stream(self) -> Result<Box<dyn TunnelIo>, String> {
        match self {
            ClientUpgrade::H1(rx) => rx
                .await
                .map(|u| Box::new(u) as Box<dyn TunnelIo>)
                .map_err(|_| "the connection closed before the switch".to_string()),
            ClientUpgrade::H2(on) => on
                .await
                .map(|u| Box::new(TokioIo::new(u)) as Box<dyn TunnelIo>)
                .map_err(|e| e.to_string()),
        }
    }
}
