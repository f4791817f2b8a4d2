//! How the store names and encodes things in Redis: the keys (prefix, chain
//! tag `{T}` so a chain's keys share one Cluster slot, see the table in the
//! module docs), the key TTL, stream entry ids of event numbers, and the
//! JSON / status string encodings of stored fields. Every key and value
//! format lives here so the scripts and the callers agree on it.

use super::Inner;
use crate::store::{chain_tag, StoreError, StoreResult};
use crate::types::ResponseStatus;

impl Inner {
    /// `P:{T}:resp:<id>`: the response record (hash).
    pub(super) fn rec_key(&self, id: &str) -> String {
        format!("{}:{{{}}}:resp:{id}", self.opts.prefix, chain_tag(id))
    }
    /// `P:{T}:resp:<id>:events`: its stream events (stream).
    pub(super) fn events_key(&self, id: &str) -> String {
        format!("{}:events", self.rec_key(id))
    }
    /// `P:{T}:chain:<root>:log`: a chain's item log (list).
    pub(super) fn chain_log_key(&self, root: &str) -> String {
        format!(
            "{}:{{{}}}:chain:{root}:log",
            self.opts.prefix,
            chain_tag(root)
        )
    }
    /// `P:{T}:conv:<id>`: a conversation (hash).
    pub(super) fn conv_key(&self, id: &str) -> String {
        format!("{}:{{{}}}:conv:{id}", self.opts.prefix, chain_tag(id))
    }
    /// `P:{T}:conv:<id>:items`: its items (list).
    pub(super) fn items_key(&self, id: &str) -> String {
        format!("{}:items", self.conv_key(id))
    }
    /// `P:tenant:{<tenant>}:responses`: the tenant's response ids by
    /// insertion time (sorted set; its own Cluster slot per tenant).
    pub(super) fn index_key(&self, tenant: &str) -> String {
        format!("{}:tenant:{{{tenant}}}:responses", self.opts.prefix)
    }
    /// `P:leases`: the lease deadlines of active responses (sorted set).
    pub(super) fn leases_key(&self) -> String {
        format!("{}:leases", self.opts.prefix)
    }
    /// The TTL of every key, in ms (at least 1).
    pub(super) fn ttl_ms(&self) -> u64 {
        (self.opts.ttl.as_millis() as u64).max(1)
    }
}

/// JSON text of a stored value.
pub(super) fn ser<T: serde::Serialize>(v: &T) -> StoreResult<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(e.to_string()))
}

/// A stored value from its JSON text.
pub(super) fn de<T: serde::de::DeserializeOwned>(s: &str) -> StoreResult<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Backend(format!("corrupt record: {e}")))
}

/// The `status` field of a record (`queued`, `in_progress`, ...).
pub(super) fn status_str(s: ResponseStatus) -> &'static str {
    s.as_str()
}

/// A record's status from its `status` field.
pub(super) fn status_of(s: &str) -> StoreResult<ResponseStatus> {
    de(&format!("\"{s}\""))
}

/// The stream entry id of event number `seq` (`0-0` is not a valid id).
pub(super) fn stream_id(seq: u64) -> String {
    format!("0-{}", seq.saturating_add(1))
}

/// The event number of a stream entry id.
pub(super) fn seq_of(entry: &str) -> Option<u64> {
    entry
        .strip_prefix("0-")?
        .parse::<u64>()
        .ok()?
        .checked_sub(1)
}
