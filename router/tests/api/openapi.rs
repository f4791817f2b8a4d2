//! The OpenAPI document at `/openapi.json`: served without a key, it lists
//! exactly the routes the router answers, and real answers validate against
//! the schemas it gives for their operation, status and content type.

use crate::support::*;
use spindle_proto::auth::Secrets;

/// Every public endpoint (issue 12): the document must list these, no more.
const ROUTES: [(&str, &str); 23] = [
    ("POST", "/v1/responses"),
    ("GET", "/v1/responses"),
    ("POST", "/v1/responses/compact"),
    ("GET", "/v1/responses/{id}"),
    ("DELETE", "/v1/responses/{id}"),
    ("POST", "/v1/responses/{id}/cancel"),
    ("GET", "/v1/responses/{id}/input_items"),
    ("POST", "/v1/conversations"),
    ("GET", "/v1/conversations/{id}"),
    ("POST", "/v1/conversations/{id}"),
    ("DELETE", "/v1/conversations/{id}"),
    ("GET", "/v1/conversations/{id}/items"),
    ("POST", "/v1/conversations/{id}/items"),
    ("GET", "/v1/conversations/{id}/items/{item_id}"),
    ("DELETE", "/v1/conversations/{id}/items/{item_id}"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{id}"),
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/openapi.json"),
];

async fn fetch_doc(s: &Server) -> Value {
    let (st, doc) = s.get("/openapi.json").await;
    assert_eq!(st, 200, "{doc}");
    doc
}

fn documented(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if ["get", "post", "delete", "put", "patch"].contains(&method.as_str()) {
                out.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    out.sort();
    out
}

/// The schema the document gives for `method path` answering `status` as
/// `ctype` (following a `$ref` to a shared response).
fn response_schema(doc: &Value, method: &str, path: &str, status: u16, ctype: &str) -> Value {
    let op = &doc["paths"][path][method.to_lowercase()];
    let mut resp = &op["responses"][status.to_string()];
    if let Some(r) = resp["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/responses/");
        resp = &doc["components"]["responses"][name];
    }
    let schema = &resp["content"][ctype]["schema"];
    assert!(
        schema.is_object(),
        "{method} {path}: no {status} {ctype} schema"
    );
    schema.clone()
}

/// Validate `body` against the documented schema of that answer.
fn conforms(doc: &Value, method: &str, path: &str, status: u16, ctype: &str, body: &Value) {
    let schema = response_schema(doc, method, path, status, ctype);
    validate_against(doc, &schema, body, &format!("{method} {path} {status}"));
}

fn validate_against(doc: &Value, schema: &Value, body: &Value, what: &str) {
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "allOf": [schema],
        "components": doc["components"],
    });
    let v = jsonschema::validator_for(&schema).expect("schema compiles");
    let errors: Vec<String> = v
        .iter_errors(body)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:?}\n{body:#}");
}

/// Each SSE event against the documented event: `data` is `[DONE]` or JSON
/// valid against the data's `contentSchema` (an annotation to validators,
/// so checked here by hand).
fn sse_conforms(doc: &Value, path: &str, events: &[(Option<String>, Option<Value>)]) {
    assert!(events.len() > 2, "{events:?}");
    let event = response_schema(doc, "POST", path, 200, "text/event-stream");
    let data = &event["properties"]["data"]["anyOf"];
    assert_eq!(data[0]["enum"], json!(["[DONE]"]), "{event}");
    assert_eq!(data[1]["contentMediaType"], "application/json", "{event}");
    for (_, payload) in events {
        if let Some(payload) = payload {
            validate_against(doc, &data[1]["contentSchema"], payload, path);
        }
    }
}

#[tokio::test]
async fn document_lists_exactly_the_served_routes() {
    let s = server().await;
    let doc = fetch_doc(&s).await;
    assert!(doc["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.1")));
    let want: Vec<(String, String)> = {
        let mut w: Vec<_> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        w.sort();
        w
    };
    assert_eq!(documented(&doc), want);
    // Each documented route is served: the router's fallbacks (unknown URL,
    // wrong method) never answer it.
    for (method, path) in ROUTES {
        let url = format!(
            "{}{}",
            s.base,
            path.replace("{id}", "x").replace("{item_id}", "y")
        );
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = s
            .http
            .request(method.clone(), &url)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        let code = body["error"]["code"].as_str().unwrap_or_default();
        assert!(
            !matches!(code, "unknown_url" | "method_not_allowed") && status != 405,
            "{method} {path} is documented but not routed: {status} {body}"
        );
    }
    // And an undocumented one is not.
    let (st, e) = s.get("/v1/responses/x/nope").await;
    assert_error(st, &e, 404, None, Some("unknown_url"));
}

#[tokio::test]
async fn document_needs_no_key_and_describes_auth_and_errors() {
    let s = server_with(RouterConfig {
        api_keys: Secrets(vec!["k".into()]),
        ..RouterConfig::default()
    })
    .await;
    let doc = fetch_doc(&s).await;
    assert_eq!(s.get("/v1/models").await.0, 401);
    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    let create = &doc["paths"]["/v1/responses"]["post"];
    assert_eq!(create["security"], json!([{"bearer": []}]));
    for status in ["400", "401", "404", "413", "415", "429", "503"] {
        assert!(create["responses"][status]["$ref"].is_string(), "{status}");
    }
    let models = &doc["paths"]["/v1/models"]["get"]["responses"];
    assert!(
        models["429"].is_null() && models["413"].is_null(),
        "{models}"
    );
    assert!(doc["paths"]["/health"]["get"]["security"].is_null());
    // The 401 an unauthenticated client gets is the documented error body.
    let (st, e) = s.get("/v1/models").await;
    conforms(&doc, "GET", "/v1/models", st, "application/json", &e);
}

#[tokio::test]
async fn real_answers_validate_against_their_documented_schemas() {
    let s = server().await;
    let doc = fetch_doc(&s).await;
    let json_ok =
        |m: &str, p: &str, body: &Value| conforms(&doc, m, p, 200, "application/json", body);

    let (st, h) = s.get("/health").await;
    assert_eq!(st, 200);
    json_ok("GET", "/health", &h);
    let (st, m) = s.get("/v1/models").await;
    assert_eq!(st, 200);
    json_ok("GET", "/v1/models", &m);

    // A response with every item kind in its input, listed back.
    let input = json!([
        {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_text", "text": "ok"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
    ]);
    let (st, r) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "input": input, "metadata": {"k": "v"}}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    json_ok("POST", "/v1/responses", &r);
    let id = r["id"].as_str().unwrap();
    let (_, items) = s.get(&format!("/v1/responses/{id}/input_items")).await;
    assert_eq!(items["data"].as_array().map(Vec::len), Some(4), "{items}");
    json_ok("GET", "/v1/responses/{id}/input_items", &items);
    // A compacted window, and a response whose input starts with it.
    let (st, c) = s
        .post(
            "/v1/responses/compact",
            json!({"model": "spindle", "previous_response_id": id, "input": "next"}),
        )
        .await;
    assert_eq!(st, 200, "{c}");
    json_ok("POST", "/v1/responses/compact", &c);
    let (st, r) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "input": c["output"]}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let cid = r["id"].as_str().unwrap();
    let (_, items) = s.get(&format!("/v1/responses/{cid}/input_items")).await;
    assert_eq!(items["data"][1]["type"], "compaction", "{items}");
    json_ok("GET", "/v1/responses/{id}/input_items", &items);
    let (_, bg) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "input": "hi", "background": true}),
        )
        .await;
    json_ok("POST", "/v1/responses", &bg);
    let bid = bg["id"].as_str().unwrap();
    let done = wait_terminal(&s, bid).await;
    json_ok("GET", "/v1/responses/{id}", &done);
    let (st, cancelled) = s
        .post(&format!("/v1/responses/{bid}/cancel"), json!({}))
        .await;
    assert_eq!(st, 200, "{cancelled}");
    json_ok("POST", "/v1/responses/{id}/cancel", &cancelled);
    let events = s
        .post_sse(
            "/v1/responses",
            json!({"model": "spindle", "input": "hi", "stream": true}),
        )
        .await;
    sse_conforms(&doc, "/v1/responses", &events);
    let (st, list) = s.get("/v1/responses?limit=2").await;
    assert_eq!(list["data"].as_array().map(Vec::len), Some(2), "{list}");
    assert_eq!(st, 200);
    json_ok("GET", "/v1/responses", &list);
    let (_, del) = s.delete(&format!("/v1/responses/{id}")).await;
    json_ok("DELETE", "/v1/responses/{id}", &del);

    let (_, c) = s
        .post(
            "/v1/conversations",
            json!({"items": [{"role": "user", "content": "x"}]}),
        )
        .await;
    json_ok("POST", "/v1/conversations", &c);
    let cid = c["id"].as_str().unwrap();
    s.post(
        "/v1/responses",
        json!({"model": "spindle", "input": "y", "conversation": cid}),
    )
    .await;
    let (_, items) = s.get(&format!("/v1/conversations/{cid}/items")).await;
    assert_eq!(items["data"].as_array().map(Vec::len), Some(3), "{items}");
    json_ok("GET", "/v1/conversations/{id}/items", &items);
    let (_, item) = s
        .get(&format!(
            "/v1/conversations/{cid}/items/{}",
            items["data"][0]["id"].as_str().unwrap()
        ))
        .await;
    json_ok("GET", "/v1/conversations/{id}/items/{item_id}", &item);

    let chat = json!({"model": "spindle", "messages": [{"role": "user", "content": "hi"}]});
    let (st, cc) = s.post("/v1/chat/completions", chat.clone()).await;
    assert_eq!(st, 200, "{cc}");
    json_ok("POST", "/v1/chat/completions", &cc);
    let mut streamed = chat;
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let events = s.post_sse("/v1/chat/completions", streamed).await;
    sse_conforms(&doc, "/v1/chat/completions", &events);
    let text = json!({"model": "spindle", "prompt": "Once", "stream": false});
    let (st, tc) = s.post("/v1/completions", text.clone()).await;
    assert_eq!(st, 200, "{tc}");
    json_ok("POST", "/v1/completions", &tc);
    let events = s
        .post_sse(
            "/v1/completions",
            json!({"model": "spindle", "prompt": "Once", "stream": true}),
        )
        .await;
    sse_conforms(&doc, "/v1/completions", &events);

    // Errors, as documented for their operation.
    let (st, e) = s.get("/v1/responses/resp_missing").await;
    assert_eq!(st, 404);
    conforms(
        &doc,
        "GET",
        "/v1/responses/{id}",
        st,
        "application/json",
        &e,
    );
    let (st, e) = s
        .post("/v1/chat/completions", json!({"messages": []}))
        .await;
    assert_eq!(st, 400);
    conforms(
        &doc,
        "POST",
        "/v1/chat/completions",
        st,
        "application/json",
        &e,
    );
}

/// The checks above can fail: a body off its schema is refused.
#[tokio::test]
async fn a_body_off_its_schema_is_refused() {
    let s = server().await;
    let doc = fetch_doc(&s).await;
    let bad = json!({"id": "resp_1", "object": "response"});
    let result = std::panic::catch_unwind(|| {
        conforms(&doc, "POST", "/v1/responses", 200, "application/json", &bad)
    });
    assert!(result.is_err(), "an incomplete response object passed");
}
