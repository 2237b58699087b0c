//! The uwsgi binary protocol, as a codec with no IO: the 4-byte packet header (modifier1
//! u8, datasize u16 little-endian, modifier2 u8), the vars block (u16-LE-length key and
//! value pairs), and the PING exchange (modifier1 100) used by health checks.
//!
//! The gateway that speaks it over a connection (building the vars from an HTTP request
//! as nginx's `uwsgi_params` do, streaming the body, parsing the app's HTTP answer) is
//! `portico-http`'s `gateway::uwsgi`; this crate is what it, the health probe and the
//! fuzz target share.

/// modifier1 for a WSGI request (uWSGI's Python plugin).
pub const MODIFIER_WSGI: u8 = 0;
/// modifier1 of a PING request and its PONG answer.
pub const MODIFIER_PING: u8 = 100;
/// The largest vars block a packet can carry (datasize is a u16).
pub const MAX_VARS: usize = u16::MAX as usize;

/// The packet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub modifier1: u8,
    pub datasize: u16,
    pub modifier2: u8,
}

impl Header {
    pub fn encode(&self) -> [u8; 4] {
        let size = self.datasize.to_le_bytes();
        [self.modifier1, size[0], size[1], self.modifier2]
    }

    /// `None` until 4 bytes are there.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let h = b.get(..4)?;
        Some(Self {
            modifier1: h[0],
            datasize: u16::from_le_bytes([h[1], h[2]]),
            modifier2: h[3],
        })
    }
}

/// Why vars could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The vars exceed the 65,535 bytes a packet can carry (or the configured limit).
    #[error("vars take {size} bytes, more than the {limit} allowed")]
    TooLarge { size: usize, limit: usize },
    /// One key or value is longer than 65,535 bytes.
    #[error("a var is longer than 65535 bytes")]
    VarTooLong,
    /// The vars block ends inside a length or a string.
    #[error("truncated vars block")]
    Truncated,
}

/// The encoded size of `vars` (without the header).
pub fn vars_size<K: AsRef<[u8]>, V: AsRef<[u8]>>(vars: &[(K, V)]) -> usize {
    vars.iter()
        .map(|(k, v)| 4 + k.as_ref().len() + v.as_ref().len())
        .sum()
}

/// Encodes a request packet: header then vars. `limit` (at most [`MAX_VARS`]) is the
/// largest vars block accepted, e.g. the server's uWSGI `buffer-size`.
pub fn encode_request<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    modifier1: u8,
    modifier2: u8,
    vars: &[(K, V)],
    limit: usize,
) -> Result<Vec<u8>, Error> {
    let limit = limit.min(MAX_VARS);
    let size = vars_size(vars);
    if size > limit {
        return Err(Error::TooLarge { size, limit });
    }
    let mut out = Vec::with_capacity(4 + size);
    let header = Header {
        modifier1,
        datasize: size as u16,
        modifier2,
    };
    out.extend_from_slice(&header.encode());
    for (k, v) in vars {
        for s in [k.as_ref(), v.as_ref()] {
            let len = u16::try_from(s.len()).map_err(|_| Error::VarTooLong)?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(s);
        }
    }
    Ok(out)
}

/// One decoded var: key and value bytes.
pub type Var = (Vec<u8>, Vec<u8>);

/// Decodes a vars block into key/value pairs (in order; duplicates kept).
pub fn decode_vars(mut b: &[u8]) -> Result<Vec<Var>, Error> {
    let take = |b: &mut &[u8]| -> Result<Vec<u8>, Error> {
        let len = b.get(..2).ok_or(Error::Truncated)?;
        let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
        let s = b.get(2..2 + len).ok_or(Error::Truncated)?.to_vec();
        *b = &b[2 + len..];
        Ok(s)
    };
    let mut out = Vec::new();
    while !b.is_empty() {
        let k = take(&mut b)?;
        let v = take(&mut b)?;
        out.push((k, v));
    }
    Ok(out)
}

/// The PING packet: modifier1 100, no vars.
pub fn ping() -> [u8; 4] {
    Header {
        modifier1: MODIFIER_PING,
        datasize: 0,
        modifier2: 0,
    }
    .encode()
}

/// Whether `answer` starts with a PONG header.
pub fn is_pong(answer: &[u8]) -> bool {
    Header::decode(answer).is_some_and(|h| h.modifier1 == MODIFIER_PING)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_packet() {
        let p = encode_request(
            0,
            0,
            &[("REQUEST_METHOD", "GET"), ("PATH_INFO", "/")],
            MAX_VARS,
        )
        .unwrap();
        let mut want = vec![0u8, 0, 0, 0];
        for s in ["REQUEST_METHOD", "GET", "PATH_INFO", "/"] {
            want.extend((s.len() as u16).to_le_bytes());
            want.extend(s.as_bytes());
        }
        let size = (want.len() - 4) as u16;
        want[1..3].copy_from_slice(&size.to_le_bytes());
        assert_eq!(p, want);
        assert_eq!(ping(), [100, 0, 0, 0]);
        assert!(is_pong(&[100, 0, 0, 0]));
        assert!(!is_pong(&[0, 0, 0, 0]));
        assert!(!is_pong(&[100, 0]));
    }

    #[test]
    fn limits() {
        let big = "x".repeat(40_000);
        let vars = [("A", big.as_str()), ("B", big.as_str())];
        assert!(matches!(
            encode_request(0, 0, &vars, MAX_VARS),
            Err(Error::TooLarge { .. })
        ));
        assert!(matches!(
            encode_request(0, 0, &[("A", "x".repeat(5000))], 4096),
            Err(Error::TooLarge {
                size: 5005,
                limit: 4096
            })
        ));
        assert_eq!(decode_vars(&[5, 0, b'a']), Err(Error::Truncated));
        assert_eq!(decode_vars(&[1, 0, b'a']), Err(Error::Truncated));
    }

    proptest! {
        #[test]
        fn vars_round_trip(vars in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..40), proptest::collection::vec(any::<u8>(), 0..200)), 0..30), m1 in any::<u8>(), m2 in any::<u8>()) {
            let p = encode_request(m1, m2, &vars, MAX_VARS).unwrap();
            let h = Header::decode(&p).unwrap();
            prop_assert_eq!((h.modifier1, h.modifier2, usize::from(h.datasize)), (m1, m2, p.len() - 4));
            prop_assert_eq!(decode_vars(&p[4..]).unwrap(), vars);
        }

        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_vars(&bytes);
            let _ = Header::decode(&bytes);
        }
    }
}
