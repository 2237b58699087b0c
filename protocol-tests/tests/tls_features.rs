//! TLS as operators configure it: client certificates (required and optional) with
//! nginx's `$ssl_client_*` variables reaching a Flask app, and Auth-SSL-* reaching the
//! mail auth server; an RSA and an ECDSA certificate for one name, chosen per client
//! (openssl s_client); OCSP stapling from a file (`s_client -status`); `min_version`;
//! session resumption. Certificates and the OCSP response are made with the openssl
//! command line, as an operator would.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs a shell command in `dir`; its stdout (panics with stderr on failure).
fn sh(dir: &Path, cmd: &str) -> String {
    run_ok(Command::new("bash").args(["-c", cmd]).current_dir(dir))
}

/// A client CA, alice's certificate from it, and self-signed server certificates for
/// localhost: RSA (rsa.pem/key) and ECDSA P-256 (ec.pem/key).
fn make_certs(dir: &Path) {
    sh(
        dir,
        r#"set -e
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -subj "/O=Example Corp/CN=Test CA" -days 2 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout alice.key -out alice.csr -subj "/O=Example Corp/CN=alice" 2>/dev/null
printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n' > client.ext
openssl x509 -req -in alice.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out alice.pem -days 2 -extfile client.ext 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -keyout rsa.key -out rsa.pem -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost" -days 2 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ec.key -out ec.pem -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost" -days 2 2>/dev/null
"#,
    );
}

fn client_auth_config(dir: &Path, sock: &Path, mode: &str) -> String {
    format!(
        r#"
[upstreams.app]
servers = [{{ addr = "unix:{sock}" }}]
[[listeners]]
listen = ["127.0.0.1:{{port}}"]
  [listeners.tls]
  cert = "{d}/ec.pem"
  key = "{d}/ec.key"
  client_auth = {{ ca = "{d}/ca.pem", mode = "{mode}" }}
  [[listeners.routes]]
  path = "/"
  upstream = "app"
  request_headers = {{ set = {{ "X-Client-Verify" = "$ssl_client_verify", "X-Client-DN" = "$ssl_client_s_dn", "X-Client-Issuer" = "$ssl_client_i_dn", "X-Client-Serial" = "$ssl_client_serial", "X-Client-Fingerprint" = "$ssl_client_fingerprint", "X-Client-Cert" = "$ssl_client_escaped_cert", "X-SSL-Protocol" = "$ssl_protocol", "X-SSL-Cipher" = "$ssl_cipher" }} }}
"#,
        sock = sock.display(),
        d = dir.display()
    )
}

#[test]
fn client_certificates_required_and_optional_reach_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_certs(d);
    let sock = d.join("app.sock");
    let _app = gunicorn_unix(&sock, "mtls", &[]);
    let fp = sh(d, "openssl x509 -in alice.pem -noout -fingerprint -sha1")
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_lowercase();
    let serial = sh(d, "openssl x509 -in alice.pem -noout -serial")
        .trim()
        .trim_start_matches("serial=")
        .to_string();
    let with_cert = [
        "-k",
        "--cert",
        &format!("{}/alice.pem", d.display()),
        "--key",
        &format!("{}/alice.key", d.display()),
    ];

    let p = Portico::start(&client_auth_config(d, &sock, "required"));
    let url = format!("https://localhost:{}/echo", p.port);
    let r = curl(&with_cert, &url);
    assert_eq!(r.status, 200);
    let h = &r.json()["headers"];
    assert_eq!(h["x-client-verify"], "SUCCESS");
    assert_eq!(h["x-client-dn"], "CN=alice,O=Example Corp");
    assert_eq!(h["x-client-issuer"], "CN=Test CA,O=Example Corp");
    assert_eq!(h["x-client-serial"], serial.as_str());
    assert_eq!(h["x-client-fingerprint"], fp.as_str());
    assert_eq!(h["x-ssl-protocol"], "TLSv1.3");
    assert!(
        h["x-ssl-cipher"].as_str().unwrap().starts_with("TLS13_"),
        "{h}"
    );
    let pem = std::fs::read_to_string(d.join("alice.pem")).unwrap();
    let escaped = h["x-client-cert"].as_str().unwrap();
    assert!(
        escaped.starts_with("-----BEGIN%20CERTIFICATE-----%0A"),
        "{escaped}"
    );
    assert_eq!(escaped.matches("%0A").count(), pem.lines().count());
    // without a certificate: no handshake
    let r = curl(&["-k"], &url);
    assert_eq!(
        r.status, 0,
        "required: the handshake fails without a certificate"
    );

    // optional: both get in, the app sees which
    assert!(p.reload(&client_auth_config(d, &sock, "optional")));
    let r = curl(&["-k"], &url);
    assert_eq!(r.status, 200);
    let h = &r.json()["headers"];
    assert_eq!(h["x-client-verify"], "NONE");
    assert!(h.get("x-client-dn").is_none_or(|v| v == ""), "{h}");
    let r = curl(&with_cert, &url);
    assert_eq!(r.json()["headers"]["x-client-verify"], "SUCCESS");
}

/// RSA and ECDSA for one name: a client that only verifies RSA signatures gets the
/// RSA certificate, any other the ECDSA one; the OCSP response of each is stapled.
#[test]
fn rsa_and_ecdsa_certificates_and_ocsp_stapling() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_certs(d);
    // an OCSP response for ec.pem, signed by its own key (s_client prints any response)
    sh(
        d,
        r#"set -e
serial=$(openssl x509 -in ec.pem -noout -serial | cut -d= -f2)
end=$(date -u -d '+1 day' +%y%m%d%H%M%SZ)
printf 'V\t%s\t\t%s\tunknown\t/CN=localhost\n' "$end" "$serial" > index.txt
openssl ocsp -issuer ec.pem -cert ec.pem -reqout req.der -no_nonce 2>/dev/null
openssl ocsp -index index.txt -rsigner ec.pem -rkey ec.key -CA ec.pem -reqin req.der -respout ec.ocsp -ndays 1 2>/dev/null >/dev/null
"#,
    );
    let p = Portico::start(&format!(
        r#"
[[listeners]]
listen = ["127.0.0.1:{{port}}"]
  [listeners.tls]
  certs = [{{ cert = "{d}/rsa.pem", key = "{d}/rsa.key" }}, {{ cert = "{d}/ec.pem", key = "{d}/ec.key", ocsp = "{d}/ec.ocsp" }}]
  [[listeners.routes]]
  path = "/"
  return = {{ status = 200, body = "ok\n" }}
"#,
        d = d.display()
    ));
    let s_client = |extra: &str| {
        let out = Command::new("bash")
            .args([
                "-c",
                &format!(
                    "openssl s_client -connect 127.0.0.1:{} -servername localhost {extra} </dev/null 2>&1",
                    p.port
                ),
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let default = s_client("-status");
    assert!(
        default.contains("Server public key is 256 bit"),
        "{default}"
    );
    assert!(
        default.contains("OCSP Response Status: successful"),
        "{default}"
    );
    let rsa_only = s_client("-sigalgs rsa_pss_rsae_sha256:RSA+SHA256 -status");
    assert!(
        rsa_only.contains("Server public key is 2048 bit"),
        "{rsa_only}"
    );
    assert!(
        rsa_only.contains("OCSP response: no response sent"),
        "{rsa_only}"
    );
    // TLS 1.2 with an RSA-only client as well
    let rsa12 = s_client("-tls1_2 -sigalgs RSA+SHA256");
    assert!(rsa12.contains("Server public key is 2048 bit"), "{rsa12}");

    // a reload re-reads the OCSP file: an empty one staples nothing, a missing one is
    // refused (the running config goes on stapling what it read)
    let cfg = std::fs::read_to_string(&p.config).unwrap();
    std::fs::write(d.join("ec.ocsp"), b"").unwrap();
    assert!(p.reload(&cfg));
    assert!(s_client("-status").contains("OCSP response: no response sent"));
    std::fs::remove_file(d.join("ec.ocsp")).unwrap();
    assert!(!p.reload(&cfg), "a missing OCSP file is refused");
}

/// The OCSP entry of /status for the fetched certificate, once `ok` holds (bounded).
fn ocsp_status(p: &Portico, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = curl(&[], &format!("http://127.0.0.1:{}/status", p.admin_port)).json();
        let o = s["ocsp"][0].clone();
        if ok(&o) {
            return o;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{o}\n{}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `ocsp = "fetch"`: the response comes from the responder the certificate names
/// (openssl's responder), is verified and stapled without a reload; a responder down
/// at start is retried; a response signed by a key the CA never delegated to is not
/// stapled; a revoked certificate's response is stapled as the responder said; a
/// certificate that names no responder, or a chain without its issuer, is refused.
#[test]
fn ocsp_responses_fetched_from_the_certificates_responder() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let responder_port = free_port();
    sh(
        d,
        &format!(
            r#"set -e
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -subj "/O=Example/CN=Test CA" -days 2 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ec.key -out ec.csr -subj "/CN=localhost" 2>/dev/null
printf 'subjectAltName=DNS:localhost\nauthorityInfoAccess=OCSP;URI:http://127.0.0.1:{responder_port}/\n' > leaf.ext
openssl x509 -req -in ec.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out leaf.pem -days 2 -extfile leaf.ext 2>/dev/null
cat leaf.pem ca.pem > chain.pem
printf 'subjectAltName=DNS:localhost\n' > plain.ext
openssl x509 -req -in ec.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out plain.pem -days 2 -extfile plain.ext 2>/dev/null
cat plain.pem ca.pem > plain-chain.pem
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout rogue.key -out rogue.pem -subj "/CN=rogue" -days 2 2>/dev/null
cp ca.pem signer.pem; cp ca.key signer.key
serial=$(openssl x509 -in leaf.pem -noout -serial | cut -d= -f2)
end=$(date -u -d '+2 day' +%y%m%d%H%M%SZ)
printf 'V\t%s\t\t%s\tunknown\t/CN=localhost\n' "$end" "$serial" > index.txt
printf 'R\t%s\t%s\t%s\tunknown\t/CN=localhost\n' "$end" "$(date -u +%y%m%d%H%M%SZ)" "$serial" > revoked.txt
"#
        ),
    );
    let config = |cert: &str| {
        format!(
            r#"
[admin]
listen = "127.0.0.1:{{admin}}"
[[listeners]]
listen = ["127.0.0.1:{{port}}"]
  [listeners.tls]
  certs = [{{ cert = "{d}/{cert}", key = "{d}/ec.key", ocsp = "fetch" }}]
  [[listeners.routes]]
  path = "/"
  return = {{ status = 200, body = "ok\n" }}
"#,
            d = d.display()
        )
    };
    let s_client = |port: u16| {
        sh(
            d,
            &format!("openssl s_client -connect 127.0.0.1:{port} -servername localhost -status </dev/null 2>&1 || true"),
        )
    };

    // the responder is down at start: handshakes go on, unstapled, and it is retried
    let p = Portico::start(&config("chain.pem"));
    let o = ocsp_status(&p, |o| o["last_error"].is_string());
    assert_eq!(
        o["responder"],
        format!("http://127.0.0.1:{responder_port}/"),
        "{o}"
    );
    let before = s_client(p.port);
    assert!(
        before.contains("OCSP response: no response sent"),
        "{before}"
    );
    assert!(
        before.contains("Verify return code") || before.contains("CONNECTED"),
        "{before}"
    );

    let _responder = ocsp_responder(responder_port, d);
    let o = ocsp_status(&p, |o| o["status"] == "good");
    assert!(o["next_update"].is_i64(), "{o}");
    let after = s_client(p.port);
    assert!(
        after.contains("OCSP Response Status: successful"),
        "{after}"
    );
    assert!(after.contains("Cert Status: good"), "{after}");
    let requests = std::fs::read_to_string(d.join("requests")).unwrap();
    assert!(
        requests
            .lines()
            .all(|l| l.starts_with("application/ocsp-request ")),
        "{requests}"
    );
    // the same response survives a reload (it is not fetched again for it)
    let fetched = requests.lines().count();
    assert!(p.reload(&config("chain.pem")));
    assert!(s_client(p.port).contains("Cert Status: good"));
    assert_eq!(
        std::fs::read_to_string(d.join("requests"))
            .unwrap()
            .lines()
            .count(),
        fetched
    );

    // a response signed by a key the CA did not delegate to is not stapled
    std::fs::copy(d.join("rogue.pem"), d.join("signer.pem")).unwrap();
    std::fs::copy(d.join("rogue.key"), d.join("signer.key")).unwrap();
    let second = Portico::start(&config("chain.pem"));
    let o = ocsp_status(&second, |o| {
        o["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("signature does not verify"))
    });
    assert!(o["status"].is_null(), "{o}");
    assert!(s_client(second.port).contains("OCSP response: no response sent"));
    // the CA's own answer again, now that the certificate is revoked: stapled as said
    std::fs::copy(d.join("ca.pem"), d.join("signer.pem")).unwrap();
    std::fs::copy(d.join("ca.key"), d.join("signer.key")).unwrap();
    std::fs::copy(d.join("revoked.txt"), d.join("index.txt")).unwrap();
    ocsp_status(&second, |o| o["status"] == "revoked");
    assert!(s_client(second.port).contains("Cert Status: revoked"));
    assert!(second.log_text().contains("REVOKED"));

    // what cannot be fetched is refused at check, naming the file
    let checked = |cert: &str| {
        let port = free_port().to_string();
        config(cert)
            .replace("{admin}", &port)
            .replace("{port}", &free_port().to_string())
    };
    check_errors(
        &checked("plain-chain.pem"),
        &["plain-chain.pem", "names no OCSP responder"],
    );
    check_errors(
        &checked("leaf.pem"),
        &["leaf.pem", "needs the issuer's certificate"],
    );
}

/// min_version = "1.3" refuses TLS 1.2; tickets let a client resume its session.
#[test]
fn min_version_and_session_resumption() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_certs(d);
    let p = Portico::start(&format!(
        "[[listeners]]\nlisten = [\"127.0.0.1:{{port}}\"]\n  [listeners.tls]\n  cert = \"{d}/ec.pem\"\n  key = \"{d}/ec.key\"\n  min_version = \"1.3\"\n  [[listeners.routes]]\n  path = \"/\"\n  return = {{ status = 200, body = \"ok\\n\" }}\n",
        d = d.display()
    ));
    // a request, and its answer read to the end (s_client -ign_eof): TLS 1.3 tickets
    // arrive after the handshake, before the answer
    let run = |args: &str| {
        sh(
            d,
            &format!(
                "printf 'GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n' | openssl s_client -ign_eof -connect 127.0.0.1:{} -servername localhost {args} 2>&1 || true",
                p.port
            ),
        )
    };
    let tls12 = run("-tls1_2");
    assert!(
        !tls12.contains("Cipher is ECDHE"),
        "TLS 1.2 refused: {tls12}"
    );
    assert!(
        tls12.contains("alert") || tls12.contains("error"),
        "{tls12}"
    );
    let first = run("-tls1_3 -sess_out sess.pem");
    assert!(first.contains("New, TLSv1.3"), "{first}");
    let again = run("-tls1_3 -sess_in sess.pem");
    assert!(again.contains("Reused, TLSv1.3"), "{again}");
    check_errors(
        "[[listeners]]\nlisten = [\"127.0.0.1:1\"]\n  [listeners.tls]\n  cert = \"/etc/hostname\"\n  key = \"/etc/hostname\"\n  min_version = \"1.1\"\n",
        &["min_version", "TLS 1.0 and 1.1 are not offered"],
    );
}

/// An IMAPS login with a client certificate: the auth server gets nginx's Auth-SSL-*
/// headers (and the certificate with pass_client_cert).
#[test]
fn mail_auth_requests_carry_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_certs(d);
    let (_dovecot, imap, pop3) = dovecot(d);
    let (_auth, auth_port, auth_log) = auth_server(
        d,
        &[
            format!("imap=127.0.0.1:{imap}"),
            format!("pop3=127.0.0.1:{pop3}"),
        ],
    );
    let p = Portico::start(&format!(
        r#"
[[listeners]]
name = "imaps"
protocol = "imap"
listen = ["127.0.0.1:{{port}}"]
auth_http = "http://127.0.0.1:{auth_port}/auth"
starttls = "off"
  [listeners.tls]
  cert = "{d}/ec.pem"
  key = "{d}/ec.key"
  client_auth = {{ ca = "{d}/ca.pem", mode = "optional" }}
  [listeners.mail]
  pass_client_cert = true
"#,
        d = d.display()
    ));
    let login = |cert: bool| {
        let mut args = vec![
            "-s".to_string(),
            "-k".into(),
            "--user".into(),
            "alice:secret".into(),
        ];
        if cert {
            args.extend([
                "--cert".into(),
                format!("{}/alice.pem", d.display()),
                "--key".into(),
                format!("{}/alice.key", d.display()),
            ]);
        }
        let out = Command::new("curl")
            .args(&args)
            .arg(format!("imaps://127.0.0.1:{}/", p.port))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    login(true);
    login(false);
    let reqs = read_jsonl(&auth_log);
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    let with = &reqs[0]["headers"];
    assert_eq!(with["Auth-SSL"], "on");
    assert_eq!(with["Auth-SSL-Verify"], "SUCCESS");
    assert_eq!(with["Auth-SSL-Subject"], "CN=alice,O=Example%20Corp");
    assert_eq!(with["Auth-SSL-Issuer"], "CN=Test%20CA,O=Example%20Corp");
    let fp = sh(d, "openssl x509 -in alice.pem -noout -fingerprint -sha1");
    let fp = fp
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_lowercase();
    assert_eq!(with["Auth-SSL-Fingerprint"], fp.as_str());
    assert!(
        with["Auth-SSL-Cert"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN%20CERTIFICATE-----%0A"),
        "{with}"
    );
    let without = &reqs[1]["headers"];
    assert_eq!(without["Auth-SSL-Verify"], "NONE");
    assert!(without.get("Auth-SSL-Subject").is_none());
}
