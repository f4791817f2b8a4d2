//! [`MemoryStore`]: the embedded, bounded, in-process [`ResponseStore`].
//!
//! One `std::sync::Mutex` guards all maps; it is never held across an `.await`
//! (every method locks, works, unlocks synchronously). Records expire after the
//! TTL and the oldest are evicted first once `max_records` is exceeded. Chain
//! item logs hold at most `max_records` entries in all: past that, the least
//! recently extended chain goes first.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;

use super::{
    Conversation, ConversationTail, ResponseRecord, ResponseStore, StoreResult, StoredEvent,
    Subscription,
};
use crate::sync;
use bounded::{Aged, Bounded};

mod bounded;
use crate::types::{now_secs, ResponseObject, ResponseStatus};

struct RespEntry {
    rec: ResponseRecord,
    /// Stream events; entry `n` is event number `n`.
    events: Vec<Vec<u8>>,
    status_changes: watch::Sender<u64>,
    event_changes: watch::Sender<u64>,
    expires: Instant,
    seq: u64,
}

impl RespEntry {
    fn bump_status(&self) {
        self.status_changes.send_modify(|v| *v = v.wrapping_add(1));
    }
}

struct ConvEntry {
    owner: String,
    conv: Conversation,
    items: Vec<Value>,
    expires: Instant,
    seq: u64,
}

/// A chain's item log; `entries[0]` is entry number `base` (older ones were trimmed).
struct ChainLog {
    base: u64,
    entries: VecDeque<Arc<[u8]>>,
    expires: Instant,
    seq: u64,
}

impl Aged for ChainLog {
    fn expires(&self) -> Instant {
        self.expires
    }
    fn seq(&self) -> u64 {
        self.seq
    }
}

impl Aged for RespEntry {
    fn expires(&self) -> Instant {
        self.expires
    }
    fn seq(&self) -> u64 {
        self.seq
    }
}

impl Aged for ConvEntry {
    fn expires(&self) -> Instant {
        self.expires
    }
    fn seq(&self) -> u64 {
        self.seq
    }
}

impl Bounded<ConvEntry> {
    fn owned(&mut self, tenant: &str, id: &str) -> Option<&mut ConvEntry> {
        self.get_mut(id).filter(|e| e.owner == tenant)
    }
}

#[derive(Default)]
struct Inner {
    responses: Bounded<RespEntry>,
    conversations: Bounded<ConvEntry>,
    chains: Bounded<ChainLog>,
    /// Entries in all chain logs.
    chain_entries: usize,
    next_seq: u64,
}

impl Inner {
    /// Trim chain logs to `max` entries in all: expired and least recently
    /// extended chains first, then the front of the newest one.
    fn trim_chains(&mut self, max: usize) {
        let now = Instant::now();
        while self.chain_entries > max
            || self.chains.order.front().is_some_and(|(seq, id)| {
                self.chains
                    .map
                    .get(id)
                    .is_some_and(|c| c.seq == *seq && c.expires <= now)
            })
        {
            let Some((seq, id)) = self.chains.order.pop_front() else {
                break;
            };
            let live = self.chains.map.get(&id).is_some_and(|c| c.seq == seq);
            if !live {
                continue;
            }
            if self.chains.order.is_empty() {
                // The only chain left: drop its oldest entries instead.
                if let Some(c) = self.chains.map.get_mut(&id) {
                    while self.chain_entries > max && c.entries.pop_front().is_some() {
                        c.base += 1;
                        self.chain_entries -= 1;
                    }
                }
                self.chains.order.push_back((seq, id));
                break;
            }
            if let Some(c) = self.chains.map.remove(&id) {
                self.chain_entries -= c.entries.len();
            }
        }
    }
}

/// The embedded [`ResponseStore`].
pub struct MemoryStore {
    inner: Mutex<Inner>,
    max_records: usize,
    ttl: Duration,
}

impl MemoryStore {
    /// A store keeping at most `max_records` responses (and as many
    /// conversations), each for at most `ttl`.
    pub fn new(max_records: usize, ttl: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            max_records: max_records.max(1),
            ttl,
        }
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
            rec,
            events: Vec::new(),
            status_changes: watch::channel(0).0,
            event_changes: watch::channel(0).0,
            expires,
            seq,
        };
        g.responses.insert(id, entry, self.max_records);
        Ok(())
    }

    async fn append_turn(&self, chain_root: &str, items: Vec<u8>) -> StoreResult<u64> {
        let expires = self.expiry();
        let mut g = self.lock();
        g.next_seq += 1;
        let seq = g.next_seq;
        let mut log = g.chains.map.remove(chain_root).unwrap_or(ChainLog {
            base: 0,
            entries: VecDeque::new(),
            expires,
            seq,
        });
        log.entries.push_back(items.into());
        log.expires = expires;
        log.seq = seq;
        let index = log.base + log.entries.len() as u64 - 1;
        g.chain_entries += 1;
        g.chains.order.push_back((seq, chain_root.to_owned()));
        g.chains.map.insert(chain_root.to_owned(), log);
        g.trim_chains(self.max_records);
        Ok(index)
    }

    async fn chain_turns(
        &self,
        chain_root: &str,
        indexes: &[u64],
    ) -> StoreResult<Vec<Option<Vec<u8>>>> {
        let mut g = self.lock();
        let log = g.chains.get_mut(chain_root);
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
            .get_mut(id)
            .filter(|e| e.rec.owner == tenant)
            .map(|e| e.rec.clone()))
    }

    async fn response_status(&self, id: &str) -> StoreResult<Option<ResponseStatus>> {
        Ok(self
            .lock()
            .responses
            .get_mut(id)
            .map(|e| e.rec.response.status))
    }

    async fn delete_response(&self, tenant: &str, id: &str) -> StoreResult<bool> {
        let mut g = self.lock();
        if g.responses
            .get_mut(id)
            .is_none_or(|e| e.rec.owner != tenant)
        {
            return Ok(false);
        }
        Ok(g.responses.map.remove(id).is_some())
    }

    async fn update_if_active(&self, response: ResponseObject) -> StoreResult<bool> {
        let mut g = self.lock();
        let Some(e) = g.responses.get_mut(&response.id) else {
            return Ok(false);
        };
        if e.rec.response.status.is_terminal() {
            return Ok(false);
        }
        e.rec.response = response;
        e.bump_status();
        Ok(true)
    }

    async fn cancel_response(&self, tenant: &str, id: &str) -> StoreResult<Option<ResponseObject>> {
        let mut g = self.lock();
        let Some(e) = g.responses.get_mut(id).filter(|e| e.rec.owner == tenant) else {
            return Ok(None);
        };
        if !e.rec.response.status.is_terminal() {
            e.rec.response.status = ResponseStatus::Cancelled;
            e.rec.response.completed_at = Some(now_secs());
            e.bump_status();
        }
        Ok(Some(e.rec.response.clone()))
    }

    async fn append_event(&self, id: &str, seq: u64, event: Vec<u8>) -> StoreResult<()> {
        let mut g = self.lock();
        if let Some(e) = g.responses.get_mut(id) {
            // Only the next number is taken: a writer's events stay in order.
            if !e.rec.response.status.is_terminal() && seq == e.events.len() as u64 {
                e.events.push(event);
                e.event_changes.send_modify(|v| *v = v.wrapping_add(1));
            }
        }
        Ok(())
    }

    async fn events_after(
        &self,
        id: &str,
        after: Option<u64>,
    ) -> StoreResult<Option<Vec<StoredEvent>>> {
        let mut g = self.lock();
        let first = after.map_or(0, |a| a.saturating_add(1));
        Ok(g.responses.get_mut(id).map(|e| {
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
        Ok(self.lock().responses.get_mut(id).map(|e| Subscription {
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
        g.conversations.insert(
            id,
            ConvEntry {
                owner: tenant.to_owned(),
                conv,
                items,
                expires,
                seq,
            },
            self.max_records,
        );
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
        Ok(g.conversations.owned(tenant, id).map(|e| {
            e.conv.metadata = metadata;
            e.conv.clone()
        }))
    }

    async fn delete_conversation(&self, tenant: &str, id: &str) -> StoreResult<bool> {
        let mut g = self.lock();
        if g.conversations.owned(tenant, id).is_none() {
            return Ok(false);
        }
        Ok(g.conversations.map.remove(id).is_some())
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
        for item in conv.items.iter().rev() {
            let size = serde_json::to_vec(item).map_or(0, |v| v.len() as u64);
            if total + size > max_bytes {
                break;
            }
            total += size;
            first -= 1;
        }
        Ok(Some(ConversationTail {
            first: first as u64,
            items: conv.items[first..].to_vec(),
        }))
    }

    async fn append_conversation_items(
        &self,
        tenant: &str,
        id: &str,
        items: Vec<Value>,
    ) -> StoreResult<bool> {
        let mut g = self.lock();
        Ok(match g.conversations.owned(tenant, id) {
            Some(e) => {
                e.items.extend(items);
                true
            }
            None => false,
        })
    }

    async fn delete_conversation_item(
        &self,
        tenant: &str,
        id: &str,
        item_id: &str,
    ) -> StoreResult<Option<bool>> {
        let mut g = self.lock();
        Ok(g.conversations.owned(tenant, id).map(|e| {
            let before = e.items.len();
            e.items
                .retain(|it| it.get("id").and_then(Value::as_str) != Some(item_id));
            e.items.len() != before
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ResponseStatus;

    fn rec(id: &str) -> ResponseRecord {
        // The test kit's fixture, parsed here: its `ResponseObject` is another crate instance.
        let r =
            serde_json::from_value(spindle_testkit::fixtures::response_json(id)).expect("fixture");
        ResponseRecord {
            response: r,
            input_items: vec![],
            context: vec![],
            chain_root: id.into(),
            owner: "t".into(),
            routing_key: String::new(),
        }
    }

    #[tokio::test]
    async fn chain_logs_are_append_only_and_bounded() {
        let s = MemoryStore::new(3, Duration::from_secs(60));
        assert_eq!(s.append_turn("a", b"a0".to_vec()).await.unwrap(), 0);
        assert_eq!(s.append_turn("a", b"a1".to_vec()).await.unwrap(), 1);
        assert_eq!(s.append_turn("b", b"b0".to_vec()).await.unwrap(), 0);
        let got = s.chain_turns("a", &[1, 0, 7]).await.unwrap();
        assert_eq!(got, vec![Some(b"a1".to_vec()), Some(b"a0".to_vec()), None]);
        // A fourth entry is over the bound: the least recently extended chain goes.
        s.append_turn("b", b"b1".to_vec()).await.unwrap();
        assert_eq!(s.chain_turns("a", &[0]).await.unwrap(), vec![None]);
        // One chain alone over the bound loses its oldest entries, not its numbering.
        s.append_turn("b", b"b2".to_vec()).await.unwrap();
        assert_eq!(s.append_turn("b", b"b3".to_vec()).await.unwrap(), 3);
        let got = s.chain_turns("b", &[0, 1, 3]).await.unwrap();
        assert_eq!(got, vec![None, Some(b"b1".to_vec()), Some(b"b3".to_vec())]);
    }

    #[tokio::test]
    async fn evicts_oldest_beyond_max() {
        let s = MemoryStore::new(2, Duration::from_secs(60));
        for id in ["a", "b", "c"] {
            s.insert_response(rec(id)).await.unwrap();
        }
        assert!(s.get_response("t", "a").await.unwrap().is_none());
        assert!(s.get_response("t", "b").await.unwrap().is_some());
        assert!(s.get_response("t", "c").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn expires_after_ttl() {
        let s = MemoryStore::new(10, Duration::from_millis(20));
        s.insert_response(rec("a")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(s.get_response("t", "a").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn terminal_state_is_final() {
        let s = MemoryStore::new(10, Duration::from_secs(60));
        s.insert_response(rec("a")).await.unwrap();
        let c = s.cancel_response("t", "a").await.unwrap().unwrap();
        assert_eq!(c.status, ResponseStatus::Cancelled);
        let mut done = rec("a").response;
        done.status = ResponseStatus::Completed;
        assert!(!s.update_if_active(done).await.unwrap());
        assert_eq!(
            s.response_status("a").await.unwrap(),
            Some(ResponseStatus::Cancelled)
        );
    }

    #[tokio::test]
    async fn events_after_filters_by_sequence() {
        let s = MemoryStore::new(10, Duration::from_secs(60));
        s.insert_response(rec("a")).await.unwrap();
        let Subscription { status, mut events } = s.subscribe("a").await.unwrap().unwrap();
        for n in 0..5u64 {
            s.append_event("a", n, vec![b'0' + n as u8]).await.unwrap();
        }
        // Out of order or repeated numbers are not taken.
        s.append_event("a", 2, b"x".to_vec()).await.unwrap();
        assert!(events.has_changed().unwrap());
        assert!(
            !status.has_changed().unwrap(),
            "events do not wake status watchers"
        );
        events.mark_unchanged();
        let after = s.events_after("a", Some(2)).await.unwrap().unwrap();
        assert_eq!(
            after,
            vec![
                StoredEvent {
                    seq: 3,
                    bytes: b"3".to_vec()
                },
                StoredEvent {
                    seq: 4,
                    bytes: b"4".to_vec()
                }
            ]
        );
        assert_eq!(s.events_after("a", None).await.unwrap().unwrap().len(), 5);
        s.delete_response("t", "a").await.unwrap();
        assert!(events.changed().await.is_err());
    }
}
