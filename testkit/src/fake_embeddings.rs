//! Fake embeddings for the fake worker and generator: each input's vector
//! is [`FAKE_DIMS`] values derived from its words (or token ids) alone, so
//! the same input always gets the same unit vector, alone or in a batch.
//! Keywords in a text input script failures: `REJECT` (400 naming the
//! input), `BUSY` (503).

use spindle_proto::openai::embeddings::InputRef;
use spindle_proto::openai::{EmbeddingRequest, EmbeddingResponse, ErrorObject};

/// Length of every fake vector.
pub const FAKE_DIMS: usize = 8;

/// Why a fake refused: the 400 body, or "busy" (503).
#[derive(Debug, Clone)]
pub enum FakeRefusal {
    BadRequest(ErrorObject),
    Busy,
}

fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// The unit vector of `input`: the sum of one pseudo-random vector per word
/// (or token id), normalized.
pub fn fake_vector(input: InputRef<'_>) -> Vec<f32> {
    let keys: Vec<u64> = match input {
        InputRef::Text(t) => t
            .split_whitespace()
            .map(|w| w.bytes().fold(17u64, |h, b| mix(h ^ u64::from(b))))
            .collect(),
        InputRef::Tokens(ids) => ids.iter().map(|&t| mix(t as u64 ^ 0x9e37)).collect(),
    };
    let mut v = vec![0f32; FAKE_DIMS];
    for k in keys {
        for (d, x) in v.iter_mut().enumerate() {
            let r = mix(k ^ (d as u64 + 1));
            *x += (r % 2001) as f32 / 1000.0 - 1.0;
        }
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// The answer a fake gives `req` (validated as the real ones validate).
pub fn fake_embeddings(req: &EmbeddingRequest) -> Result<EmbeddingResponse, FakeRefusal> {
    let invalid = |p: spindle_proto::openai::InvalidParam| {
        FakeRefusal::BadRequest(ErrorObject {
            message: p.message,
            kind: "invalid_request_error".into(),
            param: p.param,
            code: p.code.map(str::to_owned),
        })
    };
    let inputs = req.inputs().map_err(invalid)?;
    let model = req.model_name().map_err(invalid)?.to_owned();
    let mut tokens = 0u32;
    let mut vectors = Vec::new();
    for (i, input) in inputs.into_iter().enumerate() {
        if let InputRef::Text(t) = input {
            if t.contains("BUSY") {
                return Err(FakeRefusal::Busy);
            }
            if t.contains("REJECT") {
                return Err(FakeRefusal::BadRequest(ErrorObject {
                    message: "this input is rejected".into(),
                    kind: "invalid_request_error".into(),
                    param: Some(req.input_param(i)),
                    code: Some("context_length_exceeded".into()),
                }));
            }
        }
        tokens += match input {
            InputRef::Text(t) => t.split_whitespace().count() as u32,
            InputRef::Tokens(ids) => ids.len() as u32,
        };
        vectors.push(fake_vector(input));
    }
    Ok(EmbeddingResponse::new(
        model,
        vectors,
        tokens,
        req.encoding_format,
    ))
}
