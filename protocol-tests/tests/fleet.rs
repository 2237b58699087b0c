//! Portico as a fleet: two instances behind an L4 balancer (HAProxy, Debian's, in TCP
//! mode with `send-proxy-v2`), as docs/scale-out.md describes. Both instances serve,
//! and the client's real address — not the balancer's — reaches the app (gunicorn, in
//! X-Forwarded-For) and the mail auth server (Client-IP), for HTTP and IMAP alike.

mod common;

use common::*;
use std::process::Command;

fn haproxy(dir: &std::path::Path, conf: &str, port: u16) -> Proc {
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, conf).unwrap();
    let mut cmd = Command::new("haproxy");
    // -db: foreground, no daemon; -W not needed (one process)
    cmd.args(["-db", "-f"]).arg(&path);
    let mut p = Proc::spawn("haproxy", &mut cmd);
    wait_tcp(([127, 0, 0, 1], port).into(), &mut p.child, "haproxy");
    p
}

#[test]
fn two_instances_behind_haproxy_send_proxy_v2_see_the_real_client() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("app.sock");
    let _app = gunicorn_unix(&sock, "fleet", &[]);
    let (_dovecot, imap, pop3) = dovecot(dir.path());
    let (_auth, auth_port, auth_log) = auth_server(
        dir.path(),
        &[
            format!("imap=127.0.0.1:{imap}"),
            format!("pop3=127.0.0.1:{pop3}"),
        ],
    );
    let instance = |name: &str, imap_port: u16| {
        Portico::start(&format!(
            r#"
[upstreams.app]
servers = [{{ addr = "unix:{}" }}]
[[listeners]]
name = "web"
listen = ["127.0.0.1:{{port}}"]
proxy_protocol = true
  [[listeners.routes]]
  path = "/"
  upstream = "app"
  response_headers = {{ set = {{ "X-Instance" = "{name}" }} }}
[[listeners]]
name = "imap"
protocol = "imap"
listen = ["127.0.0.1:{imap_port}"]
proxy_protocol = true
auth_http = "http://127.0.0.1:{auth_port}/auth"
"#,
            sock.display()
        ))
    };
    let (imap1, imap2) = (free_port(), free_port());
    let p1 = instance("p1", imap1);
    let p2 = instance("p2", imap2);
    let (web, mail) = (free_port(), free_port());
    let _lb = haproxy(
        dir.path(),
        &format!(
            "global\n  maxconn 1000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             frontend web\n  bind 127.0.0.1:{web}\n  default_backend porticos_web\n\
             backend porticos_web\n  balance roundrobin\n  server p1 127.0.0.1:{} send-proxy-v2\n  server p2 127.0.0.1:{} send-proxy-v2\n\
             frontend mail\n  bind 127.0.0.1:{mail}\n  default_backend porticos_mail\n\
             backend porticos_mail\n  balance roundrobin\n  server p1 127.0.0.1:{imap1} send-proxy-v2\n  server p2 127.0.0.1:{imap2} send-proxy-v2\n",
            p1.port, p2.port
        ),
        web,
    );

    // HTTP from 127.0.0.2: both instances answer, the app sees 127.0.0.2
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let r = curl(
            &["--interface", "127.0.0.2"],
            &format!("http://127.0.0.1:{web}/echo"),
        );
        assert_eq!(r.status, 200);
        seen.insert(r.header("x-instance").unwrap_or("none").to_string());
        assert_eq!(r.json()["headers"]["x-forwarded-for"], "127.0.0.2");
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["p1", "p2"],
        "round robin over both instances"
    );

    // IMAP from 127.0.0.3 (curl's own IMAP client): each login reaches the auth server
    // with the client's address, through either instance
    for _ in 0..2 {
        let listing = run_ok(
            Command::new("curl")
                .args(["-s", "--interface", "127.0.0.3", "--user", "alice:secret"])
                .arg(format!("imap://127.0.0.1:{mail}/")),
        );
        assert!(listing.contains("INBOX"));
    }
    let requests = read_jsonl(&auth_log);
    assert_eq!(requests.len(), 2, "{requests:?}");
    for r in &requests {
        assert_eq!(r["headers"]["Client-IP"], "127.0.0.3", "{r}");
    }
    // one login through each instance
    for p in [&p1, &p2] {
        assert!(p.log_text().contains("login accepted"), "{}", p.log_text());
    }
}
