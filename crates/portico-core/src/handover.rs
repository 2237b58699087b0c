//! Listening sockets that cross a process boundary: taken at start from systemd's socket
//! activation or from the process that ran `portico upgrade`, and handed to a new binary.
//!
//! One mechanism serves both: the sockets arrive as descriptors 3, 4, … with
//! `LISTEN_FDS` naming how many (systemd's protocol, read by the `listenfd` crate; the
//! `LISTEN_PID` check applies when the variable is set, as systemd sets it). Each socket
//! is matched to a listener by the address it is bound to — not by its position or a
//! name — so a unit file's `ListenStream=` lines and the config's `listen` need not be
//! written in the same order, and an upgraded binary's config may list its listeners
//! differently.

use std::io;
use std::os::fd::OwnedFd;

use portico_config::ListenAddr;

use crate::listener::StdBound;

/// Listening sockets received at start, each with the address it is bound to.
#[derive(Default)]
pub struct Inherited {
    pub(crate) sockets: Vec<(ListenAddr, StdBound)>,
}

impl Inherited {
    /// The sockets passed in `LISTEN_FDS`, and a warning for each descriptor that is not
    /// a listening TCP or Unix stream socket (left alone). Clears the `LISTEN_*`
    /// variables, so nothing this process starts takes them for its own: call it before
    /// any thread starts (it changes the environment).
    pub fn from_env() -> (Self, Vec<String>) {
        let mut fds = listenfd::ListenFd::from_env();
        std::env::remove_var("LISTEN_FDNAMES");
        let mut sockets = Vec::new();
        let mut warnings = Vec::new();
        for i in 0..fds.len() {
            let fd = 3 + i;
            let taken = match fds.take_tcp_listener(i) {
                Ok(Some(l)) => adopt_tcp(l),
                Ok(None) => continue,
                Err(_) => match fds.take_unix_listener(i) {
                    Ok(Some(l)) => adopt_unix(l),
                    Ok(None) => continue,
                    Err(e) => Err(e),
                },
            };
            match taken {
                Ok(s) => sockets.push(s),
                Err(e) => warnings.push(format!(
                    "inherited descriptor {fd} is not usable as a listening socket: {e}"
                )),
            }
        }
        (Self { sockets }, warnings)
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// The addresses received, for the start-up log.
    pub fn addresses(&self) -> Vec<String> {
        self.sockets.iter().map(|(a, _)| a.to_string()).collect()
    }
}

fn adopt_tcp(l: std::net::TcpListener) -> io::Result<(ListenAddr, StdBound)> {
    l.set_nonblocking(true)?;
    Ok((ListenAddr::Tcp(l.local_addr()?), StdBound::Tcp(l)))
}

fn adopt_unix(l: std::os::unix::net::UnixListener) -> io::Result<(ListenAddr, StdBound)> {
    l.set_nonblocking(true)?;
    let path = l
        .local_addr()?
        .as_pathname()
        .map(|p| p.to_path_buf())
        .ok_or_else(|| io::Error::other("an unnamed or abstract Unix socket"))?;
    Ok((ListenAddr::Unix(path), StdBound::Unix(l)))
}

/// Descriptors for a new process: a duplicate of every socket of every running
/// endpoint (all of a port's SO_REUSEPORT sockets, so no accept queue is orphaned).
pub(crate) fn duplicates(sockets: &[StdBound]) -> io::Result<Vec<OwnedFd>> {
    sockets
        .iter()
        .map(|s| {
            Ok(match s {
                StdBound::Tcp(l) => OwnedFd::from(l.try_clone()?),
                StdBound::Unix(l) => OwnedFd::from(l.try_clone()?),
            })
        })
        .collect()
}
