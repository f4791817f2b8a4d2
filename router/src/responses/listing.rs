//! `GET /v1/responses`: a page of the caller's tenant's stored responses,
//! newest first by default, in the OpenAI list shape. The store keeps each
//! tenant's index (`ResponseStore::list_responses`); this is the HTTP side.

use axum::extract::State;
use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::{SharedState, Tenant};
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiQuery;
use crate::types::{ListOrder, ListQuery, ResponseObject};

/// A page of stored responses.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ResponseList {
    /// Always `list`.
    #[schema(value_type = String)]
    pub object: &'static str,
    pub data: Vec<ResponseObject>,
    /// Id of the first response of the page (`null` when it is empty).
    pub first_id: Option<String>,
    /// Id of the last one: the `after` of the next page.
    pub last_id: Option<String>,
    pub has_more: bool,
}

/// `GET /v1/responses` without a WebSocket upgrade (documented on
/// [`super::websocket::connect`], the route's one handler).
pub async fn list(
    State(st): State<SharedState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<ResponseList>> {
    let (limit, desc) = q.resolve()?;
    let order = if desc {
        ListOrder::Desc
    } else {
        ListOrder::Asc
    };
    let after = q.after.as_deref();
    let page = st
        .store
        .list_responses(&tenant, after, limit, order)
        .await?
        .ok_or_else(|| {
            ApiError::invalid(
                format!(
                    "no stored response with id '{}' to list after",
                    after.unwrap_or_default()
                ),
                Some("after"),
            )
        })?;
    Ok(Json(ResponseList {
        object: "list",
        first_id: page.data.first().map(|r| r.id.clone()),
        last_id: page.data.last().map(|r| r.id.clone()),
        has_more: page.has_more,
        data: page.data,
    }))
}
