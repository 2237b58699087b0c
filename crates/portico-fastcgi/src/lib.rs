//! The FastCGI protocol (Responder role), as a codec with no IO: the 8-byte record
//! header, BEGIN_REQUEST, name-value pairs with 1- and 4-byte lengths, streams (PARAMS,
//! STDIN, STDOUT, STDERR) split into records of at most 65,535 bytes, END_REQUEST, and
//! the GET_VALUES management exchange.
//!
//! Decoding works on whatever bytes have arrived: [`decode_record`] answers `Ok(None)`
//! until a whole record is buffered, so records split at any byte are handled by the
//! caller reading more. One record is at most 8 + 65,535 + 255 bytes, which bounds the
//! buffer a reader needs.
//!
//! Why not the fastcgi-client crate: see docs/fastcgi.md (its `execute` sends all of
//! STDIN before reading STDOUT, owns the connection per call so the pool, FCGI_GET_VALUES
//! and END_REQUEST's protocol status are out of reach, and allocates 64 KiB per write).

/// The protocol version every record carries.
pub const VERSION: u8 = 1;
/// The largest record content.
pub const MAX_CONTENT: usize = u16::MAX as usize;
/// The largest record on the wire: header, content and padding.
pub const MAX_RECORD: usize = 8 + MAX_CONTENT + 255;
/// The role a web server asks for.
pub const ROLE_RESPONDER: u16 = 1;
/// BEGIN_REQUEST flag: keep the connection open after END_REQUEST.
pub const FLAG_KEEP_CONN: u8 = 1;

/// Record types (FastCGI 1.0 §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordType {
    BeginRequest = 1,
    AbortRequest = 2,
    EndRequest = 3,
    Params = 4,
    Stdin = 5,
    Stdout = 6,
    Stderr = 7,
    Data = 8,
    GetValues = 9,
    GetValuesResult = 10,
    UnknownType = 11,
}

impl RecordType {
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::BeginRequest,
            2 => Self::AbortRequest,
            3 => Self::EndRequest,
            4 => Self::Params,
            5 => Self::Stdin,
            6 => Self::Stdout,
            7 => Self::Stderr,
            8 => Self::Data,
            9 => Self::GetValues,
            10 => Self::GetValuesResult,
            11 => Self::UnknownType,
            _ => return None,
        })
    }
}

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("FastCGI record with version {0}, expected 1")]
    BadVersion(u8),
    #[error("truncated name-value pair")]
    Truncated,
    #[error("END_REQUEST record with {0} content bytes, expected 8")]
    BadEndRequest(usize),
}

/// A record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// The type byte as sent (unknown types are kept for FCGI_UNKNOWN_TYPE).
    pub kind: u8,
    pub request_id: u16,
    pub content_length: u16,
    pub padding_length: u8,
}

impl RecordHeader {
    pub fn new(kind: RecordType, request_id: u16, content_length: u16) -> Self {
        Self {
            kind: kind as u8,
            request_id,
            content_length,
            padding_length: 0,
        }
    }

    pub fn encode(&self) -> [u8; 8] {
        let id = self.request_id.to_be_bytes();
        let len = self.content_length.to_be_bytes();
        [
            VERSION,
            self.kind,
            id[0],
            id[1],
            len[0],
            len[1],
            self.padding_length,
            0,
        ]
    }

    /// `Ok(None)` until 8 bytes are there.
    pub fn decode(b: &[u8]) -> Result<Option<Self>, Error> {
        let Some(h) = b.get(..8) else {
            return Ok(None);
        };
        if h[0] != VERSION {
            return Err(Error::BadVersion(h[0]));
        }
        Ok(Some(Self {
            kind: h[1],
            request_id: u16::from_be_bytes([h[2], h[3]]),
            content_length: u16::from_be_bytes([h[4], h[5]]),
            padding_length: h[6],
        }))
    }

    pub fn record_type(&self) -> Option<RecordType> {
        RecordType::from_u8(self.kind)
    }

    /// Header, content and padding.
    pub fn wire_len(&self) -> usize {
        8 + usize::from(self.content_length) + usize::from(self.padding_length)
    }
}

/// A whole record borrowed from the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub header: RecordHeader,
    pub content: &'a [u8],
}

/// Decodes the record at the start of `buf`: `Ok(None)` until it is all there, else the
/// record and how many bytes it took (padding included).
pub fn decode_record(buf: &[u8]) -> Result<Option<(Record<'_>, usize)>, Error> {
    let Some(header) = RecordHeader::decode(buf)? else {
        return Ok(None);
    };
    let total = header.wire_len();
    if buf.len() < total {
        return Ok(None);
    }
    let content = &buf[8..8 + usize::from(header.content_length)];
    Ok(Some((Record { header, content }, total)))
}

/// A BEGIN_REQUEST record for the Responder role.
pub fn begin_request(request_id: u16, keep_conn: bool) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&RecordHeader::new(RecordType::BeginRequest, request_id, 8).encode());
    out[8..10].copy_from_slice(&ROLE_RESPONDER.to_be_bytes());
    out[10] = if keep_conn { FLAG_KEEP_CONN } else { 0 };
    out
}

/// Appends `data` as records of `kind`, split at [`MAX_CONTENT`] bytes. Empty data
/// appends nothing: the empty record that ends a stream is [`end_stream`].
pub fn encode_stream(kind: RecordType, request_id: u16, data: &[u8], out: &mut Vec<u8>) {
    for chunk in data.chunks(MAX_CONTENT) {
        out.extend_from_slice(&RecordHeader::new(kind, request_id, chunk.len() as u16).encode());
        out.extend_from_slice(chunk);
    }
}

/// Appends name-value pairs as FCGI_PARAMS records, whole pairs to a record (at most
/// [`MAX_CONTENT`] bytes each), then the empty record that ends the stream. A pair is
/// never split across records: php-fpm's parser reads each record's pairs on their own
/// and resets the connection on a split one. A pair longer than one record can carry
/// cannot be sent: its index is the error.
pub fn encode_params(
    request_id: u16,
    pairs: impl IntoIterator<Item = (impl AsRef<[u8]>, impl AsRef<[u8]>)>,
    out: &mut Vec<u8>,
) -> Result<(), usize> {
    let mut record = Vec::new();
    for (i, (name, value)) in pairs.into_iter().enumerate() {
        let (name, value) = (name.as_ref(), value.as_ref());
        let len = pair_len(name, value);
        if len > MAX_CONTENT {
            return Err(i);
        }
        if record.len() + len > MAX_CONTENT {
            encode_stream(RecordType::Params, request_id, &record, out);
            record.clear();
        }
        encode_pair(name, value, &mut record);
    }
    encode_stream(RecordType::Params, request_id, &record, out);
    out.extend_from_slice(&end_stream(RecordType::Params, request_id));
    Ok(())
}

/// The empty record that ends a stream of `kind`.
pub fn end_stream(kind: RecordType, request_id: u16) -> [u8; 8] {
    RecordHeader::new(kind, request_id, 0).encode()
}

/// The header of one `kind` record carrying `len` (at most [`MAX_CONTENT`]) bytes, for
/// callers that write the content from their own buffer.
pub fn stream_header(kind: RecordType, request_id: u16, len: usize) -> [u8; 8] {
    RecordHeader::new(kind, request_id, len.min(MAX_CONTENT) as u16).encode()
}

fn encode_len(len: usize, out: &mut Vec<u8>) {
    if len < 128 {
        out.push(len as u8);
    } else {
        out.extend_from_slice(&((len as u32 & 0x7fff_ffff) | 0x8000_0000).to_be_bytes());
    }
}

/// Appends one name-value pair: lengths below 128 take one byte, longer ones four.
pub fn encode_pair(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    encode_len(name.len(), out);
    encode_len(value.len(), out);
    out.extend_from_slice(name);
    out.extend_from_slice(value);
}

/// The encoded size of one name-value pair.
pub fn pair_len(name: &[u8], value: &[u8]) -> usize {
    let l = |n: usize| if n < 128 { 1 } else { 4 };
    l(name.len()) + l(value.len()) + name.len() + value.len()
}

fn decode_len(b: &[u8], at: &mut usize) -> Result<usize, Error> {
    let first = *b.get(*at).ok_or(Error::Truncated)?;
    if first & 0x80 == 0 {
        *at += 1;
        return Ok(usize::from(first));
    }
    let four = b.get(*at..*at + 4).ok_or(Error::Truncated)?;
    *at += 4;
    Ok((u32::from_be_bytes([four[0], four[1], four[2], four[3]]) & 0x7fff_ffff) as usize)
}

/// One name-value pair borrowed from a decoded block.
pub type Pair<'a> = (&'a [u8], &'a [u8]);

/// Decodes a block of name-value pairs (a whole PARAMS stream or a GET_VALUES_RESULT).
pub fn decode_pairs(b: &[u8]) -> Result<Vec<Pair<'_>>, Error> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let nl = decode_len(b, &mut at)?;
        let vl = decode_len(b, &mut at)?;
        let name = b.get(at..at.checked_add(nl).ok_or(Error::Truncated)?);
        let name = name.ok_or(Error::Truncated)?;
        at += nl;
        let value = b
            .get(at..at.checked_add(vl).ok_or(Error::Truncated)?)
            .ok_or(Error::Truncated)?;
        at += vl;
        out.push((name, value));
    }
    Ok(out)
}

/// A FCGI_GET_VALUES record asking for `names` (values left empty, as the spec says).
pub fn get_values(names: &[&str]) -> Vec<u8> {
    let mut body = Vec::new();
    for n in names {
        encode_pair(n.as_bytes(), b"", &mut body);
    }
    let mut out = Vec::with_capacity(8 + body.len());
    encode_stream(RecordType::GetValues, 0, &body, &mut out);
    if body.is_empty() {
        out.extend_from_slice(&end_stream(RecordType::GetValues, 0));
    }
    out
}

/// END_REQUEST's protocolStatus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolStatus {
    RequestComplete,
    CantMpxConn,
    Overloaded,
    UnknownRole,
    Other(u8),
}

/// The content of an END_REQUEST record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndRequest {
    pub app_status: u32,
    pub protocol_status: ProtocolStatus,
}

impl EndRequest {
    pub fn decode(content: &[u8]) -> Result<Self, Error> {
        let c: &[u8; 8] = content
            .try_into()
            .map_err(|_| Error::BadEndRequest(content.len()))?;
        Ok(Self {
            app_status: u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
            protocol_status: match c[4] {
                0 => ProtocolStatus::RequestComplete,
                1 => ProtocolStatus::CantMpxConn,
                2 => ProtocolStatus::Overloaded,
                3 => ProtocolStatus::UnknownRole,
                n => ProtocolStatus::Other(n),
            },
        })
    }

    pub fn encode(&self, request_id: u16) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8]
            .copy_from_slice(&RecordHeader::new(RecordType::EndRequest, request_id, 8).encode());
        out[8..12].copy_from_slice(&self.app_status.to_be_bytes());
        out[12] = match self.protocol_status {
            ProtocolStatus::RequestComplete => 0,
            ProtocolStatus::CantMpxConn => 1,
            ProtocolStatus::Overloaded => 2,
            ProtocolStatus::UnknownRole => 3,
            ProtocolStatus::Other(n) => n,
        };
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_and_long_lengths() {
        let mut out = Vec::new();
        encode_pair(b"A", &[b'x'; 127], &mut out);
        assert_eq!(&out[..2], &[1, 127]);
        out.clear();
        encode_pair(b"A", &[b'x'; 128], &mut out);
        assert_eq!(&out[..5], &[1, 0x80, 0, 0, 128]);
        assert_eq!(out.len(), pair_len(b"A", &[b'x'; 128]));
        let pairs = decode_pairs(&out).unwrap();
        assert_eq!(pairs, vec![(&b"A"[..], &[b'x'; 128][..])]);
    }

    #[test]
    fn records_wait_for_all_their_bytes() {
        let mut wire = Vec::new();
        encode_stream(RecordType::Stdout, 1, b"hello", &mut wire);
        wire.extend_from_slice(&[0, 0, 0]); // padding declared below
        wire[6] = 3;
        for cut in 0..wire.len() {
            assert_eq!(decode_record(&wire[..cut]).unwrap(), None, "cut at {cut}");
        }
        let (rec, used) = decode_record(&wire).unwrap().unwrap();
        assert_eq!(used, wire.len());
        assert_eq!(rec.content, b"hello");
        assert_eq!(rec.header.record_type(), Some(RecordType::Stdout));
        assert_eq!(
            decode_record(&[2, 6, 0, 1, 0, 0, 0, 0]),
            Err(Error::BadVersion(2))
        );
    }

    #[test]
    fn streams_split_at_the_record_limit() {
        let data = vec![7u8; MAX_CONTENT * 2 + 10];
        let mut wire = Vec::new();
        encode_stream(RecordType::Stdin, 1, &data, &mut wire);
        let mut got = Vec::new();
        let mut at = 0;
        let mut records = 0;
        while let Some((rec, used)) = decode_record(&wire[at..]).unwrap() {
            got.extend_from_slice(rec.content);
            at += used;
            records += 1;
        }
        assert_eq!(records, 3);
        assert_eq!(got, data);
    }

    #[test]
    fn end_request_and_begin_request() {
        let end = EndRequest {
            app_status: 7,
            protocol_status: ProtocolStatus::Overloaded,
        };
        let wire = end.encode(1);
        let (rec, _) = decode_record(&wire).unwrap().unwrap();
        assert_eq!(EndRequest::decode(rec.content), Ok(end));
        assert_eq!(EndRequest::decode(&[0; 3]), Err(Error::BadEndRequest(3)));
        let begin = begin_request(1, true);
        assert_eq!(&begin[8..11], &[0, 1, FLAG_KEEP_CONN]);
    }

    #[test]
    fn a_pair_longer_than_a_record_is_refused() {
        let long = vec![b'q'; MAX_CONTENT];
        let mut out = Vec::new();
        assert_eq!(
            encode_params(
                1,
                [(&b"A"[..], &b"1"[..]), (&b"QUERY_STRING"[..], &long[..])],
                &mut out
            ),
            Err(1)
        );
    }

    #[test]
    fn get_values_asks_with_empty_values() {
        let wire = get_values(&["FCGI_MAX_CONNS", "FCGI_MAX_REQS"]);
        let (rec, _) = decode_record(&wire).unwrap().unwrap();
        assert_eq!(rec.header.request_id, 0);
        let pairs = decode_pairs(rec.content).unwrap();
        assert_eq!(pairs[0], (&b"FCGI_MAX_CONNS"[..], &b""[..]));
        assert_eq!(pairs.len(), 2);
    }

    proptest! {
        #[test]
        fn pairs_round_trip(pairs in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..300), proptest::collection::vec(any::<u8>(), 0..300)), 0..8)) {
            let mut out = Vec::new();
            for (n, v) in &pairs {
                encode_pair(n, v, &mut out);
            }
            let expected: usize = pairs.iter().map(|(n, v)| pair_len(n, v)).sum();
            prop_assert_eq!(out.len(), expected);
            let decoded = decode_pairs(&out).unwrap();
            let want: Vec<(&[u8], &[u8])> = pairs.iter().map(|(n, v)| (&n[..], &v[..])).collect();
            prop_assert_eq!(decoded, want);
        }

        /// Every PARAMS record holds whole pairs (as php-fpm reads them), and the records
        /// together give back every pair in order.
        #[test]
        fn params_records_never_split_a_pair(sizes in proptest::collection::vec(0usize..40_000, 1..6)) {
            let pairs: Vec<(Vec<u8>, Vec<u8>)> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| (format!("VAR{i}").into_bytes(), vec![b'v'; n]))
                .collect();
            let mut out = Vec::new();
            encode_params(1, pairs.iter().map(|(n, v)| (n, v)), &mut out).unwrap();
            let mut at = 0;
            let mut all = Vec::new();
            let mut ended = false;
            while let Some((rec, used)) = decode_record(&out[at..]).unwrap() {
                at += used;
                prop_assert_eq!(rec.header.record_type(), Some(RecordType::Params));
                if rec.content.is_empty() {
                    ended = true;
                    break;
                }
                let within = decode_pairs(rec.content);
                prop_assert!(within.is_ok(), "a record with a split pair");
                for (n, v) in within.unwrap() {
                    all.push((n.to_vec(), v.to_vec()));
                }
            }
            prop_assert!(ended && at == out.len());
            prop_assert_eq!(all, pairs);
        }

        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_pairs(&bytes);
            let mut at = 0;
            while let Ok(Some((_, used))) = decode_record(&bytes[at..]) {
                at += used;
            }
        }
    }
}
