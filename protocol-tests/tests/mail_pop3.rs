//! The POP3 front end against Dovecot, with the auth_http server of apps/auth_http.py:
//! transcripts and Python's poplib and curl as clients.

mod common;

use std::process::Command;

use common::*;

type Setup = DovecotSetup;

fn setup(auth_opts: &[&str]) -> Setup {
    dovecot_setup("pop3", auth_opts, "", "")
}

fn auth_requests(s: &Setup) -> Vec<serde_json::Value> {
    read_jsonl(&s.auth_log)
}

#[test]
fn authorization_state_as_nginx_answers_it() {
    let s = setup(&[]);
    let mut c = LineClient::connect(s.portico.port);
    assert_eq!(c.line(), "+OK POP3 ready");
    assert_eq!(c.ask("CAPA"), "+OK Capability list follows");
    assert_eq!(
        c.until("."),
        vec!["TOP", "USER", "UIDL", "SASL PLAIN LOGIN", "."]
    );
    assert_eq!(c.ask("AUTH"), "+OK methods supported:");
    assert_eq!(c.until("."), vec!["PLAIN", "LOGIN", "."]);
    assert_eq!(c.ask("STAT"), "-ERR invalid command");
    assert_eq!(
        c.ask("PASS early"),
        "-ERR invalid command",
        "PASS needs USER first"
    );
    assert_eq!(c.ask("QUIT"), "+OK");
    assert!(c.closed());
}

#[test]
fn user_pass_then_the_session_is_dovecots() {
    let s = setup(&["wait=1"]);
    let mut c = LineClient::connect(s.portico.port);
    c.line();
    assert_eq!(c.ask("USER alice"), "+OK");
    assert_eq!(c.ask("PASS wrong"), "-ERR Invalid login or password");
    assert_eq!(c.ask("USER alice"), "+OK");
    assert!(c.ask("PASS secret").starts_with("+OK"), "Dovecot's answer");
    assert!(c.ask("STAT").starts_with("+OK 0 0"));
    assert!(c.ask("QUIT").starts_with("+OK"));
    let req = &auth_requests(&s)[1]["headers"];
    assert_eq!(req["Auth-Protocol"], "pop3");
    assert_eq!(req["Auth-Method"], "plain");
    assert_eq!(req["Auth-Login-Attempt"], "2");
}

#[test]
fn auth_plain_and_login_and_poplib_and_curl() {
    let s = setup(&[]);
    let mut c = LineClient::connect(s.portico.port);
    c.line();
    // AUTH PLAIN with an initial response
    assert!(c.ask("AUTH PLAIN AGFsaWNlAHNlY3JldA==").starts_with("+OK"));
    drop(c);
    // AUTH LOGIN with continuations: "Username:" and "Password:" prompts
    let mut c = LineClient::connect(s.portico.port);
    c.line();
    assert_eq!(c.ask("AUTH LOGIN"), "+ VXNlcm5hbWU6");
    assert_eq!(c.ask("Ym9i"), "+ UGFzc3dvcmQ6");
    assert!(c.ask("aHVudGVyMg==").starts_with("+OK"));
    drop(c);

    let script = format!(
        "import poplib\np = poplib.POP3('127.0.0.1', {})\np.user('alice')\np.pass_('secret')\nprint(p.stat())\np.quit()\n",
        s.portico.port
    );
    let (out, err) = python(&script);
    assert_eq!(out, "(0, 0)", "{err}");

    let out = Command::new("curl")
        .args(["-s", "--max-time", "20", "-u", "bob:hunter2"])
        .arg(format!("pop3://127.0.0.1:{}/", s.portico.port))
        .output()
        .unwrap();
    assert!(out.status.success(), "curl lists an empty mailbox: {out:?}");
    let methods: Vec<String> = auth_requests(&s)
        .iter()
        .map(|r| r["headers"]["Auth-Method"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(methods[..2], ["plain", "login"]);
}

#[test]
fn a_refusal_without_auth_wait_closes() {
    let s = setup(&[]);
    let mut c = LineClient::connect(s.portico.port);
    c.line();
    c.ask("USER alice");
    assert_eq!(c.ask("PASS nope"), "-ERR Invalid login or password");
    assert!(c.closed());
}
