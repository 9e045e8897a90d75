//! `GET /openapi.json`: the OpenAPI 3.1 document of catalog-consumer's HTTP API, generated from
//! the handlers' `#[utoipa::path]` annotations and the types they return.

use outbox_core::ops;
use utoipa::OpenApi;

use super::catalogs;

/// Every route of catalog-consumer.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "catalog-consumer",
        description = "The catalog with the stock as the order events applied it."
    ),
    paths(catalogs::list_products, catalogs::get_product),
    components(schemas(catalogs::Product))
)]
struct ApiDoc;

/// The whole document: the routes above and the operations routes of every service.
pub(crate) fn api() -> utoipa::openapi::OpenApi {
    ops::openapi_document(ApiDoc::openapi())
}
