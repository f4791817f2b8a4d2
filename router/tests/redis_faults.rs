//! The Redis store under faults, with real redis-server processes (AOF): a
//! response that finishes while Redis is down is written once it is back
//! (its lease held meanwhile, so no reaper fails it), and one dropped from a
//! full backlog is ended by the reaper with the text its event log holds.

mod redis_support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use spindle_router::RouterConfig;

use redis_support::*;

/// GET the response until it is terminal.
async fn wait_terminal(c: &Client, id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (code, body) = c.get(&format!("/v1/responses/{id}")).await;
        if code == 200 && !matches!(body["status"].as_str(), Some("queued" | "in_progress")) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "not terminal in time: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn output_text(v: &Value) -> &str {
    v["output"][0]["content"][0]["text"].as_str().unwrap_or("")
}

/// The stored stream from the start: numbered 0, 1, 2, … with one
/// terminal event, last; returns the text of its deltas.
async fn replayed_text(c: &Client, id: &str) -> (String, Value) {
    let events = c.get_sse(&format!("/v1/responses/{id}?stream=true")).await;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["sequence_number"], i as u64, "gap or repeat at {i}: {e}");
    }
    let terminal: Vec<&Value> = events
        .iter()
        .filter(|e| {
            matches!(
                e["type"].as_str(),
                Some("response.completed" | "response.incomplete" | "response.failed")
            )
        })
        .collect();
    assert_eq!(terminal.len(), 1, "exactly one terminal event");
    let last = events.last().cloned().unwrap_or_default();
    assert_eq!(&last, terminal[0], "the terminal event is last");
    let text = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .filter_map(|e| e["delta"].as_str())
        .collect();
    (text, last)
}

/// Start a background response; its id.
async fn background(c: &Client, input: &str) -> String {
    let (code, bg) = c
        .post("/v1/responses", json!({"input": input, "background": true}))
        .await;
    assert_eq!(code, 200, "{bg}");
    bg["id"].as_str().unwrap().to_owned()
}

fn slow_text() -> String {
    (0..200).map(|i| format!("t{i} ")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_that_finishes_while_redis_is_down_is_written_when_it_is_back() {
    let mut r = RedisServer::start_aof();
    let (base, _) = serve(redis_store(&r.url()).await, RouterConfig::default()).await;
    let c = Client::new(&base);
    let id = background(&c, "SLOW").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    r.stop();
    // SLOW streams for 4 s: it ends during the outage, which outlasts the
    // lease (1.5 s), so only a held lease keeps reapers away afterwards.
    tokio::time::sleep(Duration::from_secs(5)).await;
    r.restart();
    let done = wait_terminal(&c, &id, Duration::from_secs(10)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(output_text(&done), slow_text());
    let (streamed, last) = replayed_text(&c, &id).await;
    assert_eq!(streamed, slow_text(), "no event lost during the outage");
    assert_eq!(last["type"], "response.completed");
    // The lease is dropped once the final state is written.
    let deadline = Instant::now() + Duration::from_secs(3);
    while !cli(r.port, &["ZSCORE", "spindle:leases", &id])
        .trim()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "lease still held");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_state_dropped_from_a_full_backlog_is_reaped_with_its_logged_text() {
    let mut r = RedisServer::start_aof();
    let config = RouterConfig {
        store_backlog_max: 1,
        ..RouterConfig::default()
    };
    let (base, _) = serve(redis_store(&r.url()).await, config).await;
    let c = Client::new(&base);
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(background(&c, "SLOW").await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    r.stop();
    tokio::time::sleep(Duration::from_secs(5)).await;
    r.restart();
    // One final state fitted in the backlog; the other was dropped, its
    // lease released, and the reaper ended it from its event log.
    let mut statuses = Vec::new();
    for id in &ids {
        let body = wait_terminal(&c, id, Duration::from_secs(10)).await;
        let (streamed, last) = replayed_text(&c, id).await;
        assert_eq!(output_text(&body), streamed, "stored output = logged text");
        assert_eq!(last["response"]["status"], body["status"]);
        if body["status"] == "failed" {
            assert!(!streamed.is_empty(), "text logged before the outage kept");
            assert!(slow_text().starts_with(&streamed));
            assert_eq!(
                body["error"]["message"],
                "generation lost: router replica stopped"
            );
            assert!(body["usage"]["output_tokens"].as_u64().unwrap() > 0);
        } else {
            assert_eq!(output_text(&body), slow_text());
        }
        statuses.push(body["status"].as_str().unwrap().to_owned());
    }
    statuses.sort();
    assert_eq!(statuses, ["completed", "failed"]);
}

#[tokio::test]
async fn a_chain_never_continues_from_an_unfinished_response() {
    let r = RedisServer::start();
    let (base, _) = serve(redis_store(&r.url()).await, RouterConfig::default()).await;
    let c = Client::new(&base);
    let id = &background(&c, "HANG").await;
    let (code, body) = c
        .post(
            "/v1/responses",
            json!({"input": "next", "previous_response_id": id}),
        )
        .await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["param"], "previous_response_id");
    assert_eq!(body["error"]["code"], "previous_response_not_finished");
    let (code, _) = c
        .post(&format!("/v1/responses/{id}/cancel"), json!({}))
        .await;
    assert_eq!(code, 200);
}

/// The same with a second replica, whose reaper must not fail the response
/// in the moment after Redis is back, before its owner renewed the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replica_does_not_reap_a_response_whose_owner_lives() {
    let mut r = RedisServer::start_aof();
    let (a, _) = serve(redis_store(&r.url()).await, RouterConfig::default()).await;
    let (b, _) = serve(redis_store(&r.url()).await, RouterConfig::default()).await;
    let (a, b) = (Client::new(&a), Client::new(&b));
    let id = background(&a, "SLOW").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    r.stop();
    tokio::time::sleep(Duration::from_secs(5)).await;
    r.restart();
    let done = wait_terminal(&b, &id, Duration::from_secs(10)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(output_text(&done), slow_text());
}
