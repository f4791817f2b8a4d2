//! Conversations and their items; responses in a conversation.

use crate::support::*;

#[tokio::test]
async fn conversations_flow() {
    let s = server().await;
    let (st, c) = s
        .post(
            "/v1/conversations",
            json!({"items": [{"role": "user", "content": "remember 7"}], "metadata": {"a": "b"}}),
        )
        .await;
    assert_eq!(st, 200, "{c}");
    let _: async_openai::types::responses::ConversationResource =
        serde_json::from_value(c.clone()).unwrap();
    let cid = c["id"].as_str().unwrap();
    assert!(cid.starts_with("conv_"));
    assert_eq!(c["object"], "conversation");
    let (_, r) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "input": "what number?", "conversation": cid}),
        )
        .await;
    check_response(&r);
    assert_eq!(r["conversation"]["id"], cid);
    assert_eq!(
        s.last_messages(),
        vec![
            ("user".to_string(), "remember 7".to_string()),
            ("user".into(), "what number?".into())
        ]
    );
    let (_, items) = s
        .get(&format!("/v1/conversations/{cid}/items?order=asc"))
        .await;
    let _: async_openai::types::responses::ConversationItemList =
        serde_json::from_value(items.clone()).unwrap();
    let data = items["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!(data[2]["role"], "assistant");
    assert_eq!(data[2]["content"][0]["text"], FULL);
    // Second turn sees everything.
    s.post(
        "/v1/responses",
        json!({"model": "spindle", "input": "again", "conversation": {"id": cid}}),
    )
    .await;
    assert_eq!(s.last_messages().len(), 4);
    // Add, get, delete items.
    let (st, added) = s
        .post(
            &format!("/v1/conversations/{cid}/items"),
            json!({"items": [{"role": "user", "content": "extra"}]}),
        )
        .await;
    assert_eq!(st, 200, "{added}");
    let item_id = added["data"][0]["id"].as_str().unwrap();
    let (st, it) = s
        .get(&format!("/v1/conversations/{cid}/items/{item_id}"))
        .await;
    assert_eq!(st, 200);
    assert_eq!(it["content"][0]["text"], "extra");
    let (st, after_del) = s
        .delete(&format!("/v1/conversations/{cid}/items/{item_id}"))
        .await;
    assert_eq!(st, 200);
    assert_eq!(after_del["id"], cid);
    let (st, e) = s
        .get(&format!("/v1/conversations/{cid}/items/{item_id}"))
        .await;
    assert_error(st, &e, 404, None, None);
    // Update metadata, delete.
    let (_, u) = s
        .post(
            &format!("/v1/conversations/{cid}"),
            json!({"metadata": {"x": "y"}}),
        )
        .await;
    assert_eq!(u["metadata"], json!({"x": "y"}));
    let (_, g) = s.get(&format!("/v1/conversations/{cid}")).await;
    assert_eq!(g["metadata"], json!({"x": "y"}));
    let (st, d) = s.delete(&format!("/v1/conversations/{cid}")).await;
    assert_eq!(st, 200);
    assert_eq!(
        d,
        json!({"id": cid, "object": "conversation.deleted", "deleted": true})
    );
    let (st, e) = s.get(&format!("/v1/conversations/{cid}")).await;
    assert_error(st, &e, 404, None, None);
    let (st, e) = s
        .post("/v1/responses", json!({"input": "x", "conversation": cid}))
        .await;
    assert_error(st, &e, 404, Some("conversation"), None);
}

#[tokio::test]
async fn conversation_and_record_bytes_are_capped() {
    let s = server_with(RouterConfig {
        max_conversation_bytes: 4000,
        max_record_bytes: 3000,
        ..RouterConfig::default()
    })
    .await;
    let text = |n: usize| json!([{"role": "user", "content": "x".repeat(n)}]);
    // Created over the cap: refused.
    let (st, e) = s
        .post("/v1/conversations", json!({"items": text(5000)}))
        .await;
    assert_eq!(st, 400, "{e}");
    assert_eq!(e["error"]["code"], "conversation_too_large");
    let (st, c) = s
        .post("/v1/conversations", json!({"items": text(1500)}))
        .await;
    assert_eq!(st, 200, "{c}");
    let cid = c["id"].as_str().unwrap();
    let items = format!("/v1/conversations/{cid}/items");
    // Items that would take it past the cap are refused whole.
    let (st, e) = s.post(&items, json!({"items": text(2600)})).await;
    assert_eq!(st, 400, "{e}");
    assert_eq!(e["error"]["code"], "conversation_too_large");
    assert_eq!(e["error"]["param"], "items");
    let (_, list) = s.get(&items).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let (st, _) = s.post(&items, json!({"items": text(1500)})).await;
    assert_eq!(st, 200);
    // A response whose input would overflow it is refused before generating.
    let (st, e) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "input": "y".repeat(1000), "conversation": cid}),
        )
        .await;
    assert_eq!(st, 400, "{e}");
    assert_eq!(e["error"]["code"], "conversation_too_large");
    assert_eq!(e["error"]["param"], "input");
    // One response may store at most --max-record-bytes of input.
    let (st, e) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "input": "z".repeat(2000), "instructions": "i".repeat(1200)}),
        )
        .await;
    assert_eq!(st, 413, "{e}");
    assert_eq!(e["error"]["code"], "request_too_large");
    let (st, _) = s
        .post(
            "/v1/responses",
            json!({"model": "spindle", "input": "z".repeat(2000)}),
        )
        .await;
    assert_eq!(st, 200);
}
