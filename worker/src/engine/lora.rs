//! LoRA adapters on the engine thread.
//!
//! llama.cpp applies adapters to a whole context, not per sequence, so a
//! step decodes one batch per adapter set among the running sequences (the
//! base model is a set too), setting the context's adapter before each.
//! Every running sequence still advances once per step; a set change costs
//! llama.cpp a graph re-reservation, so [`groups`] orders the sets to
//! start with the one already applied.

use super::seq::Seq;
use crate::lora::LoraSet;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::LlamaLoraAdapter;

/// The loaded adapters and the set the context holds now.
pub(super) struct Loras {
    adapters: Vec<LlamaLoraAdapter>,
    current: LoraSet,
}

impl Loras {
    pub(super) fn new(adapters: Vec<LlamaLoraAdapter>) -> Self {
        Self {
            adapters,
            current: LoraSet::BASE,
        }
    }

    /// The set the context decodes with now.
    pub(super) fn current(&self) -> LoraSet {
        self.current
    }

    /// Make `ctx` decode under `set`; a no-op when it already does.
    pub(super) fn apply(&mut self, ctx: &mut LlamaContext<'_>, set: LoraSet) -> Result<(), String> {
        if set == self.current {
            return Ok(());
        }
        let result = match set.get() {
            None => match self.adapters.first_mut() {
                // Removing clears every adapter, whichever is passed.
                Some(any) => ctx.lora_adapter_remove(any).map_err(|e| e.to_string()),
                None => Ok(()),
            },
            Some((index, scale)) => match self.adapters.get_mut(index) {
                Some(adapter) => ctx
                    .lora_adapter_set(adapter, scale)
                    .map_err(|e| e.to_string()),
                None => Err(format!("no LoRA adapter #{index}")),
            },
        };
        if result.is_ok() {
            self.current = set;
        }
        result
    }
}

/// The distinct adapter sets of `running`, the one `current` first (no
/// switch for it), the rest in a fixed order.
pub(super) fn groups(running: &[Seq], current: LoraSet) -> Vec<LoraSet> {
    let mut sets: Vec<LoraSet> = Vec::new();
    for s in running {
        if !sets.contains(&s.lora) {
            sets.push(s.lora);
        }
    }
    sets.sort_by_key(|s| (*s != current, s.order_key()));
    sets
}
