//! The driver: runs one generation, emits its stream events, keeps the
//! stored record in step and always reaches a terminal state.
//!
//! Foreground requests hold a guard whose drop (client gone) cancels the
//! driver; background drivers stop when the stored status becomes
//! `cancelled` or the record is deleted. They watch status changes only, so
//! their own appended events never wake them.

use futures::StreamExt;
use serde_json::Value;
use spindle_proto::{FailureCode, FinishReason, GenerateEvent, GenerateRequest};
use tokio::sync::{mpsc, oneshot, watch};

use super::events::{ResponseStreamEvent, Sequenced};
use super::items::{output_message, output_text_part};
use crate::api::SharedState;
use crate::lifecycle::ActiveGuard;
use crate::types::{
    new_id, now_secs, IncompleteDetails, ResponseErrorInfo, ResponseObject, ResponseStatus,
    ResponseUsage,
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
    Pending(GenerateRequest),
    Ready(futures::stream::BoxStream<'static, GenerateEvent>),
}

/// Runs one generation and emits its events.
pub(super) struct Driver {
    pub st: SharedState,
    pub resp: ResponseObject,
    pub owner: String,
    pub input_items: Vec<Value>,
    /// Append events to the store (background: followers replay them).
    pub log_events: bool,
    /// Send events to a live stream (foreground streaming).
    pub live: Option<mpsc::UnboundedSender<Sequenced>>,
    pub seq: u64,
    /// Registered with the life cycle until the driver ends (drain waits on it).
    pub _active: ActiveGuard,
}

enum Outcome {
    Finished(FinishReason, spindle_proto::Usage),
    Failed(String, String),
    Cancelled,
}

impl Driver {
    async fn emit(&mut self, event: ResponseStreamEvent) {
        let seq = self.seq;
        self.seq += 1;
        if self.log_events {
            let bytes = event.encode();
            if let Err(e) = self.st.store.append_event(&self.resp.id, seq, bytes).await {
                tracing::warn!(error = %e, "could not log stream event");
            }
        }
        if let Some(tx) = &self.live {
            let _ = tx.send(Sequenced {
                event,
                sequence_number: seq,
            });
        }
    }

    fn snapshot(&self) -> Box<ResponseObject> {
        Box::new(self.resp.clone())
    }

    async fn save(&self) {
        if self.resp.store {
            if let Err(e) = self.st.store.update_if_active(self.resp.clone()).await {
                tracing::warn!(error = %e, "could not update stored response");
            }
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
            if self.resp.store
                && !matches!(st.store.update_if_active(self.resp.clone()).await, Ok(true))
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
                r = st.generator.generate(gen) => Some(r),
                _ = cancel.cancelled(&st, &id) => None,
            },
        };
        let mut stream = match started {
            None => return self.cancelled_object().await,
            Some(Err(e)) => return self.fail(e.code().into(), e.to_string(), None).await,
            Some(Ok(s)) => s,
        };

        let item_id = new_id("msg");
        self.emit(ResponseStreamEvent::OutputItemAdded {
            output_index: 0,
            item: output_message(&item_id, "in_progress", None),
        })
        .await;
        self.emit(ResponseStreamEvent::ContentPartAdded {
            item_id: item_id.clone(),
            output_index: 0,
            content_index: 0,
            part: output_text_part(""),
        })
        .await;
        let mut text = String::new();
        let outcome = loop {
            let next = tokio::select! {
                ev = stream.next() => Some(ev),
                _ = cancel.cancelled(&st, &id) => None,
            };
            match next {
                None => break Outcome::Cancelled,
                Some(Some(GenerateEvent::Delta { text: delta, .. })) => {
                    if delta.is_empty() {
                        continue;
                    }
                    text.push_str(&delta);
                    self.emit(ResponseStreamEvent::OutputTextDelta {
                        item_id: item_id.clone(),
                        output_index: 0,
                        content_index: 0,
                        delta,
                        logprobs: vec![],
                    })
                    .await;
                }
                Some(Some(GenerateEvent::Done {
                    finish_reason,
                    usage,
                    ..
                })) => break Outcome::Finished(finish_reason, usage),
                Some(Some(GenerateEvent::Error { code, message })) => {
                    break Outcome::Failed(code.as_str().into(), message)
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
                self.resp.output = vec![output_message(&item_id, "incomplete", Some(&text))];
                self.cancelled_object().await
            }
            Outcome::Failed(code, message) => self.fail(code, message, Some((item_id, text))).await,
            Outcome::Finished(FinishReason::Cancelled, _) => {
                self.fail(
                    FailureCode::GenerationCancelled.as_str().into(),
                    "the worker cancelled the generation".into(),
                    Some((item_id, text)),
                )
                .await
            }
            Outcome::Finished(reason, usage) => {
                let item_status = if reason == FinishReason::Length {
                    "incomplete"
                } else {
                    "completed"
                };
                self.emit(ResponseStreamEvent::OutputTextDone {
                    item_id: item_id.clone(),
                    output_index: 0,
                    content_index: 0,
                    text: text.clone(),
                    logprobs: vec![],
                })
                .await;
                self.emit(ResponseStreamEvent::ContentPartDone {
                    item_id: item_id.clone(),
                    output_index: 0,
                    content_index: 0,
                    part: output_text_part(&text),
                })
                .await;
                let item = output_message(&item_id, item_status, Some(&text));
                self.emit(ResponseStreamEvent::OutputItemDone {
                    output_index: 0,
                    item: item.clone(),
                })
                .await;
                self.resp.output = vec![item];
                self.resp.usage = Some(ResponseUsage::from(usage));
                self.resp.completed_at = Some(now_secs());
                if reason == FinishReason::Length {
                    self.resp.status = ResponseStatus::Incomplete;
                    self.resp.incomplete_details = Some(IncompleteDetails {
                        reason: "max_output_tokens".into(),
                    });
                } else {
                    self.resp.status = ResponseStatus::Completed;
                }
                self.emit(ResponseStreamEvent::terminal(&self.resp)).await;
                self.save().await;
                if let Some(conv) = &self.resp.conversation {
                    let mut items = std::mem::take(&mut self.input_items);
                    items.extend(self.resp.output.iter().cloned());
                    if let Err(e) = st
                        .store
                        .append_conversation_items(&self.owner, &conv.id, items)
                        .await
                    {
                        tracing::warn!(error = %e, "could not append to conversation");
                    }
                }
                self.resp
            }
        }
    }

    async fn fail(
        mut self,
        code: String,
        message: String,
        partial: Option<(String, String)>,
    ) -> ResponseObject {
        self.emit(ResponseStreamEvent::error(&code, &message)).await;
        if let Some((item_id, text)) = partial {
            self.resp.output = vec![output_message(&item_id, "incomplete", Some(&text))];
        }
        self.resp.status = ResponseStatus::Failed;
        self.resp.error = Some(ResponseErrorInfo { code, message });
        self.resp.completed_at = Some(now_secs());
        self.emit(ResponseStreamEvent::terminal(&self.resp)).await;
        self.save().await;
        self.resp
    }

    async fn cancelled_object(mut self) -> ResponseObject {
        self.resp.status = ResponseStatus::Cancelled;
        self.resp.completed_at = Some(now_secs());
        // Foreground: the client left; record that. Background: the cancel call already did.
        self.save().await;
        match self.st.store.get_response(&self.owner, &self.resp.id).await {
            Ok(Some(rec)) if rec.response.store => rec.response,
            _ => self.resp,
        }
    }
}
