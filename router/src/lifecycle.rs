//! The router's life cycle: serving, then draining after SIGTERM.
//!
//! Every generation a response record depends on (foreground or background)
//! is registered here for as long as it runs. Draining turns `/ready` 503
//! and refuses new work; the binary then waits for the registry to empty,
//! up to `--drain-timeout`, and whatever is still registered at the deadline
//! is written to the store as `failed`, so no record is left `in_progress`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::store::ResponseStore;
use crate::sync;
use crate::types::{ResponseErrorInfo, ResponseObject, ResponseStatus};

struct Active {
    owner: String,
    response: ResponseObject,
}

/// Serving or draining, and the generations in flight.
#[derive(Default)]
pub struct Lifecycle {
    draining: AtomicBool,
    active: Mutex<HashMap<String, Active>>,
    idle: Notify,
    /// Wakes what waits for draining to start (idle WebSocket connections).
    drain: Notify,
}

/// Keeps one response registered until dropped.
pub struct ActiveGuard {
    lifecycle: Arc<Lifecycle>,
    id: String,
    background_model: Option<String>,
    /// The request's tenant-limit permit: the generation holds it until it
    /// ends, also after a background response's request was answered.
    _permit: Option<crate::api::limits::Permit>,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let empty = {
            let mut active = self.lifecycle.lock();
            active.remove(&self.id);
            active.is_empty()
        };
        if let Some(model) = self.background_model.take() {
            metrics::gauge!("spindle_router_background_responses", "model" => model).decrement(1);
        }
        if empty {
            self.lifecycle.idle.notify_waiters();
        }
    }
}

impl Lifecycle {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Active>> {
        sync::lock(&self.active)
    }

    /// Registers a generation for `response` (owned by tenant `owner`).
    pub fn begin(self: &Arc<Self>, owner: &str, response: &ResponseObject) -> ActiveGuard {
        self.lock().insert(
            response.id.clone(),
            Active {
                owner: owner.to_owned(),
                response: response.clone(),
            },
        );
        let background_model = response.background.then(|| response.model.clone());
        if let Some(model) = &background_model {
            metrics::gauge!("spindle_router_background_responses", "model" => model.clone())
                .increment(1);
        }
        ActiveGuard {
            lifecycle: self.clone(),
            id: response.id.clone(),
            background_model,
            _permit: crate::api::limits::take_permit(),
        }
    }

    /// Stop taking new work: `/ready` answers 503 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        metrics::gauge!("spindle_router_draining").set(1.0);
        self.drain.notify_waiters();
    }

    /// Resolves once draining has started (at once when it has already).
    pub async fn draining(&self) {
        loop {
            let notified = self.drain.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_draining() {
                return;
            }
            notified.await;
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Generations in flight.
    pub fn active(&self) -> usize {
        self.lock().len()
    }

    /// Waits until no generation is in flight or `deadline` passes; true when idle.
    pub async fn wait_idle(&self, deadline: Instant) -> bool {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock().is_empty() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.lock().is_empty();
            }
        }
    }

    /// Ends every generation still in flight as `failed` in the store (at the
    /// drain deadline: the process is about to exit). Returns how many.
    pub async fn fail_unfinished(&self, store: &dyn ResponseStore) -> usize {
        let left: Vec<Active> = self.lock().drain().map(|(_, a)| a).collect();
        let mut failed = 0;
        for Active {
            owner,
            mut response,
        } in left
        {
            if !response.store {
                continue;
            }
            response.status = ResponseStatus::Failed;
            response.completed_at = Some(crate::types::now_secs());
            response.error = Some(ResponseErrorInfo {
                code: spindle_proto::FailureCode::ServerShutdown.as_str().into(),
                message: "the router shut down before this response finished".into(),
            });
            match store.update_if_active(response).await {
                Ok(_) => failed += 1,
                Err(e) => {
                    tracing::warn!(%owner, "could not mark a response failed at shutdown: {e}")
                }
            }
        }
        failed
    }
}

/// Endpoints that start work on a worker (generations, embeddings).
pub(crate) const GENERATING: [&str; 5] = [
    "/v1/responses",
    "/v1/responses/compact",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
];

/// Middleware: while draining, requests that would start a generation get
/// 503 so clients retry on another replica; reads and cancels still work.
pub async fn refuse_while_draining(
    State(lifecycle): State<Arc<Lifecycle>>,
    req: Request,
    next: Next,
) -> Response {
    if lifecycle.is_draining()
        && req.method() == Method::POST
        && GENERATING.contains(&req.uri().path())
    {
        return ApiError::Unavailable {
            message: "This router is shutting down; retry the request.".into(),
            retry_after: 1,
        }
        .into_response();
    }
    next.run(req).await
}
