//! Helpers for the black-box tests: start the real `portico` binary and real peers
//! (gunicorn, uvicorn, nginx), wait for readiness by connecting (never by sleeping),
//! talk HTTP with curl or raw sockets, and stop everything on drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The portico binary under test: $PORTICO_BIN, else target/{debug,release}/portico.
pub fn portico_bin() -> PathBuf {
    if let Ok(p) = std::env::var("PORTICO_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("target"));
    for profile in ["debug", "release"] {
        let p = target.join(profile).join("portico");
        if p.exists() {
            return p;
        }
    }
    panic!("portico binary not found: run `cargo build -p portico` first (or set PORTICO_BIN)");
}

/// The Python venv with the peers (protocol-tests/peers/install.sh makes it).
pub fn venv_bin(name: &str) -> PathBuf {
    let venv = std::env::var("PORTICO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("protocol-tests/.venv"));
    let p = venv.join("bin").join(name);
    assert!(
        p.exists(),
        "{} missing: run protocol-tests/peers/install.sh",
        p.display()
    );
    p
}

pub fn apps_dir() -> PathBuf {
    root().join("protocol-tests/apps")
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `addr` accepts connections (a readiness check, bounded at 30 s).
pub fn wait_tcp(addr: SocketAddr, child: &mut Child, what: &str) {
    if let Err(status) = try_wait_tcp(addr, child, what) {
        panic!("{what} exited early with {status}");
    }
}

/// [`wait_tcp`], or the exit status of a child that ended before it listened.
fn try_wait_tcp(
    addr: SocketAddr,
    child: &mut Child,
    what: &str,
) -> Result<(), std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} did not listen on {addr} within 30 s");
}

pub fn wait_unix(path: &Path, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited early with {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} did not listen on {} within 30 s", path.display());
}

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Self {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            child,
            name: name.to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {} failed", self.name);
    }

    /// Waits for the process to exit (bounded), returning its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} did not exit within {within:?}", self.name);
    }

    /// SIGTERM, then waits for the exit (gunicorn's and uWSGI's masters stop their
    /// workers first; a SIGKILLed master leaves them serving).
    pub fn stop(&mut self) {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(15));
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Where a Python app server listens.
pub enum Bind<'a> {
    Unix(&'a Path),
    Tcp(u16),
}

/// gunicorn (2 workers) serving the Flask app; returns once it accepts connections.
pub fn gunicorn(bind: Bind<'_>, app_id: &str, extra_env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(venv_bin("gunicorn"));
    cmd.args(["--chdir"])
        .arg(apps_dir())
        .args(["-w", "2", "--graceful-timeout", "1", "-b"])
        .arg(match &bind {
            Bind::Unix(sock) => format!("unix:{}", sock.display()),
            Bind::Tcp(port) => format!("127.0.0.1:{port}"),
        })
        .arg("flask_app:app")
        .env("APP_ID", app_id)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut p = Proc::spawn("gunicorn", &mut cmd);
    match bind {
        Bind::Unix(sock) => wait_unix(sock, &mut p.child, "gunicorn"),
        Bind::Tcp(port) => wait_tcp(
            SocketAddr::from(([127, 0, 0, 1], port)),
            &mut p.child,
            "gunicorn",
        ),
    }
    p
}

pub fn gunicorn_unix(sock: &Path, app_id: &str, extra_env: &[(&str, &str)]) -> Proc {
    gunicorn(Bind::Unix(sock), app_id, extra_env)
}

pub fn gunicorn_tcp(port: u16, app_id: &str, extra_env: &[(&str, &str)]) -> Proc {
    gunicorn(Bind::Tcp(port), app_id, extra_env)
}

/// A config with one upstream `app` (one server at `server`, e.g. "unix:/x.sock") and
/// one listener on `{port}` routing `/` to it; `listener_extra` is inserted in the
/// listener table (limits, proxy_protocol …).
pub fn proxy_config(server: &str, listener_extra: &str) -> String {
    format!(
        "[upstreams.app]\nservers = [{{ addr = \"{server}\" }}]\n\n[[listeners]]\nlisten = [\"127.0.0.1:{{port}}\"]\n{listener_extra}\n  [[listeners.routes]]\n  path = \"/\"\n  upstream = \"app\"\n"
    )
}

/// uvicorn serving the ASGI echo app on a TCP port or a Unix socket (`--uds`).
pub fn uvicorn(bind: Bind<'_>) -> Proc {
    uvicorn_with(bind, &[])
}

/// [`uvicorn`] with more arguments (`--ssl-certfile`, …).
pub fn uvicorn_with(bind: Bind<'_>, args: &[&str]) -> Proc {
    let mut cmd = Command::new(venv_bin("uvicorn"));
    cmd.arg("--app-dir").arg(apps_dir()).args(args);
    match &bind {
        Bind::Tcp(port) => cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()]),
        Bind::Unix(sock) => cmd.arg("--uds").arg(sock),
    };
    cmd.args(["--log-level", "warning", "asgi_app:app"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut p = Proc::spawn("uvicorn", &mut cmd);
    match bind {
        Bind::Unix(sock) => wait_unix(sock, &mut p.child, "uvicorn"),
        Bind::Tcp(port) => wait_tcp(
            SocketAddr::from(([127, 0, 0, 1], port)),
            &mut p.child,
            "uvicorn",
        ),
    }
    p
}

pub fn uvicorn_tcp(port: u16) -> Proc {
    uvicorn(Bind::Tcp(port))
}

/// A running portico with its config in a temp dir.
pub struct Portico {
    pub proc: Proc,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub port: u16,
    pub admin_port: u16,
    pub log: PathBuf,
}

impl Portico {
    /// Starts portico on `config` (TOML). `{port}`, `{admin}` and `{dir}` are replaced by
    /// the main port, the admin port and the temp dir; waits until both ports answer.
    pub fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, config, "toml")
    }

    pub fn start_in(dir: tempfile::TempDir, config: &str, ext: &str) -> Self {
        let port = free_port();
        let admin_port = free_port();
        let text = config
            .replace("{port}", &port.to_string())
            .replace("{admin}", &admin_port.to_string())
            .replace("{dir}", &dir.path().display().to_string());
        let path = dir.path().join(format!("portico.{ext}"));
        std::fs::write(&path, text).unwrap();
        let log = dir.path().join("portico.log");
        let logf = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(portico_bin());
        cmd.arg("--config")
            .arg(&path)
            // PORTICO_BIN names the binary under test; Portico would read it as config
            .env_remove("PORTICO_BIN")
            .current_dir(dir.path())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf);
        let mut proc = Proc::spawn("portico", &mut cmd);
        // an early exit shows Portico's own reason (the log goes with the temp dir)
        let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_tcp(
                SocketAddr::from(([127, 0, 0, 1], port)),
                &mut proc.child,
                "portico",
            )
        }));
        if let Err(e) = started {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            eprintln!("portico's log:\n{log}");
            std::panic::resume_unwind(e);
        }
        if config.contains("{admin}") {
            wait_tcp(
                SocketAddr::from(([127, 0, 0, 1], admin_port)),
                &mut proc.child,
                "portico admin",
            );
        }
        Portico {
            proc,
            dir,
            config: path,
            port,
            admin_port,
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The first log line containing `needle`, waiting (up to 10 s) for it to be written.
    pub fn wait_log_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log_text();
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Rewrites the config file (same placeholders) and sends SIGHUP; waits until the log
    /// shows the outcome of this reload.
    pub fn reload(&self, config: &str) -> bool {
        let text = config
            .replace("{port}", &self.port.to_string())
            .replace("{admin}", &self.admin_port.to_string())
            .replace("{dir}", &self.dir.path().display().to_string());
        std::fs::write(&self.config, text).unwrap();
        let before_ok = self.log_text().matches("configuration reloaded").count();
        let before_bad = self.log_text().matches("reload refused").count();
        self.proc.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let log = self.log_text();
            if log.matches("configuration reloaded").count() > before_ok {
                return true;
            }
            if log.matches("reload refused").count() > before_bad {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no reload outcome in the log:\n{}", self.log_text());
    }
}

/// A response as curl saw it.
#[derive(Debug)]
pub struct CurlResponse {
    pub status: u16,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl CurlResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Runs curl with `args` (plus -s, a 60 s cap, and header capture) on `url`.
pub fn curl(args: &[&str], url: &str) -> CurlResponse {
    let dir = tempfile::tempdir().unwrap();
    let hdr = dir.path().join("h");
    let out: Output = Command::new("curl")
        .args(["-s", "--max-time", "60", "-D"])
        .arg(&hdr)
        .args(args)
        .arg(url)
        .output()
        .expect("curl runs");
    let head = std::fs::read_to_string(&hdr).unwrap_or_default();
    // With redirects or 100-continue there may be several heads: take the last.
    let last = head
        .split("\r\n\r\n")
        .filter(|b| !b.trim().is_empty())
        .last()
        .unwrap_or("")
        .to_string();
    let mut lines = last.lines();
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or("").to_string();
    let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    CurlResponse {
        status,
        version,
        headers,
        body: out.stdout,
    }
}

/// Sends `raw` bytes on a new connection and returns the status of the first response
/// and whether the server closed the connection afterwards.
pub fn raw_status(addr: SocketAddr, raw: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// A minimal keep-alive HTTP/1.1 client for load during reloads and restarts.
pub struct KeepAlive {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// Requests sent on this connection.
    pub used: usize,
    /// The server said `Connection: close` (a [`Load::retrying`] client reconnects).
    pub closed: bool,
}

impl KeepAlive {
    pub fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Self {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
            used: 0,
            closed: false,
        })
    }

    /// Whether `e` says the server closed the connection before answering at all.
    pub fn closed_before_answer(e: &std::io::Error) -> bool {
        use std::io::ErrorKind::*;
        matches!(e.kind(), UnexpectedEof | ConnectionReset | BrokenPipe)
    }

    /// GET `path`; returns (status, body, server closes after).
    pub fn get(&mut self, path: &str) -> std::io::Result<(u16, Vec<u8>, bool)> {
        self.used += 1;
        write!(self.writer, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut len = None;
        let mut chunked = false;
        let mut close = false;
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
                match k.as_str() {
                    "content-length" => len = v.parse::<usize>().ok(),
                    "transfer-encoding" => chunked = v.contains("chunked"),
                    "connection" => close = v.contains("close"),
                    _ => {}
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size)?;
                let n = usize::from_str_radix(size.trim(), 16).map_err(std::io::Error::other)?;
                let mut chunk = vec![0; n + 2];
                self.reader.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(n) = len {
            body.resize(n, 0);
            self.reader.read_exact(&mut body)?;
        }
        Ok((status, body, close))
    }
}

/// Runs `portico` with `args` and returns (exit code, stdout, stderr).
pub fn portico_cmd(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let out = Command::new(portico_bin())
        .args(args)
        .current_dir(cwd)
        .env_remove("PORTICO_LOG")
        .env_remove("PORTICO_BIN")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `portico check` on `config` (written as bad.toml in a temp dir) fails, and its
/// stderr names every one of `needles`.
pub fn check_errors(config: &str, needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, config).unwrap();
    let (code, _out, err) = portico_cmd(&["check", "--config", cfg.to_str().unwrap()], dir.path());
    assert_ne!(code, 0, "check passed:\n{err}");
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} in:\n{err}");
    }
}

/// nginx (Debian's) with `conf` as its http{} body etc.; `conf` is the whole file
/// without the top-level lines this adds (daemon, pid, error_log, events).
pub fn nginx(dir: &Path, conf_body: &str, port: u16) -> Proc {
    nginx_with_modules(dir, &[], conf_body, port)
}

/// [`nginx`] with dynamic modules loaded first (e.g. "ngx_mail_module").
pub fn nginx_with_modules(dir: &Path, modules: &[&str], conf_body: &str, port: u16) -> Proc {
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    let loads: String = modules
        .iter()
        .map(|m| format!("load_module /usr/lib/nginx/modules/{m}.so;\n"))
        .collect();
    let conf = format!(
        "{loads}daemon off;\nuser root;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log info;\nevents {{ worker_connections 1024; }}\n{conf_body}\n",
        p = prefix.display()
    );
    let path = prefix.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let mut cmd = Command::new("nginx");
    cmd.arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(&prefix)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut p = Proc::spawn("nginx", &mut cmd);
    wait_tcp(
        SocketAddr::from(([127, 0, 0, 1], port)),
        &mut p.child,
        "nginx",
    );
    p
}

/// The temp-path lines nginx needs inside an http{} block when running unprivileged
/// from a private prefix.
pub fn nginx_http_temp(prefix: &Path) -> String {
    let p = prefix.join("nginx");
    format!(
        "client_body_temp_path {p}/client_temp; proxy_temp_path {p}/proxy_temp; fastcgi_temp_path {p}/fastcgi_temp; uwsgi_temp_path {p}/uwsgi_temp; scgi_temp_path {p}/scgi_temp;",
        p = p.display()
    )
}

/// Load for "nothing is dropped" tests: `threads` clients sending GET `path` in a loop
/// until [`Load::finish`]. Thread 0 keeps one keep-alive connection throughout; with
/// `reconnect_every = Some(n)` the others open a new connection every n requests.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ok: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// When each failed request was sent, and what came back.
    failures: std::sync::Arc<std::sync::Mutex<Vec<(Instant, String)>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(
        addr: SocketAddr,
        path: &str,
        threads: usize,
        reconnect_every: Option<usize>,
    ) -> Self {
        Self::spawn(addr, path, threads, reconnect_every, false)
    }

    /// As [`start`](Self::start), with the clients behaving as HTTP clients do when a
    /// server closes kept-alive connections (a draining process): after a response with
    /// `Connection: close` they connect again, and a request on a reused connection that
    /// is closed before any byte of an answer is sent once more on a new connection
    /// (RFC 9112 §9.3.1: a GET may be retried). Anything else is a failure: a refused
    /// connection, an error on a new connection, a status other than 200.
    pub fn retrying(
        addr: SocketAddr,
        path: &str,
        threads: usize,
        reconnect_every: Option<usize>,
    ) -> Self {
        Self::spawn(addr, path, threads, reconnect_every, true)
    }

    fn spawn(
        addr: SocketAddr,
        path: &str,
        threads: usize,
        reconnect_every: Option<usize>,
        retry: bool,
    ) -> Self {
        use std::sync::atomic::Ordering;
        let load = Load {
            stop: Default::default(),
            ok: Default::default(),
            failures: Default::default(),
            threads: Vec::new(),
        };
        let mut handles = Vec::new();
        for t in 0..threads {
            let (stop, ok, failures) = (load.stop.clone(), load.ok.clone(), load.failures.clone());
            let path = path.to_string();
            handles.push(std::thread::spawn(move || {
                let fail = |what: String| failures.lock().unwrap().push((Instant::now(), what));
                let mut conn = KeepAlive::connect(addr).unwrap();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let reconnect = reconnect_every.is_some_and(|every| t > 0 && n % every == 0);
                    if reconnect || conn.closed {
                        match KeepAlive::connect(addr) {
                            Ok(c) => conn = c,
                            Err(e) => {
                                fail(format!("connect: {e}"));
                                std::thread::sleep(Duration::from_millis(5));
                                continue;
                            }
                        }
                    }
                    let mut got = conn.get(&path);
                    if retry && conn.used > 1 {
                        if let Err(e) = &got {
                            if KeepAlive::closed_before_answer(e) {
                                got = KeepAlive::connect(addr).and_then(|c| {
                                    conn = c;
                                    conn.get(&path)
                                });
                            }
                        }
                    }
                    match got {
                        Ok((200, _, close)) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            conn.closed |= close && retry;
                        }
                        other => {
                            fail(format!("{other:?}"));
                            // a refused connection is not retried in a hot loop
                            if other.is_err() {
                                std::thread::sleep(Duration::from_millis(5));
                                if let Ok(c) = KeepAlive::connect(addr) {
                                    conn = c;
                                }
                            }
                        }
                    }
                }
            }));
        }
        Load {
            threads: handles,
            ..load
        }
    }

    /// Successful requests so far.
    pub fn ok(&self) -> usize {
        self.ok.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits (bounded) until `n` more requests have succeeded.
    pub fn wait_ok(&self, n: usize) {
        let target = self.ok() + n;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.ok() < target {
            assert!(Instant::now() < deadline, "load stalled");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Failed requests so far.
    pub fn failed(&self) -> usize {
        self.failures.lock().unwrap().len()
    }

    /// Stops the clients; asserts some requests succeeded and none failed.
    pub fn finish(self) {
        let failures = self.stop_and_failures();
        assert!(
            failures.is_empty(),
            "{} failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
    }

    /// Stops the clients and returns the failed requests with when they were sent;
    /// asserts some requests succeeded.
    pub fn stop_and_failures(self) -> Vec<(Instant, String)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        assert!(self.ok.load(std::sync::atomic::Ordering::Relaxed) > 0);
        let failures = self.failures.lock().unwrap();
        failures.clone()
    }
}

/// uWSGI (pip's, 2 processes) serving the Flask app over the uwsgi protocol.
pub fn uwsgi(bind: Bind<'_>, extra_env: &[(&str, &str)]) -> Proc {
    uwsgi_with(bind, extra_env, &["--buffer-size", "32768"])
}

/// [`uwsgi`] with `args` added (`&[]`: uWSGI's default 4096-byte buffer-size).
pub fn uwsgi_with(bind: Bind<'_>, extra_env: &[(&str, &str)], args: &[&str]) -> Proc {
    let mut cmd = Command::new(venv_bin("uwsgi"));
    cmd.arg("--socket")
        .arg(match &bind {
            Bind::Unix(sock) => sock.display().to_string(),
            Bind::Tcp(port) => format!("127.0.0.1:{port}"),
        })
        .arg("--chdir")
        .arg(apps_dir())
        .args([
            "--module",
            "flask_app:app",
            "--processes",
            "2",
            "--master",
            "--die-on-term",
            "--disable-logging",
        ])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut p = Proc::spawn("uwsgi", &mut cmd);
    wait_bind(&bind, &mut p, "uwsgi");
    p
}

/// flup serving the Flask app over FastCGI.
pub fn flup(bind: Bind<'_>) -> Proc {
    let mut cmd = Command::new(venv_bin("python"));
    cmd.arg(apps_dir().join("flup_server.py"))
        .arg(match &bind {
            Bind::Unix(sock) => format!("unix:{}", sock.display()),
            Bind::Tcp(port) => format!("127.0.0.1:{port}"),
        })
        .current_dir(apps_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut p = Proc::spawn("flup", &mut cmd);
    wait_bind(&bind, &mut p, "flup");
    p
}

/// An OCSP responder on 127.0.0.1:`port` (openssl's responder behind a loopback HTTP
/// front, apps/ocsp_responder.py) answering from `dir`'s index.txt, ca.pem and
/// signer.pem/key; each request is a line in `dir`/requests.
pub fn ocsp_responder(port: u16, dir: &Path) -> Proc {
    let mut cmd = Command::new(venv_bin("python"));
    cmd.arg(apps_dir().join("ocsp_responder.py"))
        .arg(port.to_string())
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut p = Proc::spawn("ocsp responder", &mut cmd);
    wait_bind(&Bind::Tcp(port), &mut p, "ocsp responder");
    p
}

/// The PHP scripts the php-fpm tests serve.
pub fn php_root() -> PathBuf {
    apps_dir().join("php")
}

/// php-fpm (Debian's) with one static pool of `children` workers; its config and log
/// live in `dir`.
pub fn php_fpm(dir: &Path, bind: Bind<'_>, children: usize) -> Proc {
    let bin = ["php-fpm8.2", "php-fpm8.3", "php-fpm"]
        .iter()
        .map(|b| PathBuf::from("/usr/sbin").join(b))
        .find(|p| p.exists())
        .expect("php-fpm is installed (protocol-tests/peers/install.sh)");
    let listen = match &bind {
        Bind::Unix(sock) => sock.display().to_string(),
        Bind::Tcp(port) => format!("127.0.0.1:{port}"),
    };
    let conf = dir.join(format!("php-fpm-{}.conf", listen.replace(['/', ':'], "_")));
    std::fs::write(
        &conf,
        format!(
            "[global]\nerror_log = {log}\ndaemonize = no\n[www]\nlisten = {listen}\npm = static\npm.max_children = {children}\nclear_env = no\ncatch_workers_output = yes\n",
            log = dir.join("php-fpm.log").display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(bin);
    cmd.args(["-R", "-F", "-y"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut p = Proc::spawn("php-fpm", &mut cmd);
    wait_bind(&bind, &mut p, "php-fpm");
    p
}

fn wait_bind(bind: &Bind<'_>, p: &mut Proc, what: &str) {
    match bind {
        Bind::Unix(sock) => wait_unix(sock, &mut p.child, what),
        Bind::Tcp(port) => wait_tcp(
            SocketAddr::from(([127, 0, 0, 1], *port)),
            &mut p.child,
            what,
        ),
    }
}

/// Dovecot (Debian's) with IMAP and POP3 on free loopback ports and two users,
/// alice/secret and bob/hunter2 (passwd-file), mail under `dir`. Returns the process and
/// the IMAP and POP3 ports.
pub fn dovecot(dir: &Path) -> (Proc, u16, u16) {
    let d = dovecot_with(dir, false, None);
    (d.proc, d.imap, d.pop3)
}

/// A running Dovecot and its ports.
pub struct Dovecot {
    pub proc: Proc,
    pub imap: u16,
    pub pop3: u16,
    /// An IMAP port that requires a PROXY protocol header (with `haproxy`).
    pub proxied: Option<u16>,
    /// An implicit-TLS IMAP port (with `tls`).
    pub imaps: Option<u16>,
}

/// [`dovecot`], with `haproxy` one more IMAP port that requires a PROXY protocol header
/// from 127.0.0.1, with `tls` (certificate, key) STARTTLS on IMAP/POP3 and an IMAPS port.
pub fn dovecot_with(dir: &Path, haproxy: bool, tls: Option<(&Path, &Path)>) -> Dovecot {
    use std::os::unix::fs::PermissionsExt;
    // Dovecot's auth and login processes run as other users: every directory above
    // its files must be searchable.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(
        dir.join("users"),
        "alice:{PLAIN}secret\nbob:{PLAIN}hunter2\npooled:{PLAIN}secret\n",
    )
    .unwrap();
    // free_port's ports are released before Dovecot binds them, so a test running
    // beside this one can take one first: Dovecot then exits before it listens (CI saw
    // status 89 once), and is started again on new ports, a bounded number of times.
    let mut attempts = 0;
    loop {
        attempts += 1;
        match dovecot_on_free_ports(dir, haproxy, tls) {
            Ok(d) => return d,
            Err(status) if attempts < 3 => {
                eprintln!("dovecot exited before listening ({status}): new ports");
            }
            Err(status) => panic!("dovecot exited early with {status}, {attempts} times"),
        }
    }
}

fn dovecot_on_free_ports(
    dir: &Path,
    haproxy: bool,
    tls: Option<(&Path, &Path)>,
) -> Result<Dovecot, std::process::ExitStatus> {
    let (imap, pop3) = (free_port(), free_port());
    let proxied = haproxy.then(free_port);
    let imaps = tls.map(|_| free_port());
    let mut haproxy_listener = proxied
        .map(|p| {
            format!("  inet_listener imap_proxied {{\n    port = {p}\n    haproxy = yes\n  }}\n")
        })
        .unwrap_or_default();
    if let Some(p) = imaps {
        haproxy_listener.push_str(&format!(
            "  inet_listener imaps {{\n    port = {p}\n    ssl = yes\n  }}\n"
        ));
    }
    let ssl = match tls {
        Some((cert, key)) => format!(
            "ssl = yes\nssl_cert = <{}\nssl_key = <{}\n",
            cert.display(),
            key.display()
        ),
        None => "ssl = no\n".to_string(),
    };
    let d = dir.display();
    let conf = format!(
        "base_dir = {d}/run\nstate_dir = {d}/state\nlog_path = {d}/dovecot.log\nprotocols = imap pop3\nlisten = 127.0.0.1\n{ssl}disable_plaintext_auth = no\nauth_mechanisms = plain login\nmail_location = maildir:{d}/home/%u/Maildir\nlogin_trusted_networks = 127.0.0.1\nhaproxy_trusted_networks = 127.0.0.1\npassdb {{\n  driver = passwd-file\n  args = {d}/users\n}}\nuserdb {{\n  driver = static\n  args = uid=nobody gid=nogroup home={d}/home/%u\n}}\nservice imap-login {{\n  chroot =\n  inet_listener imap {{\n    port = {imap}\n  }}\n{haproxy_listener}}}\nservice pop3-login {{\n  chroot =\n  inet_listener pop3 {{\n    port = {pop3}\n  }}\n}}\nservice anvil {{\n  chroot =\n}}\n"
    );
    let path = dir.join("dovecot.conf");
    std::fs::write(&path, conf).unwrap();
    let mut cmd = Command::new("dovecot");
    cmd.arg("-F")
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut p = Proc::spawn("dovecot", &mut cmd);
    for port in [Some(imap), Some(pop3), proxied, imaps]
        .into_iter()
        .flatten()
    {
        try_wait_tcp(
            SocketAddr::from(([127, 0, 0, 1], port)),
            &mut p.child,
            "dovecot",
        )?;
    }
    Ok(Dovecot {
        proc: p,
        imap,
        pop3,
        proxied,
        imaps,
    })
}

/// The auth_http server of `apps/auth_http.py` with `opts` ("imap=HOST:PORT", "wait=0",
/// "pool=1", …); returns it, its port and the file where it logs each request's headers.
pub fn auth_server(dir: &Path, opts: &[String]) -> (Proc, u16, PathBuf) {
    let port = free_port();
    let log = dir.join(format!("auth-{port}.log"));
    let mut cmd = Command::new("python3");
    cmd.arg(apps_dir().join("auth_http.py"))
        .arg(port.to_string())
        .arg(&log)
        .args(opts)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut p = Proc::spawn("auth_http.py", &mut cmd);
    wait_tcp(
        SocketAddr::from(([127, 0, 0, 1], port)),
        &mut p.child,
        "auth_http.py",
    );
    (p, port, log)
}

/// A line-oriented client for protocol transcripts (IMAP, POP3, SMTP).
pub struct LineClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl LineClient {
    pub fn connect(port: u16) -> Self {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Self {
            writer: s.try_clone().unwrap(),
            reader: BufReader::new(s),
        }
    }

    /// The next line without CRLF; "" once the server closed.
    pub fn line(&mut self) -> String {
        let mut l = String::new();
        let _ = self.reader.read_line(&mut l);
        l.trim_end_matches(['\r', '\n']).to_string()
    }

    pub fn send(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).unwrap();
    }

    /// Sends one line (CRLF added) and returns the next line of the answer.
    pub fn ask(&mut self, line: &str) -> String {
        self.send(&format!("{line}\r\n"));
        self.line()
    }

    /// Lines until one starts with `prefix` (included).
    pub fn until(&mut self, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let l = self.line();
            let done = l.starts_with(prefix) || l.is_empty();
            out.push(l);
            if done {
                return out;
            }
        }
    }

    /// True once the server has closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.reader.read(&mut b), Ok(0))
    }
}

/// aiosmtpd accepting every message into a JSON-lines file; returns it, its port and
/// the file.
pub fn smtp_sink(dir: &Path) -> (Proc, u16, PathBuf) {
    smtp_sink_with(dir, false)
}

/// [`smtp_sink`]; with `auth`, it requires AUTH as alice/secret before MAIL.
pub fn smtp_sink_with(dir: &Path, auth: bool) -> (Proc, u16, PathBuf) {
    let port = free_port();
    let out = dir.join(format!("sink-{port}.jsonl"));
    let mut cmd = Command::new(venv_bin("python"));
    cmd.arg(apps_dir().join("smtp_sink.py"))
        .arg(port.to_string())
        .arg(&out)
        .args(auth.then_some("auth"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut p = Proc::spawn("aiosmtpd", &mut cmd);
    wait_tcp(
        SocketAddr::from(([127, 0, 0, 1], port)),
        &mut p.child,
        "aiosmtpd",
    );
    (p, port, out)
}

/// A self-signed certificate for `names` written to `dir/STEM.crt` and `dir/STEM.key`.
pub fn write_cert(dir: &Path, stem: &str, names: &[&str]) {
    // A distinct subject per certificate: OpenSSL (curl) looks trust anchors up by it.
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0]);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join(format!("{stem}.crt")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
}

/// Waits (up to 10 s) until the file at `path` contains `needle`; returns its text.
pub fn wait_file_contains(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} not in {}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Postfix (Debian's) with a private configuration under `dir`: smtpd on a free loopback
/// port, XCLIENT allowed from 127.0.0.0/8, relaying only for SASL-authenticated
/// sessions (an XCLIENT LOGIN counts), outgoing mail held in the queue. Its log is
/// `dir/maillog`. Stopped (`postfix stop`) when dropped.
pub struct Postfix {
    pub port: u16,
    pub maillog: PathBuf,
    conf: PathBuf,
    _proc: Proc,
}

pub fn postfix(dir: &Path) -> Postfix {
    let conf = dir.join("postfix");
    for sub in ["", "queue", "data"] {
        std::fs::create_dir_all(conf.join(sub)).unwrap();
    }
    let owner = Command::new("id").args(["-u", "postfix"]).output().unwrap();
    let uid: u32 = String::from_utf8_lossy(&owner.stdout)
        .trim()
        .parse()
        .unwrap();
    std::os::unix::fs::chown(conf.join("data"), Some(uid), None).unwrap();
    let port = free_port();
    let c = conf.display();
    let maillog = dir.join("maillog");
    std::fs::write(
        conf.join("main.cf"),
        format!(
            "compatibility_level = 3.6\nqueue_directory = {c}/queue\ndata_directory = {c}/data\nmail_owner = postfix\ninet_interfaces = 127.0.0.1\ninet_protocols = ipv4\nmyhostname = backend.portico.test\nmydestination =\nmynetworks = 127.0.0.0/8\nsmtpd_authorized_xclient_hosts = 127.0.0.0/8\nsmtpd_relay_restrictions = permit_sasl_authenticated, reject\nsmtpd_sasl_auth_enable = yes\nmaillog_file_prefixes = {d}\nmaillog_file = {m}\ndefer_transports = smtp\n",
            d = dir.display(),
            m = maillog.display()
        ),
    )
    .unwrap();
    // Debian's master.cf with smtpd moved to our port.
    let master = std::fs::read_to_string("/etc/postfix/master.cf").unwrap();
    let master: String = master
        .lines()
        .map(|l| {
            if l.starts_with("smtp ") && l.contains(" inet ") {
                format!("127.0.0.1:{port} inet n - n - - smtpd")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(conf.join("master.cf"), master + "\n").unwrap();
    let mut cmd = Command::new("postfix");
    cmd.arg("-c")
        .arg(&conf)
        .arg("start-fg")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut p = Proc::spawn("postfix", &mut cmd);
    wait_tcp(
        SocketAddr::from(([127, 0, 0, 1], port)),
        &mut p.child,
        "postfix",
    );
    Postfix {
        port,
        maillog,
        conf,
        _proc: p,
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(&self.conf)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs a Python 3 script: its trimmed stdout, and its stderr (for failure messages).
pub fn python(script: &str) -> (String, String) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`python`] for a script that must succeed: its trimmed stdout.
pub fn python_ok(script: &str) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The lines of a JSON-lines file (the auth server's and the SMTP sink's logs).
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Dovecot, the test auth server sending IMAP and POP3 logins to it, and Portico in
/// front with one mail listener.
pub struct DovecotSetup {
    /// Dovecot's config and log (dovecot.log) live here.
    pub dir: tempfile::TempDir,
    _dovecot: Proc,
    _auth: Proc,
    pub auth_log: PathBuf,
    pub portico: Portico,
}

/// A [`DovecotSetup`]: the auth server gets `auth_opts` besides the backends, the
/// `protocol` listener gets `extra` in its table, and `more` follows it in the config.
pub fn dovecot_setup(protocol: &str, auth_opts: &[&str], extra: &str, more: &str) -> DovecotSetup {
    let dir = tempfile::tempdir().unwrap();
    let (dovecot, imap, pop3) = dovecot(dir.path());
    let mut opts = vec![
        format!("imap=127.0.0.1:{imap}"),
        format!("pop3=127.0.0.1:{pop3}"),
    ];
    opts.extend(auth_opts.iter().map(|s| s.to_string()));
    let (auth, auth_port, auth_log) = auth_server(dir.path(), &opts);
    let portico = Portico::start(&format!(
        "[[listeners]]\nname = \"{protocol}\"\nlisten = [\"127.0.0.1:{{port}}\"]\nprotocol = \"{protocol}\"\nauth_http = \"http://127.0.0.1:{auth_port}/auth\"\n{extra}\n{more}\n"
    ));
    DovecotSetup {
        dir,
        _dovecot: dovecot,
        _auth: auth,
        auth_log,
        portico,
    }
}

/// One request as a [`Recorder`] received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The request head, as sent (request line, header lines, blank line).
    pub head: String,
    pub body: Vec<u8>,
    /// Which connection (0, 1, …) it came on.
    pub conn: usize,
    /// The recorder's own port (for answers that name it).
    pub port: u16,
}

impl Recorded {
    /// The values of header `name` (case-insensitive), in order.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }

    /// The request target.
    pub fn target(&self) -> &str {
        self.head.split(' ').nth(1).unwrap_or("")
    }
}

/// An in-process HTTP/1.1 backend that records every request it gets (head and body,
/// by connection) and answers with `answer(request)`: the edge cases a real app server
/// cannot produce (exactly what reached the backend; malformed responses).
pub struct Recorder {
    pub port: u16,
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<Recorded>>>,
    /// Connections the proxy closed, by number.
    pub closed: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
}

/// An answer that says "ok".
pub fn ok_answer(_: &Recorded) -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Backend: recorder\r\n\r\nok\n".to_vec()
}

impl Recorder {
    pub fn start(answer: fn(&Recorded) -> Vec<u8>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests: std::sync::Arc<std::sync::Mutex<Vec<Recorded>>> = Default::default();
        let closed: std::sync::Arc<std::sync::Mutex<Vec<usize>>> = Default::default();
        let (reqs, done) = (requests.clone(), closed.clone());
        std::thread::spawn(move || {
            for (conn, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { return };
                let (reqs, done) = (reqs.clone(), done.clone());
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
                    let mut w = stream.try_clone().unwrap();
                    let mut r = BufReader::new(stream);
                    while let Some(req) = read_request(&mut r, conn, port) {
                        reqs.lock().unwrap().push(req.clone());
                        if w.write_all(&answer(&req)).is_err() {
                            break;
                        }
                    }
                    done.lock().unwrap().push(conn);
                });
            }
        });
        Recorder {
            port,
            requests,
            closed,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The requests received whose target starts with `prefix`.
    pub fn received(&self, prefix: &str) -> Vec<Recorded> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.target().starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Waits (bounded) until connection `conn` is closed by the proxy.
    pub fn wait_closed(&self, conn: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.closed.lock().unwrap().contains(&conn) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

/// Reads one request (Content-Length or chunked body) or `None` at the end.
fn read_request(r: &mut BufReader<TcpStream>, conn: usize, port: u16) -> Option<Recorded> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if head.is_empty() && line.trim().is_empty() {
            continue;
        }
        head.push_str(&line);
        if line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut req = Recorded {
        head,
        body: Vec::new(),
        conn,
        port,
    };
    let chunked = req
        .header("transfer-encoding")
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            if n == 0 {
                // trailers
                loop {
                    let mut t = String::new();
                    r.read_line(&mut t).ok()?;
                    if t.trim().is_empty() {
                        break;
                    }
                    req.head.push_str(&format!("(trailer) {t}"));
                }
                break;
            }
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).ok()?;
            req.body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = req
        .header("content-length")
        .first()
        .and_then(|v| v.parse().ok())
    {
        req.body.resize(n, 0);
        r.read_exact(&mut req.body).ok()?;
    }
    Some(req)
}

/// Sends `raw` on a new connection and reads the first response: its status (0 when
/// the connection closed or stayed silent for 5 s first) and the text of its head.
pub fn first_response(addr: SocketAddr, raw: &[u8]) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(raw);
    let mut r = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        head.push_str(&line);
        if line == "\r\n" || line == "\n" {
            break;
        }
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head)
}

/// Runs `apps/h2_probe.py` against `port` with `script` (see the script's doc) and
/// returns its JSON report.
pub fn h2_probe(port: u16, script: &serde_json::Value) -> serde_json::Value {
    let out = Command::new(venv_bin("python"))
        .arg(apps_dir().join("h2_probe.py"))
        .args(["127.0.0.1", &port.to_string(), &script.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "h2_probe: {e}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A GET `path` as h2 header pairs, with `extra` pairs after the pseudo-headers.
pub fn h2_get(path: &str, authority: Option<&str>, extra: &[(&str, &str)]) -> serde_json::Value {
    let mut h = vec![
        serde_json::json!([":method", "GET"]),
        serde_json::json!([":scheme", "http"]),
        serde_json::json!([":path", path]),
    ];
    if let Some(a) = authority {
        h.push(serde_json::json!([":authority", a]));
    }
    for (k, v) in extra {
        h.push(serde_json::json!([k, v]));
    }
    serde_json::Value::Array(h)
}

/// [`python_ok`] with the venv's Python (its packages: brotli, zstandard, h2 …).
pub fn venv_python_ok(script: &str) -> String {
    let out = Command::new(venv_bin("python"))
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The `websockets` package's echo server (apps/ws_echo.py) on `port`.
pub fn ws_echo(port: u16) -> Proc {
    let mut cmd = Command::new(venv_bin("python"));
    cmd.arg(apps_dir().join("ws_echo.py"))
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut p = Proc::spawn("ws_echo", &mut cmd);
    wait_tcp(([127, 0, 0, 1], port).into(), &mut p.child, "ws_echo");
    p
}

/// Runs one ws_client.py scenario against `url`; its JSON report.
pub fn ws_client(url: &str, scenario: &str) -> serde_json::Value {
    let out = Command::new(venv_bin("python"))
        .arg(apps_dir().join("ws_client.py"))
        .args([url, scenario])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no output: {}", String::from_utf8_lossy(&out.stderr)));
    serde_json::from_str(last).unwrap()
}

/// A client run in the background: its first line says the socket is open.
pub struct WsInteractive {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

impl WsInteractive {
    pub fn start(url: &str, scenario: &str) -> Self {
        let mut child = Command::new(venv_bin("python"))
            .arg(apps_dir().join("ws_client.py"))
            .args([url, scenario])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        assert!(first.contains("\"open\""), "{first}");
        WsInteractive { child, out }
    }

    pub fn go_on(&mut self) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }

    pub fn result(mut self) -> serde_json::Value {
        let mut rest = String::new();
        self.out.read_to_string(&mut rest).unwrap();
        let _ = self.child.wait();
        serde_json::from_str(rest.lines().last().unwrap_or("null")).unwrap()
    }
}

/// Runs `cmd` and returns its stdout; fails the test with its stderr when it fails.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
