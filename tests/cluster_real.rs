//! ClusterGenerator with REAL worker processes (release binary, stories260K,
//! greedy): a stream whose worker is killed mid-way migrates and the output
//! equals the uninterrupted one; dropping a stream frees the worker.
//!
//! A test of the `spindle` package, so Cargo builds the binary it runs
//! (`CARGO_BIN_EXE_spindle`, same profile); the router crate's own tests
//! stay free of llama.cpp. Needs ../shared/models/stories260K.gguf.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use spindle_proto::{GenerateEvent, GenerateRequest, LoadReport, PromptInput, SamplingParams};
use spindle_router::cluster::{ClusterConfig, ClusterGenerator};
use spindle_router::Generator;
use spindle_testkit::Proc;

/// The binary under test and the small model (missing, it is a failure).
fn paths() -> (PathBuf, PathBuf) {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_spindle"));
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/models/stories260K.gguf");
    assert!(model.exists(), "{} is missing", model.display());
    (bin, model)
}

async fn spawn_worker(bin: &Path, model: &Path) -> Proc {
    Proc::worker(
        bin,
        model,
        ["--threads", "1", "--ctx-size", "512"],
        Duration::from_secs(60),
    )
    .await
    .expect("worker listens within a minute")
}

/// Greedy output of this prompt from stories260K has no near-ties in its first
/// 160 tokens (continuing from any point reproduces it exactly); longer runs hit
/// one where re-prefilled KV numerics flip the argmax.
const MAX_TOKENS: u32 = 160;

fn req() -> GenerateRequest {
    GenerateRequest {
        request_id: None,
        model: None,
        input: PromptInput::Prompt("Once upon a time, there was a little girl named Lily.".into()),
        continuation: None,
        sampling: SamplingParams {
            temperature: 0.0,
            max_tokens: Some(MAX_TOKENS),
            ignore_eos: true,
            ..SamplingParams::default()
        },
        cache_key: Some("conv:real".into()),
        cache_salt: None,
        output: Default::default(),
        truncation: Default::default(),
        lora: Vec::new(),
    }
}

async fn load(url: &str) -> Option<LoadReport> {
    reqwest::get(format!("{url}/load"))
        .await
        .ok()?
        .json()
        .await
        .ok()
}

fn cfg(urls: &[&str]) -> ClusterConfig {
    ClusterConfig {
        health_interval: Duration::from_millis(200),
        ..ClusterConfig::with_workers(urls.iter().map(|u| u.to_string()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_mid_stream_migrates_to_identical_output() {
    let (bin, model) = paths();
    // Reference: uninterrupted on one worker.
    let mut a = spawn_worker(&bin, &model).await;
    let gen = ClusterGenerator::new(cfg(&[&a.url])).unwrap();
    gen.probe_now().await;
    let mut s = gen.generate(req()).await.unwrap();
    let mut reference = String::new();
    let mut ref_tokens = 0;
    while let Some(ev) = s.next().await {
        match ev {
            GenerateEvent::Delta { text, .. } => reference.push_str(&text),
            GenerateEvent::Done { usage, .. } => ref_tokens = usage.completion_tokens,
            GenerateEvent::Error { message, .. } => panic!("{message}"),
            ev => panic!("no tools were offered: {ev:?}"),
        }
    }
    assert_eq!(ref_tokens, MAX_TOKENS);
    a.child.kill().await.unwrap();

    for attempt in 0..6 {
        let mut w1 = spawn_worker(&bin, &model).await;
        let mut w2 = spawn_worker(&bin, &model).await;
        let gen = ClusterGenerator::new(cfg(&[&w1.url, &w2.url])).unwrap();
        gen.probe_now().await;
        let mut s = gen.generate(req()).await.unwrap();
        let mut text = String::new();
        // One token, then kill whichever worker runs it (at once: ~2k tokens/s).
        for _ in 0..1 {
            match s.next().await.unwrap() {
                GenerateEvent::Delta { text: t, .. } => text.push_str(&t),
                ev => panic!("{ev:?}"),
            }
        }
        let l1 = load(&w1.url).await.map_or(0, |l| l.running);
        let (victim, other) = if l1 == 1 {
            (&mut w1, &w2)
        } else {
            (&mut w2, &w1)
        };
        victim.child.kill().await.unwrap();
        let mut usage = None;
        while let Some(ev) = tokio::time::timeout(Duration::from_secs(30), s.next())
            .await
            .expect("stream goes on")
        {
            match ev {
                GenerateEvent::Delta { text: t, .. } => text.push_str(&t),
                GenerateEvent::Done { usage: u, .. } => usage = Some(u),
                GenerateEvent::Error { message, .. } => panic!("{message}"),
                ev => panic!("no tools were offered: {ev:?}"),
            }
        }
        let migrated = gen.stats().migrations.load(Ordering::Relaxed);
        eprintln!(
            "attempt {attempt}: migrations={migrated}, {} chars, other worker served it: {}",
            text.len(),
            load(&other.url).await.is_some()
        );
        assert_eq!(
            text, reference,
            "migrated output equals the uninterrupted one"
        );
        assert_eq!(
            usage.unwrap().completion_tokens,
            MAX_TOKENS,
            "usage adds up across legs"
        );
        if migrated == 1 {
            return;
        }
        // The worker finished before the kill landed: try again.
    }
    panic!("the worker always finished before it could be killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_stream_frees_the_real_worker() {
    let (bin, model) = paths();
    let w = spawn_worker(&bin, &model).await;
    let gen = ClusterGenerator::new(cfg(&[&w.url])).unwrap();
    gen.probe_now().await;
    let mut r = req();
    r.sampling.max_tokens = Some(100_000);
    r.request_id = Some("drop-me".into());
    let mut s = gen.generate(r).await.unwrap();
    for _ in 0..3 {
        assert!(matches!(s.next().await, Some(GenerateEvent::Delta { .. })));
    }
    assert_eq!(load(&w.url).await.unwrap().running, 1);
    drop(s);
    let t = Instant::now();
    loop {
        if load(&w.url).await.unwrap().running == 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "worker still running after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("worker idle {} ms after the drop", t.elapsed().as_millis());
}
