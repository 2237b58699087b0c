//! Upgrading the binary without dropping a connection (`portico upgrade`, SIGUSR2), and
//! the rest of running under an init system: systemd socket activation with sockets
//! the test binds itself, sd_notify readiness, the unit files.
//!
//! The processes started by an upgrade are not this test's children: each test stops
//! the last one through the pid file (by its pid, never by name).

mod common;

use common::*;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Whether process `pid` has ended (gone, or a zombie nobody reaped yet).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // "PID (comm) STATE …": the state follows the last ')'
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

fn wait_gone(pid: u32, within: Duration) {
    let deadline = Instant::now() + within;
    while !gone(pid) {
        assert!(Instant::now() < deadline, "process {pid} still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pid_in(file: &Path) -> u32 {
    std::fs::read_to_string(file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Stops whichever process the pid file names when the test ends (pass or fail).
struct LastOne(PathBuf);

impl Drop for LastOne {
    fn drop(&mut self) {
        let Ok(text) = std::fs::read_to_string(&self.0) else {
            return;
        };
        let pid = text.trim().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        if let Ok(pid) = pid.parse() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !gone(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// `portico upgrade --config …` for `p`, with `extra` arguments: (exit code, stdout, stderr).
fn upgrade(p: &Portico, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["upgrade", "--config", p.config.to_str().unwrap()];
    args.extend_from_slice(extra);
    portico_cmd(&args, p.dir.path())
}

const RUNTIME: &str = "[runtime]\npid_file = \"{dir}/portico.pid\"\nshutdown_timeout = \"20s\"\n";

fn web_config(sock: &Path) -> String {
    format!(
        r#"{RUNTIME}
[admin]
listen = "127.0.0.1:{{admin}}"
[upstreams.app]
servers = [{{ addr = "unix:{}" }}]
[[listeners]]
name = "web"
listen = ["127.0.0.1:{{port}}", "unix:{{dir}}/web.sock"]
  [[listeners.routes]]
  path = "/"
  upstream = "app"
"#,
        sock.display()
    )
}

/// Three upgrades in a row under a steady load of kept-alive and new connections
/// against gunicorn: every request answered, no connection refused; each old process
/// exits once drained and the pid file names the new one.
#[test]
fn three_upgrades_under_load_drop_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("app.sock");
    let _app = gunicorn_unix(&sock, "up", &[]);
    let mut p = Portico::start(&web_config(&sock));
    let pid_file = p.dir.path().join("portico.pid");
    let _last = LastOne(pid_file.clone());
    let unix = p.dir.path().join("web.sock");

    let load = Load::retrying(p.addr(), "/echo", 4, Some(3));
    load.wait_ok(50);
    let mut old = p.proc.pid();
    for round in 0..3 {
        let (code, out, err) = upgrade(&p, &[]);
        assert_eq!(code, 0, "upgrade {round}: {out}{err}\n{}", p.log_text());
        let new = pid_in(&pid_file);
        assert_ne!(new, old, "the pid file names the new process");
        assert!(
            out.contains(&format!("new process {new} is ready")),
            "{out}"
        );
        load.wait_ok(50);
        if round == 0 {
            assert_eq!(p.proc.wait_exit(Duration::from_secs(30)), Some(0));
        } else {
            wait_gone(old, Duration::from_secs(30));
        }
        // the Unix listener was handed over too: its file stays and answers
        let r = Command::new("curl")
            .args([
                "-s",
                "--unix-socket",
                unix.to_str().unwrap(),
                "http://x/echo",
            ])
            .output()
            .unwrap();
        assert!(
            r.status.success() && !r.stdout.is_empty(),
            "unix listener after upgrade {round}"
        );
        old = new;
    }
    load.finish();
    // the admin listener was handed over with the others: the new process answers there
    let status = curl(&[], &format!("http://127.0.0.1:{}/status", p.admin_port)).json();
    assert_eq!(status["pid"].as_u64(), Some(u64::from(old)), "{status}");
    let log = p.log_text();
    assert_eq!(log.matches("upgrade: draining").count(), 3, "{log}");
    assert_eq!(
        log.matches("inherited listening socket(s)").count(),
        3,
        "{log}"
    );
    assert!(!log.contains("ERROR"), "{log}");
}

/// A WebSocket (websockets' client and server) and an IMAP session (Dovecot) opened
/// before an upgrade go on after it, on the old process, until they end; then the old
/// process exits. New sessions meanwhile go to the new process.
#[test]
fn websocket_and_imap_sessions_outlive_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let ws_port = free_port();
    let _ws = ws_echo(ws_port);
    let (_dovecot, imap, pop3) = dovecot(dir.path());
    let (_auth, auth_port, _auth_log) = auth_server(
        dir.path(),
        &[
            format!("imap=127.0.0.1:{imap}"),
            format!("pop3=127.0.0.1:{pop3}"),
        ],
    );
    let imap_port = free_port();
    let mut p = Portico::start(&format!(
        r#"{RUNTIME}
[upstreams.ws]
servers = [{{ addr = "127.0.0.1:{ws_port}" }}]
[[listeners]]
name = "web"
listen = ["127.0.0.1:{{port}}"]
  [[listeners.routes]]
  path = "/"
  upstream = "ws"
[[listeners]]
name = "imap"
protocol = "imap"
listen = ["127.0.0.1:{imap_port}"]
auth_http = "http://127.0.0.1:{auth_port}/auth"
"#
    ));
    let pid_file = p.dir.path().join("portico.pid");
    let _last = LastOne(pid_file.clone());
    let mut ws = WsInteractive::start(&format!("ws://127.0.0.1:{}/", p.port), "hold_and_echo");
    let mut mail = LineClient::connect(imap_port);
    assert_eq!(mail.line(), "* OK IMAP4 ready");
    let login = mail.ask("a1 LOGIN alice secret");
    assert!(login.starts_with("a1 OK"), "{login}");

    let (code, out, err) = upgrade(&p, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_ne!(pid_in(&pid_file), p.proc.pid());
    // the old process drains: still there while the sessions are open
    p.wait_log_line("upgrade: draining");
    assert!(
        p.proc.child.try_wait().unwrap().is_none(),
        "old process waits for its sessions"
    );
    // new sessions go to the new process meanwhile
    let mut fresh = LineClient::connect(imap_port);
    assert_eq!(fresh.line(), "* OK IMAP4 ready");
    assert!(fresh.ask("b1 LOGIN alice secret").starts_with("b1 OK"));
    assert_eq!(fresh.ask("b2 LOGOUT").split(' ').next(), Some("*"));

    // the sessions opened before go on
    let noop = mail.ask("a2 NOOP");
    assert!(noop.starts_with("a2 OK"), "{noop}");
    ws.go_on();
    assert_eq!(ws.result()["after"], "after");
    let bye = mail.ask("a3 LOGOUT");
    assert!(bye.starts_with("* BYE"), "{bye}");
    drop(mail);
    assert_eq!(
        p.proc.wait_exit(Duration::from_secs(30)),
        Some(0),
        "the old process exits once its sessions ended"
    );
    let log = p.log_text();
    assert!(log.contains("all connections finished"), "{log}");
}

/// A new binary that exits at once, and a config the new process rejects: the upgrade
/// exits 1 with the reason, the old process keeps serving on its sockets and stays in
/// the pid file. A good upgrade afterwards works.
#[test]
fn a_failed_upgrade_leaves_the_old_process_serving() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("app.sock");
    let _app = gunicorn_unix(&sock, "fail", &[]);
    let p = Portico::start(&web_config(&sock));
    let pid_file = p.dir.path().join("portico.pid");
    let _last = LastOne(pid_file.clone());
    let load = Load::retrying(p.addr(), "/echo", 2, Some(3));

    let broken = p.dir.path().join("broken-portico");
    std::fs::write(&broken, "#!/bin/sh\necho 'cannot start' >&2\nexit 1\n").unwrap();
    std::process::Command::new("chmod")
        .args(["+x", broken.to_str().unwrap()])
        .status()
        .unwrap();
    let (code, _, err) = upgrade(&p, &["--binary", broken.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("exited (exit status: 1) before it was ready"),
        "{err}"
    );
    assert_eq!(pid_in(&pid_file), p.proc.pid());
    assert!(p
        .log_text()
        .contains("upgrade failed, this process keeps serving"));

    // the same binary, a config it refuses (the running one keeps the good one)
    let good = std::fs::read_to_string(&p.config).unwrap();
    std::fs::write(&p.config, format!("{good}\n[bogus]\nkey = 1\n")).unwrap();
    // `portico upgrade --config` reads the config to find the pid file: it refuses it
    let (code, _, err) = upgrade(&p, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("unknown key \"bogus\""), "{err}");
    // given the pid file, it signals; the new process refuses the config and says why
    let (code, _, err) = portico_cmd(
        &["upgrade", "--pid-file", pid_file.to_str().unwrap()],
        p.dir.path(),
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("before it was ready: configuration is invalid") && err.contains("bogus"),
        "{err}"
    );
    assert_eq!(pid_in(&pid_file), p.proc.pid());
    assert_eq!(curl(&[], &p.url("/echo")).status, 200);

    std::fs::write(&p.config, good).unwrap();
    let (code, out, err) = upgrade(&p, &[]);
    assert_eq!(code, 0, "{out}{err}\n{}", p.log_text());
    assert_ne!(pid_in(&pid_file), p.proc.pid());
    load.finish();
}

/// systemd's socket activation, with sockets the test binds itself: a TCP and a Unix
/// listening socket passed as descriptors 3 and 4 (`LISTEN_FDS`, `LISTEN_PID` the
/// process's own, as systemd sets them), matched to the config's listeners by address
/// whatever their order. A client that connected before Portico started is served
/// (its connection waited in the socket's backlog), and Portico's readiness, reload,
/// upgrade (`MAINPID=`) and stop reach `NOTIFY_SOCKET`.
#[test]
fn socket_activation_and_sd_notify() {
    use command_fds::{CommandFdExt, FdMapping};
    use std::os::fd::OwnedFd;
    let dir = tempfile::tempdir().unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port();
    let unix_path = dir.path().join("web.sock");
    let unix = std::os::unix::net::UnixListener::bind(&unix_path).unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let cfg = dir.path().join("portico.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[listeners]]\nlisten = [\"unix:{}\", \"127.0.0.1:{port}\"]\n  [[listeners.routes]]\n  path = \"/\"\n  return = {{ status = 200, body = \"activated\\n\" }}\n",
            unix_path.display()
        ),
    )
    .unwrap();
    // a client early: Portico is not running yet, the kernel queues the connection
    let mut early = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    early
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    early
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();

    let log = dir.path().join("portico.log");
    let logf = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new("sh");
    // LISTEN_PID must be the pid of the process that reads it: sh's own, kept by exec
    cmd.args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\""])
        .arg(portico_bin())
        .args(["run", "--config", cfg.to_str().unwrap()])
        .env("LISTEN_FDS", "2")
        .env("NOTIFY_SOCKET", &notify_path)
        .env_remove("PORTICO_BIN")
        .stdout(logf.try_clone().unwrap())
        .stderr(logf);
    cmd.fd_mappings(vec![
        FdMapping {
            parent_fd: OwnedFd::from(tcp),
            child_fd: 3,
        },
        FdMapping {
            parent_fd: OwnedFd::from(unix),
            child_fd: 4,
        },
    ])
    .unwrap();
    let mut p = Proc::spawn("portico", &mut cmd);
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1\n");
    let mut answer = String::new();
    early.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("activated\n"),
        "{answer}"
    );
    let r = Command::new("curl")
        .args([
            "-s",
            "--unix-socket",
            unix_path.to_str().unwrap(),
            "http://x/",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&r.stdout), "activated\n");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("2 inherited listening socket(s)"), "{text}");

    p.signal("HUP");
    let n = notify.recv(&mut buf).unwrap();
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{msg}");
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1\n");

    // an upgrade under systemd: the new process names itself the unit's main process,
    // on the sockets systemd passed; the old one drains without a word to systemd
    p.signal("USR2");
    let n = notify.recv(&mut buf).unwrap();
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    let new: u32 = msg
        .strip_prefix("MAINPID=")
        .and_then(|m| m.strip_suffix("\nREADY=1\n"))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("{msg:?}"));
    assert_ne!(new, p.pid());
    let _last = {
        let f = dir.path().join("new.pid");
        std::fs::write(&f, new.to_string()).unwrap();
        LastOne(f)
    };
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    let r = Command::new("curl")
        .args(["-s", &format!("http://127.0.0.1:{port}/")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&r.stdout), "activated\n");
    Command::new("kill")
        .args(["-TERM", &new.to_string()])
        .status()
        .unwrap();
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(
        &buf[..n],
        b"STOPPING=1\n",
        "the first word after MAINPID is the new one's"
    );
    wait_gone(new, Duration::from_secs(20));
}

/// The unit files in dist/systemd pass `systemd-analyze verify` (ExecStart pointed at
/// the binary under test, as an installed unit points at /usr/bin/portico; systemd's
/// package comes with peers/install.sh).
#[test]
fn systemd_units_verify() {
    let dir = tempfile::tempdir().unwrap();
    for unit in ["portico.service", "portico.socket"] {
        let text = std::fs::read_to_string(root().join("dist/systemd").join(unit)).unwrap();
        let text = text.replace("/usr/bin/portico", portico_bin().to_str().unwrap());
        std::fs::write(dir.path().join(unit), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.path().join("portico.service"))
        .arg(dir.path().join("portico.socket"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // warnings about the unit files themselves (not the host's other units)
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("portico.")).collect();
    assert!(ours.is_empty(), "{ours:#?}");
}

/// SIGUSR2 right after SIGHUP (an upgrade during a reload): the reload is applied, the
/// upgrade follows, and the new process serves the reloaded config and reloads itself.
/// A new binary that never reports ready is stopped after `upgrade_timeout`.
#[test]
fn an_upgrade_during_a_reload_and_a_binary_that_never_gets_ready() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("app.sock");
    let _app = gunicorn_unix(&sock, "hup", &[]);
    let base = web_config(&sock).replace(
        "shutdown_timeout = \"20s\"",
        "shutdown_timeout = \"20s\"\nupgrade_timeout = \"3s\"",
    );
    let p = Portico::start(&base);
    let pid_file = p.dir.path().join("portico.pid");
    let _last = LastOne(pid_file.clone());

    // a binary that starts and never says READY: stopped at the timeout
    let hang = p.dir.path().join("hanging-portico");
    let hang_pid = p.dir.path().join("hang.pid");
    std::fs::write(
        &hang,
        format!(
            "#!/bin/sh\necho $$ > {}\nexec sleep 600\n",
            hang_pid.display()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .args(["+x", hang.to_str().unwrap()])
        .status()
        .unwrap();
    let (code, _, err) = upgrade(&p, &["--binary", hang.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not ready within 3s"), "{err}");
    wait_gone(pid_in(&hang_pid), Duration::from_secs(10));
    assert_eq!(pid_in(&pid_file), p.proc.pid());

    // HUP then USR2 at once
    let with_static = format!(
        "{base}\n  [[listeners.routes]]\n  path = \"/files/\"\n  static = {{ root = \"{}\" }}\n",
        p.dir.path().display()
    )
    .replace("{port}", &p.port.to_string())
    .replace("{admin}", &p.admin_port.to_string())
    .replace("{dir}", &p.dir.path().display().to_string());
    for d in ["files", "other"] {
        std::fs::create_dir_all(p.dir.path().join(d)).unwrap();
        std::fs::write(p.dir.path().join(d).join("hello.txt"), "reloaded\n").unwrap();
    }
    std::fs::write(&p.config, &with_static).unwrap();
    p.proc.signal("HUP");
    let (code, out, err) = upgrade(&p, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let r = curl(&[], &p.url("/files/hello.txt"));
    assert_eq!((r.status, r.text().as_str()), (200, "reloaded\n"));
    // and the new process reloads as the old one did (through the pid file)
    std::fs::write(&p.config, with_static.replace("/files/", "/other/")).unwrap();
    let (code, out, err) = portico_cmd(
        &["reload", "--config", p.config.to_str().unwrap()],
        p.dir.path(),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("process {}", pid_in(&pid_file))),
        "{out}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while curl(&[], &p.url("/other/hello.txt")).status != 200 {
        assert!(Instant::now() < deadline, "{}", p.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}
