//! Conversations: `POST/GET/DELETE /v1/conversations[/{id}]` and their items.
//! A response created with `conversation` reads the items as context and,
//! once it finishes, appends its input and output to them.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Extension;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::{SharedState, Tenant};
use crate::compaction::Summaries;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::responses::items::{list_page, normalize_items, InputItem, Item, ItemList};
use crate::store::{Appended, Conversation};
use crate::types::{new_id, now_secs, Deleted, ListQuery};

/// Body of `POST /v1/conversations`.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct CreateConversation {
    #[serde(default)]
    #[schema(value_type = Option<Vec<InputItem>>)]
    pub items: Option<Vec<Value>>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// Body of `POST /v1/conversations/{id}`.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct UpdateConversation {
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// Body of `POST /v1/conversations/{id}/items`.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct AddItems {
    #[schema(value_type = Vec<InputItem>, min_items = 1)]
    pub items: Vec<Value>,
}

/// Encoded size of an item, as the stores count it.
fn encoded_len(item: &Value) -> u64 {
    serde_json::to_vec(item).map_or(0, |v| v.len() as u64)
}

/// A compaction item joins a conversation only if this tenant can open it
/// (a response reading it later would fail otherwise).
fn check_compaction(st: &SharedState, tenant: &str, items: &[serde_json::Value]) -> ApiResult<()> {
    Summaries::default().open_items(&st.compaction, tenant, items, |i| {
        format!("items[{i}].encrypted_content")
    })
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Conversation with id '{id}' not found."))
}

#[utoipa::path(post, path = "/v1/conversations", tag = "conversations", operation_id = "createConversation",
    request_body = CreateConversation, responses((status = 200, description = "The new conversation.", body = Conversation)))]
/// `POST /v1/conversations`.
pub async fn create(
    State(st): State<SharedState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    ApiJson(body): ApiJson<CreateConversation>,
) -> ApiResult<Json<Conversation>> {
    let items = normalize_items(body.items.as_deref().unwrap_or_default(), "items")?;
    check_compaction(&st, &tenant, &items)?;
    let bytes: u64 = items.iter().map(encoded_len).sum();
    let cap = st.config.max_conversation_bytes;
    if bytes > cap {
        return Err(ApiError::conversation_too_large(bytes, cap, "items"));
    }
    let conv = Conversation {
        id: new_id("conv"),
        object: "conversation".into(),
        created_at: now_secs(),
        metadata: body.metadata.unwrap_or_default(),
    };
    st.store
        .insert_conversation(&tenant, conv.clone(), items)
        .await?;
    Ok(Json(conv))
}

#[utoipa::path(get, path = "/v1/conversations/{id}", tag = "conversations", operation_id = "getConversation",
    params(("id" = String, Path, description = "The conversation id (`conv_…`).")), responses((status = 200, description = "The conversation.", body = Conversation)))]
/// `GET /v1/conversations/{id}`.
pub async fn get(
    State(st): State<SharedState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Conversation>> {
    st.store
        .get_conversation(&tenant, &id)
        .await?
        .map(Json)
        .ok_or_else(|| not_found(&id))
}

#[utoipa::path(post, path = "/v1/conversations/{id}", tag = "conversations", operation_id = "updateConversation",
    params(("id" = String, Path, description = "The conversation id (`conv_…`).")), request_body = UpdateConversation,
    responses((status = 200, description = "The conversation with its new metadata.", body = Conversation)))]
/// `POST /v1/conversations/{id}` (metadata update).
pub async fn update(
    State(st): State<SharedState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateConversation>,
) -> ApiResult<Json<Conversation>> {
    st.store
        .update_conversation(&tenant, &id, body.metadata.unwrap_or_default())
        .await?
        .map(Json)
        .ok_or_else(|| not_found(&id))
}

#[utoipa::path(delete, path = "/v1/conversations/{id}", tag = "conversations", operation_id = "deleteConversation",
    params(("id" = String, Path, description = "The conversation id (`conv_…`).")), responses((status = 200, description = "Deleted.", body = Deleted)))]
/// `DELETE /v1/conversations/{id}`.
pub async fn delete(
    State(st): State<SharedState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Deleted>> {
    if st.store.delete_conversation(&tenant, &id).await? {
        Ok(Json(Deleted::new(id, "conversation.deleted")))
    } else {
        Err(not_found(&id))
    }
}

#[utoipa::path(get, path = "/v1/conversations/{id}/items", tag = "conversations", operation_id = "listConversationItems",
    params(("id" = String, Path, description = "The conversation id (`conv_…`)."), ListQuery), responses((status = 200, description = "A page of the conversation's items.", body = ItemList)))]
/// `GET /v1/conversations/{id}/items`.
pub async fn list_items(
    State(st): State<SharedState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<ItemList>> {
    let (limit, desc) = q.resolve()?;
    let items = st
        .store
        .conversation_items(&tenant, &id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(list_page(&items, q.after.as_deref(), limit, desc)?))
}

#[utoipa::path(post, path = "/v1/conversations/{id}/items", tag = "conversations", operation_id = "createConversationItems",
    params(("id" = String, Path, description = "The conversation id (`conv_…`).")), request_body = AddItems,
    responses((status = 200, description = "The added items.", body = ItemList)))]
/// `POST /v1/conversations/{id}/items`.
pub async fn add_items(
    State(st): State<SharedState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<AddItems>,
) -> ApiResult<Json<ItemList>> {
    if body.items.is_empty() {
        return Err(ApiError::invalid(
            "'items' must not be empty",
            Some("items"),
        ));
    }
    let items = normalize_items(&body.items, "items")?;
    check_compaction(&st, &tenant, &items)?;
    let cap = st.config.max_conversation_bytes;
    match st
        .store
        .append_conversation_items(&tenant, &id, items.clone(), cap)
        .await?
    {
        Appended::Done => list_page(&items, None, items.len(), false).map(Json),
        Appended::Unknown => Err(not_found(&id)),
        Appended::Full { bytes } => Err(ApiError::conversation_too_large(bytes, cap, "items")),
    }
}

#[utoipa::path(get, path = "/v1/conversations/{id}/items/{item_id}", tag = "conversations", operation_id = "getConversationItem",
    params(("id" = String, Path, description = "The conversation id (`conv_…`)."), ("item_id" = String, Path, description = "The item id.")), responses((status = 200, description = "The item.", body = Item)))]
/// `GET /v1/conversations/{id}/items/{item_id}`.
pub async fn get_item(
    State(st): State<SharedState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    ApiPath((id, item_id)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    let items = st
        .store
        .conversation_items(&tenant, &id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    items
        .into_iter()
        .find(|it| it.get("id").and_then(Value::as_str) == Some(item_id.as_str()))
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("Item with id '{item_id}' not found.")))
}

#[utoipa::path(delete, path = "/v1/conversations/{id}/items/{item_id}", tag = "conversations", operation_id = "deleteConversationItem",
    params(("id" = String, Path, description = "The conversation id (`conv_…`)."), ("item_id" = String, Path, description = "The item id.")), responses((status = 200, description = "The conversation.", body = Conversation)))]
/// `DELETE /v1/conversations/{id}/items/{item_id}`; returns the conversation.
pub async fn delete_item(
    State(st): State<SharedState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    ApiPath((id, item_id)): ApiPath<(String, String)>,
) -> ApiResult<Json<Conversation>> {
    match st
        .store
        .delete_conversation_item(&tenant, &id, &item_id)
        .await?
    {
        None => Err(not_found(&id)),
        Some(false) => Err(ApiError::not_found(format!(
            "Item with id '{item_id}' not found."
        ))),
        Some(true) => st
            .store
            .get_conversation(&tenant, &id)
            .await?
            .map(Json)
            .ok_or_else(|| not_found(&id)),
    }
}
