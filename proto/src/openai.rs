//! OpenAI Chat Completions and (legacy) Completions wire types.
//!
//! Both the worker (standing alone) and the router serve these endpoints; the
//! request types convert to a [`GenerateRequest`] in one place so the two
//! accept exactly the same inputs.

use crate::{ChatMessage, FinishReason, GenerateRequest, PromptInput, SamplingParams, Usage};
use serde::{Deserialize, Serialize};

/// A request field that failed validation: (parameter, message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidParam {
    pub param: &'static str,
    pub message: String,
}

fn invalid(param: &'static str, message: impl Into<String>) -> InvalidParam {
    InvalidParam {
        param,
        message: message.into(),
    }
}

/// `stop`: one string or a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// Message content: a string or a list of typed parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields shared by both endpoints (OpenAI's plus llama.cpp's extras).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SamplingFields {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub min_p: Option<f32>,
    pub seed: Option<u64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub stop: Option<Stop>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub n: Option<u32>,
    /// llama.cpp's extension: generate exactly `max_tokens`.
    pub ignore_eos: Option<bool>,
}

impl SamplingFields {
    /// Validate ranges and build [`SamplingParams`].
    pub fn to_params(&self) -> Result<SamplingParams, InvalidParam> {
        let d = SamplingParams::default();
        let temperature = self.temperature.unwrap_or(d.temperature);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(invalid(
                "temperature",
                "temperature must be between 0 and 2",
            ));
        }
        let top_p = self.top_p.unwrap_or(d.top_p);
        if top_p.is_nan() || top_p <= 0.0 || top_p > 1.0 {
            return Err(invalid("top_p", "top_p must be in (0, 1]"));
        }
        let min_p = self.min_p.unwrap_or(d.min_p);
        if !(0.0..=1.0).contains(&min_p) {
            return Err(invalid("min_p", "min_p must be between 0 and 1"));
        }
        for (param, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if v.is_some_and(|v| !(-2.0..=2.0).contains(&v)) {
                return Err(invalid(param, format!("{param} must be between -2 and 2")));
            }
        }
        let repetition_penalty = self.repetition_penalty.unwrap_or(d.repetition_penalty);
        if repetition_penalty.is_nan() || repetition_penalty <= 0.0 {
            return Err(invalid(
                "repetition_penalty",
                "repetition_penalty must be positive",
            ));
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(invalid("n", "only n=1 is supported"));
        }
        let max_tokens = self.max_completion_tokens.or(self.max_tokens);
        if max_tokens == Some(0) {
            return Err(invalid("max_tokens", "max_tokens must be at least 1"));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) if v.len() > 4 => {
                return Err(invalid("stop", "at most 4 stop sequences"))
            }
            Some(Stop::Many(v)) => v.clone(),
        };
        Ok(SamplingParams {
            temperature,
            top_p,
            top_k: self.top_k.unwrap_or(d.top_k),
            min_p,
            seed: self.seed,
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            repetition_penalty,
            stop,
            max_tokens,
            ignore_eos: self.ignore_eos.unwrap_or(false),
        })
    }
}

/// `POST /v1/chat/completions` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<RequestMessage>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

impl ChatCompletionRequest {
    pub fn to_generate(&self, request_id: String) -> Result<GenerateRequest, InvalidParam> {
        if self.messages.is_empty() {
            return Err(invalid("messages", "messages must not be empty"));
        }
        let mut messages = Vec::with_capacity(self.messages.len());
        for m in &self.messages {
            let role = match m.role.as_str() {
                "developer" => "system",
                r @ ("system" | "user" | "assistant" | "tool") => r,
                other => {
                    return Err(invalid("messages", format!("unknown role {other:?}")));
                }
            };
            let content = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for p in parts {
                        match (p.kind.as_str(), &p.text) {
                            ("text" | "input_text" | "output_text", Some(t)) => text.push_str(t),
                            (kind, _) => {
                                return Err(invalid(
                                    "messages",
                                    format!("content part type {kind:?} is not supported"),
                                ))
                            }
                        }
                    }
                    text
                }
            };
            messages.push(ChatMessage {
                role: role.to_owned(),
                content,
            });
        }
        Ok(GenerateRequest {
            request_id: Some(request_id),
            model: self.model.clone().filter(|m| !m.is_empty()),
            input: PromptInput::Messages(messages),
            continuation: None,
            sampling: self.sampling.to_params()?,
            cache_key: self.user.clone(),
        })
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

/// `POST /v1/completions` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub prompt: String,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

impl CompletionRequest {
    pub fn to_generate(&self, request_id: String) -> Result<GenerateRequest, InvalidParam> {
        let mut sampling = self.sampling.to_params()?;
        // The legacy endpoint defaults to 16 tokens.
        sampling.max_tokens.get_or_insert(16);
        Ok(GenerateRequest {
            request_id: Some(request_id),
            model: self.model.clone().filter(|m| !m.is_empty()),
            input: PromptInput::Prompt(self.prompt.clone()),
            continuation: None,
            sampling,
            cache_key: None,
        })
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: u32,
}

/// OpenAI `usage` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletionUsage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    pub prompt_tokens_details: PromptTokensDetails,
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
        }
    }
}

/// The OpenAI `finish_reason` string (a cancelled request ended early: "stop").
pub fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Length => "length",
        FinishReason::Stop | FinishReason::Cancelled => "stop",
    }
}

/// The OpenAI error body: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorObject,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorObject {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelCard {
    pub id: String,
    #[serde(default = "model_object")]
    pub object: String,
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub owned_by: String,
    /// Ready workers serving it (the router's listing; a worker omits it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
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
        }
    }
}

/// The body of `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_request_converts() {
        let r: ChatCompletionRequest = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"developer","content":"be terse"},{"role":"user","content":[{"type":"text","text":"hi"}]}],"temperature":0,"max_tokens":5,"stop":"\n"}"#,
        )
        .unwrap();
        let g = r.to_generate("id1".into()).unwrap();
        let PromptInput::Messages(m) = &g.input else {
            panic!("messages expected")
        };
        assert_eq!(m[0].role, "system");
        assert_eq!(m[1].content, "hi");
        assert_eq!(g.sampling.max_tokens, Some(5));
        assert_eq!(g.sampling.stop, vec!["\n".to_string()]);
    }

    #[test]
    fn bad_values_name_their_param() {
        let r: ChatCompletionRequest =
            serde_json::from_str(r#"{"messages":[{"role":"user","content":"x"}],"temperature":7}"#)
                .unwrap();
        assert_eq!(r.to_generate("i".into()).unwrap_err().param, "temperature");
        let r: ChatCompletionRequest =
            serde_json::from_str(r#"{"messages":[{"role":"wizard","content":"x"}]}"#).unwrap();
        assert_eq!(r.to_generate("i".into()).unwrap_err().param, "messages");
        let r: ChatCompletionRequest = serde_json::from_str(r#"{"messages":[]}"#).unwrap();
        assert!(r.to_generate("i".into()).is_err());
    }
}
