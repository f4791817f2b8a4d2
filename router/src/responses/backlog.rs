//! Final states the store could not take yet.
//!
//! When a generation ends while the store is unavailable (Redis down), its
//! final writes — the stream events not yet logged, the terminal object and
//! the items for its conversation — wait here and are retried, in order,
//! until the store is back. The generation's lease stays held while they
//! wait, so no reaper fails a response whose result this replica still
//! holds; it is released when the writes land or the entry is dropped.
//!
//! Bounded by entries and bytes: beyond either, the oldest entry is dropped
//! (counted), its lease released, and the reaper ends the response from
//! whatever its event log holds.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;

use crate::lifecycle::ActiveGuard;
use crate::store::{ResponseStore, StoreError};
use crate::sync;
use crate::types::ResponseObject;

/// How long the retry task waits after the store refused a write.
const RETRY_EVERY: Duration = Duration::from_millis(500);

/// Keeps a stored response's lease held (see
/// [`ResponseStore::release`]) until dropped.
pub struct Lease {
    store: Arc<dyn ResponseStore>,
    id: String,
}

impl Lease {
    pub fn new(store: Arc<dyn ResponseStore>, id: &str) -> Self {
        Self {
            store,
            id: id.to_owned(),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.store.release(&self.id);
    }
}

/// Items to append to a conversation once the response is final.
pub struct ConversationAppend {
    pub owner: String,
    pub id: String,
    pub items: Vec<Value>,
}

/// The last writes of one generation, applied in order; each step is
/// dropped from it once the store took it, so a retry resumes where the
/// last attempt stopped.
pub struct FinalWrite {
    pub id: String,
    /// Stream events not logged yet, oldest first, with their numbers.
    pub events: VecDeque<(u64, Vec<u8>)>,
    /// The terminal object (stored responses only).
    pub response: Option<ResponseObject>,
    pub conversation: Option<ConversationAppend>,
    /// Held until the writes land or are dropped.
    pub lease: Option<Lease>,
    /// Drain waits for it like for a running generation.
    pub active: Option<ActiveGuard>,
}

impl FinalWrite {
    /// Approximate memory held, for the backlog's byte bound.
    fn bytes(&self) -> usize {
        let events: usize = self.events.iter().map(|(_, b)| b.len() + 16).sum();
        let response = self
            .response
            .as_ref()
            .map_or(0, |r| serde_json::to_vec(r).map_or(0, |v| v.len()));
        let conversation = self
            .conversation
            .as_ref()
            .map_or(0, |c| serde_json::to_vec(&c.items).map_or(0, |v| v.len()));
        events + response + conversation + self.id.len()
    }

    /// Apply what is left; stops at the first failure.
    pub async fn apply(&mut self, store: &dyn ResponseStore) -> Result<(), StoreError> {
        while let Some((seq, bytes)) = self.events.front() {
            store.append_event(&self.id, *seq, bytes.clone()).await?;
            self.events.pop_front();
        }
        if let Some(resp) = &self.response {
            store.update_if_active(resp.clone()).await?;
            self.response = None;
        }
        if let Some(c) = &self.conversation {
            // No cap: the turn was admitted against it (prepare), and its
            // output must not be lost now.
            store
                .append_conversation_items(&c.owner, &c.id, c.items.clone(), u64::MAX)
                .await?;
            self.conversation = None;
        }
        Ok(())
    }

    /// Whether nothing is left to write.
    pub fn is_done(&self) -> bool {
        self.events.is_empty() && self.response.is_none() && self.conversation.is_none()
    }
}

struct Queue {
    entries: VecDeque<(FinalWrite, usize)>,
    /// Bytes of `entries` and of the entry being written.
    bytes: usize,
    /// An entry is out of `entries`, being written (it counts to the bounds).
    writing: bool,
}

/// The bounded queue of pending final writes and its retry task.
pub struct Backlog {
    store: Arc<dyn ResponseStore>,
    queue: Mutex<Queue>,
    max_entries: usize,
    max_bytes: usize,
    wake: Arc<Notify>,
    task: std::sync::Once,
}

impl Backlog {
    /// An empty backlog for `store`, holding at most `max_entries` entries
    /// and about `max_bytes` bytes.
    pub fn new(store: Arc<dyn ResponseStore>, max_entries: usize, max_bytes: usize) -> Arc<Self> {
        metrics::gauge!("spindle_router_store_backlog").set(0.0);
        metrics::gauge!("spindle_router_store_backlog_bytes").set(0.0);
        metrics::counter!("spindle_router_store_backlog_dropped_total").increment(0);
        Arc::new(Self {
            store,
            queue: Mutex::new(Queue {
                entries: VecDeque::new(),
                bytes: 0,
                writing: false,
            }),
            max_entries: max_entries.max(1),
            max_bytes,
            wake: Arc::new(Notify::new()),
            task: std::sync::Once::new(),
        })
    }

    /// Entries waiting now (with the one being written).
    pub fn len(&self) -> usize {
        let q = sync::lock(&self.queue);
        q.entries.len() + usize::from(q.writing)
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queue `write` behind the others; the oldest entries are dropped while
    /// the bounds are exceeded. Starts the retry task on first use (so it
    /// runs on the caller's runtime).
    pub fn push(self: &Arc<Self>, write: FinalWrite) {
        tracing::warn!(id = %write.id, "store unavailable: final state kept for retry");
        let size = write.bytes();
        let dropped = {
            let mut q = sync::lock(&self.queue);
            q.bytes += size;
            q.entries.push_back((write, size));
            let mut dropped = Vec::new();
            while q.entries.len() + usize::from(q.writing) > self.max_entries
                || (q.bytes > self.max_bytes && !q.entries.is_empty())
            {
                if let Some((w, n)) = q.entries.pop_front() {
                    q.bytes -= n;
                    dropped.push(w);
                }
            }
            self.publish(&q);
            dropped
        };
        for w in dropped {
            metrics::counter!("spindle_router_store_backlog_dropped_total").increment(1);
            tracing::error!(id = %w.id, "store backlog full: final state dropped");
        }
        self.task.call_once(|| {
            tokio::spawn(retry(Arc::downgrade(self), self.wake.clone()));
        });
        self.wake.notify_one();
    }

    fn publish(&self, q: &Queue) {
        let n = q.entries.len() + usize::from(q.writing);
        metrics::gauge!("spindle_router_store_backlog").set(n as f64);
        metrics::gauge!("spindle_router_store_backlog_bytes").set(q.bytes as f64);
    }

    /// Try the oldest entry once: `true` when the queue moved on.
    async fn attempt(&self) -> bool {
        let Some((mut write, size)) = ({
            let mut q = sync::lock(&self.queue);
            let front = q.entries.pop_front();
            q.writing = front.is_some();
            front
        }) else {
            return false;
        };
        let result = write.apply(self.store.as_ref()).await;
        let mut q = sync::lock(&self.queue);
        q.writing = false;
        let moved = match result {
            Ok(()) => {
                tracing::info!(id = %write.id, "final state written after the store came back");
                true
            }
            Err(StoreError::Backend(e)) => {
                // Not a transient failure: retrying cannot help.
                tracing::error!(id = %write.id, error = %e, "final state rejected by the store");
                true
            }
            Err(StoreError::Unavailable(_)) => {
                q.entries.push_front((write, size));
                false
            }
        };
        if moved {
            q.bytes -= size;
        }
        self.publish(&q);
        moved
    }
}

/// Retries the queue in order while the backlog lives (it holds no strong
/// reference while waiting, and looks again every few seconds).
async fn retry(backlog: Weak<Backlog>, wake: Arc<Notify>) {
    loop {
        let Some(b) = backlog.upgrade() else { return };
        if b.is_empty() {
            drop(b);
            let _ = tokio::time::timeout(Duration::from_secs(5), wake.notified()).await;
            continue;
        }
        let moved = b.attempt().await;
        drop(b);
        if !moved {
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }
}
