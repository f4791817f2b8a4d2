//! LoRA adapters: `--lora NAME=PATH.gguf` parsed and loaded once at
//! startup (llama.cpp checks each file against the model), and a request's
//! selection (its `lora` list or a `base:adapter` model id) resolved to the
//! [`LoraSet`] the engine decodes it under.

use crate::error::WorkerError;
use llama_cpp_2::model::{LlamaLoraAdapter, LlamaModel};
use spindle_proto::lora::{self, LoraSelection};
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

/// The adapter a sequence decodes under: an index into the loaded adapters
/// and its scale, or none (the base model). Equal sets may share a decode
/// and a prefix-cache entry; different ones never do.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoraSet(Option<(usize, f32)>);

impl PartialEq for LoraSet {
    fn eq(&self, other: &Self) -> bool {
        // Scales compare by bits: two sets are equal only when llama.cpp
        // would compute exactly the same thing.
        match (self.0, other.0) {
            (None, None) => true,
            (Some((a, x)), Some((b, y))) => a == b && x.to_bits() == y.to_bits(),
            _ => false,
        }
    }
}

impl Eq for LoraSet {}

impl LoraSet {
    pub const BASE: Self = Self(None);

    pub fn adapter(index: usize, scale: f32) -> Self {
        Self(Some((index, scale)).filter(|_| scale != 0.0))
    }

    /// The adapter's index and scale; `None` for the base model.
    pub fn get(&self) -> Option<(usize, f32)> {
        self.0
    }

    /// An order over sets: the base model first, then by adapter and scale.
    pub fn order_key(&self) -> (usize, u32) {
        self.0.map_or((0, 0), |(i, s)| (i + 1, s.to_bits()))
    }
}

/// The set a request asks for: its `lora` list (validated again here: the
/// worker is called directly too), plus the adapter its model id names
/// (`base:adapter`, scale 1). `names` are the loaded adapters' names.
pub fn resolve(
    names: &[String],
    model_adapter: Option<&str>,
    list: &[LoraSelection],
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
    Ok(match kept.first() {
        None => LoraSet::BASE,
        Some(sel) => {
            let index = names.iter().position(|n| *n == sel.name).unwrap_or(0);
            LoraSet::adapter(index, sel.scale)
        }
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
        assert_eq!(resolve(&names, None, &[]).unwrap(), LoraSet::BASE);
        assert_eq!(
            resolve(&names, None, &[sel("b", 0.5)]).unwrap(),
            LoraSet::adapter(1, 0.5)
        );
        assert_eq!(
            resolve(&names, Some("a"), &[]).unwrap(),
            LoraSet::adapter(0, 1.0)
        );
        // A scale 0 is the base model.
        assert_eq!(
            resolve(&names, None, &[sel("a", 0.0)]).unwrap(),
            LoraSet::BASE
        );
        let Err(WorkerError::InvalidRequest { message, param, .. }) =
            resolve(&names, None, &[sel("c", 1.0)])
        else {
            panic!("unknown adapter accepted")
        };
        assert!(message.contains("'c'"), "{message}");
        assert_eq!(param.as_deref(), Some("lora[0].name"));
        assert!(resolve(&names, None, &[sel("a", 1.0), sel("b", 1.0)]).is_err());
        assert!(resolve(&names, None, &[sel("a", 11.0)]).is_err());
    }
}
