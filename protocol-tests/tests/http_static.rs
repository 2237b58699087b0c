//! Static files: the example config/static-site.toml, conditional requests, ranges,
//! traversal attempts, with curl as the client.

mod common;

use std::io::{Read, Write};

use common::*;

/// The routes of a site served from `{d}/site` both ways: `/sf/` with sendfile(2),
/// the rest copied (the default).
fn file_routes(d: &str) -> String {
    format!(
        r#"  [[listeners.routes]]
  path = "/sf/"
  static = {{ root = "{d}/site", sendfile = true }}
  [[listeners.routes]]
  path = "/"
  static = {{ root = "{d}/site" }}
"#
    )
}

/// Where the body starts in raw answer bytes (after the head's blank line).
fn body_start(raw: &[u8]) -> Option<usize> {
    raw.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn start() -> Portico {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    std::fs::create_dir_all(site.join("docs")).unwrap();
    std::fs::write(site.join("index.html"), "<h1>home</h1>\n").unwrap();
    std::fs::write(site.join("docs/index.html"), "<h1>docs</h1>\n").unwrap();
    std::fs::write(site.join("data.json"), "{\"a\":1}\n").unwrap();
    std::fs::write(site.join("caf\u{e9} menu.txt"), "espresso\n").unwrap();
    let digits: String = (0..1000)
        .map(|i| char::from(b'0' + (i % 10) as u8))
        .collect();
    std::fs::write(site.join("digits.txt"), &digits).unwrap();
    std::fs::create_dir_all(dir.path().join("secret")).unwrap();
    std::fs::write(dir.path().join("secret/key.txt"), "do not serve\n").unwrap();
    let text = std::fs::read_to_string(root().join("config/static-site.toml")).unwrap();
    // the example listens on 127.0.0.1:8080 and [::1]:8080; keep one address, our port
    let text = text.replace(
        "listen = [\"127.0.0.1:8080\", \"[::1]:8080\"]",
        "listen = [\"127.0.0.1:{port}\"]",
    );
    assert!(text.contains("{port}"), "the example config changed shape");
    Portico::start_in(dir, &text, "toml")
}

#[test]
fn serves_files_with_types_and_index() {
    let p = start();
    let r = curl(&[], &p.url("/"));
    assert_eq!((r.status, r.text().as_str()), (200, "<h1>home</h1>\n"));
    assert_eq!(r.header("content-type"), Some("text/html"));
    let r = curl(&[], &p.url("/data.json"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("content-length"), Some("8"));
    let r = curl(&[], &p.url("/caf%C3%A9%20menu.txt"));
    assert_eq!((r.status, r.text().as_str()), (200, "espresso\n"));
    // a directory without its slash is redirected, with it the index is served
    let r = curl(&[], &p.url("/docs"));
    assert_eq!(r.status, 301);
    // absolute, from the Host the client sent (nginx's absolute_redirect on)
    assert_eq!(
        r.header("location"),
        Some(format!("http://127.0.0.1:{}/docs/", p.port).as_str())
    );
    assert_eq!(curl(&[], &p.url("/docs/")).text(), "<h1>docs</h1>\n");
    assert_eq!(curl(&[], &p.url("/missing.txt")).status, 404);
    let (status, text) = raw_status(
        p.addr(),
        b"HEAD /data.json HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert!(
        text.to_ascii_lowercase().contains("content-length: 8\r\n"),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\n"), "HEAD has no body: {text:?}");
    assert_eq!(curl(&["-X", "POST"], &p.url("/data.json")).status, 405);
}

#[test]
fn conditional_requests_and_ranges() {
    let p = start();
    let r = curl(&[], &p.url("/digits.txt"));
    let etag = r.header("etag").unwrap().to_string();
    let lm = r.header("last-modified").unwrap().to_string();
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    // on the wire as nginx spells it: "ETag", not the Title-Case "Etag"
    let (_, text) = raw_status(
        p.addr(),
        b"HEAD /digits.txt HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(text.contains(&format!("\r\nETag: {etag}\r\n")), "{text}");
    let r = curl(
        &["-H", &format!("If-None-Match: {etag}")],
        &p.url("/digits.txt"),
    );
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    let r = curl(
        &["-H", &format!("If-Modified-Since: {lm}")],
        &p.url("/digits.txt"),
    );
    assert_eq!(r.status, 304);
    let r = curl(&["-H", "If-None-Match: \"other\""], &p.url("/digits.txt"));
    assert_eq!(r.status, 200);

    let r = curl(&["-r", "10-19"], &p.url("/digits.txt"));
    assert_eq!(r.status, 206);
    assert_eq!(r.text(), "0123456789");
    assert_eq!(r.header("content-range"), Some("bytes 10-19/1000"));
    let r = curl(&["-r", "-5"], &p.url("/digits.txt"));
    assert_eq!((r.status, r.text().as_str()), (206, "56789"));
    let r = curl(&["-r", "2000-"], &p.url("/digits.txt"));
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */1000"));
    // If-Range with a stale validator: the whole file
    let r = curl(
        &["-r", "0-1", "-H", "If-Range: \"stale\""],
        &p.url("/digits.txt"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 1000);
}

#[test]
fn no_way_out_of_the_root() {
    let p = start();
    for path in [
        "/../secret/key.txt",
        "/%2e%2e/secret/key.txt",
        "/docs/../../secret/key.txt",
        "/..%2fsecret/key.txt",
    ] {
        let (status, text) = raw_status(
            p.addr(),
            format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert!(status == 400 || status == 404, "{path}: {status}\n{text}");
        assert!(!text.contains("do not serve"), "{path} escaped the root");
    }
    // dot segments that stay inside the root are resolved, as nginx does
    let (status, text) = raw_status(
        p.addr(),
        b"GET /docs/../data.json HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert!(text.ends_with("{\"a\":1}\n"));
}

#[test]
fn over_long_names_are_404_not_a_server_error() {
    let p = start();
    let long = "n".repeat(300); // over the 255-byte name limit of the file system
    for path in [format!("/{long}"), format!("/docs/{long}/x.html")] {
        assert_eq!(curl(&[], &p.url(&path)).status, 404, "{path}");
    }
    assert!(!p.log_text().contains("ERROR"), "{}", p.log_text());
}

/// hyper's parser takes 100 request headers (Apache's LimitRequestFields default); one
/// more is 431 (nginx has no count limit, only its buffer sizes).
#[test]
fn more_than_100_request_headers_is_431() {
    let p = start();
    let head = |n: usize| {
        let mut h = String::from("GET /data.json HTTP/1.1\r\nHost: a\r\nConnection: close\r\n");
        for i in 0..n {
            h.push_str(&format!("X-H{i}: {i}\r\n"));
        }
        h + "\r\n"
    };
    assert_eq!(raw_status(p.addr(), head(97).as_bytes()).0, 200);
    assert_eq!(raw_status(p.addr(), head(100).as_bytes()).0, 431);
}

/// Files over the in-memory size go out from the socket's side on plain sockets (copied
/// through the worker's scratch buffer, or with sendfile(2) where `sendfile = true`)
/// and through the body everywhere else (TLS, h2, compression): every path sends the
/// same bytes, ranges and HEAD included, a kept-alive connection carries on after one,
/// the access log counts the bytes, and a client that leaves mid-file costs nothing
/// else.
#[test]
fn large_files_go_out_whole_on_every_path() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    std::fs::create_dir_all(site.join("gz")).unwrap();
    std::fs::create_dir_all(site.join("sf")).unwrap();
    // 3 MiB and some: several sendfile calls, a length no chunk size divides
    let mut x: u32 = 12345;
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 17)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    std::fs::write(site.join("big.bin"), &big).unwrap();
    std::fs::write(site.join("sf/big.bin"), &big).unwrap();
    let text: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(site.join("gz/big.txt"), &text).unwrap();
    write_cert(dir.path(), "site", &["localhost"]);
    let d = dir.path().display().to_string();
    let routes = file_routes(&d);
    let config = format!(
        r#"
[log]
access_log = "{d}/access.log"
access_log_format = "sent"
formats = {{ sent = '$request_uri $status $body_bytes_sent' }}
[[listeners]]
listen = ["127.0.0.1:{{port}}"]
  [[listeners.routes]]
  path = "/gz/"
  static = {{ root = "{d}/site" }}
  compress = {{ algorithms = ["gzip"], types = ["text/*"] }}
{routes}[[listeners]]
listen = ["127.0.0.1:{{admin}}"]
tls = {{ cert = "{d}/site.crt", key = "{d}/site.key" }}
  [[listeners.routes]]
  path = "/"
  static = {{ root = "{d}/site" }}
"#
    );
    let p = Portico::start_in(dir, &config, "toml");
    let tls_url = format!("https://localhost:{}/big.bin", p.admin_port);
    let resolve = format!("localhost:{}:127.0.0.1", p.admin_port);

    for file in ["/big.bin", "/sf/big.bin"] {
        let r = curl(&[], &p.url(file));
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("content-length"),
            Some(big.len().to_string().as_str())
        );
        assert!(
            r.body == big,
            "{file}: {} bytes, not the file",
            r.body.len()
        );
        let r = curl(&["-r", "1000-2500000"], &p.url(file));
        assert_eq!(r.status, 206);
        assert!(
            r.body == big[1000..=2_500_000],
            "{file} range: {} bytes",
            r.body.len()
        );
    }
    let (status, head) = raw_status(
        p.addr(),
        b"HEAD /big.bin HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    let length = format!("content-length: {}\r\n", big.len());
    assert!(head.to_ascii_lowercase().contains(&length), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head:?}");
    let r = curl(&["--http2-prior-knowledge"], &p.url("/big.bin"));
    assert_eq!(r.version, "HTTP/2");
    assert!(r.body == big, "h2: {} bytes", r.body.len());
    let r = curl(&["-k", "--resolve", &resolve], &tls_url);
    assert_eq!(r.status, 200);
    assert!(r.body == big, "TLS: {} bytes", r.body.len());
    let r = curl(&["--compressed"], &p.url("/gz/big.txt"));
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert!(
        r.body == text.as_bytes(),
        "gzip: {} bytes decoded",
        r.body.len()
    );

    // two requests on one connection: the second answer follows the whole first file
    for file in ["/big.bin", "/sf/big.bin"] {
        let mut s = std::net::TcpStream::connect(p.addr()).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let two = format!(
        "GET {file} HTTP/1.1\r\nHost: a\r\n\r\nGET {file} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    );
        s.write_all(two.as_bytes()).unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        let mut rest = &all[..];
        for n in 0..2 {
            let start = body_start(rest).unwrap_or_else(|| panic!("answer {n} has no head"));
            let head = String::from_utf8_lossy(&rest[..start]).to_string();
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            let body = &rest[start..];
            assert!(body.len() >= big.len(), "answer {n}: {} bytes", body.len());
            assert!(body[..big.len()] == big[..], "answer {n} is not the file");
            rest = &body[big.len()..];
        }
        assert!(
            rest.is_empty(),
            "{file}: {} bytes after the second answer",
            rest.len()
        );
    }

    // a client that leaves after a few bytes; the next one is served whole
    for _ in 0..3 {
        let mut s = std::net::TcpStream::connect(p.addr()).unwrap();
        s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        let mut few = [0u8; 100];
        s.read_exact(&mut few).unwrap();
    }
    assert!(curl(&[], &p.url("/big.bin")).body == big);

    let log = wait_file_contains(&p.dir.path().join("access.log"), "/gz/big.txt");
    let whole = format!("/big.bin 200 {}", big.len());
    assert!(log.contains(&whole), "no line {whole:?} in:\n{log}");
    assert!(log.contains("/big.bin 206 2499001"), "{log}");
    assert!(log.contains("/sf/big.bin 206 2499001"), "{log}");
}

/// A client that stops reading a large file is cut off once `send_timeout` passes with
/// nothing taken (a file sent from the socket's side, copied or with sendfile, waits on
/// the socket like any write), the access log counts
/// what went out, and the client gets exactly that much before the connection ends.
#[test]
fn a_client_that_stops_reading_a_large_file_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("site/sf")).unwrap();
    // far more than loopback's socket buffers hold for a client that reads nothing
    let size = 16 * 1024 * 1024;
    std::fs::write(dir.path().join("site/huge.bin"), vec![b'x'; size]).unwrap();
    std::fs::write(dir.path().join("site/sf/huge.bin"), vec![b'x'; size]).unwrap();
    let d = dir.path().display().to_string();
    let routes = file_routes(&d);
    let config = format!(
        r#"
[log]
access_log = "{d}/access.log"
access_log_format = "sent"
formats = {{ sent = '$request_uri $status $body_bytes_sent' }}
[[listeners]]
listen = ["127.0.0.1:{{port}}"]
  [listeners.limits]
  send_timeout = "1s"
{routes}"#
    );
    let p = Portico::start_in(dir, &config, "toml");
    for file in ["/huge.bin", "/sf/huge.bin"] {
        let mut s = std::net::TcpStream::connect(p.addr()).unwrap();
        s.write_all(format!("GET {file} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .unwrap();
        // Portico gives up on the client: its log line says how much went out
        let line = format!("{file} 200 ");
        let log = wait_file_contains(&p.dir.path().join("access.log"), &line);
        let sent: usize = log
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no byte count in {log:?}"));
        assert!(
            sent < size,
            "{file}: the whole file was taken by a client that read nothing"
        );
        // and closed the connection: the client gets what was sent, then the end
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        let head = body_start(&all).expect("a head");
        assert_eq!(
            all.len() - head,
            sent,
            "{file}: what the log counts is what arrived"
        );
    }
}

/// A file that shrinks while it is sent (copied or with sendfile) ends the answer short
/// and the connection with it: the head promised the old length, so the client sees a
/// body shorter than Content-Length and the end of the connection, never a hang.
#[test]
fn a_file_that_shrinks_while_it_is_sent_ends_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("site/sf")).unwrap();
    let d = dir.path().display().to_string();
    let routes = file_routes(&d);
    let config = format!(
        r#"
[[listeners]]
listen = ["127.0.0.1:{{port}}"]
{routes}"#
    );
    let p = Portico::start_in(dir, &config, "toml");
    // more than loopback's socket buffers hold for a client that has read nothing
    let size = 16 * 1024 * 1024;
    for file in ["/shrinks.bin", "/sf/shrinks.bin"] {
        let path = p.dir.path().join(format!("site{file}"));
        std::fs::write(&path, vec![b'x'; size]).unwrap();
        let mut s = std::net::TcpStream::connect(p.addr()).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        s.write_all(format!("GET {file} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .unwrap();
        let mut first = [0u8; 100];
        s.read_exact(&mut first).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(1024 * 1024)
            .unwrap();
        let mut all = first.to_vec();
        s.read_to_end(&mut all)
            .unwrap_or_else(|e| panic!("{file}: the connection did not end: {e}"));
        let head = body_start(&all).expect("a head");
        let text = String::from_utf8_lossy(&all[..head]).to_ascii_lowercase();
        assert!(
            text.contains(&format!("content-length: {size}\r\n")),
            "{file}: {text}"
        );
        assert!(
            all.len() - head < size,
            "{file}: {} body bytes of a file cut to 1 MiB",
            all.len() - head
        );
        // the next client gets the file as it is now
        assert_eq!(curl(&[], &p.url(file)).body.len(), 1024 * 1024, "{file}");
    }
}
