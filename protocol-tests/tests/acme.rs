//! Automatic certificates against Debian's pebble (the ACME test CA) on loopback, with
//! pebble-challtestsrv as the DNS that sends `shop.test` to 127.0.0.1: Portico orders a
//! certificate at start, answers the HTTP-01 challenge on its port-80-style listener
//! without a route for it, stores account and certificate (0600), serves the
//! certificate — curl verifies it against pebble's root — keeps it across a restart
//! without a new order, and renews it when `renew_before` says so; and the same through
//! TLS-ALPN-01 on the TLS port.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Pebble {
    _dns: Proc,
    _pebble: Proc,
    acme_port: u16,
    mgmt_port: u16,
    http_port: u16,
    tls_port: u16,
    ca: std::path::PathBuf,
}

fn pebble(dir: &Path) -> Pebble {
    let sh = |cmd: &str| {
        let ok = Command::new("bash")
            .args(["-c", cmd])
            .current_dir(dir)
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "{cmd}");
    };
    // pebble's own HTTPS certificate, from a CA of ours (Portico gets it as directory_ca)
    sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -subj '/CN=pebble test CA' -days 2 \
        && openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout pebble.key -out pebble.csr -subj /CN=localhost \
        && printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > ext \
        && openssl x509 -req -in pebble.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out pebble.pem -days 2 -extfile ext");
    let (acme_port, mgmt_port, http_port, tls_port, dns_port, cts_port) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    std::fs::write(
        dir.join("pebble.json"),
        format!(
            r#"{{"pebble": {{"listenAddress": "127.0.0.1:{acme_port}", "managementListenAddress": "127.0.0.1:{mgmt_port}", "certificate": "{d}/pebble.pem", "privateKey": "{d}/pebble.key", "httpPort": {http_port}, "tlsPort": {tls}, "ocspResponderURL": "", "externalAccountBindingRequired": false}}}}"#,
            d = dir.display(),
            tls = tls_port
        ),
    )
    .unwrap();
    let mut cmd = Command::new("pebble-challtestsrv");
    cmd.args(["-management", &format!("127.0.0.1:{cts_port}")])
        .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
        .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
        .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut dns = Proc::spawn("pebble-challtestsrv", &mut cmd);
    wait_tcp(
        ([127, 0, 0, 1], cts_port).into(),
        &mut dns.child,
        "challtestsrv",
    );
    let mut cmd = Command::new("pebble");
    cmd.arg("-config")
        .arg(dir.join("pebble.json"))
        .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
        // no random sleep before validating, no nonces refused at random
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .stdout(std::fs::File::create(dir.join("pebble.log")).unwrap())
        .stderr(Stdio::null());
    let mut p = Proc::spawn("pebble", &mut cmd);
    wait_tcp(([127, 0, 0, 1], acme_port).into(), &mut p.child, "pebble");
    Pebble {
        _dns: dns,
        _pebble: p,
        acme_port,
        mgmt_port,
        http_port,
        tls_port,
        ca: dir.join("ca.pem"),
    }
}

impl Pebble {
    /// pebble's issuing root, from its management interface, written to DIR/root.pem.
    fn issuing_root(&self, dir: &Path) -> std::path::PathBuf {
        let root = dir.join("root.pem");
        let pem = run_ok(
            Command::new("curl")
                .args(["-s", "--cacert"])
                .arg(&self.ca)
                .arg(format!("https://127.0.0.1:{}/roots/0", self.mgmt_port)),
        );
        std::fs::write(&root, pem).unwrap();
        root
    }
}

fn config(pb: &Pebble, storage: &Path, extra: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:{{admin}}"
[[listeners]]
name = "plain"
listen = ["127.0.0.1:{{port}}", "127.0.0.1:{http}"]
  [[listeners.routes]]
  path = "/"
  return = {{ status = 200, body = "plain\n" }}
[[listeners]]
name = "shop"
listen = ["127.0.0.1:{tls}"]
server_names = ["shop.test"]
  [listeners.tls]
  acme = {{ directory = "https://127.0.0.1:{acme}/dir", email = "ops@shop.test", domains = ["shop.test"], storage = "{s}", directory_ca = "{ca}"{extra} }}
  [[listeners.routes]]
  path = "/"
  return = {{ status = 200, body = "shop\n" }}
"#,
        http = pb.http_port,
        tls = pb.tls_port,
        acme = pb.acme_port,
        s = storage.display(),
        ca = pb.ca.display(),
    )
}

/// The certificate's status in /status once `ok` holds for it (bounded wait).
fn cert_status(p: &Portico, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = curl(&[], &format!("http://127.0.0.1:{}/status", p.admin_port)).json();
        let c = s["certificates"][0].clone();
        if ok(&c) {
            return c;
        }
        assert!(Instant::now() < deadline, "{c}\n{}", p.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn serial_served(port: u16, root: &Path) -> String {
    let out = Command::new("bash")
        .args([
            "-c",
            &format!(
                "openssl s_client -connect 127.0.0.1:{port} -servername shop.test -verify_return_error -CAfile {} </dev/null 2>/dev/null | openssl x509 -noout -serial",
                root.display()
            ),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn certificates_from_pebble_issued_kept_and_renewed() {
    let dir = tempfile::tempdir().unwrap();
    let pb = pebble(dir.path());
    let storage = dir.path().join("acme");
    let mut p = Portico::start(&config(&pb, &storage, ""));
    let tls_port = pb.tls_port;
    let c = cert_status(&p, |c| c["not_after"].is_u64());
    assert_eq!(c["renewals"], 1);
    assert!(c["last_error"].is_null(), "{c}");
    assert!(
        p.log_text().contains("GET /.well-known/acme-challenge/"),
        "the CA asked Portico"
    );
    // pebble's issuing root, from its management interface
    let root = pb.issuing_root(dir.path());
    let resolve = format!("shop.test:{tls_port}:127.0.0.1");
    let r = curl(
        &["--cacert", root.to_str().unwrap(), "--resolve", &resolve],
        &format!("https://shop.test:{tls_port}/"),
    );
    assert_eq!((r.status, r.text().as_str()), (200, "shop\n"));
    for secret in ["account.json", "shop.test/key.pem", "shop.test/cert.pem"] {
        let mode = std::fs::metadata(storage.join(secret))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{secret}");
    }
    let first = serial_served(tls_port, &root);
    assert!(first.starts_with("serial="), "{first}");

    // a restart serves the stored certificate and orders nothing
    p.proc.stop();
    let p = Portico::start(&config(&pb, &storage, ""));
    let tls_port = pb.tls_port;
    let c = cert_status(&p, |c| c["not_after"].is_u64());
    assert_eq!(c["renewals"], 0, "{c}");
    assert_eq!(serial_served(tls_port, &root), first);
    assert!(
        !p.log_text().contains("ordering a certificate"),
        "{}",
        p.log_text()
    );

    // renewal: a reload asks for one when less than ten years are left (pebble issues
    // five); the new certificate is served
    let renewing = config(
        &pb,
        &storage,
        ", renew_before = \"3650d\", check_every = \"1h\"",
    );
    assert!(p.reload(&renewing));
    cert_status(&p, |c| c["renewals"] == 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while serial_served(tls_port, &root) == first {
        assert!(
            Instant::now() < deadline,
            "still the first certificate\n{}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// TLS-ALPN-01: the CA validates on the TLS listener's own port (an `acme-tls/1`
/// handshake getting the challenge certificate); no HTTP request is made.
#[test]
fn a_certificate_through_tls_alpn_01() {
    let dir = tempfile::tempdir().unwrap();
    let pb = pebble(dir.path());
    let storage = dir.path().join("acme");
    let p = Portico::start(&config(&pb, &storage, ", challenge = \"tls-alpn-01\""));
    let c = cert_status(&p, |c| c["not_after"].is_u64());
    assert!(c["last_error"].is_null(), "{c}");
    assert!(
        !p.log_text().contains("acme-challenge"),
        "no HTTP-01 request: {}",
        p.log_text()
    );
    let root = pb.issuing_root(dir.path());
    let resolve = format!("shop.test:{}:127.0.0.1", pb.tls_port);
    let r = curl(
        &["--cacert", root.to_str().unwrap(), "--resolve", &resolve],
        &format!("https://shop.test:{}/", pb.tls_port),
    );
    assert_eq!((r.status, r.text().as_str()), (200, "shop\n"));
}
