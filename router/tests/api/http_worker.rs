//! `HttpWorker` (the router's client of a worker) against a fake worker's
//! HTTP answers: NDJSON events, errors and their mapping.

use crate::support::*;

async fn fake_worker(status: u16, body: &'static str) -> String {
    use axum::http::StatusCode;
    let router = axum::Router::new().route(
        "/v1/generate",
        axum::routing::post(
            move |axum::Json(req): axum::Json<GenerateRequest>| async move {
                assert!(req.request_id.is_some());
                let mut resp = axum::response::IntoResponse::into_response((
                    StatusCode::from_u16(status).unwrap(),
                    body,
                ));
                resp.headers_mut()
                    .insert("retry-after", "7".parse().unwrap());
                resp
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

fn gen_req() -> GenerateRequest {
    serde_json::from_value(json!({"messages": [{"role": "user", "content": "hi"}]})).unwrap()
}

#[tokio::test]
async fn http_worker_parses_ndjson_and_errors() {
    use spindle_router::HttpWorker;
    let ok = fake_worker(
        200,
        "{\"type\":\"delta\",\"text\":\"a\",\"token_ids\":[1]}\n{\"type\":\"delta\",\"text\":\"é\",\"token_ids\":[2]}\n\
         {\"type\":\"done\",\"finish_reason\":\"stop\",\"usage\":{\"prompt_tokens\":3,\"cached_tokens\":1,\"completion_tokens\":2},\
         \"timings\":{\"queue_ms\":0,\"ttft_ms\":1,\"decode_ms\":1}}\n",
    )
    .await;
    let events: Vec<_> = HttpWorker::new(ok)
        .generate(gen_req())
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(events.len(), 3);
    assert!(matches!(&events[1], GenerateEvent::Delta { text, .. } if text == "é"));
    assert!(matches!(&events[2], GenerateEvent::Done { usage, .. } if usage.cached_tokens == 1));

    let truncated = fake_worker(
        200,
        "{\"type\":\"delta\",\"text\":\"a\",\"token_ids\":[1]}\n",
    )
    .await;
    let events: Vec<_> = HttpWorker::new(truncated)
        .generate(gen_req())
        .await
        .unwrap()
        .collect()
        .await;
    assert!(matches!(events.last(), Some(GenerateEvent::Error { .. })));

    let bad = fake_worker(400, r#"{"error":{"message":"too long","type":"invalid_request_error","param":null,"code":null}}"#).await;
    match HttpWorker::new(bad).generate(gen_req()).await {
        Err(GenerateError::BadRequest(e)) => assert_eq!(e.message, "too long"),
        other => panic!("{:?}", other.err()),
    }
    let busy = fake_worker(
        503,
        r#"{"error":{"message":"full","type":"server_error","param":null,"code":null}}"#,
    )
    .await;
    match HttpWorker::new(busy).generate(gen_req()).await {
        Err(GenerateError::Unavailable { retry_after, .. }) => assert_eq!(retry_after, 7),
        other => panic!("{:?}", other.err()),
    }
    match HttpWorker::new("http://127.0.0.1:1")
        .generate(gen_req())
        .await
    {
        Err(GenerateError::Connect(_)) => {}
        other => panic!("{:?}", other.err()),
    }
}

/// A worker's stream and error bodies are read within bounds: a line longer
/// than the cap fails the request (as a bad worker response, so it can be
/// retried elsewhere) instead of filling memory; a huge error body is cut.
#[tokio::test]
async fn http_worker_bounds_lines_and_error_bodies() {
    use spindle_proto::FailureCode;
    use spindle_router::HttpWorker;
    let line: &'static str = Box::leak(
        format!(
            "{{\"type\":\"delta\",\"text\":\"a\",\"token_ids\":[1]}}\n{}",
            "x".repeat(3 << 20)
        )
        .into_boxed_str(),
    );
    let events: Vec<_> = HttpWorker::new(fake_worker(200, line).await)
        .generate(gen_req())
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(events.len(), 2, "{:?}", events.last());
    assert!(matches!(events[0], GenerateEvent::Delta { .. }));
    match &events[1] {
        GenerateEvent::Error { code, message } => {
            assert_eq!(*code, FailureCode::BadWorkerResponse);
            assert!(message.contains("longer than"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let huge: &'static str = Box::leak("y".repeat(8 << 20).into_boxed_str());
    match HttpWorker::new(fake_worker(500, huge).await)
        .generate(gen_req())
        .await
    {
        Err(GenerateError::Upstream(m)) => assert!(m.len() < 100 << 10, "{}", m.len()),
        other => panic!("{:?}", other.err()),
    }
}

/// With a worker token, `HttpWorker` sends it on generate and on cancel; a
/// worker that requires one refuses a request without it.
#[tokio::test]
async fn http_worker_sends_the_worker_token() {
    use spindle_router::HttpWorker;
    use spindle_testkit::FakeWorker;
    use std::sync::atomic::Ordering;
    let fake = FakeWorker::spawn(50, Duration::from_millis(20))
        .await
        .unwrap();
    fake.ctl.token.set("w-secret".into()).unwrap();
    match HttpWorker::new(fake.url.clone())
        .with_token(None)
        .generate(gen_req())
        .await
    {
        Err(GenerateError::Upstream(m)) => assert!(m.contains("401"), "{m}"),
        other => panic!("expected a 401, got {:?}", other.map(|_| ())),
    }
    assert_eq!(fake.ctl.unauthorized.load(Ordering::Relaxed), 1);
    let worker = HttpWorker::new(fake.url.clone()).with_token(Some("w-secret"));
    let events: Vec<_> = worker
        .generate(serde_json::from_value(json!({"messages": [{"role": "user", "content": "hi"}], "sampling": {"max_tokens": 3}})).unwrap())
        .await
        .unwrap()
        .collect()
        .await;
    assert!(
        matches!(events.last(), Some(GenerateEvent::Done { .. })),
        "{events:?}"
    );
    // Dropped mid-stream: the cancel call carries the token too.
    let mut stream = worker.generate(gen_req()).await.unwrap();
    assert!(stream.next().await.is_some());
    drop(stream);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while fake.ctl.cancels.load(Ordering::Relaxed) == 0 {
        assert!(std::time::Instant::now() < deadline, "no cancel arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fake.ctl.unauthorized.load(Ordering::Relaxed), 1);
}
