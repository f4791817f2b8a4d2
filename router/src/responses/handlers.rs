//! The Responses API's HTTP handlers: create (plain, streamed, background),
//! retrieve (also as a resumable stream), delete, cancel and input items.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tracing::Instrument;

use super::driver::{CancelSource, Driver, Events, Start};
use super::events::Sequenced;
use super::items::{list_page, ItemList};
use super::prepare::{prepare, Prepared};
use super::replay::follow;
use crate::api::{SharedState, Tenant};
use crate::cluster::key::session_id;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::sse::{done_event, sse_response};
use crate::store::{ResponseRecord, Subscription};
use crate::telemetry::ModelTag;
use crate::types::{CreateResponseRequest, Deleted, ListQuery, ResponseObject};

#[utoipa::path(post, path = "/v1/responses", tag = "responses", operation_id = "createResponse",
    request_body = CreateResponseRequest,
    responses((status = 200, description = "The response (`stream: false`; `background: true` answers at once, `queued`), \
or its events (`stream: true`): `event: <type>` frames whose data is one event, then `data: [DONE]`.",
        content((ResponseObject = "application/json"), (Sequenced = "text/event-stream")))))]
/// `POST /v1/responses`.
pub async fn create(
    State(st): State<SharedState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Extension(tag): Extension<ModelTag>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateResponseRequest>,
) -> ApiResult<Response> {
    let Prepared {
        response,
        record,
        gen,
        stream,
        ..
    } = prepare(&st, &tenant, session_id(&headers), req, &tag, None).await?;
    let input_items = record.input_items.clone();
    // Foreground: start generating before anything is stored or streamed, so a
    // worker refusal is an HTTP error the SDKs understand (and retry on 503).
    let start = if response.background {
        Start::Pending(Box::new(gen))
    } else {
        Start::Ready(st.generator.generate(gen).await?)
    };
    if response.store {
        st.store.insert_response(record).await?;
    }
    let id = response.id.clone();
    if matches!(start, Start::Pending(_)) {
        let Subscription { status, .. } = st
            .store
            .subscribe(&id)
            .await?
            .ok_or_else(|| ApiError::Internal("stored response vanished".into()))?;
        let active = st.lifecycle.begin(&tenant, &response);
        let driver = Driver::new(
            st.clone(),
            response.clone(),
            tenant.clone(),
            input_items,
            Events::Logged,
            active,
        );
        tokio::spawn(
            driver
                .run(start, CancelSource::Store(status))
                .in_current_span(),
        );
        if stream {
            return Ok(sse_response(follow(st, id, None)));
        }
        return Ok(Json(response).into_response());
    }
    let (guard, cancel_rx) = oneshot::channel::<()>();
    if stream {
        let (tx, rx) = mpsc::unbounded_channel();
        let active = st.lifecycle.begin(&tenant, &response);
        let driver = Driver::new(
            st.clone(),
            response,
            tenant.clone(),
            input_items,
            Events::Live(tx),
            active,
        );
        tokio::spawn(
            driver
                .run(start, CancelSource::Client(cancel_rx))
                .in_current_span(),
        );
        let events = UnboundedReceiverStream::new(rx)
            .map(move |ev| {
                let _keep = &guard;
                ev.sse()
            })
            .chain(futures::stream::once(async { done_event() }));
        return Ok(sse_response(events));
    }
    let active = st.lifecycle.begin(&tenant, &response);
    let driver = Driver::new(
        st.clone(),
        response,
        tenant,
        input_items,
        Events::Dropped,
        active,
    );
    let handle = tokio::spawn(
        driver
            .run(start, CancelSource::Client(cancel_rx))
            .in_current_span(),
    );
    let result = handle
        .await
        .map_err(|e| ApiError::Internal(format!("generation task failed: {e}")));
    drop(guard);
    let resp = result?;
    Ok(Json(resp).into_response())
}

async fn load(st: &SharedState, tenant: &str, id: &str) -> ApiResult<ResponseRecord> {
    st.store
        .get_response(tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Response with id '{id}' not found.")))
}

/// Query of `GET /v1/responses/{id}` (strings, so a bad value is a 400 naming it).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RetrieveQuery {
    /// `true`: stream the events of a background response.
    #[param(value_type = Option<bool>)]
    pub stream: Option<String>,
    /// With `stream=true`: only events after this sequence number.
    #[param(value_type = Option<u64>, minimum = 0)]
    pub starting_after: Option<String>,
}

#[utoipa::path(get, path = "/v1/responses/{id}", tag = "responses", operation_id = "getResponse",
    params(("id" = String, Path, description = "The response id (`resp_…`)."), RetrieveQuery),
    responses((status = 200, description = "The stored response, or (`stream=true`, background responses) its events from `starting_after` on.",
        content((ResponseObject = "application/json"), (Sequenced = "text/event-stream")))))]
/// `GET /v1/responses/{id}` (also `?stream=true&starting_after=N`).
pub async fn retrieve(
    State(st): State<SharedState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<RetrieveQuery>,
) -> ApiResult<Response> {
    let rec = load(&st, &tenant, &id).await?;
    let stream = match q.stream.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ApiError::invalid(
                "'stream' must be true or false",
                Some("stream"),
            ))
        }
    };
    if !stream {
        return Ok(Json(rec.response).into_response());
    }
    if !rec.response.background {
        return Err(ApiError::invalid(
            "only background responses can be streamed after creation",
            Some("stream"),
        ));
    }
    let after = match q.starting_after.as_deref() {
        None => None,
        Some(s) => Some(s.parse::<u64>().map_err(|_| {
            ApiError::invalid(
                "'starting_after' must be a non-negative integer",
                Some("starting_after"),
            )
        })?),
    };
    Ok(sse_response(follow(st, id, after)))
}

#[utoipa::path(delete, path = "/v1/responses/{id}", tag = "responses", operation_id = "deleteResponse",
    params(("id" = String, Path, description = "The response id (`resp_…`).")), responses((status = 200, description = "Deleted.", body = Deleted)))]
/// `DELETE /v1/responses/{id}`.
pub async fn delete(
    State(st): State<SharedState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Deleted>> {
    if st.store.delete_response(&tenant, &id).await? {
        Ok(Json(Deleted::new(id, "response.deleted")))
    } else {
        Err(ApiError::not_found(format!(
            "Response with id '{id}' not found."
        )))
    }
}

#[utoipa::path(post, path = "/v1/responses/{id}/cancel", tag = "responses", operation_id = "cancelResponse",
    params(("id" = String, Path, description = "The response id (`resp_…`).")), responses((status = 200, description = "The background response, cancelled unless it had already ended.", body = ResponseObject)))]
/// `POST /v1/responses/{id}/cancel`.
pub async fn cancel(
    State(st): State<SharedState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<ResponseObject>> {
    let rec = load(&st, &tenant, &id).await?;
    if !rec.response.background {
        return Err(ApiError::invalid(
            "Only responses created with background=true can be cancelled.",
            None,
        ));
    }
    let resp = st
        .store
        .cancel_response(&tenant, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Response with id '{id}' not found.")))?;
    Ok(Json(resp))
}

#[utoipa::path(get, path = "/v1/responses/{id}/input_items", tag = "responses", operation_id = "listInputItems",
    params(("id" = String, Path, description = "The response id (`resp_…`)."), ListQuery), responses((status = 200, description = "A page of the response's input items.", body = ItemList)))]
/// `GET /v1/responses/{id}/input_items`.
pub async fn input_items(
    State(st): State<SharedState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<ItemList>> {
    let (limit, desc) = q.resolve()?;
    let rec = load(&st, &tenant, &id).await?;
    Ok(Json(list_page(
        &rec.input_items,
        q.after.as_deref(),
        limit,
        desc,
    )?))
}
