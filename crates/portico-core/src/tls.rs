//! TLS termination with rustls (ring provider): certificates chosen by SNI, ALPN.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use portico_config::Ocsp;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::names::server_name_matches;
use crate::ocsp::ocsp_request_for;

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

/// The certificates for a set of server names (empty: default only): one, or several
/// for the same names (RSA and ECDSA), chosen by what the client can verify.
#[derive(Debug, Clone)]
pub struct CertSpec {
    pub names: Vec<String>,
    pub files: Vec<portico_config::CertFiles>,
}

/// The handshake policy of an endpoint.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    pub tls13_only: bool,
    pub client_auth: Option<portico_config::ClientAuth>,
    /// Offer `acme-tls/1` (an ACME CA validating TLS-ALPN-01 challenges here).
    pub acme_alpn: bool,
}

/// The ALPN protocol of RFC 8737's TLS-ALPN-01 validation handshakes.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// TLS-ALPN-01 challenge certificates by server name, while an ACME order waits for
/// the CA to look (the resolver serves one to a handshake offering `acme-tls/1`).
fn alpn_challenges(
) -> &'static std::sync::Mutex<std::collections::HashMap<String, Arc<CertifiedKey>>> {
    static C: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, Arc<CertifiedKey>>>,
    > = std::sync::OnceLock::new();
    C.get_or_init(Default::default)
}

/// Serves `cert_pem`/`key_pem` (a TLS-ALPN-01 challenge certificate) to `acme-tls/1`
/// handshakes for `name`, until [`clear_alpn_challenge`].
pub fn set_alpn_challenge(name: &str, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
    let bad = |e: &dyn std::fmt::Display| TlsError::Setup(format!("challenge certificate: {e}"));
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| bad(&e))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| bad(&e))?;
    alpn_challenges()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            name.to_ascii_lowercase(),
            Arc::new(CertifiedKey::new(chain, signing)),
        );
    Ok(())
}

pub fn clear_alpn_challenge(name: &str) {
    alpn_challenges()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&name.to_ascii_lowercase());
}

/// What the client negotiated.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    pub sni: Option<String>,
    pub alpn: Option<Vec<u8>>,
    /// `TLSv1.2`, `TLSv1.3` (nginx's `$ssl_protocol`).
    pub version: Option<String>,
    /// The IANA name of the cipher suite (`$ssl_cipher`).
    pub cipher: Option<String>,
    /// The client's certificate, verified against the listener's `client_auth.ca`.
    pub client: Option<Arc<ClientCert>>,
}

/// A verified client certificate, as nginx's `$ssl_client_*` variables give it.
#[derive(Debug, Clone, Default)]
pub struct ClientCert {
    /// RFC 2253 (`CN=alice,O=Example`).
    pub subject: String,
    pub issuer: String,
    /// Hex, uppercase.
    pub serial: String,
    /// SHA-1 of the DER, hex, lowercase.
    pub fingerprint: String,
    pub pem: String,
}

fn load_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = pem_certs(cert)?;
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
    Ok(ck)
}

/// A certificate as served: swapped whole when a fetched OCSP response arrives.
type KeySlot = Arc<ArcSwap<CertifiedKey>>;

/// OCSP responses fetched from responders (`ocsp = "fetch"`), by the leaf
/// certificate's DER, and the served slots of those certificates (weak: a reload's
/// new acceptor registers its own, the old ones die with their acceptor).
#[derive(Default)]
struct Fetched {
    staples: std::collections::HashMap<Vec<u8>, Vec<u8>>,
    slots: Vec<(Vec<u8>, std::sync::Weak<ArcSwap<CertifiedKey>>)>,
}

fn fetched() -> &'static std::sync::Mutex<Fetched> {
    static F: std::sync::OnceLock<std::sync::Mutex<Fetched>> = std::sync::OnceLock::new();
    F.get_or_init(Default::default)
}

/// Staples `ocsp` (a verified DER OCSP response; `None`: nothing) to every served
/// certificate whose leaf is `leaf`, now and in acceptors built later.
pub fn set_fetched_staple(leaf: &[u8], ocsp: Option<Vec<u8>>) {
    let mut f = fetched().lock().unwrap_or_else(|p| p.into_inner());
    f.slots.retain(|(_, slot)| slot.strong_count() > 0);
    for (l, slot) in &f.slots {
        if let (true, Some(slot)) = (l == leaf, slot.upgrade()) {
            let mut key = CertifiedKey::clone(&slot.load());
            key.ocsp.clone_from(&ocsp);
            slot.store(Arc::new(key));
        }
    }
    match ocsp {
        Some(der) => f.staples.insert(leaf.to_vec(), der),
        None => f.staples.remove(leaf),
    };
}

/// A slot for `key` whose staple is fetched: it starts with the response fetched so
/// far, and [`set_fetched_staple`] updates it.
fn fetched_slot(mut key: CertifiedKey) -> KeySlot {
    let mut f = fetched().lock().unwrap_or_else(|p| p.into_inner());
    let leaf = key.cert.first().map(|c| c.to_vec()).unwrap_or_default();
    key.ocsp = f.staples.get(&leaf).cloned();
    let slot = Arc::new(ArcSwap::from_pointee(key));
    f.slots.push((leaf, Arc::downgrade(&slot)));
    slot
}

#[derive(Debug)]
struct SniResolver {
    /// In config order; the first is the default for unknown or missing SNI. Each
    /// name set's keys: ECDSA and EdDSA before RSA.
    certs: Vec<(Vec<String>, Vec<KeySlot>)>,
}

impl SniResolver {
    fn names_for(&self, sni: Option<&str>) -> Option<&[KeySlot]> {
        if let Some(sni) = sni {
            // Exact names first, then wildcards, as nginx does.
            for exact in [true, false] {
                for (names, keys) in &self.certs {
                    if names
                        .iter()
                        .any(|n| n.starts_with('*') != exact && server_name_matches(n, sni))
                    {
                        return Some(keys);
                    }
                }
            }
        }
        self.certs.first().map(|(_, k)| k.as_slice())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = hello
            .alpn()
            .is_some_and(|mut protos| protos.any(|p| p == ACME_TLS_ALPN));
        if acme {
            // a validation handshake gets the challenge certificate or nothing
            let name = hello.server_name()?.to_ascii_lowercase();
            return alpn_challenges()
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&name)
                .cloned();
        }
        let keys = self.names_for(hello.server_name())?;
        // the first the client can verify (an RSA-only client gets the RSA one)
        let offered = hello.signature_schemes();
        keys.iter()
            .map(|k| k.load_full())
            .find(|k| k.key.choose_scheme(offered).is_some())
            .or_else(|| keys.first().map(|k| k.load_full()))
    }
}

/// Reads the certificates of a PEM bundle.
pub(crate) fn pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |e: &dyn std::fmt::Display| TlsError::Cert {
        path: path.into(),
        reason: e.to_string(),
    };
    CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))
}

/// Builds an acceptor serving `certs` by SNI (and by the client's signature algorithms
/// among a name's certificates), offering `alpn`, under `opts`. OCSP responses are read
/// here: a reload re-reads them.
pub fn build_acceptor(
    certs: &[CertSpec],
    alpn: &[String],
    opts: &TlsOptions,
) -> Result<TlsAcceptor, TlsError> {
    let mut resolved = Vec::new();
    for c in certs {
        let mut keys = Vec::new();
        for f in &c.files {
            let mut key = load_key(&f.cert, &f.key)?;
            let slot = match &f.ocsp {
                None => Arc::new(ArcSwap::from_pointee(key)),
                Some(Ocsp::File(ocsp)) => {
                    let der = std::fs::read(ocsp).map_err(|e| TlsError::Cert {
                        path: ocsp.clone(),
                        reason: format!("cannot read the OCSP response: {e}"),
                    })?;
                    // an empty file (a responder that had nothing yet) staples nothing
                    key.ocsp = Some(der).filter(|d| !d.is_empty());
                    Arc::new(ArcSwap::from_pointee(key))
                }
                Some(Ocsp::Fetch) => {
                    ocsp_request_for(&f.cert)?;
                    fetched_slot(key)
                }
            };
            keys.push(slot);
        }
        keys.sort_by_key(|k| k.load().key.algorithm() == rustls::SignatureAlgorithm::RSA);
        resolved.push((c.names.clone(), keys));
    }
    let provider = Arc::new(server_provider());
    let versions: &[&'static rustls::SupportedProtocolVersion] = if opts.tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS12, &rustls::version::TLS13]
    };
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let builder = match &opts.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in pem_certs(&auth.ca)? {
                roots.add(c).map_err(|e| TlsError::Cert {
                    path: auth.ca.clone(),
                    reason: e.to_string(),
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = if auth.required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier.build().map_err(|e| TlsError::Cert {
                path: auth.ca.clone(),
                reason: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(SniResolver { certs: resolved }));
    config.ignore_client_order = true;
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    if opts.acme_alpn {
        // last: no other client offers it
        config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    // stateless resumption: ticket keys rotated every 6 hours (the ring ticketer)
    config.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError::Setup(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// ring with the server's cipher suite preference: AES-128-GCM first. OpenSSL clients
/// list AES-256-GCM-SHA384 first, and its HKDF then runs on SHA-384, which ring has no
/// hardware path for (SHA-256 uses the CPU's SHA extensions): a resumed TLS 1.3
/// handshake is mostly HKDF and X25519. AES-128-GCM is what Go, Caddy and Cloudflare
/// prefer too; every suite offered stays an AEAD with forward secrecy.
fn server_provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::ring::cipher_suite as cs;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    p
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
        version: conn.protocol_version().map(|v| match v {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
            other => format!("{other:?}"),
        }),
        cipher: conn
            .negotiated_cipher_suite()
            .and_then(|c| c.suite().as_str().map(str::to_string)),
        client: conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|der| Arc::new(client_cert(der))),
    }
}

/// The facts nginx's `$ssl_client_*` give of a (verified) client certificate.
fn client_cert(der: &CertificateDer<'_>) -> ClientCert {
    let fingerprint = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let pem = {
        let b64 = crate::base64::encode(der);
        let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
        out
    };
    let mut c = ClientCert {
        fingerprint,
        pem,
        ..ClientCert::default()
    };
    if let Ok((_, x)) = x509_parser::parse_x509_certificate(der) {
        c.subject = rfc2253(x.subject());
        c.issuer = rfc2253(x.issuer());
        // as OpenSSL prints it: without the sign byte DER may put first
        let raw = x.raw_serial();
        let start = raw
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(raw.len().saturating_sub(1));
        c.serial = raw[start..].iter().map(|b| format!("{b:02X}")).collect();
    }
    c
}

/// A name as RFC 2253 writes it (and nginx's `$ssl_client_s_dn`): the most specific
/// part first, `,` between parts, `+` within one, special characters escaped.
fn rfc2253(name: &x509_parser::x509::X509Name<'_>) -> String {
    let mut rdns: Vec<String> = name
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|atv| {
                    let oid = atv.attr_type().to_id_string();
                    // OpenSSL's short names, as nginx prints them
                    let key = match oid.as_str() {
                        "2.5.4.3" => "CN",
                        "2.5.4.6" => "C",
                        "2.5.4.7" => "L",
                        "2.5.4.8" => "ST",
                        "2.5.4.9" => "street",
                        "2.5.4.10" => "O",
                        "2.5.4.11" => "OU",
                        "2.5.4.5" => "serialNumber",
                        "0.9.2342.19200300.100.1.25" => "DC",
                        "0.9.2342.19200300.100.1.1" => "UID",
                        "1.2.840.113549.1.9.1" => "emailAddress",
                        _ => oid.as_str(),
                    }
                    .to_string();
                    let value = atv.as_str().map(str::to_string).unwrap_or_default();
                    let mut escaped = String::with_capacity(value.len());
                    for (i, ch) in value.chars().enumerate() {
                        let special = matches!(ch, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
                            || (i == 0 && matches!(ch, '#' | ' '))
                            || (i + 1 == value.chars().count() && ch == ' ');
                        if special {
                            escaped.push('\\');
                        }
                        escaped.push(ch);
                    }
                    format!("{key}={escaped}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.reverse();
    rdns.join(",")
}
