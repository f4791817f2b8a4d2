//! Grammar-constrained sampling: structured outputs (`json_object`,
//! `json_schema`) and forced tool calls.
//!
//! [`plan`] turns a request's [`OutputSpec`] into GBNF with llama.cpp's
//! `json_schema_to_grammar`, and [`Constraint::new`] parses it into a
//! llama.cpp grammar sampler; both run when the request is admitted, on
//! the blocking pool. On the engine thread a sequence's [`Constraint`]
//! checks the token its own sampler picked; a refused token is removed and
//! the draw repeated (twice), then the grammar masks the 256 most likely
//! tokens, and only when none of those fits the whole vocabulary (about
//! 5 ms for SmolLM2's 49k tokens, against ~0.2 ms). Redraws keep the
//! distribution of masking first (a draw from the remaining tokens,
//! renormalized); the top-256 mask drops allowed tokens of negligible
//! probability. Most steps cost one token check. Other sequences in the
//! batch never see it.

use crate::sampler::Sampler;
use crate::tools::forced::{self, ForcedError};
use crate::tools::ToolFormat;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;
use serde_json::{json, Value};
use spindle_proto::tools::{OutputFormat, OutputSpec};

/// Why a request's output cannot be constrained: a 400 naming `param`.
#[derive(Debug, thiserror::Error)]
pub enum ConstraintError {
    #[error("response format: the schema uses {0}, which constrained generation cannot enforce")]
    Unsupported(String),
    #[error(transparent)]
    Forced(#[from] ForcedError),
    #[error("the schema could not be turned into a grammar: {0}")]
    Convert(String),
    #[error("the grammar built from the schema was refused by llama.cpp")]
    Grammar,
}

impl ConstraintError {
    /// The request field at fault.
    pub fn param(&self) -> &'static str {
        match self {
            Self::Forced(ForcedError::UnknownFunction(_)) => "tool_choice",
            Self::Forced(_) => "tools",
            _ => "response_format",
        }
    }
}

/// The name the forced call's own rules hang from (the converter names
/// rules after properties, so a `root` of its own is renamed to this).
const CALL_RULE: &str = "spindle-tool-call";

/// The GBNF that `spec` asks output to follow, if any. A forced tool call
/// wins over a response format (the turn is a call, not text).
pub fn plan(spec: &OutputSpec, format: ToolFormat) -> Result<Option<String>, ConstraintError> {
    if spec.tools_enabled() {
        if let Some(schema) = forced::call_schema(&spec.tools, &spec.tool_choice, format)? {
            let gbnf = convert_text(&schema)?;
            let renamed = rename_root(&gbnf, CALL_RULE);
            return Ok(Some(format!(
                "root ::= {}\n{renamed}",
                forced::wrap(format, CALL_RULE)
            )));
        }
    }
    match &spec.format {
        OutputFormat::Text => Ok(None),
        OutputFormat::JsonObject => convert(&json!({"type": "object"})).map(Some),
        OutputFormat::JsonSchema { schema } => {
            if let Some(feature) = spindle_proto::schema::unsupported(schema) {
                return Err(ConstraintError::Unsupported(feature));
            }
            convert(schema).map(Some)
        }
    }
}

fn convert(schema: &Value) -> Result<String, ConstraintError> {
    convert_text(&schema.to_string())
}

fn convert_text(schema: &str) -> Result<String, ConstraintError> {
    llama_cpp_2::json_schema_to_grammar(schema).map_err(|e| ConstraintError::Convert(e.to_string()))
}

/// `gbnf` with its `root` rule renamed (rule names start a line).
fn rename_root(gbnf: &str, name: &str) -> String {
    gbnf.lines()
        .map(|l| match l.strip_prefix("root ::=") {
            Some(rest) => format!("{name} ::={rest}\n"),
            None => format!("{l}\n"),
        })
        .collect()
}

/// Draws after a refused one before the grammar masks the vocabulary (a
/// stochastic draw is a pass over the logits, about as costly as masking
/// the top candidates).
const MAX_REDRAWS: usize = 2;

/// The grammar masks the most likely tokens first: checking a token costs
/// a walk over the grammar's states, so a 50k vocabulary takes
/// milliseconds, and tokens past the first few hundred carry almost no
/// probability.
const TOP_CANDIDATES: usize = 256;

/// One sequence's grammar and its scratch buffers.
pub struct Constraint {
    grammar: LlamaSampler,
    one: LlamaTokenDataArray,
    all: LlamaTokenDataArray,
    masked: Vec<f32>,
}

impl Constraint {
    /// Parse `gbnf` for `model`'s vocabulary.
    pub fn new(model: &LlamaModel, gbnf: &str) -> Result<Self, ConstraintError> {
        let grammar =
            LlamaSampler::grammar(model, gbnf, "root").map_err(|_| ConstraintError::Grammar)?;
        Ok(Self {
            grammar,
            one: LlamaTokenDataArray::new(Vec::with_capacity(1), false),
            all: LlamaTokenDataArray::new(Vec::new(), false),
            masked: Vec::new(),
        })
    }

    /// Whether the grammar allows `token` next.
    fn allows(&mut self, token: i32) -> bool {
        self.one.data.clear();
        self.one
            .data
            .push(LlamaTokenData::new(LlamaToken(token), 0.0, 0.0));
        self.one.selected = None;
        self.grammar.apply(&mut self.one);
        self.one.data.first().is_some_and(|d| d.logit().is_finite())
    }

    /// `logits` with every token the grammar refuses at −∞, looking only at
    /// the `top` most likely tokens when given (the rest count as refused);
    /// `None` when it allows none of those it looked at.
    fn mask(&mut self, logits: &[f32], top: Option<usize>) -> Option<&[f32]> {
        self.all.data.clear();
        self.all.data.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| LlamaTokenData::new(LlamaToken(i as i32), l, 0.0)),
        );
        if let Some(k) = top.filter(|&k| k > 0 && k < self.all.data.len()) {
            self.all
                .data
                .select_nth_unstable_by(k - 1, |a, b| b.logit().total_cmp(&a.logit()));
            self.all.data.truncate(k);
        }
        self.all.selected = None;
        self.all.sorted = false;
        self.grammar.apply(&mut self.all);
        self.masked.clear();
        self.masked.resize(logits.len(), f32::NEG_INFINITY);
        let mut any = false;
        for d in &self.all.data {
            if d.logit().is_finite() {
                if let Some(slot) = self.masked.get_mut(d.id().0 as usize) {
                    *slot = d.logit();
                    any = true;
                }
            }
        }
        any.then_some(self.masked.as_slice())
    }

    /// Whether the output is complete after a token whose text is
    /// `piece`: it closed a value (or a call's closing marker) and the
    /// grammar now allows the end. The whitespace a grammar still allows
    /// after a JSON value is not worth generating; a bare number or a
    /// scalar that may go on ends when the model ends it.
    pub fn is_complete(&mut self, piece: &[u8], eos: LlamaToken) -> bool {
        let closes = piece
            .iter()
            .rev()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| b"}]\">el".contains(b));
        closes && self.allows(eos.0)
    }

    /// Advance the grammar past `tokens` (text already generated, replayed
    /// by a failover); false when it does not follow the grammar.
    pub fn advance(&mut self, tokens: &[LlamaToken]) -> bool {
        tokens
            .iter()
            .all(|t| self.allows(t.0) && self.grammar.try_accept(*t).is_ok())
    }

    /// Pick the next token with `sampler` among those the grammar allows,
    /// and advance the grammar past it. `None`: the grammar allows nothing
    /// (cannot happen for a grammar that ends: it then allows end-of-generation).
    pub fn sample(&mut self, sampler: &mut Sampler, logits: &[f32]) -> Option<i32> {
        let mut token = sampler.sample(logits);
        let mut allowed = self.allows(token);
        // A refused token is dropped and the draw repeated: still a draw
        // from the allowed tokens' distribution, and a few draws cost far
        // less than the grammar checking the whole vocabulary.
        if !allowed {
            self.masked.clear();
            self.masked.extend_from_slice(logits);
            for _ in 0..MAX_REDRAWS {
                if let Some(l) = self.masked.get_mut(token as usize) {
                    *l = f32::NEG_INFINITY;
                }
                token = sampler.sample(&self.masked);
                allowed = self
                    .masked
                    .get(token as usize)
                    .is_some_and(|l| l.is_finite())
                    && self.allows(token);
                if allowed {
                    break;
                }
            }
        }
        if !allowed {
            // The most likely tokens first (what a draw picks from anyway),
            // the whole vocabulary only when none of them fits.
            let found = self.mask(logits, Some(TOP_CANDIDATES)).is_some()
                || self.mask(logits, None).is_some();
            if !found {
                return None;
            }
            token = sampler.sample(&self.masked);
            if !self
                .masked
                .get(token as usize)
                .is_some_and(|l| l.is_finite())
            {
                return None;
            }
        }
        self.grammar.try_accept(LlamaToken(token)).ok()?;
        Some(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_call_grammar_wraps_the_renamed_root() {
        let spec: OutputSpec = serde_json::from_value(json!({
            "tools": [{"name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}],
            "tool_choice": {"mode": "required"},
            "format": {"type": "json_object"},
        }))
        .unwrap();
        let g = plan(&spec, ToolFormat::Hermes).unwrap().unwrap();
        assert!(
            g.starts_with("root ::= \"<tool_call>\\n\" spindle-tool-call \"\\n</tool_call>\"\n"),
            "{g}"
        );
        assert_eq!(g.matches("root ::=").count(), 1, "{g}");
        assert!(g.contains("spindle-tool-call ::="), "{g}");
    }

    #[test]
    fn formats_and_refusals() {
        let mut spec = OutputSpec::default();
        assert!(plan(&spec, ToolFormat::Hermes).unwrap().is_none());
        spec.format = OutputFormat::JsonObject;
        assert!(plan(&spec, ToolFormat::Hermes)
            .unwrap()
            .unwrap()
            .contains("root ::="));
        spec.format = OutputFormat::JsonSchema {
            schema: json!({"type": "array", "uniqueItems": true}),
        };
        let err = plan(&spec, ToolFormat::Hermes).unwrap_err();
        assert!(err.to_string().contains("uniqueItems"), "{err}");
        assert_eq!(err.param(), "response_format");
    }
}
