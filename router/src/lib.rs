//! Spindle router: the OpenAI-compatible public API (Responses, Conversations,
//! Chat Completions, Completions, Embeddings, Models) in front of token-generating workers.
//!
//! Wire it up with [`app`], a [`Generator`] (usually [`HttpWorker`]) and a
//! [`ResponseStore`] ([`MemoryStore`] for one replica, [`RedisStore`] to share
//! state between router replicas).

pub mod api;
pub mod chain;
pub mod cluster;
pub mod compaction;
pub mod config;
pub mod deadline;
mod embed_call;
pub mod error;
pub mod extract;
pub mod generator;
pub mod lifecycle;
pub mod responses;
pub mod sse;
pub mod store;
mod sync;
pub mod telemetry;
pub mod types;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;

pub use cluster::{ClusterConfig, ClusterGenerator};
pub use config::{RouterConfig, StoreKind};
pub use error::ApiError;
pub use generator::{GenerateError, Generator, HttpWorker};
pub use lifecycle::Lifecycle;
pub use store::{MemoryStore, RedisStore, ResponseStore};

async fn not_found() -> ApiError {
    ApiError::Http {
        status: StatusCode::NOT_FOUND,
        message: "Unknown endpoint.".into(),
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::Http {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: "Method not allowed for this endpoint.".into(),
    }
}

/// The public API as an axum router, with a life cycle of its own (tests,
/// benchmarks); see [`app_with_lifecycle`].
pub fn app(
    generator: Arc<dyn Generator>,
    store: Arc<dyn ResponseStore>,
    config: &RouterConfig,
) -> axum::Router {
    app_with_lifecycle(generator, store, config, Arc::default())
}

/// The public API plus `/health`, `/ready` and `/openapi.json`; see [`app_with_ops`].
pub fn app_with_lifecycle(
    generator: Arc<dyn Generator>,
    store: Arc<dyn ResponseStore>,
    config: &RouterConfig,
    lifecycle: Arc<Lifecycle>,
) -> axum::Router {
    app_with_ops(generator, store, config, lifecycle, axum::Router::new())
}

/// The public API plus `/health`, `/ready` and `/openapi.json` (open to
/// all), and `stats` (the binary's `/metrics`, `/load`: activity counters),
/// which need an API key when keys are set; none of them are in request metrics or logs. The
/// binary drains through `lifecycle` on SIGTERM. The generator and store
/// are wrapped here, so every route is measured the same way.
pub fn app_with_ops(
    generator: Arc<dyn Generator>,
    store: Arc<dyn ResponseStore>,
    config: &RouterConfig,
    lifecycle: Arc<Lifecycle>,
    stats: axum::Router,
) -> axum::Router {
    responses::websocket::register_metrics();
    metrics::gauge!("spindle_router_draining").set(if lifecycle.is_draining() { 1.0 } else { 0.0 });
    let store: Arc<dyn ResponseStore> = Arc::new(store::metered::MeteredStore::new(store));
    let backlog = crate::responses::Backlog::new(
        store.clone(),
        config.store_backlog_max,
        config.store_backlog_bytes,
    );
    // The binary loads the keys first (and fails on a bad file); here a load
    // error can only be a test's, and it fails closed.
    if let Err(e) = config.load_keys() {
        tracing::error!("API keys not loaded, refusing every request: {e}");
    }
    let compaction_key = match &config.compaction_key {
        Some(key) => key.clone(),
        None => {
            tracing::warn!(
                "no compaction key (--compaction-key-file or SPINDLE_COMPACTION_KEY): using a \
                 random one, so compaction items do not survive a restart and other replicas \
                 cannot open them"
            );
            // Without system randomness no id could be made either
            // (`uuid::Uuid::new_v4` panics the same way): nothing can be served.
            compaction::CompactionKey::random().expect("system randomness")
        }
    };
    for outcome in responses::compact::OUTCOMES {
        metrics::counter!(responses::compact::COMPACTIONS, "outcome" => outcome).increment(0);
    }
    let state = Arc::new(api::AppState {
        compaction: Arc::new(compaction::Sealer::new(&compaction_key)),
        keys: config.keys.clone(),
        limits: api::limits::TenantLimits::new(&config.limits),
        generator: Arc::new(telemetry::MeteredGenerator::new(Arc::new(
            deadline::Deadline::new(generator, config.request_timeout),
        ))),
        store,
        config: config.clone(),
        lifecycle: lifecycle.clone(),
        backlog,
    });
    // The routes come with their documentation (`api::openapi`).
    let (api, _) = api::openapi::api().split_for_parts();
    let api = api
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            api::limits::admit,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            api::authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            api::guard::check,
        ))
        .layer(axum::middleware::from_fn_with_state(
            lifecycle,
            lifecycle::refuse_while_draining,
        ))
        .layer(axum::middleware::from_fn(telemetry::track_requests))
        .layer(axum::middleware::from_fn(api::request_id::assign))
        .layer(DefaultBodyLimit::max(config.max_body_bytes));
    // Probes and /openapi.json: no API key, no per-request metrics or logs.
    // Every 405 is the same JSON error, on these routes too (axum's own is
    // an empty body); set after the routes, as it applies to those only.
    let (ops, _) = api::openapi::probes().split_for_parts();
    let ops = ops.method_not_allowed_fallback(method_not_allowed);
    let stats = stats.method_not_allowed_fallback(method_not_allowed).layer(
        axum::middleware::from_fn_with_state(state.clone(), api::authenticate),
    );
    ops.merge(api).with_state(state).merge(stats)
}
