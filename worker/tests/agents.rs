//! Structured outputs and function tools on the real engine with
//! SmolLM2-135M-Instruct: grammar-constrained JSON validates against its
//! schema whatever the seed, forced calls parse and validate, cuts end
//! with `length`, and schemas the grammar cannot enforce are refused.

use futures::StreamExt;
use serde_json::{json, Value};
use spindle_proto::tools::{FunctionTool, OutputFormat, OutputSpec, ToolChoice};
use spindle_proto::{
    ChatMessage, FinishReason, GenerateEvent, GenerateRequest, PromptInput, SamplingParams,
};
use spindle_worker::tools::ToolFormat;
use spindle_worker::{Worker, WorkerConfig};
use std::time::Duration;

fn config() -> WorkerConfig {
    let model = format!(
        "{}/../../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf",
        env!("CARGO_MANIFEST_DIR")
    );
    WorkerConfig {
        ctx_size: 1024,
        max_waiting: 64,
        threads: Some(2),
        gpu_layers: 0,
        drain_timeout: Duration::from_secs(5),
        ..WorkerConfig::for_model(&model)
    }
}

/// One worker for every test in this file (its engine thread outlives each
/// test's runtime; its channels work from any runtime).
async fn worker() -> &'static Worker {
    static WORKER: tokio::sync::OnceCell<Worker> = tokio::sync::OnceCell::const_new();
    WORKER
        .get_or_init(|| async { Worker::start(&config()).await.expect("worker starts") })
        .await
}

fn sampling(seed: u64, max_tokens: u32) -> SamplingParams {
    SamplingParams {
        temperature: 0.9,
        top_k: 40,
        seed: Some(seed),
        max_tokens: Some(max_tokens),
        ..Default::default()
    }
}

fn request(user: &str, sampling: SamplingParams, output: OutputSpec) -> GenerateRequest {
    GenerateRequest {
        request_id: None,
        model: None,
        input: PromptInput::Messages(vec![ChatMessage::text("user", user)]),
        continuation: None,
        sampling,
        cache_key: None,
        cache_salt: None,
        output,
        truncation: Default::default(),
        lora: Vec::new(),
    }
}

#[derive(Debug, Default)]
struct Outcome {
    text: String,
    /// (call_id, name, arguments)
    calls: Vec<(String, String, String)>,
    /// Every event's generated text, in order (what failover replays).
    raw: String,
    finish: Option<FinishReason>,
}

async fn run(w: &Worker, req: GenerateRequest) -> Outcome {
    let mut s = w.generate(req).await.expect("accepted");
    let mut out = Outcome::default();
    while let Some(e) = s.next().await {
        if let Some((raw, _)) = e.generated() {
            out.raw.push_str(raw);
        }
        match e {
            GenerateEvent::Delta { text, .. } => out.text.push_str(&text),
            GenerateEvent::ToolCall {
                index,
                call_id,
                name,
                ..
            } => {
                assert_eq!(
                    index as usize,
                    out.calls.len(),
                    "calls are numbered in order"
                );
                out.calls.push((call_id, name, String::new()));
            }
            GenerateEvent::ToolArguments { index, delta, .. } => {
                out.calls[index as usize].2.push_str(&delta);
            }
            GenerateEvent::Done { finish_reason, .. } => {
                out.finish = Some(finish_reason);
                return out;
            }
            GenerateEvent::Error { message, .. } => panic!("engine error: {message}"),
            GenerateEvent::Prompt { .. } => panic!("no prompt scores were asked for"),
        }
    }
    panic!("stream ended without a done event")
}

fn json_schema(schema: Value) -> OutputSpec {
    OutputSpec {
        format: OutputFormat::JsonSchema { schema },
        ..OutputSpec::default()
    }
}

fn validate(schema: &Value, text: &str) -> Result<(), String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let validator = jsonschema::validator_for(schema).map_err(|e| e.to_string())?;
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .map(|e| e.to_string())
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

fn schemas() -> Vec<Value> {
    vec![
        // Nested objects, required and optional properties.
        json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 20},
                "address": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string", "maxLength": 20},
                        "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                    },
                    "required": ["city"],
                },
                "nickname": {"type": "string", "maxLength": 10},
            },
            "required": ["name", "address"],
        }),
        // Arrays with bounds, enums.
        json!({
            "type": "object",
            "properties": {
                "colors": {
                    "type": "array",
                    "items": {"enum": ["red", "green", "blue"]},
                    "minItems": 1,
                    "maxItems": 4,
                },
                "size": {"enum": ["S", "M", "L"]},
            },
            "required": ["colors", "size"],
            "additionalProperties": false,
        }),
        // Bounded integers, unbounded numbers, booleans, null unions.
        json!({
            "type": "object",
            "properties": {
                "age": {"type": "integer", "minimum": 18, "maximum": 99},
                "delta": {"type": "integer", "exclusiveMinimum": -5, "exclusiveMaximum": 5},
                "score": {"type": "number"},
                "active": {"type": "boolean"},
                "note": {"type": ["string", "null"], "maxLength": 12},
            },
            "required": ["age", "delta", "score", "active", "note"],
        }),
        // A top-level array of small objects, through $defs.
        json!({
            "type": "array",
            "items": {"$ref": "#/$defs/point"},
            "minItems": 2,
            "maxItems": 3,
            "$defs": {"point": {
                "type": "object",
                "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 9}, "y": {"type": "integer"}},
                "required": ["x", "y"],
                "additionalProperties": false,
            }},
        }),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_schema_outputs_validate_for_every_seed() {
    let w = worker().await;
    let prompts = [
        "Describe a person.",
        "Pick some colors.",
        "Give me numbers.",
        "List points.",
    ];
    let mut runs = Vec::new();
    for (schema, prompt) in schemas().into_iter().zip(prompts) {
        for seed in 0..8u64 {
            let req = request(prompt, sampling(seed, 300), json_schema(schema.clone()));
            let schema = schema.clone();
            runs.push(async move { (schema, seed, run(w, req).await) });
        }
    }
    let results = futures::future::join_all(runs).await;
    let mut failures = Vec::new();
    for (schema, seed, out) in &results {
        if out.finish != Some(FinishReason::Stop) {
            failures.push(format!(
                "seed {seed}: finished {:?}: {}",
                out.finish, out.text
            ));
        } else if let Err(why) = validate(schema, &out.text) {
            failures.push(format!("seed {seed}: {why}: {}", out.text));
        } else if out.text.trim_end() != out.text {
            failures.push(format!(
                "seed {seed}: went on after the value: {:?}",
                out.text
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // Different seeds explore different outputs (the grammar constrains, not fixes).
    let distinct: std::collections::HashSet<&str> =
        results.iter().map(|(_, _, o)| o.text.trim()).collect();
    assert!(distinct.len() > 8, "{distinct:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_object_mode_gives_an_object() {
    let w = worker().await;
    for seed in 0..4 {
        let spec = OutputSpec {
            format: OutputFormat::JsonObject,
            ..OutputSpec::default()
        };
        let out = run(w, request("Say hi as JSON.", sampling(seed, 200), spec)).await;
        if out.finish == Some(FinishReason::Stop) {
            let v: Value = serde_json::from_str(&out.text).expect("valid JSON");
            assert!(v.is_object(), "{v}");
        } else {
            // Cut by max_tokens: a JSON object's prefix.
            assert_eq!(out.finish, Some(FinishReason::Length));
            assert!(out.text.trim_start().starts_with('{'), "{}", out.text);
        }
    }
}

fn weather_tools() -> Vec<FunctionTool> {
    vec![
        FunctionTool {
            name: "get_weather".into(),
            description: Some("Current weather of a city".into()),
            parameters: json!({
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 30},
                    "unit": {"enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city", "unit"],
                "additionalProperties": false,
            }),
            strict: true,
        },
        FunctionTool {
            name: "add".into(),
            description: Some("Add two integers".into()),
            parameters: json!({
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
                "additionalProperties": false,
            }),
            strict: true,
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_calls_parse_and_their_arguments_validate() {
    let w = worker().await;
    assert_eq!(
        w.tool_format(),
        ToolFormat::Hermes,
        "SmolLM2 gets the fallback"
    );
    let tools = weather_tools();
    let choices = [
        ToolChoice::Function {
            name: "get_weather".into(),
        },
        ToolChoice::Function { name: "add".into() },
        ToolChoice::Required,
    ];
    let mut runs = Vec::new();
    for choice in &choices {
        for seed in 0..4u64 {
            let spec = OutputSpec {
                tools: tools.clone(),
                tool_choice: choice.clone(),
                ..OutputSpec::default()
            };
            let req = request("What is the weather in Paris?", sampling(seed, 200), spec);
            runs.push(async move { (choice, run(w, req).await) });
        }
    }
    for (choice, out) in futures::future::join_all(runs).await {
        assert_eq!(out.finish, Some(FinishReason::ToolCalls), "{out:?}");
        assert_eq!(out.calls.len(), 1, "{out:?}");
        let (id, name, arguments) = &out.calls[0];
        assert!(id.starts_with("call_") && id.len() == 29, "{id}");
        if let ToolChoice::Function { name: want } = choice {
            assert_eq!(name, want);
        }
        let tool = tools
            .iter()
            .find(|t| &t.name == name)
            .expect("a known tool");
        validate(&tool.parameters, arguments).unwrap_or_else(|e| panic!("{e}: {arguments}"));
        assert!(
            out.raw.starts_with("<tool_call>\n{") && out.raw.contains(&format!("\"{name}\"")),
            "raw text is the call as written: {:?}",
            out.raw
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_the_history_are_shown_as_hermes_text() {
    let w = worker().await;
    let messages = vec![
        ChatMessage::text("user", "Weather in Paris?"),
        ChatMessage {
            tool_calls: vec![spindle_proto::tools::ToolCall {
                call_id: "call_1".into(),
                name: "get_weather".into(),
                arguments: r#"{"city":"Paris","unit":"celsius"}"#.into(),
            }],
            ..ChatMessage::text("assistant", "")
        },
        ChatMessage {
            tool_call_id: Some("call_1".into()),
            ..ChatMessage::text("tool", "18 degrees")
        },
    ];
    let model = &w.engine.model;
    let tokens = model
        .tokenize_chat(&messages, &weather_tools(), None)
        .expect("renders");
    let text = String::from_utf8(model.llama.vocab().detokenize(&tokens, false, true))
        .expect("detokenizes");
    assert!(text.contains("<tools>\n{"), "{text}");
    assert!(text.contains("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\",\"unit\":\"celsius\"}}\n</tool_call>"), "{text}");
    assert!(
        text.contains("<|im_start|>user\n<tool_response>\n18 degrees\n</tool_response><|im_end|>"),
        "{text}"
    );
    assert!(text.ends_with("<|im_start|>assistant\n"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_max_tokens_cut_ends_with_length() {
    let w = worker().await;
    let schema = schemas().remove(0);
    let out = run(
        w,
        request("Describe a person.", sampling(1, 5), json_schema(schema)),
    )
    .await;
    assert_eq!(out.finish, Some(FinishReason::Length));
    assert!(out.text.starts_with('{'), "{}", out.text);
    // A forced call cut short is no call.
    let spec = OutputSpec {
        tools: weather_tools(),
        tool_choice: ToolChoice::Required,
        ..OutputSpec::default()
    };
    let out = run(w, request("Weather?", sampling(1, 6), spec)).await;
    assert_eq!(out.finish, Some(FinishReason::Length));
    assert!(out.calls.is_empty(), "{out:?}");
    assert!(
        out.text.starts_with("<tool_call>"),
        "released as text: {out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_schemas_are_a_400_naming_the_feature() {
    let w = worker().await.clone();
    let app = spindle_worker::api::router(w, None, None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();
    let post = |body: Value| {
        client
            .post(format!("http://{addr}/v1/generate"))
            .json(&body)
            .send()
    };
    let cases = [
        (
            json!({"type": "json_schema", "schema": {"type": "object", "properties": {"a": {"type": "string", "not": {"const": "x"}}}}}),
            "\"not\" at #/properties/a",
            "response_format",
        ),
        (
            json!({"type": "json_schema", "schema": {"type": "array", "uniqueItems": true}}),
            "uniqueItems",
            "response_format",
        ),
    ];
    for (format, feature, param) in cases {
        let body =
            json!({"messages": [{"role": "user", "content": "x"}], "output": {"format": format}});
        let resp = post(body).await.expect("answers");
        assert_eq!(resp.status(), 400);
        let err: Value = resp.json().await.expect("a JSON error");
        let message = err["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(feature), "{err}");
        assert_eq!(err["error"]["param"], param, "{err}");
    }
    // Forced calls need enforceable parameters; offered ones (auto) do not.
    let tool = json!({"name": "f", "parameters": {"type": "object", "properties": {"n": {"type": "number", "minimum": 0}}}});
    let forced = json!({"messages": [{"role": "user", "content": "x"}], "sampling": {"max_tokens": 2},
        "output": {"tools": [tool], "tool_choice": {"mode": "required"}}});
    let resp = post(forced).await.expect("answers");
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.expect("a JSON error");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("\"minimum\" on a number"),
        "{err}"
    );
    assert_eq!(err["error"]["param"], "tools");
    let auto = json!({"messages": [{"role": "user", "content": "x"}], "sampling": {"max_tokens": 2},
        "output": {"tools": [tool]}});
    assert_eq!(post(auto).await.expect("answers").status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_continuation_resumes_the_grammar_and_the_call_count() {
    let w = worker().await;
    let schema = schemas().remove(1);
    let first = run(
        w,
        request(
            "Pick some colors.",
            sampling(3, 12),
            json_schema(schema.clone()),
        ),
    )
    .await;
    assert_eq!(first.finish, Some(FinishReason::Length));
    // Another worker goes on from the text sent so far.
    let mut req = request(
        "Pick some colors.",
        sampling(4, 300),
        json_schema(schema.clone()),
    );
    req.continuation = Some(first.raw.clone());
    let rest = run(w, req).await;
    assert_eq!(rest.finish, Some(FinishReason::Stop));
    let whole = format!("{}{}", first.text, rest.text);
    validate(&schema, &whole).unwrap_or_else(|e| panic!("{e}: {whole}"));
    // A continuation that breaks the format is refused.
    let mut bad = request("Pick some colors.", sampling(4, 10), json_schema(schema));
    bad.continuation = Some("not json".into());
    assert!(w.generate(bad).await.is_err());

    // A forced call already sent is not sent again; the turn still ends
    // for tool calls.
    let spec = OutputSpec {
        tools: weather_tools(),
        tool_choice: ToolChoice::Function { name: "add".into() },
        ..OutputSpec::default()
    };
    let mut req = request("Add 2 and 3.", sampling(5, 100), spec);
    req.continuation = Some(
        "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 2, \"b\": 3}}\n</tool_call>"
            .into(),
    );
    let out = run(w, req).await;
    assert_eq!(out.finish, Some(FinishReason::ToolCalls), "{out:?}");
    assert!(out.calls.is_empty() && out.text.is_empty(), "{out:?}");
}
