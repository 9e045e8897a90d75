//! The relay's HTTP surface: health, readiness and metrics, and `GET /status` (what
//! `outbox-relay status` prints). Nothing here publishes.

use actix_web::{web, HttpResponse, ResponseError};
use outbox_core::ops::{self, DatabaseError, Ops, ServeSettings, Served};
use sqlx::PgPool;

use crate::outbox::status;

/// Binds `addr` and builds (not yet polled) the server.
pub(super) fn serve(addr: &str, ops: Ops, pool: PgPool) -> anyhow::Result<Served> {
    let settings = ServeSettings {
        addr: addr.to_owned(),
        workers: Some(1),
        shutdown_timeout_secs: 5,
    };
    let pool = web::Data::new(pool);
    ops::serve(&settings, ops, move |cfg| {
        cfg.app_data(pool.clone())
            .service(ops::get_only("/status").route(web::get().to(status_route)));
    })
}

/// `GET /status`: what `outbox-relay status` prints.
async fn status_route(pool: web::Data<PgPool>) -> HttpResponse {
    match status::status(pool.get_ref()).await {
        Ok(status) => HttpResponse::Ok().json(status),
        Err(error) => DatabaseError::from(error).error_response(),
    }
}
