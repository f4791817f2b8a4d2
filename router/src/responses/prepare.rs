//! Validation of a create request, done once, into everything the handler
//! needs: the response object, the record to store and the generation
//! request (messages from the chain's context window or the conversation,
//! sampling, routing key). A WebSocket connection passes the response it
//! holds in memory ([`Recent`]), so a chain continues from there without
//! reading the store (and, when nothing is stored, without touching it).

use serde_json::Value;
use spindle_proto::{ChatMessage, GenerateRequest, PromptInput, SamplingParams};

use super::items::{items_to_messages, normalize_input};
use super::websocket::Recent;
use super::{agents, unsupported};
use crate::api::SharedState;
use crate::chain::{self, ContextTurn, Truncation};
use crate::cluster::key::{assign_routing_key, KeySources};
use crate::compaction::Summaries;
use crate::error::{ApiError, ApiResult};
use crate::store::{chained_response_id, ResponseRecord};
use crate::telemetry::ModelTag;
use crate::types::{
    new_id, now_secs, ConversationRef, CreateResponseRequest, ResponseObject, ResponseStatus,
};

/// Everything a validated create request turns into.
pub(super) struct Prepared {
    pub response: ResponseObject,
    pub record: ResponseRecord,
    pub gen: GenerateRequest,
    pub stream: bool,
    /// The items of each turn of `record.context`, oldest first (what a
    /// WebSocket connection keeps for the next turn).
    pub history: Vec<Vec<Value>>,
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

pub(super) async fn prepare(
    st: &SharedState,
    tenant: &str,
    session: Option<&str>,
    req: CreateResponseRequest,
    tag: &ModelTag,
    recent: Option<&Recent>,
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
    unsupported::check(&req, &model)?;
    let lora = spindle_proto::openai::validate_lora(&req.lora)?;
    let max_top = spindle_proto::logprobs::MAX_TOP_LOGPROBS;
    if let Some(n) = req.top_logprobs.filter(|&n| n > max_top) {
        return Err(ApiError::invalid(
            format!("'top_logprobs' must be between 0 and {max_top}, got {n}"),
            Some("top_logprobs"),
        ));
    }
    // Only `include` asks for them; `top_logprobs` alone is echoed, as OpenAI does.
    let logprobs = unsupported::wants_logprobs(&req).then(|| req.top_logprobs.unwrap_or(0));
    let agentic = agents::validate(&req)?;
    let max_output_tokens = st.config.max_output_tokens(req.max_output_tokens);
    let input_items = normalize_input(req.input.as_ref())?;
    // What this response stores of its own, bounded before any other work.
    let input_bytes: u64 = input_items
        .iter()
        .map(|it| serde_json::to_vec(it).map_or(0, |v| v.len() as u64))
        .sum();
    let record_bytes = input_bytes + req.instructions.as_ref().map_or(0, |s| s.len() as u64);
    if record_bytes > st.config.max_record_bytes as u64 {
        return Err(ApiError::too_large(format!(
            "the input and instructions are {record_bytes} bytes, more than the {} one \
             response may store",
            st.config.max_record_bytes
        )));
    }

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
        let budget = chain::budget(mode, st.context_tokens(&model), max_output_tokens);
        match recent.filter(|r| r.record.response.id == *prev_id) {
            Some(recent) => follow_up_recent(st, recent, &input_items, budget, mode, store).await?,
            None => follow_up(st, tenant, prev_id, &input_items, budget, mode, Log::Append).await?,
        }
    } else if let Some(conv) = &req.conversation {
        let id = new_id("resp");
        let budget = chain::budget(mode, st.context_tokens(&model), max_output_tokens);
        let tail = st
            .store
            .conversation_tail(tenant, conv.id(), budget.saturating_sub(input_bytes))
            .await?
            .ok_or_else(|| ApiError::NotFound {
                message: format!("Conversation with id '{}' not found.", conv.id()),
                param: Some("conversation".into()),
                code: Some("conversation_not_found".into()),
            })?;
        // The input joins the conversation when this response ends.
        let cap = st.config.max_conversation_bytes;
        if tail.bytes + input_bytes > cap {
            let bytes = tail.bytes + input_bytes;
            return Err(ApiError::conversation_too_large(bytes, cap, "input"));
        }
        let items = chain::conversation_window(tail, mode)?;
        // The conversation's window as it is now is this response's
        // context, kept in its own chain's log so follow-ups see it too.
        let mut window = Vec::new();
        let mut history = Vec::new();
        if !items.is_empty() {
            let entry = encode(&items)?;
            let bytes = entry.len() as u64;
            let turn = st.store.append_turn(&id, entry).await?;
            window.push(ContextTurn { turn, bytes });
            history.push(items);
        }
        Context {
            history,
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

    // Compaction items are opened before anything is generated: one that
    // does not open for this tenant is the request's error.
    let mut summaries = Summaries::default();
    let earlier = if req.conversation.is_some() {
        "conversation"
    } else {
        "previous_response_id"
    };
    for turn in &history {
        summaries.open_items(&st.compaction, tenant, turn, |_| earlier.into())?;
    }
    summaries.open_items(&st.compaction, tenant, &input_items, input_param)?;
    let mut messages = Vec::new();
    if let Some(instr) = req.instructions.as_deref().filter(|s| !s.is_empty()) {
        messages.push(ChatMessage::text("system", instr));
    }
    for turn in &history {
        items_to_messages(turn, &summaries, &mut messages);
    }
    items_to_messages(&input_items, &summaries, &mut messages);

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
            max_tokens: max_output_tokens,
            logprobs,
            ..SamplingParams::default()
        },
        cache_key: None,
        cache_salt: None,
        output: agentic.spec,
        // The router's window is sized in bytes; the worker fits it in tokens.
        truncation: mode,
        lora,
    };
    // A follow-up inherits its chain's key. Otherwise, without any identity,
    // the key hashes the leading messages (system and first user turn); it
    // is stored, so this chain's follow-ups route the same way.
    let routing_key = match chain_key {
        Some(key) => {
            gen.cache_key = Some(key.clone());
            gen.cache_salt = st.cache_salt(tenant).map(str::to_owned);
            key
        }
        None => assign_routing_key(
            &mut gen,
            &KeySources {
                conversation: req.conversation.as_ref().map(|c| c.id()),
                previous_response_root: None,
                prompt_cache_key: req.prompt_cache_key.as_deref(),
                session_header: session,
                user: req.safety_identifier.as_deref().or(req.user.as_deref()),
                salt: st.cache_salt(tenant),
            },
        ),
    };
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
        tools: agentic.tools,
        tool_choice: agentic.tool_choice,
        parallel_tool_calls: req.parallel_tool_calls.unwrap_or(true),
        temperature,
        top_p,
        presence_penalty,
        frequency_penalty,
        top_logprobs: req.top_logprobs.unwrap_or(0),
        truncation,
        text: agentic.text,
        reasoning: None,
        max_output_tokens,
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
        history,
    })
}

/// Where a compaction item of `input` is named in an error.
pub(super) fn input_param(i: usize) -> String {
    format!("input[{i}].encrypted_content")
}

/// Whether a follow-up writes the previous turn to the chain's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Log {
    /// A new response of the chain: its window refers to the entry.
    Append,
    /// Only reading the context (a compaction): the log stays as it is.
    Read,
}

/// What a create request is generated after.
pub(super) struct Context {
    /// Items before the input, one list per turn of `window`, oldest first.
    pub history: Vec<Vec<Value>>,
    /// Where `history` lives in the chain's item log.
    pub window: Vec<ContextTurn>,
    pub chain_root: String,
    /// The new response's id.
    pub id: String,
    /// The chain's routing key, inherited by a follow-up.
    pub chain_key: Option<String>,
}

/// The context of a follow-up to `prev_id`: the previous turn is written
/// once to the chain's item log (with [`Log::Append`]) while the rest of the
/// window is read back, so the cost does not grow with the chain (see
/// [`crate::chain`]).
pub(super) async fn follow_up(
    st: &SharedState,
    tenant: &str,
    prev_id: &str,
    input_items: &[Value],
    budget: u64,
    mode: Truncation,
    log: Log,
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
    // A chain continues only from a final answer: an unfinished one (still
    // generating, or its final state waiting for the store) has no output yet.
    if !prev.response.status.is_terminal() {
        return Err(ApiError::invalid_code(
            format!(
                "Previous response with id '{prev_id}' is still {}; wait until it has finished.",
                prev.response.status.as_str()
            ),
            Some("previous_response_id"),
            "previous_response_not_finished",
        ));
    }
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
    let append = async {
        match log {
            Log::Append => Some(st.store.append_turn(&prev.chain_root, entry).await),
            Log::Read => None,
        }
    };
    let (history, turn) = tokio::join!(
        chain::turn_items(&*st.store, &prev.chain_root, earlier),
        append
    );
    let mut history = history?;
    if let (Some(last), Some(turn)) = (window.last_mut(), turn) {
        last.turn = turn?;
    }
    history.push(prev_items);
    Ok(Context {
        history,
        window,
        chain_key: Some(chain_key(&prev.routing_key, &prev.chain_root)),
        chain_root: prev.chain_root,
        id,
    })
}

/// Follow-ups inherit the chain's routing key (O(1), no chain walk).
fn chain_key(routing_key: &str, chain_root: &str) -> String {
    if routing_key.is_empty() {
        format!("resp:{chain_root}")
    } else {
        routing_key.to_owned()
    }
}

fn encode(items: &[Value]) -> ApiResult<Vec<u8>> {
    serde_json::to_vec(items).map_err(|e| ApiError::Internal(format!("serializing items: {e}")))
}

/// The context of a follow-up to the response a WebSocket connection holds:
/// the window's items come from its memory. A stored chain still gets the
/// previous turn in its log, as over HTTP; a chain that lived only in the
/// connection has its window written to the store only when this response
/// is stored (its record points into the log); otherwise the store is not
/// touched.
async fn follow_up_recent(
    st: &SharedState,
    recent: &Recent,
    input_items: &[Value],
    budget: u64,
    mode: Truncation,
    store: bool,
) -> ApiResult<Context> {
    let prev = &recent.record;
    let prev_items: Vec<Value> = prev
        .input_items
        .iter()
        .chain(&prev.response.output)
        .cloned()
        .collect();
    let entry = encode(&prev_items)?;
    let input_bytes = encode(input_items)?.len() as u64;
    let last = ContextTurn {
        turn: 0,
        bytes: entry.len() as u64,
    };
    let mut window = chain::window(&prev.context, last, input_bytes, budget, mode)?;
    // The window drops turns from the front only: what it kept of the
    // previous window is that window's tail.
    let kept = window.len() - 1;
    let skip = recent.history.len().saturating_sub(kept);
    let mut history: Vec<Vec<Value>> = recent.history[skip..].to_vec();
    if prev.response.store {
        if let Some(last) = window.last_mut() {
            last.turn = st.store.append_turn(&prev.chain_root, entry).await?;
        }
    } else if store {
        let turns = history.iter().chain([&prev_items]);
        for (slot, items) in window.iter_mut().zip(turns) {
            slot.turn = st
                .store
                .append_turn(&prev.chain_root, encode(items)?)
                .await?;
        }
    }
    history.push(prev_items);
    Ok(Context {
        history,
        window,
        chain_root: prev.chain_root.clone(),
        id: chained_response_id(&prev.response.id),
        chain_key: Some(chain_key(&prev.routing_key, &prev.chain_root)),
    })
}
