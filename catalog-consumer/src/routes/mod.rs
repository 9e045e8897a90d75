mod catalogs;
mod openapi;

pub use catalogs::Product;

use actix_web::web;
use outbox_core::ops;

pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/catalogs")
            .route(web::get().to(catalogs::list_products))
            .default_service(web::to(|| ops::method_not_allowed("GET"))),
    )
    .service(
        web::resource("/catalogs/{product_id}")
            .route(web::get().to(catalogs::get_product))
            .default_service(web::to(|| ops::method_not_allowed("GET"))),
    );
    ops::configure_openapi(cfg, openapi::api());
}
