//! [`MemoryStore`]: the embedded, bounded, in-process [`ResponseStore`].
//!
//! One `std::sync::Mutex` guards all maps; it is never held across an `.await`
//! (every method locks, works, unlocks synchronously). Records expire after the
//! TTL and the oldest are evicted first once `max_records` is exceeded. Chain
//! item logs hold at most `max_records` entries in all: past that, the least
//! recently extended chain goes first. All entries together hold at most
//! `max_bytes` (their encoded sizes): past that, the oldest entry of any
//! kind goes first, so no input can grow the process without bound. Each
//! tenant's responses are indexed in insertion order as they are inserted
//! and removed (`Bounded`'s groups), for `list_responses`.

mod bounded;
mod entries;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;

use super::{
    Appended, Conversation, ConversationTail, ResponsePage, ResponseRecord, ResponseStore,
    StoreResult, StoredEvent, Subscription,
};
use crate::sync;
use crate::types::{now_secs, ListOrder, ResponseObject, ResponseStatus};
use bounded::Bounded;
use entries::{encoded_len, ChainLog, ConvEntry, RespEntry, EVENT_OVERHEAD};

#[derive(Default)]
struct Inner {
    responses: Bounded<RespEntry>,
    conversations: Bounded<ConvEntry>,
    chains: Bounded<ChainLog>,
    next_seq: u64,
}

impl Inner {
    /// Trim chain logs to `max` entries in all: expired and least recently
    /// extended chains first, then the front of the newest one.
    fn trim_chains(&mut self, max: usize) {
        // Expired logs first (Bounded::evict), then by count.
        self.chains.evict(usize::MAX);
        while self.chains.units() > max {
            if self.chains.len() == 1 {
                // The only chain left: drop its oldest entries instead.
                let over = self.chains.units() - max;
                self.chains.oldest();
                let Some((_, id)) = self.chains.order.front().cloned() else {
                    break;
                };
                self.chains
                    .update(&id, |c| (0..over).take_while(|_| c.pop_front()).count());
                break;
            }
            self.chains.pop_oldest();
        }
    }

    fn bytes(&self) -> usize {
        self.responses.bytes() + self.conversations.bytes() + self.chains.bytes()
    }

    /// Evict the oldest entries of any kind until all hold at most `max` bytes.
    fn shed(&mut self, max: usize) {
        let mut evicted = 0u64;
        while self.bytes() > max {
            let oldest = [
                self.responses.oldest(),
                self.conversations.oldest(),
                self.chains.oldest(),
            ];
            let Some((kind, _)) = oldest
                .iter()
                .enumerate()
                .filter_map(|(k, s)| Some((k, (*s)?)))
                .min_by_key(|&(_, s)| s)
            else {
                break;
            };
            match kind {
                0 => drop(self.responses.pop_oldest()),
                1 => drop(self.conversations.pop_oldest()),
                _ => drop(self.chains.pop_oldest()),
            }
            evicted += 1;
        }
        if evicted > 0 {
            metrics::counter!("spindle_router_store_evictions_total").increment(evicted);
        }
        metrics::gauge!("spindle_router_store_bytes").set(self.bytes() as f64);
    }
}

/// The embedded [`ResponseStore`].
pub struct MemoryStore {
    inner: Mutex<Inner>,
    max_records: usize,
    max_bytes: usize,
    ttl: Duration,
}

/// The default of `--store-max-bytes`.
pub const DEFAULT_MAX_BYTES: usize = 1 << 30;

impl MemoryStore {
    /// A store keeping at most `max_records` responses (and as many
    /// conversations), each for at most `ttl`, in at most
    /// [`DEFAULT_MAX_BYTES`] (see [`MemoryStore::with_max_bytes`]).
    pub fn new(max_records: usize, ttl: Duration) -> Self {
        // Exported from the start, before anything is held or evicted.
        metrics::counter!("spindle_router_store_evictions_total").increment(0);
        metrics::gauge!("spindle_router_store_bytes").set(0.0);
        Self {
            inner: Mutex::new(Inner::default()),
            max_records: max_records.max(1),
            max_bytes: DEFAULT_MAX_BYTES,
            ttl,
        }
    }

    /// Bound the bytes of all entries together: the oldest go first.
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Bytes all entries hold now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        sync::lock(&self.inner)
    }

    fn expiry(&self) -> Instant {
        Instant::now()
            .checked_add(self.ttl)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 24 * 3600))
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(100_000, Duration::from_secs(30 * 24 * 3600))
    }
}

#[async_trait::async_trait]
impl ResponseStore for MemoryStore {
    async fn insert_response(&self, rec: ResponseRecord) -> StoreResult<()> {
        let expires = self.expiry();
        let mut g = self.lock();
        g.next_seq += 1;
        let seq = g.next_seq;
        let id = rec.response.id.clone();
        let entry = RespEntry {
            rec_bytes: encoded_len(&rec),
            rec,
            events: Vec::new(),
            event_bytes: 0,
            status_changes: watch::channel(0).0,
            event_changes: watch::channel(0).0,
            expires,
            seq,
        };
        g.responses.insert(id, entry, self.max_records);
        g.shed(self.max_bytes);
        Ok(())
    }

    async fn append_turn(&self, chain_root: &str, items: Vec<u8>) -> StoreResult<u64> {
        let expires = self.expiry();
        let mut g = self.lock();
        g.next_seq += 1;
        let seq = g.next_seq;
        let mut log = g.chains.remove(chain_root).unwrap_or(ChainLog {
            base: 0,
            entries: VecDeque::new(),
            entry_bytes: 0,
            expires,
            seq,
        });
        log.entry_bytes += items.len() + EVENT_OVERHEAD;
        log.entries.push_back(items.into());
        log.expires = expires;
        log.seq = seq;
        let index = log.base + log.entries.len() as u64 - 1;
        g.chains.insert(chain_root.to_owned(), log, usize::MAX);
        g.trim_chains(self.max_records);
        g.shed(self.max_bytes);
        Ok(index)
    }

    async fn chain_turns(
        &self,
        chain_root: &str,
        indexes: &[u64],
    ) -> StoreResult<Vec<Option<Vec<u8>>>> {
        let mut g = self.lock();
        let log = g.chains.get(chain_root);
        Ok(indexes
            .iter()
            .map(|&n| {
                let log = log.as_ref()?;
                let at = usize::try_from(n.checked_sub(log.base)?).ok()?;
                log.entries.get(at).map(|e| e.to_vec())
            })
            .collect())
    }

    async fn get_response(&self, tenant: &str, id: &str) -> StoreResult<Option<ResponseRecord>> {
        Ok(self
            .lock()
            .responses
            .get(id)
            .filter(|e| e.rec.owner == tenant)
            .map(|e| e.rec.clone()))
    }

    async fn list_responses(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
        order: ListOrder,
    ) -> StoreResult<Option<ResponsePage>> {
        let mut g = self.lock();
        // Expired records are the oldest (one TTL for all): drop them first.
        g.responses.evict(self.max_records);
        let page = g
            .responses
            .page(tenant, after, limit, order == ListOrder::Desc)
            .map(|p| ResponsePage {
                data: p.entries.iter().map(|e| e.rec.response.clone()).collect(),
                has_more: p.has_more,
            });
        g.shed(self.max_bytes);
        Ok(page)
    }

    async fn response_status(&self, id: &str) -> StoreResult<Option<ResponseStatus>> {
        Ok(self.lock().responses.get(id).map(|e| e.rec.response.status))
    }

    async fn delete_response(&self, tenant: &str, id: &str) -> StoreResult<bool> {
        let mut g = self.lock();
        if g.responses.get(id).is_none_or(|e| e.rec.owner != tenant) {
            return Ok(false);
        }
        let removed = g.responses.remove(id).is_some();
        g.shed(self.max_bytes);
        Ok(removed)
    }

    async fn update_if_active(&self, response: ResponseObject) -> StoreResult<bool> {
        let mut g = self.lock();
        let id = response.id.clone();
        let applied = g.responses.update(&id, |e| {
            if e.rec.response.status.is_terminal() {
                return false;
            }
            e.rec.response = response;
            e.rec_bytes = encoded_len(&e.rec);
            e.bump_status();
            true
        });
        g.shed(self.max_bytes);
        Ok(applied.unwrap_or(false))
    }

    async fn cancel_response(&self, tenant: &str, id: &str) -> StoreResult<Option<ResponseObject>> {
        let mut g = self.lock();
        if g.responses.get(id).is_none_or(|e| e.rec.owner != tenant) {
            return Ok(None);
        }
        Ok(g.responses.update(id, |e| {
            if !e.rec.response.status.is_terminal() {
                e.rec.response.status = ResponseStatus::Cancelled;
                e.rec.response.completed_at = Some(now_secs());
                e.bump_status();
            }
            e.rec.response.clone()
        }))
    }

    async fn append_event(&self, id: &str, seq: u64, event: Vec<u8>) -> StoreResult<()> {
        let mut g = self.lock();
        g.responses.update(id, |e| {
            // Only the next number is taken: a writer's events stay in order.
            if !e.rec.response.status.is_terminal() && seq == e.events.len() as u64 {
                e.event_bytes += event.len() + EVENT_OVERHEAD;
                e.events.push(event);
                e.event_changes.send_modify(|v| *v = v.wrapping_add(1));
            }
        });
        g.shed(self.max_bytes);
        Ok(())
    }

    async fn events_after(
        &self,
        id: &str,
        after: Option<u64>,
    ) -> StoreResult<Option<Vec<StoredEvent>>> {
        let mut g = self.lock();
        let first = after.map_or(0, |a| a.saturating_add(1));
        Ok(g.responses.get(id).map(|e| {
            e.events
                .iter()
                .enumerate()
                .skip(usize::try_from(first).unwrap_or(usize::MAX))
                .map(|(n, bytes)| StoredEvent {
                    seq: n as u64,
                    bytes: bytes.clone(),
                })
                .collect()
        }))
    }

    async fn subscribe(&self, id: &str) -> StoreResult<Option<Subscription>> {
        Ok(self.lock().responses.get(id).map(|e| Subscription {
            status: e.status_changes.subscribe(),
            events: e.event_changes.subscribe(),
        }))
    }

    async fn insert_conversation(
        &self,
        tenant: &str,
        conv: Conversation,
        items: Vec<Value>,
    ) -> StoreResult<()> {
        let expires = self.expiry();
        let mut g = self.lock();
        g.next_seq += 1;
        let seq = g.next_seq;
        let id = conv.id.clone();
        let mut entry = ConvEntry {
            owner: tenant.to_owned(),
            conv,
            items: Vec::with_capacity(items.len()),
            sizes: Vec::with_capacity(items.len()),
            items_bytes: 0,
            expires,
            seq,
        };
        for item in items {
            entry.push(item);
        }
        g.conversations.insert(id, entry, self.max_records);
        g.shed(self.max_bytes);
        Ok(())
    }

    async fn get_conversation(&self, tenant: &str, id: &str) -> StoreResult<Option<Conversation>> {
        Ok(self
            .lock()
            .conversations
            .owned(tenant, id)
            .map(|e| e.conv.clone()))
    }

    async fn update_conversation(
        &self,
        tenant: &str,
        id: &str,
        metadata: BTreeMap<String, String>,
    ) -> StoreResult<Option<Conversation>> {
        let mut g = self.lock();
        let conv = g.conversations.update_owned(tenant, id, |e| {
            e.conv.metadata = metadata;
            e.conv.clone()
        });
        g.shed(self.max_bytes);
        Ok(conv)
    }

    async fn delete_conversation(&self, tenant: &str, id: &str) -> StoreResult<bool> {
        let mut g = self.lock();
        if g.conversations.owned(tenant, id).is_none() {
            return Ok(false);
        }
        let removed = g.conversations.remove(id).is_some();
        g.shed(self.max_bytes);
        Ok(removed)
    }

    async fn conversation_items(&self, tenant: &str, id: &str) -> StoreResult<Option<Vec<Value>>> {
        Ok(self
            .lock()
            .conversations
            .owned(tenant, id)
            .map(|e| e.items.clone()))
    }

    async fn conversation_tail(
        &self,
        tenant: &str,
        id: &str,
        max_bytes: u64,
    ) -> StoreResult<Option<ConversationTail>> {
        let mut g = self.lock();
        let Some(conv) = g.conversations.owned(tenant, id) else {
            return Ok(None);
        };
        let mut total = 0u64;
        let mut first = conv.items.len();
        for &size in conv.sizes.iter().rev() {
            if total + size as u64 > max_bytes {
                break;
            }
            total += size as u64;
            first -= 1;
        }
        Ok(Some(ConversationTail {
            first: first as u64,
            items: conv.items[first..].to_vec(),
            bytes: conv.items_bytes as u64,
        }))
    }

    async fn append_conversation_items(
        &self,
        tenant: &str,
        id: &str,
        items: Vec<Value>,
        max_bytes: u64,
    ) -> StoreResult<Appended> {
        let sizes: Vec<usize> = items.iter().map(encoded_len).collect();
        let adding: usize = sizes.iter().sum();
        let mut g = self.lock();
        let appended = g.conversations.update_owned(tenant, id, |e| {
            let bytes = (e.items_bytes + adding) as u64;
            if adding > 0 && bytes > max_bytes {
                return Appended::Full { bytes };
            }
            e.items.extend(items);
            e.sizes.extend(sizes);
            e.items_bytes += adding;
            Appended::Done
        });
        g.shed(self.max_bytes);
        Ok(appended.unwrap_or(Appended::Unknown))
    }

    async fn delete_conversation_item(
        &self,
        tenant: &str,
        id: &str,
        item_id: &str,
    ) -> StoreResult<Option<bool>> {
        let mut g = self.lock();
        Ok(g.conversations.update_owned(tenant, id, |e| {
            let at = e
                .items
                .iter()
                .position(|it| it.get("id").and_then(Value::as_str) == Some(item_id));
            at.map(|at| {
                e.items.remove(at);
                e.items_bytes -= e.sizes.remove(at);
            })
            .is_some()
        }))
    }
}

#[cfg(test)]
mod tests;
