//! Any bytes as an IMAP, POP3 or SMTP command line, an SMTP reply line, or an auth_http
//! answer: parsing never panics, and IMAP literals announced are bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_mail::{auth_http, imap, pop3, smtp};

fuzz_target!(|data: &[u8]| {
    let mut tokens = Vec::new();
    if let Ok(Some(lit)) = imap::scan(data, &mut tokens) {
        assert!(lit.len <= imap::MAX_LITERAL);
    }
    let _ = imap::Command::from_tokens(tokens);
    let _ = pop3::parse(data);
    let _ = smtp::parse(data);
    if let Some((code, _, text)) = smtp::parse_reply_line(data) {
        assert!(code <= 999 && text.len() <= data.len());
    }
    let _ = auth_http::parse_answer(data);
});
