//! `POST /v1/embeddings` in OpenAI's shape: the request (`input` as a
//! string, a list of strings, a list of token ids or a list of token-id
//! lists), its one validation ([`EmbeddingRequest::inputs`], used by the
//! router and the worker alike), and the response, whose vectors are JSON
//! floats or base64 (little-endian f32, as OpenAI's SDK decodes them).

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{invalid, InvalidParam};

/// Most inputs one request may embed (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;

/// Most tokens one request may embed, all inputs together (OpenAI's limit).
pub const MAX_REQUEST_TOKENS: usize = 300_000;

/// `input`: what to embed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(
    untagged,
    expecting = "a string, a list of strings, a list of token ids or a list of token-id lists"
)]
pub enum EmbeddingInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<i64>),
    TokenLists(Vec<Vec<i64>>),
}

/// `encoding_format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    #[default]
    Float,
    Base64,
}

/// `POST /v1/embeddings` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EmbeddingRequest {
    /// Required: the served model to embed with.
    #[serde(default)]
    pub model: Option<String>,
    /// Required (absent is a 400 naming it, like every other check here).
    #[serde(default)]
    #[schema(required = true)]
    pub input: Option<EmbeddingInput>,
    #[serde(default)]
    pub encoding_format: EncodingFormat,
    /// Accepted only when it equals the model's dimension (vectors are
    /// never shortened).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    /// Accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// One input of a request, as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputRef<'a> {
    Text(&'a str),
    Tokens(&'a [i64]),
}

impl EmbeddingRequest {
    /// The model asked for: required, as OpenAI requires it.
    pub fn model_name(&self) -> Result<&str, InvalidParam> {
        match self.model.as_deref() {
            Some(m) if !m.is_empty() => Ok(m),
            _ => Err(InvalidParam {
                param: Some("model".into()),
                message: "you must provide a model parameter".into(),
                code: Some("missing_required_parameter"),
            }),
        }
    }

    /// The inputs, checked: at least one, at most [`MAX_INPUTS`], none
    /// empty, no negative token id. What needs the model (vocabulary,
    /// context, dimension) the worker checks.
    pub fn inputs(&self) -> Result<Vec<InputRef<'_>>, InvalidParam> {
        self.model_name()?;
        if self.dimensions == Some(0) {
            return Err(invalid("dimensions", "'dimensions' must be at least 1"));
        }
        let inputs: Vec<InputRef<'_>> = match &self.input {
            None => return Err(invalid("input", "missing required parameter 'input'")),
            Some(EmbeddingInput::Text(t)) => vec![InputRef::Text(t)],
            Some(EmbeddingInput::Texts(ts)) => ts.iter().map(|t| InputRef::Text(t)).collect(),
            Some(EmbeddingInput::Tokens(ids)) => vec![InputRef::Tokens(ids)],
            Some(EmbeddingInput::TokenLists(ls)) => {
                ls.iter().map(|l| InputRef::Tokens(l)).collect()
            }
        };
        if inputs.is_empty() {
            return Err(invalid("input", "'input' must not be an empty list"));
        }
        if inputs.len() > MAX_INPUTS {
            return Err(invalid(
                "input",
                format!(
                    "'input' has {} items; at most {MAX_INPUTS} may be embedded in one request",
                    inputs.len()
                ),
            ));
        }
        for (i, input) in inputs.iter().enumerate() {
            let empty = match input {
                InputRef::Text(t) => t.is_empty(),
                InputRef::Tokens(ids) => ids.is_empty(),
            };
            if empty {
                return Err(invalid(
                    self.input_param(i),
                    format!("'{}' must not be empty", self.input_param(i)),
                ));
            }
            if let InputRef::Tokens(ids) = input {
                if let Some(bad) = ids.iter().find(|&&t| t < 0) {
                    return Err(invalid(
                        self.input_param(i),
                        format!("token id {bad} in '{}' is negative", self.input_param(i)),
                    ));
                }
            }
        }
        Ok(inputs)
    }

    /// The parameter path of input `i`: `input` when `input` is one item,
    /// else `input[i]`.
    pub fn input_param(&self, i: usize) -> String {
        match &self.input {
            Some(EmbeddingInput::Texts(_) | EmbeddingInput::TokenLists(_)) => format!("input[{i}]"),
            _ => "input".into(),
        }
    }
}

/// One vector as sent: JSON floats, or base64 of its little-endian f32 bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

/// A base64 vector that does not decode to whole f32s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadVector;

impl std::fmt::Display for BadVector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an embedding's base64 does not decode to little-endian f32 values")
    }
}

impl std::error::Error for BadVector {}

impl EmbeddingVector {
    /// `values` in `format`.
    pub fn encode(values: Vec<f32>, format: EncodingFormat) -> Self {
        match format {
            EncodingFormat::Float => Self::Float(values),
            EncodingFormat::Base64 => {
                let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                Self::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
        }
    }

    /// The values, whichever the encoding.
    pub fn values(self) -> Result<Vec<f32>, BadVector> {
        match self {
            Self::Float(v) => Ok(v),
            Self::Base64(s) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(s.as_bytes())
                    .map_err(|_| BadVector)?;
                if bytes.len() % 4 != 0 {
                    return Err(BadVector);
                }
                Ok(bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect())
            }
        }
    }

    /// The same vector in `format`.
    pub fn into_format(self, format: EncodingFormat) -> Result<Self, BadVector> {
        match (&self, format) {
            (Self::Float(_), EncodingFormat::Float) | (Self::Base64(_), EncodingFormat::Base64) => {
                Ok(self)
            }
            _ => Ok(Self::encode(self.values()?, format)),
        }
    }
}

/// One item of `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Embedding {
    /// Always `embedding`.
    pub object: String,
    pub index: u32,
    pub embedding: EmbeddingVector,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EmbeddingUsage {
    pub prompt_tokens: u32,
    pub total_tokens: u32,
}

/// The answer of `POST /v1/embeddings`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EmbeddingResponse {
    /// Always `list`.
    pub object: String,
    pub data: Vec<Embedding>,
    pub model: String,
    pub usage: EmbeddingUsage,
}

impl EmbeddingResponse {
    /// The response of `vectors` (in input order) in `format`.
    pub fn new(
        model: impl Into<String>,
        vectors: Vec<Vec<f32>>,
        prompt_tokens: u32,
        format: EncodingFormat,
    ) -> Self {
        Self {
            object: "list".into(),
            data: (0u32..)
                .zip(vectors)
                .map(|(index, v)| Embedding {
                    object: "embedding".into(),
                    index,
                    embedding: EmbeddingVector::encode(v, format),
                })
                .collect(),
            model: model.into(),
            usage: EmbeddingUsage {
                prompt_tokens,
                total_tokens: prompt_tokens,
            },
        }
    }

    /// The same response with every vector in `format`.
    pub fn into_format(mut self, format: EncodingFormat) -> Result<Self, BadVector> {
        for e in &mut self.data {
            let v = std::mem::replace(&mut e.embedding, EmbeddingVector::Float(Vec::new()));
            e.embedding = v.into_format(format)?;
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::parse_body;

    fn parse(body: &str) -> Result<EmbeddingRequest, InvalidParam> {
        parse_body::<EmbeddingRequest>(body.as_bytes())
    }

    fn param_of(body: &str) -> Option<String> {
        match parse(body) {
            Err(e) => e.param,
            Ok(r) => r.inputs().err().and_then(|e| e.param),
        }
    }

    #[test]
    fn every_input_shape_parses() {
        let shapes = [
            (r#""a""#, 1),
            (r#"["a","b"]"#, 2),
            (r#"[1,2,3]"#, 1),
            (r#"[[1,2],[3]]"#, 2),
        ];
        for (input, n) in shapes {
            let r = parse(&format!(r#"{{"model":"m","input":{input}}}"#)).unwrap();
            assert_eq!(r.inputs().unwrap().len(), n, "{input}");
            assert_eq!(r.encoding_format, EncodingFormat::Float);
        }
        let r = parse(r#"{"model":"m","input":[5,6]}"#).unwrap();
        assert_eq!(r.inputs().unwrap(), vec![InputRef::Tokens(&[5, 6])]);
    }

    #[test]
    fn bad_inputs_name_their_param() {
        let cases = [
            (r#"{"input":"a"}"#, "model"),
            (r#"{"model":"","input":"a"}"#, "model"),
            (r#"{"model":"m","input":""}"#, "input"),
            (r#"{"model":"m","input":[]}"#, "input"),
            (r#"{"model":"m","input":["a",""]}"#, "input[1]"),
            (r#"{"model":"m","input":[[1],[]]}"#, "input[1]"),
            (r#"{"model":"m","input":[[1],[-3]]}"#, "input[1]"),
            (r#"{"model":"m","input":[-1]}"#, "input"),
            (r#"{"model":"m","input":["a",1]}"#, "input"),
            (r#"{"model":"m","input":{"x":1}}"#, "input"),
            (r#"{"model":"m","input":[1.5]}"#, "input"),
            (
                r#"{"model":"m","input":"a","encoding_format":"int8"}"#,
                "encoding_format",
            ),
            (r#"{"model":"m","input":"a","dimensions":-4}"#, "dimensions"),
            (r#"{"model":"m","input":"a","dimensions":0}"#, "dimensions"),
            (r#"{"model":"m"}"#, "input"),
        ];
        for (body, param) in cases {
            assert_eq!(param_of(body).as_deref(), Some(param), "{body}");
        }
        let many = format!(r#"{{"model":"m","input":{:?}}}"#, vec!["x"; MAX_INPUTS + 1]);
        assert_eq!(param_of(&many).as_deref(), Some("input"));
        let most = format!(r#"{{"model":"m","input":{:?}}}"#, vec!["x"; MAX_INPUTS]);
        assert_eq!(param_of(&most), None);
    }

    #[test]
    fn base64_is_little_endian_f32() {
        let v = vec![1.0f32, -0.5, 0.25, f32::MIN_POSITIVE];
        let EmbeddingVector::Base64(s) = EmbeddingVector::encode(v.clone(), EncodingFormat::Base64)
        else {
            panic!("not base64")
        };
        // 1.0f32 is 00 00 80 3f little-endian.
        assert!(s.starts_with("AACAPw"), "{s}");
        let back = EmbeddingVector::Base64(s).values().unwrap();
        assert_eq!(back, v);
        assert_eq!(
            EmbeddingVector::Base64("AAA=".into()).values(),
            Err(BadVector)
        );
        let r = EmbeddingResponse::new("m", vec![v.clone(), vec![2.0]], 7, EncodingFormat::Base64);
        let r = r.into_format(EncodingFormat::Float).unwrap();
        assert_eq!(r.data[0].embedding, EmbeddingVector::Float(v));
        assert_eq!(r.data[1].index, 1);
        assert_eq!(r.usage.total_tokens, 7);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["object"], "list");
        assert_eq!(json["data"][1]["object"], "embedding");
        assert_eq!(json["data"][1]["embedding"], serde_json::json!([2.0]));
    }
}
