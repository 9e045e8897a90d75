use actix_web::{http::StatusCode, HttpResponse, ResponseError};
use outbox_core::ops::{error_response, DatabaseError};

/// Every way a request can fail, each with its status and a stable code. Database text never
/// reaches the client: it is logged, and the client gets a generic message.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{0}")]
    Unprocessable(String),
    #[error("the request body must be JSON (content-type: application/json)")]
    UnsupportedMediaType,
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    NotFound(String),
    #[error("this Idempotency-Key was used with a different request body")]
    IdempotencyKeyReused,
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error("orders are not taken while the outbox lags more than MAX_OUTBOX_LAG_SECS behind; retry after {} s", .retry_after.as_secs())]
    OutboxLagging { retry_after: std::time::Duration },
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. } => code,
            Self::Unprocessable(_) => "validation_failed",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::NotFound(_) => "not_found",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::Database(error) => error.code(),
            Self::OutboxLagging { .. } => "outbox_lagging",
            Self::Internal(_) => "internal_error",
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(error.into())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unprocessable(_) | Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Database(error) => error.status_code(),
            Self::OutboxLagging { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Self::Database(error) => return error.error_response(),
            Self::Internal(source) => {
                tracing::error!(error = format!("{source:#}"), "request failed")
            }
            _ => {}
        }
        let mut response = error_response(self.status_code(), self.code(), &self.to_string());
        if let Self::OutboxLagging { retry_after } = self {
            response.headers_mut().insert(
                actix_web::http::header::RETRY_AFTER,
                actix_web::http::header::HeaderValue::from(retry_after.as_secs()),
            );
        }
        response
    }
}
