//! Selection algorithms. Each one chooses among the servers for which `ok(index)` holds
//! (available for this request: not excluded, not failed, not draining, under
//! max_conns); weights come from the servers' config. No allocation per pick.

use std::cell::Cell;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::Server;

/// nginx's smooth weighted round-robin: weights 5:1:1 give a a b a c a a, not a a a a a b c.
#[derive(Debug)]
pub(crate) struct RoundRobin {
    current: Vec<i64>,
}

impl RoundRobin {
    pub(crate) fn new(n: usize) -> Self {
        Self {
            current: vec![0; n],
        }
    }

    pub(crate) fn pick(
        &mut self,
        servers: &[Arc<Server>],
        ok: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for i in (0..servers.len()).filter(|&i| ok(i)) {
            let w = i64::from(servers[i].effective_weight());
            self.current[i] += w;
            total += w;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= total;
        Some(b)
    }
}

/// Fewest in-flight requests relative to weight; ties go to the first candidate.
pub(crate) fn least_conn(servers: &[Arc<Server>], ok: impl Fn(usize) -> bool) -> Option<usize> {
    (0..servers.len())
        .filter(|&i| ok(i))
        .min_by(|&a, &b| load(servers, a).cmp(&load(servers, b)))
}

/// In-flight requests per weight, compared without division.
#[derive(PartialEq, Eq)]
struct Load {
    active: u64,
    weight: u64,
}

impl PartialOrd for Load {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Load {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.active * other.weight).cmp(&(other.active * self.weight))
    }
}

fn load(servers: &[Arc<Server>], i: usize) -> Load {
    let s = &servers[i];
    Load {
        active: s.stats.active.load(Ordering::Relaxed) as u64,
        weight: u64::from(s.effective_weight()),
    }
}

/// nginx `ip_hash`: the first three octets of an IPv4 address, the whole IPv6 address.
pub(crate) fn ip_hash(
    servers: &[Arc<Server>],
    ok: impl Fn(usize) -> bool,
    ip: Option<IpAddr>,
) -> Option<usize> {
    let key: Vec<u8> = match ip {
        Some(IpAddr::V4(v4)) => v4.octets()[..3].to_vec(),
        Some(IpAddr::V6(v6)) => v6.octets().to_vec(),
        None => Vec::new(),
    };
    // Hash over all servers, so a client keeps its server while it is available; walk
    // on (as nginx rehashes) when it is not.
    let total: u64 = servers.iter().map(|s| u64::from(s.config.weight)).sum();
    let first = || (0..servers.len()).find(|&i| ok(i));
    if total == 0 {
        return first();
    }
    let mut h = fnv1a(&key);
    for _ in 0..20 {
        let mut w = h % total;
        for (i, s) in servers.iter().enumerate() {
            let sw = u64::from(s.config.weight);
            if w < sw {
                if ok(i) {
                    return Some(i);
                }
                break;
            }
            w -= sw;
        }
        h = fnv1a(&h.to_le_bytes());
    }
    first()
}

/// Power of two choices: two random candidates, the one with fewer in-flight requests
/// per weight wins.
pub(crate) fn random_two(servers: &[Arc<Server>], ok: impl Fn(usize) -> bool) -> Option<usize> {
    let nth = |k: usize| (0..servers.len()).filter(|&i| ok(i)).nth(k);
    match (0..servers.len()).filter(|&i| ok(i)).count() {
        0 => None,
        1 => nth(0),
        n => {
            let a = (next_random() % n as u64) as usize;
            let mut b = (next_random() % (n as u64 - 1)) as usize;
            if b >= a {
                b += 1;
            }
            let (a, b) = (nth(a)?, nth(b)?);
            // ties go to the first, randomly chosen, candidate
            Some(if load(servers, b) < load(servers, a) {
                b
            } else {
                a
            })
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

thread_local! {
    static RNG: Cell<u64> = Cell::new({
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        t | 1
    });
}

/// xorshift64*: fast, per thread, good enough to spread load (not for secrets).
fn next_random() -> u64 {
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        r.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// `least_time`: the lowest moving-average time to the response header, scaled by the
/// requests in flight and divided by the weight. Servers without a measurement yet go
/// first, so every server gets measured.
pub(crate) fn least_time(servers: &[Arc<Server>], ok: impl Fn(usize) -> bool) -> Option<usize> {
    (0..servers.len()).filter(|&i| ok(i)).min_by_key(|&i| {
        let s = &servers[i];
        let ewma = s.stats.ewma_us.load(Ordering::Relaxed);
        let active = s.stats.active.load(Ordering::Relaxed) as u64;
        (ewma + 1).saturating_mul(active + 1) / u64::from(s.effective_weight())
    })
}

/// Weight of the newest sample in the moving average, in 1/8ths.
const EWMA_NEW: u64 = 2;

pub(crate) fn record_latency(server: &Server, took: std::time::Duration) {
    let sample = took.as_micros().min(u128::from(u32::MAX)) as u64;
    let avg = &server.stats.ewma_us;
    let old = avg.load(Ordering::Relaxed);
    let new = if old == 0 {
        sample.max(1)
    } else {
        (old * (8 - EWMA_NEW) + sample * EWMA_NEW) / 8
    };
    avg.store(new.max(1), Ordering::Relaxed);
}

/// Points on the ring per unit of weight (as nginx's `hash … consistent`).
const POINTS_PER_WEIGHT: u32 = 160;

/// A ketama-style consistent-hash ring: each server owns points derived from its address
/// alone, so removing a server moves only the keys that landed on its points.
#[derive(Debug, Default)]
pub(crate) struct Ring {
    points: Vec<(u64, usize)>,
}

impl Ring {
    pub(crate) fn new(servers: &[Arc<Server>]) -> Self {
        let mut points = Vec::new();
        for (i, s) in servers.iter().enumerate() {
            let name = s.config.addr.to_string();
            for p in 0..POINTS_PER_WEIGHT * s.config.weight.max(1) {
                points.push((mix(fnv1a(format!("{name}-{p}").as_bytes())), i));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    /// The first usable server at or after the key's point, walking round the ring.
    pub(crate) fn pick(&self, key: &[u8], ok: impl Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let h = mix(fnv1a(key));
        let start = self.points.partition_point(|&(p, _)| p < h);
        let n = self.points.len();
        (0..n)
            .map(|k| self.points[(start + k) % n].1)
            .find(|&i| ok(i))
    }
}

/// splitmix64's finalizer: spreads FNV's output over the whole ring.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
