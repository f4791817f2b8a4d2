//! The Responses API: create (plain, streamed, background), retrieve (also as
//! a resumable stream), delete, cancel and input items.
//!
//! Every generation runs in a spawned *driver* task that emits the full event
//! sequence, keeps the stored record in step and always reaches a terminal
//! state. Foreground requests hold a guard whose drop (client gone) cancels
//! the driver; background drivers stop when the stored status becomes
//! `cancelled` or the record is deleted.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use spindle_proto::{
    ChatMessage, FailureCode, FinishReason, GenerateEvent, GenerateRequest, PromptInput,
    SamplingParams,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::{SharedState, Tenant};
use crate::chain::{self, ContextTurn, Truncation};
use crate::cluster::key::{cache_key_from, routing_key, KeySources};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::lifecycle::ActiveGuard;
use crate::sse::{done_event, sse_response, typed_event};
use crate::store::{chained_response_id, ResponseRecord};
use crate::telemetry::ModelTag;
use crate::types::{
    items_to_messages, list_page, new_id, normalize_input, now_secs, output_message,
    output_text_part, ConversationRef, CreateResponseRequest, IncompleteDetails, ListQuery,
    ResponseErrorInfo, ResponseObject, ResponseStatus, ResponseUsage,
};

/// Everything a validated create request turns into.
struct Prepared {
    response: ResponseObject,
    record: ResponseRecord,
    gen: GenerateRequest,
    stream: bool,
}

fn validate_range(v: Option<f64>, lo: f64, hi: f64, name: &str) -> ApiResult<()> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) || x.is_nan() => Err(ApiError::invalid(
            format!("'{name}' must be between {lo} and {hi}, got {x}"),
            Some(name),
        )),
        _ => Ok(()),
    }
}

async fn prepare(
    st: &SharedState,
    tenant: &str,
    session: Option<&str>,
    req: CreateResponseRequest,
    tag: &ModelTag,
) -> ApiResult<Prepared> {
    let model = st.resolve_model(req.model.as_deref())?;
    tag.set(&model);
    let store = req.store.unwrap_or(true);
    let background = req.background.unwrap_or(false);
    if background && !store {
        return Err(ApiError::invalid(
            "background mode requires store=true; background responses are polled from the store",
            Some("background"),
        ));
    }
    if req.conversation.is_some() && req.previous_response_id.is_some() {
        return Err(ApiError::invalid(
            "'conversation' and 'previous_response_id' cannot be used together",
            Some("conversation"),
        ));
    }
    validate_range(req.temperature, 0.0, 2.0, "temperature")?;
    validate_range(req.top_p, 0.0, 1.0, "top_p")?;
    validate_range(req.presence_penalty, -2.0, 2.0, "presence_penalty")?;
    validate_range(req.frequency_penalty, -2.0, 2.0, "frequency_penalty")?;
    if req.max_output_tokens == Some(0) {
        return Err(ApiError::invalid(
            "'max_output_tokens' must be at least 1",
            Some("max_output_tokens"),
        ));
    }
    let truncation = req.truncation.clone().unwrap_or_else(|| "disabled".into());
    if !matches!(truncation.as_str(), "auto" | "disabled") {
        return Err(ApiError::invalid(
            "'truncation' must be 'auto' or 'disabled'",
            Some("truncation"),
        ));
    }
    let text = match req.text.as_ref().and_then(|t| t.format.as_ref()) {
        None | Some(Value::Null) => json!({"format": {"type": "text"}}),
        Some(f) => match f.get("type").and_then(Value::as_str) {
            Some("text") => json!({"format": {"type": "text"}}),
            Some(kind @ ("json_schema" | "json_object")) => {
                return Err(ApiError::invalid(
                    format!("text.format type '{kind}' is not supported yet; use 'text'"),
                    Some("text.format.type"),
                ))
            }
            _ => {
                return Err(ApiError::invalid(
                    "text.format.type must be 'text', 'json_object' or 'json_schema'",
                    Some("text.format.type"),
                ))
            }
        },
    };
    let tool_choice = match &req.tool_choice {
        None | Some(Value::Null) => json!("auto"),
        Some(Value::String(s)) if s == "auto" || s == "none" => json!(s),
        Some(_) => {
            return Err(ApiError::invalid(
                "tool_choice other than 'auto' or 'none' is not supported yet",
                Some("tool_choice"),
            ))
        }
    };
    let input_items = normalize_input(req.input.as_ref())?;

    // Context before this input: the previous response's chain, or the conversation.
    let mode = if truncation == "auto" {
        Truncation::Auto
    } else {
        Truncation::Disabled
    };
    let Context {
        history,
        window,
        chain_root,
        id,
        chain_key,
    } = if let Some(prev_id) = &req.previous_response_id {
        let budget = chain::budget(mode, st.context_tokens(&model), req.max_output_tokens);
        follow_up(st, tenant, prev_id, &input_items, budget, mode).await?
    } else if let Some(conv) = &req.conversation {
        let id = new_id("resp");
        let items = st
            .store
            .conversation_items(tenant, conv.id())
            .await?
            .ok_or_else(|| ApiError::NotFound {
                message: format!("Conversation with id '{}' not found.", conv.id()),
                param: Some("conversation".into()),
                code: Some("conversation_not_found".into()),
            })?;
        // The conversation as it is now is this response's context, kept
        // in its own chain's log so follow-ups see it too.
        let mut window = Vec::new();
        if !items.is_empty() {
            let entry = serde_json::to_vec(&items)
                .map_err(|e| ApiError::Internal(format!("serializing items: {e}")))?;
            let bytes = entry.len() as u64;
            let turn = st.store.append_turn(&id, entry).await?;
            window.push(ContextTurn { turn, bytes });
        }
        Context {
            history: items,
            window,
            chain_root: id.clone(),
            id,
            chain_key: None,
        }
    } else {
        let id = new_id("resp");
        Context {
            history: Vec::new(),
            window: Vec::new(),
            chain_root: id.clone(),
            id,
            chain_key: None,
        }
    };

    let mut messages = Vec::new();
    if let Some(instr) = req.instructions.as_deref().filter(|s| !s.is_empty()) {
        messages.push(ChatMessage {
            role: "system".into(),
            content: instr.to_owned(),
        });
    }
    items_to_messages(&history, &mut messages);
    items_to_messages(&input_items, &mut messages);

    let temperature = req.temperature.unwrap_or(1.0);
    let top_p = req.top_p.unwrap_or(1.0);
    let presence_penalty = req.presence_penalty.unwrap_or(0.0);
    let frequency_penalty = req.frequency_penalty.unwrap_or(0.0);
    let mut gen = GenerateRequest {
        request_id: Some(id.clone()),
        model: Some(model.clone()),
        input: PromptInput::Messages(messages),
        continuation: None,
        sampling: SamplingParams {
            temperature: temperature as f32,
            top_p: top_p as f32,
            presence_penalty: presence_penalty as f32,
            frequency_penalty: frequency_penalty as f32,
            seed: req.seed,
            max_tokens: req.max_output_tokens,
            ..SamplingParams::default()
        },
        cache_key: chain_key.or_else(|| {
            cache_key_from(&KeySources {
                conversation: req.conversation.as_ref().map(|c| c.id()),
                previous_response_root: None,
                prompt_cache_key: req.prompt_cache_key.as_deref(),
                session_header: session,
                user: req.user.as_deref(),
            })
        }),
    };
    // Without any identity the key hashes the leading messages (system and
    // first user turn): stored, so this chain's follow-ups route the same way.
    let routing_key = routing_key(&gen);
    gen.cache_key = Some(routing_key.clone());
    let response = ResponseObject {
        id: id.clone(),
        object: "response".into(),
        created_at: now_secs(),
        completed_at: None,
        status: if background {
            ResponseStatus::Queued
        } else {
            ResponseStatus::InProgress
        },
        error: None,
        incomplete_details: None,
        instructions: req.instructions.clone(),
        model,
        output: Vec::new(),
        previous_response_id: req.previous_response_id.clone(),
        conversation: req.conversation.as_ref().map(|c| ConversationRef {
            id: c.id().to_owned(),
        }),
        tools: req.tools.clone().unwrap_or_default(),
        tool_choice,
        parallel_tool_calls: req.parallel_tool_calls.unwrap_or(true),
        temperature,
        top_p,
        presence_penalty,
        frequency_penalty,
        top_logprobs: req.top_logprobs.unwrap_or(0),
        truncation,
        text,
        reasoning: None,
        max_output_tokens: req.max_output_tokens,
        max_tool_calls: req.max_tool_calls,
        store,
        background,
        service_tier: "default".into(),
        metadata: req.metadata.clone().unwrap_or_default(),
        safety_identifier: req.safety_identifier.clone(),
        user: req.user.clone(),
        prompt_cache_key: req.prompt_cache_key.clone(),
        usage: None,
    };
    let record = ResponseRecord {
        response: response.clone(),
        input_items,
        context: window,
        chain_root,
        owner: tenant.to_owned(),
        routing_key,
    };
    Ok(Prepared {
        response,
        record,
        gen,
        stream: req.stream.unwrap_or(false),
    })
}

/// What a create request is generated after.
struct Context {
    /// Items before the input, oldest first.
    history: Vec<Value>,
    /// Where `history` lives in the chain's item log.
    window: Vec<ContextTurn>,
    chain_root: String,
    /// The new response's id.
    id: String,
    /// The chain's routing key, inherited by a follow-up.
    chain_key: Option<String>,
}

/// The context of a follow-up to `prev_id`: the previous turn is written
/// once to the chain's item log while the rest of the window is read back,
/// so the cost does not grow with the chain (see [`crate::chain`]).
async fn follow_up(
    st: &SharedState,
    tenant: &str,
    prev_id: &str,
    input_items: &[Value],
    budget: u64,
    mode: Truncation,
) -> ApiResult<Context> {
    // Same chain tag as the previous id: one Redis Cluster slot per chain.
    let id = chained_response_id(prev_id);
    let prev = st
        .store
        .get_response(tenant, prev_id)
        .await?
        .ok_or_else(|| {
            ApiError::invalid_code(
                format!("Previous response with id '{prev_id}' not found."),
                Some("previous_response_id"),
                "previous_response_not_found",
            )
        })?;
    let encode = |v: &[Value]| {
        serde_json::to_vec(v).map_err(|e| ApiError::Internal(format!("serializing items: {e}")))
    };
    let prev_items: Vec<Value> = prev
        .input_items
        .into_iter()
        .chain(prev.response.output)
        .collect();
    let entry = encode(&prev_items)?;
    let input_bytes = encode(input_items)?.len() as u64;
    let last = ContextTurn {
        turn: 0, // its index in the log, known once written below
        bytes: entry.len() as u64,
    };
    let mut window = chain::window(&prev.context, last, input_bytes, budget, mode)?;
    let earlier = &window[..window.len() - 1];
    let (history, turn) = tokio::join!(
        chain::items(&*st.store, &prev.chain_root, earlier),
        st.store.append_turn(&prev.chain_root, entry),
    );
    let mut history = history?;
    if let Some(last) = window.last_mut() {
        last.turn = turn?;
    }
    history.extend(prev_items);
    // Follow-ups inherit the chain's routing key (O(1), no chain walk).
    let chain_key = Some(prev.routing_key)
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| format!("resp:{}", prev.chain_root));
    Ok(Context {
        history,
        window,
        chain_root: prev.chain_root,
        id,
        chain_key: Some(chain_key),
    })
}

/// What stops a driver early.
enum CancelSource {
    /// Foreground: the client's guard was dropped.
    Client(oneshot::Receiver<()>),
    /// Background: the stored status became `cancelled`, or the record vanished.
    Store(watch::Receiver<u64>),
}

impl CancelSource {
    async fn cancelled(&mut self, st: &SharedState, id: &str) {
        match self {
            Self::Client(rx) => {
                let _ = rx.await;
            }
            Self::Store(rx) => loop {
                if rx.changed().await.is_err() {
                    return;
                }
                match st.store.response_status(id).await {
                    Ok(Some(ResponseStatus::Cancelled)) | Ok(None) => return,
                    _ => {}
                }
            },
        }
    }
}

/// A generation to start in the driver (background) or already started by
/// the handler (foreground, so start errors become HTTP errors: 400, 503 + Retry-After).
enum Start {
    Pending(GenerateRequest),
    Ready(futures::stream::BoxStream<'static, GenerateEvent>),
}

/// Runs one generation and emits its events.
struct Driver {
    st: SharedState,
    resp: ResponseObject,
    owner: String,
    input_items: Vec<Value>,
    log_events: bool,
    live: Option<mpsc::UnboundedSender<Value>>,
    seq: u64,
    /// Registered with the life cycle until the driver ends (drain waits on it).
    _active: ActiveGuard,
}

enum Outcome {
    Finished(FinishReason, spindle_proto::Usage),
    Failed(String, String),
    Cancelled,
}

impl Driver {
    async fn emit(&mut self, mut ev: Value) {
        ev["sequence_number"] = json!(self.seq);
        self.seq += 1;
        if self.log_events {
            if let Err(e) = self.st.store.append_event(&self.resp.id, ev.clone()).await {
                tracing::warn!(error = %e, "could not log stream event");
            }
        }
        if let Some(tx) = &self.live {
            let _ = tx.send(ev);
        }
    }

    async fn save(&self) {
        if self.resp.store {
            if let Err(e) = self.st.store.update_if_active(self.resp.clone()).await {
                tracing::warn!(error = %e, "could not update stored response");
            }
        }
    }

    async fn run(mut self, gen: Start, mut cancel: CancelSource) -> ResponseObject {
        let st = self.st.clone();
        let id = self.resp.id.clone();
        self.emit(json!({"type": "response.created", "response": self.resp}))
            .await;
        if self.resp.status == ResponseStatus::Queued {
            self.emit(json!({"type": "response.queued", "response": self.resp}))
                .await;
            self.resp.status = ResponseStatus::InProgress;
            if self.resp.store
                && !matches!(st.store.update_if_active(self.resp.clone()).await, Ok(true))
            {
                return self.cancelled_object().await;
            }
        }
        self.emit(json!({"type": "response.in_progress", "response": self.resp}))
            .await;

        let started = match gen {
            Start::Ready(stream) => Some(Ok(stream)),
            Start::Pending(gen) => tokio::select! {
                r = st.generator.generate(gen) => Some(r),
                _ = cancel.cancelled(&st, &id) => None,
            },
        };
        let mut stream = match started {
            None => return self.cancelled_object().await,
            Some(Err(e)) => return self.fail(e.code().into(), e.to_string(), None).await,
            Some(Ok(s)) => s,
        };

        let item_id = new_id("msg");
        self.emit(
            json!({"type": "response.output_item.added", "output_index": 0,
                         "item": output_message(&item_id, "in_progress", None)}),
        )
        .await;
        self.emit(
            json!({"type": "response.content_part.added", "item_id": item_id, "output_index": 0,
                         "content_index": 0, "part": output_text_part("")}),
        )
        .await;
        let mut text = String::new();
        let outcome = loop {
            let next = tokio::select! {
                ev = stream.next() => Some(ev),
                _ = cancel.cancelled(&st, &id) => None,
            };
            match next {
                None => break Outcome::Cancelled,
                Some(Some(GenerateEvent::Delta { text: delta, .. })) => {
                    if delta.is_empty() {
                        continue;
                    }
                    text.push_str(&delta);
                    self.emit(json!({"type": "response.output_text.delta", "item_id": item_id, "output_index": 0,
                                     "content_index": 0, "delta": delta, "logprobs": []}))
                        .await;
                }
                Some(Some(GenerateEvent::Done {
                    finish_reason,
                    usage,
                    ..
                })) => break Outcome::Finished(finish_reason, usage),
                Some(Some(GenerateEvent::Error { code, message })) => {
                    break Outcome::Failed(code.as_str().into(), message)
                }
                Some(None) => {
                    break Outcome::Failed(
                        FailureCode::WorkerStreamError.as_str().into(),
                        "the worker stream ended before generation finished".into(),
                    )
                }
            }
        };
        drop(stream);
        match outcome {
            Outcome::Cancelled => {
                self.resp.output = vec![output_message(&item_id, "incomplete", Some(&text))];
                self.cancelled_object().await
            }
            Outcome::Failed(code, message) => self.fail(code, message, Some((item_id, text))).await,
            Outcome::Finished(FinishReason::Cancelled, _) => {
                self.fail(
                    FailureCode::GenerationCancelled.as_str().into(),
                    "the worker cancelled the generation".into(),
                    Some((item_id, text)),
                )
                .await
            }
            Outcome::Finished(reason, usage) => {
                let item_status = if reason == FinishReason::Length {
                    "incomplete"
                } else {
                    "completed"
                };
                self.emit(json!({"type": "response.output_text.done", "item_id": item_id, "output_index": 0,
                                 "content_index": 0, "text": text, "logprobs": []}))
                    .await;
                self.emit(json!({"type": "response.content_part.done", "item_id": item_id, "output_index": 0,
                                 "content_index": 0, "part": output_text_part(&text)}))
                    .await;
                let item = output_message(&item_id, item_status, Some(&text));
                self.emit(
                    json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
                )
                .await;
                self.resp.output = vec![item];
                self.resp.usage = Some(ResponseUsage::from(usage));
                self.resp.completed_at = Some(now_secs());
                let kind = if reason == FinishReason::Length {
                    self.resp.status = ResponseStatus::Incomplete;
                    self.resp.incomplete_details = Some(IncompleteDetails {
                        reason: "max_output_tokens".into(),
                    });
                    "response.incomplete"
                } else {
                    self.resp.status = ResponseStatus::Completed;
                    "response.completed"
                };
                self.emit(json!({"type": kind, "response": self.resp}))
                    .await;
                self.save().await;
                if let Some(conv) = &self.resp.conversation {
                    let mut items = std::mem::take(&mut self.input_items);
                    items.extend(self.resp.output.iter().cloned());
                    if let Err(e) = st
                        .store
                        .append_conversation_items(&self.owner, &conv.id, items)
                        .await
                    {
                        tracing::warn!(error = %e, "could not append to conversation");
                    }
                }
                self.resp
            }
        }
    }

    async fn fail(
        mut self,
        code: String,
        message: String,
        partial: Option<(String, String)>,
    ) -> ResponseObject {
        self.emit(json!({
            "type": "error", "code": code, "message": message, "param": null,
            "error": {"type": "server_error", "code": code, "message": message, "param": null},
        }))
        .await;
        if let Some((item_id, text)) = partial {
            self.resp.output = vec![output_message(&item_id, "incomplete", Some(&text))];
        }
        self.resp.status = ResponseStatus::Failed;
        self.resp.error = Some(ResponseErrorInfo { code, message });
        self.resp.completed_at = Some(now_secs());
        self.emit(json!({"type": "response.failed", "response": self.resp}))
            .await;
        self.save().await;
        self.resp
    }

    async fn cancelled_object(mut self) -> ResponseObject {
        self.resp.status = ResponseStatus::Cancelled;
        self.resp.completed_at = Some(now_secs());
        // Foreground: the client left; record that. Background: the cancel call already did.
        self.save().await;
        match self.st.store.get_response(&self.owner, &self.resp.id).await {
            Ok(Some(rec)) if rec.response.store => rec.response,
            _ => self.resp,
        }
    }
}

/// The `X-Session-Id` header, a routing hint for clients that do not chain.
fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers.get("x-session-id").and_then(|v| v.to_str().ok())
}

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
    } = prepare(&st, &tenant, session_id(&headers), req, &tag).await?;
    let input_items = record.input_items.clone();
    // Foreground: start generating before anything is stored or streamed, so a
    // worker refusal is an HTTP error the SDKs understand (and retry on 503).
    let start = if response.background {
        Start::Pending(gen)
    } else {
        Start::Ready(st.generator.generate(gen).await?)
    };
    if response.store {
        st.store.insert_response(record).await?;
    }
    let id = response.id.clone();
    if matches!(start, Start::Pending(_)) {
        let rx = st
            .store
            .subscribe(&id)
            .await?
            .ok_or_else(|| ApiError::Internal("stored response vanished".into()))?;
        let active = st.lifecycle.begin(&tenant, &response);
        let driver = Driver {
            st: st.clone(),
            resp: response.clone(),
            owner: tenant.clone(),
            input_items,
            log_events: true,
            live: None,
            seq: 0,
            _active: active,
        };
        tokio::spawn(driver.run(start, CancelSource::Store(rx)));
        if stream {
            return Ok(sse_response(follow(st, id, None)));
        }
        return Ok(Json(response).into_response());
    }
    let (guard, cancel_rx) = oneshot::channel::<()>();
    if stream {
        let (tx, rx) = mpsc::unbounded_channel();
        let active = st.lifecycle.begin(&tenant, &response);
        let driver = Driver {
            st: st.clone(),
            resp: response,
            owner: tenant.clone(),
            input_items,
            log_events: false,
            live: Some(tx),
            seq: 0,
            _active: active,
        };
        tokio::spawn(driver.run(start, CancelSource::Client(cancel_rx)));
        let events = UnboundedReceiverStream::new(rx)
            .map(move |ev| {
                let _keep = &guard;
                typed_event(&ev)
            })
            .chain(futures::stream::once(async { done_event() }));
        return Ok(sse_response(events));
    }
    let active = st.lifecycle.begin(&tenant, &response);
    let driver = Driver {
        st: st.clone(),
        resp: response,
        owner: tenant,
        input_items,
        log_events: false,
        live: None,
        seq: 0,
        _active: active,
    };
    let handle = tokio::spawn(driver.run(start, CancelSource::Client(cancel_rx)));
    let result = handle
        .await
        .map_err(|e| ApiError::Internal(format!("generation task failed: {e}")));
    drop(guard);
    let resp = result?;
    Ok(Json(resp).into_response())
}

/// Replay stored events after `after`, then follow live ones until the
/// response is terminal; ends with `[DONE]`.
fn follow(
    st: SharedState,
    id: String,
    after: Option<u64>,
) -> impl futures::Stream<Item = axum::response::sse::Event> + Send + 'static {
    let (tx, rx) = mpsc::channel::<axum::response::sse::Event>(64);
    tokio::spawn(async move {
        let Ok(Some(mut changes)) = st.store.subscribe(&id).await else {
            return;
        };
        let mut last = after;
        loop {
            changes.borrow_and_update();
            let Ok(Some(events)) = st.store.events_after(&id, last).await else {
                break;
            };
            for ev in events {
                last = ev.get("sequence_number").and_then(Value::as_u64).or(last);
                if tx.send(typed_event(&ev)).await.is_err() {
                    return;
                }
            }
            match st.store.response_status(&id).await {
                Ok(Some(s)) if s.is_terminal() => {
                    if let Ok(Some(events)) = st.store.events_after(&id, last).await {
                        for ev in events {
                            if tx.send(typed_event(&ev)).await.is_err() {
                                return;
                            }
                        }
                    }
                    break;
                }
                Ok(Some(_)) => {}
                _ => break,
            }
            if changes.changed().await.is_err() {
                break;
            }
        }
        let _ = tx.send(done_event()).await;
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn load(st: &SharedState, tenant: &str, id: &str) -> ApiResult<ResponseRecord> {
    st.store
        .get_response(tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Response with id '{id}' not found.")))
}

/// Query of `GET /v1/responses/{id}`.
#[derive(Debug, Default, Deserialize)]
pub struct RetrieveQuery {
    pub stream: Option<String>,
    pub starting_after: Option<String>,
}

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

/// `DELETE /v1/responses/{id}`.
pub async fn delete(
    State(st): State<SharedState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    if st.store.delete_response(&tenant, &id).await? {
        Ok(Json(
            json!({"id": id, "object": "response.deleted", "deleted": true}),
        ))
    } else {
        Err(ApiError::not_found(format!(
            "Response with id '{id}' not found."
        )))
    }
}

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

/// `GET /v1/responses/{id}/input_items`.
pub async fn input_items(
    State(st): State<SharedState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Value>> {
    let (limit, desc) = q.resolve()?;
    let rec = load(&st, &tenant, &id).await?;
    Ok(Json(list_page(
        &rec.input_items,
        q.after.as_deref(),
        limit,
        desc,
    )?))
}
