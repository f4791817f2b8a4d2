//! The OpenAPI 3.1 document of the public API, served at `GET /openapi.json`.
//!
//! It is derived, not written: every route is registered here through
//! utoipa-axum's `routes!`, which takes the handler's `#[utoipa::path]`
//! (method, path, parameters, body, 200 response) and the `ToSchema` types
//! it names, so a route cannot be served without being documented, nor
//! documented without being served. What many routes share is added by rule
//! in [`document`]: the bearer scheme on `/v1/*` and the OpenAI error
//! responses each kind of route can return, and the event envelope of SSE
//! answers. `lib.rs` adds the layers
//! (auth, limits, guards) and the fallbacks to these routes.

use std::sync::OnceLock;

use axum::Json;
use spindle_proto::openai::ErrorBody;
use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{AnyOfBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{chat, conversations, embeddings, models, ops, SharedState};
use crate::lifecycle::GENERATING;
use crate::responses::compact;
use crate::responses::handlers as responses;
use crate::responses::websocket;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Spindle",
        description = "The OpenAI-compatible API of a Spindle router (`spindle router`, `spindle serve`).

Errors are always the OpenAI error body `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`. \
Besides those listed per operation, any request can get 404 `unknown_url` (no such path), \
405 `method_not_allowed` (a known path, another method), 414 (URI over 8 KiB), 431 (over 100 \
headers or 32 KiB of them) and, on a server without API keys bound to loopback, 421 for a `Host` \
that is not loopback.

Not described here: `GET /metrics` (Prometheus text) and, on `spindle serve`, `GET /load` (the \
worker's load report). They are on the API port, behind the API keys when keys are set, or on \
`--metrics-port` when it is given.

WebSocket mode: `GET /v1/responses` with WebSocket upgrade headers (and the same `Authorization` \
header; a bad key gets 401 before the upgrade) opens a connection. The client sends \
`{\"type\": \"response.create\", ...the create body...}` text messages (without `stream`, \
`stream_options`, `background`); the server answers each, one at a time, with the same event \
objects as the `text/event-stream` answer of `POST /v1/responses`, one per text message, and \
reports errors as `{\"type\": \"error\", \"status\", \"error\": {\"type\", \"code\", \"message\", \"param\"}}`. \
The connection keeps its latest response in memory, so `store: false` chains continue on it. \
It lives at most `--websocket-max-lifetime-secs` (error `websocket_connection_limit_reached`)."
    ),
    tags(
        (name = "responses", description = "The Responses API"),
        (name = "conversations", description = "Conversations: items a response can read and extend"),
        (name = "chat", description = "Chat Completions and (legacy) Completions"),
        (name = "embeddings", description = "Embeddings: one vector per input"),
        (name = "models", description = "The models the workers serve"),
        (name = "operations", description = "Probes and this document: no API key needed"),
    ),
    components(schemas(ErrorBody))
)]
struct ApiDoc;

/// The `/v1` routes; they need an API key when keys are set.
pub fn api() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        // One GET handler: a WebSocket upgrade, else the list of stored
        // responses (axum allows one handler per method and path).
        .routes(routes!(responses::create, websocket::connect))
        // A path of its own: matched before `/v1/responses/{id}`.
        .routes(routes!(compact::compact))
        .routes(routes!(responses::retrieve, responses::delete))
        .routes(routes!(responses::cancel))
        .routes(routes!(responses::input_items))
        .routes(routes!(conversations::create))
        .routes(routes!(
            conversations::get,
            conversations::update,
            conversations::delete
        ))
        .routes(routes!(conversations::list_items, conversations::add_items))
        .routes(routes!(conversations::get_item, conversations::delete_item))
        .routes(routes!(chat::chat_completions))
        .routes(routes!(chat::completions))
        .routes(routes!(embeddings::create))
        .routes(routes!(models::list))
        .routes(routes!(models::get))
}

/// `/health`, `/ready` and `/openapi.json`: open to all, outside request metrics.
pub fn probes() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .routes(routes!(ops::health))
        .routes(routes!(ops::ready))
        .routes(routes!(openapi_json))
}

/// `GET /openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", operation_id = "openapi",
    responses((status = 200, description = "This document (OpenAPI 3.1).", body = Object)))]
pub async fn openapi_json() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(document())
}

/// The document, built once (it depends on the code only, not on flags).
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(build)
}

const BEARER: &str = "bearer";

/// The reusable error responses: (name, status, description).
const ERRORS: [(&str, &str, &str); 7] = [
    ("BadRequest", "400", "The request is invalid (`invalid_request_error`; `param` names the field)."),
    ("Unauthorized", "401", "API keys are set and the request has no valid `Authorization: Bearer` key."),
    ("NotFound", "404", "The object, or the requested model, does not exist (for this API key)."),
    ("PayloadTooLarge", "413", "The body is larger than `--max-body-bytes`."),
    ("UnsupportedMediaType", "415", "The body is not `application/json`."),
    ("RateLimited", "429", "The API key's tenant is over its concurrency or rate limit (`rate_limit_exceeded`); see `Retry-After`."),
    ("Unavailable", "503", "No worker can take it now, the store does not answer, or the server is draining; see `Retry-After`."),
];

fn build() -> utoipa::openapi::OpenApi {
    let mut doc = OpenApiRouter::<SharedState>::with_openapi(ApiDoc::openapi())
        .merge(api())
        .merge(probes())
        .into_openapi();
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An API key, required on /v1 routes when the server has keys \
                     (`--api-keys-file`, `SPINDLE_API_KEYS`).",
                ))
                .build(),
        ),
    );
    for (name, status, description) in ERRORS {
        let mut response = ResponseBuilder::new().description(description).content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        );
        if matches!(status, "429" | "503") {
            let seconds = HeaderBuilder::new()
                .description(Some("Seconds to wait before retrying."))
                .schema(
                    utoipa::openapi::ObjectBuilder::new()
                        .schema_type(utoipa::openapi::schema::Type::Integer),
                )
                .build();
            response = response.header("Retry-After", seconds);
        }
        components
            .responses
            .insert(name.to_owned(), RefOr::T(response.build()));
    }
    for (path, item) in doc.paths.paths.iter_mut() {
        if !path.starts_with("/v1/") {
            continue;
        }
        let methods = [
            ("GET", &mut item.get),
            ("POST", &mut item.post),
            ("DELETE", &mut item.delete),
        ];
        for (method, op) in methods {
            if let Some(op) = op.as_mut() {
                add_errors(path, method, op);
            }
        }
    }
    for item in doc.paths.paths.values_mut() {
        let ops = [&mut item.get, &mut item.post, &mut item.delete];
        for op in ops.into_iter().flatten() {
            for resp in op.responses.responses.values_mut() {
                let RefOr::T(resp) = resp else { continue };
                if let Some(content) = resp.content.get_mut("text/event-stream") {
                    content.schema = content.schema.take().map(|s| RefOr::T(sse_event(s)));
                }
            }
        }
    }
    doc
}

/// The schema of one event of an SSE answer, whose handler names the type of
/// its data: OpenAPI 3.2 (and schemathesis) read a `text/event-stream`
/// schema as the event, `{event, data}`, so `data` is a string holding that
/// type as JSON (`contentSchema`), or the closing `[DONE]`.
fn sse_event(data: RefOr<Schema>) -> Schema {
    let json = ObjectBuilder::new()
        .schema_type(Type::String)
        .content_media_type("application/json")
        .extensions(Some(Extensions::from_iter([(
            "contentSchema".to_owned(),
            // A schema serializes to JSON (string keys only).
            serde_json::to_value(&data).unwrap_or_default(),
        )])))
        .build();
    let done = ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["[DONE]"]))
        .build();
    ObjectBuilder::new()
        .property(
            "event",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some("The event's `type` (Responses streams only).")),
        )
        .property("data", AnyOfBuilder::new().item(done).item(json))
        .required("data")
        .into()
}

/// The errors an operation can return, from what its route does: every
/// `/v1` route authenticates; one with input can refuse it; one naming an
/// object can miss it; a body has a size and a type; a generating route can
/// hit the tenant's limits and find no worker; the store can be down.
fn add_errors(path: &str, method: &str, op: &mut Operation) {
    let has_body = op.request_body.is_some();
    let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let generating = method == "POST" && GENERATING.contains(&path);
    let uses_store = !path.starts_with("/v1/models");
    let applies = [
        ("BadRequest", has_body || has_params),
        ("Unauthorized", true),
        ("NotFound", path.contains('{') || generating),
        ("PayloadTooLarge", has_body),
        ("UnsupportedMediaType", has_body),
        ("RateLimited", generating),
        ("Unavailable", generating || uses_store),
    ];
    for (name, status, _) in ERRORS {
        if applies.iter().any(|(n, on)| *n == name && *on) {
            op.responses
                .responses
                .insert(status.to_owned(), RefOr::Ref(Ref::from_response_name(name)));
        }
    }
    op.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
}
