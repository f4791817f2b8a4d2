//! Per-sequence token sampling on raw logits.
//!
//! A lean sampler of our own instead of llama.cpp's sampler chain: the chain
//! builds and sorts a candidate array over the whole vocabulary for every token
//! of every sequence, which dominates a step on small models. Here greedy is a
//! single argmax pass, and stochastic sampling only sorts the tokens whose
//! probability is not negligible (relative probability ≥ 1e-9 of the best).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use spindle_proto::SamplingParams;
use std::collections::HashMap;

/// Natural log of the smallest relative probability worth keeping (1e-9).
const LN_NEGLIGIBLE: f32 = -20.7;
/// How many recent generated tokens the repetition penalty looks at (llama.cpp's default).
const REPEAT_WINDOW: usize = 64;

pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// Occurrences of each generated token (presence/frequency penalties).
    counts: HashMap<i32, u32>,
    /// The last `REPEAT_WINDOW` generated tokens (repetition penalty).
    recent: Vec<i32>,
    scratch: Vec<(i32, f32)>,
    /// Tokens never to sample (end-of-generation under `ignore_eos`).
    banned: Vec<i32>,
    masked: Vec<f32>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(|| rand::rng().random());
        Self {
            params,
            rng: ChaCha8Rng::seed_from_u64(seed),
            counts: HashMap::new(),
            recent: Vec::new(),
            scratch: Vec::new(),
            banned: Vec::new(),
            masked: Vec::new(),
        }
    }

    /// Never pick any of `tokens`.
    pub fn with_banned(mut self, tokens: Vec<i32>) -> Self {
        self.banned = tokens;
        self
    }

    fn has_penalties(&self) -> bool {
        !self.counts.is_empty()
            && (self.params.presence_penalty != 0.0
                || self.params.frequency_penalty != 0.0
                || self.params.repetition_penalty != 1.0)
    }

    /// The logit of `token` after penalties.
    fn penalized(&self, token: i32, logit: f32) -> f32 {
        let mut l = logit;
        let p = &self.params;
        if p.repetition_penalty != 1.0 && self.recent.contains(&token) {
            l = if l > 0.0 {
                l / p.repetition_penalty
            } else {
                l * p.repetition_penalty
            };
        }
        if let Some(&n) = self.counts.get(&token) {
            l -= p.presence_penalty + p.frequency_penalty * n as f32;
        }
        l
    }

    /// Pick the next token from `logits` (one entry per vocabulary token).
    pub fn sample(&mut self, logits: &[f32]) -> i32 {
        if !self.banned.is_empty() {
            let mut masked = std::mem::take(&mut self.masked);
            masked.clear();
            masked.extend_from_slice(logits);
            for &t in &self.banned {
                if let Some(l) = masked.get_mut(t as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
            let t = self.sample_unmasked(&masked);
            self.masked = masked;
            return t;
        }
        self.sample_unmasked(logits)
    }

    fn sample_unmasked(&mut self, logits: &[f32]) -> i32 {
        if self.params.temperature <= 0.0 {
            return self.argmax(logits);
        }
        self.sample_stochastic(logits)
    }

    fn argmax(&self, logits: &[f32]) -> i32 {
        let mut best = (0usize, f32::NEG_INFINITY);
        for (i, &l) in logits.iter().enumerate() {
            if l > best.1 {
                best = (i, l);
            }
        }
        if !self.has_penalties() {
            return best.0 as i32;
        }
        // Penalties only lower (or, for negative logits under repetition
        // penalty, lower further) the tokens already generated: the winner is
        // either a penalized token at its new value or the best unpenalized one.
        let mut best_unpenalized = (0usize, f32::NEG_INFINITY);
        for (i, &l) in logits.iter().enumerate() {
            if l > best_unpenalized.1 && !self.counts.contains_key(&(i as i32)) {
                best_unpenalized = (i, l);
            }
        }
        let mut winner = best_unpenalized;
        for &t in self.counts.keys() {
            if let Some(&l) = logits.get(t as usize) {
                let adj = self.penalized(t, l);
                if adj > winner.1 || (adj == winner.1 && (t as usize) < winner.0) {
                    winner = (t as usize, adj);
                }
            }
        }
        winner.0 as i32
    }

    fn sample_stochastic(&mut self, logits: &[f32]) -> i32 {
        let penalties = self.has_penalties();
        let adjusted = |s: &Self, i: usize, l: f32| {
            if penalties && s.counts.contains_key(&(i as i32)) {
                s.penalized(i as i32, l)
            } else {
                l
            }
        };
        let mut max = f32::NEG_INFINITY;
        for (i, &l) in logits.iter().enumerate() {
            max = max.max(adjusted(self, i, l));
        }
        let t = self.params.temperature;
        let floor = max + LN_NEGLIGIBLE * t;
        let mut cands = std::mem::take(&mut self.scratch);
        cands.clear();
        for (i, &l) in logits.iter().enumerate() {
            let l = adjusted(self, i, l);
            if l >= floor {
                cands.push((i as i32, (l - max) / t));
            }
        }
        let by_logit_desc =
            |a: &(i32, f32), b: &(i32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let k = self.params.top_k as usize;
        if k > 0 && cands.len() > k {
            cands.select_nth_unstable_by(k - 1, by_logit_desc);
            cands.truncate(k);
        }
        cands.sort_unstable_by(by_logit_desc);
        // Softmax in place (the first entry is the maximum, so exp never overflows).
        let mut sum = 0.0f32;
        for c in cands.iter_mut() {
            c.1 = c.1.exp();
            sum += c.1;
        }
        let min_p = self.params.min_p;
        let top_p = self.params.top_p;
        let mut kept = 0usize;
        let mut mass = 0.0f32;
        let first = cands.first().map_or(0.0, |c| c.1);
        for c in cands.iter() {
            if kept > 0 && min_p > 0.0 && c.1 < min_p * first {
                break;
            }
            kept += 1;
            mass += c.1;
            if top_p < 1.0 && mass >= top_p * sum {
                break;
            }
        }
        cands.truncate(kept.max(1));
        let total: f32 = cands.iter().map(|c| c.1).sum();
        let mut r = self.rng.random::<f32>() * total;
        let mut chosen = cands.last().map_or(0, |c| c.0);
        for c in cands.iter() {
            if r < c.1 {
                chosen = c.0;
                break;
            }
            r -= c.1;
        }
        self.scratch = cands;
        chosen
    }

    /// Record a generated token so penalties see it.
    pub fn accept(&mut self, token: i32) {
        *self.counts.entry(token).or_insert(0) += 1;
        if self.recent.len() == REPEAT_WINDOW {
            self.recent.remove(0);
        }
        self.recent.push(token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            ..Default::default()
        }
    }

    #[test]
    fn greedy_takes_argmax() {
        let mut s = Sampler::new(params(0.0));
        assert_eq!(s.sample(&[0.1, 3.0, 2.0, -1.0]), 1);
    }

    #[test]
    fn penalties_move_greedy_choice() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            presence_penalty: 2.0,
            ..Default::default()
        });
        s.accept(1);
        assert_eq!(s.sample(&[0.1, 3.0, 2.0, -1.0]), 2);
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            repetition_penalty: 2.0,
            ..Default::default()
        });
        s.accept(1);
        assert_eq!(s.sample(&[0.1, 3.0, 2.0, -1.0]), 2);
    }

    #[test]
    fn same_seed_same_draws() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 / 20.0).collect();
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams {
                temperature: 1.0,
                seed: Some(seed),
                ..Default::default()
            });
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 5.0,
            top_k: 1,
            seed: Some(1),
            ..Default::default()
        });
        for _ in 0..20 {
            assert_eq!(s.sample(&[0.0, 1.0, 0.9, 0.8]), 1);
        }
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        // Token 0 holds ~88% of the mass; top_p 0.5 keeps it alone.
        let logits = [4.0, 2.0, 1.0, 0.0];
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            seed: Some(3),
            ..Default::default()
        });
        assert!((0..50).all(|_| s.sample(&logits) == 0));
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            min_p: 0.5,
            seed: Some(3),
            ..Default::default()
        });
        assert!((0..50).all(|_| s.sample(&logits) == 0));
    }

    #[test]
    fn banned_tokens_are_never_picked() {
        let mut s = Sampler::new(params(0.0)).with_banned(vec![1]);
        assert_eq!(s.sample(&[0.1, 3.0, 2.0, -1.0]), 2);
    }

    #[test]
    fn temperature_spreads_choices() {
        let logits = [1.0, 1.0, 1.0, 1.0];
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            seed: Some(11),
            ..Default::default()
        });
        let mut seen = [false; 4];
        for _ in 0..200 {
            seen[s.sample(&logits) as usize] = true;
        }
        assert!(seen.iter().all(|&x| x));
    }
}
