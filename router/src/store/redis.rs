//! [`RedisStore`]: the distributed [`ResponseStore`] on Redis (standalone or
//! Redis Cluster). Every record lives in Redis, so any router replica answers
//! any request; replicas keep only caches of who is waiting for what.
//!
//! # Key layout (all keys start with the configurable prefix, `spindle`)
//!
//! Ids carry a *chain tag*: the 12 hex digits after `resp_`/`conv_`
//! ([`chain_tag`]). A follow-up response (`previous_response_id`) gets an id
//! that reuses its predecessor's tag ([`super::chained_response_id`]), so a
//! whole chain shares one Redis Cluster hash tag `{T}` and therefore one slot:
//! multi-key updates of a chain are single Lua scripts, and `GET
//! /v1/responses/{id}` finds the keys from the id alone (no index lookup).
//!
//! | key | type | content |
//! |---|---|---|
//! | `spindle:{T}:resp:<id>` | hash | `response` (JSON), `status`, `completed_at`, `error` (JSON, set by cancel/reaper), `input_items` (JSON array), `context` (JSON: the log entries of the earlier turns in its window, see [`crate::chain`]), `chain_root`, `owner` (tenant), `routing_key` (the chain's worker-routing key), `ver` (change counter) |
//! | `spindle:{T}:resp:<id>:events` | stream | one entry per stream event, entry id `0-(sequence_number+1)`, field `e` = event JSON; `MAXLEN ~` capped |
//! | `spindle:{T}:chain:<root id>:log` | list | the chain's item log: one entry per turn (its input and output items, JSON), written once; records point into it |
//! | `spindle:{T}:conv:<id>` | hash | `conv` (JSON), `metadata` (JSON), `owner` |
//! | `spindle:{T}:conv:<id>:items` | list | item JSON, oldest first |
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
//! cancel watchers poll the record's `ver` counter (cheap `HGET`) and are
//! woken at once by local changes.
//!
//! # Failures
//!
//! Every command is bounded by a short timeout; connection and timeout
//! errors become [`StoreError::Unavailable`] (HTTP 503). The connection
//! reconnects by itself when Redis returns.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Script};
use serde_json::Value;
use tokio::sync::watch;

use super::{
    chain_tag, Conversation, LostFn, ResponseRecord, ResponseStore, StoreError, StoreResult,
    StoredEvent, Subscription,
};
use crate::types::{now_secs, ResponseErrorInfo, ResponseObject, ResponseStatus};

/// Settings of a [`RedisStore`].
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// One URL (standalone, or a cluster detected via `INFO cluster`), or
    /// several seed URLs of a Redis Cluster.
    pub urls: Vec<String>,
    /// Key prefix.
    pub prefix: String,
    /// TTL of every record.
    pub ttl: Duration,
    /// Per-command timeout (and connect timeout).
    pub timeout: Duration,
    /// Lease of an active response; the reaper fails it once expired.
    pub lease: Duration,
    /// How often this replica renews its leases.
    pub heartbeat: Duration,
    /// How often this replica looks for expired leases.
    pub reap_interval: Duration,
    /// How often followers/cancel watchers poll a record for remote changes.
    pub poll_interval: Duration,
    /// Approximate cap of each event stream.
    pub stream_maxlen: usize,
    /// Ends a response whose replica's lease expired (the API layer's final
    /// object and events).
    pub lost: LostFn,
}

impl RedisOptions {
    /// Defaults for `url` (comma-separated seeds for a cluster); the reaper
    /// ends lost responses with `lost`.
    pub fn new(url: &str, lost: LostFn) -> Self {
        Self {
            urls: url
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect(),
            prefix: "spindle".into(),
            ttl: Duration::from_secs(30 * 24 * 3600),
            timeout: Duration::from_millis(1000),
            lease: Duration::from_millis(3000),
            heartbeat: Duration::from_millis(1000),
            reap_interval: Duration::from_millis(1000),
            poll_interval: Duration::from_millis(100),
            stream_maxlen: 10_000,
            lost,
        }
    }
}

/// A standalone (auto-reconnecting, multiplexed) or cluster connection.
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

impl RedisConn {
    /// Connect: a cluster for several URLs or when the one server says
    /// `cluster_enabled:1`, else a standalone connection manager.
    pub async fn connect(urls: &[String], timeout: Duration) -> Result<Self, RedisError> {
        let cluster = |urls: Vec<String>| async move {
            let client = redis::cluster::ClusterClientBuilder::new(urls)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(2)
                .min_retry_wait(50)
                .max_retry_wait(300)
                .build()?;
            Ok::<_, RedisError>(Self::Cluster(client.get_async_connection().await?))
        };
        if urls.len() > 1 {
            return cluster(urls.to_vec()).await;
        }
        let url = urls.first().cloned().unwrap_or_default();
        let client = redis::Client::open(url.as_str())?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(1000));
        let mut single = ConnectionManager::new_with_config(client, cfg).await?;
        let info: String = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut single)
            .await?;
        if info.contains("cluster_enabled:1") {
            return cluster(vec![url]).await;
        }
        Ok(Self::Single(single))
    }
}

fn map_err(e: RedisError) -> StoreError {
    use redis::ErrorKind as K;
    match e.kind() {
        K::Parse | K::UnexpectedReturnType | K::Client | K::InvalidClientConfig => {
            StoreError::Backend(e.to_string())
        }
        _ => StoreError::Unavailable(format!("redis: {e}")),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn ser<T: serde::Serialize>(v: &T) -> StoreResult<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(e.to_string()))
}

fn de<T: serde::de::DeserializeOwned>(s: &str) -> StoreResult<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Backend(format!("corrupt record: {e}")))
}

fn status_str(s: ResponseStatus) -> String {
    match serde_json::to_value(s) {
        Ok(Value::String(s)) => s,
        _ => "in_progress".into(),
    }
}

/// The stream entry id of event number `seq` (`0-0` is not a valid id).
fn stream_id(seq: u64) -> String {
    format!("0-{}", seq.saturating_add(1))
}

/// The event number of a stream entry id.
fn seq_of(entry: &str) -> Option<u64> {
    entry
        .strip_prefix("0-")?
        .parse::<u64>()
        .ok()?
        .checked_sub(1)
}

fn status_of(s: &str) -> StoreResult<ResponseStatus> {
    de(&format!("\"{s}\""))
}

// ---------------------------------------------------------------- scripts

const ACTIVE: &str = "local function active(s) return s == 'queued' or s == 'in_progress' end\n";

/// KEYS: rec, events. ARGV: ttl_ms, response, input_items, context,
/// chain_root, owner, status, completed_at, routing_key.
const INSERT: &str = r#"
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'response', ARGV[2], 'input_items', ARGV[3], 'context', ARGV[4],
  'chain_root', ARGV[5], 'owner', ARGV[6], 'status', ARGV[7], 'completed_at', ARGV[8], 'ver', 0,
  'evs', 0, 'routing_key', ARGV[9])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"#;

/// KEYS: chain log. ARGV: ttl_ms, entry. The entry's index.
const APPEND_TURN: &str = r#"
local n = redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return n - 1
"#;

/// KEYS: rec, events. ARGV: owner ('' = any), status, completed_at ('' =
/// keep), response ('' = keep), error ('' = keep), maxlen, events... (bytes,
/// numbered after the last stored one by their stream entry ids).
/// Returns {code, response, status, completed_at, error}: code -1 unknown,
/// 0 not active (nothing changed), 1 applied.
const TRANSITION: &str = r#"
local st = redis.call('HGET', KEYS[1], 'status')
local function state() return redis.call('HMGET', KEYS[1], 'response', 'status', 'completed_at', 'error') end
if (not st) or (ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1]) then
  return {-1, false, false, false, false}
end
if not active(st) then
  local r = state()
  return {0, r[1], r[2], r[3], r[4]}
end
redis.call('HSET', KEYS[1], 'status', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'completed_at', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'response', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[5]) end
redis.call('HINCRBY', KEYS[1], 'ver', 1)
if #ARGV > 6 then
  local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  local n = 0
  if #last > 0 then n = tonumber(string.match(last[1][1], '-(%d+)$')) end
  for i = 7, #ARGV do
    n = n + 1
    redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '0-' .. n, 'e', ARGV[i])
  end
  redis.call('HINCRBY', KEYS[1], 'evs', 1)
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl > 0 then redis.call('PEXPIRE', KEYS[2], pttl) end
end
local r = state()
return {1, r[1], r[2], r[3], r[4]}
"#;

/// KEYS: rec, events. ARGV: stream id, event, maxlen. -1 unknown, 0 not active, 1 appended.
const APPEND: &str = r#"
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -1 end
if not active(st) then return 0 end
redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], ARGV[1], 'e', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'evs', 1)
if redis.call('PTTL', KEYS[2]) < 0 then
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl > 0 then redis.call('PEXPIRE', KEYS[2], pttl) end
end
return 1
"#;

/// KEYS: rec, events. ARGV: start id. nil when unknown.
const EVENTS: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('XRANGE', KEYS[2], ARGV[1], '+')
"#;

/// KEYS: rec, events. ARGV: owner. 1 deleted, 0 unknown.
const DELETE: &str = r#"
local o = redis.call('HGET', KEYS[1], 'owner')
if (not o) or o ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
"#;

/// KEYS: conv, items. ARGV: ttl_ms, conv, owner, items...
const CONV_INSERT: &str = r#"
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'conv', ARGV[2], 'owner', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
if #ARGV > 3 then
  redis.call('RPUSH', KEYS[2], unpack(ARGV, 4))
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
return 1
"#;

const OWNED: &str = r#"
local function owned()
  local o = redis.call('HGET', KEYS[1], 'owner')
  return o and o == ARGV[1]
end
"#;

/// KEYS: conv. ARGV: owner, metadata. {conv, metadata} or nil.
const CONV_UPDATE: &str = r#"
if not owned() then return false end
redis.call('HSET', KEYS[1], 'metadata', ARGV[2])
return redis.call('HMGET', KEYS[1], 'conv', 'metadata')
"#;

/// KEYS: conv, items. ARGV: owner.
const CONV_DELETE: &str = r#"
if not owned() then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
"#;

/// KEYS: conv, items. ARGV: owner. Items or nil.
const CONV_ITEMS: &str = r#"
if not owned() then return false end
return redis.call('LRANGE', KEYS[2], 0, -1)
"#;

/// KEYS: conv, items. ARGV: owner, ttl_ms, items...
const CONV_APPEND: &str = r#"
if not owned() then return 0 end
redis.call('RPUSH', KEYS[2], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"#;

/// KEYS: conv, items. ARGV: owner, item id. -1 unknown conversation, 0 unknown item, 1 deleted.
const CONV_DELETE_ITEM: &str = r#"
if not owned() then return -1 end
for _, v in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  local ok, it = pcall(cjson.decode, v)
  if ok and type(it) == 'table' and it['id'] == ARGV[2] then
    redis.call('LREM', KEYS[2], 1, v)
    return 1
  end
end
return 0
"#;

struct Scripts {
    insert: Script,
    transition: Script,
    append: Script,
    events: Script,
    delete: Script,
    append_turn: Script,
    conv_insert: Script,
    conv_update: Script,
    conv_delete: Script,
    conv_items: Script,
    conv_append: Script,
    conv_delete_item: Script,
}

impl Scripts {
    fn new() -> Self {
        let act = |s: &str| Script::new(&format!("{ACTIVE}{s}"));
        let own = |s: &str| Script::new(&format!("{OWNED}{s}"));
        Self {
            insert: Script::new(INSERT),
            append_turn: Script::new(APPEND_TURN),
            transition: act(TRANSITION),
            append: act(APPEND),
            events: Script::new(EVENTS),
            delete: Script::new(DELETE),
            conv_insert: Script::new(CONV_INSERT),
            conv_update: own(CONV_UPDATE),
            conv_delete: own(CONV_DELETE),
            conv_items: own(CONV_ITEMS),
            conv_append: own(CONV_APPEND),
            conv_delete_item: own(CONV_DELETE_ITEM),
        }
    }
}

// ---------------------------------------------------------------- store

#[derive(Default)]
struct Local {
    /// Active responses this replica generates (their leases are renewed here).
    active: HashSet<String>,
    /// Responses that became terminal since the last heartbeat (lease to drop).
    finished: Vec<String>,
    /// Change notifiers of records someone on this replica waits on.
    watchers: HashMap<String, Arc<Notifiers>>,
}

/// One record's local change notifiers (see [`Subscription`]).
struct Notifiers {
    status: watch::Sender<u64>,
    events: watch::Sender<u64>,
}

/// Which of a record's changes to announce.
#[derive(Clone, Copy)]
enum Change {
    Status,
    Events,
}

impl Notifiers {
    fn bump(&self, change: Change) {
        let tx = match change {
            Change::Status => &self.status,
            Change::Events => &self.events,
        };
        tx.send_modify(|v| *v = v.wrapping_add(1));
    }
}

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

/// Arguments of [`Inner::transition`].
struct Transition<'a> {
    /// Required owner (`""`: any).
    owner: &'a str,
    status: ResponseStatus,
    completed_at: Option<u64>,
    /// The new response object (`None`: keep the stored one).
    response: Option<&'a ResponseObject>,
    /// Error overlay (`None`: keep).
    error: Option<&'a ResponseErrorInfo>,
    /// Events to append, numbered after the last stored one.
    events: &'a [Vec<u8>],
}

/// A record's fields as stored (`HMGET` order of [`Inner::rec_fields`]).
type RawRec = Vec<Option<String>>;

impl Inner {
    fn rec_key(&self, id: &str) -> String {
        format!("{}:{{{}}}:resp:{id}", self.opts.prefix, chain_tag(id))
    }
    fn events_key(&self, id: &str) -> String {
        format!("{}:events", self.rec_key(id))
    }
    fn chain_log_key(&self, root: &str) -> String {
        format!(
            "{}:{{{}}}:chain:{root}:log",
            self.opts.prefix,
            chain_tag(root)
        )
    }
    fn conv_key(&self, id: &str) -> String {
        format!("{}:{{{}}}:conv:{id}", self.opts.prefix, chain_tag(id))
    }
    fn items_key(&self, id: &str) -> String {
        format!("{}:items", self.conv_key(id))
    }
    fn leases_key(&self) -> String {
        format!("{}:leases", self.opts.prefix)
    }
    fn ttl_ms(&self) -> u64 {
        (self.opts.ttl.as_millis() as u64).max(1)
    }

    /// Run one Redis call under the store timeout.
    async fn run<T>(&self, f: impl Future<Output = Result<T, RedisError>>) -> StoreResult<T> {
        match tokio::time::timeout(self.opts.timeout, f).await {
            Ok(r) => r.map_err(map_err),
            Err(_) => Err(StoreError::Unavailable(format!(
                "redis did not answer within {} ms",
                self.opts.timeout.as_millis()
            ))),
        }
    }

    fn conn(&self) -> RedisConn {
        self.conn.clone()
    }

    fn bump(&self, id: &str, change: Change) {
        if let Ok(l) = self.local.lock() {
            if let Some(w) = l.watchers.get(id) {
                w.bump(change);
            }
        }
    }

    fn finished(&self, id: &str) {
        if let Ok(mut l) = self.local.lock() {
            if l.active.remove(id) {
                l.finished.push(id.to_owned());
            }
        }
    }

    async fn raw_rec(&self, id: &str) -> StoreResult<RawRec> {
        let mut c = self.conn();
        self.run(
            redis::cmd("HMGET")
                .arg(self.rec_key(id))
                .arg(&[
                    "response",
                    "input_items",
                    "context",
                    "chain_root",
                    "owner",
                    "status",
                    "completed_at",
                    "error",
                    "routing_key",
                ])
                .query_async::<RawRec>(&mut c),
        )
        .await
    }

    /// Overlay the authoritative `status`, `completed_at` and `error` fields.
    fn overlay(
        resp: &str,
        status: Option<&str>,
        completed_at: Option<&str>,
        error: Option<&str>,
    ) -> StoreResult<ResponseObject> {
        let mut r: ResponseObject = de(resp)?;
        if let Some(s) = status {
            r.status = status_of(s)?;
        }
        if let Some(c) = completed_at.filter(|c| !c.is_empty()) {
            r.completed_at = c.parse().ok();
        }
        if let Some(e) = error.filter(|e| !e.is_empty()) {
            r.error = Some(de::<ResponseErrorInfo>(e)?);
        }
        Ok(r)
    }

    fn record(raw: RawRec) -> StoreResult<Option<ResponseRecord>> {
        let [resp, input, context, root, owner, status, completed, error, routing_key] =
            <[Option<String>; 9]>::try_from(raw)
                .map_err(|_| StoreError::Backend("short HMGET reply".into()))?;
        let Some(resp) = resp else { return Ok(None) };
        Ok(Some(ResponseRecord {
            response: Self::overlay(
                &resp,
                status.as_deref(),
                completed.as_deref(),
                error.as_deref(),
            )?,
            input_items: de(input.as_deref().unwrap_or("[]"))?,
            context: de(context.as_deref().unwrap_or("[]"))?,
            chain_root: root.unwrap_or_default(),
            owner: owner.unwrap_or_default(),
            routing_key: routing_key.unwrap_or_default(),
        }))
    }

    /// One transition script call; returns (code, object after the call).
    async fn transition(
        &self,
        id: &str,
        t: Transition<'_>,
    ) -> StoreResult<(i64, Option<ResponseObject>)> {
        let Transition {
            owner,
            status,
            completed_at,
            response,
            error,
            events,
        } = t;
        let mut inv = self.scripts.transition.prepare_invoke();
        inv.key(self.rec_key(id))
            .key(self.events_key(id))
            .arg(owner)
            .arg(status_str(status))
            .arg(completed_at.map(|c| c.to_string()).unwrap_or_default())
            .arg(response.map(ser).transpose()?.unwrap_or_default())
            .arg(error.map(ser).transpose()?.unwrap_or_default())
            .arg(self.opts.stream_maxlen);
        for ev in events {
            inv.arg(ev.as_slice());
        }
        let mut c = self.conn();
        type Reply = (
            i64,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let (code, resp, st, completed, err): Reply =
            self.run(inv.invoke_async::<Reply>(&mut c)).await?;
        let obj = match resp {
            Some(r) => Some(Self::overlay(
                &r,
                st.as_deref(),
                completed.as_deref(),
                err.as_deref(),
            )?),
            None => None,
        };
        if code >= 0 {
            if code == 1 {
                self.bump(id, Change::Status);
                if !events.is_empty() {
                    self.bump(id, Change::Events);
                }
            }
            if obj.as_ref().is_some_and(|o| o.status.is_terminal()) {
                self.finished(id);
            }
        }
        Ok((code, obj))
    }

    /// Renew this replica's leases and drop finished ones (one round trip).
    async fn heartbeat(&self) -> StoreResult<()> {
        let (active, finished) = {
            let mut l = self
                .local
                .lock()
                .map_err(|_| StoreError::Backend("lock poisoned".into()))?;
            let f = std::mem::take(&mut l.finished);
            (l.active.iter().cloned().collect::<Vec<_>>(), f)
        };
        if active.is_empty() && finished.is_empty() {
            return Ok(());
        }
        let deadline = now_ms() + self.opts.lease.as_millis() as u64;
        let mut p = redis::pipe();
        if !active.is_empty() {
            let mut z = redis::cmd("ZADD");
            z.arg(self.leases_key());
            for id in &active {
                z.arg(deadline).arg(id);
            }
            p.add_command(z).ignore();
        }
        if !finished.is_empty() {
            p.cmd("ZREM").arg(self.leases_key()).arg(&finished).ignore();
        }
        let mut c = self.conn();
        let r = self.run(p.query_async::<()>(&mut c)).await;
        if r.is_err() {
            // Retry dropping them next time.
            if let Ok(mut l) = self.local.lock() {
                l.finished.extend(finished);
            }
        }
        r
    }

    /// Fail every response whose lease expired; returns how many were failed.
    async fn reap(&self) -> StoreResult<usize> {
        let mut c = self.conn();
        let expired: Vec<String> = self
            .run(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(self.leases_key())
                    .arg("-inf")
                    .arg(now_ms())
                    .arg("LIMIT")
                    .arg(0)
                    .arg(100)
                    .query_async(&mut c),
            )
            .await?;
        let mut failed = 0;
        for id in expired {
            let mine = self
                .local
                .lock()
                .map(|l| l.active.contains(&id))
                .unwrap_or(false);
            if mine {
                continue;
            }
            if let Some(rec) = Self::record(self.raw_rec(&id).await?)? {
                if !rec.response.status.is_terminal() {
                    let (resp, events) = (self.opts.lost)(rec.response);
                    let (code, _) = self
                        .transition(
                            &id,
                            Transition {
                                owner: "",
                                status: resp.status,
                                completed_at: resp.completed_at,
                                response: Some(&resp),
                                error: resp.error.as_ref(),
                                events: &events,
                            },
                        )
                        .await?;
                    if code == 1 {
                        failed += 1;
                        tracing::warn!(id, "lease expired: response failed");
                    }
                }
            }
            let mut c = self.conn();
            self.run(
                redis::cmd("ZREM")
                    .arg(self.leases_key())
                    .arg(&id)
                    .query_async::<()>(&mut c),
            )
            .await?;
        }
        Ok(failed)
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
        let hb = spawn_every(&inner, inner.opts.heartbeat, |i| async move {
            if let Err(e) = i.heartbeat().await {
                tracing::warn!(error = %e, "lease heartbeat failed");
            }
        });
        let reaper = spawn_every(&inner, inner.opts.reap_interval, |i| async move {
            if let Err(e) = i.reap().await {
                tracing::debug!(error = %e, "reaper pass failed");
            }
        });
        Ok(Self {
            inner,
            tasks: vec![hb, reaper],
        })
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

fn spawn_every<F, Fut>(inner: &Arc<Inner>, every: Duration, f: F) -> tokio::task::JoinHandle<()>
where
    F: Fn(Arc<Inner>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let weak: Weak<Inner> = Arc::downgrade(inner);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(i) = weak.upgrade() else { return };
            f(i).await;
        }
    })
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
        let mut c = i.conn();
        if !active {
            return i.run(inv.invoke_async::<()>(&mut c)).await;
        }
        if let Ok(mut l) = i.local.lock() {
            l.active.insert(id.clone());
        }
        let deadline = now_ms() + i.opts.lease.as_millis() as u64;
        let mut c2 = i.conn();
        let lease_key = i.leases_key();
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(&lease_key).arg(deadline).arg(&id);
        let (a, b) = tokio::join!(
            i.run(inv.invoke_async::<()>(&mut c)),
            i.run(zadd.query_async::<()>(&mut c2)),
        );
        if a.is_err() || b.is_err() {
            if let Ok(mut l) = i.local.lock() {
                l.active.remove(&id);
            }
        }
        a.and(b)
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

    async fn ping(&self) -> StoreResult<()> {
        let i = &self.inner;
        let mut c = i.conn();
        i.run(redis::cmd("PING").query_async::<String>(&mut c))
            .await
            .map(drop)
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
        inv.key(i.rec_key(id)).key(i.events_key(id)).arg(tenant);
        let mut c = i.conn();
        let n: i64 = i.run(inv.invoke_async(&mut c)).await?;
        if n == 1 {
            i.bump(id, Change::Status);
            i.finished(id);
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
        let i = &self.inner;
        let start = match after {
            None => "-".to_owned(),
            Some(a) => stream_id(a.saturating_add(1)),
        };
        let mut inv = i.scripts.events.prepare_invoke();
        inv.key(i.rec_key(id)).key(i.events_key(id)).arg(start);
        let mut c = i.conn();
        type Entries = Option<Vec<(String, Vec<Vec<u8>>)>>;
        let entries: Entries = i.run(inv.invoke_async::<Entries>(&mut c)).await?;
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

    async fn subscribe(&self, id: &str) -> StoreResult<Option<Subscription>> {
        let i = &self.inner;
        let counters = |c: RedisConn, i: Arc<Inner>, id: String| async move {
            let mut c = c;
            i.run(
                redis::cmd("HMGET")
                    .arg(i.rec_key(&id))
                    .arg(&["ver", "evs"])
                    .query_async::<(Option<u64>, Option<u64>)>(&mut c),
            )
            .await
        };
        let (Some(mut ver), evs) = counters(i.conn(), i.clone(), id.to_owned()).await? else {
            return Ok(None);
        };
        let mut evs = evs.unwrap_or(0);
        let mut l = i
            .local
            .lock()
            .map_err(|_| StoreError::Backend("lock poisoned".into()))?;
        if let Some(w) = l.watchers.get(id) {
            return Ok(Some(Subscription {
                status: w.status.subscribe(),
                events: w.events.subscribe(),
            }));
        }
        let notifiers = Arc::new(Notifiers {
            status: watch::channel(0u64).0,
            events: watch::channel(0u64).0,
        });
        let sub = Subscription {
            status: notifiers.status.subscribe(),
            events: notifiers.events.subscribe(),
        };
        l.watchers.insert(id.to_owned(), notifiers.clone());
        drop(l);
        // Poll for changes made by other replicas until nobody listens or the
        // record is gone (which closes the receivers).
        let weak = Arc::downgrade(&self.inner);
        let id = id.to_owned();
        tokio::spawn(async move {
            loop {
                let Some(i) = weak.upgrade() else { break };
                tokio::time::sleep(i.opts.poll_interval).await;
                let listened =
                    notifiers.status.receiver_count() + notifiers.events.receiver_count();
                if listened == 0 {
                    break;
                }
                match counters(i.conn(), i.clone(), id.clone()).await {
                    Ok((None, _)) => break,
                    Ok((Some(v), e)) => {
                        if v != ver {
                            ver = v;
                            notifiers.bump(Change::Status);
                        }
                        let e = e.unwrap_or(0);
                        if e != evs {
                            evs = e;
                            notifiers.bump(Change::Events);
                        }
                    }
                    Err(_) => {}
                }
            }
            if let Some(i) = weak.upgrade() {
                if let Ok(mut l) = i.local.lock() {
                    if l.watchers
                        .get(&id)
                        .is_some_and(|w| Arc::ptr_eq(w, &notifiers))
                    {
                        l.watchers.remove(&id);
                    }
                }
            }
        });
        Ok(Some(sub))
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

    async fn append_conversation_items(
        &self,
        tenant: &str,
        id: &str,
        items: Vec<Value>,
    ) -> StoreResult<bool> {
        let i = &self.inner;
        if items.is_empty() {
            return Ok(self.get_conversation(tenant, id).await?.is_some());
        }
        let mut inv = i.scripts.conv_append.prepare_invoke();
        inv.key(i.conv_key(id))
            .key(i.items_key(id))
            .arg(tenant)
            .arg(i.ttl_ms());
        for it in &items {
            inv.arg(ser(it)?);
        }
        let mut c = i.conn();
        let n: i64 = i.run(inv.invoke_async(&mut c)).await?;
        Ok(n == 1)
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
