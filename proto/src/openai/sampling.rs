//! The sampling fields both endpoints share (OpenAI's plus llama.cpp's
//! `top_k`, `min_p`, `repetition_penalty`, `ignore_eos`), validated once into
//! [`SamplingParams`].

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{invalid, InvalidParam};
use crate::SamplingParams;
pub use crate::MAX_STOP;

/// `stop`: one string or a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// Sampling fields shared by both endpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SamplingFields {
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f32>,
    #[schema(minimum = 0, maximum = 1)]
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    #[schema(minimum = 0, maximum = 1)]
    pub min_p: Option<f32>,
    pub seed: Option<u64>,
    #[schema(minimum = -2, maximum = 2)]
    pub presence_penalty: Option<f32>,
    #[schema(minimum = -2, maximum = 2)]
    pub frequency_penalty: Option<f32>,
    #[schema(exclusive_minimum = 0)]
    pub repetition_penalty: Option<f32>,
    pub stop: Option<Stop>,
    #[schema(minimum = 1)]
    pub max_tokens: Option<u32>,
    #[schema(minimum = 1)]
    pub max_completion_tokens: Option<u32>,
    /// Only 1 is supported.
    #[schema(minimum = 1, maximum = 1)]
    pub n: Option<u32>,
    /// `text`, `json_object` or `json_schema` (see [`super::tools::output_format`]).
    pub response_format: Option<Value>,
    /// llama.cpp's extension: generate exactly `max_tokens`.
    pub ignore_eos: Option<bool>,
}

fn in_range(name: &str, v: Option<f32>, lo: f32, hi: f32) -> Result<(), InvalidParam> {
    match v {
        Some(x) if x.is_nan() || !(lo..=hi).contains(&x) => Err(invalid(
            name,
            format!("'{name}' must be between {lo} and {hi}, got {x}"),
        )),
        _ => Ok(()),
    }
}

impl SamplingFields {
    /// Validates every field and builds [`SamplingParams`]; `default_max`
    /// applies when neither `max_tokens` nor `max_completion_tokens` is given.
    pub fn to_params(&self, default_max: Option<u32>) -> Result<SamplingParams, InvalidParam> {
        self.to_params_with(default_max, false)
    }

    /// [`Self::to_params`], where `zero_ok` lets `max_tokens` be 0 (a
    /// prompt echoed and scored, nothing generated).
    pub fn to_params_with(
        &self,
        default_max: Option<u32>,
        zero_ok: bool,
    ) -> Result<SamplingParams, InvalidParam> {
        let d = SamplingParams::default();
        in_range("temperature", self.temperature, 0.0, 2.0)?;
        in_range("top_p", self.top_p, 0.0, 1.0)?;
        in_range("min_p", self.min_p, 0.0, 1.0)?;
        in_range("presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        in_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        let repetition_penalty = self.repetition_penalty.unwrap_or(d.repetition_penalty);
        if repetition_penalty.is_nan() || repetition_penalty <= 0.0 {
            return Err(invalid(
                "repetition_penalty",
                "'repetition_penalty' must be positive",
            ));
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(invalid("n", "only n=1 is supported"));
        }
        let max_tokens = self.max_completion_tokens.or(self.max_tokens);
        if max_tokens == Some(0) && !zero_ok {
            let name = if self.max_completion_tokens.is_some() {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            return Err(invalid(name, format!("'{name}' must be at least 1")));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            // Checked before copying: the list's length is the client's.
            Some(Stop::Many(v)) if v.len() > MAX_STOP => {
                return Err(invalid(
                    "stop",
                    format!("at most {MAX_STOP} stop sequences are allowed"),
                ))
            }
            Some(Stop::Many(v)) => v.clone(),
        };
        let params = SamplingParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_p: self.top_p.unwrap_or(d.top_p),
            top_k: self.top_k.unwrap_or(d.top_k),
            min_p: self.min_p.unwrap_or(d.min_p),
            seed: self.seed,
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            repetition_penalty,
            stop,
            max_tokens: max_tokens.or(default_max),
            ignore_eos: self.ignore_eos.unwrap_or(false),
            // Each endpoint has its own fields for them (see `request`).
            logprobs: None,
            prompt_logprobs: None,
        };
        match params.stop_error() {
            Some(message) => Err(invalid("stop", message)),
            None => Ok(params),
        }
    }
}
