//! An app server restart costs no more outage than the restart itself: a one-server
//! upstream is never taken out by passive health (nginx's rule), and a group whose
//! servers are all out after failures still tries the one back soonest (panic routing),
//! so the first request after the app listens again is answered. Run against gunicorn
//! (`via = "http"`, Unix socket), uWSGI (`via = "uwsgi"`) and php-fpm (`via = "fastcgi"`).

mod common;

use std::time::{Duration, Instant};

use common::*;

/// One kind of app server and the route that reaches it.
#[derive(Clone, Copy)]
enum AppKind {
    Gunicorn,
    Uwsgi,
    PhpFpm,
}

/// One app server on `port` (or a Unix socket in `dir` for gunicorn).
fn start_app(kind: AppKind, dir: &std::path::Path, n: usize, port: u16) -> Proc {
    match kind {
        AppKind::Gunicorn => gunicorn_unix(&dir.join(format!("app{n}.sock")), "a", &[]),
        AppKind::Uwsgi => uwsgi(Bind::Tcp(port), &[]),
        AppKind::PhpFpm => php_fpm(dir, Bind::Tcp(port), 2),
    }
}

/// A config with upstream `app` over `servers` servers (default max_fails = 1 and
/// fail_timeout = 10 s, as a user writes it) and `/` routed to it.
fn config(kind: AppKind, dir: &std::path::Path, ports: &[u16]) -> (String, &'static str) {
    let servers: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(n, port)| match kind {
            AppKind::Gunicorn => format!(
                "{{ addr = \"unix:{}\" }}",
                dir.join(format!("app{n}.sock")).display()
            ),
            _ => format!("{{ addr = \"127.0.0.1:{port}\" }}"),
        })
        .collect();
    let (route, path) = match kind {
        AppKind::Gunicorn => (String::new(), "/"),
        AppKind::Uwsgi => ("via = \"uwsgi\"".to_string(), "/"),
        AppKind::PhpFpm => (
            format!(
                "via = \"fastcgi\"\n  root = \"{}\"\n  index = \"index.php\"",
                php_root().display()
            ),
            "/index.php",
        ),
    };
    (
        format!(
            "[admin]\nlisten = \"127.0.0.1:{{admin}}\"\n[upstreams.app]\nservers = [{}]\n\n[[listeners]]\nlisten = [\"127.0.0.1:{{port}}\"]\n  [[listeners.routes]]\n  path = \"/\"\n  upstream = \"app\"\n  {route}\n",
            servers.join(", ")
        ),
        path,
    )
}

fn server_stats(p: &Portico) -> Vec<serde_json::Value> {
    let s = curl(&[], &format!("http://127.0.0.1:{}/status", p.admin_port)).json();
    s["upstreams"]["app"]["servers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Every server of the group is stopped, requests fail while they are down, then they
/// are started again: the first request after they listen is answered.
fn restart_case(kind: AppKind, count: usize) {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..count).map(|_| free_port()).collect();
    let start_all = || -> Vec<Proc> {
        ports
            .iter()
            .enumerate()
            .map(|(n, &port)| start_app(kind, dir.path(), n, port))
            .collect()
    };
    let apps = start_all();
    let (cfg, path) = config(kind, dir.path(), &ports);
    let p = Portico::start(&cfg);
    assert_eq!(curl(&[], &p.url(path)).status, 200);

    drop(apps); // SIGTERM, waited for
    for _ in 0..3 {
        assert_eq!(curl(&[], &p.url(path)).status, 502, "the app is down");
    }
    let stats = server_stats(&p);
    assert!(
        stats.iter().all(|s| s["failures"].as_u64() >= Some(1)),
        "the failures are counted: {stats:?}"
    );
    if count == 1 {
        assert_eq!(stats[0]["state"], "up", "a sole server is never taken out");
        assert_eq!(stats[0]["unavailable"], 0);
    } else {
        assert!(
            stats.iter().all(|s| s["state"] == "unavailable"),
            "{stats:?}"
        );
    }

    let _apps = start_all();
    let first = curl(&[], &p.url(path));
    assert_eq!(first.status, 200, "the first request after the restart");
    assert!(server_stats(&p).iter().any(|s| s["state"] == "up"));
    if count > 1 {
        assert!(p
            .log_text()
            .contains("every server is out after failures: trying the one back soonest"));
    }
}

#[test]
fn gunicorn_behind_a_one_server_upstream() {
    restart_case(AppKind::Gunicorn, 1);
}

#[test]
fn three_gunicorns_all_restarted() {
    restart_case(AppKind::Gunicorn, 3);
}

#[test]
fn uwsgi_behind_a_one_server_upstream() {
    restart_case(AppKind::Uwsgi, 1);
}

#[test]
fn three_uwsgis_all_restarted() {
    restart_case(AppKind::Uwsgi, 3);
}

#[test]
fn php_fpm_behind_a_one_server_upstream() {
    restart_case(AppKind::PhpFpm, 1);
}

#[test]
fn three_php_fpms_all_restarted() {
    restart_case(AppKind::PhpFpm, 3);
}

/// Under a steady load the only failed requests are those sent while the app was down.
#[test]
fn under_load_only_requests_sent_while_the_app_is_down_fail() {
    let dir = tempfile::tempdir().unwrap();
    let app = start_app(AppKind::Gunicorn, dir.path(), 0, 0);
    let (cfg, path) = config(AppKind::Gunicorn, dir.path(), &[0]);
    let p = Portico::start(&cfg);
    let load = Load::start(p.addr(), path, 3, Some(20));
    load.wait_ok(100);

    drop(app);
    let deadline = Instant::now() + Duration::from_secs(30);
    while load.failed() < 20 {
        assert!(
            Instant::now() < deadline,
            "no request failed while the app was down"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let _app = start_app(AppKind::Gunicorn, dir.path(), 0, 0);
    let back = Instant::now();
    load.wait_ok(300);
    let failures = load.stop_and_failures();
    let late: Vec<_> = failures.iter().filter(|(sent, _)| *sent >= back).collect();
    println!(
        "{} requests failed while the app was down, {} after it was back",
        failures.len(),
        late.len()
    );
    assert!(late.is_empty(), "failed after the app was back: {late:?}");
    assert!(
        failures.iter().all(|(_, what)| what.contains("502")),
        "{failures:?}"
    );
}
