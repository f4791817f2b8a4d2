//! The loaded model: weights, vocabulary and chat template.
//!
//! `Model` is shared (`Arc`) between the HTTP handlers, which tokenize, and
//! the engine thread, which owns the one llama.cpp context built on it.
//! Tokenizing in the handlers keeps that work off the engine's step loop.

use crate::model_source::{check_gguf, ModelError};
use crate::template::{
    ChatTemplate, Segment, TemplateFile, TemplateFileError, TemplateOrigin, CHATML,
};
use crate::tools::ToolFormat;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use spindle_proto::tools::FunctionTool;
use spindle_proto::ChatMessage;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

/// llama.cpp's backend may be initialised once per process.
static BACKEND: OnceLock<LlamaBackend> = OnceLock::new();

pub fn backend() -> &'static LlamaBackend {
    BACKEND.get_or_init(|| {
        llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
        // `init` fails only when called twice, which the OnceLock rules out.
        LlamaBackend::init().expect("llama.cpp backend initialises once")
    })
}

static LOADING: Mutex<()> = Mutex::new(());

#[cfg(not(stock_ggml))]
extern "C" {
    /// Added by patches/ggml-q4_1-repack.patch: whether ggml may repack the
    /// weights of models loaded from now on (llama-cpp-2 does not expose
    /// llama.cpp's `use_extra_bufts`).
    fn spindle_ggml_cpu_set_repack(enabled: bool);
}

/// Whether the next load may repack; false when this build cannot switch
/// repacking off (stock ggml, `GGML_SPINDLE_PATCHES=off`) and was asked to.
fn set_repack(enabled: bool) -> bool {
    #[cfg(not(stock_ggml))]
    // SAFETY: stores one atomic flag; no pointers or preconditions.
    unsafe {
        spindle_ggml_cpu_set_repack(enabled)
    };
    cfg!(not(stock_ggml)) || enabled
}

pub struct Model {
    pub llama: LlamaModel,
    /// The name clients use (`model` field): the file name without `.gguf`.
    pub name: String,
    template: ChatTemplate,
    /// The chat template's source (it decides the tool-call syntax).
    pub template_source: String,
    /// Whether that is the GGUF's, `--chat-template`'s or the ChatML fallback.
    pub template_origin: TemplateOrigin,
    /// The syntax the model writes tool calls in (the template's, unless
    /// the worker's `--tool-call-format` sets it).
    pub tool_format: ToolFormat,
    bos: Option<LlamaToken>,
    bos_text: String,
    /// Every end-of-generation token (banned under `ignore_eos`).
    pub eog_tokens: Vec<i32>,
    /// The longest text any one token stands for, in bytes: a prompt of
    /// more than `ctx × this` bytes cannot fit, and is refused untokenized.
    pub max_token_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    File(#[from] ModelError),
    #[error("llama.cpp could not load {0} (unsupported architecture or corrupt tensors)")]
    Llama(String),
    #[error("model {0}: {1}")]
    Template(String, crate::template::TemplateError),
    #[error(transparent)]
    TemplateFile(#[from] TemplateFileError),
    #[error("this build has stock ggml (GGML_SPINDLE_PATCHES=off), which cannot turn weight repacking off: drop --no-repack")]
    NoRepackSwitch,
}

/// How llama.cpp places the weights.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Layers offloaded to the GPU (builds with a GPU backend).
    pub gpu_layers: u32,
    /// Let ggml repack weights at load for its batched CPU kernels (Q4_0,
    /// Q4_1 with patches/, IQ4_NL, Q4_K): faster, but the repacked copy
    /// lives in anonymous memory instead of the file's page cache.
    pub repack: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            gpu_layers: 0,
            repack: true,
        }
    }
}

impl Model {
    /// Load a GGUF file (checked first); `chat_template` replaces the
    /// GGUF's template (it must render, or the load fails).
    pub fn load(
        path: &Path,
        options: LoadOptions,
        chat_template: Option<TemplateFile>,
    ) -> Result<Self, LoadError> {
        check_gguf(path)?;
        let params = LlamaModelParams::default().with_n_gpu_layers(options.gpu_layers);
        let llama = {
            // The repack switch is process-wide: one load at a time sets it.
            let _one_load = LOADING.lock().unwrap_or_else(|e| e.into_inner());
            if !set_repack(options.repack) {
                return Err(LoadError::NoRepackSwitch);
            }
            let loaded = LlamaModel::load_from_file(backend(), path, &params);
            set_repack(true);
            loaded.map_err(|_| LoadError::Llama(path.display().to_string()))?
        };
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(|n| n.trim_end_matches(".gguf").to_owned())
            .unwrap_or_else(|| "model".into());
        let vocab = llama.vocab();
        let text_of = |t: LlamaToken| {
            String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned()
        };
        let bos_text = text_of(vocab.bos());
        let eos_text = text_of(vocab.eos());
        let bos = vocab.should_add_bos().then(|| vocab.bos());
        let (source, origin) = match chat_template {
            Some(file) => (file.source, TemplateOrigin::File(file.path)),
            None => match llama.meta_val_str("tokenizer.chat_template") {
                Ok(source) => (source, TemplateOrigin::Gguf),
                Err(_) => {
                    tracing::warn!(
                        model = %name,
                        "the GGUF has no tokenizer.chat_template (a base model?): chats are \
                         formatted as ChatML, which the model may not know; give its format \
                         with --chat-template FILE"
                    );
                    (CHATML.to_owned(), TemplateOrigin::ChatmlFallback)
                }
            },
        };
        let eog_tokens = (0..llama.n_vocab())
            .filter(|&t| vocab.is_eog(LlamaToken(t)))
            .collect();
        let max_token_bytes = (0..llama.n_vocab())
            .map(|t| vocab.token_to_piece(LlamaToken(t), false, None).len())
            .max()
            .unwrap_or(1)
            .max(1);
        let template = match &origin {
            TemplateOrigin::File(file) => ChatTemplate::new(&source, &bos_text, &eos_text)
                .and_then(|t| t.check().map(|()| t))
                .map_err(|e| TemplateFileError::Invalid(file.clone(), e))?,
            _ => ChatTemplate::new(&source, &bos_text, &eos_text)
                .map_err(|e| LoadError::Template(name.clone(), e))?,
        };
        Ok(Self {
            llama,
            name,
            template,
            tool_format: ToolFormat::from_template(&source).unwrap_or(ToolFormat::Hermes),
            template_source: source,
            template_origin: origin,
            bos,
            bos_text,
            eog_tokens,
            max_token_bytes,
        })
    }

    /// Tokens of a chat: the template's text with special tokens, the messages' text as plain text.
    /// `tools` are the functions offered this turn. `continuation` (text
    /// the assistant already produced) is appended as plain text.
    pub fn tokenize_chat(
        &self,
        messages: &[ChatMessage],
        tools: &[FunctionTool],
        continuation: Option<&str>,
    ) -> Result<Vec<LlamaToken>, crate::template::TemplateError> {
        if self.template.renders_tools() {
            self.check_tool_text(messages, tools)?;
        }
        let segments = self.template.render(messages, tools, self.tool_format)?;
        let vocab = self.llama.vocab();
        let mut out = Vec::new();
        let starts_with_bos = matches!(segments.first(), Some(Segment::Template(t)) if !self.bos_text.is_empty() && t.starts_with(&self.bos_text));
        if let (Some(bos), false) = (self.bos, starts_with_bos) {
            out.push(bos);
        }
        for seg in &segments {
            match seg {
                Segment::Template(t) => vocab.tokenize_into(t.as_bytes(), &mut out, false, true),
                Segment::Content(c) => vocab.tokenize_into(c.as_bytes(), &mut out, false, false),
            }
        }
        if let Some(c) = continuation.filter(|c| !c.is_empty()) {
            vocab.tokenize_into(c.as_bytes(), &mut out, false, false);
        }
        Ok(out)
    }

    /// A template that renders tools writes their definitions and the
    /// history's calls as template text, whose special tokens are real:
    /// refuse caller text that would spell one.
    fn check_tool_text(
        &self,
        messages: &[ChatMessage],
        tools: &[FunctionTool],
    ) -> Result<(), crate::template::TemplateError> {
        let mut text = crate::tools::prompt::hf_tools(tools).to_string();
        for m in messages.iter().filter(|m| !m.tool_calls.is_empty()) {
            text.push_str(&crate::tools::prompt::hf_tool_calls(&m.tool_calls).to_string());
        }
        let vocab = self.llama.vocab();
        if vocab.tokenize(text.as_bytes(), false, true)
            != vocab.tokenize(text.as_bytes(), false, false)
        {
            return Err(crate::template::TemplateError::new(
                "tool definitions and tool calls must not contain special-token text",
            ));
        }
        Ok(())
    }

    /// Tokens of a raw prompt: BOS if the model wants one, the text as plain text.
    pub fn tokenize_prompt(&self, prompt: &str) -> Vec<LlamaToken> {
        let mut out: Vec<LlamaToken> = self.bos.into_iter().collect();
        self.llama
            .vocab()
            .tokenize_into(prompt.as_bytes(), &mut out, false, false);
        out
    }

    /// The bytes a generated token stands for (control tokens print nothing).
    pub fn piece(&self, token: LlamaToken) -> Vec<u8> {
        self.llama.vocab().token_to_piece(token, false, None)
    }

    /// A token as log probabilities show it: its text and the bytes it
    /// prints; a control token prints nothing and is named as the
    /// vocabulary spells it (`</s>`).
    pub fn spell(&self, token: LlamaToken) -> (String, Vec<u8>) {
        crate::logprobs::spell(self.piece(token), || {
            self.llama.vocab().token_to_piece(token, true, None)
        })
    }

    pub fn is_eog(&self, token: LlamaToken) -> bool {
        self.llama.vocab().is_eog(token)
    }

    pub fn n_vocab(&self) -> i32 {
        self.llama.n_vocab()
    }
}
