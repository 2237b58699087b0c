//! The CGI-style environment both gateways send: uwsgi vars and FastCGI params, built
//! once from the request as nginx builds them from Debian's `uwsgi_params` and
//! `fastcgi_params` (+ `fastcgi.conf`'s SCRIPT_FILENAME), then the request headers as
//! `HTTP_*`, then the route's `params`, which replace defaults of the same name.

use std::borrow::Cow;

use http::header;
use portico_config::{GatewayVar, KeyTemplate};

use crate::vars::Vars;

/// Which parameter set to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Uwsgi,
    Fastcgi {
        /// `split_path_info` is set: PATH_INFO is sent (Debian's fastcgi-php snippet).
        path_info: bool,
    },
}

/// One var: name and value as bytes (values may hold decoded, non-UTF-8 path bytes).
pub type Var = (Cow<'static, str>, Vec<u8>);

impl Vars<'_> {
    /// The vars to send: the nginx defaults of `flavor`, the request headers as `HTTP_*`,
    /// and `params` (each replacing a default or header var of the same name).
    pub fn vars(&self, flavor: Flavor, params: &[(String, KeyTemplate)]) -> Vec<Var> {
        use GatewayVar as G;
        let mut vars: Vec<Var> = Vec::with_capacity(24 + self.headers.len() + params.len());
        let mut push = |name: &'static str, value: Vec<u8>| vars.push((name.into(), value));
        if let Flavor::Fastcgi { .. } = flavor {
            let mut filename = self.document_root.as_bytes().to_vec();
            filename.extend_from_slice(self.script_name.as_bytes());
            push("SCRIPT_FILENAME", filename);
        }
        push("QUERY_STRING", self.args().as_bytes().to_vec());
        push("REQUEST_METHOD", self.var(G::RequestMethod));
        push("CONTENT_TYPE", self.var(G::ContentType));
        push("CONTENT_LENGTH", self.var(G::ContentLength));
        if let Flavor::Fastcgi { .. } = flavor {
            push("SCRIPT_NAME", self.script_name.as_bytes().to_vec());
        }
        push("REQUEST_URI", self.request_uri().as_bytes().to_vec());
        match flavor {
            Flavor::Uwsgi => push("PATH_INFO", self.path.as_bytes().to_vec()),
            Flavor::Fastcgi { .. } => push("DOCUMENT_URI", self.path.as_bytes().to_vec()),
        }
        push("DOCUMENT_ROOT", self.document_root.as_bytes().to_vec());
        push("SERVER_PROTOCOL", self.var(G::ServerProtocol));
        push("REQUEST_SCHEME", self.var(G::Scheme));
        if self.tls {
            push("HTTPS", b"on".to_vec());
        }
        if let Flavor::Fastcgi { .. } = flavor {
            push("GATEWAY_INTERFACE", b"CGI/1.1".to_vec());
            push(
                "SERVER_SOFTWARE",
                concat!("portico/", env!("CARGO_PKG_VERSION"))
                    .as_bytes()
                    .to_vec(),
            );
        }
        push("REMOTE_ADDR", self.remote_addr());
        push("REMOTE_PORT", self.var(G::RemotePort));
        if let Flavor::Fastcgi { .. } = flavor {
            push("REMOTE_USER", self.remote_user());
            push("SERVER_ADDR", self.var(G::ServerAddr));
        }
        push("SERVER_PORT", self.var(G::ServerPort));
        push("SERVER_NAME", self.var(G::ServerName));
        if let Flavor::Fastcgi { path_info } = flavor {
            push("REDIRECT_STATUS", b"200".to_vec());
            if path_info {
                push("PATH_INFO", self.path_info.as_bytes().to_vec());
            }
        }
        // Debian's param files send $host, never the raw Host header.
        push("HTTP_HOST", self.host().into_owned().into_bytes());

        // Route params: replace a default in place, or come after the defaults.
        for (name, t) in params {
            let mut value = Vec::new();
            self.render(t, &mut value);
            match vars.iter_mut().find(|(n, _)| n == name) {
                Some(slot) => slot.1 = value,
                None => vars.push((Cow::Owned(name.clone()), value)),
            }
        }

        // Request headers, each name once (duplicates joined), unless a param set it.
        // Transfer-Encoding is not passed: the body goes de-chunked, with CONTENT_LENGTH.
        for name in self.headers.keys() {
            if name == header::TRANSFER_ENCODING {
                continue;
            }
            let Some(var) = header_var(name.as_str(), self.underscores) else {
                continue;
            };
            if vars.iter().any(|(n, _)| *n == var) {
                continue;
            }
            let value = self.header_joined(name.as_str());
            vars.push((Cow::Owned(var), value));
        }
        vars
    }
}

/// `HTTP_NAME` for a request header, or `None` for headers never passed: names with
/// characters outside `[A-Za-z0-9-]` (so `X_Foo` cannot pose as `X-Foo`), and `Proxy`
/// (httpoxy: it would become the app's HTTP_PROXY). With `underscores` (the listener's
/// `underscores_in_headers = true`) `_` is allowed too, and `X_Foo` becomes HTTP_X_FOO as
/// in nginx.
pub fn header_var(name: &str, underscores: bool) -> Option<String> {
    if name.is_empty()
        || name.eq_ignore_ascii_case("proxy")
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || (underscores && b == b'_'))
    {
        return None;
    }
    let mut var = String::with_capacity(5 + name.len());
    var.push_str("HTTP_");
    var.extend(name.bytes().map(|b| {
        if b == b'-' {
            '_'
        } else {
            b.to_ascii_uppercase() as char
        }
    }));
    Some(var)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue, Method, Uri, Version};

    fn facts<'a>(uri: &'a Uri, headers: &'a HeaderMap, path: &'a str) -> Vars<'a> {
        Vars {
            method: &Method::GET,
            uri,
            path,
            version: Version::HTTP_11,
            headers,
            host: headers.get(header::HOST),
            peer: "192.0.2.1:5555".parse().ok(),
            local: "127.0.0.1:8080".parse().ok(),
            tls: false,
            server_name: "",
            content_length: None,
            document_root: "/srv",
            script_name: Cow::Borrowed(path),
            path_info: "",
            underscores: false,
            captures: None,
            args: None,
            maps: None,
            cache_status: None,
            ssl: None,
        }
    }

    fn get<'a>(vars: &'a [Var], name: &str) -> Option<&'a [u8]> {
        vars.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    #[test]
    fn uwsgi_vars_follow_uwsgi_params() {
        let uri: Uri = "/caf%C3%A9/x?q=%20a".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("Shop.Example:8080"));
        h.append("x-multi", HeaderValue::from_static("a"));
        h.append("x-multi", HeaderValue::from_static("b"));
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        h.insert("proxy", HeaderValue::from_static("http://evil"));
        h.insert("x_foo", HeaderValue::from_static("spoof"));
        let f = facts(&uri, &h, "/café/x");
        let vars = f.vars(Flavor::Uwsgi, &[]);
        assert_eq!(get(&vars, "PATH_INFO"), Some("/café/x".as_bytes()));
        assert_eq!(get(&vars, "REQUEST_URI"), Some(&b"/caf%C3%A9/x?q=%20a"[..]));
        assert_eq!(get(&vars, "QUERY_STRING"), Some(&b"q=%20a"[..]));
        assert_eq!(get(&vars, "CONTENT_LENGTH"), Some(&b""[..]));
        assert_eq!(get(&vars, "HTTP_HOST"), Some(&b"shop.example"[..]));
        assert_eq!(get(&vars, "HTTP_X_MULTI"), Some(&b"a, b"[..]));
        assert_eq!(get(&vars, "HTTP_COOKIE"), Some(&b"a=1; b=2"[..]));
        assert_eq!(get(&vars, "HTTP_PROXY"), None);
        assert_eq!(get(&vars, "HTTP_X_FOO"), None);
        assert_eq!(get(&vars, "HTTPS"), None);
        assert_eq!(get(&vars, "SCRIPT_NAME"), None);
        assert_eq!(get(&vars, "REMOTE_ADDR"), Some(&b"192.0.2.1"[..]));
        assert_eq!(get(&vars, "SERVER_PORT"), Some(&b"8080"[..]));
        let names: Vec<&str> = vars.iter().map(|(n, _)| n.as_ref()).collect();
        assert_eq!(names.iter().filter(|n| **n == "HTTP_X_MULTI").count(), 1);
    }

    #[test]
    fn params_replace_defaults_and_use_variables() {
        let uri: Uri = "/app/x?y=1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("h"));
        h.insert("x-tenant", HeaderValue::from_static("t1"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YWxpY2U6c2VjcmV0"),
        );
        let f = facts(&uri, &h, "/app/x");
        let params = vec![
            (
                "SCRIPT_NAME".to_string(),
                KeyTemplate::parse_value("").unwrap(),
            ),
            (
                "APP_ORIGIN".to_string(),
                KeyTemplate::parse_value("$remote_addr:$remote_port$document_uri").unwrap(),
            ),
            (
                "HTTP_X_TENANT".to_string(),
                KeyTemplate::parse_value("fixed").unwrap(),
            ),
        ];
        let vars = f.vars(Flavor::Fastcgi { path_info: false }, &params);
        assert_eq!(get(&vars, "SCRIPT_NAME"), Some(&b""[..]));
        assert_eq!(get(&vars, "SCRIPT_FILENAME"), Some(&b"/srv/app/x"[..]));
        assert_eq!(get(&vars, "APP_ORIGIN"), Some(&b"192.0.2.1:5555/app/x"[..]));
        assert_eq!(get(&vars, "HTTP_X_TENANT"), Some(&b"fixed"[..]));
        assert_eq!(get(&vars, "REMOTE_USER"), Some(&b"alice"[..]));
        assert_eq!(get(&vars, "GATEWAY_INTERFACE"), Some(&b"CGI/1.1"[..]));
        assert_eq!(get(&vars, "REDIRECT_STATUS"), Some(&b"200"[..]));
        assert_eq!(get(&vars, "PATH_INFO"), None);
        let tenants = vars.iter().filter(|(n, _)| n == "HTTP_X_TENANT").count();
        assert_eq!(tenants, 1);
    }

    #[test]
    fn header_names_outside_the_safe_set_are_dropped() {
        assert_eq!(
            header_var("x-forwarded-for", false).as_deref(),
            Some("HTTP_X_FORWARDED_FOR")
        );
        assert_eq!(header_var("x_forwarded_for", false), None);
        assert_eq!(
            header_var("x_forwarded_for", true).as_deref(),
            Some("HTTP_X_FORWARDED_FOR")
        );
        assert_eq!(header_var("Proxy", true), None);
        assert_eq!(header_var("x.y", true), None);
    }
}
