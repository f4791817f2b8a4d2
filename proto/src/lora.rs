//! LoRA adapter selection: which of a worker's `--lora` adapters a request
//! runs under, and at what scale.
//!
//! Clients name adapters in the `lora` extension field
//! (`[{"name": "…", "scale": 1.0}]`) or as the model id `base:adapter`
//! (scale 1). The API layer validates the list once ([`validate`]); the
//! worker resolves the names against the adapters it loaded.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The largest scale magnitude accepted: a LoRA delta far beyond its
/// trained size only produces noise, and a bound keeps logits finite.
pub const MAX_SCALE: f32 = 10.0;

/// Most adapters with a non-zero scale one request may combine (each adds
/// its two small products to every weight it adapts).
pub const MAX_ADAPTERS: usize = 8;

/// The separator of a `base:adapter` model id.
pub const MODEL_SEPARATOR: char = ':';

/// One adapter and its scale (llama.cpp multiplies the adapter's delta by
/// `scale × alpha / rank`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoraSelection {
    /// The adapter's name (`--lora NAME=PATH` on the worker).
    pub name: String,
    /// Default 1.
    #[serde(default = "one")]
    pub scale: f32,
}

fn one() -> f32 {
    1.0
}

/// Why a `lora` list is refused, with the index of the offending entry.
#[derive(Debug, Clone, PartialEq)]
pub enum LoraError {
    EmptyName(usize),
    Scale(usize),
    Duplicate(usize, String),
    TooMany,
}

impl std::fmt::Display for LoraError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::EmptyName(i) => write!(f, "lora[{i}].name must not be empty"),
            Self::Scale(i) => write!(
                f,
                "lora[{i}].scale must be a finite number between -{MAX_SCALE} and {MAX_SCALE}"
            ),
            Self::Duplicate(i, name) => write!(f, "lora[{i}] names adapter '{name}' a second time"),
            Self::TooMany => write!(
                f,
                "at most {MAX_ADAPTERS} LoRA adapters with a non-zero scale per request"
            ),
        }
    }
}

impl LoraError {
    /// The request parameter to name in a 400.
    pub fn param(&self) -> String {
        match self {
            Self::EmptyName(i) | Self::Duplicate(i, _) => format!("lora[{i}].name"),
            Self::Scale(i) => format!("lora[{i}].scale"),
            Self::TooMany => "lora".into(),
        }
    }
}

/// Checks names and scales, drops zero scales (a zero-scale adapter is
/// exactly the base model, and then shares its batches and cache) and
/// orders the rest by name: adapters add up, so a set is the same set in
/// any order, and routes and caches as one.
pub fn validate(list: &[LoraSelection]) -> Result<Vec<LoraSelection>, LoraError> {
    let mut kept: Vec<LoraSelection> = Vec::new();
    for (i, sel) in list.iter().enumerate() {
        if sel.name.trim().is_empty() {
            return Err(LoraError::EmptyName(i));
        }
        if !sel.scale.is_finite() || sel.scale.abs() > MAX_SCALE {
            return Err(LoraError::Scale(i));
        }
        if list[..i].iter().any(|s| s.name == sel.name) {
            return Err(LoraError::Duplicate(i, sel.name.clone()));
        }
        if sel.scale != 0.0 {
            kept.push(sel.clone());
        }
    }
    if kept.len() > MAX_ADAPTERS {
        return Err(LoraError::TooMany);
    }
    kept.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(kept)
}

/// A `base:adapter` model id split in two; `None` for a plain id.
pub fn split_model(model: &str) -> Option<(&str, &str)> {
    model
        .rsplit_once(MODEL_SEPARATOR)
        .filter(|(base, adapter)| !base.is_empty() && !adapter.is_empty())
}

/// The model id that lists `adapter` of `base` in `/v1/models`.
pub fn model_id(base: &str, adapter: &str) -> String {
    format!("{base}{MODEL_SEPARATOR}{adapter}")
}

/// A stable text naming a (validated) selection, for routing keys: empty for
/// the base model.
pub fn identity(list: &[LoraSelection]) -> String {
    list.iter()
        .map(|s| format!("{}@{}", s.name, s.scale))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(name: &str, scale: f32) -> LoraSelection {
        LoraSelection {
            name: name.into(),
            scale,
        }
    }

    #[test]
    fn scale_defaults_to_one_and_zero_scales_are_dropped() {
        let s: LoraSelection = serde_json::from_str(r#"{"name":"a"}"#).unwrap();
        assert_eq!(s.scale, 1.0);
        assert_eq!(validate(&[sel("a", 0.0)]).unwrap(), vec![]);
        assert_eq!(
            validate(&[sel("a", 0.0), sel("b", 0.5)]).unwrap(),
            vec![sel("b", 0.5)]
        );
    }

    #[test]
    fn bad_lists_name_the_entry() {
        assert_eq!(validate(&[sel("", 1.0)]), Err(LoraError::EmptyName(0)));
        assert_eq!(
            validate(&[sel("a", 1.0), sel("b", f32::NAN)]),
            Err(LoraError::Scale(1))
        );
        assert_eq!(validate(&[sel("a", 10.5)]), Err(LoraError::Scale(0)));
        assert!(validate(&[sel("a", -10.0)]).is_ok());
        assert_eq!(
            validate(&[sel("a", 1.0), sel("a", 2.0)]),
            Err(LoraError::Duplicate(1, "a".into()))
        );
        let many: Vec<_> = (0..=MAX_ADAPTERS)
            .map(|i| sel(&format!("a{i}"), 1.0))
            .collect();
        assert_eq!(validate(&many), Err(LoraError::TooMany));
        // Several are one set in any order.
        assert_eq!(
            validate(&[sel("b", 2.0), sel("a", 1.0)]).unwrap(),
            vec![sel("a", 1.0), sel("b", 2.0)]
        );
        assert_eq!(LoraError::Scale(1).param(), "lora[1].scale");
    }

    #[test]
    fn model_ids_split_at_the_last_colon() {
        assert_eq!(split_model("base:ad"), Some(("base", "ad")));
        assert_eq!(split_model("hf:x:ad"), Some(("hf:x", "ad")));
        assert_eq!(split_model("base"), None);
        assert_eq!(split_model("base:"), None);
        assert_eq!(model_id("b", "a"), "b:a");
        assert_eq!(identity(&[sel("a", 0.5)]), "a@0.5");
    }
}
