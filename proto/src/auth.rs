//! Bearer credentials, shared by the router's API keys and the worker token:
//! the `Authorization` header (scheme case-insensitive, RFC 9110), SHA-256
//! digests (secrets are kept hashed in memory) and constant-time comparison,
//! and reading a secret from a file or the environment, never from argv.

use std::fmt;
use std::path::Path;

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// The credential of an `Authorization: Bearer <token>` header value; the
/// scheme matches in any case. `None` for another scheme or no token.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// SHA-256 of a secret: what is kept in memory instead of the secret.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SecretDigest(pub [u8; 32]);

impl SecretDigest {
    pub fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(hex: &str) -> Option<Self> {
        let hex = hex.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let mut out = [0u8; 32];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
        }
        Some(Self(out))
    }

    /// Equality in time independent of where the digests differ.
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for SecretDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretDigest(..)")
    }
}

/// One shared secret (the worker token), kept as its digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedToken(SecretDigest);

impl SharedToken {
    pub fn new(secret: &str) -> Self {
        Self(SecretDigest::of(secret))
    }

    /// Whether an `Authorization` header value carries this token (compared
    /// as digests, in constant time).
    pub fn admits(&self, authorization: Option<&str>) -> bool {
        authorization
            .and_then(bearer)
            .is_some_and(|t| SecretDigest::of(t).ct_eq(&self.0))
    }
}

/// Secrets whose `Debug` prints only how many there are (configs derive
/// `Debug`; a key must never reach a log).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets(pub Vec<String>);

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets({} redacted)", self.0.len())
    }
}

impl Secrets {
    /// Comma-separated secrets from environment variable `var` (empty
    /// entries kept, so validation can name a stray comma).
    pub fn from_env(var: &str) -> Self {
        match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => {
                Self(v.split(',').map(|s| s.trim().to_owned()).collect())
            }
            _ => Self::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A single secret: the first line of `file` when given, else environment
/// variable `var`; `Ok(None)` when neither is set. An empty file is an error
/// (a mounted Secret that lost its key must not turn authentication off).
pub fn read_secret(file: Option<&Path>, var: &str) -> Result<Option<String>, String> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let secret = text.lines().next().unwrap_or("").trim();
        if secret.is_empty() {
            return Err(format!("{} is empty", path.display()));
        }
        return Ok(Some(secret.to_owned()));
    }
    Ok(std::env::var(var)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc "), Some("abc"));
        assert_eq!(bearer("BEARER  abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearerabc"), None);
    }

    #[test]
    fn digests_compare_and_parse() {
        let d = SecretDigest::of("k");
        let hex: String = d.0.iter().map(|b| format!("{b:02X}")).collect();
        assert!(SecretDigest::from_hex(&hex).is_some_and(|p| p.ct_eq(&d)));
        assert!(!SecretDigest::of("j").ct_eq(&d));
        assert!(SecretDigest::from_hex("zz").is_none());
        assert!(SecretDigest::from_hex(&"g".repeat(64)).is_none());
        let t = SharedToken::new("s3cret");
        assert!(t.admits(Some("bearer s3cret")));
        assert!(!t.admits(Some("Bearer s3cre")));
        assert!(!t.admits(None));
        assert_eq!(
            format!("{:?}", Secrets(vec!["k".into()])),
            "Secrets(1 redacted)"
        );
    }
}
