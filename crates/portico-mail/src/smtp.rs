//! SMTP: the session before authentication as nginx's mail proxy answers it (EHLO/HELO,
//! STARTTLS, AUTH PLAIN/LOGIN, RSET, NOOP, QUIT; MAIL before AUTH refused), then the
//! backend handshake — its greeting, EHLO, XCLIENT (ADDR, LOGIN, NAME) when the backend
//! advertises it and then the client's EHLO again — and the tunnel.

use std::time::Duration;

use crate::io::{write_all, LineIo, ReadError};
use crate::session::{Credentials, Sasl, Session, Settled};

const INVALID: &[u8] = b"500 5.5.1 Invalid command\r\n";

/// An SMTP command: its verb upper-cased and the rest of the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub verb: String,
    pub rest: Vec<u8>,
}

pub fn parse(line: &[u8]) -> Option<Command> {
    let end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let verb = &line[..end];
    if verb.is_empty() || verb.len() > 10 || !verb.iter().all(u8::is_ascii_alphabetic) {
        return None;
    }
    Some(Command {
        verb: String::from_utf8_lossy(verb).to_ascii_uppercase(),
        rest: line
            .get(end + 1..)
            .unwrap_or_default()
            .trim_ascii()
            .to_vec(),
    })
}

/// One reply: its code and its lines' texts (multi-line replies joined).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<Vec<u8>>,
}

impl Reply {
    /// The reply as it goes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, l) in self.lines.iter().enumerate() {
            let sep = if i + 1 < self.lines.len() { "-" } else { " " };
            out.extend_from_slice(format!("{}{sep}", self.code).as_bytes());
            out.extend_from_slice(l);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// Whether a line of an EHLO reply names `keyword` (e.g. XCLIENT).
    pub fn has_keyword(&self, keyword: &[u8]) -> bool {
        self.lines.iter().any(|l| {
            l.split(|&b| b == b' ')
                .next()
                .is_some_and(|w| w.eq_ignore_ascii_case(keyword))
        })
    }
}

/// Reads a (multi-line) reply: `250-a`, `250-b`, `250 c`.
pub async fn read_reply(
    io: &mut LineIo,
    s: &mut crate::backend::BackendStream,
    t: Duration,
) -> Result<Reply, String> {
    let mut lines = Vec::new();
    loop {
        let line = io.read_line(s, 4096, t).await.map_err(|e| e.to_string())?;
        let (code, more, text) = parse_reply_line(&line)
            .ok_or_else(|| format!("bad reply line {:?}", String::from_utf8_lossy(&line)))?;
        lines.push(text.to_vec());
        if !more {
            return Ok(Reply { code, lines });
        }
        if lines.len() > 100 {
            return Err("reply longer than 100 lines".into());
        }
    }
}

/// One reply line: its code, whether more lines follow (`250-`), and its text.
pub fn parse_reply_line(line: &[u8]) -> Option<(u16, bool, &[u8])> {
    let digits = line.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let code = std::str::from_utf8(digits).ok()?.parse::<u16>().ok()?;
    let more = match line.get(3) {
        Some(b'-') => true,
        Some(b' ') | None => false,
        Some(_) => return None,
    };
    Some((code, more, line.get(4..).unwrap_or_default()))
}

/// The SMTP front end.
pub struct Smtp;

impl Smtp {
    fn host(s: &Session) -> &str {
        s.cfg.server_name.as_str()
    }

    fn ehlo_reply(s: &Session) -> String {
        let host = Self::host(s);
        let mut lines = vec![host.to_string()];
        lines.extend(s.cfg.capabilities.iter().cloned());
        if s.starttls_offered() {
            lines.push("STARTTLS".into());
        }
        let methods: Vec<&str> = s
            .cfg
            .auth_methods
            .iter()
            .map(String::as_str)
            .filter(|m| *m != "NONE")
            .collect();
        if !s.starttls_required() && !methods.is_empty() {
            lines.push(format!("AUTH {}", methods.join(" ")));
        }
        let n = lines.len();
        lines
            .iter()
            .enumerate()
            .map(|(i, l)| format!("250{}{l}\r\n", if i + 1 < n { "-" } else { " " }))
            .collect()
    }

    pub async fn serve(mut s: Session) {
        let greeting = format!(
            "220 {} {}\r\n",
            Self::host(&s),
            s.cfg.greeting.as_deref().unwrap_or("ESMTP ready")
        );
        if s.send(greeting.as_bytes()).await.is_err() {
            return;
        }
        let mut helo: Option<(bool, Vec<u8>)> = None;
        // With auth = ["none"]: the MAIL command waiting for its first RCPT.
        let mut mail_from: Option<Vec<u8>> = None;
        let relay = s.cfg.auth_methods.iter().any(|m| m == "NONE");
        loop {
            let line = match s.line().await {
                Ok(l) => l,
                Err(ReadError::TooLong(_)) => {
                    if Self::invalid(&mut s).await.is_err() {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    s.log_end(&e);
                    return;
                }
            };
            let Some(cmd) = parse(&line) else {
                if Self::invalid(&mut s).await.is_err() {
                    return;
                }
                continue;
            };
            let r = match cmd.verb.as_str() {
                "EHLO" | "HELO" if !cmd.rest.is_empty() => {
                    let ehlo = cmd.verb == "EHLO";
                    helo = Some((ehlo, cmd.rest));
                    let reply = if ehlo {
                        Self::ehlo_reply(&s)
                    } else {
                        format!("250 {}\r\n", Self::host(&s))
                    };
                    s.send(reply.as_bytes()).await
                }
                "EHLO" | "HELO" => s.send(b"501 5.5.4 Invalid argument\r\n").await,
                "NOOP" => s.send(b"250 2.0.0 OK\r\n").await,
                "RSET" => {
                    mail_from = None;
                    s.send(b"250 2.0.0 OK\r\n").await
                }
                "MAIL" if relay && helo.is_some() && !s.starttls_required() => {
                    mail_from = Some(line.clone());
                    s.send(b"250 2.1.0 OK\r\n").await
                }
                "RCPT" if relay && mail_from.is_some() => {
                    let creds = Credentials::new("none", Vec::new(), Vec::new());
                    let hello = helo.clone().unwrap_or((true, b"localhost".to_vec()));
                    let envelope = (mail_from.clone().unwrap_or_default(), line.clone());
                    let Some(back) = Self::login(s, creds, hello, Some(envelope)).await else {
                        return;
                    };
                    s = back;
                    Ok(())
                }
                "RCPT" | "DATA" if relay => s.send(b"503 5.5.1 Error: need MAIL command\r\n").await,
                "QUIT" => {
                    let _ = s.send(b"221 2.0.0 Bye\r\n").await;
                    return;
                }
                "STARTTLS" if s.starttls_offered() => {
                    match s.start_tls(b"220 2.0.0 Start TLS\r\n").await {
                        Some(next) => {
                            s = next;
                            helo = None; // RFC 3207: the client starts over with EHLO
                            Ok(())
                        }
                        None => return,
                    }
                }
                "MAIL" | "RCPT" | "DATA" => s.send(b"530 5.7.1 Authentication required\r\n").await,
                "AUTH" if helo.is_none() => {
                    s.send(b"503 5.5.1 Error: send HELO/EHLO first\r\n").await
                }
                "AUTH" if !s.starttls_required() => {
                    let got = Self::authenticate(&mut s, &cmd.rest).await;
                    let hello = helo.clone().unwrap_or((true, b"localhost".to_vec()));
                    let login = |s, creds| Self::login(s, creds, hello, None);
                    let Some(back) = s.login_after(got, login).await else {
                        return;
                    };
                    s = back;
                    Ok(())
                }
                _ => Self::invalid(&mut s).await,
            };
            if r.is_err() {
                return;
            }
        }
    }

    async fn invalid(s: &mut Session) -> std::io::Result<()> {
        s.reject(INVALID).await
    }

    async fn authenticate(s: &mut Session, rest: &[u8]) -> Result<Option<Credentials>, ReadError> {
        let mut words = rest.split(|&b| b == b' ').filter(|w| !w.is_empty());
        let mech = words.next().unwrap_or_default().to_vec();
        let initial = words.next().map(<[u8]>::to_vec);
        let reply: &[u8] = match s.sasl(&mech, initial, b"334 ").await? {
            Sasl::Credentials(c) => return Ok(Some(c)),
            Sasl::Cancelled => b"501 5.7.0 Authentication cancelled\r\n",
            Sasl::Unsupported => b"504 5.5.4 Unrecognized authentication type\r\n",
            Sasl::Invalid => b"501 5.5.2 Invalid authentication data\r\n",
        };
        s.send(reply).await?;
        Ok(None)
    }

    /// A login (AUTH), or with `envelope` (MAIL and RCPT lines, `auth = ["none"]`) a
    /// lookup that lets the auth server decide per recipient: no open relay.
    async fn login(
        s: Session,
        creds: Credentials,
        helo: (bool, Vec<u8>),
        envelope: Option<(Vec<u8>, Vec<u8>)>,
    ) -> Option<Session> {
        let extra = crate::auth_http::AuthRequest {
            client_host: Some("[UNAVAILABLE]".into()),
            smtp_helo: Some(helo.1.clone()),
            smtp_from: envelope.as_ref().map(|e| e.0.clone()),
            smtp_to: envelope.as_ref().map(|e| e.1.clone()),
            ..Default::default()
        };
        let handshake = Handshake {
            helo: helo.clone(),
            client_ip: s.client_ip(),
            xclient: s.cfg.xclient,
            envelope: envelope.clone(),
            starttls: s.backend_starttls(),
            auth: s.cfg.backend_auth.clone(),
        };
        let refused = |status: &str, code: Option<&str>| {
            format!("{} {status}\r\n", code.unwrap_or("535 5.7.0"))
        };
        let outcome = s.authorize_with(creds, "smtp", extra).await;
        match outcome
            .settle(refused, b"451 4.3.2 Internal server error\r\n")
            .await
        {
            Settled::Retry(session) => Some(session),
            Settled::Closed => None,
            Settled::Backend(b) => {
                b.run(move |io, stream, creds, t| {
                    Box::pin(backend_login(io, stream, creds, handshake, t))
                })
                .await;
                None
            }
        }
    }
}

/// The backend handshake as nginx does it: greeting; EHLO; when the backend advertises
/// XCLIENT, `XCLIENT ADDR=… LOGIN=… NAME=[UNAVAILABLE]` and the client's EHLO (or HELO)
/// again; then the client gets `235 2.0.0 OK`. With an `envelope` (no AUTH), the MAIL
/// and RCPT commands are replayed instead and the client gets the backend's answer to
/// RCPT.
/// What the backend handshake needs from the client side.
#[derive(Debug, Clone)]
struct Handshake {
    /// The client's greeting: EHLO (true) or HELO, and its name.
    helo: (bool, Vec<u8>),
    client_ip: Option<std::net::IpAddr>,
    xclient: bool,
    /// MAIL and RCPT to replay (relay to MX, no AUTH).
    envelope: Option<(Vec<u8>, Vec<u8>)>,
    /// STARTTLS to the backend first.
    starttls: Option<crate::backend::BackendTls>,
    /// AUTH to the backend: "plain" or "login".
    auth: Option<String>,
}

async fn backend_login(
    io: &mut LineIo,
    b: &mut crate::backend::BackendStream,
    creds: &Credentials,
    h: Handshake,
    t: Duration,
) -> Result<Vec<u8>, Vec<u8>> {
    let Handshake {
        helo,
        client_ip,
        xclient,
        envelope,
        starttls,
        auth,
    } = h;
    let fail = |why: &str| -> Vec<u8> {
        tracing::warn!("SMTP backend handshake failed: {why}");
        b"451 4.3.2 Internal server error\r\n".to_vec()
    };
    let greeting = read_reply(io, b, t).await.map_err(|e| fail(&e))?;
    if greeting.code != 220 {
        return Err(fail(&format!("greeting {}", greeting.code)));
    }
    let (ehlo, name) = helo;
    let hello = [
        if ehlo { &b"EHLO "[..] } else { &b"HELO "[..] },
        &name[..],
        b"\r\n",
    ]
    .concat();
    write_all(b, &[b"EHLO ", &name[..], b"\r\n"].concat(), t)
        .await
        .map_err(|e| fail(&e.to_string()))?;
    let mut caps = read_reply(io, b, t).await.map_err(|e| fail(&e))?;
    if caps.code != 250 {
        return Err(fail(&format!("EHLO answered {}", caps.code)));
    }
    if let Some(tls) = starttls {
        if !caps.has_keyword(b"STARTTLS") {
            return Err(fail("backend does not offer STARTTLS"));
        }
        write_all(b, b"STARTTLS\r\n", t)
            .await
            .map_err(|e| fail(&e.to_string()))?;
        let r = read_reply(io, b, t).await.map_err(|e| fail(&e))?;
        if r.code != 220 {
            return Err(fail(&format!("STARTTLS answered {}", r.code)));
        }
        io.discard();
        tokio::time::timeout(t, b.upgrade(&tls))
            .await
            .map_err(|_| fail("TLS handshake timed out"))?
            .map_err(|e| fail(&format!("TLS: {e}")))?;
        write_all(b, &[b"EHLO ", &name[..], b"\r\n"].concat(), t)
            .await
            .map_err(|e| fail(&e.to_string()))?;
        caps = read_reply(io, b, t).await.map_err(|e| fail(&e))?;
        if caps.code != 250 {
            return Err(fail(&format!("EHLO after STARTTLS answered {}", caps.code)));
        }
    }
    if xclient && caps.has_keyword(b"XCLIENT") {
        let mut x = b"XCLIENT".to_vec();
        if let Some(ip) = client_ip {
            x.extend_from_slice(format!(" ADDR={ip}").as_bytes());
        }
        if !creds.user.is_empty() {
            x.extend_from_slice(b" LOGIN=");
            x.extend_from_slice(xtext(&creds.user).as_bytes());
        }
        x.extend_from_slice(b" NAME=[UNAVAILABLE]\r\n");
        write_all(b, &x, t)
            .await
            .map_err(|e| fail(&e.to_string()))?;
        let r = read_reply(io, b, t).await.map_err(|e| fail(&e))?;
        if r.code != 220 {
            return Err(fail(&format!("XCLIENT answered {}", r.code)));
        }
        write_all(b, &hello, t)
            .await
            .map_err(|e| fail(&e.to_string()))?;
        let r = read_reply(io, b, t).await.map_err(|e| fail(&e))?;
        if r.code != 250 {
            return Err(fail(&format!("EHLO after XCLIENT answered {}", r.code)));
        }
    }
    if let (Some(mech), None) = (auth, &envelope) {
        backend_auth(io, b, creds, &mech, t).await?;
    }
    let Some((mail, rcpt)) = envelope else {
        return Ok(b"235 2.0.0 OK\r\n".to_vec());
    };
    write_all(b, &[&mail[..], b"\r\n"].concat(), t)
        .await
        .map_err(|e| fail(&e.to_string()))?;
    let r = read_reply(io, b, t).await.map_err(|e| fail(&e))?;
    if !(200..300).contains(&r.code) {
        return Err(r.encode());
    }
    write_all(b, &[&rcpt[..], b"\r\n"].concat(), t)
        .await
        .map_err(|e| fail(&e.to_string()))?;
    let r = read_reply(io, b, t).await.map_err(|e| fail(&e))?;
    if (200..300).contains(&r.code) {
        Ok(r.encode())
    } else {
        Err(r.encode())
    }
}

/// Logs in to the backend with the user's credentials (AUTH PLAIN with an initial
/// response, or AUTH LOGIN). A refusal is passed on to the client.
async fn backend_auth(
    io: &mut LineIo,
    b: &mut crate::backend::BackendStream,
    creds: &Credentials,
    mech: &str,
    t: Duration,
) -> Result<(), Vec<u8>> {
    use portico_core::base64::encode;
    let fail = |why: &str| -> Vec<u8> {
        tracing::warn!("SMTP backend AUTH failed: {why}");
        b"451 4.3.2 Internal server error\r\n".to_vec()
    };
    let steps: Vec<Vec<u8>> = if mech == "login" {
        vec![
            b"AUTH LOGIN\r\n".to_vec(),
            format!("{}\r\n", encode(&creds.user)).into_bytes(),
            format!("{}\r\n", encode(&creds.pass)).into_bytes(),
        ]
    } else {
        let mut raw = vec![0u8];
        raw.extend_from_slice(&creds.user);
        raw.push(0);
        raw.extend_from_slice(&creds.pass);
        vec![format!("AUTH PLAIN {}\r\n", encode(&raw)).into_bytes()]
    };
    let last = steps.len() - 1;
    for (i, step) in steps.iter().enumerate() {
        write_all(b, step, t)
            .await
            .map_err(|e| fail(&e.to_string()))?;
        let r = read_reply(io, b, t).await.map_err(|e| fail(&e))?;
        let expected = if i == last { 235 } else { 334 };
        if r.code != expected {
            return Err(r.encode());
        }
    }
    Ok(())
}

/// RFC 3461 xtext, as XCLIENT values are sent: `+XX` for `+`, `=`, and bytes outside
/// `!`..`~`.
fn xtext(v: &[u8]) -> String {
    let mut out = String::with_capacity(v.len());
    for &c in v {
        if (b'!'..=b'~').contains(&c) && c != b'+' && c != b'=' {
            out.push(c as char);
        } else {
            out.push_str(&format!("+{c:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines() {
        assert_eq!(parse_reply_line(b"250-mx"), Some((250, true, &b"mx"[..])));
        assert_eq!(
            parse_reply_line(b"235 2.0.0 OK"),
            Some((235, false, &b"2.0.0 OK"[..]))
        );
        assert_eq!(parse_reply_line(b"220"), Some((220, false, &b""[..])));
        assert_eq!(parse_reply_line(b"2x0 no"), None);
        assert_eq!(parse_reply_line(b"250_x"), None);
    }

    #[test]
    fn commands_and_xtext() {
        let c = parse(b"mail FROM:<a@b>").unwrap();
        assert_eq!(
            (c.verb.as_str(), c.rest.as_slice()),
            ("MAIL", &b"FROM:<a@b>"[..])
        );
        assert_eq!(parse(b"EHLO").unwrap().rest, b"");
        assert!(parse(b"").is_none());
        assert!(parse(b"\x01x").is_none());
        assert_eq!(xtext(b"al+ce=1 \xff"), "al+2Bce+3D1+20+FF");
    }

    /// A backend that offers XCLIENT: the handshake sends it with the client's address
    /// and user, then the client's own greeting; without `xclient` it is skipped.
    #[tokio::test]
    async fn xclient_handshake() {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        for xclient in [true, false] {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (s, _) = l.accept().await.unwrap();
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                let mut seen = Vec::new();
                w.write_all(b"220 fake ESMTP\r\n").await.unwrap();
                let mut line = String::new();
                while r.read_line(&mut line).await.unwrap() > 0 {
                    let cmd = line.trim_end().to_string();
                    line.clear();
                    let reply: &[u8] = if cmd.starts_with("XCLIENT") {
                        b"220 fake ESMTP\r\n"
                    } else {
                        b"250-fake\r\n250 XCLIENT ADDR LOGIN NAME\r\n"
                    };
                    seen.push(cmd);
                    w.write_all(reply).await.unwrap();
                    if seen.len() == 3 || (!xclient && seen.len() == 1) {
                        break;
                    }
                }
                seen
            });
            let mut stream = crate::backend::BackendStream::Plain(
                portico_upstream::connect(
                    &portico_config::PeerAddr::Tcp(addr),
                    Duration::from_secs(5),
                )
                .await
                .unwrap(),
            );
            let creds = Credentials::plain(b"al ice".to_vec(), b"pw".to_vec());
            let answer = backend_login(
                &mut LineIo::new(),
                &mut stream,
                &creds,
                Handshake {
                    helo: (false, b"laptop".to_vec()),
                    client_ip: "192.0.2.1".parse().ok(),
                    xclient,
                    envelope: None,
                    starttls: None,
                    auth: None,
                },
                Duration::from_secs(5),
            )
            .await
            .unwrap();
            assert_eq!(answer, b"235 2.0.0 OK\r\n");
            drop(stream);
            let seen = server.await.unwrap();
            if xclient {
                assert_eq!(
                    seen,
                    vec![
                        "EHLO laptop",
                        "XCLIENT ADDR=192.0.2.1 LOGIN=al+20ice NAME=[UNAVAILABLE]",
                        "HELO laptop"
                    ]
                );
            } else {
                assert_eq!(seen, vec!["EHLO laptop"]);
            }
        }
    }

    #[tokio::test]
    async fn multi_line_replies() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(b"250-mx.example\r\n250-XCLIENT ADDR NAME\r\n250 8BITMIME\r\n")
                .await
                .unwrap();
        });
        let mut stream = crate::backend::BackendStream::Plain(
            portico_upstream::connect(&portico_config::PeerAddr::Tcp(addr), Duration::from_secs(5))
                .await
                .unwrap(),
        );
        let r = read_reply(&mut LineIo::new(), &mut stream, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(r.lines.len(), 3);
        assert!(r.has_keyword(b"xclient"));
        assert!(!r.has_keyword(b"AUTH"));
    }
}
