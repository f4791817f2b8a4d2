//! A response chain's context: the earlier turns a follow-up
//! (`previous_response_id`) is generated after.
//!
//! Each turn's items (its input and its output) are written once, as one
//! entry of the chain's append-only item log in the store. A record keeps
//! only the log positions and sizes of the turns in its context window
//! ([`ContextTurn`]), so a follow-up reads and writes an amount bounded by the
//! model's context, however long the chain is.
//!
//! `truncation: "auto"` is sticky: a window keeps its first turn until the
//! context outgrows its byte budget, then drops the oldest turns down to half
//! the budget. Bytes are a coarse bound (the router does not tokenize): the
//! worker, told `auto` too, drops whole old messages until the prompt and
//! the output room fit its context in tokens. The prompt's prefix, and with it the worker's prefix cache,
//! thus stays the same for many turns between drops, instead of shifting on
//! every turn. `"disabled"` keeps every turn and fails with
//! `context_length_exceeded` once the chain cannot fit the model.
//!
//! A response in a conversation starts from the conversation's newest
//! items that fit the same budget ([`conversation_window`]), read from the
//! end of its item list, and its chain log gets only that window: a
//! conversation turn too costs the same however long the conversation is.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiError;
use crate::store::{ConversationTail, ResponseStore, StoreError};

/// One earlier turn in a record's context window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextTurn {
    /// Index of the turn's entry in its chain's item log.
    pub turn: u64,
    /// Size of that entry (serialized items), for truncation.
    pub bytes: u64,
}

/// Bytes of text one token stands for, at least, when the router sizes a
/// context window in bytes (it does not tokenize). English runs about 4 with
/// SmolLM2's tokenizer; 2 keeps the window inside the model for code and
/// JSON too, and the worker still checks the exact token count.
pub const MIN_BYTES_PER_TOKEN: u64 = 2;

/// Bytes a token can stand for at most; a `"disabled"` chain longer than
/// this many bytes per context token cannot fit and is refused up front.
pub const MAX_BYTES_PER_TOKEN: u64 = 16;

/// Context window of a model whose workers did not report one.
pub const DEFAULT_CONTEXT_TOKENS: u32 = 2048;

/// How a follow-up's context is bounded: `Auto` drops the oldest turns to
/// fit (sticky, see the module docs), `Disabled` keeps every turn and
/// refuses what cannot fit. The same value goes to the worker
/// (`GenerateRequest::truncation`), which fits the prompt exactly in tokens.
pub use spindle_proto::Truncation;

/// Byte budget of the history (earlier turns plus this input) for a model
/// with `context_tokens`, leaving room for `max_output_tokens`.
pub fn budget(truncation: Truncation, context_tokens: u32, max_output_tokens: Option<u32>) -> u64 {
    let ctx = u64::from(context_tokens.max(1));
    match truncation {
        Truncation::Auto => {
            let room = max_output_tokens.map_or(ctx / 4, u64::from).min(ctx / 2);
            (ctx - room) * MIN_BYTES_PER_TOKEN
        }
        Truncation::Disabled => ctx * MAX_BYTES_PER_TOKEN,
    }
}

/// The window of a follow-up: the previous response's window, then the
/// previous turn itself (`prev`), bounded so that, with `input_bytes` more,
/// it stays within `budget` (see [`Truncation`]). The previous turn is
/// always kept.
pub fn window(
    prev_window: &[ContextTurn],
    prev: ContextTurn,
    input_bytes: u64,
    budget: u64,
    truncation: Truncation,
) -> Result<Vec<ContextTurn>, ApiError> {
    let mut turns: Vec<ContextTurn> = prev_window.iter().copied().chain([prev]).collect();
    let total = |t: &[ContextTurn]| t.iter().map(|c| c.bytes).sum::<u64>() + input_bytes;
    if total(&turns) <= budget {
        return Ok(turns);
    }
    match truncation {
        Truncation::Disabled => Err(too_long(format!("about {} bytes", total(&turns)))),
        Truncation::Auto => {
            let mut drop = 0;
            while drop + 1 < turns.len() && total(&turns[drop..]) > budget / 2 {
                drop += 1;
            }
            turns.drain(..drop);
            Ok(turns)
        }
    }
}

fn too_long(size: String) -> ApiError {
    ApiError::invalid_code(
        format!(
            "The conversation is {size}, more than this model's context can hold; \
             start a new chain or set truncation to 'auto'."
        ),
        Some("input"),
        "context_length_exceeded",
    )
}

/// The items a response in a conversation is generated after: `tail`, the
/// newest items within the history budget (see
/// [`ResponseStore::conversation_tail`]). When that is not the whole
/// conversation, `"disabled"` refuses, and `"auto"` starts the window at a
/// multiple of a step, the largest power of two within half the tail's
/// items: the start stays put for several turns while the conversation
/// grows (so the prompt prefix and the worker's cache survive), and at
/// least half the tail is kept. No state is needed for this stickiness.
pub fn conversation_window(
    tail: ConversationTail,
    truncation: Truncation,
) -> Result<Vec<Value>, ApiError> {
    if tail.first == 0 {
        return Ok(tail.items);
    }
    match truncation {
        Truncation::Disabled => Err(too_long("longer than its context window".into())),
        Truncation::Auto => {
            let half = (tail.items.len() as u64 / 2).max(1);
            let step = 1u64 << (63 - half.leading_zeros());
            let start = tail.first.div_ceil(step) * step;
            let skip = usize::try_from(start - tail.first).unwrap_or(usize::MAX);
            let mut items = tail.items;
            items.drain(..skip.min(items.len()));
            Ok(items)
        }
    }
}

/// The items of `turns` of the chain rooted at `chain_root` in one list,
/// oldest first (see [`turn_items`]).
pub async fn items(
    store: &dyn ResponseStore,
    chain_root: &str,
    turns: &[ContextTurn],
) -> Result<Vec<Value>, ApiError> {
    let turns = turn_items(store, chain_root, turns).await?;
    Ok(turns.into_iter().flatten().collect())
}

/// The items of `turns` of the chain rooted at `chain_root`, one list per
/// turn, oldest first. A turn whose entry expired from the store is an
/// error: its follow-ups would otherwise run on a silently shortened context.
pub async fn turn_items(
    store: &dyn ResponseStore,
    chain_root: &str,
    turns: &[ContextTurn],
) -> Result<Vec<Vec<Value>>, ApiError> {
    if turns.is_empty() {
        return Ok(Vec::new());
    }
    let indexes: Vec<u64> = turns.iter().map(|t| t.turn).collect();
    let entries = store.chain_turns(chain_root, &indexes).await?;
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Some(bytes) = entry else {
            return Err(ApiError::invalid_code(
                "An earlier turn of this chain has expired from the store; start a new chain.",
                Some("previous_response_id"),
                "previous_response_not_found",
            ));
        };
        let turn: Vec<Value> = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Backend(format!("corrupt chain entry: {e}")))?;
        out.push(turn);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turns(sizes: &[u64]) -> Vec<ContextTurn> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &bytes)| ContextTurn {
                turn: i as u64,
                bytes,
            })
            .collect()
    }

    #[test]
    fn a_window_that_fits_keeps_every_turn() {
        let prev = ContextTurn { turn: 3, bytes: 10 };
        let w = window(&turns(&[10, 10, 10]), prev, 10, 100, Truncation::Auto).unwrap();
        assert_eq!(w.len(), 4);
    }

    #[test]
    fn auto_drops_to_half_the_budget_then_stays_put() {
        let budget = 100;
        let mut w: Vec<ContextTurn> = Vec::new();
        let mut starts = Vec::new();
        for t in 0..40u64 {
            w = window(
                &w,
                ContextTurn { turn: t, bytes: 10 },
                10,
                budget,
                Truncation::Auto,
            )
            .unwrap();
            assert!(w.iter().map(|c| c.bytes).sum::<u64>() + 10 <= budget);
            starts.push(w[0].turn);
        }
        // The first turn of the window changes rarely: the prompt prefix is stable.
        let moves = starts.windows(2).filter(|p| p[0] != p[1]).count();
        assert!(
            moves <= 40 / 4,
            "window start moved {moves} times: {starts:?}"
        );
        assert_eq!(w.last().unwrap().turn, 39);
    }

    #[test]
    fn auto_always_keeps_the_previous_turn() {
        let prev = ContextTurn {
            turn: 1,
            bytes: 500,
        };
        let w = window(&turns(&[10]), prev, 10, 100, Truncation::Auto).unwrap();
        assert_eq!(w, vec![prev]);
    }

    #[test]
    fn disabled_refuses_what_cannot_fit() {
        let prev = ContextTurn {
            turn: 1,
            bytes: 500,
        };
        let err = window(&[], prev, 10, 100, Truncation::Disabled).unwrap_err();
        assert_eq!(err.code(), Some("context_length_exceeded"));
    }

    #[test]
    fn budgets_leave_room_for_the_output() {
        assert_eq!(
            budget(Truncation::Auto, 1000, Some(100)),
            900 * MIN_BYTES_PER_TOKEN
        );
        assert_eq!(
            budget(Truncation::Auto, 1000, None),
            750 * MIN_BYTES_PER_TOKEN
        );
        assert_eq!(
            budget(Truncation::Auto, 1000, Some(5000)),
            500 * MIN_BYTES_PER_TOKEN
        );
        assert_eq!(
            budget(Truncation::Disabled, 1000, None),
            1000 * MAX_BYTES_PER_TOKEN
        );
    }

    fn tail(first: u64, n: usize) -> ConversationTail {
        ConversationTail {
            first,
            items: (0..n)
                .map(|i| serde_json::json!(first + i as u64))
                .collect(),
            bytes: 0,
        }
    }

    #[test]
    fn a_conversation_that_fits_is_kept_whole() {
        for mode in [Truncation::Auto, Truncation::Disabled] {
            assert_eq!(conversation_window(tail(0, 3), mode).unwrap().len(), 3);
        }
    }

    #[test]
    fn a_long_conversation_starts_at_a_step_that_stays_put() {
        // Items 21.. fit: the window starts at 32, and keeps starting there
        // while the conversation grows and 32.. still fits.
        for first in [21, 30, 32] {
            let w = conversation_window(tail(first, 40), Truncation::Auto).unwrap();
            assert_eq!(w.first(), Some(&serde_json::json!(32)), "{first}");
        }
        // The step follows the tail's length (here 2): at least half is kept.
        let w = conversation_window(tail(33, 5), Truncation::Auto).unwrap();
        assert_eq!(
            w,
            (34..38).map(|n| serde_json::json!(n)).collect::<Vec<_>>()
        );
        assert_eq!(
            conversation_window(tail(9, 1), Truncation::Auto)
                .unwrap()
                .len(),
            1
        );
        let err = conversation_window(tail(1, 3), Truncation::Disabled).unwrap_err();
        assert_eq!(err.code(), Some("context_length_exceeded"));
    }
}
