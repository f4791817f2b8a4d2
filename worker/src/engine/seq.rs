//! One request inside the engine ([`Seq`]): its tokens, sampler, text
//! stream and timings, from admission to its last event, and
//! [`sample_next`], which samples, streams and decides when it ends.
//! With tools offered, released text goes through the sequence's tool
//! parser, and complete calls become `ToolCall` + `ToolArguments` events.
//! A sequence that asked for log probabilities gets one entry per output
//! token, computed from the raw logits before sampling touches them, sent
//! with the token ids on the next `Delta` (a tool call's tokens' entries
//! are dropped with their text: calls carry none). One that asked for the
//! prompt's (`prompt_logprobs`) gets them from the logits of every prompt
//! position ([`score_prompt`]), sent in one `Prompt` event before any output.

use crate::grammar::Constraint;
use crate::logprobs::Logprobs;
use crate::metrics::WorkerMetrics;
use crate::model::Model;
use crate::sampler::Sampler;
use crate::text::{Release, TextStream};
use crate::tools::parser::{Piece, ToolParser};
use llama_cpp_2::token::LlamaToken;
use rand::Rng;
use spindle_proto::logprobs::{PromptLogprobs, TokenLogprob, TokenText};
use spindle_proto::{FinishReason, GenerateEvent, Timings, Usage};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

use super::Job;

/// One request inside the engine, from submission to its last event.
pub(super) struct Seq {
    pub(super) id: String,
    pub(super) events: UnboundedSender<GenerateEvent>,
    /// Prompt plus generated tokens. KV holds `tokens[..n_past]`.
    pub(super) tokens: Vec<LlamaToken>,
    pub(super) n_past: usize,
    pub(super) prompt_len: usize,
    /// llama.cpp sequence id while admitted.
    pub(super) seq_id: Option<i32>,
    /// Its prefix-cache isolation salt (see `GenerateRequest::cache_salt`).
    pub(super) cache_salt: Option<String>,
    /// The LoRA adapter set it decodes under.
    pub(super) lora: crate::lora::LoraSet,
    pub(super) sampler: Sampler,
    /// Grammar the output must follow.
    pub(super) constraint: Option<Constraint>,
    /// Tool-call parser (tools offered), and the calls sent so far.
    pub(super) tools: Option<ToolParser>,
    pub(super) calls_sent: u32,
    pub(super) text: TextStream,
    pub(super) max_tokens: u32,
    pub(super) generated: u32,
    pub(super) cached_tokens: u32,
    /// Token ids sampled since the last delta.
    pub(super) unsent_ids: Vec<i32>,
    /// Log probabilities, when asked for: the computation and the entries
    /// of `unsent_ids`.
    pub(super) logprobs: Option<Logprobs>,
    pub(super) unsent_logprobs: Vec<TokenLogprob>,
    /// Scoring the prompt, until its `Prompt` event is sent: the
    /// computation and the entries of tokens 1.. so far.
    pub(super) prompt_scores: Option<(Logprobs, Vec<TokenLogprob>)>,
    /// Batch index of the logits of the first token this batch holds, when
    /// it scores prompt tokens.
    pub(super) prompt_logits_from: Option<i32>,
    /// Tokens put in the current batch, and the batch index of its logits.
    pub(super) in_batch: usize,
    pub(super) logits_at: Option<i32>,
    pub(super) arrived: Instant,
    pub(super) first_step: Option<Instant>,
    pub(super) first_token: Option<Instant>,
}

impl Seq {
    pub(super) fn new(
        job: Job,
        events: UnboundedSender<GenerateEvent>,
        ctx_size: u32,
        eog: &[i32],
    ) -> Self {
        let prompt_len = job.tokens.len();
        let room = (ctx_size as usize).saturating_sub(prompt_len) as u32;
        let max_tokens = job.sampling.max_tokens.map_or(room, |m| m.min(room));
        let text = TextStream::new(job.sampling.stop.clone());
        let logprobs = job.sampling.logprobs.map(Logprobs::new);
        let prompt_scores = job
            .sampling
            .prompt_logprobs
            .map(|k| (Logprobs::new(k), Vec::new()));
        Self {
            id: job.id,
            events,
            tokens: job.tokens,
            n_past: 0,
            prompt_len,
            seq_id: None,
            cache_salt: job.cache_salt,
            lora: job.lora,
            sampler: if job.sampling.ignore_eos {
                Sampler::new(job.sampling).with_banned(eog.to_vec())
            } else {
                Sampler::new(job.sampling)
            },
            constraint: job.constraint,
            // Calls in a failover's continuation were sent by the first worker.
            calls_sent: job.tools.as_ref().map_or(0, |p| p.calls() as u32),
            tools: job.tools,
            text,
            max_tokens,
            generated: 0,
            cached_tokens: 0,
            unsent_ids: Vec::new(),
            logprobs,
            unsent_logprobs: Vec::new(),
            prompt_scores,
            prompt_logits_from: None,
            in_batch: 0,
            logits_at: None,
            arrived: Instant::now(),
            first_step: None,
            first_token: None,
        }
    }

    pub(super) fn pending(&self) -> usize {
        self.tokens.len() - self.n_past
    }

    pub(super) fn is_decoding(&self) -> bool {
        self.n_past >= self.prompt_len
    }

    /// Its prompt still needs the logits of every position.
    pub(super) fn scores_prompt(&self) -> bool {
        self.prompt_scores.is_some()
    }

    /// Stream released text (through the tool parser when tools are offered).
    pub(super) fn send_text(&mut self, text: String) -> bool {
        match self.tools.as_mut() {
            Some(parser) => {
                let pieces = parser.push(&text);
                self.send_pieces(pieces)
            }
            None => self.send_delta(text),
        }
    }

    fn send_pieces(&mut self, pieces: Vec<Piece>) -> bool {
        for piece in pieces {
            let sent = match piece {
                Piece::Text(t) => self.send_delta(t),
                Piece::Call {
                    name,
                    arguments,
                    raw,
                } => {
                    let index = self.calls_sent;
                    self.calls_sent += 1;
                    let token_ids = std::mem::take(&mut self.unsent_ids);
                    self.unsent_logprobs.clear();
                    let call = GenerateEvent::ToolCall {
                        index,
                        call_id: call_id(),
                        name,
                        raw,
                        token_ids,
                    };
                    let arguments = GenerateEvent::ToolArguments {
                        index,
                        delta: arguments,
                        raw: String::new(),
                        token_ids: Vec::new(),
                    };
                    self.events.send(call).is_ok() && self.events.send(arguments).is_ok()
                }
            };
            if !sent {
                return false;
            }
        }
        true
    }

    /// Send `text` with the token ids sampled since the last event.
    fn send_delta(&mut self, text: String) -> bool {
        if text.is_empty() && self.unsent_ids.is_empty() {
            return true;
        }
        let ids = std::mem::take(&mut self.unsent_ids);
        let logprobs = std::mem::take(&mut self.unsent_logprobs);
        self.events
            .send(GenerateEvent::Delta {
                text,
                token_ids: ids,
                logprobs,
            })
            .is_ok()
    }

    pub(super) fn finish(&mut self, reason: FinishReason, metrics: &WorkerMetrics) {
        let tail = self.text.finish();
        if reason != FinishReason::Cancelled {
            match self.tools.as_mut() {
                Some(parser) => {
                    let mut pieces = parser.push(&tail);
                    pieces.extend(parser.finish());
                    self.send_pieces(pieces);
                    // Ids of text the parser held to the end.
                    self.send_delta(String::new());
                }
                None => {
                    self.send_delta(tail);
                }
            }
        }
        // A turn that made calls and ended on its own ends for them.
        let reason = match reason {
            FinishReason::Stop if self.calls_sent > 0 => FinishReason::ToolCalls,
            r => r,
        };
        let now = Instant::now();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let timings = Timings {
            queue_ms: ms(self.first_step.unwrap_or(now) - self.arrived),
            ttft_ms: self.first_token.map_or(0.0, |t| ms(t - self.arrived)),
            decode_ms: self.first_token.map_or(0.0, |t| ms(now - t)),
        };
        let _ = self.events.send(GenerateEvent::Done {
            finish_reason: reason,
            usage: Usage {
                prompt_tokens: self.prompt_len as u32,
                cached_tokens: self.cached_tokens,
                completion_tokens: self.generated,
            },
            timings,
        });
        metrics.finished(reason);
        metrics.prompt_tokens.increment(self.prompt_len as u64);
        metrics
            .cached_tokens
            .increment(u64::from(self.cached_tokens));
        if self.first_token.is_some() {
            metrics.ttft.record(timings.ttft_ms / 1000.0);
        }
    }
}

/// Score the prompt tokens that follow the positions `s` decoded in this
/// batch (`logits(i)`: batch index `i`'s raw logits, the first at
/// `s.prompt_logits_from`), and once the whole prompt is scored send it.
/// Returns false when the client is gone.
pub(super) fn score_prompt<'a>(
    model: &Model,
    s: &mut Seq,
    logits: impl Fn(i32) -> &'a [f32],
) -> bool {
    let (Some(from), Some((lp, rest))) = (s.prompt_logits_from.take(), s.prompt_scores.as_mut())
    else {
        return true;
    };
    for j in 0..s.in_batch {
        let pos = s.n_past + j;
        // Position `pos` predicts token `pos + 1`; each is scored once (a
        // sequence decoded again after a failure does not repeat them).
        if pos + 1 >= s.prompt_len || pos != rest.len() {
            continue;
        }
        let next = s.tokens[pos + 1].0;
        rest.push(lp.entry(logits(from + j as i32), next, |id| {
            model.spell(LlamaToken(id))
        }));
    }
    if s.n_past + s.in_batch < s.prompt_len {
        return true;
    }
    let Some((_, rest)) = s.prompt_scores.take() else {
        return true;
    };
    let Some(&first) = s.tokens.first() else {
        return true;
    };
    let (token, bytes) = model.spell(first);
    let first = TokenText {
        id: first.0,
        token,
        bytes,
    };
    let logprobs = PromptLogprobs { first, rest };
    s.events.send(GenerateEvent::Prompt { logprobs }).is_ok()
}

/// Sample one token for `s`, stream what it releases, and say whether `s` is done.
pub(super) fn sample_next(
    model: &Model,
    s: &mut Seq,
    logits: &[f32],
    now: Instant,
) -> Option<FinishReason> {
    let token = match s.constraint.as_mut() {
        Some(c) => match c.sample(&mut s.sampler, logits) {
            Some(t) => t,
            // The grammar allows nothing more (it is complete).
            None => return Some(FinishReason::Stop),
        },
        None => s.sampler.sample(logits),
    };
    s.sampler.accept(token);
    let token = LlamaToken(token);
    s.first_token.get_or_insert(now);
    if model.is_eog(token) {
        // The end token is not part of the output: usage counts what was sent.
        return Some(FinishReason::Stop);
    }
    s.generated += 1;
    s.tokens.push(token);
    s.unsent_ids.push(token.0);
    if let Some(lp) = s.logprobs.as_mut() {
        // `logits` are still the model's raw ones: sampling works on copies.
        let entry = lp.entry(logits, token.0, |id| model.spell(LlamaToken(id)));
        s.unsent_logprobs.push(entry);
    }
    let piece = model.piece(token);
    let release = s.text.push(&piece);
    let (text, stopped) = match release {
        Release::Text(t) => (t, false),
        Release::Stopped(t) => (t, true),
    };
    if !text.is_empty() && !s.send_text(text) {
        return Some(FinishReason::Cancelled);
    }
    // A stop string, the one call allowed without parallel calls, or a
    // constrained output that is complete.
    let complete = s
        .constraint
        .as_mut()
        .is_some_and(|c| c.is_complete(&piece, model.llama.vocab().eos()));
    if stopped || complete || s.tools.as_ref().is_some_and(ToolParser::is_done) {
        return Some(FinishReason::Stop);
    }
    if s.generated >= s.max_tokens {
        return Some(FinishReason::Length);
    }
    None
}

/// A new call id: `call_` and 24 random letters and digits.
fn call_id() -> String {
    let suffix: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("call_{suffix}")
}
