//! The Redis response store against real redis-server processes (standalone
//! and a 3-master cluster) started by the harness on free ports, plus the
//! store contract on the memory store and multi-replica API scenarios.

mod redis_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use spindle_router::store::{Appended, Conversation, Subscription, ANONYMOUS_TENANT};
use spindle_router::types::ResponseStatus;
use spindle_router::{MemoryStore, ResponseStore, RouterConfig};

use redis_support::*;
use spindle_testkit::fixtures::{record, response};

fn new_id() -> String {
    spindle_router::types::new_id("resp")
}

/// The behaviour every [`ResponseStore`] must have.
async fn contract(s: Arc<dyn ResponseStore>) {
    let (t1, t2) = ("tenant-1", "tenant-2");
    // insert / get / ownership
    let id = new_id();
    s.insert_response(record(&id, t1)).await.unwrap();
    let got = s.get_response(t1, &id).await.unwrap().unwrap();
    assert_eq!(got, record(&id, t1));
    assert!(s.get_response(t2, &id).await.unwrap().is_none());
    assert_eq!(
        s.response_status(&id).await.unwrap(),
        Some(ResponseStatus::InProgress)
    );
    // events
    let Subscription { status, mut events } = s.subscribe(&id).await.unwrap().unwrap();
    events.borrow_and_update();
    for n in 0..5u64 {
        s.append_event(&id, n, format!("event {n}").into_bytes())
            .await
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(2), events.changed())
        .await
        .unwrap()
        .unwrap();
    assert!(
        !status.has_changed().unwrap(),
        "appended events do not wake status watchers"
    );
    let all = s.events_after(&id, None).await.unwrap().unwrap();
    assert_eq!(all.len(), 5);
    let after = s.events_after(&id, Some(2)).await.unwrap().unwrap();
    let seqs: Vec<u64> = after.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![3, 4]);
    assert_eq!(after[0].bytes, b"event 3");
    assert!(s
        .events_after("resp_unknown", None)
        .await
        .unwrap()
        .is_none());
    // cancel: others can't; owner can; terminal is final
    assert!(s.cancel_response(t2, &id).await.unwrap().is_none());
    let c = s.cancel_response(t1, &id).await.unwrap().unwrap();
    assert_eq!(c.status, ResponseStatus::Cancelled);
    assert!(c.completed_at.is_some());
    let mut done = response(&id, ResponseStatus::Completed);
    done.completed_at = Some(5);
    assert!(!s.update_if_active(done.clone()).await.unwrap());
    let again = s.cancel_response(t1, &id).await.unwrap().unwrap();
    assert_eq!(again.status, ResponseStatus::Cancelled);
    // complete exactly once
    let id2 = new_id();
    s.insert_response(record(&id2, t1)).await.unwrap();
    let mut done2 = response(&id2, ResponseStatus::Completed);
    done2.completed_at = Some(7);
    assert!(s.update_if_active(done2.clone()).await.unwrap());
    assert!(!s.update_if_active(done2.clone()).await.unwrap());
    let got2 = s.get_response(t1, &id2).await.unwrap().unwrap();
    assert_eq!(got2.response.status, ResponseStatus::Completed);
    assert_eq!(got2.response.completed_at, Some(7));
    assert_eq!(got2.response.temperature, 0.7);
    // delete: only the owner; never revived
    assert!(!s.delete_response(t2, &id2).await.unwrap());
    let id3 = new_id();
    s.insert_response(record(&id3, t1)).await.unwrap();
    assert!(s.delete_response(t1, &id3).await.unwrap());
    assert!(!s.delete_response(t1, &id3).await.unwrap());
    assert!(!s
        .update_if_active(response(&id3, ResponseStatus::Completed))
        .await
        .unwrap());
    s.append_event(&id3, 0, b"late".to_vec()).await.unwrap();
    assert!(s.get_response(t1, &id3).await.unwrap().is_none());
    assert!(s.response_status(&id3).await.unwrap().is_none());
    assert!(s.events_after(&id3, None).await.unwrap().is_none());
    assert!(s.cancel_response(t1, &id3).await.unwrap().is_none());

    // conversations
    let cid = spindle_router::types::new_id("conv");
    let conv = Conversation {
        id: cid.clone(),
        object: "conversation".into(),
        created_at: 3,
        metadata: [("a".to_string(), "b".to_string())].into(),
    };
    let item = |n: &str| json!({"id": n, "type": "message", "role": "user", "content": []});
    s.insert_conversation(t1, conv.clone(), vec![item("i1"), item("i2")])
        .await
        .unwrap();
    assert_eq!(
        s.get_conversation(t1, &cid).await.unwrap(),
        Some(conv.clone())
    );
    assert!(s.get_conversation(t2, &cid).await.unwrap().is_none());
    assert!(s.conversation_items(t2, &cid).await.unwrap().is_none());
    let size = |n: &str| serde_json::to_vec(&item(n)).unwrap().len() as u64;
    let tail_bytes = |s: Arc<dyn ResponseStore>, t: &'static str, cid: String| async move {
        s.conversation_tail(t, &cid, 0)
            .await
            .unwrap()
            .unwrap()
            .bytes
    };
    assert_eq!(
        tail_bytes(s.clone(), t1, cid.clone()).await,
        size("i1") + size("i2")
    );
    assert_eq!(
        s.append_conversation_items(t2, &cid, vec![item("x")], u64::MAX)
            .await
            .unwrap(),
        Appended::Unknown
    );
    // The byte cap refuses the whole append, atomically.
    let full = size("i1") + size("i2") + size("i3") + size("i4");
    assert_eq!(
        s.append_conversation_items(t1, &cid, vec![item("i3"), item("i4")], full - 1)
            .await
            .unwrap(),
        Appended::Full { bytes: full }
    );
    assert_eq!(
        s.append_conversation_items(t1, &cid, vec![item("i3")], full - 1)
            .await
            .unwrap(),
        Appended::Done
    );
    let items = s.conversation_items(t1, &cid).await.unwrap().unwrap();
    let ids: Vec<&str> = items.iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["i1", "i2", "i3"]);
    assert_eq!(
        s.delete_conversation_item(t1, &cid, "i2").await.unwrap(),
        Some(true)
    );
    // Deleting gives its bytes back.
    assert_eq!(
        tail_bytes(s.clone(), t1, cid.clone()).await,
        size("i1") + size("i3")
    );
    assert_eq!(
        s.delete_conversation_item(t1, &cid, "i2").await.unwrap(),
        Some(false)
    );
    assert_eq!(
        s.delete_conversation_item(t2, &cid, "i1").await.unwrap(),
        None
    );
    assert_eq!(
        s.conversation_items(t1, &cid).await.unwrap().unwrap().len(),
        2
    );
    let meta = [("k".to_string(), "v".to_string())].into();
    assert!(s
        .update_conversation(t2, &cid, meta)
        .await
        .unwrap()
        .is_none());
    let meta: std::collections::BTreeMap<String, String> =
        [("k".to_string(), "v".to_string())].into();
    let up = s
        .update_conversation(t1, &cid, meta.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(up.metadata, meta);
    assert_eq!(
        s.get_conversation(t1, &cid)
            .await
            .unwrap()
            .unwrap()
            .metadata,
        meta
    );
    assert!(!s.delete_conversation(t2, &cid).await.unwrap());
    assert!(s.delete_conversation(t1, &cid).await.unwrap());
    assert!(s.get_conversation(t1, &cid).await.unwrap().is_none());
}

#[tokio::test]
async fn contract_memory() {
    contract(Arc::new(MemoryStore::default())).await;
}

#[tokio::test]
async fn contract_redis_standalone() {
    let r = RedisServer::start();
    contract(redis_store(&r.url()).await).await;
}

#[tokio::test]
async fn contract_redis_cluster() {
    let c = RedisCluster::start();
    contract(redis_store(&c.url()).await).await;
    // A single seed is detected as a cluster too.
    contract(redis_store(&c.nodes[1].url()).await).await;
}

async fn wait_status(c: &Client, id: &str, want: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (code, body) = c.get(&format!("/v1/responses/{id}")).await;
        assert_eq!(code, 200, "{body}");
        if body["status"] == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "status stayed {} (wanted {want})",
            body["status"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two router replicas sharing one Redis: create on A; read, stream, cancel
/// and delete on B.
async fn two_replicas(url: &str) {
    let (a, _) = serve(redis_store(url).await, RouterConfig::default()).await;
    let (b, _) = serve(redis_store(url).await, RouterConfig::default()).await;
    let (a, b) = (Client::new(&a), Client::new(&b));

    // a plain stored response, then a chain continued on the other replica
    let (code, r1) = a
        .post(
            "/v1/responses",
            json!({"input": "one", "model": "fake-model"}),
        )
        .await;
    assert_eq!(code, 200, "{r1}");
    let id1 = r1["id"].as_str().unwrap();
    let (code, got) = b.get(&format!("/v1/responses/{id1}")).await;
    assert_eq!(code, 200);
    assert_eq!(got["output"][0]["content"][0]["text"], "echo:one");
    let (code, r2) = b
        .post(
            "/v1/responses",
            json!({"input": "two", "previous_response_id": id1}),
        )
        .await;
    assert_eq!(code, 200, "{r2}");
    let (_, items) = a
        .get(&format!(
            "/v1/responses/{}/input_items",
            r2["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(items["data"][0]["content"][0]["text"], "two");

    // background on A, followed live on B from sequence 2
    let (code, bg) = a
        .post(
            "/v1/responses",
            json!({"input": "SLOW", "background": true}),
        )
        .await;
    assert_eq!(code, 200, "{bg}");
    let id = bg["id"].as_str().unwrap().to_owned();
    let events = b
        .get_sse(&format!("/v1/responses/{id}?stream=true&starting_after=2"))
        .await;
    assert_eq!(events[0]["sequence_number"], 3);
    for w in events.windows(2) {
        assert_eq!(
            w[1]["sequence_number"].as_u64().unwrap(),
            w[0]["sequence_number"].as_u64().unwrap() + 1
        );
    }
    assert_eq!(events.last().unwrap()["type"], "response.completed");
    wait_status(&b, &id, "completed", Duration::from_secs(1)).await;

    // cancel on B reaches A's generation within a second
    let (_, bg) = a
        .post(
            "/v1/responses",
            json!({"input": "HANG", "background": true}),
        )
        .await;
    let id = bg["id"].as_str().unwrap().to_owned();
    wait_status(&b, &id, "in_progress", Duration::from_secs(2)).await;
    let t = Instant::now();
    let (code, c) = b
        .post(&format!("/v1/responses/{id}/cancel"), json!({}))
        .await;
    assert_eq!(code, 200, "{c}");
    assert_eq!(c["status"], "cancelled");
    wait_status(&a, &id, "cancelled", Duration::from_secs(1)).await;
    assert!(t.elapsed() < Duration::from_secs(1));

    // delete on B: gone everywhere
    let (code, _) = b.delete(&format!("/v1/responses/{id}")).await;
    assert_eq!(code, 200);
    let (code, _) = a.get(&format!("/v1/responses/{id}")).await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn two_replicas_standalone() {
    let r = RedisServer::start();
    two_replicas(&r.url()).await;
}

#[tokio::test]
async fn two_replicas_cluster() {
    let c = RedisCluster::start();
    two_replicas(&c.url()).await;
}

/// Replica A dies mid-generation: B's reaper fails the response after the lease.
#[test]
fn dead_replica_response_fails_after_lease() {
    let r = RedisServer::start();
    let url = r.url();
    // Replica A on its own runtime, so dropping the runtime kills all its tasks.
    let rt_a = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let url_a = url.clone();
    let base_a = rt_a.block_on(async move {
        serve(redis_store(&url_a).await, RouterConfig::default())
            .await
            .0
    });
    let rt_b = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt_b.block_on(async move {
        let (b, _) = serve(redis_store(&url).await, RouterConfig::default()).await;
        let b = Client::new(&b);
        let a = Client::new(&base_a);
        let (code, bg) = a
            .post(
                "/v1/responses",
                json!({"input": "HANG", "background": true}),
            )
            .await;
        assert_eq!(code, 200);
        let id = bg["id"].as_str().unwrap().to_owned();
        wait_status(&b, &id, "in_progress", Duration::from_secs(2)).await;
        // Still alive after several lease periods while A heartbeats.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        wait_status(&b, &id, "in_progress", Duration::from_secs(1)).await;
        let t = Instant::now();
        rt_a.shutdown_background();
        let failed = wait_status(&b, &id, "failed", Duration::from_secs(6)).await;
        eprintln!("reaped after {:?}", t.elapsed());
        assert_eq!(failed["error"]["code"], "server_error");
        assert_eq!(
            failed["error"]["message"],
            "generation lost: router replica stopped"
        );
        // Followers see the end of the stream.
        let events = b.get_sse(&format!("/v1/responses/{id}?stream=true")).await;
        assert_eq!(events.last().unwrap()["type"], "response.failed");
    });
}

/// Redis restarted mid-load (AOF): 503 during the outage, `store:false`
/// keeps working, service resumes by itself, no completed record lost.
#[tokio::test]
async fn redis_restart_mid_load() {
    let mut r = RedisServer::start_aof();
    let (base, _) = serve(redis_store(&r.url()).await, RouterConfig::default()).await;
    let c = Client::new(&base);
    let mut completed = Vec::new();
    for i in 0..30 {
        let (code, body) = c
            .post("/v1/responses", json!({"input": format!("m{i}")}))
            .await;
        assert_eq!(code, 200, "{body}");
        completed.push(body["id"].as_str().unwrap().to_owned());
    }
    r.stop();
    let t = Instant::now();
    let (code, body) = c.post("/v1/responses", json!({"input": "down"})).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["error"]["type"], "server_error");
    assert_eq!(body["error"]["code"], "service_unavailable");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("response store is unavailable"));
    let (code, _) = c.get(&format!("/v1/responses/{}", completed[0])).await;
    assert_eq!(code, 503);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let (code, body) = c
        .post("/v1/responses", json!({"input": "nostore", "store": false}))
        .await;
    assert_eq!(code, 200, "{body}");
    r.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, body) = c.post("/v1/responses", json!({"input": "again"})).await;
        if code == 200 {
            completed.push(body["id"].as_str().unwrap().to_owned());
            break;
        }
        assert_eq!(code, 503);
        assert!(Instant::now() < deadline, "service did not resume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in &completed {
        let (code, body) = c.get(&format!("/v1/responses/{id}")).await;
        assert_eq!(code, 200, "{id} lost");
        assert_eq!(body["status"], "completed");
    }
}

/// 200 concurrent chains of 4 turns each on the cluster: every turn sees
/// exactly its own chain's history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_chains_cluster() {
    let cl = RedisCluster::start();
    let store = redis_store(&cl.url()).await;
    let (a, _) = serve(store.clone(), RouterConfig::default()).await;
    let (b, _) = serve(redis_store(&cl.url()).await, RouterConfig::default()).await;
    let mut tasks = Vec::new();
    for chain in 0..200 {
        let (a, b) = (Client::new(&a), Client::new(&b));
        tasks.push(tokio::spawn(async move {
            let mut prev: Option<String> = None;
            for turn in 0..4 {
                let c = if turn % 2 == 0 { &a } else { &b };
                let mut body = json!({"input": format!("c{chain}t{turn}")});
                if let Some(p) = &prev {
                    body["previous_response_id"] = json!(p);
                }
                let (code, r) = c.post("/v1/responses", body).await;
                assert_eq!(code, 200, "{r}");
                assert_eq!(
                    r["output"][0]["content"][0]["text"],
                    format!("echo:c{chain}t{turn}")
                );
                prev = Some(r["id"].as_str().unwrap().to_owned());
            }
            prev.unwrap()
        }));
    }
    for (chain, t) in tasks.into_iter().enumerate() {
        let last = t.await.unwrap();
        let rec = store
            .get_response(ANONYMOUS_TENANT, &last)
            .await
            .unwrap()
            .unwrap();
        let history = spindle_router::chain::items(&*store, &rec.chain_root, &rec.context)
            .await
            .unwrap();
        let texts: Vec<String> = history
            .iter()
            .chain(rec.input_items.iter())
            .map(|i| i["content"][0]["text"].as_str().unwrap().to_owned())
            .collect();
        let want: Vec<String> = (0..4)
            .flat_map(|t| {
                let m = format!("c{chain}t{t}");
                if t < 3 {
                    vec![m.clone(), format!("echo:{m}")]
                } else {
                    vec![m]
                }
            })
            .collect();
        assert_eq!(texts, want);
    }
}

/// Tenants (API keys) never see each other's objects; no key → 401.
async fn tenants(store: Arc<dyn ResponseStore>) {
    let config = RouterConfig {
        api_keys: spindle_proto::auth::Secrets(vec!["key-one".into(), "key-two".into()]),
        ..RouterConfig::default()
    };
    let (base, _) = serve(store, config).await;
    let one = Client::with_key(&base, "key-one");
    let two = Client::with_key(&base, "key-two");
    let (code, body) = Client::new(&base).get("/v1/models").await;
    assert_eq!(code, 401);
    assert_eq!(body["error"]["code"], "invalid_api_key");
    let (code, _) = Client::with_key(&base, "nope").get("/v1/models").await;
    assert_eq!(code, 401);
    let (code, r) = one
        .post("/v1/responses", json!({"input": "x", "background": true}))
        .await;
    assert_eq!(code, 200);
    let id = r["id"].as_str().unwrap();
    wait_status(&one, id, "completed", Duration::from_secs(3)).await;
    for path in [
        format!("/v1/responses/{id}"),
        format!("/v1/responses/{id}/input_items"),
        format!("/v1/responses/{id}?stream=true"),
    ] {
        assert_eq!(two.get(&path).await.0, 404, "{path}");
    }
    assert_eq!(
        two.post(&format!("/v1/responses/{id}/cancel"), json!({}))
            .await
            .0,
        404
    );
    let (code, _) = two
        .post(
            "/v1/responses",
            json!({"input": "y", "previous_response_id": id}),
        )
        .await;
    assert_eq!(code, 400);
    assert_eq!(two.delete(&format!("/v1/responses/{id}")).await.0, 404);
    assert_eq!(one.get(&format!("/v1/responses/{id}")).await.0, 200);
    let (code, conv) = one.post("/v1/conversations", json!({"items": []})).await;
    assert_eq!(code, 200);
    let cid = conv["id"].as_str().unwrap();
    assert_eq!(two.get(&format!("/v1/conversations/{cid}")).await.0, 404);
    assert_eq!(
        two.get(&format!("/v1/conversations/{cid}/items")).await.0,
        404
    );
    assert_eq!(
        two.post(&format!("/v1/conversations/{cid}"), json!({"metadata": {}}))
            .await
            .0,
        404
    );
    let (code, _) = two
        .post("/v1/responses", json!({"input": "z", "conversation": cid}))
        .await;
    assert_eq!(code, 404);
    assert_eq!(two.delete(&format!("/v1/conversations/{cid}")).await.0, 404);
    assert_eq!(one.get(&format!("/v1/conversations/{cid}")).await.0, 200);
    assert_eq!(one.delete(&format!("/v1/conversations/{cid}")).await.0, 200);
}

#[tokio::test]
async fn tenant_isolation_memory() {
    tenants(Arc::new(MemoryStore::default())).await;
}

#[tokio::test]
async fn tenant_isolation_redis() {
    let r = RedisServer::start();
    tenants(redis_store(&r.url()).await).await;
}
