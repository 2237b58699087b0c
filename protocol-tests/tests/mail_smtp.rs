//! The SMTP front end with aiosmtpd as the backend and the auth_http server of
//! apps/auth_http.py: transcripts, Python's smtplib and swaks as clients.

mod common;

use std::process::Command;

use common::*;

struct Setup {
    _dir: tempfile::TempDir,
    _sink: Proc,
    _auth: Proc,
    auth_log: std::path::PathBuf,
    sink: std::path::PathBuf,
    portico: Portico,
}

fn setup(auth_opts: &[&str]) -> Setup {
    setup_with(auth_opts, "")
}

fn setup_with(auth_opts: &[&str], mail: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (sink_proc, smtp, sink) = smtp_sink(dir.path());
    let mut opts = vec![format!("smtp=127.0.0.1:{smtp}")];
    opts.extend(auth_opts.iter().map(|s| s.to_string()));
    let (auth, auth_port, auth_log) = auth_server(dir.path(), &opts);
    let portico = Portico::start(&format!(
        "[[listeners]]\nname = \"smtp\"\nlisten = [\"127.0.0.1:{{port}}\"]\nprotocol = \"smtp\"\nserver_names = [\"mx.portico.test\"]\nauth_http = \"http://127.0.0.1:{auth_port}/auth\"\n{mail}\n"
    ));
    Setup {
        _dir: dir,
        _sink: sink_proc,
        _auth: auth,
        auth_log,
        sink,
        portico,
    }
}

fn delivered(s: &Setup) -> Vec<serde_json::Value> {
    read_jsonl(&s.sink)
}

fn auth_requests(s: &Setup) -> Vec<serde_json::Value> {
    read_jsonl(&s.auth_log)
}

#[test]
fn session_before_auth_as_nginx_answers_it() {
    let s = setup(&["wait=1"]);
    let mut c = LineClient::connect(s.portico.port);
    assert_eq!(c.line(), "220 mx.portico.test ESMTP ready");
    assert_eq!(
        c.ask("AUTH PLAIN AGFsaWNlAHNlY3JldA=="),
        "503 5.5.1 Error: send HELO/EHLO first"
    );
    assert_eq!(c.ask("EHLO client.test"), "250-mx.portico.test");
    assert_eq!(c.line(), "250 AUTH PLAIN LOGIN");
    assert_eq!(c.ask("HELO client.test"), "250 mx.portico.test");
    assert_eq!(
        c.ask("MAIL FROM:<a@b.test>"),
        "530 5.7.1 Authentication required"
    );
    assert_eq!(c.ask("NOOP"), "250 2.0.0 OK");
    assert_eq!(c.ask("FROB"), "500 5.5.1 Invalid command");
    // a refusal carries the auth server's Auth-Error-Code
    assert_eq!(
        c.ask("AUTH PLAIN AGFsaWNlAHdyb25n"),
        "535 5.7.8 Invalid login or password"
    );
    assert_eq!(c.ask("QUIT"), "221 2.0.0 Bye");
    let req = &auth_requests(&s)[0]["headers"];
    assert_eq!(req["Auth-Protocol"], "smtp");
    assert_eq!(req["Auth-SMTP-Helo"], "client.test");
    assert_eq!(req["Client-Host"], "[UNAVAILABLE]");
}

#[test]
fn smtplib_sends_a_message_through_to_the_backend() {
    let s = setup(&[]);
    let script = format!(
        r#"
import smtplib
from email.message import EmailMessage
m = EmailMessage()
m["From"] = "alice@portico.test"
m["To"] = "bob@example.test"
m["Subject"] = "through portico"
m.set_content("hello from smtplib\n")
with smtplib.SMTP("127.0.0.1", {port}) as c:
    c.ehlo("laptop.test")
    c.login("alice", "secret")
    c.send_message(m)
print("sent")
"#,
        port = s.portico.port
    );
    let (out, err) = python(&script);
    assert_eq!(out, "sent", "{err}");
    let got = delivered(&s);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["from"], "alice@portico.test");
    assert_eq!(got[0]["to"][0], "bob@example.test");
    assert_eq!(
        got[0]["helo"], "laptop.test",
        "the client's EHLO reaches the backend"
    );
    assert!(got[0]["data"]
        .as_str()
        .unwrap()
        .contains("hello from smtplib"));
}

#[test]
fn swaks_with_auth_login() {
    let s = setup(&[]);
    let out = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", s.portico.port)])
        .args([
            "--auth",
            "LOGIN",
            "--auth-user",
            "bob",
            "--auth-password",
            "hunter2",
        ])
        .args(["--from", "bob@portico.test", "--to", "carol@example.test"])
        .args(["--timeout", "20"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let got = delivered(&s);
    assert_eq!(got[0]["to"][0], "carol@example.test");
    assert_eq!(auth_requests(&s)[0]["headers"]["Auth-Method"], "login");
}

#[test]
fn relay_to_mx_lets_the_auth_server_decide_per_recipient() {
    let s = setup_with(&[], "[listeners.mail]\nauth = [\"none\"]\n");
    let mut c = LineClient::connect(s.portico.port);
    c.line();
    assert_eq!(
        c.ask("EHLO mx.sender.test"),
        "250 mx.portico.test",
        "no AUTH offered"
    );
    assert_eq!(c.ask("MAIL FROM:<news@sender.test>"), "250 2.1.0 OK");
    // a recipient the auth server accepts: the session goes to the backend, which
    // answers the RCPT itself
    let r = c.ask("RCPT TO:<carol@example.test>");
    assert!(r.starts_with("250"), "{r}");
    assert!(c.ask("DATA").starts_with("354"));
    c.send("Subject: relayed\r\n\r\nhi\r\n.\r\n");
    assert!(c.line().starts_with("250"));
    assert!(c.ask("QUIT").starts_with("221"));
    assert_eq!(delivered(&s)[0]["to"][0], "carol@example.test");
    let req = &auth_requests(&s)[0]["headers"];
    assert_eq!(req["Auth-Method"], "none");
    assert_eq!(req["Auth-SMTP-From"], "MAIL%20FROM:<news@sender.test>");
    assert_eq!(req["Auth-SMTP-To"], "RCPT%20TO:<carol@example.test>");

    // anyone else: refused, no open relay
    let mut c = LineClient::connect(s.portico.port);
    c.line();
    c.ask("EHLO mx.sender.test");
    c.ask("MAIL FROM:<spam@sender.test>");
    assert_eq!(
        c.ask("RCPT TO:<victim@elsewhere.test>"),
        "550 5.7.1 Relay access denied"
    );
    assert_eq!(delivered(&s).len(), 1);
}

#[test]
fn lettre_sends_and_mail_parser_reads_what_arrived() {
    use lettre::transport::smtp::authentication::{Credentials, Mechanism};
    use lettre::{Message, SmtpTransport, Transport};
    let s = setup(&[]);
    let email = Message::builder()
        .from("Alice <alice@portico.test>".parse().unwrap())
        .to("Carol <carol@example.test>".parse().unwrap())
        .subject("Grüße über Portico ✓")
        .body(String::from(
            "Zwölf Boxkämpfer jagen Viktor quer über den Sylter Deich.\n",
        ))
        .unwrap();
    let mailer = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(s.portico.port)
        .credentials(Credentials::new("alice".into(), "secret".into()))
        .authentication(vec![Mechanism::Plain])
        .timeout(Some(std::time::Duration::from_secs(20)))
        .build();
    mailer.send(&email).unwrap();

    let got = delivered(&s);
    assert_eq!(got.len(), 1);
    let raw = got[0]["data"].as_str().unwrap();
    let parsed = mail_parser::MessageParser::default()
        .parse(raw.as_bytes())
        .unwrap();
    assert_eq!(parsed.subject(), Some("Grüße über Portico ✓"));
    assert_eq!(
        parsed
            .from()
            .and_then(|f| f.first())
            .and_then(|a| a.address()),
        Some("alice@portico.test")
    );
    assert_eq!(
        parsed.body_text(0).as_deref().map(str::trim),
        Some("Zwölf Boxkämpfer jagen Viktor quer über den Sylter Deich.")
    );
}

#[test]
fn logging_in_to_a_backend_that_requires_auth() {
    let dir = tempfile::tempdir().unwrap();
    let (_sink, smtp, sink) = smtp_sink_with(dir.path(), true);
    let (_auth, auth_port, _) = auth_server(dir.path(), &[format!("smtp=127.0.0.1:{smtp}")]);
    for (mech, user, delivered) in [
        ("plain", "alice", true),
        ("login", "alice", true),
        ("plain", "bob", false),
    ] {
        let p = Portico::start(&format!(
            "[[listeners]]\nlisten = [\"127.0.0.1:{{port}}\"]\nprotocol = \"smtp\"\nauth_http = \"http://127.0.0.1:{auth_port}/auth\"\n  [listeners.mail]\n  backend_auth = \"{mech}\"\n  connect_timeout = \"2s\"\n"
        ));
        let pass = if user == "alice" { "secret" } else { "hunter2" };
        // AUTH PLAIN by hand, so the reply code shows whatever it is
        let script = format!(
            "import smtplib, base64\nc = smtplib.SMTP('127.0.0.1', {}, timeout=10)\nc.ehlo('x.test')\ncode, _ = c.docmd('AUTH', 'PLAIN ' + base64.b64encode(b'\\0{user}\\0{pass}').decode())\nif code == 235:\n    c.sendmail('{user}@x.test', ['z@example.test'], 'Subject: {mech}\\r\\n\\r\\nhi\\r\\n')\n    print('sent')\nelse:\n    print(code)\n",
            p.port
        );
        let (text, err) = python(&script);
        if delivered {
            assert_eq!(text, "sent", "{mech}: {err}\n{}", p.log_text());
        } else {
            // The auth server lets bob in, the backend does not know him and (aiosmtpd)
            // never answers the refused AUTH: after connect_timeout, a temporary failure.
            assert_eq!(text, "451", "{mech}: {err}");
        }
    }
    let got = read_jsonl(&sink);
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|m| m["authenticated"] == true), "{got:?}");
}

#[test]
fn postfix_learns_the_client_and_user_through_xclient() {
    let dir = tempfile::tempdir().unwrap();
    let pf = postfix(dir.path());
    let (_auth, auth_port, _) = auth_server(dir.path(), &[format!("smtp=127.0.0.1:{}", pf.port)]);
    let p = Portico::start(&format!(
        "[[listeners]]\nlisten = [\"127.0.0.1:{{port}}\"]\nprotocol = \"smtp\"\nproxy_protocol = true\nauth_http = \"http://127.0.0.1:{auth_port}/auth\"\n"
    ));
    // A client from 203.0.113.9 (via a PROXY header): Postfix would refuse to relay for
    // it, but XCLIENT tells it who the client is and that alice logged in.
    let mut c = LineClient::connect(p.port);
    c.send("PROXY TCP4 203.0.113.9 127.0.0.1 40000 25\r\n");
    assert!(c.line().starts_with("220"));
    c.ask("EHLO laptop.test");
    c.line();
    assert_eq!(c.ask("AUTH PLAIN AGFsaWNlAHNlY3JldA=="), "235 2.0.0 OK");
    assert!(c.ask("MAIL FROM:<alice@portico.test>").starts_with("250"));
    let rcpt = c.ask("RCPT TO:<carol@example.test>");
    assert!(
        rcpt.starts_with("250"),
        "relayed for the XCLIENT login: {rcpt}"
    );
    assert!(c.ask("DATA").starts_with("354"));
    c.send("Subject: via postfix\r\n\r\nhi\r\n.\r\n");
    let queued = c.line();
    assert!(queued.starts_with("250"), "{queued}");
    c.ask("QUIT");
    let log = wait_file_contains(&pf.maillog, "sasl_username=alice");
    assert!(
        log.contains("client=unknown[203.0.113.9]"),
        "Postfix saw the real client: {log}"
    );
}
