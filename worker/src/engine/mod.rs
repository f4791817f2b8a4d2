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
//!
//! With LoRA adapters, a step decodes one batch per adapter set (`lora`).
//! With `--embedding-mode interleaved` the thread also owns the embeddings
//! context and runs an embedding decode after each step, within what the
//! step left of the token budget (see `crate::embed`).

use crate::metrics::{Rejection, WorkerMetrics};
use crate::model::{backend, Model};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::token::LlamaToken;
use spindle_proto::{GenerateEvent, SamplingParams};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedReceiver;

mod lora;
mod reuse;
mod seq;
mod step;

use seq::Seq;
use step::StepLoop;

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
    /// Flash attention and the KV cache's element types.
    pub kv: crate::kv::KvSettings,
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
    #[error("the prompt is {bytes} bytes, more than a {ctx}-token context can hold (no token stands for more than {max_token_bytes} bytes)")]
    PromptTooLarge {
        bytes: usize,
        ctx: u32,
        max_token_bytes: usize,
    },
    #[error("even without its older messages the prompt does not fit the {ctx}-token context beside {room} tokens of output (system messages and the newest user turn are never dropped)")]
    NoRoom { ctx: u32, room: usize },
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
    /// f64 bits: the slowest step of the last few seconds, in seconds.
    step_seconds_max: AtomicU64,
    /// Turns of the engine loop (steps, and idle wake-ups every second):
    /// it moves while the engine is alive.
    pub beats: AtomicU64,
    pub draining: AtomicBool,
}

impl EngineStats {
    pub fn tokens_per_second(&self) -> f64 {
        f64::from_bits(self.tokens_per_second.load(Ordering::Relaxed))
    }

    pub fn step_seconds_max(&self) -> f64 {
        f64::from_bits(self.step_seconds_max.load(Ordering::Relaxed))
    }
}

enum Command {
    Submit(Box<Seq>),
    Cancel(String),
    Embed(crate::embed::Job),
}

/// Where interleaved embedding requests go: the engine thread's queue.
#[derive(Clone)]
pub(crate) struct EmbedSink(mpsc::Sender<Command>);

impl EmbedSink {
    /// False when the engine has stopped.
    pub(crate) fn send(&self, job: crate::embed::Job) -> bool {
        self.0.send(Command::Embed(job)).is_ok()
    }
}

/// A handle on the engine thread; clone freely.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::Sender<Command>,
    pub stats: Arc<EngineStats>,
    pub model: Arc<Model>,
    pub config: Arc<EngineConfig>,
    pub metrics: Arc<WorkerMetrics>,
    /// Whether one request may combine several LoRA adapters (see `lora`).
    pub combines_adapters: bool,
}

/// A request ready for the engine.
pub struct Job {
    pub id: String,
    pub tokens: Vec<LlamaToken>,
    pub sampling: SamplingParams,
    /// Reuse only prefix-cache entries made with the same salt.
    pub cache_salt: Option<String>,
    /// The LoRA adapter it decodes under; cache entries are reused only
    /// within the same set.
    pub lora: crate::lora::LoraSet,
    /// The grammar output must follow (structured output, forced call).
    pub constraint: Option<crate::grammar::Constraint>,
    /// Parses tool calls out of the output when tools are offered.
    pub tools: Option<crate::tools::parser::ToolParser>,
}

impl Engine {
    /// Build the context on a new thread and start the step loop there.
    pub fn start(
        model: Arc<Model>,
        adapters: Vec<llama_cpp_2::model::LlamaLoraAdapter>,
        config: EngineConfig,
        metrics: Arc<WorkerMetrics>,
        interleaved_embeddings: Option<crate::embed::EmbedConfig>,
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
                    let embeds = match interleaved_embeddings.map(|c| {
                        let pooling = crate::embed::pooling_of(&model);
                        crate::embed::new_context(&model, &c, pooling)
                            .map(|ctx| crate::embed::Batcher::new(ctx, &c, metrics.clone()))
                            .map(|b| crate::embed::Interleaved::new(b, c.share))
                    }) {
                        None => None,
                        Some(Ok(b)) => Some(b),
                        Some(Err(e)) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let loras = lora::Loras::new(adapters, &ctx, &model);
                    let _ = ready_tx.send(Ok(loras.combines()));
                    StepLoop::new(&model, ctx, &config, stats, metrics, loras)
                        .with_embeddings(embeds)
                        .run(rx);
                })?;
        }
        let combines_adapters = ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("engine thread died while starting"))??;
        Ok(Self {
            combines_adapters,
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
                SubmitError::PromptTooLong { .. }
                | SubmitError::PromptTooLarge { .. }
                | SubmitError::NoRoom { .. } => Rejection::TooLong,
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

    /// The queue for interleaved embedding requests.
    pub(crate) fn embed_sink(&self) -> EmbedSink {
        EmbedSink(self.tx.clone())
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
    let params = config.kv.apply(params);
    model
        .llama
        .new_context(backend(), params)
        .map_err(|e| anyhow::anyhow!("cannot create a llama.cpp context: {e}"))
}
