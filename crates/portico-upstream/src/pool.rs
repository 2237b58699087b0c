//! Idle connections kept per server for reuse (keep-alive), typed by the module.
//!
//! The pool is split into shards, one per worker thread: a connection is driven by the
//! runtime of the worker that opened it, so it is only handed out on that worker again.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bounded LIFOs of idle connections, one per shard. Entries older than `timeout` are
/// dropped.
#[derive(Debug)]
pub struct IdlePool<T> {
    max: usize,
    timeout: Duration,
    /// Newest at the back; a full shard drops from the front (no shifting: under
    /// load past `max` that happens on every return).
    shards: Vec<Mutex<VecDeque<(Instant, T)>>>,
}

impl<T> IdlePool<T> {
    /// `max` idle connections in each of `shards` shards.
    pub fn new(max: usize, timeout: Duration, shards: usize) -> Self {
        Self {
            max,
            timeout,
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(VecDeque::new()))
                .collect(),
        }
    }

    fn shard(&self, shard: usize) -> std::sync::MutexGuard<'_, VecDeque<(Instant, T)>> {
        self.shards[shard % self.shards.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently returned connection of `shard` that is still fresh and `usable`.
    pub fn take(&self, shard: usize, mut usable: impl FnMut(&mut T) -> bool) -> Option<T> {
        let now = Instant::now();
        let mut items = self.shard(shard);
        while let Some((since, mut item)) = items.pop_back() {
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
            items.pop_front();
        }
        items.push_back((Instant::now(), item));
    }

    /// Idle connections across all shards.
    pub fn idle(&self) -> usize {
        (0..self.shards.len()).map(|i| self.shard(i).len()).sum()
    }
}
