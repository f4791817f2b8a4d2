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
