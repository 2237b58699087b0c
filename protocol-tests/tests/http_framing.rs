//! Request framing and smuggling vectors, sent as raw bytes to Portico and to nginx
//! (Debian's) side by side, each in front of its own recording backend: what each
//! answers, and whether anything reached the backend. The table in docs/http.md
//! ("Framing and smuggling") is this test's output (`cargo nextest run --test
//! http_framing --no-capture` prints it); nginx's column is asserted too, so the table
//! stays true.

mod common;

use common::*;

struct Sides {
    portico: Portico,
    portico_backend: Recorder,
    _nginx: Proc,
    nginx_port: u16,
    nginx_backend: Recorder,
    _dir: tempfile::TempDir,
}

fn sides(answer: fn(&Recorded) -> Vec<u8>) -> Sides {
    let dir = tempfile::tempdir().unwrap();
    let portico_backend = Recorder::start(answer);
    let nginx_backend = Recorder::start(answer);
    let nginx_port = free_port();
    let conf = format!(
        r#"http {{
    {temp}
    access_log off;
    server {{
        listen 127.0.0.1:{nginx_port};
        location / {{
            proxy_pass http://{backend};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}"#,
        temp = nginx_http_temp(dir.path()),
        backend = nginx_backend.addr(),
    );
    let nginx = nginx(dir.path(), &conf, nginx_port);
    let portico = Portico::start(&proxy_config(&portico_backend.addr(), ""));
    Sides {
        portico,
        portico_backend,
        _nginx: nginx,
        nginx_port,
        nginx_backend,
        _dir: dir,
    }
}

/// One vector: the bytes (with `{p}` for a path unique to it) and the answers expected
/// from Portico and from nginx; `reaches` says whether the request may reach the
/// backend through Portico.
struct Vector {
    name: &'static str,
    raw: &'static str,
    portico: u16,
    nginx: u16,
    reaches: bool,
}

const fn v(name: &'static str, raw: &'static str, portico: u16, nginx: u16) -> Vector {
    Vector {
        name,
        raw,
        portico,
        nginx,
        reaches: portico == 200,
    }
}

const VECTORS: &[Vector] = &[
    v("CL + TE", "POST {p} HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, 400),
    v("TE + CL", "POST {p} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n", 400, 400),
    v("duplicate CL, equal", "POST {p} HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd", 400, 400),
    v("duplicate CL, different", "POST {p} HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", 400, 400),
    v("CL list `4, 4`", "POST {p} HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\nabcd", 400, 400),
    v("CL `+4`", "POST {p} HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\nabcd", 400, 400),
    v("TE `chunked, chunked`", "POST {p} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400, 501),
    v("TE chunked in two fields", "POST {p} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, 400),
    v("TE `xchunked`", "POST {p} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400, 501),
    v("TE `chunked, gzip` (final not chunked)", "POST {p} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400, 501),
    v("TE `gzip, chunked` (unknown coding)", "POST {p} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501, 501),
    v("TE empty", "POST {p} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n", 400, 501),
    v("TE in an HTTP/1.0 request", "POST {p} HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, 400),
    v("space before the colon", "POST {p} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400, 400),
    v("tab before the colon", "POST {p} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n", 400, 400),
    v("obs-fold", "GET {p} HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n 2\r\n\r\n", 400, 400),
    v("bare LF line ends", "GET {p} HTTP/1.1\nHost: a\n\n", 200, 200),
    v("bare CR in a value", "GET {p} HTTP/1.1\r\nHost: a\r\nX-A: 1\r2\r\n\r\n", 400, 400),
    v("NUL in a value", "GET {p} HTTP/1.1\r\nHost: a\r\nX-A: 1\x002\r\n\r\n", 400, 400),
    v("NUL in a name", "GET {p} HTTP/1.1\r\nHost: a\r\nX-\x00A: 1\r\n\r\n", 400, 400),
    v("CTL (0x01) in a value", "GET {p} HTTP/1.1\r\nHost: a\r\nX-A: 1\x012\r\n\r\n", 400, 200),
    v("chunk size `+5`", "POST {p} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n", 400, 400),
    v("chunk size `0x5`", "POST {p} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", 400, 400),
    v("chunk size with leading zeros (17 digits)", "POST {p} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n00000000000000005\r\nhello\r\n0\r\n\r\n", 200, 200),
    v("chunk size over 64 bits", "POST {p} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\nhello\r\n0\r\n\r\n", 400, 400),
    v("chunk extension", "POST {p} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n0\r\n\r\n", 200, 200),
    v("bare LF after a chunk size", "POST {p} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", 400, 200),
    v("chunk data longer than its size", "POST {p} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n", 400, 400),
    v("trailers setting Content-Length and Host", "POST {p} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nContent-Length: 99\r\nHost: evil.example\r\n\r\n", 200, 200),
];

fn raw(vector: &str, path: &str) -> Vec<u8> {
    vector.replace("{p}", path).into_bytes()
}

#[test]
fn request_framing_vectors_side_by_side_with_nginx() {
    let s = sides(ok_answer);
    let nginx_addr = std::net::SocketAddr::from(([127, 0, 0, 1], s.nginx_port));
    let mut table = vec![
        "| vector | Portico | nginx 1.22 | reached the backend through Portico |".to_string(),
        "|---|---|---|---|".to_string(),
    ];
    let mut wrong = Vec::new();
    for (i, vec) in VECTORS.iter().enumerate() {
        let path = format!("/v{i}/");
        let (p, _) = first_response(s.portico.addr(), &raw(vec.raw, &path));
        let (n, _) = first_response(nginx_addr, &raw(vec.raw, &path));
        let reached = s.portico_backend.received(&path);
        table.push(format!(
            "| {} | {p} | {n} | {} |",
            vec.name,
            if reached.is_empty() { "no" } else { "yes" }
        ));
        if p != vec.portico || n != vec.nginx || reached.is_empty() == vec.reaches {
            wrong.push(format!(
                "{}: portico {p} (want {}), nginx {n} (want {}), reached {}",
                vec.name,
                vec.portico,
                vec.nginx,
                !reached.is_empty()
            ));
        }
        for r in &reached {
            assert!(
                !r.head.contains("(trailer)"),
                "trailers are not forwarded: {r:?}"
            );
            assert_eq!(r.header("host"), vec!["a"], "{r:?}");
        }
    }
    println!("{}", table.join("\n"));
    assert!(wrong.is_empty(), "{wrong:#?}");
    // nginx forwarded what it accepted, too: the recorder behind it saw those
    assert!(!s.nginx_backend.received("/v").is_empty());
}

/// The guard holds for the whole connection: after a request with `Upgrade:` that the
/// backend did not accept (no 101), and after a request whose chunk line was over
/// 4 KiB, an ambiguous request on the same connection is still refused.
#[test]
fn the_guard_holds_after_an_upgrade_request_and_a_long_chunk_line() {
    let s = sides(ok_answer);
    let smuggled = "POST /smuggled HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let upgrade = format!("GET /up HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n{smuggled}");
    let (status, text) = read_two(s.portico.addr(), upgrade.as_bytes());
    assert_eq!(status, (200, 400), "{text}");
    assert_eq!(s.portico_backend.received("/up").len(), 1);
    assert!(s.portico_backend.received("/smuggled").is_empty());

    let long = format!(
        "POST /long HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;{}\r\nhello\r\n0\r\n\r\n{smuggled}",
        "x".repeat(5000)
    );
    let (p, _) = first_response(s.portico.addr(), long.as_bytes());
    assert_eq!(p, 400, "a chunk line over 4 KiB fails the request");
    assert!(s.portico_backend.received("/smuggled").is_empty());
}

/// Sends `raw` (two pipelined requests) and reads both answers' statuses.
fn read_two(addr: std::net::SocketAddr, raw: &[u8]) -> ((u16, u16), String) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    c.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let statuses: Vec<u16> = text
        .lines()
        .filter(|l| l.starts_with("HTTP/1.1 "))
        .filter_map(|l| l.split(' ').nth(1)?.parse().ok())
        .collect();
    (
        (
            statuses.first().copied().unwrap_or(0),
            statuses.get(1).copied().unwrap_or(0),
        ),
        text,
    )
}

/// Upstream responses with ambiguous framing: Portico answers 502 and relays nothing of
/// them (HAProxy's rule), and does not reuse the connection; nginx relays them.
#[test]
fn ambiguous_upstream_responses_are_502() {
    fn bad_answers(r: &Recorded) -> Vec<u8> {
        match r.target() {
            "/cl-te" => b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nX-Bad: 1\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(),
            "/two-cl" => b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\nX-Bad: 1\r\n\r\nabcd".to_vec(),
            "/bad-chunk" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Bad: 1\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".to_vec(),
            _ => ok_answer(r),
        }
    }
    let s = sides(bad_answers);
    let nginx_addr = std::net::SocketAddr::from(([127, 0, 0, 1], s.nginx_port));
    for path in ["/cl-te", "/two-cl", "/bad-chunk"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
        let (p, head) = first_response(s.portico.addr(), req.as_bytes());
        assert_eq!(p, 502, "{path}: {head}");
        assert!(!head.contains("X-Bad"), "nothing of it is relayed: {head}");
        let conn = s.portico_backend.received(path)[0].conn;
        assert!(
            s.portico_backend.wait_closed(conn),
            "{path}: the connection is closed"
        );
        let (n, _) = first_response(nginx_addr, req.as_bytes());
        println!("{path}: portico {p}, nginx {n}");
    }
    // a good answer after them still works
    assert_eq!(curl(&[], &s.portico.url("/fine")).status, 200);
}

/// HTTP/1.1 response header names keep the case the app wrote (`X-Backend`, not
/// `x-backend`), as nginx relays them; Portico's own are Title-Case.
#[test]
fn response_header_names_keep_the_apps_case() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("app.sock");
    let _app = gunicorn_unix(&sock, "case", &[]);
    let p = Portico::start(&proxy_config(&format!("unix:{}", sock.display()), ""));
    let (status, head) = first_response(
        p.addr(),
        b"GET /headers?X-Backend=one&x-lower=two&X-MiXeD-cAsE=three HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    assert_eq!(status, 200, "{head}");
    for line in [
        "\r\nX-Backend: one\r\n",
        "\r\nx-lower: two\r\n",
        "\r\nX-MiXeD-cAsE: three\r\n",
    ] {
        assert!(head.contains(line), "{line:?} in {head}");
    }
    let (_, own) = first_response(
        p.addr(),
        b"GET /nope HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
    );
    assert!(own.contains("\r\nContent-Type: text/html\r\n"), "{own}");
}
