//! The memory store's entries: a response with its event log, a
//! conversation with its items, a chain's item log. Each knows its size
//! ([`Aged::bytes`]), kept in step as it changes, so the store can bound
//! its bytes without re-encoding anything.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use tokio::sync::watch;

use super::bounded::{Aged, Bounded};
use crate::store::{Conversation, ResponseRecord};

pub(super) struct RespEntry {
    pub(super) rec: ResponseRecord,
    /// Encoded size of `rec` when it was last stored.
    pub(super) rec_bytes: usize,
    /// Stream events; entry `n` is event number `n`.
    pub(super) events: Vec<Vec<u8>>,
    /// Their bytes, with [`EVENT_OVERHEAD`] each.
    pub(super) event_bytes: usize,
    pub(super) status_changes: watch::Sender<u64>,
    pub(super) event_changes: watch::Sender<u64>,
    pub(super) expires: Instant,
    pub(super) seq: u64,
}

/// Bytes an entry holds besides its payload (maps, vectors, channels), so
/// that many tiny entries are bounded too.
pub(super) const ENTRY_OVERHEAD: usize = 256;
/// Bytes a stored event or item holds besides its payload.
pub(super) const EVENT_OVERHEAD: usize = 32;

/// Encoded size of a value, as the Redis store keeps it.
pub(super) fn encoded_len<T: serde::Serialize>(v: &T) -> usize {
    serde_json::to_vec(v).map_or(0, |b| b.len())
}

impl RespEntry {
    pub(super) fn bump_status(&self) {
        self.status_changes.send_modify(|v| *v = v.wrapping_add(1));
    }
}

pub(super) struct ConvEntry {
    pub(super) owner: String,
    pub(super) conv: Conversation,
    pub(super) items: Vec<Value>,
    /// Encoded size of each item.
    pub(super) sizes: Vec<usize>,
    /// Their sum: the conversation's size that `--max-conversation-bytes` bounds.
    pub(super) items_bytes: usize,
    pub(super) expires: Instant,
    pub(super) seq: u64,
}

impl ConvEntry {
    pub(super) fn push(&mut self, item: Value) {
        let size = encoded_len(&item);
        self.items.push(item);
        self.sizes.push(size);
        self.items_bytes += size;
    }
}

/// A chain's item log; `entries[0]` is entry number `base` (older ones were trimmed).
pub(super) struct ChainLog {
    pub(super) base: u64,
    pub(super) entries: VecDeque<Arc<[u8]>>,
    /// Their bytes.
    pub(super) entry_bytes: usize,
    pub(super) expires: Instant,
    pub(super) seq: u64,
}

impl ChainLog {
    pub(super) fn pop_front(&mut self) -> bool {
        let Some(e) = self.entries.pop_front() else {
            return false;
        };
        self.base += 1;
        self.entry_bytes -= e.len() + EVENT_OVERHEAD;
        true
    }
}

impl Aged for ChainLog {
    fn expires(&self) -> Instant {
        self.expires
    }
    fn seq(&self) -> u64 {
        self.seq
    }
    fn bytes(&self) -> usize {
        ENTRY_OVERHEAD + self.entry_bytes
    }
    fn units(&self) -> usize {
        self.entries.len()
    }
}

impl Aged for RespEntry {
    fn expires(&self) -> Instant {
        self.expires
    }
    fn seq(&self) -> u64 {
        self.seq
    }
    fn bytes(&self) -> usize {
        ENTRY_OVERHEAD + self.rec_bytes + self.event_bytes
    }
    /// Responses are listed by tenant (`GET /v1/responses`).
    fn group(&self) -> Option<&str> {
        Some(&self.rec.owner)
    }
}

impl Aged for ConvEntry {
    fn expires(&self) -> Instant {
        self.expires
    }
    fn seq(&self) -> u64 {
        self.seq
    }
    fn bytes(&self) -> usize {
        ENTRY_OVERHEAD
            + encoded_len(&self.conv)
            + self.items_bytes
            + EVENT_OVERHEAD * self.items.len()
    }
}

impl Bounded<ConvEntry> {
    pub(super) fn owned(&mut self, tenant: &str, id: &str) -> Option<&ConvEntry> {
        self.get(id).filter(|e| e.owner == tenant)
    }

    /// Change a conversation `tenant` owns.
    pub(super) fn update_owned<R>(
        &mut self,
        tenant: &str,
        id: &str,
        f: impl FnOnce(&mut ConvEntry) -> R,
    ) -> Option<R> {
        self.owned(tenant, id)?;
        self.update(id, f)
    }
}
