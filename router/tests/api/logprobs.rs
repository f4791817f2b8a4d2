//! Log probabilities through the router: Responses (`include` of
//! `message.output_text.logprobs`, `top_logprobs`) in objects, stream
//! events, stored records and replays; Chat Completions and Completions.
//! The fake generator gives delta `i` the log probability `-0.5 × (i + 1)`.

use crate::support::*;

const INCLUDE: &str = "message.output_text.logprobs";

fn logprob(i: usize) -> f64 {
    -0.5 * (i as f64 + 1.0)
}

/// An `output_text` part's log probabilities: one per fake delta, each
/// with `k` alternatives, the token itself first.
fn assert_part_logprobs(part: &Value, k: usize) {
    let lps = part["logprobs"].as_array().expect("logprobs list");
    assert_eq!(lps.len(), DELTAS.len(), "{part}");
    for (i, (lp, delta)) in lps.iter().zip(DELTAS).enumerate() {
        assert_eq!(lp["token"], delta);
        assert_eq!(lp["bytes"], json!(delta.as_bytes()));
        assert_eq!(lp["logprob"].as_f64(), Some(logprob(i)));
        let top = lp["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), k);
        if k > 0 {
            assert_eq!(top[0]["token"], delta);
            assert!(top
                .windows(2)
                .all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64()));
        }
    }
}

#[tokio::test]
async fn responses_carry_logprobs_only_with_the_include() {
    let s = server().await;
    let (st, r) = s
        .post(
            "/v1/responses",
            json!({"input": "hi", "include": [INCLUDE], "top_logprobs": 3}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    check_response(&r);
    assert_eq!(r["top_logprobs"], 3);
    assert_part_logprobs(&r["output"][0]["content"][0], 3);
    assert_eq!(s.gen.requests()[0].sampling.logprobs, Some(3));
    // The stored record keeps them.
    let id = r["id"].as_str().unwrap();
    let (_, stored) = s.get(&format!("/v1/responses/{id}")).await;
    assert_eq!(stored, r);

    // The include alone: k = 0, only the chosen tokens.
    let (_, r) = s
        .post(
            "/v1/responses",
            json!({"input": "hi", "include": [INCLUDE]}),
        )
        .await;
    check_response(&r);
    assert_part_logprobs(&r["output"][0]["content"][0], 0);

    // Without the include: `[]`, and the worker is not asked for any,
    // even with `top_logprobs` (echoed, as OpenAI does).
    let (st, r) = s
        .post("/v1/responses", json!({"input": "hi", "top_logprobs": 2}))
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["output"][0]["content"][0]["logprobs"], json!([]));
    assert_eq!(r["top_logprobs"], 2);
    assert_eq!(s.gen.requests()[2].sampling.logprobs, None);

    let (st, e) = s
        .post(
            "/v1/responses",
            json!({"input": "hi", "include": [INCLUDE], "top_logprobs": 21}),
        )
        .await;
    assert_error(st, &e, 400, Some("top_logprobs"), None);
}

/// Each text delta carries its own tokens' entries; `.done`, the part and
/// the item carry all of them.
fn assert_stream_logprobs(events: &[(Option<String>, Option<Value>)], k: usize) {
    check_events(events);
    let data = || events.iter().filter_map(|(_, d)| d.as_ref());
    let deltas: Vec<&Value> = data()
        .filter(|d| d["type"] == "response.output_text.delta")
        .collect();
    assert_eq!(deltas.len(), DELTAS.len());
    for (i, d) in deltas.iter().enumerate() {
        let lps = d["logprobs"].as_array().unwrap();
        assert_eq!(lps.len(), 1, "{d}");
        assert_eq!(lps[0]["token"], d["delta"]);
        assert_eq!(lps[0]["logprob"].as_f64(), Some(logprob(i)));
        assert_eq!(lps[0]["top_logprobs"].as_array().unwrap().len(), k);
    }
    let done = data()
        .find(|d| d["type"] == "response.output_text.done")
        .unwrap();
    assert_part_logprobs(done, k);
    let part = data()
        .find(|d| d["type"] == "response.content_part.done")
        .unwrap();
    assert_part_logprobs(&part["part"], k);
    let item = data()
        .find(|d| d["type"] == "response.output_item.done")
        .unwrap();
    assert_part_logprobs(&item["item"]["content"][0], k);
}

#[tokio::test]
async fn stream_events_carry_logprobs_and_replays_keep_them() {
    let s = server().await;
    let events = s
        .post_sse(
            "/v1/responses",
            json!({"input": "hi", "include": [INCLUDE], "top_logprobs": 2, "stream": true}),
        )
        .await;
    assert_stream_logprobs(&events, 2);

    // A background response's stored events replay with them.
    let (_, r) = s
        .post(
            "/v1/responses",
            json!({"input": "hi", "include": [INCLUDE], "top_logprobs": 1, "background": true}),
        )
        .await;
    let id = r["id"].as_str().unwrap().to_owned();
    let done = wait_terminal(&s, &id).await;
    assert_part_logprobs(&done["output"][0]["content"][0], 1);
    let replay = s.get_sse(&format!("/v1/responses/{id}?stream=true")).await;
    assert_stream_logprobs(&replay, 1);

    // Without the include, deltas say `[]`.
    let plain = s
        .post_sse("/v1/responses", json!({"input": "hi", "stream": true}))
        .await;
    check_events(&plain);
    assert!(plain
        .iter()
        .filter_map(|(_, d)| d.as_ref())
        .filter(|d| d["type"] == "response.output_text.delta")
        .all(|d| d["logprobs"] == json!([])));
}

#[tokio::test]
async fn chat_completions_return_logprobs_whole_and_streamed() {
    let s = server().await;
    let body = json!({"messages": [{"role": "user", "content": "hi"}],
                      "logprobs": true, "top_logprobs": 2});
    let (st, r) = s.post("/v1/chat/completions", body.clone()).await;
    assert_eq!(st, 200, "{r}");
    let content = r["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), DELTAS.len());
    for (i, (lp, delta)) in content.iter().zip(DELTAS).enumerate() {
        assert_eq!(lp["token"], delta);
        assert_eq!(lp["logprob"].as_f64(), Some(logprob(i)));
        assert_eq!(lp["bytes"], json!(delta.as_bytes()));
        assert_eq!(lp["top_logprobs"].as_array().unwrap().len(), 2);
    }
    assert_eq!(s.gen.requests()[0].sampling.logprobs, Some(2));

    let mut streamed = body;
    streamed["stream"] = json!(true);
    let chunks = s.post_sse("/v1/chat/completions", streamed).await;
    let tokens: Vec<String> = chunks
        .iter()
        .filter_map(|(_, d)| d.as_ref())
        .filter(|d| {
            d["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        })
        .map(|d| {
            let lps = d["choices"][0]["logprobs"]["content"].as_array().unwrap();
            assert_eq!(lps.len(), 1, "{d}");
            lps[0]["token"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(tokens, DELTAS);

    // Without `logprobs`, `null`; `top_logprobs` alone is refused.
    let (_, r) = s
        .post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert!(r["choices"][0]["logprobs"].is_null(), "{r}");
    for bad in [
        json!({"top_logprobs": 2}),
        json!({"logprobs": true, "top_logprobs": 21}),
    ] {
        let mut b = bad.clone();
        b["messages"] = json!([{"role": "user", "content": "hi"}]);
        let (st, e) = s.post("/v1/chat/completions", b).await;
        assert_error(st, &e, 400, Some("top_logprobs"), None);
    }
}

#[tokio::test]
async fn completions_return_tokens_offsets_and_top_dicts() {
    let s = server().await;
    let (st, r) = s
        .post("/v1/completions", json!({"prompt": "hi", "logprobs": 2}))
        .await;
    assert_eq!(st, 200, "{r}");
    let lp = &r["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"], json!(DELTAS));
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    // Offsets in characters: "Hel", "lo, ", "wörld", " 🌍!".
    assert_eq!(offsets, [0, 3, 7, 12]);
    assert_eq!(lp["token_logprobs"][3].as_f64(), Some(logprob(3)));
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
    assert_eq!(lp["top_logprobs"][0]["Hel"].as_f64(), Some(logprob(0)));

    let chunks = s
        .post_sse(
            "/v1/completions",
            json!({"prompt": "hi", "logprobs": 0, "stream": true}),
        )
        .await;
    let offsets: Vec<u64> = chunks
        .iter()
        .filter_map(|(_, d)| d.as_ref())
        .filter(|d| {
            d["choices"][0]["text"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        })
        .map(|d| {
            d["choices"][0]["logprobs"]["text_offset"][0]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(offsets, [0, 3, 7, 12], "offsets run across chunks");

    for (bad, param) in [
        (json!({"prompt": "hi", "logprobs": 6}), "logprobs"),
        (json!({"prompt": "hi", "max_tokens": 0}), "max_tokens"),
    ] {
        let (st, e) = s.post("/v1/completions", bad).await;
        assert_error(st, &e, 400, Some(param), None);
    }

    // `echo`: the prompt first, its offsets counted before the output's
    // (this fake worker sends no prompt scores, so theirs are left out).
    let (st, r) = s
        .post(
            "/v1/completions",
            json!({"prompt": "Say: ", "echo": true, "logprobs": 1}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["choices"][0]["text"], "Say: Hello, wörld 🌍!");
    assert_eq!(
        r["choices"][0]["logprobs"]["text_offset"],
        json!([5, 8, 12, 17])
    );
    let chunks = s
        .post_sse(
            "/v1/completions",
            json!({"prompt": "Say: ", "echo": true, "stream": true}),
        )
        .await;
    let first = chunks.iter().find_map(|(_, d)| d.as_ref()).unwrap();
    assert_eq!(first["choices"][0]["text"], "Say: ");
}
