//! Compaction items' `encrypted_content`: a summary of earlier turns, sealed
//! so that only this deployment can read it back, and only for the tenant
//! it was written for.
//!
//! A token is base64url (no padding) of `version ‖ nonce ‖ ciphertext+tag`:
//! ChaCha20-Poly1305 with a random 96-bit nonce, over `created_at` (8 bytes,
//! big-endian) and the summary's UTF-8. The associated data binds the
//! version and the tenant, so an item copied to another API key, edited,
//! truncated or sealed under another key fails to open.
//!
//! The key ([`CompactionKey`]) comes from `SPINDLE_COMPACTION_KEY` or
//! `--compaction-key-file` (base64, 32 bytes); without one the router makes
//! a random key at start, and items then last as long as the process.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::Value;

use crate::error::ApiError;

/// Environment variable holding the key (base64 of 32 bytes).
pub const KEY_ENV: &str = "SPINDLE_COMPACTION_KEY";

/// Format of the tokens this build writes; others are refused.
const VERSION: u8 = 1;

/// Associated-data prefix: a token is good for nothing but a compaction item.
const DOMAIN: &[u8] = b"spindle.compaction\0";

/// Bytes of `created_at` in front of the summary.
const CREATED_AT_LEN: usize = 8;

/// A 32-byte compaction key; its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct CompactionKey([u8; 32]);

impl fmt::Debug for CompactionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CompactionKey(redacted)")
    }
}

impl CompactionKey {
    /// A key from its base64 text (standard or URL-safe alphabet, padded or not).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bytes = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
            .iter()
            .find_map(|e| e.decode(text).ok())
            .ok_or("the compaction key is not base64")?;
        let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!(
                "the compaction key is {} bytes; it must be 32 (e.g. `openssl rand -base64 32`)",
                b.len()
            )
        })?;
        Ok(Self(key))
    }

    /// A fresh random key.
    pub fn random() -> Result<Self, String> {
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| "no system randomness for a compaction key")?;
        Ok(Self(key))
    }

    /// The configured key: the first line of `file` when given, else
    /// [`KEY_ENV`]; `Ok(None)` when neither is set.
    pub fn load(file: Option<&Path>) -> Result<Option<Self>, String> {
        spindle_proto::auth::read_secret(file, KEY_ENV)
            .map_err(|e| format!("compaction key: {e}"))?
            .map(|text| Self::parse(&text))
            .transpose()
    }
}

/// What an opened item holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub created_at: u64,
    pub summary: String,
}

/// Why a token does not open. Deliberately coarse: which check failed
/// (key, tenant, edit) is not the client's to learn.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Not base64url, or too short to hold a sealed summary.
    #[error("the encrypted content is malformed")]
    Malformed,
    /// Written by a format this build does not read.
    #[error("the encrypted content has an unknown version")]
    Version,
    /// Authentication failed: edited, truncated, another tenant's, or
    /// sealed under another key (another deployment, or before a restart
    /// without a configured key).
    #[error("the encrypted content cannot be opened here")]
    Rejected,
}

/// Seals and opens summaries with one key.
pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealer(redacted)")
    }
}

fn aad(tenant: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(DOMAIN.len() + 1 + tenant.len());
    aad.extend_from_slice(DOMAIN);
    aad.push(VERSION);
    aad.extend_from_slice(tenant.as_bytes());
    aad
}

impl Sealer {
    pub fn new(key: &CompactionKey) -> Self {
        // A 32-byte key is exactly what ChaCha20-Poly1305 takes.
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &key.0)
            .unwrap_or_else(|_| unreachable!("32-byte ChaCha20-Poly1305 key"));
        Self {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        }
    }

    /// The token of `summary`, written at `created_at` for `tenant`.
    pub fn seal(&self, tenant: &str, created_at: u64, summary: &str) -> Result<String, ApiError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| ApiError::Internal("no system randomness for a nonce".into()))?;
        let mut data = Vec::with_capacity(CREATED_AT_LEN + summary.len() + 16);
        data.extend_from_slice(&created_at.to_be_bytes());
        data.extend_from_slice(summary.as_bytes());
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(tenant)),
                &mut data,
            )
            .map_err(|_| ApiError::Internal("sealing a compaction summary failed".into()))?;
        let mut token = Vec::with_capacity(1 + NONCE_LEN + data.len());
        token.push(VERSION);
        token.extend_from_slice(&nonce);
        token.extend_from_slice(&data);
        Ok(URL_SAFE_NO_PAD.encode(token))
    }

    /// What `token` holds, if `tenant` may read it.
    pub fn open(&self, tenant: &str, token: &str) -> Result<Opened, OpenError> {
        let mut raw = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| OpenError::Malformed)?;
        let tag_len = CHACHA20_POLY1305.tag_len();
        if raw.len() < 1 + NONCE_LEN + CREATED_AT_LEN + tag_len {
            return Err(OpenError::Malformed);
        }
        if raw[0] != VERSION {
            return Err(OpenError::Version);
        }
        let nonce = Nonce::try_assume_unique_for_key(&raw[1..1 + NONCE_LEN])
            .map_err(|_| OpenError::Malformed)?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad(tenant)), &mut raw[1 + NONCE_LEN..])
            .map_err(|_| OpenError::Rejected)?;
        let (at, summary) = plain.split_at(CREATED_AT_LEN);
        let created_at = u64::from_be_bytes(at.try_into().map_err(|_| OpenError::Malformed)?);
        let summary = String::from_utf8(summary.to_vec()).map_err(|_| OpenError::Malformed)?;
        Ok(Opened {
            created_at,
            summary,
        })
    }
}

/// The error code of an item that does not open.
pub const INVALID_CONTENT: &str = "invalid_encrypted_content";

/// The summaries of the compaction items a prompt renders, by token.
#[derive(Debug, Default)]
pub struct Summaries(HashMap<String, String>);

impl Summaries {
    /// Opens every compaction item of `items` for `tenant`; one that does
    /// not open is a 400 naming it (`param(i)` for item `i`).
    pub fn open_items(
        &mut self,
        sealer: &Sealer,
        tenant: &str,
        items: &[Value],
        param: impl Fn(usize) -> String,
    ) -> Result<(), ApiError> {
        for (i, item) in items.iter().enumerate() {
            if item.get("type").and_then(Value::as_str) != Some("compaction") {
                continue;
            }
            let token = item
                .get("encrypted_content")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if self.0.contains_key(token) {
                continue;
            }
            let opened = sealer.open(tenant, token).map_err(|e| {
                let at = param(i);
                ApiError::invalid_code(
                    format!(
                        "'{at}': {e}; send the compaction item exactly as it was returned, \
                         with the API key that created it"
                    ),
                    Some(&at),
                    INVALID_CONTENT,
                )
            })?;
            self.0.insert(token.to_owned(), opened.summary);
        }
        Ok(())
    }

    /// The summary a compaction item stands for, once opened.
    pub fn get(&self, item: &Value) -> Option<&str> {
        let token = item.get("encrypted_content")?.as_str()?;
        self.0.get(token).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> Sealer {
        Sealer::new(&CompactionKey::random().unwrap())
    }

    #[test]
    fn a_sealed_summary_opens_for_its_tenant() {
        let s = sealer();
        let token = s
            .seal("alice", 1_700_000_000, "we talked about 🌍")
            .unwrap();
        assert!(!token.contains(['+', '/', '=']), "base64url: {token}");
        let opened = s.open("alice", &token).unwrap();
        assert_eq!(opened.summary, "we talked about 🌍");
        assert_eq!(opened.created_at, 1_700_000_000);
        // A random nonce: the same summary seals differently each time.
        assert_ne!(
            token,
            s.seal("alice", 1_700_000_000, "we talked about 🌍")
                .unwrap()
        );
    }

    #[test]
    fn another_tenant_cannot_open_it() {
        let s = sealer();
        let token = s.seal("alice", 1, "secret plans").unwrap();
        assert_eq!(s.open("bob", &token), Err(OpenError::Rejected));
        assert_eq!(s.open("", &token), Err(OpenError::Rejected));
    }

    #[test]
    fn another_key_cannot_open_it() {
        let token = sealer().seal("alice", 1, "secret plans").unwrap();
        assert_eq!(sealer().open("alice", &token), Err(OpenError::Rejected));
    }

    #[test]
    fn every_edit_is_refused() {
        let s = sealer();
        let token = s.seal("alice", 1, "secret plans").unwrap();
        for i in 0..token.len() {
            let mut b = token.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let edited = String::from_utf8(b).unwrap();
            assert!(s.open("alice", &edited).is_err(), "edit at {i} opened");
        }
        // Truncated, extended, empty, not base64url.
        assert!(s.open("alice", &token[..token.len() - 1]).is_err());
        assert!(s.open("alice", &format!("{token}AA")).is_err());
        assert_eq!(s.open("alice", ""), Err(OpenError::Malformed));
        assert_eq!(s.open("alice", "not base64!"), Err(OpenError::Malformed));
    }

    #[test]
    fn another_version_is_refused() {
        let s = sealer();
        let token = s.seal("alice", 1, "x").unwrap();
        let mut raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        raw[0] = VERSION + 1;
        assert_eq!(
            s.open("alice", &URL_SAFE_NO_PAD.encode(raw)),
            Err(OpenError::Version)
        );
    }

    #[test]
    fn keys_parse_from_base64_of_32_bytes_only() {
        let b64 = STANDARD.encode([7u8; 32]);
        assert_eq!(
            CompactionKey::parse(&format!(" {b64}\n")).unwrap(),
            CompactionKey([7; 32])
        );
        assert_eq!(
            CompactionKey::parse(&URL_SAFE_NO_PAD.encode([7u8; 32])).unwrap(),
            CompactionKey([7; 32])
        );
        assert!(CompactionKey::parse(&STANDARD.encode([7u8; 16]))
            .unwrap_err()
            .contains("16 bytes"));
        assert!(CompactionKey::parse("not base64!").is_err());
        assert_eq!(
            format!("{:?}", CompactionKey([7; 32])),
            "CompactionKey(redacted)"
        );
    }

    #[test]
    fn summaries_name_the_item_that_does_not_open() {
        let s = sealer();
        let good = s.seal("alice", 1, "earlier").unwrap();
        let items = vec![
            serde_json::json!({"type": "message", "role": "user", "content": "hi"}),
            serde_json::json!({"type": "compaction", "id": "cmp_1", "encrypted_content": good}),
            serde_json::json!({"type": "compaction", "id": "cmp_2", "encrypted_content": "AAAA"}),
        ];
        let mut sums = Summaries::default();
        let err = sums
            .open_items(&s, "alice", &items, |i| format!("input[{i}]"))
            .unwrap_err();
        assert_eq!(err.param(), Some("input[2]"));
        assert_eq!(err.code(), Some(INVALID_CONTENT));
        sums.open_items(&s, "alice", &items[..2], |i| format!("input[{i}]"))
            .unwrap();
        assert_eq!(sums.get(&items[1]), Some("earlier"));
        assert_eq!(sums.get(&items[0]), None);
    }
}
