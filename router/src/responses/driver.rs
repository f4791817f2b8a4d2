//! The driver: runs one generation, emits its stream events, keeps the
//! stored record in step and always reaches a terminal state.
//!
//! Foreground requests hold a guard whose drop (client gone) cancels the
//! driver; background drivers stop when the stored status becomes
//! `cancelled` or the record is deleted. They watch status changes only, so
//! their own appended events never wake them.
//!
//! While the store is unavailable, events that could not be logged wait in
//! order and are retried at most every [`LOG_RETRY`]; the final writes go
//! to the [`super::backlog`] with the lease, never lost in a log line.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use spindle_proto::{FailureCode, FinishReason, GenerateEvent, GenerateRequest};
use tokio::sync::{mpsc, oneshot, watch};

use super::backlog::{ConversationAppend, FinalWrite, Lease};
use super::events::{ResponseStreamEvent, Sequenced};
use super::output::Output;
use crate::api::SharedState;
use crate::lifecycle::ActiveGuard;
use crate::store::StoreError;
use crate::types::{
    now_secs, IncompleteDetails, ResponseErrorInfo, ResponseObject, ResponseStatus, ResponseUsage,
};

/// What stops a driver early.
pub(super) enum CancelSource {
    /// Foreground: the client's guard was dropped.
    Client(oneshot::Receiver<()>),
    /// Background: the stored status became `cancelled`, or the record vanished.
    /// (The record's status changes.)
    Store(watch::Receiver<u64>),
}

impl CancelSource {
    pub async fn cancelled(&mut self, st: &SharedState, id: &str) {
        match self {
            Self::Client(rx) => {
                let _ = rx.await;
            }
            Self::Store(rx) => loop {
                if rx.changed().await.is_err() {
                    return;
                }
                match st.store.response_status(id).await {
                    Ok(Some(ResponseStatus::Cancelled)) | Ok(None) => return,
                    _ => {}
                }
            },
        }
    }
}

/// A generation to start in the driver (background) or already started by
/// the handler (foreground, so start errors become HTTP errors: 400, 503 + Retry-After).
pub(super) enum Start {
    Pending(Box<GenerateRequest>),
    Ready(futures::stream::BoxStream<'static, GenerateEvent>),
}

/// How long appending events waits after the store failed one.
const LOG_RETRY: Duration = Duration::from_secs(1);

/// Where a driver's events go.
pub(super) enum Events {
    /// Appended to the store (background: followers replay them).
    Logged,
    /// Sent to the client's live stream (foreground streaming).
    Live(mpsc::UnboundedSender<Sequenced>),
    /// Sent to a consumer that waits for no one (a WebSocket connection,
    /// which cancels rather than buffer for a slow client): the driver
    /// waits for room, so what it has emitted stays bounded.
    Bounded(mpsc::Sender<Sequenced>),
    /// Nowhere (foreground, not streamed).
    Dropped,
}

/// Runs one generation and emits its events.
pub(super) struct Driver {
    st: SharedState,
    resp: ResponseObject,
    owner: String,
    input_items: Vec<Value>,
    events: Events,
    seq: u64,
    /// Events the store did not take yet, oldest first.
    unlogged: VecDeque<(u64, Vec<u8>)>,
    /// No append is tried before this (the store just failed one).
    log_paused_until: Option<Instant>,
    /// Keeps a stored response's lease renewed while the driver runs.
    lease: Option<Lease>,
    /// Registered with the life cycle until the driver ends (drain waits on it).
    active: Option<ActiveGuard>,
    /// The model may call tools (its output may start with a call).
    tools_offered: bool,
}

enum Outcome {
    Finished(FinishReason, spindle_proto::Usage),
    Failed(String, String),
    Cancelled,
}

impl Driver {
    pub fn new(
        st: SharedState,
        resp: ResponseObject,
        owner: String,
        input_items: Vec<Value>,
        events: Events,
        active: ActiveGuard,
    ) -> Self {
        let lease = resp.store.then(|| Lease::new(st.store.clone(), &resp.id));
        let tools_offered = !resp.tools.is_empty() && resp.tool_choice != "none";
        Self {
            st,
            resp,
            owner,
            input_items,
            events,
            seq: 0,
            unlogged: VecDeque::new(),
            log_paused_until: None,
            lease,
            active: Some(active),
            tools_offered,
        }
    }

    async fn emit(&mut self, event: ResponseStreamEvent) {
        let seq = self.seq;
        self.seq += 1;
        match &self.events {
            Events::Logged => self.log(seq, event.encode()).await,
            Events::Live(tx) => {
                let _ = tx.send(Sequenced {
                    event,
                    sequence_number: seq,
                });
            }
            Events::Bounded(tx) => {
                let _ = tx
                    .send(Sequenced {
                        event,
                        sequence_number: seq,
                    })
                    .await;
            }
            Events::Dropped => {}
        }
    }

    /// Append event `seq` after those still waiting, in order.
    async fn log(&mut self, seq: u64, bytes: Vec<u8>) {
        self.unlogged.push_back((seq, bytes));
        if self.log_paused_until.is_some_and(|t| Instant::now() < t) {
            return;
        }
        while let Some((seq, bytes)) = self.unlogged.pop_front() {
            match self
                .st
                .store
                .append_event(&self.resp.id, seq, bytes.clone())
                .await
            {
                Ok(()) => {}
                Err(StoreError::Unavailable(e)) => {
                    tracing::warn!(error = %e, "store unavailable: stream events wait");
                    self.unlogged.push_front((seq, bytes));
                    self.log_paused_until = Some(Instant::now() + LOG_RETRY);
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "could not log stream event"),
            }
        }
        self.log_paused_until = None;
    }

    fn snapshot(&self) -> Box<ResponseObject> {
        Box::new(self.resp.clone())
    }

    /// The final writes: waiting events, the object (when stored) and the
    /// conversation's new items. What the store cannot take now goes to the
    /// backlog, with the lease and the drain registration.
    async fn save_final(&mut self, conversation: Option<ConversationAppend>) {
        let mut write = FinalWrite {
            id: self.resp.id.clone(),
            events: std::mem::take(&mut self.unlogged),
            response: self.resp.store.then(|| self.resp.clone()),
            conversation,
            lease: self.lease.take(),
            active: self.active.take(),
        };
        match write.apply(self.st.store.as_ref()).await {
            Ok(()) => {}
            Err(StoreError::Unavailable(_)) => self.st.backlog.push(write),
            Err(e) => tracing::warn!(error = %e, "could not record the final state"),
        }
    }

    pub async fn run(mut self, gen: Start, mut cancel: CancelSource) -> ResponseObject {
        let st = self.st.clone();
        let id = self.resp.id.clone();
        self.emit(ResponseStreamEvent::Created {
            response: self.snapshot(),
        })
        .await;
        if self.resp.status == ResponseStatus::Queued {
            self.emit(ResponseStreamEvent::Queued {
                response: self.snapshot(),
            })
            .await;
            self.resp.status = ResponseStatus::InProgress;
            // Cancelled or deleted while queued. (A store outage is no reason
            // to stop: the final state waits in the backlog if need be.)
            if self.resp.store
                && matches!(
                    st.store.update_if_active(self.resp.clone()).await,
                    Ok(false)
                )
            {
                return self.cancelled_object().await;
            }
        }
        self.emit(ResponseStreamEvent::InProgress {
            response: self.snapshot(),
        })
        .await;

        let started = match gen {
            Start::Ready(stream) => Some(Ok(stream)),
            Start::Pending(gen) => tokio::select! {
                r = st.generator.generate(*gen) => Some(r),
                _ = cancel.cancelled(&st, &id) => None,
            },
        };
        let mut stream = match started {
            None => return self.cancelled_object().await,
            Some(Err(e)) => {
                return self
                    .fail(e.code().into(), e.to_string(), Output::default())
                    .await
            }
            Some(Ok(s)) => s,
        };

        let mut output = Output::default();
        // Plain text announces its message before the first token; with
        // tools the first item may be a call, so it opens on demand.
        if !self.tools_offered {
            for ev in output.open_message() {
                self.emit(ev).await;
            }
        }
        let outcome = loop {
            let next = tokio::select! {
                ev = stream.next() => Some(ev),
                _ = cancel.cancelled(&st, &id) => None,
            };
            match next {
                None => break Outcome::Cancelled,
                Some(Some(GenerateEvent::Done {
                    finish_reason,
                    usage,
                    ..
                })) => break Outcome::Finished(finish_reason, usage),
                Some(Some(GenerateEvent::Error { code, message })) => {
                    break Outcome::Failed(code.as_str().into(), message)
                }
                Some(Some(ev)) => {
                    for ev in output.push(ev) {
                        self.emit(ev).await;
                    }
                }
                Some(None) => {
                    break Outcome::Failed(
                        FailureCode::WorkerStreamError.as_str().into(),
                        "the worker stream ended before generation finished".into(),
                    )
                }
            }
        };
        drop(stream);
        match outcome {
            Outcome::Cancelled => {
                self.resp.output = output.into_items();
                self.cancelled_object().await
            }
            Outcome::Failed(code, message) => self.fail(code, message, output).await,
            Outcome::Finished(FinishReason::Cancelled, _) => {
                self.fail(
                    FailureCode::GenerationCancelled.as_str().into(),
                    "the worker cancelled the generation".into(),
                    output,
                )
                .await
            }
            Outcome::Finished(reason, usage) => {
                let cut = reason == FinishReason::Length;
                for ev in output.finish(if cut { "incomplete" } else { "completed" }) {
                    self.emit(ev).await;
                }
                self.resp.output = output.into_items();
                self.resp.usage = Some(ResponseUsage::from(usage));
                self.resp.completed_at = Some(now_secs());
                if cut {
                    self.resp.status = ResponseStatus::Incomplete;
                    self.resp.incomplete_details = Some(IncompleteDetails {
                        reason: "max_output_tokens".into(),
                    });
                } else {
                    self.resp.status = ResponseStatus::Completed;
                }
                self.emit(ResponseStreamEvent::terminal(&self.resp)).await;
                let conversation = self.resp.conversation.as_ref().map(|conv| {
                    let mut items = std::mem::take(&mut self.input_items);
                    items.extend(self.resp.output.iter().cloned());
                    ConversationAppend {
                        owner: self.owner.clone(),
                        id: conv.id.clone(),
                        items,
                    }
                });
                self.save_final(conversation).await;
                self.resp
            }
        }
    }

    /// Ends the response `failed`, keeping what `output` holds.
    async fn fail(mut self, code: String, message: String, output: Output) -> ResponseObject {
        // The SDKs raise on `error` and never show the `response.failed`
        // after it: say there which record tells the rest.
        let told = if self.resp.store {
            format!(
                "{message} (response {} is stored as failed, with the text so far)",
                self.resp.id
            )
        } else {
            format!("{message} (response {})", self.resp.id)
        };
        self.emit(ResponseStreamEvent::error(&code, &told)).await;
        self.resp.output = output.into_items();
        self.resp.status = ResponseStatus::Failed;
        self.resp.error = Some(ResponseErrorInfo { code, message });
        self.resp.completed_at = Some(now_secs());
        self.emit(ResponseStreamEvent::terminal(&self.resp)).await;
        self.save_final(None).await;
        self.resp
    }

    async fn cancelled_object(mut self) -> ResponseObject {
        self.resp.status = ResponseStatus::Cancelled;
        self.resp.completed_at = Some(now_secs());
        // Foreground: the client left; record that. Background: the cancel call already did.
        self.save_final(None).await;
        match self.st.store.get_response(&self.owner, &self.resp.id).await {
            Ok(Some(rec)) if rec.response.store => rec.response,
            _ => self.resp,
        }
    }
}
