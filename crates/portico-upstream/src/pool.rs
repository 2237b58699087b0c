//! Idle connections kept per server for reuse (keep-alive), typed by the module.
//!
//! The pool is split into shards, one per worker thread: a connection is driven by the
//! runtime of the worker that opened it, so it is only handed out on that worker again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bounded LIFOs of idle connections, one per shard. Entries older than `timeout` are
/// dropped.
#[derive(Debug)]
pub struct IdlePool<T> {
    max: usize,
    timeout: Duration,
    shards: Vec<Mutex<Vec<(Instant, T)>>>,
}

impl<T> IdlePool<T> {
    /// `max` idle connections in each of `shards` shards.
    pub fn new(max: usize, timeout: Duration, shards: usize) -> Self {
        Self {
            max,
            timeout,
            shards: (0..shards.max(1)).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    fn shard(&self, shard: usize) -> std::sync::MutexGuard<'_, Vec<(Instant, T)>> {
        self.shards[shard % self.shards.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently returned connection of `shard` that is still fresh and `usable`.
    pub fn take(&self, shard: usize, mut usable: impl FnMut(&mut T) -> bool) -> Option<T> {
        let now = Instant::now();
        let mut items = self.shard(shard);
        while let Some((since, mut item)) = items.pop() {
            if now.duration_since(since) < self.timeout && usable(&mut item) {
                return Some(item);
            }
        }
        None
    }

    /// Returns a connection to `shard` for reuse; the oldest is dropped when full.
    pub fn put(&self, shard: usize, item: T) {
        if self.max == 0 {
            return;
        }
        let mut items = self.shard(shard);
        if items.len() >= self.max {
            items.remove(0);
        }
        items.push((Instant::now(), item));
    }

    /// Idle connections across all shards.
    pub fn idle(&self) -> usize {
        (0..self.shards.len()).map(|i| self.shard(i).len()).sum()
    }
}
