//! `via = "fastcgi"`: the Responder role over connections kept alive (FCGI_KEEP_CONN)
//! in a per-server pool. BEGIN_REQUEST, PARAMS, STDIN streamed as records; STDOUT parsed
//! as a CGI response (Status:, Location:, headers) and its body streamed; STDERR logged;
//! END_REQUEST ends the response and, when everything was read, frees the connection.
//!
//! On the first request to a server, FCGI_GET_VALUES asks for FCGI_MAX_CONNS: the
//! answer becomes the server's `max_conns` unless one is configured, so Portico never
//! holds more connections than the app has workers (php-fpm pins a worker to each
//! kept-alive connection).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{header, HeaderMap, StatusCode};
use portico_config::UpstreamConfig;
use portico_fastcgi::{self as fcgi, EndRequest, ProtocolStatus, RecordType};
use portico_upstream::{connect_sending, IdlePool, Pick, Server};

use super::io::{Conn, Failure, RequestBody, MAX_HEAD};
use super::Head;

/// The one request id used on a connection (no multiplexing).
const ID: u16 = 1;

/// What the FastCGI gateway keeps per server: idle connections, how many connections
/// are open, and whether FCGI_GET_VALUES was asked.
pub struct ServerState {
    /// One shard for all workers: php-fpm ties an app worker to each kept connection, so
    /// the connections (at most the server's limit) go to whichever worker needs one.
    /// (Per-worker shards made workers close each other's idle connections to stay
    /// within the limit: measured slower.)
    pool: IdlePool<PooledConn>,
    /// Connections open to the server (idle and busy), across workers.
    open: Arc<AtomicUsize>,
    asked: tokio::sync::OnceCell<()>,
}

fn state(server: &Server, cfg: &UpstreamConfig) -> Option<Arc<ServerState>> {
    server.ext_or_init(|| ServerState {
        pool: IdlePool::new(cfg.keepalive, cfg.keepalive_timeout, 1),
        open: Arc::new(AtomicUsize::new(0)),
        asked: tokio::sync::OnceCell::new(),
    })
}

/// Counts a connection as open until it is dropped.
#[derive(Debug)]
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ServerState {
    /// Reserves a place for a new connection, before connecting, so two requests cannot
    /// both take the last one. At the limit an idle connection (one the pool did not
    /// hand out: stale or unusable) is closed to free its app worker; if none is idle
    /// (one is on its way back), the limit is passed rather than waited for.
    fn reserve(&self, limit: usize) -> Counted {
        loop {
            let n = self.open.load(Ordering::Acquire);
            if n < limit {
                if self
                    .open
                    .compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return Counted(Arc::clone(&self.open));
                }
                continue;
            }
            if self.pool.take(0, |_| true).is_none() {
                tracing::debug!(open = n, limit, "fastcgi: no idle connection to close");
                self.open.fetch_add(1, Ordering::AcqRel);
                return Counted(Arc::clone(&self.open));
            }
        }
    }
}

/// A kept-alive connection and its place in the open count.
#[derive(Debug)]
pub struct PooledConn {
    conn: Conn,
    _open: Counted,
    /// The worker whose runtime the connection is registered with.
    worker: usize,
}

impl PooledConn {
    /// The connection, driven by the calling worker's runtime from now on if another
    /// worker opened it.
    fn on_this_worker(self) -> std::io::Result<Self> {
        let here = portico_core::worker_id();
        if self.worker == here {
            return Ok(self);
        }
        let PooledConn { conn, _open, .. } = self;
        Ok(PooledConn {
            conn: Conn {
                stream: conn.stream.rehome()?,
                buf: conn.buf,
            },
            _open,
            worker: here,
        })
    }
}

/// The PARAMS stream (records and the empty record that ends it).
/// The PARAMS stream for `vars`, whole pairs to a record; `Err` names the var too long
/// for one record (64 KiB), which no FastCGI server could take.
pub fn encode_params(vars: &[super::env::Var]) -> Result<Vec<u8>, &str> {
    let size: usize = vars
        .iter()
        .map(|(n, v)| fcgi::pair_len(n.as_bytes(), v))
        .sum();
    let mut out = Vec::with_capacity(size + 8 * (size / fcgi::MAX_CONTENT + 2));
    fcgi::encode_params(ID, vars.iter().map(|(n, v)| (n.as_bytes(), v)), &mut out)
        .map_err(|i| vars[i].0.as_ref())?;
    Ok(out)
}

fn stdin_frame(data: &[u8], out: &mut Vec<u8>) {
    fcgi::encode_stream(RecordType::Stdin, ID, data, out);
}

/// Asks FCGI_MAX_CONNS on a connection of its own (php-fpm closes a connection after a
/// management record) and applies the answer.
async fn ask_values(server: &Server, cfg: &UpstreamConfig) {
    let timeout = cfg.connect_timeout.min(Duration::from_secs(2));
    let answer = async {
        let ask = fcgi::get_values(&["FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS"]);
        let (stream, sent) = connect_sending(server.addr(), timeout, false, &ask)
            .await
            .map_err(Failure::Connect)?;
        let mut conn = Conn::new(stream);
        conn.write_all(&ask[sent..], timeout).await?;
        loop {
            let (kind, content) = next_record(&mut conn, timeout).await?;
            if kind == RecordType::GetValuesResult as u8 {
                conn.stream.reset_on_close();
                return Ok::<_, Failure>(content);
            }
        }
    };
    match answer.await {
        Ok(content) => {
            let pairs = fcgi::decode_pairs(&content).unwrap_or_default();
            let get = |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name.as_bytes())
                    .and_then(|(_, v)| std::str::from_utf8(v).ok())
                    .and_then(|v| v.trim().parse::<usize>().ok())
            };
            let max_conns = get("FCGI_MAX_CONNS");
            tracing::info!(server = %server.addr(), max_conns = %portico_core::OrDash(max_conns), max_reqs = %portico_core::OrDash(get("FCGI_MAX_REQS")),
                "FastCGI server limits (FCGI_GET_VALUES)");
            if let Some(n) = max_conns.filter(|&n| n > 0) {
                if server.config.max_conns == 0 {
                    server.learn_max_conns(n);
                }
            }
        }
        Err(e) => {
            tracing::debug!(server = %server.addr(), error = %e, "FCGI_GET_VALUES not answered");
        }
    }
}

/// Reads the next record: its type and content.
async fn next_record(conn: &mut Conn, timeout: Duration) -> Result<(u8, Bytes), Failure> {
    loop {
        if let Some(record) = buffered_record(conn)? {
            return Ok(record);
        }
        if conn.fill(timeout, fcgi::MAX_RECORD).await? == 0 {
            return Err(Failure::Closed);
        }
    }
}

/// The next record if it has been read whole already.
fn buffered_record(conn: &mut Conn) -> Result<Option<(u8, Bytes)>, Failure> {
    match fcgi::decode_record(&conn.buf) {
        Ok(Some((rec, used))) => {
            let kind = rec.header.kind;
            let len = rec.content.len();
            let mut whole = conn.buf.split_to(used);
            whole.advance(8);
            whole.truncate(len);
            Ok(Some((kind, whole.freeze())))
        }
        Ok(None) => Ok(None),
        Err(e) => Err(Failure::Invalid(e.to_string())),
    }
}

fn log_stderr(request: u64, server: &str, text: &[u8]) {
    for line in String::from_utf8_lossy(text).lines() {
        if !line.trim().is_empty() {
            tracing::warn!(request, server, "FastCGI stderr: {line}");
        }
    }
}

/// Sends one request (on a pooled connection when there is one) and reads the CGI head.
pub async fn attempt(
    pick: &Pick,
    cfg: &UpstreamConfig,
    params: &[u8],
    body: &mut RequestBody,
    request: u64,
) -> Result<(Head, Reader), Failure> {
    let state = state(&pick.server, cfg);
    if let Some(st) = &state {
        st.asked.get_or_init(|| ask_values(&pick.server, cfg)).await;
    }
    // Keep-conn only under a connection limit (configured, or announced by the server):
    // php-fpm pins a worker to each kept-alive connection, so more connections than
    // workers would leave requests stuck in its backlog. Without one, a connection per
    // request, as nginx's default.
    let limit = pick.server.max_conns();
    let keep = cfg.keepalive > 0 && limit > 0;
    let state = state.filter(|_| keep);
    let usable = |c: &mut PooledConn| c.conn.buf.is_empty() && c.conn.stream.is_idle_usable();
    let mut pooled = state.as_ref().and_then(|s| s.pool.take(0, usable));
    let mut head = Vec::with_capacity(16 + params.len());
    head.extend_from_slice(&fcgi::begin_request(ID, keep));
    head.extend_from_slice(params);
    loop {
        let reused = pooled.is_some();
        let (mut conn, sent) = match pooled.take() {
            Some(c) => match c.on_this_worker() {
                Ok(c) => (c, 0),
                Err(_) => continue,
            },
            None => {
                let open = match &state {
                    Some(st) => st.reserve(limit),
                    None => Counted(Arc::new(AtomicUsize::new(1))),
                };
                let (stream, sent) =
                    connect_sending(pick.server.addr(), cfg.connect_timeout, true, &head)
                        .await
                        .map_err(Failure::Connect)?;
                let conn = PooledConn {
                    conn: Conn::new(stream),
                    _open: open,
                    worker: portico_core::worker_id(),
                };
                (conn, sent)
            }
        };
        if let Err(e) = conn.conn.write_all(&head[sent..], cfg.send_timeout).await {
            if reused {
                continue; // the server closed the idle connection: open a new one
            }
            return Err(e);
        }
        body.send(&mut conn.conn, cfg.send_timeout, stdin_frame)
            .await?;
        conn.conn
            .write_all(&fcgi::end_stream(RecordType::Stdin, ID), cfg.send_timeout)
            .await?;
        return read_head(conn, cfg, request, pick, state).await;
    }
}

async fn read_head(
    mut conn: PooledConn,
    cfg: &UpstreamConfig,
    request: u64,
    pick: &Pick,
    state: Option<Arc<ServerState>>,
) -> Result<(Head, Reader), Failure> {
    let server = pick.server.addr().to_string();
    let mut stdout: Vec<u8> = Vec::new();
    loop {
        let (kind, content) = next_record(&mut conn.conn, cfg.read_timeout).await?;
        match RecordType::from_u8(kind) {
            Some(RecordType::Stdout) => {
                stdout.extend_from_slice(&content);
                if let Some((used, head)) = parse_cgi_head(&stdout)? {
                    let rest = Bytes::copy_from_slice(&stdout[used..]);
                    let reader = Reader {
                        conn: Some(conn),
                        pending: (!rest.is_empty()).then_some(rest),
                        timeout: cfg.read_timeout,
                        request,
                        server,
                        state,
                    };
                    return Ok((head, reader));
                }
                if stdout.len() > MAX_HEAD {
                    return Err(Failure::Invalid("response header too big".into()));
                }
            }
            Some(RecordType::Stderr) => log_stderr(request, &server, &content),
            Some(RecordType::EndRequest) => {
                let end =
                    EndRequest::decode(&content).map_err(|e| Failure::Invalid(e.to_string()))?;
                return Err(match end.protocol_status {
                    ProtocolStatus::Overloaded => Failure::Overloaded,
                    ProtocolStatus::RequestComplete => Failure::Invalid(
                        "the app ended the request without a response header".into(),
                    ),
                    other => Failure::Invalid(format!("request refused: {other:?}")),
                });
            }
            _ => {}
        }
    }
}

/// Parses a CGI response head (headers, a blank line; LF or CRLF): `None` until complete.
fn parse_cgi_head(buf: &[u8]) -> Result<Option<(usize, Head)>, Failure> {
    let mut few = [httparse::EMPTY_HEADER; crate::framing::FEW_FIELDS];
    let (used, parsed) = match crate::framing::split_fields(buf, &mut few, 128) {
        Ok(Some(f)) => f,
        Ok(None) => return Ok(None),
        Err(e) => return Err(Failure::Invalid(e.to_string())),
    };
    let mut map = HeaderMap::with_capacity(parsed.len());
    super::append_headers(&mut map, &parsed)?;
    let status = match map.remove("status") {
        Some(v) => {
            let code = v
                .as_bytes()
                .get(..3)
                .and_then(|c| std::str::from_utf8(c).ok());
            code.and_then(|c| c.parse::<u16>().ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .filter(|c| c.as_u16() >= 200)
                .ok_or_else(|| Failure::Invalid(format!("bad Status: {v:?}")))?
        }
        None if map.contains_key(header::LOCATION) => StatusCode::FOUND,
        None => StatusCode::OK,
    };
    Ok(Some((
        used,
        Head {
            status,
            headers: map,
        },
    )))
}

/// The rest of STDOUT, up to END_REQUEST.
pub struct Reader {
    /// `None` once the response ended or failed.
    conn: Option<PooledConn>,
    pending: Option<Bytes>,
    timeout: Duration,
    request: u64,
    server: String,
    /// Where the connection goes back when the request completed cleanly.
    state: Option<Arc<ServerState>>,
}

impl Reader {
    /// The request ended cleanly: the connection goes back to the pool, or, when not
    /// kept (the server closes it after END_REQUEST), ends with a reset.
    fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            match &self.state {
                Some(st) if conn.conn.buf.is_empty() => st.pool.put(0, conn),
                _ => conn.conn.stream.reset_on_close(),
            }
        }
    }

    /// For an answer without a body (HEAD, 204, 304): if the rest of the request (up to
    /// END_REQUEST) has already arrived, the connection is released as after a body;
    /// otherwise it is closed rather than waited for.
    pub fn finish_buffered(mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        while let Ok(Some((kind, content))) = buffered_record(&mut conn.conn) {
            match RecordType::from_u8(kind) {
                Some(RecordType::Stderr) => log_stderr(self.request, &self.server, &content),
                Some(RecordType::EndRequest) => return self.release(),
                _ => {}
            }
        }
    }
}

impl super::io::Pieces for Reader {
    async fn next(&mut self) -> Result<Option<Bytes>, Failure> {
        if let Some(p) = self.pending.take() {
            return Ok(Some(p));
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        loop {
            let (kind, content) = next_record(&mut conn.conn, self.timeout).await?;
            match RecordType::from_u8(kind) {
                Some(RecordType::Stdout) if !content.is_empty() => return Ok(Some(content)),
                Some(RecordType::Stderr) => log_stderr(self.request, &self.server, &content),
                Some(RecordType::EndRequest) => {
                    self.release();
                    return Ok(None);
                }
                _ => {}
            }
        }
    }

    fn abandon(&mut self, error: &Failure) {
        tracing::warn!(request = self.request, server = %self.server, error = %error,
            "FastCGI response body failed");
        self.conn = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_upstream::fixtures::{server_config, upstream_config};
    use portico_upstream::{SelectCtx, Upstream};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A FastCGI server that answers FCGI_GET_VALUES with FCGI_MAX_CONNS = 3 and every
    /// request with `answer`, written one byte at a time (records split everywhere).
    async fn fake_server(answer: Vec<u8>) -> std::net::SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = s.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if buf.get(1) == Some(&(RecordType::GetValues as u8)) {
                            let mut pairs = Vec::new();
                            fcgi::encode_pair(b"FCGI_MAX_CONNS", b"3", &mut pairs);
                            let mut out = Vec::new();
                            fcgi::encode_stream(RecordType::GetValuesResult, 0, &pairs, &mut out);
                            let _ = s.write_all(&out).await;
                            return;
                        }
                        // the request is complete at the empty STDIN record
                        if buf.ends_with(&fcgi::end_stream(RecordType::Stdin, ID)) {
                            for b in &answer {
                                if s.write_all(&[*b]).await.is_err() {
                                    return;
                                }
                            }
                            buf.clear();
                        }
                    }
                });
            }
        });
        addr
    }

    fn stdout(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        fcgi::encode_stream(RecordType::Stdout, ID, data, &mut out);
        out
    }

    fn end(status: ProtocolStatus) -> [u8; 16] {
        EndRequest {
            app_status: 0,
            protocol_status: status,
        }
        .encode(ID)
    }

    fn upstream(addr: std::net::SocketAddr) -> Upstream {
        let mut cfg = upstream_config(
            portico_config::Balance::RoundRobin,
            vec![server_config(portico_config::PeerAddr::Tcp(addr), 1)],
        );
        cfg.keepalive = 4;
        Upstream::new(cfg)
    }

    async fn body_text(body: crate::body::HttpBody) -> Vec<u8> {
        use http_body_util::BodyExt;
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn split_records_stderr_and_keep_conn_with_an_announced_limit() {
        let mut answer = Vec::new();
        fcgi::encode_stream(RecordType::Stderr, ID, b"warning one\n", &mut answer);
        answer.extend(stdout(b"Status: 201 Created\r\nX-A: 1\r\n\r\nhel"));
        answer.extend(stdout(b"lo"));
        answer.extend(end(ProtocolStatus::RequestComplete));
        let addr = fake_server(answer).await;
        let up = upstream(addr);
        let params = encode_params(&[("A".into(), b"1".to_vec())]).unwrap();
        for round in 0..2 {
            let pick = up.select(&SelectCtx::default()).unwrap();
            let mut body = RequestBody::Empty;
            let (head, reader) = attempt(&pick, &up.config, &params, &mut body, 1)
                .await
                .unwrap();
            assert_eq!(head.status, StatusCode::CREATED, "round {round}");
            assert_eq!(head.headers["x-a"], "1");
            assert_eq!(
                body_text(super::super::io::body_of(reader, pick)).await,
                b"hello"
            );
        }
        // FCGI_MAX_CONNS = 3 became the server's limit, so connections were kept.
        assert_eq!(up.servers[0].max_conns(), 3);
        let st = state(&up.servers[0], &up.config).unwrap();
        assert_eq!(st.pool.idle(), 1, "one connection, reused");
    }

    /// One request to a fake server answering `answer`; the failure it gives.
    async fn failure_for(answer: Vec<u8>) -> Option<Failure> {
        let up = upstream(fake_server(answer).await);
        let pick = up.select(&SelectCtx::default()).unwrap();
        let params = encode_params(&[]).unwrap();
        attempt(&pick, &up.config, &params, &mut RequestBody::Empty, 1)
            .await
            .err()
    }

    #[tokio::test]
    async fn overloaded_and_invalid_answers() {
        let f = failure_for(end(ProtocolStatus::Overloaded).to_vec())
            .await
            .expect("overloaded is a failure");
        assert!(matches!(f, Failure::Overloaded));
        assert_eq!(f.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!f.blames_server());

        let mut bad = stdout(b"no header here\r\n\r\n");
        bad.extend(end(ProtocolStatus::RequestComplete));
        let f = failure_for(bad)
            .await
            .expect("an invalid header is a failure");
        assert_eq!(f.status(), StatusCode::BAD_GATEWAY);

        let f = failure_for(end(ProtocolStatus::RequestComplete).to_vec()).await;
        assert!(matches!(f, Some(Failure::Invalid(_))), "no header at all");
    }

    #[test]
    fn cgi_heads() {
        let wire = b"Status: 404 Not Found\nContent-Type: text/plain\n\nbody";
        let (used, h) = parse_cgi_head(wire).unwrap().unwrap();
        assert_eq!(h.status, StatusCode::NOT_FOUND);
        assert!(h.headers.get("status").is_none());
        assert_eq!(&wire[used..], b"body");
        let (_, h) = parse_cgi_head(b"Location: /there\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.status, StatusCode::FOUND);
        let (_, h) = parse_cgi_head(b"Location: /there\r\nStatus: 301\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.status, StatusCode::MOVED_PERMANENTLY);
        let (_, h) = parse_cgi_head(b"X-A: 1\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert!(parse_cgi_head(b"X-A: 1\r\n").unwrap().is_none());
        assert!(parse_cgi_head(b"not a header\r\n\r\n").is_err());
        assert!(parse_cgi_head(b"Status: abc\r\n\r\n").is_err());
    }

    #[test]
    fn params_end_with_an_empty_record() {
        let vars = vec![("A".into(), b"1".to_vec())];
        let wire = encode_params(&vars).unwrap();
        assert_eq!(
            &wire[wire.len() - 8..],
            &fcgi::end_stream(RecordType::Params, ID)
        );
        let (rec, _) = fcgi::decode_record(&wire).unwrap().unwrap();
        assert_eq!(
            fcgi::decode_pairs(rec.content).unwrap(),
            vec![(&b"A"[..], &b"1"[..])]
        );
    }
}
