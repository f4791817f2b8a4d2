//! The Responses API: create, get, delete, streams, background, chains, tools.

use crate::support::*;

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
async fn function_tools_are_validated_and_echoed_with_every_field() {
    let s = server().await;
    let tool = json!({"type": "function", "name": "get_weather",
                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}});
    let (st, r) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "input": "hi", "tools": [tool]}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    check_response(&r);
    let echoed = &r["tools"][0];
    assert_eq!(echoed["name"], "get_weather");
    assert_eq!(echoed["parameters"], tool["parameters"]);
    // `strict` and `description` are required keys of FunctionTool;
    // `strict` defaults to true.
    assert!(
        echoed["strict"] == true && echoed["description"].is_null(),
        "{echoed}"
    );
    let strict = json!({"type": "function", "name": "f", "description": "d", "strict": true});
    let (_, r) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "input": "hi", "tools": [strict]}),
        )
        .await;
    check_response(&r);
    assert_eq!(
        r["tools"][0],
        json!({"type": "function", "name": "f", "description": "d", "parameters": null, "strict": true})
    );
    for (bad, param) in [
        (json!({"type": "web_search"}), "tools[0].type"),
        (json!({"name": "f"}), "tools[0].type"),
        (
            json!({"type": "function", "name": "no spaces"}),
            "tools[0].name",
        ),
        (json!({"type": "function", "name": ""}), "tools[0].name"),
        (json!({"type": "function"}), "tools[0]"),
        (
            json!({"type": "function", "name": "f", "parameters": "x"}),
            "tools[0]",
        ),
    ] {
        let (st, e) = s
            .post(
                "/v1/responses",
                json!({"model": "spindle", "input": "hi", "tools": [bad]}),
            )
            .await;
        assert_eq!(st, 400, "{bad}: {e}");
        assert_eq!(e["error"]["type"], "invalid_request_error");
        assert_eq!(e["error"]["param"], param, "{bad}: {e}");
    }
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
    // The call joins the assistant turn; its output is a tool message.
    let PromptInput::Messages(msgs) = s.gen.requests().pop().unwrap().input else {
        panic!("messages")
    };
    assert_eq!(msgs[2].role, "assistant");
    let call = &msgs[2].tool_calls[0];
    assert_eq!(
        (call.call_id.as_str(), call.name.as_str()),
        ("call_1", "get_weather")
    );
    assert_eq!(call.arguments, "{\"city\":\"Paris\"}");
    assert_eq!(m[3], ("tool".into(), "sunny".into()));
    assert_eq!(msgs[3].tool_call_id.as_deref(), Some("call_1"));
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
    assert_previous_not_found(&s, r2["id"].as_str().unwrap()).await;
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
    assert_previous_not_found(&s, id).await;
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

/// A follow-up to `id` is refused: 400 `previous_response_not_found`.
async fn assert_previous_not_found(s: &Server, id: &str) {
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
