//! The SASL mechanisms a client may log in with before Portico knows its backend:
//! PLAIN (RFC 4616) and LOGIN, both carried in base64.

use portico_core::base64;

use crate::session::Credentials;

/// "Username:" and "Password:", base64, as LOGIN prompts them.
pub const USERNAME_PROMPT: &[u8] = b"VXNlcm5hbWU6";
pub const PASSWORD_PROMPT: &[u8] = b"UGFzc3dvcmQ6";

/// PLAIN: base64 of `authzid NUL authcid NUL password`.
pub fn plain(b64: &[u8]) -> Option<Credentials> {
    let raw = base64::decode(b64.trim_ascii())?;
    let mut parts = raw.splitn(3, |&b| b == 0);
    let _authzid = parts.next()?;
    let user = parts.next()?.to_vec();
    let pass = parts.next()?.to_vec();
    (!user.is_empty()).then_some(Credentials::new("plain", user, pass))
}

/// LOGIN: the user name and the password, each its own base64 line.
pub fn login(user_b64: &[u8], pass_b64: &[u8]) -> Option<Credentials> {
    let user = base64::decode(user_b64.trim_ascii())?;
    let pass = base64::decode(pass_b64.trim_ascii())?;
    (!user.is_empty()).then_some(Credentials::new("login", user, pass))
}

/// CRAM-MD5 (RFC 2195): the client answers the challenge `salt` with base64 of
/// `user SP hex-digest`. Portico cannot check the digest (it has no password): the auth
/// server gets salt and digest and must send the password back for the backend login.
pub fn cram_md5(b64: &[u8], salt: Vec<u8>) -> Option<Credentials> {
    let raw = base64::decode(b64.trim_ascii())?;
    let space = raw.iter().rposition(|&b| b == b' ')?;
    let (user, digest) = (raw[..space].to_vec(), raw[space + 1..].to_vec());
    let hex = digest.len() == 32 && digest.iter().all(u8::is_ascii_hexdigit);
    (!user.is_empty() && hex).then_some(Credentials {
        method: "cram-md5",
        user,
        pass: digest,
        salt: Some(salt),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_login() {
        let c = plain(base64::encode(b"\0alice\0secret").as_bytes()).unwrap();
        assert_eq!(
            (c.user.as_slice(), c.pass.as_slice()),
            (&b"alice"[..], &b"secret"[..])
        );
        assert_eq!(plain(b"not base64!"), None);
        assert_eq!(plain(base64::encode(b"\0\0pw").as_bytes()), None, "no user");
        let c = login(
            base64::encode(b"bob").as_bytes(),
            base64::encode(b"pw").as_bytes(),
        )
        .unwrap();
        assert_eq!(c.method, "login");
        assert_eq!(c.user, b"bob");
        let answer = base64::encode(b"tim b913a602c7eda7a495b4e6e7334d3890");
        let c = cram_md5(answer.as_bytes(), b"<1896.697170952@x>".to_vec()).unwrap();
        assert_eq!((c.method, c.user.as_slice()), ("cram-md5", &b"tim"[..]));
        assert_eq!(c.salt.as_deref(), Some(&b"<1896.697170952@x>"[..]));
        assert_eq!(
            cram_md5(base64::encode(b"tim nothex").as_bytes(), Vec::new()),
            None
        );
    }
}
