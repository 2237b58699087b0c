//! The shared balancer against real backends: active health checks take a sick server
//! out of rotation and bring it back; killing and restarting a backend under load fails
//! no idempotent request; a reload keeps the state of servers that did not change.

mod common;

use common::*;
use std::time::{Duration, Instant};

fn two_servers(a: u16, b: u16, extra: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:{{admin}}"
[upstreams.app]
servers = [{{ addr = "127.0.0.1:{a}" }}, {{ addr = "127.0.0.1:{b}" }}]
{extra}
[[listeners]]
listen = ["127.0.0.1:{{port}}"]
  [[listeners.routes]]
  path = "/"
  upstream = "app"
"#
    )
}

fn server_state(p: &Portico, i: usize) -> String {
    let s = curl(&[], &format!("http://127.0.0.1:{}/status", p.admin_port)).json();
    s["upstreams"]["app"]["servers"][i]["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn wait_state(p: &Portico, i: usize, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while server_state(p, i) != want {
        assert!(Instant::now() < deadline, "server {i} never became {want}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_sick_server_leaves_rotation_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let sick_flag = dir.path().join("sick");
    let flag = sick_flag.to_str().unwrap();
    let (a, b) = (free_port(), free_port());
    let _a = gunicorn_tcp(a, "a", &[("HEALTH_FILE", flag)]);
    let _b = gunicorn_tcp(b, "b", &[]);
    // no `check`: an upstream behind `via = "http"` routes gets the HTTP probe
    let p = Portico::start(&two_servers(
        a,
        b,
        r#"health = { uri = "/healthz", interval = "100ms", timeout = "1s", passes = 2, fails = 2 }"#,
    ));
    let answers =
        |n: usize| -> Vec<String> { (0..n).map(|_| curl(&[], &p.url("/")).text()).collect() };
    assert!(answers(6).contains(&"hello from a\n".to_string()));

    std::fs::write(&sick_flag, "").unwrap();
    wait_state(&p, 0, "unhealthy");
    assert!(
        answers(10).iter().all(|t| t == "hello from b\n"),
        "a sick server gets no requests"
    );
    let metrics = curl(&[], &format!("http://127.0.0.1:{}/metrics", p.admin_port)).text();
    assert!(metrics.contains(&format!(
        "portico_upstream_server_up{{upstream=\"app\",server=\"127.0.0.1:{a}\"}} 0"
    )));

    std::fs::remove_file(&sick_flag).unwrap();
    wait_state(&p, 0, "up");
    assert!(answers(6).contains(&"hello from a\n".to_string()));
    assert!(p.log_text().contains("server out of rotation"));
    assert!(p.log_text().contains("server back in rotation"));
}

#[test]
fn killing_and_restarting_a_backend_under_load_fails_no_request() {
    let (a, b) = (free_port(), free_port());
    let mut server_a = gunicorn_tcp(a, "a", &[]);
    let _b = gunicorn_tcp(b, "b", &[]);
    let p = Portico::start(&two_servers(a, b, ""));

    let load = Load::start(p.addr(), "/", 3, None);
    load.wait_ok(100);
    server_a.kill(); // SIGKILL: connections die mid-flight
    load.wait_ok(200);
    let restarted = gunicorn_tcp(a, "a", &[]);
    load.wait_ok(200);
    drop(restarted); // SIGTERM this time
    load.wait_ok(200);
    load.finish();
}

#[test]
fn a_reload_keeps_the_state_of_unchanged_servers() {
    let (a, b, c) = (free_port(), free_port(), free_port());
    let _a = gunicorn_tcp(a, "a", &[]);
    let _b = gunicorn_tcp(b, "b", &[]);
    let _c = gunicorn_tcp(c, "c", &[]);
    let p = Portico::start(&two_servers(a, b, ""));
    for _ in 0..10 {
        assert_eq!(curl(&[], &p.url("/")).status, 200);
    }
    let requests = |i: usize| {
        curl(&[], &format!("http://127.0.0.1:{}/status", p.admin_port)).json()["upstreams"]["app"]
            ["servers"][i]["requests"]
            .as_u64()
            .unwrap()
    };
    let before = (requests(0), requests(1));
    assert_eq!(before.0 + before.1, 10);
    // add a third server: a and b keep their counters
    let three = two_servers(a, b, "").replace(
        &format!("{{ addr = \"127.0.0.1:{b}\" }}]"),
        &format!("{{ addr = \"127.0.0.1:{b}\" }}, {{ addr = \"127.0.0.1:{c}\" }}]"),
    );
    assert!(p.reload(&three));
    assert_eq!((requests(0), requests(1)), before);
    assert_eq!(requests(2), 0);
}

#[test]
fn hash_on_a_cookie_keeps_each_client_on_one_server() {
    let (a, b) = (free_port(), free_port());
    let _a = gunicorn_tcp(a, "a", &[]);
    let _b = gunicorn_tcp(b, "b", &[]);
    let p = Portico::start(&two_servers(
        a,
        b,
        "balance = \"hash\"\nhash_key = \"$cookie_session\"",
    ));
    let mut seen = std::collections::HashSet::new();
    for user in 0..12 {
        let cookie = format!("Cookie: theme=dark; session=user{user}");
        let first = curl(&["-H", &cookie], &p.url("/echo")).json()["app"].clone();
        for _ in 0..4 {
            assert_eq!(curl(&["-H", &cookie], &p.url("/echo")).json()["app"], first);
        }
        seen.insert(first.to_string());
    }
    assert_eq!(seen.len(), 2, "both servers get some of the clients");
}

#[test]
fn next_upstream_passes_over_listed_5xx_for_idempotent_requests() {
    let dir = tempfile::tempdir().unwrap();
    let sick_flag = dir.path().join("sick");
    std::fs::write(&sick_flag, "").unwrap();
    let (a, b) = (free_port(), free_port());
    let _a = gunicorn_tcp(a, "a", &[("HEALTH_FILE", sick_flag.to_str().unwrap())]);
    let _b = gunicorn_tcp(b, "b", &[]);
    // max_fails = 0: a's 503s must not take it out of rotation, so every request meets it
    let config = two_servers(
        a,
        b,
        "next_upstream = [\"error\", \"timeout\", \"http_503\"]",
    )
    .replace(
        &format!("{{ addr = \"127.0.0.1:{a}\" }}"),
        &format!("{{ addr = \"127.0.0.1:{a}\", max_fails = 0 }}"),
    );
    let p = Portico::start(&config);
    // a answers /healthz with 503: every request still gets b's 200
    for _ in 0..10 {
        let r = curl(&[], &p.url("/healthz"));
        assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    }
    // when every server answers 503, the last answer is relayed (not a 502)
    let r = curl(&[], &p.url("/status/503"));
    assert_eq!((r.status, r.text().as_str()), (503, "status 503\n"));
    // a non-idempotent request is never sent twice: its 503 comes back as is, or b's 405
    let r = curl(&["-X", "POST"], &p.url("/healthz"));
    assert!(r.status == 503 || r.status == 405, "{}", r.status);
}

#[test]
fn max_conns_full_answers_503() {
    let a = free_port();
    let _a = gunicorn_tcp(a, "a", &[]);
    let p = Portico::start(&format!(
        r#"
[upstreams.app]
servers = [{{ addr = "127.0.0.1:{a}", max_conns = 1 }}]
[[listeners]]
listen = ["127.0.0.1:{{port}}"]
  [[listeners.routes]]
  path = "/"
  upstream = "app"
"#
    ));
    let addr = p.addr();
    let slow = std::thread::spawn(move || KeepAlive::connect(addr).unwrap().get("/slow?secs=2"));
    // while the slow request holds the only slot, others are refused with 503
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = curl(&[], &p.url("/"));
        if r.status == 503 {
            break;
        }
        assert_eq!(r.status, 200);
        assert!(Instant::now() < deadline, "never saw the slot taken");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(slow.join().unwrap().unwrap().0, 200);
    assert_eq!(curl(&[], &p.url("/")).status, 200, "the slot is free again");
}

#[test]
fn host_names_with_resolve_become_one_server_per_address() {
    let a = free_port();
    let _a = gunicorn_tcp(a, "a", &[]);
    let p = Portico::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:{{admin}}"
[upstreams.app]
resolve = "1s"
servers = [{{ addr = "localhost:{a}", max_fails = 1 }}]
[[listeners]]
listen = ["127.0.0.1:{{port}}"]
  [[listeners.routes]]
  path = "/"
  upstream = "app"
"#
    ));
    let s = curl(&[], &format!("http://127.0.0.1:{}/status", p.admin_port)).json();
    let addrs: Vec<String> = s["upstreams"]["app"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["addr"].as_str().unwrap().to_string())
        .collect();
    assert!(addrs.contains(&format!("127.0.0.1:{a}")), "{addrs:?}");
    assert!(
        addrs.iter().all(|x| !x.starts_with("localhost")),
        "{addrs:?}"
    );
    // whatever else localhost resolves to (::1 here, where gunicorn does not listen),
    // requests succeed: a refused address is passed over
    for _ in 0..6 {
        assert_eq!(curl(&[], &p.url("/")).text(), "hello from a\n");
    }
}
