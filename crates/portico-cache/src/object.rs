//! A stored response: its head ([`Meta`]) and its body, and the byte format both take
//! on disk.
//!
//! On disk an object is one file: a magic line, the meta's length and bytes, the body,
//! then a trailer holding the body's length, a CRC-32 of meta and body, and an end
//! mark. A file written only in part (a crash, a full disk) fails the trailer check and
//! is never served.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::freshness::Times;

/// The head of a stored response and what it was stored under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// The rendered cache key.
    pub key: String,
    pub status: u16,
    /// The response's headers as the upstream sent them (hop-by-hop ones removed).
    pub headers: HeaderMap,
    pub times: Times,
    /// The request headers its Vary names, with the values (normalised) of the request
    /// that fetched it.
    pub vary: Vec<(HeaderName, Vec<u8>)>,
    /// The server that answered, for the filters that rewrite its address.
    pub upstream: Option<String>,
}

/// A complete stored response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub meta: Meta,
    pub body: Bytes,
}

impl Object {
    /// What the object costs in memory: body, header bytes, key, and the allocations
    /// around them (measured: `examples/admission.rs`, about 1.5 KB for a 200-byte
    /// body with six headers).
    pub fn weight(&self) -> u32 {
        let headers: usize = self
            .meta
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 96)
            .sum();
        let vary: usize = self
            .meta
            .vary
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        let w = self.body.len() + headers + vary + self.meta.key.len() + 640;
        u32::try_from(w).unwrap_or(u32::MAX)
    }
}

const MAGIC: &[u8; 16] = b"PORTICO-CACHE-1\n";
const END: &[u8; 4] = b"END!";
/// The largest meta a file may declare (headers are bounded far below this).
const MAX_META: usize = 1 << 20;

/// Why bytes are not an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Torn;

struct Writer(Vec<u8>);

impl Writer {
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(&(b.len() as u32).to_le_bytes());
        self.0.extend_from_slice(b);
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Torn> {
        if self.0.len() < n {
            return Err(Torn);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, Torn> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, Torn> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Result<&'a [u8], Torn> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

impl Meta {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(256));
        w.bytes(self.key.as_bytes());
        w.u64(u64::from(self.status));
        let t = &self.times;
        for v in [
            t.response_ms,
            t.initial_age_ms,
            t.lifetime_ms,
            t.swr_ms,
            t.sie_ms,
        ] {
            w.u64(v);
        }
        w.u64(u64::from(t.must_revalidate) | u64::from(t.no_cache) << 1);
        w.bytes(self.upstream.as_deref().unwrap_or("").as_bytes());
        w.u64(self.headers.len() as u64);
        for (n, v) in &self.headers {
            w.bytes(n.as_str().as_bytes());
            w.bytes(v.as_bytes());
        }
        w.u64(self.vary.len() as u64);
        for (n, v) in &self.vary {
            w.bytes(n.as_str().as_bytes());
            w.bytes(v);
        }
        w.0
    }

    pub fn decode(b: &[u8]) -> Result<Self, Torn> {
        let mut r = Reader(b);
        let key = String::from_utf8(r.bytes()?.to_vec()).map_err(|_| Torn)?;
        let status = u16::try_from(r.u64()?).map_err(|_| Torn)?;
        let mut v = [0u64; 6];
        for x in &mut v {
            *x = r.u64()?;
        }
        let times = Times {
            response_ms: v[0],
            initial_age_ms: v[1],
            lifetime_ms: v[2],
            swr_ms: v[3],
            sie_ms: v[4],
            must_revalidate: v[5] & 1 != 0,
            no_cache: v[5] & 2 != 0,
        };
        let upstream = std::str::from_utf8(r.bytes()?).map_err(|_| Torn)?;
        let upstream = (!upstream.is_empty()).then(|| upstream.to_string());
        let n = r.u64()?;
        let mut headers = HeaderMap::new();
        for _ in 0..n {
            let name = HeaderName::from_bytes(r.bytes()?).map_err(|_| Torn)?;
            let value = HeaderValue::from_bytes(r.bytes()?).map_err(|_| Torn)?;
            headers.append(name, value);
        }
        let n = r.u64()?;
        let mut vary = Vec::new();
        for _ in 0..n.min(64) {
            let name = HeaderName::from_bytes(r.bytes()?).map_err(|_| Torn)?;
            vary.push((name, r.bytes()?.to_vec()));
        }
        if n > 64 || !r.0.is_empty() {
            return Err(Torn);
        }
        Ok(Self {
            key,
            status,
            headers,
            times,
            vary,
            upstream,
        })
    }
}

/// The start of an object file: magic and meta. The body follows, then [`trailer`].
pub fn file_head(meta: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + meta.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(meta);
    out
}

/// The end of an object file, `crc` being the CRC-32 of everything after the magic
/// and the meta length up to here (meta and body).
pub fn trailer(body_len: u64, crc: u32) -> [u8; 16] {
    let mut t = [0; 16];
    t[..8].copy_from_slice(&body_len.to_le_bytes());
    t[8..12].copy_from_slice(&crc.to_le_bytes());
    t[12..].copy_from_slice(END);
    t
}

impl Object {
    /// The whole file for this object.
    pub fn encode_file(&self) -> Vec<u8> {
        let meta = self.meta.encode();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&meta);
        crc.update(&self.body);
        let mut out = file_head(&meta);
        out.reserve(self.body.len() + 16);
        out.extend_from_slice(&self.body);
        out.extend_from_slice(&trailer(self.body.len() as u64, crc.finalize()));
        out
    }

    /// An object file read back; anything short, long or altered is [`Torn`].
    pub fn decode_file(file: Bytes) -> Result<Self, Torn> {
        let (meta_len, meta) = head(&file)?;
        let body_start = MAGIC.len() + 4 + meta_len;
        if file.len() < body_start + 16 {
            return Err(Torn);
        }
        let end = file.len() - 16;
        let mut t = Reader(&file[end..]);
        let body_len = t.u64()?;
        let crc = t.u32()?;
        if t.take(4)? != END || body_len != (end - body_start) as u64 {
            return Err(Torn);
        }
        let mut h = crc32fast::Hasher::new();
        h.update(&file[MAGIC.len() + 4..end]);
        if h.finalize() != crc {
            return Err(Torn);
        }
        Ok(Self {
            meta,
            body: file.slice(body_start..end),
        })
    }
}

/// The meta of an object file from its first bytes (enough of them: see
/// [`head_len`]), for indexing a disk tier without reading bodies.
pub fn head(file: &[u8]) -> Result<(usize, Meta), Torn> {
    let meta_len = head_len(file)?;
    let start = MAGIC.len() + 4;
    let meta = file.get(start..start + meta_len).ok_or(Torn)?;
    Ok((meta_len, Meta::decode(meta)?))
}

/// The meta length an object file declares.
pub fn head_len(file: &[u8]) -> Result<usize, Torn> {
    if file.len() < MAGIC.len() + 4 || &file[..MAGIC.len()] != MAGIC {
        return Err(Torn);
    }
    let mut r = Reader(&file[MAGIC.len()..]);
    let n = r.u32()? as usize;
    if n > MAX_META {
        return Err(Torn);
    }
    Ok(n)
}

/// Bytes before the meta in an object file.
pub const HEAD_PREFIX: usize = MAGIC.len() + 4;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(body: &[u8]) -> Object {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/html"));
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        Object {
            meta: Meta {
                key: "http://shop.example/a?b".into(),
                status: 200,
                headers,
                times: Times {
                    response_ms: 5,
                    lifetime_ms: 60_000,
                    no_cache: true,
                    ..Times::default()
                },
                vary: vec![(HeaderName::from_static("accept-encoding"), b"gzip".to_vec())],
                upstream: Some("127.0.0.1:8000".into()),
            },
            body: Bytes::copy_from_slice(body),
        }
    }

    #[test]
    fn round_trip() {
        let o = sample(b"hello");
        let file = Bytes::from(o.encode_file());
        assert_eq!(Object::decode_file(file.clone()), Ok(o.clone()));
        assert_eq!(head(&file).map(|(_, m)| m), Ok(o.meta));
    }

    #[test]
    fn torn_files_are_refused() {
        let file = sample(b"0123456789").encode_file();
        for cut in 0..file.len() {
            assert_eq!(
                Object::decode_file(Bytes::copy_from_slice(&file[..cut])),
                Err(Torn),
                "cut at {cut}"
            );
        }
        let mut flipped = file.clone();
        let i = flipped.len() - 20;
        flipped[i] ^= 1;
        assert_eq!(Object::decode_file(Bytes::from(flipped)), Err(Torn));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Object::decode_file(Bytes::from(b.clone()));
            let _ = Meta::decode(&b);
        }
    }
}
