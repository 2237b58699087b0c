//! Any bytes as a uwsgi packet: decoding never panics, and whatever decodes encodes
//! back to the same vars block.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = portico_uwsgi::Header::decode(data);
    let _ = portico_uwsgi::is_pong(data);
    let body = data.get(4..).unwrap_or_default();
    if let Ok(vars) = portico_uwsgi::decode_vars(body) {
        let pairs: Vec<(&[u8], &[u8])> = vars.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        if let Ok(packet) = portico_uwsgi::encode_request(0, 0, &pairs, portico_uwsgi::MAX_VARS) {
            assert_eq!(&packet[4..], body);
        }
    }
});
