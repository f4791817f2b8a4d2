//! The [`ResponseStore`] trait: stored responses, their stream event logs and
//! conversations. It is shaped for a networked backend (Redis) next to the
//! embedded [`MemoryStore`]: every state change is one atomic call, events are
//! an append-only log read by sequence number, and live followers wait on a
//! change counter (`watch`), which a pub/sub channel can drive.

pub mod memory;
pub mod metered;
pub mod redis;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

use crate::chain::ContextTurn;
use crate::types::{ListOrder, ResponseObject, ResponseStatus};

pub use self::redis::RedisStore;
pub use memory::MemoryStore;

/// The tenant of unauthenticated requests (when `--api-keys` is not set).
pub const ANONYMOUS_TENANT: &str = "anonymous";

/// A store backend failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A bug or corrupt data (500).
    #[error("store backend error: {0}")]
    Backend(String),
    /// The backend cannot be reached now (503); retrying later may succeed.
    #[error("{0}")]
    Unavailable(String),
}

impl From<StoreError> for crate::error::ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Backend(_) => crate::error::ApiError::Internal(e.to_string()),
            StoreError::Unavailable(m) => crate::error::ApiError::Unavailable {
                message: format!("The response store is unavailable ({m}); retry shortly."),
                retry_after: 1,
            },
        }
    }
}

/// The store `config` asks for: `--store memory` (bounded, in-process) or
/// `--store redis` (connects to `--redis-url` and starts this replica's lease
/// heartbeat and reaper, which ends lost responses with `lost`; must be
/// called inside a Tokio runtime).
pub async fn from_config(
    config: &crate::config::RouterConfig,
    lost: LostFn,
) -> StoreResult<std::sync::Arc<dyn ResponseStore>> {
    use std::time::Duration;
    match config.store {
        crate::config::StoreKind::Memory => Ok(std::sync::Arc::new(
            MemoryStore::new(
                config.store_max_records,
                Duration::from_secs(config.store_ttl_secs),
            )
            .with_max_bytes(config.store_max_bytes),
        )),
        crate::config::StoreKind::Redis => {
            let url = config.redis_url.as_deref().unwrap_or_default();
            if url.trim().is_empty() {
                return Err(StoreError::Backend(
                    "--store redis needs --redis-url (or SPINDLE_REDIS_URL)".into(),
                ));
            }
            let mut opts = self::redis::RedisOptions::new(url, lost);
            opts.ttl = Duration::from_secs(config.store_ttl_secs.max(1));
            opts.timeout = Duration::from_millis(config.redis_timeout_ms.max(1));
            Ok(std::sync::Arc::new(RedisStore::connect(opts).await?))
        }
    }
}

/// The id of a response created with `previous_response_id = prev`: it keeps
/// the first 12 characters after the prefix of `prev` (the *chain tag*, see
/// [`chain_tag`]) so every response of a chain maps to the same Redis Cluster
/// slot; the rest is random. Ids keep the `resp_` + 32 hex digits shape.
pub fn chained_response_id(prev: &str) -> String {
    let fresh = crate::types::new_id("resp");
    match prev.split_once('_') {
        Some((_, rest)) if rest.len() >= 12 && rest.is_char_boundary(12) => {
            format!("resp_{}{}", &rest[..12], &fresh["resp_".len() + 12..])
        }
        _ => fresh,
    }
}

/// The chain tag of an id: the 12 characters after the `prefix_` (the whole
/// id when it has another shape). Used as the Redis Cluster hash tag.
pub fn chain_tag(id: &str) -> &str {
    match id.split_once('_') {
        Some((_, rest)) if rest.len() >= 12 && rest.is_char_boundary(12) => &rest[..12],
        _ => id,
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
    /// The earlier turns it was generated after, oldest first: entries of
    /// its chain's item log, bounded by the model's context
    /// ([`crate::chain`]). Instructions are never part of them.
    #[serde(default)]
    pub context: Vec<ContextTurn>,
    /// Id of the first response of the `previous_response_id` chain (itself when none).
    pub chain_root: String,
    /// The tenant that created it; other tenants never see it.
    #[serde(default)]
    pub owner: String,
    /// The key every turn of this chain is routed by (set by its first turn,
    /// inherited by follow-ups, so the chain sticks to one worker's cache).
    #[serde(default)]
    pub routing_key: String,
}

/// One stored stream event: its sequence number and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: u64,
    pub bytes: Vec<u8>,
}

/// Change notifications of one response, kept apart so that a generation
/// watching for cancellation is not woken by its own events.
pub struct Subscription {
    /// Changes whenever the status or the stored object changes.
    pub status: watch::Receiver<u64>,
    /// Changes whenever events are appended.
    pub events: watch::Receiver<u64>,
}

/// How a response the store ends by itself (its replica's lease expired)
/// is finished: given the stored object and its logged stream events, the
/// API layer returns the final object (its output rebuilt from the events)
/// and its closing stream events. The store only reads and writes bytes.
pub type LostFn = fn(ResponseObject, &[StoredEvent]) -> (ResponseObject, Vec<Vec<u8>>);

/// One page of a tenant's stored responses ([`ResponseStore::list_responses`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ResponsePage {
    /// The responses, in the order asked for.
    pub data: Vec<ResponseObject>,
    /// Whether more follow the last one.
    pub has_more: bool,
}

/// Most index entries one listing call reads, live or not: entries whose
/// record vanished are skipped (and dropped), so a page may come back short
/// with `has_more` set rather than read without bound.
pub const LIST_SCAN_MAX: usize = 1000;

/// A conversation object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Conversation {
    pub id: String,
    pub object: String,
    pub created_at: u64,
    pub metadata: BTreeMap<String, String>,
}

/// The newest items of a conversation that fit a byte budget.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationTail {
    /// Index in the conversation of the first item below (0: all of it).
    pub first: u64,
    /// The items, oldest first.
    pub items: Vec<Value>,
    /// Encoded size of all the conversation's items (what
    /// `--max-conversation-bytes` bounds).
    pub bytes: u64,
}

/// What appending items to a conversation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Done,
    /// No such conversation (or another tenant's).
    Unknown,
    /// Nothing was appended: the items would take the conversation to
    /// `bytes`, past the cap.
    Full {
        bytes: u64,
    },
}

/// Storage of responses, their event logs and conversations.
///
/// Methods taking a `tenant` only see objects that tenant created (others
/// read as unknown); the rest are used internally by the generating driver
/// after ownership was checked.
#[async_trait::async_trait]
pub trait ResponseStore: Send + Sync + 'static {
    /// Insert (or replace) a response record (owned by `rec.owner`).
    async fn insert_response(&self, rec: ResponseRecord) -> StoreResult<()>;
    /// The record, or `None` when unknown, deleted, expired or another tenant's.
    async fn get_response(&self, tenant: &str, id: &str) -> StoreResult<Option<ResponseRecord>>;
    /// Append one turn's items (a JSON array) to the item log of the chain
    /// rooted at `chain_root`, refreshing the log's TTL; returns the entry's index.
    async fn append_turn(&self, chain_root: &str, items: Vec<u8>) -> StoreResult<u64>;
    /// The entries of the chain's item log at `indexes`, in that order;
    /// `None` for one that is gone (expired).
    async fn chain_turns(
        &self,
        chain_root: &str,
        indexes: &[u64],
    ) -> StoreResult<Vec<Option<Vec<u8>>>>;
    /// A page of `tenant`'s stored responses, in insertion order (`Asc`) or
    /// newest first (`Desc`), at most `limit` of them, starting after the
    /// response `after`; `None` when `after` is not in the tenant's listing
    /// (unknown, another tenant's, deleted or expired). Deleted and expired
    /// responses never appear. Reads at most [`LIST_SCAN_MAX`] index entries.
    async fn list_responses(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
        order: ListOrder,
    ) -> StoreResult<Option<ResponsePage>>;
    /// Only the status (cheap; polled while generating).
    async fn response_status(&self, id: &str) -> StoreResult<Option<ResponseStatus>>;
    /// Delete a response and its events; false when unknown (or another tenant's).
    async fn delete_response(&self, tenant: &str, id: &str) -> StoreResult<bool>;
    /// Replace the response object only while the stored one is queued or
    /// in progress (e.g. in_progress → completed); true when applied.
    async fn update_if_active(&self, response: ResponseObject) -> StoreResult<bool>;
    /// Atomically move a queued/in-progress response to `cancelled`; returns
    /// the object after the call (unchanged when already terminal), `None` when unknown.
    async fn cancel_response(&self, tenant: &str, id: &str) -> StoreResult<Option<ResponseObject>>;
    /// Append stream event number `seq` (encoded by the API layer; the
    /// store never looks inside) while the response is active.
    async fn append_event(&self, id: &str, seq: u64, event: Vec<u8>) -> StoreResult<()>;
    /// Events numbered after `after` (all when `None`), oldest first; `None` when unknown.
    async fn events_after(
        &self,
        id: &str,
        after: Option<u64>,
    ) -> StoreResult<Option<Vec<StoredEvent>>>;
    /// Change notifications of a response; closed when it is deleted.
    /// `None` when unknown.
    async fn subscribe(&self, id: &str) -> StoreResult<Option<Subscription>>;

    /// Insert a conversation with its initial items, owned by `tenant`.
    async fn insert_conversation(
        &self,
        tenant: &str,
        conv: Conversation,
        items: Vec<Value>,
    ) -> StoreResult<()>;
    /// A conversation, `None` when unknown.
    async fn get_conversation(&self, tenant: &str, id: &str) -> StoreResult<Option<Conversation>>;
    /// Replace a conversation's metadata; `None` when unknown.
    async fn update_conversation(
        &self,
        tenant: &str,
        id: &str,
        metadata: BTreeMap<String, String>,
    ) -> StoreResult<Option<Conversation>>;
    /// Delete a conversation and its items; false when unknown.
    async fn delete_conversation(&self, tenant: &str, id: &str) -> StoreResult<bool>;
    /// All items, oldest first; `None` when unknown.
    async fn conversation_items(&self, tenant: &str, id: &str) -> StoreResult<Option<Vec<Value>>>;
    /// The newest items whose encoded sizes (compact JSON) add up to at most
    /// `max_bytes`, read from the end, so the cost is bounded by the budget
    /// and not by the conversation's length; `None` when unknown.
    async fn conversation_tail(
        &self,
        tenant: &str,
        id: &str,
        max_bytes: u64,
    ) -> StoreResult<Option<ConversationTail>>;
    /// Append items, atomically refused when they would take the
    /// conversation's items past `max_bytes` (their encoded sizes).
    async fn append_conversation_items(
        &self,
        tenant: &str,
        id: &str,
        items: Vec<Value>,
        max_bytes: u64,
    ) -> StoreResult<Appended>;
    /// Delete one item: `None` when the conversation is unknown, `Some(false)` when the item is.
    async fn delete_conversation_item(
        &self,
        tenant: &str,
        id: &str,
        item_id: &str,
    ) -> StoreResult<Option<bool>>;

    /// Whether the backend answers now (`GET /ready` asks).
    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }

    /// This replica no longer generates active response `id` and holds no
    /// final state for it: stop keeping it alive, so that its lease expires
    /// and the reaper ends it (a no-op for stores without leases).
    fn release(&self, _id: &str) {}
}
