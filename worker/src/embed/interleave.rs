//! Embeddings interleaved with generation on the engine thread
//! (`--embedding-mode interleaved`): after each generation step, one
//! embedding decode, sized by [`TimeShare`].
//!
//! A token budget alone would starve generation: on a CPU an embedding
//! token costs about what a prompt token does, so a decode filling what a
//! 16-token step left of a 512-token budget takes as long as 40 such steps
//! (measured: generation fell from ~300 to 11 tokens/s). So while
//! sequences generate, embeddings get `--embedding-share` of the thread's
//! time: each generation step earns them credit in proportion, a decode
//! spends what it took, and its size is what the credit buys at the
//! embedding rate measured so far (never less than one input, so every
//! request progresses; a large input then waits for the credit it took).
//! With nothing generating, embeddings take the whole budget.

use super::Batcher;
use std::time::{Duration, Instant};

/// Most time embeddings may bank while their queue is empty or short
/// (seconds): a burst may then take this much before yielding.
const MAX_CREDIT: f64 = 0.25;

/// The engine thread's split between generation and embeddings.
#[derive(Debug, Clone)]
pub(crate) struct TimeShare {
    /// Embedding seconds per generation second while both have work.
    ratio: f64,
    /// Seconds embeddings may still spend (negative: owed).
    credit: f64,
    /// Embedding tokens per second, recent decodes weighted most.
    rate: Option<f64>,
}

impl TimeShare {
    /// `share` of the busy time (0 < share < 1) goes to embeddings.
    pub(crate) fn new(share: f64) -> Self {
        let share = share.clamp(0.01, 0.99);
        Self {
            ratio: share / (1.0 - share),
            credit: 0.0,
            rate: None,
        }
    }

    /// A generation step took `took`.
    fn generated(&mut self, took: Duration) {
        self.credit = (self.credit + took.as_secs_f64() * self.ratio).min(MAX_CREDIT);
    }

    /// The tokens the next embedding decode may hold (`None`: not now),
    /// `budget` being what the step left of the token budget.
    fn tokens_now(&self, generating: bool, budget: usize) -> Option<usize> {
        if !generating {
            return Some(budget);
        }
        if self.credit <= 0.0 {
            return None;
        }
        // Before the first measurement: one input.
        let affordable = self.rate.map_or(0.0, |r| r * self.credit);
        Some((affordable as usize).min(budget))
    }

    /// An embedding decode of `tokens` took `took`.
    fn embedded(&mut self, took: Duration, tokens: usize, generating: bool) {
        let secs = took.as_secs_f64();
        if secs > 0.0 && tokens > 0 {
            let now = tokens as f64 / secs;
            self.rate = Some(self.rate.map_or(now, |r| 0.7 * r + 0.3 * now));
        }
        self.credit = if generating { self.credit - secs } else { 0.0 };
    }
}

/// The embedding decodes the engine thread runs, and their time share.
pub(crate) struct Interleaved<'m> {
    batcher: Batcher<'m>,
    share: TimeShare,
}

impl<'m> Interleaved<'m> {
    pub(crate) fn new(batcher: Batcher<'m>, share: f64) -> Self {
        Self {
            batcher,
            share: TimeShare::new(share),
        }
    }

    pub(crate) fn push(&mut self, job: super::Job) {
        self.batcher.push(job);
    }

    pub(crate) fn has_pending(&mut self) -> bool {
        self.batcher.has_pending()
    }

    /// After a generation step that took `took` (`generating`: sequences
    /// ran) and left `budget` tokens: an embedding decode, when its share
    /// allows one.
    pub(crate) fn after_step(&mut self, generating: bool, took: Duration, budget: usize) {
        if generating {
            self.share.generated(took);
        }
        if !self.batcher.has_pending() {
            return;
        }
        let Some(tokens) = self.share.tokens_now(generating, budget) else {
            return;
        };
        let started = Instant::now();
        let used = self.batcher.step(tokens);
        self.share.embedded(started.elapsed(), used, generating);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn embeddings_take_their_share_while_sequences_generate() {
        let mut s = TimeShare::new(0.5);
        // Nothing generating: the whole budget, and no debt kept.
        assert_eq!(s.tokens_now(false, 500), Some(500));
        s.embedded(100 * MS, 400, false);
        assert_eq!(s.credit, 0.0);
        // Generating: nothing until a step earned credit, then what the
        // credit buys at the measured rate (4000 tokens/s).
        assert_eq!(s.tokens_now(true, 500), None);
        s.generated(30 * MS);
        assert_eq!(s.tokens_now(true, 500), Some(120));
        // A decode that overran its credit is paid back by later steps.
        s.embedded(60 * MS, 240, true);
        assert_eq!(s.tokens_now(true, 500), None);
        s.generated(20 * MS);
        assert_eq!(s.tokens_now(true, 500), None);
        s.generated(20 * MS);
        assert!(s.tokens_now(true, 500).is_some());
    }

    #[test]
    fn the_share_sets_the_ratio_and_credit_is_capped() {
        let mut s = TimeShare::new(0.25);
        s.generated(Duration::from_secs(3));
        assert!((s.credit - MAX_CREDIT).abs() < 1e-12, "{}", s.credit);
        let mut s = TimeShare::new(0.25);
        s.generated(90 * MS);
        assert!((s.credit - 0.03).abs() < 1e-9, "{}", s.credit);
        // Before any measurement one input is all a step may take.
        assert_eq!(s.tokens_now(true, 500), Some(0));
    }
}
