use actix_web::HttpResponse;
use serde_json::{json, Value};

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

/// `GET /openapi.json`: every endpoint of order-api, as OpenAPI 3.0.
pub(crate) async fn document() -> HttpResponse {
    let order_ref = json!({ "$ref": "#/components/schemas/Order" });
    let doc = json!({
        "openapi": "3.0.3",
        "info": {
            "title": "order-api",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Places orders; each order and its order.placed.v1 event are written in one transaction."
        },
        "paths": {
            "/orders": {
                "post": {
                    "summary": "Place an order",
                    "parameters": [{
                        "name": "Idempotency-Key", "in": "header", "required": false,
                        "description": "A retry with the same key and body returns the same order; the same key with another body gets 422.",
                        "schema": { "type": "string", "minLength": 1, "maxLength": 255 }
                    }, {
                        "name": "traceparent", "in": "header", "required": false,
                        "description": "W3C trace context, carried on the event.",
                        "schema": { "type": "string" }
                    }],
                    "requestBody": {
                        "required": true,
                        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/CreateOrder" } } }
                    },
                    "responses": {
                        "201": { "description": "Order placed (or replayed for an Idempotency-Key)", "content": { "application/json": { "schema": order_ref } } },
                        "400": error_response("Malformed JSON or header"),
                        "413": error_response("Body too large"),
                        "415": error_response("Content type is not application/json"),
                        "422": error_response("Invalid field, or Idempotency-Key reused with another body"),
                        "503": error_response("Database unavailable")
                    }
                }
            },
            "/orders/{orderId}": {
                "get": {
                    "summary": "One order",
                    "parameters": [{ "name": "orderId", "in": "path", "required": true, "schema": { "type": "string", "format": "uuid" } }],
                    "responses": {
                        "200": { "description": "The order", "content": { "application/json": { "schema": order_ref } } },
                        "400": error_response("orderId is not a UUID"),
                        "404": error_response("No such order")
                    }
                }
            },
            "/users/{userId}/orders": {
                "get": {
                    "summary": "A user's orders, newest first",
                    "parameters": [
                        { "name": "userId", "in": "path", "required": true, "schema": { "type": "string" } },
                        { "name": "limit", "in": "query", "required": false, "schema": { "type": "integer", "minimum": 1, "maximum": 1000, "default": 100 } }
                    ],
                    "responses": {
                        "200": { "description": "The orders", "content": { "application/json": { "schema": { "type": "array", "items": order_ref } } } },
                        "400": error_response("Invalid userId or limit")
                    }
                }
            },
            "/healthz": { "get": { "summary": "The process is alive", "responses": { "200": { "description": "Alive" } } } },
            "/readyz": { "get": { "summary": "The database answers", "responses": { "200": { "description": "Ready" }, "503": error_response("Not ready") } } },
            "/metrics": { "get": { "summary": "Prometheus metrics", "responses": { "200": { "description": "Text exposition format", "content": { "text/plain": {} } } } } },
            "/openapi.json": { "get": { "summary": "This document", "responses": { "200": { "description": "OpenAPI 3.0 document" } } } }
        },
        "components": {
            "schemas": {
                "CreateOrder": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["userId", "productId", "quantity", "unitPrice"],
                    "properties": {
                        "userId": { "type": "string", "minLength": 1, "maxLength": 128 },
                        "productId": { "type": "string", "minLength": 1, "maxLength": 128 },
                        "quantity": { "type": "integer", "minimum": 1, "maximum": outbox_core::event::MAX_QUANTITY },
                        "unitPrice": { "type": "integer", "minimum": 0, "maximum": outbox_core::event::MAX_UNIT_PRICE, "description": "Minor units" }
                    }
                },
                "Order": {
                    "type": "object",
                    "required": ["orderId", "userId", "productId", "quantity", "unitPrice", "totalPrice", "status", "createdAt"],
                    "properties": {
                        "orderId": { "type": "string", "format": "uuid" },
                        "userId": { "type": "string" },
                        "productId": { "type": "string" },
                        "quantity": { "type": "integer" },
                        "unitPrice": { "type": "integer" },
                        "totalPrice": { "type": "integer", "description": "quantity * unitPrice, minor units" },
                        "status": { "type": "string", "enum": ["PLACED"] },
                        "createdAt": { "type": "string", "format": "date-time" }
                    }
                },
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": { "error": { "type": "string" }, "message": { "type": "string" } }
                }
            }
        }
    });
    HttpResponse::Ok().json(doc)
}
