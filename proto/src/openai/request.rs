//! Chat Completions and Completions request bodies, and their one
//! conversion to a [`GenerateRequest`].
//!
//! Message rendering: `developer` → `system`; an assistant message's
//! `tool_calls` and a `tool` (or legacy `function`) message's
//! `tool_call_id` go to the worker as they are, where the model's chat
//! template renders them (or a fallback in the same syntax as its calls).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use serde_json::Value;

use super::completer::Echo;
use super::sampling::SamplingFields;
use super::tools::{output_format, output_spec, ChatTool};
use super::{invalid, InvalidParam};
use crate::lora::LoraSelection;
use crate::tools::OutputSpec;
use crate::{ChatMessage, GenerateRequest, PromptInput};

/// Message content: a string or a list of typed parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

/// A function call an assistant message made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ToolCall {
    #[serde(default)]
    pub id: Option<String>,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FunctionCall {
    pub name: String,
    #[serde(default)]
    pub arguments: String,
}

/// One input message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RequestMessage {
    #[schema(pattern = "^(system|developer|user|assistant|tool|function)$")]
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCall>>,
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// `POST /v1/chat/completions` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    #[schema(min_items = 1)]
    pub messages: Vec<RequestMessage>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub user: Option<String>,
    /// Functions the model may call.
    #[serde(default)]
    pub tools: Option<Vec<ChatTool>>,
    /// `none`, `auto`, `required` or `{"type": "function", "function": {"name"}}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// LoRA adapters to run under (extension; see `crate::lora`).
    #[serde(default)]
    pub lora: Vec<LoraSelection>,
    /// Return each output token's log probability (`choices[].logprobs`).
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// Alternatives per token (0 to 20); needs `logprobs: true`.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 20)]
    pub top_logprobs: Option<u32>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

/// `prompt`: a string or a list of token ids (what evaluation harnesses
/// send), or a list holding exactly one of either.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Prompt {
    One(String),
    Many(Vec<String>),
    Tokens(Vec<i32>),
    TokenLists(Vec<Vec<i32>>),
}

/// `POST /v1/completions` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub prompt: Prompt,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub user: Option<String>,
    /// LoRA adapters to run under (extension; see `crate::lora`).
    #[serde(default)]
    pub lora: Vec<LoraSelection>,
    /// Return each output token's log probability and this many most
    /// likely alternatives (0 to 5) in `choices[].logprobs`.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 5)]
    pub logprobs: Option<u32>,
    /// Prepend the prompt to the completion; with `logprobs`, the prompt's
    /// tokens come first in `choices[].logprobs` too, each scored given the
    /// tokens before it (the first has `null`). `max_tokens: 0` is allowed
    /// with it: the prompt scored, nothing generated.
    #[serde(default)]
    pub echo: Option<bool>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

/// The validated `lora` field (see `crate::lora::validate`).
pub fn validate_lora(list: &[LoraSelection]) -> Result<Vec<LoraSelection>, InvalidParam> {
    crate::lora::validate(list).map_err(|e| invalid(e.param(), e.to_string()))
}

/// The legacy endpoint's default length (OpenAI's).
pub const COMPLETIONS_DEFAULT_MAX_TOKENS: u32 = 16;

/// The text of a message's content; only text parts are accepted.
fn content_text(content: Option<&Content>, at: &str) -> Result<String, InvalidParam> {
    match content {
        None => Ok(String::new()),
        Some(Content::Text(t)) => Ok(t.clone()),
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                match (p.kind.as_str(), &p.text) {
                    ("text" | "input_text" | "output_text", Some(t)) => text.push_str(t),
                    ("text" | "input_text" | "output_text", None) => {
                        let param = format!("{at}.content[{j}].text");
                        return Err(invalid(&param, format!("'{param}' must be a string")));
                    }
                    (kind, _) => {
                        return Err(invalid(
                            format!("{at}.content[{j}].type"),
                            format!("content part type '{kind}' is not supported by this model"),
                        ))
                    }
                }
            }
            Ok(text)
        }
    }
}

/// One request message as the template sees it.
fn render(m: &RequestMessage, at: &str) -> Result<ChatMessage, InvalidParam> {
    let content = content_text(m.content.as_ref(), at)?;
    let mut msg = ChatMessage::text("", content);
    msg.role = match m.role.as_str() {
        "system" | "developer" => "system",
        "user" => "user",
        "assistant" => {
            msg.tool_calls = m
                .tool_calls
                .iter()
                .flatten()
                .map(|call| crate::tools::ToolCall {
                    call_id: call.id.clone().unwrap_or_default(),
                    name: call.function.name.clone(),
                    arguments: call.function.arguments.clone(),
                })
                .collect();
            "assistant"
        }
        "tool" | "function" => {
            // `function` is the legacy role, which named no call.
            msg.tool_call_id = match (m.role.as_str(), &m.tool_call_id) {
                (_, Some(id)) => Some(id.clone()),
                ("function", None) => Some(String::new()),
                _ => {
                    return Err(invalid(
                        format!("{at}.tool_call_id"),
                        "a 'tool' message needs 'tool_call_id'".to_owned(),
                    ))
                }
            };
            "tool"
        }
        other => {
            return Err(invalid(
                format!("{at}.role"),
                format!("invalid role '{other}'"),
            ))
        }
    }
    .to_owned();
    Ok(msg)
}

impl ChatCompletionRequest {
    /// Validates the request and renders its messages.
    pub fn to_generate(&self, request_id: String) -> Result<GenerateRequest, InvalidParam> {
        if self.messages.is_empty() {
            return Err(invalid("messages", "'messages' must not be empty"));
        }
        let mut sampling = self.sampling.to_params(None)?;
        sampling.logprobs = self.logprobs_asked()?;
        let messages = self
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| render(m, &format!("messages[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let output = output_spec(
            self.tools.as_deref(),
            self.tool_choice.as_ref(),
            self.parallel_tool_calls,
            self.sampling.response_format.as_ref(),
        )?;
        Ok(GenerateRequest {
            request_id: Some(request_id),
            model: self.model.clone().filter(|m| !m.is_empty()),
            input: PromptInput::Messages(messages),
            continuation: None,
            sampling,
            cache_key: None,
            cache_salt: None,
            output,
            truncation: Default::default(),
            lora: validate_lora(&self.lora)?,
        })
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }

    /// The alternatives per token when `logprobs` is on, validated as
    /// OpenAI does: `top_logprobs` 0 to 20, and only with `logprobs: true`.
    pub fn logprobs_asked(&self) -> Result<Option<u32>, InvalidParam> {
        let max = crate::logprobs::MAX_TOP_LOGPROBS;
        match (self.logprobs.unwrap_or(false), self.top_logprobs) {
            (_, Some(n)) if n > max => Err(invalid(
                "top_logprobs",
                format!("'top_logprobs' must be between 0 and {max}, got {n}"),
            )),
            (false, Some(_)) => Err(invalid(
                "top_logprobs",
                "'top_logprobs' needs 'logprobs' set to true",
            )),
            (true, n) => Ok(Some(n.unwrap_or(0))),
            (false, None) => Ok(None),
        }
    }
}

impl CompletionRequest {
    /// Validates the request; the length defaults to 16 tokens as OpenAI's does.
    pub fn to_generate(&self, request_id: String) -> Result<GenerateRequest, InvalidParam> {
        let input = match &self.prompt {
            Prompt::One(p) => PromptInput::Prompt(p.clone()),
            Prompt::Many(v) if v.len() == 1 => PromptInput::Prompt(v[0].clone()),
            Prompt::Tokens(t) => PromptInput::Tokens(t.clone()),
            Prompt::TokenLists(v) if v.len() == 1 => PromptInput::Tokens(v[0].clone()),
            Prompt::Many(_) | Prompt::TokenLists(_) => {
                return Err(invalid(
                    "prompt",
                    "'prompt' must be a string or a list of token ids (or a list with exactly one of either)",
                ))
            }
        };
        let empty = match &input {
            PromptInput::Prompt(p) => p.is_empty(),
            PromptInput::Tokens(t) => t.is_empty(),
            PromptInput::Messages(_) => false,
        };
        if empty {
            return Err(invalid("prompt", "'prompt' must not be empty"));
        }
        let echo = self.echo == Some(true);
        let mut sampling = self
            .sampling
            .to_params_with(Some(COMPLETIONS_DEFAULT_MAX_TOKENS), echo)?;
        sampling.logprobs = self.logprobs_asked()?;
        sampling.prompt_logprobs = match (&input, echo) {
            (_, false) => None,
            // Token ids are echoed as the text the worker spells for them,
            // which comes with the prompt's scores.
            (PromptInput::Tokens(_), true) => Some(sampling.logprobs.unwrap_or(0)),
            (_, true) => sampling.logprobs,
        };
        Ok(GenerateRequest {
            request_id: Some(request_id),
            model: self.model.clone().filter(|m| !m.is_empty()),
            input,
            continuation: None,
            sampling,
            cache_key: None,
            cache_salt: None,
            output: OutputSpec {
                format: output_format(self.sampling.response_format.as_ref())?,
                ..OutputSpec::default()
            },
            truncation: Default::default(),
            lora: validate_lora(&self.lora)?,
        })
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }

    /// The alternatives per token when `logprobs` is given (0 to 5).
    pub fn logprobs_asked(&self) -> Result<Option<u32>, InvalidParam> {
        let max = super::logprobs::MAX_COMPLETION_LOGPROBS;
        match self.logprobs {
            Some(n) if n > max => Err(invalid(
                "logprobs",
                format!("'logprobs' must be between 0 and {max}, got {n}"),
            )),
            n => Ok(n),
        }
    }

    /// What the completion starts with: the prompt, with `echo`.
    pub fn echoed(&self) -> Option<Echo> {
        if self.echo != Some(true) {
            return None;
        }
        Some(match &self.prompt {
            Prompt::One(p) => Echo::Text(p.clone()),
            Prompt::Many(v) => Echo::Text(v.first()?.clone()),
            Prompt::Tokens(_) | Prompt::TokenLists(_) => Echo::Tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_request_converts() {
        let r: ChatCompletionRequest = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"developer","content":"be terse"},{"role":"user","content":[{"type":"text","text":"hi"}]}],"temperature":0,"max_tokens":5,"stop":"\n","top_k":3,"ignore_eos":true}"#,
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
        assert_eq!(g.sampling.top_k, 3);
        assert!(g.sampling.ignore_eos);
    }

    #[test]
    fn tool_calls_and_results_reach_the_template_typed() {
        let r: ChatCompletionRequest = serde_json::from_str(
            r#"{"messages":[{"role":"user","content":"weather?"},
                {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"get","arguments":"{\"city\":\"Oslo\"}"}}]},
                {"role":"tool","tool_call_id":"c1","content":"cold"}]}"#,
        )
        .unwrap();
        let g = r.to_generate("i".into()).unwrap();
        let PromptInput::Messages(m) = &g.input else {
            panic!("messages expected")
        };
        let call = &m[1].tool_calls[0];
        assert_eq!(
            (m[1].role.as_str(), m[1].content.as_str()),
            ("assistant", "")
        );
        assert_eq!((call.call_id.as_str(), call.name.as_str()), ("c1", "get"));
        assert_eq!(call.arguments, r#"{"city":"Oslo"}"#);
        assert_eq!(
            (m[2].role.as_str(), m[2].content.as_str()),
            ("tool", "cold")
        );
        assert_eq!(m[2].tool_call_id.as_deref(), Some("c1"));
    }

    #[test]
    fn bad_values_name_their_param() {
        let param = |body: &str| {
            let r: ChatCompletionRequest = serde_json::from_str(body).unwrap();
            r.to_generate("i".into()).unwrap_err().param
        };
        let p = |s: &str| Some(s.to_owned());
        assert_eq!(
            param(r#"{"messages":[{"role":"user","content":"x"}],"temperature":7}"#),
            p("temperature")
        );
        assert_eq!(
            param(r#"{"messages":[{"role":"wizard","content":"x"}]}"#),
            p("messages[0].role")
        );
        assert_eq!(
            param(r#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#),
            p("messages[0].content[0].type")
        );
        assert_eq!(param(r#"{"messages":[]}"#), p("messages"));
        assert_eq!(
            param(r#"{"messages":[{"role":"user","content":"x"}],"stop":["a","b","c","d","e"]}"#),
            p("stop")
        );
    }

    #[test]
    fn logprobs_are_validated_like_openai() {
        let chat = |body: &str| {
            let r: ChatCompletionRequest = serde_json::from_str(body).unwrap();
            r.to_generate("i".into()).map(|g| g.sampling.logprobs)
        };
        let m = r#""messages":[{"role":"user","content":"x"}]"#;
        assert_eq!(chat(&format!("{{{m}}}")), Ok(None));
        assert_eq!(chat(&format!(r#"{{{m},"logprobs":true}}"#)), Ok(Some(0)));
        assert_eq!(
            chat(&format!(r#"{{{m},"logprobs":true,"top_logprobs":20}}"#)),
            Ok(Some(20))
        );
        for bad in [
            r#""logprobs":true,"top_logprobs":21"#,
            r#""top_logprobs":2"#,
            r#""logprobs":false,"top_logprobs":0"#,
        ] {
            let e = chat(&format!("{{{m},{bad}}}")).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("top_logprobs"), "{bad}");
        }
        let text = |body: &str| {
            let r: CompletionRequest = serde_json::from_str(body).unwrap();
            r.to_generate("i".into()).map(|g| g.sampling.logprobs)
        };
        assert_eq!(text(r#"{"prompt":"x","logprobs":5}"#), Ok(Some(5)));
        assert_eq!(text(r#"{"prompt":"x","echo":true}"#), Ok(None));
        let e = text(r#"{"prompt":"x","logprobs":6}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("logprobs"));
    }

    #[test]
    fn echo_scores_the_prompt_and_allows_zero_tokens() {
        let generate = |body: &str| {
            let r: CompletionRequest = serde_json::from_str(body).unwrap();
            r.to_generate("i".into()).map(|g| g.sampling)
        };
        let s = generate(r#"{"prompt":"x","logprobs":2,"echo":true,"max_tokens":0}"#).unwrap();
        assert_eq!((s.logprobs, s.prompt_logprobs), (Some(2), Some(2)));
        assert_eq!(s.max_tokens, Some(0));
        // Without echo the prompt is not scored, and 0 tokens is no request.
        let s = generate(r#"{"prompt":"x","logprobs":2}"#).unwrap();
        assert_eq!(s.prompt_logprobs, None);
        let e = generate(r#"{"prompt":"x","max_tokens":0}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let s = generate(r#"{"prompt":"x","echo":true}"#).unwrap();
        assert_eq!(s.prompt_logprobs, None);
        let r: CompletionRequest =
            serde_json::from_str(r#"{"prompt":["Once"],"echo":true}"#).unwrap();
        assert_eq!(r.echoed(), Some(Echo::Text("Once".into())));
    }

    #[test]
    fn prompts_may_be_token_ids() {
        let parse = |body: &str| {
            let r: CompletionRequest = serde_json::from_str(body).unwrap();
            (r.to_generate("i".into()), r.echoed())
        };
        for body in [r#"{"prompt":[1,2,3]}"#, r#"{"prompt":[[1,2,3]]}"#] {
            let (g, echo) = parse(body);
            assert_eq!(g.unwrap().input, PromptInput::Tokens(vec![1, 2, 3]));
            assert_eq!(echo, None);
        }
        // Echoed token ids need the worker's spelling: it scores the prompt.
        let (g, echo) = parse(r#"{"prompt":[[1,2]],"echo":true,"max_tokens":0}"#);
        assert_eq!(g.unwrap().sampling.prompt_logprobs, Some(0));
        assert_eq!(echo, Some(Echo::Tokens));
        for bad in [
            r#"{"prompt":[]}"#,
            r#"{"prompt":[[]]}"#,
            r#"{"prompt":[[1],[2]]}"#,
            r#"{"prompt":["a","b"]}"#,
        ] {
            let (g, _) = parse(bad);
            assert_eq!(g.unwrap_err().param.as_deref(), Some("prompt"), "{bad}");
        }
    }

    #[test]
    fn completions_default_to_16_tokens() {
        let r: CompletionRequest = serde_json::from_str(r#"{"prompt":["Once"]}"#).unwrap();
        assert_eq!(
            r.to_generate("i".into()).unwrap().sampling.max_tokens,
            Some(16)
        );
        let r: CompletionRequest = serde_json::from_str(r#"{"prompt":["a","b"]}"#).unwrap();
        assert!(r.to_generate("i".into()).is_err());
    }
}
