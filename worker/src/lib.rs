//! Spindle's worker: a continuous-batching llama.cpp engine behind HTTP.
//!
//! - [`model_source`] finds the GGUF file (`--model`, default model, downloads);
//! - [`model`] loads it and tokenizes with the model's [`template`] (or
//!   `--chat-template`'s);
//! - [`kv`] checks the KV cache's settings (flash attention, cache types);
//! - [`embed`] embeds inputs on a second context and thread (`/v1/embeddings`);
//! - [`engine`] runs the one-thread step loop, [`sampler`] picks tokens
//!   (within a [`grammar`] when the output is constrained) and [`text`]
//!   turns them into streamable text, with [`logprobs`] for sequences
//!   that ask for them;
//! - [`tools`] shows function tools to the model and parses its calls;
//! - [`lora`] loads `--lora` adapters and resolves a request's choice;
//! - [`truncation`] drops a chat's oldest messages to fit (`auto`);
//! - [`api`] serves it all over HTTP, with [`error`] the one error mapping.

pub mod api;
pub mod config;
pub mod embed;
pub mod engine;
pub mod error;
pub mod grammar;
pub mod kv;
pub mod logprobs;
pub mod lora;
pub mod metrics;
pub mod model;
pub mod model_source;
pub mod sampler;
pub mod template;
pub mod text;
pub mod tools;
pub mod truncation;

use engine::{Engine, Job, SubmitError};
use error::WorkerError;
use futures::Stream;
use grammar::Constraint;
use llama_cpp_2::token::LlamaToken;
use metrics::{Rejection, WorkerMetrics};
use model::Model;
use spindle_proto::tools::FunctionTool;
use spindle_proto::{
    ChatMessage, GenerateEvent, GenerateRequest, LoadReport, PromptInput, Truncation,
};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tools::parser::ToolParser;
use tools::ToolFormat;

pub use config::WorkerConfig;

/// A loaded model with its running engine; cheap to clone.
#[derive(Clone)]
pub struct Worker {
    pub engine: Engine,
    /// Embeddings, on their own context and thread.
    pub embedder: embed::Embedder,
    /// Names clients use for the model: `--served-model-name` (first one
    /// reported), else the file name.
    names: Arc<Vec<String>>,
    /// What `/v1/models` lists: the names, then `name:adapter` for each
    /// `--lora` adapter.
    listed: Arc<Vec<String>>,
    /// The `--lora` adapters' names, in the engine's order.
    adapters: Arc<Vec<String>>,
    /// Bounds the prompts being rendered and tokenized at once (on Tokio's
    /// blocking pool, never on the async runtime's threads).
    tokenizing: Arc<tokio::sync::Semaphore>,
}

/// Prompts rendered and tokenized at once: one per core, at least two.
fn tokenizer_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

impl Worker {
    /// Resolve and load the model, then start the engine thread.
    pub async fn start(config: &WorkerConfig) -> anyhow::Result<Self> {
        config.validate()?;
        let path = model_source::resolve(config.model.as_deref()).await?;
        let chat_template = match &config.chat_template {
            Some(file) => Some(template::TemplateFile::read(file).await?),
            None => None,
        };
        tracing::info!(path = %path.display(), "loading model");
        let options = config.load_options();
        let specs = config.lora.clone();
        let (mut model, adapters) = tokio::task::spawn_blocking(move || {
            let mut model = Model::load(&path, options, chat_template)?;
            let adapters = lora::load(&mut model.llama, &specs)?;
            anyhow::Ok((model, adapters))
        })
        .await??;
        config.kv().validate_for(kv::head_size(&model.llama))?;
        let names = config.served_names(&model.name);
        let adapter_names: Vec<String> = adapters.iter().map(|(n, _)| n.clone()).collect();
        let mut listed = names.clone();
        for base in &names {
            for a in &adapter_names {
                listed.push(spindle_proto::lora::model_id(base, a));
            }
        }
        let engine_config = config.engine();
        let metrics = Arc::new(WorkerMetrics::new(
            &names[0],
            engine_config.max_seqs,
            engine_config.max_waiting,
        ));
        model.tool_format = ToolFormat::choose(config.tool_call_format, &model.template_source);
        let tool_format = model.tool_format;
        let model = Arc::new(model);
        let adapters = adapters.into_iter().map(|(_, a)| a).collect();
        let embed_config = config.embed();
        let (engine, embedder) = match embed_config.mode {
            embed::EmbedMode::Separate => {
                let embedder =
                    embed::Embedder::start(model.clone(), embed_config, metrics.clone())?;
                let engine = Engine::start(model, adapters, engine_config, metrics, None)?;
                (engine, embedder)
            }
            embed::EmbedMode::Interleaved => {
                let engine = Engine::start(
                    model.clone(),
                    adapters,
                    engine_config,
                    metrics,
                    Some(embed_config.clone()),
                )?;
                let sink = engine.embed_sink();
                let embedder = embed::Embedder::interleaved(&model, embed_config, sink);
                (engine, embedder)
            }
        };
        tracing::info!(
            model = %names[0],
            ctx = config.ctx_size,
            max_seqs = config.max_seqs,
            threads = config.threads(),
            ?tool_format,
            embedding_ctx = config.embedding_ctx_size,
            embedding_mode = ?config.embedding_mode,
            embedding_dims = embedder.dims,
            pooling = ?embedder.pooling,
            adapters = adapter_names.len(),
            flash_attn = ?config.flash_attn,
            cache_type_k = config.cache_type_k.name(),
            cache_type_v = config.cache_type_v.name(),
            "engine ready"
        );
        Ok(Self {
            engine,
            embedder,
            names: Arc::new(names),
            listed: Arc::new(listed),
            adapters: Arc::new(adapter_names),
            tokenizing: Arc::new(tokio::sync::Semaphore::new(tokenizer_threads())),
        })
    }

    /// The name the worker reports (the first served name).
    pub fn model_name(&self) -> &str {
        &self.names[0]
    }

    /// Every name the model is served under, then each adapter's
    /// `name:adapter` model id.
    pub fn model_names(&self) -> &[String] {
        &self.listed
    }

    /// Whether `name` is one of the served names or adapter model ids.
    pub fn serves(&self, name: &str) -> bool {
        self.listed.iter().any(|n| n == name)
    }

    /// The adapter a model id names (`base:adapter`), if it is one.
    fn model_adapter<'a>(&self, model: Option<&'a str>) -> Option<&'a str> {
        let m = model?;
        if self.names.iter().any(|n| n == m) {
            return None;
        }
        spindle_proto::lora::split_model(m).map(|(_, adapter)| adapter)
    }

    /// The syntax this worker's model writes tool calls in.
    pub fn tool_format(&self) -> ToolFormat {
        self.engine.model.tool_format
    }

    /// Tokenize and submit a request; its events follow on the stream.
    /// Dropping the stream cancels the request. A prompt too large for the
    /// context in bytes is refused before any work (a chat under
    /// `truncation: auto` drops its oldest messages by the same bound
    /// instead); the rest (rendering, tokenizing, fitting, building an
    /// output grammar) runs on the blocking pool, a bounded number at once.
    pub async fn generate(
        &self,
        req: GenerateRequest,
    ) -> Result<impl Stream<Item = GenerateEvent> + Send + Unpin + 'static, WorkerError> {
        let ctx = self.engine.config.ctx_size;
        let max_token_bytes = self.engine.model.max_token_bytes;
        let bytes = prompt_bytes(&req);
        let fits_later = matches!(
            (&req.input, req.truncation),
            (PromptInput::Messages(_), Truncation::Auto)
        );
        if !fits_later && bytes > (ctx as usize).saturating_mul(max_token_bytes) {
            self.engine.metrics.rejected(Rejection::TooLong);
            return Err(WorkerError::Submit(SubmitError::PromptTooLarge {
                bytes,
                ctx,
                max_token_bytes,
            }));
        }
        let permit = self
            .tokenizing
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| WorkerError::Submit(SubmitError::Stopped))?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            this.generate_now(req)
        })
        .await
        .map_err(|e| WorkerError::Engine(format!("tokenizing failed: {e}")))?
    }

    /// [`Worker::generate`] on the calling thread, without the size check.
    fn generate_now(
        &self,
        req: GenerateRequest,
    ) -> Result<UnboundedReceiverStream<GenerateEvent>, WorkerError> {
        let result = self.submit(req);
        if matches!(
            result,
            Err(WorkerError::InvalidRequest { .. } | WorkerError::UnknownModel(_))
        ) {
            self.engine.metrics.rejected(Rejection::Invalid);
        }
        result
    }

    fn submit(
        &self,
        req: GenerateRequest,
    ) -> Result<UnboundedReceiverStream<GenerateEvent>, WorkerError> {
        // A router that routes by model says which one it meant: refuse
        // rather than answer with another model.
        if let Some(m) = req.model.as_deref().filter(|m| !m.is_empty()) {
            if !self.serves(m) {
                return Err(WorkerError::UnknownModel(m.to_owned()));
            }
        }
        let lora = lora::resolve(
            &self.adapters,
            self.model_adapter(req.model.as_deref()),
            &req.lora,
            self.engine.combines_adapters,
        )?;
        if let Some(message) = req.sampling.stop_error() {
            return Err(WorkerError::invalid(message, Some("stop")));
        }
        if let Some(message) = req.sampling.logprobs_error() {
            return Err(WorkerError::invalid(message, Some("logprobs")));
        }
        let model = &self.engine.model;
        let spec = &req.output;
        // Before tokenizing: a schema the grammar cannot enforce is the
        // caller's mistake, answered without further work.
        let mut constraint = match grammar::plan(spec, model.tool_format) {
            Ok(None) => None,
            Ok(Some(gbnf)) => Some(Constraint::new(&model.llama, &gbnf)),
            Err(e) => Some(Err(e)),
        }
        .transpose()
        .map_err(|e| WorkerError::invalid(e.to_string(), Some(e.param())))?;
        let offered = if spec.tools_enabled() {
            spec.tools.as_slice()
        } else {
            &[]
        };
        let mut tokens = match &req.input {
            PromptInput::Messages(m) if m.is_empty() => {
                return Err(WorkerError::invalid(
                    "messages must not be empty",
                    Some("messages"),
                ))
            }
            PromptInput::Messages(m) => match req.truncation {
                Truncation::Disabled => {
                    model.tokenize_chat(m, offered, req.continuation.as_deref())?
                }
                Truncation::Auto => self.fit_chat(&req, m, offered)?,
            },
            PromptInput::Prompt(p) => model.tokenize_prompt(p),
            PromptInput::Tokens(t) => {
                let n_vocab = model.n_vocab();
                if let Some(bad) = t.iter().find(|&&t| t < 0 || t >= n_vocab) {
                    return Err(WorkerError::invalid(
                        format!("token id {bad} is outside the vocabulary (0..{n_vocab})"),
                        Some("tokens"),
                    ));
                }
                t.iter()
                    .map(|&t| llama_cpp_2::token::LlamaToken(t))
                    .collect()
            }
        };
        if let (PromptInput::Prompt(_) | PromptInput::Tokens(_), Some(c)) =
            (&req.input, req.continuation.as_deref())
        {
            tokens.extend(model.llama.vocab().tokenize(c.as_bytes(), false, false));
        }
        let id = req
            .request_id
            .unwrap_or_else(|| format!("gen-{}", uuid::Uuid::new_v4().simple()));
        let mut tools = (!offered.is_empty()).then(|| {
            let names = offered.iter().map(|t| t.name.clone()).collect();
            ToolParser::new(model.tool_format, names, spec.parallel_tool_calls)
        });
        // A failover's continuation is output already sent: the grammar and
        // the parser resume after it (its calls are not sent again, and
        // call numbering goes on).
        if let Some(c) = req.continuation.as_deref().filter(|c| !c.is_empty()) {
            if let Some(con) = constraint.as_mut() {
                let sent = model.llama.vocab().tokenize(c.as_bytes(), false, false);
                if !con.advance(&sent) {
                    return Err(WorkerError::invalid(
                        "the continuation does not follow the requested output format",
                        Some("continuation"),
                    ));
                }
            }
            if let Some(parser) = tools.as_mut() {
                parser.resume(c);
            }
        }
        let rx = self.engine.submit(Job {
            id,
            tokens,
            sampling: req.sampling,
            cache_salt: req.cache_salt,
            lora,
            constraint,
            tools,
        })?;
        Ok(UnboundedReceiverStream::new(rx))
    }

    /// The tokens of `messages` after `truncation: auto` dropped the oldest
    /// ones that do not fit beside the output room (see [`truncation`]).
    fn fit_chat(
        &self,
        req: &GenerateRequest,
        messages: &[ChatMessage],
        offered: &[FunctionTool],
    ) -> Result<Vec<LlamaToken>, WorkerError> {
        let model = &self.engine.model;
        let ctx = self.engine.config.ctx_size;
        let room = truncation::output_room(ctx, req.sampling.max_tokens);
        let limit = (ctx as usize).saturating_sub(room);
        // Text besides the messages' that the prompt carries too.
        let content: usize = messages.iter().map(|m| m.content.len()).sum();
        let other = prompt_bytes(req).saturating_sub(content);
        let max_bytes = limit
            .saturating_mul(model.max_token_bytes)
            .saturating_sub(other);
        let continuation = req.continuation.as_deref();
        let fitted = truncation::fit(messages, limit, max_bytes, |m| {
            model.tokenize_chat(m, offered, continuation)
        })?;
        let Some(fitted) = fitted else {
            self.engine.metrics.rejected(Rejection::TooLong);
            return Err(WorkerError::Submit(SubmitError::NoRoom { ctx, room }));
        };
        if fitted.dropped > 0 {
            let m = &self.engine.metrics;
            m.truncated_requests.increment(1);
            m.truncated_messages.increment(fitted.dropped as u64);
            tracing::debug!(
                dropped = fitted.dropped,
                tokens = fitted.tokens.len(),
                "truncated the oldest messages to fit the context"
            );
        }
        Ok(fitted.tokens)
    }

    pub fn load_report(&self) -> LoadReport {
        let s = &self.engine.stats;
        LoadReport {
            running: s.running.load(Ordering::SeqCst),
            waiting: s.waiting.load(Ordering::SeqCst),
            max_seqs: self.engine.config.max_seqs,
            kv_used: s.kv_used.load(Ordering::Relaxed),
            kv_total: self.engine.config.ctx_size,
            tokens_per_second: s.tokens_per_second(),
            step_seconds_max: s.step_seconds_max(),
            draining: s.draining.load(Ordering::SeqCst),
        }
    }
}

/// The bytes of plain text a request asks to tokenize: message contents (the
/// template adds tokens, never fewer), prompt and continuation. A token list
/// counts one byte per token (it is tokens already).
fn prompt_bytes(req: &GenerateRequest) -> usize {
    let input = match &req.input {
        PromptInput::Messages(m) => m.iter().map(|m| m.content.len()).sum(),
        PromptInput::Prompt(p) => p.len(),
        PromptInput::Tokens(t) => t.len(),
    };
    let tools: usize = req
        .output
        .tools
        .iter()
        .map(|t| {
            t.name.len()
                + t.description.as_ref().map_or(0, String::len)
                + t.parameters.to_string().len()
        })
        .sum();
    input + tools + req.continuation.as_ref().map_or(0, String::len)
}
