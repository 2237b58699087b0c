//! Portico's response cache: storage, freshness, keys and fill locks, with no HTTP
//! server and no config parsing in it (the HTTP module adapts it; see
//! `portico-http/src/cache.rs`).
//!
//! A [`Zone`] is one named cache (`[caches.NAME]`): a memory tier bounded in bytes
//! (moka: W-TinyLFU admission and eviction, so one scan of cold URLs does not push the
//! hot objects out) and an optional [`disk::Disk`] tier bounded in bytes that survives
//! restarts. Objects are written through to disk when complete and promoted back to
//! memory when read from it.
//!
//! Keys: a route renders its key template (`$scheme$host$request_uri`); the key's
//! 128-bit hash (xxh3, stable across runs, so the disk tier can be found again) is the
//! key id. A response that varies stores a marker under the key id naming the Vary
//! headers, and the object under the id of the key plus the request's (normalised)
//! values of those headers: one object per variant. The full key is kept in every
//! object and compared on lookup, so a hash collision is a miss, never a wrong answer.

pub mod disk;
pub mod freshness;
pub mod object;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use http::header::{HeaderMap, HeaderName};

pub use freshness::{NotStored, Policy, Times};
pub use object::{Meta, Object};

/// Where a zone keeps its objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneSettings {
    pub name: String,
    /// Bytes the memory tier may hold.
    pub memory: u64,
    /// The disk tier: a directory and its bound in bytes.
    pub disk: Option<(PathBuf, u64)>,
}

/// What a lookup found, as `$upstream_cache_status` and the status header show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Fresh in the cache.
    Hit,
    /// Not in the cache.
    Miss,
    /// In the cache but stale; fetched again.
    Expired,
    /// Stale, served because the upstream failed (`use_stale`, stale-if-error).
    Stale,
    /// Stale, served while another request (or a background one) refreshes it.
    Updating,
    /// Stale, and the upstream said 304: refreshed and served.
    Revalidated,
    /// Not looked up (a `bypass` condition, or Authorization).
    Bypass,
}

impl CacheStatus {
    pub const ALL: [CacheStatus; 7] = [
        Self::Hit,
        Self::Miss,
        Self::Expired,
        Self::Stale,
        Self::Updating,
        Self::Revalidated,
        Self::Bypass,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Expired => "EXPIRED",
            Self::Stale => "STALE",
            Self::Updating => "UPDATING",
            Self::Revalidated => "REVALIDATED",
            Self::Bypass => "BYPASS",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A zone's counters.
#[derive(Debug, Default)]
pub struct Stats {
    lookups: [AtomicU64; 7],
    /// Objects stored, and their body bytes.
    pub stores: AtomicU64,
    pub stored_bytes: AtomicU64,
    /// Responses that could have been stored but were not (too big, cut short).
    pub not_stored: AtomicU64,
    pub memory_evictions: Arc<AtomicU64>,
    pub purged: AtomicU64,
}

impl Stats {
    pub fn count(&self, s: CacheStatus) {
        self.lookups[s.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn lookups(&self, s: CacheStatus) -> u64 {
        self.lookups[s.index()].load(Ordering::Relaxed)
    }
}

/// What the memory tier holds under an id.
#[derive(Clone)]
enum Slot {
    Object(Arc<Object>),
    /// The key's responses vary on these request headers.
    Vary {
        key: Arc<str>,
        names: Arc<[HeaderName]>,
    },
}

impl Slot {
    fn weight(&self) -> u32 {
        match self {
            Slot::Object(o) => o.weight(),
            Slot::Vary { key, names } => (key.len() + names.len() * 24 + 96) as u32,
        }
    }

    fn key(&self) -> &str {
        match self {
            Slot::Object(o) => &o.meta.key,
            Slot::Vary { key, .. } => key,
        }
    }
}

/// The id of a key (of its only object when it does not vary).
pub fn key_id(key: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(key.as_bytes())
}

/// The request's value of a Vary header, normalised: Accept-Encoding becomes the set
/// of codings it accepts among those that matter (so the hundreds of ways browsers
/// spell "gzip, deflate, br" make a handful of variants); others are their values
/// joined, with runs of blanks made one.
pub fn vary_value(req: &HeaderMap, name: &HeaderName) -> Vec<u8> {
    let mut values = req.get_all(name).iter().filter_map(|v| v.to_str().ok());
    if name == http::header::ACCEPT_ENCODING {
        let mut known: Vec<&str> = Vec::new();
        for v in values {
            for item in v.split(',') {
                let mut parts = item.split(';');
                let coding = parts.next().unwrap_or("").trim();
                let refused = parts.any(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .and_then(|q| q.trim().parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                for k in ["br", "deflate", "gzip", "zstd"] {
                    if coding.eq_ignore_ascii_case(k) && !refused && !known.contains(&k) {
                        known.push(k);
                    }
                }
            }
        }
        known.sort_unstable();
        return known.join(",").into_bytes();
    }
    let mut out = Vec::new();
    for (i, v) in values.by_ref().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        let mut blank = false;
        for b in v.trim().bytes() {
            if b == b' ' || b == b'\t' {
                blank = true;
                continue;
            }
            if blank {
                out.push(b' ');
                blank = false;
            }
            out.push(b);
        }
    }
    out
}

/// The names a response's Vary lists (none for `Vary: *`: such a response is not
/// stored).
pub fn vary_names(resp: &HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = resp
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    names
}

fn variant_id(key: &str, values: &[(HeaderName, Vec<u8>)]) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(key.as_bytes());
    for (n, v) in values {
        h.update(b"\0");
        h.update(n.as_str().as_bytes());
        h.update(b":");
        h.update(v);
    }
    h.digest128()
}

fn values_for(req: &HeaderMap, names: &[HeaderName]) -> Vec<(HeaderName, Vec<u8>)> {
    names
        .iter()
        .map(|n| (n.clone(), vary_value(req, n)))
        .collect()
}

/// One named cache.
pub struct Zone {
    pub settings: ZoneSettings,
    memory: moka::sync::Cache<u128, Slot>,
    pub disk: Option<Arc<disk::Disk>>,
    /// Keys being fetched under `lock`: waiters watch the sender, which is dropped
    /// when the fill ends.
    fills: Mutex<HashMap<u128, tokio::sync::watch::Sender<()>>>,
    pub stats: Stats,
}

impl std::fmt::Debug for Zone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zone")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The answer to [`Zone::lock`].
pub enum Lock {
    /// This request fetches; hold the guard until the object is stored (or not).
    Leader(FillGuard),
    /// Another request is fetching: wait (bounded) for it, then look up again.
    Wait(tokio::sync::watch::Receiver<()>),
}

/// Held by the one request fetching a key; dropping it wakes the waiters.
pub struct FillGuard {
    zone: Arc<Zone>,
    id: u128,
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        self.zone
            .fills
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// Waits until the fill `rx` watches ends, at most `timeout`; true when it ended.
pub async fn wait_fill(mut rx: tokio::sync::watch::Receiver<()>, timeout: Duration) -> bool {
    // the sender is only ever dropped, never sent on: `changed` errs when the fill ends
    tokio::time::timeout(timeout, rx.changed()).await.is_ok()
}

/// Memory and disk use of a zone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub memory_bytes: u64,
    pub memory_entries: u64,
    pub disk_bytes: u64,
    pub disk_objects: u64,
}

impl Zone {
    /// A zone with its memory tier and, when configured, its disk tier (whose index is
    /// rebuilt in the background from what an earlier run left).
    pub fn new(settings: ZoneSettings) -> std::io::Result<Arc<Self>> {
        let disk = match &settings.disk {
            Some((path, max)) => Some(disk::Disk::open(path, *max)?),
            None => None,
        };
        let stats = Stats::default();
        let evictions = Arc::clone(&stats.memory_evictions);
        let memory = moka::sync::Cache::builder()
            .max_capacity(settings.memory)
            .weigher(|_: &u128, s: &Slot| s.weight())
            .eviction_listener(move |_, _, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evictions.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        Ok(Arc::new(Self {
            settings,
            memory,
            disk,
            fills: Mutex::new(HashMap::new()),
            stats,
        }))
    }

    pub fn usage(&self) -> Usage {
        self.memory.run_pending_tasks();
        let (disk_bytes, disk_objects) = self.disk.as_ref().map_or((0, 0), |d| d.usage());
        Usage {
            memory_bytes: self.memory.weighted_size(),
            memory_entries: self.memory.entry_count(),
            disk_bytes,
            disk_objects,
        }
    }

    /// The stored response for `key` that fits the request's headers, fresh or not
    /// (the caller decides what its age allows). Reads the disk tier on a memory miss.
    pub async fn lookup(&self, key: &str, req: &HeaderMap) -> Option<Arc<Object>> {
        let base = key_id(key);
        let names = match self.memory.get(&base) {
            Some(Slot::Object(o)) if o.meta.key == key && o.meta.vary.is_empty() => {
                self.touch_disk(base);
                return Some(o);
            }
            Some(Slot::Vary { key: k, names }) if &*k == key => Some(names),
            _ => None,
        };
        let names = names.or_else(|| self.disk.as_ref().and_then(|d| d.vary(base)));
        let (id, values) = match &names {
            Some(n) => {
                let values = values_for(req, n);
                (variant_id(key, &values), values)
            }
            None => (base, Vec::new()),
        };
        let fits = |o: &Object| o.meta.key == key && o.meta.vary == values;
        if id != base {
            if let Some(Slot::Object(o)) = self.memory.get(&id) {
                if fits(&o) {
                    self.touch_disk(id);
                    return Some(o);
                }
            }
        }
        let disk = self.disk.as_ref().filter(|d| d.contains(id))?;
        let d = Arc::clone(disk);
        let obj = tokio::task::spawn_blocking(move || d.load(id))
            .await
            .ok()??;
        if !fits(&obj) {
            return None;
        }
        let obj = Arc::new(obj);
        // promoted to memory (W-TinyLFU decides whether it stays)
        if let Some(n) = names {
            self.memory.insert(
                base,
                Slot::Vary {
                    key: key.into(),
                    names: n,
                },
            );
        }
        self.memory.insert(id, Slot::Object(Arc::clone(&obj)));
        Some(obj)
    }

    fn touch_disk(&self, id: u128) {
        if let Some(d) = &self.disk {
            d.touch(id);
        }
    }

    /// Stores `obj` (in memory at once, on disk in a blocking task) and returns it.
    pub fn insert(&self, obj: Object) -> Arc<Object> {
        let key = obj.meta.key.clone();
        let base = key_id(&key);
        let names: Vec<HeaderName> = obj.meta.vary.iter().map(|(n, _)| n.clone()).collect();
        let id = if names.is_empty() {
            base
        } else {
            self.memory.insert(
                base,
                Slot::Vary {
                    key: key.as_str().into(),
                    names: names.into(),
                },
            );
            variant_id(&key, &obj.meta.vary)
        };
        self.stats.stores.fetch_add(1, Ordering::Relaxed);
        self.stats
            .stored_bytes
            .fetch_add(obj.body.len() as u64, Ordering::Relaxed);
        let obj = Arc::new(obj);
        self.memory.insert(id, Slot::Object(Arc::clone(&obj)));
        if let Some(d) = &self.disk {
            let (d, o) = (Arc::clone(d), Arc::clone(&obj));
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn_blocking(move || d.store(id, base, &o));
                }
                Err(_) => d.store(id, base, &o),
            }
        }
        obj
    }

    /// Takes the fill lock of `key`, or the means to wait for whoever holds it.
    pub fn lock(self: &Arc<Self>, key: &str) -> Lock {
        let id = key_id(key);
        let mut fills = self.fills.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = fills.get(&id) {
            return Lock::Wait(tx.subscribe());
        }
        fills.insert(id, tokio::sync::watch::channel(()).0);
        Lock::Leader(FillGuard {
            zone: Arc::clone(self),
            id,
        })
    }

    /// Whether a request is fetching `key` under the lock now.
    pub fn is_filling(&self, key: &str) -> bool {
        self.fills
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&key_id(key))
    }

    /// Removes every object stored under `key` (all its variants, and what is derived
    /// from them under `key` + NUL + …, such as its compressed forms); how many.
    pub fn purge_key(&self, key: &str) -> u64 {
        self.purge(|k| {
            k.strip_prefix(key)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('\0'))
        })
    }

    /// Removes every object whose key starts with `prefix`; how many.
    pub fn purge_prefix(&self, prefix: &str) -> u64 {
        self.purge(|k| k.starts_with(prefix))
    }

    fn purge(&self, pred: impl Fn(&str) -> bool) -> u64 {
        let mut n = 0;
        let mut ids = Vec::new();
        for (id, slot) in self.memory.iter() {
            if pred(slot.key()) {
                if matches!(slot, Slot::Object(_)) {
                    n += 1;
                }
                ids.push(*id);
            }
        }
        for id in &ids {
            self.memory.invalidate(id);
        }
        if let Some(d) = &self.disk {
            for id in d.ids_where(&pred) {
                if d.remove(id) && !ids.contains(&id) {
                    n += 1;
                }
            }
            for id in ids {
                d.drop_vary(id);
            }
        }
        self.stats.purged.fetch_add(n, Ordering::Relaxed);
        n
    }
}

/// A response's body going into the cache as it goes to the client. Bytes beyond
/// `max_object` (or a declared length that is already larger) abandon the fill; so
/// does dropping the filler before [`Filler::finish`] (the client went away, the
/// upstream broke): only complete bodies are stored.
pub struct Filler {
    zone: Arc<Zone>,
    meta: Option<Meta>,
    body: BytesMut,
    max: u64,
    expected: Option<u64>,
    _guard: Option<FillGuard>,
}

impl std::fmt::Debug for Filler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filler")
            .field("len", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl Filler {
    /// A filler for `meta`'s response, whose body is `expected` bytes long when its
    /// Content-Length said so; `None` when that is over `max`.
    pub fn new(
        zone: Arc<Zone>,
        meta: Meta,
        expected: Option<u64>,
        max: u64,
        guard: Option<FillGuard>,
    ) -> Option<Self> {
        if expected.is_some_and(|n| n > max) {
            zone.stats.not_stored.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let capacity = expected.unwrap_or(16 * 1024).min(max) as usize;
        Some(Self {
            zone,
            meta: Some(meta),
            body: BytesMut::with_capacity(capacity),
            max,
            expected,
            _guard: guard,
        })
    }

    /// Takes the next piece of the body.
    pub fn push(&mut self, data: &[u8]) {
        if self.meta.is_none() {
            return;
        }
        if (self.body.len() + data.len()) as u64 > self.max {
            self.abandon();
            return;
        }
        self.body.extend_from_slice(data);
    }

    /// Whether the body has all the bytes its Content-Length declared (a consumer that
    /// knows the length may stop before the body reports its end).
    pub fn is_complete(&self) -> bool {
        self.meta.is_some() && self.expected == Some(self.body.len() as u64)
    }

    fn abandon(&mut self) {
        if self.meta.take().is_some() {
            self.zone.stats.not_stored.fetch_add(1, Ordering::Relaxed);
        }
        self.body = BytesMut::new();
    }

    /// The body is complete: store the object (unless it was abandoned, or is shorter
    /// than its Content-Length said).
    pub fn finish(mut self) -> Option<Arc<Object>> {
        let meta = self.meta.take()?;
        if self.expected.is_some_and(|n| n != self.body.len() as u64) {
            self.zone.stats.not_stored.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let body = std::mem::take(&mut self.body).freeze();
        Some(self.zone.insert(Object { meta, body }))
    }
}

/// The zones of one config generation, by name.
#[derive(Debug, Default, Clone)]
pub struct Zones {
    pub zones: std::collections::BTreeMap<String, Arc<Zone>>,
}

impl Zones {
    /// The zones `settings` names. A zone whose name and storage did not change is kept
    /// with its objects (a reload keeps the cache); a changed bound or disk path starts
    /// a new one.
    pub fn build(
        settings: impl IntoIterator<Item = ZoneSettings>,
        previous: &Zones,
    ) -> Result<Self, String> {
        let mut zones = std::collections::BTreeMap::new();
        for s in settings {
            let kept = previous.zones.get(&s.name).filter(|z| z.settings == s);
            let z = match kept {
                Some(z) => Arc::clone(z),
                None => Zone::new(s.clone()).map_err(|e| {
                    let path = s.disk.as_ref().map(|(p, _)| p.display().to_string());
                    format!(
                        "caches.{}: cannot open the disk tier {}: {e}",
                        s.name,
                        path.unwrap_or_default()
                    )
                })?,
            };
            zones.insert(s.name, z);
        }
        Ok(Self { zones })
    }
}

#[cfg(test)]
mod tests;
