//! A scriptable in-process fake [`Generator`]: no worker, no HTTP. It streams
//! fixed deltas (or echoes the last message) and records every request, and
//! keywords in the last message script failures and timing:
//!
//! - `REJECT`: refused before streaming (worker 400, `context_length_exceeded`);
//! - `BUSY`: refused before streaming (worker 503, retry after 2 s);
//! - `SLOW`: 200 deltas `t0 t1 …`, one every 20 ms;
//! - `FAIL`: two deltas, then an error event (`worker_crashed`);
//! - `HANG`: one delta, then nothing ever again;
//! - `LONG`: finishes with `length` instead of `stop`.
//!
//! Embeddings are [`crate::fake_embeddings`]'s, recorded too.
//!
//! When the request offers tools and forces a call (`tool_choice` required
//! or a named function), or its last message says `CALL`, the stream is one
//! call instead of text: [`CALL_ID`] to the named (or first) tool with the
//! arguments [`CALL_ARGUMENTS`] in two deltas, finishing with `tool_calls`.
//!
//! With `sampling.logprobs = Some(k)`, each delta carries one entry (see
//! [`fake_logprob`]): the delta's text as the token, log probability
//! `-0.5 × (i + 1)`, and `k` alternatives, the token itself first.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use spindle_proto::logprobs::{TokenLogprob, TopLogprob};
use spindle_proto::openai::{EmbeddingRequest, EmbeddingResponse, ErrorObject, ModelCard};
use spindle_proto::tools::ToolChoice;
use spindle_proto::{FinishReason, GenerateEvent, GenerateRequest, PromptInput, Timings, Usage};
use spindle_router::{GenerateError, Generator};

/// The deltas of a plain request by default: multi-byte text and an emoji, so
/// streams split characters the way real tokens do.
pub const DELTAS: [&str; 4] = ["Hel", "lo, ", "wörld", " 🌍!"];

/// The `call_id` of a scripted tool call.
pub const CALL_ID: &str = "call_fake1";
/// The arguments of a scripted tool call, in two deltas.
pub const CALL_ARGUMENTS: [&str; 2] = ["{\"city\": ", "\"Paris\"}"];

/// Pause between deltas of a `SLOW` request.
const SLOW_STEP: Duration = Duration::from_millis(20);

/// What a request without a failure keyword streams.
#[derive(Debug, Clone)]
pub enum Reply {
    /// These deltas.
    Deltas(Vec<String>),
    /// `echo:` then the last message's text.
    Echo,
}

/// Builds a [`FakeGenerator`].
#[derive(Debug, Clone)]
pub struct Builder {
    reply: Reply,
    model: String,
}

impl Builder {
    /// Stream `echo:<last message>` instead of the fixed deltas.
    pub fn echo(mut self) -> Self {
        self.reply = Reply::Echo;
        self
    }

    /// Stream these deltas (default [`DELTAS`]).
    pub fn deltas<S: Into<String>>(mut self, deltas: impl IntoIterator<Item = S>) -> Self {
        self.reply = Reply::Deltas(deltas.into_iter().map(Into::into).collect());
        self
    }

    /// The one model it lists (default `spindle`).
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = model.into();
        self
    }

    pub fn build(self) -> FakeGenerator {
        FakeGenerator {
            reply: self.reply,
            model: self.model,
            requests: Mutex::new(Vec::new()),
            embed_requests: Mutex::new(Vec::new()),
            dropped_early: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// See the module docs. Usage: 10 prompt tokens per message, of which every
/// message but the last counts as cached (a warm prefix); one token per delta.
pub struct FakeGenerator {
    reply: Reply,
    model: String,
    requests: Mutex<Vec<GenerateRequest>>,
    embed_requests: Mutex<Vec<EmbeddingRequest>>,
    dropped_early: Arc<AtomicUsize>,
}

impl Default for FakeGenerator {
    fn default() -> Self {
        Self::builder().build()
    }
}

impl FakeGenerator {
    pub fn builder() -> Builder {
        Builder {
            reply: Reply::Deltas(DELTAS.iter().map(|s| s.to_string()).collect()),
            model: "spindle".into(),
        }
    }

    /// Every request received, oldest first.
    pub fn requests(&self) -> Vec<GenerateRequest> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Every embeddings request received, oldest first.
    pub fn embed_requests(&self) -> Vec<EmbeddingRequest> {
        self.embed_requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Streams dropped before their last event (client gone, cancelled).
    pub fn dropped_early(&self) -> usize {
        self.dropped_early.load(Ordering::SeqCst)
    }
}

/// Counts a stream dropped before its final event.
struct DropFlag {
    dropped_early: Arc<AtomicUsize>,
    finished: bool,
}

impl Drop for DropFlag {
    fn drop(&mut self) {
        if !self.finished {
            self.dropped_early.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The stream's script, read from the last message.
struct Script {
    deltas: Vec<String>,
    /// The tool this stream calls, after its deltas.
    call: Option<String>,
    slow: bool,
    fail: bool,
    hang: bool,
    finish: FinishReason,
    usage: Usage,
    /// Alternatives per token, when log probabilities were asked for.
    logprobs: Option<u32>,
}

impl Generator for FakeGenerator {
    fn generate(
        &self,
        req: GenerateRequest,
    ) -> BoxFuture<'static, Result<BoxStream<'static, GenerateEvent>, GenerateError>> {
        if let Ok(mut r) = self.requests.lock() {
            r.push(req.clone());
        }
        let (last, n_msgs) = match &req.input {
            PromptInput::Messages(m) => (
                m.last().map(|m| m.content.clone()).unwrap_or_default(),
                m.len() as u32,
            ),
            PromptInput::Prompt(p) => (p.clone(), 1),
            PromptInput::Tokens(_) => (String::new(), 1),
        };
        if last.contains("REJECT") {
            let e = GenerateError::BadRequest(ErrorObject {
                message: "prompt is too long for the context".into(),
                kind: "invalid_request_error".into(),
                param: Some("messages".into()),
                code: Some("context_length_exceeded".into()),
            });
            return Box::pin(async move { Err(e) });
        }
        if last.contains("BUSY") {
            let e = GenerateError::Unavailable {
                message: "worker is full".into(),
                retry_after: 2,
            };
            return Box::pin(async move { Err(e) });
        }
        let slow = last.contains("SLOW");
        let out = &req.output;
        let call = match &out.tool_choice {
            _ if !out.tools_enabled() => None,
            ToolChoice::Function { name } => Some(name.clone()),
            ToolChoice::Required => out.tools.first().map(|t| t.name.clone()),
            _ if last.contains("CALL") => out.tools.first().map(|t| t.name.clone()),
            _ => None,
        };
        let deltas: Vec<String> = match &self.reply {
            _ if call.is_some() => Vec::new(),
            _ if slow => (0..200).map(|i| format!("t{i} ")).collect(),
            Reply::Deltas(d) => d.clone(),
            Reply::Echo => vec!["echo:".into(), last.clone()],
        };
        let script = Arc::new(Script {
            usage: Usage {
                prompt_tokens: 10 * n_msgs,
                cached_tokens: 10 * n_msgs.saturating_sub(1),
                completion_tokens: deltas.len() as u32 + 3 * u32::from(call.is_some()),
            },
            deltas,
            slow,
            fail: last.contains("FAIL"),
            hang: last.contains("HANG"),
            finish: if last.contains("LONG") {
                FinishReason::Length
            } else if call.is_some() {
                FinishReason::ToolCalls
            } else {
                FinishReason::Stop
            },
            call,
            logprobs: req.sampling.logprobs,
        });
        let flag = DropFlag {
            dropped_early: self.dropped_early.clone(),
            finished: false,
        };
        let stream = futures::stream::unfold((0usize, flag), move |(i, flag)| {
            let script = script.clone();
            async move { step(&script, i, flag).await }
        });
        Box::pin(async move { Ok(stream.boxed()) })
    }

    fn embed(
        &self,
        req: EmbeddingRequest,
    ) -> BoxFuture<'static, Result<EmbeddingResponse, GenerateError>> {
        if let Ok(mut r) = self.embed_requests.lock() {
            r.push(req.clone());
        }
        let result = crate::fake_embeddings::fake_embeddings(&req).map_err(|e| match e {
            crate::fake_embeddings::FakeRefusal::BadRequest(e) => GenerateError::BadRequest(e),
            crate::fake_embeddings::FakeRefusal::Busy => GenerateError::Unavailable {
                message: "worker is full".into(),
                retry_after: 2,
            },
        });
        Box::pin(async move { result })
    }

    fn models(&self) -> Vec<ModelCard> {
        vec![ModelCard::new(self.model.clone(), "spindle", 1)]
    }
}

/// The log probability entry of delta `i` (token id `i`, spelled `text`):
/// logprob `-0.5 × (i + 1)`; `k` alternatives, the token first, then
/// `alt1`, `alt2`, … (ids 1000 + j), each 1 lower than the one before.
pub fn fake_logprob(i: usize, text: &str, k: u32) -> TokenLogprob {
    let logprob = -0.5 * (i as f32 + 1.0);
    let chosen = TopLogprob {
        id: i as i32,
        token: text.to_owned(),
        bytes: text.as_bytes().to_vec(),
        logprob,
    };
    let top = (0..k)
        .map(|j| match j {
            0 => chosen.clone(),
            j => {
                let token = format!("alt{j}");
                TopLogprob {
                    id: 1000 + j as i32,
                    bytes: token.as_bytes().to_vec(),
                    token,
                    logprob: logprob - j as f32,
                }
            }
        })
        .collect();
    TokenLogprob { chosen, top }
}

/// Event `i` of a scripted stream and the state after it; `None` ends it.
async fn step(
    s: &Script,
    i: usize,
    mut flag: DropFlag,
) -> Option<(GenerateEvent, (usize, DropFlag))> {
    if flag.finished {
        return None;
    }
    if s.slow {
        tokio::time::sleep(SLOW_STEP).await;
    }
    if s.hang && i == 1 {
        futures::future::pending::<()>().await;
    }
    if s.fail && i == 2 {
        flag.finished = true;
        let ev = GenerateEvent::Error {
            code: spindle_proto::FailureCode::ServerError,
            message: "the worker went away".into(),
        };
        return Some((ev, (i, flag)));
    }
    if let Some(text) = s.deltas.get(i) {
        let ev = GenerateEvent::Delta {
            text: text.clone(),
            token_ids: vec![i as i32],
            logprobs: s
                .logprobs
                .map(|k| vec![fake_logprob(i, text, k)])
                .unwrap_or_default(),
        };
        return Some((ev, (i + 1, flag)));
    }
    if let Some(name) = &s.call {
        let raw = |t: &str| (t.to_owned(), vec![i as i32]);
        let ev = match i - s.deltas.len() {
            0 => {
                let (raw, token_ids) = raw("<tool_call>");
                Some(GenerateEvent::ToolCall {
                    index: 0,
                    call_id: CALL_ID.into(),
                    name: name.clone(),
                    raw,
                    token_ids,
                })
            }
            n @ (1 | 2) => {
                let delta = CALL_ARGUMENTS[n - 1].to_owned();
                let (raw, token_ids) = raw(&delta);
                Some(GenerateEvent::ToolArguments {
                    index: 0,
                    delta,
                    raw,
                    token_ids,
                })
            }
            _ => None,
        };
        if let Some(ev) = ev {
            return Some((ev, (i + 1, flag)));
        }
    }
    flag.finished = true;
    let ev = GenerateEvent::Done {
        finish_reason: s.finish,
        usage: s.usage,
        timings: Timings::default(),
    };
    Some((ev, (i, flag)))
}
