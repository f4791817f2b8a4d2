//! Log probabilities on the wire: what a worker reports for each generated
//! token when a request asks for them ([`crate::SamplingParams::logprobs`]).
//!
//! Values are the model's own distribution at that position: log-softmax of
//! the raw logits, before temperature, penalties, top-k/top-p/min-p or a
//! grammar (as OpenAI reports them), so they do not depend on how the
//! token was drawn.

use serde::{Deserialize, Serialize};

/// Most alternatives a request may ask for per token (OpenAI's limit for
/// Chat Completions and Responses).
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// The value reported for a probability too small for an `f32` log
/// (OpenAI's convention; JSON has no `-inf`).
pub const LOGPROB_FLOOR: f32 = -9999.0;

/// One token with its log probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    /// The token id.
    pub id: i32,
    /// The token's text ([`token_text`] of its bytes).
    pub token: String,
    /// The bytes the token prints (empty for control tokens).
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// A generated token's log probability and the `k` most likely tokens at
/// its position (most likely first; `k` as the request asked, 0 to 20).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    #[serde(flatten)]
    pub chosen: TopLogprob,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top: Vec<TopLogprob>,
}

/// A token without a log probability: the prompt's first, which nothing
/// precedes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenText {
    pub id: i32,
    /// [`token_text`] of `bytes`.
    pub token: String,
    pub bytes: Vec<u8>,
}

/// A prompt's log probabilities (see
/// [`crate::SamplingParams::prompt_logprobs`]): its first token, then one
/// entry per later token, each that token given every token before it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptLogprobs {
    pub first: TokenText,
    pub rest: Vec<TokenLogprob>,
}

/// A token's text as clients see it: its bytes when they are UTF-8, else
/// `bytes:` and each byte as `\xNN` (a token holding part of a character;
/// OpenAI's spelling), so the text never hides what `bytes` holds.
pub fn token_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => {
            let mut s = String::from("bytes:");
            for b in bytes {
                s.push_str(&format!("\\x{b:02x}"));
            }
            s
        }
    }
}

/// A log probability fit for JSON: finite, at least [`LOGPROB_FLOOR`].
pub fn finite(logprob: f32) -> f32 {
    if logprob.is_nan() {
        LOGPROB_FLOOR
    } else {
        logprob.max(LOGPROB_FLOOR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_characters_are_spelled_as_bytes() {
        assert_eq!(token_text(b" the"), " the");
        assert_eq!(token_text("é".as_bytes()), "é");
        assert_eq!(token_text(&[0xe4, 0xb8]), "bytes:\\xe4\\xb8");
        assert_eq!(token_text(&[]), "");
    }

    #[test]
    fn log_probabilities_are_finite() {
        assert_eq!(finite(f32::NEG_INFINITY), LOGPROB_FLOOR);
        assert_eq!(finite(f32::NAN), LOGPROB_FLOOR);
        assert_eq!(finite(-1.5), -1.5);
    }

    #[test]
    fn entries_round_trip_and_omit_an_empty_top_list() {
        let e = TokenLogprob {
            chosen: TopLogprob {
                id: 7,
                token: "a".into(),
                bytes: vec![b'a'],
                logprob: -0.25,
            },
            top: Vec::new(),
        };
        let line = serde_json::to_string(&e).unwrap();
        assert_eq!(line, r#"{"id":7,"token":"a","bytes":[97],"logprob":-0.25}"#);
        assert_eq!(serde_json::from_str::<TokenLogprob>(&line).unwrap(), e);
    }
}
