//! The continuous-batching engine.
//!
//! One OS thread owns the llama.cpp context (unified KV cache) and runs the
//! step loop; async code talks to it through [`Engine`], a cheap handle that
//! sends commands over a channel and gets each request's events back on a
//! tokio channel.
//!
//! Each step is ONE `decode` holding the next token of every decoding sequence
//! plus chunks of waiting prompts, within `max_batch_tokens`. Requests join and
//! leave between steps.
//!
//! KV memory is a fixed set of slots, one llama.cpp sequence id and KV stream
//! each (`max_seqs` of them, `ctx_size` cells each). A finished sequence's KV
//! stays in its slot as a prefix-cache entry; a new request takes the idle
//! slot whose entry it extends the furthest (else an empty or the least
//! recently used one), and when another slot, busy or idle, holds a clearly longer prefix,
//! that slot's stream is copied over and trimmed.

use crate::metrics::{Rejection, WorkerMetrics};
use crate::model::{backend, Model};
use crate::sampler::Sampler;
use crate::text::{Release, TextStream};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::DecodeError;
use spindle_proto::{FailureCode, FinishReason, GenerateEvent, SamplingParams, Timings, Usage};
use std::collections::{HashSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// Engine sizing.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// KV cells of each sequence (its longest prompt plus output).
    pub ctx_size: u32,
    /// Sequences decoded together.
    pub max_seqs: u32,
    /// Tokens in one decode step (decode tokens first, then prompt chunks).
    pub max_batch_tokens: u32,
    /// Requests allowed to wait for a slot; more get `QueueFull`.
    pub max_waiting: u32,
    pub threads: i32,
}

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("the server is overloaded: the waiting queue is full")]
    QueueFull,
    #[error("the server is shutting down")]
    Draining,
    #[error("the prompt is {tokens} tokens but the context holds {ctx} (prompt plus at least one generated token)")]
    PromptTooLong { tokens: usize, ctx: u32 },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the engine has stopped")]
    Stopped,
}

/// Live counters shared by the engine thread and the HTTP side.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub running: AtomicU32,
    pub waiting: AtomicU32,
    pub kv_used: AtomicU32,
    pub retained: AtomicU32,
    /// f64 bits: generated tokens per second over the last few seconds.
    tokens_per_second: AtomicU64,
    pub draining: AtomicBool,
}

impl EngineStats {
    pub fn tokens_per_second(&self) -> f64 {
        f64::from_bits(self.tokens_per_second.load(Ordering::Relaxed))
    }
}

enum Command {
    Submit(Box<Seq>),
    Cancel(String),
}

/// A handle on the engine thread; clone freely.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::Sender<Command>,
    pub stats: Arc<EngineStats>,
    pub model: Arc<Model>,
    pub config: Arc<EngineConfig>,
    pub metrics: Arc<WorkerMetrics>,
}

/// A request ready for the engine.
pub struct Job {
    pub id: String,
    pub tokens: Vec<LlamaToken>,
    pub sampling: SamplingParams,
}

impl Engine {
    /// Build the context on a new thread and start the step loop there.
    pub fn start(
        model: Arc<Model>,
        config: EngineConfig,
        metrics: Arc<WorkerMetrics>,
    ) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(EngineStats::default());
        let config = Arc::new(config);
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        {
            let (model, stats, config, metrics) = (
                model.clone(),
                stats.clone(),
                config.clone(),
                metrics.clone(),
            );
            std::thread::Builder::new()
                .name("spindle-engine".into())
                .spawn(move || {
                    let ctx = match new_context(&model, &config) {
                        Ok(ctx) => ctx,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    StepLoop::new(&model, ctx, &config, stats, metrics).run(rx);
                })?;
        }
        ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("engine thread died while starting"))??;
        Ok(Self {
            tx,
            stats,
            model,
            config,
            metrics,
        })
    }

    /// Queue a job; its events arrive on the returned receiver. Dropping the
    /// receiver cancels the job at the next step.
    pub fn submit(&self, job: Job) -> Result<UnboundedReceiver<GenerateEvent>, SubmitError> {
        let result = self.try_submit(job);
        if let Err(e) = &result {
            self.metrics.rejected(match e {
                SubmitError::QueueFull | SubmitError::Stopped => Rejection::QueueFull,
                SubmitError::Draining => Rejection::Draining,
                SubmitError::PromptTooLong { .. } => Rejection::TooLong,
                SubmitError::EmptyPrompt => Rejection::Invalid,
            });
        }
        result
    }

    fn try_submit(&self, job: Job) -> Result<UnboundedReceiver<GenerateEvent>, SubmitError> {
        if self.stats.draining.load(Ordering::SeqCst) {
            return Err(SubmitError::Draining);
        }
        if job.tokens.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        if job.tokens.len() >= self.config.ctx_size as usize {
            return Err(SubmitError::PromptTooLong {
                tokens: job.tokens.len(),
                ctx: self.config.ctx_size,
            });
        }
        let waiting = self.stats.waiting.fetch_add(1, Ordering::SeqCst);
        let busy = self.stats.running.load(Ordering::SeqCst) >= self.config.max_seqs;
        if busy && waiting >= self.config.max_waiting {
            self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::QueueFull);
        }
        let (events, rx) = tokio::sync::mpsc::unbounded_channel();
        let seq = Seq::new(job, events, self.config.ctx_size, &self.model.eog_tokens);
        if self.tx.send(Command::Submit(Box::new(seq))).is_err() {
            self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::Stopped);
        }
        Ok(rx)
    }

    /// Cancel a job by id (no-op when unknown or finished).
    pub fn cancel(&self, id: &str) {
        let _ = self.tx.send(Command::Cancel(id.to_owned()));
    }

    /// Stop admitting new work (SIGTERM); in-flight work goes on.
    pub fn start_draining(&self) {
        self.stats.draining.store(true, Ordering::SeqCst);
    }

    /// Sequences running or waiting.
    pub fn in_flight(&self) -> u32 {
        self.stats.running.load(Ordering::SeqCst) + self.stats.waiting.load(Ordering::SeqCst)
    }
}

fn new_context<'m>(model: &'m Model, config: &EngineConfig) -> anyhow::Result<LlamaContext<'m>> {
    let n_batch = config.max_batch_tokens.max(config.max_seqs);
    let n_seq_max = config.max_seqs;
    // One KV stream per sequence (not llama.cpp's unified cache): attention
    // then spans a sequence's own cells, not every cell of every sequence,
    // which at 16 streams is the difference between beating llama-server
    // and trailing it.
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(config.ctx_size.saturating_mul(n_seq_max)))
        .with_n_batch(n_batch)
        .with_n_ubatch(n_batch)
        .with_n_seq_max(n_seq_max)
        .with_n_threads(config.threads)
        .with_n_threads_batch(config.threads)
        .with_kv_unified(false);
    model
        .llama
        .new_context(backend(), params)
        .map_err(|e| anyhow::anyhow!("cannot create a llama.cpp context: {e}"))
}

/// One request inside the engine, from submission to its last event.
struct Seq {
    id: String,
    events: UnboundedSender<GenerateEvent>,
    /// Prompt plus generated tokens. KV holds `tokens[..n_past]`.
    tokens: Vec<LlamaToken>,
    n_past: usize,
    prompt_len: usize,
    /// llama.cpp sequence id while admitted.
    seq_id: Option<i32>,
    sampler: Sampler,
    text: TextStream,
    max_tokens: u32,
    generated: u32,
    cached_tokens: u32,
    /// Token ids sampled since the last delta.
    unsent_ids: Vec<i32>,
    /// Tokens put in the current batch, and the batch index of its logits.
    in_batch: usize,
    logits_at: Option<i32>,
    arrived: Instant,
    first_step: Option<Instant>,
    first_token: Option<Instant>,
}

impl Seq {
    fn new(job: Job, events: UnboundedSender<GenerateEvent>, ctx_size: u32, eog: &[i32]) -> Self {
        let prompt_len = job.tokens.len();
        let room = (ctx_size as usize).saturating_sub(prompt_len) as u32;
        let max_tokens = job.sampling.max_tokens.map_or(room, |m| m.min(room));
        let text = TextStream::new(job.sampling.stop.clone());
        Self {
            id: job.id,
            events,
            tokens: job.tokens,
            n_past: 0,
            prompt_len,
            seq_id: None,
            sampler: if job.sampling.ignore_eos {
                Sampler::new(job.sampling).with_banned(eog.to_vec())
            } else {
                Sampler::new(job.sampling)
            },
            text,
            max_tokens,
            generated: 0,
            cached_tokens: 0,
            unsent_ids: Vec::new(),
            in_batch: 0,
            logits_at: None,
            arrived: Instant::now(),
            first_step: None,
            first_token: None,
        }
    }

    fn pending(&self) -> usize {
        self.tokens.len() - self.n_past
    }

    fn is_decoding(&self) -> bool {
        self.n_past >= self.prompt_len
    }

    fn send_text(&mut self, text: String) -> bool {
        if text.is_empty() && self.unsent_ids.is_empty() {
            return true;
        }
        let ids = std::mem::take(&mut self.unsent_ids);
        self.events
            .send(GenerateEvent::Delta {
                text,
                token_ids: ids,
            })
            .is_ok()
    }

    fn finish(&mut self, reason: FinishReason, metrics: &WorkerMetrics) {
        let tail = self.text.finish();
        if reason != FinishReason::Cancelled {
            self.send_text(tail);
        }
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

/// One llama.cpp sequence id and its own KV stream.
///
/// While a sequence runs in it the slot is busy; afterwards the KV stays as
/// a prefix-cache entry (`cached`) until the slot is reused.
#[derive(Default)]
struct Slot {
    /// Tokens whose KV an idle slot holds.
    cached: Vec<LlamaToken>,
    busy: bool,
    last_used: u64,
}

/// Copying a whole KV stream between slots costs a buffer copy: worth it only
/// when it saves recomputing at least this many prompt tokens.
const MIN_COPY_GAIN: usize = 16;

struct StepLoop<'m> {
    model: &'m Model,
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    config: EngineConfig,
    stats: Arc<EngineStats>,
    metrics: Arc<WorkerMetrics>,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    slots: Vec<Slot>,
    cancelled: HashSet<String>,
    tick: u64,
    /// (time, tokens generated in that step), for tokens/s.
    recent: VecDeque<(Instant, u32)>,
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl<'m> StepLoop<'m> {
    fn new(
        model: &'m Model,
        ctx: LlamaContext<'m>,
        config: &EngineConfig,
        stats: Arc<EngineStats>,
        metrics: Arc<WorkerMetrics>,
    ) -> Self {
        let n_batch = config.max_batch_tokens.max(config.max_seqs) as usize;
        Self {
            model,
            ctx,
            batch: LlamaBatch::new(n_batch, 1),
            config: config.clone(),
            stats,
            metrics,
            waiting: VecDeque::new(),
            running: Vec::new(),
            slots: (0..config.max_seqs).map(|_| Slot::default()).collect(),
            cancelled: HashSet::new(),
            tick: 0,
            recent: VecDeque::new(),
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Command>) {
        loop {
            let idle = self.running.is_empty() && self.waiting.is_empty();
            if idle {
                self.publish_stats(0);
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
            let generated = self.step();
            self.publish_stats(generated);
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Submit(seq) => self.waiting.push_back(*seq),
            Command::Cancel(id) => {
                self.cancelled.insert(id);
            }
        }
    }

    /// Finish every sequence that was cancelled or whose client went away.
    fn reap_cancelled(&mut self) {
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
    fn release(&mut self, s: &Seq) {
        if let Some(id) = s.seq_id {
            let _ = self.ctx.kv_cache_seq_rm(id, None, None);
            let slot = &mut self.slots[id as usize];
            slot.busy = false;
            slot.cached.clear();
        }
    }

    /// The tokens whose KV slot `id` holds now.
    fn slot_tokens(&self, id: usize) -> &[LlamaToken] {
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
    fn admit(&mut self) {
        while self.running.len() < self.slots.len() {
            let Some(mut s) = self.waiting.pop_front() else {
                return;
            };
            self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
            self.tick += 1;
            // Keep at least one token to decode: its logits start generation.
            let limit = s.tokens.len() - 1;
            let prefix =
                |this: &Self, id: usize| common_prefix(this.slot_tokens(id), &s.tokens).min(limit);
            // Extend an entry the request mostly covers; never overwrite a
            // long entry for a short match (a shared system prompt): take an
            // empty or the least recently used slot instead.
            let score = |this: &Self, i: usize| {
                let n = prefix(this, i);
                let extends = 2 * n >= this.slots[i].cached.len();
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
            let own = prefix(self, target);
            let best_other = (0..self.slots.len())
                .filter(|&i| i != target)
                .map(|i| (i, prefix(self, i)))
                .max_by_key(|&(_, n)| n)
                .filter(|&(_, n)| n >= own + MIN_COPY_GAIN);
            let id = target as i32;
            let reuse = match best_other {
                Some((src, n)) => {
                    // Cross-stream copies are whole-stream; trim the tail after.
                    let _ = self.ctx.kv_cache_seq_cp(src as i32, id, None, None);
                    self.slots[src].last_used = self.tick;
                    self.metrics.prefix_copies.increment(1);
                    n
                }
                None => own,
            };
            let _ = self.ctx.kv_cache_seq_rm(id, Some(reuse as u32), None);
            let slot = &mut self.slots[target];
            if reuse < slot.cached.len() {
                // Part or all of an idle slot's cached prefix is overwritten.
                self.metrics.cache_evictions.increment(1);
            }
            slot.busy = true;
            slot.cached.clear();
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

    /// Build and run one decode; sample every sequence whose prompt is done.
    /// Returns the number of tokens generated.
    fn step(&mut self) -> u32 {
        if self.running.is_empty() {
            return 0;
        }
        loop {
            self.fill_batch();
            if self.batch.n_tokens() == 0 {
                return 0;
            }
            let started = Instant::now();
            match self.ctx.decode(&mut self.batch) {
                Ok(()) => {
                    self.metrics
                        .step_seconds
                        .record(started.elapsed().as_secs_f64());
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
            if s.in_batch > 0 {
                s.n_past += s.in_batch;
                s.first_step.get_or_insert(now);
            }
            let finished = match s.logits_at.take() {
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

    /// Batch size and its split into prompt (prefill) and decode tokens.
    fn record_batch(&self) {
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
    fn fill_batch(&mut self) {
        self.batch.clear();
        let mut budget = self.config.max_batch_tokens.max(self.config.max_seqs) as usize;
        for s in self.running.iter_mut() {
            s.in_batch = 0;
            s.logits_at = None;
        }
        for decoding in [true, false] {
            for s in self
                .running
                .iter_mut()
                .filter(|s| s.is_decoding() == decoding)
            {
                s.in_batch = s.pending().min(budget);
                budget -= s.in_batch;
            }
        }
        self.running.sort_unstable_by_key(|s| s.seq_id);
        for s in self.running.iter_mut() {
            let Some(seq_id) = s.seq_id else { continue };
            for pos in s.n_past..s.n_past + s.in_batch {
                let last = pos + 1 == s.tokens.len();
                if self
                    .batch
                    .add(s.tokens[pos], pos as i32, &[seq_id], last)
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
    fn make_room(&mut self) -> bool {
        let Some(i) = (0..self.running.len()).max_by_key(|&i| self.running[i].tokens.len()) else {
            return false;
        };
        let mut s = self.running.swap_remove(i);
        s.finish(FinishReason::Length, &self.metrics);
        self.release(&s);
        !self.running.is_empty()
    }

    fn fail_all(&mut self, message: &str) {
        for s in std::mem::take(&mut self.running) {
            let _ = s.events.send(GenerateEvent::Error {
                code: FailureCode::ServerError,
                message: message.into(),
            });
            self.release(&s);
        }
    }

    /// Keep a finished sequence's KV in its slot as a prefix-cache entry.
    fn retain(&mut self, s: Seq) {
        let Some(id) = s.seq_id else { return };
        let mut tokens = s.tokens;
        tokens.truncate(s.n_past);
        self.tick += 1;
        let slot = &mut self.slots[id as usize];
        slot.busy = false;
        slot.cached = tokens;
        slot.last_used = self.tick;
    }

    fn cached_cells(&self) -> usize {
        self.slots.iter().map(|s| s.cached.len()).sum()
    }

    fn publish_stats(&mut self, generated: u32) {
        let now = Instant::now();
        self.recent.push_back((now, generated));
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| now - *t > Duration::from_secs(5))
        {
            self.recent.pop_front();
        }
        let span = self
            .recent
            .front()
            .map_or(0.0, |(t, _)| (now - *t).as_secs_f64());
        let total: u32 = self.recent.iter().map(|(_, n)| n).sum();
        let tps = if span > 0.0 {
            f64::from(total) / span
        } else {
            0.0
        };
        let running_cells: usize = self.running.iter().map(|s| s.n_past).sum();
        let st = &self.stats;
        st.tokens_per_second.store(tps.to_bits(), Ordering::Relaxed);
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

/// Sample one token for `s`, stream what it releases, and say whether `s` is done.
fn sample_next(model: &Model, s: &mut Seq, logits: &[f32], now: Instant) -> Option<FinishReason> {
    let token = s.sampler.sample(logits);
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
    let release = s.text.push(&model.piece(token));
    let (text, stopped) = match release {
        Release::Text(t) => (t, false),
        Release::Stopped(t) => (t, true),
    };
    if !text.is_empty() && !s.send_text(text) {
        return Some(FinishReason::Cancelled);
    }
    if stopped {
        return Some(FinishReason::Stop);
    }
    if s.generated >= s.max_tokens {
        return Some(FinishReason::Length);
    }
    None
}
