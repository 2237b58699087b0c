//! A slow client never counts against an upstream, and by default holds no app worker:
//! a dripping upload is not an upstream timeout (the response timeout starts once the
//! request is sent), and with `request_buffering` (on by default for uwsgi and FastCGI)
//! as many dripping uploads as the app has workers do not stop other requests.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// Starts an upload of `len` bytes to `path` sent one byte every `every`; the thread
/// sends back the status and when the answer came.
fn drip(
    addr: SocketAddr,
    path: &str,
    len: usize,
    every: Duration,
) -> mpsc::Receiver<(u16, Instant)> {
    let (tx, rx) = mpsc::channel();
    let path = path.to_string();
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: a\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n"
        )
        .unwrap();
        for _ in 0..len {
            std::thread::sleep(every); // the client's pace: this is what is tested
            if s.write_all(b"x").is_err() {
                break;
            }
        }
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]);
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let _ = tx.send((status, Instant::now()));
    });
    rx
}

fn failures(p: &Portico) -> u64 {
    let s = curl(&[], &format!("http://127.0.0.1:{}/status", p.admin_port)).json();
    s["upstreams"]["app"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["failures"].as_u64().unwrap_or(0))
        .sum()
}

/// `via = "http"` streams bodies by default: an upload slower than read_timeout (one
/// byte each 700 ms against 500 ms) is still answered, and counts as no failure.
#[test]
fn a_dripping_upload_is_not_an_upstream_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("app.sock");
    let _app = gunicorn_unix(&sock, "a", &[]);
    let p = Portico::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:{{admin}}\"\n[upstreams.app]\nread_timeout = \"500ms\"\nservers = [{{ addr = \"unix:{}\" }}]\n[[listeners]]\nlisten = [\"127.0.0.1:{{port}}\"]\n  [[listeners.routes]]\n  path = \"/\"\n  upstream = \"app\"\n",
        sock.display()
    ));
    let done = drip(p.addr(), "/echo", 5, Duration::from_millis(700));
    let (status, _) = done.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        failures(&p),
        0,
        "a slow client is not the upstream's failure"
    );
    // and a slow app still times out
    assert_eq!(curl(&[], &p.url("/slow?secs=2")).status, 504);
    assert_eq!(failures(&p), 1);

    // nginx (proxy_request_buffering on, its default) answers the same upload too
    let nginx_port = free_port();
    let conf = format!(
        "http {{\n {temp}\n access_log off;\n server {{ listen 127.0.0.1:{nginx_port}; location / {{ proxy_pass http://unix:{sock}:; proxy_read_timeout 500ms; }} }}\n}}",
        temp = nginx_http_temp(dir.path()),
        sock = sock.display()
    );
    let _nginx = nginx(dir.path(), &conf, nginx_port);
    let nginx_addr = SocketAddr::from(([127, 0, 0, 1], nginx_port));
    let (status, _) = drip(nginx_addr, "/echo", 5, Duration::from_millis(700))
        .recv_timeout(Duration::from_secs(30))
        .unwrap();
    assert_eq!(status, 200);
}

/// With request buffering, two dripping uploads (as many as the app has workers) are
/// read by Portico first; other requests are answered while they drip.
fn buffered_uploads_hold_no_worker(
    route: &str,
    upload: &str,
    other: &str,
    app: impl FnOnce(&std::path::Path) -> (Proc, String),
) {
    let dir = tempfile::tempdir().unwrap();
    let (_app, server) = app(dir.path());
    let p = Portico::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:{{admin}}\"\n[upstreams.app]\nservers = [{{ addr = \"{server}\" }}]\n[[listeners]]\nlisten = [\"127.0.0.1:{{port}}\"]\n  [[listeners.routes]]\n  path = \"/\"\n  upstream = \"app\"\n  {route}\n"
    ));
    let uploads: Vec<_> = (0..2)
        .map(|_| drip(p.addr(), upload, 8, Duration::from_millis(250)))
        .collect();
    // while both drip, other requests are served
    for _ in 0..5 {
        assert_eq!(curl(&[], &p.url(other)).status, 200);
    }
    let served = Instant::now();
    for u in uploads {
        let (status, at) = u.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(status, 200);
        assert!(
            at > served,
            "the uploads were still dripping while the others were served"
        );
    }
    assert_eq!(failures(&p), 0);
}

#[test]
fn uwsgi_routes_buffer_request_bodies_by_default() {
    buffered_uploads_hold_no_worker("via = \"uwsgi\"", "/echo", "/", |dir| {
        let port = free_port();
        let _ = dir;
        (uwsgi(Bind::Tcp(port), &[]), format!("127.0.0.1:{port}"))
    });
}

#[test]
fn fastcgi_routes_buffer_request_bodies_by_default() {
    let route = format!(
        "via = \"fastcgi\"\n  root = \"{}\"\n  index = \"index.php\"",
        php_root().display()
    );
    buffered_uploads_hold_no_worker(&route, "/env.php", "/index.php", |dir| {
        let port = free_port();
        (
            php_fpm(dir, Bind::Tcp(port), 2),
            format!("127.0.0.1:{port}"),
        )
    });
}

#[test]
fn http_routes_buffer_when_asked() {
    buffered_uploads_hold_no_worker("request_buffering = true", "/echo", "/", |dir| {
        let sock = dir.join("app.sock");
        (
            gunicorn_unix(&sock, "a", &[]),
            format!("unix:{}", sock.display()),
        )
    });
}

/// A client that stops sending its body mid-way gets 408 after `body_timeout`; it is the
/// client's fault, not the upstream's: no failure is counted (streamed to gunicorn, and
/// buffered for uWSGI).
#[test]
fn a_client_body_timeout_is_not_an_upstream_failure() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("app.sock");
    let _app = gunicorn_unix(&sock, "a", &[]);
    let uwsgi_port = free_port();
    let _uwsgi = uwsgi(Bind::Tcp(uwsgi_port), &[]);
    for (server, route) in [
        (format!("unix:{}", sock.display()), ""),
        (format!("127.0.0.1:{uwsgi_port}"), "via = \"uwsgi\""),
    ] {
        let p = Portico::start(&format!(
            "[admin]\nlisten = \"127.0.0.1:{{admin}}\"\n[upstreams.app]\nservers = [{{ addr = \"{server}\" }}]\n[[listeners]]\nlisten = [\"127.0.0.1:{{port}}\"]\n  [listeners.limits]\n  body_timeout = \"1s\"\n  [[listeners.routes]]\n  path = \"/\"\n  upstream = \"app\"\n  {route}\n"
        ));
        let mut s = TcpStream::connect(p.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly ten b")
            .unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap_or(0);
        let status: u16 = String::from_utf8_lossy(&buf[..n])
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        assert_eq!(status, 408, "{route}");
        assert_eq!(failures(&p), 0, "{route}: the client's fault");
    }
}
