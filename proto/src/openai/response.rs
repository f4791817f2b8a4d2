//! Chat Completions and Completions responses: whole objects, stream chunks,
//! usage, errors and the models list, and [`Completer`], which turns a
//! generation's events into them (streamed or collected) the same way for
//! the worker and the router.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::logprobs::{ChatLogprobs, CompletionLogprobs, TextOffsets};
use super::tools::{CalledFunction, FunctionDelta, ToolCallDelta, ToolCallOut};
use crate::logprobs::TokenLogprob;
use crate::{FailureCode, FinishReason, GenerateEvent, Usage};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PromptTokensDetails {
    pub cached_tokens: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CompletionTokensDetails {
    pub reasoning_tokens: u32,
}

/// OpenAI `usage` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CompletionUsage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    pub prompt_tokens_details: PromptTokensDetails,
    pub completion_tokens_details: CompletionTokensDetails,
}

impl From<Usage> for CompletionUsage {
    fn from(u: Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: u.cached_tokens,
            },
            completion_tokens_details: CompletionTokensDetails {
                reasoning_tokens: 0,
            },
        }
    }
}

/// The OpenAI `finish_reason` string (a cancelled request ended early: "stop").
pub fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Length => "length",
        FinishReason::Stop | FinishReason::Cancelled => "stop",
        FinishReason::ToolCalls => "tool_calls",
    }
}

/// The assistant's message in a whole chat completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AssistantMessage {
    pub role: String,
    /// `null` when the answer is only tool calls.
    pub content: Option<String>,
    pub refusal: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallOut>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    /// With `logprobs: true`; else `null`.
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: String,
}

/// A whole `chat.completion`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: Option<String>,
    pub choices: Vec<ChatChoice>,
    pub usage: CompletionUsage,
}

/// What a chunk adds to the assistant message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    /// The chunk's tokens, with `logprobs: true`; else `null`.
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<String>,
}

/// One `chat.completion.chunk` of a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: Option<String>,
    pub choices: Vec<ChunkChoice>,
    /// Only on the last chunk, with `stream_options.include_usage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<CompletionUsage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TextChoice {
    pub index: u32,
    pub text: String,
    /// With `logprobs`; else `null`.
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<String>,
}

/// A whole `text_completion`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TextCompletion {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<TextChoice>,
    pub usage: CompletionUsage,
}

/// One `text_completion` chunk of a stream (same object name as the whole one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TextCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<TextChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<CompletionUsage>,
}

/// The OpenAI error body: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorObject,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorObject {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

/// One `data:` payload of a completions stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum StreamItem {
    Chat(ChatCompletionChunk),
    Text(TextCompletionChunk),
    /// The generation failed mid-stream (then `[DONE]`).
    Error(ErrorBody),
}

/// A whole (non-streamed) completion.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Completion {
    Chat(ChatCompletion),
    Text(TextCompletion),
}

/// A generation that failed: the worker's code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationFailed {
    pub code: FailureCode,
    pub message: String,
}

/// Which endpoint a [`Completer`] answers for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

/// Turns one generation's events into an endpoint's chunks or whole object.
pub struct Completer {
    endpoint: Endpoint,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    text: String,
    /// Tool calls of a whole chat answer.
    calls: Vec<ToolCallOut>,
    /// Log probabilities were asked for: every text chunk and the whole
    /// answer carry them.
    logprobs: bool,
    /// The entries of a whole answer so far.
    entries: Vec<TokenLogprob>,
    /// Character offsets of Completions' `text_offset`, across chunks.
    offsets: TextOffsets,
}

impl Completer {
    pub fn new(
        endpoint: Endpoint,
        id: String,
        created: u64,
        model: String,
        include_usage: bool,
    ) -> Self {
        Self {
            endpoint,
            id,
            created,
            model,
            include_usage,
            text: String::new(),
            calls: Vec::new(),
            logprobs: false,
            entries: Vec::new(),
            offsets: TextOffsets::default(),
        }
    }

    /// Log probabilities were asked for (`sampling.logprobs` is set):
    /// answers carry them, an empty list rather than `null` when none came.
    pub fn with_logprobs(mut self, asked: bool) -> Self {
        self.logprobs = asked;
        self
    }

    /// One endpoint's log probabilities of `entries` (`None` unless asked).
    fn logprobs_of(&mut self, entries: &[TokenLogprob]) -> Logprobs {
        match (self.logprobs, self.endpoint) {
            (false, _) => Logprobs::None,
            (true, Endpoint::Chat) => Logprobs::Chat(ChatLogprobs::from_entries(entries)),
            (true, Endpoint::Completions) => Logprobs::Text(self.offsets.convert(entries)),
        }
    }

    fn chunk(&self, delta: Delta, text: &str, finish: Option<FinishReason>) -> StreamItem {
        self.chunk_with(delta, text, finish, Logprobs::None)
    }

    fn chunk_with(
        &self,
        delta: Delta,
        text: &str,
        finish: Option<FinishReason>,
        logprobs: Logprobs,
    ) -> StreamItem {
        let (chat_logprobs, text_logprobs) = logprobs.split();
        let finish_reason = finish.map(|r| finish_reason(r).to_owned());
        match self.endpoint {
            Endpoint::Chat => StreamItem::Chat(ChatCompletionChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk".into(),
                created: self.created,
                model: self.model.clone(),
                system_fingerprint: None,
                choices: vec![ChunkChoice {
                    index: 0,
                    delta,
                    logprobs: chat_logprobs,
                    finish_reason,
                }],
                usage: None,
            }),
            Endpoint::Completions => StreamItem::Text(TextCompletionChunk {
                id: self.id.clone(),
                object: "text_completion".into(),
                created: self.created,
                model: self.model.clone(),
                choices: vec![TextChoice {
                    index: 0,
                    text: text.to_owned(),
                    logprobs: text_logprobs,
                    finish_reason,
                }],
                usage: None,
            }),
        }
    }

    fn usage_chunk(&self, usage: CompletionUsage) -> StreamItem {
        let mut item = self.chunk(Delta::default(), "", None);
        match &mut item {
            StreamItem::Chat(c) => {
                c.choices.clear();
                c.usage = Some(usage);
            }
            StreamItem::Text(c) => {
                c.choices.clear();
                c.usage = Some(usage);
            }
            StreamItem::Error(_) => {}
        }
        item
    }

    /// What a stream opens with: a chat stream announces the assistant role.
    pub fn start(&self) -> Option<StreamItem> {
        (self.endpoint == Endpoint::Chat).then(|| {
            let delta = Delta {
                role: Some("assistant".into()),
                content: Some(String::new()),
                tool_calls: None,
            };
            self.chunk(delta, "", None)
        })
    }

    /// The stream items for one event, and whether it was the last.
    pub fn stream(&mut self, ev: GenerateEvent) -> (Vec<StreamItem>, bool) {
        match ev {
            GenerateEvent::Delta { text, logprobs, .. }
                if text.is_empty() && (logprobs.is_empty() || !self.logprobs) =>
            {
                (Vec::new(), false)
            }
            GenerateEvent::Delta { text, logprobs, .. } => {
                let delta = Delta {
                    content: Some(text.clone()),
                    ..Delta::default()
                };
                let logprobs = self.logprobs_of(&logprobs);
                (vec![self.chunk_with(delta, &text, None, logprobs)], false)
            }
            GenerateEvent::Done {
                finish_reason,
                usage,
                ..
            } => {
                let mut out = vec![self.chunk(Delta::default(), "", Some(finish_reason))];
                if self.include_usage {
                    out.push(self.usage_chunk(usage.into()));
                }
                (out, true)
            }
            GenerateEvent::Error { code, message } => (
                vec![Self::error_item(&GenerationFailed { code, message })],
                true,
            ),
            // Only chat offers tools.
            GenerateEvent::ToolCall { .. } | GenerateEvent::ToolArguments { .. }
                if self.endpoint != Endpoint::Chat =>
            {
                (Vec::new(), false)
            }
            GenerateEvent::ToolCall {
                index,
                call_id,
                name,
                ..
            } => {
                let call = ToolCallDelta {
                    index,
                    id: Some(call_id),
                    kind: Some("function".into()),
                    function: FunctionDelta {
                        name: Some(name),
                        arguments: Some(String::new()),
                    },
                };
                (vec![self.tool_chunk(call)], false)
            }
            GenerateEvent::ToolArguments { index, delta, .. } => {
                let call = ToolCallDelta {
                    index,
                    id: None,
                    kind: None,
                    function: FunctionDelta {
                        name: None,
                        arguments: Some(delta),
                    },
                };
                (vec![self.tool_chunk(call)], false)
            }
        }
    }

    /// The item that reports a failed generation inside a stream.
    pub fn error_item(failed: &GenerationFailed) -> StreamItem {
        StreamItem::Error(ErrorBody {
            error: ErrorObject {
                message: format!("generation failed: {}", failed.message),
                kind: "server_error".into(),
                param: None,
                code: Some(failed.code.as_str().to_owned()),
            },
        })
    }

    /// Collects a non-streamed response: `Some` once the generation ended.
    pub fn collect(&mut self, ev: GenerateEvent) -> Option<Result<Completion, GenerationFailed>> {
        match ev {
            GenerateEvent::Delta { text, logprobs, .. } => {
                self.text.push_str(&text);
                if self.logprobs {
                    self.entries.extend(logprobs);
                }
                None
            }
            GenerateEvent::Done {
                finish_reason: r,
                usage,
                ..
            } => Some(Ok(self.whole(r, usage.into()))),
            GenerateEvent::Error { code, message } => Some(Err(GenerationFailed { code, message })),
            GenerateEvent::ToolCall { call_id, name, .. } => {
                self.calls.push(ToolCallOut {
                    id: call_id,
                    kind: "function".into(),
                    function: CalledFunction {
                        name,
                        arguments: String::new(),
                    },
                });
                None
            }
            GenerateEvent::ToolArguments { index, delta, .. } => {
                if let Some(call) = self.calls.get_mut(index as usize) {
                    call.function.arguments.push_str(&delta);
                }
                None
            }
        }
    }

    /// A chat chunk carrying one piece of a tool call.
    fn tool_chunk(&self, call: ToolCallDelta) -> StreamItem {
        let delta = Delta {
            tool_calls: Some(vec![call]),
            ..Delta::default()
        };
        self.chunk(delta, "", None)
    }

    fn whole(&mut self, reason: FinishReason, usage: CompletionUsage) -> Completion {
        let text = std::mem::take(&mut self.text);
        let finish_reason = finish_reason(reason).to_owned();
        let entries = std::mem::take(&mut self.entries);
        let (chat_logprobs, text_logprobs) = self.logprobs_of(&entries).split();
        match self.endpoint {
            Endpoint::Chat => Completion::Chat(ChatCompletion {
                id: self.id.clone(),
                object: "chat.completion".into(),
                created: self.created,
                model: self.model.clone(),
                system_fingerprint: None,
                choices: vec![ChatChoice {
                    index: 0,
                    message: AssistantMessage {
                        role: "assistant".into(),
                        content: (!text.is_empty() || self.calls.is_empty()).then_some(text),
                        refusal: None,
                        tool_calls: std::mem::take(&mut self.calls),
                    },
                    logprobs: chat_logprobs,
                    finish_reason,
                }],
                usage,
            }),
            Endpoint::Completions => Completion::Text(TextCompletion {
                id: self.id.clone(),
                object: "text_completion".into(),
                created: self.created,
                model: self.model.clone(),
                choices: vec![TextChoice {
                    index: 0,
                    text,
                    logprobs: text_logprobs,
                    finish_reason: Some(finish_reason),
                }],
                usage,
            }),
        }
    }
}

/// A choice's log probabilities, in its endpoint's shape.
enum Logprobs {
    None,
    Chat(ChatLogprobs),
    Text(CompletionLogprobs),
}

impl Logprobs {
    fn split(self) -> (Option<ChatLogprobs>, Option<CompletionLogprobs>) {
        match self {
            Self::None => (None, None),
            Self::Chat(c) => (Some(c), None),
            Self::Text(t) => (None, Some(t)),
        }
    }
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ModelCard {
    pub id: String,
    #[serde(default = "model_object")]
    pub object: String,
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub owned_by: String,
    /// Ready workers serving it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// Context window in tokens (prompt plus output) of one sequence, as
    /// vLLM reports it; through the router, the smallest of its workers'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<u32>,
}

fn model_object() -> String {
    "model".into()
}

impl ModelCard {
    /// A model card; `workers` is how many ready workers serve it.
    pub fn new(id: String, owned_by: &str, workers: usize) -> Self {
        Self {
            id,
            object: model_object(),
            created: 0,
            owned_by: owned_by.to_owned(),
            workers: Some(workers),
            max_model_len: None,
        }
    }

    /// The same card with its context window set.
    pub fn with_max_model_len(mut self, tokens: u32) -> Self {
        self.max_model_len = Some(tokens);
        self
    }
}

/// The body of `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelCard>,
}

impl ModelList {
    pub fn new(data: Vec<ModelCard>) -> Self {
        Self {
            object: "list".into(),
            data,
        }
    }
}
