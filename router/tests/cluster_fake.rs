//! ClusterGenerator against fake workers (axum on random ports): bounded-load
//! spill, policies, ejection and recovery, draining, retry, migration, cancel.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use spindle_proto::{ChatMessage, GenerateEvent, GenerateRequest, PromptInput, SamplingParams};
use spindle_router::cluster::key::routing_key;
use spindle_router::cluster::{ClusterConfig, ClusterGenerator, Policy};
use spindle_router::{GenerateError, Generator};
use spindle_testkit::FakeWorker;

fn req(key: &str) -> GenerateRequest {
    GenerateRequest {
        request_id: None,
        model: None,
        input: PromptInput::Messages(vec![ChatMessage::text("user", "hello there")]),
        continuation: None,
        sampling: SamplingParams::default(),
        cache_key: Some(key.into()),
        cache_salt: None,
        output: Default::default(),
        truncation: Default::default(),
        lora: Vec::new(),
    }
}

fn config(fakes: &[&FakeWorker]) -> ClusterConfig {
    ClusterConfig {
        health_interval: Duration::from_millis(100),
        breaker_cooldown: Duration::from_millis(300),
        eject_after: 1,
        ..ClusterConfig::with_workers(fakes.iter().map(|f| f.url.clone()))
    }
}

async fn fakes(n: usize, tokens: u32, delay_ms: u64) -> Vec<FakeWorker> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(
            FakeWorker::spawn(tokens, Duration::from_millis(delay_ms))
                .await
                .unwrap(),
        );
    }
    v
}

/// A key whose ring owner is `url`.
fn key_owned_by(gen: &ClusterGenerator, url: &str) -> String {
    (0..10_000)
        .map(|i| format!("conv:{i}"))
        .find(|k| gen.owner(k).as_deref() == Some(url))
        .expect("some key maps to every worker")
}

/// Text and the final event of a whole stream.
async fn collect(gen: &ClusterGenerator, r: GenerateRequest) -> (String, GenerateEvent) {
    let mut s = gen.generate(r).await.expect("stream starts");
    let mut text = String::new();
    let last = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.next().await.expect("stream ends with done or error") {
                GenerateEvent::Delta { text: t, .. } => text.push_str(&t),
                ev => return ev,
            }
        }
    })
    .await
    .expect("stream never hangs");
    assert!(s.next().await.is_none(), "nothing after the last event");
    (text, last)
}

fn expected(n: u32) -> String {
    (0..n).map(|i| format!("t{i} ")).collect()
}

fn served(f: &FakeWorker) -> u64 {
    f.ctl.requests.load(Ordering::Relaxed)
}

#[tokio::test]
async fn same_key_same_worker_and_idle_cluster_never_spills() {
    let f = fakes(3, 4, 0).await;
    let gen = ClusterGenerator::new(config(&[&f[0], &f[1], &f[2]])).unwrap();
    gen.probe_now().await;
    assert_eq!(gen.ring_members().len(), 3);
    for conv in 0..30 {
        let key = format!("conv:{conv}");
        let owner = gen.owner(&key).unwrap();
        for _ in 0..3 {
            let before: Vec<u64> = f.iter().map(served).collect();
            let (text, last) = collect(&gen, req(&key)).await;
            assert_eq!(text, expected(4));
            assert!(matches!(last, GenerateEvent::Done { .. }));
            let hit: Vec<usize> = (0..3).filter(|&i| served(&f[i]) > before[i]).collect();
            assert_eq!(hit.len(), 1);
            assert_eq!(f[hit[0]].url, owner, "every turn goes to the owner");
        }
    }
    assert_eq!(gen.stats().spills.load(Ordering::Relaxed), 0);
    // Stateless clients (no identity) stick too: their key hashes the system
    // and first user message, so later turns have the same owner.
    let mut r = req("");
    r.cache_key = None;
    let owner = gen.owner(&routing_key(&r));
    assert!(owner.is_some());
    if let PromptInput::Messages(m) = &mut r.input {
        m.push(ChatMessage::text("assistant", "hi"));
        m.push(ChatMessage::text("user", "more"));
    }
    assert_eq!(gen.owner(&routing_key(&r)), owner);
}

#[tokio::test]
async fn hot_key_spills_past_the_load_bound() {
    let f = fakes(3, 1000, 20).await;
    let gen = ClusterGenerator::new(config(&[&f[0], &f[1], &f[2]])).unwrap();
    gen.probe_now().await;
    let key = key_owned_by(&gen, &f[0].url);
    let mut open = Vec::new();
    for _ in 0..6 {
        let mut s = gen.generate(req(&key)).await.unwrap();
        assert!(matches!(s.next().await, Some(GenerateEvent::Delta { .. })));
        open.push(s);
    }
    let running: Vec<u32> = f
        .iter()
        .map(|f| f.ctl.running.load(Ordering::Relaxed))
        .collect();
    println!("6 streams of one hot key: per-worker {running:?}");
    // Bound with load factor 1.25: load ≤ 1.25 × mean + 1, so the owner never
    // holds all six, yet it holds more than its fair share.
    assert!(running[0] >= 2 && running[0] < 6, "{running:?}");
    assert_eq!(running.iter().sum::<u32>(), 6);
    assert!(gen.stats().spills.load(Ordering::Relaxed) >= 1);
    drop(open);
}

#[tokio::test]
async fn round_robin_and_least_load_spread_requests() {
    let f = fakes(3, 2, 0).await;
    let gen = ClusterGenerator::new(ClusterConfig {
        policy: Policy::RoundRobin,
        ..config(&[&f[0], &f[1], &f[2]])
    })
    .unwrap();
    gen.probe_now().await;
    for _ in 0..9 {
        collect(&gen, req("conv:same")).await;
    }
    assert_eq!(f.iter().map(served).collect::<Vec<_>>(), vec![3, 3, 3]);

    let f = fakes(3, 1000, 20).await;
    let gen = ClusterGenerator::new(ClusterConfig {
        policy: Policy::LeastLoad,
        ..config(&[&f[0], &f[1], &f[2]])
    })
    .unwrap();
    gen.probe_now().await;
    let mut open = Vec::new();
    for _ in 0..6 {
        open.push(gen.generate(req("conv:same")).await.unwrap());
    }
    assert_eq!(
        gen.members().iter().map(|m| m.inflight).collect::<Vec<_>>(),
        vec![2, 2, 2]
    );
}

#[tokio::test]
async fn failing_worker_is_ejected_then_recovers_half_open() {
    let f = fakes(2, 3, 0).await;
    let gen = ClusterGenerator::start(config(&[&f[0], &f[1]]))
        .await
        .unwrap();
    let key = key_owned_by(&gen, &f[0].url);
    // 5xx: retried on the next worker, the failing one ejected (passive).
    f[0].ctl.generate_status.store(500, Ordering::Relaxed);
    let (text, _) = collect(&gen, req(&key)).await;
    assert_eq!(text, expected(3));
    assert_eq!(served(&f[1]), 1);
    assert_eq!(gen.ring_members(), vec![f[1].url.clone()]);
    let st = gen.members();
    assert_eq!(st[0].breaker, "open");
    assert!(!st[0].in_ring);
    // While ejected, its keys go elsewhere without touching it.
    f[0].ctl.generate_status.store(0, Ordering::Relaxed);
    collect(&gen, req(&key)).await;
    assert_eq!(served(&f[1]), 2);
    // After the cooldown a probe puts it back on trial; a success closes the breaker.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(gen.members()[0].breaker, "half_open");
    collect(&gen, req(&key)).await;
    assert_eq!(served(&f[0]), 1, "the owner serves its key again");
    assert_eq!(gen.members()[0].breaker, "closed");
    assert!(gen.stats().retries.load(Ordering::Relaxed) >= 1);

    // Active probes: a broken /ready ejects it without any request.
    f[1].ctl.unhealthy.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(gen.ring_members(), vec![f[0].url.clone()]);
    f[1].ctl.unhealthy.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(gen.ring_members().len(), 2, "{:?}", gen.members());
}

#[tokio::test]
async fn draining_worker_leaves_the_ring_and_only_its_keys_move() {
    let f = fakes(3, 2, 0).await;
    let gen = ClusterGenerator::new(config(&[&f[0], &f[1], &f[2]])).unwrap();
    gen.probe_now().await;
    let keys: Vec<String> = (0..3000).map(|i| format!("conv:{i}")).collect();
    let before: Vec<String> = keys.iter().map(|k| gen.owner(k).unwrap()).collect();
    f[1].ctl.draining.store(true, Ordering::Relaxed);
    gen.probe_now().await;
    assert_eq!(gen.ring_members().len(), 2);
    let mut moved = 0;
    for (k, b) in keys.iter().zip(&before) {
        let a = gen.owner(k).unwrap();
        assert_ne!(a, f[1].url);
        if a != *b {
            assert_eq!(*b, f[1].url, "only the drained worker's keys move");
            moved += 1;
        }
    }
    let frac = moved as f64 / keys.len() as f64;
    println!("drain 1 of 3: {frac:.3} of keys moved");
    assert!((0.2..0.47).contains(&frac));
    f[1].ctl.draining.store(false, Ordering::Relaxed);
    gen.probe_now().await;
    let back: Vec<String> = keys.iter().map(|k| gen.owner(k).unwrap()).collect();
    assert_eq!(back, before, "keys return when it is back");
}

#[tokio::test]
async fn dead_worker_before_first_token_is_retried() {
    let f = fakes(2, 5, 0).await;
    let gen = ClusterGenerator::new(config(&[&f[0], &f[1]])).unwrap();
    gen.probe_now().await;
    let key = key_owned_by(&gen, &f[0].url);
    // Accepts, then breaks before any token.
    f[0].ctl.die_before_first.store(true, Ordering::Relaxed);
    let (text, last) = collect(&gen, req(&key)).await;
    assert_eq!(text, expected(5));
    assert!(matches!(last, GenerateEvent::Done { usage, .. } if usage.completion_tokens == 5));
    // Connection refused (process gone): retried too.
    f[0].ctl.die_before_first.store(false, Ordering::Relaxed);
    let f2 = fakes(1, 5, 0).await;
    let gen = ClusterGenerator::new(config(&[&f[0], &f2[0]])).unwrap();
    gen.probe_now().await;
    let key = key_owned_by(&gen, &f2[0].url);
    f2[0].kill();
    let (text, _) = collect(&gen, req(&key)).await;
    assert_eq!(text, expected(5));
    // Nobody left: an error, not a hang.
    f[0].kill();
    let gen = ClusterGenerator::new(config(&[&f[0], &f2[0]])).unwrap();
    gen.probe_now().await;
    assert!(matches!(
        gen.generate(req("k")).await.err(),
        Some(GenerateError::Unavailable { .. })
    ));
}

#[tokio::test]
async fn stream_migrates_mid_way_without_duplicates() {
    let f = fakes(2, 20, 1).await;
    let gen = ClusterGenerator::new(config(&[&f[0], &f[1]])).unwrap();
    gen.probe_now().await;
    let key = key_owned_by(&gen, &f[0].url);
    f[0].ctl.die_after.store(7, Ordering::Relaxed);
    let (text, last) = collect(&gen, req(&key)).await;
    assert_eq!(text, expected(20));
    let GenerateEvent::Done { usage, .. } = last else {
        panic!("{last:?}")
    };
    assert_eq!(usage.completion_tokens, 20, "both legs counted");
    assert_eq!(usage.prompt_tokens, 2, "continuation not counted as prompt");
    assert_eq!(gen.stats().migrations.load(Ordering::Relaxed), 1);
    assert_eq!(served(&f[1]), 1);

    // max_tokens is honoured across legs.
    let gen = ClusterGenerator::new(config(&[&f[0], &f[1]])).unwrap();
    gen.probe_now().await;
    let mut r = req(&key);
    r.sampling.max_tokens = Some(12);
    let (text, last) = collect(&gen, r).await;
    assert_eq!(text, expected(12));
    assert!(matches!(last, GenerateEvent::Done { usage, .. } if usage.completion_tokens == 12));
}

#[tokio::test]
async fn no_migration_left_ends_with_an_error() {
    let f = fakes(2, 20, 1).await;
    let gen = ClusterGenerator::new(ClusterConfig {
        max_migrations: 0,
        ..config(&[&f[0], &f[1]])
    })
    .unwrap();
    gen.probe_now().await;
    let key = key_owned_by(&gen, &f[0].url);
    f[0].ctl.die_after.store(4, Ordering::Relaxed);
    let (text, last) = collect(&gen, req(&key)).await;
    assert_eq!(text, expected(4));
    assert!(matches!(last, GenerateEvent::Error { .. }), "{last:?}");
    // Both workers broken mid-stream: one migration, then an error.
    let gen = ClusterGenerator::new(config(&[&f[0], &f[1]])).unwrap();
    gen.probe_now().await;
    f[1].ctl.die_after.store(3, Ordering::Relaxed);
    let (text, last) = collect(&gen, req(&key)).await;
    assert_eq!(text, expected(7));
    assert!(matches!(last, GenerateEvent::Error { .. }), "{last:?}");
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_worker_request() {
    let f = fakes(1, 100_000, 5).await;
    let gen = ClusterGenerator::new(config(&[&f[0]])).unwrap();
    gen.probe_now().await;
    let mut s = gen.generate(req("k")).await.unwrap();
    for _ in 0..3 {
        assert!(matches!(s.next().await, Some(GenerateEvent::Delta { .. })));
    }
    assert_eq!(f[0].ctl.running.load(Ordering::Relaxed), 1);
    assert_eq!(gen.members()[0].inflight, 1);
    drop(s);
    let t = std::time::Instant::now();
    while f[0].ctl.running.load(Ordering::Relaxed) != 0
        || f[0].ctl.cancels.load(Ordering::Relaxed) != 1
    {
        assert!(t.elapsed() < Duration::from_secs(1), "worker still running");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(gen.members()[0].inflight, 0);
}

#[tokio::test]
async fn dns_membership_finds_workers_and_forgets_them() {
    let f = fakes(1, 2, 0).await;
    let port = f[0].addr.port();
    let gen = ClusterGenerator::start(ClusterConfig {
        workers: Vec::new(),
        workers_dns: vec![format!("localhost:{port}")],
        dns_interval: Duration::from_millis(100),
        ..config(&[])
    })
    .await
    .unwrap();
    let ring = gen.ring_members();
    assert!(ring.contains(&f[0].url), "{ring:?} / {:?}", gen.members());
    let (text, _) = collect(&gen, req("k")).await;
    assert_eq!(text, expected(2));
}

#[tokio::test]
async fn one_ring_per_model() {
    let f = fakes(3, 3, 0).await;
    for (fake, model) in f.iter().zip(["alpha", "alpha", "beta"]) {
        fake.ctl.model.set(model.into()).unwrap();
    }
    let gen = ClusterGenerator::new(config(&[&f[0], &f[1], &f[2]])).unwrap();
    gen.probe_now().await;
    let models: Vec<(String, Option<usize>)> = gen
        .models()
        .into_iter()
        .map(|m| (m.id, m.workers))
        .collect();
    assert_eq!(
        models,
        vec![("alpha".into(), Some(2)), ("beta".into(), Some(1))]
    );
    assert!(gen.ready().is_ok());
    for i in 0..20 {
        let before: Vec<u64> = f.iter().map(served).collect();
        let mut r = req(&format!("conv:{i}"));
        r.model = Some(if i % 2 == 0 { "alpha" } else { "beta" }.into());
        let (text, last) = collect(&gen, r).await;
        assert_eq!(text, expected(3));
        assert!(matches!(last, GenerateEvent::Done { .. }), "{last:?}");
        let hit: Vec<usize> = (0..3).filter(|&k| served(&f[k]) > before[k]).collect();
        let want: &[usize] = if i % 2 == 0 { &[0, 1] } else { &[2] };
        assert!(
            hit.len() == 1 && want.contains(&hit[0]),
            "request {i} went to {hit:?}"
        );
    }
    // Two models served: a request must say which; an unknown one has no pool.
    let mut r = req("k");
    r.model = None;
    assert!(matches!(
        gen.generate(r).await,
        Err(GenerateError::Unavailable { .. })
    ));
    let mut r = req("k");
    r.model = Some("gamma".into());
    assert!(matches!(
        gen.generate(r).await,
        Err(GenerateError::Unavailable { .. })
    ));
    // The only beta worker goes away: beta is listed with no workers and the
    // cluster is not ready, while alpha still serves.
    f[2].kill();
    gen.probe_now().await;
    let beta = gen.models().into_iter().find(|m| m.id == "beta").unwrap();
    assert_eq!(beta.workers, Some(0));
    assert!(gen.ready().unwrap_err().contains("beta"));
    let mut r = req("k");
    r.model = Some("alpha".into());
    assert!(matches!(
        collect(&gen, r).await.1,
        GenerateEvent::Done { .. }
    ));
}

/// Deadlines short enough for tests: a hung worker is given up on quickly.
fn impatient(fakes: &[&FakeWorker]) -> ClusterConfig {
    ClusterConfig {
        first_byte_timeout: Duration::from_millis(300),
        token_gap_timeout: Duration::from_millis(300),
        ..config(fakes)
    }
}

#[tokio::test]
async fn a_worker_that_goes_silent_mid_stream_loses_it_after_the_token_gap() {
    let f = fakes(2, 20, 1).await;
    let gen = ClusterGenerator::new(impatient(&[&f[0], &f[1]])).unwrap();
    gen.probe_now().await;
    let key = key_owned_by(&gen, &f[0].url);
    f[0].ctl.stall_after.store(5, Ordering::Relaxed);
    let t = std::time::Instant::now();
    let (text, last) = collect(&gen, req(&key)).await;
    assert_eq!(text, expected(20));
    assert!(matches!(last, GenerateEvent::Done { .. }), "{last:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(gen.stats().migrations.load(Ordering::Relaxed), 1);
    let st = gen.members();
    let hung = st.iter().find(|m| m.url == f[0].url).unwrap();
    assert_eq!(hung.breaker, "open", "the silent worker is ejected");
}

#[tokio::test]
async fn a_worker_that_never_answers_is_skipped_after_the_first_byte_deadline() {
    let f = fakes(2, 20, 1).await;
    let gen = ClusterGenerator::new(impatient(&[&f[0], &f[1]])).unwrap();
    gen.probe_now().await;
    let key = key_owned_by(&gen, &f[0].url);
    f[0].ctl.stall_headers.store(true, Ordering::Relaxed);
    let t = std::time::Instant::now();
    let (text, _) = collect(&gen, req(&key)).await;
    assert_eq!(text, expected(20));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(served(&f[1]), 1);
}

#[tokio::test]
async fn ejecting_a_worker_moves_its_open_streams_at_once() {
    let f = fakes(2, 20, 1).await;
    // Deadlines far away: only the ejection can move the stream.
    let cfg = ClusterConfig {
        token_gap_timeout: Duration::from_secs(60),
        ..config(&[&f[0], &f[1]])
    };
    let gen = ClusterGenerator::new(cfg).unwrap();
    gen.probe_now().await;
    let key = key_owned_by(&gen, &f[0].url);
    f[0].ctl.stall_after.store(5, Ordering::Relaxed);
    let mut s = gen.generate(req(&key)).await.expect("stream starts");
    let mut text = String::new();
    for _ in 0..5 {
        match s.next().await {
            Some(GenerateEvent::Delta { text: t, .. }) => text.push_str(&t),
            other => panic!("{other:?}"),
        }
    }
    // The worker is hung (silent for longer than a live leg ever is); its
    // health checks fail and eject it.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    f[0].ctl.unhealthy.store(true, Ordering::Relaxed);
    let t = std::time::Instant::now();
    gen.probe_now().await;
    let last = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.next().await.expect("a last event") {
                GenerateEvent::Delta { text: t, .. } => text.push_str(&t),
                ev => return ev,
            }
        }
    })
    .await
    .expect("the stream moved without waiting for the token gap");
    assert!(matches!(last, GenerateEvent::Done { .. }), "{last:?}");
    assert_eq!(text, expected(20));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(gen.stats().migrations.load(Ordering::Relaxed), 1);
}

/// Embeddings are load balanced over the model's workers (no affinity), come
/// back in base64 from the worker and decode to the fake's vectors, and a
/// worker that fails is passed over for the next one.
#[tokio::test]
async fn embeddings_spread_over_workers_and_skip_a_failing_one() {
    use spindle_proto::openai::embeddings::{EmbeddingInput, InputRef};
    use spindle_proto::openai::{EmbeddingRequest, EncodingFormat};
    use spindle_testkit::fake_embeddings::fake_vector;

    let f = fakes(2, 4, 0).await;
    let gen = ClusterGenerator::new(config(&[&f[0], &f[1]])).unwrap();
    gen.probe_now().await;
    let req = EmbeddingRequest {
        model: Some("fake".into()),
        input: Some(EmbeddingInput::Texts(vec![
            "one two".into(),
            "three".into(),
        ])),
        encoding_format: EncodingFormat::Float,
        dimensions: None,
        user: None,
    };
    for _ in 0..6 {
        let resp = gen.embed(req.clone()).await.expect("embeds");
        assert_eq!(resp.usage.prompt_tokens, 3);
        let v = resp.data[1].embedding.clone().values().unwrap();
        assert_eq!(v, fake_vector(InputRef::Text("three")));
    }
    let counts: Vec<u64> = f
        .iter()
        .map(|w| w.ctl.embed_requests.load(Ordering::Relaxed))
        .collect();
    assert_eq!(counts.iter().sum::<u64>(), 6);
    assert!(counts.iter().all(|&c| c >= 2), "spread: {counts:?}");
    // One worker breaks: every request still succeeds, on the other.
    f[0].ctl.generate_status.store(500, Ordering::Relaxed);
    for _ in 0..4 {
        gen.embed(req.clone())
            .await
            .expect("the other worker answers");
    }
    assert!(f[1].ctl.embed_requests.load(Ordering::Relaxed) >= counts[1] + 4);
    // The caller's mistake is not retried elsewhere.
    let mut bad = req.clone();
    bad.input = Some(EmbeddingInput::Text("REJECT".into()));
    f[0].ctl.generate_status.store(0, Ordering::Relaxed);
    let before: u64 = f
        .iter()
        .map(|w| w.ctl.embed_requests.load(Ordering::Relaxed))
        .sum();
    assert!(matches!(
        gen.embed(bad).await,
        Err(GenerateError::BadRequest(_))
    ));
    let after: u64 = f
        .iter()
        .map(|w| w.ctl.embed_requests.load(Ordering::Relaxed))
        .sum();
    assert_eq!(after, before + 1);
}
