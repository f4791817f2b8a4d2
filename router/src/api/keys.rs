//! API keys: who may call the public API, and which tenant each key is.
//!
//! Two sources, never argv: `SPINDLE_API_KEYS` (comma-separated keys; each
//! key's tenant is [`tenant_of_key`], a hash, so ids stay what they were)
//! and `--api-keys-file`, one `tenant:key` or `tenant:sha256:HEX` per line
//! (`#` comments and blank lines ignored; several keys may name one tenant,
//! which is how a key is rotated). Only SHA-256 digests are kept; a
//! presented key is hashed and compared with every entry in constant time,
//! so neither the match nor its position shows in the timing.
//!
//! The file is read again on SIGHUP ([`ApiKeys::reload`], called by the
//! binary); a file that does not parse leaves the keys in force unchanged.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

use spindle_proto::auth::{SecretDigest, Secrets};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::store::ANONYMOUS_TENANT;
use crate::sync;

/// The tenant id of an env API key: `t_` + the first 20 hex digits of its
/// SHA-1 (stable across replicas and restarts; the key itself is never stored).
pub fn tenant_of_key(key: &str) -> String {
    let hex = sha1_smol::Sha1::from(key.as_bytes()).digest().to_string();
    format!("t_{}", &hex[..20])
}

struct Entry {
    digest: SecretDigest,
    tenant: String,
}

/// One loaded set of keys.
#[derive(Default)]
pub struct KeySet {
    entries: Vec<Entry>,
}

/// Longest tenant name in a key file (it becomes part of store keys).
const MAX_TENANT_LEN: usize = 64;

fn valid_tenant(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TENANT_LEN
        && name != ANONYMOUS_TENANT
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl KeySet {
    /// The keys of `env` and of `file` (when given).
    pub fn read(env: &Secrets, file: Option<&Path>) -> Result<Self, String> {
        let mut set = Self::default();
        for key in &env.0 {
            if key.is_empty() {
                return Err("SPINDLE_API_KEYS: empty key (a stray comma?)".into());
            }
            set.add(SecretDigest::of(key), tenant_of_key(key))?;
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--api-keys-file {}: {e}", path.display()))?;
            let before = set.entries.len();
            set.parse_into(&text)
                .map_err(|e| format!("--api-keys-file {}: {e}", path.display()))?;
            if set.entries.len() == before {
                return Err(format!("--api-keys-file {}: no keys", path.display()));
            }
        }
        Ok(set)
    }

    /// Adds the lines of a key file.
    fn parse_into(&mut self, text: &str) -> Result<(), String> {
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // Errors name the line, never its content: it holds a secret.
            let at = |why: &str| format!("line {}: {why}", n + 1);
            let (tenant, key) = line
                .split_once(':')
                .ok_or_else(|| at("expected tenant:key or tenant:sha256:HEX"))?;
            let tenant = tenant.trim();
            if !valid_tenant(tenant) {
                return Err(at(&format!(
                    "tenant must be 1-{MAX_TENANT_LEN} of A-Z a-z 0-9 _ - . (and not {ANONYMOUS_TENANT:?})"
                )));
            }
            let key = key.trim();
            let digest = match key.strip_prefix("sha256:") {
                Some(hex) => SecretDigest::from_hex(hex.trim())
                    .ok_or_else(|| at("sha256: needs 64 hex digits"))?,
                None if key.is_empty() => return Err(at("empty key")),
                None => SecretDigest::of(key),
            };
            self.add(digest, tenant.to_owned()).map_err(|e| at(&e))?;
        }
        Ok(())
    }

    fn add(&mut self, digest: SecretDigest, tenant: String) -> Result<(), String> {
        match self.entries.iter().find(|e| e.digest == digest) {
            Some(e) if e.tenant != tenant => Err("one key given to two tenants".into()),
            Some(_) => Ok(()),
            None => {
                self.entries.push(Entry { digest, tenant });
                Ok(())
            }
        }
    }

    /// The tenant of `key`, comparing its digest with every entry (no early
    /// exit: the time does not depend on whether or where it matches).
    pub fn tenant(&self, key: &str) -> Option<&str> {
        let digest = SecretDigest::of(key);
        let mut found = u64::MAX;
        for (i, e) in self.entries.iter().enumerate() {
            let eq = e.digest.0.ct_eq(&digest.0);
            found = u64::conditional_select(&found, &(i as u64), eq);
        }
        usize::try_from(found)
            .ok()
            .and_then(|i| self.entries.get(i))
            .map(|e| e.tenant.as_str())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

struct Sources {
    env: Secrets,
    file: Option<PathBuf>,
}

#[derive(Default)]
struct Inner {
    /// Set once, by the first load: where reloads read from.
    sources: OnceLock<Sources>,
    current: RwLock<Arc<KeySet>>,
}

/// The keys in force, shared by the auth middleware and the SIGHUP handler
/// (clones share them). Empty until loaded: authentication is then off.
#[derive(Clone, Default)]
pub struct ApiKeys {
    inner: Arc<Inner>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeys({} keys)", self.snapshot().len())
    }
}

impl ApiKeys {
    /// Loads `env` and `file` the first time it is called; later calls
    /// change nothing (use [`ApiKeys::reload`]). Returns how many keys.
    pub fn load(&self, env: &Secrets, file: Option<&Path>) -> Result<usize, String> {
        if self.inner.sources.get().is_some() {
            return Ok(self.snapshot().len());
        }
        let set = KeySet::read(env, file)?;
        let n = set.len();
        let sources = Sources {
            env: env.clone(),
            file: file.map(Path::to_path_buf),
        };
        if self.inner.sources.set(sources).is_ok() {
            *sync::write(&self.inner.current) = Arc::new(set);
        }
        Ok(n)
    }

    /// Reads the sources again and swaps the new keys in; on error the keys
    /// in force stay. Returns how many keys are in force.
    pub fn reload(&self) -> Result<usize, String> {
        let Some(src) = self.inner.sources.get() else {
            return Ok(0);
        };
        let set = KeySet::read(&src.env, src.file.as_deref())?;
        let n = set.len();
        *sync::write(&self.inner.current) = Arc::new(set);
        Ok(n)
    }

    /// Whether requests need a key: some key is loaded, or a key file is
    /// configured (an emptied file fails closed rather than opening the API).
    pub fn enabled(&self) -> bool {
        self.inner.sources.get().is_some_and(|s| s.file.is_some()) || !self.snapshot().is_empty()
    }

    /// The tenant of `key`, if it is one of the keys in force.
    pub fn tenant(&self, key: &str) -> Option<String> {
        self.snapshot().tenant(key).map(str::to_owned)
    }

    fn snapshot(&self) -> Arc<KeySet> {
        sync::read(&self.inner.current).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("spindle-keys-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write temp key file");
        path
    }

    fn hex(d: SecretDigest) -> String {
        d.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn file_lines_name_tenants_and_env_keys_keep_their_ids() {
        let text = format!(
            "# team keys\n\nteam-a:key-a\nteam-a : key-a2\nteam_b:sha256:{}\nteam.c:with:colon\n",
            hex(SecretDigest::of("key-b"))
        );
        let path = temp_file("ok", &text);
        let set = KeySet::read(&Secrets(vec!["envkey".into()]), Some(&path)).expect("parses");
        assert_eq!(set.len(), 5);
        assert_eq!(set.tenant("key-a"), Some("team-a"));
        assert_eq!(set.tenant("key-a2"), Some("team-a"));
        assert_eq!(set.tenant("key-b"), Some("team_b"));
        assert_eq!(set.tenant("with:colon"), Some("team.c"));
        assert_eq!(
            set.tenant("envkey").map(str::to_owned),
            Some(tenant_of_key("envkey"))
        );
        assert_eq!(set.tenant("nope"), None);
        assert_eq!(set.tenant(""), None);
    }

    #[test]
    fn bad_files_are_refused_without_echoing_secrets() {
        for (text, why) in [
            ("just-a-key\n", "line 1"),
            (":k\n", "tenant"),
            ("anonymous:k\n", "tenant"),
            ("a b:k\n", "tenant"),
            ("a:\n", "empty key"),
            ("a:sha256:abc\n", "64 hex"),
            ("a:k\nb:k\n", "two tenants"),
            ("# nothing\n", "no keys"),
        ] {
            let path = temp_file("bad", text);
            let err = KeySet::read(&Secrets::default(), Some(&path))
                .err()
                .unwrap_or_else(|| panic!("{text:?} should fail"));
            assert!(err.contains(why), "{text:?}: {err}");
            assert!(!err.contains("just-a-key"), "{err}");
        }
        let err = KeySet::read(&Secrets(vec!["a".into(), String::new()]), None).err();
        assert!(err.is_some_and(|e| e.contains("stray comma")));
        assert!(KeySet::read(&Secrets::default(), Some(Path::new("/nonexistent/keys"))).is_err());
    }

    #[test]
    fn reload_swaps_keys_and_a_bad_file_keeps_the_old_ones() {
        let path = temp_file("reload", "a:one\n");
        let keys = ApiKeys::default();
        assert!(!keys.enabled());
        assert_eq!(keys.load(&Secrets::default(), Some(&path)), Ok(1));
        assert!(keys.enabled());
        assert_eq!(keys.tenant("one").as_deref(), Some("a"));
        std::fs::write(&path, "a:two\nb:three\n").expect("rewrite");
        assert_eq!(keys.reload(), Ok(2));
        assert_eq!(keys.tenant("one"), None);
        assert_eq!(keys.tenant("three").as_deref(), Some("b"));
        std::fs::write(&path, "broken line\n").expect("rewrite");
        assert!(keys.reload().is_err());
        assert_eq!(keys.tenant("two").as_deref(), Some("a"));
        // A clone shares the keys (the middleware's copy sees reloads).
        let clone = keys.clone();
        std::fs::write(&path, "c:four\n").expect("rewrite");
        assert_eq!(keys.reload(), Ok(1));
        assert_eq!(clone.tenant("four").as_deref(), Some("c"));
        assert!(!format!("{keys:?}").contains("four"));
    }
}
