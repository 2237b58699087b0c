//! The IMAP front end against Dovecot, with the auth_http server of apps/auth_http.py:
//! transcripts (raw lines, as a user of telnet would see them), curl and Python's
//! imaplib as clients.

mod common;

use std::process::Command;

use common::*;

type Setup = DovecotSetup;

/// Dovecot, an auth server sending IMAP logins to it (with `auth_opts`), and Portico
/// with one IMAP listener (`extra` in the listener table, `more` after it).
fn setup(auth_opts: &[&str], extra: &str, more: &str) -> Setup {
    dovecot_setup("imap", auth_opts, extra, more)
}

fn auth_requests(s: &Setup) -> Vec<serde_json::Value> {
    read_jsonl(&s.auth_log)
}

#[test]
fn pre_auth_commands_as_nginx_answers_them() {
    let s = setup(&[], "", "");
    let mut c = LineClient::connect(s.portico.port);
    assert_eq!(c.line(), "* OK IMAP4 ready");
    assert_eq!(
        c.ask("a1 CAPABILITY"),
        "* CAPABILITY IMAP4 IMAP4rev1 UIDPLUS AUTH=PLAIN"
    );
    assert_eq!(c.line(), "a1 OK completed");
    assert_eq!(c.ask("a2 NOOP"), "a2 OK completed");
    assert_eq!(c.ask("a3 ID (\"name\" \"test\")"), "* ID NIL");
    assert_eq!(c.line(), "a3 OK completed");
    assert_eq!(c.ask("a4 FROBNICATE"), "a4 BAD invalid command");
    // pipelined commands are answered in order
    c.send("b1 NOOP\r\nb2 CAPABILITY\r\nb3 NOOP\r\n");
    assert_eq!(c.line(), "b1 OK completed");
    assert!(c.line().starts_with("* CAPABILITY"));
    assert_eq!(c.line(), "b2 OK completed");
    assert_eq!(c.line(), "b3 OK completed");
    // a line over the limit is refused, the session goes on
    assert_eq!(
        c.ask(&format!("c1 NOOP {}", "x".repeat(10_000))),
        "* BAD invalid command"
    );
    assert_eq!(c.ask("a5 LOGOUT"), "* BYE");
    assert_eq!(c.line(), "a5 OK completed");
    assert!(c.closed());
    assert!(auth_requests(&s).is_empty(), "no lookup without a login");
}

#[test]
fn too_many_errors_close_the_session() {
    let s = setup(&[], "", "");
    let mut c = LineClient::connect(s.portico.port);
    c.line();
    for i in 0..5 {
        assert_eq!(
            c.ask(&format!("e{i} NOPE")),
            format!("e{i} BAD invalid command")
        );
    }
    assert!(c.closed(), "closed after max_errors (5)");
}

#[test]
fn login_with_literals_then_the_session_is_dovecots() {
    let s = setup(&[], "", "");
    let mut c = LineClient::connect(s.portico.port);
    c.line();
    assert_eq!(c.ask("a1 LOGIN {5}"), "+ OK");
    assert_eq!(c.ask("alice {6}"), "+ OK");
    // the answer to LOGIN is Dovecot's, under the client's tag
    let answer = c.ask("secret");
    assert!(
        answer.starts_with("a1 OK") && answer.contains("Logged in"),
        "{answer}"
    );
    // now it is Dovecot speaking
    c.send("a2 SELECT INBOX\r\n");
    let lines = c.until("a2 ");
    assert!(lines.iter().any(|l| l.contains("EXISTS")), "{lines:?}");
    assert!(lines.last().unwrap().starts_with("a2 OK"), "{lines:?}");
    assert_eq!(c.ask("a3 LOGOUT"), "* BYE Logging out");
    let req = &auth_requests(&s)[0]["headers"];
    assert_eq!(req["Auth-Method"], "plain");
    assert_eq!(req["Auth-User"], "alice");
    assert_eq!(req["Auth-Pass"], "secret");
    assert_eq!(req["Auth-Protocol"], "imap");
    assert_eq!(req["Auth-Login-Attempt"], "1");
    assert_eq!(req["Client-IP"], "127.0.0.1");
}

#[test]
fn literal_bytes_are_never_run_as_commands() {
    let s = setup(&["wait=1"], "", "");
    let mut c = LineClient::connect(s.portico.port);
    c.line();
    // LITERAL+ ({n+}): the 11 bytes "a9 LOGOUT\r\n" are the user name, not a command
    c.send("a1 LOGIN {11+}\r\na9 LOGOUT\r\n {1+}\r\nx\r\n");
    assert_eq!(c.line(), "a1 NO Invalid login or password");
    assert_eq!(
        c.ask("a2 NOOP"),
        "a2 OK completed",
        "still open: LOGOUT never ran"
    );
    let req = &auth_requests(&s)[0]["headers"];
    assert_eq!(
        req["Auth-User"], "a9%20LOGOUT%0D%0A",
        "escaped: no header injection"
    );
}

#[test]
fn refusals_with_and_without_auth_wait() {
    // With Auth-Wait the client may try again on the same connection.
    let s = setup(&["wait=1"], "", "");
    let mut c = LineClient::connect(s.portico.port);
    c.line();
    assert_eq!(
        c.ask("a1 LOGIN alice wrong"),
        "a1 NO Invalid login or password"
    );
    let ok = c.ask("a2 LOGIN alice secret");
    assert!(ok.starts_with("a2 OK"), "{ok}");
    let attempts: Vec<String> = auth_requests(&s)
        .iter()
        .map(|r| {
            r["headers"]["Auth-Login-Attempt"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(attempts, vec!["1", "2"]);
    // the refusal's log line says who and how (fail2ban reads it)
    let line = s.portico.wait_log_line("login refused");
    for part in ["client=127.0.0.1", "protocol=\"imap\"", "user=alice"] {
        assert!(line.contains(part), "{part} in {line}");
    }

    // Without it, the session ends after the answer.
    let s = setup(&[], "", "");
    let mut c = LineClient::connect(s.portico.port);
    c.line();
    assert_eq!(
        c.ask("a1 LOGIN alice wrong"),
        "a1 NO Invalid login or password"
    );
    assert!(c.closed());
}

#[test]
fn an_unreachable_auth_server_is_a_temporary_failure_not_an_open_door() {
    let port = free_port();
    let p = Portico::start(&format!(
        "[[listeners]]\nlisten = [\"127.0.0.1:{{port}}\"]\nprotocol = \"imap\"\nauth_http = \"http://127.0.0.1:{port}/auth\"\n"
    ));
    let mut c = LineClient::connect(p.port);
    c.line();
    assert_eq!(
        c.ask("a1 LOGIN alice secret"),
        "* BAD internal server error"
    );
    assert!(c.closed());
}

#[test]
fn authenticate_plain_and_login_with_imaplib() {
    let s = setup(&[], "", "");
    let script = format!(
        r#"
import imaplib, base64
m = imaplib.IMAP4("127.0.0.1", {port})
m.authenticate("PLAIN", lambda _: b"\0alice\0secret")
typ, data = m.select("INBOX")
assert typ == "OK", (typ, data)
m.logout()
m = imaplib.IMAP4("127.0.0.1", {port})
m._mechs = None
steps = iter([b"bob", b"hunter2"])
m.authenticate("LOGIN", lambda _: next(steps))
assert m.select("INBOX")[0] == "OK"
m.logout()
print("ok")
"#,
        port = s.portico.port
    );
    let (out, err) = python(&script);
    assert_eq!(out, "ok", "{err}");
    let methods: Vec<String> = auth_requests(&s)
        .iter()
        .map(|r| r["headers"]["Auth-Method"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(methods, vec!["plain", "login"]);
}

#[test]
fn sasl_ir_and_curl() {
    let s = setup(&[], "", "");
    let mut c = LineClient::connect(s.portico.port);
    c.line();
    // AUTHENTICATE PLAIN with an initial response (SASL-IR): base64("\0alice\0secret")
    let ok = c.ask("a1 AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==");
    assert!(ok.starts_with("a1 OK"), "{ok}");
    drop(c);
    // curl lists the mailboxes through Portico
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20", "-u", "alice:secret"])
        .arg(format!("imap://127.0.0.1:{}/", s.portico.port))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("INBOX"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn pools_pick_a_backend_when_the_auth_server_names_none() {
    let dir = tempfile::tempdir().unwrap();
    let (_dovecot, imap, _) = dovecot(dir.path());
    let (_auth, auth_port, _) = auth_server(dir.path(), &["pool=1".to_string()]);
    let p = Portico::start(&format!(
        "[upstreams.mailstore]\nservers = [{{ addr = \"127.0.0.1:{imap}\" }}]\nbalance = \"hash\"\nhash_key = \"$user\"\n\n[[listeners]]\nlisten = [\"127.0.0.1:{{port}}\"]\nprotocol = \"imap\"\nauth_http = \"http://127.0.0.1:{auth_port}/auth\"\nupstream = \"mailstore\"\n"
    ));
    for user in ["alice", "pooled"] {
        let mut c = LineClient::connect(p.port);
        c.line();
        let ok = c.ask(&format!("a1 LOGIN {user} secret"));
        assert!(ok.starts_with("a1 OK"), "{user}: {ok}");
    }
}

#[test]
fn mail_settings_greeting_capabilities_headers_and_throttling() {
    let s = setup(
        &["wait=1"],
        "",
        "[listeners.mail]\ngreeting = \"Portico IMAP at your service\"\ncapabilities = [\"IMAP4rev1\", \"ID\"]\nauth = [\"plain\", \"login\"]\nauth_http_headers = { X-Auth-Key = \"k1\" }\nmax_login_failures = 2\nlogin_failure_window = \"1m\"\n",
    );
    let mut c = LineClient::connect(s.portico.port);
    assert_eq!(c.line(), "* OK Portico IMAP at your service");
    assert_eq!(
        c.ask("a1 CAPABILITY"),
        "* CAPABILITY IMAP4rev1 ID AUTH=PLAIN AUTH=LOGIN"
    );
    c.line();
    assert_eq!(
        c.ask("a2 LOGIN alice bad1"),
        "a2 NO Invalid login or password"
    );
    assert_eq!(
        c.ask("a3 LOGIN alice bad2"),
        "a3 NO Invalid login or password"
    );
    // two failures from this address: the next login is refused without a lookup,
    // even with the right password, and the session closes
    assert_eq!(
        c.ask("a4 LOGIN alice secret"),
        "a4 NO Too many failed logins, try again later"
    );
    assert!(c.closed());
    let reqs = auth_requests(&s);
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0]["headers"]["X-Auth-Key"], "k1");
}

#[test]
fn the_auth_server_connection_is_kept_when_it_allows() {
    let s = setup(&["wait=1", "keepalive=1"], "", "");
    let mut c = LineClient::connect(s.portico.port);
    c.line();
    assert_eq!(
        c.ask("a1 LOGIN alice wrong"),
        "a1 NO Invalid login or password"
    );
    assert!(c.ask("a2 LOGIN alice secret").starts_with("a2 OK"));
    let ports: Vec<u64> = auth_requests(&s)
        .iter()
        .map(|r| r["peer_port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports.len(), 2);
    assert_eq!(
        ports[0], ports[1],
        "both lookups on one kept-alive connection"
    );
    assert_eq!(auth_requests(&s)[0]["headers"]["Connection"], "keep-alive");
}

#[test]
fn the_backend_learns_the_client_address_through_imap_id() {
    // The client comes through a load balancer speaking the PROXY protocol; Dovecot
    // (which trusts 127.0.0.1) logs the client's address, not Portico's.
    let s = setup(&[], "proxy_protocol = true", "");
    let mut c = LineClient::connect(s.portico.port);
    c.send("PROXY TCP4 203.0.113.50 127.0.0.1 40000 143\r\n");
    assert_eq!(c.line(), "* OK IMAP4 ready");
    assert!(c.ask("a1 LOGIN alice secret").starts_with("a1 OK"));
    let req = &auth_requests(&s)[0]["headers"];
    assert_eq!(req["Client-IP"], "203.0.113.50");
    assert_eq!(req["Proxy-Protocol-Addr"], "203.0.113.50");
    assert_eq!(req["Proxy-Protocol-Port"], "40000");
    assert_eq!(req["Proxy-Protocol-Server-Port"], "143");
    let text = wait_file_contains(&s.dir.path().join("dovecot.log"), "user=<alice>");
    assert!(text.contains("rip=203.0.113.50"), "{text}");
}

#[test]
fn proxy_protocol_v2_to_a_backend_that_requires_it() {
    let dir = tempfile::tempdir().unwrap();
    let dv = dovecot_with(dir.path(), true, None);
    let proxied = dv.proxied.unwrap();
    let (_auth, auth_port, _) = auth_server(dir.path(), &[format!("imap=127.0.0.1:{proxied}")]);
    let config = |on: bool| {
        format!(
            "[[listeners]]\nlisten = [\"127.0.0.1:{{port}}\"]\nprotocol = \"imap\"\nproxy_protocol = true\nauth_http = \"http://127.0.0.1:{auth_port}/auth\"\n  [listeners.mail]\n  backend_proxy_protocol = {on}\n"
        )
    };
    // Dovecot's haproxy listener drops connections without a PROXY header…
    let off = Portico::start(&config(false));
    let mut c = LineClient::connect(off.port);
    c.send("PROXY TCP4 198.51.100.9 127.0.0.1 41000 143\r\n");
    c.line();
    assert_eq!(
        c.ask("a1 LOGIN alice secret"),
        "* BAD internal server error"
    );
    // …and with one, the login works and Dovecot sees the client's address.
    let on = Portico::start(&config(true));
    let mut c = LineClient::connect(on.port);
    c.send("PROXY TCP4 198.51.100.9 127.0.0.1 41000 143\r\n");
    c.line();
    assert!(c.ask("a1 LOGIN alice secret").starts_with("a1 OK"));
    wait_file_contains(&dir.path().join("dovecot.log"), "rip=198.51.100.9");
}

#[test]
fn tls_to_the_backend_implicit_and_starttls_verified() {
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path(), "dv", &["localhost", "127.0.0.1"]);
    write_cert(dir.path(), "other", &["other.test"]);
    let (cert, key) = (dir.path().join("dv.crt"), dir.path().join("dv.key"));
    let dv = dovecot_with(dir.path(), false, Some((&cert, &key)));
    for (mode, port, ca, ok) in [
        ("starttls", dv.imap, "dv", true),
        ("on", dv.imaps.unwrap(), "dv", true),
        ("on", dv.imaps.unwrap(), "other", false),
    ] {
        let (_auth, auth_port, _) = auth_server(dir.path(), &[format!("imap=127.0.0.1:{port}")]);
        let p = Portico::start(&format!(
            "[[listeners]]\nlisten = [\"127.0.0.1:{{port}}\"]\nprotocol = \"imap\"\nauth_http = \"http://127.0.0.1:{auth_port}/auth\"\n  [listeners.mail]\n  backend_tls = \"{mode}\"\n  backend_tls_ca = \"{}/{ca}.crt\"\n",
            dir.path().display()
        ));
        let mut c = LineClient::connect(p.port);
        c.line();
        let answer = c.ask("a1 LOGIN alice secret");
        if ok {
            assert!(answer.starts_with("a1 OK"), "{mode}: {answer}");
        } else {
            // a certificate the CA bundle does not vouch for: no login, no plaintext
            assert_eq!(answer, "* BAD internal server error", "{mode} with {ca}");
        }
    }
    // Dovecot logged both good logins as TLS sessions.
    let log = wait_file_contains(&dir.path().join("dovecot.log"), "user=<alice>");
    let logins: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Login: user=<alice>"))
        .collect();
    assert_eq!(logins.len(), 2, "{log}");
    assert!(logins.iter().all(|l| l.contains(", TLS")), "{logins:?}");
}

#[test]
fn a_client_cannot_keep_a_session_open_before_login_forever() {
    let s = setup(
        &[],
        "",
        "[listeners.mail]\nlogin_timeout = \"1s\"\ntimeout = \"60s\"\n",
    );
    let mut c = LineClient::connect(s.portico.port);
    c.line();
    // NOOPs keep each wait short, but the whole pre-login phase is bounded
    let mut answered = 0;
    for i in 0..100 {
        let r = c.ask(&format!("n{i} NOOP"));
        if r.is_empty() {
            break;
        }
        answered += 1;
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        answered < 100,
        "the session was closed before 100 NOOPs (5 s)"
    );
}

#[test]
fn sessions_survive_a_reload_and_end_with_the_drain() {
    let dir = tempfile::tempdir().unwrap();
    let (_dovecot, imap, _) = dovecot(dir.path());
    let (_auth, auth_port, _) = auth_server(dir.path(), &[format!("imap=127.0.0.1:{imap}")]);
    let config = |greeting: &str| {
        format!(
            "[runtime]\nshutdown_timeout = \"5s\"\n\n[[listeners]]\nlisten = [\"127.0.0.1:{{port}}\"]\nprotocol = \"imap\"\nauth_http = \"http://127.0.0.1:{auth_port}/auth\"\n  [listeners.mail]\n  greeting = \"{greeting}\"\n"
        )
    };
    let mut p = Portico::start(&config("before"));
    let mut old = LineClient::connect(p.port);
    assert_eq!(old.line(), "* OK before");
    assert!(old.ask("a1 LOGIN alice secret").starts_with("a1 OK"));

    assert!(p.reload(&config("after")));
    // the tunnel opened before the reload goes on; new sessions get the new settings
    assert!(old.ask("a2 NOOP").starts_with("a2 OK"));
    let mut new = LineClient::connect(p.port);
    assert_eq!(new.line(), "* OK after");

    // SIGTERM: a session still before login closes at once; open tunnels end when
    // the drain time is over
    p.proc.signal("TERM");
    assert!(new.closed(), "the pre-login session was closed");
    assert!(old.ask("a3 NOOP").starts_with("a3 OK"), "the tunnel drains");
    assert_eq!(
        p.proc.wait_exit(std::time::Duration::from_secs(30)),
        Some(0)
    );
    assert!(old.closed(), "the tunnel was closed by the drain");
}

/// `conn_limit` and `rate_limit` on a mail listener, keyed on the client address:
/// sessions at once, and logins per minute (the refused one never reaches the auth
/// server).
#[test]
fn sessions_and_logins_per_client_address_are_limited() {
    let s = setup(
        &[],
        "rate_limit = [\"logins\"]\nconn_limit = [\"sessions\"]",
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[rate_limits.logins]\nkey = \"$remote_addr\"\nrate = \"1r/m\"\nburst = 1\nnodelay = true\n[conn_limits.sessions]\nkey = \"$remote_addr\"\nmax = 1\n",
    );
    // the start-up readiness probe held a session place for a moment: wait until it
    // is given back
    let status = format!("http://127.0.0.1:{}/status", s.portico.admin_port);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while curl(&[], &status).json()["conn_limits"]["sessions"]["keys_in_flight"] != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the probe's session never ended"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut first = LineClient::connect(s.portico.port);
    assert_eq!(first.line(), "* OK IMAP4 ready");
    let mut second = LineClient::connect(s.portico.port);
    assert_eq!(
        second.line(),
        "* BYE Too many connections from your address"
    );
    assert!(second.closed());
    let line = s.portico.wait_log_line("limiting connections");
    assert!(line.contains("sessions"), "{line}");
    // two logins pass (one, and a burst of one), the third is refused
    assert!(first.ask("a1 LOGIN alice secret").starts_with("a1 OK"));
    drop(first);
    let login = |tag: &str| {
        // the previous session's place is given back when it ends: retry the connect
        // until the new one is greeted
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let mut c = LineClient::connect(s.portico.port);
            if c.line() == "* OK IMAP4 ready" {
                return c.ask(&format!("{tag} LOGIN alice secret"));
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no session place came back"
            );
        }
    };
    assert!(login("b1").starts_with("b1 OK"));
    let refused = login("c1");
    assert!(refused.starts_with("c1 NO"), "{refused}");
    assert!(refused.contains("Too many logins"), "{refused}");
    assert_eq!(auth_requests(&s).len(), 2);
    // the outcomes in /metrics
    let metrics = curl(
        &[],
        &format!("http://127.0.0.1:{}/metrics", s.portico.admin_port),
    )
    .text();
    for (family, outcome, n) in [
        ("logins", "accepted", 2),
        ("logins", "limited", 1),
        ("logins", "refused", 0),
        ("auth_lookups", "ok", 2),
        ("auth_lookups", "error", 0),
    ] {
        let line = format!(
            "portico_mail_{family}_total{{listener=\"imap\",protocol=\"imap\",outcome=\"{outcome}\"}} {n}"
        );
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
}
