//! `GET /v1/models` and `GET /v1/models/{id}`: the union of what the workers
//! serve, each with its owner and ready-worker count.

use axum::extract::State;
use axum::Json;
use spindle_proto::openai::{ModelCard, ModelList};

use super::SharedState;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiPath;

#[utoipa::path(get, path = "/v1/models", tag = "models", operation_id = "listModels",
    responses((status = 200, description = "The models the workers serve.", body = ModelList)))]
/// `GET /v1/models`.
pub async fn list(State(st): State<SharedState>) -> Json<ModelList> {
    Json(ModelList::new(st.generator.models()))
}

#[utoipa::path(get, path = "/v1/models/{id}", tag = "models", operation_id = "retrieveModel",
    params(("id" = String, Path, description = "A served model name.")),
    responses((status = 200, description = "The model.", body = ModelCard)))]
/// `GET /v1/models/{id}`.
pub async fn get(
    State(st): State<SharedState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<ModelCard>> {
    st.generator
        .models()
        .into_iter()
        .find(|m| m.id == id)
        .map(Json)
        .ok_or_else(|| ApiError::UnknownModel(format!("The model '{id}' does not exist")))
}
