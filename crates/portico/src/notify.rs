//! Telling others how the process is doing, in systemd's `sd_notify` protocol: one
//! datagram of `KEY=VALUE` lines to a Unix socket (a path, or an abstract name written
//! `@name`).
//!
//! Two listeners may want to know: systemd (`NOTIFY_SOCKET`, for a `Type=notify` unit:
//! READY, RELOADING, STOPPING, and MAINPID when an upgrade hands the service to a new
//! process), and the old process of `portico upgrade` (`PORTICO_UPGRADE_NOTIFY`), which
//! waits for READY (or a STATUS saying why not) before it stops accepting. The sd-notify
//! crate only sends to `NOTIFY_SOCKET`; the protocol is a few lines, so both targets go
//! through [`send`] here.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The variable naming the old process's socket in a process started by an upgrade.
pub const UPGRADE_VAR: &str = "PORTICO_UPGRADE_NOTIFY";

#[derive(Debug, Default)]
pub struct Notifier {
    /// systemd's socket, as `NOTIFY_SOCKET` gave it.
    systemd: Option<String>,
    /// The socket of the process that started this one by an upgrade.
    parent: Option<String>,
}

impl Notifier {
    /// Reads (and clears, so nothing started from here inherits them) `NOTIFY_SOCKET`
    /// and [`UPGRADE_VAR`]. Call before any thread starts: it changes the environment.
    pub fn from_env() -> Self {
        let take = |name: &str| {
            let v = std::env::var(name).ok().filter(|v| !v.is_empty());
            std::env::remove_var(name);
            v
        };
        Self {
            systemd: take("NOTIFY_SOCKET"),
            parent: take(UPGRADE_VAR),
        }
    }

    /// systemd's socket, for a process this one starts (an upgrade passes it on).
    pub fn systemd_socket(&self) -> Option<&str> {
        self.systemd.as_deref()
    }

    /// Whether this process was started by `portico upgrade`.
    pub fn is_upgrade(&self) -> bool {
        self.parent.is_some()
    }

    /// Serving: systemd's unit is up (its main process this one, after an upgrade), and
    /// the old process may stop accepting.
    pub fn ready(&self) {
        let pid = std::process::id();
        let msg = if self.parent.is_some() {
            format!("MAINPID={pid}\nREADY=1\n")
        } else {
            "READY=1\n".to_string()
        };
        self.to_systemd(&msg);
        if let Some(p) = &self.parent {
            report(p, &format!("READY=1\nMAINPID={pid}\n"));
        }
    }

    /// A reload starts (systemd ≥ 253 waits for the next READY=1).
    pub fn reloading(&self) {
        let usec = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
            .unwrap_or(0);
        self.to_systemd(&format!("RELOADING=1\nMONOTONIC_USEC={usec}\n"));
    }

    /// A reload ended, applied or refused: the service goes on.
    pub fn reloaded(&self) {
        self.to_systemd("READY=1\n");
    }

    pub fn stopping(&self) {
        self.to_systemd("STOPPING=1\n");
    }

    /// The start failed: the old process of an upgrade keeps serving and says why.
    pub fn failed(&self, reason: &str) {
        if let Some(p) = &self.parent {
            // one line: STATUS= ends at the newline
            report(p, &format!("STATUS={}\n", reason.replace('\n', "; ")));
        }
    }

    fn to_systemd(&self, msg: &str) {
        if let Some(s) = &self.systemd {
            report(s, msg);
        }
    }
}

fn report(socket: &str, msg: &str) {
    if let Err(e) = send(socket, msg) {
        tracing::warn!(socket, error = %e, "cannot notify {}", msg.trim_end().replace('\n', " "));
    }
}

/// The address `NOTIFY_SOCKET` names: a path, or `@name` in the abstract namespace.
pub fn address(socket: &str) -> io::Result<SocketAddr> {
    match socket.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())
        }
        None => SocketAddr::from_pathname(socket),
    }
}

/// Sends one notification datagram.
pub fn send(socket: &str, msg: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(msg.as_bytes(), &address(socket)?)?;
    Ok(())
}
