//! A fake worker for tests and benchmarks: the worker's HTTP API (`/v1/generate`
//! NDJSON, cancel, `/ready`, `/load`, `/health`) plus an OpenAI
//! `/v1/chat/completions`, streaming `t0 t1 t2 …` with no model behind it,
//! and `/v1/embeddings` ([`crate::fake_embeddings`]).
//!
//! Knobs in [`FakeControl`] make it slow, fail, die mid-stream, drain or vanish.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use futures::StreamExt;
use serde_json::{json, Value};
use spindle_proto::{
    openai::{ModelCard, ModelList},
    FinishReason, GenerateEvent, GenerateRequest, LoadReport, PromptInput, Timings, Usage,
};

/// Live controls of a [`FakeWorker`].
#[derive(Debug, Default)]
pub struct FakeControl {
    /// Tokens a request produces (before `max_tokens`).
    pub tokens: AtomicU32,
    /// Pause before each token, in microseconds.
    pub token_delay_us: AtomicU64,
    /// `/ready` answers 503 and `/load` says draining.
    pub draining: AtomicBool,
    /// When non-zero, `/v1/generate` answers with this status.
    pub generate_status: AtomicU16,
    /// When non-zero, a stream breaks (connection cut) after this many tokens.
    pub die_after: AtomicU32,
    /// When set, a stream breaks before its first token.
    pub die_before_first: AtomicBool,
    /// When non-zero, a stream goes silent (still open) after this many
    /// tokens, like a worker under SIGSTOP.
    pub stall_after: AtomicU32,
    /// When set, `/v1/generate` never answers (a hung worker).
    pub stall_headers: AtomicBool,
    /// When set, `/ready` and `/load` answer 500.
    pub unhealthy: AtomicBool,
    /// Streams open now.
    pub running: AtomicU32,
    /// `/v1/generate` and chat requests received.
    pub requests: AtomicU64,
    /// `/v1/embeddings` requests received (also counted in `requests`).
    pub embed_requests: AtomicU64,
    /// Cancel calls received.
    pub cancels: AtomicU64,
    /// The model `/v1/models` lists (`fake` when unset).
    pub model: std::sync::OnceLock<String>,
    /// When set, generate, cancel and chat need `Authorization: Bearer
    /// <token>` (401 otherwise), like a worker with a worker token.
    pub token: std::sync::OnceLock<String>,
    /// Requests refused for a missing or wrong token.
    pub unauthorized: AtomicU64,
}

/// A fake worker serving on a random local port until killed or dropped.
pub struct FakeWorker {
    pub url: String,
    pub addr: std::net::SocketAddr,
    pub ctl: Arc<FakeControl>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeWorker {
    fn drop(&mut self) {
        self.server.abort();
    }
}

struct Running(Arc<FakeControl>);
impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

impl FakeWorker {
    /// Starts on 127.0.0.1 with a random port; each request yields `tokens` tokens.
    pub async fn spawn(tokens: u32, token_delay: Duration) -> std::io::Result<Self> {
        Self::spawn_on("127.0.0.1:0", tokens, token_delay).await
    }

    pub async fn spawn_on(addr: &str, tokens: u32, token_delay: Duration) -> std::io::Result<Self> {
        let ctl = Arc::new(FakeControl::default());
        ctl.tokens.store(tokens, Ordering::Relaxed);
        ctl.token_delay_us
            .store(token_delay.as_micros() as u64, Ordering::Relaxed);
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = router(ctl.clone());
        let server = tokio::spawn(async move {
            // Connections live in this set: aborting the task closes them all,
            // like a process that died.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let (sock, _) = match listener.accept().await {
                    Ok(s) => s,
                    Err(_) => continue,
                };
                let _ = sock.set_nodelay(true);
                let svc = hyper_util::service::TowerToHyperService::new(app.clone());
                conns.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(Self {
            url: format!("http://{addr}"),
            addr,
            ctl,
            server,
        })
    }

    /// Dies: the port closes and every open connection is cut.
    pub fn kill(&self) {
        self.server.abort();
    }
}

/// The fake's routes (to serve elsewhere, e.g. from a benchmark process).
pub fn router(ctl: Arc<FakeControl>) -> axum::Router {
    axum::Router::new()
        .route("/v1/generate", post(generate))
        .route("/v1/generate/{id}/cancel", post(cancel))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .route_layer(axum::middleware::from_fn_with_state(
            ctl.clone(),
            require_token,
        ))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/load", get(load))
        .with_state(ctl)
}

/// The worker-token check, when [`FakeControl::token`] is set.
async fn require_token(
    State(ctl): State<Arc<FakeControl>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(token) = ctl.token.get() {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(spindle_proto::auth::bearer);
        if given != Some(token.as_str()) {
            ctl.unauthorized.fetch_add(1, Ordering::Relaxed);
            let body = json!({"error": {"message": "bad worker token", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}});
            return (StatusCode::UNAUTHORIZED, Json(body)).into_response();
        }
    }
    next.run(req).await
}

async fn ready(State(ctl): State<Arc<FakeControl>>) -> Response {
    if ctl.unhealthy.load(Ordering::Relaxed) {
        (StatusCode::INTERNAL_SERVER_ERROR, "broken").into_response()
    } else if ctl.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else {
        "ready".into_response()
    }
}

async fn load(State(ctl): State<Arc<FakeControl>>) -> Response {
    if ctl.unhealthy.load(Ordering::Relaxed) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "broken").into_response();
    }
    Json(LoadReport {
        running: ctl.running.load(Ordering::Relaxed),
        waiting: 0,
        max_seqs: 64,
        kv_used: 0,
        kv_total: 4096,
        draining: ctl.draining.load(Ordering::Relaxed),
        ..LoadReport::default()
    })
    .into_response()
}

async fn models(State(ctl): State<Arc<FakeControl>>) -> Json<ModelList> {
    let id = ctl.model.get().map_or("fake", String::as_str).to_owned();
    Json(ModelList::new(vec![ModelCard::new(id, "spindle", 1)]))
}

async fn cancel(State(ctl): State<Arc<FakeControl>>, Path(id): Path<String>) -> Json<Value> {
    ctl.cancels.fetch_add(1, Ordering::Relaxed);
    Json(json!({"id": id, "cancelled": true}))
}

fn words(s: &str) -> u32 {
    s.split_whitespace().count() as u32
}

/// Token events `t{start} … t{end-1}`, then a `Done`; `None` items cut the connection.
fn token_stream(
    ctl: Arc<FakeControl>,
    start: u32,
    max_tokens: Option<u32>,
    prompt_tokens: u32,
) -> impl futures::Stream<Item = Option<GenerateEvent>> + Send {
    ctl.requests.fetch_add(1, Ordering::Relaxed);
    ctl.running.fetch_add(1, Ordering::Relaxed);
    let guard = Running(ctl.clone());
    let total = ctl.tokens.load(Ordering::Relaxed);
    let end = max_tokens.map_or(total, |m| total.min(start.saturating_add(m)));
    let delay = Duration::from_micros(ctl.token_delay_us.load(Ordering::Relaxed));
    let die_after = if ctl.die_before_first.load(Ordering::Relaxed) {
        Some(0)
    } else {
        Some(ctl.die_after.load(Ordering::Relaxed)).filter(|&d| d > 0)
    };
    let stall_after = Some(ctl.stall_after.load(Ordering::Relaxed)).filter(|&d| d > 0);
    futures::stream::unfold((start, false, guard), move |(i, done, guard)| async move {
        if done {
            return None;
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if die_after == Some(i - start) {
            return Some((None, (i, true, guard)));
        }
        if stall_after == Some(i - start) {
            std::future::pending::<()>().await;
        }
        if i < end {
            let ev = GenerateEvent::delta(format!("t{i} "), vec![i as i32]);
            return Some((Some(ev), (i + 1, false, guard)));
        }
        let ev = GenerateEvent::Done {
            finish_reason: if i < total {
                FinishReason::Length
            } else {
                FinishReason::Stop
            },
            usage: Usage {
                prompt_tokens: prompt_tokens + start,
                cached_tokens: 0,
                completion_tokens: i - start,
            },
            timings: Timings::default(),
        };
        Some((Some(ev), (i, true, guard)))
    })
}

async fn generate(
    State(ctl): State<Arc<FakeControl>>,
    Json(req): Json<GenerateRequest>,
) -> Response {
    let served = ctl.model.get().map_or("fake", String::as_str);
    if req.model.as_deref().is_some_and(|m| m != served) {
        // Like a real worker: a request for another model was misrouted.
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": {"message": "model not served here", "type": "not_found_error"}})),
        )
            .into_response();
    }
    if ctl.stall_headers.load(Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
    let status = ctl.generate_status.load(Ordering::Relaxed);
    if status != 0 {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (
            code,
            Json(json!({"error": {"message": "fake failure", "type": "server_error"}})),
        )
            .into_response();
    }
    let start = req.continuation.as_deref().map_or(0, words);
    let prompt = match &req.input {
        PromptInput::Messages(m) => m.iter().map(|m| words(&m.content)).sum(),
        PromptInput::Prompt(p) => words(p),
        PromptInput::Tokens(t) => t.len() as u32,
    };
    let lines = token_stream(ctl, start, req.sampling.max_tokens, prompt).map(|ev| match ev {
        Some(ev) => {
            let mut line = serde_json::to_vec(&ev).unwrap_or_default();
            line.push(b'\n');
            Ok(line)
        }
        None => Err(std::io::Error::other("fake worker died")),
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response()
}

async fn embeddings(
    State(ctl): State<Arc<FakeControl>>,
    Json(req): Json<spindle_proto::openai::EmbeddingRequest>,
) -> Response {
    ctl.requests.fetch_add(1, Ordering::Relaxed);
    ctl.embed_requests.fetch_add(1, Ordering::Relaxed);
    let served = ctl.model.get().map_or("fake", String::as_str);
    if req.model.as_deref().is_some_and(|m| m != served) {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": {"message": "model not served here", "type": "not_found_error"}})),
        )
            .into_response();
    }
    let status = ctl.generate_status.load(Ordering::Relaxed);
    if status != 0 {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (
            code,
            Json(json!({"error": {"message": "fake failure", "type": "server_error"}})),
        )
            .into_response();
    }
    use crate::fake_embeddings::{fake_embeddings, FakeRefusal};
    match fake_embeddings(&req) {
        Ok(resp) => Json(resp).into_response(),
        Err(FakeRefusal::BadRequest(e)) => {
            (StatusCode::BAD_REQUEST, Json(json!({ "error": e }))).into_response()
        }
        Err(FakeRefusal::Busy) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Json(json!({"error": {"message": "busy", "type": "server_error"}})),
        )
            .into_response(),
    }
}

async fn chat(State(ctl): State<Arc<FakeControl>>, Json(body): Json<Value>) -> Response {
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let max_tokens = body
        .get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64)
        .map(|v| v as u32);
    let prompt = body
        .get("messages")
        .and_then(Value::as_array)
        .map_or(0, |ms| {
            ms.iter()
                .filter_map(|m| m.get("content").and_then(Value::as_str))
                .map(words)
                .sum()
        });
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("fake")
        .to_owned();
    let events = token_stream(ctl, 0, max_tokens, prompt);
    if !stream {
        let evs: Vec<_> = events.collect().await;
        let mut text = String::new();
        let mut usage = Usage::default();
        for ev in evs.into_iter().flatten() {
            match ev {
                GenerateEvent::Delta { text: t, .. } => text.push_str(&t),
                GenerateEvent::Done { usage: u, .. } => usage = u,
                _ => {}
            }
        }
        return Json(json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                      "total_tokens": usage.prompt_tokens + usage.completion_tokens},
        }))
        .into_response();
    }
    let chunks = events
        .map(move |ev| {
            let chunk = |delta: Value, finish: Value| {
                let c = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
                    "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
                format!("data: {c}\n\n")
            };
            match ev {
                Some(GenerateEvent::Delta { text, .. }) => {
                    Ok::<_, std::io::Error>(chunk(json!({"content": text}), Value::Null))
                }
                Some(GenerateEvent::Done { .. }) => {
                    Ok(chunk(json!({}), json!("stop")) + "data: [DONE]\n\n")
                }
                Some(_) | None => {
                    Err(std::io::Error::other("fake worker died"))
                }
            }
        })
        .map(|r: Result<String, std::io::Error>| r.map(bytes::Bytes::from));
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(chunks),
    )
        .into_response()
}
