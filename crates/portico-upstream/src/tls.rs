//! TLS to an upstream's servers (`tls = { … }` on the upstream): one rustls client
//! config per config generation, shared by the HTTP proxy's connections and the active
//! health check.

use std::io;
use std::sync::Arc;

use portico_config::{PeerAddr, UpstreamTls};
use rustls_pki_types::ServerName;
use tokio_rustls::client::TlsStream;

/// An upstream connection over TLS.
pub type PeerTlsStream = TlsStream<PeerStream>;

use crate::PeerStream;

/// Connects over TLS as an upstream's `tls` says.
pub struct TlsConnector {
    connector: tokio_rustls::TlsConnector,
    /// With `h2`: the same config offering only http/1.1 (WebSocket upgrades).
    h1_only: Option<tokio_rustls::TlsConnector>,
    /// `sni`: the name for every server.
    sni: Option<ServerName<'static>>,
    /// h2 is offered by ALPN.
    pub h2: bool,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector")
            .field("sni", &self.sni)
            .field("h2", &self.h2)
            .finish_non_exhaustive()
    }
}

impl TlsConnector {
    /// Reads the files `cfg` names (the CA bundle or the system roots, a client
    /// certificate); errors name the file.
    pub fn new(cfg: &UpstreamTls) -> Result<Self, String> {
        let build = |alpn: &[&[u8]]| {
            let spec = portico_core::tls::ClientTlsSpec {
                ca: cfg.ca.as_deref(),
                verify: cfg.verify,
                client: cfg.client.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
                alpn,
            };
            portico_core::tls::client_config(&spec)
                .map(tokio_rustls::TlsConnector::from)
                .map_err(|e| e.to_string())
        };
        let h1 = build(&[b"http/1.1"])?;
        let (connector, h1_only) = if cfg.h2 {
            (build(&[b"h2", b"http/1.1"])?, Some(h1))
        } else {
            (h1, None)
        };
        let sni = match &cfg.sni {
            Some(n) => {
                Some(ServerName::try_from(n.clone()).map_err(|e| format!("sni {n:?}: {e}"))?)
            }
            None => None,
        };
        Ok(Self {
            connector,
            h1_only,
            sni,
            h2: cfg.h2,
        })
    }

    /// The TLS handshake on `stream` to `addr`: the name verified (and sent as SNI,
    /// unless it is an address) is `sni`, else the server's host name or IP address.
    /// h2 is offered when the upstream has `h2` and `h2_ok`.
    pub async fn connect(
        &self,
        stream: PeerStream,
        addr: &PeerAddr,
        h2_ok: bool,
    ) -> io::Result<TlsStream<PeerStream>> {
        let name = match (&self.sni, addr) {
            (Some(n), _) => n.clone(),
            (None, PeerAddr::Host { host, .. }) => ServerName::try_from(host.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            (None, PeerAddr::Tcp(a)) => ServerName::IpAddress(a.ip().into()),
            (None, PeerAddr::Unix(_)) => ServerName::try_from("localhost")
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
        };
        let connector = match (&self.h1_only, h2_ok) {
            (Some(h1), false) => h1,
            _ => &self.connector,
        };
        connector.connect(name, stream).await
    }
}

/// Whether the server took h2 in the handshake.
pub fn speaks_h2(s: &TlsStream<PeerStream>) -> bool {
    s.get_ref().1.alpn_protocol() == Some(b"h2")
}

/// The connector of an upstream with `tls`, shared by its users.
pub fn connector_for(cfg: Option<&UpstreamTls>) -> Result<Option<Arc<TlsConnector>>, String> {
    cfg.map(|t| TlsConnector::new(t).map(Arc::new)).transpose()
}
