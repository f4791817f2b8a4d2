//! [`Completer`]: turns one generation's events into an endpoint's stream
//! chunks or whole object, the same way for the worker and the router.
//! With `echo` (Completions) the prompt comes first: its text (for a
//! prompt sent as token ids, the text the worker spells for them), and
//! with `logprobs` its tokens, scored by the worker
//! ([`GenerateEvent::Prompt`]), before the generated ones, `text_offset`
//! counting from the prompt's start.

use super::logprobs::{ChatLogprobs, CompletionLogprobs, TextOffsets};
use super::response::{
    finish_reason, AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionChunk, ChunkChoice,
    Completion, CompletionUsage, Delta, ErrorBody, ErrorObject, StreamItem, TextChoice,
    TextCompletion, TextCompletionChunk,
};
use super::tools::{CalledFunction, FunctionDelta, ToolCallDelta, ToolCallOut};
use crate::logprobs::{PromptLogprobs, TokenLogprob};
use crate::{FailureCode, FinishReason, GenerateEvent};

/// A generation that failed: the worker's code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationFailed {
    pub code: FailureCode,
    pub message: String,
}

/// What Completions' `echo` puts first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Echo {
    /// The prompt's text, as sent.
    Text(String),
    /// A prompt sent as token ids: their text, spelled in the worker's
    /// `Prompt` event.
    Tokens,
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
    /// The prompt to echo, until it is sent (stream) or prepended (whole).
    echo: Option<Echo>,
    /// An echo of token ids: their text, once the worker spelled it.
    spelled: Option<String>,
    /// The echoed prompt's scores in `text_offset` terms (whole answers).
    prompt_logprobs: Option<CompletionLogprobs>,
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
            echo: None,
            spelled: None,
            prompt_logprobs: None,
        }
    }

    /// Completions' `echo`: the answer starts with `prompt`. With
    /// logprobs the prompt's chunk waits for the worker's scores of it.
    pub fn with_echo(mut self, echo: Option<Echo>) -> Self {
        self.echo = echo.filter(|_| self.endpoint == Endpoint::Completions);
        self
    }

    /// The echoed prompt's text: as sent, or spelled from `scores`.
    fn echo_text(echo: Echo, scores: Option<&PromptLogprobs>) -> String {
        match (echo, scores) {
            (Echo::Text(t), _) => t,
            (Echo::Tokens, Some(p)) => {
                let bytes: Vec<u8> = std::iter::once(&p.first.bytes)
                    .chain(p.rest.iter().map(|e| &e.chosen.bytes))
                    .flatten()
                    .copied()
                    .collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
            (Echo::Tokens, None) => String::new(),
        }
    }

    /// The chunk of the echoed prompt, once: with its scores when the worker
    /// sent them (`null` logprobs in their place otherwise).
    fn echo_chunk(&mut self, scores: Option<&PromptLogprobs>) -> Option<StreamItem> {
        let prompt = Self::echo_text(self.echo.take()?, scores);
        let logprobs = match scores.filter(|_| self.logprobs) {
            Some(p) => Logprobs::Text(self.offsets.convert_prompt(p)),
            None => {
                self.offsets.skip(&prompt);
                Logprobs::None
            }
        };
        Some(self.chunk_with(Delta::default(), &prompt, None, logprobs))
    }

    /// The echo waits for the worker's `Prompt` event (its scores, or the
    /// text of token ids).
    fn echo_waits(&self) -> bool {
        match &self.echo {
            None => false,
            Some(Echo::Tokens) => true,
            Some(Echo::Text(_)) => self.logprobs,
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

    /// What a stream opens with: a chat stream announces the assistant
    /// role; a Completions stream echoes its prompt (unless that waits for
    /// scores).
    pub fn start(&mut self) -> Option<StreamItem> {
        if self.endpoint == Endpoint::Completions {
            return if self.echo_waits() {
                None
            } else {
                self.echo_chunk(None)
            };
        }
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
        if let GenerateEvent::Prompt { logprobs } = &ev {
            return (self.echo_chunk(Some(logprobs)).into_iter().collect(), false);
        }
        // Scores that never came: the prompt goes first without them.
        let echo = self.echo_chunk(None);
        let (items, last) = self.stream_event(ev);
        (echo.into_iter().chain(items).collect(), last)
    }

    fn stream_event(&mut self, ev: GenerateEvent) -> (Vec<StreamItem>, bool) {
        match ev {
            GenerateEvent::Prompt { .. } => (Vec::new(), false),
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
            GenerateEvent::Prompt { logprobs } => {
                // Once: a retried request's second worker scores it again.
                if self.echo == Some(Echo::Tokens) && self.spelled.is_none() {
                    self.spelled = Some(Self::echo_text(Echo::Tokens, Some(&logprobs)));
                }
                if self.echo.is_some() && self.logprobs && self.prompt_logprobs.is_none() {
                    self.prompt_logprobs = Some(self.offsets.convert_prompt(&logprobs));
                }
                None
            }
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
        let generated = std::mem::take(&mut self.text);
        let echo = self.echo.take().map(|e| match e {
            Echo::Tokens => self.spelled.take().unwrap_or_default(),
            Echo::Text(t) => t,
        });
        let text = match echo {
            Some(prompt) => {
                if self.prompt_logprobs.is_none() {
                    // Unscored, it still comes first in `text_offset` terms.
                    self.offsets.skip(&prompt);
                }
                prompt + &generated
            }
            None => generated,
        };
        let finish_reason = finish_reason(reason).to_owned();
        let entries = std::mem::take(&mut self.entries);
        let (chat_logprobs, mut text_logprobs) = self.logprobs_of(&entries).split();
        if let (Some(prompt), Some(generated)) = (self.prompt_logprobs.take(), &mut text_logprobs) {
            *generated = prompt.followed_by(std::mem::take(generated));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logprobs::{TokenText, TopLogprob};
    use crate::{Timings, Usage};

    fn entry(token: &str, logprob: f32) -> TokenLogprob {
        TokenLogprob {
            chosen: TopLogprob {
                id: 7,
                token: token.into(),
                bytes: token.as_bytes().to_vec(),
                logprob,
            },
            top: Vec::new(),
        }
    }

    fn scores() -> GenerateEvent {
        GenerateEvent::Prompt {
            logprobs: PromptLogprobs {
                first: TokenText {
                    id: 1,
                    token: "Once".into(),
                    bytes: b"Once".to_vec(),
                },
                rest: vec![entry(" upon", -2.0)],
            },
        }
    }

    fn done() -> GenerateEvent {
        GenerateEvent::Done {
            finish_reason: FinishReason::Length,
            usage: Usage::default(),
            timings: Timings::default(),
        }
    }

    fn generated() -> GenerateEvent {
        GenerateEvent::Delta {
            text: " a".into(),
            token_ids: vec![3],
            logprobs: vec![entry(" a", -0.5)],
        }
    }

    fn completer(logprobs: bool) -> Completer {
        Completer::new(Endpoint::Completions, "c".into(), 0, "m".into(), false)
            .with_logprobs(logprobs)
            .with_echo(Some(Echo::Text("Once upon".into())))
    }

    fn text_choice(item: &StreamItem) -> &TextChoice {
        match item {
            StreamItem::Text(c) => &c.choices[0],
            other => panic!("not a text chunk: {other:?}"),
        }
    }

    #[test]
    fn a_whole_echo_puts_the_prompt_and_its_scores_first() {
        let mut c = completer(true);
        assert!(c.collect(scores()).is_none());
        // A retried request's second worker scores the prompt again: once only.
        assert!(c.collect(scores()).is_none());
        assert!(c.collect(generated()).is_none());
        let Some(Ok(Completion::Text(t))) = c.collect(done()) else {
            panic!("a whole text completion")
        };
        let choice = &t.choices[0];
        assert_eq!(choice.text, "Once upon a");
        let lp = choice.logprobs.as_ref().unwrap();
        assert_eq!(lp.tokens, ["Once", " upon", " a"]);
        assert_eq!(lp.token_logprobs, [None, Some(-2.0), Some(-0.5)]);
        assert!(lp.top_logprobs[0].is_none() && lp.top_logprobs[1].is_some());
        assert_eq!(lp.text_offset, [0, 4, 9]);
    }

    #[test]
    fn a_streamed_echo_waits_for_the_scores_then_leads() {
        let mut c = completer(true);
        assert!(c.start().is_none(), "the prompt waits for its scores");
        let (items, last) = c.stream(scores());
        assert!(!last);
        let first = text_choice(&items[0]);
        assert_eq!(first.text, "Once upon");
        assert_eq!(
            first.logprobs.as_ref().unwrap().token_logprobs,
            [None, Some(-2.0)]
        );
        let (items, _) = c.stream(generated());
        assert_eq!(items.len(), 1);
        assert_eq!(
            text_choice(&items[0])
                .logprobs
                .as_ref()
                .unwrap()
                .text_offset,
            [9]
        );
    }

    #[test]
    fn an_echo_without_scores_leads_at_once() {
        let mut c = completer(false);
        let first = c.start().expect("the prompt at once");
        assert_eq!(text_choice(&first).text, "Once upon");
        assert!(text_choice(&first).logprobs.is_none());
        let (items, _) = c.stream(generated());
        assert_eq!(text_choice(&items[0]).text, " a");
        // Scores that never came: the prompt still leads, without them.
        let mut c = completer(true);
        assert!(c.start().is_none());
        let (items, _) = c.stream(generated());
        assert_eq!(items.len(), 2);
        assert_eq!(text_choice(&items[0]).text, "Once upon");
        // Chat never echoes.
        let chat = Completer::new(Endpoint::Chat, "c".into(), 0, "m".into(), false)
            .with_echo(Some(Echo::Text("x".into())));
        assert!(chat.echo.is_none());
    }

    #[test]
    fn echoed_token_ids_are_spelled_by_the_worker() {
        let tokens = || {
            Completer::new(Endpoint::Completions, "c".into(), 0, "m".into(), false)
                .with_echo(Some(Echo::Tokens))
        };
        let mut c = tokens();
        assert!(c.start().is_none(), "the text comes with the Prompt event");
        let (items, _) = c.stream(scores());
        assert_eq!(text_choice(&items[0]).text, "Once upon");
        assert!(text_choice(&items[0]).logprobs.is_none(), "not asked for");
        let mut c = tokens();
        c.collect(scores());
        c.collect(generated());
        let Some(Ok(Completion::Text(t))) = c.collect(done()) else {
            panic!("a whole text completion")
        };
        assert_eq!(t.choices[0].text, "Once upon a");
    }
}
