//! The example config/mail.toml, pointed at this test's Dovecot, aiosmtpd, auth server
//! and ports: IMAP through the pool (no Auth-Server in the answer), POP3 with STLS,
//! SMTP submission that demands STARTTLS.

mod common;

use common::*;

#[test]
fn example_mail_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("certs")).unwrap();
    write_cert(&dir.path().join("certs"), "mail", &["localhost"]);
    let dovecot_dir = dir.path().join("dovecot");
    std::fs::create_dir_all(&dovecot_dir).unwrap();
    let (_dovecot, imap, pop3) = dovecot(&dovecot_dir);
    let (_sink, smtp, _) = smtp_sink(dir.path());
    // pool=1: OK answers name no server, so IMAP goes through the upstream
    let (_auth, auth_port, auth_log) = auth_server(
        dir.path(),
        &[
            format!("pop3=127.0.0.1:{pop3}"),
            format!("smtp=127.0.0.1:{smtp}"),
            "pool=1".into(),
        ],
    );
    let (p_imap, p_pop3) = (free_port(), free_port());
    let text = std::fs::read_to_string(root().join("config/mail.toml"))
        .unwrap()
        .replace("127.0.0.1:143\"", &format!("127.0.0.1:{imap}\""))
        .replace("127.0.0.1:9000", &format!("127.0.0.1:{auth_port}"))
        .replace("127.0.0.1:1143", &format!("127.0.0.1:{p_imap}"))
        .replace("127.0.0.1:1110", &format!("127.0.0.1:{p_pop3}"))
        .replace("127.0.0.1:1587", "127.0.0.1:{port}")
        .replace("\"certs/", &format!("\"{}/certs/", dir.path().display()));
    let p = Portico::start(&text);
    let script = format!(
        r#"
import imaplib, poplib, smtplib, ssl
ctx = ssl._create_unverified_context()
m = imaplib.IMAP4("127.0.0.1", {p_imap})
m.starttls(ssl_context=ctx)
m.login("alice", "secret")
assert m.select("INBOX")[0] == "OK"
m.logout()
# POP3 has no upstream: with pool=1 the auth server names no server, so it fails
p = poplib.POP3("127.0.0.1", {p_pop3})
p.stls(context=ctx)
p.user("bob")
try:
    p.pass_("hunter2")
    print("pop3 unexpectedly ok")
except poplib.error_proto as e:
    print("pop3", e)
c = smtplib.SMTP("127.0.0.1", {port})
c.ehlo("x.test")
assert not c.has_extn("auth"), "no AUTH before STARTTLS"
c.starttls(context=ctx)
c.ehlo("x.test")
print("smtp auth", c.has_extn("auth"))
"#,
        port = p.port
    );
    let (out, err) = python(&script);
    assert_eq!(
        out, "pop3 b'-ERR internal server error'\nsmtp auth True",
        "{err}"
    );
    let log = std::fs::read_to_string(&auth_log).unwrap();
    assert!(log.contains("\"Auth-Protocol\": \"imap\""));
}
