//! nginx's `auth_http` protocol: one HTTP request per login attempt whose headers say
//! who tries to log in (Auth-User, Auth-Pass, Auth-Protocol, Client-IP, …) and whose
//! answer headers say where to send them (Auth-Status: OK, Auth-Server, Auth-Port) or
//! why not (Auth-Status: text, Auth-Wait, Auth-Error-Code). Header for header as nginx
//! sends and reads them, so existing auth servers work unchanged; the one addition is
//! `Connection: keep-alive`, so servers that allow it keep the connection for the next
//! lookup ([`AuthClient`]).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where the auth server is: `http://HOST[:PORT][/PATH]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl AuthUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        let rest = s
            .strip_prefix("http://")
            .ok_or_else(|| format!("auth_http {s:?}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("auth_http {s:?}: bad port {p:?}"))?,
            ),
            _ => (authority, 80),
        };
        if host.is_empty() {
            return Err(format!("auth_http {s:?}: no host"));
        }
        Ok(Self {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            path: path.to_string(),
        })
    }
}

/// What one login attempt tells the auth server.
#[derive(Debug, Clone, Default)]
pub struct AuthRequest {
    /// plain, login, apop, cram-md5, external, none
    pub method: &'static str,
    pub user: Vec<u8>,
    pub pass: Vec<u8>,
    /// APOP / CRAM-MD5 challenge.
    pub salt: Option<Vec<u8>>,
    /// imap, pop3, smtp
    pub protocol: &'static str,
    pub attempt: u32,
    pub client_ip: Option<IpAddr>,
    /// SMTP only: "[UNAVAILABLE]" when not resolved, as nginx without a resolver.
    pub client_host: Option<String>,
    pub ssl: bool,
    pub smtp_helo: Option<Vec<u8>>,
    pub smtp_from: Option<Vec<u8>>,
    pub smtp_to: Option<Vec<u8>>,
    /// Configured extra headers (nginx `auth_http_header`).
    pub extra_headers: Vec<(String, String)>,
    /// The addresses a PROXY protocol header gave: client and server (nginx's
    /// Proxy-Protocol-Addr/-Port/-Server-Addr/-Server-Port).
    pub proxy_protocol: Option<(SocketAddr, SocketAddr)>,
    /// On a listener that verifies client certificates: the one the client gave (None:
    /// none), and whether to pass it whole (Auth-SSL-Cert).
    pub ssl_client: Option<(Option<std::sync::Arc<portico_core::ClientCert>>, bool)>,
}

/// The auth server's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthAnswer {
    Ok {
        /// `None` when the answer names no server (or `pool:NAME`): the listener's
        /// upstream picks one.
        server: Option<Backend>,
        /// Auth-User / Auth-Pass: what to log in to the backend with instead.
        user: Option<Vec<u8>>,
        pass: Option<Vec<u8>>,
    },
    Refused {
        /// Auth-Status text, shown to the client.
        status: String,
        /// Auth-Wait: answer after this long and let the client try again; without it
        /// the session closes after the answer.
        wait: Option<Duration>,
        /// Auth-Error-Code (SMTP): e.g. "535 5.7.0".
        error_code: Option<String>,
    },
}

/// Where the auth server sends the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Addr(SocketAddr),
    /// `Auth-Server: pool:NAME`: a server of upstream NAME, picked by the balancer.
    Pool(String),
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("auth server unreachable: {0}")]
    Connect(std::io::Error),
    #[error("auth server did not answer within {0:?}")]
    Timeout(Duration),
    #[error("auth server answer invalid: {0}")]
    Invalid(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// nginx's NGX_ESCAPE_MAIL_AUTH: `%`, space, control characters and non-ASCII bytes
/// become `%XX`, so a CR or LF in a user name cannot start a header of its own.
pub fn escape(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    for &c in b {
        if c <= b' ' || c == b'%' || c >= 0x7f {
            out.push_str(&format!("%{c:02X}"));
        } else {
            out.push(c as char);
        }
    }
    out
}

/// The request, byte for byte as nginx sends it (HTTP/1.0, one request per connection).
pub fn encode_request(url: &AuthUrl, r: &AuthRequest) -> Vec<u8> {
    let mut h = format!(
        "GET {} HTTP/1.0\r\nHost: {}\r\nConnection: keep-alive\r\nAuth-Method: {}\r\nAuth-User: {}\r\nAuth-Pass: {}\r\nAuth-Protocol: {}\r\nAuth-Login-Attempt: {}\r\n",
        url.path,
        url.host,
        r.method,
        escape(&r.user),
        escape(&r.pass),
        r.protocol,
        r.attempt
    );
    if let Some(salt) = &r.salt {
        h.push_str(&format!("Auth-Salt: {}\r\n", escape(salt)));
    }
    if r.ssl {
        h.push_str("Auth-SSL: on\r\n");
        // nginx's mail ssl module: what client certificate verification found
        match &r.ssl_client {
            Some((Some(c), pass)) => {
                h.push_str("Auth-SSL-Verify: SUCCESS\r\n");
                for (name, v) in [
                    ("Auth-SSL-Subject", &c.subject),
                    ("Auth-SSL-Issuer", &c.issuer),
                    ("Auth-SSL-Serial", &c.serial),
                    ("Auth-SSL-Fingerprint", &c.fingerprint),
                ] {
                    h.push_str(&format!("{name}: {}\r\n", escape(v.as_bytes())));
                }
                if *pass {
                    h.push_str(&format!("Auth-SSL-Cert: {}\r\n", escape(c.pem.as_bytes())));
                }
            }
            Some((None, _)) => h.push_str("Auth-SSL-Verify: NONE\r\n"),
            None => {}
        }
    }
    if let Some(ip) = r.client_ip {
        h.push_str(&format!("Client-IP: {ip}\r\n"));
    }
    if let Some(host) = &r.client_host {
        h.push_str(&format!("Client-Host: {host}\r\n"));
    }
    for (name, v) in [
        ("Auth-SMTP-Helo", &r.smtp_helo),
        ("Auth-SMTP-From", &r.smtp_from),
        ("Auth-SMTP-To", &r.smtp_to),
    ] {
        if let Some(v) = v {
            h.push_str(&format!("{name}: {}\r\n", escape(v)));
        }
    }
    if let Some((client, server)) = r.proxy_protocol {
        h.push_str(&format!(
            "Proxy-Protocol-Addr: {}\r\nProxy-Protocol-Port: {}\r\nProxy-Protocol-Server-Addr: {}\r\nProxy-Protocol-Server-Port: {}\r\n",
            client.ip(),
            client.port(),
            server.ip(),
            server.port()
        ));
    }
    for (name, value) in &r.extra_headers {
        h.push_str(&format!("{name}: {value}\r\n"));
    }
    h.push_str("\r\n");
    h.into_bytes()
}

fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Parses the answer head: `Ok(None)` until it is complete.
pub fn parse_answer(buf: &[u8]) -> Result<Option<AuthAnswer>, AuthError> {
    Ok(parse_head(buf)?.map(|h| h.answer))
}

/// An answer head and what it says about the connection.
#[derive(Debug)]
pub struct Head {
    pub answer: AuthAnswer,
    /// Bytes the head took.
    pub len: usize,
    /// The body's Content-Length, when given.
    pub body: Option<usize>,
    /// The server keeps the connection open (HTTP/1.1 without `Connection: close`, or
    /// HTTP/1.0 with `Connection: keep-alive`).
    pub keep_alive: bool,
}

pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, AuthError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(AuthError::Invalid(e.to_string())),
    };
    if resp.code != Some(200) {
        return Err(AuthError::Invalid(format!(
            "HTTP status {}",
            resp.code.unwrap_or(0)
        )));
    }
    let get = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let status = get("Auth-Status").ok_or_else(|| AuthError::Invalid("no Auth-Status".into()))?;
    let body = get("Content-Length").and_then(|v| v.parse::<usize>().ok());
    let connection = get("Connection").unwrap_or_default().to_ascii_lowercase();
    let keep_alive = if resp.version == Some(1) {
        !connection.contains("close")
    } else {
        connection.contains("keep-alive")
    };
    let head = |answer| Head {
        answer,
        len,
        body,
        keep_alive,
    };
    if status != "OK" {
        // As nginx: a positive Auth-Wait keeps the session for another try after that
        // many seconds; none, 0 or garbage closes it after the answer.
        let wait = get("Auth-Wait")
            .and_then(|w| w.parse::<u64>().ok())
            .filter(|&w| w > 0)
            .map(Duration::from_secs);
        return Ok(Some(head(AuthAnswer::Refused {
            status,
            wait,
            error_code: get("Auth-Error-Code"),
        })));
    }
    let server = match get("Auth-Server") {
        None => None,
        Some(s) if s.starts_with("pool:") => Some(Backend::Pool(s[5..].to_string())),
        Some(s) => {
            let port = get("Auth-Port")
                .ok_or_else(|| AuthError::Invalid("Auth-Server without Auth-Port".into()))?;
            let ip: IpAddr = s.parse().map_err(|_| {
                AuthError::Invalid(format!("Auth-Server {s:?} is not an IP address"))
            })?;
            let port: u16 = port
                .parse()
                .map_err(|_| AuthError::Invalid(format!("bad Auth-Port {port:?}")))?;
            Some(Backend::Addr(SocketAddr::new(ip, port)))
        }
    };
    Ok(Some(head(AuthAnswer::Ok {
        server,
        user: get("Auth-User").map(|u| unescape(&u)),
        pass: get("Auth-Pass").map(|p| unescape(&p)),
    })))
}

/// A client for one auth server that keeps connections open between lookups when the
/// server allows it (`Connection: keep-alive` is asked for; nginx itself opens a
/// connection per lookup). Idle connections are kept per worker.
#[derive(Debug)]
pub struct AuthClient {
    pub url: AuthUrl,
    idle: portico_upstream::IdlePool<tokio::net::TcpStream>,
}

/// Idle connections kept per worker, and for how long.
const KEEP_IDLE: usize = 8;
const KEEP_FOR: Duration = Duration::from_secs(30);

impl AuthClient {
    pub fn new(url: AuthUrl) -> Self {
        Self {
            url,
            idle: portico_upstream::IdlePool::new(KEEP_IDLE, KEEP_FOR, 64),
        }
    }

    /// Asks the auth server, within `timeout` for the whole exchange. A kept connection
    /// the server closed meanwhile is replaced by a new one once.
    pub async fn lookup(
        &self,
        r: &AuthRequest,
        timeout: Duration,
    ) -> Result<AuthAnswer, AuthError> {
        let request = encode_request(&self.url, r);
        let exchange = async {
            let shard = portico_core::worker_id();
            if let Some(s) = self.idle.take(shard, |_| true) {
                if let Ok(a) = self.exchange(s, &request, shard).await {
                    return Ok(a);
                }
            }
            let s = tokio::net::TcpStream::connect((self.url.host.as_str(), self.url.port))
                .await
                .map_err(AuthError::Connect)?;
            self.exchange(s, &request, shard).await
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(AuthError::Timeout(timeout)),
        }
    }

    async fn exchange(
        &self,
        mut s: tokio::net::TcpStream,
        request: &[u8],
        shard: usize,
    ) -> Result<AuthAnswer, AuthError> {
        s.write_all(request).await?;
        let mut buf = Vec::with_capacity(512);
        let mut chunk = [0u8; 2048];
        let head = loop {
            if let Some(h) = parse_head(&buf)? {
                break h;
            }
            if buf.len() > 16 * 1024 {
                return Err(AuthError::Invalid("answer head over 16 KiB".into()));
            }
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(AuthError::Invalid(
                    "connection closed before the answer".into(),
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        // Reuse the connection only when its body is known and small enough to skip.
        if let (true, Some(body)) = (head.keep_alive, head.body) {
            if body <= 64 * 1024 {
                let mut have = buf.len() - head.len;
                while have < body {
                    let n = s.read(&mut chunk).await?;
                    if n == 0 {
                        return Ok(head.answer);
                    }
                    have += n;
                }
                if have == body {
                    self.idle.put(shard, s);
                }
            }
        }
        Ok(head.answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = AuthUrl::parse("http://127.0.0.1:9000/auth").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 9000, "/auth")
        );
        let u = AuthUrl::parse("http://auth.local").unwrap();
        assert_eq!((u.port, u.path.as_str()), (80, "/"));
        assert!(AuthUrl::parse("https://x/").is_err());
        assert!(AuthUrl::parse("http://:80/").is_err());
    }

    #[test]
    fn requests_escape_credentials() {
        let url = AuthUrl::parse("http://127.0.0.1:9000/auth").unwrap();
        let r = AuthRequest {
            method: "plain",
            user: b"al ice\r\nX-Evil: 1".to_vec(),
            pass: b"p%ss\xff".to_vec(),
            protocol: "imap",
            attempt: 2,
            client_ip: "192.0.2.7".parse().ok(),
            ..Default::default()
        };
        let text = String::from_utf8(encode_request(&url, &r)).unwrap();
        assert!(
            text.starts_with("GET /auth HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n")
        );
        assert!(
            text.contains("\r\nAuth-User: al%20ice%0D%0AX-Evil:%201\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nAuth-Pass: p%25ss%FF\r\n"));
        assert!(text.contains("\r\nAuth-Login-Attempt: 2\r\nClient-IP: 192.0.2.7\r\n"));
        assert!(!text.contains("\r\nX-Evil"));
    }

    #[test]
    fn answers() {
        let ok = b"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 143\r\nAuth-Pass: new%20pass\r\n\r\n";
        assert_eq!(
            parse_answer(ok).unwrap(),
            Some(AuthAnswer::Ok {
                server: Some(Backend::Addr("127.0.0.1:143".parse().unwrap())),
                user: None,
                pass: Some(b"new pass".to_vec()),
            })
        );
        let pool = b"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: pool:store\r\n\r\n";
        assert!(matches!(
            parse_answer(pool).unwrap(),
            Some(AuthAnswer::Ok { server: Some(Backend::Pool(p)), .. }) if p == "store"
        ));
        let no = b"HTTP/1.0 200 OK\r\nAuth-Status: Invalid login or password\r\nAuth-Wait: 3\r\nAuth-Error-Code: 535 5.7.8\r\n\r\n";
        assert_eq!(
            parse_answer(no).unwrap(),
            Some(AuthAnswer::Refused {
                status: "Invalid login or password".into(),
                wait: Some(Duration::from_secs(3)),
                error_code: Some("535 5.7.8".into()),
            })
        );
        assert!(parse_answer(b"HTTP/1.0 200 OK\r\nAuth-Sta")
            .unwrap()
            .is_none());
        assert!(parse_answer(b"HTTP/1.0 500 Oops\r\n\r\n").is_err());
        assert!(parse_answer(b"HTTP/1.0 200 OK\r\n\r\n").is_err());
        assert!(parse_answer(b"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: mail.example\r\nAuth-Port: 1\r\n\r\n").is_err());
    }
}
