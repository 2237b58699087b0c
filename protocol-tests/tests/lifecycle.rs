//! The process as an operator meets it: the embedded default, `portico check`, SIGHUP
//! reload under load (good and bad configs), SIGTERM drain, limits and timeouts, PROXY
//! protocol and Unix-socket listeners.

mod common;

use common::*;
use std::io::{Read, Write};
use std::time::Duration;

fn app_config(sock: &std::path::Path, extra_route: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:{{admin}}"
[upstreams.app]
servers = [{{ addr = "unix:{}" }}]
[[listeners]]
name = "web"
listen = ["127.0.0.1:{{port}}"]
{extra_route}
  [[listeners.routes]]
  path = "/"
  upstream = "app"
"#,
        sock.display()
    )
}

#[test]
fn embedded_default_runs_without_a_config_file() {
    let cwd = tempfile::tempdir().unwrap();
    let log = cwd.path().join("log");
    let logf = std::fs::File::create(&log).unwrap();
    let mut cmd = std::process::Command::new(portico_bin());
    cmd.current_dir(cwd.path())
        .env_remove("PORTICO_LOG")
        .stdout(logf.try_clone().unwrap())
        .stderr(logf);
    let mut p = Proc::spawn("portico", &mut cmd);
    wait_tcp("127.0.0.1:8080".parse().unwrap(), &mut p.child, "portico");
    let first = std::fs::read_to_string(&log).unwrap();
    let first = first.lines().next().unwrap_or("").to_string();
    assert!(first.contains("embedded default"), "{first}");
    assert!(first.contains("127.0.0.1:8080"), "{first}");
    let r = curl(&[], "http://127.0.0.1:8080/");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("Welcome to Portico"));
    let s = curl(&[], "http://127.0.0.1:8080/status").json();
    assert_eq!(s["listeners"][0]["listen"], "127.0.0.1:8080");
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(30)), Some(0));
}

#[test]
fn check_validates_and_reports_every_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("good.toml"),
        "[[listeners]]\nlisten = [\"127.0.0.1:1\"]\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("override.yaml"), "log:\n  level: debug\n").unwrap();
    let (code, out, _) = portico_cmd(
        &["check", "-c", "good.toml", "-c", "override.yaml"],
        dir.path(),
    );
    assert_eq!(code, 0);
    assert!(out.contains("level = \"debug\""), "{out}");

    std::fs::write(
        dir.path().join("bad.toml"),
        "[log]\nlevel = \"loud\"\n\n[[listeners]]\nlisten = [\"nowhere\"]\ncolour = 1\n",
    )
    .unwrap();
    let (code, _, err) = portico_cmd(&["check", "-c", "bad.toml"], dir.path());
    assert_eq!(code, 1);
    let path = "bad.toml"; // as given on the command line
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with(path)).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{path}:2: log.level: "))),
        "{err}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{path}:5: listeners.0.listen.0: "))),
        "{err}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{path}:6: listeners.0.colour: "))),
        "{err}"
    );

    // env overrides name the variable, and --explain tells where values come from
    let out = std::process::Command::new(portico_bin())
        .args(["check", "--explain", "-c", "good.toml"])
        .current_dir(dir.path())
        .env("PORTICO_LOG__LEVEL", "warn")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("log.level = \"warn\"")
                && l.ends_with("# env PORTICO_LOG__LEVEL")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("listeners.0.listen.0 = ") && l.contains("good.toml:2")),
        "{text}"
    );
    assert!(
        text.lines().any(
            |l| l.starts_with("runtime.shutdown_timeout = \"30s\"") && l.ends_with("# default")
        ),
        "{text}"
    );
    let out = std::process::Command::new(portico_bin())
        .args(["check", "-c", "good.toml"])
        .current_dir(dir.path())
        .env("PORTICO_RUNTIME__SHUTDOWN_TIMEOUT", "soon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("env PORTICO_RUNTIME__SHUTDOWN_TIMEOUT: ")
    );
}

#[test]
fn reload_under_load_drops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("app.sock");
    let _app = gunicorn_unix(&sock, "r", &[]);
    let p = Portico::start(&app_config(&sock, ""));
    std::fs::create_dir_all(p.dir.path().join("v2")).unwrap();
    std::fs::write(p.dir.path().join("v2/hello.txt"), "from v2\n").unwrap();
    let with_v2 = app_config(
        &sock,
        "  [[listeners.routes]]\n  path = \"/v2/\"\n  static = { root = \"{dir}\" }\n",
    );

    let load = Load::start(p.addr(), "/echo", 3, Some(5));
    for round in 0..6 {
        let cfg = if round % 2 == 0 {
            &with_v2
        } else {
            &app_config(&sock, "")
        };
        assert!(p.reload(cfg), "reload {round} refused:\n{}", p.log_text());
        let r = curl(&[], &p.url("/v2/hello.txt"));
        if round % 2 == 0 {
            assert_eq!((r.status, r.text().as_str()), (200, "from v2\n"));
        } else {
            assert_eq!(r.status, 404, "/v2/ goes to the app again (Flask 404)");
        }
    }
    load.finish();
    let s = curl(&[], &format!("http://127.0.0.1:{}/status", p.admin_port)).json();
    assert_eq!(s["reloads"], 6);
}

#[test]
fn a_bad_reload_is_refused_and_the_old_config_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("app.sock");
    let _app = gunicorn_unix(&sock, "b", &[]);
    let good = app_config(&sock, "");
    let p = Portico::start(&good);
    let bad = good.replace("path = \"/\"", "path = \"/\"\n  via = \"carrier-pigeon\"");
    assert!(!p.reload(&bad));
    assert!(
        p.log_text().contains("portico.toml:"),
        "the error names the file and line:\n{}",
        p.log_text()
    );
    assert_eq!(curl(&[], &p.url("/")).status, 200);
    // a new address that cannot be bound also refuses the whole reload
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port2 = taken.local_addr().unwrap().port();
    let clash = good.replace(
        "listen = [\"127.0.0.1:{port}\"]",
        &format!("listen = [\"127.0.0.1:{{port}}\", \"127.0.0.1:{port2}\"]"),
    );
    assert!(!p.reload(&clash));
    assert_eq!(curl(&[], &p.url("/")).status, 200);
    let s = curl(&[], &format!("http://127.0.0.1:{}/status", p.admin_port)).json();
    assert_eq!(s["failed_reloads"], 2);
    assert_eq!(s["reloads"], 0);
}

#[test]
fn sigterm_lets_in_flight_requests_finish() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("app.sock");
    let _app = gunicorn_unix(&sock, "t", &[]);
    let mut p = Portico::start(&app_config(&sock, ""));
    let addr = p.addr();
    let mut conn = KeepAlive::connect(addr).unwrap();
    assert_eq!(conn.get("/").unwrap().0, 200);
    let slow = std::thread::spawn(move || conn.get("/slow?secs=2"));
    // wait until the app has the request (Portico counts it in flight upstream)
    let status_url = format!("http://127.0.0.1:{}/status", p.admin_port);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while curl(&[], &status_url).json()["upstreams"]["app"]["servers"][0]["active"] != 1 {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    p.proc.signal("TERM");
    let (status, body, close) = slow.join().unwrap().unwrap();
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8_lossy(&body), "slow done from t\n");
    assert!(
        close,
        "the drained connection is closed after its last response"
    );
    assert_eq!(p.proc.wait_exit(Duration::from_secs(30)), Some(0));
}

#[test]
fn limits_answer_431_413_and_idle_connections_close() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("app.sock");
    let _app = gunicorn_unix(&sock, "l", &[]);
    let p = Portico::start(&proxy_config(
        &format!("unix:{}", sock.display()),
        "  [listeners.limits]\n  max_header_bytes = 8192\n  max_body_bytes = 1000\n  idle_timeout = \"1s\"",
    ));
    let big = "a".repeat(10_000);
    let (status, _) = raw_status(
        p.addr(),
        format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    );
    assert_eq!(status, 431);
    // declared too large: refused before anything goes upstream
    let r = curl(&["--data-binary", &"x".repeat(2000)], &p.url("/echo"));
    assert_eq!(r.status, 413);
    // chunked, found too large while streaming
    let r = curl(
        &[
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &"x".repeat(5000),
        ],
        &p.url("/echo"),
    );
    assert_eq!(r.status, 413);
    let r = curl(&["--data-binary", &"x".repeat(999)], &p.url("/echo"));
    assert_eq!(r.status, 200);

    // an idle keep-alive connection is closed by the server after idle_timeout
    let mut s = std::net::TcpStream::connect(p.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut all = Vec::new();
    let n = s.read_to_end(&mut all);
    assert!(
        n.is_ok(),
        "the server closed the connection (EOF), not our read timeout: {n:?}"
    );
    assert!(String::from_utf8_lossy(&all).starts_with("HTTP/1.1 200"));
}

/// What /status says of the listening address `listen`: (active, waiting) connections.
fn connection_counts(p: &Portico, listen: &str) -> (u64, u64) {
    let s = curl(&[], &format!("http://127.0.0.1:{}/status", p.admin_port)).json();
    let l = s["listeners"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["listen"] == listen).cloned())
        .unwrap_or_default();
    (
        l["connections_active"].as_u64().unwrap_or(u64::MAX),
        l["connections_waiting"].as_u64().unwrap_or(u64::MAX),
    )
}

fn wait_for_counts(p: &Portico, listen: &str, want: (u64, u64)) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = connection_counts(p, listen);
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{listen}: (active, waiting) = {got:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn idle_keep_alive_connections_wait_parked_and_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("app.sock");
    let _app = gunicorn_unix(&sock, "k", &[]);
    let front = dir.path().join("front.sock");
    let p = Portico::start(&app_config(
        &sock,
        &format!(
            "listen = [\"127.0.0.1:{{port}}\", \"unix:{}\"]\n  [listeners.limits]\n  idle_timeout = \"3s\"",
            front.display()
        ),
    ).replace("listen = [\"127.0.0.1:{port}\"]\n", ""));
    // keep-alive clients, one request each, over TCP and the Unix socket
    let mut conns: Vec<KeepAlive> = (0..20)
        .map(|_| KeepAlive::connect(p.addr()).unwrap())
        .collect();
    for c in &mut conns {
        assert_eq!(c.get("/").unwrap().0, 200);
    }
    let mut unix = std::os::unix::net::UnixStream::connect(&front).unwrap();
    unix.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let ask = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let answer = |s: &mut dyn Read| {
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !got.ends_with(b"hello from k\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "closed before the answer: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    unix.write_all(ask).unwrap();
    assert!(answer(&mut unix).starts_with("HTTP/1.1 200 OK\r\n"));
    // and one that has sent nothing yet
    let mut silent = std::net::TcpStream::connect(p.addr()).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // all idle: parked, counted as waiting (nginx's stub_status "Waiting")
    let tcp = format!("127.0.0.1:{}", p.port);
    let uds = format!("unix:{}", front.display());
    wait_for_counts(&p, &tcp, (21, 21));
    wait_for_counts(&p, &uds, (1, 1));
    let metrics = curl(&[], &format!("http://127.0.0.1:{}/metrics", p.admin_port)).text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("portico_connections_waiting{")
                && l.contains(&format!("listen=\"{tcp}\""))
                && l.ends_with(" 21")),
        "{metrics}"
    );
    // each comes back for its next request, which the app answers
    for c in &mut conns {
        let (status, body, close) = c.get("/").unwrap();
        assert_eq!(
            (status, body.as_slice(), close),
            (200, &b"hello from k\n"[..], false)
        );
    }
    unix.write_all(ask).unwrap();
    assert!(answer(&mut unix).starts_with("HTTP/1.1 200 OK\r\n"));
    // a first request after the wait is served as any first request
    silent.write_all(ask).unwrap();
    assert!(answer(&mut silent).starts_with("HTTP/1.1 200 OK\r\n"));
    // parked again, then closed by Portico at idle_timeout: EOF, not our read timeout
    wait_for_counts(&p, &tcp, (21, 21));
    wait_for_counts(&p, &uds, (1, 1));
    let mut rest = Vec::new();
    assert!(silent.read_to_end(&mut rest).is_ok() && rest.is_empty());
    assert!(unix.read_to_end(&mut rest).is_ok() && rest.is_empty());
    wait_for_counts(&p, &tcp, (0, 0));
    wait_for_counts(&p, &uds, (0, 0));
}

#[test]
fn sigterm_drains_parked_connections() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("app.sock");
    let _app = gunicorn_unix(&sock, "d", &[]);
    let mut p = Portico::start(&app_config(&sock, ""));
    let mut a = KeepAlive::connect(p.addr()).unwrap();
    let mut b = KeepAlive::connect(p.addr()).unwrap();
    assert_eq!(a.get("/").unwrap().0, 200);
    assert_eq!(b.get("/").unwrap().0, 200);
    wait_for_counts(&p, &format!("127.0.0.1:{}", p.port), (2, 2));
    p.proc.signal("TERM");
    p.wait_log_line("draining");
    // a parked client that speaks within the drain grace is answered, and told to go
    let (status, body, close) = a.get("/").unwrap();
    assert_eq!(
        (status, body.as_slice(), close),
        (200, &b"hello from d\n"[..], true)
    );
    // the silent one is closed; nothing waits for the drain timeout
    assert_eq!(p.proc.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(
        p.log_text().contains("all connections finished"),
        "{}",
        p.log_text()
    );
    assert!(b.get("/").is_err());
}

#[test]
fn proxy_protocol_and_unix_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("app.sock");
    let _app = gunicorn_unix(&sock, "pp", &[]);
    let front = dir.path().join("front.sock");
    let p = Portico::start(&format!(
        r#"
[upstreams.app]
servers = [{{ addr = "unix:{}" }}]
[[listeners]]
listen = ["127.0.0.1:{{port}}"]
proxy_protocol = true
  [[listeners.routes]]
  path = "/"
  upstream = "app"
[[listeners]]
name = "local"
listen = ["unix:{}"]
  [[listeners.routes]]
  path = "/"
  upstream = "app"
"#,
        sock.display(),
        front.display()
    ));
    let (status, text) = raw_status(
        p.addr(),
        b"PROXY TCP4 203.0.113.50 127.0.0.1 40000 80\r\nGET /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert!(
        text.contains("\"x-forwarded-for\": \"203.0.113.50\""),
        "{text}"
    );
    // without the header the connection is refused service
    let (status, _) = raw_status(p.addr(), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(status, 0);
    let r = curl(
        &["--unix-socket", front.to_str().unwrap()],
        "http://local/echo",
    );
    assert_eq!(r.status, 200);
    assert!(
        r.json()["headers"].get("x-forwarded-for").is_none(),
        "no client IP on a Unix socket"
    );
}

#[test]
fn portico_reload_signals_through_the_pid_file_and_in_flight_requests_finish() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("app.sock");
    let _app = gunicorn_unix(&sock, "pr", &[]);
    let with_pid = |extra: &str| {
        format!(
            "[runtime]\npid_file = \"{{dir}}/portico.pid\"\n{}",
            app_config(&sock, extra)
        )
    };
    let p = Portico::start(&with_pid(""));
    let pid_file = p.dir.path().join("portico.pid");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    assert_eq!(pid.trim(), p.proc.pid().to_string());

    // a slow request in flight while the config changes
    let addr = p.addr();
    let slow = std::thread::spawn(move || KeepAlive::connect(addr).unwrap().get("/slow?secs=2"));
    let status_url = format!("http://127.0.0.1:{}/status", p.admin_port);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while curl(&[], &status_url).json()["upstreams"]["app"]["servers"][0]["active"] != 1 {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(
        &p.config,
        with_pid("  [[listeners.routes]]\n  path = \"/new/\"\n  static = { root = \"{dir}\" }\n")
            .replace("{port}", &p.port.to_string())
            .replace("{admin}", &p.admin_port.to_string())
            .replace("{dir}", &p.dir.path().display().to_string()),
    )
    .unwrap();
    std::fs::create_dir_all(p.dir.path().join("new")).unwrap();
    std::fs::write(p.dir.path().join("new/x.txt"), "new route\n").unwrap();
    let (code, _, err) = portico_cmd(
        &["reload", "--pid-file", pid_file.to_str().unwrap()],
        p.dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !p.log_text().contains("configuration reloaded") {
        assert!(std::time::Instant::now() < deadline, "{}", p.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(curl(&[], &p.url("/new/x.txt")).text(), "new route\n");
    let (status, body, _) = slow.join().unwrap().unwrap();
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (200, "slow done from pr\n")
    );
}

#[test]
fn ipv6_listeners_and_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("app.sock");
    let _app = gunicorn_unix(&sock, "v6", &[]);
    let v6_port = free_port();
    let p = Portico::start(&format!(
        r#"
[upstreams.app]
servers = [{{ addr = "unix:{}" }}]
[[listeners]]
listen = ["127.0.0.1:{{port}}", "[::1]:{v6_port}"]
  [listeners.limits]
  header_timeout = "1s"
  [[listeners.routes]]
  path = "/"
  upstream = "app"
"#,
        sock.display()
    ));
    let r = curl(&["-g"], &format!("http://[::1]:{v6_port}/echo"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["x-forwarded-for"], "::1");
    // a client that never finishes its request head is disconnected
    let mut s = std::net::TcpStream::connect(p.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap();
    let mut rest = Vec::new();
    assert!(
        s.read_to_end(&mut rest).is_ok(),
        "closed by the server, not by our read timeout"
    );
}

#[test]
fn mail_listeners_need_an_auth_server() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mail.toml"),
        r#"[[listeners]]
name = "smtp"
listen = ["127.0.0.1:2"]
protocol = "smtp"

[[listeners]]
name = "imap"
listen = ["127.0.0.1:3"]
protocol = "imap"
auth_http = "https://auth.example/"
"#,
    )
    .unwrap();
    let (code, _, err) = portico_cmd(&["check", "-c", "mail.toml"], dir.path());
    assert_eq!(code, 1, "{err}");
    for key in [
        "mail.toml:4: listeners.0.protocol",
        "mail.toml:10: listeners.1.auth_http",
    ] {
        assert!(err.lines().any(|l| l.starts_with(key)), "{key}: {err}");
    }
}

/// The signals an nginx operator sends out of habit never kill Portico: USR1 reopens
/// the access log (logrotate's postrotate), WINCH is logged and ignored, QUIT drains and
/// exits as TERM does. (USR2 upgrades the binary: tests/upgrade.rs.)
#[test]
fn nginx_operator_signals_never_kill_portico() {
    let p = Portico::start(
        "[log]\naccess_log = \"{dir}/access.log\"\n[[listeners]]\nlisten = [\"127.0.0.1:{port}\"]\n  [[listeners.routes]]\n  path = \"/\"\n  return = { status = 200, body = \"up\\n\" }\n",
    );
    let log = p.dir.path().join("access.log");
    let lines = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let until = |what: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !what() {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    assert_eq!(curl(&[], &p.url("/first")).status, 200);
    until(&|| lines(&log) == 1);
    // logrotate: move the file away, then USR1
    let rotated = p.dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    p.proc.signal("USR1");
    p.wait_log_line("SIGUSR1: log files reopened");
    assert_eq!(curl(&[], &p.url("/second")).status, 200);
    until(&|| lines(&log) == 1);
    assert!(std::fs::read_to_string(&log).unwrap().contains("/second"));
    assert_eq!(lines(&rotated), 1, "the old file keeps only its line");
    p.proc.signal("WINCH");
    p.wait_log_line("SIGWINCH ignored");
    assert_eq!(curl(&[], &p.url("/")).status, 200, "alive after WINCH");
    let mut p = p;
    p.proc.signal("QUIT");
    assert_eq!(
        p.proc.wait_exit(std::time::Duration::from_secs(10)),
        Some(0)
    );
    assert!(p.log_text().contains("SIGQUIT: draining"));
}

/// Sizes as nginx users write them: `"1k"`, `"10m"` (or a plain number), in files and
/// env vars; a size that is none is refused with its line.
#[test]
fn sizes_take_nginx_units() {
    let p = Portico::start(
        "[upstreams.app]\nservers = [{ addr = \"127.0.0.1:9\" }]\n[[listeners]]\nlisten = [\"127.0.0.1:{port}\"]\n[listeners.limits]\nmax_header_bytes = \"8k\"\n  [[listeners.routes]]\n  path = \"/\"\n  return = { status = 200, body = \"ok\\n\" }\n  [[listeners.routes]]\n  path = \"/small/\"\n  max_body_bytes = \"1k\"\n  upstream = \"app\"\n",
    );
    let body = "x".repeat(2048);
    assert_eq!(
        curl(&["--data-binary", &body], &p.url("/small/x")).status,
        413
    );
    let big_header = format!("X-Big: {}", "y".repeat(9000));
    assert_eq!(curl(&["-H", &big_header], &p.url("/")).status, 431);
    assert_eq!(curl(&[], &p.url("/")).status, 200);

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sizes.toml");
    std::fs::write(
        &cfg,
        "[[listeners]]\nlisten = [\"127.0.0.1:8080\"]\n[listeners.limits]\nmax_body_bytes = \"10x\"\n",
    )
    .unwrap();
    let (code, _out, err) = portico_cmd(&["check", "--config", cfg.to_str().unwrap()], dir.path());
    assert_ne!(code, 0);
    assert!(err.contains("sizes.toml:4"), "{err}");
    assert!(err.contains("invalid size \"10x\""), "{err}");
}

/// `portico check` refuses what `run` would: an access log that cannot be opened, a
/// certificate file that holds no certificate, an htpasswd line it cannot use; a
/// static root that is not there is a warning (run serves 404 there, as nginx).
#[test]
fn check_is_as_strict_as_run() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let listener = "[[listeners]]\nlisten = [\"127.0.0.1:8080\"]\n  [[listeners.routes]]\n  path = \"/\"\n  return = { status = 200, body = \"ok\" }\n";
    let check = |cfg: &std::path::Path| {
        let (code, _out, err) =
            portico_cmd(&["check", "--config", cfg.to_str().unwrap()], dir.path());
        (code, err)
    };
    // the access log's directory does not exist
    let cfg = write(
        "log.toml",
        &format!(
            "[log]\naccess_log = \"{}/no/such/dir/access.log\"\n{listener}",
            dir.path().display()
        ),
    );
    let (code, err) = check(&cfg);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("cannot open the access log") && err.contains("no/such/dir/access.log"),
        "{err}"
    );
    // a certificate file with no certificate in it
    let bad_cert = write("bad.crt", "not a certificate\n");
    let bad_key = write("bad.key", "not a key\n");
    let cfg = write(
        "tls.toml",
        &format!(
            "[[listeners]]\nlisten = [\"127.0.0.1:8443\"]\ntls = {{ cert = \"{}\", key = \"{}\" }}\n  [[listeners.routes]]\n  path = \"/\"\n  return = {{ status = 200, body = \"ok\" }}\n",
            bad_cert.display(),
            bad_key.display()
        ),
    );
    let (code, err) = check(&cfg);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("bad.crt"), "{err}");
    // an htpasswd line run would refuse
    let htpasswd = write("htpasswd", "alice:plaintext\n");
    let cfg = write(
        "auth.toml",
        &format!(
            "[[listeners]]\nlisten = [\"127.0.0.1:8080\"]\n  [[listeners.routes]]\n  path = \"/\"\n  return = {{ status = 200, body = \"ok\" }}\n  basic_auth = {{ htpasswd = \"{}\" }}\n",
            htpasswd.display()
        ),
    );
    let (code, err) = check(&cfg);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("htpasswd:1"), "{err}");
    // a static root that is not there: valid, with a warning
    let cfg = write(
        "static.toml",
        "[[listeners]]\nlisten = [\"127.0.0.1:8080\"]\n  [[listeners.routes]]\n  path = \"/\"\n  static = { root = \"/no/such/root\" }\n",
    );
    let (code, err) = check(&cfg);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning") && err.contains("/no/such/root"),
        "{err}"
    );
}

/// A misspelt key or upstream name gets a "did you mean".
#[test]
fn check_suggests_the_key_or_name_meant() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("typo.toml");
    std::fs::write(
        &cfg,
        "[upstreams.backend]\nservers = [{ addr = \"127.0.0.1:9\" }]\n[[listeners]]\nlisten = [\"127.0.0.1:8080\"]\n  [[listeners.routes]]\n  path = \"/\"\n  upstream = \"backnd\"\n  [[listeners.routes]]\n  path = \"/x/\"\n  upstream = \"backend\"\n  max_body_byte = 10\n",
    )
    .unwrap();
    let (code, _out, err) = portico_cmd(&["check", "--config", cfg.to_str().unwrap()], dir.path());
    assert_ne!(code, 0);
    assert!(
        err.contains("no upstream named \"backnd\" (did you mean \"backend\"?)"),
        "{err}"
    );
    assert!(
        err.contains("unknown key \"max_body_byte\" (did you mean \"max_body_bytes\"?)"),
        "{err}"
    );
}

/// A container user overrides one listener's address and one route's root with env
/// vars that index into the lists, without copying the file.
#[test]
fn env_vars_override_one_listener_and_one_route() {
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "from the env root\n").unwrap();
    let cfg = dir.path().join("site.toml");
    std::fs::write(
        &cfg,
        "[[listeners]]\nname = \"web\"\nlisten = [\"127.0.0.1:1\"]\n  [[listeners.routes]]\n  path = \"/\"\n  static = { root = \"/nonexistent\" }\n",
    )
    .unwrap();
    let port = free_port();
    let mut cmd = std::process::Command::new(portico_bin());
    cmd.args(["run", "--config", cfg.to_str().unwrap()])
        .env_remove("PORTICO_BIN")
        .env("PORTICO_LISTENERS__0__LISTEN", format!("127.0.0.1:{port}"))
        .env("PORTICO_LISTENERS__0__ROUTES__0__STATIC__ROOT", &www)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut p = Proc::spawn("portico", &mut cmd);
    wait_tcp(([127, 0, 0, 1], port).into(), &mut p.child, "portico");
    let r = curl(&[], &format!("http://127.0.0.1:{port}/"));
    assert_eq!((r.status, r.text().as_str()), (200, "from the env root\n"));
}

/// /metrics as a Prometheus server reads it: parsed by the prometheus-client package's
/// own text parser, with the families an operator alerts on.
#[test]
fn metrics_parse_with_a_prometheus_parser() {
    let backend = Recorder::start(ok_answer);
    let p = Portico::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:{{admin}}\"\n[rate_limits.r]\nkey = \"$remote_addr\"\nrate = \"1r/m\"\n[upstreams.app]\nservers = [{{ addr = \"{}\" }}]\n[[listeners]]\nlisten = [\"127.0.0.1:{{port}}\"]\n  [[listeners.routes]]\n  path = \"/\"\n  return = {{ status = 200, body = \"ok\\n\" }}\n  rate_limit = [\"r\"]\n  [[listeners.routes]]\n  path = \"/app/\"\n  upstream = \"app\"\n",
        backend.addr()
    ));
    for _ in 0..3 {
        curl(&[], &p.url("/"));
    }
    assert_eq!(curl(&[], &p.url("/app/x")).status, 200);
    let script = format!(
        r#"
import urllib.request
from prometheus_client.parser import text_string_to_metric_families
text = urllib.request.urlopen("http://127.0.0.1:{}/metrics").read().decode()
for f in text_string_to_metric_families(text):
    for s in f.samples:
        labels = ",".join(f"{{k}}={{v}}" for k, v in sorted(s.labels.items()))
        print(f"{{s.name}}|{{labels}}|{{s.value:g}}")
"#,
        p.admin_port
    );
    let out = std::process::Command::new(venv_bin("python"))
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "portico_build_info|version=",
        "portico_start_time_seconds||",
        "portico_reloads_total||0",
        "portico_reloads_failed_total||0",
        "portico_access_log_dropped_total||0",
        "portico_rate_limit_requests_total|limit=r,outcome=passed|1",
        "portico_rate_limit_requests_total|limit=r,outcome=refused|2",
        "portico_http_responses_total|class=2xx,listener=listener0|2",
        "portico_http_responses_total|class=4xx,listener=listener0|2",
        "portico_http_responses_by_code_total|code=200,listener=listener0|2",
        "portico_http_responses_by_code_total|code=429,listener=listener0|2",
        "portico_http_request_duration_seconds_count|listener=listener0|4",
        "portico_http_request_duration_seconds_bucket|le=+Inf,listener=listener0|4",
        "portico_http_request_duration_seconds_bucket|le=10,listener=listener0|4",
        "portico_upstream_response_seconds_count|server=",
        "portico_http_route_duration_seconds_count|listener=listener0,route=/|3",
        "portico_http_route_duration_seconds_count|listener=listener0,route=/app/|1",
        "portico_upstream_requests_total|server=",
        "process_resident_memory_bytes||",
        "process_open_fds||",
        "process_cpu_seconds_total||",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(want)),
            "{want} in:\n{text}"
        );
    }
}
