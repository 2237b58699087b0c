//! RFC 9111 for a shared cache: whether a response may be stored, for how long it is
//! fresh, how old it is, and what it allows once stale.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap};

/// The Cache-Control directives a shared cache acts on (RFC 9111 §5.2.2). A directive
/// with a field list (`private="Set-Cookie"`, `no-cache="X"`) is taken whole: the
/// conservative reading.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CacheControl {
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
}

impl CacheControl {
    /// Every Cache-Control field of `headers`, comma-separated directives, names
    /// case-insensitive. A delta-seconds that does not parse makes `max-age` and
    /// `s-maxage` zero (stale at once: RFC 9111 §4.2.1 says treat it as invalid, and
    /// stale is the safe side); others are ignored.
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut cc = Self::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            let Ok(text) = value.to_str() else {
                continue;
            };
            for directive in split_directives(text) {
                let (name, arg) = match directive.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (directive.trim(), None),
                };
                let secs = || arg.and_then(|a| a.parse::<u64>().ok());
                match name.to_ascii_lowercase().as_str() {
                    "max-age" => cc.max_age = Some(secs().unwrap_or(0)),
                    "s-maxage" => cc.s_maxage = Some(secs().unwrap_or(0)),
                    "no-store" => cc.no_store = true,
                    "no-cache" => cc.no_cache = true,
                    "private" => cc.private = true,
                    "public" => cc.public = true,
                    "must-revalidate" => cc.must_revalidate = true,
                    "proxy-revalidate" => cc.proxy_revalidate = true,
                    "stale-while-revalidate" => cc.stale_while_revalidate = secs(),
                    "stale-if-error" => cc.stale_if_error = secs(),
                    _ => {}
                }
            }
        }
        cc
    }
}

/// Splits at commas outside quoted strings (`no-cache="a, b", max-age=5`).
fn split_directives(text: &str) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter().filter(|p| !p.trim().is_empty())
}

/// What the operator allows besides RFC 9111 (the route's cache settings).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Freshness per status when the upstream gives none (`None`: any status).
    pub valid: Vec<(Option<u16>, Duration)>,
    /// Store responses that set cookies.
    pub store_with_cookies: bool,
}

impl Policy {
    fn valid_for(&self, status: u16) -> Option<Duration> {
        self.valid
            .iter()
            .find(|(s, _)| *s == Some(status))
            .or_else(|| self.valid.iter().find(|(s, _)| s.is_none()))
            .map(|(_, d)| *d)
    }
}

/// Why a response is not stored (the reason shows in debug logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// 206, 304 and informational answers are never stored whole.
    Status,
    /// `Cache-Control: no-store` or `private`.
    Directive,
    /// Set-Cookie without `store_with_cookies`.
    Cookie,
    /// `Vary: *`.
    VaryAll,
    /// No freshness from the upstream and none configured for the status, or a
    /// lifetime of zero and nothing to revalidate with.
    NoFreshness,
}

/// The times of a stored response, in milliseconds since the Unix epoch, and what its
/// Cache-Control allows once stale.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Times {
    /// When the response was received.
    pub response_ms: u64,
    /// Its age when received (RFC 9111 §4.2.3 corrected_initial_age).
    pub initial_age_ms: u64,
    /// Its freshness lifetime.
    pub lifetime_ms: u64,
    /// stale-while-revalidate window after it goes stale.
    pub swr_ms: u64,
    /// stale-if-error window after it goes stale.
    pub sie_ms: u64,
    /// must-revalidate / proxy-revalidate / s-maxage: never served stale.
    pub must_revalidate: bool,
    /// no-cache: stored, but revalidated before every use.
    pub no_cache: bool,
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Times {
    /// The age at `now_ms` (RFC 9111 §4.2.3 current_age).
    pub fn age_ms(&self, now_ms: u64) -> u64 {
        self.initial_age_ms + now_ms.saturating_sub(self.response_ms)
    }

    /// The `Age` header value at `now_ms`: whole seconds.
    pub fn age_secs(&self, now_ms: u64) -> u64 {
        self.age_ms(now_ms) / 1000
    }

    pub fn is_fresh(&self, now_ms: u64) -> bool {
        !self.no_cache && self.age_ms(now_ms) < self.lifetime_ms
    }

    /// How long it has been stale (0 while fresh).
    pub fn stale_ms(&self, now_ms: u64) -> u64 {
        self.age_ms(now_ms).saturating_sub(self.lifetime_ms)
    }

    /// Within its stale-while-revalidate window.
    pub fn may_serve_while_revalidating(&self, now_ms: u64) -> bool {
        !self.must_revalidate && self.swr_ms > 0 && self.stale_ms(now_ms) <= self.swr_ms
    }

    /// Within its stale-if-error window.
    pub fn may_serve_on_error(&self, now_ms: u64) -> bool {
        !self.must_revalidate && self.sie_ms > 0 && self.stale_ms(now_ms) <= self.sie_ms
    }
}

/// Whether a response to a GET may be stored and, if so, its [`Times`]
/// (RFC 9111 §3 and §4.2, then nginx: `X-Accel-Expires` first, then Cache-Control,
/// then Expires, then the policy's `valid` per status).
///
/// `request_ms` is when the request went upstream, `response_ms` when its head came back.
pub fn storable(
    policy: &Policy,
    status: u16,
    headers: &HeaderMap,
    request_ms: u64,
    response_ms: u64,
) -> Result<Times, NotStored> {
    if status < 200 || status == 206 || status == 304 {
        return Err(NotStored::Status);
    }
    let cc = CacheControl::parse(headers);
    if cc.no_store || cc.private {
        return Err(NotStored::Directive);
    }
    if !policy.store_with_cookies && headers.contains_key(header::SET_COOKIE) {
        return Err(NotStored::Cookie);
    }
    let vary_all = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim() == "*");
    if vary_all {
        return Err(NotStored::VaryAll);
    }
    let date_s = header_date(headers, header::DATE);
    let now_s = response_ms / 1000;
    let lifetime_ms = match accel_expires(headers, now_s) {
        Some(secs) => Some(secs * 1000),
        None => cc
            .s_maxage
            .or(cc.max_age)
            .map(|s| s.saturating_mul(1000))
            .or_else(|| {
                let expires = headers.get(header::EXPIRES)?;
                // an Expires that does not parse means "already expired" (§5.3)
                let exp = expires
                    .to_str()
                    .ok()
                    .and_then(|v| httpdate::parse_http_date(v).ok())
                    .map(|t| unix_ms(t) / 1000)
                    .unwrap_or(0);
                Some(
                    exp.saturating_sub(date_s.unwrap_or(now_s))
                        .saturating_mul(1000),
                )
            }),
    };
    let lifetime_ms = match lifetime_ms {
        Some(l) => l,
        None => match policy.valid_for(status) {
            Some(d) => d.as_millis() as u64,
            None => return Err(NotStored::NoFreshness),
        },
    };
    let validator =
        headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED);
    if (lifetime_ms == 0 || cc.no_cache) && !validator {
        return Err(NotStored::NoFreshness);
    }
    // RFC 9111 §4.2.3. Date has whole seconds only: a Date of second X was made
    // somewhere in [X, X+1), so the apparent age taken is its lower bound — a reply
    // made at X.999 and received at X+1.001 is not a second old.
    let age_value_ms = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0)
        .saturating_mul(1000);
    let apparent_ms = date_s.map_or(0, |d| response_ms.saturating_sub(d * 1000 + 999));
    let corrected_ms = age_value_ms + response_ms.saturating_sub(request_ms);
    Ok(Times {
        response_ms,
        initial_age_ms: apparent_ms.max(corrected_ms),
        lifetime_ms,
        swr_ms: cc.stale_while_revalidate.unwrap_or(0).saturating_mul(1000),
        sie_ms: cc.stale_if_error.unwrap_or(0).saturating_mul(1000),
        must_revalidate: cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some(),
        no_cache: cc.no_cache,
    })
}

/// nginx's `X-Accel-Expires`: seconds, or `@` and a Unix time; 0 means do not cache
/// (a lifetime of 0).
fn accel_expires(headers: &HeaderMap, now_s: u64) -> Option<u64> {
    let v = headers.get("x-accel-expires")?.to_str().ok()?.trim();
    match v.strip_prefix('@') {
        Some(at) => at.parse::<u64>().ok().map(|t| t.saturating_sub(now_s)),
        None => v.parse().ok(),
    }
}

fn header_date(headers: &HeaderMap, name: header::HeaderName) -> Option<u64> {
    let v = headers.get(name)?.to_str().ok()?;
    httpdate::parse_http_date(v).ok().map(|t| unix_ms(t) / 1000)
}

/// The headers a 304 refreshes in a stored response (RFC 9111 §4.3.4): all it sends,
/// except the framing ones, which describe the stored body, not the 304.
pub fn refresh_headers(stored: &mut HeaderMap, not_modified: &HeaderMap) {
    for name in not_modified.keys() {
        if [
            header::CONTENT_LENGTH,
            header::CONTENT_ENCODING,
            header::TRANSFER_ENCODING,
            header::CONTENT_RANGE,
        ]
        .contains(name)
        {
            continue;
        }
        stored.remove(name);
        for v in not_modified.get_all(name) {
            stored.append(name.clone(), owned_value(v));
        }
    }
}

/// A copy of `v` in its own allocation: a value parsed from a response may share the
/// connection's whole read buffer, which a stored object must not keep alive.
pub fn owned_value(v: &http::HeaderValue) -> http::HeaderValue {
    let mut copy =
        http::HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(v.as_bytes()))
            .unwrap_or_else(|_| v.clone());
    copy.set_sensitive(v.is_sensitive());
    copy
}

/// `h` with every value copied out of the buffers it was parsed from (see
/// [`owned_value`]).
pub fn owned_headers(h: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(h.len());
    for (n, v) in h {
        out.append(n.clone(), owned_value(v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const NOW: u64 = 1_700_000_000_000;

    fn lifetime(pairs: &[(&str, &str)], policy: &Policy) -> Result<u64, NotStored> {
        storable(policy, 200, &headers(pairs), NOW, NOW).map(|t| t.lifetime_ms)
    }

    #[test]
    fn directives() {
        let cc = CacheControl::parse(&headers(&[
            ("cache-control", "public, Max-Age=60, no-cache=\"a, b\""),
            (
                "cache-control",
                "stale-while-revalidate=30,stale-if-error=\"600\"",
            ),
        ]));
        assert_eq!(cc.max_age, Some(60));
        assert!(cc.public && cc.no_cache && !cc.no_store);
        assert_eq!(cc.stale_while_revalidate, Some(30));
        assert_eq!(cc.stale_if_error, Some(600));
        assert_eq!(
            CacheControl::parse(&headers(&[("cache-control", "max-age=x")])).max_age,
            Some(0)
        );
    }

    proptest::proptest! {
        /// RFC 9111 §4.2.1's order on any mix of directives: no-store/private refuse;
        /// else s-maxage, then max-age, then Expires − Date, then the configured
        /// `valid`; a lifetime of zero or no-cache needs a validator to be stored; what
        /// is stored is fresh until its lifetime has passed, and not after.
        #[test]
        fn lifetime_follows_rfc_9111_precedence(
            max_age in proptest::option::of(0u64..100_000),
            s_maxage in proptest::option::of(0u64..100_000),
            expires_in in proptest::option::of(0u64..100_000),
            valid in proptest::option::of(1u64..100_000),
            no_store: bool,
            private: bool,
            no_cache: bool,
            etag: bool,
        ) {
            let mut cc = Vec::new();
            if let Some(s) = max_age { cc.push(format!("max-age={s}")); }
            if let Some(s) = s_maxage { cc.push(format!("s-maxage={s}")); }
            if no_store { cc.push("no-store".into()); }
            if private { cc.push("private".into()); }
            if no_cache { cc.push("no-cache".into()); }
            let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(NOW));
            let mut pairs = vec![("date".to_string(), date)];
            if !cc.is_empty() { pairs.push(("cache-control".into(), cc.join(", "))); }
            if let Some(s) = expires_in {
                let exp = UNIX_EPOCH + Duration::from_millis(NOW + s * 1000);
                pairs.push(("expires".into(), httpdate::fmt_http_date(exp)));
            }
            if etag { pairs.push(("etag".into(), "\"v1\"".into())); }
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let policy = Policy {
                valid: valid.map(|s| (Some(200), Duration::from_secs(s))).into_iter().collect(),
                store_with_cookies: false,
            };
            let want = if no_store || private {
                Err(NotStored::Directive)
            } else {
                match s_maxage.or(max_age).or(expires_in).or(valid).map(|s| s * 1000) {
                    None => Err(NotStored::NoFreshness),
                    Some(l) if (l == 0 || no_cache) && !etag => Err(NotStored::NoFreshness),
                    Some(l) => Ok(l),
                }
            };
            let got = storable(&policy, 200, &headers(&pairs), NOW, NOW);
            proptest::prop_assert_eq!(got.map(|t| t.lifetime_ms), want);
            if let (Ok(t), Ok(l)) = (got, want) {
                proptest::prop_assert_eq!(t.is_fresh(NOW), l > 0 && !no_cache);
                proptest::prop_assert!(!t.is_fresh(NOW + l));
            }
        }
    }

    #[test]
    fn lifetimes_in_order_of_precedence() {
        let p = Policy {
            valid: vec![(Some(200), Duration::from_secs(600))],
            store_with_cookies: false,
        };
        assert_eq!(lifetime(&[], &p), Ok(600_000));
        assert_eq!(lifetime(&[("cache-control", "max-age=5")], &p), Ok(5_000));
        assert_eq!(
            lifetime(&[("cache-control", "max-age=5, s-maxage=7")], &p),
            Ok(7_000)
        );
        assert_eq!(
            lifetime(
                &[("cache-control", "max-age=5"), ("x-accel-expires", "9")],
                &p
            ),
            Ok(9_000)
        );
        let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(NOW));
        let exp = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(NOW + 30_000));
        assert_eq!(
            lifetime(&[("date", &date), ("expires", &exp)], &p),
            Ok(30_000)
        );
        // an invalid Expires: expired, and without a validator not worth storing
        assert_eq!(
            lifetime(&[("expires", "0")], &p),
            Err(NotStored::NoFreshness)
        );
        assert_eq!(lifetime(&[("expires", "0"), ("etag", "\"x\"")], &p), Ok(0));
        assert_eq!(
            lifetime(&[], &Policy::default()),
            Err(NotStored::NoFreshness)
        );
        assert_eq!(
            storable(&p, 404, &headers(&[]), NOW, NOW),
            Err(NotStored::NoFreshness)
        );
    }

    #[test]
    fn refusals() {
        let p = Policy {
            valid: vec![(None, Duration::from_secs(60))],
            store_with_cookies: false,
        };
        for (pairs, why) in [
            (vec![("cache-control", "no-store")], NotStored::Directive),
            (
                vec![("cache-control", "private, max-age=60")],
                NotStored::Directive,
            ),
            (vec![("set-cookie", "a=b")], NotStored::Cookie),
            (vec![("vary", "Accept, *")], NotStored::VaryAll),
            (vec![("cache-control", "no-cache")], NotStored::NoFreshness),
        ] {
            assert_eq!(lifetime(&pairs, &p), Err(why), "{pairs:?}");
        }
        assert_eq!(
            storable(&p, 206, &headers(&[]), NOW, NOW),
            Err(NotStored::Status)
        );
        let cookies = Policy {
            store_with_cookies: true,
            ..p
        };
        assert!(lifetime(&[("set-cookie", "a=b")], &cookies).is_ok());
    }

    #[test]
    fn ages_and_staleness() {
        let p = Policy::default();
        let t = storable(
            &p,
            200,
            &headers(&[
                (
                    "cache-control",
                    "max-age=10, stale-while-revalidate=5, stale-if-error=60",
                ),
                ("age", "3"),
            ]),
            NOW - 500,
            NOW,
        )
        .unwrap();
        assert_eq!(t.initial_age_ms, 3_500);
        assert!(t.is_fresh(NOW + 6_000));
        assert!(!t.is_fresh(NOW + 6_500));
        assert_eq!(t.age_secs(NOW + 6_600), 10);
        assert!(t.may_serve_while_revalidating(NOW + 11_000));
        assert!(!t.may_serve_while_revalidating(NOW + 12_000));
        assert!(t.may_serve_on_error(NOW + 60_000));
        let must = storable(
            &p,
            200,
            &headers(&[(
                "cache-control",
                "max-age=1, must-revalidate, stale-if-error=60",
            )]),
            NOW,
            NOW,
        )
        .unwrap();
        assert!(!must.may_serve_on_error(NOW + 2_000));
    }

    #[test]
    fn a_date_in_whole_seconds_does_not_age_a_reply() {
        let p = Policy::default();
        // made at second X (perhaps X.999), received 2 ms into X+1
        let made = NOW / 1000 * 1000;
        let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(made));
        let at = made + 1_002;
        let t = storable(
            &p,
            200,
            &headers(&[("cache-control", "max-age=1"), ("date", &date)]),
            at,
            at,
        )
        .unwrap();
        assert_eq!(t.initial_age_ms, 3);
        assert!(t.is_fresh(at + 900));
        // a Date truly in the past still counts: 5 s old on arrival
        let t = storable(
            &p,
            200,
            &headers(&[("cache-control", "max-age=10"), ("date", &date)]),
            made + 5_999,
            made + 5_999,
        )
        .unwrap();
        assert_eq!(t.initial_age_ms, 5_000);
    }

    #[test]
    fn a_304_refreshes_all_but_framing() {
        let mut stored = headers(&[
            ("content-length", "10"),
            ("etag", "\"1\""),
            ("cache-control", "max-age=1"),
            ("x-kept", "yes"),
        ]);
        refresh_headers(
            &mut stored,
            &headers(&[("content-length", "0"), ("cache-control", "max-age=60")]),
        );
        assert_eq!(stored["content-length"], "10");
        assert_eq!(stored["cache-control"], "max-age=60");
        assert_eq!(stored["x-kept"], "yes");
    }
}
