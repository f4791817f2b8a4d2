//! `POST /v1/embeddings`: the request checked by the protocol's one
//! validation (`spindle_proto::openai::embeddings`), its model resolved
//! against the cluster, the vectors made by a worker of that model (load
//! balanced; no cache affinity) and sent in the encoding asked for.

use axum::extract::State;
use axum::{Extension, Json};
use spindle_proto::openai::{EmbeddingRequest, EmbeddingResponse};

use super::SharedState;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::telemetry::ModelTag;

#[utoipa::path(post, path = "/v1/embeddings", tag = "embeddings", operation_id = "createEmbedding",
    request_body = EmbeddingRequest,
    responses((status = 200, description = "One L2-normalized vector per input, in input order: \
JSON floats, or base64 of little-endian f32 values (`encoding_format: base64`).", body = EmbeddingResponse)))]
/// `POST /v1/embeddings`.
pub async fn create(
    State(st): State<SharedState>,
    Extension(tag): Extension<ModelTag>,
    ApiJson(mut req): ApiJson<EmbeddingRequest>,
) -> ApiResult<Json<EmbeddingResponse>> {
    req.inputs()?;
    let model = st.resolve_model(Some(req.model_name()?))?;
    tag.set(&model);
    req.model = Some(model);
    let format = req.encoding_format;
    let resp = st.generator.embed(req).await?;
    resp.into_format(format)
        .map(Json)
        .map_err(|e| ApiError::BadGateway(e.to_string()))
}
