//! The connection to a backend mail server: plain, or TLS (implicit, or after the
//! protocol's STARTTLS), verified against the configured CA bundle.

use std::pin::Pin;
use std::task::{Context, Poll};

use portico_upstream::PeerStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// TLS towards backends.
#[derive(Clone)]
pub struct BackendTls {
    pub mode: portico_config::BackendTlsMode,
    pub connector: tokio_rustls::TlsConnector,
    /// The name to verify (and send as SNI); `None`: the backend's IP address.
    pub name: Option<String>,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("mode", &self.mode)
            .field("name", &self.name)
            .finish()
    }
}

/// A backend connection.
pub enum BackendStream {
    Plain(PeerStream),
    Tls(Box<tokio_rustls::client::TlsStream<PeerStream>>),
    /// Only while an upgrade is under way (or after it failed).
    Gone,
}

impl BackendStream {
    /// TLS over the plain connection (implicit TLS, or after STARTTLS was accepted).
    pub async fn upgrade(&mut self, tls: &BackendTls) -> std::io::Result<()> {
        let BackendStream::Plain(plain) = std::mem::replace(self, BackendStream::Gone) else {
            return Err(std::io::Error::other("not a plain connection"));
        };
        let name = match (&tls.name, plain.peer_ip()) {
            (Some(n), _) => rustls_pki_types::ServerName::try_from(n.clone())
                .map_err(|e| std::io::Error::other(format!("backend_tls_name: {e}")))?,
            (None, Some(ip)) => rustls_pki_types::ServerName::IpAddress(ip.into()),
            (None, None) => {
                return Err(std::io::Error::other(
                    "TLS to a Unix-socket backend needs backend_tls_name",
                ))
            }
        };
        let stream = tls.connector.connect(name, plain).await?;
        *self = BackendStream::Tls(Box::new(stream));
        Ok(())
    }
}

fn gone() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "backend connection gone")
}

impl AsyncRead for BackendStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            BackendStream::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            BackendStream::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_flush(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            BackendStream::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            BackendStream::Gone => Poll::Ready(Ok(())),
        }
    }
}
