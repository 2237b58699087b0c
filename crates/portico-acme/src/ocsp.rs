//! `ocsp = "fetch"`: the OCSP response of a certificate fetched from the responder its
//! Authority Information Access names, verified (portico_core::ocsp), stapled to its
//! handshakes (portico_core::tls::set_fetched_staple, no reload) and fetched again
//! before it expires.
//!
//! One task per certificate (by file and content: a renewed certificate gets a task
//! of its own at the reload that serves it). A fetch is an HTTP/1.1 POST (RFC 6960
//! A.1) with a 10 s timeout and a 64 KiB answer limit. Refreshed halfway to the
//! response's nextUpdate, at least every hour (nginx's rhythm) and at most once a
//! minute; failures are retried after 2 s, doubling to 5 min, while the last good
//! response goes on being stapled until its nextUpdate passes.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use portico_core::ocsp::{CertStatus, OcspRequest, OcspStatus};

const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_ANSWER: usize = 64 * 1024;

/// One fetched certificate's state, for /status.
#[derive(Debug, Clone, Default)]
pub struct StapleStatus {
    pub cert: PathBuf,
    pub responder: String,
    /// `good`, `revoked`, `unknown`; None until a response was verified.
    pub status: Option<&'static str>,
    /// Unix seconds.
    pub next_update: Option<i64>,
    pub fetches: u64,
    pub last_error: Option<String>,
}

fn statuses() -> &'static Mutex<Vec<StapleStatus>> {
    static S: OnceLock<Mutex<Vec<StapleStatus>>> = OnceLock::new();
    S.get_or_init(Default::default)
}

/// Every fetched staple's state, by certificate file.
pub fn status() -> Vec<StapleStatus> {
    let mut v = statuses().lock().unwrap_or_else(|p| p.into_inner()).clone();
    v.sort_by(|a, b| a.cert.cmp(&b.cert));
    v
}

fn update_status(cert: &PathBuf, f: impl FnOnce(&mut StapleStatus)) {
    let mut all = statuses().lock().unwrap_or_else(|p| p.into_inner());
    match all.iter_mut().find(|s| &s.cert == cert) {
        Some(s) => f(s),
        None => {
            let mut s = StapleStatus {
                cert: cert.clone(),
                ..Default::default()
            };
            f(&mut s);
            all.push(s);
        }
    }
}

/// Keeps one fetching task per certificate that wants its staple fetched.
#[derive(Debug, Default)]
pub struct Stapler {
    running: Mutex<Vec<(PathBuf, Vec<u8>, tokio::task::AbortHandle)>>,
}

impl Stapler {
    /// Makes the running tasks match `certs` (the files of `ocsp = "fetch"`, already
    /// accepted by the TLS setup); call within a tokio runtime.
    pub fn ensure(&self, certs: &[PathBuf]) {
        let wanted: Vec<(PathBuf, OcspRequest)> = certs
            .iter()
            .filter_map(|c| match portico_core::ocsp::ocsp_request_for(c) {
                Ok(r) => Some((c.clone(), r)),
                Err(e) => {
                    tracing::warn!(error = %e, "ocsp: cannot fetch a staple");
                    None
                }
            })
            .collect();
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.retain(|(path, leaf, task)| {
            let keep = wanted.iter().any(|(p, r)| p == path && &r.leaf == leaf);
            if !keep {
                task.abort();
            }
            keep
        });
        statuses()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|s| wanted.iter().any(|(p, _)| *p == s.cert));
        for (path, req) in wanted {
            if !running.iter().any(|(p, l, _)| *p == path && *l == req.leaf) {
                let leaf = req.leaf.clone();
                let task = tokio::spawn(keep_stapled(path.clone(), req));
                running.push((path, leaf, task.abort_handle()));
            }
        }
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

async fn keep_stapled(cert: PathBuf, req: OcspRequest) {
    update_status(&cert, |s| s.responder.clone_from(&req.url));
    let mut backoff = Duration::from_secs(2);
    let mut stapled_until: Option<i64> = None;
    loop {
        let result = match tokio::time::timeout(TIMEOUT, fetch(&req)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer from {} within {TIMEOUT:?}", req.url)),
        }
        .and_then(|der| {
            req.check(&der, now())
                .map(|st| (der, st))
                .map_err(|e| e.to_string())
        });
        let wait = match result {
            Ok((der, st)) => {
                let word = match st.status {
                    CertStatus::Good => "good",
                    CertStatus::Revoked => "revoked",
                    CertStatus::Unknown => "unknown",
                };
                if st.status == CertStatus::Unknown {
                    // nothing a client could use: staple nothing
                    portico_core::tls::set_fetched_staple(&req.leaf, None);
                    stapled_until = None;
                    tracing::warn!(cert = %cert.display(), "ocsp: the responder does not know the certificate");
                } else {
                    if st.status == CertStatus::Revoked {
                        tracing::error!(cert = %cert.display(), "ocsp: the certificate is REVOKED (stapling the responder's word)");
                    }
                    portico_core::tls::set_fetched_staple(&req.leaf, Some(der));
                    stapled_until = st.next_update.or(Some(i64::MAX));
                    tracing::info!(cert = %cert.display(), status = word, next_update = ?st.next_update, "ocsp: response stapled");
                }
                update_status(&cert, |s| {
                    s.status = Some(word);
                    s.next_update = st.next_update;
                    s.fetches += 1;
                    s.last_error = None;
                });
                backoff = Duration::from_secs(2);
                refresh_in(&st, now())
            }
            Err(e) => {
                if stapled_until.is_some_and(|t| t <= now()) {
                    portico_core::tls::set_fetched_staple(&req.leaf, None);
                    stapled_until = None;
                }
                tracing::warn!(cert = %cert.display(), responder = %req.url, error = %e, retry_in = ?backoff, "ocsp: fetch failed");
                update_status(&cert, |s| s.last_error = Some(e));
                let wait = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(300));
                wait
            }
        };
        // wake up no later than the stapled response's end, to take it down
        let wait = match stapled_until {
            Some(t) if t != i64::MAX => wait.min(Duration::from_secs((t - now()).max(1) as u64)),
            _ => wait,
        };
        tokio::time::sleep(wait).await;
    }
}

/// When to fetch again after a good response: halfway to its nextUpdate, within
/// [1 min, 1 h].
fn refresh_in(st: &OcspStatus, now: i64) -> Duration {
    let half = st.next_update.map_or(3600, |n| (n - now) / 2);
    Duration::from_secs(half.clamp(60, 3600) as u64)
}

/// POSTs the request to the responder; the answer's body.
async fn fetch(req: &OcspRequest) -> Result<Vec<u8>, String> {
    let uri: http::Uri = req
        .url
        .parse()
        .map_err(|e| format!("responder {}: {e}", req.url))?;
    let host = uri.host().ok_or("the responder URL has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("connecting to {}: {e}", req.url))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let authority = uri.authority().map_or(host, |a| a.as_str()).to_string();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = http::Request::post(path)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/ocsp-request")
        .header(http::header::ACCEPT, "application/ocsp-response")
        .body(Full::new(bytes::Bytes::from(req.der.clone())))
        .map_err(|e| e.to_string())?;
    let answer = send
        .send_request(request)
        .await
        .map_err(|e| format!("{}: {e}", req.url))?;
    if !answer.status().is_success() {
        conn.abort();
        return Err(format!("{} answered {}", req.url, answer.status()));
    }
    let body = Limited::new(answer.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("{}: reading the answer: {e}", req.url))?
        .to_bytes();
    conn.abort();
    Ok(body.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refreshes_halfway_within_a_minute_and_an_hour() {
        let at = |next: Option<i64>| {
            refresh_in(
                &OcspStatus {
                    status: CertStatus::Good,
                    this_update: 0,
                    next_update: next,
                },
                1000,
            )
        };
        assert_eq!(at(Some(1000 + 7 * 86400)), Duration::from_secs(3600));
        assert_eq!(at(Some(1000 + 1800)), Duration::from_secs(900));
        assert_eq!(at(Some(1000 + 30)), Duration::from_secs(60));
        assert_eq!(at(None), Duration::from_secs(3600));
    }
}
