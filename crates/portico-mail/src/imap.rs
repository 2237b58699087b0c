//! IMAP: the command codec (tags, atoms, quoted strings with escapes, `{n}` and `{n+}`
//! literals) and the pre-authentication state as nginx's mail proxy answers it
//! (CAPABILITY, NOOP, LOGOUT, STARTTLS, LOGIN, AUTHENTICATE PLAIN/LOGIN with SASL-IR, ID),
//! then the backend login (LOGIN with literals, the client's tag) and the tunnel.

use std::time::Duration;

use crate::io::{write_all, LineIo, ReadError};
use crate::session::{Credentials, Sasl, Session, Settled};

/// Longest literal accepted before authentication (a user name or password).
pub const MAX_LITERAL: usize = 4096;

/// A literal announced at the end of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Literal {
    pub len: usize,
    /// `{n}`: the server must answer `+` before the client sends the bytes; `{n+}`
    /// (LITERAL+) needs no answer.
    pub sync: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unterminated quoted string")]
    Unterminated,
    #[error("bad literal")]
    BadLiteral,
    #[error("literal too long")]
    LiteralTooLong,
    #[error("empty command")]
    Empty,
}

/// Splits one line fragment into tokens (atoms and strings, quotes and escapes undone)
/// appended to `out`; the line's literal announcement, if it ends with one.
pub fn scan(line: &[u8], out: &mut Vec<Vec<u8>>) -> Result<Option<Literal>, ParseError> {
    let mut i = 0;
    while i < line.len() {
        match line[i] {
            b' ' => i += 1,
            b'"' => {
                let mut s = Vec::new();
                i += 1;
                loop {
                    match line.get(i) {
                        None => return Err(ParseError::Unterminated),
                        Some(b'\\') => {
                            let c = *line.get(i + 1).ok_or(ParseError::Unterminated)?;
                            s.push(c);
                            i += 2;
                        }
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(&c) => {
                            s.push(c);
                            i += 1;
                        }
                    }
                }
                out.push(s);
            }
            b'{' if line.ends_with(b"}") => {
                let inner = &line[i + 1..line.len() - 1];
                let (digits, sync) = match inner.strip_suffix(b"+") {
                    Some(d) => (d, false),
                    None => (inner, true),
                };
                let len = std::str::from_utf8(digits)
                    .ok()
                    .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|d| d.parse::<usize>().ok())
                    .ok_or(ParseError::BadLiteral)?;
                if len > MAX_LITERAL {
                    return Err(ParseError::LiteralTooLong);
                }
                return Ok(Some(Literal { len, sync }));
            }
            _ => {
                let end = line[i..]
                    .iter()
                    .position(|&b| b == b' ')
                    .map_or(line.len(), |p| i + p);
                out.push(line[i..end].to_vec());
                i = end;
            }
        }
    }
    Ok(None)
}

/// One command: its tag, its name upper-cased, its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub tag: Vec<u8>,
    pub name: String,
    pub args: Vec<Vec<u8>>,
}

impl Command {
    pub fn from_tokens(mut tokens: Vec<Vec<u8>>) -> Result<Self, ParseError> {
        if tokens.len() < 2 {
            return Err(ParseError::Empty);
        }
        let args = tokens.split_off(2);
        let name = String::from_utf8_lossy(&tokens[1]).to_ascii_uppercase();
        let tag = std::mem::take(&mut tokens[0]);
        Ok(Self { tag, name, args })
    }
}

/// What reading a command gave.
enum Read {
    Command(Command),
    /// Unparsable: answered with BAD (tag when known).
    Bad(Option<Vec<u8>>),
}

/// The IMAP front end.
pub struct Imap;

impl Imap {
    fn capabilities(s: &Session) -> String {
        let mut caps = s.cfg.capabilities.join(" ");
        if s.starttls_offered() {
            caps.push_str(" STARTTLS");
        }
        // nginx's default imap_auth is plain; AUTHENTICATE LOGIN and an initial
        // response are accepted all the same, as nginx accepts them.
        if s.starttls_required() {
            caps.push_str(" LOGINDISABLED");
        } else {
            for m in &s.cfg.auth_methods {
                caps.push_str(" AUTH=");
                caps.push_str(m);
            }
        }
        caps
    }

    /// Reads one command, literals included (answering `+ OK` to synchronising ones).
    async fn read_command(s: &mut Session) -> Result<Read, ReadError> {
        let mut tokens = Vec::new();
        let mut total = 0usize;
        loop {
            let line = s.line().await?;
            total += line.len();
            match scan(&line, &mut tokens) {
                Ok(None) => break,
                Ok(Some(lit)) => {
                    total += lit.len;
                    if total > 2 * MAX_LITERAL {
                        return Ok(Read::Bad(tokens.into_iter().next()));
                    }
                    if lit.sync {
                        s.send(b"+ OK\r\n").await?;
                    }
                    let bytes = s.read_exact(lit.len).await?;
                    tokens.push(bytes);
                }
                Err(_) => return Ok(Read::Bad(tokens.into_iter().next())),
            }
        }
        Ok(match Command::from_tokens(tokens.clone()) {
            Ok(c) => Read::Command(c),
            Err(_) => Read::Bad(tokens.into_iter().next()),
        })
    }

    /// The session until it ends or a login is accepted and tunnelled.
    pub async fn serve(mut s: Session) {
        let greeting = format!(
            "* OK {}\r\n",
            s.cfg.greeting.as_deref().unwrap_or("IMAP4 ready")
        );
        if s.send(greeting.as_bytes()).await.is_err() {
            return;
        }
        loop {
            let cmd = match Self::read_command(&mut s).await {
                Ok(Read::Command(c)) => c,
                Ok(Read::Bad(tag)) => {
                    if Self::bad(&mut s, tag.as_deref()).await.is_err() {
                        return;
                    }
                    continue;
                }
                Err(ReadError::TooLong(_)) => {
                    if Self::bad(&mut s, None).await.is_err() {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    s.log_end(&e);
                    return;
                }
            };
            let tag = String::from_utf8_lossy(&cmd.tag).into_owned();
            let ok = format!("{tag} OK completed\r\n");
            let r = match cmd.name.as_str() {
                "CAPABILITY" => {
                    let caps = format!("* CAPABILITY {}\r\n{ok}", Self::capabilities(&s));
                    s.send(caps.as_bytes()).await
                }
                "NOOP" => s.send(ok.as_bytes()).await,
                "ID" => s.send(format!("* ID NIL\r\n{ok}").as_bytes()).await,
                "LOGOUT" => {
                    let _ = s.send(format!("* BYE\r\n{ok}").as_bytes()).await;
                    return;
                }
                "STARTTLS" if s.starttls_offered() => {
                    let reply = format!("{tag} OK begin TLS negotiation now\r\n");
                    match s.start_tls(reply.as_bytes()).await {
                        Some(next) => {
                            s = next;
                            Ok(())
                        }
                        None => return,
                    }
                }
                "LOGIN" if !s.starttls_required() && cmd.args.len() == 2 => {
                    let mut args = cmd.args.into_iter();
                    let creds = Credentials::plain(
                        args.next().unwrap_or_default(),
                        args.next().unwrap_or_default(),
                    );
                    let Some(back) = Self::login(s, &cmd.tag, creds).await else {
                        return;
                    };
                    s = back;
                    Ok(())
                }
                "AUTHENTICATE" if !s.starttls_required() && !cmd.args.is_empty() => {
                    let got = Self::authenticate(&mut s, &tag, &cmd.args).await;
                    let login = |s, creds| Self::login(s, &cmd.tag, creds);
                    let Some(back) = s.login_after(got, login).await else {
                        return;
                    };
                    s = back;
                    Ok(())
                }
                _ => Self::bad(&mut s, Some(&cmd.tag)).await,
            };
            if r.is_err() {
                return;
            }
        }
    }

    /// `BAD invalid command`, counted against max_errors (then the session closes).
    async fn bad(s: &mut Session, tag: Option<&[u8]>) -> std::io::Result<()> {
        let tag = tag.map_or("*".to_string(), |t| String::from_utf8_lossy(t).into_owned());
        s.reject(format!("{tag} BAD invalid command\r\n").as_bytes())
            .await
    }

    /// AUTHENTICATE PLAIN / LOGIN / CRAM-MD5, with an initial response (SASL-IR) or
    /// continuations. `Ok(None)`: the exchange failed and was answered; the session goes on.
    async fn authenticate(
        s: &mut Session,
        tag: &str,
        args: &[Vec<u8>],
    ) -> Result<Option<Credentials>, ReadError> {
        let reply = match s.sasl(&args[0], args.get(1).cloned(), b"+ ").await? {
            Sasl::Credentials(c) => return Ok(Some(c)),
            Sasl::Cancelled => "BAD authentication cancelled",
            Sasl::Unsupported => "BAD invalid command",
            Sasl::Invalid => "BAD invalid authentication data",
        };
        s.send(format!("{tag} {reply}\r\n").as_bytes()).await?;
        Ok(None)
    }

    /// Looks the user up; on success logs in to the backend and tunnels (the session
    /// ends there: `None`); on a refusal with Auth-Wait answers and gives the session
    /// back for another try.
    async fn login(s: Session, tag: &[u8], creds: Credentials) -> Option<Session> {
        let tag_text = String::from_utf8_lossy(tag).into_owned();
        let peer = s.peer();
        let starttls = s.backend_starttls();
        let refused = |status: &str, _: Option<&str>| format!("{tag_text} NO {status}\r\n");
        let outcome = s.authorize(creds, "imap").await;
        match outcome
            .settle(refused, b"* BAD internal server error\r\n")
            .await
        {
            Settled::Retry(session) => Some(session),
            Settled::Closed => None,
            Settled::Backend(b) => {
                b.run(|io, stream, creds, t| {
                    Box::pin(backend_login(
                        io,
                        stream,
                        creds,
                        tag.to_vec(),
                        peer,
                        starttls,
                        t,
                    ))
                })
                .await;
                None
            }
        }
    }
}

/// Logs in to the IMAP backend as nginx does: the greeting, then `TAG LOGIN {n}` with
/// synchronising literals for user and password. Returns what to pass on to the client:
/// untagged lines the backend sent during login, then its tagged answer; `Err` when the
/// backend refused (its answer is still passed on).
///
/// Beyond nginx: first an `ID ("x-originating-ip" … "x-originating-port" …)` with the
/// client's address (RFC 2971), which Dovecot uses as the session's remote address when
/// Portico is in its `login_trusted_networks`; its answer is not passed on.
async fn backend_login(
    io: &mut LineIo,
    b: &mut crate::backend::BackendStream,
    creds: &Credentials,
    tag: Vec<u8>,
    peer: Option<std::net::SocketAddr>,
    starttls: Option<crate::backend::BackendTls>,
    t: Duration,
) -> Result<Vec<u8>, Vec<u8>> {
    let fail = |why: &str| -> Vec<u8> {
        tracing::warn!("IMAP backend login failed: {why}");
        b"* BAD internal server error\r\n".to_vec()
    };
    let greeting = io
        .read_line(b, 8192, t)
        .await
        .map_err(|e| fail(&e.to_string()))?;
    if !greeting.starts_with(b"* OK") {
        return Err(fail("backend greeting is not * OK"));
    }
    if let Some(tls) = starttls {
        write_all(b, b"stls STARTTLS\r\n", t)
            .await
            .map_err(|e| fail(&e.to_string()))?;
        let answer = tagged(io, b, b"stls ", t)
            .await
            .map_err(|e| fail(&e.to_string()))?;
        if !answer
            .get(..2)
            .is_some_and(|r| r.eq_ignore_ascii_case(b"OK"))
        {
            return Err(fail("backend refused STARTTLS"));
        }
        io.discard();
        tokio::time::timeout(t, b.upgrade(&tls))
            .await
            .map_err(|_| fail("TLS handshake timed out"))?
            .map_err(|e| fail(&format!("TLS: {e}")))?;
    }
    if let Some(peer) = peer {
        let id = format!(
            "pid ID (\"x-originating-ip\" \"{}\" \"x-originating-port\" \"{}\")\r\n",
            peer.ip(),
            peer.port()
        );
        write_all(b, id.as_bytes(), t)
            .await
            .map_err(|e| fail(&e.to_string()))?;
        // OK, or NO/BAD from a server without ID: the login goes on either way.
        tagged(io, b, b"pid ", t)
            .await
            .map_err(|e| fail(&e.to_string()))?;
    }
    let mut cmd = tag.clone();
    cmd.extend_from_slice(format!(" LOGIN {{{}}}\r\n", creds.user.len()).as_bytes());
    let steps: [Vec<u8>; 3] = [
        cmd,
        [
            &creds.user[..],
            format!(" {{{}}}\r\n", creds.pass.len()).as_bytes(),
        ]
        .concat(),
        [&creds.pass[..], b"\r\n"].concat(),
    ];
    for (i, step) in steps.iter().enumerate() {
        write_all(b, step, t)
            .await
            .map_err(|e| fail(&e.to_string()))?;
        if i < 2 {
            let cont = io
                .read_line(b, 8192, t)
                .await
                .map_err(|e| fail(&e.to_string()))?;
            if !cont.starts_with(b"+") {
                return Err(fail("backend did not accept the literal"));
            }
        }
    }
    let mut relay = Vec::new();
    loop {
        let line = io
            .read_line(b, 64 * 1024, t)
            .await
            .map_err(|e| fail(&e.to_string()))?;
        relay.extend_from_slice(&line);
        relay.extend_from_slice(b"\r\n");
        if line.starts_with(&tag) && line.get(tag.len()) == Some(&b' ') {
            let rest = &line[tag.len() + 1..];
            return if rest.len() >= 2 && rest[..2].eq_ignore_ascii_case(b"OK") {
                Ok(relay)
            } else {
                Err(relay)
            };
        }
        if relay.len() > 64 * 1024 {
            return Err(fail("backend login answer too long"));
        }
    }
}

/// Skips the backend's untagged lines up to the answer tagged `tag` (with its space),
/// and returns that answer after the tag.
async fn tagged(
    io: &mut LineIo,
    b: &mut crate::backend::BackendStream,
    tag: &[u8],
    t: Duration,
) -> Result<Vec<u8>, ReadError> {
    loop {
        let line = io.read_line(b, 8192, t).await?;
        if let Some(rest) = line.strip_prefix(tag) {
            return Ok(rest.to_vec());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tokens(line: &[u8]) -> (Vec<Vec<u8>>, Option<Literal>) {
        let mut out = Vec::new();
        let lit = scan(line, &mut out).unwrap();
        (out, lit)
    }

    #[test]
    fn commands_with_quotes_escapes_and_literals() {
        let (t, l) = tokens(br#"a1 LOGIN "al\"ice" "p\\ss word""#);
        assert_eq!(
            t,
            vec![
                b"a1".to_vec(),
                b"LOGIN".to_vec(),
                b"al\"ice".to_vec(),
                b"p\\ss word".to_vec()
            ]
        );
        assert_eq!(l, None);
        let (t, l) = tokens(b"a2 LOGIN {5}");
        assert_eq!(t.len(), 2);
        assert_eq!(l, Some(Literal { len: 5, sync: true }));
        let (_, l) = tokens(b"a3 LOGIN bob {6+}");
        assert_eq!(
            l,
            Some(Literal {
                len: 6,
                sync: false
            })
        );
        assert_eq!(
            scan(b"a4 LOGIN \"open", &mut Vec::new()),
            Err(ParseError::Unterminated)
        );
        assert_eq!(
            scan(b"a5 LOGIN {x}", &mut Vec::new()),
            Err(ParseError::BadLiteral)
        );
        assert_eq!(
            scan(b"a6 LOGIN {999999}", &mut Vec::new()),
            Err(ParseError::LiteralTooLong)
        );
        let c = Command::from_tokens(tokens(b"x9 capability").0).unwrap();
        assert_eq!(
            (c.tag.as_slice(), c.name.as_str()),
            (&b"x9"[..], "CAPABILITY")
        );
        assert_eq!(
            Command::from_tokens(vec![b"only".to_vec()]),
            Err(ParseError::Empty)
        );
    }

    proptest! {
        #[test]
        fn scanning_never_panics(line in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = scan(&line, &mut Vec::new());
        }

        #[test]
        fn quoted_strings_round_trip(s in proptest::collection::vec(any::<u8>().prop_filter("no CR/LF", |b| *b != b'\r' && *b != b'\n'), 0..50)) {
            let mut line = b"t LOGIN \"".to_vec();
            for &c in &s {
                if c == b'"' || c == b'\\' {
                    line.push(b'\\');
                }
                line.push(c);
            }
            line.push(b'"');
            let mut out = Vec::new();
            prop_assert_eq!(scan(&line, &mut out), Ok(None));
            prop_assert_eq!(&out[2], &s);
        }
    }
}
