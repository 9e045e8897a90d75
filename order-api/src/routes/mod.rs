mod openapi;
mod orders;

use actix_web::web;
use outbox_core::ops;

pub(crate) fn configure(cfg: &mut web::ServiceConfig, max_body_bytes: usize) {
    cfg.app_data(web::Data::new(orders::BodyLimit(max_body_bytes)))
        .service(
            web::resource("/orders")
                .route(web::post().to(orders::create_order))
                .default_service(web::to(|| ops::method_not_allowed("POST"))),
        )
        .service(
            web::resource("/orders/{order_id}")
                .route(web::get().to(orders::get_order))
                .default_service(web::to(|| ops::method_not_allowed("GET"))),
        )
        .service(
            web::resource("/users/{user_id}/orders")
                .route(web::get().to(orders::list_user_orders))
                .default_service(web::to(|| ops::method_not_allowed("GET"))),
        );
    ops::configure_openapi(cfg, openapi::api());
}
