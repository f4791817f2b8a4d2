//! Planning prefix-cache reuse: how much of a cached KV entry a prompt can
//! keep ([`plan_reuse`]).
//!
//! Reuse goes beyond a common prefix in one case: a prompt that drops a
//! middle span of a cached entry, as a chain does when `truncation: auto`
//! drops its oldest turns (system prompt kept, then the newer turns). The
//! entry's cells for the dropped span are removed and the rest shifted
//! back (llama.cpp re-rotates the keys: a RoPE K-shift), so only the new
//! turn is computed instead of the whole window.

use llama_cpp_2::token::LlamaToken;

/// Copying a whole KV stream between slots costs a buffer copy: worth it only
/// when it saves recomputing at least this many prompt tokens.
pub(super) const MIN_COPY_GAIN: usize = 16;

/// A KV shift is worth it only when it saves recomputing at least this many
/// prompt tokens (it costs one pass over the shifted cells).
const MIN_SHIFT_GAIN: usize = 64;

/// Prompt tokens after the common prefix looked up in a cached entry to
/// find where the prompt resumes it.
const SHIFT_PROBE: usize = 16;

/// What a prompt can reuse of a cached entry: the common `prefix`, and then,
/// when the prompt skips part of the entry, the run `cached[from..from + len]`
/// that it continues with (`shift`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Reuse {
    pub(super) prefix: usize,
    pub(super) shift: Option<(usize, usize)>,
}

impl Reuse {
    /// Prompt tokens whose KV is reused.
    pub(super) fn tokens(&self) -> usize {
        self.prefix + self.shift.map_or(0, |(_, len)| len)
    }
}

/// How much of `cached` `prompt` can reuse (see [`Reuse`]); shifts only
/// when `shift_ok` (the model's KV supports it) and worth [`MIN_SHIFT_GAIN`].
pub(super) fn plan_reuse(cached: &[LlamaToken], prompt: &[LlamaToken], shift_ok: bool) -> Reuse {
    let prefix = common_prefix(cached, prompt);
    let mut reuse = Reuse {
        prefix,
        shift: None,
    };
    let rest = &prompt[prefix..];
    if !shift_ok || rest.len() < MIN_SHIFT_GAIN || cached.len() < prefix + MIN_SHIFT_GAIN {
        return reuse;
    }
    let probe = &rest[..SHIFT_PROBE];
    for from in prefix + 1..=cached.len() - SHIFT_PROBE {
        if cached[from..from + SHIFT_PROBE] == *probe {
            let len = common_prefix(&cached[from..], rest);
            if len >= MIN_SHIFT_GAIN && reuse.shift.is_none_or(|(_, best)| len > best) {
                reuse.shift = Some((from, len));
            }
        }
    }
    reuse
}

pub(super) fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(v: &[i32]) -> Vec<LlamaToken> {
        v.iter().copied().map(LlamaToken).collect()
    }

    #[test]
    fn a_dropped_middle_span_is_found_after_the_common_prefix() {
        // cached: head (0..10), old turns (100..200), kept turn (1000..1100)
        let head: Vec<i32> = (0..10).collect();
        let cached = toks(&[head.clone(), (100..200).collect(), (1000..1100).collect()].concat());
        let prompt = toks(&[head, (1000..1100).collect(), vec![7, 7, 7]].concat());
        let r = plan_reuse(&cached, &prompt, true);
        assert_eq!(r.prefix, 10);
        assert_eq!(r.shift, Some((110, 100)));
        assert_eq!(r.tokens(), 110);
        // Not when the model cannot shift, nor for a short run.
        assert_eq!(plan_reuse(&cached, &prompt, false).shift, None);
        let short = toks(&[(0..10).collect::<Vec<_>>(), (1000..1030).collect()].concat());
        assert_eq!(plan_reuse(&cached, &short, true).shift, None);
        // A plain extension is a prefix, with no shift.
        let ext = toks(&[cached.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]].concat());
        assert_eq!(
            plan_reuse(&cached, &ext, true),
            Reuse {
                prefix: 210,
                shift: None
            }
        );
    }
}
