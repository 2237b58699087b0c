//! Responses Portico makes itself: small HTML error pages, as nginx does.

use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, SERVER};
use http::{Response, StatusCode};

use crate::body::{full, HttpBody};

pub const SERVER_NAME: &str = "portico";
/// [`SERVER_NAME`] as a header value, made at compile time.
pub const SERVER_VALUE: HeaderValue = HeaderValue::from_static(SERVER_NAME);

/// A small HTML page for `status`. Client errors that leave the stream in doubt (400,
/// 408, 413, 431) also close the connection.
pub fn error_response(status: StatusCode) -> Response<HttpBody> {
    let reason = status.canonical_reason().unwrap_or("");
    let code = status.as_u16();
    let html = format!(
        "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n<center><h1>{code} {reason}</h1></center>\r\n<hr><center>{SERVER_NAME}</center>\r\n</body>\r\n</html>\r\n"
    );
    let mut resp = Response::new(full(html));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
    h.insert(SERVER, SERVER_VALUE);
    if matches!(code, 400 | 408 | 413 | 431) {
        h.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp.extensions_mut().insert(Own);
    resp
}

/// Marks a response Portico made itself (not an upstream's): `error_pages` replace
/// these, and upstream answers only with `intercept_errors`.
#[derive(Clone, Copy)]
pub struct Own;

/// Whether Portico made `resp` itself.
pub fn is_own<B>(resp: &Response<B>) -> bool {
    resp.extensions().get::<Own>().is_some()
}
