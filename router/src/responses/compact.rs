//! `POST /v1/responses/compact`: a context window shrunk to what matters.
//!
//! The window is the one a create request would see (the previous
//! response's chain window, read without writing to the chain's log, then
//! `input`). Everything before its latest user message is summarised by the
//! model in one pass (through the router's generator, routed like the
//! chain's turns) and sealed into ONE `compaction` item
//! ([`crate::compaction`]); that message and whatever followed it are kept
//! verbatim after it. A later create request sends the window back as its
//! input, and the summary is rendered where the item stands.
//!
//! A window with nothing before its latest user message needs no summary:
//! it comes back unchanged, without a compaction item, and with zero usage.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::{Extension, Json};
use futures::StreamExt;
use serde_json::{json, Value};
use spindle_proto::{
    ChatMessage, FinishReason, GenerateEvent, GenerateRequest, PromptInput, SamplingParams, Usage,
};

use super::items::{items_to_messages, normalize_input};
use super::prepare::{follow_up, input_param, Context, Log};
use crate::api::{SharedState, Tenant};
use crate::chain::{self, Truncation};
use crate::cluster::key::{assign_routing_key, session_id, KeySources};
use crate::compaction::Summaries;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::telemetry::ModelTag;
use crate::types::{new_id, now_secs, CompactRequest, CompactResource, ResponseUsage};

/// Counter of compaction requests by `outcome` (see [`OUTCOMES`]).
pub const COMPACTIONS: &str = "spindle_router_compactions_total";

/// `summarized` (one summarising pass, one compaction item), `unchanged`
/// (nothing before the latest user message), `failed` (refused or the pass
/// failed).
pub const OUTCOMES: [&str; 3] = ["summarized", "unchanged", "failed"];

/// Most tokens a summary may take.
const SUMMARY_MAX_TOKENS: u32 = 512;

/// The request that ends the summarising pass's prompt.
const SUMMARY_REQUEST: &str = "Summarize the conversation above so that it can continue \
without it: the facts, names, numbers, decisions, open questions and the user's goals and \
preferences. Write only the summary, in the conversation's language.";

#[utoipa::path(post, path = "/v1/responses/compact", tag = "responses", operation_id = "compactResponse",
    request_body = CompactRequest,
    responses((status = 200, description = "The compacted window: one `compaction` item standing for everything \
before the latest user message, then that message and what followed it. Send it as the `input` of a new \
chain (no `previous_response_id`), with the newest items after it.", body = CompactResource)))]
/// `POST /v1/responses/compact`.
pub async fn compact(
    State(st): State<SharedState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Extension(tag): Extension<ModelTag>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CompactRequest>,
) -> ApiResult<Json<CompactResource>> {
    let result = run(&st, &tenant, session_id(&headers), req, &tag).await;
    let outcome = match &result {
        Ok(r) if r.output.iter().any(is_compaction) => "summarized",
        Ok(_) => "unchanged",
        Err(_) => "failed",
    };
    metrics::counter!(COMPACTIONS, "outcome" => outcome).increment(1);
    result.map(Json)
}

fn is_compaction(item: &Value) -> bool {
    item.get("type").and_then(Value::as_str) == Some("compaction")
}

fn is_user_message(item: &Value) -> bool {
    item.get("type")
        .and_then(Value::as_str)
        .unwrap_or("message")
        == "message"
        && item.get("role").and_then(Value::as_str) == Some("user")
}

async fn run(
    st: &SharedState,
    tenant: &str,
    session: Option<&str>,
    req: CompactRequest,
    tag: &ModelTag,
) -> ApiResult<CompactResource> {
    let requested = req
        .model
        .as_deref()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::missing("model"))?;
    let model = st.resolve_model(Some(requested))?;
    tag.set(&model);
    if req.input.is_none() && req.previous_response_id.is_none() {
        return Err(ApiError::invalid(
            "'input' or 'previous_response_id' is required: there is nothing to compact",
            Some("input"),
        ));
    }
    let input_items = match &req.input {
        Some(input) => normalize_input(Some(input))?,
        None => Vec::new(),
    };
    let mut summaries = Summaries::default();
    summaries.open_items(&st.compaction, tenant, &input_items, input_param)?;

    // The window a create would see, within what the summarising pass can
    // read (auto truncation: the oldest turns of an overlong chain go).
    let (history, chain_key) = match &req.previous_response_id {
        Some(prev_id) => {
            let budget = chain::budget(
                Truncation::Auto,
                st.context_tokens(&model),
                Some(SUMMARY_MAX_TOKENS),
            );
            let Context {
                history, chain_key, ..
            } = follow_up(
                st,
                tenant,
                prev_id,
                &input_items,
                budget,
                Truncation::Auto,
                Log::Read,
            )
            .await?;
            let history: Vec<Value> = history.into_iter().flatten().collect();
            summaries.open_items(&st.compaction, tenant, &history, |_| {
                "previous_response_id".into()
            })?;
            (history, chain_key)
        }
        None => (Vec::new(), None),
    };
    let mut window = history;
    window.extend(input_items);
    let split = window
        .iter()
        .rposition(is_user_message)
        .unwrap_or(window.len());
    let id = new_id("resp");
    let created_at = now_secs();
    if split == 0 {
        return Ok(CompactResource {
            id,
            object: "response.compaction",
            created_at,
            output: window,
            usage: ResponseUsage::from(Usage::default()),
        });
    }
    let kept = window.split_off(split);

    let mut messages = Vec::new();
    if let Some(instr) = req.instructions.as_deref().filter(|s| !s.is_empty()) {
        messages.push(ChatMessage::text("system", instr));
    }
    items_to_messages(&window, &summaries, &mut messages);
    messages.push(ChatMessage::text("user", SUMMARY_REQUEST));
    let mut gen = GenerateRequest {
        request_id: Some(id.clone()),
        model: Some(model),
        input: PromptInput::Messages(messages),
        continuation: None,
        sampling: SamplingParams {
            temperature: 0.0,
            max_tokens: Some(SUMMARY_MAX_TOKENS),
            ..SamplingParams::default()
        },
        cache_key: None,
        cache_salt: None,
        output: Default::default(),
        // A long window still gets summarised: its oldest messages go first.
        truncation: spindle_proto::Truncation::Auto,
        // The summary is the base model's.
        lora: Vec::new(),
    };
    // Routed like the chain's turns, so the pass reads the prefix the
    // chain's worker already holds.
    match chain_key {
        Some(key) => {
            gen.cache_key = Some(key);
            gen.cache_salt = st.cache_salt(tenant).map(str::to_owned);
        }
        None => {
            assign_routing_key(
                &mut gen,
                &KeySources {
                    prompt_cache_key: req.prompt_cache_key.as_deref(),
                    session_header: session,
                    salt: st.cache_salt(tenant),
                    ..KeySources::default()
                },
            );
        }
    }
    let (summary, usage) = summarise(st, gen).await?;
    let compaction = json!({
        "type": "compaction",
        "id": new_id("cmp"),
        "encrypted_content": st.compaction.seal(tenant, created_at, summary.trim())?,
    });
    let mut output = Vec::with_capacity(kept.len() + 1);
    output.push(compaction);
    output.extend(kept);
    Ok(CompactResource {
        id,
        object: "response.compaction",
        created_at,
        output,
        usage: ResponseUsage::from(usage),
    })
}

/// Runs the summarising pass: its text and usage. The client leaving drops
/// this future and with it the stream, which cancels the generation.
async fn summarise(st: &SharedState, gen: GenerateRequest) -> ApiResult<(String, Usage)> {
    let mut stream = st.generator.generate(gen).await?;
    let mut summary = String::new();
    while let Some(ev) = stream.next().await {
        match ev {
            GenerateEvent::Delta { text, .. } => summary.push_str(&text),
            GenerateEvent::Done {
                finish_reason: FinishReason::Cancelled,
                ..
            } => break,
            GenerateEvent::Done { usage, .. } => return Ok((summary, usage)),
            GenerateEvent::Error { code, message } => {
                return Err(ApiError::BadGateway(format!(
                    "the summary could not be generated ({}): {message}",
                    code.as_str()
                )))
            }
            // No tools are offered and no prompt scores asked for.
            GenerateEvent::Prompt { .. }
            | GenerateEvent::ToolCall { .. }
            | GenerateEvent::ToolArguments { .. } => {}
        }
    }
    Err(ApiError::BadGateway(
        "the worker stream ended before the summary was finished".into(),
    ))
}
