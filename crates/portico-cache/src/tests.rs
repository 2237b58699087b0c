use super::*;
use bytes::Bytes;
use http::HeaderValue;

fn zone(memory: u64, disk: Option<(PathBuf, u64)>) -> Arc<Zone> {
    Zone::new(ZoneSettings {
        name: "t".into(),
        memory,
        disk,
    })
    .unwrap()
}

fn meta(key: &str, vary: Vec<(HeaderName, Vec<u8>)>) -> Meta {
    Meta {
        key: key.into(),
        status: 200,
        headers: HeaderMap::new(),
        times: Times {
            lifetime_ms: 60_000,
            ..Times::default()
        },
        vary,
        upstream: None,
    }
}

fn object(key: &str, body: &str) -> Object {
    Object {
        meta: meta(key, Vec::new()),
        body: Bytes::copy_from_slice(body.as_bytes()),
    }
}

fn req(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.append(*n, HeaderValue::from_static(v));
    }
    h
}

#[tokio::test]
async fn stores_and_finds_by_key() {
    let z = zone(1 << 20, None);
    assert!(z.lookup("k1", &HeaderMap::new()).await.is_none());
    z.insert(object("k1", "one"));
    let found = z.lookup("k1", &HeaderMap::new()).await.unwrap();
    assert_eq!(found.body, "one");
    assert!(z.lookup("k2", &HeaderMap::new()).await.is_none());
}

#[tokio::test]
async fn one_object_per_variant() {
    let z = zone(1 << 20, None);
    let ae = http::header::ACCEPT_ENCODING;
    for (accept, body) in [("gzip", "zipped"), ("", "plain")] {
        let mut h = HeaderMap::new();
        if !accept.is_empty() {
            h.insert(&ae, HeaderValue::from_static(accept));
        }
        let vary = vec![(ae.clone(), vary_value(&h, &ae))];
        z.insert(Object {
            meta: meta("k", vary),
            body: Bytes::from_static(body.as_bytes()),
        });
    }
    // the way a browser spells it does not matter
    let gz = z
        .lookup("k", &req(&[("accept-encoding", "deflate;q=0, GZIP")]))
        .await
        .unwrap();
    assert_eq!(gz.body, "zipped");
    let plain = z.lookup("k", &HeaderMap::new()).await.unwrap();
    assert_eq!(plain.body, "plain");
    assert!(z
        .lookup("k", &req(&[("accept-encoding", "br")]))
        .await
        .is_none());
    assert_eq!(z.purge_key("k"), 2);
    assert!(z.lookup("k", &HeaderMap::new()).await.is_none());
}

#[test]
fn vary_values_are_normalised() {
    let ae = http::header::ACCEPT_ENCODING;
    let a = vary_value(&req(&[("accept-encoding", "gzip, deflate, br")]), &ae);
    let b = vary_value(&req(&[("accept-encoding", "br;q=1.0,gzip ,deflate")]), &ae);
    assert_eq!(a, b);
    assert_eq!(a, b"br,deflate,gzip");
    let lang = HeaderName::from_static("accept-language");
    assert_eq!(
        vary_value(&req(&[("accept-language", " en   GB ")]), &lang),
        b"en GB"
    );
    assert_eq!(
        vary_names(&req(&[
            ("vary", "Accept-Encoding, cookie"),
            ("vary", "accept-encoding")
        ])),
        vec![ae, http::header::COOKIE]
    );
}

#[tokio::test]
async fn purge_by_prefix_counts_objects() {
    let z = zone(1 << 20, None);
    for k in ["http://a/x", "http://a/y", "http://b/x"] {
        z.insert(object(k, "b"));
    }
    assert_eq!(z.purge_prefix("http://a/"), 2);
    assert_eq!(z.purge_prefix("http://a/"), 0);
    assert!(z.lookup("http://b/x", &HeaderMap::new()).await.is_some());
}

#[tokio::test]
async fn memory_is_bounded_in_bytes() {
    let z = zone(64 * 1024, None);
    let body = "x".repeat(1000);
    for i in 0..500 {
        z.insert(object(&format!("k{i}"), &body));
    }
    let u = z.usage();
    assert!(u.memory_bytes <= 64 * 1024, "{u:?}");
    assert!(z.stats.memory_evictions.load(Ordering::Relaxed) > 0);
}

#[tokio::test]
async fn disk_tier_survives_a_restart_and_refuses_torn_files() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Some((dir.path().to_path_buf(), 1 << 20));
    {
        let z = zone(1 << 20, disk.clone());
        z.insert(object("kept", "on disk"));
        z.insert(object("torn", "will be cut"));
        wait_until(|| z.usage().disk_objects == 2).await;
    }
    // cut one file short, as a crash mid-write would
    let torn = dir
        .path()
        .join(format!("{:02x}", key_id("torn") >> 120))
        .join(format!("{:032x}", key_id("torn")));
    let bytes = std::fs::read(&torn).unwrap();
    std::fs::write(&torn, &bytes[..bytes.len() - 3]).unwrap();
    // and leave a temp file behind
    std::fs::write(dir.path().join("tmp").join("leftover"), b"x").unwrap();

    let z = zone(1 << 20, disk);
    wait_until(|| z.usage().disk_objects == 2).await;
    let kept = z.lookup("kept", &HeaderMap::new()).await.unwrap();
    assert_eq!(kept.body, "on disk");
    assert!(z.lookup("torn", &HeaderMap::new()).await.is_none());
    assert_eq!(z.disk.as_ref().unwrap().torn.load(Ordering::Relaxed), 1);
    assert!(!dir.path().join("tmp").join("leftover").exists());
}

#[tokio::test]
async fn disk_is_bounded_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let z = zone(1 << 20, Some((dir.path().to_path_buf(), 20_000)));
    let body = "y".repeat(4000);
    for i in 0..20 {
        z.insert(object(&format!("k{i}"), &body));
    }
    wait_until(|| z.disk.as_ref().unwrap().evictions.load(Ordering::Relaxed) > 0).await;
    wait_until(|| {
        z.usage().disk_objects + z.disk.as_ref().unwrap().evictions.load(Ordering::Relaxed) == 20
    })
    .await;
    assert!(z.usage().disk_bytes <= 20_000);
}

#[tokio::test]
async fn one_fill_per_key_and_waiters_wake() {
    let z = zone(1 << 20, None);
    let Lock::Leader(guard) = z.lock("k") else {
        panic!("the first request leads");
    };
    let Lock::Wait(rx) = z.lock("k") else {
        panic!("the second waits");
    };
    assert!(z.is_filling("k"));
    let waiter = tokio::spawn(wait_fill(rx, Duration::from_secs(30)));
    let mut f = Filler::new(
        Arc::clone(&z),
        meta("k", Vec::new()),
        None,
        100,
        Some(guard),
    )
    .unwrap();
    f.push(b"hello");
    f.finish();
    assert!(waiter.await.unwrap(), "woken when the fill ended");
    assert!(!z.is_filling("k"));
    assert_eq!(
        z.lookup("k", &HeaderMap::new()).await.unwrap().body,
        "hello"
    );
    // a waiter gives up after its timeout
    let Lock::Leader(_held) = z.lock("j") else {
        panic!()
    };
    let Lock::Wait(rx) = z.lock("j") else {
        panic!()
    };
    assert!(!wait_fill(rx, Duration::from_millis(10)).await);
}

#[tokio::test]
async fn fillers_store_only_complete_bodies_within_bounds() {
    let z = zone(1 << 20, None);
    let mut big = Filler::new(Arc::clone(&z), meta("big", Vec::new()), None, 4, None).unwrap();
    big.push(b"12345");
    assert!(big.finish().is_none());
    let declared = meta("short", Vec::new());
    let mut short = Filler::new(Arc::clone(&z), declared.clone(), Some(10), 100, None).unwrap();
    short.push(b"123");
    assert!(!short.is_complete());
    assert!(short.finish().is_none(), "cut short");
    assert!(Filler::new(Arc::clone(&z), declared.clone(), Some(10), 5, None).is_none());
    let mut whole = Filler::new(Arc::clone(&z), declared, Some(3), 100, None).unwrap();
    whole.push(b"abc");
    assert!(whole.is_complete());
    assert!(whole.finish().is_some());
    let dropped = Filler::new(Arc::clone(&z), meta("dropped", Vec::new()), None, 100, None);
    drop(dropped);
    assert!(z.lookup("dropped", &HeaderMap::new()).await.is_none());
    assert_eq!(z.stats.not_stored.load(Ordering::Relaxed), 3);
}

#[test]
fn reload_keeps_zones_with_the_same_storage() {
    let s = |memory| ZoneSettings {
        name: "main".into(),
        memory,
        disk: None,
    };
    let first = Zones::build([s(1 << 20)], &Zones::default()).unwrap();
    let same = Zones::build([s(1 << 20)], &first).unwrap();
    assert!(Arc::ptr_eq(&first.zones["main"], &same.zones["main"]));
    let changed = Zones::build([s(2 << 20)], &same).unwrap();
    assert!(!Arc::ptr_eq(&same.zones["main"], &changed.zones["main"]));
}

async fn wait_until(cond: impl Fn() -> bool) {
    for _ in 0..2000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("condition not reached in 10 s");
}
