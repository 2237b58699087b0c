//! WebSocket tunnels through Portico to the `websockets` package's server, with its
//! client: echo of every message kind, close codes both ways, a backend dying
//! mid-stream, open sockets across a reload, SIGTERM's 1001, many sockets at once, a
//! refused upgrade followed by a pipelined request, and server-sent events unbuffered.

mod common;

use common::*;
use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

fn ws_config(ws_port: u16, extra: &str) -> String {
    format!(
        r#"{extra}
[upstreams.ws]
servers = [{{ addr = "127.0.0.1:{ws_port}" }}]
[[listeners]]
listen = ["127.0.0.1:{{port}}"]
  [[listeners.routes]]
  path = "/"
  upstream = "ws"
"#
    )
}

#[test]
fn messages_and_close_codes_pass_through() {
    let ws_port = free_port();
    let _ws = ws_echo(ws_port);
    let p = Portico::start(&ws_config(ws_port, ""));
    let r = ws_client(&format!("ws://127.0.0.1:{}/chat?room=1", p.port), "echo");
    assert_eq!(r["text"], "héllo");
    assert_eq!(r["binary"], "00ff62696e617279");
    assert_eq!(r["big_ok"], true, "4 MiB message");
    assert_eq!(r["fragmented"], "fragmented message");
    assert_eq!(r["pong"], true);
    assert_eq!(r["whoami"]["path"], "/chat?room=1");
    assert_eq!(r["whoami"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(r["client_close_code"], 4002);
    assert_eq!(r["server_close_code"], 4001);
}

#[test]
fn a_backend_dying_mid_stream_closes_the_client_promptly() {
    let ws_port = free_port();
    let mut ws = ws_echo(ws_port);
    let p = Portico::start(&ws_config(
        ws_port,
        "[admin]\nlisten = \"127.0.0.1:{admin}\"",
    ));
    let waiting = WsInteractive::start(&format!("ws://127.0.0.1:{}/", p.port), "wait_for_close");
    ws.kill();
    let r = waiting.result();
    assert!(
        r["ended"].as_str().unwrap().starts_with("ConnectionClosed"),
        "{r}"
    );
    let s = curl(&[], &format!("http://127.0.0.1:{}/status", p.admin_port)).json();
    assert!(
        s["upstreams"]["ws"]["servers"][0]["failures"]
            .as_u64()
            .unwrap()
            >= 1,
        "{s}"
    );
}

#[test]
fn open_sockets_survive_a_reload() {
    let ws_port = free_port();
    let _ws = ws_echo(ws_port);
    let p = Portico::start(&ws_config(ws_port, ""));
    let mut open = WsInteractive::start(&format!("ws://127.0.0.1:{}/", p.port), "hold_and_echo");
    assert!(p.reload(&ws_config(
        ws_port,
        "[log]\nlevel = \"info\"\naccess_log = \"off\""
    )));
    open.go_on();
    let r = open.result();
    assert_eq!(r["after"], "after");
}

#[test]
fn sigterm_drains_then_says_going_away() {
    let ws_port = free_port();
    let _ws = ws_echo(ws_port);
    let mut p = Portico::start(&ws_config(ws_port, "[runtime]\nshutdown_timeout = \"1s\""));
    let waiting = WsInteractive::start(&format!("ws://127.0.0.1:{}/", p.port), "wait_for_close");
    p.proc.signal("TERM");
    let r = waiting.result();
    assert_eq!(r["code"], 1001, "{r}");
    assert_eq!(p.proc.wait_exit(Duration::from_secs(30)), Some(0));
}

#[test]
fn a_thousand_sockets_at_once() {
    let ws_port = free_port();
    let _ws = ws_echo(ws_port);
    let p = Portico::start(&ws_config(ws_port, ""));
    let r = ws_client(&format!("ws://127.0.0.1:{}/", p.port), "many:1000");
    assert_eq!(r["ok"], 1000);
}

#[test]
fn a_refused_upgrade_is_a_normal_response_and_the_connection_goes_on() {
    let ws_port = free_port();
    let _ws = ws_echo(ws_port);
    let app = free_port();
    let _app = gunicorn_tcp(app, "plain", &[]);
    let p = Portico::start(&format!(
        r#"
[upstreams.ws]
servers = [{{ addr = "127.0.0.1:{ws_port}" }}]
[upstreams.app]
servers = [{{ addr = "127.0.0.1:{app}" }}]
[[listeners]]
listen = ["127.0.0.1:{{port}}"]
  [[listeners.routes]]
  path = "/ws/"
  upstream = "ws"
  [[listeners.routes]]
  path = "/"
  upstream = "app"
"#
    ));
    let (status, text) = raw_status(
        p.addr(),
        b"GET /ws/forbidden HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 403, "{text}");
    assert!(
        text.contains("hello from plain"),
        "the pipelined request was answered: {text}"
    );
}

#[test]
fn server_sent_events_are_not_buffered() {
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let app = free_port();
    let _app = gunicorn_tcp(app, "sse", &[("SSE_GATE", gate.to_str().unwrap())]);
    let p = Portico::start(&proxy_config(&format!("127.0.0.1:{app}"), ""));
    let mut s = std::net::TcpStream::connect(p.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /events HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    // The app sends the first event, then waits for the gate file before the second:
    // the first must reach us while the app is still waiting.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("data: first") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(!String::from_utf8_lossy(&seen).contains("data: second"));
    std::fs::write(&gate, "").unwrap();
    s.read_to_end(&mut seen).unwrap();
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("text/event-stream"), "{text}");
    assert!(text.contains("data: second"), "{text}");
}

#[test]
fn uvicorn_asgi_websockets_too() {
    let app = free_port();
    let _app = uvicorn_tcp(app);
    let p = Portico::start(&proxy_config(&format!("127.0.0.1:{app}"), ""));
    let mut open = WsInteractive::start(&format!("ws://127.0.0.1:{}/ws", p.port), "hold_and_echo");
    open.go_on();
    let r = open.result();
    assert_eq!(
        (r["before"].as_str(), r["after"].as_str()),
        (Some("before"), Some("after"))
    );
}

/// RFC 8441: WebSocket over an h2 stream (extended CONNECT) from the client, HTTP/1.1
/// Upgrade towards the `websockets` server. nginx cannot do this.
#[test]
fn websocket_over_h2_extended_connect() {
    use bytes::Bytes;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let ws_port = free_port();
    let _ws = ws_echo(ws_port);
    let p = Portico::start(&ws_config(ws_port, ""));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(p.addr()).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake::<_, http_body_util::Empty<Bytes>>(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        // The server's SETTINGS (which enable extended CONNECT) arrive just after the
        // handshake: retry until the client has seen them (bounded).
        let mut resp = None;
        for _ in 0..200 {
            let mut req = hyper::Request::builder()
                .method(hyper::Method::CONNECT)
                .version(hyper::Version::HTTP_2)
                .uri(format!("http://127.0.0.1:{}/chat", p.port))
                .header("sec-websocket-version", "13")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            req.extensions_mut()
                .insert(hyper::ext::Protocol::from_static("websocket"));
            match send.send_request(req).await {
                Ok(r) => {
                    resp = Some(r);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        let mut resp = resp.expect("extended CONNECT accepted");
        assert_eq!(resp.status(), 200);
        let mut io = TokioIo::new(hyper::upgrade::on(&mut resp).await.unwrap());
        // a masked text frame "hello"
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | 5];
        frame.extend(mask);
        frame.extend(b"hello".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        io.write_all(&frame).await.unwrap();
        let mut echo = [0u8; 7];
        io.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"\x81\x05hello");
    });
}

#[test]
fn frames_sent_with_the_handshake_arrive_after_the_101_and_tunnels_count_as_active() {
    let ws_port = free_port();
    let _ws = ws_echo(ws_port);
    let p = Portico::start(&ws_config(
        ws_port,
        "[admin]\nlisten = \"127.0.0.1:{admin}\"",
    ));
    let mut s = std::net::TcpStream::connect(p.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // the handshake and a masked text frame "hi", in one write, before any answer
    let mut bytes = b"GET /x HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec();
    let mask = [9u8, 8, 7, 6];
    bytes.extend([0x81, 0x82]);
    bytes.extend(mask);
    bytes.extend(b"hi".iter().enumerate().map(|(i, b)| b ^ mask[i]));
    s.write_all(&bytes).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"\x81\x02hi") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // the open tunnel is a request in flight for the balancer (least_conn counts it)
    let st = curl(&[], &format!("http://127.0.0.1:{}/status", p.admin_port)).json();
    assert_eq!(st["upstreams"]["ws"]["servers"][0]["active"], 1, "{st}");
}

/// An upgrade whose server cannot be reached goes to the next server, as a plain request
/// does (`next_upstream = ["error"]`, the default); with `next_upstream = ["off"]` the
/// client gets the 502.
#[test]
fn an_upgrade_fails_over_to_the_next_server() {
    let ws_port = free_port();
    let dead = free_port();
    let _ws = ws_echo(ws_port);
    for (policy, works) in [("", true), (r#"next_upstream = ["off"]"#, false)] {
        let p = Portico::start(&format!(
            r#"[upstreams.ws]
servers = [{{ addr = "127.0.0.1:{dead}", max_fails = 0 }}, {{ addr = "127.0.0.1:{ws_port}", max_fails = 0 }}]
{policy}
[[listeners]]
listen = ["127.0.0.1:{{port}}"]
  [[listeners.routes]]
  path = "/"
  upstream = "ws"
"#
        ));
        // Round-robin: of two upgrades, one is sent to the dead server first.
        let codes: Vec<String> = (0..2).map(|_| upgrade_status(p.port)).collect();
        let opened = codes.iter().filter(|c| *c == "101").count();
        if works {
            assert_eq!(opened, 2, "{policy}: {codes:?}");
        } else {
            assert_eq!(opened, 1, "{policy}: {codes:?}");
            assert!(codes.contains(&"502".to_string()), "{codes:?}");
        }
    }
}

/// The status line's code of a WebSocket upgrade through Portico on `port` (curl stops
/// after a 101, at its time limit).
fn upgrade_status(port: u16) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "1",
        ])
        .args(["-H", "Connection: Upgrade", "-H", "Upgrade: websocket"])
        .args(["-H", "Sec-WebSocket-Version: 13"])
        .args(["-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="])
        .arg(format!("http://127.0.0.1:{port}/chat"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
