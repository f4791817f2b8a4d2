//! WebSocket mode of the Responses API (`GET /v1/responses` upgraded):
//! the SSE events as text messages, one response at a time, connection-
//! local `store:false` chains with eviction, stored chains across
//! reconnects, auth on the upgrade, refused transport fields, the queue
//! cap, the lifetime limit and draining.

use crate::support::*;
use futures::SinkExt;
use spindle_proto::auth::Secrets;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(s: &Server, key: Option<&str>) -> Result<Ws, WsError> {
    let url = format!("{}/v1/responses", s.base.replacen("http://", "ws://", 1));
    let mut req = url.into_client_request().unwrap();
    if let Some(k) = key {
        req.headers_mut()
            .insert("authorization", format!("Bearer {k}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

async fn send(ws: &mut Ws, body: Value) {
    ws.send(Message::text(body.to_string())).await.unwrap();
}

fn create(fields: Value) -> Value {
    let mut body = json!({"type": "response.create", "input": "hi"});
    for (k, v) in fields.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// The next JSON message; `None` once the server closed.
async fn next(ws: &mut Ws) -> Option<Value> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a message within 20 s");
        match m {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(other)) => panic!("unexpected message {other:?}"),
        }
    }
}

/// An error envelope (not a stream event): it has a `status`.
fn is_envelope(v: &Value) -> bool {
    v["type"] == "error" && v.get("status").is_some()
}

/// One response's events up to its terminal one, or one error envelope.
async fn turn(ws: &mut Ws) -> Result<Vec<Value>, Value> {
    let mut events = Vec::new();
    loop {
        let v = next(ws).await.expect("the server closed mid-response");
        if is_envelope(&v) {
            assert!(events.is_empty(), "an envelope inside a response: {v}");
            validate_schema(&schema_doc(), "WebSocketErrorEvent", &v);
            return Err(v);
        }
        let terminal = matches!(
            v["type"].as_str(),
            Some("response.completed" | "response.incomplete" | "response.failed")
        );
        events.push(v);
        if terminal {
            return Ok(events);
        }
    }
}

/// Checks one response's events as the SSE tests do; returns the final response.
fn check_turn(events: &[Value]) -> Value {
    let named: Vec<_> = events
        .iter()
        .map(|e| (e["type"].as_str().map(str::to_owned), Some(e.clone())))
        .collect();
    check_events(&named);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["sequence_number"], i as u64, "{e}");
    }
    assert_eq!(events[0]["type"], "response.created");
    let last = events.last().unwrap();
    let terminals = events
        .iter()
        .filter(|e| {
            matches!(
                e["type"].as_str(),
                Some("response.completed" | "response.incomplete" | "response.failed")
            )
        })
        .count();
    assert_eq!(terminals, 1, "one terminal event");
    check_response(&last["response"]);
    last["response"].clone()
}

fn envelope_code(e: &Value) -> &str {
    e["error"]["code"].as_str().unwrap()
}

#[tokio::test]
async fn sequential_responses_carry_the_sse_events() {
    let s = server().await;
    let sse = s
        .post_sse("/v1/responses", json!({"input": "hi", "stream": true}))
        .await;
    let sse_types: Vec<String> = types_of(&sse)
        .into_iter()
        .filter(|t| t != "[DONE]")
        .collect();
    let mut ws = open(&s, None).await.unwrap();
    // Both sent at once: the second waits for the first.
    send(&mut ws, create(json!({}))).await;
    send(&mut ws, create(json!({"input": "again"}))).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let events = turn(&mut ws).await.unwrap();
        let types: Vec<String> = events
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(types, sse_types);
        let resp = check_turn(&events);
        assert_eq!(resp["status"], "completed");
        assert_eq!(resp["output"][0]["content"][0]["text"], FULL);
        ids.push(resp["id"].as_str().unwrap().to_owned());
    }
    assert_ne!(ids[0], ids[1]);
    // Stored by default, as over HTTP.
    let (st, r) = s.get(&format!("/v1/responses/{}", ids[1])).await;
    assert_eq!(st, 200, "{r}");
}

#[tokio::test]
async fn store_false_chains_continue_on_the_connection_and_failures_evict() {
    let s = server().await;
    let mut ws = open(&s, None).await.unwrap();
    send(&mut ws, create(json!({"input": "first", "store": false}))).await;
    let r1 = check_turn(&turn(&mut ws).await.unwrap());
    let id1 = r1["id"].as_str().unwrap().to_owned();
    // Not in the store: HTTP cannot continue it, the connection can.
    let (st, e) = s
        .post(
            "/v1/responses",
            json!({"input": "x", "previous_response_id": id1}),
        )
        .await;
    assert_error(st, &e, 400, None, Some("previous_response_not_found"));
    send(
        &mut ws,
        create(json!({"input": "second", "store": false, "previous_response_id": id1})),
    )
    .await;
    let r2 = check_turn(&turn(&mut ws).await.unwrap());
    assert_eq!(r2["previous_response_id"], id1.as_str());
    let sent = s.last_messages();
    let texts: Vec<&str> = sent.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts, ["first", FULL, "second"], "{sent:?}");
    let id2 = r2["id"].as_str().unwrap().to_owned();

    // A follow-up refused by validation evicts its previous response.
    send(
        &mut ws,
        create(json!({"store": false, "previous_response_id": id2, "temperature": 5})),
    )
    .await;
    let e = turn(&mut ws).await.unwrap_err();
    assert_eq!(e["status"], 400);
    assert_eq!(e["error"]["param"], "temperature");
    send(
        &mut ws,
        create(json!({"store": false, "previous_response_id": id2})),
    )
    .await;
    let e = turn(&mut ws).await.unwrap_err();
    assert_eq!(envelope_code(&e), "previous_response_not_found");
    assert_eq!(e["error"]["param"], "previous_response_id");

    // One that fails during generation does too.
    send(&mut ws, create(json!({"input": "one", "store": false}))).await;
    let r3 = check_turn(&turn(&mut ws).await.unwrap());
    let id3 = r3["id"].as_str().unwrap().to_owned();
    send(
        &mut ws,
        create(json!({"input": "FAIL", "store": false, "previous_response_id": id3})),
    )
    .await;
    let failed = check_turn(&turn(&mut ws).await.unwrap());
    assert_eq!(failed["status"], "failed");
    send(
        &mut ws,
        create(json!({"store": false, "previous_response_id": id3})),
    )
    .await;
    let e = turn(&mut ws).await.unwrap_err();
    assert_eq!(envelope_code(&e), "previous_response_not_found");
}

#[tokio::test]
async fn stored_chains_continue_across_connections() {
    let s = server().await;
    let mut ws = open(&s, None).await.unwrap();
    send(&mut ws, create(json!({"input": "remember"}))).await;
    let r1 = check_turn(&turn(&mut ws).await.unwrap());
    let id1 = r1["id"].as_str().unwrap().to_owned();
    // A store:false follow-up on the same socket, then a new socket.
    send(
        &mut ws,
        create(json!({"input": "local", "store": false, "previous_response_id": id1})),
    )
    .await;
    let local = check_turn(&turn(&mut ws).await.unwrap());
    ws.close(None).await.unwrap();
    let mut ws = open(&s, None).await.unwrap();
    // The store:false one lived only on the closed connection.
    send(
        &mut ws,
        create(json!({"previous_response_id": local["id"]})),
    )
    .await;
    let e = turn(&mut ws).await.unwrap_err();
    assert_eq!(envelope_code(&e), "previous_response_not_found");
    send(
        &mut ws,
        create(json!({"input": "recall", "previous_response_id": id1})),
    )
    .await;
    let r2 = check_turn(&turn(&mut ws).await.unwrap());
    assert_eq!(r2["status"], "completed");
    let sent = s.last_messages();
    let texts: Vec<&str> = sent.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts, ["remember", FULL, "recall"], "{sent:?}");
    // And over HTTP too: the stored follow-up's chain is in the store.
    let (st, r3) = s
        .post(
            "/v1/responses",
            json!({"input": "http", "previous_response_id": r2["id"]}),
        )
        .await;
    assert_eq!(st, 200, "{r3}");
    let sent = s.last_messages();
    assert_eq!(sent.len(), 5, "{sent:?}");
}

#[tokio::test]
async fn a_stored_follow_up_of_a_connection_chain_is_written_to_the_store() {
    let s = server().await;
    let mut ws = open(&s, None).await.unwrap();
    send(&mut ws, create(json!({"input": "a", "store": false}))).await;
    let r1 = check_turn(&turn(&mut ws).await.unwrap());
    send(
        &mut ws,
        create(json!({"input": "b", "store": true, "previous_response_id": r1["id"]})),
    )
    .await;
    let r2 = check_turn(&turn(&mut ws).await.unwrap());
    ws.close(None).await.unwrap();
    let (st, r3) = s
        .post(
            "/v1/responses",
            json!({"input": "c", "previous_response_id": r2["id"]}),
        )
        .await;
    assert_eq!(st, 200, "{r3}");
    let sent = s.last_messages();
    let texts: Vec<&str> = sent.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts, ["a", FULL, "b", FULL, "c"], "{sent:?}");
}

#[tokio::test]
async fn the_upgrade_needs_a_key_when_keys_are_set() {
    let s = server_with(RouterConfig {
        api_keys: Secrets(vec!["sk-ws".into()]),
        ..RouterConfig::default()
    })
    .await;
    for key in [None, Some("wrong")] {
        match open(&s, key).await {
            Err(WsError::Http(resp)) => {
                assert_eq!(resp.status(), 401);
                let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
                assert_eq!(body["error"]["code"], "invalid_api_key");
            }
            other => panic!("expected 401, got {:?}", other.map(|_| ())),
        }
    }
    let mut ws = open(&s, Some("sk-ws")).await.unwrap();
    send(&mut ws, create(json!({}))).await;
    let r = check_turn(&turn(&mut ws).await.unwrap());
    assert_eq!(r["status"], "completed");
    // A plain GET on the same path is the listing, behind the same key.
    let (st, list) = s
        .send(
            s.http
                .get(format!("{}/v1/responses", s.base))
                .bearer_auth("sk-ws"),
        )
        .await;
    assert_eq!(st, 200, "{list}");
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["id"], r["id"]);
    let (st, e) = s.send(s.http.get(format!("{}/v1/responses", s.base))).await;
    assert_error(st, &e, 401, None, Some("invalid_api_key"));
}

#[tokio::test]
async fn transport_fields_and_unknown_messages_are_refused() {
    let s = server().await;
    let mut ws = open(&s, None).await.unwrap();
    for (field, value) in [
        ("stream", json!(true)),
        ("stream_options", json!({"include_obfuscation": false})),
        ("background", json!(true)),
    ] {
        send(&mut ws, create(json!({ field: value }))).await;
        let e = turn(&mut ws).await.unwrap_err();
        assert_eq!(e["status"], 400, "{e}");
        assert_eq!(e["error"]["param"], field, "{e}");
    }
    send(&mut ws, json!({"type": "response.cancel"})).await;
    let e = turn(&mut ws).await.unwrap_err();
    assert_eq!(envelope_code(&e), "unknown_message_type");
    ws.send(Message::text("{not json")).await.unwrap();
    let e = turn(&mut ws).await.unwrap_err();
    assert_eq!(e["status"], 400);
    // The connection still works.
    send(&mut ws, create(json!({}))).await;
    assert_eq!(
        check_turn(&turn(&mut ws).await.unwrap())["status"],
        "completed"
    );
    assert!(
        s.gen.requests().len() == 1,
        "refused messages never generate"
    );
}

#[tokio::test]
async fn the_queue_is_bounded() {
    let s = server().await;
    let mut ws = open(&s, None).await.unwrap();
    send(&mut ws, create(json!({"input": "SLOW"}))).await;
    let extra = spindle_router::responses::websocket::QUEUE + 4;
    for _ in 0..extra {
        send(&mut ws, create(json!({}))).await;
    }
    let mut refused = 0;
    let mut completed = 0;
    while completed + refused < extra + 1 {
        let v = next(&mut ws).await.expect("open");
        if is_envelope(&v) {
            assert_eq!(envelope_code(&v), "too_many_queued_messages", "{v}");
            refused += 1;
        } else if v["type"] == "response.completed" {
            completed += 1;
        }
    }
    assert!(refused >= 3, "{refused} refused, {completed} completed");
}

#[tokio::test]
async fn the_connection_ends_at_its_lifetime_after_the_response_in_flight() {
    let s = server_with(RouterConfig {
        websocket_max_lifetime_secs: 1,
        ..RouterConfig::default()
    })
    .await;
    // Idle: the limit comes at about a second.
    let mut ws = open(&s, None).await.unwrap();
    let started = std::time::Instant::now();
    let e = next(&mut ws).await.expect("the limit error");
    assert!(is_envelope(&e), "{e}");
    assert_eq!(envelope_code(&e), "websocket_connection_limit_reached");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(next(&mut ws).await.is_none(), "closed after the error");
    // Busy: a response longer than the lifetime finishes first.
    let mut ws = open(&s, None).await.unwrap();
    send(&mut ws, create(json!({"input": "SLOW"}))).await;
    let events = turn(&mut ws).await.unwrap();
    assert_eq!(check_turn(&events)["status"], "completed");
    let e = next(&mut ws).await.expect("the limit error");
    assert_eq!(envelope_code(&e), "websocket_connection_limit_reached");
    assert!(next(&mut ws).await.is_none());
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cancelled_and_closed() {
    // Far more than the outgoing buffer and the sockets' buffers hold.
    let delta = "x".repeat(2048);
    let gen = Arc::new(FakeGenerator::builder().deltas(vec![delta; 20_000]).build());
    let config = RouterConfig::default();
    let store = Arc::new(MemoryStore::new(100, Duration::from_secs(60)));
    let (base, _task) = spindle_testkit::serve::serve(app(gen.clone(), store, &config))
        .await
        .unwrap();
    let s = Server {
        base,
        http: reqwest::Client::new(),
        gen: gen.clone(),
    };
    let mut ws = open(&s, None).await.unwrap();
    send(&mut ws, create(json!({"store": false}))).await;
    // Not reading: the router cancels the generation.
    let mut waited = 0;
    while gen.dropped_early() == 0 {
        assert!(waited < 200, "the generation was never cancelled");
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    // What was buffered arrives, then the close; never a terminal event.
    let mut events = 0;
    while let Some(v) = next(&mut ws).await {
        assert!(
            !v["type"]
                .as_str()
                .unwrap()
                .starts_with("response.completed"),
            "{v}"
        );
        events += 1;
    }
    assert!(events > 0 && events < 20_000, "{events}");
}

#[tokio::test]
async fn draining_closes_idle_connections_after_the_response_in_flight() {
    let lifecycle = Arc::new(spindle_router::Lifecycle::default());
    let config = RouterConfig::default();
    let store = Arc::new(MemoryStore::new(
        config.store_max_records,
        Duration::from_secs(config.store_ttl_secs),
    ));
    let gen = Arc::new(FakeGenerator::default());
    let router = spindle_router::app_with_lifecycle(gen.clone(), store, &config, lifecycle.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let s = Server {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        gen,
    };
    let mut idle = open(&s, None).await.unwrap();
    let mut busy = open(&s, None).await.unwrap();
    send(&mut busy, create(json!({"input": "SLOW"}))).await;
    // The busy connection's response is under way before draining starts.
    let first = next(&mut busy).await.expect("the first event");
    assert_eq!(first["type"], "response.created", "{first}");
    lifecycle.start_draining();
    // Idle: told at once, then closed, long before its 60-minute lifetime.
    let e = tokio::time::timeout(Duration::from_secs(5), next(&mut idle))
        .await
        .expect("the idle connection hears of the drain")
        .expect("an error envelope");
    assert!(is_envelope(&e), "{e}");
    assert_eq!(e["status"], 503, "{e}");
    assert!(next(&mut idle).await.is_none(), "closed after the envelope");
    // Busy: the response in flight completes, then the same envelope.
    let mut last = first;
    while last["type"] != "response.completed" {
        last = next(&mut busy).await.expect("the stream goes on");
        assert!(!is_envelope(&last), "{last}");
    }
    let e = next(&mut busy).await.expect("the drain envelope");
    assert_eq!(e["status"], 503, "{e}");
    assert!(next(&mut busy).await.is_none());
}
