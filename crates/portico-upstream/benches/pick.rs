//! Pick latency per algorithm at 2, 32 and 1,000 servers:
//! `cargo bench -p portico-upstream --bench pick`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use portico_config::{Balance, KeyTemplate, PeerAddr, UpstreamConfig};
use portico_upstream::fixtures::{server_config, upstream_config};
use portico_upstream::{SelectCtx, Upstream};

fn upstream(balance: Balance, n: usize) -> Upstream {
    let servers = (0..n)
        .map(|i| {
            let addr = PeerAddr::Tcp(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8000).into());
            server_config(addr, 1 + (i % 3) as u32)
        })
        .collect();
    Upstream::new(UpstreamConfig {
        hash_key: KeyTemplate::parse("$request_uri").ok(),
        ..upstream_config(balance, servers)
    })
}

fn pick(c: &mut Criterion) {
    let algorithms = [
        ("round_robin", Balance::RoundRobin),
        ("least_conn", Balance::LeastConn),
        ("ip_hash", Balance::IpHash),
        ("hash", Balance::Hash),
        ("random_two", Balance::RandomTwo),
        ("least_time", Balance::LeastTime),
    ];
    let mut group = c.benchmark_group("pick");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for (name, balance) in algorithms {
        for n in [2usize, 32, 1000] {
            let u = upstream(balance, n);
            let ip = "192.0.2.7".parse().ok();
            let mut k = 0u64;
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    k += 1;
                    let key = k.to_le_bytes();
                    let ctx = SelectCtx {
                        client_ip: ip,
                        exclude: &[],
                        key: Some(&key),
                        panicked: false,
                    };
                    black_box(u.select(&ctx).map(|p| p.index))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, pick);
criterion_main!(benches);
