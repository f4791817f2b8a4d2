//! The harness: a router app on a free port over the test kit's fake
//! generator, an HTTP client, SSE parsing, and the checks every response
//! and event goes through (Open Responses schema and `async-openai` types).

pub(crate) use std::sync::Arc;
pub(crate) use std::time::Duration;

pub(crate) use futures::stream::StreamExt;
pub(crate) use serde_json::{json, Value};
pub(crate) use spindle_proto::{GenerateEvent, GenerateRequest, PromptInput};
pub(crate) use spindle_router::{app, GenerateError, Generator, MemoryStore, RouterConfig};
pub(crate) use spindle_testkit::fake_generator::DELTAS;
pub(crate) use spindle_testkit::FakeGenerator;

// ---------------------------------------------------------------- harness

pub(crate) struct Server {
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
    pub(crate) gen: Arc<FakeGenerator>,
}

pub(crate) async fn server_with(config: RouterConfig) -> Server {
    let gen = Arc::new(FakeGenerator::default());
    let store = Arc::new(
        MemoryStore::new(
            config.store_max_records,
            Duration::from_secs(config.store_ttl_secs),
        )
        .with_max_bytes(config.store_max_bytes),
    );
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

pub(crate) async fn server() -> Server {
    server_with(RouterConfig::default()).await
}

impl Server {
    pub(crate) async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }
    pub(crate) async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body))
            .await
    }
    pub(crate) async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }
    pub(crate) async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
    }
    /// POST and read a whole SSE stream: (event name, data JSON or None for [DONE]).
    pub(crate) async fn post_sse(
        &self,
        path: &str,
        body: Value,
    ) -> Vec<(Option<String>, Option<Value>)> {
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
    pub(crate) async fn get_sse(&self, path: &str) -> Vec<(Option<String>, Option<Value>)> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        parse_sse(&r.text().await.unwrap())
    }
    pub(crate) fn last_messages(&self) -> Vec<(String, String)> {
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

pub(crate) fn parse_sse(text: &str) -> Vec<(Option<String>, Option<Value>)> {
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

pub(crate) fn schema_doc() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/reference/open-responses-openapi.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("schema file")).unwrap()
}

pub(crate) fn validate_schema(doc: &Value, schema_name: &str, instance: &Value) {
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
pub(crate) fn event_schema_name(doc: &Value, ty: &str) -> Option<String> {
    doc["components"]["schemas"]
        .as_object()?
        .iter()
        .find_map(|(name, s)| {
            (name.ends_with("StreamingEvent") && s["properties"]["type"]["enum"][0] == ty)
                .then(|| name.clone())
        })
}

pub(crate) fn check_response(resp: &Value) {
    let doc = schema_doc();
    validate_schema(&doc, "ResponseResource", resp);
    let _: async_openai::types::responses::Response = serde_json::from_value(resp.clone())
        .unwrap_or_else(|e| panic!("async-openai rejects response: {e}\n{resp:#}"));
}

pub(crate) fn check_events(events: &[(Option<String>, Option<Value>)]) {
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

pub(crate) fn types_of(events: &[(Option<String>, Option<Value>)]) -> Vec<String> {
    events
        .iter()
        .map(|(_, d)| {
            d.as_ref()
                .map(|d| d["type"].as_str().unwrap().to_string())
                .unwrap_or("[DONE]".into())
        })
        .collect()
}

pub(crate) fn assert_error(
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

pub(crate) async fn wait_terminal(s: &Server, id: &str) -> Value {
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

pub(crate) const FULL: &str = "Hello, wörld 🌍!";
