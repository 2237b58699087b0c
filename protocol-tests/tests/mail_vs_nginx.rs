//! Side by side with nginx's mail module (Debian's libnginx-mod-mail): the same auth_http
//! server and the same backends (Dovecot, aiosmtpd) behind nginx and Portico, the same
//! transcripts from a client, and the client must see the same replies — for success,
//! failure with Auth-Wait, and bad commands. Where Portico deliberately answers
//! differently, the transcript says so and asserts both.

mod common;

use common::*;

struct Both {
    _dir: tempfile::TempDir,
    _procs: Vec<Proc>,
    nginx: [u16; 3],
    portico: Vec<Portico>,
}

/// Ports in the order imap, pop3, smtp.
fn both() -> Both {
    let dir = tempfile::tempdir().unwrap();
    let (dovecot, imap, pop3) = dovecot(dir.path());
    let (sink, smtp, _) = smtp_sink(dir.path());
    let opts = vec![
        format!("imap=127.0.0.1:{imap}"),
        format!("pop3=127.0.0.1:{pop3}"),
        format!("smtp=127.0.0.1:{smtp}"),
        "wait=1".to_string(),
    ];
    let (auth, auth_port, _) = auth_server(dir.path(), &opts);
    let ports = [free_port(), free_port(), free_port()];
    let ngx = nginx_with_modules(
        dir.path(),
        &["ngx_mail_module"],
        &format!(
            "mail {{\n  server_name mx.portico.test;\n  auth_http 127.0.0.1:{auth_port}/auth;\n  proxy_pass_error_message on;\n  xclient off;\n  server {{ listen 127.0.0.1:{}; protocol imap; }}\n  server {{ listen 127.0.0.1:{}; protocol pop3; }}\n  server {{ listen 127.0.0.1:{}; protocol smtp; }}\n}}\n",
            ports[0], ports[1], ports[2]
        ),
        ports[0],
    );
    let portico = ["imap", "pop3", "smtp"]
        .iter()
        .map(|proto| {
            Portico::start(&format!(
                "[[listeners]]\nlisten = [\"127.0.0.1:{{port}}\"]\nprotocol = \"{proto}\"\nserver_names = [\"mx.portico.test\"]\nauth_http = \"http://127.0.0.1:{auth_port}/auth\"\n"
            ))
        })
        .collect();
    Both {
        _dir: dir,
        _procs: vec![dovecot, sink, auth, ngx],
        nginx: ports,
        portico,
    }
}

/// Runs `steps` (a line to send, how many reply lines to read) on a fresh connection;
/// returns the greeting and every reply line.
fn transcript(port: u16, steps: &[(&str, usize)]) -> Vec<String> {
    let mut c = LineClient::connect(port);
    let mut out = vec![c.line()];
    for (line, replies) in steps {
        c.send(&format!("{line}\r\n"));
        for _ in 0..*replies {
            out.push(c.line());
        }
    }
    out
}

fn same(b: &Both, which: usize, steps: &[(&str, usize)]) {
    let theirs = transcript(b.nginx[which], steps);
    let ours = transcript(b.portico[which].port, steps);
    assert_eq!(ours, theirs, "Portico (left) vs nginx (right)");
}

#[test]
fn imap_replies_match_nginx() {
    let b = both();
    same(
        &b,
        0,
        &[
            ("a1 CAPABILITY", 2),
            ("a2 NOOP", 1),
            ("a3 FROB", 1),
            ("a4 LOGIN alice wrong", 1),
            ("a5 LOGIN alice secret", 1),
        ],
    );
    same(&b, 0, &[("a1 LOGOUT", 2)]);
    same(
        &b,
        0,
        &[("a1 AUTHENTICATE PLAIN", 1), ("AGFsaWNlAHNlY3JldA==", 1)],
    );
}

#[test]
fn pop3_replies_match_nginx() {
    let b = both();
    same(
        &b,
        1,
        &[
            ("CAPA", 6),
            ("AUTH", 4),
            ("NOOP", 1),
            ("STAT", 1),
            ("USER alice", 1),
            ("PASS wrong", 1),
            ("USER alice", 1),
            ("PASS secret", 1),
            ("STAT", 1),
        ],
    );
    same(&b, 1, &[("QUIT", 1)]);
}

#[test]
fn smtp_replies_match_nginx() {
    let b = both();
    same(
        &b,
        2,
        &[
            ("EHLO c.test", 2),
            ("HELO c.test", 1),
            ("MAIL FROM:<a@b.test>", 1),
            ("FROB", 1),
            ("NOOP", 1),
            ("RSET", 1),
            ("AUTH PLAIN AGFsaWNlAHdyb25n", 1),
            ("AUTH PLAIN AGFsaWNlAHNlY3JldA==", 1),
            ("MAIL FROM:<alice@portico.test>", 1),
        ],
    );
    same(&b, 2, &[("EHLO c.test", 2), ("QUIT", 1)]);
}
