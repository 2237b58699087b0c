//! `tls = { sni, verify, ca, cert, key, h2 }` on an upstream, beside nginx's
//! `proxy_ssl_*` / `grpc_pass grpcs://`: uvicorn and gunicorn serving HTTPS (verified
//! against `ca`, the name checked, pooled connections reused, mTLS with gunicorn
//! requiring a client certificate), the active health check over TLS, and a gRPC
//! hello-world (grpcio) over h2 + TLS with its status, trailers and a stream relayed.

mod common;

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

/// Certificates: the app's (for `app.internal`) and a client's, each self-signed (its
/// own CA), and one for an unrelated name.
fn certs(dir: &Path) {
    write_cert(dir, "app", &["app.internal"]);
    write_cert(dir, "client", &["portico-client"]);
    write_cert(dir, "other", &["other.internal"]);
}

fn uvicorn_tls(dir: &Path, port: u16) -> Proc {
    let cert = dir.join("app.crt");
    let key = dir.join("app.key");
    uvicorn_with(
        Bind::Tcp(port),
        &[
            // the scope's scheme is the connection's, not X-Forwarded-Proto
            "--no-proxy-headers",
            "--ssl-certfile",
            cert.to_str().unwrap(),
            "--ssl-keyfile",
            key.to_str().unwrap(),
        ],
    )
}

/// One upstream `app` at `port` with `tls`, routed at `/`, and the admin listener.
fn config(port: u16, tls: &str, extra: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:{{admin}}"
[upstreams.app]
servers = [{{ addr = "127.0.0.1:{port}" }}]
tls = {tls}
{extra}
[[listeners]]
listen = ["127.0.0.1:{{port}}"]
  [[listeners.routes]]
  path = "/"
  upstream = "app"
"#
    )
}

#[test]
fn https_upstream_verified_and_pooled_like_nginx() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path());
    let app = free_port();
    let _uvicorn = uvicorn_tls(dir.path(), app);
    let ca = dir.path().join("app.crt");
    // one worker: one idle pool (each worker keeps its own)
    let p = Portico::start(&config(
        app,
        &format!(r#"{{ sni = "app.internal", ca = "{}" }}"#, ca.display()),
        "[runtime]\nworkers = 1\n",
    ));
    let nginx_port = free_port();
    let _nginx = nginx(
        dir.path(),
        &format!(
            "http {{\n {temp}\n access_log off;\n server {{\n listen 127.0.0.1:{nginx_port};\n location / {{ proxy_pass https://127.0.0.1:{app}; proxy_ssl_verify on; proxy_ssl_trusted_certificate {ca}; proxy_ssl_name app.internal; proxy_ssl_server_name on; }}\n }}\n}}",
            temp = nginx_http_temp(dir.path()),
            ca = ca.display()
        ),
        nginx_port,
    );
    let ours = curl(&[], &p.url("/echo?x=1"));
    let n = curl(&[], &format!("http://127.0.0.1:{nginx_port}/echo?x=1"));
    assert_eq!((ours.status, n.status), (200, 200));
    let (o, nj) = (ours.json(), n.json());
    assert_eq!(o["scheme"], "https", "the app was reached over TLS");
    assert_eq!(o["scheme"], nj["scheme"]);
    assert_eq!(o["path"], nj["path"]);
    // a POST body goes through too
    let posted = curl(&["--data-binary", "hello over tls"], &p.url("/echo")).json();
    assert_eq!(posted["body_len"], 14);
    // kept-alive: sequential requests reuse one TLS connection (one client port)
    let ports: std::collections::BTreeSet<u64> = (0..10)
        .map(|_| {
            curl(&[], &p.url("/echo")).json()["client_port"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(ports.len(), 1, "one pooled connection: {ports:?}");
}

#[test]
fn a_certificate_that_does_not_verify_is_502_unless_verify_is_off() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path());
    let app = free_port();
    let _uvicorn = uvicorn_tls(dir.path(), app);
    let ca = dir.path().join("app.crt");
    let other = dir.path().join("other.crt");
    // the wrong name for the certificate
    let p = Portico::start(&config(
        app,
        &format!(r#"{{ sni = "wrong.internal", ca = "{}" }}"#, ca.display()),
        "",
    ));
    assert_eq!(curl(&[], &p.url("/echo")).status, 502);
    let line = p.wait_log_line("connect failed");
    assert!(line.contains("certificate"), "{line}");
    // a CA that did not sign it
    let p = Portico::start(&config(
        app,
        &format!(r#"{{ sni = "app.internal", ca = "{}" }}"#, other.display()),
        "",
    ));
    assert_eq!(curl(&[], &p.url("/echo")).status, 502);
    // the system's roots do not know a self-signed certificate
    let p = Portico::start(&config(app, r#"{ sni = "app.internal" }"#, ""));
    assert_eq!(curl(&[], &p.url("/echo")).status, 502);
    // verify = false takes it (still encrypted)
    let p = Portico::start(&config(app, r#"{ verify = false }"#, ""));
    let r = curl(&[], &p.url("/echo"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["scheme"], "https");
    // a plaintext server behind a tls upstream: 502, not a hang
    let plain = free_port();
    let _plain = uvicorn(Bind::Tcp(plain));
    let p = Portico::start(&config(plain, r#"{ verify = false }"#, ""));
    assert_eq!(curl(&[], &p.url("/echo")).status, 502);
}

#[test]
fn mutual_tls_with_gunicorn_requiring_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path());
    let app = free_port();
    let mut cmd = Command::new(venv_bin("gunicorn"));
    cmd.arg("--chdir")
        .arg(apps_dir())
        .args(["-w", "1", "-b", &format!("127.0.0.1:{app}")])
        .arg("--certfile")
        .arg(dir.path().join("app.crt"))
        .arg("--keyfile")
        .arg(dir.path().join("app.key"))
        .arg("--ca-certs")
        .arg(dir.path().join("client.crt"))
        .args(["--cert-reqs", "2", "flask_app:app"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut g = Proc::spawn("gunicorn", &mut cmd);
    wait_tcp(([127, 0, 0, 1], app).into(), &mut g.child, "gunicorn");
    let ca = dir.path().join("app.crt");
    let with_cert = format!(
        r#"{{ sni = "app.internal", ca = "{}", cert = "{}", key = "{}" }}"#,
        ca.display(),
        dir.path().join("client.crt").display(),
        dir.path().join("client.key").display()
    );
    let p = Portico::start(&config(app, &with_cert, ""));
    let r = curl(&[], &p.url("/echo"));
    assert_eq!(r.status, 200, "{}", r.text());
    let without = format!(r#"{{ sni = "app.internal", ca = "{}" }}"#, ca.display());
    let p = Portico::start(&config(app, &without, ""));
    assert_eq!(curl(&[], &p.url("/echo")).status, 502);
}

#[test]
fn the_active_health_check_speaks_tls() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path());
    let app = free_port();
    let _uvicorn = uvicorn_tls(dir.path(), app);
    let health = "[upstreams.app.health]\ncheck = \"http\"\nuri = \"/echo\"\ninterval = \"100ms\"\nfails = 1\npasses = 1\n";
    let server = |p: &Portico| {
        curl(&[], &format!("http://127.0.0.1:{}/status", p.admin_port)).json()["upstreams"]["app"]
            ["servers"][0]
            .clone()
    };
    // polls /status until `done` (the checker runs every 100 ms)
    let until = |p: &Portico, done: &dyn Fn(&serde_json::Value) -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let s = server(p);
            if done(&s) {
                return s;
            }
            assert!(std::time::Instant::now() < deadline, "{s}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    let good = Portico::start(&config(
        app,
        &format!(
            r#"{{ sni = "app.internal", ca = "{}" }}"#,
            dir.path().join("app.crt").display()
        ),
        health,
    ));
    // three probes in a row passed over TLS, none failed
    let s = until(&good, &|s| {
        s["health_checks"]["passes_in_row"].as_u64() >= Some(3)
    });
    assert_eq!(s["health_checks"]["failed"], 0);
    assert_eq!(s["state"], "up");
    // the same server, a CA that does not verify it: the probe fails, out it goes
    let bad = Portico::start(&config(
        app,
        &format!(
            r#"{{ sni = "app.internal", ca = "{}" }}"#,
            dir.path().join("other.crt").display()
        ),
        health,
    ));
    let line = bad.wait_log_line("active health check failed");
    assert!(line.contains("tls"), "{line}");
    let s = until(&bad, &|s| s["state"] == "unhealthy");
    assert_eq!(s["health_checks"]["passes_in_row"], 0);
}

/// The grpcio server on `port` (TLS, `app.internal`), ready when it says so.
fn grpc_server(dir: &Path, port: u16) -> Proc {
    let mut cmd = Command::new(venv_bin("python"));
    cmd.arg(apps_dir().join("grpc_hello.py"))
        .arg("serve")
        .arg(port.to_string())
        .arg(dir.join("app.crt"))
        .arg(dir.join("app.key"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut p = Proc::spawn("grpc_hello", &mut cmd);
    let out = p.child.stdout.take().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(out).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    p
}

fn grpc_call(port: u16, method: &str, arg: &str) -> String {
    let out = Command::new(venv_bin("python"))
        .arg(apps_dir().join("grpc_hello.py"))
        .args(["call", &format!("127.0.0.1:{port}"), method, arg])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn grpc_over_h2_and_tls_like_nginx() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path());
    let app = free_port();
    let _grpc = grpc_server(dir.path(), app);
    let ca = dir.path().join("app.crt");
    let p = Portico::start(&config(
        app,
        &format!(
            r#"{{ sni = "app.internal", ca = "{}", h2 = true }}"#,
            ca.display()
        ),
        "[runtime]\nworkers = 1\n",
    ));
    let nginx_port = free_port();
    let _nginx = nginx(
        dir.path(),
        &format!(
            "http {{\n {temp}\n access_log off;\n server {{\n listen 127.0.0.1:{nginx_port} http2;\n location / {{ grpc_pass grpcs://127.0.0.1:{app}; grpc_ssl_verify on; grpc_ssl_trusted_certificate {ca}; grpc_ssl_name app.internal; grpc_ssl_server_name on; }}\n }}\n}}",
            temp = nginx_http_temp(dir.path()),
            ca = ca.display()
        ),
        nginx_port,
    );
    let cases = [
        ("SayHello", "world", "Hello, world! grpc-hello"),
        (
            "SayHello",
            "missing",
            "ERROR NOT_FOUND no user called missing",
        ),
        ("Count", "5", "0 1 2 3 4"),
    ];
    for (method, arg, want) in cases {
        let n = grpc_call(nginx_port, method, arg);
        assert_eq!(n, want, "nginx {method} {arg}");
        let ours = grpc_call(p.port, method, arg);
        assert_eq!(ours, want, "{method} {arg}");
    }
    // calls from separate clients share one h2 connection to the app
    let peers: std::collections::BTreeSet<String> =
        (0..4).map(|_| grpc_call(p.port, "Peer", "-")).collect();
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert!(
        peers.iter().all(|p| p.starts_with("ipv4:127.0.0.1:")),
        "{peers:?}"
    );
    let s = curl(&[], &format!("http://127.0.0.1:{}/status", p.admin_port)).json();
    let server = &s["upstreams"]["app"]["servers"][0];
    assert_eq!(server["requests"], 7);
    assert_eq!(server["failures"], 0);
    assert_eq!(s["upstreams"]["app"]["tls"]["h2"], true);
}

#[test]
fn upstream_tls_keys_are_checked() {
    check_errors(
        r#"[upstreams.app]
servers = [{ addr = "127.0.0.1:9" }]
tls = { sni = "bad name", ca = "missing-ca.pem", cert = "client.pem" }
[upstreams.wsgi]
servers = [{ addr = "127.0.0.1:9" }]
tls = { verify = false }
[[listeners]]
listen = ["127.0.0.1:8080"]
  [[listeners.routes]]
  path = "/"
  upstream = "wsgi"
  via = "uwsgi"
"#,
        &[
            "bad.toml:3",
            "\"bad name\" is not a host name",
            "missing-ca.pem",
            "a client cert needs its key",
            "TLS to upstreams is for via = \"http\" routes",
        ],
    );
}
