//! End-to-end tests of the public API over real HTTP against the test kit's
//! fake generator (failure keywords: see `spindle_testkit::fake_generator`).
//! Every response object and stream event is also parsed with the strict
//! `async-openai` types and validated against the Open Responses schema.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::StreamExt;
use serde_json::{json, Value};
use spindle_proto::{GenerateEvent, GenerateRequest, PromptInput};
use spindle_router::{app, GenerateError, Generator, MemoryStore, RouterConfig};
use spindle_testkit::fake_generator::DELTAS;
use spindle_testkit::FakeGenerator;

// ---------------------------------------------------------------- harness

struct Server {
    base: String,
    http: reqwest::Client,
    gen: Arc<FakeGenerator>,
}

async fn server_with(config: RouterConfig) -> Server {
    let gen = Arc::new(FakeGenerator::default());
    let store = Arc::new(MemoryStore::new(
        config.store_max_records,
        Duration::from_secs(config.store_ttl_secs),
    ));
    let router = app(gen.clone(), store, &config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    Server {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        gen,
    }
}

async fn server() -> Server {
    server_with(RouterConfig::default()).await
}

impl Server {
    async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body))
            .await
    }
    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }
    async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
    }
    /// POST and read a whole SSE stream: (event name, data JSON or None for [DONE]).
    async fn post_sse(&self, path: &str, body: Value) -> Vec<(Option<String>, Option<Value>)> {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        parse_sse(&r.text().await.unwrap())
    }
    async fn get_sse(&self, path: &str) -> Vec<(Option<String>, Option<Value>)> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        parse_sse(&r.text().await.unwrap())
    }
    fn last_messages(&self) -> Vec<(String, String)> {
        let reqs = self.gen.requests();
        match &reqs.last().unwrap().input {
            PromptInput::Messages(m) => m
                .iter()
                .map(|m| (m.role.clone(), m.content.clone()))
                .collect(),
            other => panic!("expected messages, got {other:?}"),
        }
    }
}

fn parse_sse(text: &str) -> Vec<(Option<String>, Option<Value>)> {
    let mut out = Vec::new();
    for frame in text.split("\n\n") {
        let mut event = None;
        let mut data = Vec::new();
        for line in frame.lines() {
            if let Some(e) = line.strip_prefix("event: ") {
                event = Some(e.to_string());
            } else if let Some(d) = line.strip_prefix("data: ") {
                data.push(d.to_string());
            }
        }
        if data.is_empty() {
            continue;
        }
        assert_eq!(data.len(), 1, "one data line per event: {frame}");
        let v = if data[0] == "[DONE]" {
            None
        } else {
            Some(serde_json::from_str(&data[0]).unwrap())
        };
        out.push((event, v));
    }
    out
}

// ---------------------------------------------------------------- strict checks

fn schema_doc() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/reference/open-responses-openapi.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("schema file")).unwrap()
}

fn validate_schema(doc: &Value, schema_name: &str, instance: &Value) {
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": format!("#/components/schemas/{schema_name}"),
        "components": doc["components"],
    });
    let v = jsonschema::validator_for(&schema).expect("schema compiles");
    let errors: Vec<String> = v
        .iter_errors(instance)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{schema_name} invalid: {errors:?}\n{instance:#}"
    );
}

/// Stream event type → schema name, from the schema's own `type` enums.
fn event_schema_name(doc: &Value, ty: &str) -> Option<String> {
    doc["components"]["schemas"]
        .as_object()?
        .iter()
        .find_map(|(name, s)| {
            (name.ends_with("StreamingEvent") && s["properties"]["type"]["enum"][0] == ty)
                .then(|| name.clone())
        })
}

fn check_response(resp: &Value) {
    let doc = schema_doc();
    validate_schema(&doc, "ResponseResource", resp);
    let _: async_openai::types::responses::Response = serde_json::from_value(resp.clone())
        .unwrap_or_else(|e| panic!("async-openai rejects response: {e}\n{resp:#}"));
}

fn check_events(events: &[(Option<String>, Option<Value>)]) {
    let doc = schema_doc();
    for (name, data) in events {
        let Some(data) = data else { continue };
        let ty = data["type"].as_str().unwrap();
        assert_eq!(name.as_deref(), Some(ty), "event: name equals JSON type");
        let schema = event_schema_name(&doc, ty).unwrap_or_else(|| panic!("no schema for {ty}"));
        validate_schema(&doc, &schema, data);
        let _: async_openai::types::responses::ResponseStreamEvent =
            serde_json::from_value(data.clone())
                .unwrap_or_else(|e| panic!("async-openai rejects event: {e}\n{data:#}"));
    }
}

fn types_of(events: &[(Option<String>, Option<Value>)]) -> Vec<String> {
    events
        .iter()
        .map(|(_, d)| {
            d.as_ref()
                .map(|d| d["type"].as_str().unwrap().to_string())
                .unwrap_or("[DONE]".into())
        })
        .collect()
}

fn assert_error(
    status: u16,
    body: &Value,
    want_status: u16,
    param: Option<&str>,
    code: Option<&str>,
) {
    assert_eq!(status, want_status, "{body}");
    let e = &body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e["type"].is_string(), "{body}");
    assert!(
        e.as_object().unwrap().contains_key("param") && e.as_object().unwrap().contains_key("code")
    );
    assert!(e["code"].is_string() || e["code"].is_null());
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{body}");
    }
    if let Some(c) = code {
        assert_eq!(e["code"], c, "{body}");
    }
}

async fn wait_terminal(s: &Server, id: &str) -> Value {
    for _ in 0..500 {
        let (st, r) = s.get(&format!("/v1/responses/{id}")).await;
        assert_eq!(st, 200);
        if !matches!(r["status"].as_str(), Some("queued" | "in_progress")) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("response {id} never finished");
}

const FULL: &str = "Hello, wörld 🌍!";

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn create_get_delete() {
    let s = server().await;
    let (st, r) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "input": "hi", "max_output_tokens": 16, "temperature": 0,
                   "metadata": {"k": "v"}, "user": "u1", "prompt_cache_key": "pk"}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    check_response(&r);
    assert_eq!(r["status"], "completed");
    assert_eq!(r["object"], "response");
    assert!(r["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(r["output"][0]["content"][0]["text"], FULL);
    assert_eq!(r["usage"]["input_tokens"], 10);
    assert_eq!(r["usage"]["output_tokens"], 4);
    assert_eq!(r["usage"]["total_tokens"], 14);
    assert_eq!(r["usage"]["output_tokens_details"]["reasoning_tokens"], 0);
    assert_eq!(r["metadata"]["k"], "v");
    assert_eq!(r["prompt_cache_key"], "pk");
    let req = s.gen.requests()[0].clone();
    assert_eq!(req.sampling.max_tokens, Some(16));
    assert_eq!(req.sampling.temperature, 0.0);
    assert_eq!(req.cache_key.as_deref(), Some("pck:pk"));
    let id = r["id"].as_str().unwrap();
    let (st, g) = s.get(&format!("/v1/responses/{id}")).await;
    assert_eq!(st, 200);
    assert_eq!(g, r);
    let (st, d) = s.delete(&format!("/v1/responses/{id}")).await;
    assert_eq!(st, 200);
    assert_eq!(
        d,
        json!({"id": id, "object": "response.deleted", "deleted": true})
    );
    let (st, e) = s.get(&format!("/v1/responses/{id}")).await;
    assert_error(st, &e, 404, None, None);
    let (st, e) = s.delete(&format!("/v1/responses/{id}")).await;
    assert_error(st, &e, 404, None, None);
}

#[tokio::test]
async fn incomplete_on_length() {
    let s = server().await;
    let (_, r) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "input": "LONG", "max_output_tokens": 4}),
        )
        .await;
    check_response(&r);
    assert_eq!(r["status"], "incomplete");
    assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
}

#[tokio::test]
async fn message_input_roles_and_tools_render() {
    let s = server().await;
    let (st, r) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "input": [
                {"role": "developer", "content": "be brief"},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                {"role": "assistant", "content": "It is sunny."},
                {"role": "user", "content": "thanks"}
            ]}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["model"], "spindle");
    let m = s.last_messages();
    assert_eq!(m[0], ("system".into(), "be brief".into()));
    assert_eq!(m[1], ("user".into(), "weather?".into()));
    assert_eq!(m[2].0, "assistant");
    assert!(m[2].1.contains("get_weather") && m[2].1.contains("call_1"));
    assert_eq!(
        m[3],
        (
            "user".into(),
            "<tool_response call_id=\"call_1\">sunny</tool_response>".into()
        )
    );
    assert_eq!(m[4], ("assistant".into(), "It is sunny.".into()));
    assert_eq!(m[5], ("user".into(), "thanks".into()));
}

#[tokio::test]
async fn chain_carries_full_history_without_instructions() {
    let s = server().await;
    let (_, r1) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "input": "one", "instructions": "SYS1"}),
        )
        .await;
    assert_eq!(
        s.last_messages(),
        vec![
            ("system".into(), "SYS1".into()),
            ("user".into(), "one".into())
        ]
    );
    let (_, r2) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "input": "two", "previous_response_id": r1["id"], "instructions": "SYS2"}),
        )
        .await;
    check_response(&r2);
    assert_eq!(r2["previous_response_id"], r1["id"]);
    assert_eq!(r2["instructions"], "SYS2");
    let (_, r3) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "input": "three", "previous_response_id": r2["id"]}),
        )
        .await;
    assert_eq!(r3["status"], "completed");
    let m = s.last_messages();
    let expected: Vec<(String, String)> = vec![
        ("user".into(), "one".into()),
        ("assistant".into(), FULL.into()),
        ("user".into(), "two".into()),
        ("assistant".into(), FULL.into()),
        ("user".into(), "three".into()),
    ];
    assert_eq!(m, expected);
    assert!(
        r3["usage"]["input_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    // The same chain root is the cache key all along.
    let keys: Vec<_> = s
        .gen
        .requests()
        .iter()
        .map(|r| r.cache_key.clone())
        .collect();
    assert_eq!(keys[0], keys[2]);
    // Deleting the middle keeps the later one usable (history stored per record).
    s.delete(&format!("/v1/responses/{}", r2["id"].as_str().unwrap()))
        .await;
    let (st, _) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "input": "four", "previous_response_id": r3["id"]}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(s.last_messages().len(), 7);
    // A deleted previous id is a 400.
    let (st, e) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "input": "x", "previous_response_id": r2["id"]}),
        )
        .await;
    assert_error(
        st,
        &e,
        400,
        Some("previous_response_id"),
        Some("previous_response_not_found"),
    );
}

#[tokio::test]
async fn store_false_is_not_retrievable() {
    let s = server().await;
    let (st, r) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "input": "hi", "store": false}),
        )
        .await;
    assert_eq!(st, 200);
    check_response(&r);
    assert_eq!(r["store"], false);
    let id = r["id"].as_str().unwrap();
    let (st, e) = s.get(&format!("/v1/responses/{id}")).await;
    assert_error(st, &e, 404, None, None);
    let (st, e) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "input": "x", "previous_response_id": id}),
        )
        .await;
    assert_error(
        st,
        &e,
        400,
        Some("previous_response_id"),
        Some("previous_response_not_found"),
    );
}

#[tokio::test]
async fn input_items_pagination() {
    let s = server().await;
    let input: Vec<Value> = (0..5)
        .map(|i| json!({"role": "user", "content": format!("m{i}")}))
        .collect();
    let (_, r) = s
        .post("/v1/responses", json!({"model": "spindle", "input": input}))
        .await;
    let id = r["id"].as_str().unwrap();
    let (st, page) = s
        .get(&format!("/v1/responses/{id}/input_items?limit=2"))
        .await;
    assert_eq!(st, 200, "{page}");
    let schema: async_openai::types::responses::ResponseItemList =
        serde_json::from_value(page.clone()).unwrap();
    assert_eq!(schema.data.len(), 2);
    assert_eq!(page["object"], "list");
    assert_eq!(page["has_more"], true);
    assert_eq!(page["data"][0]["content"][0]["text"], "m4");
    assert_eq!(page["data"][1]["content"][0]["text"], "m3");
    assert_eq!(page["first_id"], page["data"][0]["id"]);
    assert_eq!(page["last_id"], page["data"][1]["id"]);
    let after = page["last_id"].as_str().unwrap();
    let (_, page2) = s
        .get(&format!(
            "/v1/responses/{id}/input_items?limit=10&after={after}"
        ))
        .await;
    let texts: Vec<_> = page2["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["content"][0]["text"].clone())
        .collect();
    assert_eq!(texts, vec![json!("m2"), json!("m1"), json!("m0")]);
    assert_eq!(page2["has_more"], false);
    let (_, asc) = s
        .get(&format!("/v1/responses/{id}/input_items?order=asc&limit=1"))
        .await;
    assert_eq!(asc["data"][0]["content"][0]["text"], "m0");
    let (st, e) = s
        .get(&format!("/v1/responses/{id}/input_items?limit=0"))
        .await;
    assert_error(st, &e, 400, Some("limit"), None);
    let (st, e) = s
        .get(&format!("/v1/responses/{id}/input_items?order=up"))
        .await;
    assert_error(st, &e, 400, Some("order"), None);
    let (st, e) = s.get("/v1/responses/resp_nope/input_items").await;
    assert_error(st, &e, 404, None, None);
}

#[tokio::test]
async fn streaming_event_order_and_sequence() {
    let s = server().await;
    let events = s
        .post_sse(
            "/v1/responses",
            json!({"model": "spindle", "input": "hi", "stream": true}),
        )
        .await;
    check_events(&events);
    let types = types_of(&events);
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    expected.extend(std::iter::repeat_n(
        "response.output_text.delta",
        DELTAS.len(),
    ));
    expected.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
        "[DONE]",
    ]);
    assert_eq!(types, expected);
    for (i, (_, d)) in events.iter().enumerate() {
        if let Some(d) = d {
            assert_eq!(d["sequence_number"], i as u64);
        }
    }
    let created = events[0].1.as_ref().unwrap();
    assert_eq!(created["response"]["output"], json!([]));
    assert_eq!(created["response"]["status"], "in_progress");
    let deltas: String = events
        .iter()
        .filter_map(|(_, d)| d.as_ref())
        .filter(|d| d["type"] == "response.output_text.delta")
        .map(|d| d["delta"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(deltas, FULL);
    let done = events[events.len() - 2].1.as_ref().unwrap();
    check_response(&done["response"]);
    assert_eq!(done["response"]["output"][0]["content"][0]["text"], FULL);
    assert_eq!(done["response"]["usage"]["output_tokens"], 4);
    let id = done["response"]["id"].as_str().unwrap();
    let (_, stored) = s.get(&format!("/v1/responses/{id}")).await;
    assert_eq!(stored["output"][0]["content"][0]["text"], FULL);
    assert_eq!(stored["status"], "completed");
}

#[tokio::test]
async fn worker_failure_mid_stream() {
    let s = server().await;
    let events = s
        .post_sse(
            "/v1/responses",
            json!({"model": "spindle", "input": "FAIL", "stream": true}),
        )
        .await;
    check_events(&events);
    let types = types_of(&events);
    assert_eq!(
        &types[types.len() - 3..],
        &[
            "error".to_string(),
            "response.failed".into(),
            "[DONE]".into()
        ]
    );
    assert!(!types.contains(&"response.completed".to_string()));
    let err = events[events.len() - 3].1.as_ref().unwrap();
    assert_eq!(err["code"], "server_error");
    assert_eq!(err["error"]["code"], "server_error");
    let failed = &events[events.len() - 2].1.as_ref().unwrap()["response"];
    check_response(failed);
    assert_eq!(failed["status"], "failed");
    let (_, stored) = s
        .get(&format!("/v1/responses/{}", failed["id"].as_str().unwrap()))
        .await;
    assert_eq!(stored["status"], "failed");
    assert_eq!(stored["error"]["code"], "server_error");
    assert_eq!(stored["error"]["message"], "the worker went away");
    // Non-streaming: the failed response object is returned and stored.
    let (st, r) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "input": "FAIL"}),
        )
        .await;
    assert_eq!(st, 200);
    check_response(&r);
    assert_eq!(r["status"], "failed");
}

#[tokio::test]
async fn worker_start_errors_map_to_http() {
    let s = server().await;
    let (st, r) = s
        .post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "REJECT"}]}),
        )
        .await;
    assert_error(st, &r, 400, None, None);
    assert!(r["error"]["message"].as_str().unwrap().contains("too long"));
    let resp = s
        .http
        .post(format!("{}/v1/chat/completions", s.base))
        .json(&json!({"messages": [{"role": "user", "content": "BUSY"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    // Foreground responses: start failures are HTTP errors too, and nothing is stored.
    let resp = s
        .http
        .post(format!("{}/v1/responses", s.base))
        .json(&json!({"input": "BUSY", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "2");
    let (st, r) = s.post("/v1/responses", json!({"input": "REJECT"})).await;
    assert_error(st, &r, 400, None, None);
    // Background: the response fails (it was already accepted).
    let (_, r) = s
        .post(
            "/v1/responses",
            json!({"input": "BUSY", "background": true}),
        )
        .await;
    let done = wait_terminal(&s, r["id"].as_str().unwrap()).await;
    check_response(&done);
    assert_eq!(done["status"], "failed");
    assert_eq!(done["error"]["code"], "service_unavailable");
}

#[tokio::test]
async fn background_poll_cancel_and_resume() {
    let s = server().await;
    let (st, r) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "input": "hi", "background": true}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    check_response(&r);
    assert_eq!(r["status"], "queued");
    assert_eq!(r["background"], true);
    let id = r["id"].as_str().unwrap().to_string();
    let done = wait_terminal(&s, &id).await;
    check_response(&done);
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["content"][0]["text"], FULL);

    // Replay everything, then from a sequence number.
    let all = s.get_sse(&format!("/v1/responses/{id}?stream=true")).await;
    check_events(&all);
    let types = types_of(&all);
    assert_eq!(types[0], "response.created");
    assert_eq!(all[0].1.as_ref().unwrap()["response"]["status"], "queued");
    assert_eq!(types[types.len() - 2], "response.completed");
    assert_eq!(types[types.len() - 1], "[DONE]");
    let tail = s
        .get_sse(&format!("/v1/responses/{id}?stream=true&starting_after=3"))
        .await;
    assert_eq!(tail[0].1.as_ref().unwrap()["sequence_number"], 4);
    assert_eq!(tail.len(), all.len() - 4);

    // Cancel a slow one: the generation stream is dropped, the status sticks.
    let (_, r) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "input": "SLOW", "background": true}),
        )
        .await;
    let id = r["id"].as_str().unwrap().to_string();
    // Follow it live for a few events.
    let live = s
        .http
        .get(format!(
            "{}/v1/responses/{id}?stream=true&starting_after=0",
            s.base
        ))
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (st, c) = s
        .post(&format!("/v1/responses/{id}/cancel"), json!({}))
        .await;
    assert_eq!(st, 200, "{c}");
    check_response(&c);
    assert_eq!(c["status"], "cancelled");
    // The live follower ends.
    let text = tokio::time::timeout(Duration::from_secs(5), live.text())
        .await
        .expect("follower ends")
        .unwrap();
    let evs = parse_sse(&text);
    assert_eq!(evs[0].1.as_ref().unwrap()["sequence_number"], 1);
    assert!(evs.last().unwrap().1.is_none(), "ends with [DONE]");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(s.gen.dropped_early(), 1, "generation stream dropped");
    let (_, g) = s.get(&format!("/v1/responses/{id}")).await;
    assert_eq!(g["status"], "cancelled");
    // Cancelling again is idempotent.
    let (st, c2) = s
        .post(&format!("/v1/responses/{id}/cancel"), json!({}))
        .await;
    assert_eq!(st, 200);
    assert_eq!(c2["status"], "cancelled");
}

#[tokio::test]
async fn background_stream_create() {
    let s = server().await;
    let events = s
        .post_sse(
            "/v1/responses",
            json!({"model": "spindle", "input": "hi", "background": true, "stream": true}),
        )
        .await;
    check_events(&events);
    let types = types_of(&events);
    assert_eq!(types[0], "response.created");
    assert_eq!(types[1], "response.queued");
    assert_eq!(types[2], "response.in_progress");
    assert_eq!(types[types.len() - 2], "response.completed");
}

#[tokio::test]
async fn foreground_stream_disconnect_cancels() {
    let s = server().await;
    let resp = s
        .http
        .post(format!("{}/v1/responses", s.base))
        .json(&json!({"model": "spindle", "input": "SLOW", "stream": true}))
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&first).to_string();
    let id = text
        .split("\"id\":\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    drop(body);
    let mut status = Value::Null;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        status = s.get(&format!("/v1/responses/{id}")).await.1["status"].clone();
        if status != "in_progress" {
            break;
        }
    }
    assert_eq!(status, "cancelled");
    assert_eq!(s.gen.dropped_early(), 1);
}

#[tokio::test]
async fn conversations_flow() {
    let s = server().await;
    let (st, c) = s
        .post(
            "/v1/conversations",
            json!({"items": [{"role": "user", "content": "remember 7"}], "metadata": {"a": "b"}}),
        )
        .await;
    assert_eq!(st, 200, "{c}");
    let _: async_openai::types::responses::ConversationResource =
        serde_json::from_value(c.clone()).unwrap();
    let cid = c["id"].as_str().unwrap();
    assert!(cid.starts_with("conv_"));
    assert_eq!(c["object"], "conversation");
    let (_, r) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "input": "what number?", "conversation": cid}),
        )
        .await;
    check_response(&r);
    assert_eq!(r["conversation"]["id"], cid);
    assert_eq!(
        s.last_messages(),
        vec![
            ("user".to_string(), "remember 7".to_string()),
            ("user".into(), "what number?".into())
        ]
    );
    let (_, items) = s
        .get(&format!("/v1/conversations/{cid}/items?order=asc"))
        .await;
    let _: async_openai::types::responses::ConversationItemList =
        serde_json::from_value(items.clone()).unwrap();
    let data = items["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!(data[2]["role"], "assistant");
    assert_eq!(data[2]["content"][0]["text"], FULL);
    // Second turn sees everything.
    s.post(
        "/v1/responses",
        json!({"model": "spindle", "input": "again", "conversation": {"id": cid}}),
    )
    .await;
    assert_eq!(s.last_messages().len(), 4);
    // Add, get, delete items.
    let (st, added) = s
        .post(
            &format!("/v1/conversations/{cid}/items"),
            json!({"items": [{"role": "user", "content": "extra"}]}),
        )
        .await;
    assert_eq!(st, 200, "{added}");
    let item_id = added["data"][0]["id"].as_str().unwrap();
    let (st, it) = s
        .get(&format!("/v1/conversations/{cid}/items/{item_id}"))
        .await;
    assert_eq!(st, 200);
    assert_eq!(it["content"][0]["text"], "extra");
    let (st, after_del) = s
        .delete(&format!("/v1/conversations/{cid}/items/{item_id}"))
        .await;
    assert_eq!(st, 200);
    assert_eq!(after_del["id"], cid);
    let (st, e) = s
        .get(&format!("/v1/conversations/{cid}/items/{item_id}"))
        .await;
    assert_error(st, &e, 404, None, None);
    // Update metadata, delete.
    let (_, u) = s
        .post(
            &format!("/v1/conversations/{cid}"),
            json!({"metadata": {"x": "y"}}),
        )
        .await;
    assert_eq!(u["metadata"], json!({"x": "y"}));
    let (_, g) = s.get(&format!("/v1/conversations/{cid}")).await;
    assert_eq!(g["metadata"], json!({"x": "y"}));
    let (st, d) = s.delete(&format!("/v1/conversations/{cid}")).await;
    assert_eq!(st, 200);
    assert_eq!(
        d,
        json!({"id": cid, "object": "conversation.deleted", "deleted": true})
    );
    let (st, e) = s.get(&format!("/v1/conversations/{cid}")).await;
    assert_error(st, &e, 404, None, None);
    let (st, e) = s
        .post("/v1/responses", json!({"input": "x", "conversation": cid}))
        .await;
    assert_error(st, &e, 404, Some("conversation"), None);
}

#[tokio::test]
async fn error_cases() {
    let s = server_with(RouterConfig {
        max_body_bytes: 4096,
        ..RouterConfig::default()
    })
    .await;
    let raw = |body: &'static str| {
        let s = &s;
        async move {
            let r = s
                .http
                .post(format!("{}/v1/responses", s.base))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let st = r.status().as_u16();
            (st, r.json::<Value>().await.unwrap())
        }
    };
    let (st, e) = raw("{not json").await;
    assert_error(st, &e, 400, None, None);
    let (st, e) = raw("").await;
    assert_error(st, &e, 400, None, None);
    let (st, e) = raw(r#"{"input": "x", "temperature": "hot"}"#).await;
    assert_error(st, &e, 400, Some("temperature"), Some("invalid_type"));
    let (st, e) = raw(r#"{"input": 5}"#).await;
    assert_error(st, &e, 400, Some("input"), None);
    let cases: Vec<(Value, u16, Option<&str>, Option<&str>)> = vec![
        (json!({"model": "spindle"}), 400, Some("input"), None),
        (json!({"input": ""}), 400, Some("input"), None),
        (json!({"input": []}), 400, Some("input"), None),
        (
            json!({"input": [{"role": "wizard", "content": "x"}]}),
            400,
            Some("input[0].role"),
            None,
        ),
        (
            json!({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}),
            400,
            Some("input[0].content[0].type"),
            None,
        ),
        (
            json!({"input": "x", "model": "gpt-9"}),
            404,
            Some("model"),
            Some("model_not_found"),
        ),
        (
            json!({"input": "x", "previous_response_id": "resp_unknown"}),
            400,
            Some("previous_response_id"),
            Some("previous_response_not_found"),
        ),
        (
            json!({"input": "x", "background": true, "store": false}),
            400,
            Some("background"),
            None,
        ),
        (
            json!({"input": "x", "conversation": "conv_1", "previous_response_id": "resp_1"}),
            400,
            Some("conversation"),
            None,
        ),
        (
            json!({"input": "x", "text": {"format": {"type": "json_schema", "name": "a", "schema": {}}}}),
            400,
            Some("text.format.type"),
            None,
        ),
        (
            json!({"input": "x", "text": {"format": {"type": "json_object"}}}),
            400,
            Some("text.format.type"),
            None,
        ),
        (
            json!({"input": "x", "temperature": 3}),
            400,
            Some("temperature"),
            None,
        ),
        (
            json!({"input": "x", "max_output_tokens": 0}),
            400,
            Some("max_output_tokens"),
            None,
        ),
        (
            json!({"input": "x", "tool_choice": "required"}),
            400,
            Some("tool_choice"),
            None,
        ),
    ];
    for (body, status, param, code) in cases {
        let (st, e) = s.post("/v1/responses", body.clone()).await;
        assert_error(st, &e, status, param, code);
        assert!(e["error"]["message"].as_str().unwrap().len() > 5, "{body}");
    }
    let json_schema_msg = s
        .post(
            "/v1/responses",
            json!({"input": "x", "text": {"format": {"type": "json_schema"}}}),
        )
        .await
        .1;
    assert!(json_schema_msg["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not supported yet"));
    // Oversize body.
    let big = "x".repeat(10_000);
    let (st, e) = s.post("/v1/responses", json!({"input": big})).await;
    assert_error(st, &e, 413, None, None);
    // Unknown ids.
    let (st, e) = s.get("/v1/responses/resp_missing").await;
    assert_error(st, &e, 404, None, None);
    let (st, e) = s.post("/v1/responses/resp_missing/cancel", json!({})).await;
    assert_error(st, &e, 404, None, None);
    // Cancel of a non-background response.
    let (_, r) = s.post("/v1/responses", json!({"input": "x"})).await;
    let id = r["id"].as_str().unwrap();
    let (st, e) = s
        .post(&format!("/v1/responses/{id}/cancel"), json!({}))
        .await;
    assert_error(st, &e, 400, None, None);
    // Stream replay of a non-background response; bad starting_after.
    let (st, e) = s.get(&format!("/v1/responses/{id}?stream=true")).await;
    assert_error(st, &e, 400, None, None);
    // Unknown route and wrong method are JSON too.
    let (st, e) = s.get("/v1/nothing").await;
    assert_error(st, &e, 404, None, None);
    let (st, e) = s.get("/v1/chat/completions").await;
    assert_error(st, &e, 405, None, None);
    // Chat errors.
    let (st, e) = s
        .post("/v1/chat/completions", json!({"messages": []}))
        .await;
    assert_error(st, &e, 400, Some("messages"), None);
    let (st, e) = s
        .post("/v1/chat/completions", json!({"model": "spindle"}))
        .await;
    assert_error(st, &e, 400, None, None);
    let (st, e) = s
        .post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "n": 2}),
        )
        .await;
    assert_error(st, &e, 400, Some("n"), None);
    let (st, e) = s
        .post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "model": "nope"}),
        )
        .await;
    assert_error(st, &e, 404, Some("model"), Some("model_not_found"));
    let (st, e) = s
        .post(
            "/v1/conversations/conv_x/items",
            json!({"items": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_error(st, &e, 404, None, None);
}

#[tokio::test]
async fn chat_completions_plain_and_stream() {
    let s = server().await;
    let (st, r) = s
        .post(
            "/v1/chat/completions",
            json!({"model": "spindle", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}],
                   "max_tokens": 8, "stop": "\n", "seed": 3}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let typed: async_openai::types::chat::CreateChatCompletionResponse =
        serde_json::from_value(r.clone()).unwrap();
    assert_eq!(typed.choices[0].message.content.as_deref(), Some(FULL));
    assert_eq!(r["usage"]["prompt_tokens"], 20);
    assert_eq!(r["usage"]["prompt_tokens_details"]["cached_tokens"], 10);
    let req = s.gen.requests()[0].clone();
    assert_eq!(req.sampling.stop, vec!["\n".to_string()]);
    assert_eq!(req.sampling.seed, Some(3));
    assert_eq!(req.sampling.max_tokens, Some(8));

    let events = s
        .post_sse(
            "/v1/chat/completions",
            json!({"model": "spindle", "messages": [{"role": "user", "content": "hi"}], "stream": true,
                   "stream_options": {"include_usage": true}}),
        )
        .await;
    assert!(events.last().unwrap().1.is_none(), "ends with [DONE]");
    let mut text = String::new();
    for (name, d) in &events[..events.len() - 1] {
        assert!(name.is_none());
        let d = d.as_ref().unwrap();
        let _: async_openai::types::chat::CreateChatCompletionStreamResponse =
            serde_json::from_value(d.clone()).unwrap_or_else(|e| panic!("{e}: {d}"));
        if let Some(c) = d["choices"][0]["delta"]["content"].as_str() {
            text.push_str(c);
        }
    }
    assert_eq!(text, FULL);
    let usage_chunk = events[events.len() - 2].1.as_ref().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 4);
    let fin = events[events.len() - 3].1.as_ref().unwrap();
    assert_eq!(fin["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn completions_and_models() {
    let s = server().await;
    let (st, r) = s
        .post(
            "/v1/completions",
            json!({"model": "spindle", "prompt": "Once", "max_tokens": 4}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["object"], "text_completion");
    assert_eq!(r["choices"][0]["text"], FULL);
    assert!(matches!(s.gen.requests()[0].input, PromptInput::Prompt(ref p) if p == "Once"));
    let events = s
        .post_sse("/v1/completions", json!({"prompt": "Once", "stream": true}))
        .await;
    let text: String = events
        .iter()
        .filter_map(|(_, d)| d.as_ref())
        .filter_map(|d| d["choices"][0]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, FULL);
    let (st, m) = s.get("/v1/models").await;
    assert_eq!(st, 200);
    let ids: Vec<_> = m["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!("spindle")]);
    assert_eq!(m["data"][0]["owned_by"], "spindle");
    assert_eq!(m["data"][0]["workers"], 1);
    let (st, _) = s.get("/v1/models/spindle").await;
    assert_eq!(st, 200);
    let (st, _) = s.get("/v1/models/fake-model").await;
    assert_eq!(st, 404);
}

#[test]
fn strict_checks_reject_missing_fields() {
    let doc = schema_doc();
    let mut good = spindle_testkit::fixtures::response_json("resp_1");
    good["status"] = json!("completed");
    validate_schema(&doc, "ResponseResource", &good);
    for key in ["usage", "text", "output"] {
        let mut bad = good.clone();
        bad.as_object_mut().unwrap().remove(key);
        let result = std::panic::catch_unwind(|| validate_schema(&doc, "ResponseResource", &bad));
        assert!(result.is_err(), "schema accepted a response without {key}");
    }
    let mut bad = good.clone();
    bad.as_object_mut().unwrap().remove("output");
    assert!(serde_json::from_value::<async_openai::types::responses::Response>(bad).is_err());
}

// ---------------------------------------------------------------- HttpWorker against a fake worker

async fn fake_worker(status: u16, body: &'static str) -> String {
    use axum::http::StatusCode;
    let router = axum::Router::new().route(
        "/v1/generate",
        axum::routing::post(
            move |axum::Json(req): axum::Json<GenerateRequest>| async move {
                assert!(req.request_id.is_some());
                let mut resp = axum::response::IntoResponse::into_response((
                    StatusCode::from_u16(status).unwrap(),
                    body,
                ));
                resp.headers_mut()
                    .insert("retry-after", "7".parse().unwrap());
                resp
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

fn gen_req() -> GenerateRequest {
    serde_json::from_value(json!({"messages": [{"role": "user", "content": "hi"}]})).unwrap()
}

#[tokio::test]
async fn http_worker_parses_ndjson_and_errors() {
    use spindle_router::HttpWorker;
    let ok = fake_worker(
        200,
        "{\"type\":\"delta\",\"text\":\"a\",\"token_ids\":[1]}\n{\"type\":\"delta\",\"text\":\"é\",\"token_ids\":[2]}\n\
         {\"type\":\"done\",\"finish_reason\":\"stop\",\"usage\":{\"prompt_tokens\":3,\"cached_tokens\":1,\"completion_tokens\":2},\
         \"timings\":{\"queue_ms\":0,\"ttft_ms\":1,\"decode_ms\":1}}\n",
    )
    .await;
    let events: Vec<_> = HttpWorker::new(ok)
        .generate(gen_req())
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(events.len(), 3);
    assert!(matches!(&events[1], GenerateEvent::Delta { text, .. } if text == "é"));
    assert!(matches!(&events[2], GenerateEvent::Done { usage, .. } if usage.cached_tokens == 1));

    let truncated = fake_worker(
        200,
        "{\"type\":\"delta\",\"text\":\"a\",\"token_ids\":[1]}\n",
    )
    .await;
    let events: Vec<_> = HttpWorker::new(truncated)
        .generate(gen_req())
        .await
        .unwrap()
        .collect()
        .await;
    assert!(matches!(events.last(), Some(GenerateEvent::Error { .. })));

    let bad = fake_worker(400, r#"{"error":{"message":"too long","type":"invalid_request_error","param":null,"code":null}}"#).await;
    match HttpWorker::new(bad).generate(gen_req()).await {
        Err(GenerateError::BadRequest(e)) => assert_eq!(e.message, "too long"),
        other => panic!("{:?}", other.err()),
    }
    let busy = fake_worker(
        503,
        r#"{"error":{"message":"full","type":"server_error","param":null,"code":null}}"#,
    )
    .await;
    match HttpWorker::new(busy).generate(gen_req()).await {
        Err(GenerateError::Unavailable { retry_after, .. }) => assert_eq!(retry_after, 7),
        other => panic!("{:?}", other.err()),
    }
    match HttpWorker::new("http://127.0.0.1:1")
        .generate(gen_req())
        .await
    {
        Err(GenerateError::Connect(_)) => {}
        other => panic!("{:?}", other.err()),
    }
}

/// Every turn of a chain is routed by the key its first turn got, whatever
/// later turns say; without any identity the key hashes the leading messages.
#[tokio::test]
async fn chains_keep_their_first_turns_routing_key() {
    let s = server().await;
    let keys = |s: &Server| -> Vec<String> {
        let reqs = s.gen.requests();
        reqs.iter()
            .map(|r| r.cache_key.clone().unwrap_or_default())
            .collect()
    };
    let (_, first) = s
        .post("/v1/responses", json!({"input": "hi", "user": "alice"}))
        .await;
    let (_, second) = s
        .post(
            "/v1/responses",
            json!({"input": "more", "user": "bob", "previous_response_id": first["id"]}),
        )
        .await;
    s.post(
        "/v1/responses",
        json!({"input": "again", "prompt_cache_key": "x", "previous_response_id": second["id"]}),
    )
    .await;
    assert_eq!(keys(&s), vec!["user:alice"; 3]);

    // X-Session-Id, then a hash of the leading messages when nothing else is given.
    let r = s
        .http
        .post(format!("{}/v1/responses", s.base))
        .header("x-session-id", "abc")
        .json(&json!({"input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(keys(&s)[3], "sess:abc");
    let (_, anon) = s
        .post("/v1/responses", json!({"input": "hello there"}))
        .await;
    s.post("/v1/responses", json!({"input": "hello there"}))
        .await;
    s.post(
        "/v1/responses",
        json!({"input": "next", "previous_response_id": anon["id"]}),
    )
    .await;
    let k = keys(&s);
    assert!(k[4].starts_with("h:"), "hashed key: {}", k[4]);
    assert_eq!(k[4], k[5], "same leading messages, same key");
    assert_eq!(k[4], k[6], "follow-up inherits the key");
}
