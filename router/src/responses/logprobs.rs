//! The Responses API's log probabilities (`LogProb`, `TopLogProb` of the
//! Open Responses schema), made from the worker's per-token entries.
//!
//! A response carries them only when `include` holds
//! `message.output_text.logprobs` (then `top_logprobs`, 0 to 20, sets the
//! alternatives per token): in each `output_text` part and on each
//! `response.output_text.delta` (the tokens behind that delta) and
//! `.done`. Otherwise they stay `[]`, as before.

use serde::{Deserialize, Serialize};
use spindle_proto::logprobs::{TokenLogprob, TopLogprob};
use utoipa::ToSchema;

/// One token's log probability and the most likely tokens at its place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogProb {
    pub token: String,
    pub logprob: f64,
    /// The UTF-8 bytes the token prints.
    pub bytes: Vec<u8>,
    /// Most likely first.
    pub top_logprobs: Vec<TopLogProb>,
}

/// One of the most likely tokens at a place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TopLogProb {
    pub token: String,
    pub logprob: f64,
    pub bytes: Vec<u8>,
}

impl From<&TopLogprob> for TopLogProb {
    fn from(t: &TopLogprob) -> Self {
        Self {
            token: t.token.clone(),
            logprob: widen(t.logprob),
            bytes: t.bytes.clone(),
        }
    }
}

impl From<&TokenLogprob> for LogProb {
    fn from(e: &TokenLogprob) -> Self {
        Self {
            token: e.chosen.token.clone(),
            logprob: widen(e.chosen.logprob),
            bytes: e.chosen.bytes.clone(),
            top_logprobs: e.top.iter().map(TopLogProb::from).collect(),
        }
    }
}

/// An `f32` as the `f64` with the same shortest decimal spelling, so an
/// event's bytes and the item built from `serde_json::Value` (which widens
/// an `f32` to its exact binary value) show the same number.
fn widen(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

/// The entries of one generation event.
pub fn convert(entries: &[TokenLogprob]) -> Vec<LogProb> {
    entries.iter().map(LogProb::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_keep_token_bytes_and_alternatives_in_order() {
        let t = |id, token: &str, logprob| TopLogprob {
            id,
            token: token.into(),
            bytes: token.as_bytes().to_vec(),
            logprob,
        };
        let e = TokenLogprob {
            chosen: t(2, "é", -0.5),
            top: vec![t(2, "é", -0.5), t(3, "e", -1.5)],
        };
        let lp = convert(&[e]);
        let v = serde_json::to_value(&lp).unwrap();
        assert_eq!(v[0]["token"], "é");
        assert_eq!(v[0]["bytes"], serde_json::json!([195, 169]));
        assert_eq!(v[0]["logprob"], -0.5);
        assert_eq!(v[0]["top_logprobs"][1]["token"], "e");
        assert_eq!(v[0]["top_logprobs"][1]["logprob"], -1.5);
        assert!(v[0]["top_logprobs"][0].get("top_logprobs").is_none());
    }
}
