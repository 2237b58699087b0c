//! On-the-fly response compression (the body filter of the request pipeline): gzip
//! (flate2), brotli (brotli) and zstd (zstd), chosen by the client's Accept-Encoding
//! with q-values in the route's order of preference.
//!
//! Why these crates and not async-compression: the filter wraps a body frame by frame
//! and must decide when output leaves (each event of a `text/event-stream` at once,
//! other bodies as the encoder fills); the synchronous encoders of these three
//! well-kept crates (flate2 on miniz_oxide, Dropbox's brotli port, the zstd bindings)
//! take a frame, give back what they produced, and flush on demand, with no
//! AsyncRead/AsyncBufRead adapters around the body in between.
//!
//! Never compressed: an answer already encoded, to HEAD, with status 204/304/206 or 1xx,
//! with `Cache-Control: no-transform`, of a type not listed, or declared shorter than
//! `min_bytes`. `Vary: Accept-Encoding` is added to every answer that could have been
//! compressed; Content-Length goes and a strong ETag becomes weak, as nginx does.

use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use portico_config::{Coding, Compress};

use crate::body::{BoxError, HttpBody};

/// The coding to use for a client's Accept-Encoding, among `offered` (in preference
/// order): the highest q wins, ties go to the earlier offered; q=0 refuses; `*` stands
/// for codings not named.
pub fn choose(accept: &str, offered: &[Coding]) -> Option<Coding> {
    let mut best: Option<(u32, usize, Coding)> = None;
    for (rank, &c) in offered.iter().enumerate() {
        let mut q_named = None;
        let mut q_star = None;
        for item in accept.split(',') {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .next()
                .map_or(1000, parse_q);
            if name.eq_ignore_ascii_case(c.token()) {
                q_named = Some(q);
            } else if name == "*" {
                q_star = Some(q);
            }
        }
        let q = q_named.or(q_star).unwrap_or(0);
        if q > 0 && best.is_none_or(|(bq, br, _)| q > bq || (q == bq && rank < br)) {
            best = Some((q, rank, c));
        }
    }
    best.map(|(_, _, c)| c)
}

/// A q-value in thousandths (`0.5` → 500); malformed is 0.
fn parse_q(s: &str) -> u32 {
    let s = s.trim();
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let int: u32 = match int {
        "0" => 0,
        "1" => 1000,
        _ => return 0,
    };
    let frac: String = frac.chars().take(3).collect();
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    let digits = format!("{frac:0<3}");
    (int + digits.parse::<u32>().unwrap_or(0)).min(1000)
}

/// Whether `content_type` matches one of `types` (`text/*` or exact, parameters ignored).
fn type_listed(content_type: &str, types: &[String]) -> bool {
    let ct = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    types.iter().any(|t| match t.strip_suffix("/*") {
        Some(major) => ct.split('/').next() == Some(major),
        None => *t == ct,
    })
}

/// What the compression filter makes of one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Not compressible (encoded already, HEAD, 204/206/304, no-transform, a type not
    /// listed, shorter than `min_bytes`): left as it is.
    Leave,
    /// Compressible, but the client accepts none of the codings: only
    /// `Vary: Accept-Encoding` is added.
    VaryOnly,
    Encode(Coding),
}

/// Whether `cfg` compresses an answer with `status` and `h` to a `method` request whose
/// Accept-Encoding is `accept`, and how.
pub fn decide(
    cfg: &Compress,
    method: &Method,
    accept: Option<&HeaderValue>,
    status: StatusCode,
    h: &HeaderMap,
) -> Decision {
    let eligible = *method != Method::HEAD
        && !matches!(
            status,
            StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED | StatusCode::PARTIAL_CONTENT
        )
        && !status.is_informational()
        && !h.contains_key(header::CONTENT_ENCODING)
        && !h.contains_key(header::CONTENT_RANGE)
        && !h.get_all(header::CACHE_CONTROL).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.to_ascii_lowercase().contains("no-transform"))
        })
        && h.get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| type_listed(ct, &cfg.types))
        && declared_len(h).is_none_or(|n| n >= cfg.min_bytes);
    if !eligible {
        return Decision::Leave;
    }
    accept
        .and_then(|a| a.to_str().ok())
        .and_then(|a| choose(a, &cfg.algorithms))
        .map_or(Decision::VaryOnly, Decision::Encode)
}

/// The headers of an answer encoded with `coding`: Content-Encoding, Vary, no
/// Content-Length, a weak ETag (as nginx does).
pub fn encoded_headers(h: &mut HeaderMap, coding: Coding) {
    append_vary(h);
    h.remove(header::CONTENT_LENGTH);
    h.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(coding.token()),
    );
    if let Some(tag) = h.get(header::ETAG) {
        if !tag.as_bytes().starts_with(b"W/") {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(tag.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&weak) {
                h.insert(header::ETAG, v);
            }
        }
    }
}

/// A whole body encoded with `coding` (a stored object, compressed once).
pub fn encode_whole(coding: Coding, cfg: &Compress, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut e = Encoder::new(coding, cfg)?;
    e.write(data)?;
    let mut out = e.take();
    out.extend_from_slice(&e.finish()?);
    Ok(out)
}

/// Compresses `resp` when `cfg`, the request and the response allow it.
pub fn filter(
    cfg: &Compress,
    method: &Method,
    accept: Option<&HeaderValue>,
    resp: Response<HttpBody>,
) -> Response<HttpBody> {
    let coding = match decide(cfg, method, accept, resp.status(), resp.headers()) {
        Decision::Leave => return resp,
        Decision::VaryOnly => {
            let (mut parts, body) = resp.into_parts();
            append_vary(&mut parts.headers);
            return Response::from_parts(parts, body);
        }
        Decision::Encode(c) => c,
    };
    let (mut parts, body) = resp.into_parts();
    let sse = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    let encoder = match Encoder::new(coding, cfg) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(coding = coding.token(), error = %e, "compressor failed to start");
            return Response::from_parts(parts, body);
        }
    };
    encoded_headers(&mut parts.headers, coding);
    // the file's bytes go through the encoder, not past it with sendfile
    parts.extensions.remove::<crate::sendfile::Sendfile>();
    let body = Compressed {
        inner: body,
        encoder: Some(encoder),
        flush_each: sse,
        trailers: None,
    };
    Response::from_parts(parts, body.boxed())
}

fn declared_len(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn append_vary(h: &mut HeaderMap) {
    let present = h.get_all(header::VARY).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("accept-encoding") || t.trim() == "*")
        })
    });
    if !present {
        h.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

/// One of the three encoders, writing into its own buffer.
enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    fn new(c: Coding, cfg: &Compress) -> std::io::Result<Self> {
        Ok(match c {
            Coding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(cfg.gzip_level),
            )),
            Coding::Br => Encoder::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                cfg.br_level,
                22,
            ))),
            Coding::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(
                Vec::new(),
                cfg.zstd_level,
            )?),
        })
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.write_all(data),
            Encoder::Br(e) => e.write_all(data),
            Encoder::Zstd(e) => e.write_all(data),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Br(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }

    /// What the encoder produced so far.
    fn take(&mut self) -> Vec<u8> {
        let buf = match self {
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Br(e) => e.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
        };
        std::mem::take(buf)
    }

    /// Ends the stream: the rest of the output.
    fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Br(e) => Ok(e.into_inner()),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

struct Compressed {
    inner: HttpBody,
    encoder: Option<Encoder>,
    flush_each: bool,
    /// Trailers that came after the last data, sent after the encoder's last output.
    trailers: Option<HeaderMap>,
}

impl Body for Compressed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(enc) = this.encoder.as_mut() else {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            };
            match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        enc.write(&data)?;
                        if this.flush_each {
                            enc.flush()?;
                        }
                        let out = enc.take();
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            this.trailers = Some(t);
                        }
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    let Some(enc) = this.encoder.take() else {
                        return Poll::Ready(None);
                    };
                    let out = enc.finish()?;
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.encoder.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coding_follows_q_values_then_the_servers_order() {
        use Coding::*;
        let ours = [Zstd, Br, Gzip];
        assert_eq!(choose("gzip, deflate, br", &ours), Some(Br));
        assert_eq!(choose("gzip;q=1.0, br;q=0.5", &ours), Some(Gzip));
        assert_eq!(choose("br;q=0, gzip", &ours), Some(Gzip));
        assert_eq!(choose("identity", &ours), None);
        assert_eq!(choose("*", &ours), Some(Zstd));
        assert_eq!(choose("*;q=0.1, gzip;q=0.2", &ours), Some(Gzip));
        assert_eq!(choose("gzip;q=0.000", &ours), None);
        assert_eq!(choose("GZIP", &[Gzip]), Some(Gzip));
        assert_eq!(choose("gzip;q=bogus", &[Gzip]), None);
    }

    #[test]
    fn types_match_by_pattern() {
        let types = vec!["text/*".to_string(), "application/json".to_string()];
        assert!(type_listed("text/html; charset=utf-8", &types));
        assert!(type_listed("Application/JSON", &types));
        assert!(!type_listed("image/png", &types));
        assert!(!type_listed("application/json-seq", &types));
    }
}
