//! Unit tests of the memory store.

use super::entries::ENTRY_OVERHEAD;
use super::*;
use crate::types::ResponseStatus;

fn rec(id: &str) -> ResponseRecord {
    // The test kit's fixture, parsed here: its `ResponseObject` is another crate instance.
    let r = serde_json::from_value(spindle_testkit::fixtures::response_json(id)).expect("fixture");
    ResponseRecord {
        response: r,
        input_items: vec![],
        context: vec![],
        chain_root: id.into(),
        owner: "t".into(),
        routing_key: String::new(),
    }
}

#[tokio::test]
async fn chain_logs_are_append_only_and_bounded() {
    let s = MemoryStore::new(3, Duration::from_secs(60));
    assert_eq!(s.append_turn("a", b"a0".to_vec()).await.unwrap(), 0);
    assert_eq!(s.append_turn("a", b"a1".to_vec()).await.unwrap(), 1);
    assert_eq!(s.append_turn("b", b"b0".to_vec()).await.unwrap(), 0);
    let got = s.chain_turns("a", &[1, 0, 7]).await.unwrap();
    assert_eq!(got, vec![Some(b"a1".to_vec()), Some(b"a0".to_vec()), None]);
    // A fourth entry is over the bound: the least recently extended chain goes.
    s.append_turn("b", b"b1".to_vec()).await.unwrap();
    assert_eq!(s.chain_turns("a", &[0]).await.unwrap(), vec![None]);
    // One chain alone over the bound loses its oldest entries, not its numbering.
    s.append_turn("b", b"b2".to_vec()).await.unwrap();
    assert_eq!(s.append_turn("b", b"b3".to_vec()).await.unwrap(), 3);
    let got = s.chain_turns("b", &[0, 1, 3]).await.unwrap();
    assert_eq!(got, vec![None, Some(b"b1".to_vec()), Some(b"b3".to_vec())]);
}

#[tokio::test]
async fn evicts_oldest_beyond_max() {
    let s = MemoryStore::new(2, Duration::from_secs(60));
    for id in ["a", "b", "c"] {
        s.insert_response(rec(id)).await.unwrap();
    }
    assert!(s.get_response("t", "a").await.unwrap().is_none());
    assert!(s.get_response("t", "b").await.unwrap().is_some());
    assert!(s.get_response("t", "c").await.unwrap().is_some());
}

#[tokio::test]
async fn bytes_are_bounded_across_kinds_oldest_first() {
    let one = {
        let s = MemoryStore::new(100, Duration::from_secs(60));
        s.insert_response(rec("r0")).await.unwrap();
        s.bytes()
    };
    let s = MemoryStore::new(100, Duration::from_secs(60)).with_max_bytes(3 * one + 100);
    let conv = Conversation {
        id: "c".into(),
        object: "conversation".into(),
        created_at: 0,
        metadata: BTreeMap::new(),
    };
    s.insert_conversation("t", conv, vec![serde_json::json!({"id": "i"})])
        .await
        .unwrap();
    for id in ["a", "b", "c", "d"] {
        s.insert_response(rec(id)).await.unwrap();
        assert!(s.bytes() <= 3 * one + 100, "{} bytes", s.bytes());
    }
    // The conversation was oldest, then "a".
    assert!(s.get_conversation("t", "c").await.unwrap().is_none());
    assert!(s.get_response("t", "a").await.unwrap().is_none());
    assert!(s.get_response("t", "d").await.unwrap().is_some());
    // Events count, and deleting gives every byte back.
    let before = s.bytes();
    s.append_event("d", 0, vec![b'x'; 50]).await.unwrap();
    assert_eq!(s.bytes(), before + 50 + EVENT_OVERHEAD);
    for id in ["b", "c", "d"] {
        s.delete_response("t", id).await.unwrap();
    }
    assert_eq!(s.bytes(), 0);
}

#[tokio::test]
async fn chain_log_bytes_are_counted_and_trimmed() {
    let s = MemoryStore::new(2, Duration::from_secs(60));
    for n in 0..5u8 {
        s.append_turn("a", vec![n; 100]).await.unwrap();
    }
    // Two entries kept (the count bound), each with its overhead.
    assert_eq!(s.bytes(), ENTRY_OVERHEAD + 2 * (100 + EVENT_OVERHEAD));
}

#[tokio::test]
async fn expires_after_ttl() {
    let s = MemoryStore::new(10, Duration::from_millis(20));
    s.insert_response(rec("a")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(40)).await;
    assert!(s.get_response("t", "a").await.unwrap().is_none());
}

#[tokio::test]
async fn terminal_state_is_final() {
    let s = MemoryStore::new(10, Duration::from_secs(60));
    s.insert_response(rec("a")).await.unwrap();
    let c = s.cancel_response("t", "a").await.unwrap().unwrap();
    assert_eq!(c.status, ResponseStatus::Cancelled);
    let mut done = rec("a").response;
    done.status = ResponseStatus::Completed;
    assert!(!s.update_if_active(done).await.unwrap());
    assert_eq!(
        s.response_status("a").await.unwrap(),
        Some(ResponseStatus::Cancelled)
    );
}

#[tokio::test]
async fn events_after_filters_by_sequence() {
    let s = MemoryStore::new(10, Duration::from_secs(60));
    s.insert_response(rec("a")).await.unwrap();
    let Subscription { status, mut events } = s.subscribe("a").await.unwrap().unwrap();
    for n in 0..5u64 {
        s.append_event("a", n, vec![b'0' + n as u8]).await.unwrap();
    }
    // Out of order or repeated numbers are not taken.
    s.append_event("a", 2, b"x".to_vec()).await.unwrap();
    assert!(events.has_changed().unwrap());
    assert!(
        !status.has_changed().unwrap(),
        "events do not wake status watchers"
    );
    events.mark_unchanged();
    let after = s.events_after("a", Some(2)).await.unwrap().unwrap();
    assert_eq!(
        after,
        vec![
            StoredEvent {
                seq: 3,
                bytes: b"3".to_vec()
            },
            StoredEvent {
                seq: 4,
                bytes: b"4".to_vec()
            }
        ]
    );
    assert_eq!(s.events_after("a", None).await.unwrap().unwrap().len(), 5);
    s.delete_response("t", "a").await.unwrap();
    assert!(events.changed().await.is_err());
}

fn owned(id: &str, owner: &str) -> ResponseRecord {
    ResponseRecord {
        owner: owner.into(),
        ..rec(id)
    }
}

/// The ids of a listing page, and its `has_more`.
async fn ids(
    s: &MemoryStore,
    tenant: &str,
    after: Option<&str>,
    limit: usize,
    order: ListOrder,
) -> Option<(Vec<String>, bool)> {
    let page = s
        .list_responses(tenant, after, limit, order)
        .await
        .unwrap()?;
    Some((page.data.into_iter().map(|r| r.id).collect(), page.has_more))
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn lists_a_tenants_responses_in_order_with_paging() {
    let s = MemoryStore::new(100, Duration::from_secs(60));
    for id in ["a", "b", "c", "d", "e"] {
        s.insert_response(owned(id, "t")).await.unwrap();
        s.insert_response(owned(&format!("x{id}"), "other"))
            .await
            .unwrap();
    }
    let desc = ListOrder::Desc;
    assert_eq!(
        ids(&s, "t", None, 2, desc).await,
        Some((strs(&["e", "d"]), true))
    );
    assert_eq!(
        ids(&s, "t", Some("d"), 2, desc).await,
        Some((strs(&["c", "b"]), true))
    );
    assert_eq!(
        ids(&s, "t", Some("b"), 2, desc).await,
        Some((strs(&["a"]), false))
    );
    assert_eq!(
        ids(&s, "t", Some("a"), 2, desc).await,
        Some((vec![], false))
    );
    assert_eq!(
        ids(&s, "t", None, 5, ListOrder::Asc).await,
        Some((strs(&["a", "b", "c", "d", "e"]), false))
    );
    assert_eq!(
        ids(&s, "t", Some("c"), 1, ListOrder::Asc).await,
        Some((strs(&["d"]), true))
    );
    // Another tenant's id is no cursor; a tenant with nothing has an empty list.
    assert_eq!(ids(&s, "t", Some("xa"), 2, desc).await, None);
    assert_eq!(ids(&s, "t", Some("nope"), 2, desc).await, None);
    assert_eq!(
        ids(&s, "nobody", None, 2, desc).await,
        Some((vec![], false))
    );
    assert_eq!(
        ids(&s, "other", None, 1, desc).await,
        Some((strs(&["xe"]), true))
    );
    // The objects listed are the stored ones, current status included.
    s.cancel_response("t", "e").await.unwrap();
    let page = s.list_responses("t", None, 1, desc).await.unwrap().unwrap();
    assert_eq!(page.data[0].status, ResponseStatus::Cancelled);
}

#[tokio::test]
async fn deleted_evicted_and_expired_responses_leave_the_listing() {
    let s = MemoryStore::new(3, Duration::from_secs(60));
    for id in ["a", "b", "c"] {
        s.insert_response(owned(id, "t")).await.unwrap();
    }
    assert!(s.delete_response("t", "b").await.unwrap());
    assert_eq!(
        ids(&s, "t", None, 10, ListOrder::Desc).await,
        Some((strs(&["c", "a"]), false))
    );
    // A deleted response is no cursor any more.
    assert_eq!(ids(&s, "t", Some("b"), 10, ListOrder::Desc).await, None);
    // Over the count bound: the oldest ("a") is evicted, from the index too.
    s.insert_response(owned("d", "t")).await.unwrap();
    s.insert_response(owned("e", "u")).await.unwrap();
    assert_eq!(
        ids(&s, "t", None, 10, ListOrder::Asc).await,
        Some((strs(&["c", "d"]), false))
    );
    // Replacing a record moves it to the end once.
    s.insert_response(owned("c", "t")).await.unwrap();
    assert_eq!(
        ids(&s, "t", None, 10, ListOrder::Asc).await,
        Some((strs(&["d", "c"]), false))
    );

    // Expired: gone from the listing without any other write.
    let s = MemoryStore::new(10, Duration::from_millis(30));
    s.insert_response(owned("old", "t")).await.unwrap();
    assert_eq!(
        ids(&s, "t", None, 10, ListOrder::Desc).await,
        Some((strs(&["old"]), false))
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        ids(&s, "t", None, 10, ListOrder::Desc).await,
        Some((vec![], false))
    );
    assert_eq!(ids(&s, "t", Some("old"), 10, ListOrder::Desc).await, None);
}

#[tokio::test]
async fn byte_shedding_updates_the_listing() {
    let one = {
        let s = MemoryStore::new(100, Duration::from_secs(60));
        s.insert_response(owned("r0", "t")).await.unwrap();
        s.bytes()
    };
    let s = MemoryStore::new(100, Duration::from_secs(60)).with_max_bytes(2 * one + 10);
    for id in ["a", "b", "c"] {
        s.insert_response(owned(id, "t")).await.unwrap();
    }
    assert_eq!(
        ids(&s, "t", None, 10, ListOrder::Desc).await,
        Some((strs(&["c", "b"]), false))
    );
}
