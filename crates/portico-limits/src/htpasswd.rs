//! htpasswd files for HTTP Basic authentication (nginx `auth_basic_user_file`): lines of
//! `user:hash` with bcrypt (`$2y$`, `$2b$`, `$2a$`), Apache's MD5 (`$apr1$`) or
//! `{SHA}` (base64 SHA-1) hashes; `#` comments and blank lines are skipped. Other
//! hashes (crypt(3), plain text) are refused when the file is read, with their line.
//!
//! bcrypt is slow on purpose (tens of ms per check at cost 10+): a check that succeeded
//! is remembered (SHA-256 of user and password, a bounded table), so a browser sending
//! the same credentials on every request costs one bcrypt run, not one per request.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use base64::Engine as _;
use md5::{Digest as _, Md5};
use sha1::Sha1;
use sha2::Sha256;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Hash {
    Bcrypt(String),
    Apr1 { salt: String, hash: String },
    Sha1(Vec<u8>),
}

/// The users of one htpasswd file.
#[derive(Debug)]
pub struct Htpasswd {
    users: HashMap<String, Hash>,
    /// SHA-256 of `user \0 password` for checks that passed.
    verified: Mutex<Vec<[u8; 32]>>,
}

/// Successful checks remembered.
const REMEMBERED: usize = 1024;

impl Htpasswd {
    /// Reads `path`; an error names the file and line.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|(line, e)| format!("{}:{line}: {e}", path.display()))
    }

    /// Parses a file's text; an error gives its line number.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err((i + 1, "expected user:hash".into()));
            };
            // a third field (htdigest, or comments some tools add) is not a hash
            let hash = hash.split(':').next().unwrap_or(hash);
            let parsed = if hash.starts_with("$2y$")
                || hash.starts_with("$2b$")
                || hash.starts_with("$2a$")
            {
                Hash::Bcrypt(hash.to_string())
            } else if let Some(rest) = hash.strip_prefix("$apr1$") {
                let Some((salt, h)) = rest.split_once('$') else {
                    return Err((i + 1, "an $apr1$ hash is $apr1$SALT$HASH".into()));
                };
                Hash::Apr1 {
                    salt: salt.to_string(),
                    hash: h.to_string(),
                }
            } else if let Some(b64) = hash.strip_prefix("{SHA}") {
                let digest = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| (i + 1, format!("{{SHA}} hash: {e}")))?;
                Hash::Sha1(digest)
            } else {
                return Err((
                    i + 1,
                    format!("the hash of {user:?} is not bcrypt ($2y$), apr1 ($apr1$) or {{SHA}} (crypt and plain text are refused)"),
                ));
            };
            users.insert(user.to_string(), parsed);
        }
        Ok(Self {
            users,
            verified: Mutex::new(Vec::new()),
        })
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `user` with `password` is in the file. May take tens of milliseconds
    /// (bcrypt) the first time: run it off the async workers.
    pub fn check(&self, user: &str, password: &str) -> bool {
        let Some(hash) = self.users.get(user) else {
            return false;
        };
        let mut h = Sha256::new();
        h.update(user.as_bytes());
        h.update([0]);
        h.update(password.as_bytes());
        let key: [u8; 32] = h.finalize().into();
        if self.lock().contains(&key) {
            return true;
        }
        let ok = match hash {
            Hash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
            Hash::Apr1 { salt, hash } => {
                constant_eq(apr1(password, salt).as_bytes(), hash.as_bytes())
            }
            Hash::Sha1(digest) => constant_eq(&Sha1::digest(password.as_bytes()), digest),
        };
        if ok {
            let mut v = self.lock();
            if v.len() >= REMEMBERED {
                v.remove(0);
            }
            v.push(key);
        }
        ok
    }

    /// Whether a check of `user` is cheap (no bcrypt run): unknown users, non-bcrypt
    /// hashes, and credentials that passed before.
    pub fn is_quick(&self, user: &str) -> bool {
        !matches!(self.users.get(user), Some(Hash::Bcrypt(_)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<[u8; 32]>> {
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Apache's MD5-crypt (`$apr1$`): the FreeBSD MD5-crypt algorithm with the magic
/// string "$apr1$", its 22-character hash in crypt's base-64 alphabet.
fn apr1(password: &str, salt: &str) -> String {
    const MAGIC: &[u8] = b"$apr1$";
    let pw = password.as_bytes();
    let salt = &salt.as_bytes()[..salt.len().min(8)];
    let alt = {
        let mut h = Md5::new();
        h.update(pw);
        h.update(salt);
        h.update(pw);
        h.finalize()
    };
    let mut h = Md5::new();
    h.update(pw);
    h.update(MAGIC);
    h.update(salt);
    let mut left = pw.len();
    while left > 0 {
        let n = left.min(16);
        h.update(&alt[..n]);
        left -= n;
    }
    let mut i = pw.len();
    while i > 0 {
        if i & 1 == 1 {
            h.update([0u8]);
        } else {
            h.update(&pw[..1]);
        }
        i >>= 1;
    }
    let mut d = h.finalize();
    for round in 0..1000 {
        let mut h = Md5::new();
        if round & 1 == 1 {
            h.update(pw);
        } else {
            h.update(d);
        }
        if round % 3 != 0 {
            h.update(salt);
        }
        if round % 7 != 0 {
            h.update(pw);
        }
        if round & 1 == 1 {
            h.update(d);
        } else {
            h.update(pw);
        }
        d = h.finalize();
    }
    const ITOA: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(22);
    let mut put = |v: u32, n: usize| {
        let mut v = v;
        for _ in 0..n {
            out.push(ITOA[(v & 0x3f) as usize] as char);
            v >>= 6;
        }
    };
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        put(
            (u32::from(d[a]) << 16) | (u32::from(d[b]) << 8) | u32::from(d[c]),
            4,
        );
    }
    put(u32::from(d[11]), 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apr1_matches_apache() {
        // from htpasswd-verify's documentation and Apache's own test vector
        assert_eq!(apr1("password", "RandSalt"), "PgCXHRrkpSt4cbyC2C6bm/");
        let f = Htpasswd::parse("user:$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00\n").unwrap();
        assert!(f.check("user", "password"));
        assert!(!f.check("user", "Password"));
        assert!(!f.check("other", "password"));
    }

    #[test]
    fn sha_and_bcrypt_entries() {
        // {SHA} of "password"; bcrypt of "secret" (cost 4)
        let hash = bcrypt::hash("secret", 4).unwrap();
        let text = format!("# users\n\nalice:{{SHA}}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\nbob:{hash}\n");
        let f = Htpasswd::parse(&text).unwrap();
        assert_eq!(f.len(), 2);
        assert!(f.check("alice", "password"));
        assert!(!f.check("alice", "secret"));
        assert!(f.check("bob", "secret"));
        assert!(f.check("bob", "secret"), "remembered");
        assert!(!f.check("bob", "password"));
        assert!(!f.is_quick("bob") && f.is_quick("alice"));
    }

    #[test]
    fn unknown_hashes_are_refused_with_their_line() {
        let e = Htpasswd::parse("a:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\nb:plaintext\n").unwrap_err();
        assert_eq!(e.0, 2);
        assert!(e.1.contains("not bcrypt"), "{}", e.1);
        assert_eq!(Htpasswd::parse("nocolon\n").unwrap_err().0, 1);
    }
}
