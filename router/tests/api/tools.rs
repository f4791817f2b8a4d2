//! Function tools through the Responses API: what the worker is asked to
//! enforce, function_call output items and their stream events, and the
//! round trip of a call's output in the next turn.

use crate::support::*;
use spindle_proto::tools::{OutputFormat, ToolChoice};
use spindle_testkit::fake_generator::{CALL_ARGUMENTS, CALL_ID};

fn weather() -> Value {
    json!({"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}})
}

#[tokio::test]
async fn a_required_call_is_a_function_call_item() {
    let s = server().await;
    let (st, r) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "input": "weather in Paris?", "tools": [weather()],
                   "tool_choice": "required", "parallel_tool_calls": false}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    check_response(&r);
    let _: async_openai::types::responses::Response = serde_json::from_value(r.clone()).unwrap();
    assert_eq!(r["status"], "completed");
    assert_eq!(r["tool_choice"], "required");
    let call = &r["output"][0];
    assert_eq!(call["type"], "function_call");
    assert_eq!(call["call_id"], CALL_ID);
    assert_eq!(call["name"], "get_weather");
    assert_eq!(call["arguments"], CALL_ARGUMENTS.concat());
    assert_eq!(call["status"], "completed");
    assert!(call["id"].as_str().unwrap().starts_with("fc_"));
    // The worker was asked for exactly this.
    let out = s.gen.requests().pop().unwrap().output;
    assert_eq!(out.tool_choice, ToolChoice::Required);
    assert!(!out.parallel_tool_calls);
    assert_eq!(out.tools[0].name, "get_weather");
    assert!(out.tools[0].strict, "strict defaults to true");
    assert_eq!(out.tools[0].parameters, weather()["parameters"]);
}

#[tokio::test]
async fn a_streamed_call_has_its_argument_events() {
    let s = server().await;
    let events = s
        .post_sse(
            "/v1/responses",
            json!({"model": "spindle", "input": "CALL please", "tools": [weather()],
                   "stream": true}),
        )
        .await;
    check_events(&events);
    assert_eq!(
        types_of(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
            "[DONE]",
        ]
    );
    let data = |i: usize| events[i].1.as_ref().unwrap();
    assert_eq!(data(2)["item"]["arguments"], "");
    assert_eq!(data(2)["item"]["status"], "in_progress");
    let item_id = data(2)["item"]["id"].clone();
    for i in 3..=6 {
        assert_eq!(data(i)["output_index"], 0);
    }
    assert_eq!(data(3)["item_id"], item_id);
    assert_eq!(data(5)["arguments"], CALL_ARGUMENTS.concat());
    assert_eq!(data(6)["item"]["arguments"], CALL_ARGUMENTS.concat());
    let done = &data(7)["response"];
    assert_eq!(done["output"][0]["call_id"], CALL_ID);
    let id = done["id"].as_str().unwrap();
    let (_, stored) = s.get(&format!("/v1/responses/{id}")).await;
    assert_eq!(stored["output"], done["output"]);
}

#[tokio::test]
async fn the_call_output_goes_back_to_the_model_next_turn() {
    let s = server().await;
    let (_, r1) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "input": "weather?", "tools": [weather()],
                   "tool_choice": {"type": "function", "name": "get_weather"}}),
        )
        .await;
    assert_eq!(
        r1["tool_choice"],
        json!({"type": "function", "name": "get_weather"})
    );
    let call_id = r1["output"][0]["call_id"].as_str().unwrap();
    let (st, r2) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "previous_response_id": r1["id"], "tools": [weather()],
                   "input": [{"type": "function_call_output", "call_id": call_id,
                              "output": "{\"temp\": 21}"}]}),
        )
        .await;
    assert_eq!(st, 200, "{r2}");
    assert_eq!(r2["output"][0]["type"], "message");
    let PromptInput::Messages(m) = s.gen.requests().pop().unwrap().input else {
        panic!("messages")
    };
    let n = m.len();
    assert_eq!(m[n - 2].role, "assistant");
    assert_eq!(m[n - 2].tool_calls[0].call_id, CALL_ID);
    assert_eq!(m[n - 2].tool_calls[0].arguments, CALL_ARGUMENTS.concat());
    assert_eq!(m[n - 1].role, "tool");
    assert_eq!(m[n - 1].tool_call_id.as_deref(), Some(CALL_ID));
    assert_eq!(m[n - 1].content, "{\"temp\": 21}");
}

#[tokio::test]
async fn allowed_tools_and_formats_reach_the_worker() {
    let s = server().await;
    let other = json!({"type": "function", "name": "other", "parameters": {"type": "object"}});
    let (st, r) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "input": "x", "tools": [weather(), other],
                   "tool_choice": {"type": "allowed_tools", "mode": "auto",
                                   "tools": [{"type": "function", "name": "other"}]}}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    check_response(&r);
    assert_eq!(
        r["tools"].as_array().unwrap().len(),
        2,
        "all tools are echoed"
    );
    let out = s.gen.requests().pop().unwrap().output;
    let names: Vec<_> = out.tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["other"], "only the allowed ones are offered");
    assert_eq!(out.tool_choice, ToolChoice::Auto);

    let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
    let (st, r) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "input": "x",
                   "text": {"format": {"type": "json_schema", "name": "n", "schema": schema,
                                       "strict": true}}}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    check_response(&r);
    assert_eq!(r["text"]["format"]["name"], "n");
    assert_eq!(r["text"]["format"]["strict"], true);
    let out = s.gen.requests().pop().unwrap().output;
    assert_eq!(out.format, OutputFormat::JsonSchema { schema });
    let (_, r) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "input": "x", "text": {"format": {"type": "json_object"}}}),
        )
        .await;
    check_response(&r);
    assert_eq!(
        s.gen.requests().pop().unwrap().output.format,
        OutputFormat::JsonObject
    );
}
