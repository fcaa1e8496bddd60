//! Listing on a real cluster: `GET /v1/keys`, `Kv.List` and `distraft list`, page by
//! page through any node, with bad input refused.

use distraft::proto::v1::ListRequest;
use serde_json::Value;
use tonic::Code;

use crate::harness::{run_cli, Cluster};

#[tokio::test]
async fn keys_are_listed_in_order_page_by_page_through_any_node() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    for i in 0..250 {
        cluster
            .put_eventually(i % 3, &format!("item/{i:03}"), &format!("v{i}"))
            .await;
    }
    for key in ["item", "itemz", "other"] {
        cluster.put_eventually(leader, key, "x").await;
    }
    let (code, _) = cluster.delete(leader, "item/007").await;
    assert_eq!(code, 200);
    let expected: Vec<String> = (0..250)
        .filter(|i| *i != 7)
        .map(|i| format!("item/{i:03}"))
        .collect();
    let http = cluster.http();
    let url = |i: usize| format!("{}/v1/keys", cluster.url(i));

    // Linearizable pages through a follower, each continuing after the one before.
    let mut listed = Vec::new();
    let mut after = String::new();
    let mut pages = 0;
    loop {
        let response = http
            .get(url(follower))
            .query(&[
                ("prefix", "item/"),
                ("limit", "100"),
                ("after", after.as_str()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert!(response.headers().contains_key("x-distraft-index"));
        let page: Value = response.json().await.unwrap();
        pages += 1;
        for item in page["keys"].as_array().unwrap() {
            let key = item["key"].as_str().unwrap().to_string();
            let i: usize = key["item/".len()..].parse().unwrap();
            assert_eq!(item["value"], format!("v{i}"), "{item}");
            assert!(
                item["mod_index"].as_u64() > Some(0) && item["version"] == 1,
                "{item}"
            );
            listed.push(key);
        }
        match page["next"].as_str() {
            Some(next) => after = next.to_string(),
            None => break,
        }
    }
    assert_eq!(listed, expected, "in order, none missed, none twice");
    assert_eq!(pages, 3);

    // A range, keys only, and stale.
    let (code, body) = cluster
        .answer(http.get(url(leader)).query(&[
            ("start", "item/240"),
            ("end", "itemz"),
            ("keys_only", "true"),
            ("stale", "true"),
        ]))
        .await;
    assert_eq!(code, 200, "{body}");
    let keys: Vec<&str> = body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["key"].as_str().unwrap())
        .collect();
    let mut range: Vec<String> = (240..250).map(|i| format!("item/{i:03}")).collect();
    range.insert(0, "item".to_string());
    range.retain(|key| key.as_str() >= "item/240");
    assert_eq!(keys, range);
    assert!(body["keys"][0].get("value").is_none(), "{body}");
    assert_eq!(body["next"], Value::Null);

    // Bad input is 400, before anything is read.
    for query in [
        vec![("limit", "10001")],
        vec![("limit", "-1")],
        vec![("prefx", "item/")],
        vec![("stale", "maybe")],
    ] {
        let (code, body) = cluster.answer(http.get(url(leader)).query(&query)).await;
        assert_eq!(
            (code, body["ok"].clone()),
            (400, Value::Bool(false)),
            "{query:?}: {body}"
        );
    }
    let long = "k".repeat(5000);
    let (code, body) = cluster
        .answer(http.get(url(leader)).query(&[("prefix", long.as_str())]))
        .await;
    assert_eq!(code, 400, "{body}");

    // gRPC, through a follower.
    let mut kv = cluster.kv(follower).await;
    let page = kv
        .list(ListRequest {
            prefix: "item/".into(),
            limit: 10,
            after: "item/005".into(),
            ..ListRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<&str> = page.keys.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, &expected[6..16]);
    assert_eq!(page.next, "item/016");
    assert!(page.index > 0);
    let refused = kv
        .list(ListRequest {
            limit: 10_001,
            ..ListRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");

    // The CLI follows the pages; --limit bounds it.
    let node = cluster.url(follower);
    let (ok, out) = run_cli(&["list", "--url", &node, "item/"]).await;
    assert!(ok, "{out}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), expected.len());
    assert_eq!(
        (&lines[6]["key"], &lines[7]["key"]),
        (&Value::from("item/006"), &Value::from("item/008"))
    );
    let (ok, out) = run_cli(&[
        "list",
        "--url",
        &node,
        "item/",
        "--limit",
        "120",
        "--keys-only",
    ])
    .await;
    assert!(ok, "{out}");
    assert_eq!(out.lines().count(), 120);
    assert!(!out.contains("\"value\""), "{out}");
}
