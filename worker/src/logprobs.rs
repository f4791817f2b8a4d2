//! Log probabilities of generated tokens, for sequences that ask for them.
//!
//! Computed from the raw logits of the position (log-softmax over the whole
//! vocabulary), before temperature, penalties, top-k/top-p/min-p, banned
//! tokens or a grammar: the model's own distribution, which is what OpenAI
//! reports and what evaluation harnesses compare. The sampler never sees
//! this work: a sequence that does not ask pays nothing.
//!
//! Per token: one pass for the maximum, one for the log-sum-exp, and for
//! `k > 0` a partial selection (`select_nth_unstable`) of the `k` largest
//! logits over a reused scratch buffer, then a sort of those `k` only.

use spindle_proto::logprobs::{finite, token_text, TokenLogprob, TopLogprob};

/// What a sequence keeps to compute its log probabilities.
pub struct Logprobs {
    /// Alternatives per token (0 to 20).
    k: usize,
    /// (token id, logit) of the whole vocabulary, reused across tokens.
    scratch: Vec<(i32, f32)>,
}

/// The log-softmax normaliser of `logits` in two parts, (max, ln Σ exp(l −
/// max)): a log probability is `(l − max) − lse`, exact in the subtraction
/// where adding them first would lose the bits of a large maximum.
pub fn log_normalizer(logits: &[f32]) -> (f32, f32) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return (max, 0.0);
    }
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    (max, sum.ln() as f32)
}

impl Logprobs {
    pub fn new(k: u32) -> Self {
        Self {
            k: k as usize,
            scratch: Vec::new(),
        }
    }

    /// The entry of `chosen` at a position whose raw logits are `logits`;
    /// `text` spells a token (its printed bytes, and a display name for
    /// tokens that print nothing).
    pub fn entry(
        &mut self,
        logits: &[f32],
        chosen: i32,
        text: impl Fn(i32) -> (String, Vec<u8>),
    ) -> TokenLogprob {
        let (max, lse) = log_normalizer(logits);
        let logprob_of = |l: f32| finite((l - max) - lse);
        let one = |id: i32, logit: f32| {
            let (token, bytes) = text(id);
            TopLogprob {
                id,
                token,
                bytes,
                logprob: logprob_of(logit),
            }
        };
        let chosen_logit = logits
            .get(chosen as usize)
            .copied()
            .unwrap_or(f32::NEG_INFINITY);
        let top = self.top(logits).iter().map(|&(id, l)| one(id, l)).collect();
        TokenLogprob {
            chosen: one(chosen, chosen_logit),
            top,
        }
    }

    /// The `k` largest logits, largest first (ties: lower id first).
    fn top(&mut self, logits: &[f32]) -> &[(i32, f32)] {
        let k = self.k.min(logits.len());
        self.scratch.clear();
        if k == 0 {
            return &self.scratch;
        }
        self.scratch
            .extend(logits.iter().enumerate().map(|(i, &l)| (i as i32, l)));
        let desc = |a: &(i32, f32), b: &(i32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if k < self.scratch.len() {
            self.scratch.select_nth_unstable_by(k - 1, desc);
            self.scratch.truncate(k);
        }
        self.scratch.sort_unstable_by(desc);
        &self.scratch
    }
}

/// The text of a token whose printed bytes are `bytes`: [`token_text`],
/// or `name` (the vocabulary's spelling) for a token that prints nothing.
pub fn spell(bytes: Vec<u8>, name: impl FnOnce() -> Vec<u8>) -> (String, Vec<u8>) {
    if bytes.is_empty() {
        (token_text(&name()), bytes)
    } else {
        (token_text(&bytes), bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(id: i32) -> (String, Vec<u8>) {
        (format!("t{id}"), vec![id as u8])
    }

    #[test]
    fn entries_are_the_log_softmax_of_the_raw_logits() {
        let logits = [1.0f32, 3.0, 2.0, -1.0, 3.0];
        let mut lp = Logprobs::new(3);
        let e = lp.entry(&logits, 2, text);
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        assert!((e.chosen.logprob - (2.0 - z.ln())).abs() < 1e-6);
        assert_eq!(e.chosen.token, "t2");
        // Sorted, ties by id, exactly k.
        let ids: Vec<i32> = e.top.iter().map(|t| t.id).collect();
        assert_eq!(ids, [1, 4, 2]);
        assert!(e.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
        let mass: f32 = e.top.iter().map(|t| t.logprob.exp()).sum();
        assert!(mass <= 1.0 + 1e-6);
        // k = 0: only the chosen token; k above the vocabulary: all of it.
        assert!(Logprobs::new(0).entry(&logits, 0, text).top.is_empty());
        assert_eq!(Logprobs::new(20).entry(&logits, 0, text).top.len(), 5);
    }

    #[test]
    fn large_logits_do_not_overflow() {
        let logits = [1000.0f32, 999.0, -1000.0];
        let e = Logprobs::new(2).entry(&logits, 2, text);
        assert!(e.chosen.logprob.is_finite());
        assert!((e.top[0].logprob - -(1.0f32 + (-1.0f32).exp()).ln()).abs() < 1e-5);
    }

    #[test]
    fn silent_tokens_are_spelled_by_name() {
        assert_eq!(spell(Vec::new(), || b"</s>".to_vec()).0, "</s>");
        assert_eq!(spell(b"hi".to_vec(), || b"x".to_vec()).0, "hi");
    }
}
