//! POP3: the AUTHORIZATION state as nginx's mail proxy answers it (CAPA, USER/PASS,
//! AUTH PLAIN/LOGIN with an initial response or continuations, STLS, QUIT), then the
//! backend login with USER/PASS and the tunnel.

use std::time::Duration;

use crate::io::{write_all, LineIo, ReadError};
use crate::session::{Credentials, Sasl, Session, Settled};

const INVALID: &[u8] = b"-ERR invalid command\r\n";

/// A POP3 command: its keyword upper-cased and its arguments (split on spaces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub name: String,
    pub args: Vec<Vec<u8>>,
}

/// Parses a command line (RFC 1939: keyword, then space-separated arguments).
pub fn parse(line: &[u8]) -> Option<Command> {
    let mut words = line.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let name = words.next()?;
    if name.len() > 4 || !name.iter().all(u8::is_ascii_alphabetic) {
        return None;
    }
    Some(Command {
        name: String::from_utf8_lossy(name).to_ascii_uppercase(),
        args: words.map(<[u8]>::to_vec).collect(),
    })
}

/// The POP3 front end.
pub struct Pop3;

impl Pop3 {
    fn capabilities(s: &Session) -> String {
        let mut caps = String::from("+OK Capability list follows\r\n");
        for c in &s.cfg.capabilities {
            caps.push_str(c);
            caps.push_str("\r\n");
        }
        if s.starttls_offered() {
            caps.push_str("STLS\r\n");
        }
        let sasl: Vec<&str> = s
            .cfg
            .auth_methods
            .iter()
            .map(String::as_str)
            .filter(|m| *m != "APOP")
            .collect();
        if !s.starttls_required() && !sasl.is_empty() {
            caps.push_str(&format!("SASL {}\r\n", sasl.join(" ")));
        }
        caps.push_str(".\r\n");
        caps
    }

    pub async fn serve(mut s: Session) {
        let apop = s.cfg.auth_methods.iter().any(|m| m == "APOP");
        let mut greeting = format!("+OK {}", s.cfg.greeting.as_deref().unwrap_or("POP3 ready"));
        if apop {
            // APOP (RFC 1939): the timestamp the client's digest covers.
            greeting.push(' ');
            greeting.push_str(&String::from_utf8_lossy(&s.salt()));
        }
        greeting.push_str("\r\n");
        if s.send(greeting.as_bytes()).await.is_err() {
            return;
        }
        let mut user: Option<Vec<u8>> = None;
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
            let may_auth = !s.starttls_required();
            let r = match cmd.name.as_str() {
                "CAPA" => {
                    let caps = Self::capabilities(&s);
                    s.send(caps.as_bytes()).await
                }
                "QUIT" => {
                    let _ = s.send(b"+OK\r\n").await;
                    return;
                }
                "NOOP" => s.send(b"+OK\r\n").await,
                "STLS" if s.starttls_offered() => match s.start_tls(b"+OK\r\n").await {
                    Some(next) => {
                        s = next;
                        user = None;
                        Ok(())
                    }
                    None => return,
                },
                "USER" if may_auth && cmd.args.len() == 1 => {
                    user = cmd.args.into_iter().next();
                    s.send(b"+OK\r\n").await
                }
                "PASS" if may_auth && user.is_some() && !cmd.args.is_empty() => {
                    // A password may hold spaces: everything after "PASS ".
                    let pass = line.get(5..).unwrap_or_default().to_vec();
                    let creds = Credentials::plain(user.take().unwrap_or_default(), pass);
                    let Some(back) = Self::login(s, creds).await else {
                        return;
                    };
                    s = back;
                    Ok(())
                }
                "APOP" if may_auth && apop && cmd.args.len() == 2 => {
                    let mut args = cmd.args.into_iter();
                    let mut creds = Credentials::new(
                        "apop",
                        args.next().unwrap_or_default(),
                        args.next().unwrap_or_default(),
                    );
                    creds.salt = Some(s.salt());
                    let Some(back) = Self::login(s, creds).await else {
                        return;
                    };
                    s = back;
                    Ok(())
                }
                "AUTH" if may_auth && cmd.args.is_empty() => {
                    let mut list = String::from("+OK methods supported:\r\n");
                    for m in s.cfg.auth_methods.iter().filter(|m| *m != "APOP") {
                        list.push_str(m);
                        list.push_str("\r\n");
                    }
                    list.push_str(".\r\n");
                    s.send(list.as_bytes()).await
                }
                "AUTH" if may_auth => {
                    let got = Self::authenticate(&mut s, &cmd.args).await;
                    let Some(back) = s.login_after(got, Self::login).await else {
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

    async fn authenticate(
        s: &mut Session,
        args: &[Vec<u8>],
    ) -> Result<Option<Credentials>, ReadError> {
        let reply: &[u8] = match s.sasl(&args[0], args.get(1).cloned(), b"+ ").await? {
            Sasl::Credentials(c) => return Ok(Some(c)),
            Sasl::Cancelled => b"-ERR authentication cancelled\r\n",
            Sasl::Unsupported => INVALID,
            Sasl::Invalid => b"-ERR invalid authentication data\r\n",
        };
        s.send(reply).await?;
        Ok(None)
    }

    async fn login(s: Session, creds: Credentials) -> Option<Session> {
        let starttls = s.backend_starttls();
        let refused = |status: &str, _: Option<&str>| format!("-ERR {status}\r\n");
        let outcome = s.authorize(creds, "pop3").await;
        match outcome
            .settle(refused, b"-ERR internal server error\r\n")
            .await
        {
            Settled::Retry(session) => Some(session),
            Settled::Closed => None,
            Settled::Backend(b) => {
                b.run(|io, stream, creds, t| {
                    Box::pin(backend_login(io, stream, creds, starttls, t))
                })
                .await;
                None
            }
        }
    }
}

/// Logs in to the POP3 backend as nginx does: greeting, USER, PASS. Returns the
/// backend's answer to PASS for the client (`Err` when it refused).
async fn backend_login(
    io: &mut LineIo,
    b: &mut crate::backend::BackendStream,
    creds: &Credentials,
    starttls: Option<crate::backend::BackendTls>,
    t: Duration,
) -> Result<Vec<u8>, Vec<u8>> {
    let fail = |why: &str| -> Vec<u8> {
        tracing::warn!("POP3 backend login failed: {why}");
        b"-ERR internal server error\r\n".to_vec()
    };
    let expect_ok = async |io: &mut LineIo, b: &mut crate::backend::BackendStream| {
        let line = io
            .read_line(b, 8192, t)
            .await
            .map_err(|e| fail(&e.to_string()))?;
        if line.starts_with(b"+OK") {
            Ok(line)
        } else {
            Err([&line[..], b"\r\n"].concat())
        }
    };
    expect_ok(io, b).await?;
    if let Some(tls) = starttls {
        write_all(b, b"STLS\r\n", t)
            .await
            .map_err(|e| fail(&e.to_string()))?;
        expect_ok(io, b).await?;
        io.discard();
        tokio::time::timeout(t, b.upgrade(&tls))
            .await
            .map_err(|_| fail("TLS handshake timed out"))?
            .map_err(|e| fail(&format!("TLS: {e}")))?;
    }
    let user = [b"USER ", &creds.user[..], b"\r\n"].concat();
    write_all(b, &user, t)
        .await
        .map_err(|e| fail(&e.to_string()))?;
    expect_ok(io, b).await?;
    let pass = [b"PASS ", &creds.pass[..], b"\r\n"].concat();
    write_all(b, &pass, t)
        .await
        .map_err(|e| fail(&e.to_string()))?;
    let answer = expect_ok(io, b).await?;
    Ok([&answer[..], b"\r\n"].concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        let c = parse(b"user alice").unwrap();
        assert_eq!((c.name.as_str(), c.args.len()), ("USER", 1));
        assert_eq!(parse(b"PASS  two words").unwrap().args.len(), 2);
        assert!(parse(b"").is_none());
        assert!(parse(b"TOOLONG x").is_none());
        assert!(parse(b"US3R x").is_none());
    }
}
