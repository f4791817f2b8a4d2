//! API keys (key file, env keys, bearer scheme, 401 shape, SIGHUP-style
//! reload) and per-tenant limits (concurrency including background
//! responses, token bucket, 429 shape with Retry-After).

use crate::support::*;
use spindle_proto::auth::{SecretDigest, Secrets};
use spindle_router::api::limits::LimitsConfig;

fn key_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("spindle-auth-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn hex(d: SecretDigest) -> String {
    d.0.iter().map(|b| format!("{b:02x}")).collect()
}

impl Server {
    async fn as_key(&self, auth: Option<&str>, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let mut req = match body {
            Some(b) => self.http.post(url).json(&b),
            None => self.http.get(url),
        };
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        self.send(req).await
    }
}

#[tokio::test]
async fn key_file_tenants_bearer_scheme_and_reload() {
    let path = key_file(
        "keys",
        &format!(
            "# teams\nteam-a:key-a\n\nteam-b:sha256:{}\n",
            hex(SecretDigest::of("key-b"))
        ),
    );
    let config = RouterConfig {
        api_keys: Secrets(vec!["env-key".into()]),
        api_keys_file: Some(path.clone()),
        ..RouterConfig::default()
    };
    let s = server_with(config.clone()).await;
    let (code, body) = s.as_key(None, "/v1/models", None).await;
    assert_eq!(code, 401);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert!(body["error"]["param"].is_null());
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("API key"));
    for bad in ["Bearer nope", "Basic key-a", "key-a", "Bearer "] {
        assert_eq!(
            s.as_key(Some(bad), "/v1/models", None).await.0,
            401,
            "{bad}"
        );
    }
    for good in ["Bearer key-a", "bearer key-b", "BEARER env-key"] {
        assert_eq!(
            s.as_key(Some(good), "/v1/models", None).await.0,
            200,
            "{good}"
        );
    }
    // Tenants are the file's names: team-b cannot read team-a's response.
    let (code, r) = s
        .as_key(
            Some("Bearer key-a"),
            "/v1/responses",
            Some(json!({"input": "x"})),
        )
        .await;
    assert_eq!(code, 200);
    let path_a = format!("/v1/responses/{}", r["id"].as_str().unwrap());
    assert_eq!(s.as_key(Some("Bearer key-a"), &path_a, None).await.0, 200);
    assert_eq!(s.as_key(Some("Bearer key-b"), &path_a, None).await.0, 404);
    // Rotation: key-a2 joins team-a (and sees its objects), key-a leaves.
    std::fs::write(&path, "team-a:key-a2\n").unwrap();
    assert_eq!(config.keys.reload(), Ok(2));
    assert_eq!(
        s.as_key(Some("Bearer key-a"), "/v1/models", None).await.0,
        401
    );
    assert_eq!(s.as_key(Some("Bearer key-a2"), &path_a, None).await.0, 200);
    // A broken file keeps the keys in force.
    std::fs::write(&path, "no colon here\n").unwrap();
    assert!(config.keys.reload().is_err());
    assert_eq!(
        s.as_key(Some("Bearer key-a2"), "/v1/models", None).await.0,
        200
    );
}

#[tokio::test]
async fn a_key_file_that_fails_to_load_refuses_everyone() {
    let config = RouterConfig {
        api_keys_file: Some("/nonexistent/spindle-keys".into()),
        ..RouterConfig::default()
    };
    assert!(config.validate().is_err());
    let s = server_with(config).await;
    assert_eq!(s.as_key(None, "/v1/models", None).await.0, 401);
}

fn limited(max: u32, rate: f64, burst: Option<u32>) -> RouterConfig {
    RouterConfig {
        api_keys: Secrets(vec!["key-a".into(), "key-b".into()]),
        limits: LimitsConfig {
            tenant_max_concurrent: max,
            tenant_rate: rate,
            tenant_burst: burst,
        },
        ..RouterConfig::default()
    }
}

async fn check_429(r: reqwest::Response) -> u64 {
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "requests");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    retry
}

fn chat(s: &Server, key: &str, text: &str, stream: bool) -> reqwest::RequestBuilder {
    s.http
        .post(format!("{}/v1/chat/completions", s.base))
        .bearer_auth(key)
        .json(&json!({"messages": [{"role": "user", "content": text}], "stream": stream}))
}

/// The status of `req`'s answer.
async fn status(req: reqwest::RequestBuilder) -> reqwest::StatusCode {
    req.send().await.unwrap().status()
}

/// Polls until `req()` is admitted (a released permit may take a moment:
/// the server notices a closed connection asynchronously).
async fn eventually_ok(req: impl Fn() -> reqwest::RequestBuilder) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = req().send().await.unwrap();
        if r.status() == 200 {
            return;
        }
        assert_eq!(r.status(), 429);
        assert!(
            std::time::Instant::now() < deadline,
            "permit never released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn concurrency_is_capped_per_tenant_and_streams_hold_their_permit() {
    let s = server_with(limited(2, 0.0, None)).await;
    // Two slow streams of tenant a, kept open.
    let a1 = chat(&s, "key-a", "SLOW", true).send().await.unwrap();
    let a2 = s
        .http
        .post(format!("{}/v1/responses", s.base))
        .bearer_auth("key-a")
        .json(&json!({"input": "SLOW", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!((a1.status().as_u16(), a2.status().as_u16()), (200, 200));
    assert_eq!(
        check_429(chat(&s, "key-a", "hi", false).send().await.unwrap()).await,
        1
    );
    // Tenant b is not starved by a's flood.
    let b = chat(&s, "key-b", "hi", false).send().await.unwrap();
    assert_eq!(b.status(), 200);
    // A finished non-streamed request released its permit at once.
    assert_eq!(status(chat(&s, "key-b", "hi", false)).await, 200);
    drop(a1);
    eventually_ok(|| chat(&s, "key-a", "hi", false)).await;
    drop(a2);
    let _ = s.get("/v1/models").await;
}

#[tokio::test]
async fn a_background_response_holds_its_permit_until_it_ends() {
    let s = server_with(limited(1, 0.0, None)).await;
    let create = |input: &str| {
        s.http
            .post(format!("{}/v1/responses", s.base))
            .bearer_auth("key-a")
            .json(&json!({"input": input, "background": true}))
    };
    let r = create("SLOW").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The HTTP request is answered, the generation still runs: still counted.
    check_429(create("hi").send().await.unwrap()).await;
    let cancel = s
        .http
        .post(format!("{}/v1/responses/{id}/cancel", s.base))
        .bearer_auth("key-a")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 200, "cancel is not a generation");
    eventually_ok(|| create("hi")).await;
}

#[tokio::test]
async fn the_token_bucket_refuses_beyond_the_burst() {
    let s = server_with(limited(0, 1.0, Some(2))).await;
    for _ in 0..2 {
        assert_eq!(status(chat(&s, "key-a", "hi", false)).await, 200);
    }
    assert_eq!(
        check_429(chat(&s, "key-a", "hi", false).send().await.unwrap()).await,
        1
    );
    assert_eq!(status(chat(&s, "key-b", "hi", false)).await, 200);
    // Reads are not generations: not rate limited.
    let (code, _) = s.as_key(Some("Bearer key-a"), "/v1/models", None).await;
    assert_eq!(code, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(status(chat(&s, "key-a", "hi", false)).await, 200);
}

/// Without API keys there is one tenant and nothing to be fair between:
/// the per-tenant cap does not apply (the workers' queues bound the load).
#[tokio::test]
async fn without_keys_nothing_is_limited_per_tenant() {
    let s = server_with(RouterConfig {
        limits: LimitsConfig {
            tenant_max_concurrent: 1,
            tenant_rate: 0.0,
            tenant_burst: None,
        },
        ..RouterConfig::default()
    })
    .await;
    let open = |text: &str| {
        s.http
            .post(format!("{}/v1/chat/completions", s.base))
            .json(&json!({"messages": [{"role": "user", "content": text}], "stream": true}))
            .send()
    };
    // Two streams held open at once: over a cap of 1, both admitted.
    let (a, b) = tokio::join!(open("SLOW a"), open("SLOW b"));
    assert_eq!(a.unwrap().status(), 200);
    assert_eq!(b.unwrap().status(), 200);
}
