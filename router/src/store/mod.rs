//! The [`ResponseStore`] trait: stored responses, their stream event logs and
//! conversations. It is shaped for a networked backend (Redis) next to the
//! embedded [`MemoryStore`]: every state change is one atomic call, events are
//! an append-only log read by sequence number, and live followers wait on a
//! change counter (`watch`), which a pub/sub channel can drive.

pub mod memory;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

use crate::types::{ResponseObject, ResponseStatus};

pub use memory::MemoryStore;

/// A store backend failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store backend error: {0}")]
    Backend(String),
}

impl From<StoreError> for crate::error::ApiError {
    fn from(e: StoreError) -> Self {
        crate::error::ApiError::Internal(e.to_string())
    }
}

/// Result of store calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// One stored response and the context it was generated from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseRecord {
    /// The response object as clients see it.
    pub response: ResponseObject,
    /// This response's own input items (normalized, with ids).
    pub input_items: Vec<Value>,
    /// Items before the input: the previous response's history + input + output
    /// (the whole chain, oldest first). Instructions are never part of it.
    pub history: Vec<Value>,
    /// Id of the first response of the `previous_response_id` chain (itself when none).
    pub chain_root: String,
}

/// A conversation object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub id: String,
    pub object: String,
    pub created_at: u64,
    pub metadata: BTreeMap<String, String>,
}

/// Storage of responses, their event logs and conversations.
#[async_trait::async_trait]
pub trait ResponseStore: Send + Sync + 'static {
    /// Insert (or replace) a response record.
    async fn insert_response(&self, rec: ResponseRecord) -> StoreResult<()>;
    /// The record, or `None` when unknown, deleted or expired.
    async fn get_response(&self, id: &str) -> StoreResult<Option<ResponseRecord>>;
    /// Only the status (cheap; polled while generating).
    async fn response_status(&self, id: &str) -> StoreResult<Option<ResponseStatus>>;
    /// Delete a response and its events; false when unknown.
    async fn delete_response(&self, id: &str) -> StoreResult<bool>;
    /// Replace the response object only while the stored one is queued or
    /// in progress (e.g. in_progress → completed); true when applied.
    async fn update_if_active(&self, response: ResponseObject) -> StoreResult<bool>;
    /// Atomically move a queued/in-progress response to `cancelled`; returns
    /// the object after the call (unchanged when already terminal), `None` when unknown.
    async fn cancel_response(&self, id: &str) -> StoreResult<Option<ResponseObject>>;
    /// Append one stream event (it carries its own `sequence_number`).
    async fn append_event(&self, id: &str, event: Value) -> StoreResult<()>;
    /// Events with `sequence_number > after` (all when `None`); `None` when unknown.
    async fn events_after(&self, id: &str, after: Option<u64>) -> StoreResult<Option<Vec<Value>>>;
    /// A receiver that changes whenever the response's events or state change;
    /// closed when the response is deleted. `None` when unknown.
    async fn subscribe(&self, id: &str) -> StoreResult<Option<watch::Receiver<u64>>>;

    /// Insert a conversation with its initial items.
    async fn insert_conversation(&self, conv: Conversation, items: Vec<Value>) -> StoreResult<()>;
    /// A conversation, `None` when unknown.
    async fn get_conversation(&self, id: &str) -> StoreResult<Option<Conversation>>;
    /// Replace a conversation's metadata; `None` when unknown.
    async fn update_conversation(
        &self,
        id: &str,
        metadata: BTreeMap<String, String>,
    ) -> StoreResult<Option<Conversation>>;
    /// Delete a conversation and its items; false when unknown.
    async fn delete_conversation(&self, id: &str) -> StoreResult<bool>;
    /// All items, oldest first; `None` when unknown.
    async fn conversation_items(&self, id: &str) -> StoreResult<Option<Vec<Value>>>;
    /// Append items; false when the conversation is unknown.
    async fn append_conversation_items(&self, id: &str, items: Vec<Value>) -> StoreResult<bool>;
    /// Delete one item: `None` when the conversation is unknown, `Some(false)` when the item is.
    async fn delete_conversation_item(&self, id: &str, item_id: &str) -> StoreResult<Option<bool>>;
}
