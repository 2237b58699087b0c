//! The one template engine's renderer: every `$variable` of the config — `hash_key`,
//! gateway `params`, `return`, header values — is parsed and checked once at load
//! (`portico_config::KeyTemplate`) and rendered here per request, from one [`Vars`]: the
//! request as the client sent it, where it arrived, and what routing found (regex
//! captures). The gateways fill in their CGI facts (`$document_root`,
//! `$fastcgi_script_name` …); elsewhere those render empty, as in nginx.

use std::borrow::Cow;
use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Uri, Version};
use portico_config::{GatewayVar, KeyPart, KeyTemplate};

/// Regex captures of the matched route, owned (`$1` … `$9`).
#[derive(Debug, Clone, Default)]
pub struct Captures {
    groups: Vec<Option<String>>,
}

impl Captures {
    pub fn of(re: &regex::Regex, subject: &str) -> Option<Self> {
        let c = re.captures(subject)?;
        Some(Self {
            groups: c
                .iter()
                .map(|m| m.map(|m| m.as_str().to_string()))
                .collect(),
        })
    }

    pub fn get(&self, n: u8) -> &str {
        self.groups
            .get(usize::from(n))
            .and_then(|g| g.as_deref())
            .unwrap_or("")
    }
}

/// What the environment is made of: one request as the client sent it, and where it
/// arrived.
pub struct Vars<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    /// The normalized, percent-decoded path ($uri / $document_uri).
    pub path: &'a str,
    pub version: Version,
    pub headers: &'a HeaderMap,
    /// Host header or h2 :authority, as sent.
    pub host: Option<&'a HeaderValue>,
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub tls: bool,
    /// The first `server_names` entry of the listener ("" without one, as nginx).
    pub server_name: &'a str,
    /// The body length: the Content-Length sent, or counted for a buffered body.
    pub content_length: Option<u64>,
    /// The route's `root` ("" when unset).
    pub document_root: &'a str,
    /// FastCGI: $fastcgi_script_name and $fastcgi_path_info.
    pub script_name: Cow<'a, str>,
    pub path_info: &'a str,
    /// Header names with `_` become vars too (`underscores_in_headers = true`).
    pub underscores: bool,
    /// The matched regex route's captures.
    pub captures: Option<&'a Captures>,
    /// `$args` when a rewrite or try_files changed them (else the request's query).
    pub args: Option<&'a str>,
    /// The `[maps]` for `$map_NAME`.
    pub maps: Option<&'a portico_limits::maps::Maps>,
    /// `$upstream_cache_status`, once the cache has answered.
    pub cache_status: Option<&'static str>,
    /// The connection's TLS session, for `$ssl_*`.
    pub ssl: Option<&'a portico_core::TlsInfo>,
}

impl Vars<'_> {
    fn render_ssl(&self, v: portico_config::SslVar, out: &mut Vec<u8>) {
        use portico_config::SslVar::*;
        let Some(tls) = self.ssl else { return };
        let client = tls.client.as_deref();
        let text: std::borrow::Cow<'_, str> = match v {
            Protocol => tls.version.as_deref().unwrap_or("").into(),
            Cipher => tls.cipher.as_deref().unwrap_or("").into(),
            ServerName => tls.sni.as_deref().unwrap_or("").into(),
            ClientVerify => if client.is_some() { "SUCCESS" } else { "NONE" }.into(),
            ClientSDn => client.map_or("", |c| c.subject.as_str()).into(),
            ClientIDn => client.map_or("", |c| c.issuer.as_str()).into(),
            ClientSerial => client.map_or("", |c| c.serial.as_str()).into(),
            ClientFingerprint => client.map_or("", |c| c.fingerprint.as_str()).into(),
            ClientCert => client
                .map(|c| c.pem.trim_end().replace('\n', "\n\t"))
                .unwrap_or_default()
                .into(),
            ClientEscapedCert => client
                .map(|c| form_urlencoded_pem(&c.pem))
                .unwrap_or_default()
                .into(),
        };
        out.extend_from_slice(text.as_bytes());
    }

    pub(crate) fn request_uri(&self) -> &str {
        self.uri
            .path_and_query()
            .map_or(self.uri.path(), |p| p.as_str())
    }

    /// `$host`: the request line's host, else the Host header's name without its
    /// port, else the server name; lower-cased (borrowed when it already is).
    pub(crate) fn host(&self) -> std::borrow::Cow<'_, str> {
        let raw: &str = self
            .uri
            .host()
            .or_else(|| {
                self.host
                    .and_then(|h| h.to_str().ok())
                    .map(crate::host_name)
            })
            .unwrap_or(self.server_name);
        if raw.bytes().any(|b| b.is_ascii_uppercase()) {
            raw.to_ascii_lowercase().into()
        } else {
            raw.into()
        }
    }

    pub(crate) fn remote_user(&self) -> Vec<u8> {
        let Some(v) = self.headers.get(header::AUTHORIZATION) else {
            return Vec::new();
        };
        let b = v.as_bytes();
        let Some(cred) = b
            .get(..6)
            .filter(|p| p.eq_ignore_ascii_case(b"basic "))
            .and_then(|_| portico_core::base64::decode(b[6..].trim_ascii()))
        else {
            return Vec::new();
        };
        let end = cred.iter().position(|&c| c == b':').unwrap_or(cred.len());
        cred[..end].to_vec()
    }

    /// One variable's value, as nginx renders it.
    pub fn render_part(&self, part: &KeyPart, out: &mut Vec<u8>) {
        match part {
            KeyPart::Literal(s) => out.extend_from_slice(s.as_bytes()),
            KeyPart::RequestUri => out.extend_from_slice(self.request_uri().as_bytes()),
            KeyPart::Uri => out.extend_from_slice(self.path.as_bytes()),
            KeyPart::Args => out.extend_from_slice(self.args().as_bytes()),
            KeyPart::Host => out.extend_from_slice(self.host().as_bytes()),
            KeyPart::RemoteAddr => out.extend_from_slice(&self.remote_addr()),
            // $user is the mail module's; log variables are rendered by the access log from
            // the finished response
            KeyPart::User | KeyPart::Log(_) => {}
            KeyPart::Ssl(v) => self.render_ssl(*v, out),
            KeyPart::CacheStatus => {
                out.extend_from_slice(self.cache_status.unwrap_or("").as_bytes())
            }
            KeyPart::Header(name) => out.extend_from_slice(&self.header_joined(name)),
            KeyPart::Cookie(name) => {
                if let Some(v) = crate::proxy::cookie(self.headers, name) {
                    out.extend_from_slice(v.as_bytes());
                }
            }
            KeyPart::Gateway(v) => self.render_gateway(*v, out),
            KeyPart::Map(name) => {
                if let Some(m) = self.maps.and_then(|m| m.get(name)) {
                    let mut source = Vec::with_capacity(32);
                    self.render(&m.config.source, &mut source);
                    m.lookup_into(&source, out);
                }
            }
            KeyPart::Capture(n) => {
                if let Some(c) = self.captures {
                    out.extend_from_slice(c.get(*n).as_bytes());
                }
            }
        }
    }

    fn render_gateway(&self, v: GatewayVar, out: &mut Vec<u8>) {
        let port = |a: Option<SocketAddr>| a.map(|a| a.port().to_string()).unwrap_or_default();
        match v {
            GatewayVar::RequestMethod => out.extend_from_slice(self.method.as_str().as_bytes()),
            GatewayVar::ContentType => {
                if let Some(ct) = self.headers.get(header::CONTENT_TYPE) {
                    out.extend_from_slice(ct.as_bytes());
                }
            }
            GatewayVar::ContentLength => {
                if let Some(n) = self.content_length {
                    out.extend_from_slice(n.to_string().as_bytes());
                }
            }
            GatewayVar::DocumentRoot => out.extend_from_slice(self.document_root.as_bytes()),
            GatewayVar::ServerProtocol => {
                out.extend_from_slice(crate::version_str(self.version).as_bytes())
            }
            GatewayVar::Scheme => out.extend_from_slice(if self.tls { b"https" } else { b"http" }),
            GatewayVar::Https => {
                if self.tls {
                    out.extend_from_slice(b"on");
                }
            }
            GatewayVar::RemotePort => out.extend_from_slice(port(self.peer).as_bytes()),
            GatewayVar::RemoteUser => out.extend_from_slice(&self.remote_user()),
            GatewayVar::ServerAddr => match self.local {
                Some(a) => out.extend_from_slice(a.ip().to_string().as_bytes()),
                None => out.extend_from_slice(b"unix:"),
            },
            GatewayVar::ServerPort => out.extend_from_slice(port(self.local).as_bytes()),
            GatewayVar::ServerName => out.extend_from_slice(self.server_name.as_bytes()),
            GatewayVar::FastcgiScriptName => out.extend_from_slice(self.script_name.as_bytes()),
            GatewayVar::FastcgiPathInfo => out.extend_from_slice(self.path_info.as_bytes()),
            GatewayVar::RequestFilename => {
                out.extend_from_slice(self.document_root.as_bytes());
                out.extend_from_slice(self.path.as_bytes());
            }
        }
    }

    pub(crate) fn remote_addr(&self) -> Vec<u8> {
        match self.peer {
            Some(p) => p.ip().to_string().into_bytes(),
            None => b"unix:".to_vec(),
        }
    }

    /// Every value of a header, joined as nginx (1.23+) joins duplicates: `; ` for
    /// Cookie, `, ` for the rest.
    pub(crate) fn header_joined(&self, name: &str) -> Vec<u8> {
        let sep: &[u8] = if name == "cookie" { b"; " } else { b", " };
        let mut out = Vec::new();
        for (i, v) in self.headers.get_all(name).iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(sep);
            }
            out.extend_from_slice(v.as_bytes());
        }
        out
    }

    pub(crate) fn var(&self, v: GatewayVar) -> Vec<u8> {
        let mut out = Vec::new();
        self.render_gateway(v, &mut out);
        out
    }

    /// `$args`: the query string as rewrites left it.
    pub fn args(&self) -> &str {
        self.args.or(self.uri.query()).unwrap_or("")
    }

    /// Renders `t` onto `out`.
    pub fn render(&self, t: &KeyTemplate, out: &mut Vec<u8>) {
        for part in &t.parts {
            self.render_part(part, out);
        }
    }

    /// `t` rendered, as a header value (`None` if it is not one).
    pub fn header_value(&self, t: &KeyTemplate) -> Option<HeaderValue> {
        let mut out = Vec::with_capacity(64);
        self.render(t, &mut out);
        HeaderValue::from_bytes(&out).ok()
    }
}

/// A PEM percent-encoded as nginx's `$ssl_client_escaped_cert` (every byte but
/// unreserved ones).
fn form_urlencoded_pem(pem: &str) -> String {
    let mut out = String::with_capacity(pem.len() * 3 / 2);
    for b in pem.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
