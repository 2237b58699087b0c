//! `store = "redis://…"`: a rate limit shared by every Portico instance using one Redis.
//! The bucket is the same nginx arithmetic, run atomically in Redis (a Lua script, on
//! Redis's own clock, so instances with skewed clocks still agree); each key expires
//! once its excess has drained.
//!
//! Redis is never allowed to slow a request or fail it: an answer must come within
//! [`BOUND`], else (and while Redis is unreachable) the process's own table decides —
//! kept up to date on every request, so falling back continues from what this process
//! saw — and the fallback is logged (at most every [`LOG_EVERY`]) and counted in
//! /status. One multiplexed connection per process (redis-rs's ConnectionManager),
//! reconnected in the background.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::rate::Verdict;

/// The longest a request waits for Redis.
pub const BOUND: Duration = Duration::from_millis(20);
/// At most one fallback log line per limit this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'e', 'l')
local excess = 0
if b[1] then
  local ms = now - tonumber(b[2])
  if ms < 0 then ms = 0 end
  excess = tonumber(b[1]) + 1000 - math.floor(rate * ms / 1000)
  if excess < 0 then excess = 0 end
  if excess > burst then return {2, excess - burst} end
end
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], 'e', excess, 'l', now)
  redis.call('PEXPIRE', KEYS[1], math.floor((excess + 1000) * 1000 / rate) + 1000)
end
if excess == 0 or ARGV[4] == '1' then return {0, 0} end
return {1, excess}
"#;

/// The store's state, for /status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreState {
    Connecting,
    Ok,
    Unreachable,
}

impl StoreState {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreState::Connecting => "connecting",
            StoreState::Ok => "ok",
            StoreState::Unreachable => "unreachable",
        }
    }
}

pub struct RedisStore {
    pub url: String,
    client: redis::Client,
    conn: Mutex<Option<ConnectionManager>>,
    script: redis::Script,
    state: AtomicU8,
    /// Requests decided by the local table because Redis did not answer in time.
    pub fallbacks: AtomicU64,
    last_log: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Checks the URL; the connection is made in the background ([`RedisStore::connect`]).
    pub fn new(url: &str) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("store {url:?}: {e}"))?;
        Ok(Self {
            url: url.to_string(),
            client,
            conn: Mutex::new(None),
            script: redis::Script::new(SCRIPT),
            state: AtomicU8::new(0),
            fallbacks: AtomicU64::new(0),
            last_log: Mutex::new(None),
        })
    }

    pub fn state(&self) -> StoreState {
        match self.state.load(Ordering::Relaxed) {
            1 => StoreState::Ok,
            2 => StoreState::Unreachable,
            _ => StoreState::Connecting,
        }
    }

    fn set_state(&self, s: StoreState) {
        let v = match s {
            StoreState::Connecting => 0,
            StoreState::Ok => 1,
            StoreState::Unreachable => 2,
        };
        self.state.store(v, Ordering::Relaxed);
    }

    /// Connects, retrying every second until it succeeds or the store is dropped (run
    /// as a task; the connection manager reconnects by itself afterwards).
    pub async fn connect(store: std::sync::Weak<Self>) {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(1))
            .set_response_timeout(Duration::from_secs(1))
            .set_number_of_retries(1);
        loop {
            let Some(this) = store.upgrade() else {
                return;
            };
            let client = this.client.clone();
            drop(this);
            let made = ConnectionManager::new_with_config(client, config.clone()).await;
            let Some(this) = store.upgrade() else {
                return;
            };
            match made {
                Ok(c) => {
                    *this.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(c);
                    this.set_state(StoreState::Ok);
                    tracing::info!(store = %this.url, "rate limit store connected");
                    return;
                }
                Err(e) => {
                    this.set_state(StoreState::Unreachable);
                    this.log_fallback(&e.to_string());
                    drop(this);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// The shared bucket's verdict, or `None` if Redis did not give one within
    /// [`BOUND`] (the caller then asks its local table).
    pub async fn check(
        &self,
        key: &[u8],
        name: &str,
        rate_milli: u64,
        burst: u64,
        nodelay: bool,
        commit: bool,
    ) -> Option<Verdict> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(mut conn) = conn else {
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let mut redis_key = format!("portico:rl:{name}:").into_bytes();
        redis_key.extend_from_slice(key);
        let mut call = self.script.key(redis_key);
        call.arg(rate_milli)
            .arg(burst * 1000)
            .arg(u8::from(commit))
            .arg(u8::from(nodelay));
        let answer: Result<redis::RedisResult<(u8, u64)>, _> =
            tokio::time::timeout(BOUND, call.invoke_async(&mut conn)).await;
        let (kind, value) = match answer {
            Ok(Ok(v)) => {
                if self.state() != StoreState::Ok {
                    tracing::warn!(store = %self.url, limit = name, "rate limit store reachable again: the limit is shared");
                }
                self.set_state(StoreState::Ok);
                v
            }
            Ok(Err(e)) => {
                self.set_state(StoreState::Unreachable);
                self.fallbacks.fetch_add(1, Ordering::Relaxed);
                self.log_fallback(&e.to_string());
                return None;
            }
            Err(_) => {
                self.fallbacks.fetch_add(1, Ordering::Relaxed);
                self.log_fallback(&format!("no answer within {BOUND:?}"));
                return None;
            }
        };
        let rate = rate_milli.max(1);
        Some(match kind {
            0 => Verdict::Pass,
            1 => Verdict::Delay(Duration::from_millis(value * 1000 / rate)),
            _ => Verdict::Refuse {
                retry_after: Duration::from_millis((value * 1000).div_ceil(rate)),
            },
        })
    }

    fn log_fallback(&self, why: &str) {
        let mut last = self.last_log.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(store = %self.url, reason = why,
                "rate limit store unreachable: each Portico process applies the limit alone until it is back");
        }
    }
}
