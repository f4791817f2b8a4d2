//! Chat Completions, Completions and Models.

use crate::support::*;

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

#[tokio::test]
async fn chat_tool_calls_whole_and_streamed() {
    use spindle_testkit::fake_generator::{CALL_ARGUMENTS, CALL_ID};
    let s = server().await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let (st, r) = s
        .post(
            "/v1/chat/completions",
            json!({"model": "spindle", "messages": [{"role": "user", "content": "weather?"}],
                   "tools": tools, "tool_choice": "required"}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let typed: async_openai::types::chat::CreateChatCompletionResponse =
        serde_json::from_value(r.clone()).unwrap_or_else(|e| panic!("{e}: {r}"));
    assert_eq!(r["choices"][0]["finish_reason"], "tool_calls");
    assert!(r["choices"][0]["message"]["content"].is_null());
    let calls = typed.choices[0]
        .message
        .tool_calls
        .as_ref()
        .expect("tool_calls");
    assert_eq!(calls.len(), 1);
    let call = &r["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["id"], CALL_ID);
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], CALL_ARGUMENTS.concat());
    let out = s.gen.requests().pop().unwrap().output;
    assert_eq!(out.tools[0].name, "get_weather");
    assert!(!out.tools[0].strict, "chat's strict defaults to false");

    // Streamed: the first piece names the call, later ones add arguments.
    let events = s
        .post_sse(
            "/v1/chat/completions",
            json!({"model": "spindle", "messages": [{"role": "user", "content": "weather?"}],
                   "tools": tools, "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                   "stream": true}),
        )
        .await;
    let mut args = String::new();
    let mut finish = None;
    for (_, d) in &events[..events.len() - 1] {
        let d = d.as_ref().unwrap();
        let _: async_openai::types::chat::CreateChatCompletionStreamResponse =
            serde_json::from_value(d.clone()).unwrap_or_else(|e| panic!("{e}: {d}"));
        let choice = &d["choices"][0];
        if let Some(calls) = choice["delta"]["tool_calls"].as_array() {
            assert_eq!(calls[0]["index"], 0);
            if let Some(name) = calls[0]["function"]["name"].as_str() {
                assert_eq!((name, &calls[0]["id"]), ("get_weather", &json!(CALL_ID)));
            }
            args.push_str(calls[0]["function"]["arguments"].as_str().unwrap());
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = Some(f.to_owned());
        }
    }
    assert_eq!(args, CALL_ARGUMENTS.concat());
    assert_eq!(finish.as_deref(), Some("tool_calls"));

    // The call and its result go back as typed messages.
    let (st, _) = s
        .post(
            "/v1/chat/completions",
            json!({"model": "spindle", "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": CALL_ID, "type": "function",
                    "function": {"name": "get_weather", "arguments": CALL_ARGUMENTS.concat()}}]},
                {"role": "tool", "tool_call_id": CALL_ID, "content": "sunny"}]}),
        )
        .await;
    assert_eq!(st, 200);
    let PromptInput::Messages(m) = s.gen.requests().pop().unwrap().input else {
        panic!("messages")
    };
    assert_eq!(m[1].tool_calls[0].call_id, CALL_ID);
    assert_eq!(
        (m[2].role.as_str(), m[2].tool_call_id.as_deref()),
        ("tool", Some(CALL_ID))
    );
}
