//! In-process tests of the listener core with a tiny line-echo service.

use std::sync::Arc;
use std::time::Duration;

use portico_config::ListenAddr;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};

use super::*;

/// Writes "<tag> <peer> <tls-sni>\n" then echoes lines; "STARTTLS\n" upgrades.
struct Echo(&'static str);

impl Service for Echo {
    fn serve(self: Arc<Self>, conn: Connection) -> BoxFuture {
        done(async move {
            let mut conn = conn;
            loop {
                let hello = format!(
                    "{} {:?} {:?}\n",
                    self.0,
                    conn.info.peer.map(|p| p.ip()),
                    conn.info.tls.as_ref().and_then(|t| t.sni.clone())
                );
                if conn.stream.write_all(hello.as_bytes()).await.is_err() {
                    return;
                }
                let mut line = Vec::new();
                loop {
                    let mut b = [0u8; 1];
                    tokio::select! {
                        _ = conn.shutdown.cancelled() => {
                            let _ = conn.stream.write_all(b"bye\n").await;
                            return;
                        }
                        r = conn.stream.read(&mut b) => match r {
                            Ok(1) => line.push(b[0]),
                            _ => return,
                        }
                    }
                    if b[0] == b'\n' {
                        break;
                    }
                }
                if line == b"STARTTLS\n" && conn.can_start_tls() {
                    match conn.start_tls().await {
                        Ok(c) => {
                            conn = c;
                            continue;
                        }
                        Err(_) => return,
                    }
                }
                if conn.stream.write_all(&line).await.is_err() {
                    return;
                }
            }
        })
    }
}

fn spec(addr: ListenAddr, tag: &'static str) -> EndpointSpec {
    EndpointSpec {
        addr,
        name: tag.into(),
        tls: TlsMode::Off,
        proxy_protocol: false,
        handshake_timeout: Duration::from_secs(5),
        max_connections: 100,
        service: Arc::new(Echo(tag)),
    }
}

fn free_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

async fn first_line<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    line
}

#[tokio::test]
async fn tcp_and_unix_connections_reach_the_service() {
    let set = ListenerSet::new(2).unwrap();
    let tcp = free_port();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("p.sock");
    set.apply(vec![
        spec(ListenAddr::Tcp(tcp), "a"),
        spec(ListenAddr::Unix(sock.clone()), "u"),
    ])
    .unwrap();
    let mut c = TcpStream::connect(tcp).await.unwrap();
    assert_eq!(first_line(&mut c).await, "a Some(127.0.0.1) None\n");
    let mut u = UnixStream::connect(&sock).await.unwrap();
    assert_eq!(first_line(&mut u).await, "u None None\n");
    assert!(set.shutdown(Duration::from_secs(5)).await);
    assert!(!sock.exists(), "the socket file is removed on shutdown");
}

#[tokio::test]
async fn reload_swaps_the_service_for_new_connections_only() {
    let set = ListenerSet::new(2).unwrap();
    let tcp = free_port();
    set.apply(vec![spec(ListenAddr::Tcp(tcp), "old")]).unwrap();
    let mut before = TcpStream::connect(tcp).await.unwrap();
    assert!(first_line(&mut before).await.starts_with("old"));
    set.apply(vec![spec(ListenAddr::Tcp(tcp), "new")]).unwrap();
    let mut after = TcpStream::connect(tcp).await.unwrap();
    assert!(first_line(&mut after).await.starts_with("new"));
    // the old connection still works
    before.write_all(b"ping\n").await.unwrap();
    let mut buf = [0u8; 5];
    before.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping\n");
}

#[tokio::test]
async fn a_failed_bind_changes_nothing() {
    let set = ListenerSet::new(2).unwrap();
    let a = free_port();
    set.apply(vec![spec(ListenAddr::Tcp(a), "a")]).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = taken.local_addr().unwrap();
    let err = set.apply(vec![spec(ListenAddr::Tcp(b), "b")]).unwrap_err();
    assert_eq!(err.0, ListenAddr::Tcp(b));
    let mut c = TcpStream::connect(a).await.unwrap();
    assert!(first_line(&mut c).await.starts_with('a'));
}

#[tokio::test]
async fn connection_limit_holds_new_clients_until_a_slot_frees() {
    let set = ListenerSet::new(2).unwrap();
    let tcp = free_port();
    let mut s = spec(ListenAddr::Tcp(tcp), "l");
    s.max_connections = 1;
    set.apply(vec![s]).unwrap();
    let mut first = TcpStream::connect(tcp).await.unwrap();
    first_line(&mut first).await;
    let mut second = TcpStream::connect(tcp).await.unwrap();
    let mut buf = [0u8; 1];
    let waited = tokio::time::timeout(Duration::from_millis(200), second.read(&mut buf)).await;
    assert!(
        waited.is_err(),
        "the second client is not served while the first is open"
    );
    drop(first);
    assert!(first_line(&mut second).await.starts_with('l'));
}

#[tokio::test]
async fn shutdown_tells_connections_and_waits() {
    let set = ListenerSet::new(2).unwrap();
    let tcp = free_port();
    set.apply(vec![spec(ListenAddr::Tcp(tcp), "s")]).unwrap();
    let mut c = TcpStream::connect(tcp).await.unwrap();
    first_line(&mut c).await;
    assert!(set.shutdown(Duration::from_secs(5)).await);
    let mut rest = String::new();
    c.read_to_string(&mut rest).await.unwrap();
    assert_eq!(rest, "bye\n");
    assert!(
        TcpStream::connect(tcp).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn proxy_protocol_sets_the_peer() {
    let set = ListenerSet::new(2).unwrap();
    let tcp = free_port();
    let mut s = spec(ListenAddr::Tcp(tcp), "p");
    s.proxy_protocol = true;
    set.apply(vec![s]).unwrap();
    let mut c = TcpStream::connect(tcp).await.unwrap();
    c.write_all(b"PROXY TCP4 203.0.113.9 127.0.0.1 4000 80\r\n")
        .await
        .unwrap();
    assert_eq!(first_line(&mut c).await, "p Some(203.0.113.9) None\n");
    let mut bad = TcpStream::connect(tcp).await.unwrap();
    bad.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    let _ = bad.read_to_end(&mut rest).await;
    assert!(
        rest.is_empty(),
        "a connection without the header is closed unserved"
    );
}

struct TestCerts {
    _dir: tempfile::TempDir,
    specs: Vec<CertSpec>,
    roots: rustls::RootCertStore,
}

fn certs(names: &[&str]) -> TestCerts {
    let dir = tempfile::tempdir().unwrap();
    let mut specs = Vec::new();
    let mut roots = rustls::RootCertStore::empty();
    for (i, n) in names.iter().enumerate() {
        let ck = rcgen::generate_simple_self_signed(vec![n.to_string()]).unwrap();
        let cert = dir.path().join(format!("{i}.crt"));
        let key = dir.path().join(format!("{i}.key"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        roots.add(ck.cert.der().clone()).unwrap();
        specs.push(CertSpec {
            names: vec![n.to_string()],
            files: vec![portico_config::CertFiles {
                cert,
                key,
                ocsp: None,
            }],
        });
    }
    TestCerts {
        _dir: dir,
        specs,
        roots,
    }
}

fn client(roots: rustls::RootCertStore) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

#[tokio::test]
async fn tls_picks_the_certificate_by_sni() {
    let c = certs(&["a.test", "b.test"]);
    let acceptor =
        tls::build_acceptor(&c.specs, &["http/1.1".into()], &tls::TlsOptions::default()).unwrap();
    let set = ListenerSet::new(2).unwrap();
    let tcp = free_port();
    let mut s = spec(ListenAddr::Tcp(tcp), "t");
    s.tls = TlsMode::Implicit(acceptor);
    set.apply(vec![s]).unwrap();
    for name in ["a.test", "b.test"] {
        let tcp_stream = TcpStream::connect(tcp).await.unwrap();
        let sn = rustls_pki_types::ServerName::try_from(name.to_string()).unwrap();
        // verification succeeds only if the server sent the certificate for `name`
        let mut tls = client(c.roots.clone())
            .connect(sn, tcp_stream)
            .await
            .unwrap();
        // the server's order wins: rustls's client lists AES-256-GCM first
        assert_eq!(
            tls.get_ref().1.negotiated_cipher_suite().map(|c| c.suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
        assert_eq!(
            first_line(&mut tls).await,
            format!("t Some(127.0.0.1) Some({name:?})\n")
        );
    }
}

#[tokio::test]
async fn starttls_upgrades_mid_session() {
    let c = certs(&["mail.test"]);
    let acceptor = tls::build_acceptor(&c.specs, &[], &tls::TlsOptions::default()).unwrap();
    let set = ListenerSet::new(2).unwrap();
    let tcp = free_port();
    let mut s = spec(ListenAddr::Tcp(tcp), "m");
    s.tls = TlsMode::StartTls(acceptor);
    set.apply(vec![s]).unwrap();
    let mut plain = TcpStream::connect(tcp).await.unwrap();
    assert_eq!(first_line(&mut plain).await, "m Some(127.0.0.1) None\n");
    plain.write_all(b"STARTTLS\n").await.unwrap();
    let sn = rustls_pki_types::ServerName::try_from("mail.test").unwrap();
    let mut tls = client(c.roots.clone()).connect(sn, plain).await.unwrap();
    assert_eq!(
        first_line(&mut tls).await,
        "m Some(127.0.0.1) Some(\"mail.test\")\n"
    );
}

#[test]
fn tls_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("missing.crt");
    let err = tls::build_acceptor(
        &[CertSpec {
            names: vec![],
            files: vec![portico_config::CertFiles {
                cert: cert.clone(),
                key: cert.clone(),
                ocsp: None,
            }],
        }],
        &[],
        &tls::TlsOptions::default(),
    )
    .err()
    .unwrap();
    assert!(matches!(err, tls::TlsError::Cert { path, .. } if path == cert));
}

#[tokio::test]
async fn a_port_another_process_shares_with_so_reuseport_is_refused() {
    // What a second portico with several workers holds: listeners with SO_REUSEPORT.
    let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    other.set_reuse_port(true).unwrap();
    other.bind(&free_port().into()).unwrap();
    other.listen(16).unwrap();
    let addr = other.local_addr().unwrap().as_socket().unwrap();
    let set = ListenerSet::new(2).unwrap();
    let (failed, e) = set
        .apply(vec![spec(ListenAddr::Tcp(addr), "second")])
        .unwrap_err();
    assert_eq!(failed, ListenAddr::Tcp(addr));
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    // Free, the same address binds with every worker sharing it.
    drop(other);
    set.apply(vec![spec(ListenAddr::Tcp(addr), "second")])
        .unwrap();
    let mut c = TcpStream::connect(addr).await.unwrap();
    assert!(first_line(&mut c).await.starts_with("second"));
}

#[tokio::test]
async fn a_wildcard_v6_listener_takes_ipv4_too_unless_0_0_0_0_is_listed() {
    let port = free_port().port();
    let set = ListenerSet::new(1).unwrap();
    let v6: std::net::SocketAddr = format!("[::]:{port}").parse().unwrap();
    set.apply(vec![spec(ListenAddr::Tcp(v6), "d")]).unwrap();
    let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert_eq!(
        first_line(&mut c).await,
        "d Some(127.0.0.1) None\n",
        "IPv4 through [::], seen as IPv4"
    );
    drop(c);
    assert!(set.shutdown(Duration::from_secs(5)).await);

    // both listed: each takes its own family, as nginx's default
    let port = free_port().port();
    let set = ListenerSet::new(1).unwrap();
    let v4: std::net::SocketAddr = format!("0.0.0.0:{port}").parse().unwrap();
    let v6: std::net::SocketAddr = format!("[::]:{port}").parse().unwrap();
    set.apply(vec![
        spec(ListenAddr::Tcp(v4), "four"),
        spec(ListenAddr::Tcp(v6), "six"),
    ])
    .unwrap();
    let mut c4 = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert!(first_line(&mut c4).await.starts_with("four "));
    let mut c6 = TcpStream::connect(("::1", port)).await.unwrap();
    assert!(first_line(&mut c6).await.starts_with("six "));
}

/// Echoes one line per turn, then hands the connection back idle for 1.5 s — parked.
struct Parker;

impl Service for Parker {
    fn serve(self: Arc<Self>, conn: Connection) -> BoxFuture {
        Parker::turn(conn.stream, conn.shutdown)
    }
}

impl Parker {
    fn turn(mut stream: Stream, shutdown: CancellationToken) -> BoxFuture {
        Box::pin(async move {
            let mut line = Vec::new();
            loop {
                let mut b = [0u8; 1];
                tokio::select! {
                    _ = shutdown.cancelled() => return Served::Done,
                    r = stream.read(&mut b) => match r {
                        Ok(1) => line.push(b[0]),
                        _ => return Served::Done,
                    }
                }
                if b[0] == b'\n' {
                    break;
                }
            }
            if stream.write_all(&line).await.is_err() {
                return Served::Done;
            }
            Served::Idle(Idle {
                stream,
                until: tokio::time::Instant::now() + Duration::from_millis(1500),
                resume: Box::new(move |s| Parker::turn(s, shutdown)),
            })
        })
    }
}

async fn echo(c: &mut TcpStream, line: &[u8]) -> Vec<u8> {
    c.write_all(line).await.unwrap();
    let mut got = vec![0u8; line.len()];
    c.read_exact(&mut got).await.unwrap();
    got
}

#[tokio::test]
async fn parked_connections_come_back_keep_their_own_deadline_and_drain() {
    let set = ListenerSet::new(1).unwrap();
    let tcp = free_port();
    let mut s = spec(ListenAddr::Tcp(tcp), "p");
    s.service = Arc::new(Parker);
    set.apply(vec![s]).unwrap();
    let stats = || set.stats()[0].2.clone();
    let waiting = |n: usize| async move {
        for _ in 0..500 {
            if stats().waiting.load(std::sync::atomic::Ordering::Relaxed) == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never {n} waiting");
    };
    let mut c = TcpStream::connect(tcp).await.unwrap();
    assert_eq!(echo(&mut c, b"one\n").await, b"one\n");
    waiting(1).await;
    // resumed at 1 s: a new deadline (2.5 s); the first one (1.5 s) must not close it
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(echo(&mut c, b"two\n").await, b"two\n");
    waiting(1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(echo(&mut c, b"three\n").await, b"three\n");
    // then silent: closed at its deadline, and no longer counted
    let mut rest = Vec::new();
    assert_eq!(c.read_to_end(&mut rest).await.unwrap(), 0);
    waiting(0).await;
    assert_eq!(stats().active.load(std::sync::atomic::Ordering::Relaxed), 0);
    // shutdown resumes what is parked at once (its service drains it), long before
    // its deadline
    let mut d = TcpStream::connect(tcp).await.unwrap();
    assert_eq!(echo(&mut d, b"four\n").await, b"four\n");
    waiting(1).await;
    assert!(set.shutdown(Duration::from_millis(1000)).await);
    assert_eq!(d.read_to_end(&mut rest).await.unwrap(), 0);
}

/// `Stream::set_cork` sets and clears TCP_CORK on a TCP socket (the file sender corks
/// the head and the file together, then uncorks to send the tail), and is a no-op on a
/// Unix socket.
#[tokio::test]
async fn cork_sets_and_clears_tcp_cork() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (server, _) = l.accept().await.unwrap();
    let s = Stream::Tcp(server);
    let corked = |s: &Stream| match s {
        Stream::Tcp(t) => socket2::SockRef::from(t).tcp_cork().unwrap(),
        _ => unreachable!(),
    };
    assert!(!corked(&s));
    s.set_cork(true).unwrap();
    assert!(corked(&s));
    s.set_cork(false).unwrap();
    assert!(!corked(&s));
    drop(client);
    let (a, _b) = UnixStream::pair().unwrap();
    Stream::Unix(a).set_cork(true).unwrap();
}

/// `Stream::poll_send_file` sends a head and then a file region, whole and in order,
/// both ways (sendfile(2), and a copy through the thread's scratch buffer) and over
/// TCP and Unix sockets, to a reader slower than the sender: the socket takes part of
/// what it is offered (the copy then reads the rest again), and every byte arrives
/// once.
#[tokio::test]
async fn send_file_sends_head_and_region_whole_to_a_slow_reader() {
    use std::io::Write;
    let mut x: u32 = 7;
    let data: Vec<u8> = (0..COPY_CHUNK * 3 + 4321)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&data).unwrap();
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n".to_vec();
    let (offset, len) = (100u64, data.len() - 100 - 50);
    let mut want = head.clone();
    want.extend_from_slice(&data[100..100 + len]);
    for how in [FileSend::Copy, FileSend::Sendfile] {
        for tcp in [true, false] {
            let (server, mut client): (Stream, Box<dyn tokio::io::AsyncRead + Unpin + Send>) =
                if tcp {
                    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
                    socket2::SockRef::from(&c)
                        .set_recv_buffer_size(64 * 1024)
                        .unwrap();
                    let (s, _) = l.accept().await.unwrap();
                    socket2::SockRef::from(&s)
                        .set_send_buffer_size(64 * 1024)
                        .unwrap();
                    (Stream::Tcp(s), Box::new(c))
                } else {
                    let (s, c) = UnixStream::pair().unwrap();
                    (Stream::Unix(s), Box::new(c))
                };
            let reader = tokio::spawn(async move {
                let mut got = Vec::new();
                let mut piece = [0u8; 16 * 1024];
                loop {
                    let n = client.read(&mut piece).await.unwrap();
                    if n == 0 {
                        return got;
                    }
                    got.extend_from_slice(&piece[..n]);
                    tokio::task::yield_now().await;
                }
            });
            let (mut h, mut done, mut short) = (&head[..], 0usize, 0);
            while done < len || !h.is_empty() {
                let c = FileChunk {
                    head: h,
                    file: &file,
                    offset: offset + done as u64,
                    len: len - done,
                    how,
                };
                let n = std::future::poll_fn(|cx| server.poll_send_file(cx, &c))
                    .await
                    .unwrap();
                assert!(
                    n > 0,
                    "{how:?} tcp={tcp}: nothing sent with {done} of {len}"
                );
                if n < h.len() + (len - done).min(COPY_CHUNK - h.len().min(COPY_CHUNK)) {
                    short += 1;
                }
                let taken = n.min(h.len());
                h = &h[taken..];
                done += n - taken;
            }
            drop(server);
            let got = reader.await.unwrap();
            assert_eq!(got.len(), want.len(), "{how:?} tcp={tcp}");
            assert!(got == want, "{how:?} tcp={tcp}: the bytes differ");
            if how == FileSend::Copy {
                assert!(
                    short > 0,
                    "tcp={tcp}: the socket always took all it was offered"
                );
            }
        }
    }
    // past the file's end: nothing to send
    let (s, _c) = UnixStream::pair().unwrap();
    let s = Stream::Unix(s);
    let c = FileChunk {
        head: b"",
        file: &file,
        offset: data.len() as u64,
        len: 10,
        how: FileSend::Copy,
    };
    assert_eq!(
        std::future::poll_fn(|cx| s.poll_send_file(cx, &c))
            .await
            .unwrap(),
        0
    );
}
