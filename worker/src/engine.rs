//! The continuous-batching engine.
//!
//! One OS thread owns the llama.cpp context (unified KV cache) and runs the
//! step loop; async code talks to it through [`Engine`], a cheap handle that
//! sends commands over a channel and gets each request's events back on a
//! tokio channel.
//!
//! Each step is ONE `decode` holding the next token of every decoding sequence
//! plus chunks of waiting prompts, within `max_batch_tokens`. Requests join and
//! leave between steps. Finished sequences stay in the KV cache as prefix-cache
//! entries; a new request starts from the longest common token prefix of any
//! retained or running sequence (taking a retained sequence over, or copying a
//! running one's cells), and entries are evicted least-recently-used when the
//! cache runs short of cells or sequence ids.

use crate::model::{backend, Model};
use crate::sampler::Sampler;
use crate::text::{Release, TextStream};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::DecodeError;
use spindle_proto::{FinishReason, GenerateEvent, SamplingParams, Timings, Usage};
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
    /// KV cells in all (shared by every sequence: unified cache).
    pub ctx_size: u32,
    /// Sequences decoded together.
    pub max_seqs: u32,
    /// Tokens in one decode step (decode tokens first, then prompt chunks).
    pub max_batch_tokens: u32,
    /// Requests allowed to wait for a slot; more get `QueueFull`.
    pub max_waiting: u32,
    pub threads: i32,
    /// Prefix-cache entries kept beside running sequences.
    pub max_retained: u32,
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
}

/// A request ready for the engine.
pub struct Job {
    pub id: String,
    pub tokens: Vec<LlamaToken>,
    pub sampling: SamplingParams,
}

impl Engine {
    /// Build the context on a new thread and start the step loop there.
    pub fn start(model: Arc<Model>, config: EngineConfig) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(EngineStats::default());
        let config = Arc::new(config);
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        {
            let (model, stats, config) = (model.clone(), stats.clone(), config.clone());
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
                    StepLoop::new(&model, ctx, &config, stats).run(rx);
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
        })
    }

    /// Queue a job; its events arrive on the returned receiver. Dropping the
    /// receiver cancels the job at the next step.
    pub fn submit(&self, job: Job) -> Result<UnboundedReceiver<GenerateEvent>, SubmitError> {
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
    let n_seq_max = (config.max_seqs + config.max_retained).min(256);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(config.ctx_size))
        .with_n_batch(n_batch)
        .with_n_ubatch(n_batch)
        .with_n_seq_max(n_seq_max)
        .with_n_threads(config.threads)
        .with_n_threads_batch(config.threads)
        .with_kv_unified(true);
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

    fn finish(&mut self, reason: FinishReason) {
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
        metrics::counter!("spindle_worker_requests_total", "finish_reason" => reason.as_str())
            .increment(1);
        metrics::counter!("spindle_worker_prompt_tokens_total").increment(self.prompt_len as u64);
        metrics::counter!("spindle_worker_cached_tokens_total")
            .increment(u64::from(self.cached_tokens));
        metrics::histogram!("spindle_worker_ttft_seconds").record(timings.ttft_ms / 1000.0);
    }
}

/// A finished sequence kept for its KV: a prefix-cache entry.
struct Retained {
    seq_id: i32,
    tokens: Vec<LlamaToken>,
    last_used: u64,
}

struct StepLoop<'m> {
    model: &'m Model,
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    config: EngineConfig,
    stats: Arc<EngineStats>,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    retained: Vec<Retained>,
    free_ids: Vec<i32>,
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
    ) -> Self {
        let n_ids = (config.max_seqs + config.max_retained).min(256) as i32;
        let n_batch = config.max_batch_tokens.max(config.max_seqs) as usize;
        Self {
            model,
            ctx,
            batch: LlamaBatch::new(n_batch, 1),
            config: config.clone(),
            stats,
            waiting: VecDeque::new(),
            running: Vec::new(),
            retained: Vec::new(),
            free_ids: (0..n_ids).rev().collect(),
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
                    s.finish(FinishReason::Cancelled);
                }
            } else {
                i += 1;
            }
        }
        let mut i = 0;
        while i < self.running.len() {
            if gone(&self.running[i], &self.cancelled) {
                let mut s = self.running.swap_remove(i);
                s.finish(FinishReason::Cancelled);
                self.release(&s);
            } else {
                i += 1;
            }
        }
        self.cancelled.clear();
    }

    /// Drop a sequence's KV and give its id back.
    fn release(&mut self, s: &Seq) {
        if let Some(id) = s.seq_id {
            let _ = self.ctx.kv_cache_seq_rm(id, None, None);
            self.free_ids.push(id);
        }
    }

    fn evict_lru(&mut self) -> bool {
        let Some((i, _)) = self
            .retained
            .iter()
            .enumerate()
            .min_by_key(|(_, r)| r.last_used)
        else {
            return false;
        };
        let r = self.retained.swap_remove(i);
        let _ = self.ctx.kv_cache_seq_rm(r.seq_id, None, None);
        self.free_ids.push(r.seq_id);
        metrics::counter!("spindle_worker_prefix_evictions_total").increment(1);
        true
    }

    /// Move waiting sequences into free slots, each starting from the longest cached prefix.
    fn admit(&mut self) {
        while self.running.len() < self.config.max_seqs as usize {
            let Some(mut s) = self.waiting.pop_front() else {
                return;
            };
            self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
            self.tick += 1;
            // Keep at least one token to decode: its logits start generation.
            let limit = s.tokens.len() - 1;
            let best_retained = self
                .retained
                .iter()
                .enumerate()
                .map(|(i, r)| (i, common_prefix(&r.tokens, &s.tokens).min(limit)))
                .max_by_key(|&(_, n)| n);
            let best_running = self
                .running
                .iter()
                .filter_map(|r| {
                    let n = common_prefix(&r.tokens[..r.n_past], &s.tokens).min(limit);
                    Some((r.seq_id?, n))
                })
                .max_by_key(|&(_, n)| n);
            let from_retained = best_retained.map_or(0, |b| b.1);
            let from_running = best_running.map_or(0, |b| b.1);
            // Take a retained entry over when the request covers most of it;
            // otherwise copy the prefix (cells are shared, not duplicated) so
            // the entry stays for others, e.g. a common system prompt.
            let take_over = best_retained.filter(|&(i, n)| {
                n > 0 && n >= from_running && 2 * n >= self.retained[i].tokens.len()
            });
            let reuse = if let Some((i, n)) = take_over {
                let r = self.retained.swap_remove(i);
                let _ = self.ctx.kv_cache_seq_rm(r.seq_id, Some(n as u32), None);
                s.seq_id = Some(r.seq_id);
                n
            } else {
                let mut source = if from_retained > from_running {
                    best_retained.map(|(i, n)| {
                        // Most recently used: eviction below spares it if it can.
                        self.retained[i].last_used = self.tick;
                        (self.retained[i].seq_id, n)
                    })
                } else {
                    best_running
                };
                if self.free_ids.is_empty() {
                    if !self.evict_lru() {
                        // Every id is running: impossible while ids > max_seqs, but never panic.
                        self.waiting.push_front(s);
                        self.stats.waiting.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    let alive = |id: i32| {
                        self.retained.iter().any(|r| r.seq_id == id)
                            || self.running.iter().any(|r| r.seq_id == Some(id))
                    };
                    source = source.filter(|&(src, _)| alive(src));
                }
                let id = self.free_ids.pop().unwrap_or_default();
                s.seq_id = Some(id);
                match source {
                    Some((src, n)) if n > 0 => {
                        let _ = self.ctx.kv_cache_seq_cp(src, id, Some(0), Some(n as u32));
                        n
                    }
                    _ => 0,
                }
            };
            // A preempted sequence comes back with its generated tokens: those
            // were never "prompt", so only count what the caller sent.
            if s.first_step.is_none() {
                s.cached_tokens = reuse.min(s.prompt_len) as u32;
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
                    metrics::histogram!("spindle_worker_step_seconds")
                        .record(started.elapsed().as_secs_f64());
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
                s.finish(reason);
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

    /// Decode tokens first (one per decoding sequence), then prompt chunks in admission order.
    fn fill_batch(&mut self) {
        self.batch.clear();
        let mut budget = self.config.max_batch_tokens.max(self.config.max_seqs) as usize;
        let order: Vec<usize> = {
            let (dec, pre): (Vec<usize>, Vec<usize>) =
                (0..self.running.len()).partition(|&i| self.running[i].is_decoding());
            dec.into_iter().chain(pre).collect()
        };
        for i in order {
            let s = &mut self.running[i];
            s.in_batch = 0;
            s.logits_at = None;
            let n = s.pending().min(budget);
            let Some(seq_id) = s.seq_id else { continue };
            for k in 0..n {
                let pos = s.n_past + k;
                let last = pos + 1 == s.tokens.len();
                if self
                    .batch
                    .add(s.tokens[pos], pos as i32, &[seq_id], last)
                    .is_err()
                {
                    break;
                }
                s.in_batch += 1;
                if last {
                    s.logits_at = Some(self.batch.n_tokens() - 1);
                }
            }
            budget -= s.in_batch;
        }
    }

    /// The KV cache is full: evict a prefix-cache entry, else preempt the
    /// newest sequence (it is recomputed later, its output unchanged), else
    /// end the only sequence for length. Returns false when nothing can run.
    fn make_room(&mut self) -> bool {
        if self.evict_lru() {
            return true;
        }
        if self.running.len() > 1 {
            if let Some(mut s) = self.running.pop() {
                self.release(&s);
                s.seq_id = None;
                s.n_past = 0;
                metrics::counter!("spindle_worker_preemptions_total").increment(1);
                self.waiting.push_front(s);
                self.stats.waiting.fetch_add(1, Ordering::SeqCst);
            }
            return true;
        }
        if let Some(mut s) = self.running.pop() {
            s.finish(FinishReason::Length);
            self.release(&s);
        }
        false
    }

    fn fail_all(&mut self, message: &str) {
        for s in self.running.drain(..) {
            let _ = s.events.send(GenerateEvent::Error {
                code: "server_error".into(),
                message: message.into(),
            });
            if let Some(id) = s.seq_id {
                let _ = self.ctx.kv_cache_seq_rm(id, None, None);
                self.free_ids.push(id);
            }
        }
    }

    /// Keep a finished sequence's KV as a prefix-cache entry.
    fn retain(&mut self, s: Seq) {
        let Some(seq_id) = s.seq_id else { return };
        let mut tokens = s.tokens;
        tokens.truncate(s.n_past);
        self.tick += 1;
        self.retained.push(Retained {
            seq_id,
            tokens,
            last_used: self.tick,
        });
        while self.retained.len() > self.config.max_retained as usize
            || self.cached_cells() > self.config.ctx_size as usize / 2
        {
            if !self.evict_lru() {
                break;
            }
        }
    }

    fn cached_cells(&self) -> usize {
        self.retained.iter().map(|r| r.tokens.len()).sum()
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
        st.retained
            .store(self.retained.len() as u32, Ordering::Relaxed);
        metrics::counter!("spindle_worker_generated_tokens_total").increment(u64::from(generated));
        metrics::gauge!("spindle_worker_running").set(self.running.len() as f64);
        metrics::gauge!("spindle_worker_waiting").set(self.waiting.len() as f64);
        metrics::gauge!("spindle_worker_kv_used_cells")
            .set((running_cells + self.cached_cells()) as f64);
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
