//! `POST /v1/chat/completions` and `POST /v1/completions`, translated to one
//! worker generation each. Streams are `data:` chunks ending with
//! `data: [DONE]`; dropping the stream cancels the generation.
//!
//! Message rendering: `developer` → `system`; `tool` messages → user messages
//! `<tool_response call_id="…">…</tool_response>`; assistant `tool_calls` →
//! `<tool_call>{…}</tool_call>` text appended to the assistant message.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::stream::{BoxStream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use spindle_proto::{
    ChatMessage, FinishReason, GenerateEvent, GenerateRequest, PromptInput, SamplingParams, Usage,
};

use super::SharedState;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::sse::{data_event, done_event, sse_response};
use crate::telemetry::ModelTag;
use crate::types::{new_id, now_secs};

/// `stop`: a string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// Sampling fields shared by both endpoints.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CommonParams {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    pub logprobs: Option<Value>,
    #[serde(default)]
    pub response_format: Option<Value>,
    #[serde(default)]
    pub user: Option<String>,
}

/// Body of `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Value>,
    #[serde(flatten)]
    pub common: CommonParams,
}

/// Body of `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub prompt: Value,
    #[serde(flatten)]
    pub common: CommonParams,
}

fn sampling(p: &CommonParams) -> ApiResult<SamplingParams> {
    for (v, lo, hi, name) in [
        (p.temperature, 0.0, 2.0, "temperature"),
        (p.top_p, 0.0, 1.0, "top_p"),
        (p.presence_penalty, -2.0, 2.0, "presence_penalty"),
        (p.frequency_penalty, -2.0, 2.0, "frequency_penalty"),
    ] {
        if let Some(x) = v {
            if !(lo..=hi).contains(&x) {
                return Err(ApiError::invalid(
                    format!("'{name}' must be between {lo} and {hi}"),
                    Some(name),
                ));
            }
        }
    }
    if p.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("only n=1 is supported", Some("n")));
    }
    if matches!(p.logprobs, Some(Value::Bool(true))) {
        return Err(ApiError::invalid(
            "logprobs are not supported yet",
            Some("logprobs"),
        ));
    }
    if let Some(kind) = p
        .response_format
        .as_ref()
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str)
    {
        if kind != "text" {
            return Err(ApiError::invalid(
                format!("response_format type '{kind}' is not supported yet"),
                Some("response_format"),
            ));
        }
    }
    let max_tokens = p.max_completion_tokens.or(p.max_tokens);
    if max_tokens == Some(0) {
        return Err(ApiError::invalid(
            "'max_tokens' must be at least 1",
            Some("max_tokens"),
        ));
    }
    let stop = match &p.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    Ok(SamplingParams {
        temperature: p.temperature.unwrap_or(1.0) as f32,
        top_p: p.top_p.unwrap_or(1.0) as f32,
        presence_penalty: p.presence_penalty.unwrap_or(0.0) as f32,
        frequency_penalty: p.frequency_penalty.unwrap_or(0.0) as f32,
        seed: p.seed,
        stop,
        max_tokens,
        ..SamplingParams::default()
    })
}

fn content_text(v: Option<&Value>, at: &str) -> ApiResult<String> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for (j, p) in parts.iter().enumerate() {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") | Some("input_text") => {
                        match p.get("text").and_then(Value::as_str) {
                            Some(t) => out.push_str(t),
                            None => {
                                let param = format!("{at}.content[{j}].text");
                                return Err(ApiError::invalid(
                                    format!("'{param}' must be a string"),
                                    Some(&param),
                                ));
                            }
                        }
                    }
                    _ => {
                        let param = format!("{at}.content[{j}].type");
                        return Err(ApiError::invalid(
                            "only text content parts are supported by this model",
                            Some(&param),
                        ));
                    }
                }
            }
            Ok(out)
        }
        Some(_) => Err(ApiError::invalid(
            format!("'{at}.content' must be a string or a list of parts"),
            Some(&format!("{at}.content")),
        )),
    }
}

fn chat_messages(messages: &[Value]) -> ApiResult<Vec<ChatMessage>> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "'messages' must not be empty",
            Some("messages"),
        ));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let role = m.get("role").and_then(Value::as_str).ok_or_else(|| {
            ApiError::invalid(
                format!("'{at}.role' is required"),
                Some(&format!("{at}.role")),
            )
        })?;
        let mut content = content_text(m.get("content"), &at)?;
        let role = match role {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => {
                if let Some(Value::Array(calls)) = m.get("tool_calls") {
                    for c in calls {
                        let f = c.get("function").cloned().unwrap_or(Value::Null);
                        let call = json!({"name": f.get("name"), "arguments": f.get("arguments"), "call_id": c.get("id")});
                        content.push_str(&format!("<tool_call>{call}</tool_call>"));
                    }
                }
                "assistant"
            }
            "tool" | "function" => {
                let call_id = m.get("tool_call_id").and_then(Value::as_str).unwrap_or("");
                content = format!("<tool_response call_id=\"{call_id}\">{content}</tool_response>");
                "user"
            }
            other => {
                return Err(ApiError::invalid(
                    format!("invalid role '{other}'"),
                    Some(&format!("{at}.role")),
                ))
            }
        };
        out.push(ChatMessage {
            role: role.into(),
            content,
        });
    }
    Ok(out)
}

fn finish_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Length => "length",
        _ => "stop",
    }
}

fn chat_usage(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": 0},
    })
}

/// Run to completion: `(text, finish_reason, usage)`.
async fn collect(
    mut stream: BoxStream<'static, GenerateEvent>,
) -> ApiResult<(String, FinishReason, Usage)> {
    let mut text = String::new();
    while let Some(ev) = stream.next().await {
        match ev {
            GenerateEvent::Delta { text: t, .. } => text.push_str(&t),
            GenerateEvent::Done {
                finish_reason,
                usage,
                ..
            } => return Ok((text, finish_reason, usage)),
            GenerateEvent::Error { code, message } => {
                return Err(ApiError::BadGateway(format!(
                    "generation failed ({code}): {message}"
                )))
            }
        }
    }
    Err(ApiError::BadGateway(
        "the worker stream ended before generation finished".into(),
    ))
}

#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Text,
}

fn chunk(
    kind: Kind,
    id: &str,
    created: u64,
    model: &str,
    delta: Option<&str>,
    first: bool,
    finish: Option<&str>,
) -> Value {
    match kind {
        Kind::Chat => {
            let mut d = json!({});
            if first {
                d["role"] = json!("assistant");
            }
            if let Some(t) = delta {
                d["content"] = json!(t);
            }
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                   "system_fingerprint": null,
                   "choices": [{"index": 0, "delta": d, "logprobs": null, "finish_reason": finish}]})
        }
        Kind::Text => {
            json!({"id": id, "object": "text_completion", "created": created, "model": model,
                             "choices": [{"index": 0, "text": delta.unwrap_or(""), "logprobs": null, "finish_reason": finish}]})
        }
    }
}

async fn run(
    st: SharedState,
    kind: Kind,
    input: PromptInput,
    p: CommonParams,
    tag: &ModelTag,
) -> ApiResult<Response> {
    let model = st.resolve_model(p.model.as_deref())?;
    tag.set(&model);
    let sampling = sampling(&p)?;
    let id = match kind {
        Kind::Chat => new_id("chatcmpl"),
        Kind::Text => new_id("cmpl"),
    };
    let created = now_secs();
    let gen = GenerateRequest {
        request_id: Some(id.clone()),
        model: Some(model.clone()),
        input,
        continuation: None,
        sampling,
        cache_key: p.user.clone(),
    };
    let stream = st.generator.generate(gen).await?;
    if !p.stream.unwrap_or(false) {
        let (text, reason, usage) = collect(stream).await?;
        let choice = match kind {
            Kind::Chat => {
                json!({"index": 0, "message": {"role": "assistant", "content": text, "refusal": null},
                                 "logprobs": null, "finish_reason": finish_str(reason)})
            }
            Kind::Text => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish_str(reason)})
            }
        };
        let object = match kind {
            Kind::Chat => "chat.completion",
            Kind::Text => "text_completion",
        };
        return Ok(Json(json!({"id": id, "object": object, "created": created, "model": model,
                               "system_fingerprint": null, "choices": [choice], "usage": chat_usage(&usage)}))
        .into_response());
    }
    let include_usage = p
        .stream_options
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let first = matches!(kind, Kind::Chat)
        .then(|| data_event(&chunk(kind, &id, created, &model, Some(""), true, None)));
    let state = (stream, false);
    let body = futures::stream::unfold(state, move |(mut stream, finished)| {
        let (id, model) = (id.clone(), model.clone());
        async move {
            if finished {
                return None;
            }
            let mut out = Vec::new();
            let done = match stream.next().await {
                Some(GenerateEvent::Delta { text, .. }) => {
                    if !text.is_empty() {
                        out.push(data_event(&chunk(
                            kind,
                            &id,
                            created,
                            &model,
                            Some(&text),
                            false,
                            None,
                        )));
                    }
                    false
                }
                Some(GenerateEvent::Done {
                    finish_reason,
                    usage,
                    ..
                }) => {
                    let mut last = chunk(
                        kind,
                        &id,
                        created,
                        &model,
                        None,
                        false,
                        Some(finish_str(finish_reason)),
                    );
                    if include_usage {
                        last["usage"] = Value::Null;
                    }
                    out.push(data_event(&last));
                    if include_usage {
                        let mut u = chunk(kind, &id, created, &model, None, false, None);
                        u["choices"] = json!([]);
                        u["usage"] = chat_usage(&usage);
                        out.push(data_event(&u));
                    }
                    true
                }
                Some(GenerateEvent::Error { code, message }) => {
                    let e = ApiError::BadGateway(format!("generation failed ({code}): {message}"));
                    out.push(data_event(&e.body()));
                    true
                }
                None => {
                    let e = ApiError::BadGateway(
                        "the worker stream ended before generation finished".into(),
                    );
                    out.push(data_event(&e.body()));
                    true
                }
            };
            if done {
                out.push(done_event());
            }
            Some((futures::stream::iter(out), (stream, done)))
        }
    })
    .flatten();
    Ok(sse_response(futures::stream::iter(first).chain(body)))
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(st): State<SharedState>,
    Extension(tag): Extension<ModelTag>,
    ApiJson(req): ApiJson<ChatRequest>,
) -> ApiResult<Response> {
    let messages = chat_messages(&req.messages)?;
    let input = PromptInput::Messages(messages);
    run(st, Kind::Chat, input, req.common, &tag).await
}

/// `POST /v1/completions`.
pub async fn completions(
    State(st): State<SharedState>,
    Extension(tag): Extension<ModelTag>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> ApiResult<Response> {
    let prompt = match &req.prompt {
        Value::String(s) => s.clone(),
        Value::Array(a) if a.len() == 1 && a[0].is_string() => {
            a[0].as_str().unwrap_or_default().to_owned()
        }
        _ => {
            return Err(ApiError::invalid(
                "'prompt' must be a string (or a list with exactly one string)",
                Some("prompt"),
            ))
        }
    };
    if prompt.is_empty() {
        return Err(ApiError::invalid(
            "'prompt' must not be empty",
            Some("prompt"),
        ));
    }
    run(
        st,
        Kind::Text,
        PromptInput::Prompt(prompt),
        req.common,
        &tag,
    )
    .await
}
