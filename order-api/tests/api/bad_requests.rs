use crate::helpers::spawn_app;
use reqwest::Method;
use serde_json::Value;

struct Case {
    description: &'static str,
    method: Method,
    path: &'static str,
    content_type: Option<&'static str>,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    error: &'static str,
}

fn post(
    description: &'static str,
    body: impl Into<Vec<u8>>,
    status: u16,
    error: &'static str,
) -> Case {
    Case {
        description,
        method: Method::POST,
        path: "/orders",
        content_type: Some("application/json"),
        headers: Vec::new(),
        body: body.into(),
        status,
        error,
    }
}

fn order_with(field: &str, value: Value) -> Vec<u8> {
    let mut body = serde_json::json!({
        "userId": "user-1", "productId": "CATALOG-0001", "quantity": 1, "unitPrice": 1500
    });
    body[field] = value;
    serde_json::to_vec(&body).unwrap()
}

fn order_without(field: &str) -> Vec<u8> {
    let mut body = serde_json::json!({
        "userId": "user-1", "productId": "CATALOG-0001", "quantity": 1, "unitPrice": 1500
    });
    body.as_object_mut().unwrap().remove(field);
    serde_json::to_vec(&body).unwrap()
}

fn cases() -> Vec<Case> {
    let valid = order_with("quantity", 1.into());
    let one_megabyte = "x".repeat(1024 * 1024);
    vec![
        post("malformed JSON", r#"{"userId": "user-1", "productId" "x"}"#, 400, "malformed_json"),
        post("truncated JSON", &valid[..valid.len() / 2], 400, "malformed_json"),
        post("empty body", "", 400, "malformed_json"),
        post("not UTF-8", vec![b'{', 0xff, 0xfe, b'}'], 400, "malformed_json"),
        post("a JSON array instead of an object", "[1, 2, 3]", 422, "validation_failed"),
        post("quantity as a string", order_with("quantity", "10".into()), 422, "validation_failed"),
        post("unitPrice as a fraction", order_with("unitPrice", 12.5.into()), 422, "validation_failed"),
        post("userId as a number", order_with("userId", 42.into()), 422, "validation_failed"),
        post("userId null", order_with("userId", Value::Null), 422, "validation_failed"),
        post("missing userId", order_without("userId"), 422, "validation_failed"),
        post("missing productId", order_without("productId"), 422, "validation_failed"),
        post("missing quantity", order_without("quantity"), 422, "validation_failed"),
        post("missing unitPrice", order_without("unitPrice"), 422, "validation_failed"),
        post("an unknown field", order_with("discount", 5.into()), 422, "validation_failed"),
        post("zero quantity", order_with("quantity", 0.into()), 422, "validation_failed"),
        post("negative quantity", order_with("quantity", (-3).into()), 422, "validation_failed"),
        post("huge quantity", order_with("quantity", 1_000_000_000_000i64.into()), 422, "validation_failed"),
        post("quantity beyond 64 bits", br#"{"userId":"u","productId":"p","quantity":99999999999999999999999,"unitPrice":1}"#.to_vec(), 422, "validation_failed"),
        post("negative unitPrice", order_with("unitPrice", (-1).into()), 422, "validation_failed"),
        post("quantity times price overflows", br#"{"userId":"u","productId":"p","quantity":10000,"unitPrice":9223372036854775807}"#.to_vec(), 422, "validation_failed"),
        post("empty userId", order_with("userId", "".into()), 422, "validation_failed"),
        post("blank productId", order_with("productId", "   ".into()), 422, "validation_failed"),
        post("over-long productId", order_with("productId", "p".repeat(129).into()), 422, "validation_failed"),
        post("a 1 MB userId", order_with("userId", one_megabyte.into()), 413, "payload_too_large"),
        post("a NUL byte in userId", order_with("userId", "user\u{0}1".into()), 422, "validation_failed"),
        post("a control character in productId", order_with("productId", "CATALOG\u{1b}[31m".into()), 422, "validation_failed"),
        post("SQL in quantity", order_with("quantity", "1; drop table orders; --".into()), 422, "validation_failed"),
        post("SQL-looking field name", br#"{"userId":"u","productId":"p","quantity":1,"unitPrice":1,"1=1; drop table outbox":1}"#.to_vec(), 422, "validation_failed"),
        post("oversized body", format!(r#"{{"userId":"u","productId":"p","quantity":1,"unitPrice":1,"pad":"{}"}}"#, "x".repeat(20_000)), 413, "payload_too_large"),
        Case {
            content_type: Some("text/plain"),
            ..post("wrong content type", valid.clone(), 415, "unsupported_media_type")
        },
        Case {
            content_type: None,
            ..post("no content type", valid.clone(), 415, "unsupported_media_type")
        },
        Case {
            headers: vec![("idempotency-key", "k".repeat(300))],
            ..post("over-long Idempotency-Key", valid.clone(), 400, "invalid_idempotency_key")
        },
        Case {
            headers: vec![("idempotency-key", "two words".into())],
            ..post("Idempotency-Key with a space", valid.clone(), 400, "invalid_idempotency_key")
        },
        Case {
            path: "/nowhere",
            ..post("unknown route", valid.clone(), 404, "not_found")
        },
        Case {
            method: Method::DELETE,
            ..post("wrong method on /orders", Vec::new(), 405, "method_not_allowed")
        },
        Case {
            method: Method::PUT,
            path: "/orders/0190a000-0000-7000-8000-000000000000",
            ..post("wrong method on /orders/{id}", valid.clone(), 405, "method_not_allowed")
        },
        Case {
            method: Method::GET,
            path: "/users/user-1/orders?limit=0",
            ..post("a zero list limit", Vec::new(), 400, "invalid_limit")
        },
    ]
}

#[tokio::test]
async fn bad_requests_get_a_json_4xx_and_write_nothing() {
    let app = spawn_app().await;
    let cases = cases();
    assert!(cases.len() >= 20);

    for case in cases {
        let mut request = app
            .client
            .request(case.method.clone(), format!("{}{}", app.address, case.path))
            .body(case.body.clone());
        if let Some(content_type) = case.content_type {
            request = request.header("content-type", content_type);
        }
        for (name, value) in &case.headers {
            request = request.header(*name, value);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", case.description));

        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert_eq!(
            status, case.status,
            "{}: status (body {body})",
            case.description
        );
        let json: Value = serde_json::from_str(&body)
            .unwrap_or_else(|_| panic!("{}: body is not JSON: {body}", case.description));
        assert_eq!(
            json["error"], case.error,
            "{}: error code in {body}",
            case.description
        );
        assert!(
            json["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty() && m.len() < 1000),
            "{}: a short human message in {body}",
            case.description
        );
        assert_eq!(
            app.row_counts().await,
            (0, 0),
            "{}: nothing written",
            case.description
        );
    }
}

#[tokio::test]
async fn sql_looking_ids_are_stored_verbatim() {
    let app = spawn_app().await;
    let product = "CATALOG'; drop table orders; --";
    let response = app
        .post_order(&crate::helpers::order_body("user-1", product, 1, 100))
        .await;
    assert_eq!(response.status(), 201);
    let stored: String = sqlx::query_scalar("select product_id from orders")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, product);
    assert_eq!(app.row_counts().await, (1, 1));
}
