//! Static files: the example config/static-site.toml, conditional requests, ranges,
//! traversal attempts, with curl as the client.

mod common;

use common::*;

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
