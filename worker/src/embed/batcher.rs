//! The embedding decodes ([`Batcher`]): take every waiting request, pack
//! their inputs first come first served into one decode (each input its
//! own sequence id, at most `ctx_size` tokens, or fewer when interleaved
//! with generation, and [`MAX_SEQS_PER_DECODE`] sequences), read each
//! sequence's pooled vector, normalize it, clear the cache, answer the
//! requests that are complete. A request whose caller went away is dropped
//! before its next decode. [`Batcher::run`] is the loop of the separate
//! embedding thread; interleaved, the engine's step loop calls
//! [`Batcher::step`] with what its step left of the token budget.

use super::{EmbedConfig, EmbedError, Job, MAX_SEQS_PER_DECODE};
use crate::metrics::WorkerMetrics;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use std::collections::VecDeque;
use std::sync::{mpsc, Arc};
use std::time::Instant;

/// A request being embedded: its vectors so far.
struct Pending {
    job: Job,
    /// The next input to place in a decode.
    next: usize,
    out: Vec<Vec<f32>>,
    done: usize,
    failed: Option<EmbedError>,
}

impl Pending {
    fn new(job: Job) -> Self {
        let n = job.inputs.len();
        Self {
            job,
            next: 0,
            out: vec![Vec::new(); n],
            done: 0,
            failed: None,
        }
    }

    fn finished(&self) -> bool {
        self.failed.is_some() || self.done == self.job.inputs.len()
    }
}

pub(crate) struct Batcher<'m> {
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    budget: usize,
    metrics: Arc<WorkerMetrics>,
    pending: VecDeque<Pending>,
}

/// `v` scaled to unit length (a zero vector stays zero).
pub fn normalize(v: &[f32]) -> Vec<f32> {
    let norm = v
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        v.iter().map(|x| (f64::from(*x) / norm) as f32).collect()
    } else {
        v.to_vec()
    }
}

impl<'m> Batcher<'m> {
    pub(crate) fn new(
        ctx: LlamaContext<'m>,
        config: &EmbedConfig,
        metrics: Arc<WorkerMetrics>,
    ) -> Self {
        let budget = config.ctx_size as usize;
        Self {
            ctx,
            batch: LlamaBatch::new(budget, 1),
            budget,
            metrics,
            pending: VecDeque::new(),
        }
    }

    pub(super) fn run(mut self, rx: mpsc::Receiver<Job>) {
        loop {
            if self.pending.is_empty() {
                match rx.recv() {
                    Ok(job) => self.pending.push_back(Pending::new(job)),
                    Err(_) => return,
                }
            }
            while let Ok(job) = rx.try_recv() {
                self.push(job);
            }
            if self.has_pending() {
                self.step(self.budget);
            }
        }
    }

    pub(crate) fn push(&mut self, job: Job) {
        self.pending.push_back(Pending::new(job));
    }

    /// Whether inputs wait; requests whose callers are gone are dropped
    /// first (their work is not done).
    pub(crate) fn has_pending(&mut self) -> bool {
        self.pending.retain(|p| !p.job.reply.is_closed());
        !self.pending.is_empty()
    }

    /// One decode over the next inputs, at most `tokens` of them (but
    /// always the first waiting input, so every request progresses), then
    /// answers for finished requests. Returns the tokens decoded.
    pub(crate) fn step(&mut self, tokens: usize) -> usize {
        let cap = tokens.min(self.budget);
        self.batch.clear();
        // (request, input) of each sequence id, in order.
        let mut placed: Vec<(usize, usize)> = Vec::new();
        let mut used = 0;
        'fill: for (r, p) in self.pending.iter_mut().enumerate() {
            while p.next < p.job.inputs.len() {
                let tokens = &p.job.inputs[p.next];
                let full = placed.len() == MAX_SEQS_PER_DECODE as usize;
                if full || (used > 0 && used + tokens.len() > cap) {
                    break 'fill;
                }
                let seq = placed.len() as i32;
                if let Err(e) = self.batch.add_sequence(tokens, seq, true) {
                    // Inputs are checked against the budget before they
                    // come here; this one cannot be embedded.
                    p.failed = Some(EmbedError::Decode(e.to_string()));
                    break 'fill;
                }
                used += tokens.len();
                placed.push((r, p.next));
                p.next += 1;
            }
        }
        if !placed.is_empty() {
            let started = Instant::now();
            let decoded = self.ctx.decode(&mut self.batch);
            self.metrics
                .embedding_decode_seconds
                .record(started.elapsed().as_secs_f64());
            for (seq, &(r, i)) in placed.iter().enumerate() {
                let p = &mut self.pending[r];
                let vector = match &decoded {
                    Ok(()) => self
                        .ctx
                        .embeddings_seq_ith(seq as i32)
                        .map(normalize)
                        .map_err(|e| EmbedError::Decode(e.to_string())),
                    Err(e) => Err(EmbedError::Decode(e.to_string())),
                };
                match vector {
                    Ok(v) => {
                        p.out[i] = v;
                        p.done += 1;
                    }
                    Err(e) => p.failed = Some(e),
                }
            }
            self.metrics.embedding_inputs.increment(placed.len() as u64);
            self.metrics.embedding_tokens.increment(used as u64);
            // Every decode starts from an empty cache: sequence ids and
            // positions are reused.
            self.ctx.clear_kv_cache();
        }
        let mut kept = VecDeque::with_capacity(self.pending.len());
        for p in self.pending.drain(..) {
            if !p.finished() {
                kept.push_back(p);
                continue;
            }
            let result = match p.failed {
                Some(e) => {
                    tracing::warn!("embedding failed: {e}");
                    Err(e)
                }
                None => Ok(p.out),
            };
            // The caller may be gone; nothing to do then.
            let _ = p.job.reply.send(result);
        }
        self.pending = kept;
        used
    }
}
