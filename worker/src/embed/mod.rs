//! Embeddings: a second llama.cpp context (embeddings on, pooled, one
//! unified KV cache), scheduled one of two ways ([`EmbedMode`]):
//! `separate`, on its own OS thread, so an embedding decode never holds up
//! a generation step (but on a CPU the two compete for the cores); or
//! `interleaved`, on the engine thread between generation steps, each
//! embedding decode within what the step left of `--max-batch-tokens` and,
//! while sequences generate, `--embedding-share` of the thread's time (at
//! least one input: see `interleave`). [`Embedder`] is the handle async
//! code holds; `batcher` packs the inputs of every waiting request, each
//! its own sequence id, into one decode of at most `--embedding-ctx-size`
//! tokens; `request` is `Worker::embed` (validation, tokenizing on the
//! blocking pool, the response).
//!
//! Pooling is the model's when its GGUF states mean, CLS or last pooling
//! (llama.cpp's default for it), else mean pooling (a causal chat model such
//! as SmolLM2 states none). Vectors are L2-normalized.

mod batcher;
mod interleave;
mod request;

pub(crate) use batcher::Batcher;
pub(crate) use interleave::Interleaved;

use crate::metrics::WorkerMetrics;
use crate::model::{backend, Model};
use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::token::LlamaToken;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use tokio::sync::oneshot;

/// Sequences (inputs) in one embedding decode at most.
pub const MAX_SEQS_PER_DECODE: u32 = 64;

/// Tokens waiting for the embedding thread at most (all requests); beyond
/// that, 503 and Retry-After. Four requests of the largest size.
pub const MAX_QUEUED_TOKENS: usize = 4 * spindle_proto::openai::embeddings::MAX_REQUEST_TOKENS;

/// Sizing of the embedding context, and where it runs.
#[derive(Debug, Clone)]
pub struct EmbedConfig {
    /// The longest input in tokens, and the most tokens one decode holds
    /// (its KV cells and batch size).
    pub ctx_size: u32,
    /// Its CPU threads (`separate` only: interleaved, the engine's).
    pub threads: i32,
    pub mode: EmbedMode,
    /// Interleaved: the part of the engine thread's time embeddings get
    /// while sequences generate (see `interleave`).
    pub share: f64,
}

/// Where embedding decodes run (`--embedding-mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum EmbedMode {
    /// On their own thread, beside generation steps.
    #[default]
    Separate,
    /// On the engine thread, between generation steps, within the step's
    /// token budget.
    Interleaved,
}

/// Why embedding did not happen.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EmbedError {
    #[error("the server is overloaded: too many inputs are waiting to be embedded")]
    QueueFull,
    #[error("the embedding thread has stopped")]
    Stopped,
    #[error("embedding failed: {0}")]
    Decode(String),
}

/// One request's inputs and where its vectors go.
pub(crate) struct Job {
    inputs: Vec<Vec<LlamaToken>>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, EmbedError>>,
    _queued: Queued,
}

/// A job's share of the queue bound, given back when the job is dropped
/// (answered, failed, or its caller gone).
struct Queued {
    counter: Arc<AtomicUsize>,
    tokens: usize,
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.tokens, Ordering::SeqCst);
    }
}

/// Where jobs go: the embedding thread, or the engine thread.
#[derive(Clone)]
enum Sink {
    Thread(mpsc::Sender<Job>),
    Engine(crate::engine::EmbedSink),
}

/// A handle on the embedding decodes; clone freely.
#[derive(Clone)]
pub struct Embedder {
    tx: Sink,
    queued: Arc<AtomicUsize>,
    pub config: Arc<EmbedConfig>,
    /// Length of every vector (the model's output embedding width).
    pub dims: usize,
    pub pooling: LlamaPoolingType,
}

/// The pooling to embed with: what the GGUF states when it is a pooling
/// that gives one vector per input, else mean.
pub fn pooling_of(model: &Model) -> LlamaPoolingType {
    let arch = model
        .llama
        .meta_val_str("general.architecture")
        .unwrap_or_default();
    let stated = model
        .llama
        .meta_val_str(&format!("{arch}.pooling_type"))
        .ok()
        .and_then(|v| v.trim().parse::<i32>().ok())
        .map(LlamaPoolingType::from);
    match stated {
        Some(p @ (LlamaPoolingType::Mean | LlamaPoolingType::Cls | LlamaPoolingType::Last)) => p,
        _ => LlamaPoolingType::Mean,
    }
}

impl Embedder {
    /// Embeddings decoded by the engine thread, interleaved with generation
    /// (it built the context: see `Engine::start`).
    pub(crate) fn interleaved(
        model: &Model,
        config: EmbedConfig,
        sink: crate::engine::EmbedSink,
    ) -> Self {
        Self {
            tx: Sink::Engine(sink),
            queued: Arc::new(AtomicUsize::new(0)),
            config: Arc::new(config),
            dims: usize::try_from(model.llama.n_embd_out()).unwrap_or(0),
            pooling: pooling_of(model),
        }
    }

    /// Build the embedding context on a new thread and start serving there.
    pub fn start(
        model: Arc<Model>,
        config: EmbedConfig,
        metrics: Arc<WorkerMetrics>,
    ) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let pooling = pooling_of(&model);
        let dims = usize::try_from(model.llama.n_embd_out()).unwrap_or(0);
        let config = Arc::new(config);
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        {
            let config = config.clone();
            std::thread::Builder::new()
                .name("spindle-embed".into())
                .spawn(move || {
                    let ctx = match new_context(&model, &config, pooling) {
                        Ok(ctx) => ctx,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    batcher::Batcher::new(ctx, &config, metrics).run(rx);
                })?;
        }
        ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("embedding thread died while starting"))??;
        Ok(Self {
            tx: Sink::Thread(tx),
            queued: Arc::new(AtomicUsize::new(0)),
            config,
            dims,
            pooling,
        })
    }

    /// The normalized vectors of `inputs` (each at most `ctx_size` tokens,
    /// none empty), in order. Dropping the future drops the work not yet
    /// decoded.
    pub async fn embed(&self, inputs: Vec<Vec<LlamaToken>>) -> Result<Vec<Vec<f32>>, EmbedError> {
        let tokens: usize = inputs.iter().map(Vec::len).sum();
        let before = self.queued.fetch_add(tokens, Ordering::SeqCst);
        let queued = Queued {
            counter: self.queued.clone(),
            tokens,
        };
        // An idle thread takes any one request the worker accepted.
        if before > 0 && before + tokens > MAX_QUEUED_TOKENS {
            return Err(EmbedError::QueueFull);
        }
        let (reply, rx) = oneshot::channel();
        let job = Job {
            inputs,
            reply,
            _queued: queued,
        };
        let sent = match &self.tx {
            Sink::Thread(tx) => tx.send(job).is_ok(),
            Sink::Engine(engine) => engine.send(job),
        };
        if !sent {
            return Err(EmbedError::Stopped);
        }
        rx.await.map_err(|_| EmbedError::Stopped)?
    }
}

pub(crate) fn new_context<'m>(
    model: &'m Model,
    config: &EmbedConfig,
    pooling: LlamaPoolingType,
) -> anyhow::Result<LlamaContext<'m>> {
    let n = config.ctx_size;
    // One unified cache of `n` cells shared by the decode's sequences, and
    // a batch of the same size in one micro-batch: a pooled sequence must
    // be decoded whole in one ubatch, or its pooling would see only a part.
    let params = LlamaContextParams::default()
        .with_embeddings(true)
        .with_pooling_type(pooling)
        .with_n_ctx(NonZeroU32::new(n))
        .with_n_batch(n)
        .with_n_ubatch(n)
        .with_n_seq_max(MAX_SEQS_PER_DECODE)
        .with_kv_unified(true)
        .with_n_threads(config.threads)
        .with_n_threads_batch(config.threads);
    model
        .llama
        .new_context(backend(), params)
        .map_err(|e| anyhow::anyhow!("cannot create the llama.cpp embedding context: {e}"))
}
