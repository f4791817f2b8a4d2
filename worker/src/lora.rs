//! LoRA adapters: `--lora NAME=PATH.gguf` parsed and loaded once at
//! startup (llama.cpp checks each file against the model), and a request's
//! selection (its `lora` list or a `base:adapter` model id) resolved to the
//! [`LoraSet`] the engine decodes it under.

use crate::error::WorkerError;
use llama_cpp_2::model::{LlamaLoraAdapter, LlamaModel};
use spindle_proto::lora::{self, LoraSelection, MAX_ADAPTERS};
use std::path::PathBuf;

/// One `--lora NAME=PATH` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraSpec {
    pub name: String,
    pub path: PathBuf,
}

/// clap's parser for `--lora`: `NAME=PATH`, the name free of `:`, `,`
/// and `=` (it appears in `base:adapter` model ids).
pub fn parse_spec(s: &str) -> Result<LoraSpec, String> {
    let (name, path) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=PATH.gguf"))?;
    let name = name.trim();
    if name.is_empty() || name.contains([lora::MODEL_SEPARATOR, ',', '=', '/']) {
        return Err(format!(
            "adapter name {name:?} must be non-empty and free of ':', ',', '=' and '/'"
        ));
    }
    if path.trim().is_empty() {
        return Err(format!("adapter {name} has no path"));
    }
    Ok(LoraSpec {
        name: name.to_owned(),
        path: PathBuf::from(path.trim()),
    })
}

/// Why an adapter did not load: the worker does not start.
#[derive(Debug, thiserror::Error)]
pub enum LoraLoadError {
    #[error("--lora {0} is given twice")]
    Duplicate(String),
    #[error("LoRA adapter {name}: {path} is not a readable file")]
    Missing { name: String, path: String },
    #[error("LoRA adapter {name} ({path}) does not fit the model: llama.cpp refused it ({reason}; its log above says which tensor or key)")]
    Refused {
        name: String,
        path: String,
        reason: String,
    },
}

/// Adapters loaded into `model`, in flag order (a [`LoraSet`] indexes them).
pub fn load(
    model: &mut LlamaModel,
    specs: &[LoraSpec],
) -> Result<Vec<(String, LlamaLoraAdapter)>, LoraLoadError> {
    let mut loaded: Vec<(String, LlamaLoraAdapter)> = Vec::new();
    for spec in specs {
        if loaded.iter().any(|(n, _)| *n == spec.name) {
            return Err(LoraLoadError::Duplicate(spec.name.clone()));
        }
        let path = spec.path.display().to_string();
        if !spec.path.is_file() {
            return Err(LoraLoadError::Missing {
                name: spec.name.clone(),
                path,
            });
        }
        let adapter = model
            .lora_adapter_init(&spec.path)
            .map_err(|e| LoraLoadError::Refused {
                name: spec.name.clone(),
                path: path.clone(),
                reason: e.to_string(),
            })?;
        tracing::info!(adapter = %spec.name, %path, "LoRA adapter loaded");
        loaded.push((spec.name.clone(), adapter));
    }
    Ok(loaded)
}

/// The adapters a sequence decodes under: indexes into the loaded adapters
/// with their non-zero scales, in index order; none is the base model.
/// Equal sets may share a decode and a prefix-cache entry; different ones
/// never do. Scales compare by bits: two sets are equal only when
/// llama.cpp would compute exactly the same thing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LoraSet {
    len: u8,
    /// (adapter index, scale bits); entries past `len` are zero.
    items: [(u16, u32); MAX_ADAPTERS],
}

impl LoraSet {
    pub const BASE: Self = Self {
        len: 0,
        items: [(0, 0); MAX_ADAPTERS],
    };

    /// One adapter at `scale` (scale 0 is the base model).
    pub fn adapter(index: usize, scale: f32) -> Self {
        Self::of([(index, scale)])
    }

    /// The set of these adapters, zero scales left out; `None` past
    /// [`MAX_ADAPTERS`] or an index beyond `u16`.
    pub fn try_of(adapters: impl IntoIterator<Item = (usize, f32)>) -> Option<Self> {
        let mut set = Self::BASE;
        for (index, scale) in adapters.into_iter().filter(|&(_, s)| s != 0.0) {
            let slot = set.items.get_mut(set.len as usize)?;
            *slot = (u16::try_from(index).ok()?, scale.to_bits());
            set.len += 1;
        }
        set.items[..set.len as usize].sort_unstable_by_key(|&(i, _)| i);
        Some(set)
    }

    fn of<const N: usize>(adapters: [(usize, f32); N]) -> Self {
        Self::try_of(adapters).unwrap_or(Self::BASE)
    }

    /// The (adapter index, scale) pairs, in index order; empty for the base.
    pub fn adapters(&self) -> impl Iterator<Item = (usize, f32)> + '_ {
        self.items[..self.len as usize]
            .iter()
            .map(|&(i, s)| (usize::from(i), f32::from_bits(s)))
    }
}

/// The set a request asks for: its `lora` list (validated again here: the
/// worker is called directly too), plus the adapter its model id names
/// (`base:adapter`, scale 1). `names` are the loaded adapters' names;
/// `combine` says whether this engine can apply several at once.
pub fn resolve(
    names: &[String],
    model_adapter: Option<&str>,
    list: &[LoraSelection],
    combine: bool,
) -> Result<LoraSet, WorkerError> {
    let mut list = list.to_vec();
    if let Some(a) = model_adapter {
        if !list.iter().any(|s| s.name == a) {
            list.push(LoraSelection {
                name: a.to_owned(),
                scale: 1.0,
            });
        }
    }
    for (i, sel) in list.iter().enumerate() {
        if !names.contains(&sel.name) {
            let known = if names.is_empty() {
                "this worker has none".to_owned()
            } else {
                format!("loaded: {}", names.join(", "))
            };
            return Err(WorkerError::InvalidRequest {
                message: format!("unknown LoRA adapter '{}' ({known})", sel.name),
                param: Some(format!("lora[{i}].name")),
                code: Some("lora_not_found"),
            });
        }
    }
    let kept = lora::validate(&list).map_err(|e| WorkerError::InvalidRequest {
        message: e.to_string(),
        param: Some(e.param()),
        code: None,
    })?;
    if kept.len() > 1 && !combine {
        return Err(WorkerError::InvalidRequest {
            message: "this worker applies one LoRA adapter per request (its llama.cpp \
                      bindings could not be set up to combine several; see its startup log)"
                .into(),
            param: Some("lora".into()),
            code: None,
        });
    }
    let indexed = kept.iter().map(|sel| {
        let index = names.iter().position(|n| *n == sel.name).unwrap_or(0);
        (index, sel.scale)
    });
    LoraSet::try_of(indexed).ok_or_else(|| WorkerError::InvalidRequest {
        message: lora::LoraError::TooMany.to_string(),
        param: Some("lora".into()),
        code: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_names_are_refused() {
        let s = parse_spec("pirate=/a/b.gguf").unwrap();
        assert_eq!(s.name, "pirate");
        assert_eq!(s.path, PathBuf::from("/a/b.gguf"));
        assert!(parse_spec("nopath").is_err());
        assert!(parse_spec("a:b=/x").is_err());
        assert!(parse_spec("=/x").is_err());
        assert!(parse_spec("a=").is_err());
    }

    #[test]
    fn selections_resolve_by_name_and_model_id() {
        let names = vec!["a".to_owned(), "b".to_owned()];
        let sel = |n: &str, s| LoraSelection {
            name: n.into(),
            scale: s,
        };
        let resolve =
            |model: Option<&str>, list: &[LoraSelection]| resolve(&names, model, list, true);
        assert_eq!(resolve(None, &[]).unwrap(), LoraSet::BASE);
        assert_eq!(
            resolve(None, &[sel("b", 0.5)]).unwrap(),
            LoraSet::adapter(1, 0.5)
        );
        assert_eq!(resolve(Some("a"), &[]).unwrap(), LoraSet::adapter(0, 1.0));
        // A scale 0 is the base model.
        assert_eq!(resolve(None, &[sel("a", 0.0)]).unwrap(), LoraSet::BASE);
        let Err(WorkerError::InvalidRequest { message, param, .. }) =
            resolve(None, &[sel("c", 1.0)])
        else {
            panic!("unknown adapter accepted")
        };
        assert!(message.contains("'c'"), "{message}");
        assert_eq!(param.as_deref(), Some("lora[0].name"));
        assert!(resolve(None, &[sel("a", 11.0)]).is_err());
        // Several, in any order, are one set; a model id's adapter joins it.
        let both = resolve(None, &[sel("b", 2.0), sel("a", 1.0)]).unwrap();
        assert_eq!(
            both,
            resolve(Some("b"), &[sel("b", 2.0), sel("a", 1.0)]).unwrap()
        );
        assert_eq!(both.adapters().collect::<Vec<_>>(), [(0, 1.0), (1, 2.0)]);
        assert_eq!(
            resolve(Some("a"), &[sel("b", 2.0)])
                .unwrap()
                .adapters()
                .count(),
            2
        );
        // An engine that cannot combine them refuses several.
        let one_only = super::resolve(&names, None, &[sel("a", 1.0), sel("b", 1.0)], false);
        assert!(one_only.is_err());
    }
}
