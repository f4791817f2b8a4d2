//! The router's request metrics: a middleware that counts and times every
//! API request by route, model and status, and [`MeteredGenerator`], which
//! times every generation (TTFT, inter-token latency, end to end) and counts
//! its tokens. Labels are bounded: routes are path templates, models are
//! served names, never request or response ids.
//!
//! ARCHITECTURE.md's metrics table documents each name.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use spindle_proto::openai::{EmbeddingRequest, EmbeddingResponse, ModelCard};
use spindle_proto::{GenerateEvent, GenerateRequest};

use crate::generator::{GenerateError, Generator};

/// Histogram buckets of the router's histograms, in seconds; the binary
/// installs them on the Prometheus recorder. LLM latencies span
/// milliseconds (inter-token) to minutes (long generations).
pub const BUCKETS: &[(&str, &[f64])] = &[
    (
        "spindle_router_request_duration_seconds",
        &[
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
        ],
    ),
    (
        "spindle_router_ttft_seconds",
        &[
            0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ],
    ),
    (
        "spindle_router_itl_seconds",
        &[
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ],
    ),
    (
        "spindle_router_e2e_seconds",
        &[
            0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
        ],
    ),
    (
        "spindle_router_store_duration_seconds",
        &[
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
        ],
    ),
];

/// The model a request turned out to be for, set by its handler once the
/// name is resolved; read by [`track_requests`] for the `model` label.
#[derive(Clone, Default)]
pub struct ModelTag(Arc<OnceLock<String>>);

impl ModelTag {
    pub fn set(&self, model: &str) {
        let _ = self.0.set(model.to_owned());
    }
}

/// Middleware: `spindle_router_requests_total{route,model,status}` and
/// `spindle_router_request_duration_seconds{route,model}` (until the
/// response head; streams are timed end to end by [`MeteredGenerator`]).
pub async fn track_requests(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let tag = ModelTag::default();
    req.extensions_mut().insert(tag.clone());
    let resp = next.run(req).await;
    let model = tag.0.get().cloned().unwrap_or_default();
    let status = resp.status().as_u16().to_string();
    metrics::counter!("spindle_router_requests_total",
        "route" => route.clone(), "model" => model.clone(), "status" => status)
    .increment(1);
    metrics::histogram!("spindle_router_request_duration_seconds", "route" => route, "model" => model)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// A [`Generator`] wrapper that measures every generation through it.
pub struct MeteredGenerator {
    inner: Arc<dyn Generator>,
}

impl MeteredGenerator {
    pub fn new(inner: Arc<dyn Generator>) -> Self {
        Self { inner }
    }
}

/// One generation's clock; records on its last event, and keeps
/// `spindle_router_inflight_streams` up while alive.
struct Timing {
    model: String,
    started: Instant,
    last_token: Option<Instant>,
}

impl Timing {
    fn new(model: String) -> Self {
        metrics::gauge!("spindle_router_inflight_streams", "model" => model.clone()).increment(1);
        Self {
            model,
            started: Instant::now(),
            last_token: None,
        }
    }

    fn observe(&mut self, ev: &GenerateEvent) {
        let now = Instant::now();
        let model = || self.model.clone();
        match ev {
            GenerateEvent::Delta { .. }
            | GenerateEvent::ToolCall { .. }
            | GenerateEvent::ToolArguments { .. } => {
                match self.last_token {
                    None => metrics::histogram!("spindle_router_ttft_seconds", "model" => model())
                        .record((now - self.started).as_secs_f64()),
                    Some(t) => {
                        metrics::histogram!("spindle_router_itl_seconds", "model" => model())
                            .record((now - t).as_secs_f64())
                    }
                }
                self.last_token = Some(now);
            }
            GenerateEvent::Done { usage, .. } => {
                metrics::histogram!("spindle_router_e2e_seconds", "model" => model())
                    .record((now - self.started).as_secs_f64());
                let count = |name: &'static str, n: u32| {
                    metrics::counter!(name, "model" => model()).increment(u64::from(n));
                };
                count("spindle_router_input_tokens_total", usage.prompt_tokens);
                count(
                    "spindle_router_output_tokens_total",
                    usage.completion_tokens,
                );
                count("spindle_router_cached_tokens_total", usage.cached_tokens);
            }
            // Prompt scores are not output: no time to first token.
            GenerateEvent::Prompt { .. } | GenerateEvent::Error { .. } => {}
        }
    }
}

impl Drop for Timing {
    fn drop(&mut self) {
        metrics::gauge!("spindle_router_inflight_streams", "model" => self.model.clone())
            .decrement(1);
    }
}

impl Generator for MeteredGenerator {
    fn generate(
        &self,
        req: GenerateRequest,
    ) -> BoxFuture<'static, Result<BoxStream<'static, GenerateEvent>, GenerateError>> {
        let timing = Timing::new(req.model.clone().unwrap_or_default());
        let started = self.inner.generate(req);
        Box::pin(async move {
            let stream = started.await?;
            Ok(stream
                .scan(timing, |timing, ev| {
                    timing.observe(&ev);
                    futures::future::ready(Some(ev))
                })
                .boxed())
        })
    }

    /// Requests are counted and timed by the route middleware.
    fn embed(
        &self,
        req: EmbeddingRequest,
    ) -> BoxFuture<'static, Result<EmbeddingResponse, GenerateError>> {
        self.inner.embed(req)
    }

    fn models(&self) -> Vec<ModelCard> {
        self.inner.models()
    }

    fn ready(&self) -> Result<(), String> {
        self.inner.ready()
    }
}
