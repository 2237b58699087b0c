//! TLS on the mail listeners: STARTTLS / STLS with `starttls = "on"` and `"only"`,
//! plaintext pipelined after STARTTLS discarded (CVE-2011-0411 class), implicit TLS
//! (IMAPS). Dovecot and aiosmtpd behind, Python's imaplib, poplib, smtplib and ssl as
//! clients.

mod common;

use common::*;

struct Setup {
    _dir: tempfile::TempDir,
    _dovecot: Proc,
    _sink: Proc,
    _auth: Proc,
    auth_log: std::path::PathBuf,
    portico: Portico,
}

/// One listener of `protocol` with TLS (`starttls` as given), backends for all three.
fn setup(protocol: &str, starttls: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path(), "mail", &["localhost"]);
    let (dovecot, imap, pop3) = dovecot(dir.path());
    let (sink, smtp, _) = smtp_sink(dir.path());
    let opts = vec![
        format!("imap=127.0.0.1:{imap}"),
        format!("pop3=127.0.0.1:{pop3}"),
        format!("smtp=127.0.0.1:{smtp}"),
    ];
    let (auth, auth_port, auth_log) = auth_server(dir.path(), &opts);
    let d = dir.path().display();
    let portico = Portico::start(&format!(
        "[[listeners]]\nlisten = [\"127.0.0.1:{{port}}\"]\nprotocol = \"{protocol}\"\nstarttls = \"{starttls}\"\nauth_http = \"http://127.0.0.1:{auth_port}/auth\"\ntls = {{ cert = \"{d}/mail.crt\", key = \"{d}/mail.key\" }}\n"
    ));
    Setup {
        _dir: dir,
        _dovecot: dovecot,
        _sink: sink,
        _auth: auth,
        auth_log,
        portico,
    }
}

const CTX: &str = "import ssl\nctx = ssl._create_unverified_context()\n";

#[test]
fn imap_starttls_on() {
    let s = setup("imap", "on");
    let out = python_ok(&format!(
        "{CTX}import imaplib\nm = imaplib.IMAP4('127.0.0.1', {p})\nprint('STARTTLS' in m.capabilities)\nm.starttls(ssl_context=ctx)\nm.login('alice', 'secret')\nprint(m.select('INBOX')[0])\nm.logout()\n",
        p = s.portico.port
    ));
    assert_eq!(out, "True\nOK");
    assert_eq!(
        std::fs::read_to_string(&s.auth_log)
            .unwrap()
            .matches("\"Auth-SSL\": \"on\"")
            .count(),
        1,
        "the lookup says the login came over TLS"
    );
}

#[test]
fn imap_starttls_only_refuses_logins_in_plain_text() {
    let s = setup("imap", "only");
    let mut c = LineClient::connect(s.portico.port);
    c.line();
    assert_eq!(
        c.ask("a1 CAPABILITY"),
        "* CAPABILITY IMAP4 IMAP4rev1 UIDPLUS STARTTLS LOGINDISABLED"
    );
    c.line();
    assert_eq!(c.ask("a2 LOGIN alice secret"), "a2 BAD invalid command");
    assert_eq!(
        c.ask("a3 AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA=="),
        "a3 BAD invalid command"
    );
    assert!(std::fs::read_to_string(&s.auth_log)
        .unwrap_or_default()
        .is_empty());
    drop(c);
    let out = python_ok(&format!(
        "{CTX}import imaplib\nm = imaplib.IMAP4('127.0.0.1', {p})\nm.starttls(ssl_context=ctx)\nm.login('alice', 'secret')\nprint(m.select('INBOX')[0])\n",
        p = s.portico.port
    ));
    assert_eq!(out, "OK");
}

#[test]
fn plaintext_pipelined_after_starttls_is_discarded() {
    let s = setup("imap", "on");
    // One write: STARTTLS and a LOGIN behind it. The LOGIN must not run inside TLS.
    let out = python_ok(&format!(
        r#"{CTX}import socket
s = socket.create_connection(("127.0.0.1", {p}))
f = s.makefile("rb")
f.readline()
s.sendall(b"a1 STARTTLS\r\na2 LOGIN alice secret\r\n")
print(f.readline().decode().strip())
t = ctx.wrap_socket(s, server_hostname="localhost")
t.sendall(b"a3 NOOP\r\n")
print(t.recv(1000).decode().strip())
"#,
        p = s.portico.port
    ));
    assert_eq!(out, "a1 OK begin TLS negotiation now\na3 OK completed");
    assert!(
        std::fs::read_to_string(&s.auth_log)
            .unwrap_or_default()
            .is_empty(),
        "the pipelined LOGIN never reached the auth server"
    );
}

#[test]
fn pop3_stls_and_smtp_starttls() {
    let s = setup("pop3", "on");
    let out = python_ok(&format!(
        "{CTX}import poplib\np = poplib.POP3('127.0.0.1', {p})\np.stls(context=ctx)\np.user('alice')\np.pass_('secret')\nprint(p.stat())\n",
        p = s.portico.port
    ));
    assert_eq!(out, "(0, 0)");
    let s = setup("smtp", "on");
    let out = python_ok(&format!(
        "{CTX}import smtplib\nc = smtplib.SMTP('127.0.0.1', {p})\nc.ehlo('x.test')\nprint(c.has_extn('starttls'))\nc.starttls(context=ctx)\nc.ehlo('x.test')\nc.login('bob', 'hunter2')\nc.sendmail('bob@x.test', ['carol@y.test'], 'Subject: s\\r\\n\\r\\nbody\\r\\n')\nprint('sent')\n",
        p = s.portico.port
    ));
    assert_eq!(out, "True\nsent");
}

#[test]
fn implicit_tls_imaps() {
    let s = setup("imap", "off");
    let out = python_ok(&format!(
        "{CTX}import imaplib\nm = imaplib.IMAP4_SSL('127.0.0.1', {p}, ssl_context=ctx)\nprint('STARTTLS' in m.capabilities)\nm.login('alice', 'secret')\nprint(m.select('INBOX')[0])\n",
        p = s.portico.port
    ));
    assert_eq!(out, "False\nOK");
}
