//! The router's [`Generator`] backed by a worker in the same process
//! (`spindle serve`): no HTTP hop between the two, same cancellation rule
//! (dropping the stream cancels the request).

use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use spindle_proto::openai::{EmbeddingRequest, EmbeddingResponse, ModelCard};
use spindle_proto::{GenerateEvent, GenerateRequest};
use spindle_router::{GenerateError, Generator};
use spindle_worker::embed::EmbedError;
use spindle_worker::engine::SubmitError;
use spindle_worker::error::WorkerError;
use spindle_worker::Worker;
use std::sync::atomic::Ordering;

pub struct InProcess {
    worker: Worker,
}

impl InProcess {
    pub fn new(worker: Worker) -> Self {
        Self { worker }
    }
}

fn to_generate_error(e: WorkerError) -> GenerateError {
    match e {
        WorkerError::Submit(
            s @ (SubmitError::QueueFull | SubmitError::Draining | SubmitError::Stopped),
        ) => GenerateError::Unavailable {
            message: s.to_string(),
            retry_after: 1,
        },
        WorkerError::Embed(e @ (EmbedError::QueueFull | EmbedError::Stopped)) => {
            GenerateError::Unavailable {
                message: e.to_string(),
                retry_after: 1,
            }
        }
        WorkerError::Engine(m) => GenerateError::Upstream(m),
        WorkerError::Embed(e @ EmbedError::Decode(_)) => GenerateError::Upstream(e.to_string()),
        other => GenerateError::BadRequest(other.error_object()),
    }
}

impl Generator for InProcess {
    fn generate(
        &self,
        req: GenerateRequest,
    ) -> BoxFuture<'static, Result<BoxStream<'static, GenerateEvent>, GenerateError>> {
        let worker = self.worker.clone();
        Box::pin(async move {
            worker
                .generate(req)
                .await
                .map(StreamExt::boxed)
                .map_err(to_generate_error)
        })
    }

    fn embed(
        &self,
        req: EmbeddingRequest,
    ) -> BoxFuture<'static, Result<EmbeddingResponse, GenerateError>> {
        let worker = self.worker.clone();
        Box::pin(async move { worker.embed(req).await.map_err(to_generate_error) })
    }

    fn models(&self) -> Vec<ModelCard> {
        self.worker
            .model_names()
            .iter()
            .map(|n| {
                ModelCard::new(n.clone(), "spindle", 1)
                    .with_max_model_len(self.worker.engine.config.ctx_size)
            })
            .collect()
    }

    fn ready(&self) -> Result<(), String> {
        if self.worker.engine.stats.draining.load(Ordering::SeqCst) {
            Err("the worker is draining".into())
        } else {
            Ok(())
        }
    }
}
