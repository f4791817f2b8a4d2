//! Change notifications of records ([`Subscription`]). A record's hash has
//! two change counters, bumped by the scripts: `ver` (status) and `evs`
//! (events). They drive separate channels, so a waiter on the status (such
//! as a background generation's cancel watch) is not woken by every event.
//! Changes made on this replica wake its waiters at once ([`Inner::bump`]);
//! changes made by other replicas are found by one polling task per watched
//! record and replica, which reads both counters every `poll_interval` (one
//! `HMGET`) until nobody listens or the record is gone.

use std::sync::Arc;

use tokio::sync::watch;

use super::conn::RedisConn;
use super::Inner;
use crate::store::{StoreResult, Subscription};
use crate::sync;

/// One record's local change notifiers (see [`Subscription`]).
pub(super) struct Notifiers {
    status: watch::Sender<u64>,
    events: watch::Sender<u64>,
}

/// Which of a record's changes to announce.
#[derive(Clone, Copy)]
pub(super) enum Change {
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

impl Inner {
    /// Wake this replica's waiters on `change` of record `id`, if any.
    pub(super) fn bump(&self, id: &str, change: Change) {
        {
            let l = sync::lock(&self.local);
            if let Some(w) = l.watchers.get(id) {
                w.bump(change);
            }
        }
    }

    /// [`ResponseStore::subscribe`](crate::store::ResponseStore::subscribe):
    /// share the record's notifiers if someone here already watches it, else
    /// create them and start polling its counters.
    pub(super) async fn subscribe(self: &Arc<Self>, id: &str) -> StoreResult<Option<Subscription>> {
        let i = self;
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
        let mut l = sync::lock(&i.local);
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
        let weak = Arc::downgrade(self);
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
                {
                    let mut l = sync::lock(&i.local);
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
}
