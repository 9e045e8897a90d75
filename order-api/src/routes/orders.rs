use std::time::Instant;

use actix_web::{http::header, web, HttpRequest, HttpResponse};
use chrono::{SubsecRound, Utc};
use futures::StreamExt;
use outbox_core::{
    event::{self, OrderPlaced},
    telemetry::{self, TraceHeaders},
};
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    order_store::{self, Inserted, NewOrder, Order},
    ApiError, AppState,
};

pub(crate) struct BodyLimit(pub usize);

pub(crate) const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
const MAX_ERROR_DETAIL: usize = 200;

/// The body of `POST /orders`, as the seed's OrderDto. Serialised, it is the request an
/// Idempotency-Key remembers: what was asked, not what was generated.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct CreateOrder {
    user_id: String,
    product_id: String,
    quantity: i64,
    unit_price: i64,
}

impl TryFrom<CreateOrder> for OrderPlaced {
    type Error = ApiError;

    /// Gives the order its id, time and total, then checks it once by the rules the consumer
    /// applies to its event.
    fn try_from(input: CreateOrder) -> Result<Self, ApiError> {
        // Beyond i32 is out of range as well: 0 fails the quantity rule with the same message.
        let quantity = i32::try_from(input.quantity).unwrap_or(0);
        let order = Self {
            order_id: Uuid::now_v7(),
            user_id: input.user_id,
            product_id: input.product_id,
            quantity,
            unit_price: input.unit_price,
            // Saturates only for an out-of-range quantity or unitPrice, which `validate` reports.
            total_price: i64::from(quantity).saturating_mul(input.unit_price),
            // PostgreSQL keeps microseconds: the response, the row and the event agree exactly.
            created_at: Utc::now().trunc_subsecs(6),
        };
        order.validate().map_err(ApiError::Unprocessable)?;
        Ok(order)
    }
}

/// Place an order: the order and its order.placed.v1 event are written in one transaction.
#[utoipa::path(
    post,
    path = "/orders",
    tag = "orders",
    request_body(content = CreateOrder, content_type = "application/json"),
    params(
        ("Idempotency-Key" = Option<String>, Header,
            description = "A retry with the same key and body returns the same order (for IDEMPOTENCY_KEY_RETENTION); the same key with another body gets 422."),
        ("traceparent" = Option<String>, Header,
            description = "W3C trace context: the request's span continues it and the event carries it; a new trace is started when absent or invalid."),
        ("tracestate" = Option<String>, Header,
            description = "W3C trace state, carried on the event unchanged."),
    ),
    responses(
        (status = 201, description = "Order placed, or replayed for an Idempotency-Key", body = Order,
            headers(
                ("Location" = String, description = "/orders/{orderId}"),
                ("idempotent-replayed" = String, description = "`true` when the order was placed by an earlier request with the same Idempotency-Key"),
            )),
        (status = 400, description = "Malformed JSON, or an invalid Idempotency-Key", body = outbox_core::ops::ErrorBody),
        (status = 413, description = "Body larger than MAX_BODY_BYTES", body = outbox_core::ops::ErrorBody),
        (status = 415, description = "Content type is not application/json", body = outbox_core::ops::ErrorBody),
        (status = 422, description = "A field is invalid (`validation_failed`), or the Idempotency-Key was used with another body (`idempotency_key_reused`)", body = outbox_core::ops::ErrorBody),
        (status = 500, description = "Unexpected failure (logged)", body = outbox_core::ops::ErrorBody),
        (status = 503, description = "Database unavailable (`service_unavailable`), or the outbox lags past MAX_OUTBOX_LAG_SECS (`outbox_lagging`, with Retry-After)", body = outbox_core::ops::ErrorBody,
            headers(("Retry-After" = String, description = "Seconds, with `outbox_lagging`"))),
    )
)]
pub(crate) async fn create_order(
    request: HttpRequest,
    payload: web::Payload,
    limit: web::Data<BodyLimit>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // The request's span continues the caller's trace (or starts one): its parent is set
    // before it is entered, and the event carries its context.
    let span = tracing::info_span!(
        "create_order",
        order_id = tracing::field::Empty,
        idempotency_key = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let trace = telemetry::child_context(
        &span,
        &TraceHeaders {
            traceparent: header("traceparent"),
            tracestate: header("tracestate"),
        },
    );
    let result = create(&request, payload, limit.0, &state, trace)
        .instrument(span)
        .await;
    if let Err(error) = &result {
        state
            .metrics
            .rejected
            .with_label_values(&[error.code()])
            .inc();
    }
    result
}

async fn create(
    request: &HttpRequest,
    payload: web::Payload,
    limit: usize,
    state: &AppState,
    trace: TraceHeaders,
) -> Result<HttpResponse, ApiError> {
    if let Some(retry_after) = state.backpressure.refusing() {
        return Err(ApiError::OutboxLagging { retry_after });
    }
    let key = idempotency_key(request)?;
    require_json(request)?;
    let body = read_body(payload, limit).await?;
    let input: CreateOrder = serde_json::from_slice(&body).map_err(|e| {
        let detail = truncate(&e.to_string());
        if e.is_data() {
            ApiError::Unprocessable(format!("the order is not valid: {detail}"))
        } else {
            ApiError::bad_request(
                "malformed_json",
                format!("the body is not valid JSON: {detail}"),
            )
        }
    })?;
    let asked = key
        .is_some()
        .then(|| serde_json::to_value(&input))
        .transpose()
        .map_err(|e| ApiError::Internal(e.into()))?;
    let order = OrderPlaced::try_from(input)?;
    let span = tracing::Span::current();
    span.record("order_id", tracing::field::display(order.order_id));
    if let Some(key) = &key {
        span.record("idempotency_key", key.as_str());
    }

    let traceparent = trace.traceparent.unwrap_or_default();
    let event_id = Uuid::now_v7();
    let new = NewOrder {
        order: &order,
        event_id,
        traceparent: &traceparent,
        tracestate: trace.tracestate.as_deref(),
        idempotency: key.as_deref().zip(asked.as_ref()),
    };
    let started = Instant::now();
    let inserted = state.orders.insert(&new).await?;
    state
        .metrics
        .insert_seconds
        .observe(started.elapsed().as_secs_f64());
    match inserted {
        Inserted::Created => {
            state.wakeup.ring();
            state.metrics.orders_created.inc();
            tracing::info!(
                order_id = %order.order_id,
                %event_id,
                product_id = %order.product_id,
                quantity = order.quantity,
                "order placed"
            );
            let stored = Order {
                placed: order,
                status: order_store::PLACED.into(),
            };
            Ok(created(&stored, false))
        }
        Inserted::Existing {
            request,
            order: existing,
        } if asked.as_ref() == Some(&request) => {
            state.metrics.idempotent_replays.inc();
            tracing::info!(order_id = %existing.placed.order_id, "idempotent replay");
            Ok(created(&existing, true))
        }
        Inserted::Existing { .. } => Err(ApiError::IdempotencyKeyReused),
    }
}

fn created(order: &Order, replayed: bool) -> HttpResponse {
    let mut response = HttpResponse::Created();
    response.insert_header((
        header::LOCATION,
        format!("/orders/{}", order.placed.order_id),
    ));
    if replayed {
        response.insert_header(("idempotent-replayed", "true"));
    }
    response.json(order)
}

fn idempotency_key(request: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = request.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::bad_request(
            "invalid_idempotency_key",
            format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
            ),
        )
    };
    let key = value.to_str().map_err(|_| invalid())?.trim();
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY_LEN
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(invalid());
    }
    Ok(Some(key.to_owned()))
}

fn require_json(request: &HttpRequest) -> Result<(), ApiError> {
    let is_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

async fn read_body(mut payload: web::Payload, limit: usize) -> Result<web::BytesMut, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request(
                "unreadable_body",
                format!("the body could not be read: {e}"),
            )
        })?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn truncate(text: &str) -> String {
    if text.len() <= MAX_ERROR_DETAIL {
        return text.to_owned();
    }
    let mut end = MAX_ERROR_DETAIL;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// One order.
#[utoipa::path(
    get,
    path = "/orders/{orderId}",
    tag = "orders",
    params(("orderId" = uuid::Uuid, Path, description = "The order's id")),
    responses(
        (status = 200, description = "The order", body = Order),
        (status = 400, description = "orderId is not a UUID", body = outbox_core::ops::ErrorBody),
        (status = 404, description = "No such order", body = outbox_core::ops::ErrorBody),
        (status = 500, description = "Unexpected failure (logged)", body = outbox_core::ops::ErrorBody),
        (status = 503, description = "Database unavailable", body = outbox_core::ops::ErrorBody),
    )
)]
#[tracing::instrument(skip(state))]
pub(crate) async fn get_order(
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let order_id = Uuid::parse_str(&path)
        .map_err(|_| ApiError::bad_request("invalid_order_id", "orderId must be a UUID"))?;
    match order_store::find(&state.pool, order_id).await? {
        Some(order) => Ok(HttpResponse::Ok().json(order)),
        None => Err(ApiError::NotFound(format!("no order {order_id}"))),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    limit: Option<i64>,
}

pub(crate) const MAX_LIST_LIMIT: i64 = 1000;

/// A user's orders, newest first.
#[utoipa::path(
    get,
    path = "/users/{userId}/orders",
    tag = "orders",
    params(
        ("userId" = String, Path, description = "Whose orders"),
        ("limit" = Option<i64>, Query, description = "Most orders returned"),
    ),
    responses(
        (status = 200, description = "The orders", body = Vec<Order>),
        (status = 400, description = "Invalid userId or limit", body = outbox_core::ops::ErrorBody),
        (status = 500, description = "Unexpected failure (logged)", body = outbox_core::ops::ErrorBody),
        (status = 503, description = "Database unavailable", body = outbox_core::ops::ErrorBody),
    )
)]
#[tracing::instrument(skip(state, query))]
pub(crate) async fn list_user_orders(
    path: web::Path<String>,
    query: Result<web::Query<ListQuery>, actix_web::Error>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let user_id = path.into_inner();
    event::validate_id("userId", &user_id)
        .map_err(|m| ApiError::bad_request("invalid_user_id", m))?;
    let invalid_limit = || {
        ApiError::bad_request(
            "invalid_limit",
            format!("limit must be between 1 and {MAX_LIST_LIMIT}"),
        )
    };
    let limit = query.map_err(|_| invalid_limit())?.limit.unwrap_or(100);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(invalid_limit());
    }
    let orders = order_store::list_for_user(&state.pool, &user_id, limit).await?;
    Ok(HttpResponse::Ok().json(orders))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_an_idempotency_key_remembers_is_serialised_as_it_always_was() {
        let input: CreateOrder = serde_json::from_str(
            r#"{"userId":"u-1","productId":"CATALOG-0001","quantity":3,"unitPrice":1500}"#,
        )
        .unwrap();
        // The bytes the hand-built `json!` request was sent as, keys sorted.
        assert_eq!(
            serde_json::to_value(&input).unwrap().to_string(),
            r#"{"productId":"CATALOG-0001","quantity":3,"unitPrice":1500,"userId":"u-1"}"#
        );
    }
}
