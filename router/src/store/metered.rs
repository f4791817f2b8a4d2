//! [`MeteredStore`]: any [`ResponseStore`] with every call timed and every
//! failure counted by operation (`spindle_router_store_duration_seconds{op}`,
//! `spindle_router_store_errors_total{op}`).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use super::{
    Appended, Conversation, ConversationTail, ResponsePage, ResponseRecord, ResponseStore,
    StoreResult, StoredEvent, Subscription,
};
use crate::types::{ListOrder, ResponseObject, ResponseStatus};

/// Wraps a store; the router wraps whichever backend it was given.
pub struct MeteredStore {
    inner: Arc<dyn ResponseStore>,
}

/// Every operation, so each error series exists (at 0) from the start and
/// dashboards and alerts see "no errors" rather than "no data".
const OPS: [&str; 21] = [
    "insert_response",
    "list_responses",
    "append_turn",
    "chain_turns",
    "get_response",
    "response_status",
    "delete_response",
    "update_if_active",
    "cancel_response",
    "append_event",
    "events_after",
    "subscribe",
    "insert_conversation",
    "get_conversation",
    "update_conversation",
    "delete_conversation",
    "conversation_items",
    "conversation_tail",
    "append_conversation_items",
    "delete_conversation_item",
    "ping",
];

impl MeteredStore {
    pub fn new(inner: Arc<dyn ResponseStore>) -> Self {
        for op in OPS {
            metrics::counter!("spindle_router_store_errors_total", "op" => op).increment(0);
        }
        Self { inner }
    }
}

async fn timed<T>(op: &'static str, f: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
    let started = Instant::now();
    let r = f.await;
    metrics::histogram!("spindle_router_store_duration_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
    if r.is_err() {
        metrics::counter!("spindle_router_store_errors_total", "op" => op).increment(1);
    }
    r
}

#[async_trait::async_trait]
impl ResponseStore for MeteredStore {
    async fn insert_response(&self, rec: ResponseRecord) -> StoreResult<()> {
        timed("insert_response", self.inner.insert_response(rec)).await
    }
    async fn append_turn(&self, chain_root: &str, items: Vec<u8>) -> StoreResult<u64> {
        timed("append_turn", self.inner.append_turn(chain_root, items)).await
    }
    async fn chain_turns(
        &self,
        chain_root: &str,
        indexes: &[u64],
    ) -> StoreResult<Vec<Option<Vec<u8>>>> {
        timed("chain_turns", self.inner.chain_turns(chain_root, indexes)).await
    }
    async fn get_response(&self, tenant: &str, id: &str) -> StoreResult<Option<ResponseRecord>> {
        timed("get_response", self.inner.get_response(tenant, id)).await
    }
    async fn list_responses(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
        order: ListOrder,
    ) -> StoreResult<Option<ResponsePage>> {
        timed(
            "list_responses",
            self.inner.list_responses(tenant, after, limit, order),
        )
        .await
    }
    async fn response_status(&self, id: &str) -> StoreResult<Option<ResponseStatus>> {
        timed("response_status", self.inner.response_status(id)).await
    }
    async fn delete_response(&self, tenant: &str, id: &str) -> StoreResult<bool> {
        timed("delete_response", self.inner.delete_response(tenant, id)).await
    }
    async fn update_if_active(&self, response: ResponseObject) -> StoreResult<bool> {
        timed("update_if_active", self.inner.update_if_active(response)).await
    }
    async fn cancel_response(&self, tenant: &str, id: &str) -> StoreResult<Option<ResponseObject>> {
        timed("cancel_response", self.inner.cancel_response(tenant, id)).await
    }
    async fn append_event(&self, id: &str, seq: u64, event: Vec<u8>) -> StoreResult<()> {
        timed("append_event", self.inner.append_event(id, seq, event)).await
    }
    async fn events_after(
        &self,
        id: &str,
        after: Option<u64>,
    ) -> StoreResult<Option<Vec<StoredEvent>>> {
        timed("events_after", self.inner.events_after(id, after)).await
    }
    async fn subscribe(&self, id: &str) -> StoreResult<Option<Subscription>> {
        timed("subscribe", self.inner.subscribe(id)).await
    }
    async fn insert_conversation(
        &self,
        tenant: &str,
        conv: Conversation,
        items: Vec<Value>,
    ) -> StoreResult<()> {
        timed(
            "insert_conversation",
            self.inner.insert_conversation(tenant, conv, items),
        )
        .await
    }
    async fn get_conversation(&self, tenant: &str, id: &str) -> StoreResult<Option<Conversation>> {
        timed("get_conversation", self.inner.get_conversation(tenant, id)).await
    }
    async fn update_conversation(
        &self,
        tenant: &str,
        id: &str,
        metadata: BTreeMap<String, String>,
    ) -> StoreResult<Option<Conversation>> {
        timed(
            "update_conversation",
            self.inner.update_conversation(tenant, id, metadata),
        )
        .await
    }
    async fn delete_conversation(&self, tenant: &str, id: &str) -> StoreResult<bool> {
        timed(
            "delete_conversation",
            self.inner.delete_conversation(tenant, id),
        )
        .await
    }
    async fn conversation_items(&self, tenant: &str, id: &str) -> StoreResult<Option<Vec<Value>>> {
        timed(
            "conversation_items",
            self.inner.conversation_items(tenant, id),
        )
        .await
    }
    async fn conversation_tail(
        &self,
        tenant: &str,
        id: &str,
        max_bytes: u64,
    ) -> StoreResult<Option<ConversationTail>> {
        timed(
            "conversation_tail",
            self.inner.conversation_tail(tenant, id, max_bytes),
        )
        .await
    }
    async fn append_conversation_items(
        &self,
        tenant: &str,
        id: &str,
        items: Vec<Value>,
        max_bytes: u64,
    ) -> StoreResult<Appended> {
        timed(
            "append_conversation_items",
            self.inner
                .append_conversation_items(tenant, id, items, max_bytes),
        )
        .await
    }
    async fn delete_conversation_item(
        &self,
        tenant: &str,
        id: &str,
        item_id: &str,
    ) -> StoreResult<Option<bool>> {
        timed(
            "delete_conversation_item",
            self.inner.delete_conversation_item(tenant, id, item_id),
        )
        .await
    }
    async fn ping(&self) -> StoreResult<()> {
        timed("ping", self.inner.ping()).await
    }

    fn release(&self, id: &str) {
        self.inner.release(id)
    }
}
