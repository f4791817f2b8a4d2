//! Spindle router: the OpenAI-compatible public API (Responses, Conversations,
//! Chat Completions, Completions, Models) in front of token-generating workers.
//!
//! Wire it up with [`app`], a [`Generator`] (usually [`HttpWorker`]) and a
//! [`ResponseStore`] ([`MemoryStore`] for one replica, [`RedisStore`] to share
//! state between router replicas).

pub mod api;
pub mod chain;
pub mod cluster;
pub mod config;
pub mod deadline;
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
use axum::routing::{get, post};

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

/// The public API plus `/health` and `/ready`; see [`app_with_ops`].
pub fn app_with_lifecycle(
    generator: Arc<dyn Generator>,
    store: Arc<dyn ResponseStore>,
    config: &RouterConfig,
    lifecycle: Arc<Lifecycle>,
) -> axum::Router {
    app_with_ops(generator, store, config, lifecycle, axum::Router::new())
}

/// The public API plus `/health` and `/ready` (open to all), and `stats`
/// (the binary's `/metrics`, `/load`: activity counters), which need an API
/// key when keys are set; none of them are in request metrics or logs. The
/// binary drains through `lifecycle` on SIGTERM. The generator and store
/// are wrapped here, so every route is measured the same way.
pub fn app_with_ops(
    generator: Arc<dyn Generator>,
    store: Arc<dyn ResponseStore>,
    config: &RouterConfig,
    lifecycle: Arc<Lifecycle>,
    stats: axum::Router,
) -> axum::Router {
    use api::{chat, conversations, models, ops};
    use responses::handlers as responses;
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
    let state = Arc::new(api::AppState {
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
    let api = axum::Router::new()
        .route("/v1/responses", post(responses::create))
        .route(
            "/v1/responses/{id}",
            get(responses::retrieve).delete(responses::delete),
        )
        .route("/v1/responses/{id}/cancel", post(responses::cancel))
        .route(
            "/v1/responses/{id}/input_items",
            get(responses::input_items),
        )
        .route("/v1/conversations", post(conversations::create))
        .route(
            "/v1/conversations/{id}",
            get(conversations::get)
                .post(conversations::update)
                .delete(conversations::delete),
        )
        .route(
            "/v1/conversations/{id}/items",
            get(conversations::list_items).post(conversations::add_items),
        )
        .route(
            "/v1/conversations/{id}/items/{item_id}",
            get(conversations::get_item).delete(conversations::delete_item),
        )
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(chat::completions))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{id}", get(models::get))
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
    // Probes: no API key, no per-request metrics or logs.
    let ops = axum::Router::new()
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready));
    let stats = stats.layer(axum::middleware::from_fn_with_state(
        state.clone(),
        api::authenticate,
    ));
    ops.merge(api).with_state(state).merge(stats)
}
