//! Conditional and range requests answered from a complete representation (a static
//! file, a cached object): If-None-Match / If-Modified-Since (304), If-Range and a
//! single byte range (206, 416). Several ranges are answered whole, as nginx does for
//! cached answers.

use std::time::SystemTime;

use http::header::{self, HeaderMap};

/// Whether the client's validators match: If-None-Match against `etag` (weak
/// comparison), else If-Modified-Since against `mtime_secs`.
pub(crate) fn not_modified(h: &HeaderMap, etag: Option<&str>, mtime_secs: Option<u64>) -> bool {
    if let Some(inm) = h.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        let Some(etag) = etag else {
            return false;
        };
        let etag = etag.trim_start_matches("W/");
        return inm
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == etag);
    }
    let (Some(ims), Some(mtime)) = (
        h.get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok()),
        mtime_secs,
    ) else {
        return false;
    };
    let ims = ims
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    mtime <= ims
}

/// Whether an If-Range (if any) names this representation (a strong ETag or the exact
/// Last-Modified date).
pub(crate) fn if_range_matches(
    h: &HeaderMap,
    etag: Option<&str>,
    last_modified: Option<&str>,
) -> bool {
    match h.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(v) => Some(v) == etag.filter(|e| !e.starts_with("W/")) || Some(v) == last_modified,
    }
}

/// The range a request asks of a representation of `size` bytes, when it asks one and
/// its If-Range allows.
pub(crate) fn requested_range(
    h: &HeaderMap,
    size: u64,
    etag: Option<&str>,
    last_modified: Option<&str>,
) -> Option<RangeResult> {
    let v = h.get(header::RANGE)?.to_str().ok()?;
    if_range_matches(h, etag, last_modified).then(|| parse_range(v, size))
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RangeResult {
    /// Serve the whole representation (no usable range, or several ranges).
    Ignore,
    Unsatisfiable,
    /// Inclusive byte positions.
    Range(u64, u64),
}

pub(crate) fn parse_range(v: &str, size: u64) -> RangeResult {
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return RangeResult::Ignore;
    };
    if spec.contains(',') {
        return RangeResult::Ignore;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeResult::Ignore;
    };
    let (a, b) = (a.trim(), b.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    match (a.is_empty(), b.is_empty()) {
        (true, true) => RangeResult::Ignore,
        (true, false) => match parse(b) {
            Some(0) => RangeResult::Unsatisfiable,
            Some(n) if size > 0 => RangeResult::Range(size.saturating_sub(n), size - 1),
            Some(_) => RangeResult::Unsatisfiable,
            None => RangeResult::Ignore,
        },
        (false, _) => {
            let Some(start) = parse(a) else {
                return RangeResult::Ignore;
            };
            let end = if b.is_empty() {
                Some(u64::MAX)
            } else {
                parse(b)
            };
            match end {
                None => RangeResult::Ignore,
                Some(end) if end < start => RangeResult::Ignore,
                Some(_) if start >= size => RangeResult::Unsatisfiable,
                Some(end) => RangeResult::Range(start, end.min(size - 1)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeResult::Range(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), RangeResult::Range(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), RangeResult::Range(90, 99));
        assert_eq!(parse_range("bytes=-200", 100), RangeResult::Range(0, 99));
        assert_eq!(parse_range("bytes=50-500", 100), RangeResult::Range(50, 99));
        assert_eq!(parse_range("bytes=100-", 100), RangeResult::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeResult::Unsatisfiable);
        assert_eq!(parse_range("bytes=9-1", 100), RangeResult::Ignore);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeResult::Ignore);
        assert_eq!(parse_range("items=0-1", 100), RangeResult::Ignore);
    }

    #[test]
    fn validators() {
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, "\"a\", W/\"b\"".parse().unwrap());
        assert!(not_modified(&h, Some("\"b\""), None));
        assert!(!not_modified(&h, Some("\"c\""), Some(0)));
        assert!(!not_modified(&h, None, Some(0)));
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_MODIFIED_SINCE,
            "Thu, 01 Jan 1970 00:01:40 GMT".parse().unwrap(),
        );
        assert!(not_modified(&h, None, Some(100)));
        assert!(!not_modified(&h, None, Some(101)));
        assert!(!not_modified(&h, None, None));
    }
}
