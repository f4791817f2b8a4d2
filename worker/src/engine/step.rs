//! The step loop on the engine thread ([`StepLoop`]): admission into KV
//! slots with prefix-cache reuse (planned in [`super::reuse`], with copies
//! between slots and KV shifts), building one batch per step, decoding,
//! sampling and cancellation.

use super::lora::{groups, Loras};
use super::reuse::{plan_reuse, Reuse, MIN_COPY_GAIN};
use super::seq::{sample_next, score_prompt, Seq};
use super::{Command, EngineConfig, EngineStats};
use crate::embed::Interleaved;
use crate::lora::LoraSet;
use crate::metrics::WorkerMetrics;
use crate::model::Model;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::RopeType;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::DecodeError;
use spindle_proto::{FailureCode, FinishReason, GenerateEvent};
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most logits one step keeps for prompts being scored (64 MiB of f32):
/// such a prompt decodes in chunks of this over the vocabulary size, so the
/// context's output buffer stays bounded whatever the prompt's length.
const PROMPT_SCORE_LOGITS: usize = 16 << 20;

/// One llama.cpp sequence id and its own KV stream.
///
/// While a sequence runs in it the slot is busy; afterwards the KV stays as
/// a prefix-cache entry (`cached`) until the slot is reused.
#[derive(Default)]
pub(super) struct Slot {
    /// Tokens whose KV an idle slot holds.
    cached: Vec<LlamaToken>,
    /// The cache salt of the sequence whose KV it holds: only sequences
    /// with the same salt reuse it.
    salt: Option<String>,
    /// The LoRA set its KV was computed under: only sequences with the
    /// same set reuse it (an adapter changes every cell).
    lora: LoraSet,
    busy: bool,
    last_used: u64,
}

pub(super) struct StepLoop<'m> {
    model: &'m Model,
    /// Declared before `loras`, so dropped first: it uses their adapters.
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    config: EngineConfig,
    /// The model's KV cache can shift positions (plain RoPE, not recurrent).
    shift_ok: bool,
    stats: Arc<EngineStats>,
    metrics: Arc<WorkerMetrics>,
    loras: Loras,
    /// Interleaved embedding decodes (`--embedding-mode interleaved`).
    embeds: Option<Interleaved<'m>>,
    /// Tokens the generation decodes of this step held.
    step_tokens: usize,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    slots: Vec<Slot>,
    cancelled: HashSet<String>,
    tick: u64,
    /// (time, tokens generated in that step), for tokens/s.
    /// Recent steps: when they ended, tokens generated, how long they took.
    recent: VecDeque<(Instant, u32, Duration)>,
}

impl<'m> StepLoop<'m> {
    pub(super) fn new(
        model: &'m Model,
        ctx: LlamaContext<'m>,
        config: &EngineConfig,
        stats: Arc<EngineStats>,
        metrics: Arc<WorkerMetrics>,
        loras: Loras,
    ) -> Self {
        let n_batch = config.max_batch_tokens.max(config.max_seqs) as usize;
        Self {
            model,
            ctx,
            batch: LlamaBatch::new(n_batch, 1),
            config: config.clone(),
            shift_ok: !model.llama.is_recurrent()
                && matches!(
                    model.llama.rope_type(),
                    Some(RopeType::Norm | RopeType::NeoX)
                ),
            stats,
            metrics,
            loras,
            embeds: None,
            step_tokens: 0,
            waiting: VecDeque::new(),
            running: Vec::new(),
            slots: (0..config.max_seqs).map(|_| Slot::default()).collect(),
            cancelled: HashSet::new(),
            tick: 0,
            recent: VecDeque::new(),
        }
    }

    pub(super) fn with_embeddings(mut self, embeds: Option<Interleaved<'m>>) -> Self {
        self.embeds = embeds;
        self
    }

    pub(super) fn run(mut self, rx: mpsc::Receiver<Command>) {
        loop {
            self.stats.beats.fetch_add(1, Ordering::Relaxed);
            let embedding = self.embeds.as_mut().is_some_and(Interleaved::has_pending);
            let idle = self.running.is_empty() && self.waiting.is_empty() && !embedding;
            if idle {
                self.publish_stats(0, Duration::ZERO);
                match rx.recv_timeout(Duration::from_secs(1)) {
                    Ok(cmd) => self.command(cmd),
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
            while let Ok(cmd) = rx.try_recv() {
                self.command(cmd);
            }
            self.reap_cancelled();
            self.admit();
            let started = Instant::now();
            let generated = self.step();
            self.embed_step(started.elapsed());
            self.publish_stats(generated, started.elapsed());
        }
    }

    pub(super) fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Submit(seq) => self.waiting.push_back(*seq),
            Command::Cancel(id) => {
                self.cancelled.insert(id);
            }
            Command::Embed(job) => match self.embeds.as_mut() {
                Some(b) => b.push(job),
                // Not interleaved: no such job is sent here.
                None => drop(job),
            },
        }
    }

    /// Finish every sequence that was cancelled or whose client went away.
    pub(super) fn reap_cancelled(&mut self) {
        let gone = |s: &Seq, c: &HashSet<String>| s.events.is_closed() || c.contains(&s.id);
        let mut i = 0;
        while i < self.waiting.len() {
            if gone(&self.waiting[i], &self.cancelled) {
                if let Some(mut s) = self.waiting.remove(i) {
                    self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
                    s.finish(FinishReason::Cancelled, &self.metrics);
                }
            } else {
                i += 1;
            }
        }
        let mut i = 0;
        while i < self.running.len() {
            if gone(&self.running[i], &self.cancelled) {
                let mut s = self.running.swap_remove(i);
                s.finish(FinishReason::Cancelled, &self.metrics);
                self.release(&s);
            } else {
                i += 1;
            }
        }
        self.cancelled.clear();
    }

    /// Drop a sequence's KV and free its slot (nothing cached).
    pub(super) fn release(&mut self, s: &Seq) {
        if let Some(id) = s.seq_id {
            let _ = self.ctx.kv_cache_seq_rm(id, None, None);
            let slot = &mut self.slots[id as usize];
            slot.busy = false;
            slot.cached.clear();
        }
    }

    /// The tokens whose KV slot `id` holds now.
    pub(super) fn slot_tokens(&self, id: usize) -> &[LlamaToken] {
        let slot = &self.slots[id];
        if slot.busy {
            self.running
                .iter()
                .find(|r| r.seq_id == Some(id as i32))
                .map_or(&[], |r| &r.tokens[..r.n_past])
        } else {
            &slot.cached
        }
    }

    /// Move waiting sequences into idle slots. Each goes to the idle slot
    /// holding the longest prefix of its tokens (else the least recently
    /// used one); when another slot holds a clearly longer prefix, that
    /// slot's KV stream is copied over first.
    pub(super) fn admit(&mut self) {
        while self.running.len() < self.slots.len() {
            let Some(mut s) = self.waiting.pop_front() else {
                return;
            };
            self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
            self.tick += 1;
            // Keep at least one token to decode: its logits start generation.
            // A prompt being scored needs every position's logits: no reuse.
            let limit = if s.scores_prompt() {
                0
            } else {
                s.tokens.len() - 1
            };
            let plans: Vec<Reuse> = (0..self.slots.len())
                .map(|i| {
                    if self.slots[i].salt != s.cache_salt || self.slots[i].lora != s.lora {
                        return Reuse::default();
                    }
                    // Only an idle entry can be shifted in place.
                    let shift_ok = self.shift_ok && !self.slots[i].busy;
                    plan_reuse(self.slot_tokens(i), &s.tokens[..limit], shift_ok)
                })
                .collect();
            // Extend an entry the request mostly covers, or continues past a
            // dropped span; never overwrite a long entry for a short match (a
            // shared system prompt): take an empty or the least recently used
            // slot instead.
            let score = |this: &Self, i: usize| {
                let n = plans[i].tokens();
                let extends = 2 * n >= this.slots[i].cached.len() || plans[i].shift.is_some();
                (
                    if extends { n } else { 0 },
                    this.slots[i].cached.is_empty(),
                    std::cmp::Reverse(this.slots[i].last_used),
                )
            };
            let Some(target) = (0..self.slots.len())
                .filter(|&i| !self.slots[i].busy)
                .max_by_key(|&i| score(self, i))
            else {
                self.waiting.push_front(s);
                self.stats.waiting.fetch_add(1, Ordering::SeqCst);
                return;
            };
            let own = plans[target];
            let best_other = (0..self.slots.len())
                .filter(|&i| i != target)
                .map(|i| (i, plans[i].prefix))
                .max_by_key(|&(_, n)| n)
                .filter(|&(_, n)| n >= own.tokens() + MIN_COPY_GAIN);
            let id = target as i32;
            let reuse = match (best_other, own.shift) {
                (Some((src, n)), _) => {
                    // Cross-stream copies are whole-stream; trim the tail after.
                    let _ = self.ctx.kv_cache_seq_cp(src as i32, id, None, None);
                    self.slots[src].last_used = self.tick;
                    self.metrics.prefix_copies.increment(1);
                    n
                }
                (None, Some((from, len))) => self.shift_kv(id, own.prefix, from, len),
                (None, None) => own.prefix,
            };
            let _ = self.ctx.kv_cache_seq_rm(id, Some(reuse as u32), None);
            let slot = &mut self.slots[target];
            if reuse < slot.cached.len() {
                // Part or all of an idle slot's cached prefix is overwritten.
                self.metrics.cache_evictions.increment(1);
            }
            slot.busy = true;
            slot.cached.clear();
            slot.salt.clone_from(&s.cache_salt);
            slot.lora = s.lora;
            slot.last_used = self.tick;
            s.seq_id = Some(id);
            // A preempted sequence comes back with its generated tokens: those
            // were never "prompt", so only count what the caller sent.
            if s.first_step.is_none() {
                s.cached_tokens = reuse.min(s.prompt_len) as u32;
                self.metrics
                    .cache_query_tokens
                    .increment(s.prompt_len as u64);
                self.metrics
                    .cache_hit_tokens
                    .increment(u64::from(s.cached_tokens));
            }
            s.n_past = reuse;
            self.running.push(s);
        }
    }

    /// Make slot `id`'s KV hold its first `prefix` tokens followed by its
    /// cells `from..from + len` (moved back to follow the prefix): the rest
    /// is removed. Returns how many tokens are reusable after that; only
    /// `prefix` when llama.cpp refuses a removal.
    fn shift_kv(&mut self, id: i32, prefix: usize, from: usize, len: usize) -> usize {
        let pos = |n: usize| u32::try_from(n).ok();
        let (Some(p), Some(f), Some(e), Ok(delta)) = (
            pos(prefix),
            pos(from),
            pos(from + len),
            i32::try_from(from - prefix),
        ) else {
            return prefix;
        };
        let shifted = self.ctx.kv_cache_seq_rm(id, Some(p), Some(f)).is_ok()
            && self.ctx.kv_cache_seq_rm(id, Some(e), None).is_ok()
            && self
                .ctx
                .kv_cache_seq_add(id, Some(f), Some(e), -delta)
                .is_ok();
        if shifted {
            self.metrics.prefix_shifts.increment(1);
            prefix + len
        } else {
            prefix
        }
    }

    /// One decode per LoRA set among the running sequences (one in all
    /// without adapters). Returns the number of tokens generated.
    pub(super) fn step(&mut self) -> u32 {
        self.step_tokens = 0;
        let mut generated = 0;
        for set in groups(&self.running, self.loras.current()) {
            if let Err(e) = self.loras.apply(&mut self.ctx, set) {
                tracing::error!("setting a LoRA adapter failed: {e}");
                self.fail_all(&format!("setting a LoRA adapter failed: {e}"));
                return generated;
            }
            generated += self.step_set(set);
        }
        generated
    }

    /// Build and run one decode of the sequences under `set`; sample every
    /// one whose prompt is done. Returns the number of tokens generated.
    fn step_set(&mut self, set: LoraSet) -> u32 {
        if self.running.is_empty() {
            return 0;
        }
        loop {
            self.fill_batch(set);
            if self.batch.n_tokens() == 0 {
                return 0;
            }
            let started = Instant::now();
            match self.ctx.decode(&mut self.batch) {
                Ok(()) => {
                    self.metrics
                        .step_seconds
                        .record(started.elapsed().as_secs_f64());
                    self.step_tokens += self.batch.n_tokens() as usize;
                    self.record_batch();
                    break;
                }
                Err(DecodeError::NoKvCacheSlot) => {
                    if !self.make_room() {
                        return 0;
                    }
                }
                Err(e) => {
                    tracing::error!("decode failed: {e}");
                    self.fail_all(&format!("decode failed: {e}"));
                    return 0;
                }
            }
        }
        let now = Instant::now();
        let mut generated = 0;
        let mut i = 0;
        while i < self.running.len() {
            let s = &mut self.running[i];
            let ctx = &self.ctx;
            let scored = score_prompt(self.model, s, |idx| ctx.get_logits_ith(idx));
            if s.in_batch > 0 {
                s.n_past += s.in_batch;
                s.first_step.get_or_insert(now);
            }
            let finished = match s.logits_at.take() {
                _ if !scored => Some(FinishReason::Cancelled),
                // Scored and echoed, nothing generated (`max_tokens: 0`).
                Some(_) if s.max_tokens == 0 => Some(FinishReason::Length),
                Some(idx) => {
                    generated += 1;
                    let logits = self.ctx.get_logits_ith(idx);
                    sample_next(self.model, s, logits, now)
                }
                None => None,
            };
            if let Some(reason) = finished {
                let mut s = self.running.swap_remove(i);
                s.finish(reason, &self.metrics);
                if reason == FinishReason::Cancelled {
                    self.release(&s);
                } else {
                    self.retain(s);
                }
            } else {
                i += 1;
            }
        }
        generated
    }

    /// Interleaved embeddings after a step that took `took`: a decode
    /// within what the step left of the token budget and the embeddings'
    /// time share.
    fn embed_step(&mut self, took: Duration) {
        let budget = self.config.max_batch_tokens.max(self.config.max_seqs) as usize;
        let generating = !self.running.is_empty();
        if let Some(e) = self.embeds.as_mut() {
            e.after_step(generating, took, budget.saturating_sub(self.step_tokens));
        }
    }

    /// Batch size and its split into prompt (prefill) and decode tokens.
    pub(super) fn record_batch(&self) {
        let (mut decode, mut prefill) = (0u64, 0u64);
        for s in &self.running {
            if s.is_decoding() {
                decode += s.in_batch as u64;
            } else {
                prefill += s.in_batch as u64;
            }
        }
        self.metrics.decode_tokens.increment(decode);
        self.metrics.prefill_tokens.increment(prefill);
        self.metrics.batch_tokens.record((decode + prefill) as f64);
    }

    /// Decode tokens get the budget first (one per decoding sequence), then
    /// prompt chunks in admission order. Tokens go into the batch in slot
    /// order: llama.cpp's split KV decodes consecutive sequence ids together.
    pub(super) fn fill_batch(&mut self, set: LoraSet) {
        self.batch.clear();
        let mut budget = self.config.max_batch_tokens.max(self.config.max_seqs) as usize;
        for s in self.running.iter_mut() {
            s.in_batch = 0;
            s.logits_at = None;
            s.prompt_logits_from = None;
        }
        let score_cap = (PROMPT_SCORE_LOGITS / self.model.n_vocab().max(1) as usize).max(1);
        for decoding in [true, false] {
            for s in self
                .running
                .iter_mut()
                .filter(|s| s.is_decoding() == decoding && s.lora == set)
            {
                s.in_batch = s.pending().min(budget);
                if !decoding && s.scores_prompt() {
                    s.in_batch = s.in_batch.min(score_cap);
                }
                budget -= s.in_batch;
            }
        }
        self.running.sort_unstable_by_key(|s| s.seq_id);
        for s in self.running.iter_mut() {
            let Some(seq_id) = s.seq_id else { continue };
            let scoring = s.scores_prompt();
            if scoring && s.in_batch > 0 {
                s.prompt_logits_from = Some(self.batch.n_tokens());
            }
            for pos in s.n_past..s.n_past + s.in_batch {
                let last = pos + 1 == s.tokens.len();
                if self
                    .batch
                    .add(s.tokens[pos], pos as i32, &[seq_id], last || scoring)
                    .is_err()
                {
                    // Cannot happen: the batch holds max_batch_tokens tokens.
                    s.in_batch = pos - s.n_past;
                    break;
                }
                if last {
                    s.logits_at = Some(self.batch.n_tokens() - 1);
                }
            }
        }
    }

    /// A slot's KV stream is full (only when its context is exhausted, as
    /// `max_tokens` is capped by it): end the longest sequence for length.
    /// Returns false when nothing is left to run.
    pub(super) fn make_room(&mut self) -> bool {
        let Some(i) = (0..self.running.len()).max_by_key(|&i| self.running[i].tokens.len()) else {
            return false;
        };
        let mut s = self.running.swap_remove(i);
        s.finish(FinishReason::Length, &self.metrics);
        self.release(&s);
        !self.running.is_empty()
    }

    pub(super) fn fail_all(&mut self, message: &str) {
        for s in std::mem::take(&mut self.running) {
            let _ = s.events.send(GenerateEvent::Error {
                code: FailureCode::ServerError,
                message: message.into(),
            });
            self.release(&s);
        }
    }

    /// Keep a finished sequence's KV in its slot as a prefix-cache entry.
    pub(super) fn retain(&mut self, s: Seq) {
        let Some(id) = s.seq_id else { return };
        let mut tokens = s.tokens;
        tokens.truncate(s.n_past);
        self.tick += 1;
        let slot = &mut self.slots[id as usize];
        slot.busy = false;
        slot.cached = tokens;
        slot.last_used = self.tick;
    }

    pub(super) fn cached_cells(&self) -> usize {
        self.slots.iter().map(|s| s.cached.len()).sum()
    }

    pub(super) fn publish_stats(&mut self, generated: u32, took: Duration) {
        let now = Instant::now();
        self.recent.push_back((now, generated, took));
        while self
            .recent
            .front()
            .is_some_and(|(t, _, _)| now - *t > Duration::from_secs(5))
        {
            self.recent.pop_front();
        }
        let span = self
            .recent
            .front()
            .map_or(0.0, |(t, _, _)| (now - *t).as_secs_f64());
        let total: u32 = self.recent.iter().map(|(_, n, _)| n).sum();
        let slowest = self
            .recent
            .iter()
            .map(|(_, _, d)| *d)
            .max()
            .unwrap_or_default();
        let tps = if span > 0.0 {
            f64::from(total) / span
        } else {
            0.0
        };
        let running_cells: usize = self.running.iter().map(|s| s.n_past).sum();
        let st = &self.stats;
        st.tokens_per_second.store(tps.to_bits(), Ordering::Relaxed);
        st.step_seconds_max
            .store(slowest.as_secs_f64().to_bits(), Ordering::Relaxed);
        st.running
            .store(self.running.len() as u32, Ordering::SeqCst);
        st.kv_used.store(
            (running_cells + self.cached_cells()) as u32,
            Ordering::Relaxed,
        );
        st.retained.store(
            self.slots
                .iter()
                .filter(|s| !s.busy && !s.cached.is_empty())
                .count() as u32,
            Ordering::Relaxed,
        );
        let m = &self.metrics;
        let used = (running_cells + self.cached_cells()) as f64;
        let total = f64::from(self.config.ctx_size) * self.slots.len() as f64;
        m.generated_tokens.increment(u64::from(generated));
        m.running.set(self.running.len() as f64);
        m.waiting.set(self.waiting.len() as f64);
        m.kv_used_cells.set(used);
        m.kv_usage_ratio
            .set(if total > 0.0 { used / total } else { 0.0 });
    }
}
