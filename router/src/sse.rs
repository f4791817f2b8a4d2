//! Server-sent events: the SSE response with keep-alives, and the closing
//! `data: [DONE]`. Frames themselves come from their typed events.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{Stream, StreamExt};
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
