//! `static = { root, index }`: files from disk with nginx `root` semantics.
//!
//! The request path (already normalized: decoded, dot segments resolved, so it cannot
//! climb out of the root) is appended to the root. A directory's index file is an
//! internal redirect made before this (`HttpService::dispatch`); a directory reaching
//! here has none (403), and one asked for without its trailing slash is redirected (301).
//! Conditional requests (ETag, Last-Modified) and single byte ranges are honoured.

mod small;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use portico_config::StaticConfig;

use crate::body::{empty, HttpBody};
use crate::conditional::{not_modified, requested_range, RangeResult};
use crate::errors::{error_response, SERVER_VALUE};
use crate::sendfile::file_body;
use portico_core::FileSend;

/// Serves `path` (normalized, starting with `/`) from `cfg.root`.
pub async fn serve(
    cfg: &StaticConfig,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Response<HttpBody> {
    let not_allowed = || {
        let mut r = error_response(StatusCode::METHOD_NOT_ALLOWED);
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        r
    };
    // nginx: a POST is looked up (a missing file is 404, which an error page may
    // answer), then refused; other methods are refused at once
    let post = *method == Method::POST;
    if !matches!(*method, Method::GET | Method::HEAD) && !post {
        return not_allowed();
    }
    let Some(mut file_path) = file_for(cfg, path) else {
        return error_response(StatusCode::NOT_FOUND);
    };
    let mut meta = match std::fs::metadata(&file_path) {
        Ok(m) => m,
        Err(e) => return io_error(e, &file_path),
    };
    if meta.is_dir() {
        if !path.ends_with('/') {
            let location = match query {
                Some(q) => format!("{path}/?{q}"),
                None => format!("{path}/"),
            };
            let mut r = error_response(StatusCode::MOVED_PERMANENTLY);
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return r;
        }
        // A directory's index file was an internal redirect already (the index phase of
        // `HttpService::dispatch`, as nginx's index module): none was found here.
        // nginx answers 403 for a directory without index (autoindex off).
        return error_response(StatusCode::FORBIDDEN);
    }
    if !meta.is_file() {
        return error_response(StatusCode::NOT_FOUND);
    }
    if post {
        return not_allowed();
    }
    // The type is the original file's, whichever file is sent.
    let file_type = content_type(&file_path);
    let mut encoding = None;
    if cfg.precompressed {
        if let Some((coding, p, m)) = precompressed(&file_path, headers) {
            encoding = Some(coding);
            file_path = p;
            meta = m;
        }
    }
    let size = meta.len();
    // a small file comes from the worker's table (one stat, checked against it)
    let kept = match small::get(&file_path, &meta) {
        Some(Ok(f)) => Some(f),
        Some(Err(e)) => return io_error(e, &file_path),
        None => None,
    };
    let (etag_v, last_modified_v, secs) = match &kept {
        Some(f) => (f.etag.clone(), f.last_modified.clone(), f.secs),
        None => {
            let (etag, secs, last_modified) = small::validators(&meta);
            match (
                HeaderValue::from_str(&etag),
                HeaderValue::from_str(&last_modified),
            ) {
                (Ok(e), Ok(l)) => (e, l, secs),
                _ => return error_response(StatusCode::INTERNAL_SERVER_ERROR),
            }
        }
    };
    let etag = etag_v.to_str().unwrap_or_default();
    let last_modified = last_modified_v.to_str().unwrap_or_default();

    let mut base = HeaderMap::with_capacity(10);
    base.insert(header::SERVER, SERVER_VALUE);
    base.insert(header::ETAG, etag_v.clone());
    base.insert(header::LAST_MODIFIED, last_modified_v.clone());
    base.insert(
        header::ACCEPT_RANGES,
        const { HeaderValue::from_static("bytes") },
    );
    if cfg.precompressed {
        base.append(
            header::VARY,
            const { HeaderValue::from_static("Accept-Encoding") },
        );
    }
    if let Some(c) = encoding {
        base.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(c.token()),
        );
    }
    if let Some(e) = cfg.expires {
        expires_headers(e, &mut base);
    }

    if not_modified(headers, Some(etag), Some(secs)) {
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        *r.headers_mut() = base;
        return r;
    }

    base.insert(header::CONTENT_TYPE, file_type);

    let range = requested_range(headers, size, Some(etag), Some(last_modified));
    let (status, start, len) = match range {
        None | Some(RangeResult::Ignore) => (StatusCode::OK, 0, size),
        Some(RangeResult::Unsatisfiable) => {
            let mut r = error_response(StatusCode::RANGE_NOT_SATISFIABLE);
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
        Some(RangeResult::Range(a, b)) => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{b}/{size}")) {
                base.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, a, b - a + 1)
        }
    };
    base.insert(header::CONTENT_LENGTH, HeaderValue::from(len));

    let mut offer = None;
    let body = if *method == Method::HEAD {
        empty()
    } else if let Some(f) = kept {
        crate::body::full(f.data.slice(start as usize..(start + len) as usize))
    } else {
        match std::fs::File::open(&file_path) {
            Ok(f) => {
                let how = if cfg.sendfile {
                    FileSend::Sendfile
                } else {
                    FileSend::Copy
                };
                let (body, o) = file_body(f, start, len, how);
                offer = Some(o);
                body
            }
            Err(e) => return io_error(e, &file_path),
        }
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = base;
    if let Some(o) = offer {
        r.extensions_mut().insert(o);
    }
    r
}

/// `precompressed`: the sidecar file (FILE.br, FILE.zst, FILE.gz) the client's
/// Accept-Encoding prefers among those that exist, with its metadata.
fn precompressed(
    file: &Path,
    headers: &HeaderMap,
) -> Option<(portico_config::Coding, PathBuf, std::fs::Metadata)> {
    use portico_config::Coding;
    let accept = headers.get(header::ACCEPT_ENCODING)?.to_str().ok()?;
    let sidecar = |c: Coding| {
        let ext = match c {
            Coding::Br => "br",
            Coding::Zstd => "zst",
            Coding::Gzip => "gz",
        };
        let mut name = file.as_os_str().to_os_string();
        name.push(".");
        name.push(ext);
        let p = PathBuf::from(name);
        let m = std::fs::metadata(&p).ok().filter(|m| m.is_file())?;
        Some((c, p, m))
    };
    let present: Vec<_> = [Coding::Br, Coding::Zstd, Coding::Gzip]
        .into_iter()
        .filter_map(sidecar)
        .collect();
    let codings: Vec<Coding> = present.iter().map(|(c, _, _)| *c).collect();
    let chosen = crate::compress::choose(accept, &codings)?;
    present.into_iter().find(|(c, _, _)| *c == chosen)
}

/// Where `path` is on disk: under `root` (nginx `root`), or with `alias` the route's
/// prefix replaced by it. `None` when an alias route is asked for a path outside its
/// prefix (an internal redirect can bring one).
pub(crate) fn file_for(cfg: &StaticConfig, path: &str) -> Option<PathBuf> {
    match &cfg.alias_of {
        Some(prefix) => path
            .strip_prefix(prefix.as_str())
            .map(|rest| join_root(&cfg.root, rest)),
        None => Some(join_root(&cfg.root, path)),
    }
}

/// nginx `expires`: Cache-Control max-age and Expires (now + the time), or the epoch /
/// max forms.
fn expires_headers(e: portico_config::Expires, h: &mut HeaderMap) {
    use portico_config::Expires as E;
    let (cache, at) = match e {
        E::After(d) => (format!("max-age={}", d.as_secs()), SystemTime::now() + d),
        E::Epoch => (
            "no-cache".to_string(),
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1),
        ),
        E::Max => (
            "max-age=315360000".to_string(),
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(2_145_916_555),
        ),
    };
    if let Ok(v) = HeaderValue::from_str(&cache) {
        h.insert(header::CACHE_CONTROL, v);
    }
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(at)) {
        h.insert(header::EXPIRES, v);
    }
}

pub(crate) fn join_root(root: &Path, path: &str) -> PathBuf {
    // room for all of it at once: a push that grows the buffer reallocates
    let mut p = PathBuf::with_capacity(root.as_os_str().len() + path.len() + 1);
    p.push(root);
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        p.push(seg);
    }
    p
}

/// The answer for a file that cannot be opened, as nginx's: missing, not a directory on
/// the way, or a name over the file system's limit (ENAMETOOLONG: a client's doing, not
/// a server error) are 404; no permission is 403.
fn io_error(e: std::io::Error, file: &std::path::Path) -> Response<HttpBody> {
    match e.kind() {
        std::io::ErrorKind::NotFound
        | std::io::ErrorKind::NotADirectory
        | std::io::ErrorKind::InvalidFilename => {
            // nginx logs these at error ("open() … failed (2: No such file or
            // directory)"); at debug here: scanners make them the commonest line
            tracing::debug!(file = %file.display(), "static file not found: 404");
            error_response(StatusCode::NOT_FOUND)
        }
        std::io::ErrorKind::PermissionDenied => {
            tracing::warn!(file = %file.display(), "static file not readable: 403");
            error_response(StatusCode::FORBIDDEN)
        }
        _ => {
            tracing::error!(file = %file.display(), error = %e, "static file error");
            error_response(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}

/// Content-Type by file extension (the common part of nginx's mime.types), matched
/// without allocating; each value made at compile time.
pub fn content_type(path: &Path) -> HeaderValue {
    let ext = path.extension().map_or(&[][..], |e| e.as_encoded_bytes());
    // the longest extension below is 5 bytes
    let mut low = [0u8; 5];
    let Some(low) = low.get_mut(..ext.len()) else {
        return const { HeaderValue::from_static("application/octet-stream") };
    };
    low.copy_from_slice(ext);
    low.make_ascii_lowercase();
    match &*low {
        b"html" | b"htm" | b"shtml" => const { HeaderValue::from_static("text/html") },
        b"css" => const { HeaderValue::from_static("text/css") },
        b"xml" => const { HeaderValue::from_static("text/xml") },
        b"txt" => const { HeaderValue::from_static("text/plain") },
        b"csv" => const { HeaderValue::from_static("text/csv") },
        b"md" => const { HeaderValue::from_static("text/markdown") },
        b"js" | b"mjs" => const { HeaderValue::from_static("application/javascript") },
        b"json" => const { HeaderValue::from_static("application/json") },
        b"map" => const { HeaderValue::from_static("application/json") },
        b"wasm" => const { HeaderValue::from_static("application/wasm") },
        b"pdf" => const { HeaderValue::from_static("application/pdf") },
        b"zip" => const { HeaderValue::from_static("application/zip") },
        b"gz" | b"tgz" => const { HeaderValue::from_static("application/gzip") },
        b"tar" => const { HeaderValue::from_static("application/x-tar") },
        b"gif" => const { HeaderValue::from_static("image/gif") },
        b"jpeg" | b"jpg" => const { HeaderValue::from_static("image/jpeg") },
        b"png" => const { HeaderValue::from_static("image/png") },
        b"webp" => const { HeaderValue::from_static("image/webp") },
        b"avif" => const { HeaderValue::from_static("image/avif") },
        b"svg" | b"svgz" => const { HeaderValue::from_static("image/svg+xml") },
        b"ico" => const { HeaderValue::from_static("image/x-icon") },
        b"woff" => const { HeaderValue::from_static("font/woff") },
        b"woff2" => const { HeaderValue::from_static("font/woff2") },
        b"ttf" => const { HeaderValue::from_static("font/ttf") },
        b"otf" => const { HeaderValue::from_static("font/otf") },
        b"mp3" => const { HeaderValue::from_static("audio/mpeg") },
        b"ogg" => const { HeaderValue::from_static("audio/ogg") },
        b"mp4" => const { HeaderValue::from_static("video/mp4") },
        b"webm" => const { HeaderValue::from_static("video/webm") },
        _ => const { HeaderValue::from_static("application/octet-stream") },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types() {
        assert_eq!(content_type(Path::new("a/b.CSS")), "text/css");
        assert_eq!(content_type(Path::new("a/b.woff2")), "font/woff2");
        assert_eq!(content_type(Path::new("a/b.Shtml")), "text/html");
        assert_eq!(content_type(Path::new("noext")), "application/octet-stream");
        assert_eq!(
            content_type(Path::new("a.toolong")),
            "application/octet-stream"
        );
    }
}
