//! Idle connections kept per server for reuse (keep-alive), typed by the module.
//!
//! The pool is split into shards, one per worker thread: a connection is driven by the
//! runtime of the worker that opened it, so it is only handed out on that worker again.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

// tokio's clock: the same as std's, and a test's paused clock under test-util
use tokio::time::Instant;

/// How long connections returned over `max` may stay while the pool is busy: a burst of
/// answers that returns more connections than `max` at once is followed by a burst of
/// requests that takes them again, and closing the excess at once (nginx's way) makes
/// those requests open new connections — a connect, a handshake and a TIME_WAIT each.
/// After this long idle, the excess is closed (HAProxy purges idle connections
/// gradually, every `pool-purge-delay`, for the same reason).
pub const GRACE: Duration = Duration::from_secs(1);

/// How far past `max` a busy pool may grow (a bound on descriptors whatever the burst).
const OVERFLOW: usize = 8;

/// Bounded LIFOs of idle connections, one per shard. Entries older than `timeout` are
/// dropped; entries over `max` at once, or, with [`IdlePool::with_grace`], once they
/// have been idle for [`GRACE`].
#[derive(Debug)]
pub struct IdlePool<T> {
    max: usize,
    timeout: Duration,
    grace: bool,
    /// Each shared with the task that trims it.
    shards: Vec<Arc<Mutex<Shard<T>>>>,
}

#[derive(Debug)]
struct Shard<T> {
    /// Newest at the back; the excess leaves from the front (no shifting).
    items: VecDeque<(Instant, T)>,
    /// Whether a task will trim the excess once [`GRACE`] has passed.
    sweep: bool,
}

impl<T> Shard<T> {
    /// Drops the oldest entries over `max` that have been idle for [`GRACE`], and any
    /// over `max` × [`OVERFLOW`]; true when entries over `max` remain.
    fn trim(&mut self, max: usize, now: Instant) -> bool {
        while self.items.len() > max
            && self.items.front().is_some_and(|(since, _)| {
                now.duration_since(*since) >= GRACE
                    || self.items.len() > max.saturating_mul(OVERFLOW)
            })
        {
            self.items.pop_front();
        }
        self.items.len() > max
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<T: Send + 'static> IdlePool<T> {
    /// `max` idle connections in each of `shards` shards.
    pub fn new(max: usize, timeout: Duration, shards: usize) -> Self {
        Self {
            max,
            timeout,
            grace: false,
            shards: (0..shards.max(1))
                .map(|_| {
                    Arc::new(Mutex::new(Shard {
                        items: VecDeque::new(),
                        sweep: false,
                    }))
                })
                .collect(),
        }
    }

    /// Keeps the connections returned over `max` while the pool is busy, for [`GRACE`]:
    /// for servers that do not spend a worker on each idle connection (HTTP servers;
    /// not php-fpm, whose every kept connection holds a child).
    pub fn with_grace(mut self) -> Self {
        self.grace = true;
        self
    }

    fn cell(&self, shard: usize) -> &Arc<Mutex<Shard<T>>> {
        &self.shards[shard % self.shards.len()]
    }

    fn shard(&self, shard: usize) -> std::sync::MutexGuard<'_, Shard<T>> {
        lock(self.cell(shard))
    }

    /// The most recently returned connection of `shard` that is still fresh and `usable`.
    pub fn take(&self, shard: usize, mut usable: impl FnMut(&mut T) -> bool) -> Option<T> {
        let now = Instant::now();
        let mut s = self.shard(shard);
        while let Some((since, mut item)) = s.items.pop_back() {
            if now.duration_since(since) < self.timeout && usable(&mut item) {
                return Some(item);
            }
        }
        None
    }

    /// Returns a connection to `shard` for reuse. Over `max`, the oldest is closed; with
    /// [`IdlePool::with_grace`] it stays while the pool is busy, and a task on the
    /// caller's runtime closes the excess once it has been idle for [`GRACE`].
    pub fn put(&self, shard: usize, item: T) {
        if self.max == 0 {
            return;
        }
        let now = Instant::now();
        let mut s = self.shard(shard);
        s.items.push_back((now, item));
        if !s.trim(self.max, now) || s.sweep {
            return;
        }
        let rt = self
            .grace
            .then(tokio::runtime::Handle::try_current)
            .and_then(Result::ok);
        let Some(rt) = rt else {
            // no grace, or no runtime to wait on (a test's plain thread)
            while s.items.len() > self.max {
                s.items.pop_front();
            }
            return;
        };
        s.sweep = true;
        drop(s);
        let (cell, max) = (Arc::downgrade(self.cell(shard)), self.max);
        rt.spawn(async move {
            loop {
                tokio::time::sleep(GRACE).await;
                let Some(cell) = cell.upgrade() else { return };
                let mut s = lock(&cell);
                if !s.trim(max, Instant::now()) {
                    s.sweep = false;
                    return;
                }
            }
        });
    }

    /// Idle connections across all shards.
    pub fn idle(&self) -> usize {
        (0..self.shards.len())
            .map(|i| self.shard(i).items.len())
            .sum()
    }
}
