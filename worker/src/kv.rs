//! The KV cache's settings: the attention kernel (`--flash-attn`) and the
//! element types of the cached keys and values (`--cache-type-k`/`-v`),
//! checked against each other and the model before llama.cpp sees them.
//!
//! llama.cpp stores a quantized V cache only under flash attention, and a
//! quantized type packs a head's numbers in blocks (32 for every type here),
//! so a model whose attention heads are not a multiple of that cannot use
//! it. Both are refused at startup with a message naming the flags, instead
//! of a context llama.cpp declines (or an assertion deep in ggml).

use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::model::LlamaModel;

/// `--flash-attn`: llama.cpp's fused attention kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FlashAttn {
    /// llama.cpp decides per model and device (on where supported).
    #[default]
    Auto,
    On,
    Off,
}

/// `--cache-type-k`/`--cache-type-v`: how each cached key or value number
/// is stored (llama-server's set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CacheType {
    F32,
    #[default]
    F16,
    Bf16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q5_1")]
    Q5_1,
    #[value(name = "q5_0")]
    Q5_0,
    #[value(name = "q4_1")]
    Q4_1,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "iq4_nl")]
    Iq4Nl,
}

impl CacheType {
    /// Numbers per quantization block; `None` for the float types.
    pub fn block(self) -> Option<u32> {
        match self {
            Self::F32 | Self::F16 | Self::Bf16 => None,
            _ => Some(32),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::Q8_0 => "q8_0",
            Self::Q5_1 => "q5_1",
            Self::Q5_0 => "q5_0",
            Self::Q4_1 => "q4_1",
            Self::Q4_0 => "q4_0",
            Self::Iq4Nl => "iq4_nl",
        }
    }

    fn llama(self) -> KvCacheType {
        match self {
            Self::F32 => KvCacheType::F32,
            Self::F16 => KvCacheType::F16,
            Self::Bf16 => KvCacheType::BF16,
            Self::Q8_0 => KvCacheType::Q8_0,
            Self::Q5_1 => KvCacheType::Q5_1,
            Self::Q5_0 => KvCacheType::Q5_0,
            Self::Q4_1 => KvCacheType::Q4_1,
            Self::Q4_0 => KvCacheType::Q4_0,
            Self::Iq4Nl => KvCacheType::IQ4_NL,
        }
    }
}

/// The KV settings of one engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvSettings {
    pub flash_attn: FlashAttn,
    pub type_k: CacheType,
    pub type_v: CacheType,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KvError {
    #[error("--cache-type-v {0} is quantized, which llama.cpp supports only with flash attention: use --flash-attn on (or auto), or --cache-type-v f16")]
    QuantizedVNeedsFlashAttn(&'static str),
    #[error("--cache-type-{which} {ty} packs {block} numbers a block, but this model's attention heads hold {head} (not a multiple): use f16, bf16 or f32")]
    HeadSize {
        which: char,
        ty: &'static str,
        block: u32,
        head: u32,
    },
}

impl KvSettings {
    /// The checks that need no model (also `--check`).
    pub fn validate(&self) -> Result<(), KvError> {
        if self.type_v.block().is_some() && self.flash_attn == FlashAttn::Off {
            return Err(KvError::QuantizedVNeedsFlashAttn(self.type_v.name()));
        }
        Ok(())
    }

    /// [`Self::validate`], and that the quantized types fit the model's
    /// attention heads (`head` numbers each).
    pub fn validate_for(&self, head: u32) -> Result<(), KvError> {
        self.validate()?;
        for (which, ty) in [('k', self.type_k), ('v', self.type_v)] {
            if let Some(block) = ty.block().filter(|&b| !head.is_multiple_of(b)) {
                return Err(KvError::HeadSize {
                    which,
                    ty: ty.name(),
                    block,
                    head,
                });
            }
        }
        Ok(())
    }

    /// The context parameters with these settings.
    pub fn apply(&self, params: LlamaContextParams) -> LlamaContextParams {
        use llama_cpp_sys_2 as sys;
        let policy = match self.flash_attn {
            FlashAttn::Auto => sys::LLAMA_FLASH_ATTN_TYPE_AUTO,
            FlashAttn::On => sys::LLAMA_FLASH_ATTN_TYPE_ENABLED,
            FlashAttn::Off => sys::LLAMA_FLASH_ATTN_TYPE_DISABLED,
        };
        params
            .with_flash_attention_policy(policy)
            .with_type_k(self.type_k.llama())
            .with_type_v(self.type_v.llama())
    }
}

/// Numbers per attention head of `model`'s keys (GGUF
/// `<arch>.attention.key_length`, else the embedding over the heads).
pub fn head_size(model: &LlamaModel) -> u32 {
    let from_meta = model
        .meta_val_str("general.architecture")
        .ok()
        .and_then(|arch| {
            model
                .meta_val_str(&format!("{arch}.attention.key_length"))
                .ok()
        })
        .and_then(|v| v.trim().parse::<u32>().ok());
    from_meta.unwrap_or_else(|| {
        let heads = model.n_head().max(1);
        u32::try_from(model.n_embd()).unwrap_or(0) / heads
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(flash_attn: FlashAttn, type_k: CacheType, type_v: CacheType) -> KvSettings {
        KvSettings {
            flash_attn,
            type_k,
            type_v,
        }
    }

    #[test]
    fn a_quantized_v_cache_needs_flash_attention() {
        let off = kv(FlashAttn::Off, CacheType::F16, CacheType::Q8_0);
        let err = off.validate().unwrap_err();
        assert_eq!(err, KvError::QuantizedVNeedsFlashAttn("q8_0"));
        assert!(err.to_string().contains("--flash-attn on"));
        for fa in [FlashAttn::On, FlashAttn::Auto] {
            assert_eq!(kv(fa, CacheType::Q8_0, CacheType::Q8_0).validate(), Ok(()));
        }
        // A quantized K alone is fine without it.
        assert_eq!(
            kv(FlashAttn::Off, CacheType::Q8_0, CacheType::F16).validate(),
            Ok(())
        );
    }

    #[test]
    fn quantized_types_need_heads_a_multiple_of_their_block() {
        let q = kv(FlashAttn::On, CacheType::Q8_0, CacheType::F16);
        assert_eq!(q.validate_for(64), Ok(()));
        let err = q.validate_for(8).unwrap_err();
        assert_eq!(
            err,
            KvError::HeadSize {
                which: 'k',
                ty: "q8_0",
                block: 32,
                head: 8
            }
        );
        assert_eq!(KvSettings::default().validate_for(8), Ok(()));
    }
}
