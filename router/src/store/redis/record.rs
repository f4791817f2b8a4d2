//! A response record's hash: reading and decoding it (the authoritative
//! `status`, `completed_at` and `error` fields overlaid on the stored
//! response object), and [`Inner::transition`], the one call through which
//! a record changes state (update, cancel, completion, the reaper's
//! failure), with the local wakeups and lease bookkeeping that follow it.

use super::keys::{de, ser, status_of, status_str};
use super::watch::Change;
use super::Inner;
use crate::store::{ResponseRecord, StoreError, StoreResult};
use crate::types::{ResponseErrorInfo, ResponseObject, ResponseStatus};

/// Arguments of [`Inner::transition`].
pub(super) struct Transition<'a> {
    /// Required owner (`""`: any).
    pub(super) owner: &'a str,
    pub(super) status: ResponseStatus,
    pub(super) completed_at: Option<u64>,
    /// The new response object (`None`: keep the stored one).
    pub(super) response: Option<&'a ResponseObject>,
    /// Error overlay (`None`: keep).
    pub(super) error: Option<&'a ResponseErrorInfo>,
    /// Events to append, numbered after the last stored one.
    pub(super) events: &'a [Vec<u8>],
}

/// A record's fields as stored (`HMGET` order of [`Inner::raw_rec`]).
type RawRec = Vec<Option<String>>;

impl Inner {
    /// The fields of record `id` that make a [`ResponseRecord`] (all `None`
    /// when it does not exist).
    pub(super) async fn raw_rec(&self, id: &str) -> StoreResult<RawRec> {
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
    pub(super) fn overlay(
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

    /// Decode [`Inner::raw_rec`]'s reply; `None` for a missing record.
    pub(super) fn record(raw: RawRec) -> StoreResult<Option<ResponseRecord>> {
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
    pub(super) async fn transition(
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
}
