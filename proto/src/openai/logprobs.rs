//! Log probabilities in Chat Completions (`choices[].logprobs.content`) and
//! Completions (`choices[].logprobs` with `tokens`, `token_logprobs`,
//! `top_logprobs`, `text_offset`), built from the worker's per-token
//! entries (the model's raw distribution, see [`crate::logprobs`]).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

use crate::logprobs::{PromptLogprobs, TokenLogprob, TopLogprob};

/// Most alternatives the Completions endpoint gives per token (`logprobs`
/// is 0 to 5 there, as OpenAI caps it).
pub const MAX_COMPLETION_LOGPROBS: u32 = 5;

/// One of the most likely tokens at a place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TopTokenLogprob {
    pub token: String,
    pub logprob: f32,
    /// The UTF-8 bytes the token prints.
    pub bytes: Option<Vec<u8>>,
}

/// A generated token's log probability and the most likely alternatives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Option<Vec<u8>>,
    /// Most likely first; `top_logprobs` entries.
    pub top_logprobs: Vec<TopTokenLogprob>,
}

/// `choices[].logprobs` of a chat completion (or of one chunk).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
    /// Always `null`: no model here refuses with a refusal message.
    pub refusal: Option<Vec<ChatTokenLogprob>>,
}

fn top(t: &TopLogprob) -> TopTokenLogprob {
    TopTokenLogprob {
        token: t.token.clone(),
        logprob: t.logprob,
        bytes: Some(t.bytes.clone()),
    }
}

impl ChatLogprobs {
    /// The entries of one generation event.
    pub fn from_entries(entries: &[TokenLogprob]) -> Self {
        Self {
            content: entries
                .iter()
                .map(|e| ChatTokenLogprob {
                    token: e.chosen.token.clone(),
                    logprob: e.chosen.logprob,
                    bytes: Some(e.chosen.bytes.clone()),
                    top_logprobs: e.top.iter().map(top).collect(),
                })
                .collect(),
            refusal: None,
        }
    }
}

/// `choices[].logprobs` of a (legacy) text completion, or of one chunk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    /// Per token, its most likely alternatives as `{token: logprob}` (an
    /// alternative spelled like another keeps the higher value).
    pub top_logprobs: Vec<Option<BTreeMap<String, f32>>>,
    /// Where each token starts in the completion's text, in characters.
    pub text_offset: Vec<u32>,
}

/// Turns entries into [`CompletionLogprobs`], keeping the character offset
/// across the events of one completion.
#[derive(Debug, Default)]
pub struct TextOffsets {
    /// Characters of the text so far.
    chars: u32,
    /// Bytes of a character a token split, waiting for the rest.
    partial: Vec<u8>,
}

impl CompletionLogprobs {
    /// These tokens, then `next`'s.
    pub fn followed_by(mut self, next: CompletionLogprobs) -> Self {
        self.tokens.extend(next.tokens);
        self.token_logprobs.extend(next.token_logprobs);
        self.top_logprobs.extend(next.top_logprobs);
        self.text_offset.extend(next.text_offset);
        self
    }
}

impl TextOffsets {
    /// An echoed prompt's tokens: the first has `null`s (nothing precedes
    /// it), the rest their scores.
    pub fn convert_prompt(&mut self, prompt: &PromptLogprobs) -> CompletionLogprobs {
        let first = CompletionLogprobs {
            tokens: vec![prompt.first.token.clone()],
            token_logprobs: vec![None],
            top_logprobs: vec![None],
            text_offset: vec![self.chars],
        };
        self.advance(&prompt.first.bytes);
        first.followed_by(self.convert(&prompt.rest))
    }

    /// Text that comes first without tokens of its own (an unscored echo).
    pub fn skip(&mut self, text: &str) {
        self.advance(text.as_bytes());
    }

    pub fn convert(&mut self, entries: &[TokenLogprob]) -> CompletionLogprobs {
        let mut out = CompletionLogprobs::default();
        for e in entries {
            out.tokens.push(e.chosen.token.clone());
            out.token_logprobs.push(Some(e.chosen.logprob));
            let mut alternatives = BTreeMap::new();
            for t in &e.top {
                alternatives.entry(t.token.clone()).or_insert(t.logprob);
            }
            out.top_logprobs.push(Some(alternatives));
            out.text_offset.push(self.chars);
            self.advance(&e.chosen.bytes);
        }
        out
    }

    /// Counts the whole characters `bytes` completes.
    fn advance(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.partial) {
            Ok(s) => s.len(),
            Err(e) if e.error_len().is_some() => {
                // Not UTF-8 at all: count each byte as what the text shows.
                let n = self.partial.len();
                self.chars += n as u32;
                self.partial.clear();
                return;
            }
            Err(e) => e.valid_up_to(),
        };
        let done: Vec<u8> = self.partial.drain(..valid).collect();
        self.chars += String::from_utf8_lossy(&done).chars().count() as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(token: &str, bytes: &[u8], logprob: f32) -> TokenLogprob {
        let t = TopLogprob {
            id: 1,
            token: token.into(),
            bytes: bytes.to_vec(),
            logprob,
        };
        TokenLogprob {
            chosen: t.clone(),
            top: vec![
                t,
                TopLogprob {
                    id: 2,
                    token: "x".into(),
                    bytes: b"x".to_vec(),
                    logprob: logprob - 1.0,
                },
            ],
        }
    }

    #[test]
    fn chat_entries_carry_bytes_and_alternatives() {
        let c = ChatLogprobs::from_entries(&[entry("hi", b"hi", -0.5)]);
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["content"][0]["token"], "hi");
        assert_eq!(v["content"][0]["bytes"], serde_json::json!([104, 105]));
        assert_eq!(v["content"][0]["top_logprobs"][1]["logprob"], -1.5);
        assert!(v["refusal"].is_null());
    }

    #[test]
    fn text_offsets_count_characters_across_events_and_split_characters() {
        let mut offsets = TextOffsets::default();
        let a = offsets.convert(&[entry("Hé", "Hé".as_bytes(), -0.5)]);
        assert_eq!(a.text_offset, [0]);
        assert_eq!(a.top_logprobs[0].as_ref().unwrap()["x"], -1.5);
        // "🌍" split over two tokens, then " ok".
        let b = offsets.convert(&[
            entry("bytes:\\xf0\\x9f", &[0xf0, 0x9f], -1.0),
            entry("bytes:\\x8c\\x8d", &[0x8c, 0x8d], -1.0),
            entry(" ok", b" ok", -1.0),
        ]);
        assert_eq!(b.text_offset, [2, 2, 3]);
        assert_eq!(b.token_logprobs, [Some(-1.0); 3]);
    }
}
