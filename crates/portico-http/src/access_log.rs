//! The access log: nginx "combined" lines, JSON objects, or `log.formats` templates,
//! written by a background thread per destination so request handling never blocks on
//! the disk. A worker thread hands its lines on in batches ([`Batches`]: when it is about
//! to wait for events, or at 32 KiB). The queue is bounded: when the writer cannot keep
//! up, lines are dropped and counted, never buffered without limit.
//!
//! A template is rendered in two steps: what the request says (`$remote_addr`,
//! `$http_user_agent`, `$map_NAME` …) while routing still has it ([`AccessLog::pending`]),
//! what the response was and took (`$status`, `$body_bytes_sent`, `$request_time` …) when
//! its body is done ([`AccessLog::log`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use portico_config::{AccessFormat, AccessLogTarget, KeyPart, KeyTemplate, LogEscape, LogVar};

use crate::vars::Vars;

const QUEUE: usize = 16 * 1024;

/// One destination's writer thread. Cheap to clone.
#[derive(Clone, Default)]
struct Writer {
    tx: Option<SyncSender<Msg>>,
    /// Tells destinations apart in a worker's batches (0: none).
    id: u64,
}

/// A worker's lines for a destination are handed on once they reach this.
const BATCH_BYTES: usize = 32 * 1024;

/// The lines a worker thread has rendered for one destination and not handed to its
/// writer yet.
struct Batch {
    id: u64,
    tx: SyncSender<Msg>,
    lines: String,
    count: u64,
    dropped: Arc<AtomicU64>,
}

impl Batch {
    fn hand_on(self) {
        send_lines(&self.tx, self.lines, self.count, &self.dropped);
    }
}

/// Queues `count` lines for their writer; counted as dropped when its queue is full.
fn send_lines(tx: &SyncSender<Msg>, lines: String, count: u64, dropped: &AtomicU64) {
    if let Err(TrySendError::Full(_)) = tx.try_send(Msg::Line(lines)) {
        dropped.fetch_add(count, Ordering::Relaxed);
    }
}

/// A worker thread's batches: handed on when the worker is about to wait for events
/// (`portico_core::idle`), when one reaches [`BATCH_BYTES`], and when the thread ends.
/// Under load one send — one wake of the writer thread, one write — carries many lines
/// (a send per line cost a futex wake and a write per request: a fifth of the CPU of a
/// small-file request); an idle worker hands its lines on before it sleeps,
/// microseconds after the answer went out. Emptied at each hand-on, so a destination a
/// reload dropped is not kept open.
#[derive(Default)]
struct Batches {
    batches: Vec<Batch>,
    /// This thread is a worker that hands its batches on when idle.
    hooked: bool,
}

impl Batches {
    fn hand_on(&mut self) {
        for b in self.batches.drain(..) {
            b.hand_on();
        }
    }
}

impl Drop for Batches {
    fn drop(&mut self) {
        self.hand_on();
    }
}

thread_local! {
    static BATCHES: RefCell<Batches> = RefCell::default();
}

/// Hands this thread's batches on (its worker is about to wait).
fn hand_on_batches() {
    let _ = BATCHES.try_with(|b| b.borrow_mut().hand_on());
}

/// Adds `line` to this worker thread's batch for destination `id` (`tx`'s); gives it back on
/// a thread that is not a worker's (it is sent at once there).
fn batch(id: u64, tx: &SyncSender<Msg>, dropped: &Arc<AtomicU64>, line: String) -> Option<String> {
    let mut line = Some(line);
    let _ = BATCHES.try_with(|b| {
        let mut b = b.borrow_mut();
        if !b.hooked {
            if !portico_core::idle::on_idle(hand_on_batches) {
                return;
            }
            b.hooked = true;
        }
        let Some(l) = line.take() else { return };
        let at = match b.batches.iter().position(|x| x.id == id) {
            Some(i) => i,
            None => {
                b.batches.push(Batch {
                    id,
                    tx: tx.clone(),
                    lines: String::with_capacity(4096),
                    count: 0,
                    dropped: Arc::clone(dropped),
                });
                b.batches.len() - 1
            }
        };
        let batch = &mut b.batches[at];
        batch.lines.push_str(&l);
        batch.count += 1;
        if batch.lines.len() >= BATCH_BYTES {
            b.batches.swap_remove(at).hand_on();
        }
    });
    line
}

/// Where and how lines are written: a destination's writer, a format, and a condition.
/// Cheap to clone; the default writes nothing.
#[derive(Clone, Default)]
pub struct AccessLog {
    writer: Writer,
    format: Arc<Option<AccessFormat>>,
    condition: Option<Arc<KeyTemplate>>,
    dropped: Arc<AtomicU64>,
}

/// The destinations of one config generation: one writer thread per file (or stdout),
/// shared by every log that names it; [`Writers::reopen`] reopens them all (SIGUSR1).
#[derive(Clone, Default)]
pub struct Writers {
    open: Arc<Mutex<HashMap<AccessLogTarget, Writer>>>,
    dropped: Arc<AtomicU64>,
}

impl Writers {
    /// Lines dropped by any writer are counted into `dropped` (one counter across reloads).
    pub fn new(dropped: Arc<AtomicU64>) -> Self {
        Self {
            open: Arc::default(),
            dropped,
        }
    }

    /// A log to `target` in `format`, written only when `condition` (if any) renders to
    /// something other than "" and "0". Opens the destination on first use (a file is
    /// opened for appending, created if missing; an error names the path).
    pub fn log(
        &self,
        target: &AccessLogTarget,
        format: &AccessFormat,
        condition: Option<&KeyTemplate>,
    ) -> std::io::Result<AccessLog> {
        if *target == AccessLogTarget::Off {
            return Ok(AccessLog::default());
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let writer = match open.get(target) {
            Some(w) => w.clone(),
            None => {
                let w = Writer::start(target)?;
                open.insert(target.clone(), w.clone());
                w
            }
        };
        Ok(AccessLog {
            writer,
            format: Arc::new(Some(format.clone())),
            condition: condition.map(|c| Arc::new(c.clone())),
            dropped: Arc::clone(&self.dropped),
        })
    }

    /// Opens every file again after the lines queued so far are written (SIGUSR1, after
    /// logrotate moved them).
    pub fn reopen(&self) {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        for w in open.values() {
            w.reopen();
        }
    }
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
    /// The response head's size (status line and headers), for `$bytes_sent`.
    pub head_bytes: u64,
    pub referer: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub host: Option<&'a str>,
    pub duration: Duration,
    pub upstream: Option<&'a str>,
    /// `$upstream_response_time`, when an upstream answered this request.
    pub upstream_time: Option<Duration>,
    /// `$upstream_status`: the upstream's own status (an error page may have replaced it).
    pub upstream_status: Option<u16>,
    pub listener: &'a str,
    pub conn: u64,
    pub cache_status: Option<&'static str>,
}

/// A template's request-time part, rendered while the request is at hand.
#[derive(Debug, Default)]
pub struct Pending {
    line: Vec<Seg>,
    condition: Option<Vec<Seg>>,
}

#[derive(Debug)]
enum Seg {
    /// Rendered (and escaped) already.
    Text(Vec<u8>),
    /// Known once the response is done.
    Late(KeyPart),
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

impl Writer {
    fn start(target: &AccessLogTarget) -> std::io::Result<Self> {
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
        static IDS: AtomicU64 = AtomicU64::new(1);
        Ok(Self {
            tx: Some(tx),
            id: IDS.fetch_add(1, Ordering::Relaxed),
        })
    }

    fn reopen(&self) {
        if let Some(tx) = &self.tx {
            if let Err(TrySendError::Full(m)) = tx.try_send(Msg::Reopen) {
                // the writer is behind: wait for it on a thread of its own
                let tx = tx.clone();
                std::thread::spawn(move || tx.send(m));
            }
        }
    }
}

impl AccessLog {
    /// A log to `target` in `format` with a writer of its own (tests, `check`).
    pub fn open(target: &AccessLogTarget, format: &AccessFormat) -> std::io::Result<Self> {
        Writers::default().log(target, format, None)
    }

    pub fn is_on(&self) -> bool {
        self.writer.tx.is_some()
    }

    /// The request-time part of a template format or condition (None for the built-in
    /// formats without a condition: they need nothing of the request but [`Entry`]).
    pub fn pending(&self, vars: &Vars<'_>) -> Option<Pending> {
        if !self.is_on() {
            return None;
        }
        let line = match self.format.as_ref() {
            Some(AccessFormat::Template(t)) => early(&t.template, t.escape, vars),
            _ => Vec::new(),
        };
        let condition = self
            .condition
            .as_ref()
            .map(|c| early(c, LogEscape::None, vars));
        (!line.is_empty() || condition.is_some()).then_some(Pending { line, condition })
    }

    pub fn log(&self, e: &Entry<'_>, pending: Option<&Pending>) {
        let Some(tx) = &self.writer.tx else { return };
        if let Some(cond) = pending.and_then(|p| p.condition.as_ref()) {
            let mut v = Vec::new();
            late(cond, LogEscape::None, e, &mut v);
            if v.is_empty() || v == b"0" || v == b"-" {
                return;
            }
        }
        let line = match self.format.as_ref() {
            Some(AccessFormat::Json) => json_line(e),
            Some(AccessFormat::Template(t)) => {
                let mut out = Vec::with_capacity(256);
                match pending.filter(|p| !p.line.is_empty()) {
                    Some(p) => late(&p.line, t.escape, e, &mut out),
                    // a request that never reached a route: what the entry knows
                    None => {
                        let segs: Vec<Seg> =
                            t.template.parts.iter().cloned().map(Seg::Late).collect();
                        late(&segs, t.escape, e, &mut out);
                    }
                }
                out.push(b'\n');
                String::from_utf8_lossy(&out).into_owned()
            }
            _ => combined_line(e),
        };
        if let Some(line) = batch(self.writer.id, tx, &self.dropped, line) {
            send_lines(tx, line, 1, &self.dropped);
        }
    }
}

/// Whether a variable is only known once the response is done.
fn is_late(part: &KeyPart) -> bool {
    matches!(part, KeyPart::Log(_) | KeyPart::CacheStatus)
}

fn early(t: &KeyTemplate, esc: LogEscape, vars: &Vars<'_>) -> Vec<Seg> {
    let mut out: Vec<Seg> = Vec::with_capacity(t.parts.len());
    for part in &t.parts {
        if is_late(part) {
            out.push(Seg::Late(part.clone()));
            continue;
        }
        let mut text = Vec::new();
        match part {
            KeyPart::Literal(l) => text.extend_from_slice(l.as_bytes()),
            _ => {
                let mut v = Vec::new();
                vars.render_part(part, &mut v);
                escaped(&v, esc, &mut text);
            }
        }
        match out.last_mut() {
            Some(Seg::Text(prev)) => prev.extend_from_slice(&text),
            _ => out.push(Seg::Text(text)),
        }
    }
    out
}

fn late(segs: &[Seg], esc: LogEscape, e: &Entry<'_>, out: &mut Vec<u8>) {
    for s in segs {
        match s {
            Seg::Text(t) => out.extend_from_slice(t),
            Seg::Late(KeyPart::Literal(l)) => out.extend_from_slice(l.as_bytes()),
            Seg::Late(part) => {
                let v = entry_value(part, e);
                escaped(v.as_bytes(), esc, out);
            }
        }
    }
}

/// A variable's value from what the entry knows (the response's facts; for a request
/// that never reached a route, the request's as well).
fn entry_value(part: &KeyPart, e: &Entry<'_>) -> String {
    let secs = |d: Duration| format!("{}.{:03}", d.as_secs(), d.subsec_millis());
    match part {
        KeyPart::Log(v) => match v {
            LogVar::Request => format!("{} {} {}", e.method, e.uri, e.version),
            LogVar::Status => e.status.to_string(),
            LogVar::BodyBytesSent => e.bytes.to_string(),
            LogVar::BytesSent => (e.bytes + e.head_bytes).to_string(),
            LogVar::RequestTime => secs(e.duration),
            LogVar::UpstreamResponseTime => e.upstream_time.map(secs).unwrap_or_default(),
            LogVar::UpstreamAddr => e.upstream.unwrap_or_default().to_string(),
            LogVar::UpstreamStatus => e
                .upstream_status
                .or(e.upstream.map(|_| e.status))
                .map(|s| s.to_string())
                .unwrap_or_default(),
            LogVar::TimeLocal => time_local(e.time),
            LogVar::TimeIso8601 => time_iso8601(e.time),
            LogVar::Msec => {
                let d = e
                    .time
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default();
                secs(d)
            }
            LogVar::Connection => e.conn.to_string(),
            LogVar::Pid => std::process::id().to_string(),
        },
        KeyPart::CacheStatus => e.cache_status.unwrap_or_default().to_string(),
        KeyPart::RemoteAddr => e.remote.map(|r| r.to_string()).unwrap_or_default(),
        KeyPart::RequestUri => e.uri.to_string(),
        KeyPart::Uri => e.uri.split('?').next().unwrap_or("").to_string(),
        KeyPart::Host => e.host.unwrap_or_default().to_string(),
        KeyPart::Header(h) if h == "referer" => e.referer.unwrap_or_default().to_string(),
        KeyPart::Header(h) if h == "user-agent" => e.user_agent.unwrap_or_default().to_string(),
        KeyPart::Gateway(portico_config::GatewayVar::RequestMethod) => e.method.to_string(),
        KeyPart::Gateway(portico_config::GatewayVar::ServerProtocol) => e.version.to_string(),
        _ => String::new(),
    }
}

/// A variable's value in a line: escaped as the format says; empty is `-` (nginx's
/// "not found"), but in JSON, where it is `""`.
fn escaped(v: &[u8], esc: LogEscape, out: &mut Vec<u8>) {
    if v.is_empty() {
        if esc != LogEscape::Json {
            out.push(b'-');
        }
        return;
    }
    match esc {
        LogEscape::None => out.extend_from_slice(v),
        LogEscape::Default => {
            // runs of printable bytes copied whole, the rest as `\xHH`
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            let mut from = 0;
            for (i, &b) in v.iter().enumerate() {
                if !(0x20..=0x7e).contains(&b) || b == b'"' || b == b'\\' {
                    out.extend_from_slice(&v[from..i]);
                    out.extend_from_slice(&[
                        b'\\',
                        b'x',
                        HEX[usize::from(b >> 4)],
                        HEX[usize::from(b & 15)],
                    ]);
                    from = i + 1;
                }
            }
            out.extend_from_slice(&v[from..]);
        }
        LogEscape::Json => {
            for &b in v {
                match b {
                    b'"' => out.extend_from_slice(b"\\\""),
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    0..=0x1f => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
                    _ => out.push(b),
                }
            }
        }
    }
}

fn dash(s: Option<&str>) -> &str {
    s.filter(|s| !s.is_empty()).unwrap_or("-")
}

/// `$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent
/// "$http_referer" "$http_user_agent"`, written into one buffer (no string per field).
pub fn combined_line(e: &Entry<'_>) -> String {
    use std::io::Write as _;
    let mut out = Vec::with_capacity(160 + e.uri.len() + e.user_agent.map_or(0, str::len));
    match e.remote {
        Some(ip) => {
            let _ = write!(out, "{ip}");
        }
        None => out.extend_from_slice(b"unix:"),
    }
    out.extend_from_slice(b" - - [");
    push_time_local(&mut out, e.time);
    out.extend_from_slice(b"] \"");
    escaped(e.method.as_bytes(), LogEscape::Default, &mut out);
    out.push(b' ');
    escaped(e.uri.as_bytes(), LogEscape::Default, &mut out);
    out.push(b' ');
    out.extend_from_slice(e.version.as_bytes());
    out.extend_from_slice(b"\" ");
    out.extend_from_slice(itoa::Buffer::new().format(e.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(itoa::Buffer::new().format(e.bytes).as_bytes());
    out.extend_from_slice(b" \"");
    escaped(dash(e.referer).as_bytes(), LogEscape::Default, &mut out);
    out.extend_from_slice(b"\" \"");
    escaped(dash(e.user_agent).as_bytes(), LogEscape::Default, &mut out);
    out.extend_from_slice(b"\"\n");
    // escaped: printable ASCII only
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
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

/// [`time_local`] appended to `out`, from a copy made once a second per thread.
fn push_time_local(out: &mut Vec<u8>, t: SystemTime) {
    thread_local! {
        static LAST: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let written = LAST.try_with(|l| {
        let mut l = l.borrow_mut();
        if l.0 != secs {
            *l = (secs, time_local(t));
        }
        out.extend_from_slice(l.1.as_bytes());
    });
    if written.is_err() {
        out.extend_from_slice(time_local(t).as_bytes());
    }
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

/// `2026-11-21T23:43:24+00:00` (UTC).
pub fn time_iso8601(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y}-{m:02}-{d:02}T{:02}:{:02}:{:02}+00:00",
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
            upstream_time: None,
            upstream_status: None,
            listener: "web",
            conn: 7,
            head_bytes: 100,
            cache_status: None,
        };
        assert_eq!(
            combined_line(&e),
            "127.0.0.1 - - [01/Jan/1970:00:00:00 +0000] \"GET /a\\x22b HTTP/1.1\" 200 12 \"-\" \"curl/8\"\n"
        );
        // every byte outside printable ASCII, and `"` and `\`, as \xHH; a Unix-socket
        // client; the time of another second (each thread keeps the last second's text)
        let odd = Entry {
            remote: None,
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_304_604),
            uri: "/caf\u{e9}\\\u{1}x",
            referer: Some("r\"f"),
            user_agent: Some(""),
            ..e
        };
        assert_eq!(
            combined_line(&odd),
            "unix: - - [21/Nov/2026:23:43:24 +0000] \"GET /caf\\xC3\\xA9\\x5C\\x01x HTTP/1.1\" 200 12 \"r\\x22f\" \"-\"\n"
        );
        assert!(combined_line(&e).contains("[01/Jan/1970:00:00:00 +0000]"));
    }

    fn entry() -> Entry<'static> {
        Entry {
            remote: Some("127.0.0.2".parse().unwrap()),
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_304_604_250),
            method: "GET",
            uri: "/a?b=1",
            version: "HTTP/1.1",
            status: 404,
            bytes: 12,
            head_bytes: 100,
            referer: None,
            user_agent: Some("ua \"x\""),
            host: Some("example.org"),
            duration: Duration::from_millis(1234),
            upstream: Some("127.0.0.1:9000"),
            upstream_time: Some(Duration::from_millis(1500)),
            upstream_status: Some(404),
            listener: "web",
            conn: 7,
            cache_status: Some("HIT"),
        }
    }

    fn template(t: &str, escape: LogEscape) -> AccessFormat {
        AccessFormat::Template(portico_config::LogTemplate {
            name: "t".into(),
            template: KeyTemplate::parse_log(t).unwrap(),
            escape,
        })
    }

    /// A request that never reached a route: the whole line from what the entry knows.
    #[test]
    fn a_template_from_the_entry_alone() {
        let f = template(
            "$remote_addr [$time_local] \"$request\" $status $body_bytes_sent $bytes_sent \"$http_referer\" \"$http_user_agent\" $request_time $upstream_addr $upstream_status $upstream_cache_status $connection $msec $time_iso8601",
            LogEscape::Default,
        );
        let mut out = Vec::new();
        let AccessFormat::Template(t) = &f else {
            unreachable!()
        };
        let segs: Vec<Seg> = t.template.parts.iter().cloned().map(Seg::Late).collect();
        late(&segs, t.escape, &entry(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "127.0.0.2 [21/Nov/2026:23:43:24 +0000] \"GET /a?b=1 HTTP/1.1\" 404 12 112 \"-\" \"ua \\x22x\\x22\" 1.234 127.0.0.1:9000 404 HIT 7 1795304604.250 2026-11-21T23:43:24+00:00"
        );
    }

    #[test]
    fn json_escaping_and_empty_values() {
        let mut out = Vec::new();
        escaped(b"a\"b\\c\nd\x01", LogEscape::Json, &mut out);
        assert_eq!(out, b"a\\\"b\\\\c\\nd\\u0001");
        let mut empty = Vec::new();
        escaped(b"", LogEscape::Json, &mut empty);
        assert!(empty.is_empty(), "JSON: an empty value is \"\"");
        escaped(b"", LogEscape::Default, &mut empty);
        assert_eq!(empty, b"-");
    }
}
