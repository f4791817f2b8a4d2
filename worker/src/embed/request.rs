//! `Worker::embed`: one `POST /v1/embeddings` request checked against the
//! model (served name, dimension, vocabulary, context; text sizes in bytes
//! before any tokenizing), tokenized on the blocking pool, embedded by the
//! [`super::Embedder`] and answered in the requested encoding.

use super::EmbedError;
use crate::engine::SubmitError;
use crate::error::WorkerError;
use crate::metrics::Rejection;
use crate::model::Model;
use crate::Worker;
use llama_cpp_2::token::LlamaToken;
use spindle_proto::openai::embeddings::{InputRef, MAX_REQUEST_TOKENS};
use spindle_proto::openai::{EmbeddingRequest, EmbeddingResponse};
use std::sync::atomic::Ordering;

fn too_long(param: String, message: String) -> WorkerError {
    WorkerError::InvalidRequest {
        message,
        param: Some(param),
        code: Some("context_length_exceeded"),
    }
}

impl Worker {
    /// The normalized vectors of the request's inputs, in its encoding.
    pub async fn embed(&self, req: EmbeddingRequest) -> Result<EmbeddingResponse, WorkerError> {
        let result = self.embed_checked(req).await;
        let refused = match &result {
            Err(WorkerError::InvalidRequest {
                code: Some("context_length_exceeded"),
                ..
            }) => Some(Rejection::TooLong),
            Err(WorkerError::InvalidRequest { .. } | WorkerError::UnknownModel(_)) => {
                Some(Rejection::Invalid)
            }
            Err(WorkerError::Embed(EmbedError::QueueFull)) => Some(Rejection::QueueFull),
            Err(WorkerError::Submit(SubmitError::Draining)) => Some(Rejection::Draining),
            _ => None,
        };
        if let Some(why) = refused {
            self.engine.metrics.rejected(why);
        }
        result
    }

    async fn embed_checked(&self, req: EmbeddingRequest) -> Result<EmbeddingResponse, WorkerError> {
        if self.engine.stats.draining.load(Ordering::SeqCst) {
            return Err(WorkerError::Submit(SubmitError::Draining));
        }
        let name = req.model_name()?.to_owned();
        if !self.serves(&name) {
            return Err(WorkerError::UnknownModel(name));
        }
        let dims = self.embedder.dims;
        if let Some(d) = req.dimensions.filter(|&d| d as usize != dims) {
            return Err(WorkerError::invalid(
                format!(
                    "'dimensions' is {d}, but this model's embeddings have {dims} dimensions: \
                     give {dims} or leave it out (vectors are not shortened)"
                ),
                Some("dimensions"),
            ));
        }
        let ctx = self.embedder.config.ctx_size as usize;
        let max_bytes = ctx.saturating_mul(self.engine.model.max_token_bytes);
        for (i, input) in req.inputs()?.iter().enumerate() {
            let (len, unit, limit) = match input {
                InputRef::Text(t) => (t.len(), "bytes", max_bytes),
                InputRef::Tokens(ids) => (ids.len(), "tokens", ctx),
            };
            if len > limit {
                let param = req.input_param(i);
                return Err(too_long(
                    param.clone(),
                    format!(
                        "'{param}' is {len} {unit}, more than the {ctx}-token embedding context holds"
                    ),
                ));
            }
        }
        let permit = self
            .tokenizing
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| WorkerError::Engine("the worker is stopping".into()))?;
        let model = self.engine.model.clone();
        let format = req.encoding_format;
        let tokens = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            tokenize(&model, &req, ctx)
        })
        .await
        .map_err(|e| WorkerError::Engine(format!("tokenizing failed: {e}")))??;
        let total: usize = tokens.iter().map(Vec::len).sum();
        let vectors = self.embedder.embed(tokens).await?;
        Ok(EmbeddingResponse::new(name, vectors, total as u32, format))
    }
}

/// Every input's tokens: text as the model tokenizes a document (its
/// BOS/EOS or CLS/SEP as its vocabulary says, special-token text as plain
/// text), token ids checked against the vocabulary; each at most `ctx`
/// tokens, all together at most [`MAX_REQUEST_TOKENS`].
fn tokenize(
    model: &Model,
    req: &EmbeddingRequest,
    ctx: usize,
) -> Result<Vec<Vec<LlamaToken>>, WorkerError> {
    let n_vocab = i64::from(model.n_vocab());
    let mut out = Vec::new();
    let mut total = 0usize;
    for (i, input) in req.inputs()?.into_iter().enumerate() {
        let tokens: Vec<LlamaToken> = match input {
            InputRef::Text(t) => model.llama.vocab().tokenize(t.as_bytes(), true, false),
            InputRef::Tokens(ids) => {
                if let Some(bad) = ids.iter().find(|&&t| t >= n_vocab) {
                    return Err(WorkerError::invalid(
                        format!(
                            "token id {bad} in '{}' is outside the vocabulary (0..{n_vocab})",
                            req.input_param(i)
                        ),
                        Some(&req.input_param(i)),
                    ));
                }
                // In range: 0 ≤ id < n_vocab, which is an i32.
                ids.iter().map(|&t| LlamaToken(t as i32)).collect()
            }
        };
        if tokens.len() > ctx {
            let param = req.input_param(i);
            return Err(too_long(
                param.clone(),
                format!(
                    "'{param}' is {} tokens, more than the {ctx}-token embedding context holds",
                    tokens.len()
                ),
            ));
        }
        if tokens.is_empty() {
            return Err(WorkerError::invalid(
                format!("'{}' has no tokens", req.input_param(i)),
                Some(&req.input_param(i)),
            ));
        }
        total += tokens.len();
        if total > MAX_REQUEST_TOKENS {
            return Err(WorkerError::invalid(
                format!(
                    "the inputs are more than {MAX_REQUEST_TOKENS} tokens together; \
                     send them in several requests"
                ),
                Some("input"),
            ));
        }
        out.push(tokens);
    }
    Ok(out)
}
