//! Request path normalization, as nginx does before matching locations: percent-decoding,
//! merged slashes, `.` and `..` resolved. A path that climbs above `/` or decodes to a
//! NUL byte is an error (400). The raw path is what goes upstream; the normalized one is
//! what routes and static files see, so `/static/../secret` cannot escape a route.

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct BadPath;

/// Normalizes a request path (without query). Paths that are already normal (the
/// common case) are returned as they are, without allocating.
pub fn normalize(raw: &str) -> Result<Cow<'_, str>, BadPath> {
    if !raw.starts_with('/') {
        // "*" (OPTIONS) or an authority form: route as the root.
        return if raw == "*" {
            Ok("/".into())
        } else {
            Err(BadPath)
        };
    }
    if !raw.contains('%') && !raw.contains("//") && !raw.contains("/.") {
        return Ok(Cow::Borrowed(raw));
    }
    let decoded = percent_decode(raw.as_bytes())?;
    let text = String::from_utf8_lossy(&decoded);
    let mut out: Vec<&str> = Vec::new();
    let mut trailing = false;
    for seg in text.split('/') {
        trailing = false;
        match seg {
            "" => trailing = true,
            "." => trailing = true,
            ".." => {
                if out.pop().is_none() {
                    return Err(BadPath);
                }
                trailing = true;
            }
            s => out.push(s),
        }
    }
    let mut path = String::with_capacity(raw.len());
    for seg in &out {
        path.push('/');
        path.push_str(seg);
    }
    if trailing || out.is_empty() {
        path.push('/');
    }
    Ok(Cow::Owned(path))
}

/// A normalized path as a request target again: bytes outside RFC 3986's unreserved,
/// sub-delims, `:`, `@` and `/` are percent-encoded (nginx does the same when it sends
/// a rewritten URI upstream).
pub fn encode(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for &b in path.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(raw: &[u8]) -> Result<Vec<u8>, BadPath> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            match (
                raw.get(i + 1).and_then(|&c| hex(c)),
                raw.get(i + 2).and_then(|&c| hex(c)),
            ) {
                (Some(h), Some(l)) => {
                    let v = (h * 16 + l) as u8;
                    if v == 0 {
                        return Err(BadPath);
                    }
                    out.push(v);
                    i += 3;
                    continue;
                }
                _ => return Err(BadPath),
            }
        }
        out.push(b);
        i += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_nginx() {
        assert_eq!(normalize("/"), Ok("/".into()));
        assert_eq!(normalize("/a//b/"), Ok("/a/b/".into()));
        assert_eq!(normalize("/a/./b"), Ok("/a/b".into()));
        assert_eq!(normalize("/a/b/../c"), Ok("/a/c".into()));
        assert_eq!(normalize("/a/b/.."), Ok("/a/".into()));
        assert_eq!(normalize("/static/%2e%2e/secret"), Ok("/secret".into()));
        assert_eq!(normalize("/caf%C3%A9"), Ok("/café".into()));
        assert_eq!(normalize("/.."), Err(BadPath));
        assert_eq!(normalize("/a/../../etc/passwd"), Err(BadPath));
        assert_eq!(normalize("/%2e%2e/etc/passwd"), Err(BadPath));
        assert_eq!(normalize("/a%00b"), Err(BadPath));
        assert_eq!(normalize("/a%zz"), Err(BadPath));
    }
}
