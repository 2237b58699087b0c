//! Challenge-response logins (CRAM-MD5 on all three protocols, APOP on POP3): Portico
//! sends the challenge, passes salt and digest to the auth server (Auth-Salt,
//! Auth-Pass), and logs in to the backend with the password the auth server sends
//! back. Dovecot and aiosmtpd behind; imaplib, poplib and smtplib as clients.

mod common;

use common::*;

#[test]
fn cram_md5_and_apop() {
    let dir = tempfile::tempdir().unwrap();
    let (_dovecot, imap, pop3) = dovecot(dir.path());
    let (_sink, smtp, sink) = smtp_sink(dir.path());
    let (_auth, auth_port, auth_log) = auth_server(
        dir.path(),
        &[
            format!("imap=127.0.0.1:{imap}"),
            format!("pop3=127.0.0.1:{pop3}"),
            format!("smtp=127.0.0.1:{smtp}"),
        ],
    );
    let listener = |proto: &str, auth: &str| {
        Portico::start(&format!(
            "[[listeners]]\nlisten = [\"127.0.0.1:{{port}}\"]\nprotocol = \"{proto}\"\nauth_http = \"http://127.0.0.1:{auth_port}/auth\"\n  [listeners.mail]\n  auth = {auth}\n"
        ))
    };
    let p_imap = listener("imap", r#"["plain", "cram-md5"]"#);
    let p_pop3 = listener("pop3", r#"["plain", "apop", "cram-md5"]"#);
    let p_smtp = listener("smtp", r#"["cram-md5"]"#);
    let script = format!(
        r#"
import imaplib, poplib, smtplib
m = imaplib.IMAP4("127.0.0.1", {i})
assert "AUTH=CRAM-MD5" in m.capabilities, m.capabilities
m.login_cram_md5("alice", "secret")
assert m.select("INBOX")[0] == "OK"
m.logout()
p = poplib.POP3("127.0.0.1", {p})
assert b"<" in p.getwelcome(), p.getwelcome()
p.apop("bob", "hunter2")
print(p.stat())
p.quit()
c = smtplib.SMTP("127.0.0.1", {s})
c.ehlo("x.test")
print(c.esmtp_features["auth"].strip())
c.login("alice", "secret")
c.sendmail("alice@x.test", ["z@example.test"], "Subject: cram\r\n\r\nhi\r\n")
c.quit()
m = imaplib.IMAP4("127.0.0.1", {i})
try:
    m.login_cram_md5("alice", "wrong")
    print("wrong password accepted")
except imaplib.IMAP4.error as e:
    print(e)
"#,
        i = p_imap.port,
        p = p_pop3.port,
        s = p_smtp.port
    );
    let (out, err) = python(&script);
    assert_eq!(out, "(0, 0)\nCRAM-MD5\nInvalid login or password", "{err}");
    let reqs = read_jsonl(&auth_log);
    let methods: Vec<&str> = reqs
        .iter()
        .map(|r| r["headers"]["Auth-Method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, vec!["cram-md5", "apop", "cram-md5", "cram-md5"]);
    assert!(reqs.iter().all(|r| r["headers"]["Auth-Salt"]
        .as_str()
        .is_some_and(|s| s.starts_with('<'))));
    assert!(std::fs::read_to_string(&sink).unwrap().contains("cram"));
}
