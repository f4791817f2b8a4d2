//! The worker's load-time settings on real models: `--chat-template` (and
//! the ChatML fallback's warning), `--flash-attn` and the KV cache types,
//! with the prefix cache's stream copies and K-shifts under them.

use futures::StreamExt;
use spindle_proto::{FinishReason, GenerateEvent, GenerateRequest, SamplingParams};
use spindle_worker::kv::{CacheType, FlashAttn};
use spindle_worker::model::Model;
use spindle_worker::template::TemplateOrigin;
use spindle_worker::tools::ToolFormat;
use spindle_worker::{Worker, WorkerConfig};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn model(file: &str) -> String {
    format!("{}/../../shared/models/{file}", env!("CARGO_MANIFEST_DIR"))
}

const STORIES: &str = "stories260K.gguf";
const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn config(file: &str) -> WorkerConfig {
    WorkerConfig {
        ctx_size: 1024,
        max_seqs: 4,
        max_batch_tokens: 256,
        threads: Some(2),
        gpu_layers: 0,
        drain_timeout: Duration::from_secs(5),
        ..WorkerConfig::for_model(&model(file))
    }
}

/// A file under the target dir's temp folder, unique to this test.
fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spindle-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write template");
    path
}

fn greedy(max_tokens: u32) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        max_tokens: Some(max_tokens),
        ..Default::default()
    }
}

fn prompt_req(prompt: &str, sampling: SamplingParams) -> GenerateRequest {
    GenerateRequest::from_prompt(prompt, sampling)
}

/// Run one request to the end: (token ids, finish reason, cached tokens).
async fn run(w: &Worker, req: GenerateRequest) -> (Vec<i32>, FinishReason, u32) {
    let mut s = w.generate(req).await.expect("accepted");
    let mut ids = Vec::new();
    while let Some(e) = s.next().await {
        match e {
            GenerateEvent::Delta { token_ids, .. } => ids.extend(token_ids),
            GenerateEvent::Done {
                finish_reason,
                usage,
                ..
            } => return (ids, finish_reason, usage.cached_tokens),
            GenerateEvent::Error { message, .. } => panic!("engine error: {message}"),
            ev => panic!("no tools were offered: {ev:?}"),
        }
    }
    panic!("stream ended without a done event")
}

async fn start_err(c: WorkerConfig) -> String {
    match Worker::start(&c).await {
        Ok(_) => panic!("the worker started"),
        Err(e) => format!("{e:#}"),
    }
}

/// The text a chat renders to (the model's pieces of its tokens).
fn rendered(model: &Model, text: &str) -> String {
    let msgs = [spindle_proto::ChatMessage::text("user", text)];
    let tokens = model.tokenize_chat(&msgs, &[], None).expect("renders");
    let vocab = model.llama.vocab();
    let bytes: Vec<u8> = tokens
        .iter()
        .flat_map(|&t| vocab.token_to_piece(t, true, None))
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_template_file_replaces_the_ggufs_and_sets_the_tool_syntax() {
    // SmolLM2's own template is ChatML with <tool_call>; this one is neither.
    let file = temp_file(
        "marker.jinja",
        "{% if tools %}[TOOL_CALLS]{% endif %}{% for m in messages %}MARK {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}MARK assistant:",
    );
    let w = Worker::start(&WorkerConfig {
        chat_template: Some(file.clone()),
        ..config(SMOLLM2)
    })
    .await
    .expect("starts with the template file");
    let model = &w.engine.model;
    assert_eq!(model.template_origin, TemplateOrigin::File(file));
    assert_eq!(w.tool_format(), ToolFormat::Mistral);
    let text = rendered(model, "hello there");
    assert!(
        text.contains("MARK user: hello there\nMARK assistant:"),
        "{text:?}"
    );
    assert!(!text.contains("<|im_start|>"), "{text:?}");

    // Without the file: the GGUF's own template, and its tool syntax.
    let own = Worker::start(&config(SMOLLM2)).await.expect("starts");
    assert_eq!(own.engine.model.template_origin, TemplateOrigin::Gguf);
    assert_eq!(own.tool_format(), ToolFormat::Hermes);
    assert!(rendered(&own.engine.model, "hello there").contains("<|im_start|>user"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_template_file_that_does_not_work_stops_the_start() {
    let cases = [
        ("unclosed.jinja", "{% for m in messages %}{{ m.content }}"),
        (
            "raises.jinja",
            "{{ raise_exception('only one message, please') }}",
        ),
        (
            "no-content.jinja",
            "{% for m in messages %}{{ m.role }}{% endfor %}",
        ),
    ];
    for (name, source) in cases {
        let file = temp_file(name, source);
        let err = start_err(WorkerConfig {
            chat_template: Some(file.clone()),
            ..config(STORIES)
        })
        .await;
        assert!(
            err.contains("--chat-template") && err.contains(&file.display().to_string()),
            "{name}: {err}"
        );
    }
    let missing = Path::new("/nonexistent/spindle/template.jinja").to_owned();
    let err = start_err(WorkerConfig {
        chat_template: Some(missing),
        ..config(STORIES)
    })
    .await;
    assert!(err.contains("/nonexistent/spindle/template.jinja"), "{err}");
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_gguf_without_a_template_falls_back_to_chatml_with_a_warning() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .finish();
    let dispatch = tracing::Dispatch::new(subscriber);
    let load = |file: &str| {
        tracing::dispatcher::with_default(&dispatch, || {
            Model::load(Path::new(&model(file)), Default::default(), None).expect("loads")
        })
    };
    // stories260K is a base model: no tokenizer.chat_template.
    let stories = load(STORIES);
    assert_eq!(stories.template_origin, TemplateOrigin::ChatmlFallback);
    let text = rendered(&stories, "hi");
    assert!(
        text.contains("<|im_start|>user\n") && text.contains("<|im_end|>"),
        "{text:?}"
    );
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let warning = text
        .lines()
        .find(|l| l.contains("tokenizer.chat_template"))
        .unwrap_or_else(|| panic!("no fallback warning in {text:?}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("ChatML") && warning.contains("--chat-template"));
    assert!(warning.contains("stories260K"), "{warning}");

    // A model with a template loads without it.
    logs.0.lock().unwrap().clear();
    let smol = load(SMOLLM2);
    assert_eq!(smol.template_origin, TemplateOrigin::Gguf);
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(!text.contains("tokenizer.chat_template"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_kv_settings_are_clear_startup_errors() {
    // llama.cpp keeps a quantized V cache only under flash attention:
    // refused before the model loads.
    let err = start_err(WorkerConfig {
        flash_attn: FlashAttn::Off,
        cache_type_v: CacheType::Q8_0,
        ..config(STORIES)
    })
    .await;
    assert!(
        err.contains("--cache-type-v q8_0") && err.contains("--flash-attn on"),
        "{err}"
    );
    // stories260K's heads hold 8 numbers: no 32-number block fits.
    let err = start_err(WorkerConfig {
        flash_attn: FlashAttn::On,
        cache_type_k: CacheType::Q8_0,
        ..config(STORIES)
    })
    .await;
    assert!(
        err.contains("--cache-type-k q8_0") && err.contains("hold 8"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flash_attention_gives_the_same_greedy_output() {
    let prompt = "Once upon a time, there was a little girl named Lily. She loved to play outside";
    let mut outputs = Vec::new();
    for flash_attn in [FlashAttn::Off, FlashAttn::On, FlashAttn::Auto] {
        let w = Worker::start(&WorkerConfig {
            flash_attn,
            ..config(STORIES)
        })
        .await
        .expect("starts");
        let cold = run(&w, prompt_req(prompt, greedy(40))).await;
        assert_eq!(cold.1, FinishReason::Length);
        // The prefix cache under this kernel: the same output again.
        let warm = run(&w, prompt_req(prompt, greedy(40))).await;
        assert!(warm.2 > 10, "{flash_attn:?}: reused {}", warm.2);
        assert_eq!(cold.0, warm.0, "{flash_attn:?}: the cached run diverged");
        outputs.push(cold.0);
    }
    assert_eq!(outputs[0], outputs[1], "flash attention changed the output");
    assert_eq!(outputs[1], outputs[2]);
}

/// SmolLM2 (64-number heads) with q8_0 caches (both under flash attention,
/// and K alone without it): a dropped middle span is still reused by a
/// K-shift (llama.cpp dequantizes, rotates and requantizes the keys), and a
/// busy slot's stream is still copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quantized_cache_keeps_shifts_and_copies_working() {
    let settings = [
        (FlashAttn::On, CacheType::Q8_0, CacheType::Q8_0),
        (FlashAttn::Off, CacheType::Q8_0, CacheType::F16),
    ];
    for (flash_attn, cache_type_k, cache_type_v) in settings {
        let q8 = || WorkerConfig {
            flash_attn,
            cache_type_k,
            cache_type_v,
            ..config(SMOLLM2)
        };
        shift_and_copy(
            q8,
            &format!("{flash_attn:?} {cache_type_k:?}/{cache_type_v:?}"),
        )
        .await;
    }
}

async fn shift_and_copy(q8: impl Fn() -> WorkerConfig, what: &str) {
    let head = "The harbour log of the northern coast, kept by the keeper.";
    let old = " Day one: the boats went out at dawn, the nets were mended on the quay, gulls circled over the ropes and the tide turned at noon while the market sold bread and salt.";
    let kept = " Day two: a storm came from the west, the boats stayed in, the keeper lit the lamp early, the fishermen told stories in the tavern, and the wind howled over the roofs until the bells rang at midnight and the sea went quiet again. Day three: the morning was grey and cold, the harbour master counted the boats twice, two nets were lost to the storm, the baker sent bread to the quay, and the children ran along the wall to watch the waves break on the rocks below the old tower.";
    let w = Worker::start(&q8()).await.expect("a q8_0 cache starts");
    run(&w, prompt_req(&format!("{head}{old}{kept}"), greedy(4))).await;
    let truncated = format!("{head}{kept} Day four:");
    let warm = run(&w, prompt_req(&truncated, greedy(16))).await;
    let cold = run(
        &Worker::start(&q8()).await.expect("starts"),
        prompt_req(&truncated, greedy(16)),
    )
    .await;
    assert!(cold.2 <= 1);
    let head_tokens = w.engine.model.tokenize_prompt(head).len();
    assert!(
        warm.2 as usize > head_tokens + 40,
        "{what}: the kept span was not reused: {} cached",
        warm.2
    );
    // Requantized keys round differently from fresh ones (greedy SmolLM2
    // Q4_1 drifted at the 6th token with a q8_0 K and no flash attention);
    // keys rotated wrongly or not at all change the first tokens.
    assert_eq!(
        warm.0[..4],
        cold.0[..4],
        "{what}: shifted q8_0 keys gave another output"
    );

    // A second request with the same prompt while the first still runs:
    // its prompt KV is copied from the busy slot, byte for byte, so it
    // continues as the cold run did.
    let w = Worker::start(&q8()).await.expect("starts");
    let mut a = w
        .generate(prompt_req(&truncated, greedy(400)))
        .await
        .expect("accepted");
    a.next().await.expect("a delta");
    let b = run(&w, prompt_req(&truncated, greedy(8))).await;
    assert!(
        b.2 > 40,
        "{what}: B should copy A's prompt KV, reused {}",
        b.2
    );
    assert_eq!(b.0, cold.0[..8], "{what}");
}
