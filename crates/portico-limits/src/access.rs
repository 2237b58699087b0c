//! nginx's `allow` / `deny`: rules in order, the first that matches the client address
//! decides; an address no rule matches is allowed (as nginx).

use std::net::IpAddr;

use portico_config::AccessRule;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccessList {
    rules: Vec<AccessRule>,
}

impl AccessList {
    pub fn new(rules: Vec<AccessRule>) -> Self {
        Self { rules }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether `ip` may in. IPv4-mapped IPv6 addresses (a dual-stack listener) match
    /// IPv4 rules (`Cidr::contains`).
    pub fn allows(&self, ip: IpAddr) -> bool {
        for r in &self.rules {
            if r.from.is_none_or(|c| c.contains(ip)) {
                return r.allow;
            }
        }
        true
    }

    /// Whether a client without an address (a Unix socket listener) may in: only
    /// `allow all` / `deny all` rules can match it.
    pub fn allows_unknown(&self) -> bool {
        self.rules
            .iter()
            .find(|r| r.from.is_none())
            .is_none_or(|r| r.allow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_config::Cidr;

    fn rule(allow: bool, c: Option<&str>) -> AccessRule {
        AccessRule {
            allow,
            from: c.map(|c| Cidr::parse(c).unwrap()),
        }
    }

    #[test]
    fn first_match_wins_as_nginx() {
        let l = AccessList::new(vec![
            rule(false, Some("10.0.0.1")),
            rule(true, Some("10.0.0.0/8")),
            rule(true, Some("::1")),
            rule(false, None),
        ]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(!l.allows(ip("10.0.0.1")));
        assert!(l.allows(ip("10.9.8.7")));
        assert!(l.allows(ip("::1")));
        assert!(l.allows(ip("::ffff:10.1.2.3")));
        assert!(!l.allows(ip("192.168.1.1")));
        assert!(!l.allows(ip("2001:db8::1")));
        assert!(AccessList::default().allows(ip("192.168.1.1")));
    }
}
