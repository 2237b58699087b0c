//! Server-name matching shared by SNI certificate choice and HTTP virtual hosts.

/// Whether `host` matches `pattern`: an exact name (case-insensitive), or `*.suffix`,
/// which matches any name ending in `.suffix` (as nginx's wildcard names do).
pub fn server_name_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.');
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
        }
        None => pattern.eq_ignore_ascii_case(host),
    }
}

#[cfg(test)]
mod tests {
    use super::server_name_matches as m;

    #[test]
    fn exact_and_wildcard() {
        assert!(m("shop.example", "SHOP.example"));
        assert!(m("shop.example", "shop.example."));
        assert!(!m("shop.example", "www.shop.example"));
        assert!(m("*.shop.example", "www.shop.example"));
        assert!(m("*.shop.example", "a.b.shop.example"));
        assert!(!m("*.shop.example", "shop.example"));
        assert!(!m("*.shop.example", "evilshop.example"));
    }
}
