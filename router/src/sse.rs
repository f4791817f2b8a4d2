//! Server-sent events: one JSON event per SSE frame (`event: <type>` + one
//! `data:` line), flushed on its own, and the closing `data: [DONE]`.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{Stream, StreamExt};
use serde_json::Value;

/// A typed event (`event:` equals the JSON `type`).
pub fn typed_event(ev: &Value) -> Event {
    let ty = ev.get("type").and_then(Value::as_str).unwrap_or("message");
    Event::default().event(ty).data(ev.to_string())
}

/// The closing `data: [DONE]`.
pub fn done_event() -> Event {
    Event::default().data("[DONE]")
}

/// Wrap a stream of events into an SSE response with keep-alive comments.
pub fn sse_response<S>(stream: S) -> Response
where
    S: Stream<Item = Event> + Send + 'static,
{
    Sse::new(stream.map(Ok::<_, Infallible>))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
