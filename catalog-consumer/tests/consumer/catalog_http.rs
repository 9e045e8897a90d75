use serde_json::{json, Value};

use crate::helpers::{wait_until, Event, Fixture};

#[tokio::test]
async fn catalogs_lists_every_product_ordered_by_id_with_its_current_stock() {
    let fixture = Fixture::new(1).await;
    fixture
        .seed_products(&[("CATALOG-0002", 100), ("CATALOG-0001", 100)])
        .await;
    let consumer = fixture.spawn_consumer().await;

    let response = consumer.get_catalogs().await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!([
            {"productId": "CATALOG-0001", "productName": "Product CATALOG-0001", "stock": 100, "unitPrice": 1500},
            {"productId": "CATALOG-0002", "productName": "Product CATALOG-0002", "stock": 100, "unitPrice": 1500},
        ])
    );

    // The seed walkthrough: an order for 10 shows as stock 90.
    fixture
        .producer()
        .send(&Event::new("CATALOG-0001", 10))
        .await;
    wait_until("stock 90 served over HTTP", || async {
        let body: Value = consumer.get_catalogs().await.json().await.unwrap();
        body[0]["stock"] == 90
    })
    .await;
    consumer.stop().await;
}

#[tokio::test]
async fn one_catalog_entry_is_served_and_an_unknown_one_is_a_json_404() {
    let fixture = Fixture::new(1).await;
    fixture.seed_products(&[("CATALOG-0001", 7)]).await;
    let consumer = fixture.spawn_consumer().await;

    let response = consumer.get_catalog("CATALOG-0001").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"productId": "CATALOG-0001", "productName": "Product CATALOG-0001", "stock": 7, "unitPrice": 1500})
    );

    for (description, path) in [
        ("unknown product", "/catalogs/CATALOG-9999"),
        ("over-long id", &format!("/catalogs/{}", "x".repeat(500))),
        ("control character in id", "/catalogs/CATALOG%00"),
        ("unknown route", "/nothing-here"),
    ] {
        let response = consumer.get(path).await;
        assert_eq!(response.status(), 404, "{description}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "not_found", "{description}");
        assert!(body["message"].is_string(), "{description}");
    }

    let response = reqwest::Client::new()
        .post(format!("{}/catalogs", consumer.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "method_not_allowed");

    // The generated OpenAPI document lists every route with its answers.
    let openapi: Value = consumer.get("/openapi.json").await.json().await.unwrap();
    for (path, statuses) in [
        ("/catalogs", vec!["200", "500", "503"]),
        ("/catalogs/{productId}", vec!["200", "404", "500", "503"]),
        ("/healthz", vec!["200"]),
        ("/readyz", vec!["200", "503"]),
        ("/metrics", vec!["200", "500"]),
        ("/openapi.json", vec!["200"]),
    ] {
        let documented: Vec<&String> = openapi["paths"][path]["get"]["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{path} is documented"))
            .keys()
            .collect();
        assert_eq!(documented, statuses, "{path}");
    }
    assert!(openapi["components"]["schemas"].get("Product").is_some());
    consumer.stop().await;
}

#[tokio::test]
async fn health_readiness_and_metrics_are_served() {
    let fixture = Fixture::new(1).await;
    let consumer = fixture.spawn_consumer().await;

    assert_eq!(consumer.get("/healthz").await.status(), 200);
    let ready = consumer.get("/readyz").await;
    assert_eq!(ready.status(), 200, "{:?}", ready.text().await);
    let metrics = consumer.metrics().await;
    for series in [
        "catalog_consumer_messages_total{result=\"applied\"}",
        "catalog_consumer_messages_total{result=\"duplicate\"}",
        "catalog_consumer_messages_total{result=\"insufficient_stock\"}",
        "catalog_consumer_messages_total{result=\"unknown_product\"}",
        "catalog_consumer_messages_total{result=\"dlq\"}",
        "catalog_consumer_batch_size",
        "catalog_consumer_apply_seconds",
        "catalog_consumer_commit_to_applied_seconds",
    ] {
        assert!(
            metrics.contains(series),
            "{series} missing from:\n{metrics}"
        );
    }
    consumer.stop().await;
}
