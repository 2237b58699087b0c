use std::time::Duration;

use portico_config::{Balance, PeerAddr, ServerConfig};
use proptest::prelude::*;

use super::*;

fn server(port: u16, weight: u32) -> ServerConfig {
    fixtures::server_config(PeerAddr::Tcp(([127, 0, 0, 1], port).into()), weight)
}

fn upstream(balance: Balance, servers: Vec<ServerConfig>) -> Upstream {
    Upstream::new(fixtures::upstream_config(balance, servers))
}

fn picks(u: &Upstream, n: usize) -> Vec<usize> {
    (0..n)
        .map(|_| u.select(&SelectCtx::default()).unwrap().index)
        .collect()
}

#[test]
fn smooth_weighted_round_robin_interleaves() {
    let u = upstream(
        Balance::RoundRobin,
        vec![server(1, 5), server(2, 1), server(3, 1)],
    );
    // nginx's documented sequence for weights 5:1:1
    assert_eq!(picks(&u, 7), vec![0, 0, 1, 0, 2, 0, 0]);
}

#[test]
fn failures_take_a_server_out_for_fail_timeout() {
    let mut a = server(1, 1);
    a.max_fails = 2;
    let u = upstream(Balance::RoundRobin, vec![a, server(2, 1)]);
    let p = u
        .select(&SelectCtx {
            exclude: &[1],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(p.index, 0);
    p.failure();
    assert_eq!(u.servers[0].state(), ServerState::Up, "one failure of two");
    u.select(&SelectCtx {
        exclude: &[1],
        ..Default::default()
    })
    .unwrap()
    .failure();
    assert_eq!(u.servers[0].state(), ServerState::Unavailable);
    assert!(picks(&u, 5).iter().all(|&i| i == 1));
    assert!(u
        .select(&SelectCtx {
            exclude: &[1],
            ..Default::default()
        })
        .is_none());
}

#[test]
fn success_resets_the_failure_count() {
    let mut a = server(1, 1);
    a.max_fails = 2;
    let u = upstream(Balance::RoundRobin, vec![a]);
    u.select(&SelectCtx::default()).unwrap().failure();
    u.select(&SelectCtx::default()).unwrap().success();
    u.select(&SelectCtx::default()).unwrap().failure();
    assert_eq!(u.servers[0].state(), ServerState::Up);
}

#[test]
fn backups_only_when_all_primaries_are_out() {
    let mut b = server(3, 1);
    b.backup = true;
    let u = upstream(Balance::RoundRobin, vec![server(1, 1), server(2, 1), b]);
    assert!(picks(&u, 10).iter().all(|&i| i != 2));
    u.select(&SelectCtx {
        exclude: &[1],
        ..Default::default()
    })
    .unwrap()
    .failure();
    u.select(&SelectCtx {
        exclude: &[0],
        ..Default::default()
    })
    .unwrap()
    .failure();
    assert_eq!(picks(&u, 3), vec![2, 2, 2]);
}

#[test]
fn drain_and_max_conns_are_respected() {
    let mut d = server(1, 1);
    d.drain = true;
    let mut m = server(2, 1);
    m.max_conns = 1;
    let u = upstream(Balance::RoundRobin, vec![d, m, server(3, 1)]);
    let held = u
        .select(&SelectCtx {
            exclude: &[2],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(held.index, 1);
    assert!(
        picks(&u, 4).iter().all(|&i| i == 2),
        "1 is at max_conns, 0 drains"
    );
    drop(held);
    assert!(picks(&u, 4).contains(&1));
}

#[test]
fn least_conn_prefers_idle_servers() {
    let u = upstream(Balance::LeastConn, vec![server(1, 1), server(2, 1)]);
    let a = u.select(&SelectCtx::default()).unwrap();
    let b = u.select(&SelectCtx::default()).unwrap();
    assert_ne!(a.index, b.index);
    drop(a);
    let c = u.select(&SelectCtx::default()).unwrap();
    assert_ne!(c.index, b.index);
}

#[test]
fn ip_hash_uses_the_first_three_octets() {
    let u = upstream(Balance::IpHash, (1..=5).map(|p| server(p, 1)).collect());
    let pick = |ip: &str| {
        u.select(&SelectCtx {
            client_ip: Some(ip.parse().unwrap()),
            ..Default::default()
        })
        .unwrap()
        .index
    };
    for last in 0..=255u8 {
        assert_eq!(pick(&format!("10.1.2.{last}")), pick("10.1.2.1"));
    }
    let spread: std::collections::HashSet<usize> =
        (0..=255u8).map(|o| pick(&format!("10.1.{o}.1"))).collect();
    assert!(spread.len() > 1);
}

#[test]
fn random_two_uses_every_server() {
    let u = upstream(Balance::RandomTwo, (1..=3).map(|p| server(p, 1)).collect());
    let seen: std::collections::HashSet<usize> = picks(&u, 200).into_iter().collect();
    assert_eq!(seen.len(), 3);
}

#[test]
fn idle_pool_is_lifo_bounded_and_expires() {
    let pool = IdlePool::new(2, Duration::from_secs(60), 2);
    pool.put(0, 1);
    pool.put(0, 2);
    pool.put(0, 3);
    pool.put(1, 10);
    assert_eq!(pool.idle(), 3);
    assert_eq!(pool.take(0, |_| true), Some(3));
    assert_eq!(
        pool.take(0, |x: &mut i32| *x != 2),
        None,
        "unusable entries are dropped"
    );
    assert_eq!(pool.take(1, |_| true), Some(10), "shards are separate");
    let expired = IdlePool::new(2, Duration::ZERO, 1);
    expired.put(0, 1);
    assert_eq!(expired.take(0, |_| true), None);
}

/// With grace, on a runtime, connections returned over `max` stay while the pool is busy (a burst
/// of answers followed by a burst of requests reuses them instead of connecting anew),
/// up to `max` × 8; once idle for `pool::GRACE`, the excess is closed — the oldest
/// first — by the sweep, with no further use of the pool.
#[tokio::test(start_paused = true)]
async fn idle_pool_keeps_a_bursts_excess_for_a_grace_period() {
    let strict = IdlePool::new(4, Duration::from_secs(60), 1);
    for i in 0..10 {
        strict.put(0, i);
    }
    assert_eq!(
        strict.idle(),
        4,
        "without grace, the excess is closed at once"
    );
    let pool = IdlePool::new(4, Duration::from_secs(60), 1).with_grace();
    for i in 0..10 {
        pool.put(0, i);
    }
    assert_eq!(pool.idle(), 10, "a burst's connections stay for reuse");
    assert_eq!(pool.take(0, |_| true), Some(9), "newest first");
    for i in 10..50 {
        pool.put(0, i);
    }
    assert_eq!(pool.idle(), 32, "never more than max x 8");
    tokio::time::sleep(crate::pool::GRACE / 2).await;
    assert_eq!(pool.idle(), 32, "not closed before the grace period");
    // the freshest ones are what is kept
    tokio::time::sleep(crate::pool::GRACE * 2).await;
    assert_eq!(pool.idle(), 4, "the excess closed once idle that long");
    let kept: Vec<i32> = std::iter::from_fn(|| pool.take(0, |_| true)).collect();
    assert_eq!(kept, vec![49, 48, 47, 46]);
    // a put into a pool at its bound, with nothing over it, keeps the bound
    for i in 0..4 {
        pool.put(0, i);
    }
    tokio::time::sleep(crate::pool::GRACE * 2).await;
    assert_eq!(pool.idle(), 4);
}

proptest! {
    #[test]
    fn round_robin_shares_match_weights(weights in proptest::collection::vec(1u32..10, 1..8)) {
        let u = upstream(
            Balance::RoundRobin,
            weights.iter().enumerate().map(|(i, &w)| server(i as u16 + 1, w)).collect(),
        );
        let total: u32 = weights.iter().sum();
        let got = picks(&u, total as usize * 3);
        for (i, &w) in weights.iter().enumerate() {
            prop_assert_eq!(got.iter().filter(|&&x| x == i).count(), w as usize * 3);
        }
    }
}

fn keyed<'a>(key: &'a [u8]) -> SelectCtx<'a> {
    SelectCtx {
        key: Some(key),
        ..Default::default()
    }
}

#[test]
fn hash_is_stable_and_spreads_by_weight() {
    let mut servers: Vec<ServerConfig> = (1..=4).map(|p| server(p, 1)).collect();
    servers[0].weight = 2;
    let u = upstream(Balance::Hash, servers);
    let mut counts = [0usize; 4];
    for k in 0..10_000 {
        let key = format!("/item/{k}");
        let first = u.select(&keyed(key.as_bytes())).unwrap().index;
        assert_eq!(
            u.select(&keyed(key.as_bytes())).unwrap().index,
            first,
            "same key, same server"
        );
        counts[first] += 1;
    }
    // weight 2 of a total 5: about 40 %; the others about 20 % each
    assert!((3000..5000).contains(&counts[0]), "{counts:?}");
    for c in &counts[1..] {
        assert!((1200..2800).contains(c), "{counts:?}");
    }
}

#[test]
fn hash_walks_on_past_an_unavailable_server() {
    let u = upstream(Balance::Hash, (1..=3).map(|p| server(p, 1)).collect());
    let key = b"/some/key";
    let first = u.select(&keyed(key)).unwrap().index;
    let ctx = SelectCtx {
        key: Some(key),
        exclude: &[first],
        ..Default::default()
    };
    let second = u.select(&ctx).unwrap().index;
    assert_ne!(first, second);
}

#[test]
fn least_time_prefers_the_faster_server() {
    let u = upstream(Balance::LeastTime, vec![server(1, 1), server(2, 1)]);
    // measure both once, then server 1 is ten times slower
    let a = u.select(&SelectCtx::default()).unwrap();
    let b = u.select(&SelectCtx::default()).unwrap();
    let (slow, fast) = if a.index == 0 { (a, b) } else { (b, a) };
    slow.record_latency(Duration::from_millis(50));
    fast.record_latency(Duration::from_millis(5));
    drop((slow, fast));
    assert!(picks(&u, 20).iter().all(|&i| i == 1));
}

proptest! {
    /// Removing a server moves only the keys it owned.
    #[test]
    fn ring_removal_moves_only_the_removed_servers_keys(n in 2usize..8, removed in 0usize..8, keys in proptest::collection::vec("[a-z0-9/]{1,20}", 50)) {
        let removed = removed % n;
        let all: Vec<ServerConfig> = (0..n).map(|i| server(1000 + i as u16, 1)).collect();
        let mut fewer = all.clone();
        fewer.remove(removed);
        let (full, less) = (upstream(Balance::Hash, all.clone()), upstream(Balance::Hash, fewer));
        for k in &keys {
            let before = full.select(&keyed(k.as_bytes())).unwrap().index;
            let after = less.select(&keyed(k.as_bytes())).unwrap().index;
            if before != removed {
                prop_assert_eq!(&all[before].addr, &less.servers[after].config.addr);
            }
        }
    }
}

#[test]
fn slow_start_ramps_weight_after_recovery() {
    let mut a = server(1, 10);
    a.fail_timeout = Duration::ZERO; // back at once…
    a.slow_start = Duration::from_secs(1000); // …but at weight 1 for a long while
    let u = upstream(Balance::RoundRobin, vec![a, server(2, 1)]);
    assert_eq!(u.servers[0].effective_weight(), 10);
    u.select(&SelectCtx {
        exclude: &[1],
        ..Default::default()
    })
    .unwrap()
    .failure();
    assert_eq!(u.servers[0].effective_weight(), 1);
    let got = picks(&u, 20);
    assert_eq!(
        got.iter().filter(|&&i| i == 0).count(),
        10,
        "1:1 while ramping: {got:?}"
    );
}

#[tokio::test]
async fn max_conns_queue_waits_then_gives_up() {
    let mut a = server(1, 1);
    a.max_conns = 1;
    let mut cfg = upstream(Balance::RoundRobin, vec![a]).config.clone();
    cfg.queue = 1;
    cfg.queue_timeout = Duration::from_millis(100);
    let u = std::sync::Arc::new(Upstream::new(cfg));
    let held = u.select_queued(&SelectCtx::default()).await.unwrap();
    // one may wait; it gets the server when the holder is done
    let waiter = {
        let u = u.clone();
        tokio::spawn(async move {
            u.select_queued(&SelectCtx::default())
                .await
                .map(|p| p.index)
        })
    };
    while u.queued.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        tokio::task::yield_now().await;
    }
    // a second waiter finds the queue full
    assert_eq!(
        u.select_queued(&SelectCtx::default()).await.err(),
        Some(NoServer::QueueFull)
    );
    drop(held);
    assert_eq!(waiter.await.unwrap(), Ok(0));
    // nobody frees the server: the wait ends at queue_timeout
    let _held = u.select_queued(&SelectCtx::default()).await.unwrap();
    assert_eq!(
        u.select_queued(&SelectCtx::default()).await.err(),
        Some(NoServer::QueueTimeout)
    );
}

#[tokio::test]
async fn without_a_queue_a_full_upstream_is_503_not_502() {
    let mut a = server(1, 1);
    a.max_conns = 1;
    let u = upstream(Balance::RoundRobin, vec![a]);
    let _held = u.select_queued(&SelectCtx::default()).await.unwrap();
    assert_eq!(
        u.select_queued(&SelectCtx::default()).await.err(),
        Some(NoServer::QueueFull)
    );
    let down = upstream(Balance::RoundRobin, vec![server(1, 1)]);
    down.servers[0]
        .health
        .unhealthy
        .store(true, Ordering::Relaxed);
    assert_eq!(
        down.select_queued(&SelectCtx::default()).await.err(),
        Some(NoServer::NoneAvailable)
    );
}

#[tokio::test]
async fn an_announced_limit_applies_and_queues_without_a_configured_queue() {
    let u = upstream(Balance::RoundRobin, vec![server(1, 1)]);
    assert_eq!(u.servers[0].max_conns(), 0);
    u.servers[0].learn_max_conns(1);
    assert_eq!(u.servers[0].max_conns(), 1);
    let held = u.select_queued(&SelectCtx::default()).await.unwrap();
    // queue = 0, but the limit was announced: the next request waits for the first
    let ctx = SelectCtx::default();
    let waiter = u.select_queued(&ctx);
    tokio::pin!(waiter);
    assert!(
        futures_poll_once(waiter.as_mut()).await.is_none(),
        "it waits"
    );
    drop(held);
    assert!(waiter.await.is_ok());

    // a configured max_conns wins over an announced one
    let mut s = server(1, 1);
    s.max_conns = 5;
    let u = upstream(Balance::RoundRobin, vec![s]);
    u.servers[0].learn_max_conns(1);
    assert_eq!(u.servers[0].max_conns(), 5);
}

/// Polls a future once: `Some(output)` if it was ready.
async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
    let mut f = f;
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

/// Connects to `addr` sending `first`, which must all go out with the connect.
async fn sent_whole(addr: &PeerAddr, first: &[u8]) -> PeerStream {
    let (stream, sent) = connect_sending(addr, Duration::from_secs(5), false, first)
        .await
        .unwrap();
    assert_eq!(sent, first.len());
    stream
}

async fn read_n<R: tokio::io::AsyncRead + Unpin>(r: &mut R, n: usize) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = vec![0; n];
    r.read_exact(&mut got).await.unwrap();
    got
}

#[tokio::test]
async fn connect_sending_sends_first_bytes_and_reports_refusals() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = PeerAddr::Tcp(l.local_addr().unwrap());
    let request = b"first bytes of a request".repeat(10);
    // The loopback handshake is over when connect() returns: it all goes out at once.
    let mut stream = sent_whole(&addr, &request).await;
    let (mut peer, _) = l.accept().await.unwrap();
    assert_eq!(read_n(&mut peer, request.len()).await, request);
    // Still a normal connection both ways.
    peer.write_all(b"answer").await.unwrap();
    let mut answer = [0u8; 6];
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"answer");

    // More than the socket buffers hold: part goes out, the caller writes the rest.
    let big: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
    let (mut stream, sent) = connect_sending(&addr, Duration::from_secs(5), false, &big)
        .await
        .unwrap();
    assert!(sent > 0 && sent <= big.len(), "{sent}");
    let (mut peer, _) = l.accept().await.unwrap();
    let reader = tokio::spawn(async move { read_n(&mut peer, 4 << 20).await });
    stream.write_all(&big[sent..]).await.unwrap();
    assert!(reader.await.unwrap() == big);

    // Nothing to send: a plain connect.
    let (_s, sent) = connect_sending(&addr, Duration::from_secs(5), true, &[])
        .await
        .unwrap();
    assert_eq!(sent, 0);

    // A closed port is an error, whether or not there was something to send.
    drop(l);
    for first in [&b""[..], b"x"] {
        let e = connect_sending(&addr, Duration::from_secs(5), false, first)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{first:?}");
    }

    // The same over a Unix socket.
    let path = std::env::temp_dir().join(format!("portico-connect-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let l = tokio::net::UnixListener::bind(&path).unwrap();
    let addr = PeerAddr::Unix(path.clone());
    let _s = sent_whole(&addr, &request).await;
    let (mut peer, _) = l.accept().await.unwrap();
    assert_eq!(read_n(&mut peer, request.len()).await, request);
    drop(l);
    std::fs::remove_file(&path).unwrap();
    let e = connect_sending(&addr, Duration::from_secs(5), false, b"x")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
}

#[tokio::test]
async fn a_reset_close_reaches_the_server_as_a_reset() {
    use tokio::io::AsyncReadExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = PeerAddr::Tcp(l.local_addr().unwrap());
    for reset in [false, true] {
        let stream = connect(&addr, Duration::from_secs(5)).await.unwrap();
        let (mut peer, _) = l.accept().await.unwrap();
        if reset {
            stream.reset_on_close();
        }
        drop(stream);
        let mut buf = [0u8; 1];
        let r = peer.read(&mut buf).await;
        if reset {
            let e = r.unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
        } else {
            assert_eq!(r.unwrap(), 0, "a FIN reads as end of stream");
        }
    }
}

#[test]
fn max_conns_holds_when_threads_race_for_the_last_place() {
    let mut s = server(1, 1);
    s.max_conns = 2;
    let u = std::sync::Arc::new(upstream(Balance::RoundRobin, vec![s]));
    let held = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let most = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (u, held, most) = (u.clone(), held.clone(), most.clone());
            std::thread::spawn(move || {
                use std::sync::atomic::Ordering::SeqCst;
                for _ in 0..100_000 {
                    if let Some(p) = u.select(&SelectCtx::default()) {
                        let now = held.fetch_add(1, SeqCst) + 1;
                        let counted = p.server.stats.active.load(SeqCst);
                        most.fetch_max(now.max(counted), SeqCst);
                        for _ in 0..20 {
                            std::hint::spin_loop();
                        }
                        held.fetch_sub(1, SeqCst);
                        drop(p);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let most = most.load(std::sync::atomic::Ordering::SeqCst);
    assert!(most <= 2, "{most} picks held at once under max_conns = 2");
    assert_eq!(
        u.servers[0]
            .stats
            .active
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[test]
fn a_sole_server_is_never_taken_out_by_passive_health() {
    let mut a = server(1, 1);
    a.max_fails = 1;
    let u = upstream(Balance::RoundRobin, vec![a]);
    for _ in 0..3 {
        let p = u.select(&SelectCtx::default()).unwrap();
        assert!(!p.panic);
        p.failure();
    }
    assert_eq!(u.servers[0].state(), ServerState::Up);
    assert_eq!(u.servers[0].stats.failures.load(Ordering::Relaxed), 3);
    assert_eq!(u.servers[0].stats.unavailable.load(Ordering::Relaxed), 0);
    // active health still takes it out
    u.servers[0].health.unhealthy.store(true, Ordering::Relaxed);
    assert!(u.select(&SelectCtx::default()).is_none());
}

#[test]
fn a_primary_with_a_backup_is_not_sole() {
    let mut a = server(1, 1);
    a.max_fails = 1;
    let mut b = server(2, 1);
    b.backup = true;
    let u = upstream(Balance::RoundRobin, vec![a, b]);
    u.select(&SelectCtx::default()).unwrap().failure();
    assert_eq!(u.servers[0].state(), ServerState::Unavailable);
    assert_eq!(picks(&u, 3), vec![1, 1, 1], "the backup takes over");
}

#[test]
fn when_every_server_is_out_the_one_back_soonest_is_tried_once() {
    let servers: Vec<_> = (1..=3)
        .map(|port| {
            let mut s = server(port, 1);
            s.max_fails = 1;
            s.fail_timeout = Duration::from_secs(10 + u64::from(port));
            s
        })
        .collect();
    let u = upstream(Balance::RoundRobin, servers);
    // take them out in the order 2, 0, 1: server 0 has the shortest fail_timeout
    for i in [2, 0, 1] {
        let others: Vec<usize> = (0..3).filter(|&j| j != i).collect();
        let p = u
            .select(&SelectCtx {
                exclude: &others,
                ..Default::default()
            })
            .unwrap();
        assert_eq!((p.index, p.panic), (i, false));
        p.failure();
    }
    assert!(u
        .servers
        .iter()
        .all(|s| s.state() == ServerState::Unavailable));
    let p = u.select(&SelectCtx::default()).unwrap();
    assert_eq!((p.index, p.panic), (0, true));
    // a request that had its panic try gets no second one
    assert!(u
        .select(&SelectCtx {
            exclude: &[0],
            panicked: true,
            ..Default::default()
        })
        .is_none());
    // a success brings the server back at once
    p.success();
    assert_eq!(u.servers[0].state(), ServerState::Up);
    let p = u.select(&SelectCtx::default()).unwrap();
    assert_eq!((p.index, p.panic), (0, false));
}

#[test]
fn no_panic_while_a_server_is_in_rotation() {
    let mut a = server(1, 1);
    a.max_fails = 1;
    let u = upstream(Balance::RoundRobin, vec![a, server(2, 1)]);
    u.select(&SelectCtx {
        exclude: &[1],
        ..Default::default()
    })
    .unwrap()
    .failure();
    // server 1 is up but already tried: the request has no server left
    assert!(u
        .select(&SelectCtx {
            exclude: &[1],
            ..Default::default()
        })
        .is_none());
}
