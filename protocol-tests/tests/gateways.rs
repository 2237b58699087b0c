//! `via = "uwsgi"` and `via = "fastcgi"` against real app servers: uWSGI and flup serving
//! the Flask app, php-fpm serving PHP scripts, curl as the client. The same checks run
//! for each (the `App` table says which path does what on that server).

mod common;

use std::process::Command;

use common::*;

/// Where each behaviour lives on one app server.
struct App {
    /// Echoes the CGI variables it got, the body's length and sha256 (`_body_len`,
    /// `_body_sha256`) as JSON.
    env: &'static str,
    /// A POST form endpoint whose JSON answer contains the decoded fields.
    form: &'static str,
    /// 10 MiB streamed without Content-Length.
    big: &'static str,
    /// Two Set-Cookie headers.
    cookies: &'static str,
    /// A 302 to `redirect_to`.
    redirect: &'static str,
    redirect_to: &'static str,
    /// Answers 404 with a body.
    not_found: &'static str,
    /// Promises 1,000,000 bytes, sends 65,536, then dies.
    crash: &'static str,
    /// Sleeps 3 s.
    slow: &'static str,
}

const FLASK: App = App {
    env: "/env",
    form: "/form",
    big: "/big?mb=10",
    cookies: "/cookies",
    redirect: "/redirect",
    redirect_to: "/echo?from=redirect",
    not_found: "/status/404",
    crash: "/crash",
    slow: "/slow?secs=3",
};

const PHP: App = App {
    env: "/env.php",
    form: "/env.php",
    big: "/big.php?mb=10",
    cookies: "/status.php?code=200",
    redirect: "/status.php?to=/there",
    redirect_to: "/there",
    not_found: "/status.php?code=404",
    crash: "/crash.php",
    slow: "/slow.php?secs=3",
};

/// A config with upstream `app` (one server: `server` is the inside of its table) and
/// one listener routing `/` through `via`, with `route_extra` in the route and
/// `upstream_extra` in the upstream.
fn gateway_config(server: &str, via: &str, upstream_extra: &str, route_extra: &str) -> String {
    format!(
        "[upstreams.app]\nservers = [{{ {server} }}]\nread_timeout = \"1500ms\"\n{upstream_extra}\n\n[[listeners]]\nlisten = [\"127.0.0.1:{{port}}\"]\n  [[listeners.routes]]\n  path = \"/\"\n  upstream = \"app\"\n  via = \"{via}\"\n  {route_extra}\n"
    )
}

/// The route settings each app server needs: flup rebuilds PATH_INFO from SCRIPT_NAME,
/// so the Flask app gets SCRIPT_NAME "" and PATH_INFO = the path (as nginx users set);
/// php-fpm gets a root and Debian's split_path_info.
const FLUP_ROUTE: &str = r#"params = { SCRIPT_NAME = "", PATH_INFO = "$document_uri" }"#;
fn php_route() -> String {
    format!(
        "root = \"{}\"\n  index = \"index.php\"\n  split_path_info = '^(.+?\\.php)(/.*)$'",
        php_root().display()
    )
}

/// A server table for `addr` that passive health never takes out (the failure tests
/// would otherwise turn the next checks into 502s).
fn at(addr: &str) -> String {
    format!("addr = \"{addr}\", max_fails = 0")
}

fn sha256_hex(data: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(data)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// curl's exit code and the bytes it received.
fn curl_exit(url: &str) -> (i32, usize) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "30", url])
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), out.stdout.len())
}

/// The requests every gateway must get right.
fn requests_work(p: &Portico, app: &App) {
    let dir = tempfile::tempdir().unwrap();

    // GET with percent-encoded unicode path and query: raw in REQUEST_URI and
    // QUERY_STRING, decoded in the path vars.
    let path = if app.env == "/env" {
        "/env"
    } else {
        "/env.php/caf%C3%A9%20x"
    };
    let r = curl(&[], &p.url(&format!("{path}?q=%E2%9C%93&a=b+c")));
    assert_eq!(r.status, 200, "{}", r.text());
    let env = r.json();
    assert_eq!(env["REQUEST_URI"], format!("{path}?q=%E2%9C%93&a=b+c"));
    assert_eq!(env["QUERY_STRING"], "q=%E2%9C%93&a=b+c");
    assert_eq!(env["REQUEST_METHOD"], "GET");
    assert_eq!(env["SERVER_PROTOCOL"], "HTTP/1.1");
    assert_eq!(env["CONTENT_LENGTH"], "");
    if app.env != "/env" {
        // PHP: PATH_INFO after the split, decoded (UTF-8 bytes)
        assert_eq!(env["PATH_INFO"], "/café x");
        assert_eq!(env["SCRIPT_NAME"], "/env.php");
        assert_eq!(
            env["SCRIPT_FILENAME"],
            format!("{}/env.php", php_root().display())
        );
    }

    // The Flask app decodes unicode paths and queries itself.
    if app.env == "/env" {
        let r = curl(&[], &p.url("/u/caf%C3%A9%20x?q=%E2%9C%93"));
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["rest"], "café x");
        assert_eq!(r.json()["args"]["q"][0], "✓");
    }

    // A POST form.
    let r = curl(&["-d", "name=%C3%A9l%C3%A8ve&n=1"], &p.url(app.form));
    assert_eq!(r.status, 200);
    let answer = r.json();
    // Flask answers {"name": ["élève"], …}; env.php carries PHP's $_POST in `_post`.
    let form: serde_json::Value = match answer.get("_post").and_then(|v| v.as_str()) {
        Some(post) => serde_json::from_str(post).unwrap(),
        None => answer.clone(),
    };
    let name = form["name"].as_str().or(form["name"][0].as_str());
    assert_eq!(name, Some("élève"), "{answer}");

    // 5 MiB binary body, with Content-Length and chunked.
    let body: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = dir.path().join("body.bin");
    std::fs::write(&file, &body).unwrap();
    let want = sha256_hex(&body);
    let at = format!("@{}", file.display());
    for chunked in [false, true] {
        let mut args = vec!["-X", "POST", "--data-binary", at.as_str()];
        if chunked {
            args.extend(["-H", "Transfer-Encoding: chunked"]);
        }
        let r = curl(&args, &p.url(app.env));
        assert_eq!(r.status, 200, "chunked={chunked}: {}", r.text());
        let env = r.json();
        assert_eq!(env["_body_sha256"], want, "chunked={chunked}");
        assert_eq!(env["_body_len"], body.len().to_string());
        assert_eq!(
            env["CONTENT_LENGTH"],
            body.len().to_string(),
            "CONTENT_LENGTH is sent (computed for a chunked body)"
        );
        assert!(env.get("HTTP_TRANSFER_ENCODING").is_none());
    }

    // 10 MiB streamed response.
    let r = curl(&[], &p.url(app.big));
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 10 * 1024 * 1024);
    let piece: Vec<u8> = (0..=255u8).cycle().take(65536).collect();
    assert!(r.body.chunks(65536).all(|c| c == &piece[..]));

    // HEAD: headers, no body (curl -I prints only the head: the app's JSON body, which
    // starts with `{`, must not follow it).
    let r = curl(&["-I"], &p.url(app.env));
    assert_eq!(r.status, 200);
    assert!(!r.text().contains('{'), "{}", r.text());

    // Status codes, several Set-Cookie, redirects.
    let r = curl(&[], &p.url(app.not_found));
    assert_eq!(r.status, 404);
    assert!(!r.body.is_empty());
    let r = curl(&[], &p.url(app.cookies));
    assert_eq!(
        r.headers_named("set-cookie"),
        vec!["a=1; Path=/", "b=2; Path=/"]
    );
    let r = curl(&[], &p.url(app.redirect));
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some(app.redirect_to));

    // Header spoofing: X_Foo never becomes HTTP_X_FOO, Proxy never HTTP_PROXY.
    let r = curl(
        &[
            "-H",
            "X_Foo: spoofed",
            "-H",
            "Proxy: http://evil.example",
            "-H",
            "X-Real: yes",
        ],
        &p.url(app.env),
    );
    let env = r.json();
    assert_eq!(env["HTTP_X_REAL"], "yes");
    assert!(env.get("HTTP_X_FOO").is_none(), "{env}");
    assert!(env.get("HTTP_PROXY").is_none(), "{env}");

    // h2 (prior knowledge) clients get the same app.
    let r = curl(&["--http2-prior-knowledge"], &p.url(app.env));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["SERVER_PROTOCOL"], "HTTP/2.0");
}

/// A crash mid-response, a slow app and a dead one.
fn failures_are_clean(p: &Portico, app: &App) {
    // The app dies after 64 KiB of a promised 1 MB: the client sees a cut transfer
    // (curl 18), not a hang or a complete-looking answer; Portico keeps serving.
    let (code, got) = curl_exit(&p.url(app.crash));
    assert_eq!(code, 18, "curl reports a partial transfer ({got} bytes)");
    assert!(got < 1_000_000, "{got}");
    let r = curl(&[], &p.url(app.env));
    assert_eq!(r.status, 200, "still serving after the crash");

    // Slower than read_timeout (1.5 s): 504.
    let r = curl(&[], &p.url(app.slow));
    assert_eq!(r.status, 504);
}

#[test]
fn dead_app_server_is_502() {
    let port = free_port();
    for via in ["uwsgi", "fastcgi"] {
        let p = Portico::start(&gateway_config(
            &at(&format!("127.0.0.1:{port}")),
            via,
            "",
            "",
        ));
        let r = curl(&[], &p.url("/"));
        assert_eq!(r.status, 502, "{via}");
    }
}

#[test]
fn uwsgi_flask() {
    let port = free_port();
    let _app = uwsgi(Bind::Tcp(port), &[("CRASH", "exit")]);
    let p = Portico::start(&gateway_config(
        &at(&format!("127.0.0.1:{port}")),
        "uwsgi",
        "",
        "",
    ));
    requests_work(&p, &FLASK);
    failures_are_clean(&p, &FLASK);
}

#[test]
fn uwsgi_over_a_unix_socket_with_a_vars_limit() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("uwsgi.sock");
    let _app = uwsgi(Bind::Unix(&sock), &[]);
    let p = Portico::start(&gateway_config(
        &at(&format!("unix:{}", sock.display())),
        "uwsgi",
        "max_vars = 4096",
        r#"params = { APP_TAG = "from-$remote_addr", SERVER_NAME = "site.example" }"#,
    ));
    let r = curl(&[], &p.url("/env"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["APP_TAG"], "from-127.0.0.1");
    assert_eq!(r.json()["SERVER_NAME"], "site.example");

    // Vars over max_vars: 431 (nginx would pass them and get uWSGI's 502), and the log
    // names the header that made them too big.
    let big = format!("X-Big-Cookie: {}", "c".repeat(5000));
    let r = curl(&["-H", &big], &p.url("/env"));
    assert_eq!(r.status, 431);
    let line = p.wait_log_line("request refused with 431");
    assert!(
        line.contains("largest header var is HTTP_X_BIG_COOKIE"),
        "the log names the header: {line}"
    );
    // A smaller one still passes.
    let ok = format!("X-Big-Cookie: {}", "c".repeat(1000));
    assert_eq!(curl(&["-H", &ok], &p.url("/env")).status, 200);
}

#[test]
fn flup_flask() {
    let port = free_port();
    let _app = flup(Bind::Tcp(port));
    let p = Portico::start(&gateway_config(
        &at(&format!("127.0.0.1:{port}")),
        "fastcgi",
        "",
        FLUP_ROUTE,
    ));
    requests_work(&p, &FLASK);
    // flup runs the app in threads of one process: a crash is an exception, after which
    // flup ends the request early.
    failures_are_clean(&p, &FLASK);
}

#[test]
fn flup_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("flup.sock");
    let _app = flup(Bind::Unix(&sock));
    let p = Portico::start(&gateway_config(
        &at(&format!("unix:{}", sock.display())),
        "fastcgi",
        "",
        FLUP_ROUTE,
    ));
    let r = curl(&[], &p.url("/env?x=1"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["PATH_INFO"], "/env");
    assert_eq!(r.json()["REMOTE_ADDR"], "127.0.0.1");
}

#[test]
fn php_fpm_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _fpm = php_fpm(dir.path(), Bind::Tcp(port), 2);
    let p = Portico::start(&gateway_config(
        &at(&format!("127.0.0.1:{port}")),
        "fastcgi",
        "",
        &php_route(),
    ));
    requests_work(&p, &PHP);

    // index: a path ending in / runs index.php.
    let r = curl(&[], &p.url("/"));
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "php index\n");

    // A script that does not exist: php-fpm's own 404.
    let r = curl(&[], &p.url("/nope.php"));
    assert_eq!(r.status, 404);

    // STDERR lines are logged at warn with the request number.
    let r = curl(&[], &p.url("/stderr.php?tag=t42"));
    assert_eq!(r.status, 200);
    let line = p.wait_log_line("portico-stderr-marker t42");
    assert!(line.contains("WARN") && line.contains("request="), "{line}");
    failures_are_clean(&p, &PHP);
}

/// TCP sockets in `state` (ss's name) whose local (`local`) or remote port is `port`;
/// with `owner`, only those that process holds. Asked of the kernel over netlink
/// (iproute2's `ss`, the port filter applied in the kernel): /proc/net/tcp is read in
/// page-sized pieces, each resumed by position, and a table churning under other tests'
/// connections can skip the very sockets sought.
fn tcp_sockets(port: u16, local: bool, state: &str, owner: Option<u32>) -> usize {
    let filter = format!("( {} = :{port} )", if local { "sport" } else { "dport" });
    let mut cmd = Command::new("ss");
    cmd.args(["-t", "-n", "-H", "state", state, &filter]);
    if owner.is_some() {
        cmd.arg("-p");
    }
    let out = cmd
        .output()
        .expect("ss runs (iproute2, protocol-tests/peers/install.sh)");
    assert!(
        out.status.success(),
        "ss: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let owned = owner.map(|pid| format!("pid={pid},"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| owned.as_ref().is_none_or(|o| l.contains(o.as_str())))
        .count()
}

/// Established TCP connections to `port` on 127.0.0.1.
fn established_to(port: u16) -> usize {
    tcp_sockets(port, false, "established", None)
}

/// Established TCP connections to `port` that process `pid` holds (other tests' clients
/// may reach the same port number: a "dead" port of theirs can be this test's server).
fn established_from(pid: u32, port: u16) -> usize {
    tcp_sockets(port, false, "established", Some(pid))
}

/// TIME_WAIT sockets the server listening on `port` keeps.
fn time_wait_at(port: u16) -> usize {
    tcp_sockets(port, true, "time-wait", None)
}

/// uWSGI and php-fpm (without keep-conn) close the connection after each answer. Once
/// an answer is complete, Portico closes its end with a reset, so the app server keeps
/// no TIME_WAIT socket per request (with a FIN close it keeps one each, as behind nginx)
/// and Portico none either.
#[test]
fn completed_exchanges_leave_no_time_wait() {
    let dir = tempfile::tempdir().unwrap();
    let uwsgi_port = free_port();
    let fpm_port = free_port();
    let _uwsgi = uwsgi(Bind::Tcp(uwsgi_port), &[]);
    let _fpm = php_fpm(dir.path(), Bind::Tcp(fpm_port), 2);
    let cases = [
        (uwsgi_port, "uwsgi", String::new(), &FLASK),
        (fpm_port, "fastcgi", php_route(), &PHP),
    ];
    for (port, via, route, app) in cases {
        let p = Portico::start(&gateway_config(
            &at(&format!("127.0.0.1:{port}")),
            via,
            "",
            &route,
        ));
        let before = time_wait_at(port);
        // Answers framed by length, streamed ones, HEAD, and bodies sent up.
        for _ in 0..10 {
            assert_eq!(curl(&[], &p.url(app.env)).status, 200, "{via}");
        }
        let r = curl(&[], &p.url(app.big));
        assert_eq!((r.status, r.body.len()), (200, 10 << 20), "{via}");
        assert_eq!(curl(&["-I"], &p.url(app.env)).status, 200, "{via}");
        let form = curl(&["-d", "a=1&b=2"], &p.url(app.form));
        assert_eq!(form.status, 200, "{via}");
        assert_eq!(
            time_wait_at(port),
            before,
            "{via}: TIME_WAIT sockets at the server"
        );
    }
}

#[test]
fn php_fpm_keep_conn_stays_within_the_workers() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _fpm = php_fpm(dir.path(), Bind::Tcp(port), 2);
    // Two Portico workers share the limit: they race for the last place.
    let config = gateway_config(
        &format!("addr = \"127.0.0.1:{port}\", max_conns = 2"),
        "fastcgi",
        "keepalive = 8\nqueue = 64",
        &php_route(),
    );
    let p = Portico::start(&format!("[runtime]\nworkers = 2\n\n{config}"));
    // 16 clients at once, 10 requests each, on 2 php workers: all answered, through at most
    // 2 connections at any time, which stay open between requests (FCGI_KEEP_CONN). A
    // third would wait in php-fpm's backlog behind the kept ones.
    let url = p.url("/env.php");
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || (0..10).map(|_| curl(&[], &url).status).collect::<Vec<_>>())
        })
        .collect();
    let mut most = 0;
    while handles.iter().any(|h| !h.is_finished()) {
        most = most.max(established_from(p.proc.pid(), port));
        std::thread::yield_now();
    }
    assert!(
        (1..=2).contains(&most),
        "{most} connections to php-fpm at once, limit 2"
    );
    for h in handles {
        assert!(h.join().unwrap().iter().all(|s| *s == 200));
    }
    let open = established_from(p.proc.pid(), port);
    assert!(
        (1..=2).contains(&open),
        "{open} connections to php-fpm, expected 1 or 2 kept open"
    );
}

/// An example config from config/, pointed at this test's app server and port.
fn example(name: &str, replace: &[(&str, String)]) -> String {
    let mut text = std::fs::read_to_string(root().join("config").join(name)).unwrap();
    for (from, to) in replace {
        assert!(text.contains(from), "{name} has {from}");
        text = text.replace(from, to);
    }
    text.replace("127.0.0.1:8080", "127.0.0.1:{port}")
}

#[test]
fn example_flask_uwsgi() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("uwsgi.sock");
    let _app = uwsgi(Bind::Unix(&sock), &[]);
    let p = Portico::start(&example(
        "flask-uwsgi.toml",
        &[("/tmp/portico-uwsgi.sock", sock.display().to_string())],
    ));
    let r = curl(&[], &p.url("/env?q=1"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["SERVER_NAME"], "localhost");
    assert_eq!(r.json()["PATH_INFO"], "/env");
    // max_vars = 4096 (uWSGI's default buffer-size): a 5 kB header is a 431, not a 502.
    let big = format!("X-Big: {}", "b".repeat(5000));
    assert_eq!(curl(&["-H", &big], &p.url("/env")).status, 431);
}

#[test]
fn example_flask_flup() {
    let port = free_port();
    let _app = flup(Bind::Tcp(port));
    let p = Portico::start(&example(
        "flask-flup.toml",
        &[("127.0.0.1:9002", format!("127.0.0.1:{port}"))],
    ));
    let r = curl(&[], &p.url("/u/caf%C3%A9"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["rest"], "café");
    let r = curl(&["-d", "a=1"], &p.url("/form"));
    assert_eq!(r.json()["a"][0], "1");
}

#[test]
fn example_php_fpm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _fpm = php_fpm(dir.path(), Bind::Tcp(port), 2);
    let p = Portico::start(&example(
        "php-fpm.toml",
        &[
            ("127.0.0.1:9000", format!("127.0.0.1:{port}")),
            ("/var/www/php", php_root().display().to_string()),
        ],
    ));
    assert_eq!(curl(&[], &p.url("/")).text(), "php index\n");
    let r = curl(&[], &p.url("/echo.php/extra/path?x=1"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path_info"], "/extra/path");
    assert_eq!(r.json()["get"]["x"], "1");
}

#[test]
fn php_fpm_restart_behind_kept_connections() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut fpm = php_fpm(dir.path(), Bind::Tcp(port), 2);
    let p = Portico::start(&gateway_config(
        &format!("addr = \"127.0.0.1:{port}\", max_conns = 2, max_fails = 0"),
        "fastcgi",
        "keepalive = 2\nqueue = 16",
        &php_route(),
    ));
    for _ in 0..4 {
        assert_eq!(curl(&[], &p.url("/index.php")).status, 200);
    }
    // php-fpm restarts: the kept connections are dead; the next requests must not fail
    // on them but open new ones.
    // (SIGTERM: php-fpm ends its workers too, closing every kept connection)
    fpm.signal("TERM");
    fpm.wait_exit(std::time::Duration::from_secs(20));
    assert_eq!(established_to(port), 0, "the kept connections are closed");
    let _fpm = php_fpm(dir.path(), Bind::Tcp(port), 2);
    for i in 0..4 {
        let r = curl(&[], &p.url("/index.php"));
        assert_eq!(r.status, 200, "request {i} after the restart: {}", r.text());
    }
}

#[test]
fn a_reload_switches_a_route_between_gateways() {
    let (uwsgi_port, flup_port) = (free_port(), free_port());
    let _u = uwsgi(Bind::Tcp(uwsgi_port), &[]);
    let _f = flup(Bind::Tcp(flup_port));
    let uwsgi_cfg = gateway_config(&at(&format!("127.0.0.1:{uwsgi_port}")), "uwsgi", "", "");
    let flup_cfg = gateway_config(
        &at(&format!("127.0.0.1:{flup_port}")),
        "fastcgi",
        "",
        FLUP_ROUTE,
    );
    let p = Portico::start(&uwsgi_cfg);
    let env = curl(&[], &p.url("/env")).json();
    assert!(
        env.get("GATEWAY_INTERFACE").is_none(),
        "uwsgi_params have none"
    );
    assert!(p.reload(&flup_cfg));
    let env = curl(&[], &p.url("/env")).json();
    assert_eq!(
        env["GATEWAY_INTERFACE"], "CGI/1.1",
        "now FastCGI through flup"
    );
    // a bad gateway setting is refused and the running config keeps serving
    assert!(!p.reload(&flup_cfg.replace(
        "via = \"fastcgi\"",
        "via = \"fastcgi\"\n  split_path_info = '('"
    )));
    assert_eq!(curl(&[], &p.url("/env")).status, 200);
}
