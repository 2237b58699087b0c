//! TLS termination with rustls (ring provider): certificates chosen by SNI, ALPN.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::names::server_name_matches;

/// Errors building a TLS acceptor; each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read certificate chain: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("{path}: cannot read private key: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("{path}: certificate and key do not fit together: {reason}")]
    Mismatch { path: PathBuf, reason: String },
    #[error("tls setup: {0}")]
    Setup(String),
}

/// One certificate and the server names it answers for (empty: default only).
#[derive(Debug, Clone)]
pub struct CertSpec {
    pub names: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What the client negotiated.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    pub sni: Option<String>,
    pub alpn: Option<Vec<u8>>,
    pub version: Option<String>,
    pub cipher: Option<String>,
}

fn load_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::Cert {
            path: cert.into(),
            reason: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert {
            path: cert.into(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Cert {
            path: cert.into(),
            reason: "no CERTIFICATE block found".into(),
        });
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.into(),
        reason: e.to_string(),
    })?;
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| TlsError::Key {
            path: key.into(),
            reason: e.to_string(),
        })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| TlsError::Mismatch {
        path: key.into(),
        reason: e.to_string(),
    })?;
    Ok(Arc::new(ck))
}

#[derive(Debug)]
struct SniResolver {
    /// In config order; the first is the default for unknown or missing SNI.
    certs: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(sni) = hello.server_name() {
            // Exact names first, then wildcards, as nginx does.
            for exact in [true, false] {
                for (names, key) in &self.certs {
                    if names
                        .iter()
                        .any(|n| n.starts_with('*') != exact && server_name_matches(n, sni))
                    {
                        return Some(Arc::clone(key));
                    }
                }
            }
        }
        self.certs.first().map(|(_, k)| Arc::clone(k))
    }
}

/// Builds an acceptor serving `certs` by SNI and offering `alpn`.
pub fn build_acceptor(certs: &[CertSpec], alpn: &[String]) -> Result<TlsAcceptor, TlsError> {
    let mut resolved = Vec::new();
    for c in certs {
        resolved.push((c.names.clone(), load_key(&c.cert, &c.key)?));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { certs: resolved }));
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Builds a client config for connections to backends, verifying their certificates
/// against the PEM bundle `ca_file`.
pub fn build_connector(ca_file: &Path) -> Result<tokio_rustls::TlsConnector, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| TlsError::Setup(format!("{}: {e}", ca_file.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Setup(format!("{}: {e}", ca_file.display())))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsError::Setup(format!(
            "{}: no usable CA certificate",
            ca_file.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

pub(crate) fn info_of<IO>(s: &tokio_rustls::server::TlsStream<IO>) -> TlsInfo {
    let (_, conn) = s.get_ref();
    TlsInfo {
        sni: conn.server_name().map(str::to_string),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        version: conn.protocol_version().map(|v| format!("{v:?}")),
        cipher: conn
            .negotiated_cipher_suite()
            .map(|c| format!("{:?}", c.suite())),
    }
}
