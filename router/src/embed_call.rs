//! `HttpWorker`'s embeddings call: `POST /v1/embeddings` on the worker, in
//! base64 on the wire (a third of the bytes of JSON floats), the answer
//! read whole up to [`MAX_EMBEDDING_RESPONSE_BYTES`].

use spindle_proto::openai::{EmbeddingRequest, EmbeddingResponse, EncodingFormat};

use crate::generator::{refusal, GenerateError, HttpWorker};

/// Most bytes of a worker's embeddings answer read: 2048 base64 vectors of
/// 8192 dimensions, with room to spare.
pub const MAX_EMBEDDING_RESPONSE_BYTES: usize = 128 << 20;

/// Ask `worker` for `req`'s vectors. No deadline of its own: the whole call
/// runs under the router's request deadline (a large request takes as long
/// as its tokens take to decode).
pub(crate) async fn post(
    worker: HttpWorker,
    mut req: EmbeddingRequest,
) -> Result<EmbeddingResponse, GenerateError> {
    req.encoding_format = EncodingFormat::Base64;
    let url = format!("{}/v1/embeddings", worker.base_url);
    let mut post = worker.client.post(&url).json(&req);
    if let Some(t) = &worker.token {
        post = post.bearer_auth(t);
    }
    let mut resp = post
        .send()
        .await
        .map_err(|e| GenerateError::Connect(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(refusal(resp).await);
    }
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_EMBEDDING_RESPONSE_BYTES {
                    return Err(GenerateError::Upstream(format!(
                        "the worker's embeddings answer is over {MAX_EMBEDDING_RESPONSE_BYTES} bytes"
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                return Err(GenerateError::Upstream(format!(
                    "the worker's embeddings answer broke off: {e}"
                )))
            }
        }
    }
    serde_json::from_slice(&body).map_err(|e| {
        GenerateError::Upstream(format!("unreadable embeddings answer from the worker: {e}"))
    })
}
