//! Liveness of active responses across replicas. The replica generating a
//! response holds a lease on it (`P:leases`, score = deadline in ms) and
//! renews all its leases in one pipelined `ZADD` per heartbeat; the reaper
//! on every replica fails the responses whose lease expired (their replica
//! died) with the API layer's `lost` object and events. Both run as
//! background tasks that end with the store.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::task::JoinHandle;

use super::record::Transition;
use super::Inner;
use crate::store::StoreResult;
use crate::sync;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Inner {
    /// The deadline of a lease taken or renewed now (ms since epoch).
    fn lease_deadline(&self) -> u64 {
        now_ms() + self.opts.lease.as_millis() as u64
    }

    /// Response `id` is terminal (or gone): stop renewing its lease and drop
    /// it at the next heartbeat.
    pub(super) fn finished(&self, id: &str) {
        {
            let mut l = sync::lock(&self.local);
            if l.active.remove(id) {
                l.finished.push(id.to_owned());
            }
        }
    }

    /// This replica gave up response `id` (still active in Redis): stop
    /// renewing its lease but leave it in the lease set, so that it expires
    /// and a reaper ends the response.
    pub(super) fn abandon(&self, id: &str) {
        sync::lock(&self.local).active.remove(id);
    }

    /// Run `insert` (the record's insert script) while taking the lease on
    /// the new active response `id` (both concurrently); this replica renews
    /// the lease from now on, unless either fails.
    pub(super) async fn insert_leased(
        &self,
        id: &str,
        insert: impl Future<Output = StoreResult<()>>,
    ) -> StoreResult<()> {
        {
            let mut l = sync::lock(&self.local);
            l.active.insert(id.to_owned());
        }
        let deadline = self.lease_deadline();
        let mut c2 = self.conn();
        let lease_key = self.leases_key();
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(&lease_key).arg(deadline).arg(id);
        let (a, b) = tokio::join!(insert, self.run(zadd.query_async::<()>(&mut c2)));
        if a.is_err() || b.is_err() {
            {
                let mut l = sync::lock(&self.local);
                l.active.remove(id);
            }
        }
        a.and(b)
    }

    /// Renew this replica's leases and drop finished ones (one round trip).
    async fn heartbeat(&self) -> StoreResult<()> {
        let (active, finished) = {
            let mut l = sync::lock(&self.local);
            let f = std::mem::take(&mut l.finished);
            (l.active.iter().cloned().collect::<Vec<_>>(), f)
        };
        if active.is_empty() && finished.is_empty() {
            return Ok(());
        }
        let deadline = self.lease_deadline();
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
            {
                let mut l = sync::lock(&self.local);
                l.finished.extend(finished);
            }
        }
        r
    }

    /// Fail every response whose lease expired; returns how many were failed.
    /// An expired lease is reaped only after this reaper has seen it expired
    /// for two heartbeats (see `Local::suspects`): a live replica that could
    /// not renew during a Redis outage renews first when Redis is back.
    pub(super) async fn reap(&self) -> StoreResult<usize> {
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
        let confirmed: Vec<String> = {
            let mut l = sync::lock(&self.local);
            let now = std::time::Instant::now();
            let wait = 2 * self.opts.heartbeat;
            // Forget what renewed or is gone; note what is newly expired.
            l.suspects.retain(|id, _| expired.contains(id));
            let mut confirmed = Vec::new();
            for id in expired {
                if l.active.contains(&id) {
                    continue;
                }
                let seen = *l.suspects.entry(id.clone()).or_insert(now);
                if now.duration_since(seen) >= wait {
                    confirmed.push(id);
                }
            }
            confirmed
        };
        let mut failed = 0;
        for id in confirmed {
            sync::lock(&self.local).suspects.remove(&id);
            if let Some(rec) = Self::record(self.raw_rec(&id).await?)? {
                if !rec.response.status.is_terminal() {
                    let logged = self.events_after(&id, None).await?.unwrap_or_default();
                    let (resp, events) = (self.opts.lost)(rec.response, &logged);
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

/// Start this replica's heartbeat and reaper tasks (on the current Tokio
/// runtime); they stop by themselves once `inner` is dropped.
pub(super) fn spawn_tasks(inner: &Arc<Inner>) -> Vec<JoinHandle<()>> {
    let hb = spawn_every(inner, inner.opts.heartbeat, |i| async move {
        if let Err(e) = i.heartbeat().await {
            tracing::warn!(error = %e, "lease heartbeat failed");
        }
    });
    let reaper = spawn_every(inner, inner.opts.reap_interval, |i| async move {
        if let Err(e) = i.reap().await {
            tracing::debug!(error = %e, "reaper pass failed");
        }
    });
    vec![hb, reaper]
}

fn spawn_every<F, Fut>(inner: &Arc<Inner>, every: Duration, f: F) -> JoinHandle<()>
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
