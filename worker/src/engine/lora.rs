//! LoRA adapters on the engine thread.
//!
//! llama.cpp applies adapters to a whole context, not per sequence, so a
//! step decodes one batch per adapter set among the running sequences (the
//! base model is a set too), setting the context's adapters before each.
//! Every running sequence still advances once per step; a set change costs
//! llama.cpp a graph re-reservation, so [`groups`] orders the sets to
//! start with the one already applied.
//!
//! A set of several adapters goes through `llama_set_adapters_lora`, which
//! takes them all at once. llama-cpp-2 (pinned) wraps it for one adapter
//! only and keeps its handles' pointers private; it does print them in its
//! `Debug` forms, so [`Combiner`] reads them there and checks the context's
//! against llama.cpp (its model and size) before it is ever used. Where
//! that fails the engine applies one adapter per request and says so.

use super::seq::Seq;
use crate::lora::LoraSet;
use crate::model::Model;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::LlamaLoraAdapter;
use llama_cpp_sys_2::{llama_adapter_lora, llama_context};

/// The loaded adapters and the set the context holds now.
pub(super) struct Loras {
    adapters: Vec<LlamaLoraAdapter>,
    current: LoraSet,
    combiner: Option<Combiner>,
}

impl Loras {
    pub(super) fn new(
        adapters: Vec<LlamaLoraAdapter>,
        ctx: &LlamaContext<'_>,
        model: &Model,
    ) -> Self {
        let combiner = if adapters.len() > 1 {
            let c = Combiner::new(ctx, model, &adapters);
            if c.is_none() {
                tracing::warn!(
                    "LoRA: cannot reach llama_set_adapters_lora through these bindings; \
                     requests may use one adapter at a time"
                );
            }
            c
        } else {
            None
        };
        Self {
            adapters,
            current: LoraSet::BASE,
            combiner,
        }
    }

    /// Whether a request may combine several adapters.
    pub(super) fn combines(&self) -> bool {
        self.combiner.is_some()
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
        let mut adapters = set.adapters();
        let result = match (adapters.next(), adapters.next()) {
            (None, _) => match self.adapters.first_mut() {
                // Removing clears every adapter, whichever is passed.
                Some(any) => ctx.lora_adapter_remove(any).map_err(|e| e.to_string()),
                None => Ok(()),
            },
            (Some((index, scale)), None) => match self.adapters.get_mut(index) {
                Some(adapter) => ctx
                    .lora_adapter_set(adapter, scale)
                    .map_err(|e| e.to_string()),
                None => Err(format!("no LoRA adapter #{index}")),
            },
            (Some(_), Some(_)) => match &self.combiner {
                Some(c) => c.set(set),
                None => Err("this engine cannot combine LoRA adapters".into()),
            },
        };
        if result.is_ok() {
            self.current = set;
        }
        result
    }
}

/// Raw handles for `llama_set_adapters_lora` (see the module comment).
/// Valid while the engine's context and adapters live: [`Loras`] owns the
/// adapters and is dropped after the context (field order of the step loop).
struct Combiner {
    ctx: *mut llama_context,
    adapters: Vec<*mut llama_adapter_lora>,
}

impl Combiner {
    fn new(ctx: &LlamaContext<'_>, model: &Model, adapters: &[LlamaLoraAdapter]) -> Option<Self> {
        let raw_ctx = printed_pointer(ctx)? as *mut llama_context;
        let raw_model = printed_pointer(&model.llama)?;
        // SAFETY: `raw_ctx` is what the context handle prints as its own
        // pointer; llama.cpp confirms it is a context of this model and size.
        let same = unsafe {
            llama_cpp_sys_2::llama_get_model(raw_ctx) as usize == raw_model
                && llama_cpp_sys_2::llama_n_ctx(raw_ctx) == ctx.n_ctx()
        };
        if !same {
            return None;
        }
        let adapters = adapters
            .iter()
            .map(|a| printed_pointer(a).map(|p| p as *mut llama_adapter_lora))
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            ctx: raw_ctx,
            adapters,
        })
    }

    fn set(&self, set: LoraSet) -> Result<(), String> {
        let (mut adapters, mut scales): (Vec<_>, Vec<_>) = set
            .adapters()
            .map(|(i, scale)| self.adapters.get(i).map(|&a| (a, scale)))
            .collect::<Option<Vec<_>>>()
            .ok_or("no such LoRA adapter")?
            .into_iter()
            .unzip();
        // SAFETY: pointers checked at construction, alive (see the struct);
        // llama.cpp copies the lists.
        let code = unsafe {
            llama_cpp_sys_2::llama_set_adapters_lora(
                self.ctx,
                adapters.as_mut_ptr(),
                adapters.len(),
                scales.as_mut_ptr(),
            )
        };
        if code == 0 {
            Ok(())
        } else {
            Err(format!("llama_set_adapters_lora returned {code}"))
        }
    }
}

/// The one pointer a llama-cpp-2 handle prints in its `Debug` form
/// (`LlamaContext { context: 0x… }`); `None` unless exactly one is there.
fn printed_pointer(handle: &impl std::fmt::Debug) -> Option<usize> {
    let text = format!("{handle:?}");
    let mut parts = text.split("0x").skip(1);
    let (hex, None) = (parts.next()?, parts.next()) else {
        return None;
    };
    let digits: String = hex.chars().take_while(char::is_ascii_hexdigit).collect();
    usize::from_str_radix(&digits, 16).ok().filter(|&p| p != 0)
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
    sets.sort_by_key(|s| (*s != current, *s));
    sets
}

#[cfg(test)]
mod tests {
    use super::printed_pointer;

    #[derive(Debug)]
    struct Handle {
        #[allow(dead_code)]
        context: std::ptr::NonNull<u8>,
    }

    #[test]
    fn the_printed_pointer_is_read_back() {
        let mut x = 7u8;
        let h = Handle {
            context: std::ptr::NonNull::from(&mut x),
        };
        assert_eq!(printed_pointer(&h), Some(&x as *const u8 as usize));
        assert_eq!(printed_pointer(&"no pointer"), None);
        assert_eq!(printed_pointer(&"0x10 and 0x20"), None);
    }
}
