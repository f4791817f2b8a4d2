//! Request and response objects of the Responses API (the response object,
//! its status, usage and errors; the create request; list queries) and ids.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;
use crate::responses::items::{InputParam, Item};

/// The answer to a `DELETE`: `{"id", "object": "<kind>.deleted", "deleted": true}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Deleted {
    pub id: String,
    pub object: &'static str,
    pub deleted: bool,
}

impl Deleted {
    /// `object` is `"response.deleted"` or `"conversation.deleted"`.
    pub fn new(id: String, object: &'static str) -> Self {
        Self {
            id,
            object,
            deleted: true,
        }
    }
}

/// Lifecycle of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResponseStatus {
    Queued,
    InProgress,
    Completed,
    Failed,
    Cancelled,
    Incomplete,
}

impl ResponseStatus {
    /// True once nothing more will happen to the response.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::InProgress)
    }

    /// The wire name (`in_progress`, ...), as serde writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Incomplete => "incomplete",
        }
    }
}

/// `error` of a failed response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResponseErrorInfo {
    pub code: String,
    pub message: String,
}

/// `incomplete_details` of an incomplete response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct IncompleteDetails {
    pub reason: String,
}

/// `usage` of a finished response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ResponseUsage {
    pub input_tokens: u32,
    pub input_tokens_details: InputTokensDetails,
    pub output_tokens: u32,
    pub output_tokens_details: OutputTokensDetails,
    pub total_tokens: u32,
}

/// Prompt-cache accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InputTokensDetails {
    pub cached_tokens: u32,
}

/// Reasoning accounting (always 0: no reasoning models).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OutputTokensDetails {
    pub reasoning_tokens: u32,
}

impl From<spindle_proto::Usage> for ResponseUsage {
    fn from(u: spindle_proto::Usage) -> Self {
        Self {
            input_tokens: u.prompt_tokens,
            input_tokens_details: InputTokensDetails {
                cached_tokens: u.cached_tokens,
            },
            output_tokens: u.completion_tokens,
            output_tokens_details: OutputTokensDetails {
                reasoning_tokens: 0,
            },
            total_tokens: u.prompt_tokens.saturating_add(u.completion_tokens),
        }
    }
}

/// `{"id": "conv_…"}` on a response that belongs to a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConversationRef {
    pub id: String,
}

/// `"type": "function"`, the one tool type Spindle serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ToolKind {
    Function,
}

/// A function tool: as validated from the request, and as echoed in the
/// response object, where every key is present (`null` when not given).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FunctionTool {
    #[serde(rename = "type")]
    pub kind: ToolKind,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// A JSON Schema object for the arguments.
    #[serde(default)]
    pub parameters: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub strict: Option<bool>,
}

/// The response object; every key is always serialized (null where N/A).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResponseObject {
    pub id: String,
    pub object: String,
    pub created_at: u64,
    pub completed_at: Option<u64>,
    pub status: ResponseStatus,
    pub error: Option<ResponseErrorInfo>,
    pub incomplete_details: Option<IncompleteDetails>,
    pub instructions: Option<String>,
    pub model: String,
    #[schema(value_type = Vec<Item>)]
    pub output: Vec<Value>,
    pub previous_response_id: Option<String>,
    pub conversation: Option<ConversationRef>,
    pub tools: Vec<FunctionTool>,
    pub tool_choice: Value,
    pub parallel_tool_calls: bool,
    pub temperature: f64,
    pub top_p: f64,
    pub presence_penalty: f64,
    pub frequency_penalty: f64,
    pub top_logprobs: u32,
    pub truncation: String,
    pub text: Value,
    pub reasoning: Option<Value>,
    pub max_output_tokens: Option<u32>,
    pub max_tool_calls: Option<u32>,
    pub store: bool,
    pub background: bool,
    pub service_tier: String,
    pub metadata: BTreeMap<String, String>,
    pub safety_identifier: Option<String>,
    pub user: Option<String>,
    pub prompt_cache_key: Option<String>,
    pub usage: Option<ResponseUsage>,
}

/// `conversation` in a create request: an id or `{"id": …}`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ConversationParam {
    Id(String),
    Object { id: String },
}

impl ConversationParam {
    /// The conversation id.
    pub fn id(&self) -> &str {
        match self {
            Self::Id(id) | Self::Object { id } => id,
        }
    }
}

/// `text` in a create request.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
pub struct TextParam {
    #[serde(default)]
    pub format: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verbosity: Option<String>,
}

/// Body of `POST /v1/responses`. Unknown fields are ignored.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct CreateResponseRequest {
    #[serde(default)]
    pub model: Option<String>,
    /// A string (one user message) or a list of items.
    #[serde(default)]
    #[schema(value_type = Option<InputParam>)]
    pub input: Option<Value>,
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    pub previous_response_id: Option<String>,
    #[serde(default)]
    pub conversation: Option<ConversationParam>,
    #[serde(default)]
    pub store: Option<bool>,
    #[serde(default)]
    pub background: Option<bool>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f64>,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1)]
    pub top_p: Option<f64>,
    #[serde(default)]
    #[schema(minimum = -2, maximum = 2)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    #[schema(minimum = -2, maximum = 2)]
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_output_tokens: Option<u32>,
    #[serde(default)]
    pub max_tool_calls: Option<u32>,
    /// Alternatives per token of the log probabilities that
    /// `include: ["message.output_text.logprobs"]` asks for.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 20)]
    pub top_logprobs: Option<u32>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub safety_identifier: Option<String>,
    #[serde(default)]
    pub prompt_cache_key: Option<String>,
    #[serde(default)]
    pub text: Option<TextParam>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<FunctionTool>>)]
    pub tools: Option<Vec<Value>>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub truncation: Option<String>,
    /// Refused unless it asks for no reasoning (no served model reasons).
    #[serde(default)]
    pub reasoning: Option<crate::responses::unsupported::ReasoningParam>,
    /// Stored prompt templates: refused (the server keeps none).
    #[serde(default)]
    pub prompt: Option<crate::responses::unsupported::PromptParam>,
    /// Extra output to include; see `responses::unsupported` for which.
    #[serde(default)]
    pub include: Option<Vec<String>>,
    #[serde(default)]
    pub seed: Option<u64>,
    /// LoRA adapters to run under (extension, as on chat completions).
    #[serde(default)]
    pub lora: Vec<spindle_proto::lora::LoraSelection>,
}

/// Body of `POST /v1/responses/compact`. Unknown fields are ignored.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct CompactRequest {
    /// Required (400 without it).
    #[serde(default)]
    #[schema(required = true, value_type = String)]
    pub model: Option<String>,
    /// A string (one user message) or a list of items, after the previous
    /// response's context when `previous_response_id` is given.
    #[serde(default)]
    #[schema(value_type = Option<InputParam>)]
    pub input: Option<Value>,
    #[serde(default)]
    pub previous_response_id: Option<String>,
    /// The system message of the summarising pass (not kept in the window).
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    pub prompt_cache_key: Option<String>,
}

/// The answer of `POST /v1/responses/compact`: a compacted input window.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CompactResource {
    pub id: String,
    /// Always `response.compaction`.
    pub object: &'static str,
    pub created_at: u64,
    /// One `compaction` item standing for everything before the latest
    /// user message, then that message and what followed it, verbatim.
    #[schema(value_type = Vec<Item>)]
    pub output: Vec<Value>,
    /// Tokens of the summarising pass (zeros when there was nothing to summarise).
    pub usage: ResponseUsage,
}

/// A new random id such as `resp_3f…`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Query of list endpoints: `after`, `limit` (1..=100, default 20), `order`.
/// Kept as strings so a bad value is a 400 naming its parameter (`resolve`).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// List items after this item id.
    pub after: Option<String>,
    /// How many items, 1 to 100 (default 20).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    /// `desc` (default: newest first) or `asc`.
    #[param(value_type = Option<ListOrder>, inline)]
    pub order: Option<String>,
}

/// The orders `ListQuery::order` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ListOrder {
    Asc,
    Desc,
}

impl ListQuery {
    /// Validated `(limit, descending)`.
    pub fn resolve(&self) -> Result<(usize, bool), ApiError> {
        let limit = match &self.limit {
            None => 20,
            Some(l) => match l.parse::<usize>() {
                Ok(n) if (1..=100).contains(&n) => n,
                _ => {
                    return Err(ApiError::invalid(
                        "'limit' must be an integer between 1 and 100",
                        Some("limit"),
                    ))
                }
            },
        };
        let desc = match self.order.as_deref() {
            None | Some("desc") => true,
            Some("asc") => false,
            Some(_) => {
                return Err(ApiError::invalid(
                    "'order' must be 'asc' or 'desc'",
                    Some("order"),
                ))
            }
        };
        Ok((limit, desc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_are_the_serialized_ones() {
        use ResponseStatus::*;
        for s in [Queued, InProgress, Completed, Failed, Cancelled, Incomplete] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
