//! Error cases: status, OpenAI error shape, `param` and `code`; and that the
//! strict checks themselves reject what they should.

use crate::support::*;

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
            json!({"input": "x", "text": {"format": {"type": "json_schema", "schema": {}}}}),
            400,
            Some("text.format.name"),
            None,
        ),
        (
            json!({"input": "x", "text": {"format": {"type": "json_schema", "name": "a", "schema": {"not": {}}}}}),
            400,
            Some("text.format.schema"),
            Some("unsupported_schema"),
        ),
        (
            json!({"input": "x", "text": {"format": {"type": "yaml"}}}),
            400,
            Some("text.format.type"),
            None,
        ),
        (
            json!({"input": "x", "tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "function", "name": "g"}}),
            400,
            Some("tool_choice.name"),
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
        // What the server cannot do is refused by name, never ignored.
        (
            json!({"input": "x", "tools": [{"type": "mcp", "server_label": "s"}]}),
            400,
            Some("tools[0].type"),
            None,
        ),
        (
            json!({"input": "x", "tools": [{"type": "function", "name": "f"}, {"type": "web_search_preview"}]}),
            400,
            Some("tools[1].type"),
            None,
        ),
        (
            json!({"input": "x", "tools": [{"type": "file_search", "vector_store_ids": ["v"]}]}),
            400,
            Some("tools[0].type"),
            None,
        ),
        (
            json!({"input": "x", "include": ["code_interpreter_call.outputs"]}),
            400,
            Some("include[0]"),
            Some("unsupported_value"),
        ),
        (
            json!({"input": "x", "include": ["message.output_text.logprobs"], "top_logprobs": 21}),
            400,
            Some("top_logprobs"),
            None,
        ),
        (
            json!({"input": "x", "prompt": {"id": "pmpt_nonexistent", "version": "2"}}),
            400,
            Some("prompt.id"),
            Some("prompt_not_found"),
        ),
        (
            json!({"input": "x", "reasoning": {"effort": "high"}}),
            400,
            Some("reasoning.effort"),
            Some("unsupported_value"),
        ),
        (
            json!({"input": "x", "reasoning": {"summary": "detailed"}}),
            400,
            Some("reasoning.summary"),
            Some("unsupported_value"),
        ),
    ];
    for (body, status, param, code) in cases {
        let (st, e) = s.post("/v1/responses", body.clone()).await;
        assert_error(st, &e, status, param, code);
        assert!(e["error"]["message"].as_str().unwrap().len() > 5, "{body}");
    }
    // The accepted ones: nothing is asked that the server would leave out.
    for body in [
        json!({"input": "x", "include": ["reasoning.encrypted_content"], "store": false}),
        json!({"input": "x", "reasoning": {"effort": "none"}, "top_logprobs": 0}),
    ] {
        let (st, r) = s.post("/v1/responses", body.clone()).await;
        assert_eq!(st, 200, "{body}: {r}");
    }
    let unsupported = s
        .post(
            "/v1/responses",
            json!({"input": "x", "text": {"format": {"type": "json_schema", "name": "a",
                   "schema": {"type": "array", "uniqueItems": true}}}}),
        )
        .await
        .1;
    assert!(
        unsupported["error"]["message"]
            .as_str()
            .unwrap()
            .contains("uniqueItems"),
        "the feature is named: {unsupported}"
    );
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
