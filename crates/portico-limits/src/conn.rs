//! nginx's `limit_conn`: at most `max` requests (HTTP/2 streams count one each) or mail
//! sessions in flight per key. A [`ConnGuard`] holds a place until dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use portico_config::ConnLimitConfig;

use crate::{shard_of, KeyHasher, TableHasher, SHARDS};

#[derive(Debug, Default)]
pub struct ConnStats {
    pub passed: AtomicU64,
    pub refused: AtomicU64,
}

pub struct ConnLimiter {
    pub config: ConnLimitConfig,
    /// In flight per key hash; a key leaves when its count falls to zero, so the table
    /// holds at most as many keys as there are requests in flight.
    shards: Box<[Mutex<HashMap<u64, u32, TableHasher>>]>,
    hasher: KeyHasher,
    pub stats: ConnStats,
}

impl std::fmt::Debug for ConnLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnLimiter")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

/// One place under a limit, given back when dropped.
#[derive(Debug)]
pub struct ConnGuard {
    limiter: Arc<ConnLimiter>,
    hash: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut shard = self.limiter.shards[shard_of(self.hash)]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = shard.get_mut(&self.hash) {
            *n -= 1;
            if *n == 0 {
                shard.remove(&self.hash);
            }
        }
    }
}

impl ConnLimiter {
    pub fn new(config: &ConnLimitConfig) -> Self {
        Self {
            config: config.clone(),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(TableHasher::default())))
                .collect(),
            hasher: KeyHasher::new(),
            stats: ConnStats::default(),
        }
    }

    /// A place for `key`, or `None` when `max` are in flight.
    pub fn acquire(self: &Arc<Self>, key: &[u8]) -> Option<ConnGuard> {
        let hash = self.hasher.hash(key);
        let mut shard = self.shards[shard_of(hash)]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let n = shard.entry(hash).or_insert(0);
        if *n >= self.config.max {
            drop(shard);
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *n += 1;
        drop(shard);
        self.stats.passed.fetch_add(1, Ordering::Relaxed);
        Some(ConnGuard {
            limiter: Arc::clone(self),
            hash,
        })
    }

    /// Keys with requests in flight.
    pub fn keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_in_flight_per_key() {
        let l = Arc::new(ConnLimiter::new(&ConnLimitConfig {
            name: "t".into(),
            key: portico_config::KeyTemplate::parse("$remote_addr").unwrap(),
            max: 2,
            status: 503,
            log_level: portico_config::LogLevel::Error,
        }));
        let a1 = l.acquire(b"a");
        let a2 = l.acquire(b"a");
        assert!(a1.is_some() && a2.is_some());
        assert!(l.acquire(b"a").is_none());
        assert!(l.acquire(b"b").is_some());
        drop(a1);
        let a3 = l.acquire(b"a");
        assert!(a3.is_some());
        drop((a2, a3));
        assert_eq!(l.keys(), 0, "a key leaves with its last request");
        assert_eq!(l.stats.refused.load(Ordering::Relaxed), 1);
    }
}
