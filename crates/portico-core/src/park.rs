//! Idle connections parked off the runtime.
//!
//! A kept-alive connection waiting for its client's next request needs nothing but its
//! socket and what the module must know to go on. A task would hold its future, its
//! task cell and tokio's registration for as long as the client stays silent — most of
//! an idle connection's memory. So a module that sees its connection idle for a while
//! ends the connection's future with [`Served::Idle`]: the socket leaves tokio's
//! reactor and waits in this worker's *lot*, one epoll set of its own (`EPOLLONESHOT`)
//! watched by one task per worker, with its deadline in one heap of deadlines and one
//! timer for the earliest. When the client speaks (or hangs up), the socket goes back to
//! tokio and the module's `resume` runs in a new task; at the deadline the socket is
//! closed; at shutdown every parked connection is resumed at once, so the module drains
//! it as it drains any other.
//!
//! What a parked connection costs is its slot here (socket, guards, the module's
//! `resume` closure and what it captures) and one deadline — a few hundred bytes.
//! Only plain sockets park: a TLS session's state would have to come along.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use slab::Slab;
use tokio::io::unix::AsyncFd;
use tokio::net::{TcpStream, UnixStream};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::listener::{Held, WaitingGuard};
use crate::{BoxFuture, Idle, Served, Stream};

/// A socket out of tokio's reactor.
enum Plain {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Plain {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Plain::Tcp(s) => s.as_fd(),
            Plain::Unix(s) => s.as_fd(),
        }
    }

    /// Back into the current runtime's reactor.
    fn into_stream(self) -> std::io::Result<Stream> {
        Ok(match self {
            Plain::Tcp(s) => Stream::Tcp(TcpStream::from_std(s)?),
            Plain::Unix(s) => Stream::Unix(UnixStream::from_std(s)?),
        })
    }
}

struct Parked {
    socket: Plain,
    resume: crate::Resume,
    held: Held,
    /// Which parking of its slot this is: an epoll event or a deadline left by an
    /// earlier one (resumed since) must not reach this one.
    round: u32,
    _waiting: WaitingGuard,
}

/// The epoll set, as tokio's `AsyncFd` wants it.
struct Interest(Epoll);

impl AsRawFd for Interest {
    fn as_raw_fd(&self) -> RawFd {
        self.0 .0.as_raw_fd()
    }
}

/// One worker's parked connections.
struct Lot {
    epoll: AsyncFd<Interest>,
    /// Boxed: the slab's spare capacity (it grows by doubling) costs a pointer per slot.
    parked: Slab<Box<Parked>>,
    /// (deadline in ms from `epoch`, [`token`]), earliest first; entries of
    /// connections resumed since stay until they come up or the heap is compacted.
    deadlines: BinaryHeap<Reverse<(u64, u64)>>,
    epoch: Instant,
    /// Fires at `armed`, the earliest deadline.
    timer: Pin<Box<Sleep>>,
    armed: Option<u64>,
    rounds: u32,
    /// The lot's task, woken when a deadline earlier than its timer's is added.
    waker: Option<Waker>,
    events: Vec<EpollEvent>,
}

thread_local! {
    static LOT: RefCell<Option<Lot>> = const { RefCell::new(None) };
}

/// The epoll event's data and a deadline's tag: the slot and its round, so that
/// neither can ever reach a connection parked in that slot later.
fn token(key: usize, round: u32) -> u64 {
    (u64::from(round) << 32) | key as u64
}

fn untoken(t: u64) -> (usize, u32) {
    ((t & u64::from(u32::MAX)) as usize, (t >> 32) as u32)
}

impl Lot {
    // The one `unsafe` in Portico. tokio watches a file descriptor it did not open only
    // through `AsyncFd::register`, unsafe since tokio 1.5x (I/O safety: the fd must stay
    // open and the same while registered); no safe crate waits on an epoll set from a
    // tokio runtime. Keeping each idle socket registered with tokio instead would cost
    // its registration (256 B) per idle connection.
    #[allow(unsafe_code)]
    fn new() -> std::io::Result<Self> {
        let epoll = Interest(Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?);
        // SAFETY: `Interest` owns the epoll fd (an `OwnedFd`) and gives the AsyncFd that
        // same fd on every call; nothing else closes or replaces it, and the AsyncFd
        // owns the `Interest` until it drops it, so the fd is open and the same for the
        // whole registration.
        let epoll = unsafe { AsyncFd::register(epoll) }.map_err(std::io::Error::from)?;
        Ok(Self {
            epoll,
            parked: Slab::new(),
            deadlines: BinaryHeap::new(),
            epoch: Instant::now(),
            timer: Box::pin(tokio::time::sleep_until(Instant::now())),
            armed: None,
            rounds: 0,
            waker: None,
            events: vec![EpollEvent::empty(); 256],
        })
    }

    /// Parks `idle`; gives it back when it cannot be parked (a TLS stream, shutdown,
    /// an epoll error).
    fn park(&mut self, idle: Idle, held: Held) -> Result<(), (Idle, Held)> {
        if self.parked.len() >= u32::MAX as usize {
            return Err((idle, held));
        }
        let Idle {
            stream,
            until,
            resume,
        } = idle;
        let socket = match stream {
            Stream::Tcp(s) => s.into_std().map(Plain::Tcp),
            Stream::Unix(s) => s.into_std().map(Plain::Unix),
            tls @ Stream::Tls(_) => {
                let idle = Idle {
                    stream: tls,
                    until,
                    resume,
                };
                return Err((idle, held));
            }
        };
        // out of the reactor failed: the socket is gone with the error
        let socket = match socket {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "parking an idle connection failed: closed");
                return Ok(());
            }
        };
        let entry = self.parked.vacant_entry();
        let key = entry.key();
        self.rounds = self.rounds.wrapping_add(1);
        let round = self.rounds;
        let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLONESHOT;
        if let Err(e) = self
            .epoll
            .get_ref()
            .0
            .add(socket.fd(), EpollEvent::new(flags, token(key, round)))
        {
            tracing::debug!(error = %e, "parking an idle connection failed: resumed");
            return match socket.into_stream() {
                Ok(stream) => Err((
                    Idle {
                        stream,
                        until,
                        resume,
                    },
                    held,
                )),
                Err(_) => Ok(()),
            };
        }
        // whole ms, rounded up: never closed before its deadline
        let at = until
            .saturating_duration_since(self.epoch)
            .as_micros()
            .div_ceil(1000) as u64;
        self.deadlines.push(Reverse((at, token(key, round))));
        entry.insert(Box::new(Parked {
            socket,
            resume,
            _waiting: held.waiting(),
            held,
            round,
        }));
        if self.armed.is_none_or(|a| at < a) {
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }
        Ok(())
    }

    /// The slot of the connection `t` was made for, while it is still parked there.
    fn holding(&self, t: u64) -> Option<usize> {
        let (key, round) = untoken(t);
        self.parked
            .get(key)
            .filter(|p| p.round == round)
            .map(|_| key)
    }

    /// Takes the connection in `key` out of the lot (its epoll entry and timer gone).
    fn take(&mut self, key: usize) -> Option<Parked> {
        let p = self.parked.try_remove(key)?;
        let _ = self.epoll.get_ref().0.delete(p.socket.fd());
        Some(*p)
    }

    /// Closes the connections whose deadline passed; arms the timer for the next one.
    fn poll_deadlines(&mut self, cx: &mut Context<'_>) {
        loop {
            let now = Instant::now()
                .saturating_duration_since(self.epoch)
                .as_millis() as u64;
            while let Some(&Reverse((at, t))) = self.deadlines.peek() {
                if at > now {
                    break;
                }
                self.deadlines.pop();
                if let Some(key) = self.holding(t) {
                    // the client said nothing before its deadline: closed
                    self.parked.remove(key);
                }
            }
            // deadlines of resumed connections: dropped once they outnumber the parked
            if self.deadlines.len() > 2 * self.parked.len() + 64 {
                let mut deadlines = std::mem::take(&mut self.deadlines);
                deadlines.retain(|&Reverse((_, t))| self.holding(t).is_some());
                self.deadlines = deadlines;
            }
            let Some(&Reverse((next, ..))) = self.deadlines.peek() else {
                self.armed = None;
                return;
            };
            if self.armed != Some(next) {
                self.timer
                    .as_mut()
                    .reset(self.epoch + std::time::Duration::from_millis(next));
                self.armed = Some(next);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return;
            }
        }
    }

    /// The parked connections whose clients spoke, those whose deadline passed (dropped:
    /// closed), and a waker for what comes next.
    fn poll(&mut self, cx: &mut Context<'_>, out: &mut Vec<Parked>) {
        let mut events = std::mem::take(&mut self.events);
        loop {
            let mut guard = match self.epoll.poll_read_ready(cx) {
                Poll::Ready(Ok(guard)) => guard,
                Poll::Ready(Err(e)) => {
                    tracing::error!(error = %e, "parked connections: the epoll set failed");
                    break;
                }
                Poll::Pending => break,
            };
            let got = match guard.get_inner().0.wait(&mut events, EpollTimeout::ZERO) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "epoll_wait on parked connections failed");
                    0
                }
            };
            if got < events.len() {
                // all taken: the next readiness is a new one
                guard.clear_ready();
            }
            for ev in &events[..got] {
                if let Some(key) = self.holding(ev.data()) {
                    out.extend(self.take(key));
                }
            }
        }
        self.events = events;
        self.poll_deadlines(cx);
        self.waker = Some(cx.waker().clone());
    }

    /// Shutdown: every parked connection, to be resumed.
    fn close(mut self) -> Vec<Parked> {
        let keys: Vec<usize> = self.parked.iter().map(|(k, _)| k).collect();
        keys.into_iter().filter_map(|k| self.take(k)).collect()
    }
}

/// Drops the worker's lot with the task that runs it (closing what is parked), while
/// the runtime its epoll set is registered with is still there.
struct Clear;

impl Drop for Clear {
    fn drop(&mut self) {
        let _ = LOT.try_with(|l| l.borrow_mut().take());
    }
}

/// Runs this worker's lot until `shutdown`, then resumes what is parked; from then on
/// nothing parks. Started once per worker thread, on its runtime.
pub(crate) async fn run_lot(shutdown: CancellationToken) {
    match Lot::new() {
        Ok(lot) => LOT.with(|l| *l.borrow_mut() = Some(lot)),
        Err(e) => {
            tracing::warn!(error = %e, "no lot for idle connections on this worker: they keep their tasks");
            return;
        }
    }
    let _clear = Clear;
    let mut woken = Vec::new();
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    std::future::poll_fn(|cx| {
        let stop = cancelled.as_mut().poll(cx).is_ready();
        LOT.with(|l| {
            let mut l = l.borrow_mut();
            if stop {
                woken.extend(l.take().map(Lot::close).unwrap_or_default());
            } else if let Some(lot) = l.as_mut() {
                lot.poll(cx, &mut woken);
            }
        });
        // outside the lot's borrow: a resumed connection may park again
        for p in woken.drain(..) {
            resume(p);
        }
        if stop {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}

/// Hands a parked connection back to its module, in a task of its own.
fn resume(p: Parked) {
    let Parked {
        socket,
        resume,
        held,
        ..
    } = p;
    match socket.into_stream() {
        Ok(stream) => spawn(resume(stream), held),
        Err(e) => tracing::debug!(error = %e, "resuming a parked connection failed: closed"),
    }
}

/// Runs a connection's service future in a task of its own.
fn spawn(fut: BoxFuture, held: Held) {
    tokio::spawn(serve(fut, held));
}

/// Runs a connection's service future; parks what it leaves idle.
pub(crate) async fn serve(fut: BoxFuture, held: Held) {
    if let Served::Idle(idle) = fut.await {
        park(idle, held);
    }
}

/// Parks `idle` in this worker's lot; resumes it at once where it cannot park.
fn park(idle: Idle, held: Held) {
    if idle.until <= tokio::time::Instant::now() {
        return;
    }
    let refused = LOT.with(|l| match l.borrow_mut().as_mut() {
        Some(lot) => lot.park(idle, held).err(),
        None => Some((idle, held)),
    });
    if let Some((idle, held)) = refused {
        let Idle { stream, resume, .. } = idle;
        spawn(resume(stream), held);
    }
}
