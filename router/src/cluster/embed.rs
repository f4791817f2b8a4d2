//! Embeddings over the cluster: no prefix cache to follow, so the least
//! loaded ready worker of the model takes the request; one that cannot
//! (unreachable, overloaded, draining, broken) is passed over for the next,
//! up to `--max-retries` more, as a generation that fails before its first
//! token is. The caller's mistakes (400) are not retried.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use spindle_proto::openai::{EmbeddingRequest, EmbeddingResponse};

use super::balancer::Inner;
use crate::generator::{GenerateError, Generator};

pub(super) async fn embed(
    inner: Arc<Inner>,
    req: EmbeddingRequest,
) -> Result<EmbeddingResponse, GenerateError> {
    let model = req.model.clone().unwrap_or_default();
    let candidates = inner.least_loaded(req.model.as_deref());
    let mut last = GenerateError::Unavailable {
        message: format!("no worker serving {model} is ready"),
        retry_after: 1,
    };
    let mut attempts = inner.cfg.max_retries + 1;
    let mut tried = 0u32;
    for m in candidates {
        if attempts == 0 {
            break;
        }
        if !m.routable() {
            continue;
        }
        attempts -= 1;
        tried += 1;
        // Counted in the worker's load while it runs.
        let _guard = m.start_stream();
        match m.http.embed(req.clone()).await {
            Ok(resp) => {
                m.record_success();
                let reason = if tried > 1 { "retry" } else { "balance" };
                if tried > 1 {
                    inner
                        .stats
                        .retries
                        .fetch_add(u64::from(tried - 1), Ordering::Relaxed);
                }
                metrics::counter!(
                    "spindle_router_routing_decisions_total",
                    "model" => model.clone(),
                    "worker" => m.label.clone(),
                    "reason" => reason,
                )
                .increment(1);
                return Ok(resp);
            }
            Err(e @ GenerateError::BadRequest(_)) => return Err(e),
            Err(e) => {
                tracing::warn!(worker = %m.url, "worker failed an embeddings request: {e}");
                match &e {
                    GenerateError::Unavailable { .. } => inner.mark_unready(&m),
                    _ => inner.eject(&m),
                }
                last = e;
            }
        }
    }
    Err(last)
}
