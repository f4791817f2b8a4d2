//! `GET /v1/models` and `GET /v1/models/{id}`.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::SharedState;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiPath;

fn model_object(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": "spindle"})
}

/// `GET /v1/models`.
pub async fn list(State(st): State<SharedState>) -> Json<Value> {
    let data: Vec<Value> = st.model_names().iter().map(|m| model_object(m)).collect();
    Json(json!({"object": "list", "data": data}))
}

/// `GET /v1/models/{id}`.
pub async fn get(
    State(st): State<SharedState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    if st.model_names().contains(&id) {
        Ok(Json(model_object(&id)))
    } else {
        Err(ApiError::NotFound {
            message: format!("The model '{id}' does not exist"),
            param: Some("model".into()),
            code: Some("model_not_found".into()),
        })
    }
}
