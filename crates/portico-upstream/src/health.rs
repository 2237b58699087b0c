//! Active health checks: one checker task per upstream probes every server on an
//! interval (with jitter), and a server leaves rotation after `fails` failed probes in a
//! row and comes back after `passes` good ones. Probes implement [`Probe`]; the
//! protocol-specific ones here are small and self-contained (a banner, one command, one
//! answer), so the checker needs no protocol module.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use portico_config::{HealthCheck, HealthConfig, PeerAddr};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::tls::TlsConnector;
use crate::{connect, PeerStream, Server, Upstream, UpstreamHandle};

/// At most this much of a probe answer is read.
const MAX_ANSWER: usize = 64 * 1024;

pub type ProbeFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// One kind of health probe. `check` is run under the configured timeout.
pub trait Probe: Send + Sync {
    fn check<'a>(&'a self, addr: &'a PeerAddr) -> ProbeFuture<'a>;
}

/// The probe a `health` block asks for (`check` resolved: see [`run_checks`]); `tls`:
/// the upstream's, used by the HTTP probe.
pub fn probe_for(
    check: HealthCheck,
    cfg: &HealthConfig,
    tls: Option<Arc<TlsConnector>>,
) -> Box<dyn Probe> {
    match check {
        HealthCheck::Tcp => Box::new(TcpProbe),
        HealthCheck::Http => Box::new(HttpProbe {
            uri: cfg.uri.clone(),
            status: cfg.status,
            body: cfg.body.clone(),
            tls,
        }),
        HealthCheck::Smtp => Box::new(LineProbe::smtp()),
        HealthCheck::Imap => Box::new(LineProbe::imap()),
        HealthCheck::Pop3 => Box::new(LineProbe::pop3()),
        HealthCheck::Uwsgi => Box::new(UwsgiPing),
        HealthCheck::Fastcgi => Box::new(FastcgiGetValues),
    }
}

async fn open(addr: &PeerAddr) -> Result<PeerStream, String> {
    // The caller's timeout bounds the whole probe; this one only stops a hung connect.
    connect(addr, Duration::from_secs(3600))
        .await
        .map_err(|e| format!("connect: {e}"))
}

/// Reads until `done(answer)` or EOF, at most MAX_ANSWER bytes.
async fn read_until<S: AsyncRead + Unpin>(
    s: &mut S,
    done: impl Fn(&[u8]) -> bool,
) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !done(&buf) {
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_ANSWER {
            return Err("answer too long".into());
        }
    }
    Ok(buf)
}

/// The server accepts a TCP (or Unix socket) connection.
pub struct TcpProbe;

impl Probe for TcpProbe {
    fn check<'a>(&'a self, addr: &'a PeerAddr) -> ProbeFuture<'a> {
        Box::pin(async move { open(addr).await.map(drop) })
    }
}

/// `GET uri` answers a status in range (and, optionally, a body containing a string);
/// over TLS when the upstream has `tls`.
pub struct HttpProbe {
    pub uri: String,
    pub status: (u16, u16),
    pub body: Option<String>,
    pub tls: Option<Arc<TlsConnector>>,
}

impl Probe for HttpProbe {
    fn check<'a>(&'a self, addr: &'a PeerAddr) -> ProbeFuture<'a> {
        Box::pin(async move {
            let s = open(addr).await?;
            match &self.tls {
                None => self.exchange(s, addr).await,
                Some(tls) => {
                    let s = tls
                        .connect(s, addr, false)
                        .await
                        .map_err(|e| format!("tls: {e}"))?;
                    self.exchange(s, addr).await
                }
            }
        })
    }
}

impl HttpProbe {
    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut s: S,
        addr: &PeerAddr,
    ) -> Result<(), String> {
        {
            let host = match addr {
                PeerAddr::Unix(_) => "localhost".to_string(),
                other => other.to_string(),
            };
            let req = format!(
                "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: portico-health-check\r\nConnection: close\r\n\r\n",
                self.uri
            );
            s.write_all(req.as_bytes())
                .await
                .map_err(|e| format!("write: {e}"))?;
            let need_body = self.body.is_some();
            let answer =
                read_until(&mut s, |b| !need_body && b.windows(2).any(|w| w == b"\r\n")).await?;
            let text = String::from_utf8_lossy(&answer);
            let status: u16 = text
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| "no HTTP status line".to_string())?;
            if status < self.status.0 || status > self.status.1 {
                return Err(format!("status {status}"));
            }
            if let Some(want) = &self.body {
                let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
                if !body.contains(want.as_str()) {
                    return Err(format!("body does not contain {want:?}"));
                }
            }
            Ok(())
        }
    }
}

/// Line protocols: a greeting starting with `greeting`, then `command` answered by a
/// line starting with `ok` (multi-line answers end with that line).
pub struct LineProbe {
    greeting: &'static str,
    command: &'static str,
    ok: &'static str,
}

impl LineProbe {
    /// Banner 220, then EHLO answered 250.
    pub fn smtp() -> Self {
        Self {
            greeting: "220",
            command: "EHLO portico-health-check\r\n",
            ok: "250 ",
        }
    }
    /// `* OK` greeting, then CAPABILITY answered OK.
    pub fn imap() -> Self {
        Self {
            greeting: "* OK",
            command: "h1 CAPABILITY\r\n",
            ok: "h1 OK",
        }
    }
    /// `+OK` greeting, then CAPA answered +OK.
    pub fn pop3() -> Self {
        Self {
            greeting: "+OK",
            command: "CAPA\r\n",
            ok: "+OK",
        }
    }
}

fn last_line_starts(buf: &[u8], prefix: &str) -> bool {
    let text = String::from_utf8_lossy(buf);
    text.ends_with("\r\n") && text.lines().any(|l| l.starts_with(prefix))
}

impl Probe for LineProbe {
    fn check<'a>(&'a self, addr: &'a PeerAddr) -> ProbeFuture<'a> {
        Box::pin(async move {
            let mut s = open(addr).await?;
            // A reply is complete at a line end; SMTP replies continue while lines read
            // "NNN-" and end with "NNN ".
            let greeting = read_until(&mut s, |b| {
                let text = String::from_utf8_lossy(b);
                text.ends_with('\n')
                    && (self.greeting != "220"
                        || text
                            .lines()
                            .last()
                            .is_some_and(|l| l.as_bytes().get(3) != Some(&b'-')))
            })
            .await?;
            if !String::from_utf8_lossy(&greeting).starts_with(self.greeting) {
                return Err(format!("greeting {:?}", String::from_utf8_lossy(&greeting)));
            }
            s.write_all(self.command.as_bytes())
                .await
                .map_err(|e| format!("write: {e}"))?;
            let answer = read_until(&mut s, |b| {
                last_line_starts(b, self.ok)
                    || last_line_starts(b, "-ERR")
                    || last_line_starts(b, "5")
            })
            .await?;
            if last_line_starts(&answer, self.ok) {
                Ok(())
            } else {
                Err(format!("answer {:?}", String::from_utf8_lossy(&answer)))
            }
        })
    }
}

/// uWSGI's PING: a packet with modifier1 100 and no vars, answered by a modifier1 100 packet.
pub struct UwsgiPing;

impl Probe for UwsgiPing {
    fn check<'a>(&'a self, addr: &'a PeerAddr) -> ProbeFuture<'a> {
        Box::pin(async move {
            let mut s = open(addr).await?;
            s.write_all(&portico_uwsgi::ping())
                .await
                .map_err(|e| format!("write: {e}"))?;
            let answer = read_until(&mut s, |b| b.len() >= 4).await?;
            if portico_uwsgi::is_pong(&answer) {
                Ok(())
            } else {
                Err("no PONG".into())
            }
        })
    }
}

/// FastCGI FCGI_GET_VALUES (management record, request id 0), answered by
/// FCGI_GET_VALUES_RESULT.
pub struct FastcgiGetValues;

impl Probe for FastcgiGetValues {
    fn check<'a>(&'a self, addr: &'a PeerAddr) -> ProbeFuture<'a> {
        Box::pin(async move {
            let mut s = open(addr).await?;
            s.write_all(&portico_fastcgi::get_values(&["FCGI_MAX_CONNS"]))
                .await
                .map_err(|e| format!("write: {e}"))?;
            let answer = read_until(&mut s, |b| {
                !matches!(portico_fastcgi::decode_record(b), Ok(None))
            })
            .await?;
            match portico_fastcgi::decode_record(&answer) {
                Ok(Some((r, _)))
                    if r.header.record_type()
                        == Some(portico_fastcgi::RecordType::GetValuesResult) =>
                {
                    Ok(())
                }
                Ok(_) => Err("no FCGI_GET_VALUES_RESULT".into()),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

/// Runs the active checks of the upstream behind `handle` (its current generation, so
/// re-resolved servers are checked too) until `stop` is cancelled. `default_check` is
/// the probe of the module using the upstream, for a `health` block without `check`.
pub async fn run_checks(
    handle: Arc<UpstreamHandle>,
    cfg: HealthConfig,
    default_check: HealthCheck,
    stop: CancellationToken,
) {
    let check = cfg.check.unwrap_or(default_check);
    let probe: Arc<dyn Probe> = Arc::from(probe_for(check, &cfg, handle.tls.clone()));
    let mut tick = 0u64;
    loop {
        let jitter = jitter(cfg.interval, tick);
        tick += 1;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(cfg.interval + jitter) => {}
        }
        let upstream = handle.load();
        let mut probes = tokio::task::JoinSet::new();
        for server in &upstream.servers {
            let probe = Arc::clone(&probe);
            let server = Arc::clone(server);
            let timeout = cfg.timeout;
            probes.spawn(async move {
                let r = match tokio::time::timeout(timeout, probe.check(server.addr())).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer within {timeout:?}")),
                };
                (server, r)
            });
        }
        while let Some(done) = probes.join_next().await {
            if let Ok((server, result)) = done {
                record(&upstream, &server, &cfg, result);
            }
        }
    }
}

/// Up to a tenth of the interval, different per tick, so checkers do not beat in step.
fn jitter(interval: Duration, tick: u64) -> Duration {
    let h = (tick.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) % 1000;
    interval.mul_f64(h as f64 / 10_000.0)
}

fn record(upstream: &Upstream, server: &Server, cfg: &HealthConfig, result: Result<(), String>) {
    let h = &server.health;
    match result {
        Ok(()) => {
            h.fails_in_row.store(0, Ordering::Relaxed);
            let passes = h.passes_in_row.fetch_add(1, Ordering::Relaxed) + 1;
            if passes >= cfg.passes && h.unhealthy.swap(false, Ordering::Relaxed) {
                server.came_back();
                tracing::warn!(upstream = %upstream.name(), server = %server.addr(),
                    "active health check passed {passes} time(s): server back in rotation");
            }
        }
        Err(reason) => {
            h.passes_in_row.store(0, Ordering::Relaxed);
            let fails = h.fails_in_row.fetch_add(1, Ordering::Relaxed) + 1;
            h.failed_checks.fetch_add(1, Ordering::Relaxed);
            if fails >= cfg.fails && !h.unhealthy.swap(true, Ordering::Relaxed) {
                tracing::warn!(upstream = %upstream.name(), server = %server.addr(), %reason,
                    "active health check failed {fails} time(s): server out of rotation");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::TcpListener;

    /// A one-connection fake server: sends `greeting`, then answers the first line (or the
    /// first 4/8 bytes for binary probes) with `answer`.
    async fn fake(greeting: &'static [u8], read: usize, answer: &'static [u8]) -> PeerAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            w.write_all(greeting).await.unwrap();
            let mut r = BufReader::new(r);
            if read == 0 {
                let mut line = String::new();
                r.read_line(&mut line).await.unwrap();
            } else {
                let mut buf = vec![0u8; read];
                r.read_exact(&mut buf).await.unwrap();
            }
            w.write_all(answer).await.unwrap();
        });
        PeerAddr::Tcp(addr)
    }

    #[tokio::test]
    async fn probes_accept_good_answers_and_refuse_bad_ones() {
        let smtp = LineProbe::smtp();
        let good = fake(
            b"220-mx ESMTP\r\n220 mx ready\r\n",
            0,
            b"250-mx\r\n250 PIPELINING\r\n",
        )
        .await;
        assert_eq!(smtp.check(&good).await, Ok(()));
        let bad = fake(b"554 no\r\n", 0, b"").await;
        assert!(smtp.check(&bad).await.is_err());

        let imap = LineProbe::imap();
        let good = fake(
            b"* OK ready\r\n",
            0,
            b"* CAPABILITY IMAP4rev1\r\nh1 OK done\r\n",
        )
        .await;
        assert_eq!(imap.check(&good).await, Ok(()));
        let bad = fake(b"* OK ready\r\n", 0, b"h1 BAD no\r\n").await;
        assert!(imap.check(&bad).await.is_err());

        let pop3 = LineProbe::pop3();
        let good = fake(b"+OK ready\r\n", 0, b"+OK\r\nUSER\r\n.\r\n").await;
        assert_eq!(pop3.check(&good).await, Ok(()));
        let bad = fake(b"-ERR busy\r\n", 0, b"").await;
        assert!(pop3.check(&bad).await.is_err());

        let good = fake(b"", 4, &[100, 0, 0, 0]).await;
        assert_eq!(UwsgiPing.check(&good).await, Ok(()));
        let good = fake(b"", 8, &[1, 10, 0, 0, 0, 0, 0, 0]).await;
        assert_eq!(FastcgiGetValues.check(&good).await, Ok(()));

        let http = HttpProbe {
            uri: "/healthz".into(),
            status: (200, 399),
            body: Some("ok".into()),
            tls: None,
        };
        let good = fake(b"", 0, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n").await;
        assert_eq!(http.check(&good).await, Ok(()));
        let sick = fake(b"", 0, b"HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        assert!(http.check(&sick).await.is_err());
        let wrong = fake(
            b"",
            0,
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nsick\n",
        )
        .await;
        assert!(http.check(&wrong).await.is_err());

        let closed = PeerAddr::Tcp(
            TcpListener::bind("127.0.0.1:0")
                .await
                .unwrap()
                .local_addr()
                .unwrap(),
        );
        assert!(TcpProbe.check(&closed).await.is_err());
    }
}
