//! `POST /v1/embeddings` through the router over the fake generator: the
//! OpenAI shape in both encodings, the model resolved and passed on, the
//! 400s naming their parameter (before any worker is asked), worker
//! refusals passed on, and auth and tenant limits as on other endpoints.

use crate::support::*;
use spindle_proto::auth::Secrets;
use spindle_proto::openai::embeddings::{EmbeddingVector, InputRef};
use spindle_router::api::limits::LimitsConfig;
use spindle_testkit::fake_embeddings::{fake_vector, FAKE_DIMS};

async fn embed(s: &Server, body: Value) -> (u16, Value) {
    s.post("/v1/embeddings", body).await
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("a float array")
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[tokio::test]
async fn floats_and_base64_in_openais_shape() {
    let s = server().await;
    let (st, r) = embed(
        &s,
        json!({"model": "spindle", "input": ["the cat sat", "a dog ran far"], "user": "u1"}),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["object"], "list");
    assert_eq!(r["model"], "spindle");
    assert_eq!(r["usage"], json!({"prompt_tokens": 7, "total_tokens": 7}));
    let data = r["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (i, (d, text)) in data
        .iter()
        .zip(["the cat sat", "a dog ran far"])
        .enumerate()
    {
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], i);
        let v = floats(&d["embedding"]);
        assert_eq!(v.len(), FAKE_DIMS);
        let want = fake_vector(InputRef::Text(text));
        assert!(v.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6));
    }
    let (st, b) = embed(
        &s,
        json!({"model": "spindle", "input": "the cat sat", "encoding_format": "base64"}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let text = b["data"][0]["embedding"].as_str().expect("a base64 string");
    let v = EmbeddingVector::Base64(text.into()).values().unwrap();
    assert_eq!(v, floats(&data[0]["embedding"]));
    // Token ids pass through as given.
    let (st, t) = embed(&s, json!({"model": "spindle", "input": [[1, 2, 3], [4]]})).await;
    assert_eq!(st, 200, "{t}");
    assert_eq!(t["usage"]["prompt_tokens"], 4);
    let seen = s.gen.embed_requests();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].model.as_deref(), Some("spindle"));
    assert_eq!(seen[0].user.as_deref(), Some("u1"));
}

#[tokio::test]
async fn bad_requests_name_their_param_and_reach_no_worker() {
    let s = server().await;
    let cases = [
        (json!({"input": "x"}), 400, "model"),
        (json!({"model": "spindle", "input": ""}), 400, "input"),
        (json!({"model": "spindle", "input": []}), 400, "input"),
        (
            json!({"model": "spindle", "input": ["a", ""]}),
            400,
            "input[1]",
        ),
        (
            json!({"model": "spindle", "input": [[1], []]}),
            400,
            "input[1]",
        ),
        (
            json!({"model": "spindle", "input": [[1], [-1]]}),
            400,
            "input[1]",
        ),
        (json!({"model": "spindle", "input": ["a", 3]}), 400, "input"),
        (json!({"model": "spindle", "input": 5}), 400, "input"),
        (json!({"model": "spindle"}), 400, "input"),
        (
            json!({"model": "spindle", "input": "a", "encoding_format": "hex"}),
            400,
            "encoding_format",
        ),
        (
            json!({"model": "spindle", "input": "a", "dimensions": 0}),
            400,
            "dimensions",
        ),
        (
            json!({"model": "spindle", "input": vec!["x"; 2049]}),
            400,
            "input",
        ),
        (json!({"model": "nope", "input": "a"}), 404, "model"),
    ];
    for (body, status, param) in cases {
        let (st, r) = embed(&s, body.clone()).await;
        assert_eq!(st, status, "{body}: {r}");
        assert_eq!(r["error"]["param"], param, "{body}: {r}");
        assert!(r["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    assert!(s.gen.embed_requests().is_empty(), "no worker was asked");
    // The worker's own refusals pass through: its 400 and its 503.
    let (st, r) = embed(&s, json!({"model": "spindle", "input": ["ok", "REJECT"]})).await;
    assert_eq!(
        (st, r["error"]["param"].clone()),
        (400, json!("input[1]")),
        "{r}"
    );
    let resp = s
        .http
        .post(format!("{}/v1/embeddings", s.base))
        .json(&json!({"model": "spindle", "input": "BUSY"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn keys_and_tenant_rates_apply() {
    let s = server_with(RouterConfig {
        api_keys: Secrets(vec!["key-a".into()]),
        limits: LimitsConfig {
            tenant_max_concurrent: 0,
            tenant_rate: 0.5,
            tenant_burst: Some(1),
        },
        ..RouterConfig::default()
    })
    .await;
    let send = |key: Option<&str>| {
        let mut r = s
            .http
            .post(format!("{}/v1/embeddings", s.base))
            .json(&json!({"model": "spindle", "input": "x"}));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send()
    };
    assert_eq!(send(None).await.unwrap().status(), 401);
    assert_eq!(send(Some("wrong")).await.unwrap().status(), 401);
    assert_eq!(send(Some("key-a")).await.unwrap().status(), 200);
    let refused = send(Some("key-a")).await.unwrap();
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
}
