//! Wire types between the Spindle router and its workers.
//!
//! The router calls `POST /v1/generate` on a worker with a [`GenerateRequest`]
//! and reads back chunked NDJSON: one [`GenerateEvent`] per line — `delta`
//! lines while tokens flow, then exactly one `done` or `error` line. Keeping
//! these types in their own crate lets the router build without llama.cpp.

pub mod auth;
pub mod logprobs;
pub mod lora;
pub mod openai;
pub mod schema;
pub mod tools;

use serde::{Deserialize, Serialize};

/// One chat message as the worker's template sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    pub content: String,
    /// Calls this assistant turn made (rendered through the template's
    /// `tool_calls`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<tools::ToolCall>,
    /// For a `tool` message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A plain text message.
    pub fn text(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

/// Sampling settings for one request. Every field has a neutral default, so
/// `{}` means greedy-free default sampling with no limits beyond the context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Nucleus sampling mass in (0, 1]; 1 disables it.
    pub top_p: f32,
    /// Keep only the k most likely tokens; 0 disables it.
    pub top_k: u32,
    /// Drop tokens whose probability is below `min_p` × the top one; 0 disables it.
    pub min_p: f32,
    /// Same seed, same prompt, same settings: same output.
    pub seed: Option<u64>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// Multiplicative penalty (llama.cpp / CTRL style); 1 disables it.
    pub repetition_penalty: f32,
    /// Generation stops before any of these strings; the stop text is never sent.
    pub stop: Vec<String>,
    /// Upper bound on generated tokens; `None` means until the context is full.
    pub max_tokens: Option<u32>,
    /// Never end on an end-of-generation token (benchmarks: fixed output length).
    pub ignore_eos: bool,
    /// Report each generated token's log probability and this many most
    /// likely alternatives (0 to [`logprobs::MAX_TOP_LOGPROBS`]); `None`
    /// asks for none and costs nothing. Left out of the line when `None`,
    /// so older workers still take requests that do not ask.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<u32>,
    /// Score the prompt too: each prompt token's log probability given the
    /// tokens before it, with this many alternatives (Completions' `echo`
    /// with `logprobs`). The worker then reads every prompt position (no
    /// prefix-cache reuse for it) and sends one [`GenerateEvent::Prompt`]
    /// before any output. With it, `max_tokens: 0` scores without generating.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_logprobs: Option<u32>,
}

/// Most stop sequences a request may give (OpenAI's limit).
pub const MAX_STOP: usize = 4;

/// Longest stop sequence, in bytes. The engine thread holds back and checks
/// each sequence's text against its stop strings on every token, so their
/// size must be bounded or one request slows every other.
pub const MAX_STOP_BYTES: usize = 512;

impl SamplingParams {
    /// Why `stop` is refused, if it is: every entry point (the OpenAI
    /// endpoints and the worker's own `/v1/generate`) applies this.
    pub fn stop_error(&self) -> Option<String> {
        if self.stop.len() > MAX_STOP {
            Some(format!("at most {MAX_STOP} stop sequences are allowed"))
        } else if self.stop.iter().any(String::is_empty) {
            Some("stop sequences must not be empty".into())
        } else if self.stop.iter().any(|s| s.len() > MAX_STOP_BYTES) {
            Some(format!(
                "stop sequences must be at most {MAX_STOP_BYTES} bytes long"
            ))
        } else {
            None
        }
    }

    /// Why `logprobs` is refused, if it is (more alternatives than
    /// [`logprobs::MAX_TOP_LOGPROBS`]).
    pub fn logprobs_error(&self) -> Option<String> {
        let max = logprobs::MAX_TOP_LOGPROBS;
        [self.logprobs, self.prompt_logprobs]
            .into_iter()
            .flatten()
            .find(|&k| k > max)
            .map(|k| {
                format!("at most {max} top log probabilities per token may be asked for, got {k}")
            })
    }
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            stop: Vec::new(),
            max_tokens: None,
            ignore_eos: false,
            logprobs: None,
            prompt_logprobs: None,
        }
    }
}

/// What to generate from: exactly one of chat messages, a raw prompt, or token ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptInput {
    /// Rendered with the model's chat template; the assistant turn is opened.
    Messages(Vec<ChatMessage>),
    /// Used as is; special-token text in it is treated as plain text.
    Prompt(String),
    /// Already tokenized; used as is.
    Tokens(Vec<i32>),
}

/// The body of `POST /v1/generate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// Caller's id; `POST /v1/generate/{id}/cancel` cancels it. Generated when absent.
    #[serde(default)]
    pub request_id: Option<String>,
    /// The served model name the caller asked for. A worker that does not
    /// serve it answers 404; `None` means "whatever this worker serves".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(flatten)]
    pub input: PromptInput,
    /// Text generated earlier for this same request (failover migration): it is
    /// appended to the rendered prompt as the start of the assistant turn and is
    /// not sent back again.
    #[serde(default)]
    pub continuation: Option<String>,
    #[serde(default)]
    pub sampling: SamplingParams,
    /// The conversation identity this request is routed by, set once by the
    /// router's API layer (`resp:…`, `conv:…`, `user:…`, or a prompt hash
    /// `h:…`) so that every turn lands where its prefix is cached. Workers
    /// only log it.
    #[serde(default)]
    pub cache_key: Option<String>,
    /// Prefix-cache isolation (like vLLM's `cache_salt`): a prompt reuses
    /// only cached KV computed for a request with the same salt, so one
    /// tenant cannot learn another's prompts from `cached_tokens` timing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_salt: Option<String>,
    /// Tools the model may call and the shape its text must have.
    #[serde(default)]
    pub output: tools::OutputSpec,
    /// What the worker does with chat messages that do not fit its context
    /// (absent from older routers: `disabled`).
    #[serde(default, skip_serializing_if = "Truncation::is_disabled")]
    pub truncation: Truncation,
    /// LoRA adapters to run under (validated by `lora::validate`; empty: the
    /// base model). Absent from older routers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lora: Vec<lora::LoraSelection>,
}

impl GenerateRequest {
    /// A raw prompt with these sampling settings, everything else default.
    pub fn from_prompt(prompt: impl Into<String>, sampling: SamplingParams) -> Self {
        Self {
            request_id: None,
            model: None,
            input: PromptInput::Prompt(prompt.into()),
            continuation: None,
            sampling,
            cache_key: None,
            cache_salt: None,
            lora: Vec::new(),
            output: tools::OutputSpec::default(),
            truncation: Truncation::default(),
        }
    }
}

/// How a prompt larger than the context is handled (the Responses API's
/// `truncation`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    /// Refuse it with `context_length_exceeded`.
    #[default]
    Disabled,
    /// Drop the oldest messages (never system messages, never the newest
    /// user turn) until the prompt and the output room fit.
    Auto,
}

impl Truncation {
    pub fn is_disabled(&self) -> bool {
        *self == Self::Disabled
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End-of-generation token or a stop string.
    Stop,
    /// `max_tokens` reached, or the context is full.
    Length,
    /// Cancelled by the caller or because the client went away.
    Cancelled,
    /// The model called one or more tools (see [`GenerateEvent::ToolCall`]).
    ToolCalls,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Cancelled => "cancelled",
            Self::ToolCalls => "tool_calls",
        }
    }
}

/// Token accounting for one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    /// Prompt tokens whose KV came from the prefix cache (not recomputed).
    pub cached_tokens: u32,
    pub completion_tokens: u32,
}

/// Wall-clock timings for one request, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// From arrival to the first decode step that included it.
    pub queue_ms: f64,
    /// From arrival to the first generated token.
    pub ttft_ms: f64,
    /// From the first to the last generated token.
    pub decode_ms: f64,
}

/// One NDJSON line of the `/v1/generate` response stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GenerateEvent {
    /// The prompt scored, when `sampling.prompt_logprobs` asked: sent once,
    /// before any output.
    Prompt { logprobs: logprobs::PromptLogprobs },
    /// Newly generated text (always whole UTF-8 characters) and the token
    /// ids behind it. With `sampling.logprobs`, `logprobs` holds one entry
    /// per id, in order (each with its own token text: `text` may hold the
    /// bytes of several tokens, or fewer when a stop string cut them).
    Delta {
        text: String,
        token_ids: Vec<i32>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        logprobs: Vec<logprobs::TokenLogprob>,
    },
    /// The model started tool call number `index` (0-based, in output
    /// order). `raw` is the generated text behind this event, which a
    /// failover migration replays as `continuation`.
    ToolCall {
        index: u32,
        call_id: String,
        name: String,
        #[serde(default)]
        raw: String,
        #[serde(default)]
        token_ids: Vec<i32>,
    },
    /// More of the arguments (JSON text) of tool call `index`.
    ToolArguments {
        index: u32,
        delta: String,
        #[serde(default)]
        raw: String,
        #[serde(default)]
        token_ids: Vec<i32>,
    },
    /// Last line of a successful stream.
    Done {
        finish_reason: FinishReason,
        usage: Usage,
        timings: Timings,
    },
    /// Last line of a failed stream.
    Error { code: FailureCode, message: String },
}

impl GenerateEvent {
    /// A text delta without log probabilities.
    pub fn delta(text: impl Into<String>, token_ids: Vec<i32>) -> Self {
        Self::Delta {
            text: text.into(),
            token_ids,
            logprobs: Vec::new(),
        }
    }

    /// True for the stream's last line (`done` or `error`).
    pub fn is_last(&self) -> bool {
        matches!(self, Self::Done { .. } | Self::Error { .. })
    }

    /// The generated text behind a mid-stream event, exactly as the model
    /// wrote it, and its token ids: what a failover migration continues from.
    pub fn generated(&self) -> Option<(&str, &[i32])> {
        match self {
            Self::Delta {
                text, token_ids, ..
            } => Some((text, token_ids)),
            Self::ToolCall { raw, token_ids, .. } | Self::ToolArguments { raw, token_ids, .. } => {
                Some((raw, token_ids))
            }
            Self::Prompt { .. } | Self::Done { .. } | Self::Error { .. } => None,
        }
    }
}

/// Why a generation failed: the `code` of [`GenerateEvent::Error`], and the
/// `error.code` clients see. The worker sends `ServerError`; the router's
/// HTTP client reports a broken worker with the `Worker*` codes, which are
/// the ones its balancer retries or migrates on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCode {
    /// The engine failed.
    ServerError,
    /// The worker's stream broke or ended before its last event.
    WorkerStreamError,
    /// The worker sent nothing for too long.
    WorkerTimeout,
    /// The worker sent a line that is not a generation event.
    BadWorkerResponse,
    /// A worker failed and no other could take the request over.
    WorkerUnavailable,
    /// The worker cancelled the generation itself.
    GenerationCancelled,
    /// The router stopped mid-generation (its drain deadline passed).
    ServerShutdown,
    /// The generation ran past the router's request deadline.
    RequestTimeout,
    /// A code from a newer worker this build does not know.
    #[serde(other)]
    Unknown,
}

impl std::fmt::Display for FailureCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FailureCode {
    /// True when the worker failed rather than the request: another worker
    /// may take the request over.
    pub fn is_worker_failure(self) -> bool {
        matches!(
            self,
            Self::WorkerStreamError | Self::WorkerTimeout | Self::BadWorkerResponse
        )
    }

    /// The code as clients see it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ServerError | Self::Unknown => "server_error",
            Self::WorkerStreamError => "worker_stream_error",
            Self::WorkerTimeout => "worker_timeout",
            Self::BadWorkerResponse => "bad_worker_response",
            Self::WorkerUnavailable => "worker_unavailable",
            Self::GenerationCancelled => "generation_cancelled",
            Self::ServerShutdown => "server_shutdown",
            Self::RequestTimeout => "request_timeout",
        }
    }
}

/// The body of `GET /load`: what a router needs to balance work.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Sequences being prefilled or decoded.
    pub running: u32,
    /// Requests admitted but waiting for a slot.
    pub waiting: u32,
    /// Largest number of concurrent sequences.
    pub max_seqs: u32,
    /// KV cells in use (running plus retained prefix-cache sequences).
    pub kv_used: u32,
    /// KV cells in all.
    pub kv_total: u32,
    /// Generated tokens per second over the last few seconds.
    pub tokens_per_second: f64,
    /// The slowest engine step of the last few seconds, in seconds: a
    /// router sizes its stream deadlines by it. (0 from older workers.)
    #[serde(default)]
    pub step_seconds_max: f64,
    /// True once SIGTERM arrived: finish in-flight work, take no more.
    pub draining: bool,
}

/// A worker writes an empty line into a `/v1/generate` stream that has been
/// silent this long (queued, or prefilling a long prompt) while its engine
/// is making progress, so a silent stream means a hung worker (or a stuck
/// engine) and a router can put a deadline on the gap.
pub const STREAM_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_sequences_are_bounded_in_count_and_size() {
        let with = |stop: Vec<String>| SamplingParams {
            stop,
            ..SamplingParams::default()
        };
        assert_eq!(with(vec!["a".into(); MAX_STOP]).stop_error(), None);
        assert_eq!(with(vec!["y".repeat(MAX_STOP_BYTES)]).stop_error(), None);
        assert!(with(vec!["a".into(); MAX_STOP + 1]).stop_error().is_some());
        assert!(with(vec![String::new()]).stop_error().is_some());
        let long = with(vec!["y".repeat(MAX_STOP_BYTES + 1)]).stop_error();
        assert!(long.is_some_and(|m| m.contains("bytes")));
    }

    #[test]
    fn failure_codes_are_typed_on_the_wire() {
        let ev = GenerateEvent::Error {
            code: FailureCode::WorkerTimeout,
            message: "m".into(),
        };
        let line = serde_json::to_string(&ev).unwrap();
        assert!(line.contains(r#""code":"worker_timeout""#), "{line}");
        assert_eq!(serde_json::from_str::<GenerateEvent>(&line).unwrap(), ev);
        // A newer worker's code still parses, as a server error.
        let newer: GenerateEvent =
            serde_json::from_str(r#"{"type":"error","code":"gpu_on_fire","message":"m"}"#).unwrap();
        assert!(matches!(
            newer,
            GenerateEvent::Error {
                code: FailureCode::Unknown,
                ..
            }
        ));
        assert_eq!(FailureCode::Unknown.as_str(), "server_error");
        assert!(FailureCode::WorkerStreamError.is_worker_failure());
        assert!(!FailureCode::ServerError.is_worker_failure());
    }

    #[test]
    fn request_accepts_each_input_kind() {
        let r: GenerateRequest = serde_json::from_str(
            r#"{"messages":[{"role":"user","content":"hi"}],"sampling":{"temperature":0}}"#,
        )
        .unwrap();
        assert!(matches!(r.input, PromptInput::Messages(ref m) if m.len() == 1));
        assert_eq!(r.sampling.temperature, 0.0);
        assert_eq!(r.sampling.top_p, 1.0);
        let r: GenerateRequest = serde_json::from_str(r#"{"prompt":"Once"}"#).unwrap();
        assert_eq!(r.input, PromptInput::Prompt("Once".into()));
        let r: GenerateRequest = serde_json::from_str(r#"{"tokens":[1,2,3]}"#).unwrap();
        assert_eq!(r.input, PromptInput::Tokens(vec![1, 2, 3]));
        assert_eq!(r.truncation, Truncation::Disabled);
    }

    #[test]
    fn truncation_is_sent_only_when_auto() {
        let mut r: GenerateRequest = serde_json::from_str(r#"{"prompt":"x"}"#).unwrap();
        let line = serde_json::to_string(&r).unwrap();
        assert!(!line.contains("truncation"), "{line}");
        r.truncation = Truncation::Auto;
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.contains(r#""truncation":"auto""#), "{line}");
        assert_eq!(serde_json::from_str::<GenerateRequest>(&line).unwrap(), r);
    }

    #[test]
    fn logprobs_are_sent_only_when_asked_and_bounded() {
        let mut r: GenerateRequest = serde_json::from_str(r#"{"prompt":"x"}"#).unwrap();
        let line = serde_json::to_string(&r).unwrap();
        assert!(!line.contains("logprobs"), "{line}");
        r.sampling.logprobs = Some(logprobs::MAX_TOP_LOGPROBS);
        assert_eq!(r.sampling.logprobs_error(), None);
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<GenerateRequest>(&line).unwrap(), r);
        r.sampling.logprobs = Some(logprobs::MAX_TOP_LOGPROBS + 1);
        assert!(r.sampling.logprobs_error().is_some());
    }

    #[test]
    fn request_rejects_unknown_sampling_fields() {
        let r = serde_json::from_str::<GenerateRequest>(
            r#"{"prompt":"x","sampling":{"temprature":0}}"#,
        );
        assert!(r.is_err());
    }

    #[test]
    fn events_are_tagged_lines() {
        let e = GenerateEvent::delta("hé", vec![5]);
        let line = serde_json::to_string(&e).unwrap();
        assert_eq!(line, r#"{"type":"delta","text":"hé","token_ids":[5]}"#);
        let back: GenerateEvent = serde_json::from_str(&line).unwrap();
        assert_eq!(back, e);
        // With log probabilities they ride along; a line without any (an
        // older worker's) still parses.
        let entry = logprobs::TokenLogprob {
            chosen: logprobs::TopLogprob {
                id: 5,
                token: "hé".into(),
                bytes: "hé".as_bytes().to_vec(),
                logprob: -0.5,
            },
            top: Vec::new(),
        };
        let with = GenerateEvent::Delta {
            text: "hé".into(),
            token_ids: vec![5],
            logprobs: vec![entry],
        };
        let line = serde_json::to_string(&with).unwrap();
        assert!(line.contains(r#""logprobs":[{"id":5"#), "{line}");
        assert_eq!(serde_json::from_str::<GenerateEvent>(&line).unwrap(), with);
        let done: GenerateEvent = serde_json::from_str(
            r#"{"type":"done","finish_reason":"length","usage":{"prompt_tokens":3,"cached_tokens":1,"completion_tokens":2},"timings":{"queue_ms":0.1,"ttft_ms":2.0,"decode_ms":3.0}}"#,
        )
        .unwrap();
        assert!(matches!(
            done,
            GenerateEvent::Done {
                finish_reason: FinishReason::Length,
                ..
            }
        ));
    }
}
