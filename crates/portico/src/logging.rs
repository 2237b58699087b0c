//! The process log: always stderr, and also `log.file` — a file (written by a
//! background thread: tracing-appender's bounded, lossy non-blocking writer, so a slow
//! disk never stalls a worker; SIGUSR1 reopens it for logrotate) or syslog (RFC 5424
//! datagrams to a Unix socket such as /dev/log, or over UDP; a datagram that cannot be
//! sent at once is dropped, never waited for).

use std::io::{self, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use portico_config::{Config, LogFormat, ProcessLog};
use tracing_subscriber::fmt::MakeWriter;

/// Changes the log level on reload (unless `PORTICO_LOG` pins it).
pub type LevelHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// The running process log.
pub struct Logging {
    pub level: Option<LevelHandle>,
    file: Option<Arc<ReopenFile>>,
    /// Flushes the file writer's queue when the process ends.
    _guard: Option<tracing_appender::non_blocking::WorkerGuard>,
    /// What `log.file` was at start (a change takes effect at the next start).
    pub destination: Option<ProcessLog>,
}

impl Logging {
    /// Opens the log file again (logrotate moved it away: SIGUSR1).
    pub fn reopen(&self) {
        if let Some(f) = &self.file {
            if let Err(e) = f.reopen() {
                tracing::error!(file = %f.path.display(), error = %e, "cannot reopen the log file; writing on to the old one");
            }
        }
    }
}

/// Installs the process log for `config`; fails when `log.file` cannot be opened.
pub fn init(config: &Config) -> anyhow::Result<Logging> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let pinned = tracing_subscriber::EnvFilter::try_from_env(portico_config::LOG_FILTER_VAR).ok();
    let is_pinned = pinned.is_some();
    let filter = pinned.unwrap_or_else(|| tracing_subscriber::EnvFilter::new(&config.log.level));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let json = config.log.format == LogFormat::Json;
    let ansi = io::IsTerminal::is_terminal(&io::stderr());

    let (mut file, mut guard, mut syslog) = (None, None, None);
    match &config.log.file {
        Some(ProcessLog::File(path)) => {
            let f = ReopenFile::open(path)
                .with_context(|| format!("log.file: cannot open {}", path.display()))?;
            let (writer, g) = tracing_appender::non_blocking(FileWriter(Arc::clone(&f)));
            file = Some((f, writer));
            guard = Some(g);
        }
        Some(ProcessLog::SyslogUnix(path)) => {
            syslog = Some(Syslog::new(Target::Unix(path.clone()))?);
        }
        Some(ProcessLog::SyslogUdp(addr)) => {
            syslog = Some(Syslog::new(Target::Udp(*addr))?);
        }
        None => {}
    }
    let file_writer = file.as_ref().map(|(_, w)| w.clone());
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(json.then(|| {
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(io::stderr)
                .with_target(false)
        }))
        .with((!json).then(|| {
            tracing_subscriber::fmt::layer()
                .with_writer(io::stderr)
                .with_target(false)
                .with_ansi(ansi)
        }))
        .with(file_writer.clone().filter(|_| json).map(|w| {
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(w)
                .with_target(false)
        }))
        .with(file_writer.filter(|_| !json).map(|w| {
            tracing_subscriber::fmt::layer()
                .with_writer(w)
                .with_target(false)
                .with_ansi(false)
        }))
        .with(syslog.map(|s| {
            // syslog has its own timestamp and severity
            tracing_subscriber::fmt::layer()
                .with_writer(s)
                .with_target(false)
                .with_ansi(false)
                .with_level(false)
                .without_time()
        }))
        .try_init();
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(panic = %info, "a task panicked; its connection was closed, the process goes on");
    }));
    Ok(Logging {
        level: (!is_pinned).then_some(handle),
        file: file.map(|(f, _)| f),
        _guard: guard,
        destination: config.log.file.clone(),
    })
}

/// A log file that can be opened again at the same path.
struct ReopenFile {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

fn append(path: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

impl ReopenFile {
    fn open(path: &Path) -> io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            path: path.to_path_buf(),
            file: Mutex::new(append(path)?),
        }))
    }

    fn reopen(&self) -> io::Result<()> {
        let new = append(&self.path)?;
        *self.file.lock().unwrap_or_else(|p| p.into_inner()) = new;
        Ok(())
    }
}

/// What the background writer writes to.
struct FileWriter(Arc<ReopenFile>);

impl Write for FileWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0
            .file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush()
    }
}

enum Target {
    Unix(PathBuf),
    Udp(SocketAddr),
}

/// RFC 5424 messages, one datagram per event, facility daemon.
#[derive(Clone)]
struct Syslog(Arc<SyslogInner>);

struct SyslogInner {
    target: Target,
    unix: Option<UnixDatagram>,
    udp: Option<UdpSocket>,
    host: String,
}

impl Syslog {
    fn new(target: Target) -> anyhow::Result<Self> {
        let (unix, udp) = match &target {
            Target::Unix(_) => {
                let s = UnixDatagram::unbound().context("log.file: cannot open a Unix socket")?;
                s.set_nonblocking(true)?;
                (Some(s), None)
            }
            Target::Udp(addr) => {
                let bind: SocketAddr = if addr.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let s = UdpSocket::bind(bind).context("log.file: cannot open a UDP socket")?;
                s.set_nonblocking(true)?;
                (None, Some(s))
            }
        };
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "-".into());
        Ok(Self(Arc::new(SyslogInner {
            target,
            unix,
            udp,
            host,
        })))
    }
}

/// One event being formatted; sent when the formatter is done with it.
struct SyslogLine {
    syslog: Arc<SyslogInner>,
    severity: u8,
    buf: Vec<u8>,
}

impl Write for SyslogLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        let msg = String::from_utf8_lossy(&self.buf);
        let msg = msg.trim_end();
        if msg.is_empty() {
            return;
        }
        // <PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA MSG
        let line = format!(
            "<{}>1 {} {} portico {} - - {msg}",
            3 * 8 + u32::from(self.severity),
            portico_http::access_log::time_iso8601(std::time::SystemTime::now()),
            self.syslog.host,
            std::process::id(),
        );
        let s = &self.syslog;
        let _ = match (&s.target, &s.unix, &s.udp) {
            (Target::Unix(path), Some(sock), _) => sock.send_to(line.as_bytes(), path),
            (Target::Udp(addr), _, Some(sock)) => sock.send_to(line.as_bytes(), addr),
            _ => Ok(0),
        };
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine;

    fn make_writer(&'a self) -> Self::Writer {
        self.line(6)
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        let severity = match *meta.level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        self.line(severity)
    }
}

impl Syslog {
    fn line(&self, severity: u8) -> SyslogLine {
        SyslogLine {
            syslog: Arc::clone(&self.0),
            severity,
            buf: Vec::with_capacity(256),
        }
    }
}
