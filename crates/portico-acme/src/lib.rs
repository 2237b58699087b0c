//! Automatic certificates: ACME (RFC 8555) orders with the HTTP-01 challenge, kept on
//! disk and renewed in the background.
//!
//! For each `[listeners.tls] acme` block the process serves, at start, the certificate
//! stored for its domains — or, before there is one, a self-signed placeholder (so TLS
//! clients get a handshake and a certificate error rather than a refused connection,
//! and the HTTP-01 challenge can be answered meanwhile). [`Manager`] runs one task per
//! block: it orders a certificate when none is stored or the stored one expires within
//! `renew_before`, answers the CA's HTTP-01 requests through [`answer_http01`] (the
//! HTTP module asks it for every `/.well-known/acme-challenge/` request on any
//! listener), stores the result (`STORAGE/DOMAIN/cert.pem`, `key.pem` at 0600; the
//! account in `STORAGE/account.json` at 0600) and then asks the process to reload, so
//! the new certificate is served to new connections. Failures are retried with backoff
//! (10 s, doubling to 1 h) and logged; [`status`] gives /status each certificate's
//! expiry and last error.
//!
//! The ACME protocol itself is the instant-acme crate's (async, tokio + rustls, ring).
//!
//! [`ocsp`] fetches the OCSP responses of `ocsp = "fetch"` certificates.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use portico_config::{AcmeConfig, CertFiles};

pub mod ocsp;

/// Pending HTTP-01 answers: token → key authorization.
fn challenges() -> &'static Mutex<HashMap<String, String>> {
    static C: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    C.get_or_init(Default::default)
}

/// The answer to `GET /.well-known/acme-challenge/TOKEN`, while an order waits for it.
pub fn answer_http01(path: &str) -> Option<String> {
    let token = path.strip_prefix("/.well-known/acme-challenge/")?;
    challenges()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(token)
        .cloned()
}

/// What /status shows of one ACME certificate.
#[derive(Debug, Clone, Default)]
pub struct CertStatus {
    pub domains: Vec<String>,
    /// Seconds since the epoch; None while only the placeholder is served.
    pub not_after: Option<u64>,
    pub renewals: u64,
    pub last_error: Option<String>,
}

fn statuses() -> &'static Mutex<HashMap<Vec<String>, CertStatus>> {
    static S: OnceLock<Mutex<HashMap<Vec<String>, CertStatus>>> = OnceLock::new();
    S.get_or_init(Default::default)
}

/// Every ACME certificate's state, for /status and /metrics.
pub fn status() -> Vec<CertStatus> {
    let mut v: Vec<CertStatus> = statuses()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .cloned()
        .collect();
    v.sort_by(|a, b| a.domains.cmp(&b.domains));
    v
}

fn update_status(domains: &[String], f: impl FnOnce(&mut CertStatus)) {
    let mut all = statuses().lock().unwrap_or_else(|p| p.into_inner());
    let s = all.entry(domains.to_vec()).or_insert_with(|| CertStatus {
        domains: domains.to_vec(),
        ..Default::default()
    });
    f(s);
}

fn dir_of(cfg: &AcmeConfig) -> PathBuf {
    cfg.storage
        .join(cfg.domains.first().map_or("default", String::as_str))
}

/// Writes a secret file (0600) whole or not at all.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    portico_core::files::write_atomically(path, data, 0o600)
}

/// When the first certificate of a PEM chain expires (seconds since the epoch).
fn not_after(pem: &[u8]) -> Option<u64> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::pem_slice_iter(pem)
        .next()?
        .ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    u64::try_from(cert.validity().not_after.timestamp()).ok()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

static CHECK_ONLY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `portico check`: [`current_files`] leaves the storage alone from now on.
pub fn check_only() {
    CHECK_ONLY.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The files to serve now: the stored certificate, else a self-signed placeholder for
/// the domains (made once and kept beside it). Under [`check_only`] nothing is written
/// to the storage: a missing placeholder is made in the temp directory.
pub fn current_files(cfg: &AcmeConfig) -> Result<CertFiles, String> {
    let write = !CHECK_ONLY.load(std::sync::atomic::Ordering::Relaxed);
    let dir = dir_of(cfg);
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.is_file() && key.is_file() {
        if let Ok(pem) = std::fs::read(&cert) {
            update_status(&cfg.domains, |s| s.not_after = not_after(&pem));
        }
        return Ok(CertFiles {
            cert,
            key,
            ocsp: None,
        });
    }
    let dir = if write {
        dir
    } else {
        std::env::temp_dir().join(format!("portico-check-{}", std::process::id()))
    };
    let (pcert, pkey) = (dir.join("placeholder.pem"), dir.join("placeholder.key"));
    if !(pcert.is_file() && pkey.is_file()) {
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("acme storage {}: {e}", dir.display()))?;
        let made = rcgen::generate_simple_self_signed(cfg.domains.clone())
            .map_err(|e| format!("cannot make a placeholder certificate: {e}"))?;
        write_private(&pkey, made.signing_key.serialize_pem().as_bytes())
            .and_then(|_| std::fs::write(&pcert, made.cert.pem()))
            .map_err(|e| format!("acme storage {}: {e}", dir.display()))?;
    }
    update_status(&cfg.domains, |_| {});
    Ok(CertFiles {
        cert: pcert,
        key: pkey,
        ocsp: None,
    })
}

/// Runs the order and renewal tasks, one per ACME block, across reloads: a block seen
/// again keeps its task, a changed or new one gets a new task, a removed one's stops.
#[derive(Clone)]
pub struct Manager {
    running: Arc<Mutex<Vec<(AcmeConfig, tokio::task::AbortHandle)>>>,
    /// Called after a new certificate is stored (the process reloads).
    installed: Arc<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Manager")
    }
}

impl Manager {
    pub fn new(installed: impl Fn() + Send + Sync + 'static) -> Self {
        Self {
            running: Arc::default(),
            installed: Arc::new(installed),
        }
    }

    /// Makes the running tasks match `blocks` (call within a tokio runtime).
    pub fn ensure(&self, blocks: &[AcmeConfig]) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.retain(|(cfg, task)| {
            let keep = blocks.contains(cfg);
            if !keep {
                task.abort();
            }
            keep
        });
        for cfg in blocks {
            if !running.iter().any(|(c, _)| c == cfg) {
                let task = tokio::spawn(keep_certified(cfg.clone(), Arc::clone(&self.installed)));
                running.push((cfg.clone(), task.abort_handle()));
            }
        }
    }
}

/// Orders when needed, sleeps until the next look; backs off after failures.
async fn keep_certified(cfg: AcmeConfig, installed: Arc<dyn Fn() + Send + Sync>) {
    let mut backoff = Duration::from_secs(10);
    loop {
        let stored = std::fs::read(dir_of(&cfg).join("cert.pem")).ok();
        let expires = stored.as_deref().and_then(not_after);
        let due = expires.is_none_or(|t| t <= now_secs() + cfg.renew_before.as_secs());
        if !due {
            tokio::time::sleep(cfg.check_every).await;
            continue;
        }
        tracing::info!(domains = ?cfg.domains, renewal = expires.is_some(), "acme: ordering a certificate");
        match order(&cfg).await {
            Ok(expiry) => {
                backoff = Duration::from_secs(10);
                update_status(&cfg.domains, |s| {
                    s.not_after = expiry;
                    s.renewals += 1;
                    s.last_error = None;
                });
                tracing::info!(domains = ?cfg.domains, not_after = expiry, "acme: certificate stored; reloading to serve it");
                installed();
                tokio::time::sleep(cfg.check_every).await;
            }
            Err(e) => {
                update_status(&cfg.domains, |s| s.last_error = Some(e.clone()));
                tracing::warn!(domains = ?cfg.domains, error = %e, retry_in = ?backoff, "acme: order failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(3600));
            }
        }
    }
}

async fn account(cfg: &AcmeConfig) -> Result<Account, String> {
    let builder = || match &cfg.directory_ca {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    };
    let path = cfg.storage.join("account.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(creds) = serde_json::from_str::<AccountCredentials>(&text) {
            return builder()
                .map_err(|e| e.to_string())?
                .from_credentials(creds)
                .await
                .map_err(|e| format!("account: {e}"));
        }
    }
    let contact: Vec<String> = cfg.email.iter().map(|e| format!("mailto:{e}")).collect();
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, creds) = builder()
        .map_err(|e| e.to_string())?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            cfg.directory.clone(),
            None,
        )
        .await
        .map_err(|e| format!("new account at {}: {e}", cfg.directory))?;
    std::fs::create_dir_all(&cfg.storage).map_err(|e| e.to_string())?;
    let json = serde_json::to_vec(&creds).map_err(|e| e.to_string())?;
    write_private(&path, &json).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(account)
}

/// One order: HTTP-01 for every domain, finalize, store. The new expiry.
async fn order(cfg: &AcmeConfig) -> Result<Option<u64>, String> {
    let account = account(cfg).await?;
    let ids: Vec<Identifier> = cfg.domains.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(|e| format!("new order: {e}"))?;
    let mut tokens = Vec::new();
    let mut alpn_names = Vec::new();
    let kind = if cfg.tls_alpn {
        ChallengeType::TlsAlpn01
    } else {
        ChallengeType::Http01
    };
    let result = async {
        let mut auths = order.authorizations();
        while let Some(a) = auths.next().await {
            let mut authz = a.map_err(|e| format!("authorization: {e}"))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("authorization is {other:?}")),
            }
            let mut ch = authz
                .challenge(kind.clone())
                .ok_or_else(|| format!("the CA offers no {kind:?} challenge"))?;
            let key_auth = ch.key_authorization();
            if cfg.tls_alpn {
                // RFC 8737: a self-signed certificate for the name carrying the key
                // authorization's digest, served to `acme-tls/1` handshakes
                let name = ch.identifier().to_string();
                let mut params = rcgen::CertificateParams::new(vec![name.clone()])
                    .map_err(|e| format!("challenge certificate: {e}"))?;
                params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(
                    key_auth.digest().as_ref(),
                )];
                let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
                let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
                portico_core::tls::set_alpn_challenge(&name, &cert.pem(), &key.serialize_pem())
                    .map_err(|e| e.to_string())?;
                alpn_names.push(name);
            } else {
                challenges()
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(ch.token.clone(), key_auth.as_str().to_string());
                tokens.push(ch.token.clone());
            }
            ch.set_ready()
                .await
                .map_err(|e| format!("challenge: {e}"))?;
        }
        let policy = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .timeout(Duration::from_secs(60));
        let status = order
            .poll_ready(&policy)
            .await
            .map_err(|e| format!("order: {e}"))?;
        if status != OrderStatus::Ready {
            return Err(format!("order is {status:?}, not ready"));
        }
        let key = order
            .finalize()
            .await
            .map_err(|e| format!("finalize: {e}"))?;
        let chain = order
            .poll_certificate(&policy)
            .await
            .map_err(|e| format!("certificate: {e}"))?;
        Ok((key, chain))
    }
    .await;
    {
        let mut pending = challenges().lock().unwrap_or_else(|p| p.into_inner());
        for t in &tokens {
            pending.remove(t);
        }
    }
    for name in &alpn_names {
        portico_core::tls::clear_alpn_challenge(name);
    }
    let (key, chain) = result?;
    let dir = dir_of(cfg);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    write_private(&dir.join("key.pem"), key.as_bytes())
        .and_then(|_| write_private(&dir.join("cert.pem"), chain.as_bytes()))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(not_after(chain.as_bytes()))
}
