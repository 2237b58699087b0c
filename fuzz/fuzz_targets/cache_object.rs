//! Any bytes as a cache object file on disk (a torn or foreign file): decoding never
//! panics, and whatever decodes encodes back to bytes that decode to the same object.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = portico_cache::Meta::decode(data);
    if let Ok(o) = portico_cache::Object::decode_file(bytes::Bytes::copy_from_slice(data)) {
        let again = portico_cache::Object::decode_file(bytes::Bytes::from(o.encode_file()))
            .expect("an object that decoded encodes to a file that decodes");
        assert_eq!(again.encode_file(), o.encode_file());
    }
});
