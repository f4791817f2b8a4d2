//! `POST /v1/chat/completions` and `POST /v1/completions`: the protocol in
//! `spindle_proto::openai` (the same types, validation, message rendering
//! and chunks the worker uses), with the model resolved against the cluster
//! and the generation sent through the router's generator. Streams are
//! `data:` chunks ending with `data: [DONE]`; dropping the stream cancels
//! the generation.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::stream::{BoxStream, StreamExt};
use spindle_proto::openai::response::{ChatCompletion, ChatCompletionChunk, TextCompletionChunk};
use spindle_proto::openai::{
    ChatCompletionRequest, Completer, CompletionRequest, Endpoint, InvalidParam, StreamItem,
    TextCompletion,
};
use spindle_proto::{FailureCode, GenerateEvent, GenerateRequest};

use super::{SharedState, Tenant};
use crate::cluster::key::{assign_routing_key, session_id, KeySources};
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::sse::{done_event, sse_response};
use crate::telemetry::ModelTag;
use crate::types::{new_id, now_secs};

/// One validated request, whichever endpoint it came from.
struct Call {
    endpoint: Endpoint,
    model: Option<String>,
    stream: bool,
    include_usage: bool,
    /// `user`, a routing identity.
    user: Option<String>,
    /// `X-Session-Id`, a routing identity.
    session: Option<String>,
    /// Who asks (their prefix cache is their own, see `AppState::cache_salt`).
    tenant: String,
    /// Completions' `echo`: the prompt the answer starts with.
    echo: Option<spindle_proto::openai::Echo>,
}

fn frame(item: &StreamItem) -> axum::response::sse::Event {
    axum::response::sse::Event::default().data(serde_json::to_string(item).unwrap_or_default())
}

async fn run(
    st: SharedState,
    call: Call,
    to_generate: impl FnOnce(String) -> Result<GenerateRequest, InvalidParam>,
    tag: &ModelTag,
) -> ApiResult<Response> {
    let model = st.resolve_model(call.model.as_deref())?;
    tag.set(&model);
    let id = match call.endpoint {
        Endpoint::Chat => new_id("chatcmpl"),
        Endpoint::Completions => new_id("cmpl"),
    };
    let mut gen = to_generate(id.clone())?;
    gen.model = Some(model.clone());
    gen.sampling.max_tokens = st.config.max_output_tokens(gen.sampling.max_tokens);
    assign_routing_key(
        &mut gen,
        &KeySources {
            session_header: call.session.as_deref(),
            user: call.user.as_deref(),
            salt: st.cache_salt(&call.tenant),
            ..KeySources::default()
        },
    );
    let mut completer = Completer::new(call.endpoint, id, now_secs(), model, call.include_usage)
        .with_logprobs(gen.sampling.logprobs.is_some())
        .with_echo(call.echo);
    let mut stream: BoxStream<'static, GenerateEvent> = st.generator.generate(gen).await?;
    if !call.stream {
        while let Some(ev) = stream.next().await {
            match completer.collect(ev) {
                None => continue,
                Some(Ok(done)) => return Ok(Json(done).into_response()),
                Some(Err(failed)) => {
                    return Err(ApiError::BadGateway(format!(
                        "generation failed ({}): {}",
                        failed.code, failed.message
                    )))
                }
            }
        }
        return Err(ApiError::BadGateway(
            "the worker stream ended before generation finished".into(),
        ));
    }
    let first = futures::stream::iter(completer.start().as_ref().map(frame));
    let body = futures::stream::unfold(
        (stream, completer, false),
        |(mut stream, mut completer, finished)| async move {
            if finished {
                return None;
            }
            let (items, last) = match stream.next().await {
                Some(ev) => completer.stream(ev),
                None => (
                    vec![Completer::error_item(
                        &spindle_proto::openai::GenerationFailed {
                            code: FailureCode::WorkerStreamError,
                            message: "the worker stream ended before generation finished".into(),
                        },
                    )],
                    true,
                ),
            };
            let mut frames: Vec<_> = items.iter().map(frame).collect();
            if last {
                frames.push(done_event());
            }
            Some((futures::stream::iter(frames), (stream, completer, last)))
        },
    )
    .flatten();
    Ok(sse_response(first.chain(body)))
}

#[utoipa::path(post, path = "/v1/chat/completions", tag = "chat", operation_id = "createChatCompletion",
    request_body = ChatCompletionRequest,
    responses((status = 200, description = "The completion (`stream: false`), or its chunks (`stream: true`): `data:` frames \
holding one chunk each (or, when generation fails mid-stream, one error body), then `data: [DONE]`.",
        content((ChatCompletion = "application/json"), (ChatCompletionChunk = "text/event-stream")))))]
/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(st): State<SharedState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Extension(tag): Extension<ModelTag>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ChatCompletionRequest>,
) -> ApiResult<Response> {
    let call = Call {
        endpoint: Endpoint::Chat,
        model: req.model.clone(),
        stream: req.stream,
        include_usage: req.include_usage(),
        user: req.user.clone(),
        session: session_id(&headers).map(str::to_owned),
        tenant,
        echo: None,
    };
    run(st, call, |id| req.to_generate(id), &tag).await
}

#[utoipa::path(post, path = "/v1/completions", tag = "chat", operation_id = "createCompletion",
    request_body = CompletionRequest,
    responses((status = 200, description = "The completion (`stream: false`), or its chunks (`stream: true`): `data:` frames \
holding one chunk each (or, when generation fails mid-stream, one error body), then `data: [DONE]`.",
        content((TextCompletion = "application/json"), (TextCompletionChunk = "text/event-stream")))))]
/// `POST /v1/completions`.
pub async fn completions(
    State(st): State<SharedState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Extension(tag): Extension<ModelTag>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> ApiResult<Response> {
    let call = Call {
        endpoint: Endpoint::Completions,
        model: req.model.clone(),
        stream: req.stream,
        include_usage: req.include_usage(),
        user: req.user.clone(),
        session: session_id(&headers).map(str::to_owned),
        tenant,
        echo: req.echoed(),
    };
    run(st, call, |id| req.to_generate(id), &tag).await
}
