//! nginx's `limit_req`: a leaky bucket per key. Each key keeps its `excess` (requests
//! above the rate, in thousandths) and the time of its last accepted request; a
//! request adds one, time drains `rate`. Over `burst` the request is refused (and the
//! bucket left as it was); within it the request passes at once (`nodelay`) or is
//! delayed until the excess has drained (nginx's default). The arithmetic is nginx's
//! (`ngx_http_limit_req_lookup`), in milliseconds and thousandths of a request, so a
//! burst is let through or refused exactly as nginx does.
//!
//! Not governor: its GCRA lets a burst through at once (nodelay only: no delayed mode
//! to match nginx's default), and its keyed store grows until `retain_recent` is
//! called, with no bound on the number of keys. This table is bounded (`keys`, least
//! recently used evicted) and its memory per key is fixed.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;
use portico_config::RateLimitConfig;

use crate::{shard_of, KeyHasher, TableHasher, SHARDS};

/// One key's bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Requests over the rate, in thousandths.
    excess: u64,
    /// Milliseconds since the limiter's epoch of the last accepted request.
    last: u64,
}

/// What a limit says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Within the burst, without nodelay: go on after this long.
    Delay(Duration),
    /// Over the burst: refuse; one more request would pass after `retry_after`.
    Refuse {
        retry_after: Duration,
    },
}

/// Counters for /status and /metrics.
#[derive(Debug, Default)]
pub struct RateStats {
    pub passed: AtomicU64,
    pub delayed: AtomicU64,
    pub refused: AtomicU64,
    /// Keys dropped to make room (the table was full).
    pub evicted: AtomicU64,
}

pub struct RateLimiter {
    pub config: RateLimitConfig,
    /// `store`: the bucket shared through Redis (this table is the fallback).
    pub store: Option<Arc<crate::store::RedisStore>>,
    shards: Box<[Mutex<LruCache<u64, Bucket, TableHasher>>]>,
    hasher: KeyHasher,
    epoch: Instant,
    pub stats: RateStats,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A limit without a store (or with one not yet connected: see
    /// [`RateLimiter::with_store`]).
    pub fn new(config: &RateLimitConfig) -> Self {
        let per_shard = config.keys.div_ceil(SHARDS).max(1);
        let cap = NonZeroUsize::new(per_shard).unwrap_or(NonZeroUsize::MIN);
        Self {
            store: None,
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::with_hasher(cap, TableHasher::default())))
                .collect(),
            hasher: KeyHasher::new(),
            epoch: Instant::now(),
            stats: RateStats::default(),
            config: RateLimitConfig {
                rate_milli: config.rate_milli.max(1),
                ..config.clone()
            },
        }
    }

    /// The limit with its `store` (the URL checked; connecting is left to the caller,
    /// [`crate::store::RedisStore::connect`]).
    pub fn with_store(config: &RateLimitConfig) -> Result<Self, String> {
        let store = match &config.store {
            Some(url) => Some(Arc::new(crate::store::RedisStore::new(url)?)),
            None => None,
        };
        Ok(Self {
            store,
            ..Self::new(config)
        })
    }

    /// Decides one request: the shared bucket when there is a store and it answers in
    /// time, else this process's table (kept current on every request either way).
    pub async fn decide(&self, key: &[u8], commit: bool) -> Verdict {
        let Some(store) = &self.store else {
            return self.check(key, commit);
        };
        let local = self.check_at(key, self.now_ms(), commit, false);
        let c = &self.config;
        let shared = store
            .check(key, &c.name, c.rate_milli, c.burst, c.nodelay, commit)
            .await;
        let v = shared.unwrap_or(local);
        self.count(v);
        v
    }

    fn count(&self, v: Verdict) {
        let c = match v {
            Verdict::Pass => &self.stats.passed,
            Verdict::Delay(_) => &self.stats.delayed,
            Verdict::Refuse { .. } => &self.stats.refused,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Decides one request for `key` and, unless refused, counts it (`commit`); with
    /// `commit = false` the bucket is only looked at (nginx checks every limit of a
    /// request first and counts it in all of them only if none refuses).
    pub fn check(&self, key: &[u8], commit: bool) -> Verdict {
        self.check_at(key, self.now_ms(), commit, true)
    }

    fn check_at(&self, key: &[u8], now: u64, commit: bool, counted: bool) -> Verdict {
        let hash = self.hasher.hash(key);
        let mut shard = self.shards[shard_of(hash)]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let rate = self.config.rate_milli;
        let burst = self.config.burst * 1000;
        let (excess, known) = match shard.get(&hash) {
            Some(b) => {
                // nginx: excess - rate * ms / 1000 + 1000, then at least 0
                let ms = now.saturating_sub(b.last);
                let drained = rate.saturating_mul(ms) / 1000;
                ((b.excess + 1000).saturating_sub(drained), true)
            }
            None => (0, false),
        };
        // nginx: a new key's first request has no excess; one over `burst` is refused
        if excess > burst {
            if counted {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
            }
            // after `wait` ms, excess - rate*wait/1000 + ... <= burst
            let over = excess - burst;
            let wait_ms = (over * 1000).div_ceil(rate);
            return Verdict::Refuse {
                retry_after: Duration::from_millis(wait_ms),
            };
        }
        if commit {
            let bucket = Bucket { excess, last: now };
            if known {
                if let Some(b) = shard.get_mut(&hash) {
                    *b = bucket;
                }
            } else if shard.push(hash, bucket).is_some() {
                self.stats.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        let v = if self.config.nodelay || excess == 0 {
            Verdict::Pass
        } else {
            Verdict::Delay(Duration::from_millis(excess * 1000 / rate))
        };
        if counted {
            self.count(v);
        }
        v
    }

    /// Keys in the table now.
    pub fn keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

/// What several limits say about one request together.
#[derive(Debug)]
pub enum Combined<'a> {
    /// Every limit lets it through; wait `delay` first (the longest of theirs).
    Pass { delay: Duration },
    Refused {
        by: &'a RateLimiter,
        retry_after: Duration,
    },
}

/// Checks one request against `limits` with its `keys` (one per limit; an empty key is
/// not limited, as nginx): every limit is looked at first, and the request is counted
/// in all of them only if none refuses (nginx's limit_req order).
pub async fn check_all<'a>(limits: &'a [Arc<RateLimiter>], keys: &[Vec<u8>]) -> Combined<'a> {
    let last = limits.len().saturating_sub(1);
    let mut delay = Duration::ZERO;
    for (i, (l, key)) in limits.iter().zip(keys).enumerate() {
        if key.is_empty() {
            continue;
        }
        match l.decide(key, i == last).await {
            Verdict::Pass => {}
            Verdict::Delay(d) => delay = delay.max(d),
            Verdict::Refuse { retry_after } => return Combined::Refused { by: l, retry_after },
        }
    }
    for (l, key) in limits.iter().zip(keys).take(last) {
        if !key.is_empty() {
            l.decide(key, true).await;
        }
    }
    Combined::Pass { delay }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_config::parse_rate;

    fn limiter(rate: &str, burst: u64, nodelay: bool, keys: usize) -> RateLimiter {
        RateLimiter::new(&RateLimitConfig {
            name: "t".into(),
            key: portico_config::KeyTemplate::parse("$remote_addr").unwrap(),
            rate_milli: parse_rate(rate).unwrap(),
            burst,
            nodelay,
            keys,
            status: 429,
            log_level: portico_config::LogLevel::Error,
            store: None,
        })
    }

    #[test]
    fn a_burst_at_one_instant_passes_burst_plus_one() {
        let l = limiter("10r/s", 5, true, 100);
        let passed = (0..20)
            .filter(|_| l.check_at(b"a", 1000, true, true) == Verdict::Pass)
            .count();
        assert_eq!(passed, 6);
        // another key has its own bucket
        assert_eq!(l.check_at(b"b", 1000, true, true), Verdict::Pass);
        // 100 ms later one more fits (10 r/s)
        assert_eq!(l.check_at(b"a", 1100, true, true), Verdict::Pass);
        assert!(matches!(
            l.check_at(b"a", 1100, true, true),
            Verdict::Refuse { .. }
        ));
    }

    #[test]
    fn without_nodelay_excess_is_delayed_to_the_rate() {
        let l = limiter("10r/s", 3, false, 100);
        let v: Vec<Verdict> = (0..5).map(|_| l.check_at(b"a", 0, true, true)).collect();
        assert_eq!(
            v[..4],
            [
                Verdict::Pass,
                Verdict::Delay(Duration::from_millis(100)),
                Verdict::Delay(Duration::from_millis(200)),
                Verdict::Delay(Duration::from_millis(300)),
            ]
        );
        assert!(matches!(v[4], Verdict::Refuse { .. }));
    }

    #[test]
    fn retry_after_is_when_one_more_would_pass() {
        let l = limiter("2r/s", 0, true, 100);
        assert_eq!(l.check_at(b"a", 0, true, true), Verdict::Pass);
        let Verdict::Refuse { retry_after } = l.check_at(b"a", 100, true, true) else {
            panic!("refused")
        };
        assert_eq!(retry_after, Duration::from_millis(400));
        assert!(matches!(
            l.check_at(b"a", 499, true, true),
            Verdict::Refuse { .. }
        ));
        assert_eq!(l.check_at(b"a", 500, true, true), Verdict::Pass);
    }

    #[test]
    fn a_look_without_commit_counts_nothing() {
        let l = limiter("1r/s", 0, true, 100);
        for _ in 0..5 {
            assert_eq!(l.check_at(b"a", 0, false, true), Verdict::Pass);
        }
        assert_eq!(l.check_at(b"a", 0, true, true), Verdict::Pass);
        assert!(matches!(
            l.check_at(b"a", 0, true, true),
            Verdict::Refuse { .. }
        ));
    }

    #[test]
    fn the_table_is_bounded_and_keeps_recent_keys() {
        let l = limiter("1r/s", 0, true, 160);
        for i in 0..10_000u32 {
            l.check_at(&i.to_be_bytes(), 0, true, true);
        }
        assert!(l.keys() <= 160, "{}", l.keys());
        assert!(l.stats.evicted.load(Ordering::Relaxed) >= 10_000 - 160);
        // the most recent key is still limited
        assert!(matches!(
            l.check_at(&9_999u32.to_be_bytes(), 0, true, true),
            Verdict::Refuse { .. }
        ));
    }

    proptest::proptest! {
        /// Against a model of nginx's formula with floats: the same verdicts.
        #[test]
        fn matches_nginx_formula(rate in 1u64..50, burst in 0u64..10, gaps in proptest::collection::vec(0u64..400, 1..60)) {
            let l = limiter(&format!("{rate}r/s"), burst, true, 10);
            let (mut excess, mut last) = (0i64, 0u64);
            let mut first = true;
            let mut now = 0u64;
            for g in gaps {
                now += g;
                let e = if first { 0 } else {
                    (excess - (rate as i64 * 1000) * (now - last) as i64 / 1000 + 1000).max(0)
                };
                let want_pass = e <= (burst * 1000) as i64;
                let got = l.check_at(b"k", now, true, true);
                proptest::prop_assert_eq!(got == Verdict::Pass, want_pass);
                if want_pass { excess = e; last = now; first = false; }
            }
        }
    }
}
