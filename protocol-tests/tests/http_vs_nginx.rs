//! Side by side with nginx (Debian's), same app, same clients: what the app sees, how
//! bad requests are answered, and the access log line must match.

mod common;

use common::*;
use std::time::{Duration, Instant};

struct Pair {
    _app: Proc,
    _nginx: Proc,
    nginx_port: u16,
    portico: Portico,
    dir: tempfile::TempDir,
}

fn pair() -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("app.sock");
    let app = gunicorn_unix(&sock, "shared", &[]);
    let nginx_port = free_port();
    let conf = format!(
        r#"http {{
    {temp}
    access_log {prefix}/nginx/logs/access.log combined;
    upstream app {{ server unix:{sock}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{nginx_port};
        large_client_header_buffers 4 64k;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
        }}
    }}
}}"#,
        temp = nginx_http_temp(dir.path()),
        prefix = dir.path().display(),
        sock = sock.display(),
    );
    let nginx = nginx(dir.path(), &conf, nginx_port);
    let portico = Portico::start(&format!(
        "[log]\naccess_log = \"{{dir}}/access.log\"\n{}",
        proxy_config(&format!("unix:{}", sock.display()), "")
    ));
    Pair {
        _app: app,
        _nginx: nginx,
        nginx_port,
        portico,
        dir,
    }
}

#[test]
fn the_app_sees_the_same_request() {
    let p = pair();
    let args = [
        "-H",
        "X-Forwarded-For: 198.51.100.1",
        "-H",
        "Connection: X-Drop",
        "-H",
        "X-Drop: 1",
        "-H",
        "Cookie: a=1",
        "-d",
        "payload",
    ];
    let via_nginx = curl(
        &args,
        &format!("http://127.0.0.1:{}/echo?x=%20y", p.nginx_port),
    )
    .json();
    let via_portico = curl(&args, &p.portico.url("/echo?x=%20y")).json();
    for key in ["method", "path", "query", "body_len", "body_sha256"] {
        assert_eq!(via_nginx[key], via_portico[key], "{key}");
    }
    let (hn, hp) = (&via_nginx["headers"], &via_portico["headers"]);
    for h in [
        "x-forwarded-for",
        "x-forwarded-proto",
        "cookie",
        "content-type",
        "content-length",
        "user-agent",
    ] {
        assert_eq!(hn[h], hp[h], "header {h}");
    }
    // RFC 9110 §7.6.1: a header named in Connection is hop-by-hop. nginx forwards it
    // anyway; Portico does not.
    assert!(hp.get("x-drop").is_none(), "{hp}");
    // Host differs only by the port each proxy listens on
    assert_eq!(hn["host"], format!("127.0.0.1:{}", p.nginx_port));
    assert_eq!(hp["host"], format!("127.0.0.1:{}", p.portico.port));
}

#[test]
fn bad_requests_get_the_same_answer() {
    let p = pair();
    let nginx_addr = std::net::SocketAddr::from(([127, 0, 0, 1], p.nginx_port));
    let cases: &[(&str, &[u8])] = &[
        ("no Host on HTTP/1.1", b"GET / HTTP/1.1\r\n\r\n"),
        ("two Host headers", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n"),
        ("invalid Content-Length", b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: x1\r\n\r\n"),
        ("Content-Length with Transfer-Encoding", b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("Transfer-Encoding before Content-Length", b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n"),
        ("equal duplicate Content-Lengths", b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd"),
        ("differing Content-Lengths", b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
        ("bad chunk size", b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
        ("path above the root", b"GET /../x HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("garbage request line", b"HELLO\r\n\r\n"),
        ("fine", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
        (
            "smuggling after a good request",
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcPOST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
    ];
    for (name, raw) in cases {
        let (n, ntext) = raw_status(nginx_addr, raw);
        let (pp, ptext) = raw_status(p.portico.addr(), raw);
        assert_eq!(n, pp, "{name}:\nnginx: {ntext}\nportico: {ptext}");
        // and the same number of responses on the connection (nothing smuggled through)
        assert_eq!(
            ntext.matches("HTTP/1.1 ").count(),
            ptext.matches("HTTP/1.1 ").count(),
            "{name}:\nnginx: {ntext}\nportico: {ptext}"
        );
    }
    // An unknown transfer coding: nginx answers 501, Portico 400 (hyper's parser
    // refuses the request before it reaches Portico; see docs/http.md).
    let raw = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n";
    assert_eq!(raw_status(p.portico.addr(), raw).0, 400);
}

#[test]
fn access_log_lines_match_combined_format() {
    let p = pair();
    let args = ["-A", "test-agent/1.0", "-e", "http://ref.example/"];
    curl(
        &args,
        &format!("http://127.0.0.1:{}/status/201", p.nginx_port),
    );
    curl(&args, &p.portico.url("/status/201"));
    let read = |path: std::path::PathBuf| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.contains("/status/201") {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "no log line in {}",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let strip_time = |line: &str| {
        let (a, rest) = line.split_once(" [").unwrap();
        let (_, b) = rest.split_once("] ").unwrap();
        format!("{a} {b}")
    };
    let n = read(p.dir.path().join("nginx/logs/access.log"));
    let pt = read(p.portico.dir.path().join("access.log"));
    assert_eq!(strip_time(n.trim()), strip_time(pt.trim()));
}
