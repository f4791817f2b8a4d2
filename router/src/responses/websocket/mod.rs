//! WebSocket mode of the Responses API (`GET /v1/responses` with upgrade
//! headers): a client sends `response.create` messages and receives each
//! response's stream events, exactly the SSE ones, as text messages.
//!
//! One connection runs one response at a time, in order; later
//! `response.create` messages wait in a small queue ([`QUEUE`]; beyond it
//! they are refused). The connection keeps its most recent response
//! ([`Recent`]) so a chain continues from it without the store; a
//! continuation that fails forgets its previous response. The outgoing
//! buffer is bounded ([`OUT_BUFFER`]): a client that stops reading gets its
//! response cancelled and the connection closed. A connection lives at most
//! `--websocket-max-lifetime-secs`; when the router starts draining
//! (SIGTERM) an idle connection gets a 503 envelope and is closed.
//!
//! - [`messages`]: the client messages and the error envelope;
//! - [`turn`]: one response on a connection.

mod messages;
mod turn;

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::Instrument;

use crate::api::{ConnectionHold, SharedState, Tenant};
use crate::cluster::key::session_id;
use crate::error::ApiError;
use crate::extract::parse_json;
use crate::store::ResponseRecord;
use messages::{ClientMessage, ErrorEnvelope};

/// `response.create` messages that may wait behind the one in flight.
pub const QUEUE: usize = 8;

/// Messages the server may have waiting for a slow client; past it the
/// response in flight is cancelled and the connection closed.
pub const OUT_BUFFER: usize = 1024;

/// How long a closing connection may take to flush what is left.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// A connection's most recent response: its record (input items, output,
/// chain) and the items of each turn of its context window, all a
/// follow-up needs. Bounded like the window (by the model's context).
pub struct Recent {
    pub record: ResponseRecord,
    /// One list per entry of `record.context`, oldest first.
    pub history: Vec<Vec<Value>>,
}

/// Registers the WebSocket metrics, so they read 0 before any connection.
pub fn register_metrics() {
    metrics::gauge!("spindle_router_websocket_connections").set(0.0);
    metrics::counter!("spindle_router_websocket_responses_total").increment(0);
}

#[utoipa::path(get, path = "/v1/responses", tag = "responses", operation_id = "listResponses",
    params(crate::types::ListQuery),
    responses((status = 200, description = "With WebSocket upgrade headers, opens a WebSocket connection \
(WebSocket mode: send `response.create` messages, read the stream events). Otherwise a page of the stored responses of the API key's tenant, \
newest first unless `order=asc`; `after` is the `last_id` of the previous page (an id not in the \
list, e.g. deleted or expired meanwhile, is a 400 naming `after`).", body = crate::responses::listing::ResponseList)))]
/// `GET /v1/responses`: with WebSocket upgrade headers, opens a connection
/// (the auth layer already ran on the upgrade request); otherwise
/// [`plain_get`].
pub async fn connect(
    State(st): State<SharedState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    hold: Option<Extension<ConnectionHold>>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
    request: Request,
) -> Response {
    let Ok(upgrade) = upgrade else {
        return plain_get(st, request).await;
    };
    let session = session_id(&headers).map(str::to_owned);
    let hold = hold.map(|Extension(h)| h);
    let limit = st.config.max_body_bytes;
    upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| {
            serve(st, tenant, session, hold, socket).instrument(tracing::info_span!("websocket"))
        })
}

/// A `GET /v1/responses` without upgrade headers: the tenant's stored
/// responses.
async fn plain_get(st: SharedState, request: Request) -> Response {
    axum::handler::Handler::call(super::listing::list, request, st).await
}

/// Counts an open connection while it lives.
struct Open;

impl Open {
    fn new() -> Self {
        metrics::gauge!("spindle_router_websocket_connections").increment(1.0);
        Self
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics::gauge!("spindle_router_websocket_connections").decrement(1.0);
    }
}

/// What the reader hands the connection: a parsed message, or why not.
type Incoming = Result<ClientMessage, ApiError>;

async fn serve(
    st: SharedState,
    tenant: String,
    session: Option<String>,
    hold: Option<ConnectionHold>,
    socket: WebSocket,
) {
    let _open = Open::new();
    let _hold = hold;
    let deadline = Instant::now() + st.config.websocket_max_lifetime();
    let (sink, stream) = socket.split();
    let (out, out_rx) = mpsc::channel::<Message>(OUT_BUFFER);
    let (queue, mut queue_rx) = mpsc::channel::<Incoming>(QUEUE);
    let (gone_tx, gone) = watch::channel(false);
    let mut writer = tokio::spawn(write(sink, out_rx));
    let reader = tokio::spawn(read(stream, queue, out.clone(), gone_tx));
    let lifecycle = st.lifecycle.clone();
    let mut conn = turn::Connection::new(st, tenant, session, out, gone);
    loop {
        let next = tokio::select! {
            m = queue_rx.recv() => m,
            _ = tokio::time::sleep_until(deadline) => {
                conn.limit_reached();
                break;
            }
            // SIGTERM: idle connections close now, not at their lifetime.
            _ = lifecycle.draining() => {
                conn.going_away();
                break;
            }
        };
        // The client left: the reader is done and nothing is queued.
        let Some(message) = next else { break };
        if !conn.handle(message).await {
            break;
        }
        if Instant::now() >= deadline {
            conn.limit_reached();
            break;
        }
    }
    reader.abort();
    // The writer sends what is left, then a close frame.
    drop(conn);
    if tokio::time::timeout(CLOSE_GRACE, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

/// Sends the outgoing messages in order; ends with a close frame once the
/// connection drops its sender, or when the client is gone.
async fn write(mut sink: SplitSink<WebSocket, Message>, mut rx: mpsc::Receiver<Message>) {
    while let Some(m) = rx.recv().await {
        if sink.send(m).await.is_err() {
            return;
        }
    }
    let _ = sink.send(Message::Close(None)).await;
}

/// Reads client messages into the queue; a message that finds it full is
/// refused at once. Says `gone` when the client closes or fails.
async fn read(
    mut stream: SplitStream<WebSocket>,
    queue: mpsc::Sender<Incoming>,
    out: mpsc::Sender<Message>,
    gone: watch::Sender<bool>,
) {
    while let Some(Ok(frame)) = stream.next().await {
        let parsed = match frame {
            Message::Text(text) => parse_json::<ClientMessage>(text.as_bytes()),
            Message::Binary(_) => Err(ApiError::invalid(
                "send client messages as JSON text messages",
                None,
            )),
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = queue.try_send(parsed) {
            let e = ApiError::invalid_code(
                format!(
                    "Too many queued response.create messages: at most {QUEUE} may wait \
                     behind the response in flight."
                ),
                None,
                "too_many_queued_messages",
            );
            let _ = out.try_send(Message::Text(ErrorEnvelope::from(&e).json().into()));
        }
    }
    let _ = gone.send(true);
}
