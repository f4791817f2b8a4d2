//! The repack patches (patches/ggml-*-repack.patch) against stock ggml.
//!
//! A model loads twice: repacked for the patched batched kernels (the
//! default) and in the plain CPU buffer (`--no-repack`, stock kernels). The
//! same batch — several prompts at once (the GEMM path, with a GEMV tail)
//! and then one token per sequence — must give logits that agree to
//! float-rounding noise and pick the same tokens. On x86 with AVX2 they must
//! also differ in some bits: identical logits would mean the build does not
//! carry the patch. SmolLM2 covers Q4_1 (its layers) and Q8_0 (its output);
//! stories260K requantized by tests/quant_model.py covers Q5_0.

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;
use spindle_worker::model::{backend, LoadOptions, Model};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::Command;

const PROMPTS: &[&str] = &[
    "Write a short poem about the sea.",
    "What is the capital of France? Answer in one word.",
    "Explain photosynthesis to a child, in three sentences.",
    "List five prime numbers.",
    "Translate 'good morning' into Spanish.",
    "Why is the sky blue?",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn smollm2() -> PathBuf {
    root().join("../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// stories260K with Q5_0 layers and a Q8_0 output, written by
/// tests/quant_model.py (the Python with `gguf`: `SPINDLE_TEST_PYTHON`,
/// else the repo's .venv).
fn stories_q5_0() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spindle-repack-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let out = dir.join("stories260K-q5_0.gguf");
    let python = std::env::var_os("SPINDLE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/python"));
    let status = Command::new(python)
        .arg(root().join("tests/quant_model.py"))
        .arg(root().join("../shared/models/stories260K.gguf"))
        .arg(&out)
        .status()
        .expect("python runs (pip install -r tests/requirements.txt into .venv)");
    assert!(status.success(), "tests/quant_model.py failed");
    out
}

fn load(path: &Path, repack: bool) -> Model {
    let options = LoadOptions {
        repack,
        ..LoadOptions::default()
    };
    Model::load(path, options, None).expect("the model loads")
}

/// Logits of each prompt's last token after one batched prefill, then of
/// one more token per sequence (the greedy pick of the first pass) in a
/// second batch.
fn two_steps(model: &Model) -> [Vec<Vec<f32>>; 2] {
    let prompts: Vec<Vec<LlamaToken>> = PROMPTS.iter().map(|p| model.tokenize_prompt(p)).collect();
    let total: usize = prompts.iter().map(Vec::len).sum();
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(4096))
        .with_n_batch(total as u32)
        .with_n_ubatch(total as u32)
        .with_n_seq_max(prompts.len() as u32)
        .with_n_threads(2)
        .with_n_threads_batch(2);
    let mut ctx = model.llama.new_context(backend(), params).expect("context");
    let mut batch = LlamaBatch::new(total, 1);
    let mut at = Vec::new();
    for (seq, tokens) in prompts.iter().enumerate() {
        for (pos, &t) in tokens.iter().enumerate() {
            let last = pos + 1 == tokens.len();
            batch
                .add(t, pos as i32, &[seq as i32], last)
                .expect("batch has room");
            if last {
                at.push(batch.n_tokens() - 1);
            }
        }
    }
    ctx.decode(&mut batch).expect("prefill");
    let first: Vec<Vec<f32>> = at.iter().map(|&i| ctx.get_logits_ith(i).to_vec()).collect();

    batch.clear();
    for (seq, tokens) in prompts.iter().enumerate() {
        let next = LlamaToken(argmax(&first[seq]) as i32);
        batch
            .add(next, tokens.len() as i32, &[seq as i32], true)
            .expect("batch has room");
    }
    ctx.decode(&mut batch).expect("decode");
    let second = (0..prompts.len() as i32)
        .map(|i| ctx.get_logits_ith(i).to_vec())
        .collect();
    [first, second]
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len())
        .max_by(|&a, &b| v[a].total_cmp(&v[b]))
        .unwrap_or(0)
}

/// Loads `path` repacked and stock, runs [`two_steps`] on both and checks
/// that every step picks the same greedy tokens, that the logits differ by
/// at most `max` (mean `mean`), and, on x86 with AVX2 where the patched
/// kernels run, that some bits differ.
fn assert_matches_stock(path: &Path, max: f32, mean: f64) {
    let repacked = two_steps(&load(path, true));
    let stock = two_steps(&load(path, false));
    let (mut max_diff, mut sum_diff, mut count) = (0f32, 0f64, 0usize);
    let mut identical = true;
    for (step, (r, s)) in repacked.iter().zip(&stock).enumerate() {
        for (seq, (r, s)) in r.iter().zip(s).enumerate() {
            assert_eq!(
                argmax(r),
                argmax(s),
                "step {step}, prompt {seq}: repacked and stock kernels pick different tokens"
            );
            for (a, b) in r.iter().zip(s) {
                max_diff = max_diff.max((a - b).abs());
                sum_diff += f64::from((a - b).abs());
                identical &= a.to_bits() == b.to_bits();
            }
            count += r.len();
        }
    }
    let mean_diff = sum_diff / count as f64;
    eprintln!("|repacked - stock| logits: max {max_diff}, mean {mean_diff:.4}");
    assert!(
        max_diff < max && mean_diff < mean,
        "repacked and stock logits differ by up to {max_diff} (mean {mean_diff})"
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        assert!(
            !identical,
            "repacked and stock logits are bit-identical: the build lacks patches/ggml-*-repack.patch"
        );
    }
    let _ = identical;
}

#[test]
fn repacked_q4_1_matches_stock_kernels() {
    // Logits here reach 20-33. The two paths differ in float rounding: the
    // order of sums, and stock keeps d_x * sum(q_x) in f16 where the patch
    // keeps f32. Through 30 layers, where a rounding flip in an activation's
    // 8-bit quantization moves it by a whole step, that grows to a mean of
    // 0.1-0.6 and a max near 1.2 (measured); a wrong min term or misplaced
    // block sums moves logits by whole units everywhere.
    assert_matches_stock(&smollm2(), 2.5, 0.5);
}

#[test]
fn repacked_q5_0_matches_stock_kernels() {
    // The integer products are stock's; the float summation order differs,
    // and the repacked path quantizes activations 4 rows at a time, where a
    // rounding flip moves one by a whole 8-bit step. Through 5 layers that
    // is a mean of 0.005 and a max of 0.14 (measured); a misplaced nibble
    // or fifth bit moves logits by whole units.
    let path = stories_q5_0();
    assert_matches_stock(&path, 0.5, 0.03);
    let _ = std::fs::remove_dir_all(path.parent().expect("a temp dir"));
}

/// The same model quality on real text: mean negative log-likelihood per
/// token of a passage scored in one batch (the GEMM path).
#[test]
fn repacked_q4_1_scores_text_like_stock() {
    let (repacked, stock) = (
        mean_nll(&load(&smollm2(), true)),
        mean_nll(&load(&smollm2(), false)),
    );
    eprintln!("mean NLL per token: repacked {repacked:.4}, stock {stock:.4}");
    assert!(
        (repacked - stock).abs() < 0.03,
        "repacked {repacked} vs stock {stock} nats per token"
    );
}

const PASSAGE: &str = "The lighthouse stood at the edge of the island, where the rocks met \
the sea. Every evening the keeper climbed the narrow stairs, trimmed the wick and lit the \
lamp, and every morning he wrote in his log what ships had passed and how the wind had \
blown. Most days nothing happened at all. Then one autumn a storm came in from the west, \
and for three nights the waves broke over the lower windows. When the weather cleared he \
walked along the shore and found a green bottle wedged between two stones, its cork sealed \
with wax, and inside it a letter folded many times.";

fn mean_nll(model: &Model) -> f64 {
    let tokens = model.tokenize_prompt(PASSAGE);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(1024))
        .with_n_batch(tokens.len() as u32)
        .with_n_ubatch(tokens.len() as u32)
        .with_n_threads(2)
        .with_n_threads_batch(2);
    let mut ctx = model.llama.new_context(backend(), params).expect("context");
    let mut batch = LlamaBatch::new(tokens.len(), 1);
    for (pos, &t) in tokens.iter().enumerate() {
        batch
            .add(t, pos as i32, &[0], true)
            .expect("batch has room");
    }
    ctx.decode(&mut batch).expect("decode");
    let nll: f64 = (1..tokens.len())
        .map(|i| {
            let logits = ctx.get_logits_ith(i as i32 - 1);
            let max = logits.iter().copied().fold(f32::MIN, f32::max);
            let log_sum: f64 = logits
                .iter()
                .map(|&l| f64::from(l - max).exp())
                .sum::<f64>()
                .ln();
            log_sum - f64::from(logits[tokens[i].0 as usize] - max)
        })
        .sum();
    nll / (tokens.len() - 1) as f64
}
