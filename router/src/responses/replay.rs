//! Replay: a stored (background) response's events after a given sequence
//! number, then its live ones until it is terminal, as SSE frames ending
//! with `[DONE]`. Works on any replica: events come from the store.

use axum::response::sse::Event;
use tokio::sync::mpsc;

use super::events::Sequenced;
use crate::api::SharedState;
use crate::sse::done_event;
use crate::store::{StoreError, Subscription};

/// How long a follower waits before reading an unavailable store again.
const STORE_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// Replay stored events after `after`, then follow live ones until the
/// response is terminal; ends with `[DONE]`.
pub(super) fn follow(
    st: SharedState,
    id: String,
    after: Option<u64>,
) -> impl futures::Stream<Item = Event> + Send + 'static {
    let (tx, rx) = mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        let Ok(Some(Subscription {
            mut status,
            mut events,
        })) = st.store.subscribe(&id).await
        else {
            return;
        };
        let mut last = after;
        loop {
            status.borrow_and_update();
            events.borrow_and_update();
            // Read the status first: once terminal, the events read after it
            // are all there will be.
            let read = async {
                let terminal = st
                    .store
                    .response_status(&id)
                    .await?
                    .is_none_or(|s| s.is_terminal());
                Ok::<_, StoreError>((terminal, st.store.events_after(&id, last).await?))
            };
            let (terminal, stored) = match read.await {
                Ok((terminal, Some(stored))) => (terminal, stored),
                // Deleted.
                Ok((_, None)) => break,
                Err(e) => {
                    // The store is down: the response goes on (or its final
                    // state waits in a backlog); keep the follower until the
                    // store is back or the client leaves.
                    tracing::debug!(id, error = %e, "follower waits for the store");
                    tokio::select! {
                        _ = tokio::time::sleep(STORE_RETRY) => continue,
                        _ = tx.closed() => return,
                    }
                }
            };
            for ev in stored {
                last = Some(ev.seq);
                let frame = match Sequenced::decode(ev.seq, &ev.bytes) {
                    Ok(s) => s.sse(),
                    Err(e) => {
                        tracing::warn!(id, seq = ev.seq, "skipping unreadable stored event: {e}");
                        continue;
                    }
                };
                if tx.send(frame).await.is_err() {
                    return;
                }
            }
            if terminal {
                break;
            }
            tokio::select! {
                r = status.changed() => if r.is_err() { break },
                r = events.changed() => if r.is_err() { break },
            }
        }
        let _ = tx.send(done_event()).await;
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
