//! The request deadline (`--request-timeout`): every generation, however
//! its worker behaves (a live connection writing keep-alives for a stuck
//! sequence, a queue that never moves), ends by then with a
//! `request_timeout` error event, and its worker request is cancelled. An
//! embeddings call not answered by then is dropped (its worker stops work
//! on it) and refused with 503.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use spindle_proto::openai::{EmbeddingRequest, EmbeddingResponse, ModelCard};
use spindle_proto::{FailureCode, GenerateEvent, GenerateRequest};
use tokio::time::Instant;

use crate::generator::{GenerateError, Generator};

/// A [`Generator`] whose generations end by `timeout` after they start.
pub struct Deadline {
    inner: Arc<dyn Generator>,
    timeout: Duration,
}

impl Deadline {
    pub fn new(inner: Arc<dyn Generator>, timeout: Duration) -> Self {
        Self { inner, timeout }
    }
}

fn timed_out(timeout: Duration) -> GenerateEvent {
    GenerateEvent::Error {
        code: FailureCode::RequestTimeout,
        message: format!(
            "the generation ran past the request deadline ({}s)",
            timeout.as_secs_f64()
        ),
    }
}

impl Generator for Deadline {
    fn generate(
        &self,
        req: GenerateRequest,
    ) -> BoxFuture<'static, Result<BoxStream<'static, GenerateEvent>, GenerateError>> {
        let timeout = self.timeout;
        let started = self.inner.generate(req);
        Box::pin(async move {
            let deadline = Instant::now() + timeout;
            let events = tokio::time::timeout_at(deadline, started)
                .await
                .map_err(|_| GenerateError::Unavailable {
                    message: format!(
                        "no worker started the generation within the request deadline ({}s)",
                        timeout.as_secs_f64()
                    ),
                    retry_after: 1,
                })??;
            // Dropping `events` at the deadline cancels the worker request.
            let stream = futures::stream::unfold(Some(events), move |events| async move {
                let mut events = events?;
                match tokio::time::timeout_at(deadline, events.next()).await {
                    Ok(Some(ev)) => Some((ev, Some(events))),
                    Ok(None) => None,
                    Err(_) => Some((timed_out(timeout), None)),
                }
            });
            Ok(stream.boxed())
        })
    }

    fn embed(
        &self,
        req: EmbeddingRequest,
    ) -> BoxFuture<'static, Result<EmbeddingResponse, GenerateError>> {
        let timeout = self.timeout;
        let call = self.inner.embed(req);
        Box::pin(async move {
            tokio::time::timeout(timeout, call)
                .await
                .map_err(|_| GenerateError::Unavailable {
                    message: format!(
                        "the embeddings were not done within the request deadline ({}s)",
                        timeout.as_secs_f64()
                    ),
                    retry_after: 1,
                })?
        })
    }

    fn models(&self) -> Vec<ModelCard> {
        self.inner.models()
    }

    fn ready(&self) -> Result<(), String> {
        self.inner.ready()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Streams one delta, then nothing ever again.
    struct Stuck;

    impl Generator for Stuck {
        fn generate(
            &self,
            _: GenerateRequest,
        ) -> BoxFuture<'static, Result<BoxStream<'static, GenerateEvent>, GenerateError>> {
            let first = GenerateEvent::delta("a", vec![1]);
            let s = futures::stream::iter([first]).chain(futures::stream::pending());
            Box::pin(async move { Ok(s.boxed()) })
        }
        fn embed(
            &self,
            _: EmbeddingRequest,
        ) -> BoxFuture<'static, Result<EmbeddingResponse, GenerateError>> {
            Box::pin(futures::future::pending())
        }
        fn models(&self) -> Vec<ModelCard> {
            Vec::new()
        }
    }

    #[tokio::test]
    async fn a_stuck_embedding_call_ends_at_the_deadline() {
        let g = Deadline::new(Arc::new(Stuck), Duration::from_millis(100));
        let req: EmbeddingRequest = serde_json::from_str(r#"{"model":"m","input":"x"}"#).unwrap();
        let started = std::time::Instant::now();
        let e = g.embed(req).await.unwrap_err();
        assert!(matches!(e, GenerateError::Unavailable { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_stuck_generation_ends_at_the_deadline() {
        let g = Deadline::new(Arc::new(Stuck), Duration::from_millis(100));
        let req: GenerateRequest = serde_json::from_str(r#"{"prompt":"x"}"#).unwrap();
        let events: Vec<_> = g.generate(req).await.unwrap().collect().await;
        assert_eq!(events.len(), 2);
        assert!(matches!(
            &events[1],
            GenerateEvent::Error {
                code: FailureCode::RequestTimeout,
                ..
            }
        ));
    }
}
