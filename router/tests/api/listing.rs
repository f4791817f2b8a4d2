//! `GET /v1/responses`: the list shape, paging with `after`/`has_more`,
//! `order`, parameter validation, and tenant isolation with API keys.

use crate::support::*;
use spindle_proto::auth::Secrets;

impl Server {
    async fn get_as(&self, key: &str, path: &str) -> (u16, Value) {
        self.send(
            self.http
                .get(format!("{}{path}", self.base))
                .bearer_auth(key),
        )
        .await
    }
    async fn create_as(&self, key: &str, body: Value) -> String {
        let (st, r) = self
            .send(
                self.http
                    .post(format!("{}/v1/responses", self.base))
                    .bearer_auth(key)
                    .json(&body),
            )
            .await;
        assert_eq!(st, 200, "{r}");
        r["id"].as_str().unwrap().to_owned()
    }
}

/// The ids of a list page after checking its shape and every object in it.
fn page_ids(page: &Value) -> Vec<String> {
    assert_eq!(page["object"], "list", "{page}");
    let data = page["data"].as_array().unwrap();
    for r in data {
        check_response(r);
    }
    let ids: Vec<String> = data
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(page["first_id"].as_str(), ids.first().map(String::as_str));
    assert_eq!(page["last_id"].as_str(), ids.last().map(String::as_str));
    ids
}

#[tokio::test]
async fn lists_the_tenants_stored_responses_in_pages() {
    let s = server_with(RouterConfig {
        api_keys: Secrets(vec!["key-a".into(), "key-b".into()]),
        ..RouterConfig::default()
    })
    .await;
    let mut mine = Vec::new();
    for n in 0..5 {
        mine.push(
            s.create_as("key-a", json!({"input": format!("a{n}")}))
                .await,
        );
    }
    let theirs = s.create_as("key-b", json!({"input": "b"})).await;
    // Not stored, or deleted: never listed.
    s.create_as("key-a", json!({"input": "gone", "store": false}))
        .await;
    let deleted = s.create_as("key-a", json!({"input": "deleted"})).await;
    let (st, _) = s
        .send(
            s.http
                .delete(format!("{}/v1/responses/{deleted}", s.base))
                .bearer_auth("key-a"),
        )
        .await;
    assert_eq!(st, 200);

    let newest_first: Vec<String> = mine.iter().rev().cloned().collect();
    let (st, all) = s.get_as("key-a", "/v1/responses").await;
    assert_eq!(st, 200, "{all}");
    assert_eq!(page_ids(&all), newest_first);
    assert_eq!(all["has_more"], false);
    assert_eq!(all["data"][0]["output"][0]["content"][0]["text"], FULL);

    // Pages of two, newest first, chained by last_id.
    let mut got = Vec::new();
    let mut path = "/v1/responses?limit=2".to_string();
    loop {
        let (st, page) = s.get_as("key-a", &path).await;
        assert_eq!(st, 200, "{page}");
        let ids = page_ids(&page);
        assert!(ids.len() <= 2);
        got.extend(ids);
        if page["has_more"] == false {
            break;
        }
        path = format!(
            "/v1/responses?limit=2&after={}",
            page["last_id"].as_str().unwrap()
        );
    }
    assert_eq!(got, newest_first);

    // Oldest first.
    let (_, asc) = s
        .get_as(
            "key-a",
            &format!("/v1/responses?order=asc&after={}&limit=3", mine[0]),
        )
        .await;
    assert_eq!(page_ids(&asc), mine[1..4].to_vec());
    assert_eq!(asc["has_more"], true);

    // The other tenant sees only its own, and cannot page from ours.
    let (_, b) = s.get_as("key-b", "/v1/responses").await;
    assert_eq!(page_ids(&b), vec![theirs.clone()]);
    let (st, e) = s
        .get_as("key-b", &format!("/v1/responses?after={}", mine[0]))
        .await;
    assert_error(st, &e, 400, Some("after"), None);
    let (st, e) = s
        .get_as("key-a", &format!("/v1/responses?after={theirs}"))
        .await;
    assert_error(st, &e, 400, Some("after"), None);
    let (st, e) = s
        .get_as("key-a", &format!("/v1/responses?after={deleted}"))
        .await;
    assert_error(st, &e, 400, Some("after"), None);
    // Without a key: 401.
    let (st, e) = s.get("/v1/responses").await;
    assert_error(st, &e, 401, None, None);
}

#[tokio::test]
async fn list_parameters_are_validated() {
    let s = server().await;
    for limit in ["0", "101", "-1", "x", ""] {
        let (st, e) = s.get(&format!("/v1/responses?limit={limit}")).await;
        assert_error(st, &e, 400, Some("limit"), None);
    }
    let (st, e) = s.get("/v1/responses?order=newest").await;
    assert_error(st, &e, 400, Some("order"), None);
    let (st, e) = s.get("/v1/responses?after=resp_nope").await;
    assert_error(st, &e, 400, Some("after"), None);
    // Bounds are inclusive; an empty store lists nothing.
    for limit in ["1", "100"] {
        let (st, page) = s.get(&format!("/v1/responses?limit={limit}")).await;
        assert_eq!(st, 200, "{page}");
        assert_eq!(page_ids(&page), Vec::<String>::new());
        assert_eq!(page["has_more"], false);
    }
    // The default limit is 20.
    for n in 0..21 {
        s.post("/v1/responses", json!({"input": format!("m{n}")}))
            .await;
    }
    let (_, page) = s.get("/v1/responses").await;
    assert_eq!(page_ids(&page).len(), 20);
    assert_eq!(page["has_more"], true);
}
