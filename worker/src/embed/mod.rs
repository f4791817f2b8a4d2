//! Embeddings: a second llama.cpp context (embeddings on, pooled, one
//! unified KV cache) on its own OS thread, so an embedding decode never
//! holds up a generation step (the engine thread and its context are not
//! touched). [`Embedder`] is the handle async code holds; `batcher` packs
//! the inputs of every waiting request, each its own sequence id, into one
//! decode of at most `--embedding-ctx-size` tokens; `request` is
//! `Worker::embed` (validation, tokenizing on the blocking pool, the
//! response).
//!
//! Pooling is the model's when its GGUF states mean, CLS or last pooling
//! (llama.cpp's default for it), else mean pooling (a causal chat model such
//! as SmolLM2 states none). Vectors are L2-normalized.

mod batcher;
mod request;

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

/// Sizing of the embedding context.
#[derive(Debug, Clone)]
pub struct EmbedConfig {
    /// The longest input in tokens, and the most tokens one decode holds
    /// (its KV cells and batch size).
    pub ctx_size: u32,
    pub threads: i32,
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
struct Job {
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

/// A handle on the embedding thread; clone freely.
#[derive(Clone)]
pub struct Embedder {
    tx: mpsc::Sender<Job>,
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
            tx,
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
        self.tx
            .send(Job {
                inputs,
                reply,
                _queued: queued,
            })
            .map_err(|_| EmbedError::Stopped)?;
        rx.await.map_err(|_| EmbedError::Stopped)?
    }
}

fn new_context<'m>(
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
