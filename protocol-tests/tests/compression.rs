//! On-the-fly compression: gzip, brotli and zstd chosen by Accept-Encoding, decoded by
//! Python's gzip and the brotli and zstandard packages; what must never be compressed;
//! server-sent events flushed event by event; beside nginx's gzip at the same level.

mod common;

use common::*;

fn setup(extra: &str) -> (Proc, Portico, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("app.sock");
    let gate = dir.path().join("gate");
    let app = gunicorn_unix(&sock, "c", &[("SSE_GATE", gate.to_str().unwrap())]);
    std::fs::create_dir_all(dir.path().join("www/static")).unwrap();
    std::fs::write(
        dir.path().join("www/static/page.html"),
        "<p>hello</p>\n".repeat(100),
    )
    .unwrap();
    let p = Portico::start(&format!(
        r#"
[upstreams.app]
servers = [{{ addr = "unix:{sock}" }}]
[[listeners]]
listen = ["127.0.0.1:{{port}}"]
compress = {{ algorithms = ["zstd", "br", "gzip"], types = ["text/*", "application/json"], min_bytes = 256 }}
  [[listeners.routes]]
  path = "/static/"
  static = {{ root = "{www}" }}
  [[listeners.routes]]
  path = "/"
  upstream = "app"
  {extra}
"#,
        sock = sock.display(),
        www = dir.path().join("www").display()
    ));
    (app, p, dir)
}

/// Fetches `url` with `accept` and decodes the body as its Content-Encoding says:
/// prints the encoding, then the decoded body's length and sha256.
fn fetch_decoded(
    url: &str,
    accept: &str,
    extra_headers: &str,
) -> (String, usize, String, serde_json::Value) {
    let out = venv_python_ok(&format!(
        r#"
import gzip, hashlib, json, urllib.request
import brotli, zstandard
req = urllib.request.Request("{url}", headers={{"Accept-Encoding": "{accept}", {extra_headers}}})
r = urllib.request.urlopen(req)
raw = r.read()
enc = r.headers.get("Content-Encoding") or ""
body = {{"gzip": gzip.decompress, "br": brotli.decompress, "zstd": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b), "": lambda b: b}}[enc](raw)
print(json.dumps({{"enc": enc, "len": len(body), "sha": hashlib.sha256(body).hexdigest(), "wire": len(raw), "headers": dict(r.headers.items())}}))
"#
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    (
        v["enc"].as_str().unwrap_or("").to_string(),
        v["len"].as_u64().unwrap_or(0) as usize,
        v["sha"].as_str().unwrap_or("").to_string(),
        v,
    )
}

#[test]
fn each_coding_decodes_to_the_same_body() {
    let (_app, p, _dir) = setup("");
    for path in ["/json?n=200", "/text-stream?n=3000", "/static/page.html"] {
        let (plain_enc, len, sha, _) = fetch_decoded(&p.url(path), "identity", "");
        assert_eq!(plain_enc, "");
        for (accept, want) in [
            ("gzip", "gzip"),
            ("br", "br"),
            ("zstd", "zstd"),
            ("gzip, deflate, br, zstd", "zstd"),
            ("gzip;q=1, br;q=0.5", "gzip"),
            ("br;q=0, gzip;q=0.5", "gzip"),
        ] {
            let (enc, l, s, v) = fetch_decoded(&p.url(path), accept, "");
            assert_eq!(enc, want, "{path} {accept}: {v}");
            assert_eq!(
                (l, s.as_str()),
                (len, sha.as_str()),
                "{path} {accept}: the same body"
            );
            assert!(
                v["wire"].as_u64().unwrap() < len as u64,
                "{path}: smaller on the wire"
            );
            let h = &v["headers"];
            assert_eq!(h["Vary"], "Accept-Encoding", "{v}");
            assert!(h.get("Content-Length").is_none(), "{v}");
        }
    }
    // a static file's strong ETag becomes weak once compressed
    let r = curl(
        &["-H", "Accept-Encoding: gzip", "-o", "/dev/null"],
        &p.url("/static/page.html"),
    );
    assert!(
        r.header("etag").is_some_and(|e| e.starts_with("W/\"")),
        "{:?}",
        r.header("etag")
    );
}

#[test]
fn what_is_never_compressed() {
    fn encoded(_: &Recorded) -> Vec<u8> {
        let mut v = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Encoding: gzip\r\nContent-Length: 600\r\n\r\n".to_vec();
        v.resize(v.len() + 600, b'x');
        v
    }
    let (_app, p, _dir) = setup("");
    let gz = ["-H", "Accept-Encoding: gzip, br, zstd"];
    let enc = |args: &[&str], path: &str| {
        let mut a = gz.to_vec();
        a.extend_from_slice(args);
        curl(&a, &p.url(path))
            .header("content-encoding")
            .map(str::to_string)
    };
    assert_eq!(enc(&[], "/json?n=1"), None, "under min_bytes");
    assert_eq!(enc(&[], "/big?mb=1"), None, "a type not listed");
    assert_eq!(enc(&["-I"], "/json?n=200"), None, "HEAD");
    assert_eq!(
        enc(&["-H", "Range: bytes=0-99"], "/static/page.html"),
        None,
        "a range"
    );
    let r = curl(&["-H", "Accept-Encoding: gzip"], &p.url("/status/204"));
    assert_eq!((r.status, r.header("content-encoding")), (204, None));
    // an upstream answer already encoded is passed as it is
    let backend = Recorder::start(encoded);
    let p2 = Portico::start(&format!(
        "[upstreams.app]\nservers = [{{ addr = \"{}\" }}]\n[[listeners]]\nlisten = [\"127.0.0.1:{{port}}\"]\ncompress = {{}}\n  [[listeners.routes]]\n  path = \"/\"\n  upstream = \"app\"\n",
        backend.addr()
    ));
    let r = curl(&["-H", "Accept-Encoding: br"], &p2.url("/x"));
    assert_eq!(r.header("content-encoding"), Some("gzip"), "never twice");
    assert_eq!(r.header("content-length"), Some("600"));
}

/// Server-sent events are flushed event by event: the first event decodes before the
/// app sends the second.
#[test]
fn event_streams_are_flushed_per_event() {
    let (_app, p, dir) = setup("");
    let gate = dir.path().join("gate");
    let out = venv_python_ok(&format!(
        r#"
import http.client, zlib
c = http.client.HTTPConnection("127.0.0.1", {port}, timeout=20)
c.request("GET", "/events", headers={{"Accept-Encoding": "gzip"}})
r = c.getresponse()
d = zlib.decompressobj(16 + zlib.MAX_WBITS)
got = b""
while b"first" not in got:
    chunk = r.read1(65536)
    if not chunk:
        break
    got += d.decompress(chunk)
first = got
open("{gate}", "w").close()
got += d.decompress(r.read())
print(r.getheader("Content-Encoding"), repr(first), repr(got))
"#,
        port = p.port,
        gate = gate.display()
    ));
    assert!(out.starts_with("gzip "), "{out}");
    assert!(
        out.contains("data: first") && out.contains("data: second"),
        "{out}"
    );
}

/// Beside nginx's gzip at the same level (3, Portico's default): both encode, both
/// decode to the app's body.
#[test]
fn gzip_beside_nginx() {
    let (_app, p, dir) = setup("");
    let sock = dir.path().join("app.sock");
    let port = free_port();
    let conf = format!(
        "http {{\n {temp}\n access_log off;\n server {{ listen 127.0.0.1:{port}; gzip on; gzip_comp_level 3; gzip_types application/json text/plain; gzip_min_length 256; gzip_proxied any; gzip_vary on;\n location / {{ proxy_pass http://unix:{sock}:; }} }}\n}}",
        temp = nginx_http_temp(dir.path()),
        sock = sock.display()
    );
    let _nginx = nginx(dir.path(), &conf, port);
    let (_, len, sha, ours) = fetch_decoded(&p.url("/json?n=500"), "gzip", "");
    let (enc, nlen, nsha, theirs) =
        fetch_decoded(&format!("http://127.0.0.1:{port}/json?n=500"), "gzip", "");
    assert_eq!(enc, "gzip");
    assert_eq!((len, sha), (nlen, nsha));
    println!(
        "gzip level 3 of {len} bytes: portico {} bytes, nginx {} bytes",
        ours["wire"], theirs["wire"]
    );
}

/// `precompressed`: FILE.br / FILE.zst / FILE.gz next to FILE are sent to clients that
/// accept them, with the original type, beside nginx's gzip_static for the .gz.
#[test]
fn precompressed_files_beside_nginx_gzip_static() {
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir_all(www.join("assets")).unwrap();
    let css = "body { color: teal; }\n".repeat(50);
    std::fs::write(www.join("assets/site.css"), &css).unwrap();
    std::fs::write(www.join("assets/plain.css"), &css).unwrap();
    venv_python_ok(&format!(
        r#"
import gzip, brotli, zstandard
data = open("{f}", "rb").read()
open("{f}.gz", "wb").write(gzip.compress(data))
open("{f}.br", "wb").write(brotli.compress(data))
open("{f}.zst", "wb").write(zstandard.ZstdCompressor().compress(data))
print("ok")
"#,
        f = www.join("assets/site.css").display()
    ));
    let p = Portico::start(&format!(
        "[[listeners]]\nlisten = [\"127.0.0.1:{{port}}\"]\n  [[listeners.routes]]\n  path = \"/assets/\"\n  static = {{ root = \"{}\", precompressed = true }}\n",
        www.display()
    ));
    let port = free_port();
    let conf = format!(
        "http {{\n {temp}\n access_log off;\n include /etc/nginx/mime.types;\n server {{ listen 127.0.0.1:{port}; root {www}; gzip_static on; gzip_vary on; }}\n}}",
        temp = nginx_http_temp(dir.path()),
        www = www.display()
    );
    let _nginx = nginx(dir.path(), &conf, port);
    for (accept, want) in [
        ("br", "br"),
        ("zstd", "zstd"),
        ("gzip", "gzip"),
        ("br;q=0.5, gzip", "gzip"),
    ] {
        let (enc, len, _, v) = fetch_decoded(&p.url("/assets/site.css"), accept, "");
        assert_eq!(enc, want, "{accept}: {v}");
        assert_eq!(len, css.len());
        assert_eq!(v["headers"]["Content-Type"], "text/css", "{v}");
        assert_eq!(v["headers"]["Vary"], "Accept-Encoding", "{v}");
    }
    let (enc, len, _, _) = fetch_decoded(&p.url("/assets/site.css"), "identity", "");
    assert_eq!((enc.as_str(), len), ("", css.len()));
    let (enc, _, _, _) = fetch_decoded(&p.url("/assets/plain.css"), "br, gzip", "");
    assert_eq!(enc, "", "no sidecar: the file as it is");
    let (n_enc, n_len, _, _) = fetch_decoded(
        &format!("http://127.0.0.1:{port}/assets/site.css"),
        "gzip",
        "",
    );
    assert_eq!(
        (n_enc.as_str(), n_len),
        ("gzip", css.len()),
        "nginx's gzip_static alike"
    );
}
