//! `truncation: "auto"` on the worker: fitting a chat into the context by
//! dropping its oldest messages.
//!
//! The router sizes a chain's window in bytes, a coarse bound; only the
//! worker knows the exact token count. So with `auto` the worker drops whole
//! messages, oldest first, until the prompt plus the output room fits one
//! sequence's context. System messages and everything from the newest user
//! message on are never dropped, and a tool result never outlives the call
//! it answers (a cut never lands on a `tool` message).
//!
//! Drops come in steps, so the kept messages' start stays put for several
//! turns and the prompt prefix (and the engine's prefix cache) with it: the
//! cut is rounded up to a multiple of a power of two no larger than half the
//! messages that would fit, which keeps at least half of what fits. No state
//! is needed for this stickiness. When the cut does move, the engine still
//! reuses the kept messages' KV by shifting it (see `engine::step`).

use spindle_proto::ChatMessage;

/// Output tokens a prompt under `auto` leaves room for: `max_tokens`, or a
/// quarter of the context when none is given, and at most half the context
/// (a larger `max_tokens` still generates up to what the context holds).
pub fn output_room(ctx: u32, max_tokens: Option<u32>) -> usize {
    let ctx = ctx as usize;
    max_tokens
        .map_or(ctx / 4, |m| m as usize)
        .min(ctx / 2)
        .max(1)
}

/// A chat fitted into the context.
#[derive(Debug, PartialEq, Eq)]
pub struct Fitted<T> {
    /// The prompt's tokens.
    pub tokens: Vec<T>,
    /// Messages dropped.
    pub dropped: usize,
}

/// Fits `messages` into `limit` prompt tokens. `tokenize` renders and
/// tokenizes a list of messages; `max_bytes` is what `limit` tokens can hold
/// at most in message text (so longer candidates are dropped before any
/// tokenizing). `Ok(None)`: even with every droppable message gone the
/// prompt is longer than `limit`.
pub fn fit<T, E>(
    messages: &[ChatMessage],
    limit: usize,
    max_bytes: usize,
    mut tokenize: impl FnMut(&[ChatMessage]) -> Result<Vec<T>, E>,
) -> Result<Option<Fitted<T>>, E> {
    let cuts = Cuts::new(messages);
    let n = cuts.order.len();
    // The cuts allowed, fewest drops first (the last drops every candidate).
    let valid: Vec<usize> = (0..=n).filter(|&d| cuts.snap(d) == d).collect();
    // Message text after the cut `d`: a lower bound on its tokens' bytes.
    let total: usize = messages.iter().map(|m| m.content.len()).sum();
    let mut gone = vec![0usize; n + 1];
    for (d, &i) in cuts.order.iter().enumerate() {
        gone[d + 1] = gone[d] + messages[i].content.len();
    }
    let Some(first) = valid.iter().position(|&d| total - gone[d] <= max_bytes) else {
        return Ok(None);
    };
    let mut at = |d: usize| -> Result<Option<Vec<T>>, E> {
        let tokens = tokenize(&cuts.kept(d))?;
        Ok((tokens.len() <= limit).then_some(tokens))
    };
    // The fewest drops that fit (`good`), by bisection over the cuts.
    let last = valid.len() - 1;
    let (mut good, mut best) = match at(valid[first])? {
        Some(tokens) if valid[first] == 0 => return Ok(Some(Fitted { tokens, dropped: 0 })),
        Some(tokens) => (first, tokens),
        None if first == last => return Ok(None),
        None => match at(valid[last])? {
            Some(tokens) => (last, tokens),
            None => return Ok(None),
        },
    };
    let mut bad = first;
    while good > bad + 1 {
        let mid = bad + (good - bad) / 2;
        match at(valid[mid])? {
            Some(tokens) => (good, best) = (mid, tokens),
            None => bad = mid,
        }
    }
    let dropped = valid[good];
    // Round the cut up to a step, so it stays put while the chat grows:
    // a power of two within half of what is kept.
    let half = ((n - dropped) / 2).max(1);
    let step = 1usize << (usize::BITS - 1 - half.leading_zeros());
    let sticky = cuts.snap((dropped.div_ceil(step) * step).min(n));
    if sticky != dropped {
        if let Some(tokens) = at(sticky)? {
            return Ok(Some(Fitted {
                tokens,
                dropped: sticky,
            }));
        }
    }
    Ok(Some(Fitted {
        tokens: best,
        dropped,
    }))
}

/// Where a chat may be cut: `order` lists the droppable messages (before the
/// newest user message, not system), oldest first; a cut drops the first
/// `d` of them.
struct Cuts<'a> {
    messages: &'a [ChatMessage],
    order: Vec<usize>,
}

impl<'a> Cuts<'a> {
    fn new(messages: &'a [ChatMessage]) -> Self {
        let newest_user = messages
            .iter()
            .rposition(|m| m.role == "user")
            .unwrap_or(messages.len());
        let order = (0..newest_user)
            .filter(|&i| !is_system(&messages[i]))
            .collect();
        Self { messages, order }
    }

    /// The first cut at or after `d` that does not keep a tool result
    /// whose call was dropped (no cut keeps the chat as it came).
    fn snap(&self, mut d: usize) -> usize {
        while d > 0 && d < self.order.len() && self.messages[self.order[d]].role == "tool" {
            d += 1;
        }
        d.min(self.order.len())
    }

    /// The messages kept by the cut `d`, in their order.
    fn kept(&self, d: usize) -> Vec<ChatMessage> {
        let dropped = &self.order[..d.min(self.order.len())];
        self.messages
            .iter()
            .enumerate()
            .filter(|(i, _)| dropped.binary_search(i).is_err())
            .map(|(_, m)| m.clone())
            .collect()
    }
}

fn is_system(m: &ChatMessage) -> bool {
    matches!(m.role.as_str(), "system" | "developer")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One "token" per content byte plus 2 per message: exact and monotone.
    fn tokenize(m: &[ChatMessage]) -> Result<Vec<u8>, ()> {
        Ok(vec![0; m.iter().map(|m| m.content.len() + 2).sum()])
    }

    fn msg(role: &str, len: usize) -> ChatMessage {
        ChatMessage::text(role, "x".repeat(len))
    }

    /// A system message, then `turns` user/assistant pairs of 10 + 10 bytes,
    /// then the newest user message.
    fn chat(turns: usize) -> Vec<ChatMessage> {
        let mut m = vec![msg("system", 20)];
        for _ in 0..turns {
            m.push(msg("user", 10));
            m.push(msg("assistant", 10));
        }
        m.push(msg("user", 30));
        m
    }

    fn kept(m: &[ChatMessage], f: &Fitted<u8>) -> Vec<ChatMessage> {
        Cuts::new(m).kept(f.dropped)
    }

    #[test]
    fn a_chat_that_fits_is_kept_whole() {
        let m = chat(3);
        let f = fit(&m, 1000, 10_000, tokenize).unwrap().unwrap();
        assert_eq!(f.dropped, 0);
        assert_eq!(f.tokens.len(), tokenize(&m).unwrap().len());
    }

    #[test]
    fn the_oldest_turns_go_first_never_system_or_the_newest_user_turn() {
        let m = chat(10);
        let limit = 150;
        let f = fit(&m, limit, 10_000, tokenize).unwrap().unwrap();
        assert!(f.tokens.len() <= limit);
        assert!(f.dropped > 0);
        let k = kept(&m, &f);
        assert_eq!(k[0].role, "system");
        assert_eq!(k.last(), m.last());
        // What is kept is the newest messages, whole.
        assert_eq!(k[1..], m[m.len() - (k.len() - 1)..]);
        assert_eq!(f.tokens.len(), tokenize(&k).unwrap().len());
    }

    #[test]
    fn nothing_fits_when_the_pinned_messages_alone_are_too_long() {
        let m = chat(4);
        // system (22) + newest user (32) = 54 tokens.
        assert!(fit(&m, 53, 10_000, tokenize).unwrap().is_none());
        let f = fit(&m, 54, 10_000, tokenize).unwrap().unwrap();
        assert_eq!(f.dropped, 8);
        // The byte bound alone refuses, without tokenizing.
        let never = |_: &[ChatMessage]| -> Result<Vec<u8>, ()> { panic!("tokenized") };
        assert!(fit(&m, 1000, 49, never).unwrap().is_none());
    }

    #[test]
    fn the_cut_stays_put_for_several_turns() {
        // 18 of the 24-token turns fit beside the system and newest turns.
        let limit = 500;
        let f = |t: usize| fit(&chat(t), limit, 10_000, tokenize).unwrap().unwrap();
        let mut moves = 0;
        for t in 20..60 {
            let (before, now) = (f(t - 1), f(t));
            assert!(now.tokens.len() <= limit);
            // At least half of the 36 messages that fit are kept, with the
            // system and the newest user message.
            assert!(kept(&chat(t), &now).len() > 19, "{t}");
            if now.dropped != before.dropped {
                moves += 1;
            }
        }
        // Dropping only what is needed would move the cut on every turn.
        assert!(moves <= 40 / 4, "the cut moved on {moves} of 40 turns");
    }

    #[test]
    fn a_tool_result_never_outlives_its_call() {
        let mut m = vec![msg("system", 5)];
        for _ in 0..6 {
            m.push(msg("user", 10));
            m.push(msg("assistant", 10));
            m.push(msg("tool", 10));
            m.push(msg("tool", 10));
            m.push(msg("assistant", 10));
        }
        m.push(msg("user", 10));
        for limit in 20..200 {
            if let Some(f) = fit(&m, limit, 10_000, tokenize).unwrap() {
                assert!(f.tokens.len() <= limit);
                let k = kept(&m, &f);
                assert_ne!(k.get(1).map(|m| m.role.as_str()), Some("tool"), "{limit}");
            }
        }
    }

    #[test]
    fn output_room_defaults_to_a_quarter_and_is_at_most_half() {
        assert_eq!(output_room(512, None), 128);
        assert_eq!(output_room(512, Some(50)), 50);
        assert_eq!(output_room(512, Some(5000)), 256);
    }
}
