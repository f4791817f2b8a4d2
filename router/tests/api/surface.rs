//! Defaults that protect the server and labels the specification defines:
//! the default output cap (`--default-max-output-tokens`) and `phase` on
//! assistant messages.

use crate::support::*;

#[tokio::test]
async fn a_request_without_an_output_cap_gets_the_servers_default() {
    let s = server().await;
    let (st, r) = s.post("/v1/responses", json!({"input": "hi"})).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["max_output_tokens"], 1024, "the default is reported");
    let (st, r) = s
        .post(
            "/v1/responses",
            json!({"input": "hi", "max_output_tokens": 7}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["max_output_tokens"], 7, "the request's own cap wins");
    let (st, _) = s
        .post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(st, 200);
    let caps: Vec<_> = s
        .gen
        .requests()
        .iter()
        .map(|g| g.sampling.max_tokens)
        .collect();
    assert_eq!(
        caps,
        [Some(1024), Some(7), Some(1024)],
        "what the worker was asked"
    );

    let s = server_with(RouterConfig {
        default_max_output_tokens: 0,
        ..RouterConfig::default()
    })
    .await;
    let (_, r) = s.post("/v1/responses", json!({"input": "hi"})).await;
    assert_eq!(r["max_output_tokens"], Value::Null, "0 turns the cap off");
    assert_eq!(s.gen.requests()[0].sampling.max_tokens, None);
}

#[tokio::test]
async fn phase_is_kept_on_assistant_input_and_set_on_the_answer() {
    let s = server().await;
    let input = json!([
        {"role": "user", "content": "plan a trip"},
        {"role": "assistant", "content": "Looking at trains.", "phase": "commentary"},
        {"role": "assistant", "content": "Take the 9:00.", "phase": "final_answer"},
        {"role": "user", "content": "thanks"},
    ]);
    let (st, r) = s.post("/v1/responses", json!({"input": input})).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["output"][0]["phase"], "final_answer");
    let id = r["id"].as_str().unwrap();
    let (_, items) = s
        .get(&format!("/v1/responses/{id}/input_items?order=asc"))
        .await;
    let phases: Vec<_> = items["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.get("phase").cloned())
        .collect();
    assert_eq!(
        phases,
        [
            None,
            Some(json!("commentary")),
            Some(json!("final_answer")),
            None
        ]
    );
    for (phase, role) in [
        (json!("thinking"), "assistant"),
        (json!("commentary"), "user"),
    ] {
        let (st, e) = s
            .post(
                "/v1/responses",
                json!({"input": [{"role": role, "content": "x", "phase": phase}]}),
            )
            .await;
        assert_error(st, &e, 400, Some("input[0].phase"), None);
    }
}
