//! [`RedisStore`]: the distributed [`ResponseStore`] on Redis (standalone or
//! Redis Cluster). Every record lives in Redis, so any router replica answers
//! any request; replicas keep only caches of who is waiting for what.
//!
//! # Key layout (all keys start with the configurable prefix, `spindle`)
//!
//! Ids carry a *chain tag*: the 12 hex digits after `resp_`/`conv_`
//! ([`chain_tag`](super::chain_tag)). A follow-up response (`previous_response_id`) gets an id
//! that reuses its predecessor's tag ([`super::chained_response_id`]), so a
//! whole chain shares one Redis Cluster hash tag `{T}` and therefore one slot:
//! multi-key updates of a chain are single Lua scripts, and `GET
//! /v1/responses/{id}` finds the keys from the id alone (no index lookup).
//!
//! | key | type | content |
//! |---|---|---|
//! | `spindle:{T}:resp:<id>` | hash | `response` (JSON), `status`, `completed_at`, `error` (JSON, set by cancel/reaper), `input_items` (JSON array), `context` (JSON: the log entries of the earlier turns in its window, see [`crate::chain`]), `chain_root`, `owner` (tenant), `routing_key` (the chain's worker-routing key), `ver` (status change counter), `evs` (event change counter) |
//! | `spindle:{T}:resp:<id>:events` | stream | one entry per stream event, entry id `0-(sequence_number+1)`, field `e` = event JSON; `MAXLEN ~` capped |
//! | `spindle:{T}:chain:<root id>:log` | list | the chain's item log: one entry per turn (its input and output items, JSON), written once; records point into it |
//! | `spindle:{T}:conv:<id>` | hash | `conv` (JSON), `metadata` (JSON), `owner`, `bytes` (the items' total size) |
//! | `spindle:{T}:conv:<id>:items` | list | item JSON, oldest first |
//! | `spindle:tenant:{<tenant>}:responses` | sorted set | the tenant's response ids, score = insertion time (µs since epoch); see `listing` |
//! | `spindle:leases` | sorted set | ids of queued/in-progress responses, score = lease deadline (ms since epoch) |
//!
//! Every key has the store TTL (`--store-ttl`) from its creation; a chain's
//! log and a conversation's items have theirs refreshed on each new turn.
//! Nothing costs more per turn as a chain grows: a turn writes its record and
//! one log entry and reads only the entries of its context window.
//!
//! # Consistency
//!
//! State transitions are one Lua script each (one round trip): a record
//! moves from queued/in_progress to exactly one terminal state; a script that
//! finds the record missing (deleted/expired) or already terminal changes
//! nothing, so a record is never completed twice nor revived after DELETE.
//! Events are appended only while the record is active.
//!
//! # Liveness
//!
//! The replica that inserted an active response heartbeats its lease (one
//! pipelined `ZADD` per replica per heartbeat); a reaper on every replica
//! turns responses whose lease expired into `failed` ("generation lost:
//! router replica stopped") and appends the matching events. Followers and
//! cancel watchers poll the record's `ver` and `evs` counters (one cheap
//! `HMGET` per watched record and replica) and are woken at once by local
//! changes.
//!
//! # Failures
//!
//! Every command is bounded by a short timeout; connection and timeout
//! errors become [`StoreError::Unavailable`] (HTTP 503). The connection
//! reconnects by itself when Redis returns.
//!
//! # Code
//!
//! This module holds [`RedisStore`] and its [`ResponseStore`] methods; the
//! parts they share are split by concept:
//!
//! - `conn`: [`RedisOptions`], [`RedisConn`] (standalone or cluster), the
//!   command timeout and error mapping;
//! - `keys`: key names and the encodings of stored values;
//! - `record`: reading a record and its state transitions;
//! - `lease`: leases, heartbeat and reaper;
//! - `listing`: each tenant's response index and its pages;
//! - `watch`: change notifications ([`Subscription`]);
//! - `scripts`: the Lua scripts, one file each under `lua/`.

mod conn;
mod keys;
mod lease;
mod listing;
mod record;
mod scripts;
mod watch;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use redis::Pipeline;
use serde_json::Value;

use self::conn::map_err;
use self::keys::{de, seq_of, ser, status_of, status_str, stream_id};
use self::record::Transition;
use self::scripts::Scripts;
use self::watch::{Change, Notifiers};
use super::{
    Appended, Conversation, ConversationTail, ResponsePage, ResponseRecord, ResponseStore,
    StoreError, StoreResult, StoredEvent, Subscription,
};
use crate::types::{now_secs, ListOrder, ResponseObject, ResponseStatus};

pub use self::conn::{RedisConn, RedisOptions};

/// This replica's view of the records it works on.
#[derive(Default)]
struct Local {
    /// Active responses this replica generates (their leases are renewed here).
    active: HashSet<String>,
    /// Responses that became terminal since the last heartbeat (lease to drop).
    finished: Vec<String>,
    /// Change notifiers of records someone on this replica waits on.
    watchers: HashMap<String, Arc<Notifiers>>,
    /// Expired leases this reaper has seen, and when it first saw each: one
    /// is reaped only once it stayed expired for two heartbeats of this
    /// replica's own clock (so after a Redis outage, every live replica
    /// renews before anyone reaps).
    suspects: HashMap<String, std::time::Instant>,
}

/// The state shared by a [`RedisStore`]'s handles and background tasks.
struct Inner {
    conn: RedisConn,
    opts: RedisOptions,
    scripts: Scripts,
    local: Mutex<Local>,
}

/// The Redis-backed [`ResponseStore`]. Cheap to share (`Arc`); dropping the
/// last handle stops its heartbeat and reaper tasks.
pub struct RedisStore {
    inner: Arc<Inner>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl RedisStore {
    /// Connect and start this replica's heartbeat and reaper tasks (on the
    /// current Tokio runtime).
    pub async fn connect(opts: RedisOptions) -> StoreResult<Self> {
        if opts.urls.is_empty() {
            return Err(StoreError::Backend("no Redis URL given".into()));
        }
        let conn = tokio::time::timeout(
            opts.timeout * 5,
            RedisConn::connect(&opts.urls, opts.timeout),
        )
        .await
        .map_err(|_| StoreError::Unavailable("redis connect timed out".into()))?
        .map_err(map_err)?;
        let inner = Arc::new(Inner {
            conn,
            opts,
            scripts: Scripts::new(),
            local: Mutex::new(Local::default()),
        });
        let tasks = lease::spawn_tasks(&inner);
        Ok(Self { inner, tasks })
    }

    /// The underlying connection (benchmarks, tests).
    pub fn connection(&self) -> RedisConn {
        self.inner.conn()
    }

    /// Run one reaper pass now; returns how many responses it failed.
    pub async fn reap_now(&self) -> StoreResult<usize> {
        self.inner.reap().await
    }

    /// Stop renewing leases and reaping (simulates this replica dying).
    pub fn halt(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[async_trait::async_trait]
impl ResponseStore for RedisStore {
    async fn insert_response(&self, rec: ResponseRecord) -> StoreResult<()> {
        let i = &self.inner;
        let id = rec.response.id.clone();
        let active = !rec.response.status.is_terminal();
        let mut inv = i.scripts.insert.prepare_invoke();
        inv.key(i.rec_key(&id))
            .key(i.events_key(&id))
            .arg(i.ttl_ms())
            .arg(ser(&rec.response)?)
            .arg(ser(&rec.input_items)?)
            .arg(ser(&rec.context)?)
            .arg(&rec.chain_root)
            .arg(&rec.owner)
            .arg(status_str(rec.response.status))
            .arg(
                rec.response
                    .completed_at
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
            )
            .arg(&rec.routing_key);
        let together = i.index_in_scripts();
        if together {
            i.index_insert_args(&mut inv, &rec.owner, &id);
        }
        let mut c = i.conn();
        let owner = &rec.owner;
        let insert = async {
            i.run(inv.invoke_async::<()>(&mut c)).await?;
            if !together {
                // Cluster: the index is in another slot; indexed once stored.
                i.index_add(owner, &id).await?;
            }
            Ok::<(), StoreError>(())
        };
        if !active {
            return insert.await;
        }
        i.insert_leased(&id, insert).await
    }

    async fn append_turn(&self, chain_root: &str, items: Vec<u8>) -> StoreResult<u64> {
        let i = &self.inner;
        let mut inv = i.scripts.append_turn.prepare_invoke();
        inv.key(i.chain_log_key(chain_root))
            .arg(i.ttl_ms())
            .arg(items);
        let mut c = i.conn();
        i.run(inv.invoke_async::<u64>(&mut c)).await
    }

    async fn chain_turns(
        &self,
        chain_root: &str,
        indexes: &[u64],
    ) -> StoreResult<Vec<Option<Vec<u8>>>> {
        let i = &self.inner;
        let key = i.chain_log_key(chain_root);
        let mut pipe = Pipeline::new();
        for &n in indexes {
            pipe.cmd("LINDEX").arg(&key).arg(n);
        }
        let mut c = i.conn();
        i.run(pipe.query_async::<Vec<Option<Vec<u8>>>>(&mut c))
            .await
    }

    async fn get_response(&self, tenant: &str, id: &str) -> StoreResult<Option<ResponseRecord>> {
        Ok(Inner::record(self.inner.raw_rec(id).await?)?.filter(|r| r.owner == tenant))
    }

    fn release(&self, id: &str) {
        self.inner.abandon(id);
    }

    async fn ping(&self) -> StoreResult<()> {
        let i = &self.inner;
        let mut c = i.conn();
        i.run(redis::cmd("PING").query_async::<String>(&mut c))
            .await
            .map(drop)
    }

    async fn list_responses(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
        order: ListOrder,
    ) -> StoreResult<Option<ResponsePage>> {
        self.inner.list_responses(tenant, after, limit, order).await
    }

    async fn response_status(&self, id: &str) -> StoreResult<Option<ResponseStatus>> {
        let i = &self.inner;
        let mut c = i.conn();
        let s: Option<String> = i
            .run(
                redis::cmd("HGET")
                    .arg(i.rec_key(id))
                    .arg("status")
                    .query_async(&mut c),
            )
            .await?;
        s.as_deref().map(status_of).transpose()
    }

    async fn delete_response(&self, tenant: &str, id: &str) -> StoreResult<bool> {
        let i = &self.inner;
        let mut inv = i.scripts.delete.prepare_invoke();
        inv.key(i.rec_key(id))
            .key(i.events_key(id))
            .arg(tenant)
            .arg(id);
        let together = i.index_in_scripts();
        if together {
            inv.key(i.index_key(tenant));
        }
        let mut c = i.conn();
        let n: i64 = i.run(inv.invoke_async(&mut c)).await?;
        if n == 1 {
            i.bump(id, Change::Status);
            i.finished(id);
            if !together {
                // Cluster: a failure leaves an entry a listing drops later.
                if let Err(e) = i.index_remove(tenant, &[id.to_owned()]).await {
                    tracing::debug!(error = %e, "could not drop a deleted response's index entry");
                }
            }
        }
        Ok(n == 1)
    }

    async fn update_if_active(&self, response: ResponseObject) -> StoreResult<bool> {
        let (code, _) = self
            .inner
            .transition(
                &response.id,
                Transition {
                    owner: "",
                    status: response.status,
                    completed_at: response.completed_at,
                    response: Some(&response),
                    error: None,
                    events: &[],
                },
            )
            .await?;
        if code != 1 {
            self.inner.finished(&response.id);
        }
        Ok(code == 1)
    }

    async fn cancel_response(&self, tenant: &str, id: &str) -> StoreResult<Option<ResponseObject>> {
        let (code, obj) = self
            .inner
            .transition(
                id,
                Transition {
                    owner: tenant,
                    status: ResponseStatus::Cancelled,
                    completed_at: Some(now_secs()),
                    response: None,
                    error: None,
                    events: &[],
                },
            )
            .await?;
        Ok(if code < 0 { None } else { obj })
    }

    async fn append_event(&self, id: &str, seq: u64, event: Vec<u8>) -> StoreResult<()> {
        let i = &self.inner;
        let mut inv = i.scripts.append.prepare_invoke();
        inv.key(i.rec_key(id))
            .key(i.events_key(id))
            .arg(stream_id(seq))
            .arg(event)
            .arg(i.opts.stream_maxlen);
        let mut c = i.conn();
        let n: i64 = i.run(inv.invoke_async(&mut c)).await?;
        if n == 1 {
            i.bump(id, Change::Events);
        }
        Ok(())
    }

    async fn events_after(
        &self,
        id: &str,
        after: Option<u64>,
    ) -> StoreResult<Option<Vec<StoredEvent>>> {
        self.inner.events_after(id, after).await
    }

    async fn subscribe(&self, id: &str) -> StoreResult<Option<Subscription>> {
        self.inner.subscribe(id).await
    }

    async fn insert_conversation(
        &self,
        tenant: &str,
        conv: Conversation,
        items: Vec<Value>,
    ) -> StoreResult<()> {
        let i = &self.inner;
        let mut inv = i.scripts.conv_insert.prepare_invoke();
        inv.key(i.conv_key(&conv.id))
            .key(i.items_key(&conv.id))
            .arg(i.ttl_ms())
            .arg(ser(&conv)?)
            .arg(tenant);
        for it in &items {
            inv.arg(ser(it)?);
        }
        let mut c = i.conn();
        i.run(inv.invoke_async::<()>(&mut c)).await
    }

    async fn get_conversation(&self, tenant: &str, id: &str) -> StoreResult<Option<Conversation>> {
        let i = &self.inner;
        let mut c = i.conn();
        let r: Vec<Option<String>> = i
            .run(
                redis::cmd("HMGET")
                    .arg(i.conv_key(id))
                    .arg(&["conv", "owner", "metadata"])
                    .query_async(&mut c),
            )
            .await?;
        match r.as_slice() {
            [Some(conv), Some(owner), meta] if owner == tenant => {
                let mut conv: Conversation = de(conv)?;
                if let Some(m) = meta {
                    conv.metadata = de(m)?;
                }
                Ok(Some(conv))
            }
            _ => Ok(None),
        }
    }

    async fn update_conversation(
        &self,
        tenant: &str,
        id: &str,
        metadata: BTreeMap<String, String>,
    ) -> StoreResult<Option<Conversation>> {
        let i = &self.inner;
        let mut inv = i.scripts.conv_update.prepare_invoke();
        inv.key(i.conv_key(id)).arg(tenant).arg(ser(&metadata)?);
        let mut c = i.conn();
        let r: Option<(String, String)> = i.run(inv.invoke_async(&mut c)).await?;
        r.map(|(conv, meta)| {
            let mut conv: Conversation = de(&conv)?;
            conv.metadata = de(&meta)?;
            Ok(conv)
        })
        .transpose()
    }

    async fn delete_conversation(&self, tenant: &str, id: &str) -> StoreResult<bool> {
        let i = &self.inner;
        let mut inv = i.scripts.conv_delete.prepare_invoke();
        inv.key(i.conv_key(id)).key(i.items_key(id)).arg(tenant);
        let mut c = i.conn();
        let n: i64 = i.run(inv.invoke_async(&mut c)).await?;
        Ok(n == 1)
    }

    async fn conversation_items(&self, tenant: &str, id: &str) -> StoreResult<Option<Vec<Value>>> {
        let i = &self.inner;
        let mut inv = i.scripts.conv_items.prepare_invoke();
        inv.key(i.conv_key(id)).key(i.items_key(id)).arg(tenant);
        let mut c = i.conn();
        let r: Option<Vec<String>> = i.run(inv.invoke_async(&mut c)).await?;
        r.map(|items| items.iter().map(|s| de(s)).collect())
            .transpose()
    }

    async fn conversation_tail(
        &self,
        tenant: &str,
        id: &str,
        max_bytes: u64,
    ) -> StoreResult<Option<ConversationTail>> {
        let i = &self.inner;
        let mut inv = i.scripts.conv_tail.prepare_invoke();
        inv.key(i.conv_key(id))
            .key(i.items_key(id))
            .arg(tenant)
            .arg(max_bytes);
        let mut c = i.conn();
        let r: Option<(u64, Vec<String>, u64)> = i.run(inv.invoke_async(&mut c)).await?;
        r.map(|(first, items, bytes)| {
            Ok(ConversationTail {
                first,
                items: items.iter().map(|s| de(s)).collect::<StoreResult<_>>()?,
                bytes,
            })
        })
        .transpose()
    }

    async fn append_conversation_items(
        &self,
        tenant: &str,
        id: &str,
        items: Vec<Value>,
        max_bytes: u64,
    ) -> StoreResult<Appended> {
        let i = &self.inner;
        if items.is_empty() {
            let known = self.get_conversation(tenant, id).await?.is_some();
            return Ok(if known {
                Appended::Done
            } else {
                Appended::Unknown
            });
        }
        let mut inv = i.scripts.conv_append.prepare_invoke();
        inv.key(i.conv_key(id))
            .key(i.items_key(id))
            .arg(tenant)
            .arg(i.ttl_ms())
            .arg(max_bytes);
        for it in &items {
            inv.arg(ser(it)?);
        }
        let mut c = i.conn();
        let (code, bytes): (i64, u64) = i.run(inv.invoke_async(&mut c)).await?;
        Ok(match code {
            1 => Appended::Done,
            2 => Appended::Full { bytes },
            _ => Appended::Unknown,
        })
    }

    async fn delete_conversation_item(
        &self,
        tenant: &str,
        id: &str,
        item_id: &str,
    ) -> StoreResult<Option<bool>> {
        let i = &self.inner;
        let mut inv = i.scripts.conv_delete_item.prepare_invoke();
        inv.key(i.conv_key(id))
            .key(i.items_key(id))
            .arg(tenant)
            .arg(item_id);
        let mut c = i.conn();
        let n: i64 = i.run(inv.invoke_async(&mut c)).await?;
        Ok(match n {
            -1 => None,
            0 => Some(false),
            _ => Some(true),
        })
    }
}

impl Inner {
    /// Events numbered after `after` (all when `None`); `None` when unknown.
    pub(super) async fn events_after(
        &self,
        id: &str,
        after: Option<u64>,
    ) -> StoreResult<Option<Vec<StoredEvent>>> {
        let start = match after {
            None => "-".to_owned(),
            Some(a) => stream_id(a.saturating_add(1)),
        };
        let mut inv = self.scripts.events.prepare_invoke();
        inv.key(self.rec_key(id))
            .key(self.events_key(id))
            .arg(start);
        let mut c = self.conn();
        type Entries = Option<Vec<(String, Vec<Vec<u8>>)>>;
        let entries: Entries = self.run(inv.invoke_async::<Entries>(&mut c)).await?;
        Ok(entries.map(|es| {
            es.into_iter()
                .filter_map(|(entry, fv)| {
                    Some(StoredEvent {
                        seq: seq_of(&entry)?,
                        bytes: fv.into_iter().nth(1)?,
                    })
                })
                .collect()
        }))
    }
}
