//! Edge policy that any protocol module applies the same way: keyed rate limits
//! ([`rate::RateLimiter`], nginx's `limit_req`), keyed concurrency limits
//! ([`conn::ConnLimiter`], nginx's `limit_conn`) and access lists ([`access::AccessList`],
//! nginx's `allow`/`deny`). The interface is small on purpose: a module renders the key
//! (the HTTP module with its template engine, mail from the client address), asks, and
//! acts on the [`rate::Verdict`] or holds the [`conn::ConnGuard`] for as long as the
//! request (or session) lasts.
//!
//! Tables are shared by every worker thread of the process (sharded mutexes), so a
//! client spreading its requests over connections on several workers gets the
//! configured rate, not a multiple of it. Keys are stored as 64-bit hashes (seeded per
//! process), so an entry costs the same whatever the key's length.

pub mod access;
pub mod conn;
pub mod htpasswd;
pub mod maps;
pub mod rate;
pub mod store;

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use portico_config::Config;

/// The edge policy of one config generation: limits and maps, by name.
#[derive(Debug, Default, Clone)]
pub struct Limiters {
    pub rate: BTreeMap<String, Arc<rate::RateLimiter>>,
    pub conn: BTreeMap<String, Arc<conn::ConnLimiter>>,
    pub maps: Arc<maps::Maps>,
}

impl Limiters {
    /// The limits `config` defines. One whose settings did not change is kept, with its
    /// keys and counters (nginx keeps a zone across reloads).
    /// Fails when a map cannot be compiled.
    pub fn build(config: &Config, previous: &Limiters) -> Result<Self, String> {
        let mut rate = BTreeMap::new();
        for (name, c) in &config.rate_limits {
            let kept = previous.rate.get(name).filter(|l| &l.config == c);
            let l = match kept {
                Some(l) => Arc::clone(l),
                None => {
                    let l = Arc::new(rate::RateLimiter::with_store(c)?);
                    if let Some(s) = &l.store {
                        // in the background: a request never waits for the connection
                        tokio::spawn(store::RedisStore::connect(Arc::downgrade(s)));
                    }
                    l
                }
            };
            rate.insert(name.clone(), l);
        }
        let conn = config
            .conn_limits
            .iter()
            .map(|(name, c)| {
                let kept = previous.conn.get(name).filter(|l| &l.config == c);
                let l = kept
                    .cloned()
                    .unwrap_or_else(|| Arc::new(conn::ConnLimiter::new(c)));
                (name.clone(), l)
            })
            .collect();
        Ok(Self {
            rate,
            conn,
            maps: Arc::new(maps::Maps::build(&config.maps)?),
        })
    }
}

/// Shards per table: enough that workers rarely meet on one lock.
const SHARDS: usize = 16;

/// The per-process hasher of keys (seeded at random: clients cannot aim collisions).
#[derive(Clone)]
struct KeyHasher(foldhash::fast::RandomState);

impl KeyHasher {
    fn new() -> Self {
        Self(foldhash::fast::RandomState::default())
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.0.hash_one(key)
    }
}

/// The tables' hasher: keys are hashes already (of the request's key, seeded); one
/// multiply spreads them again, since their top bits chose the shard (and hashbrown
/// reads the top bits too).
#[derive(Default, Clone, Copy)]
struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // only u64 keys are hashed here; fold anything else in
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type TableHasher = std::hash::BuildHasherDefault<Prehashed>;

fn shard_of(hash: u64) -> usize {
    // the high bits: the table inside the shard uses the low ones
    (hash >> 59) as usize % SHARDS
}
