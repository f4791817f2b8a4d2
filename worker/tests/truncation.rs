//! `truncation: "auto"` on the real engine (stories260K, whose tokenizer
//! gives about one token per 2–3 bytes, in a 512-token context): a chat far
//! longer than the context loses its oldest messages until the prompt and
//! the output room fit, and `disabled` refuses it.

use futures::StreamExt;
use spindle_proto::{
    ChatMessage, FinishReason, GenerateEvent, GenerateRequest, PromptInput, SamplingParams,
    Truncation, Usage,
};
use spindle_worker::engine::SubmitError;
use spindle_worker::error::WorkerError;
use spindle_worker::{Worker, WorkerConfig};
use std::time::Duration;

const CTX: u32 = 512;

fn config() -> WorkerConfig {
    WorkerConfig {
        ctx_size: CTX,
        max_seqs: 2,
        max_batch_tokens: 256,
        max_waiting: 8,
        threads: Some(2),
        gpu_layers: 0,
        drain_timeout: Duration::from_secs(5),
        ..WorkerConfig::for_model(&format!(
            "{}/../../shared/models/stories260K.gguf",
            env!("CARGO_MANIFEST_DIR")
        ))
    }
}

const SYSTEM: &str = "You tell short stories about a girl named Lily and her dog.";
const TURN: &str = "Tell me about the day Lily and her dog went to the big park \
    and played with a red ball. ";
const REPLY: &str = "Lily ran to the park with her dog. They played all day. ";

/// The system message, `turns` earlier user/assistant turns (~80 tokens
/// each: five fit), and the newest user message.
fn chat(turns: usize) -> Vec<ChatMessage> {
    let mut m = vec![ChatMessage::text("system", SYSTEM)];
    for i in 0..turns {
        m.push(ChatMessage::text("user", format!("Turn {i}. {TURN}")));
        m.push(ChatMessage::text("assistant", REPLY));
    }
    m.push(ChatMessage::text("user", "What happened next?"));
    m
}

fn request(
    messages: Vec<ChatMessage>,
    truncation: Truncation,
    max_tokens: Option<u32>,
) -> GenerateRequest {
    GenerateRequest {
        request_id: None,
        model: None,
        input: PromptInput::Messages(messages),
        continuation: None,
        sampling: SamplingParams {
            temperature: 0.0,
            max_tokens,
            ..Default::default()
        },
        cache_key: None,
        cache_salt: None,
        output: Default::default(),
        truncation,
        lora: Vec::new(),
    }
}

async fn run(w: &Worker, req: GenerateRequest) -> Result<(FinishReason, Usage), WorkerError> {
    let mut s = w.generate(req).await?;
    while let Some(e) = s.next().await {
        match e {
            GenerateEvent::Done {
                finish_reason,
                usage,
                ..
            } => return Ok((finish_reason, usage)),
            GenerateEvent::Error { message, .. } => panic!("engine error: {message}"),
            _ => {}
        }
    }
    panic!("stream ended without a done event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_keeps_a_chat_far_longer_than_the_context_going() {
    let w = Worker::start(&config()).await.expect("worker starts");
    // The pinned part alone: the system message and the newest user turn.
    let (_, pinned) = run(&w, request(chat(0), Truncation::Auto, Some(32)))
        .await
        .expect("a short chat runs");
    let mut warm = 0;
    for turns in 1..=20 {
        let (_, usage) = run(&w, request(chat(turns), Truncation::Auto, Some(32)))
            .await
            .unwrap_or_else(|e| panic!("turn {turns}: {e}"));
        // usage counts the prompt actually fed, and it leaves the room asked for.
        assert!(usage.prompt_tokens + 32 <= CTX, "turn {turns}: {usage:?}");
        assert!(usage.prompt_tokens > pinned.prompt_tokens, "turn {turns}");
        if usage.cached_tokens * 2 >= usage.prompt_tokens {
            warm += 1;
        }
    }
    // Dropping in steps keeps the prefix (or a shifted run of it) cached.
    assert!(
        warm >= 10,
        "only {warm} of 15 turns reused half their prompt"
    );
    // The same chat without truncation does not fit.
    match run(&w, request(chat(20), Truncation::Disabled, Some(32))).await {
        Err(WorkerError::Submit(
            SubmitError::PromptTooLong { .. } | SubmitError::PromptTooLarge { .. },
        )) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_keeps_a_quarter_of_the_context_without_max_tokens_and_refuses_a_pinned_overflow() {
    let w = Worker::start(&config()).await.expect("worker starts");
    // Without max_tokens a quarter of the context is kept for the output.
    let (_, usage) = run(&w, request(chat(15), Truncation::Auto, None))
        .await
        .expect("fits");
    assert!(usage.prompt_tokens <= CTX - CTX / 4, "{usage:?}");
    // Far more bytes than the context can hold: dropped before tokenizing.
    let max = w.engine.model.max_token_bytes;
    let turns = CTX as usize * max / TURN.len() + 1;
    assert!(turns * TURN.len() > CTX as usize * max);
    let (_, usage) = run(&w, request(chat(turns), Truncation::Auto, Some(8)))
        .await
        .expect("fits");
    assert!(usage.prompt_tokens + 8 <= CTX, "{usage:?}");
    // A system message longer than the context is never dropped: refused.
    let mut long = chat(2);
    long[0].content = TURN.repeat(20);
    match run(&w, request(long, Truncation::Auto, Some(8))).await {
        Err(e @ WorkerError::Submit(SubmitError::NoRoom { .. })) => {
            assert!(e.to_string().contains("512-token"), "{e}")
        }
        other => panic!("expected NoRoom, got {other:?}"),
    }
}
