//! HTTP handlers of the public API, one module per resource, and the shared state.

pub mod chat;
pub mod conversations;
pub mod embeddings;
pub mod guard;
pub mod keys;
pub mod limits;
pub mod models;
pub mod openapi;
pub mod ops;
pub mod request_id;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::config::RouterConfig;
use crate::error::ApiError;
use crate::generator::Generator;
use crate::lifecycle::Lifecycle;
use crate::store::{ResponseStore, ANONYMOUS_TENANT};

/// State shared by every handler.
pub struct AppState {
    pub generator: Arc<dyn Generator>,
    pub store: Arc<dyn ResponseStore>,
    pub config: RouterConfig,
    pub lifecycle: Arc<Lifecycle>,
    /// Final states waiting for the store to come back.
    pub backlog: Arc<crate::responses::Backlog>,
    /// The API keys in force (reloaded on SIGHUP).
    pub keys: keys::ApiKeys,
    /// Per-tenant concurrency and rate.
    pub limits: Arc<limits::TenantLimits>,
    /// Seals and opens compaction items.
    pub compaction: Arc<crate::compaction::Sealer>,
}

/// Shared state handle.
pub type SharedState = Arc<AppState>;

impl AppState {
    /// Names of the models served now (from the generator: the workers' listings).
    pub fn model_names(&self) -> Vec<String> {
        self.generator.models().into_iter().map(|m| m.id).collect()
    }

    /// The prefix-cache salt of `tenant`'s generations: the tenant itself
    /// under `--cache-isolation tenant` (with API keys on), else none.
    pub fn cache_salt<'a>(&self, tenant: &'a str) -> Option<&'a str> {
        let isolate = self.config.cache_isolation == crate::config::CacheIsolation::Tenant;
        (isolate && tenant != ANONYMOUS_TENANT).then_some(tenant)
    }

    /// Context window of `model` in tokens, as its workers report it.
    pub fn context_tokens(&self, model: &str) -> u32 {
        self.generator
            .models()
            .into_iter()
            .find(|m| m.id == model)
            .and_then(|m| m.max_model_len)
            .unwrap_or(crate::chain::DEFAULT_CONTEXT_TOKENS)
    }

    /// The model a request is for: the requested one when it is served; with
    /// none requested, the only model served. Unknown names are a 404 that
    /// lists the served ones.
    pub fn resolve_model(&self, requested: Option<&str>) -> Result<String, ApiError> {
        let names = self.model_names();
        match requested.filter(|m| !m.is_empty()) {
            Some(m) if names.iter().any(|n| n == m) => Ok(m.to_owned()),
            Some(m) => Err(ApiError::UnknownModel(format!(
                "The model '{m}' does not exist or you do not have access to it. Served models: {}.",
                served_list(&names)
            ))),
            None => match names.as_slice() {
                [only] => Ok(only.clone()),
                [] => Err(ApiError::Unavailable {
                    message: "No model is being served yet: no worker is ready.".into(),
                    retry_after: 1,
                }),
                _ => Err(ApiError::InvalidRequest {
                    message: format!(
                        "'model' is required: this server serves {}.",
                        served_list(&names)
                    ),
                    param: Some("model".into()),
                    code: Some("missing_required_parameter".into()),
                }),
            },
        }
    }
}

fn served_list(names: &[String]) -> String {
    if names.is_empty() {
        "none yet".into()
    } else {
        names.join(", ")
    }
}

/// What the listener attaches to each request of a connection (its share
/// of `--max-connections`): a handler that takes the connection over (a
/// WebSocket) keeps it, so the socket stays counted until it closes.
#[derive(Clone)]
pub struct ConnectionHold(pub Arc<dyn std::any::Any + Send + Sync>);

/// The tenant of a request (a request extension set by [`authenticate`]):
/// a stable hash of its API key, or [`ANONYMOUS_TENANT`] when auth is off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant(pub String);

pub use keys::tenant_of_key;

/// Middleware: with API keys configured, require `Authorization: Bearer
/// <key>` (scheme in any case; 401 otherwise); put the request's [`Tenant`]
/// into its extensions. Keys configured but not loaded refuse everyone.
pub async fn authenticate(State(st): State<SharedState>, mut req: Request, next: Next) -> Response {
    let tenant = if !(st.config.has_keys() || st.keys.enabled()) {
        ANONYMOUS_TENANT.to_owned()
    } else {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(spindle_proto::auth::bearer);
        match given.map(|k| st.keys.tenant(k)) {
            None => {
                return ApiError::Unauthorized(
                    "You didn't provide an API key. Provide it in the Authorization header \
                     (Authorization: Bearer YOUR_KEY)."
                        .into(),
                )
                .into_response()
            }
            Some(Some(tenant)) => tenant,
            Some(None) => {
                return ApiError::Unauthorized("Incorrect API key provided.".into()).into_response()
            }
        }
    };
    req.extensions_mut().insert(Tenant(tenant));
    next.run(req).await
}
