//! One trace per order across the three processes, exported over OTLP/HTTP (JSON) to a receiver
//! in this test: order-api's request span continues the caller's `traceparent`, the relay's
//! publish span of that order's row is its child, and the consumer's apply span of the event is
//! the publish span's child; the caller's `tracestate` travels along.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;
use system_tests::Stack;
use testkit::eventually;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// A span as the receiver saw it.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    trace_state: String,
}

/// An OTLP/HTTP receiver (`http/json`): answers every POST with 200 and keeps the spans.
async fn receiver() -> (String, Arc<Mutex<Vec<Span>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let spans = Arc::new(Mutex::new(Vec::new()));
    let store = spans.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let store = store.clone();
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(value) = lower.strip_prefix("content-length:") {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if stream.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    if let Ok(request) = serde_json::from_slice::<Value>(&body) {
                        store.lock().unwrap().extend(spans_of(&request));
                    }
                    let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                    if stream.get_mut().write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (endpoint, spans)
}

fn spans_of(request: &Value) -> Vec<Span> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let mut spans = Vec::new();
    for resource in request["resourceSpans"].as_array().into_iter().flatten() {
        let service = resource["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["key"] == "service.name")
            .map(|a| text(&a["value"]["stringValue"]))
            .unwrap_or_default();
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                spans.push(Span {
                    service: service.clone(),
                    name: text(&span["name"]),
                    trace_id: text(&span["traceId"]).to_lowercase(),
                    span_id: text(&span["spanId"]).to_lowercase(),
                    parent_span_id: text(&span["parentSpanId"]).to_lowercase(),
                    trace_state: text(&span["traceState"]),
                });
            }
        }
    }
    spans
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_one_trace_across_order_api_the_relay_and_the_consumer() {
    let (endpoint, spans) = receiver().await;
    let stack = Stack::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ])
    .await;
    let http = reqwest::Client::new();
    let deadline = Duration::from_secs(60);

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let response = http
        .post(format!("http://{}/orders", stack.api))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .header("tracestate", "vendor=abc")
        .json(&serde_json::json!({
            "userId": "user-1", "productId": "CATALOG-0001", "quantity": 10, "unitPrice": 1500
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    // The three spans of the order's trace, each the child of the one before.
    let found = eventually(deadline, || {
        let spans = spans.clone();
        async move {
            let spans = spans.lock().unwrap().clone();
            let of_trace: Vec<&Span> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
            let find = |service: &str, name: &str| {
                of_trace
                    .iter()
                    .find(|s| s.service == service && s.name == name)
                    .map(|s| (*s).clone())
            };
            Some((
                find("order-api", "create_order")?,
                find("outbox-relay", "publish")?,
                find("catalog-consumer", "apply")?,
            ))
        }
    })
    .await;
    let (request, publish, apply) = match found {
        Ok(found) => found,
        Err(_) => {
            let seen: BTreeMap<String, usize> =
                spans
                    .lock()
                    .unwrap()
                    .iter()
                    .fold(BTreeMap::new(), |mut seen, s| {
                        *seen
                            .entry(format!("{} {} {}", s.service, s.name, s.trace_id))
                            .or_default() += 1;
                        seen
                    });
            panic!("the order's three spans were not exported; seen: {seen:#?}");
        }
    };
    assert_eq!(
        request.parent_span_id, caller_span,
        "continues the caller's span"
    );
    assert_eq!(
        publish.parent_span_id, request.span_id,
        "{publish:?} / {request:?}"
    );
    assert_eq!(
        apply.parent_span_id, publish.span_id,
        "{apply:?} / {publish:?}"
    );
    for span in [&request, &publish, &apply] {
        assert_eq!(span.trace_state, "vendor=abc", "tracestate kept: {span:?}");
    }
}
