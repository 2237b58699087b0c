//! nginx's `proxy_cookie_path`, `proxy_cookie_domain` and `proxy_cookie_flags`: the
//! Set-Cookie headers of an upstream's answer rewritten for the client's view of the
//! site (an app mounted under `/app/` that sets `Path=/`, a `Domain=localhost`, cookies
//! that must be `Secure` behind TLS).

use http::header::{self, HeaderMap, HeaderValue};
use portico_config::{CookieFlag, CookieRules, SameSite};

use crate::vars::Vars;

/// The replacements of one request, rendered before it goes upstream.
pub(crate) struct Rendered {
    path: Vec<String>,
    domain: Vec<String>,
}

pub(crate) fn render(rules: &CookieRules, vars: &Vars<'_>) -> Rendered {
    let text = |t| {
        let mut out = Vec::new();
        vars.render(t, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    Rendered {
        path: rules.path.iter().map(|(_, t)| text(t)).collect(),
        domain: rules.domain.iter().map(|(_, t)| text(t)).collect(),
    }
}

/// Rewrites every Set-Cookie header of `h` that a rule changes.
pub(crate) fn apply(rules: &CookieRules, values: &Rendered, h: &mut HeaderMap) {
    if !h.contains_key(header::SET_COOKIE) {
        return;
    }
    let old: Vec<HeaderValue> = h.get_all(header::SET_COOKIE).iter().cloned().collect();
    let mut changed = false;
    let new: Vec<HeaderValue> = old
        .into_iter()
        .map(|v| {
            let rewritten = v
                .to_str()
                .ok()
                .and_then(|s| rewrite(rules, values, s))
                .and_then(|s| HeaderValue::from_str(&s).ok());
            match rewritten {
                Some(n) => {
                    changed = true;
                    n
                }
                None => v,
            }
        })
        .collect();
    if changed {
        h.remove(header::SET_COOKIE);
        for v in new {
            h.append(header::SET_COOKIE, v);
        }
    }
}

/// One Set-Cookie value rewritten, or `None` when no rule changes it. Attributes keep
/// their order and spelling; added flags go at the end.
fn rewrite(rules: &CookieRules, values: &Rendered, cookie: &str) -> Option<String> {
    let mut parts = cookie.split(';');
    let pair = parts.next()?.trim();
    let name = pair.split('=').next().unwrap_or("").trim();
    let mut attrs: Vec<String> = parts
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    let mut changed = false;
    for a in attrs.iter_mut() {
        let Some((k, v)) = a.split_once('=') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("path") {
            let rule = rules.path.iter().position(|(from, _)| {
                v.len() >= from.len()
                    && v.as_bytes()[..from.len()].eq_ignore_ascii_case(from.as_bytes())
            });
            if let Some(i) = rule {
                let rest = &v[rules.path[i].0.len()..];
                *a = format!("{k}={}{rest}", values.path[i]);
                changed = true;
            }
        } else if k.eq_ignore_ascii_case("domain") {
            let bare = v.trim_start_matches('.');
            if let Some(i) = rules
                .domain
                .iter()
                .position(|(from, _)| from.eq_ignore_ascii_case(bare))
            {
                *a = format!("{k}={}", values.domain[i]);
                changed = true;
            }
        }
    }
    let flags = rules
        .flags
        .iter()
        .find(|(n, _)| n == name)
        .or_else(|| rules.flags.iter().find(|(n, _)| n == "*"));
    for flag in flags.map(|(_, f)| f.as_slice()).unwrap_or(&[]) {
        let has = |attrs: &[String], want: &str| {
            attrs.iter().any(|a| {
                a.split('=')
                    .next()
                    .is_some_and(|k| k.trim().eq_ignore_ascii_case(want))
            })
        };
        let before = attrs.len();
        let remove = |attrs: &mut Vec<String>, what: &str| {
            attrs.retain(|a| {
                !a.split('=')
                    .next()
                    .is_some_and(|k| k.trim().eq_ignore_ascii_case(what))
            })
        };
        match flag {
            CookieFlag::Secure if !has(&attrs, "secure") => attrs.push("Secure".into()),
            CookieFlag::HttpOnly if !has(&attrs, "httponly") => attrs.push("HttpOnly".into()),
            CookieFlag::SameSite(s) => {
                let want = match s {
                    SameSite::Strict => "SameSite=Strict",
                    SameSite::Lax => "SameSite=Lax",
                    SameSite::None => "SameSite=None",
                };
                if !attrs.iter().any(|a| a.eq_ignore_ascii_case(want)) {
                    remove(&mut attrs, "samesite");
                    attrs.push(want.into());
                    changed = true;
                }
            }
            CookieFlag::NoSecure => remove(&mut attrs, "secure"),
            CookieFlag::NoHttpOnly => remove(&mut attrs, "httponly"),
            CookieFlag::NoSameSite => remove(&mut attrs, "samesite"),
            _ => {}
        }
        changed |= attrs.len() != before;
    }
    if !changed {
        return None;
    }
    let mut out = pair.to_string();
    for a in attrs {
        out.push_str("; ");
        out.push_str(&a);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_config::KeyTemplate;

    fn rules() -> (CookieRules, Rendered) {
        let t = |s: &str| KeyTemplate::parse_value(s).unwrap();
        let rules = CookieRules {
            path: vec![("/app/".into(), t("/")), ("/".into(), t("/site/"))],
            domain: vec![("localhost".into(), t("example.org"))],
            flags: vec![
                ("sid".into(), vec![CookieFlag::Secure, CookieFlag::HttpOnly]),
                (
                    "*".into(),
                    vec![CookieFlag::SameSite(SameSite::Lax), CookieFlag::NoSecure],
                ),
            ],
        };
        let values = Rendered {
            path: vec!["/".into(), "/site/".into()],
            domain: vec!["example.org".into()],
        };
        (rules, values)
    }

    #[test]
    fn path_domain_and_flags_as_nginx() {
        let (r, v) = rules();
        let rw = |c: &str| rewrite(&r, &v, c);
        // the longest prefix wins; case-insensitive as nginx's string match
        assert_eq!(
            rw("sid=1; Path=/APP/x; HttpOnly").as_deref(),
            Some("sid=1; Path=/x; HttpOnly; Secure")
        );
        assert_eq!(
            rw("a=b; path=/other").as_deref(),
            Some("a=b; path=/site/other; SameSite=Lax")
        );
        // a leading dot and case do not matter for the domain
        assert_eq!(
            rw("a=b; Domain=.LocalHost; SameSite=Lax").as_deref(),
            Some("a=b; Domain=example.org; SameSite=Lax")
        );
        // flags of the cookie's own rule only; nosecure removes, samesite replaces
        assert_eq!(
            rw("t=2; Secure; samesite=strict").as_deref(),
            Some("t=2; SameSite=Lax")
        );
        // nothing to change: untouched
        assert_eq!(rw("t=2; SameSite=Lax"), None);
        assert_eq!(rw("sid=1; Secure; HttpOnly"), None);
    }
}
