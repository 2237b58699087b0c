//! Upgrading the binary without dropping a connection.
//!
//! On SIGUSR2 (which `portico upgrade` sends through the pid file) the running process
//! starts the new binary with every listening socket inherited as descriptors 3, 4, …
//! and `LISTEN_FDS` — systemd's socket-activation protocol, so the new process takes
//! them exactly as it takes systemd's ([`portico_core::Inherited`]) and binds nothing
//! that was handed over. It waits for the new process's `READY=1` on a datagram socket
//! of its own (the sd_notify protocol, [`crate::notify`]); only then does it stop
//! accepting and drain. A new process that exits, says why it cannot start, or is not
//! ready within `runtime.upgrade_timeout` is stopped, and this one goes on serving.
//!
//! `portico upgrade` talks to the running process through two files beside the pid
//! file: `PID_FILE.upgrade` (the binary to start, when `--binary` names one) and
//! `PID_FILE.upgrade-result` (`ready NEWPID` or `failed REASON`, written by the running
//! process when the attempt ends).

use std::ffi::OsString;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use command_fds::{CommandFdExt, FdMapping};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use portico_core::ListenerSet;
use tokio_util::sync::CancellationToken;

/// How this process was started: what an upgrade runs again (the same binary path and
/// arguments, from the same working directory, unless `--binary` names another).
#[derive(Debug, Clone)]
pub struct Invocation {
    pub binary: PathBuf,
    pub args: Vec<OsString>,
}

impl Invocation {
    pub fn current() -> Self {
        let mut argv = std::env::args_os();
        let arg0 = argv.next().map(PathBuf::from);
        // argv[0] as given (a path, or a name found in PATH): a binary replaced at that
        // path is the one started, as nginx does; /proc/self/exe would name the old one
        let binary = arg0
            .filter(|p| !p.as_os_str().is_empty())
            .or_else(|| std::env::current_exe().ok())
            .unwrap_or_else(|| PathBuf::from("portico"));
        Self {
            binary,
            args: argv.collect(),
        }
    }
}

/// The request file `portico upgrade` writes before SIGUSR2.
pub fn request_file(pid_file: &Path) -> PathBuf {
    with_suffix(pid_file, ".upgrade")
}

/// The outcome file the running process writes.
pub fn result_file(pid_file: &Path) -> PathBuf {
    with_suffix(pid_file, ".upgrade-result")
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Writes `text` to `path` whole or not at all (a temporary file renamed over it), so a
/// reader never sees half of it.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    portico_core::files::write_atomically(path, text.as_bytes(), 0o644)
}

/// The binary a pending `portico upgrade` asked for (and removes the request).
pub fn take_request(pid_file: Option<&Path>) -> Option<PathBuf> {
    let file = request_file(pid_file?);
    let text = std::fs::read_to_string(&file).ok()?;
    let _ = std::fs::remove_file(&file);
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| PathBuf::from(line))
}

/// Records the outcome for `portico upgrade`.
pub fn write_result(pid_file: Option<&Path>, outcome: &Result<u32, String>) {
    let Some(pid_file) = pid_file else { return };
    let text = match outcome {
        Ok(pid) => format!("ready {pid}\n"),
        Err(reason) => format!("failed {}\n", reason.replace('\n', "; ")),
    };
    let file = result_file(pid_file);
    if let Err(e) = write_atomically(&file, &text) {
        tracing::warn!(file = %file.display(), error = %e, "cannot write the upgrade outcome");
    }
}

static ATTEMPT: AtomicU64 = AtomicU64::new(0);

/// Starts `binary` on this process's listening sockets and waits until it is ready
/// (its pid), fails, or `timeout` passes; `cancel` (a SIGTERM meanwhile) stops it too.
/// On failure the new process is stopped and the reason returned.
pub async fn start_new(
    listeners: &ListenerSet,
    inv: &Invocation,
    binary: &Path,
    systemd_socket: Option<&str>,
    timeout: Duration,
    cancel: CancellationToken,
) -> Result<u32, String> {
    let fds = listeners
        .handover()
        .map_err(|e| format!("cannot duplicate the listening sockets: {e}"))?;
    let n = fds.len();
    let name = format!(
        "@portico-upgrade-{}-{}",
        std::process::id(),
        ATTEMPT.fetch_add(1, Ordering::Relaxed)
    );
    let sock = crate::notify::address(&name)
        .and_then(|a| UnixDatagram::bind_addr(&a))
        .and_then(|s| {
            s.set_nonblocking(true)?;
            tokio::net::UnixDatagram::from_std(s)
        })
        .map_err(|e| format!("cannot open the readiness socket: {e}"))?;
    let mappings = fds
        .into_iter()
        .enumerate()
        .map(|(i, fd)| FdMapping {
            parent_fd: fd,
            child_fd: 3 + i as i32,
        })
        .collect();
    let mut cmd = tokio::process::Command::new(binary);
    cmd.args(&inv.args)
        .env("LISTEN_FDS", n.to_string())
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env(crate::notify::UPGRADE_VAR, &name)
        .stdin(Stdio::null());
    match systemd_socket {
        Some(s) => cmd.env("NOTIFY_SOCKET", s),
        None => cmd.env_remove("NOTIFY_SOCKET"),
    };
    cmd.fd_mappings(mappings)
        .map_err(|_| "descriptor mapping collision".to_string())?;
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let pid = child.id().unwrap_or(0);
    tracing::info!(pid, binary = %binary.display(), sockets = n, "upgrade: new process started; waiting for it to be ready");
    let deadline = tokio::time::Instant::now() + timeout;
    let mut said = None::<String>;
    let mut buf = vec![0u8; 4096];
    let failure = loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                // what it said just before it exited may still wait in the socket
                while let Ok(len) = sock.try_recv(&mut buf) {
                    let msg = String::from_utf8_lossy(&buf[..len]);
                    if let Some(r) = msg.lines().find_map(|l| l.strip_prefix("STATUS=")) {
                        said = Some(r.to_string());
                    }
                }
                break match said {
                    Some(r) => format!("the new process exited ({status}) before it was ready: {r}"),
                    None => format!("the new process exited ({status}) before it was ready"),
                };
            }
            got = sock.recv(&mut buf) => {
                let Ok(len) = got else { continue };
                let msg = String::from_utf8_lossy(&buf[..len]);
                for line in msg.lines() {
                    if line == "READY=1" {
                        return Ok(pid);
                    }
                    if let Some(r) = line.strip_prefix("STATUS=") {
                        said = Some(r.to_string());
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                break format!("the new process was not ready within {timeout:?}");
            }
            _ = cancel.cancelled() => break "cancelled: this process is stopping".to_string(),
        }
    };
    stop(&mut child, pid).await;
    Err(failure)
}

/// Stops a new process that failed: SIGTERM (it may have started accepting), then
/// SIGKILL after 5 s.
async fn stop(child: &mut tokio::process::Child, pid: u32) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(p) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// Sends `sig` to the process the pid file names; returns its pid.
pub fn signal_pid_file(pid_file: &Path, sig: Signal) -> anyhow::Result<i32> {
    let pid = std::fs::read_to_string(pid_file)
        .with_context(|| format!("cannot read {}", pid_file.display()))?;
    let pid: i32 = pid
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .with_context(|| format!("{} does not hold a pid", pid_file.display()))?;
    kill(Pid::from_raw(pid), sig)
        .with_context(|| format!("cannot signal process {pid} (from {})", pid_file.display()))?;
    Ok(pid)
}

/// `portico upgrade`: asks the process the pid file names to start `binary` (or the
/// binary it was started from) and waits for the outcome.
pub fn command(pid_file: &Path, binary: Option<PathBuf>, wait: Duration) -> anyhow::Result<()> {
    let result = result_file(pid_file);
    let _ = std::fs::remove_file(&result);
    let request = request_file(pid_file);
    match binary {
        Some(b) => {
            let b = std::path::absolute(&b).unwrap_or(b);
            anyhow::ensure!(b.is_file(), "{} is not a file", b.display());
            std::fs::write(&request, format!("{}\n", b.display()))
                .with_context(|| format!("cannot write {}", request.display()))?;
        }
        None => {
            let _ = std::fs::remove_file(&request);
        }
    }
    let old = signal_pid_file(pid_file, Signal::SIGUSR2)?;
    let deadline = Instant::now() + wait;
    let outcome = || -> Option<anyhow::Result<()>> {
        let text = std::fs::read_to_string(&result).ok()?;
        let text = text.trim();
        if let Some(pid) = text.strip_prefix("ready ") {
            println!(
                "portico upgrade: the new process {pid} is ready and serving; the old process {old} stops accepting and drains"
            );
            return Some(Ok(()));
        }
        let reason = text.strip_prefix("failed ")?;
        Some(Err(anyhow::anyhow!(
            "the upgrade failed, process {old} keeps serving: {reason}"
        )))
    };
    loop {
        if let Some(done) = outcome() {
            return done;
        }
        if kill(Pid::from_raw(old), None).is_err() {
            // it may have written the outcome just before it ended
            return outcome().unwrap_or_else(|| {
                Err(anyhow::anyhow!(
                    "process {old} exited before reporting the upgrade's outcome"
                ))
            });
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no outcome from process {old} within {wait:?} (see its log)"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}
