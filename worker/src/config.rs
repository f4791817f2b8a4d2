//! The worker's command-line flags (each with a `SPINDLE_*` environment fallback).

use crate::kv::{CacheType, FlashAttn, KvSettings};
use crate::tools::ToolCallFlag;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct WorkerConfig {
    /// GGUF model: a local path or hf:OWNER/REPO/FILE.gguf. Default: SmolLM2-135M-Instruct Q4_1
    /// (from ../shared/models, the cache, or downloaded).
    #[arg(long, env = "SPINDLE_MODEL")]
    pub model: Option<String>,

    /// Names clients use for the model (comma-separated; the first is the one
    /// reported). Default: the model file's name without `.gguf`.
    #[arg(long, env = "SPINDLE_SERVED_MODEL_NAME", value_delimiter = ',')]
    pub served_model_name: Vec<String>,

    /// Context of each sequence in tokens (prompt plus output). KV memory is
    /// ctx-size × max-seqs cells.
    #[arg(long, env = "SPINDLE_CTX_SIZE", default_value_t = 2048)]
    pub ctx_size: u32,

    /// Sequences decoded together in one step; also the number of KV slots
    /// (an idle slot keeps its sequence's KV as a prefix-cache entry).
    #[arg(long, env = "SPINDLE_MAX_SEQS", default_value_t = 16)]
    pub max_seqs: u32,

    /// Tokens per decode step: one per decoding sequence, the rest prompt chunks.
    #[arg(long, env = "SPINDLE_MAX_BATCH_TOKENS", default_value_t = 512)]
    pub max_batch_tokens: u32,

    /// Requests that may wait for a free sequence slot; beyond that, 503 + Retry-After.
    #[arg(long, env = "SPINDLE_MAX_WAITING", default_value_t = 256)]
    pub max_waiting: u32,

    /// Tokens of the embeddings context (`/v1/embeddings`): the longest input,
    /// and the most tokens one embedding decode holds (inputs of one or more
    /// requests share it).
    #[arg(long, env = "SPINDLE_EMBEDDING_CTX_SIZE", default_value_t = 2048)]
    pub embedding_ctx_size: u32,

    /// CPU threads of the embeddings context (default: --threads; with
    /// `--embedding-mode interleaved` always --threads).
    #[arg(long, env = "SPINDLE_EMBEDDING_THREADS")]
    pub embedding_threads: Option<i32>,

    /// Where embedding decodes run: `separate` (their own thread, beside
    /// generation steps: on a CPU both share the cores) or `interleaved`
    /// (between generation steps on the engine thread, each taking what the
    /// step left of --max-batch-tokens, at least one input).
    #[arg(long, env = "SPINDLE_EMBEDDING_MODE", value_enum, default_value_t = crate::embed::EmbedMode::Separate)]
    pub embedding_mode: crate::embed::EmbedMode,

    /// With `--embedding-mode interleaved`: the part of the engine's time
    /// embeddings get while sequences generate (0.05 to 0.95).
    #[arg(long, env = "SPINDLE_EMBEDDING_SHARE", default_value_t = 0.5, value_parser = parse_share)]
    pub embedding_share: f64,

    /// CPU threads for llama.cpp (default: all cores).
    #[arg(long, env = "SPINDLE_THREADS")]
    pub threads: Option<i32>,

    /// Layers offloaded to the GPU (builds with the `cuda` feature).
    #[arg(long, env = "SPINDLE_GPU_LAYERS", default_value_t = 999)]
    pub gpu_layers: u32,

    /// Keep weights as the file stores them instead of repacking them for
    /// ggml's batched CPU kernels (slower; the weights stay in the page cache).
    #[arg(long, env = "SPINDLE_NO_REPACK")]
    pub no_repack: bool,

    /// The syntax the model writes tool calls in: `auto` takes it from the chat
    /// template (`<tool_call>` → hermes, `[TOOL_CALLS]` → mistral,
    /// `<|python_tag|>`/ipython → llama3, other tool-aware templates → json;
    /// a template without tools is shown them in hermes syntax), or one of
    /// hermes, llama3, mistral, json.
    #[arg(long, env = "SPINDLE_TOOL_CALL_FORMAT", value_enum, default_value_t = ToolCallFlag::Auto)]
    pub tool_call_format: ToolCallFlag,

    /// A LoRA adapter, NAME=PATH.gguf (repeatable; the variable takes a
    /// comma-separated list). Loaded at startup; requests pick it by the
    /// `lora` field or the model id `MODEL:NAME`.
    #[arg(long = "lora", env = "SPINDLE_LORA", value_delimiter = ',', value_parser = crate::lora::parse_spec)]
    pub lora: Vec<crate::lora::LoraSpec>,
    /// A Jinja chat template file used instead of the GGUF's
    /// `tokenizer.chat_template` (tool-call syntax is then read from it too).
    /// A GGUF without one falls back to ChatML, with a warning at startup.
    #[arg(long, env = "SPINDLE_CHAT_TEMPLATE")]
    pub chat_template: Option<PathBuf>,

    /// llama.cpp's flash attention: on, off, or auto (llama.cpp decides).
    #[arg(long, env = "SPINDLE_FLASH_ATTN", value_enum, default_value_t = FlashAttn::Auto)]
    pub flash_attn: FlashAttn,

    /// How cached keys are stored: f16, or q8_0 (about half the memory) and
    /// the other quantized types (heads must be a multiple of 32 numbers).
    #[arg(long, env = "SPINDLE_CACHE_TYPE_K", value_enum, default_value_t = CacheType::F16)]
    pub cache_type_k: CacheType,

    /// How cached values are stored; a quantized type needs flash attention
    /// (`--flash-attn on` or `auto`).
    #[arg(long, env = "SPINDLE_CACHE_TYPE_V", value_enum, default_value_t = CacheType::F16)]
    pub cache_type_v: CacheType,

    /// On SIGTERM, how long in-flight requests may run before the process exits.
    #[arg(long, env = "SPINDLE_DRAIN_TIMEOUT", value_parser = humantime_secs, default_value = "30")]
    pub drain_timeout: Duration,
}

fn humantime_secs(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = match s.strip_suffix("ms") {
        Some(n) => (n, 0.001),
        None => (s.strip_suffix('s').unwrap_or(s), 1.0),
    };
    num.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| Duration::from_secs_f64(v * scale))
        .ok_or_else(|| format!("{s:?} is not a duration (e.g. 30, 30s, 500ms)"))
}

impl WorkerConfig {
    /// The settings `spindle worker --model MODEL` would run with (every
    /// other flag at its default or its `SPINDLE_*` variable): for embedding
    /// a worker, and tests that change a few fields.
    pub fn for_model(model: &str) -> Self {
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            config: WorkerConfig,
        }
        let mut config = <Flags as clap::Parser>::try_parse_from(["worker"])
            .map(|f| f.config)
            .unwrap_or_else(|e| panic!("the worker flags' defaults parse: {e}"));
        config.model = Some(model.to_owned());
        config
    }

    /// `--served-model-name`'s names, else `file_name`; never empty.
    pub fn served_names(&self, file_name: &str) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for n in self.served_model_name.iter().map(|n| n.trim()) {
            if !n.is_empty() && !names.iter().any(|k| k == n) {
                names.push(n.to_owned());
            }
        }
        if names.is_empty() {
            names.push(file_name.to_owned());
        }
        names
    }

    pub fn threads(&self) -> i32 {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get() as i32))
    }

    pub fn load_options(&self) -> crate::model::LoadOptions {
        crate::model::LoadOptions {
            gpu_layers: self.gpu_layers,
            repack: !self.no_repack,
        }
    }

    pub fn embed(&self) -> crate::embed::EmbedConfig {
        crate::embed::EmbedConfig {
            ctx_size: self.embedding_ctx_size.clamp(16, 1 << 20),
            threads: match self.embedding_mode {
                crate::embed::EmbedMode::Separate => {
                    self.embedding_threads.unwrap_or_else(|| self.threads())
                }
                crate::embed::EmbedMode::Interleaved => self.threads(),
            },
            mode: self.embedding_mode,
            share: self.embedding_share,
        }
    }

    /// `--flash-attn` and the cache types.
    pub fn kv(&self) -> KvSettings {
        KvSettings {
            flash_attn: self.flash_attn,
            type_k: self.cache_type_k,
            type_v: self.cache_type_v,
        }
    }

    /// The checks that need no model (`--check` runs them).
    pub fn validate(&self) -> Result<(), crate::kv::KvError> {
        self.kv().validate()
    }

    pub fn engine(&self) -> crate::engine::EngineConfig {
        crate::engine::EngineConfig {
            ctx_size: self.ctx_size,
            max_seqs: self.max_seqs.clamp(1, 256),
            max_batch_tokens: self.max_batch_tokens.max(self.max_seqs),
            max_waiting: self.max_waiting,
            threads: self.threads(),
            kv: self.kv(),
        }
    }
}

/// clap's parser for `--embedding-share`: a fraction from 0.05 to 0.95.
fn parse_share(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if (0.05..=0.95).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not between 0.05 and 0.95"))
    }
}
