//! Logs as operators configure them: `log.formats` templates beside nginx's log_format
//! (the same requests give the same lines, time masked), JSON escaping beside nginx's
//! `escape=json`, a route's own log, `off` and `if=`, the process log to a file that
//! SIGUSR1 reopens, and to syslog over UDP.

mod common;

use common::*;
use std::time::{Duration, Instant};

const MAIN: &str = r#"$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" $request_time"#;
const JS: &str = r#"{"uri":"$request_uri","method":"$request_method","status":$status,"ua":"$http_user_agent","user":"$remote_user"}"#;

/// The lines of `path` once there are `n` (bounded wait).
fn lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let got: Vec<String> = text.lines().map(str::to_string).collect();
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} has {} lines: {got:?}",
            path.display(),
            got.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `main` line with its two clocks masked: `[$time_local]` and `$request_time`.
fn masked(line: &str) -> String {
    let (head, rest) = line.split_once('[').unwrap_or((line, ""));
    let (_, tail) = rest.split_once(']').unwrap_or(("", rest));
    let tail = tail.rsplit_once(' ').map_or(tail, |(t, time)| {
        assert!(time.parse::<f64>().is_ok(), "request_time {time:?}");
        t
    });
    format!("{head}[T]{tail} T")
}

#[test]
fn log_formats_write_the_lines_nginx_writes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let nginx_port = free_port();
    let _nginx = nginx(
        d,
        &format!(
            "http {{ log_format main '{MAIN}'; log_format js escape=json '{JS}';
  server {{ listen 127.0.0.1:{nginx_port}; access_log {d}/nginx.log main;
    location / {{ return 200 \"hello\\n\"; }}
    location /quiet/ {{ access_log off; return 200 \"q\\n\"; }}
    location /j/ {{ access_log {d}/nginx.json js; return 200 \"j\\n\"; }} }} }}",
            d = d.display()
        ),
        nginx_port,
    );
    let p = Portico::start(&format!(
        r#"
[log]
access_log = "{d}/access.log"
access_log_format = "main"
formats = {{ main = '{MAIN}', js = {{ template = '{JS}', escape = "json" }} }}
[[listeners]]
listen = ["127.0.0.1:{{port}}"]
  [[listeners.routes]]
  path = "/quiet/"
  access_log = "off"
  return = {{ status = 200, body = "q\n" }}
  [[listeners.routes]]
  path = "/j/"
  access_log = {{ path = "{d}/portico.json", format = "js" }}
  return = {{ status = 200, body = "j\n" }}
  [[listeners.routes]]
  path = "/"
  return = {{ status = 200, body = "hello\n" }}
"#,
        d = d.display()
    ));
    let requests: Vec<Vec<&str>> = vec![
        vec![
            "-A",
            "Mozilla \"quoted\" caf\u{e9} \\",
            "-e",
            "https://ref.example/?q=1",
            "/a?x=1&y=%20",
        ],
        vec!["-I", "/b"],
        vec!["-u", "alice:secret", "/c"],
        vec!["/quiet/not-logged"],
        vec![
            "-A",
            "js \"ua\" \\ \u{e9}",
            "-u",
            "bob:pw",
            "/j/x?k=%22v%22",
        ],
        vec!["-X", "DELETE", "/j/y"],
    ];
    for port in [nginx_port, p.port] {
        for r in &requests {
            let (args, path) = r.split_at(r.len() - 1);
            let out = std::process::Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-g"])
                .args(args)
                .arg(format!("http://127.0.0.1:{port}{}", path[0]))
                .status()
                .unwrap();
            assert!(out.success());
        }
    }
    let theirs = lines(&d.join("nginx.log"), 3);
    let ours = lines(&d.join("access.log"), 3);
    assert_eq!(
        ours.len(),
        3,
        "/quiet/ and /j/ are not in the main log: {ours:#?}"
    );
    for (n, o) in theirs.iter().zip(&ours) {
        assert_eq!(masked(o), masked(n), "\nnginx:   {n}\nportico: {o}");
    }
    assert!(ours[2].starts_with("127.0.0.1 - alice ["), "{}", ours[2]);
    let theirs = lines(&d.join("nginx.json"), 2);
    let ours = lines(&d.join("portico.json"), 2);
    assert_eq!(ours, theirs);
    for l in &ours {
        serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{l}: {e}"));
    }
}

/// `if=`: a map on a request header decides; the route's own file gets its lines, the
/// global log the rest.
#[test]
fn a_route_log_with_a_condition() {
    let p = Portico::start(
        r#"
[log]
access_log = "{dir}/all.log"
[maps.loggable]
source = "$http_x_log"
values = { "no" = "0" }
default = "1"
[[listeners]]
listen = ["127.0.0.1:{port}"]
  [[listeners.routes]]
  path = "/api/"
  access_log = { path = "{dir}/api.log", if = "$map_loggable" }
  return = { status = 201, body = "api\n" }
  [[listeners.routes]]
  path = "/"
  return = { status = 200, body = "ok\n" }
"#,
    );
    assert_eq!(
        curl(&["-H", "X-Log: no"], &p.url("/api/skipped")).status,
        201
    );
    assert_eq!(curl(&[], &p.url("/api/kept")).status, 201);
    assert_eq!(curl(&[], &p.url("/other")).status, 200);
    let api = lines(&p.dir.path().join("api.log"), 1);
    let all = lines(&p.dir.path().join("all.log"), 1);
    // the last request was logged after the first two were decided
    assert_eq!(api.len(), 1, "{api:?}");
    assert!(
        api[0].contains("\"GET /api/kept HTTP/1.1\" 201 4 "),
        "{api:?}"
    );
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(all[0].contains("\"GET /other HTTP/1.1\" 200 3 "), "{all:?}");
}

/// Under load a worker hands its lines to the writer in batches: 16 keep-alive clients
/// at once, 150 requests each, on two workers, then every request's line is in the
/// file exactly once and whole (none lost, none torn, none twice), and a request made
/// after the load is written too (a worker hands its last batch on before it waits).
#[test]
fn every_line_is_written_once_under_load() {
    let p = Portico::start(
        r#"
[runtime]
workers = 2
[log]
access_log = "{dir}/access.log"
[[listeners]]
listen = ["127.0.0.1:{port}"]
  [[listeners.routes]]
  path = "/"
  return = { status = 200, body = "ok\n" }
"#,
    );
    let port = p.port;
    let sent = python_ok(&format!(
        r#"
import http.client, threading
def client(t):
    c = http.client.HTTPConnection("127.0.0.1", {port}, timeout=30)
    for i in range(150):
        c.request("GET", f"/load/{{t}}/{{i}}")
        r = c.getresponse(); r.read()
        assert r.status == 200, r.status
threads = [threading.Thread(target=client, args=(t,)) for t in range(16)]
for t in threads: t.start()
for t in threads: t.join()
print(16 * 150)
"#
    ));
    assert_eq!(sent, "2400");
    assert_eq!(curl(&[], &p.url("/after")).status, 200);
    let got = lines(&p.dir.path().join("access.log"), 2401);
    assert_eq!(got.len(), 2401, "more lines than requests");
    let mut seen = std::collections::HashSet::new();
    for line in &got {
        let path = line
            .split('"')
            .nth(1)
            .and_then(|r| r.split(' ').nth(1))
            .unwrap_or_else(|| panic!("not a whole line: {line:?}"));
        assert!(line.contains(" 200 3 "), "{line}");
        assert!(seen.insert(path.to_string()), "{path} logged twice");
    }
    for t in 0..16 {
        for i in 0..150 {
            assert!(
                seen.contains(&format!("/load/{t}/{i}")),
                "/load/{t}/{i} missing"
            );
        }
    }
    assert!(seen.contains("/after"));
}

/// The process log to a file: the same lines as stderr; after logrotate's move,
/// SIGUSR1 makes a new file, the old one keeps what it had.
#[test]
fn the_process_log_file_is_reopened_on_sigusr1() {
    let p = Portico::start(
        "[log]\nfile = \"{dir}/portico-error.log\"\n[[listeners]]\nlisten = [\"127.0.0.1:{port}\"]\n",
    );
    let file = p.dir.path().join("portico-error.log");
    // the start's last line in before the file is moved (on a loaded machine it can come
    // after the port is open)
    wait_file_contains(&file, "ready");
    let first = lines(&file, 1);
    assert!(first.iter().any(|l| l.contains("starting")), "{first:?}");
    assert!(
        !first.iter().any(|l| l.contains('\u{1b}')),
        "no colours in the file"
    );
    let rotated = p.dir.path().join("portico-error.log.1");
    std::fs::rename(&file, &rotated).unwrap();
    p.proc.signal("USR1");
    let new = lines(&file, 1);
    assert!(new[0].contains("SIGUSR1: log files reopened"), "{new:?}");
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("ready") && !old.contains("reopened"), "{old}");
    // a reload is logged in the new file
    assert!(p.reload(&std::fs::read_to_string(&p.config).unwrap()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&file)
        .unwrap_or_default()
        .contains("configuration reloaded")
    {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// syslog over UDP (RFC 5424): one datagram per line, facility daemon, the severity
/// of the line.
#[test]
fn the_process_log_to_syslog_over_udp() {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let port = sock.local_addr().unwrap().port();
    let _p = Portico::start(&format!(
        "[log]\nfile = \"syslog:udp:127.0.0.1:{port}\"\n[upstreams.gone]\nservers = [{{ addr = \"127.0.0.1:9\" }}]\n[[listeners]]\nlisten = [\"127.0.0.1:{{port}}\"]\n  [[listeners.routes]]\n  path = \"/\"\n  upstream = \"gone\"\n"
    ));
    let mut buf = [0u8; 2048];
    let mut got = Vec::new();
    while !got.iter().any(|l: &String| l.contains("ready")) {
        let n = sock.recv(&mut buf).unwrap();
        got.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    let ready = got.iter().find(|l| l.contains("ready")).unwrap();
    // <daemon.info>1 TIMESTAMP HOST portico PID - - MSG
    let fields: Vec<&str> = ready.splitn(8, ' ').collect();
    assert_eq!(fields[0], "<30>1", "{ready}");
    assert!(
        fields[1].contains('T') && fields[1].ends_with("+00:00"),
        "{ready}"
    );
    assert_eq!(fields[3], "portico");
    assert!(fields[4].parse::<u32>().is_ok(), "{ready}");
    assert_eq!((fields[5], fields[6]), ("-", "-"));
    assert_eq!(fields[7], "ready");
    // a warning is <28> (daemon.warning): a request to a dead upstream
    let _ = curl(&[], &_p.url("/"));
    loop {
        let n = sock.recv(&mut buf).unwrap();
        let l = String::from_utf8_lossy(&buf[..n]).to_string();
        if l.starts_with("<28>1 ") {
            assert!(l.contains("connect"), "{l}");
            break;
        }
    }
}

/// syslog on a local Unix datagram socket (as /dev/log is): the same RFC 5424 lines.
#[test]
fn the_process_log_to_a_syslog_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _p = Portico::start(&format!(
        "[log]\nfile = \"syslog:unix:{}\"\n[[listeners]]\nlisten = [\"127.0.0.1:{{port}}\"]\n",
        path.display()
    ));
    let mut buf = [0u8; 2048];
    loop {
        let n = sock.recv(&mut buf).unwrap();
        let line = String::from_utf8_lossy(&buf[..n]).to_string();
        if line.ends_with(" - - ready") {
            assert!(line.starts_with("<30>1 "), "{line}");
            assert!(line.contains(" portico "), "{line}");
            break;
        }
    }
}

/// `$upstream_response_time` is the upstream's part of a request, not the request's:
/// an upload the client drips over a second is buffered first (`request_buffering`),
/// and the app's answer takes a fraction of that; `$upstream_status` is the app's own.
#[test]
fn upstream_response_time_is_the_upstreams_part() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("app.sock");
    let _app = gunicorn_unix(&sock, "a", &[]);
    let d = dir.path().display().to_string();
    let p = Portico::start_in(
        dir,
        &format!(
            r#"
[log]
access_log = "{d}/access.log"
access_log_format = "times"
formats = {{ times = '$request_uri $status $request_time $upstream_response_time $upstream_status' }}
[upstreams.app]
servers = [{{ addr = "unix:{d}/app.sock" }}]
[[listeners]]
listen = ["127.0.0.1:{{port}}"]
  [[listeners.routes]]
  path = "/"
  upstream = "app"
  request_buffering = true
"#
        ),
        "toml",
    );
    let mut s = std::net::TcpStream::connect(p.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 10\r\n\r\n",
    )
    .unwrap();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(100)); // the client's pace: what is tested
        s.write_all(b"x").unwrap();
    }
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(curl(&[], &p.url("/no-such-page")).status, 404);

    let got = lines(&p.dir.path().join("access.log"), 2);
    let fields = |uri: &str| -> Vec<String> {
        let line = got
            .iter()
            .find(|l| l.starts_with(uri))
            .unwrap_or_else(|| panic!("no line for {uri}: {got:?}"));
        line.split(' ').map(str::to_string).collect()
    };
    let f = fields("/echo ");
    let (request, upstream): (f64, f64) = (f[2].parse().unwrap(), f[3].parse().unwrap());
    assert!(request >= 1.0, "the request took the drip's second: {f:?}");
    assert!(
        upstream < request - 0.5,
        "the upstream's part excludes the buffered upload: {f:?}"
    );
    assert_eq!(f[4], "200");
    let f = fields("/no-such-page ");
    assert_eq!((f[1].as_str(), f[4].as_str()), ("404", "404"));
    assert!(f[3].parse::<f64>().is_ok(), "{f:?}");
}
