//! The Redis store tests' harness: the test kit's real `redis-server`
//! processes (re-exported), the app served over an echoing fake generator,
//! and a small HTTP client.
#![allow(dead_code)]

use std::sync::Arc;

use spindle_router::{ResponseStore, RouterConfig};
pub use spindle_testkit::redis::*;
use spindle_testkit::FakeGenerator;

/// Serve the app on a random port; returns its base URL.
pub async fn serve(
    store: Arc<dyn ResponseStore>,
    config: RouterConfig,
) -> (String, Arc<FakeGenerator>) {
    let gen = Arc::new(FakeGenerator::builder().echo().model("fake-model").build());
    let router = spindle_router::app(gen.clone(), store, &config);
    let (url, _task) = spindle_testkit::serve::serve(router).await.unwrap();
    (url, gen)
}

/// A small HTTP client with an optional bearer key.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
    pub key: Option<String>,
}

impl Client {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.into(),
            http: reqwest::Client::new(),
            key: None,
        }
    }
    pub fn with_key(base: &str, key: &str) -> Self {
        Self {
            key: Some(key.into()),
            ..Self::new(base)
        }
    }
    fn auth(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }
    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self
            .auth(self.http.post(format!("{}{path}", self.base)))
            .json(&body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(serde_json::Value::Null))
    }
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .auth(self.http.get(format!("{}{path}", self.base)))
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(serde_json::Value::Null))
    }
    pub async fn delete(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .auth(self.http.delete(format!("{}{path}", self.base)))
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(serde_json::Value::Null))
    }
    /// GET an SSE stream; returns the data JSON of every event (without [DONE]).
    pub async fn get_sse(&self, path: &str) -> Vec<serde_json::Value> {
        let r = self
            .auth(self.http.get(format!("{}{path}", self.base)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let body = r.text().await.unwrap();
        body.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }
}
