//! Streams: event order and numbering, failures mid-stream, background
//! responses (poll, cancel, resume), disconnects.

use crate::support::*;

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
