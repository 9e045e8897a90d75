//! The catalog as the consumer has applied it: products with their current stock.

use actix_web::{http::StatusCode, web, HttpResponse, ResponseError};
use outbox_core::{
    event::validate_id,
    ops::{error_response, DatabaseError},
};
use serde::Serialize;
use sqlx::PgPool;

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Product {
    pub product_id: String,
    pub product_name: String,
    pub stock: i32,
    pub unit_price: i64,
}

/// How a catalog request fails. Database text never reaches the client: it is logged.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("no product with id {0:?}")]
    NotFound(String),
    #[error(transparent)]
    Database(#[from] DatabaseError),
}

impl From<sqlx::Error> for CatalogError {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(error.into())
    }
}

impl ResponseError for CatalogError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Database(error) => error.status_code(),
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Self::NotFound(_) => error_response(self.status_code(), "not_found", &self.to_string()),
            Self::Database(error) => error.error_response(),
        }
    }
}

/// Every product with its current stock, ordered by id.
#[utoipa::path(get, path = "/catalogs", tag = "catalog",
    responses(
        (status = 200, description = "The products", body = Vec<Product>),
        (status = 500, description = "Unexpected failure (logged)", body = outbox_core::ops::ErrorBody),
        (status = 503, description = "Database unavailable", body = outbox_core::ops::ErrorBody),
    ))]
#[tracing::instrument(skip_all)]
pub(crate) async fn list_products(pool: web::Data<PgPool>) -> Result<HttpResponse, CatalogError> {
    let products = sqlx::query_as!(
        Product,
        "select product_id, product_name, stock, unit_price from products order by product_id"
    )
    .fetch_all(pool.get_ref())
    .await?;
    Ok(HttpResponse::Ok().json(products))
}

/// One product with its current stock.
#[utoipa::path(get, path = "/catalogs/{productId}", tag = "catalog",
    params(("productId" = String, Path, description = "The product's id")),
    responses(
        (status = 200, description = "The product", body = Product),
        (status = 404, description = "No such product", body = outbox_core::ops::ErrorBody),
        (status = 500, description = "Unexpected failure (logged)", body = outbox_core::ops::ErrorBody),
        (status = 503, description = "Database unavailable", body = outbox_core::ops::ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(product_id = %product_id))]
pub(crate) async fn get_product(
    pool: web::Data<PgPool>,
    product_id: web::Path<String>,
) -> Result<HttpResponse, CatalogError> {
    let product_id = product_id.into_inner();
    // An id no product can have (empty, too long, control characters) is simply not found.
    if validate_id("productId", &product_id).is_err() {
        return Err(CatalogError::NotFound(product_id));
    }
    let product = sqlx::query_as!(
        Product,
        "select product_id, product_name, stock, unit_price from products where product_id = $1",
        product_id
    )
    .fetch_optional(pool.get_ref())
    .await?;
    match product {
        Some(product) => Ok(HttpResponse::Ok().json(product)),
        None => Err(CatalogError::NotFound(product_id)),
    }
}
