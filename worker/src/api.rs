//! The worker's HTTP API.
//!
//! - `POST /v1/generate`: the router's internal call; chunked NDJSON, one
//!   [`GenerateEvent`] per line. `POST /v1/generate/{id}/cancel` cancels.
//! - `POST /v1/chat/completions`, `POST /v1/completions`,
//!   `POST /v1/embeddings`, `GET /v1/models`:
//!   OpenAI-compatible, so a worker also stands alone.
//! - `GET /health` (alive), `GET /ready` (loaded, not draining), `GET /load`,
//!   `GET /metrics` (Prometheus).
//!
//! With a worker token (`--worker-token-file` / `SPINDLE_WORKER_TOKEN`) the
//! generating routes and cancel need `Authorization: Bearer <token>` (401
//! otherwise); `/v1/models` and the operational routes stay open, so the
//! router's probes and Prometheus need no secret.
//!
//! A client that goes away drops the response body, which drops the event
//! receiver, which the engine notices at its next step and cancels.

use crate::engine::EngineStats;
use crate::error::WorkerError;
use crate::Worker;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::de::DeserializeOwned;
use serde_json::json;
use spindle_proto::auth::SharedToken;
use spindle_proto::openai::{
    parse_body, ChatCompletionRequest, Completer, CompletionRequest, EmbeddingRequest,
    EmbeddingResponse, Endpoint, ModelCard, ModelList,
};
use spindle_proto::{GenerateEvent, GenerateRequest, LoadReport, STREAM_KEEPALIVE};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// JSON body extractor whose rejections are OpenAI-shaped errors.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = WorkerError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // Any content type is read as JSON: curl users forget the header.
        let body = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                WorkerError::PayloadTooLarge
            } else {
                WorkerError::invalid(rej.body_text(), None)
            }
        })?;
        Ok(Self(parse_body(&body)?))
    }
}

#[derive(Clone)]
struct AppState {
    worker: Worker,
    metrics: Option<PrometheusHandle>,
}

/// All worker routes. `metrics` renders `/metrics` when given; with
/// `token`, the generating routes and cancel require it.
pub fn router(
    worker: Worker,
    metrics: Option<PrometheusHandle>,
    token: Option<SharedToken>,
) -> Router {
    let state = AppState {
        worker: worker.clone(),
        metrics: metrics.clone(),
    };
    let mut generating = Router::new()
        .route("/v1/generate", post(generate))
        .route("/v1/generate/{id}/cancel", post(cancel))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route(
            "/v1/embeddings",
            post(embeddings).layer(DefaultBodyLimit::max(MAX_EMBEDDING_BODY_BYTES)),
        );
    if let Some(token) = token {
        generating =
            generating.route_layer(axum::middleware::from_fn_with_state(token, require_token));
    }
    generating
        .route("/v1/models", get(models))
        .with_state(state)
        .merge(ops_router(worker, metrics))
}

/// Middleware: the request must carry the worker token (compared as
/// digests, in constant time).
async fn require_token(State(token): State<SharedToken>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if token.admits(given) {
        next.run(req).await
    } else {
        WorkerError::Unauthorized.into_response()
    }
}

/// The operational routes (`/health`, `/ready`, `/load`, `/metrics`).
pub fn ops_router(worker: Worker, metrics: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .with_state(AppState {
            worker: worker.clone(),
            metrics: metrics.clone(),
        })
        .merge(stats_router(worker, metrics))
}

/// Only `/load` and `/metrics`, for a process whose router answers
/// `/health` and `/ready` itself (`spindle serve`).
pub fn stats_router(worker: Worker, metrics: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/load", get(load))
        .route("/metrics", get(render_metrics))
        .with_state(AppState { worker, metrics })
}

/// The NDJSON lines of `events`, with an empty line whenever the stream has
/// been silent for [`STREAM_KEEPALIVE`] (queued or prefilling) while the
/// engine loop kept turning: the router treats a longer silence as a hung
/// worker, and a stuck engine writes no keep-alives to hide it.
fn with_keepalives(
    events: impl Stream<Item = GenerateEvent> + Send + Unpin + 'static,
    stats: Arc<EngineStats>,
) -> impl Stream<Item = Vec<u8>> + Send + 'static {
    let beat = stats.beats.load(Ordering::Relaxed);
    futures::stream::unfold(
        (events, stats, beat),
        |(mut events, stats, mut beat)| async move {
            loop {
                match tokio::time::timeout(STREAM_KEEPALIVE, events.next()).await {
                    Err(_) => {
                        let now = stats.beats.load(Ordering::Relaxed);
                        if now != beat {
                            beat = now;
                            return Some((b"\n".to_vec(), (events, stats, beat)));
                        }
                    }
                    Ok(None) => return None,
                    Ok(Some(e)) => {
                        let mut line = serde_json::to_vec(&e).unwrap_or_default();
                        line.push(b'\n');
                        return Some((line, (events, stats, beat)));
                    }
                }
            }
        },
    )
}

async fn generate(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<GenerateRequest>,
) -> Result<Response, WorkerError> {
    let events = st.worker.generate(req).await?;
    let lines = with_keepalives(events, st.worker.engine.stats.clone()).map(Ok::<_, Infallible>);
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

async fn cancel(State(st): State<AppState>, Path(id): Path<String>) -> Json<serde_json::Value> {
    st.worker.engine.cancel(&id);
    Json(json!({"id": id, "cancelled": true}))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn check_model(st: &AppState, model: Option<&str>) -> Result<(), WorkerError> {
    match model {
        Some(m) if !m.is_empty() && !st.worker.serves(m) => {
            Err(WorkerError::UnknownModel(m.to_owned()))
        }
        _ => Ok(()),
    }
}

/// A whole completion, or its SSE stream: the protocol's [`Completer`]
/// shapes both, so the router's endpoints answer the same.
async fn complete(
    events: impl Stream<Item = GenerateEvent> + Send + Unpin + 'static,
    mut completer: Completer,
    stream: bool,
) -> Result<Response, WorkerError> {
    if !stream {
        let mut events = events;
        while let Some(ev) = events.next().await {
            match completer.collect(ev) {
                None => continue,
                Some(Ok(done)) => return Ok(Json(done).into_response()),
                Some(Err(failed)) => return Err(WorkerError::Engine(failed.message)),
            }
        }
        return Err(WorkerError::Submit(crate::engine::SubmitError::Stopped));
    }
    let first = futures::stream::iter(completer.start());
    let body = events
        .scan(false, move |done, ev| {
            if *done {
                return futures::future::ready(None);
            }
            let (items, last) = completer.stream(ev);
            *done = last;
            futures::future::ready(Some(futures::stream::iter(items)))
        })
        .flatten();
    let frames = first
        .chain(body)
        .map(|item| Event::default().data(serde_json::to_string(&item).unwrap_or_default()))
        .chain(futures::stream::once(futures::future::ready(
            Event::default().data("[DONE]"),
        )))
        .map(Ok::<_, Infallible>);
    Ok(Sse::new(frames)
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn chat_completions(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<ChatCompletionRequest>,
) -> Result<Response, WorkerError> {
    check_model(&st, req.model.as_deref())?;
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let gen = req.to_generate(id.clone())?;
    let logprobs = gen.sampling.logprobs.is_some();
    let events = st.worker.generate(gen).await?;
    let model = st.worker.model_name().to_owned();
    let completer = Completer::new(Endpoint::Chat, id, now_secs(), model, req.include_usage())
        .with_logprobs(logprobs);
    complete(events, completer, req.stream).await
}

async fn completions(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, WorkerError> {
    check_model(&st, req.model.as_deref())?;
    let id = format!("cmpl-{}", uuid::Uuid::new_v4().simple());
    let gen = req.to_generate(id.clone())?;
    let logprobs = gen.sampling.logprobs.is_some();
    let events = st.worker.generate(gen).await?;
    let model = st.worker.model_name().to_owned();
    let endpoint = Endpoint::Completions;
    let completer = Completer::new(endpoint, id, now_secs(), model, req.include_usage())
        .with_logprobs(logprobs)
        .with_echo(req.echoed());
    complete(events, completer, req.stream).await
}

/// Largest `/v1/embeddings` body: above the router's default body limit
/// (8 MiB), so what a router accepts a worker accepts too.
pub const MAX_EMBEDDING_BODY_BYTES: usize = 16 << 20;

async fn embeddings(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<EmbeddingRequest>,
) -> Result<Json<EmbeddingResponse>, WorkerError> {
    st.worker.embed(req).await.map(Json)
}

async fn models(State(st): State<AppState>) -> Json<ModelList> {
    Json(ModelList::new(
        st.worker
            .model_names()
            .iter()
            .map(|name| {
                ModelCard::new(name.clone(), "spindle", 1)
                    .with_max_model_len(st.worker.engine.config.ctx_size)
            })
            .collect(),
    ))
}

async fn ready(State(st): State<AppState>) -> (StatusCode, &'static str) {
    if st.worker.engine.stats.draining.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else {
        (StatusCode::OK, "ready")
    }
}

async fn load(State(st): State<AppState>) -> Json<LoadReport> {
    Json(st.worker.load_report())
}

async fn render_metrics(State(st): State<AppState>) -> Response {
    match &st.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled").into_response(),
    }
}
