//! Why the memory tier is moka (W-TinyLFU) and what an object costs: run with
//! `cargo run --release -p portico-cache --example admission`.
//!
//! 1. Hit ratio: a Zipf(1.0) workload over 100,000 URLs with a cache holding 5% of
//!    them, and the same with a scan of 50,000 one-off URLs mixed in (a crawler, a
//!    cache-busting query string), for the zone (moka) and a plain LRU of the same
//!    byte bound (the lru crate).
//! 2. Memory: RSS growth per stored object of a 200-byte body with typical headers.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use portico_cache::{Meta, Object, Times, Zone, ZoneSettings};

fn object(key: String, body: usize) -> Object {
    let mut headers = HeaderMap::new();
    for (n, v) in [
        ("server", "nginx/1.22.1"),
        ("date", "Wed, 02 Dec 2026 10:00:00 GMT"),
        ("content-type", "text/html; charset=utf-8"),
        ("cache-control", "max-age=3600"),
        ("etag", "\"6560d3a3-c8\""),
        ("last-modified", "Fri, 24 Nov 2023 16:46:27 GMT"),
    ] {
        headers.insert(n, HeaderValue::from_static(v));
    }
    Object {
        meta: Meta {
            key,
            status: 200,
            headers,
            times: Times {
                lifetime_ms: 3_600_000,
                ..Times::default()
            },
            vary: Vec::new(),
            upstream: Some("127.0.0.1:8000".into()),
        },
        body: Bytes::from(vec![b'x'; body]),
    }
}

/// A Zipf(1.0) sampler over 1..=n (inverse CDF on the harmonic numbers).
struct Zipf {
    cdf: Vec<f64>,
    state: u64,
}

impl Zipf {
    fn new(n: usize) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for i in 1..=n {
            sum += 1.0 / i as f64;
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Self {
            cdf,
            state: 0x9e37_79b9_7f4a_7c15,
        }
    }
    fn next(&mut self) -> usize {
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let u = (self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
        self.cdf.partition_point(|c| *c < u)
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let urls = 100_000;
    let body = 1000;
    let weight = u64::from(object("http://shop.example/item/00000".into(), body).weight());
    let bound = weight * (urls as u64 / 20);
    for scan in [false, true] {
        let zone = Zone::new(ZoneSettings {
            name: "bench".into(),
            memory: bound,
            disk: None,
        })?;
        let mut lru: lru::LruCache<String, ()> = lru::LruCache::unbounded();
        let lru_cap = (bound / weight) as usize;
        let mut zipf = Zipf::new(urls);
        let (mut zone_hits, mut lru_hits, mut n) = (0u64, 0u64, 0u64);
        let none = HeaderMap::new();
        for i in 0..600_000u64 {
            let key = if scan && i % 6 == 0 {
                format!("http://shop.example/scan/{i}")
            } else {
                format!("http://shop.example/item/{}", zipf.next())
            };
            let counted = i >= 100_000;
            if zone.lookup(&key, &none).await.is_some() {
                zone_hits += u64::from(counted);
            } else {
                zone.insert(object(key.clone(), body));
            }
            if lru.get(&key).is_some() {
                lru_hits += u64::from(counted);
            } else {
                lru.put(key, ());
                while lru.len() > lru_cap {
                    lru.pop_lru();
                }
            }
            n += u64::from(counted);
        }
        println!(
            "Zipf(1.0) over {urls} URLs, cache = 5% of them{}: hit ratio moka (W-TinyLFU) {:.1}%, LRU {:.1}%",
            if scan { ", 1 request in 6 a one-off URL" } else { "" },
            100.0 * zone_hits as f64 / n as f64,
            100.0 * lru_hits as f64 / n as f64
        );
    }
    let zone: Arc<Zone> = Zone::new(ZoneSettings {
        name: "mem".into(),
        memory: 1 << 30,
        disk: None,
    })?;
    let count = 100_000;
    let before = rss_kib();
    for i in 0..count {
        zone.insert(object(format!("http://shop.example/small/{i:06}"), 200));
    }
    let usage = zone.usage();
    let after = rss_kib();
    println!(
        "{count} objects of 200 bytes with 6 headers: RSS +{} bytes per object (the zone weighs each at {} bytes)",
        (after - before) * 1024 / count,
        usage.memory_bytes / count
    );
    Ok(())
}
