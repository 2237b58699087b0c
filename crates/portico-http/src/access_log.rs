//! The access log: nginx "combined" lines or JSON objects, written by a background
//! thread so request handling never blocks on the disk. The queue is bounded: when the
//! writer cannot keep up, lines are dropped and counted, never buffered without limit.

use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use portico_config::{AccessLogTarget, LogFormat};

const QUEUE: usize = 16 * 1024;

/// Where access log lines go. Cheap to clone.
#[derive(Clone, Default)]
pub struct AccessLog {
    tx: Option<SyncSender<Msg>>,
    json: bool,
    pub dropped: Arc<AtomicU64>,
}

/// One finished request.
#[derive(Debug)]
pub struct Entry<'a> {
    pub remote: Option<IpAddr>,
    pub time: SystemTime,
    pub method: &'a str,
    pub uri: &'a str,
    pub version: &'a str,
    pub status: u16,
    pub bytes: u64,
    pub referer: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub host: Option<&'a str>,
    pub duration: Duration,
    pub upstream: Option<&'a str>,
    pub listener: &'a str,
}

/// What the writer thread is sent.
enum Msg {
    Line(String),
    /// Open the file again (logrotate moved it away: SIGUSR1).
    Reopen,
}

fn open_target(target: &AccessLogTarget) -> std::io::Result<Box<dyn Write + Send>> {
    Ok(match target {
        AccessLogTarget::Off | AccessLogTarget::Stdout => Box::new(std::io::stdout()),
        AccessLogTarget::File(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))?,
        ),
    })
}

impl AccessLog {
    /// Opens `target` (a file is opened for appending, created if missing; an error
    /// names the path).
    pub fn open(target: &AccessLogTarget, format: LogFormat) -> std::io::Result<Self> {
        if *target == AccessLogTarget::Off {
            return Ok(Self::default());
        }
        let mut out = open_target(target)?;
        let target = target.clone();
        let (tx, rx) = sync_channel::<Msg>(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut buf = Vec::with_capacity(64 * 1024);
                let write = |out: &mut Box<dyn Write + Send>, buf: &mut Vec<u8>| {
                    if out.write_all(buf).and_then(|_| out.flush()).is_err() {
                        // Disk full or closed stdout: nothing better to do than go on.
                    }
                    buf.clear();
                };
                while let Ok(msg) = rx.recv() {
                    let mut reopen = matches!(msg, Msg::Reopen);
                    if let Msg::Line(line) = msg {
                        buf.extend_from_slice(line.as_bytes());
                    }
                    while let Ok(more) = rx.try_recv() {
                        match more {
                            Msg::Line(l) => buf.extend_from_slice(l.as_bytes()),
                            Msg::Reopen => reopen = true,
                        }
                        if buf.len() > 60 * 1024 {
                            break;
                        }
                    }
                    write(&mut out, &mut buf);
                    if reopen {
                        match open_target(&target) {
                            Ok(o) => out = o,
                            Err(e) => eprintln!("portico: cannot reopen the access log: {e}"),
                        }
                    }
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            json: format == LogFormat::Json,
            dropped: Arc::default(),
        })
    }

    /// Counts dropped lines into `counter` (one counter across reloads).
    pub fn counting_into(mut self, counter: Arc<AtomicU64>) -> Self {
        self.dropped = counter;
        self
    }

    pub fn is_on(&self) -> bool {
        self.tx.is_some()
    }

    /// Opens the file again after the lines queued so far are written (SIGUSR1, after
    /// logrotate moved it).
    pub fn reopen(&self) {
        if let Some(tx) = &self.tx {
            if let Err(TrySendError::Full(m)) = tx.try_send(Msg::Reopen) {
                // the writer is behind: wait for it on a thread of its own
                let tx = tx.clone();
                std::thread::spawn(move || tx.send(m));
            }
        }
    }

    pub fn log(&self, e: &Entry<'_>) {
        let Some(tx) = &self.tx else { return };
        let line = if self.json {
            json_line(e)
        } else {
            combined_line(e)
        };
        if let Err(TrySendError::Full(_)) = tx.try_send(Msg::Line(line)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn dash(s: Option<&str>) -> &str {
    s.filter(|s| !s.is_empty()).unwrap_or("-")
}

/// Escapes `"` and `\` and non-printable bytes as nginx does (`\xHH`).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'"' | b'\\' => out.push_str(&format!("\\x{b:02X}")),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02X}")),
        }
    }
    out
}

/// `$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent
/// "$http_referer" "$http_user_agent"`
pub fn combined_line(e: &Entry<'_>) -> String {
    let remote = e.remote.map(|ip| ip.to_string());
    format!(
        "{} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\"\n",
        remote.as_deref().unwrap_or("unix:"),
        time_local(e.time),
        escape(e.method),
        escape(e.uri),
        e.version,
        e.status,
        e.bytes,
        escape(dash(e.referer)),
        escape(dash(e.user_agent)),
    )
}

fn json_line(e: &Entry<'_>) -> String {
    let v = serde_json::json!({
        "time": time_local(e.time),
        "remote_addr": e.remote.map(|ip| ip.to_string()),
        "listener": e.listener,
        "host": e.host,
        "method": e.method,
        "uri": e.uri,
        "protocol": e.version,
        "status": e.status,
        "body_bytes_sent": e.bytes,
        "referer": e.referer,
        "user_agent": e.user_agent,
        "request_time": e.duration.as_secs_f64(),
        "upstream_addr": e.upstream,
    });
    format!("{v}\n")
}

/// `21/Nov/2026:23:43:24 +0000` (UTC).
pub fn time_local(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_format() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_304_604);
        assert_eq!(time_local(t), "21/Nov/2026:23:43:24 +0000");
        assert_eq!(
            time_local(SystemTime::UNIX_EPOCH),
            "01/Jan/1970:00:00:00 +0000"
        );
    }

    #[test]
    fn combined_format_escapes() {
        let e = Entry {
            remote: Some("127.0.0.1".parse().unwrap()),
            time: SystemTime::UNIX_EPOCH,
            method: "GET",
            uri: "/a\"b",
            version: "HTTP/1.1",
            status: 200,
            bytes: 12,
            referer: None,
            user_agent: Some("curl/8"),
            host: None,
            duration: Duration::ZERO,
            upstream: None,
            listener: "web",
        };
        assert_eq!(
            combined_line(&e),
            "127.0.0.1 - - [01/Jan/1970:00:00:00 +0000] \"GET /a\\x22b HTTP/1.1\" 200 12 \"-\" \"curl/8\"\n"
        );
    }
}
