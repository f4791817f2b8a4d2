//! Embeddings on the real llama.cpp engine with SmolLM2-135M (mean pooling:
//! the GGUF states none): determinism, batching (one request's inputs and
//! concurrent requests packed into shared decodes give the vectors each
//! input gets alone), similarity, unit length, both encodings, token-id
//! input, and the 400s naming their parameter. Interleaved with generation
//! on the engine thread (`--embedding-mode interleaved`) the vectors are
//! the same and a generation beside them runs to its end.

use futures::StreamExt;
use spindle_proto::openai::embeddings::{EmbeddingInput, EmbeddingVector};
use spindle_proto::openai::{EmbeddingRequest, EncodingFormat};
use spindle_proto::{GenerateEvent, GenerateRequest, SamplingParams};
use spindle_worker::embed::EmbedMode;
use spindle_worker::error::WorkerError;
use spindle_worker::{Worker, WorkerConfig};

const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1";

fn model_path() -> String {
    format!(
        "{}/../../shared/models/{MODEL}.gguf",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// A small embedding context (64 tokens), so a handful of inputs takes
/// several decodes.
async fn worker() -> Worker {
    worker_in(EmbedMode::Separate).await
}

async fn worker_in(embedding_mode: EmbedMode) -> Worker {
    let c = WorkerConfig {
        ctx_size: 256,
        max_seqs: 2,
        // Small steps: a generating step leaves room for few inputs.
        max_batch_tokens: 32,
        threads: Some(2),
        gpu_layers: 0,
        embedding_ctx_size: 64,
        embedding_mode,
        ..WorkerConfig::for_model(&model_path())
    };
    Worker::start(&c).await.expect("worker starts")
}

fn req(input: EmbeddingInput) -> EmbeddingRequest {
    EmbeddingRequest {
        model: Some(MODEL.into()),
        input: Some(input),
        encoding_format: EncodingFormat::Float,
        dimensions: None,
        user: None,
    }
}

fn texts(t: &[&str]) -> EmbeddingInput {
    EmbeddingInput::Texts(t.iter().map(|s| s.to_string()).collect())
}

async fn vectors(w: &Worker, r: EmbeddingRequest) -> Vec<Vec<f32>> {
    let resp = w.embed(r).await.expect("embeds");
    resp.data
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            assert_eq!(e.index as usize, i);
            e.embedding.values().expect("decodes")
        })
        .collect()
}

async fn one(w: &Worker, text: &str) -> Vec<f32> {
    vectors(w, req(EmbeddingInput::Text(text.into())))
        .await
        .remove(0)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (n(a) * n(b))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const INPUTS: [&str; 6] = [
    "The cat sat on the mat.",
    "Quarterly revenue grew by eight percent compared with last year, driven by strong sales.",
    "How do I reset my password?",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen in plants.",
    "ok",
    "Rust's borrow checker rules out data races at compile time.",
];

#[tokio::test]
async fn vectors_are_unit_length_deterministic_and_the_same_in_a_batch() {
    let w = worker().await;
    let alone: Vec<Vec<f32>> = {
        let mut v = Vec::new();
        for t in INPUTS {
            v.push(one(&w, t).await);
        }
        v
    };
    assert_eq!(alone[0].len(), w.embedder.dims);
    assert_eq!(w.embedder.dims, 576, "SmolLM2-135M's width");
    for v in &alone {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
    // The same input again: the same vector.
    let again = one(&w, INPUTS[1]).await;
    assert!(
        max_diff(&again, &alone[1]) < 1e-6,
        "{}",
        max_diff(&again, &alone[1])
    );
    // All of them in one request: 64-token decodes hold a few at a time.
    let batched = vectors(&w, req(texts(&INPUTS))).await;
    assert_eq!(batched.len(), INPUTS.len());
    for (i, (b, a)) in batched.iter().zip(&alone).enumerate() {
        assert!(cosine(a, b) > 0.9999, "input {i}: cosine {}", cosine(a, b));
        assert!(max_diff(a, b) < 2e-3, "input {i}: {}", max_diff(a, b));
    }
    // Concurrent requests share decodes too, and still get their own vectors.
    let calls: Vec<_> = INPUTS
        .iter()
        .map(|t| {
            let w = w.clone();
            let t = t.to_string();
            tokio::spawn(async move { one(&w, &t).await })
        })
        .collect();
    for (i, c) in calls.into_iter().enumerate() {
        let v = c.await.unwrap();
        assert!(cosine(&v, &alone[i]) > 0.9999, "input {i}");
    }
}

#[tokio::test]
async fn paraphrases_are_closer_than_unrelated_texts() {
    let w = worker().await;
    let pairs = [
        (
            "The cat sat on the mat.",
            "A cat was sitting on the mat.",
            "Quarterly revenue grew by eight percent.",
        ),
        (
            "How do I reset my password?",
            "How can I change my password?",
            "The mitochondria is the powerhouse of the cell.",
        ),
        (
            "It is raining heavily in London today.",
            "Today there is heavy rain in London.",
            "Please install the package with pip.",
        ),
    ];
    for (a, para, other) in pairs {
        let (va, vp, vo) = (one(&w, a).await, one(&w, para).await, one(&w, other).await);
        let (close, far) = (cosine(&va, &vp), cosine(&va, &vo));
        assert!(
            close > far + 0.1,
            "{a:?}: paraphrase {close:.4}, unrelated {far:.4}"
        );
    }
}

#[tokio::test]
async fn base64_and_token_ids_give_the_same_vectors() {
    let w = worker().await;
    let text = INPUTS[3];
    let floats = one(&w, text).await;
    let mut r = req(EmbeddingInput::Text(text.into()));
    r.encoding_format = EncodingFormat::Base64;
    let resp = w.embed(r).await.unwrap();
    let EmbeddingVector::Base64(b64) = &resp.data[0].embedding else {
        panic!("asked for base64: {:?}", resp.data[0].embedding)
    };
    assert_eq!(b64.len(), (576 * 4usize).div_ceil(3) * 4);
    let decoded = resp.data[0].embedding.clone().values().unwrap();
    assert_eq!(decoded, floats, "base64 holds the same f32 values");
    // The text's own tokens, given as ids: the same vector, the same usage.
    let ids: Vec<i64> = w
        .engine
        .model
        .llama
        .vocab()
        .tokenize(text.as_bytes(), true, false)
        .iter()
        .map(|t| i64::from(t.0))
        .collect();
    let by_ids = w
        .embed(req(EmbeddingInput::TokenLists(vec![
            ids.clone(),
            ids.clone(),
        ])))
        .await
        .unwrap();
    assert_eq!(by_ids.usage.prompt_tokens as usize, 2 * ids.len());
    assert_eq!(resp.usage.prompt_tokens as usize, ids.len());
    for e in by_ids.data {
        let v = e.embedding.values().unwrap();
        assert!(max_diff(&v, &floats) < 2e-3, "{}", max_diff(&v, &floats));
    }
    let single = vectors(&w, req(EmbeddingInput::Tokens(ids))).await;
    assert!(cosine(&single[0], &floats) > 0.9999);
}

/// The parameter a refused request names.
async fn refused(w: &Worker, r: EmbeddingRequest) -> (Option<String>, String) {
    match w.embed(r).await {
        Err(WorkerError::InvalidRequest { param, message, .. }) => (param, message),
        other => panic!("expected a 400, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_inputs_are_refused_naming_their_param() {
    let w = worker().await;
    let mut r = req(EmbeddingInput::Text("x".into()));
    r.dimensions = Some(128);
    let (param, message) = refused(&w, r).await;
    assert_eq!(param.as_deref(), Some("dimensions"));
    assert!(message.contains("576"), "{message}");
    let mut r = req(EmbeddingInput::Text("x".into()));
    r.dimensions = Some(576);
    assert!(
        w.embed(r).await.is_ok(),
        "the model's own dimension is fine"
    );

    let long = "word ".repeat(200);
    let (param, message) = refused(&w, req(texts(&["fine", &long]))).await;
    assert_eq!(param.as_deref(), Some("input[1]"));
    assert!(message.contains("64-token"), "{message}");
    let (param, _) = refused(&w, req(EmbeddingInput::Tokens(vec![1; 65]))).await;
    assert_eq!(param.as_deref(), Some("input"));
    let (param, _) = refused(
        &w,
        req(EmbeddingInput::TokenLists(vec![
            vec![1, 2],
            vec![3, 49_152],
        ])),
    )
    .await;
    assert_eq!(param.as_deref(), Some("input[1]"));
    let (param, _) = refused(&w, req(texts(&["a", ""]))).await;
    assert_eq!(param.as_deref(), Some("input[1]"));
    let (param, _) = refused(&w, req(EmbeddingInput::Texts(Vec::new()))).await;
    assert_eq!(param.as_deref(), Some("input"));
    let mut r = req(EmbeddingInput::Text("x".into()));
    r.model = Some("other".into());
    assert!(matches!(
        w.embed(r).await,
        Err(WorkerError::UnknownModel(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_embeddings_match_and_generation_goes_on() {
    let want = vectors(&worker().await, req(texts(&INPUTS))).await;
    let w = worker_in(EmbedMode::Interleaved).await;
    let generation = GenerateRequest::from_prompt(
        "Once upon a time",
        SamplingParams {
            temperature: 0.0,
            max_tokens: Some(48),
            ignore_eos: true,
            ..Default::default()
        },
    );
    let mut events = w.generate(generation).await.expect("accepted");
    let generated = async {
        while let Some(ev) = events.next().await {
            if let GenerateEvent::Done { usage, .. } = ev {
                return usage.completion_tokens;
            }
        }
        panic!("the generation did not finish")
    };
    // Both requests, and separately queued single inputs, beside it.
    let singles = futures::future::join_all(INPUTS.iter().map(|t| one(&w, t)));
    let (got, singles, generated) =
        tokio::join!(vectors(&w, req(texts(&INPUTS))), singles, generated);
    assert_eq!(generated, 48);
    for (i, ((g, s), a)) in got.iter().zip(&singles).zip(&want).enumerate() {
        assert!(max_diff(a, g) < 2e-3, "input {i}: {}", max_diff(a, g));
        assert!(max_diff(a, s) < 2e-3, "input {i} alone: {}", max_diff(a, s));
    }
}
