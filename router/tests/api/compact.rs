//! `POST /v1/responses/compact`: the compacted window (latest user turn
//! verbatim, one sealed compaction item), continuing from it, refused items
//! (tampered, another tenant's), the required `model`, and the shape of
//! every 405.

use crate::support::*;
use spindle_proto::auth::Secrets;

/// A chain of `turns` user turns; returns the last response's id.
async fn chain(s: &Server, turns: usize) -> String {
    let mut prev: Option<String> = None;
    for t in 1..=turns {
        let mut body = json!({"model": "spindle", "input": format!("question {t}")});
        if let Some(p) = &prev {
            body["previous_response_id"] = json!(p);
        }
        let (st, r) = s.post("/v1/responses", body).await;
        assert_eq!(st, 200, "{r}");
        prev = Some(r["id"].as_str().unwrap().to_owned());
    }
    prev.unwrap()
}

fn check_compacted(r: &Value) {
    validate_schema(&schema_doc(), "CompactResource", r);
    assert_eq!(r["object"], "response.compaction");
    assert!(r["created_at"].as_u64().unwrap() > 0);
}

fn compaction_items(output: &Value) -> Vec<&Value> {
    output
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "compaction")
        .collect()
}

fn prompt_of(req: &GenerateRequest) -> Vec<(String, String)> {
    match &req.input {
        PromptInput::Messages(m) => m
            .iter()
            .map(|m| (m.role.clone(), m.content.clone()))
            .collect(),
        other => panic!("expected messages, got {other:?}"),
    }
}

#[tokio::test]
async fn a_chain_compacts_to_its_latest_user_turn_and_one_sealed_item() {
    let s = server().await;
    let last = chain(&s, 3).await;
    let (st, r) = s
        .post(
            "/v1/responses/compact",
            json!({"model": "spindle", "previous_response_id": last, "input": "question 4",
                   "instructions": "Be brief."}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    check_compacted(&r);
    let output = r["output"].as_array().unwrap();
    assert_eq!(output.len(), 2, "{r:#}");
    let cmp = compaction_items(&r["output"]);
    assert_eq!(cmp.len(), 1);
    assert!(cmp[0]["id"].as_str().unwrap().starts_with("cmp_"));
    let sealed = cmp[0]["encrypted_content"].as_str().unwrap();
    assert!(
        !sealed.contains(FULL),
        "the summary is not readable: {sealed}"
    );
    // The latest user turn, verbatim, after the item that stands for the rest.
    assert_eq!(output[0]["type"], "compaction");
    assert_eq!(output[1]["type"], "message");
    assert_eq!(output[1]["role"], "user");
    assert_eq!(output[1]["content"][0]["type"], "input_text");
    assert_eq!(output[1]["content"][0]["text"], "question 4");
    // The summarising pass read every earlier turn and was counted truly.
    let pass = s.gen.requests().last().unwrap().clone();
    let prompt = prompt_of(&pass);
    assert_eq!(prompt[0], ("system".into(), "Be brief.".into()));
    for t in 1..=3 {
        assert!(
            prompt.contains(&("user".into(), format!("question {t}"))),
            "{prompt:?}"
        );
    }
    assert!(!prompt.iter().any(|(_, c)| c == "question 4"), "{prompt:?}");
    assert_eq!(prompt.last().unwrap().0, "user");
    assert!(prompt.last().unwrap().1.contains("Summarize"));
    // The fake counts 10 prompt tokens per message and one per delta.
    let usage = &r["usage"];
    assert_eq!(usage["input_tokens"], 10 * prompt.len() as u64);
    assert_eq!(usage["output_tokens"], DELTAS.len() as u64);
    assert_eq!(
        usage["total_tokens"],
        10 * prompt.len() as u64 + DELTAS.len() as u64
    );
    // Routed with the chain's key; the chain itself goes on as before.
    let first = &s.gen.requests()[0];
    assert_eq!(pass.cache_key, first.cache_key);
    let (st, _) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "previous_response_id": last, "input": "q"}),
        )
        .await;
    assert_eq!(st, 200);
    let users = s
        .last_messages()
        .iter()
        .filter(|(role, _)| role == "user")
        .count();
    assert_eq!(users, 4);
}

#[tokio::test]
async fn a_new_chain_continues_from_the_window_with_the_summary_in_its_prompt() {
    let s = server().await;
    let last = chain(&s, 3).await;
    let (st, r) = s
        .post(
            "/v1/responses/compact",
            json!({"model": "spindle", "previous_response_id": last}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    check_compacted(&r);
    // Without new input the latest turn is the third: its question and
    // answer stay verbatim after the compaction item.
    let output = r["output"].as_array().unwrap().clone();
    let kinds: Vec<_> = output
        .iter()
        .map(|i| format!("{}/{}", i["type"].as_str().unwrap(), i["role"]))
        .collect();
    assert_eq!(
        kinds,
        [
            "compaction/null",
            "message/\"user\"",
            "message/\"assistant\""
        ]
    );
    assert_eq!(output[1]["content"][0]["text"], "question 3");
    assert_eq!(output[2]["content"][0]["text"], FULL);

    let mut input = output.clone();
    input.push(json!({"role": "user", "content": "question 4"}));
    let (st, resp) = s
        .post("/v1/responses", json!({"model": "spindle", "input": input}))
        .await;
    assert_eq!(st, 200, "{resp}");
    check_response(&resp);
    assert_eq!(
        s.last_messages(),
        vec![
            (
                "system".into(),
                format!("Summary of the earlier conversation: {FULL}")
            ),
            ("user".into(), "question 3".into()),
            ("assistant".into(), FULL.into()),
            ("user".into(), "question 4".into()),
        ]
    );
    // The stored input keeps the item as it was given, opaque.
    let id = resp["id"].as_str().unwrap();
    let (st, items) = s
        .get(&format!("/v1/responses/{id}/input_items?order=asc"))
        .await;
    assert_eq!(st, 200);
    assert_eq!(items["data"][0], output[0]);
    // A follow-up of that chain renders the summary from the stored item.
    let (st, _) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "previous_response_id": id, "input": "question 5"}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        s.last_messages()[0].1,
        format!("Summary of the earlier conversation: {FULL}")
    );
}

#[tokio::test]
async fn nothing_before_the_latest_user_message_needs_no_summary() {
    let s = server().await;
    let (st, r) = s
        .post(
            "/v1/responses/compact",
            json!({"model": "spindle", "input": "only question"}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    check_compacted(&r);
    assert!(compaction_items(&r["output"]).is_empty());
    assert_eq!(r["output"][0]["content"][0]["text"], "only question");
    assert_eq!(r["usage"]["total_tokens"], 0);
    assert!(s.gen.requests().is_empty(), "no summarising pass");
}

/// Compacts a two-item window and returns its compaction item.
async fn compaction_item(s: &Server, auth: Option<&str>) -> Value {
    let body = json!({"model": "spindle", "input": [
        {"role": "user", "content": "my name is Ada"},
        {"role": "assistant", "content": "hello Ada"},
        {"role": "user", "content": "what is my name?"},
    ]});
    let mut req = s
        .http
        .post(format!("{}/v1/responses/compact", s.base))
        .json(&body);
    if let Some(a) = auth {
        req = req.bearer_auth(a);
    }
    let (st, r) = s.send(req).await;
    assert_eq!(st, 200, "{r}");
    check_compacted(&r);
    compaction_items(&r["output"])[0].clone()
}

#[tokio::test]
async fn a_tampered_item_is_refused_naming_it() {
    let s = server().await;
    let item = compaction_item(&s, None).await;
    let sealed = item["encrypted_content"].as_str().unwrap();
    let mid = sealed.len() / 2;
    let flipped = if &sealed[mid..=mid] == "A" { "B" } else { "A" };
    let tampered = format!("{}{flipped}{}", &sealed[..mid], &sealed[mid + 1..]);
    for bad in [tampered.as_str(), &sealed[..sealed.len() - 4], "", "%%%"] {
        let input = json!([
            {"role": "user", "content": "hi"},
            {"type": "compaction", "id": item["id"], "encrypted_content": bad},
        ]);
        let (st, e) = s
            .post("/v1/responses", json!({"model": "spindle", "input": input}))
            .await;
        assert_error(
            st,
            &e,
            400,
            Some("input[1].encrypted_content"),
            Some("invalid_encrypted_content"),
        );
    }
    let (st, e) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "input": [{"type": "compaction", "id": "cmp_x"}]}),
        )
        .await;
    assert_error(st, &e, 400, Some("input[0].encrypted_content"), None);
    // The untouched item still works.
    let (st, _) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "input": [item, {"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn another_tenants_item_is_refused() {
    let s = server_with(RouterConfig {
        api_keys: Secrets(vec!["key-a".into(), "key-b".into()]),
        ..RouterConfig::default()
    })
    .await;
    let item = compaction_item(&s, Some("key-a")).await;
    let body = json!({"model": "spindle", "input": [item, {"role": "user", "content": "hi"}]});
    let post = |key: &str| {
        s.http
            .post(format!("{}/v1/responses", s.base))
            .bearer_auth(key)
            .json(&body)
    };
    let (st, e) = s.send(post("key-b")).await;
    assert_error(
        st,
        &e,
        400,
        Some("input[0].encrypted_content"),
        Some("invalid_encrypted_content"),
    );
    let (st, r) = s.send(post("key-a")).await;
    assert_eq!(st, 200, "{r}");
    // Nor can it join another tenant's conversation.
    let (st, e) = s
        .send(
            s.http
                .post(format!("{}/v1/conversations", s.base))
                .bearer_auth("key-b")
                .json(&json!({"items": [item]})),
        )
        .await;
    assert_error(
        st,
        &e,
        400,
        Some("items[0].encrypted_content"),
        Some("invalid_encrypted_content"),
    );
}

#[tokio::test]
async fn model_and_something_to_compact_are_required() {
    let s = server().await;
    let (st, e) = s
        .post("/v1/responses/compact", json!({"input": "hi"}))
        .await;
    assert_error(st, &e, 400, Some("model"), None);
    let (st, e) = s
        .post("/v1/responses/compact", json!({"model": "", "input": "hi"}))
        .await;
    assert_error(st, &e, 400, Some("model"), None);
    let (st, e) = s
        .post("/v1/responses/compact", json!({"model": "spindle"}))
        .await;
    assert_error(st, &e, 400, Some("input"), None);
    let (st, e) = s
        .post(
            "/v1/responses/compact",
            json!({"model": "spindle", "previous_response_id": "resp_nope"}),
        )
        .await;
    assert_error(
        st,
        &e,
        400,
        Some("previous_response_id"),
        Some("previous_response_not_found"),
    );
    // Unknown fields are ignored, as on create.
    let (st, _) = s
        .post(
            "/v1/responses/compact",
            json!({"model": "spindle", "input": "hi", "reasoning": {"effort": "low"}}),
        )
        .await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn every_405_says_method_not_allowed() {
    let s = server().await;
    let cases = [
        (reqwest::Method::GET, "/v1/responses/compact"),
        (reqwest::Method::PUT, "/v1/responses"),
        (reqwest::Method::POST, "/v1/responses/resp_1"),
        (reqwest::Method::DELETE, "/v1/chat/completions"),
        (reqwest::Method::PATCH, "/v1/conversations"),
        (reqwest::Method::POST, "/v1/models"),
        (reqwest::Method::POST, "/health"),
        (reqwest::Method::DELETE, "/openapi.json"),
    ];
    for (method, path) in cases {
        let r = s
            .http
            .request(method.clone(), format!("{}{path}", s.base))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let st = r.status().as_u16();
        let text = r.text().await.unwrap();
        let e: Value = serde_json::from_str(&text)
            .unwrap_or_else(|err| panic!("{method} {path}: {st} {text:?}: {err}"));
        assert_error(st, &e, 405, None, Some("method_not_allowed"));
        assert_eq!(
            e["error"]["type"], "invalid_request_error",
            "{method} {path}"
        );
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .contains("method not allowed"),
            "{method} {path}: {e}"
        );
        assert!(e["error"]["param"].is_null());
    }
}
