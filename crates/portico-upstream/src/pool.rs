//! Idle connections kept per server for reuse (keep-alive), typed by the module.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A bounded LIFO of idle connections. Entries older than `timeout` are dropped.
#[derive(Debug)]
pub struct IdlePool<T> {
    max: usize,
    timeout: Duration,
    items: Mutex<Vec<(Instant, T)>>,
}

impl<T> IdlePool<T> {
    pub fn new(max: usize, timeout: Duration) -> Self {
        Self {
            max,
            timeout,
            items: Mutex::new(Vec::new()),
        }
    }

    /// The most recently returned connection that is still fresh and `usable`.
    pub fn take(&self, usable: impl Fn(&T) -> bool) -> Option<T> {
        let now = Instant::now();
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((since, item)) = items.pop() {
            if now.duration_since(since) < self.timeout && usable(&item) {
                return Some(item);
            }
        }
        None
    }

    /// Returns a connection for reuse; dropped when the pool is full.
    pub fn put(&self, item: T) {
        if self.max == 0 {
            return;
        }
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        if items.len() >= self.max {
            items.remove(0);
        }
        items.push((Instant::now(), item));
    }

    pub fn idle(&self) -> usize {
        self.items.lock().map(|i| i.len()).unwrap_or(0)
    }
}
