//! Items: normalization of request input into stored items, their rendering
//! into the worker's chat messages, output items, and list pages.
//!
//! Items are kept as normalized JSON values (`type`, `id`, …) because they are
//! stored, listed and echoed back exactly; only rendering looks inside them.
//!
//! Rendering choices (the worker's chat template renders the messages):
//! - `developer` messages become `system` messages;
//! - `function_call` items become `tool_calls` of an assistant message (one
//!   message for consecutive calls, and for the text just before them);
//! - a `function_call_output` item becomes a `tool` message with its
//!   `tool_call_id`;
//! - a `compaction` item, kept as given (its content is opaque), becomes a
//!   `system` message with the summary it seals, where the item stands
//!   (opened beforehand into [`Summaries`]);
//! - content parts are joined without separators; only text parts are accepted.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use spindle_proto::tools::ToolCall;
use spindle_proto::ChatMessage;
use utoipa::ToSchema;

use super::logprobs::LogProb;
use crate::compaction::Summaries;
use crate::error::ApiError;
use crate::types::new_id;

/// What the model reads before the summary of a compaction item.
pub const SUMMARY_PREFIX: &str = "Summary of the earlier conversation: ";

fn text_part(kind: &str, text: &str) -> Value {
    if kind == "output_text" {
        json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
    } else {
        json!({"type": kind, "text": text})
    }
}

fn str_field<'a>(
    obj: &'a serde_json::Map<String, Value>,
    key: &str,
    at: &str,
) -> Result<&'a str, ApiError> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ApiError::invalid(
            format!("'{at}.{key}' must be a string"),
            Some(&format!("{at}.{key}")),
        )),
        None => Err(ApiError::missing(&format!("{at}.{key}"))),
    }
}

/// Normalize `input` (a string or a list of items) into stored items with ids.
/// Returns an error for empty input or items the router cannot use.
pub fn normalize_input(input: Option<&Value>) -> Result<Vec<Value>, ApiError> {
    match input {
        None | Some(Value::Null) => Err(ApiError::missing("input")),
        Some(Value::String(s)) => {
            if s.is_empty() {
                return Err(ApiError::invalid(
                    "'input' must not be empty",
                    Some("input"),
                ));
            }
            Ok(vec![message_item("user", vec![text_part("input_text", s)])])
        }
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return Err(ApiError::invalid(
                    "'input' must not be an empty list",
                    Some("input"),
                ));
            }
            normalize_items(items, "input")
        }
        Some(_) => Err(ApiError::invalid(
            "'input' must be a string or a list of items",
            Some("input"),
        )),
    }
}

/// Most items one request may carry (input, or items added to a
/// conversation): work and memory per request stay bounded by the count as
/// well as by the body size.
pub const MAX_ITEMS: usize = 2048;

/// Normalize a list of items (request input or conversation items).
pub fn normalize_items(items: &[Value], at: &str) -> Result<Vec<Value>, ApiError> {
    if items.len() > MAX_ITEMS {
        return Err(ApiError::invalid_code(
            format!(
                "'{at}' has {} items; at most {MAX_ITEMS} are accepted in one request.",
                items.len()
            ),
            Some(at),
            "too_many_items",
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| normalize_item(item, &format!("{at}[{i}]")))
        .collect()
}

/// The parts of a `function_call_output`'s `output` list: text parts only
/// (this is a text-only model), each normalized to `{type, text}`.
fn output_parts(parts: &[Value], at: &str) -> Result<Vec<Value>, ApiError> {
    parts
        .iter()
        .enumerate()
        .map(|(j, part)| {
            let pat = format!("{at}.output[{j}]");
            let p = part.as_object().ok_or_else(|| {
                ApiError::invalid(format!("'{pat}' must be an object"), Some(&pat))
            })?;
            match str_field(p, "type", &pat)? {
                "input_text" => Ok(text_part("input_text", str_field(p, "text", &pat)?)),
                other => Err(ApiError::invalid(
                    format!("output part type '{other}' is not supported by this text-only model"),
                    Some(&format!("{pat}.type")),
                )),
            }
        })
        .collect()
}

fn message_item(role: &str, content: Vec<Value>) -> Value {
    json!({"type": "message", "id": new_id("msg"), "status": "completed", "role": role, "content": content})
}

fn normalize_item(item: &Value, at: &str) -> Result<Value, ApiError> {
    let obj = item
        .as_object()
        .ok_or_else(|| ApiError::invalid(format!("'{at}' must be an object"), Some(at)))?;
    let kind = match obj.get("type") {
        None => "message",
        Some(Value::String(t)) => t.as_str(),
        Some(_) => {
            return Err(ApiError::invalid(
                format!("'{at}.type' must be a string"),
                Some(&format!("{at}.type")),
            ))
        }
    };
    match kind {
        "message" => {
            let role = str_field(obj, "role", at)?;
            if !matches!(role, "user" | "assistant" | "system" | "developer") {
                return Err(ApiError::invalid(
                    format!("invalid role '{role}' at '{at}.role'; expected user, assistant, system or developer"),
                    Some(&format!("{at}.role")),
                ));
            }
            let default_kind = if role == "assistant" {
                "output_text"
            } else {
                "input_text"
            };
            let content = match obj.get("content") {
                Some(Value::String(s)) => vec![text_part(default_kind, s)],
                Some(Value::Array(parts)) => {
                    let mut out = Vec::with_capacity(parts.len());
                    for (j, part) in parts.iter().enumerate() {
                        let pat = format!("{at}.content[{j}]");
                        let p = part.as_object().ok_or_else(|| {
                            ApiError::invalid(format!("'{pat}' must be an object"), Some(&pat))
                        })?;
                        let pkind = str_field(p, "type", &pat)?;
                        match pkind {
                            "input_text" | "output_text" | "text" | "refusal" => {
                                let key = if pkind == "refusal" { "refusal" } else { "text" };
                                let text = str_field(p, key, &pat)?;
                                let k = if pkind == "text" { default_kind } else { pkind };
                                if k == "refusal" {
                                    out.push(json!({"type": "refusal", "refusal": text}));
                                } else {
                                    out.push(text_part(k, text));
                                }
                            }
                            other => {
                                return Err(ApiError::invalid(
                                    format!("content part type '{other}' is not supported by this text-only model"),
                                    Some(&format!("{pat}.type")),
                                ))
                            }
                        }
                    }
                    out
                }
                Some(_) => {
                    return Err(ApiError::invalid(
                        format!("'{at}.content' must be a string or a list of content parts"),
                        Some(&format!("{at}.content")),
                    ))
                }
                None => return Err(ApiError::missing(&format!("{at}.content"))),
            };
            let mut m = message_item(role, content);
            if let Some(Value::String(id)) = obj.get("id") {
                m["id"] = Value::String(id.clone());
            }
            match obj.get("phase") {
                None | Some(Value::Null) => {}
                Some(phase) if role == "assistant" => {
                    let phase: Phase = serde_json::from_value(phase.clone()).map_err(|_| {
                        ApiError::invalid(
                            format!("invalid '{at}.phase' {phase}; expected 'commentary' or 'final_answer'"),
                            Some(&format!("{at}.phase")),
                        )
                    })?;
                    m["phase"] = json!(phase);
                }
                Some(_) => {
                    return Err(ApiError::invalid(
                        format!("'{at}.phase' labels assistant messages only, not '{role}' ones"),
                        Some(&format!("{at}.phase")),
                    ))
                }
            }
            Ok(m)
        }
        "function_call" => {
            let call_id = str_field(obj, "call_id", at)?;
            let name = str_field(obj, "name", at)?;
            let arguments = str_field(obj, "arguments", at)?;
            let id = match obj.get("id") {
                Some(Value::String(id)) => id.clone(),
                _ => new_id("fc"),
            };
            Ok(
                json!({"type": "function_call", "id": id, "call_id": call_id, "name": name,
                      "arguments": arguments, "status": "completed"}),
            )
        }
        "function_call_output" => {
            let call_id = str_field(obj, "call_id", at)?;
            let output = match obj.get("output") {
                Some(Value::String(s)) => Value::String(s.clone()),
                Some(Value::Array(parts)) => Value::Array(output_parts(parts, at)?),
                _ => {
                    return Err(ApiError::invalid(
                        format!("'{at}.output' must be a string or a list of content parts"),
                        Some(&format!("{at}.output")),
                    ))
                }
            };
            let id = match obj.get("id") {
                Some(Value::String(id)) => id.clone(),
                _ => new_id("fco"),
            };
            Ok(
                json!({"type": "function_call_output", "id": id, "call_id": call_id,
                      "output": output, "status": "completed"}),
            )
        }
        "compaction" => {
            // Opaque: kept as given; opened (and refused) in the handlers,
            // which know the tenant.
            let content = str_field(obj, "encrypted_content", at)?;
            let id = match obj.get("id") {
                Some(Value::String(id)) => id.clone(),
                _ => new_id("cmp"),
            };
            Ok(json!({"type": "compaction", "id": id, "encrypted_content": content}))
        }
        other => Err(ApiError::invalid(
            format!("input item type '{other}' is not supported"),
            Some(&format!("{at}.type")),
        )),
    }
}

fn parts_text(parts: &Value) -> String {
    match parts {
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .filter_map(|p| {
                p.get("text")
                    .or_else(|| p.get("refusal"))
                    .and_then(Value::as_str)
            })
            .collect(),
        _ => String::new(),
    }
}

/// Render normalized items into chat messages for the worker (see module docs).
pub fn items_to_messages(items: &[Value], summaries: &Summaries, out: &mut Vec<ChatMessage>) {
    for item in items {
        match item
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message")
        {
            "message" => {
                let role = match item.get("role").and_then(Value::as_str).unwrap_or("user") {
                    "developer" => "system",
                    r => r,
                };
                out.push(ChatMessage::text(
                    role,
                    parts_text(item.get("content").unwrap_or(&Value::Null)),
                ));
            }
            "function_call" => {
                let str_of = |k: &str| item.get(k).and_then(Value::as_str).unwrap_or_default();
                let call = ToolCall {
                    call_id: str_of("call_id").to_owned(),
                    name: str_of("name").to_owned(),
                    arguments: str_of("arguments").to_owned(),
                };
                match out.last_mut() {
                    Some(m) if m.role == "assistant" => m.tool_calls.push(call),
                    _ => {
                        let mut m = ChatMessage::text("assistant", "");
                        m.tool_calls.push(call);
                        out.push(m);
                    }
                }
            }
            "function_call_output" => {
                let call_id = item.get("call_id").and_then(Value::as_str).unwrap_or("");
                let mut m = ChatMessage::text(
                    "tool",
                    parts_text(item.get("output").unwrap_or(&Value::Null)),
                );
                m.tool_call_id = Some(call_id.to_owned());
                out.push(m);
            }
            "compaction" => {
                if let Some(summary) = summaries.get(item) {
                    out.push(ChatMessage::text(
                        "system",
                        format!("{SUMMARY_PREFIX}{summary}"),
                    ));
                }
            }
            _ => {}
        }
    }
}

/// An assistant output message item: its text, with its tokens' log
/// probabilities (empty unless the request asked for them).
pub fn output_message(id: &str, status: &str, text: Option<(&str, &[LogProb])>) -> Value {
    let content = match text {
        Some((t, logprobs)) => vec![output_text_part(t, logprobs)],
        None => vec![],
    };
    json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": content})
}

/// The `output_text` part with `text` and its tokens' log probabilities.
pub fn output_text_part(text: &str, logprobs: &[LogProb]) -> Value {
    let mut part = text_part("output_text", text);
    if !logprobs.is_empty() {
        part["logprobs"] = json!(logprobs);
    }
    part
}

/// A page of items (`input_items`, conversation items).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ItemList {
    /// Always `list`.
    pub object: &'static str,
    #[schema(value_type = Vec<Item>)]
    pub data: Vec<Value>,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub has_more: bool,
}

/// A `{"object":"list",…}` page over items with ids, OpenAI cursor style.
pub fn list_page(
    items: &[Value],
    after: Option<&str>,
    limit: usize,
    desc: bool,
) -> Result<ItemList, ApiError> {
    let mut ordered: Vec<&Value> = items.iter().collect();
    if desc {
        ordered.reverse();
    }
    let start = match after {
        Some(a) => {
            ordered
                .iter()
                .position(|v| v.get("id").and_then(Value::as_str) == Some(a))
                .ok_or_else(|| ApiError::invalid(format!("no item with id '{a}'"), Some("after")))?
                + 1
        }
        None => 0,
    };
    let rest = &ordered[start.min(ordered.len())..];
    let page: Vec<Value> = rest.iter().take(limit).map(|v| (*v).clone()).collect();
    let id_of = |v: Option<&Value>| {
        v.and_then(|v| v.get("id"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    Ok(ItemList {
        object: "list",
        first_id: id_of(page.first()),
        last_id: id_of(page.last()),
        has_more: rest.len() > limit,
        data: page,
    })
}

// ------------------------------------------------ schemas of the items above
//
// Items stay JSON values (see the module docs); these types only describe,
// for the OpenAPI document, what `normalize_item` and `output_message` build
// and what requests may send. The API tests validate real items against them.

/// An item as Spindle stores, lists and returns it.
#[derive(Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Item {
    Message {
        id: String,
        status: ItemStatus,
        role: Role,
        content: Vec<Part>,
        /// Assistant messages only.
        phase: Option<Phase>,
    },
    FunctionCall {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
        status: ItemStatus,
    },
    FunctionCallOutput {
        id: String,
        call_id: String,
        output: FunctionOutput,
        status: ItemStatus,
    },
    /// Earlier turns, summarised by `POST /v1/responses/compact` and sealed.
    Compaction {
        id: String,
        encrypted_content: String,
    },
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    InProgress,
    Completed,
    Incomplete,
}

/// An assistant message's label (Open Responses `phase`): `commentary`
/// before its tool calls, `final_answer` otherwise. Input messages keep
/// the one the client sent, as the specification asks clients to resend it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Commentary,
    FinalAnswer,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Assistant,
    System,
    Developer,
}

/// A content part of a stored item: text only (a text-only model).
#[derive(Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    InputText {
        text: String,
    },
    OutputText {
        text: String,
        annotations: Vec<Value>,
        logprobs: Vec<LogProb>,
    },
    Refusal {
        refusal: String,
    },
}

/// A function's output: a string or `input_text` parts.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum FunctionOutput {
    Text(String),
    Parts(Vec<Part>),
}

/// `input` of a create request: a string (one user message) or items.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum InputParam {
    Text(String),
    Items(Vec<InputItem>),
}

/// An item a request sends (`input`, conversation `items`); ids are optional.
#[derive(Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InputItem {
    Message {
        id: Option<String>,
        role: Role,
        content: InputContent,
        /// Assistant messages only.
        phase: Option<Phase>,
    },
    FunctionCall {
        id: Option<String>,
        call_id: String,
        name: String,
        arguments: String,
    },
    FunctionCallOutput {
        id: Option<String>,
        call_id: String,
        output: InputOutput,
    },
    /// A `compaction` item as `POST /v1/responses/compact` returned it.
    Compaction {
        id: Option<String>,
        encrypted_content: String,
    },
}

/// A message's content: a string or text parts.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum InputContent {
    Text(String),
    Parts(Vec<InputPart>),
}

/// A content part a request sends (`text` takes the role's kind).
#[derive(Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InputPart {
    InputText { text: String },
    OutputText { text: String },
    Text { text: String },
    Refusal { refusal: String },
}

/// A function output a request sends: a string or `input_text` parts.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum InputOutput {
    Text(String),
    Parts(Vec<InputTextPart>),
}

/// `{"type": "input_text", "text": …}`.
#[derive(Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InputTextPart {
    InputText { text: String },
}
