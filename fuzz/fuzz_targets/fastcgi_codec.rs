//! Any bytes as a FastCGI record stream: decoding never panics, records consume what
//! they declare, and name-value blocks re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_fastcgi as fcgi;

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while let Ok(Some((rec, used))) = fcgi::decode_record(&data[at..]) {
        assert!(used >= 8 && used <= fcgi::MAX_RECORD);
        assert_eq!(rec.content.len(), usize::from(rec.header.content_length));
        let _ = fcgi::EndRequest::decode(rec.content);
        at += used;
    }
    if let Ok(pairs) = fcgi::decode_pairs(data) {
        let mut out = Vec::new();
        for (n, v) in &pairs {
            fcgi::encode_pair(n, v, &mut out);
        }
        // Lengths below 128 may also be sent in the 4-byte form: compare decoded pairs.
        assert_eq!(fcgi::decode_pairs(&out).ok(), Some(pairs));
    }
});
