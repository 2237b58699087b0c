//! Memory per key of a rate limit's table, and the cost of one check: fills a limit
//! with `keys` distinct keys (default one million) and prints the resident memory it
//! added (from /proc/self/statm) divided by the keys kept, then times checks on a
//! table of 100,000 active keys.
//!
//!   cargo run --release -p portico-limits --example key_memory [KEYS]

use std::time::Instant;

use portico_config::{KeyTemplate, LogLevel, RateLimitConfig};
use portico_limits::rate::RateLimiter;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn limiter(keys: usize) -> RateLimiter {
    RateLimiter::new(&RateLimitConfig {
        name: "bench".into(),
        key: KeyTemplate::parse("$remote_addr").unwrap_or_else(|e| panic!("{e}")),
        rate_milli: 10_000,
        burst: 20,
        nodelay: true,
        keys,
        status: 429,
        log_level: LogLevel::Error,
        store: None,
    })
}

fn main() {
    let keys: usize = std::env::args()
        .nth(1)
        .and_then(|k| k.parse().ok())
        .unwrap_or(1_000_000);
    let before = rss_bytes();
    let l = limiter(keys);
    for i in 0..keys as u64 * 2 {
        // twice as many distinct keys as fit: the table stays at its bound
        let ip = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
        l.check(format!("{ip}-{i}").as_bytes(), true);
    }
    let after = rss_bytes();
    let kept = l.keys();
    println!(
        "{kept} keys kept of {} seen (bound {keys}): {:.1} MB, {:.0} bytes per key",
        keys * 2,
        (after - before) as f64 / 1e6,
        (after - before) as f64 / kept.max(1) as f64
    );

    let l = limiter(100_000);
    let names: Vec<String> = (0..100_000)
        .map(|i| format!("192.0.{}.{}", i / 256, i % 256))
        .collect();
    for n in &names {
        l.check(n.as_bytes(), true);
    }
    let rounds = 2_000_000;
    let start = Instant::now();
    for i in 0..rounds {
        std::hint::black_box(l.check(names[i % names.len()].as_bytes(), true));
    }
    let ns = start.elapsed().as_nanos() as f64 / rounds as f64;
    println!("one check on a table of 100000 active keys: {ns:.0} ns");
}
