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

/// How Portico connects to a backend over TLS.
#[derive(Debug, Clone, Copy)]
pub struct ClientTlsSpec<'a> {
    /// The PEM bundle to verify the server against; `None`: the system's roots.
    pub ca: Option<&'a Path>,
    /// `false` accepts any certificate (the handshake's signatures are still checked).
    pub verify: bool,
    /// A client certificate chain and its key (mTLS).
    pub client: Option<(&'a Path, &'a Path)>,
    /// ALPN protocols offered, most preferred first.
    pub alpn: &'a [&'a [u8]],
}

/// Builds a client config for connections to backends, verifying their certificates
/// against the PEM bundle `ca_file`.
pub fn build_connector(ca_file: &Path) -> Result<tokio_rustls::TlsConnector, TlsError> {
    let config = client_config(&ClientTlsSpec {
        ca: Some(ca_file),
        verify: true,
        client: None,
        alpn: &[],
    })?;
    Ok(tokio_rustls::TlsConnector::from(config))
}

/// A rustls client config as `spec` says. Session resumption is rustls's default (an
/// in-memory cache), so pooled reconnects are cheap.
pub fn client_config(spec: &ClientTlsSpec<'_>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let builder = if spec.verify {
        builder.with_root_certificates(roots(spec.ca)?)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
    };
    let mut config = match spec.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let ck = load_key(cert, key)?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
                path: key.into(),
                reason: e.to_string(),
            })?;
            builder
                .with_client_auth_cert(ck.cert.clone(), key_der)
                .map_err(|e| TlsError::Mismatch {
                    path: key.into(),
                    reason: e.to_string(),
                })?
        }
    };
    config.alpn_protocols = spec.alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The roots a server certificate is verified against: `ca`, else the system's
/// (rustls-native-certs: /etc/ssl/certs on Debian, `SSL_CERT_FILE` if set).
fn roots(ca: Option<&Path>) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let (certs, from) = match ca {
        Some(ca_file) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca_file)
                .map_err(|e| TlsError::Setup(format!("{}: {e}", ca_file.display())))?
                .collect::<Result<_, _>>()
                .map_err(|e| TlsError::Setup(format!("{}: {e}", ca_file.display())))?;
            (certs, ca_file.display().to_string())
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            if let Some(e) = found.errors.first() {
                tracing::warn!(error = %e, "some system CA certificates could not be read");
            }
            (found.certs, "the system's CA certificates".to_string())
        }
    };
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsError::Setup(format!("{from}: no usable CA certificate")));
    }
    Ok(roots)
}

/// `verify = false`: any certificate is taken, but the handshake must still be signed
/// by its key (so the connection is at least encrypted to whoever holds it).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
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
