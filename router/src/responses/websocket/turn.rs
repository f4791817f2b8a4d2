//! One connection's responses, one at a time: a `response.create` message
//! becomes a response through the same `prepare` and [`Driver`] as over
//! HTTP (foreground, streamed), its events go out as text messages, and the
//! connection's [`Recent`] response is kept or evicted by how it ended.

use axum::extract::ws::Message;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use super::messages::{ClientMessage, ErrorEnvelope};
use super::Recent;
use crate::api::SharedState;
use crate::error::{ApiError, ApiResult};
use crate::responses::driver::{CancelSource, Driver, Events, Start};
use crate::responses::prepare::{prepare, Prepared};
use crate::store::ANONYMOUS_TENANT;
use crate::telemetry::ModelTag;
use crate::types::{CreateResponseRequest, ResponseStatus};

/// Events the driver may have ahead of the connection.
const DRIVER_BUFFER: usize = 64;

/// The state of one open connection.
pub(super) struct Connection {
    st: SharedState,
    tenant: String,
    session: Option<String>,
    out: mpsc::Sender<Message>,
    /// Becomes true when the client closes or its socket fails.
    gone: watch::Receiver<bool>,
    recent: Option<Recent>,
}

/// How a response's events got out.
enum Delivery {
    /// Every event was handed to the writer.
    Sent,
    /// The client stopped reading or left: the response was cancelled.
    Lost,
}

impl Connection {
    pub fn new(
        st: SharedState,
        tenant: String,
        session: Option<String>,
        out: mpsc::Sender<Message>,
        gone: watch::Receiver<bool>,
    ) -> Self {
        Self {
            st,
            tenant,
            session,
            out,
            gone,
            recent: None,
        }
    }

    /// Queues one message for the client; false when the client is not
    /// reading (the buffer is full) or gone.
    fn send(&self, text: String) -> bool {
        self.out.try_send(Message::Text(text.into())).is_ok()
    }

    fn send_error(&self, e: &ApiError) -> bool {
        self.send(ErrorEnvelope::from(e).json())
    }

    /// The lifetime is over: say so (the writer closes after it).
    pub fn limit_reached(&self) {
        let secs = self.st.config.websocket_max_lifetime_secs;
        self.send_error(&ApiError::invalid_code(
            format!(
                "This WebSocket connection reached its {secs} s limit; open a new one \
                 (continue store=true chains from their stored ids)."
            ),
            None,
            "websocket_connection_limit_reached",
        ));
    }

    /// The router is draining: an idle connection is told so, then closed
    /// (a response in flight finishes first).
    pub fn going_away(&self) {
        self.send_error(&shutting_down());
    }

    /// Handles one client message; false when the connection must close.
    pub async fn handle(&mut self, message: Result<ClientMessage, ApiError>) -> bool {
        // What a departed client left queued is not started.
        if *self.gone.borrow() {
            return false;
        }
        let create = match message {
            Ok(ClientMessage::Create(c)) => c,
            Ok(ClientMessage::Unknown) => {
                return self.send_error(&ApiError::invalid_code(
                    "Unknown client message type; the only one is 'response.create'.",
                    Some("type"),
                    "unknown_message_type",
                ))
            }
            Err(e) => return self.send_error(&e),
        };
        if let Err(e) = create.check_transport() {
            return self.send_error(&e);
        }
        let previous = create.request.previous_response_id.clone();
        match self.respond(create.request).await {
            Err(e) => {
                // A continuation that fails forgets where it continued from.
                self.evict(previous.as_deref());
                self.send_error(&e)
            }
            Ok((recent, delivery)) => {
                match recent.record.response.status {
                    ResponseStatus::Failed if previous.is_some() => {
                        self.evict(previous.as_deref());
                    }
                    ResponseStatus::Cancelled => {}
                    _ => self.recent = Some(recent),
                }
                matches!(delivery, Delivery::Sent)
            }
        }
    }

    /// Forgets `previous` when it is the response this connection holds.
    fn evict(&mut self, previous: Option<&str>) {
        let held = self.recent.as_ref().map(|r| r.record.response.id.as_str());
        if previous.is_some() && held == previous {
            self.recent = None;
        }
    }

    /// Runs one response to its end, streaming its events.
    async fn respond(&mut self, req: CreateResponseRequest) -> ApiResult<(Recent, Delivery)> {
        let st = self.st.clone();
        if st.lifecycle.is_draining() {
            return Err(shutting_down());
        }
        // The tenant's limits, per response as over HTTP: held until it ends.
        let _permit = if st.limits.enabled() && self.tenant != ANONYMOUS_TENANT {
            Some(st.limits.admit(&self.tenant, std::time::Instant::now())?)
        } else {
            None
        };
        let tag = ModelTag::default();
        let Prepared {
            response,
            record,
            gen,
            history,
            ..
        } = prepare(
            &st,
            &self.tenant,
            self.session.as_deref(),
            req,
            &tag,
            self.recent.as_ref(),
        )
        .await?;
        let stream = st.generator.generate(gen).await?;
        if response.store {
            st.store.insert_response(record.clone()).await?;
        }
        metrics::counter!("spindle_router_websocket_responses_total").increment(1);
        let (tx, mut rx) = mpsc::channel(DRIVER_BUFFER);
        let (guard, cancel) = oneshot::channel::<()>();
        let active = st.lifecycle.begin(&self.tenant, &response);
        let driver = Driver::new(
            st.clone(),
            response,
            self.tenant.clone(),
            record.input_items.clone(),
            Events::Bounded(tx),
            active,
        );
        let task = tokio::spawn(
            driver
                .run(Start::Ready(stream), CancelSource::Client(cancel))
                .in_current_span(),
        );
        let mut guard = Some(guard);
        let mut delivery = Delivery::Sent;
        let mut gone = self.gone.clone();
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => {
                        if guard.is_some() && !self.send(ev.json()) {
                            // Dropping the guard cancels the driver.
                            guard = None;
                            delivery = Delivery::Lost;
                        }
                    }
                    None => break,
                },
                _ = gone.wait_for(|g| *g), if guard.is_some() => {
                    guard = None;
                    delivery = Delivery::Lost;
                }
            }
        }
        drop(guard);
        let response = task
            .await
            .map_err(|e| ApiError::Internal(format!("generation task failed: {e}")))?;
        let recent = Recent {
            record: crate::store::ResponseRecord { response, ..record },
            history,
        };
        Ok((recent, delivery))
    }
}

fn shutting_down() -> ApiError {
    ApiError::Unavailable {
        message: "This router is shutting down; reconnect and retry.".into(),
        retry_after: 1,
    }
}
