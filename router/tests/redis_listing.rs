//! The tenant response index of the Redis store (`list_responses`) against
//! real redis-server processes, standalone and a 3-master cluster: order,
//! paging, tenants, two store instances (two router replicas) sharing one
//! Redis, deletes, records that vanished, and trimming with the TTL.

mod redis_support;

use std::sync::Arc;
use std::time::Duration;

use spindle_router::store::chain_tag;
use spindle_router::types::{ListOrder, ResponseStatus};
use spindle_router::{RedisStore, ResponseStore};

use redis_support::*;
use spindle_testkit::fixtures::{record, response};

fn new_id() -> String {
    spindle_router::types::new_id("resp")
}

/// A page's ids and `has_more`; `None` when `after` is not listed.
async fn page(
    s: &dyn ResponseStore,
    tenant: &str,
    after: Option<&str>,
    limit: usize,
    order: ListOrder,
) -> Option<(Vec<String>, bool)> {
    let p = s
        .list_responses(tenant, after, limit, order)
        .await
        .unwrap()?;
    Some((p.data.into_iter().map(|r| r.id).collect(), p.has_more))
}

/// Every id of a tenant, newest first, read in pages of `limit` from
/// alternating stores.
async fn all_pages(stores: &[&dyn ResponseStore], tenant: &str, limit: usize) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for n in 0.. {
        let s = stores[n % stores.len()];
        let (got, more) = page(
            s,
            tenant,
            ids.last().map(String::as_str),
            limit,
            ListOrder::Desc,
        )
        .await
        .unwrap();
        assert!(got.len() <= limit);
        ids.extend(got);
        if !more {
            break;
        }
    }
    ids
}

async fn raw<T: redis::FromRedisValue>(s: &RedisStore, cmd: &mut redis::Cmd) -> T {
    let mut c = s.connection();
    cmd.query_async(&mut c).await.unwrap()
}

fn index_key(tenant: &str) -> String {
    format!("spindle:tenant:{{{tenant}}}:responses")
}

/// Two stores (replicas) on one Redis list the same thing.
async fn two_stores(url: &str) {
    let (a, b) = (redis_store(url).await, redis_store(url).await);
    let (t1, t2) = (format!("t1-{}", new_id()), format!("t2-{}", new_id()));
    let mut mine = Vec::new();
    let mut theirs = Vec::new();
    for n in 0..7 {
        let s = if n % 2 == 0 { &a } else { &b };
        let id = new_id();
        s.insert_response(record(&id, &t1)).await.unwrap();
        mine.push(id);
        if n % 3 == 0 {
            let id = new_id();
            s.insert_response(record(&id, &t2)).await.unwrap();
            theirs.push(id);
        }
    }
    let newest: Vec<String> = mine.iter().rev().cloned().collect();
    for s in [&a, &b] {
        assert_eq!(
            page(&**s, &t1, None, 100, ListOrder::Desc).await,
            Some((newest.clone(), false))
        );
        assert_eq!(
            page(&**s, &t1, None, 100, ListOrder::Asc).await,
            Some((mine.clone(), false))
        );
    }
    let stores: [&dyn ResponseStore; 2] = [&*a, &*b];
    assert_eq!(all_pages(&stores, &t1, 2).await, newest);
    assert_eq!(all_pages(&stores, &t1, 7).await, newest);
    assert_eq!(
        page(&*b, &t1, Some(&mine[2]), 3, ListOrder::Asc).await,
        Some((mine[3..6].to_vec(), true))
    );
    assert_eq!(
        page(&*a, &t2, None, 100, ListOrder::Asc).await,
        Some((theirs.clone(), false))
    );
    // Another tenant's id, or an unknown one, is no cursor.
    assert_eq!(
        page(&*a, &t1, Some(&theirs[0]), 5, ListOrder::Desc).await,
        None
    );
    assert_eq!(
        page(&*a, &t1, Some("resp_x"), 5, ListOrder::Desc).await,
        None
    );
    assert_eq!(
        page(&*a, "nobody", None, 5, ListOrder::Desc).await,
        Some((vec![], false))
    );

    // A state change on A is what B lists.
    let mut done = response(&mine[6], ResponseStatus::Completed);
    done.completed_at = Some(9);
    assert!(a.update_if_active(done).await.unwrap());
    let p = b
        .list_responses(&t1, None, 1, ListOrder::Desc)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.data[0].status, ResponseStatus::Completed);
    assert_eq!(p.data[0].completed_at, Some(9));

    // Deleted on B: gone from A's listing and from the index.
    assert!(!b.delete_response(&t2, &mine[3]).await.unwrap());
    assert!(b.delete_response(&t1, &mine[3]).await.unwrap());
    let without: Vec<String> = newest.iter().filter(|i| **i != mine[3]).cloned().collect();
    assert_eq!(all_pages(&stores, &t1, 2).await, without);
    let score: Option<f64> = raw(&a, redis::cmd("ZSCORE").arg(index_key(&t1)).arg(&mine[3])).await;
    assert_eq!(score, None);
    assert_eq!(
        page(&*a, &t1, Some(&mine[3]), 5, ListOrder::Desc).await,
        None
    );

    // A record that vanished behind the index's back (evicted, or a Cluster
    // delete whose index step failed) is skipped and dropped from the index.
    let gone = &mine[5];
    let rec_key = format!("spindle:{{{}}}:resp:{gone}", chain_tag(gone));
    let n: i64 = raw(&a, redis::cmd("DEL").arg(&rec_key)).await;
    assert_eq!(n, 1);
    let (got, more) = page(&*b, &t1, None, 2, ListOrder::Desc).await.unwrap();
    assert_eq!(got, vec![mine[6].clone(), mine[4].clone()]);
    assert!(more);
    let score: Option<f64> = raw(&a, redis::cmd("ZSCORE").arg(index_key(&t1)).arg(gone)).await;
    assert_eq!(score, None);
    let left: usize = raw(&a, redis::cmd("ZCARD").arg(index_key(&t1))).await;
    assert_eq!(left, 5);
}

#[tokio::test]
async fn two_stores_standalone() {
    let r = RedisServer::start();
    two_stores(&r.url()).await;
}

#[tokio::test]
async fn two_stores_cluster() {
    let c = RedisCluster::start();
    two_stores(&c.url()).await;
}

/// Entries past the TTL leave the index on the next write and on reads; the
/// index key's own TTL is refreshed by each write.
async fn ttl_trimming(url: &str) {
    let mut opts = test_options(url);
    opts.ttl = Duration::from_millis(1000);
    let s = Arc::new(RedisStore::connect(opts).await.unwrap());
    let t = format!("t-{}", new_id());
    let key = index_key(&t);
    let old = new_id();
    s.insert_response(record(&old, &t)).await.unwrap();
    let pttl: i64 = raw(&s, redis::cmd("PTTL").arg(&key)).await;
    assert!(pttl > 0 && pttl <= 1000, "{pttl}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The record expired; the write trims its entry.
    let new = new_id();
    s.insert_response(record(&new, &t)).await.unwrap();
    let ids: Vec<String> = raw(&s, redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1)).await;
    assert_eq!(ids, vec![new.clone()]);
    assert_eq!(
        page(&*s, &t, None, 10, ListOrder::Desc).await,
        Some((vec![new.clone()], false))
    );
    // Keep the index past its TTL: a read trims what expired.
    let _: i64 = raw(&s, redis::cmd("PERSIST").arg(&key)).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        page(&*s, &t, None, 10, ListOrder::Desc).await,
        Some((vec![], false))
    );
    let left: usize = raw(&s, redis::cmd("ZCARD").arg(&key)).await;
    assert_eq!(left, 0);
    assert_eq!(page(&*s, &t, Some(&new), 10, ListOrder::Desc).await, None);
}

#[tokio::test]
async fn ttl_trimming_standalone() {
    let r = RedisServer::start();
    ttl_trimming(&r.url()).await;
}

#[tokio::test]
async fn ttl_trimming_cluster() {
    let c = RedisCluster::start();
    ttl_trimming(&c.url()).await;
}
