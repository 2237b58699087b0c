//! TLS and HTTP/2: the example config/tls-h2.toml with generated certificates, SNI
//! picking the certificate and the virtual host, curl as the client.

mod common;

use common::*;

#[test]
fn example_tls_h2_serves_h2_and_picks_sites_by_sni() {
    let app_port = free_port();
    let _app = uvicorn_tcp(app_port);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("certs")).unwrap();
    std::fs::create_dir_all(dir.path().join("site")).unwrap();
    std::fs::write(dir.path().join("site/index.html"), "docs home\n").unwrap();
    write_cert(
        &dir.path().join("certs"),
        "localhost",
        &["localhost", "*.localhost"],
    );
    write_cert(&dir.path().join("certs"), "docs", &["docs.example"]);
    let text = std::fs::read_to_string(root().join("config/tls-h2.toml"))
        .unwrap()
        .replace("127.0.0.1:8443", "127.0.0.1:{port}")
        .replace("127.0.0.1:8000", &format!("127.0.0.1:{app_port}"));
    let p = Portico::start_in(dir, &text, "toml");
    let ca = p.dir.path().join("certs/localhost.crt");
    let docs_ca = p.dir.path().join("certs/docs.crt");
    let resolve = |name: &str| format!("{name}:{}:127.0.0.1", p.port);

    // h2 by ALPN, certificate verified for the name asked
    let r = curl(
        &[
            "--http2",
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &resolve("localhost"),
            "-d",
            "x",
        ],
        &format!("https://localhost:{}/echo", p.port),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.version, "HTTP/2");
    assert_eq!(r.json()["headers"]["x-forwarded-proto"], "https");

    // HTTP/1.1 when the client offers only that
    let r = curl(
        &[
            "--http1.1",
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &resolve("localhost"),
        ],
        &format!("https://localhost:{}/echo", p.port),
    );
    assert_eq!((r.status, r.version.as_str()), (200, "HTTP/1.1"));

    // the second site: its own certificate (verified against its own CA) and content
    let r = curl(
        &[
            "--cacert",
            docs_ca.to_str().unwrap(),
            "--resolve",
            &resolve("docs.example"),
        ],
        &format!("https://docs.example:{}/", p.port),
    );
    assert_eq!((r.status, r.text().as_str()), (200, "docs home\n"));

    // a wildcard server name picks the first site (-k: OpenSSL will not match
    // "*.localhost", a wildcard over a single label, against any name)
    let r = curl(
        &["-k", "--resolve", &resolve("api.localhost")],
        &format!("https://api.localhost:{}/echo", p.port),
    );
    assert_eq!(r.status, 200);

    // plain HTTP to a TLS port is told so (nginx's 400), Portico stays up
    let (status, _) = raw_status(p.addr(), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(status, 400);
    let r = curl(
        &[
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &resolve("localhost"),
        ],
        &format!("https://localhost:{}/echo", p.port),
    );
    assert_eq!(r.status, 200);
}

/// Plain HTTP sent to a TLS port gets nginx's answer (400 "The plain HTTP request was
/// sent to HTTPS port") instead of a silent close, side by side with nginx.
#[test]
fn plain_http_to_a_tls_port_is_told_so_like_nginx() {
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path(), "localhost", &["localhost"]);
    let (crt, key) = (
        dir.path().join("localhost.crt"),
        dir.path().join("localhost.key"),
    );
    let p = Portico::start(&format!(
        "[[listeners]]\nlisten = [\"127.0.0.1:{{port}}\"]\ntls = {{ cert = \"{}\", key = \"{}\" }}\n  [[listeners.routes]]\n  path = \"/\"\n  return = {{ status = 200, body = \"ok\\n\" }}\n",
        crt.display(),
        key.display()
    ));
    let nginx_port = free_port();
    let _nginx = nginx(
        dir.path(),
        &format!(
            "http {{\n {temp}\n access_log off;\n server {{\n listen 127.0.0.1:{nginx_port} ssl;\n ssl_certificate {};\n ssl_certificate_key {};\n location / {{ return 200 \"ok\\n\"; }}\n }}\n}}",
            crt.display(),
            key.display(),
            temp = nginx_http_temp(dir.path())
        ),
        nginx_port,
    );
    for port in [p.port, nginx_port] {
        let (status, text) = raw_status(
            ([127, 0, 0, 1], port).into(),
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        );
        assert_eq!(status, 400, "{port}: {text}");
        assert!(
            text.contains("The plain HTTP request was sent to HTTPS port"),
            "{port}: {text}"
        );
    }
    // TLS clients are unaffected
    let r = curl(
        &[
            "--cacert",
            crt.to_str().unwrap(),
            "--resolve",
            &format!("localhost:{}:127.0.0.1", p.port),
        ],
        &format!("https://localhost:{}/", p.port),
    );
    assert_eq!(r.status, 200);
}
