//! Operational endpoints, outside authentication and request metrics:
//! `GET /health` (the process is alive) and `GET /ready` (it can serve:
//! not draining, the store answers, every served model has a ready worker).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;

use super::SharedState;

/// The body of `/health` and `/ready`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[utoipa::path(get, path = "/health", tag = "operations", operation_id = "health",
    responses((status = 200, description = "The process is alive.", body = Health)))]
/// `GET /health`: 200 while the process runs.
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok",
        reason: None,
    })
}

#[utoipa::path(get, path = "/ready", tag = "operations", operation_id = "ready",
    responses((status = 200, description = "Ready for traffic.", body = Health),
        (status = 503, description = "Not ready: draining, the store does not answer, or a served model has no ready worker.", body = Health)))]
/// `GET /ready`: 200 when this replica should get traffic, else 503 with why.
pub async fn ready(State(st): State<SharedState>) -> (StatusCode, Json<Health>) {
    let unready = |reason: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "unavailable",
                reason: Some(reason),
            }),
        )
    };
    if st.lifecycle.is_draining() {
        return unready("draining".into());
    }
    if let Err(e) = st.store.ping().await {
        return unready(format!("store: {e}"));
    }
    if let Err(why) = st.generator.ready() {
        return unready(why);
    }
    (
        StatusCode::OK,
        Json(Health {
            status: "ready",
            reason: None,
        }),
    )
}
