//! Reverse proxying to real Python app servers: gunicorn (Flask) on a Unix socket and
//! uvicorn (ASGI) on TCP, with curl as the client.

mod common;

use common::*;
use std::io::Write;

/// The example config config/gunicorn-unix.toml, pointed at this test's socket and ports.
fn example_config(sock: &std::path::Path) -> String {
    let text = std::fs::read_to_string(root().join("config/gunicorn-unix.toml")).unwrap();
    text.replace("/tmp/portico-flask.sock", &sock.display().to_string())
        .replace("127.0.0.1:8080", "127.0.0.1:{port}")
        .replace("127.0.0.1:9901", "127.0.0.1:{admin}")
        .replace("\"site\"", "\"{dir}/site\"")
}

#[test]
fn example_gunicorn_unix_fronts_flask() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("flask.sock");
    let _app = gunicorn_unix(&sock, "g1", &[]);
    let pdir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(pdir.path().join("site/static")).unwrap();
    std::fs::write(pdir.path().join("site/static/a.css"), "body{}\n").unwrap();
    let p = Portico::start_in(pdir, &example_config(&sock), "toml");

    let r = curl(&[], &p.url("/"));
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello from g1\n");

    // static files next to the app
    let r = curl(&[], &p.url("/static/a.css"));
    assert_eq!((r.status, r.text().as_str()), (200, "body{}\n"));
    assert_eq!(r.header("content-type"), Some("text/css"));

    // what the app sees: forwarding headers, Host preserved, hop-by-hop removed
    let r = curl(
        &[
            "-H",
            "Host: shop.example",
            "-H",
            "X-Forwarded-For: 203.0.113.7",
            "-H",
            "Connection: keep-alive, X-Secret",
            "-H",
            "X-Secret: leak",
            "-H",
            "Keep-Alive: timeout=5",
        ],
        &p.url("/echo?q=%C3%A9&x=1"),
    );
    assert_eq!(r.status, 200);
    let j = r.json();
    let h = &j["headers"];
    assert_eq!(h["host"], "shop.example");
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example");
    assert!(
        h.get("x-secret").is_none(),
        "a header named in Connection is hop-by-hop: {h}"
    );
    assert!(h.get("keep-alive").is_none());
    assert_eq!(
        j["query"], "q=%C3%A9&x=1",
        "the query goes upstream untouched"
    );

    // several Set-Cookie headers survive
    let r = curl(&[], &p.url("/cookies"));
    assert_eq!(
        r.headers_named("set-cookie"),
        vec!["a=1; Path=/", "b=2; Path=/"]
    );

    // the app's status codes are relayed
    for code in [201, 404, 500, 503] {
        assert_eq!(curl(&[], &p.url(&format!("/status/{code}"))).status, code);
    }

    // HEAD has headers and no body
    let (status, text) = raw_status(
        p.addr(),
        b"HEAD / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert!(
        text.ends_with("\r\n\r\n"),
        "no body after the head: {text:?}"
    );

    // Prometheus metrics count what happened
    let metrics = curl(&[], &format!("http://127.0.0.1:{}/metrics", p.admin_port)).text();
    let requests = metrics
        .lines()
        .find(|l| l.starts_with("portico_upstream_requests_total{upstream=\"flask\""))
        .unwrap_or_else(|| panic!("{metrics}"));
    let n: u64 = requests.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 8, "{requests}");
    assert!(
        metrics.contains("portico_http_responses_total{listener=\"web\",class=\"5xx\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("# TYPE portico_connections_accepted_total counter"));

    // the access log has the nginx combined line for a request
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !p.log_text().contains("\"GET /status/503 HTTP/1.1\" 503 ") {
        assert!(std::time::Instant::now() < deadline, "{}", p.log_text());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn bodies_stream_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("flask.sock");
    let _app = gunicorn_unix(&sock, "g1", &[]);
    let p = Portico::start(&proxy_config(&format!("unix:{}", sock.display()), ""));
    // 5 MiB binary POST, with Content-Length and chunked
    let body: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = dir.path().join("body.bin");
    std::fs::File::create(&file)
        .unwrap()
        .write_all(&body)
        .unwrap();
    let expected = sha256_hex(&file);
    for extra in [&[][..], &["-H", "Transfer-Encoding: chunked"][..]] {
        let mut args = vec!["--data-binary"];
        let at = format!("@{}", file.display());
        args.push(&at);
        args.extend_from_slice(extra);
        let r = curl(&args, &p.url("/echo"));
        assert_eq!(r.status, 200, "{}", r.text());
        let j = r.json();
        assert_eq!(j["body_len"], body.len());
        assert_eq!(j["body_sha256"], expected.as_str());
    }
    // a 10 MB streamed (chunked) response arrives whole
    let r = curl(&[], &p.url("/stream?n=1000&size=10000"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 10_000_000);
    assert!(r.body.starts_with(b"000000x"));
    assert_eq!(&r.body[9_990_000..9_990_006], b"000999");
}

fn sha256_hex(path: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn uvicorn_over_tcp_with_h2c_clients() {
    let port = free_port();
    let _app = uvicorn_tcp(port);
    let p = Portico::start(&proxy_config(&format!("127.0.0.1:{port}"), ""));
    let r = curl(&["--http2-prior-knowledge", "-d", "hello"], &p.url("/echo"));
    assert_eq!(r.status, 200);
    assert_eq!(r.version, "HTTP/2");
    let j = r.json();
    assert_eq!(
        j["http_version"], "1.1",
        "upstreams are spoken to in HTTP/1.1"
    );
    assert_eq!(j["body_len"], 5);
    assert_eq!(j["headers"]["host"], format!("127.0.0.1:{}", p.port));
    let r = curl(&["--http2-prior-knowledge"], &p.url("/stream"));
    assert_eq!(r.text().lines().count(), 100);
    assert_eq!(r.text().lines().last(), Some("line 99"));
}

/// One h2 connection, its requests one after another: between two of them the
/// connection is idle, and an idle h2 connection gives back its codec's buffers, its
/// HPACK scratch and its stream slabs (the patched h2 crate, vendor/README.md). What
/// the next request needs comes back: fields the client indexed on the first request
/// (HPACK's dynamic table: `:authority` and a 3,000-byte field, sent by reference the
/// second time) still decode, an upload, an answer head too large for one frame
/// (CONTINUATION), a 1 MiB body, and a request after all of them.
#[test]
fn an_h2_connection_serves_again_after_idling() {
    let port = free_port();
    let _app = uvicorn_tcp(port);
    let p = Portico::start(&proxy_config(&format!("127.0.0.1:{port}"), ""));
    let big = "indexed-value-".repeat(215);
    let upload = "u".repeat(60_000);
    let get = |path: &str| h2_get(path, Some("idle.example"), &[("x-big", big.as_str())]);
    let mut post = get("/upload");
    post[0] = serde_json::json!([":method", "POST"]);
    let script = serde_json::json!({
        "sequential": true,
        "keep_bodies": true,
        "streams": [
            {"headers": get("/first")},
            {"headers": get("/second")},
            {"headers": post, "data": upload},
            {"headers": get("/sized?head=20000&body=0")},
            {"headers": get("/sized?head=10&body=1048576")},
            {"headers": get("/last")},
        ]
    });
    let r = h2_probe(p.port, &script);
    assert_eq!(r["goaway"], serde_json::Value::Null, "{r}");
    let stream = |n: u32| &r["streams"][n.to_string()];
    for n in [1, 3, 5, 7, 9, 11] {
        assert_eq!(stream(n)["status"], 200, "stream {n}: {r}");
        assert_eq!(stream(n)["ended"], true, "stream {n}: {r}");
    }
    let echo = |n: u32| -> serde_json::Value {
        serde_json::from_str(stream(n)["text"].as_str().unwrap_or("")).unwrap()
    };
    for (n, path) in [(1, "/first"), (3, "/second"), (5, "/upload"), (11, "/last")] {
        let e = echo(n);
        assert_eq!(e["path"], path, "{e}");
        assert_eq!(e["headers"]["host"], "idle.example", "{e}");
        assert!(
            e["headers"]["x-big"].as_str() == Some(big.as_str()),
            "{path}: x-big arrived as {:?}",
            e["headers"]["x-big"].as_str().map(str::len)
        );
    }
    assert_eq!(echo(5)["body_len"], 60_000);
    assert_eq!(
        stream(7)["headers"]["x-wide"].as_str().map(str::len),
        Some(20_000)
    );
    assert_eq!(stream(9)["body"], 1_048_576);
}

#[test]
fn dead_and_slow_upstreams_give_502_and_504() {
    let dead = free_port();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("slow.sock");
    let _app = gunicorn_unix(&sock, "slow", &[]);
    let p = Portico::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:{{admin}}"
[upstreams.dead]
servers = [{{ addr = "127.0.0.1:{dead}" }}]
[upstreams.slow]
read_timeout = "1s"
servers = [{{ addr = "unix:{}" }}]
[[listeners]]
listen = ["127.0.0.1:{{port}}"]
  [[listeners.routes]]
  path = "/dead/"
  upstream = "dead"
  [[listeners.routes]]
  path = "/"
  upstream = "slow"
"#,
        sock.display()
    ));
    let r = curl(&[], &p.url("/dead/x?q=1"));
    assert_eq!(r.status, 502);
    assert!(r.text().contains("502 Bad Gateway"));
    // the log line says which request failed, not only which server
    let line = p.wait_log_line("connect failed");
    assert!(
        line.contains("uri=/dead/x?q=1") && line.contains("upstream=dead"),
        "{line}"
    );
    let r = curl(&[], &p.url("/slow?secs=3"));
    assert_eq!(r.status, 504);
    assert!(r.text().contains("504 Gateway Timeout"));
    // passive health: a group's only server is never taken out (nginx's rule), but
    // its failures are counted
    let s = curl(&[], &format!("http://127.0.0.1:{}/status", p.admin_port)).json();
    assert_eq!(s["upstreams"]["dead"]["servers"][0]["state"], "up");
    assert!(
        s["upstreams"]["dead"]["servers"][0]["failures"]
            .as_u64()
            .unwrap()
            >= 1
    );
    // the timeout counted against the slow server too (nginx: proxy_next_upstream
    // timeout), yet as the only server it still serves the next request
    assert!(s["upstreams"]["slow"]["servers"][0]["failures"].as_u64() >= Some(1));
    assert_eq!(s["upstreams"]["slow"]["servers"][0]["state"], "up");
    assert_eq!(curl(&[], &p.url("/")).status, 200);
    let health = curl(&[], &format!("http://127.0.0.1:{}/health", p.admin_port));
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
}

#[test]
fn a_dead_server_is_skipped_without_failing_requests() {
    let dead = free_port();
    let live = free_port();
    let _app = gunicorn_tcp(live, "live", &[]);
    let p = Portico::start(&format!(
        r#"
[upstreams.app]
servers = [{{ addr = "127.0.0.1:{dead}" }}, {{ addr = "127.0.0.1:{live}" }}]
[[listeners]]
listen = ["127.0.0.1:{{port}}"]
  [[listeners.routes]]
  path = "/"
  upstream = "app"
"#
    ));
    for i in 0..20 {
        // idempotent and not: a connect failure sent nothing, so both are retried
        let r = if i % 2 == 0 {
            curl(&[], &p.url("/"))
        } else {
            curl(&["-X", "POST", "-d", "x"], &p.url("/echo"))
        };
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
}

#[test]
fn uvicorn_on_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("uvicorn.sock");
    let _app = uvicorn(Bind::Unix(&sock));
    let p = Portico::start(&proxy_config(&format!("unix:{}", sock.display()), ""));
    let r = curl(&["-d", "over uds"], &p.url("/echo"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 8);
    assert_eq!(r.json()["headers"]["x-forwarded-proto"], "http");
}

/// Sockets on this host whose peer is 127.0.0.1:`port` and that the peer has closed
/// (CLOSE_WAIT: our side still open), from /proc/net/tcp.
fn closed_by_peer(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let peer = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[2] == peer && f[3] == "08"
        })
        .count()
}

#[test]
fn kept_alive_connections_the_upstream_closed_are_not_used() {
    // uvicorn closes a kept-alive connection after 1 s idle: the next request must not
    // go out on it (nor fail, nor count against the server)
    let port = free_port();
    let _app = uvicorn_with(Bind::Tcp(port), &["--timeout-keep-alive", "1"]);
    let p = Portico::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:{{admin}}\"\n{}",
        proxy_config(&format!("127.0.0.1:{port}"), "")
    ));
    for round in 0..3 {
        let r = curl(&[], &p.url("/"));
        assert_eq!(r.status, 200, "round {round}");
        let r = curl(&["-d", "hello"], &p.url("/echo"));
        assert_eq!(
            (r.status, r.json()["body_len"].as_u64()),
            (200, Some(5)),
            "round {round}"
        );
        // the readiness condition: uvicorn has closed the idle connection
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while closed_by_peer(port) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "uvicorn kept the connection"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let r = curl(&[], &p.url("/"));
    assert_eq!(r.status, 200);
    assert!(
        !p.log_text().contains("upstream request failed"),
        "{}",
        p.log_text()
    );
    let s = curl(&[], &format!("http://127.0.0.1:{}/status", p.admin_port)).json();
    assert_eq!(s["upstreams"]["app"]["servers"][0]["failures"], 0);
}
