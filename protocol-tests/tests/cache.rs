//! The response cache in front of real apps: the Flask app's `/cached/TAG` endpoint
//! (it counts the requests that reach it in a file, and answers with the Cache-Control,
//! ETag, Vary, … the query asks for) under gunicorn (HTTP), uWSGI (uwsgi) and flup
//! (FastCGI) through one cached route each; nginx proxy_cache beside it for the status
//! sequence; the admin purge, /status and /metrics; the disk tier across a restart and
//! the memory across a reload; and the config checks.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// A tag no other test (or earlier run) uses: the app counts per tag.
fn tag(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{name}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// How many requests for `tag` reached the app (`.304` for its 304 answers).
fn app_count(tag: &str) -> u32 {
    let dir = std::env::temp_dir().join("portico-cache-test");
    std::fs::read_to_string(dir.join(tag))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn status(r: &CurlResponse) -> &str {
    r.header("x-cache-status").unwrap_or("-")
}

const CACHES: &str = r#"
[admin]
listen = "127.0.0.1:{admin}"
[caches.main]
memory = "32MiB"
"#;

/// Portico with `[caches.main]` and one cached route to gunicorn; `cache` is added to
/// the route's cache table, `top` before the upstreams.
fn cached(app: u16, top: &str, cache: &str) -> Portico {
    cached_via(app, "http", top, cache)
}

/// [`cached`] through `via` (http, uwsgi, fastcgi: flup rebuilds PATH_INFO from
/// SCRIPT_NAME, so the Flask app gets SCRIPT_NAME "", as nginx users set it).
fn cached_via(app: u16, via: &str, top: &str, cache: &str) -> Portico {
    let params = match via {
        "fastcgi" => r#"params = { SCRIPT_NAME = "", PATH_INFO = "$document_uri" }"#,
        _ => "",
    };
    Portico::start(&format!(
        r#"{CACHES}
{top}
[upstreams.app]
servers = [{{ addr = "127.0.0.1:{app}" }}]
[[listeners]]
listen = ["127.0.0.1:{{port}}"]
  [[listeners.routes]]
  path = "/"
  upstream = "app"
  via = "{via}"
  {params}
    [listeners.routes.cache]
    zone = "main"
    status_header = "X-Cache-Status"
{cache}
"#
    ))
}

/// MISS, then HIT with Age, HEAD from the cached GET, a range and a conditional request
/// answered from the object — the same through gunicorn (HTTP), uWSGI and flup.
#[test]
fn hits_through_http_uwsgi_and_fastcgi_alike() {
    let (g, u, f) = (free_port(), free_port(), free_port());
    let _gunicorn = gunicorn_tcp(g, "cache", &[]);
    let _uwsgi = uwsgi(Bind::Tcp(u), &[]);
    let _flup = flup(Bind::Tcp(f));
    let valid = "    valid = { \"200\" = \"10m\" }\n";
    let ps = [
        (cached_via(g, "http", "", valid), "gunicorn"),
        (cached_via(u, "uwsgi", "", valid), "uwsgi"),
        (cached_via(f, "fastcgi", "", valid), "flup"),
    ];
    for (p, what) in &ps {
        let t = tag(what);
        let url = p.url(&format!(
            "/cached/{t}?etag=v1&lm=Mon,%2001%20Jan%202024%2000:00:00%20GMT"
        ));
        let first = curl(&[], &url);
        assert_eq!(
            (first.status, status(&first)),
            (200, "MISS"),
            "{what}: {first:?}"
        );
        let hit = curl(&[], &url);
        assert_eq!((hit.status, status(&hit)), (200, "HIT"), "{what}");
        assert_eq!(hit.body, first.body, "{what}");
        assert!(hit.header("age").is_some(), "{what}: Age on a hit");
        let head = curl(&["-I"], &url);
        assert_eq!(
            (head.status, status(&head)),
            (200, "HIT"),
            "{what}: HEAD from the GET"
        );
        let len = first.body.len().to_string();
        assert_eq!(head.header("content-length"), Some(len.as_str()), "{what}");
        let range = curl(&["-H", "Range: bytes=0-4"], &url);
        assert_eq!(
            (range.status, range.text().as_str()),
            (206, "count"),
            "{what}"
        );
        let len = first.body.len();
        assert_eq!(
            range.header("content-range"),
            Some(format!("bytes 0-4/{len}").as_str())
        );
        let cond = curl(&["-H", "If-None-Match: \"v1\""], &url);
        assert_eq!((cond.status, status(&cond)), (304, "HIT"), "{what}");
        let since = curl(
            &["-H", "If-Modified-Since: Tue, 02 Jan 2024 00:00:00 GMT"],
            &url,
        );
        assert_eq!(since.status, 304, "{what}");
        assert_eq!(app_count(&t), 1, "{what}: one request reached the app");
    }
}

/// The upstream's Cache-Control and Expires win over `valid`; no-store, private,
/// Set-Cookie and uncacheable statuses are not stored; `store_with_cookies` stores.
#[test]
fn freshness_comes_from_the_upstream_first() {
    let app = free_port();
    let _g = gunicorn_tcp(app, "cache", &[]);
    let p = cached(
        app,
        "",
        "    valid = { \"200\" = \"10m\", \"404\" = \"1m\" }\n",
    );
    let twice = |query: &str| {
        let t = tag("fresh");
        let url = p.url(&format!("/cached/{t}{query}"));
        let a = curl(&[], &url);
        let b = curl(&[], &url);
        (
            app_count(&t),
            status(&a).to_string(),
            status(&b).to_string(),
        )
    };
    assert_eq!(twice("").0, 1, "valid 200 = 10m stores");
    assert_eq!(twice("?cc=max-age=60").0, 1);
    for q in [
        "?cc=no-store",
        "?cc=private,max-age=60",
        "?cookie=1",
        "?cc=max-age=0",
        "?status=500",
        "?cc=no-cache",
    ] {
        let (n, a, b) = twice(q);
        assert_eq!(n, 2, "{q}: not stored");
        assert_eq!((a.as_str(), b.as_str()), ("MISS", "MISS"), "{q}");
    }
    assert_eq!(twice("?status=404").0, 1, "valid 404 = 1m stores a 404");
    assert_eq!(twice("?status=404&cc=no-store").0, 2);
    // max-age=2 and Expires in 3 s (Date and Expires have whole seconds: 2–3 s):
    // stale once that has passed, EXPIRED, fetched again
    for q in ["?cc=max-age=2", "?expires=3"] {
        let t = tag("expiry");
        let url = p.url(&format!("/cached/{t}{q}"));
        assert_eq!(status(&curl(&[], &url)), "MISS");
        assert_eq!(status(&curl(&[], &url)), "HIT");
        std::thread::sleep(Duration::from_millis(3100)); // the object's lifetime passing
        let again = curl(&[], &url);
        assert_eq!(status(&again), "EXPIRED", "{q}");
        assert_eq!(app_count(&t), 2, "{q}");
    }

    let cookies = cached(
        app,
        "",
        "    valid = { \"200\" = \"10m\" }\n    store_with_cookies = true\n",
    );
    let t = tag("cookie");
    let url = cookies.url(&format!("/cached/{t}?cookie=1"));
    curl(&[], &url);
    let hit = curl(&[], &url);
    assert_eq!(status(&hit), "HIT");
    assert!(
        hit.header("set-cookie").is_some(),
        "the stored Set-Cookie is sent"
    );
    assert_eq!(app_count(&t), 1);
}

/// A stale object with an ETag is revalidated: the app answers 304, the object is
/// refreshed and served (REVALIDATED), its body never sent again.
#[test]
fn stale_objects_are_revalidated() {
    let app = free_port();
    let _g = gunicorn_tcp(app, "cache", &[]);
    let p = cached(app, "", "");
    let t = tag("reval");
    let url = p.url(&format!("/cached/{t}?cc=max-age=1&etag=e1"));
    let first = curl(&[], &url);
    assert_eq!(status(&first), "MISS");
    std::thread::sleep(Duration::from_millis(2100)); // the object's lifetime passing
    let r = curl(&[], &url);
    assert_eq!((r.status, status(&r)), (200, "REVALIDATED"));
    assert_eq!(r.body, first.body, "the stored body");
    assert_eq!(app_count(&t), 1);
    assert_eq!(app_count(&format!("{t}.304")), 1, "one 304 from the app");
    assert_eq!(status(&curl(&[], &url)), "HIT", "fresh again after the 304");
    // a client's own conditional request is answered by the cache, not sent upstream
    let cond = curl(&["-H", "If-None-Match: \"e1\""], &url);
    assert_eq!(cond.status, 304);
    assert_eq!(app_count(&format!("{t}.304")), 1);
}

/// The app down: `use_stale = ["error"]` serves the stale copy (STALE); stale-if-error
/// from the app does so without use_stale; without either the client gets the 502.
#[test]
fn stale_copies_stand_in_when_the_app_is_down() {
    let app = free_port();
    let mut g = gunicorn_tcp(app, "cache", &[]);
    let with = cached(app, "", "    use_stale = [\"error\", \"timeout\"]\n");
    let without = cached(app, "", "");
    let t = tag("down");
    let q = format!("/cached/{t}?cc=max-age=1");
    let sie = format!("/cached/{t}?cc=max-age=1,stale-if-error=600");
    for (p, path) in [(&with, &q), (&without, &q), (&without, &sie)] {
        assert_eq!(status(&curl(&[], &p.url(path))), "MISS");
    }
    std::thread::sleep(Duration::from_millis(2100)); // stale now
    g.stop();
    let r = curl(&[], &with.url(&q));
    assert_eq!((r.status, status(&r)), (200, "STALE"));
    assert!(r.text().starts_with("count="), "the stale body");
    let r = curl(&[], &without.url(&sie));
    assert_eq!((r.status, status(&r)), (200, "STALE"), "stale-if-error");
    let r = curl(&[], &without.url(&q));
    assert_eq!(r.status, 502, "nothing allows the stale copy");
    // a miss has nothing to stand in
    assert_eq!(
        curl(&[], &with.url(&format!("/cached/{}", tag("never")))).status,
        502
    );
}

/// `lock = true`: fifty clients missing the same slow page at once send one request to
/// the app; all get its answer.
#[test]
fn concurrent_misses_send_one_request() {
    let app = free_port();
    let _g = gunicorn_tcp(app, "cache", &[]);
    let p = cached(
        app,
        "",
        "    valid = { \"200\" = \"10m\" }\n    lock = true\n",
    );
    let t = tag("lock");
    let url = p.url(&format!("/cached/{t}?sleep=800"));
    let urls: Vec<&str> = std::iter::repeat_n(["-o", "/dev/null", url.as_str()], 50)
        .flatten()
        .collect();
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "30",
            "--parallel",
            "--parallel-immediate",
            "--parallel-max",
            "50",
        ])
        .args(["-w", "%{http_code} %header{x-cache-status}\n"])
        .args(&urls)
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&out.stdout).to_string();
    let mut got: Vec<&str> = lines.lines().collect();
    got.sort_unstable();
    assert_eq!(got.len(), 50, "{lines}");
    assert_eq!(
        got.iter().filter(|l| **l == "200 HIT").count(),
        49,
        "{lines}"
    );
    assert_eq!(
        got.iter().filter(|l| **l == "200 MISS").count(),
        1,
        "{lines}"
    );
    assert_eq!(app_count(&t), 1);
}

/// `lock_timeout`: clients that waited that long for the leader's fill go upstream
/// themselves (nginx's proxy_cache_lock_timeout): the slow page is fetched by every
/// client, each answered MISS.
#[test]
fn lock_timeout_sends_the_waiters_upstream() {
    let app = free_port();
    let _g = gunicorn_tcp(app, "cache", &[]);
    let p = cached(
        app,
        "",
        "    valid = { \"200\" = \"10m\" }\n    lock = true\n    lock_timeout = \"200ms\"\n",
    );
    let t = tag("lock-timeout");
    // slower than the lock timeout; gunicorn's two workers take the three in turn
    let url = p.url(&format!("/cached/{t}?sleep=1500"));
    let urls: Vec<&str> = std::iter::repeat_n(["-o", "/dev/null", url.as_str()], 3)
        .flatten()
        .collect();
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "30",
            "--parallel",
            "--parallel-immediate",
        ])
        .args(["-w", "%{http_code} %header{x-cache-status}\n"])
        .args(&urls)
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&out.stdout).to_string();
    let got: Vec<&str> = lines.lines().collect();
    assert_eq!(got, ["200 MISS"; 3], "{lines}");
    assert_eq!(app_count(&t), 3, "every waiter went upstream itself");
    // and the page is cached from then on
    let r = curl(&[], &url);
    assert_eq!(status(&r), "HIT");
    assert_eq!(app_count(&t), 3);
}

/// `background_update`: the stale copy is served at once (UPDATING) while one
/// background request refreshes it; the next requests get the new copy.
#[test]
fn background_update_serves_stale_and_refreshes() {
    let app = free_port();
    let _g = gunicorn_tcp(app, "cache", &[]);
    let p = cached(
        app,
        "",
        "    use_stale = [\"updating\"]\n    background_update = true\n",
    );
    let t = tag("bg");
    let url = p.url(&format!("/cached/{t}?cc=max-age=1"));
    let first = curl(&[], &url);
    assert!(first.text().starts_with("count=1"));
    std::thread::sleep(Duration::from_millis(2100)); // stale now
    let r = curl(&[], &url);
    assert_eq!(status(&r), "UPDATING");
    assert!(r.text().starts_with("count=1"), "the stale copy, at once");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = curl(&[], &url);
        if status(&r) == "HIT" && r.text().starts_with("count=2") {
            break;
        }
        assert!(Instant::now() < deadline, "never refreshed: {r:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(app_count(&t), 2, "one background request");
}

/// Vary: one object per variant, with Accept-Encoding normalised (the spellings of
/// "gzip" share one variant).
#[test]
fn one_object_per_variant() {
    let app = free_port();
    let _g = gunicorn_tcp(app, "cache", &[]);
    let p = cached(app, "", "    valid = { \"200\" = \"10m\" }\n");
    let t = tag("vary");
    let url = p.url(&format!("/cached/{t}?vary=Accept-Encoding"));
    let ask = |ae: &str| {
        let r = curl(&["-H", &format!("Accept-Encoding: {ae}")], &url);
        (status(&r).to_string(), r.text())
    };
    let (s, gz) = ask("gzip");
    assert_eq!(s, "MISS");
    let (s, br) = ask("br");
    assert_eq!(s, "MISS");
    assert_ne!(gz, br);
    assert_eq!(ask("GZIP;q=1.0"), ("HIT".into(), gz.clone()));
    assert_eq!(ask("gzip, identity"), ("HIT".into(), gz));
    assert_eq!(ask("br"), ("HIT".into(), br));
    assert_eq!(app_count(&t), 2);
    // Vary: * is never stored
    let star = tag("star");
    let url = p.url(&format!("/cached/{star}?vary=*"));
    curl(&[], &url);
    assert_eq!(status(&curl(&[], &url)), "MISS");
}

/// `bypass` conditions and Authorization (without `store_authorized`): BYPASS, not
/// looked up, not stored; `no_store`: looked up, not stored; `methods`.
#[test]
fn bypass_no_store_authorization_and_methods() {
    let app = free_port();
    let _g = gunicorn_tcp(app, "cache", &[]);
    let p = cached(
        app,
        "",
        "    valid = { \"200\" = \"10m\" }\n    bypass = [\"$cookie_nocache\", \"$http_x_bypass\"]\n    no_store = [\"$http_x_no_store\"]\n",
    );
    let t = tag("bypass");
    let url = p.url(&format!("/cached/{t}"));
    assert_eq!(status(&curl(&["-b", "nocache=1"], &url)), "BYPASS");
    assert_eq!(
        status(&curl(&["-H", "Authorization: Basic YTpi"], &url)),
        "BYPASS"
    );
    assert_eq!(status(&curl(&["-H", "X-Bypass: yes"], &url)), "BYPASS");
    assert_eq!(
        status(&curl(&["-b", "nocache=0"], &url)),
        "MISS",
        "\"0\" is not a bypass"
    );
    assert_eq!(
        status(&curl(&["-b", "nocache=1"], &url)),
        "BYPASS",
        "not looked up"
    );
    assert_eq!(status(&curl(&[], &url)), "HIT");
    assert_eq!(app_count(&t), 5);
    let n = tag("nostore");
    let url = p.url(&format!("/cached/{n}"));
    assert_eq!(status(&curl(&["-H", "X-No-Store: 1"], &url)), "MISS");
    assert_eq!(status(&curl(&[], &url)), "MISS", "nothing was stored");
    assert_eq!(
        status(&curl(&["-H", "X-No-Store: 1"], &url)),
        "HIT",
        "but looked up"
    );
    // POST is not cached by default
    let post = tag("post");
    let url = p.url(&format!("/cached/{post}"));
    for _ in 0..2 {
        let r = curl(&["-X", "POST", "-d", "x"], &url);
        assert_eq!((r.status, r.header("x-cache-status")), (200, None));
    }
    assert_eq!(app_count(&post), 2);
}

/// A cached page never bypasses access control: the access phase runs before the
/// cache; and `max_object` keeps big answers out.
#[test]
fn access_control_before_the_cache_and_max_object() {
    let app = free_port();
    let _g = gunicorn_tcp(app, "cache", &[]);
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("users");
    std::fs::write(&htpasswd, "alice:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n").unwrap();
    let p = cached(
        app,
        "",
        &format!(
            "    valid = {{ \"200\" = \"10m\" }}\n    max_object = \"10k\"\n  [listeners.routes.basic_auth]\n  htpasswd = \"{}\"\n",
            htpasswd.display()
        ),
    );
    let t = tag("auth");
    let url = p.url(&format!("/cached/{t}"));
    // store_authorized off: a request with credentials is not served from the cache
    let ok = curl(&["-u", "alice:secret"], &url);
    assert_eq!((ok.status, status(&ok)), (200, "BYPASS"));
    assert_eq!(curl(&[], &url).status, 401);
    let p2 = cached(
        app,
        "",
        &format!(
            "    valid = {{ \"200\" = \"10m\" }}\n    store_authorized = true\n    max_object = \"10k\"\n  [listeners.routes.basic_auth]\n  htpasswd = \"{}\"\n",
            htpasswd.display()
        ),
    );
    let url = p2.url(&format!("/cached/{t}"));
    assert_eq!(status(&curl(&["-u", "alice:secret"], &url)), "MISS");
    assert_eq!(status(&curl(&["-u", "alice:secret"], &url)), "HIT");
    let anon = curl(&[], &url);
    assert_eq!(
        (anon.status, status(&anon)),
        (401, "-"),
        "the cached page stays behind auth"
    );
    let wrong = curl(&["-u", "alice:nope"], &url);
    assert_eq!(wrong.status, 401);
    // 20 KB is over max_object: served, not stored
    let big = tag("big");
    let url = p2.url(&format!("/cached/{big}?size=20000"));
    for _ in 0..2 {
        let r = curl(&["-u", "alice:secret"], &url);
        assert_eq!((r.status, r.body.len(), status(&r)), (200, 20000, "MISS"));
    }
}

/// Purge from the admin listener by key and by prefix; counters in /status and
/// /metrics.
#[test]
fn purge_status_and_metrics() {
    let app = free_port();
    let _g = gunicorn_tcp(app, "cache", &[]);
    let p = cached(app, "", "    valid = { \"200\" = \"10m\" }\n");
    let (a, b) = (tag("purge-a"), tag("purge-b"));
    for t in [&a, &b] {
        for _ in 0..2 {
            curl(&[], &p.url(&format!("/cached/{t}?x=1")));
        }
    }
    let admin = |q: &str| {
        curl(
            &["-X", "DELETE"],
            &format!("http://127.0.0.1:{}/cache/main?{q}", p.admin_port),
        )
    };
    let s = curl(&[], &format!("http://127.0.0.1:{}/status", p.admin_port)).json();
    let zone = &s["caches"]["main"];
    assert!(zone["memory"]["bytes"].as_u64().unwrap() > 0, "{zone}");
    assert_eq!(zone["stores"].as_u64(), Some(2), "{zone}");
    // the default key is $scheme$host$request_uri, as nginx's
    let key = format!("http127.0.0.1/cached/{a}?x=1");
    let r = admin(&format!(
        "key={}",
        key.replace('/', "%2F")
            .replace('?', "%3F")
            .replace('=', "%3D")
    ));
    assert_eq!(
        (r.status, r.json()["purged"].as_u64()),
        (200, Some(1)),
        "{r:?}"
    );
    assert_eq!(
        admin(&format!(
            "key={}",
            key.replace('?', "%3F").replace('=', "%3D")
        ))
        .status,
        404
    );
    assert_eq!(
        status(&curl(&[], &p.url(&format!("/cached/{a}?x=1")))),
        "MISS"
    );
    let r = admin("prefix=http127.0.0.1/cached/purge-");
    assert_eq!(r.json()["purged"].as_u64(), Some(2));
    assert_eq!(admin("prefix=nothing").status, 404);
    assert_eq!(
        curl(
            &["-X", "DELETE"],
            &format!("http://127.0.0.1:{}/cache/other?key=k", p.admin_port)
        )
        .status,
        404
    );
    assert_eq!(
        curl(
            &[],
            &format!("http://127.0.0.1:{}/cache/main?key=k", p.admin_port)
        )
        .status,
        405
    );

    let s = curl(&[], &format!("http://127.0.0.1:{}/status", p.admin_port)).json();
    let zone = &s["caches"]["main"];
    assert!(zone["lookups"]["hit"].as_u64().unwrap() >= 2, "{zone}");
    assert!(zone["lookups"]["miss"].as_u64().unwrap() >= 3, "{zone}");
    assert_eq!(zone["purged"].as_u64(), Some(3));
    let m = curl(&[], &format!("http://127.0.0.1:{}/metrics", p.admin_port)).text();
    for needle in [
        "portico_cache_requests_total{zone=\"main\",status=\"HIT\"} 2",
        "portico_cache_bytes{zone=\"main\",tier=\"memory\"}",
        "portico_cache_evictions_total{zone=\"main\",tier=\"memory\"} 0",
    ] {
        assert!(m.contains(needle), "{needle} in\n{m}");
    }
}

/// The disk tier survives a restart (and a torn file in it is not served); a reload
/// keeps the memory tier; `$upstream_cache_status` in a response header.
#[test]
fn disk_survives_restart_and_reload_keeps_the_cache() {
    let app = free_port();
    let _g = gunicorn_tcp(app, "cache", &[]);
    let store = tempfile::tempdir().unwrap();
    let top = format!(
        "[caches.disk]\nmemory = \"1MiB\"\ndisk = {{ path = \"{}\", max = \"10MiB\" }}\n",
        store.path().display()
    );
    let extra = "    valid = { \"200\" = \"10m\" }\n  [listeners.routes.response_headers]\n  set = { \"X-Cache\" = \"$upstream_cache_status\" }\n";
    let config = |zone: &str| {
        format!(
            "{CACHES}\n{top}\n[upstreams.app]\nservers = [{{ addr = \"127.0.0.1:{app}\" }}]\n[[listeners]]\nlisten = [\"127.0.0.1:{{port}}\"]\n  [[listeners.routes]]\n  path = \"/\"\n  upstream = \"app\"\n    [listeners.routes.cache]\n    zone = \"{zone}\"\n    status_header = \"X-Cache-Status\"\n{extra}"
        )
    };
    let (kept, torn) = (tag("disk"), tag("torn"));
    let mut p = Portico::start(&config("disk"));
    for t in [&kept, &torn] {
        let r = curl(&[], &p.url(&format!("/cached/{t}")));
        assert_eq!(r.header("x-cache"), Some("MISS"));
    }
    // written to disk in the background: wait for both files
    let files = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(store.path())
            .unwrap()
            .flatten()
            .filter(|d| d.file_name().len() == 2)
            .flat_map(|d| {
                std::fs::read_dir(d.path())
                    .unwrap()
                    .flatten()
                    .map(|f| f.path())
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while files().len() < 2 {
        assert!(Instant::now() < deadline, "objects not written to disk");
        std::thread::sleep(Duration::from_millis(20));
    }
    // a reload with the same zone keeps its objects
    assert!(p.reload(&config("disk")));
    assert_eq!(
        curl(&[], &p.url(&format!("/cached/{kept}"))).header("x-cache"),
        Some("HIT")
    );
    p.proc.kill();
    // cut the second object's file short, as a crash mid-write would
    for f in files() {
        let bytes = std::fs::read(&f).unwrap();
        if String::from_utf8_lossy(&bytes).contains(&torn) {
            std::fs::write(&f, &bytes[..bytes.len() - 5]).unwrap();
        }
    }
    let p = Portico::start(&config("disk"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = curl(&[], &format!("http://127.0.0.1:{}/status", p.admin_port)).json();
        if s["caches"]["disk"]["disk"]["objects"].as_u64() == Some(2) {
            break;
        }
        assert!(Instant::now() < deadline, "disk tier not indexed: {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = curl(&[], &p.url(&format!("/cached/{kept}")));
    assert_eq!(
        (r.status, status(&r)),
        (200, "HIT"),
        "from disk after a restart"
    );
    assert!(r.text().starts_with("count=1"));
    let r = curl(&[], &p.url(&format!("/cached/{torn}")));
    assert_eq!(
        (r.status, status(&r)),
        (200, "MISS"),
        "a torn file is not served"
    );
    assert!(r.text().starts_with("count=2"));
    assert_eq!(app_count(&kept), 1);
}

/// The same sequence of cache statuses as nginx proxy_cache (with
/// proxy_cache_revalidate and proxy_cache_use_stale error) for the same app: MISS,
/// HIT, REVALIDATED after expiry, EXPIRED when the ETag changed, STALE once the app is
/// down, and the same number of requests reaching the app.
#[test]
fn the_same_statuses_as_nginx_proxy_cache() {
    let dir = tempfile::tempdir().unwrap();
    let app = free_port();
    let mut g = gunicorn_tcp(app, "cache", &[]);
    let p = cached(app, "", "    use_stale = [\"error\", \"timeout\"]\n");
    let nginx_port = free_port();
    let _nginx = nginx(
        dir.path(),
        &format!(
            "http {{\n {temp}\n access_log off;\n proxy_cache_path {cache} keys_zone=main:1m;\n server {{\n listen 127.0.0.1:{nginx_port};\n location / {{ proxy_pass http://127.0.0.1:{app}; proxy_cache main; proxy_cache_revalidate on; proxy_cache_use_stale error timeout; add_header X-Cache-Status $upstream_cache_status always; }}\n }}\n}}",
            temp = nginx_http_temp(dir.path()),
            cache = dir.path().join("nginx-cache").display(),
        ),
        nginx_port,
    );
    let bases = [p.url(""), format!("http://127.0.0.1:{nginx_port}")];
    // per side: A has an ETag (revalidated), B none (fetched again)
    let tags: Vec<(String, String)> = (0..2).map(|_| (tag("seq-a"), tag("seq-b"))).collect();
    let mut seqs = [Vec::new(), Vec::new()];
    let ask = |seqs: &mut [Vec<String>; 2], which: usize| {
        for side in 0..2 {
            let url = match which {
                0 => format!(
                    "{}/cached/{}?cc=max-age=1&etag=a",
                    bases[side], tags[side].0
                ),
                _ => format!("{}/cached/{}?cc=max-age=1", bases[side], tags[side].1),
            };
            let r = curl(&[], &url);
            seqs[side].push(format!("{} {}", r.status, status(&r)));
        }
    };
    ask(&mut seqs, 0);
    ask(&mut seqs, 1);
    ask(&mut seqs, 0);
    std::thread::sleep(Duration::from_millis(2100)); // both stale
    ask(&mut seqs, 0);
    ask(&mut seqs, 1);
    std::thread::sleep(Duration::from_millis(2100)); // stale again
    g.stop();
    ask(&mut seqs, 0);
    assert_eq!(seqs[0], seqs[1], "portico vs nginx");
    assert_eq!(
        seqs[0],
        [
            "200 MISS",
            "200 MISS",
            "200 HIT",
            "200 REVALIDATED",
            "200 EXPIRED",
            "200 STALE"
        ]
    );
    for (a, b) in &tags {
        assert_eq!(app_count(a), 1);
        assert_eq!(app_count(&format!("{a}.304")), 1);
        assert_eq!(app_count(b), 2);
    }
}

/// The access log of a MISS and a HIT, beside nginx's: the upstream's address and
/// status on the miss, `-` for both on the hit (no upstream took part).
#[test]
fn a_hit_logs_no_upstream_as_nginx() {
    let dir = tempfile::tempdir().unwrap();
    let app = free_port();
    let _g = gunicorn_tcp(app, "log", &[]);
    let fmt = "$upstream_cache_status $status $upstream_addr $upstream_status";
    let p = cached(
        app,
        &format!("[log]\naccess_log = \"{{dir}}/access.log\"\naccess_log_format = \"t\"\nformats = {{ t = '{fmt}' }}"),
        "",
    );
    let nginx_port = free_port();
    let nginx_log = dir.path().join("nginx-access.log");
    let _nginx = nginx(
        dir.path(),
        &format!(
            "http {{\n {temp}\n log_format t '{fmt}';\n access_log {log} t;\n proxy_cache_path {cache} keys_zone=main:1m;\n server {{\n listen 127.0.0.1:{nginx_port};\n location / {{ proxy_pass http://127.0.0.1:{app}; proxy_cache main; }}\n }}\n}}",
            temp = nginx_http_temp(dir.path()),
            log = nginx_log.display(),
            cache = dir.path().join("nginx-cache").display(),
        ),
        nginx_port,
    );
    let portico_log = p.dir.path().join("access.log");
    let mut lines = Vec::new();
    for (base, log) in [
        (p.url(""), &portico_log),
        (format!("http://127.0.0.1:{nginx_port}"), &nginx_log),
    ] {
        let url = format!("{base}/cached/{}?cc=max-age=60", tag("log"));
        assert_eq!(curl(&[], &url).status, 200);
        assert_eq!(curl(&[], &url).status, 200);
        // both write a line when the answer is done: wait for the two
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let text = loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.lines().count() >= 2 || std::time::Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        lines.push(text.lines().map(str::to_string).collect::<Vec<_>>());
    }
    let up = format!("127.0.0.1:{app}");
    assert_eq!(
        lines[0],
        [format!("MISS 200 {up} 200"), "HIT 200 - -".to_string()]
    );
    assert_eq!(lines[0], lines[1], "portico vs nginx");
}

/// On a route that compresses, a hit is compressed once per stored object and coding
/// (then served as stored), not per hit; a client without Accept-Encoding gets the
/// upstream's bytes; purging the key purges its compressed forms too.
#[test]
fn hits_are_compressed_once_per_object() {
    let app = free_port();
    let _g = gunicorn_tcp(app, "cache", &[]);
    let p = cached(
        app,
        "",
        "    valid = { \"200\" = \"10m\" }\n  [listeners.routes.compress]\n  algorithms = [\"gzip\", \"br\"]\n  types = [\"text/plain\"]\n  min_bytes = 0\n",
    );
    let t = tag("gzip");
    let url = p.url(&format!("/cached/{t}?size=5000"));
    let plain = curl(&[], &url);
    assert_eq!((status(&plain), plain.body.len()), ("MISS", 5000));
    let stores = |p: &Portico| {
        curl(&[], &format!("http://127.0.0.1:{}/status", p.admin_port)).json()["caches"]["main"]
            ["stores"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(stores(&p), 1);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let r = curl(&["-H", "Accept-Encoding: gzip"], &url);
        assert_eq!((r.status, status(&r)), (200, "HIT"));
        assert_eq!(r.header("content-encoding"), Some("gzip"));
        assert!(r
            .headers_named("vary")
            .iter()
            .any(|v| v.contains("Accept-Encoding")));
        assert!(r.body.len() < 1000, "compressed: {} bytes", r.body.len());
        seen.push(r.body);
    }
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "the same stored bytes"
    );
    assert_eq!(stores(&p), 2, "the gzip form stored once");
    let br = curl(&["-H", "Accept-Encoding: br", "--compressed"], &url);
    assert_eq!(
        (br.header("content-encoding"), br.body.clone()),
        (Some("br"), plain.body.clone())
    );
    let unzipped = curl(&["--compressed", "-H", "Accept-Encoding: gzip"], &url);
    assert_eq!(unzipped.body, plain.body);
    let identity = curl(&[], &url);
    assert_eq!(identity.header("content-encoding"), None);
    assert_eq!(identity.body, plain.body);
    assert_eq!(app_count(&t), 1);
    let key = format!("http127.0.0.1/cached/{t}%3Fsize%3D5000");
    let r = curl(
        &["-X", "DELETE"],
        &format!("http://127.0.0.1:{}/cache/main?key={key}", p.admin_port),
    );
    assert_eq!(
        r.json()["purged"].as_u64(),
        Some(3),
        "the object, its gzip and br forms"
    );
}

/// What `portico check` says of bad cache settings.
#[test]
fn config_checks() {
    check_errors(
        r#"
[caches.main]
memory = "10MiB"
disk = { path = "/tmp/x" }
[upstreams.app]
servers = [{ addr = "127.0.0.1:9" }]
[[listeners]]
listen = ["127.0.0.1:0"]
  [[listeners.routes]]
  path = "/"
  upstream = "app"
    [listeners.routes.cache]
    zone = "mainn"
    use_stale = ["eror"]
    valid = { "20x" = "10m", "200" = "ten" }
  [[listeners.routes]]
  path = "/static/"
  static = { root = "." }
    [listeners.routes.cache]
    zone = "main"
    max_object = "1GiB"
    key = "$nope"
"#,
        &[
            "caches.main.disk.max",
            "no [caches.mainn] (did you mean \"main\"?)",
            "\"eror\": use_stale takes",
            "\"20x\": a status",
            "listeners.0.routes.0.cache.valid.200",
            "cache applies to routes with an upstream",
            "unknown variable $nope",
            "max_object",
        ],
    );
}

/// The example config/cached-flask.toml (every key of SPEC.md's cache section) in
/// front of gunicorn: MISS then HIT, the session cookie bypasses, a 404 is kept for
/// its `valid` minute, the disk tier is written, purge by prefix.
#[test]
fn the_example_config_caches_flask() {
    let app = free_port();
    let _g = gunicorn_tcp(app, "cache", &[]);
    let store = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root().join("config/cached-flask.toml"))
        .unwrap()
        .replace("127.0.0.1:8000", &format!("127.0.0.1:{app}"))
        .replace("127.0.0.1:8080", "127.0.0.1:{port}")
        .replace("127.0.0.1:9901", "127.0.0.1:{admin}")
        .replace("/var/cache/portico", &store.path().display().to_string());
    let p = Portico::start(&text);
    let t = tag("example");
    let url = p.url(&format!("/cached/{t}"));
    assert_eq!(status(&curl(&[], &url)), "MISS");
    assert_eq!(status(&curl(&[], &url)), "HIT");
    assert_eq!(status(&curl(&["-b", "sessionid=s1"], &url)), "BYPASS");
    let missing = tag("missing");
    let url404 = p.url(&format!("/cached/{missing}?status=404"));
    assert_eq!(curl(&[], &url404).status, 404);
    let again = curl(&[], &url404);
    assert_eq!((again.status, status(&again)), (404, "HIT"));
    assert_eq!(app_count(&t), 2);
    let s = curl(&[], &format!("http://127.0.0.1:{}/status", p.admin_port)).json();
    assert_eq!(
        s["caches"]["main"]["disk"]["path"].as_str(),
        Some(store.path().display().to_string().as_str())
    );
    let r = curl(
        &["-X", "DELETE"],
        &format!(
            "http://127.0.0.1:{}/cache/main?prefix=http127.0.0.1/cached/",
            p.admin_port
        ),
    );
    assert_eq!(r.json()["purged"].as_u64(), Some(2));
}
