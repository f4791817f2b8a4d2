//! Each tenant's response index, `P:tenant:{<tenant>}:responses`: a sorted
//! set of the tenant's response ids scored by insertion time (µs since the
//! epoch, ties ordered by id), which `list_responses` pages through.
//!
//! Invariant: every indexed id had a record when it was indexed, and the
//! index never keeps an entry for longer than the record's TTL.
//!
//! - Writes: on standalone Redis the insert and delete scripts update the
//!   index in the same step as the record. On a Cluster the index is in
//!   another slot than the record, so it is updated by its own script
//!   *after* the record's (an id is indexed only once its record exists; a
//!   deleted record's entry goes right after it).
//! - TTL: every write drops the entries older than the store TTL and
//!   refreshes the index's own TTL; every read drops them too.
//! - Reads: a page reads the index in batches of `limit + 1`, fetches the
//!   records (concurrently; one slot each), skips the ones that vanished
//!   (deleted on a Cluster between the two steps, evicted, expired) and
//!   removes them from the index, reading at most [`LIST_SCAN_MAX`] entries.

use std::time::{SystemTime, UNIX_EPOCH};

use redis::ScriptInvocation;

use super::{Inner, RedisConn};
use crate::store::{ResponsePage, StoreResult, LIST_SCAN_MAX};
use crate::types::{ListOrder, ResponseObject};

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// One batch of the index ([`Inner::index_batch`]): `None` when the cursor
/// is not in the index.
type Batch = Option<Vec<String>>;

impl Inner {
    /// Whether the index is updated inside the record's own scripts (one
    /// server: keys of any slot may meet in one script).
    pub(super) fn index_in_scripts(&self) -> bool {
        matches!(self.conn, RedisConn::Single(_))
    }

    /// The oldest score an index entry may have now (older ones' records
    /// are past the TTL).
    fn index_cutoff(&self) -> u64 {
        now_us().saturating_sub(self.ttl_ms().saturating_mul(1000))
    }

    /// Add the index key and arguments of `lua/insert.lua` (standalone).
    pub(super) fn index_insert_args(&self, inv: &mut ScriptInvocation<'_>, tenant: &str, id: &str) {
        inv.key(self.index_key(tenant))
            .arg(id)
            .arg(now_us())
            .arg(self.index_cutoff());
    }

    /// Index response `id` of `tenant` (Cluster: after its record was stored).
    pub(super) async fn index_add(&self, tenant: &str, id: &str) -> StoreResult<()> {
        let mut inv = self.scripts.index_add.prepare_invoke();
        inv.key(self.index_key(tenant))
            .arg(id)
            .arg(now_us())
            .arg(self.index_cutoff())
            .arg(self.ttl_ms());
        let mut c = self.conn();
        self.run(inv.invoke_async::<()>(&mut c)).await
    }

    /// Remove ids from `tenant`'s index (Cluster deletes, vanished records).
    pub(super) async fn index_remove(&self, tenant: &str, ids: &[String]) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut c = self.conn();
        self.run(
            redis::cmd("ZREM")
                .arg(self.index_key(tenant))
                .arg(ids)
                .query_async::<()>(&mut c),
        )
        .await
    }

    /// Up to `count` ids of the index after `after` (trimming it first).
    async fn index_batch(
        &self,
        tenant: &str,
        after: Option<&str>,
        count: usize,
        desc: bool,
    ) -> StoreResult<Batch> {
        let mut inv = self.scripts.index_page.prepare_invoke();
        inv.key(self.index_key(tenant))
            .arg(self.index_cutoff())
            .arg(if desc { "1" } else { "0" })
            .arg(after.unwrap_or(""))
            .arg(count);
        let mut c = self.conn();
        let (found, ids): (i64, Vec<String>) = self.run(inv.invoke_async(&mut c)).await?;
        Ok((found == 1).then_some(ids))
    }

    /// The response object of record `id` if it exists and `tenant` owns it.
    async fn owned_response(&self, tenant: &str, id: &str) -> StoreResult<Option<ResponseObject>> {
        let mut c = self.conn();
        let r: Vec<Option<String>> = self
            .run(
                redis::cmd("HMGET")
                    .arg(self.rec_key(id))
                    .arg(&["response", "status", "completed_at", "error", "owner"])
                    .query_async(&mut c),
            )
            .await?;
        match r.as_slice() {
            [Some(resp), status, completed, error, Some(owner)] if owner == tenant => {
                Ok(Some(Self::overlay(
                    resp,
                    status.as_deref(),
                    completed.as_deref(),
                    error.as_deref(),
                )?))
            }
            _ => Ok(None),
        }
    }

    /// A page of `tenant`'s responses (see the module docs).
    pub(super) async fn list_responses(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
        order: ListOrder,
    ) -> StoreResult<Option<ResponsePage>> {
        let desc = order == ListOrder::Desc;
        let want = limit.saturating_add(1);
        let mut data = Vec::new();
        let mut vanished = Vec::new();
        let mut cursor = after.map(str::to_owned);
        let mut scanned = 0;
        // Whether entries past the last one read may exist.
        let mut more = false;
        while data.len() < want && scanned < LIST_SCAN_MAX {
            let count = (want - data.len()).min(LIST_SCAN_MAX - scanned);
            let Some(ids) = self
                .index_batch(tenant, cursor.as_deref(), count, desc)
                .await?
            else {
                if scanned == 0 {
                    return Ok(None);
                }
                // The last entry read vanished meanwhile: say there may be more.
                more = true;
                break;
            };
            scanned += ids.len();
            more = ids.len() == count;
            let reads = ids.iter().map(|id| self.owned_response(tenant, id));
            let objects = futures::future::try_join_all(reads).await?;
            for (id, obj) in ids.iter().zip(objects) {
                match obj {
                    Some(o) if data.len() < want => data.push(o),
                    Some(_) => {}
                    None => vanished.push(id.clone()),
                }
            }
            cursor = ids.last().cloned();
            if !more {
                break;
            }
        }
        if let Err(e) = self.index_remove(tenant, &vanished).await {
            // Harmless: the next listing skips (and removes) them again.
            tracing::debug!(error = %e, "could not drop vanished index entries");
        }
        let has_more = data.len() > limit || more;
        data.truncate(limit);
        Ok(Some(ResponsePage { data, has_more }))
    }
}
