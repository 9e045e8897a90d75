//! The operations HTTP surface every service serves: `/healthz`, `/readyz`, `/metrics`, the
//! JSON error body `{"error", "message"}` used for every 4xx and 5xx, a failed database call as
//! such an error ([`DatabaseError`]), and the HTTP server setup itself ([`serve`]).

use std::{future::Future, net::TcpListener, pin::Pin, sync::Arc, time::Duration};

use actix_web::{dev::Server, http::StatusCode, web, App, HttpResponse, HttpServer, ResponseError};
use anyhow::Context;
use prometheus::{Encoder, Registry, TextEncoder};
use rdkafka::producer::{BaseProducer, Producer};
use serde::Serialize;
use sqlx::PgPool;

/// The body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    /// A stable machine-readable code, e.g. `invalid_json`.
    pub error: &'a str,
    /// A sentence for the human reading it.
    pub message: &'a str,
}

/// An error response with the JSON body `{"error": code, "message": message}`.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(ErrorBody {
        error: code,
        message,
    })
}

/// The default service for unknown routes: a JSON 404.
pub async fn not_found() -> HttpResponse {
    error_response(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// The default service of a known resource for a method it does not serve: a JSON 405 with
/// the `Allow` header RFC 9110 asks for (`allow` lists the methods the resource serves).
pub async fn method_not_allowed(allow: &'static str) -> HttpResponse {
    let mut response = error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("this route accepts {allow} only"),
    );
    response.headers_mut().insert(
        actix_web::http::header::ALLOW,
        actix_web::http::header::HeaderValue::from_static(allow),
    );
    response
}

/// A resource that answers other methods than GET (and HEAD) with 405 and `Allow: GET`.
pub fn get_only(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(|| method_not_allowed("GET")))
}

/// A failed database call as an HTTP error: 503 `service_unavailable` when the database cannot
/// be reached or is restarting ([`crate::db::is_unavailable`]: retry later), 500
/// `internal_error` otherwise. The database's own text is logged, never sent to the client.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error("the database is unavailable; retry later")]
    Unavailable(#[source] sqlx::Error),
    #[error("internal error")]
    Internal(#[source] sqlx::Error),
}

impl From<sqlx::Error> for DatabaseError {
    fn from(error: sqlx::Error) -> Self {
        if crate::db::is_unavailable(&error) {
            Self::Unavailable(error)
        } else {
            Self::Internal(error)
        }
    }
}

impl DatabaseError {
    /// The stable code of the error body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "service_unavailable",
            Self::Internal(_) => "internal_error",
        }
    }
}

impl ResponseError for DatabaseError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Self::Unavailable(source) => tracing::error!(error = %source, "database unavailable"),
            Self::Internal(source) => tracing::error!(error = %source, "database query failed"),
        }
        error_response(self.status_code(), self.code(), &self.to_string())
    }
}

/// How a service's HTTP server runs.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// Address to listen on (`host:port`; port 0 picks a free port).
    pub addr: String,
    /// Worker threads; `None` for actix's default (one per core).
    pub workers: Option<usize>,
    /// How long requests in flight may take to finish after a stop.
    pub shutdown_timeout_secs: u64,
}

/// Binds `settings.addr` and builds (not yet polled) the service's HTTP server: the service's
/// own routes from `routes`, [`Ops::configure`]'s `/healthz`, `/readyz` and `/metrics`, and a
/// JSON 404 for anything else. Signals are left to the service's one shutdown token.
pub fn serve<F>(settings: &ServeSettings, ops: Ops, routes: F) -> anyhow::Result<Served>
where
    F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
{
    let listener = TcpListener::bind(&settings.addr)
        .with_context(|| format!("cannot listen on {}", settings.addr))?;
    let port = listener.local_addr()?.port();
    let mut server = HttpServer::new(move || {
        App::new()
            .configure(routes.clone())
            .configure(|cfg| ops.configure(cfg))
            .default_service(web::to(not_found))
    })
    .disable_signals()
    .shutdown_timeout(settings.shutdown_timeout_secs);
    if let Some(workers) = settings.workers {
        server = server.workers(workers);
    }
    Ok(Served {
        port,
        server: server.listen(listener)?.run(),
    })
}

/// A bound, not yet polled HTTP server ([`serve`]).
pub struct Served {
    /// The bound port (the one asked for, or the one picked for port 0).
    pub port: u16,
    server: Server,
}

impl Served {
    /// Serves while `work` runs; then stops the server gracefully (requests in flight finish,
    /// within the shutdown timeout) and returns `work`'s output and how the server ended. Every
    /// service's lifetime is this: its own work beside its HTTP surface.
    pub async fn serve_while<T>(self, work: impl Future<Output = T>) -> (T, anyhow::Result<()>) {
        let handle = self.server.handle();
        let server = tokio::spawn(self.server);
        let output = work.await;
        handle.stop(true).await;
        let served = match server.await {
            Ok(result) => result.context("HTTP server failed"),
            Err(error) => Err(anyhow::Error::from(error).context("HTTP server task failed")),
        };
        (output, served)
    }
}

/// The OpenAPI description of what [`Ops::configure`] serves, and of `/openapi.json` itself.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(healthz, readyz, metrics, openapi_json),
    components(schemas(ErrorBody))
)]
pub struct OpsApi;

/// A service's whole OpenAPI document: `own` (its routes) and the operations routes.
pub fn openapi_document(mut own: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    own.merge(<OpsApi as utoipa::OpenApi>::openapi());
    own
}

/// The document `/openapi.json` serves.
struct ServedDocument(utoipa::openapi::OpenApi);

/// Serves `document` (see [`openapi_document`]) at `GET /openapi.json`.
pub fn configure_openapi(cfg: &mut web::ServiceConfig, document: utoipa::openapi::OpenApi) {
    cfg.app_data(web::Data::new(ServedDocument(document)))
        .service(get_only("/openapi.json").route(web::get().to(openapi_json)));
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document", body = Object)))]
async fn openapi_json(document: web::Data<ServedDocument>) -> HttpResponse {
    HttpResponse::Ok().json(&document.0)
}

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// One readiness check: a named dependency and how to probe it.
#[derive(Clone)]
pub struct Check {
    name: &'static str,
    probe: Arc<dyn Fn() -> CheckFuture + Send + Sync>,
}

impl Check {
    /// A check that the pool can run `select 1`.
    pub fn postgres(pool: PgPool) -> Self {
        Self {
            name: "database",
            probe: Arc::new(move || {
                let pool = pool.clone();
                Box::pin(async move {
                    let ping = sqlx::query("select 1").execute(&pool);
                    match tokio::time::timeout(Duration::from_secs(2), ping).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(error)) => Err(error.to_string()),
                        Err(_) => Err("no answer within 2 s".into()),
                    }
                })
            }),
        }
    }

    /// A check that the broker answers a metadata request. The client is built once, so the
    /// check reuses its connections.
    pub fn kafka(settings: &crate::settings::KafkaSettings) -> anyhow::Result<Self> {
        let client: Arc<BaseProducer> = Arc::new(settings.client_config()?.create()?);
        let hint = settings.connection_hint();
        Ok(Self {
            name: "kafka",
            probe: Arc::new(move || {
                let client = client.clone();
                Box::pin(async move {
                    tokio::task::spawn_blocking(move || {
                        client
                            .client()
                            .fetch_metadata(None, Duration::from_secs(2))
                            .map(|_| ())
                            .map_err(|e| format!("{e} ({hint})"))
                    })
                    .await
                    .map_err(|e| e.to_string())?
                })
            }),
        })
    }
}

impl Check {
    /// A check computed in-process, e.g. "a batch has been retried for too long"; `Err` says
    /// why the process is not ready.
    pub fn from_fn(
        name: &'static str,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        let check = Arc::new(check);
        Self {
            name,
            probe: Arc::new(move || {
                let result = check();
                Box::pin(async move { result })
            }),
        }
    }

    /// Probes the dependency once; `Err` says why it did not answer.
    pub async fn run(&self) -> Result<(), String> {
        (self.probe)().await
    }
}

/// What `/readyz` checks and what `/metrics` renders.
#[derive(Clone)]
pub struct Ops {
    registry: Registry,
    checks: Vec<Check>,
}

impl Ops {
    /// An ops surface rendering `registry` and checking `checks` for readiness.
    pub fn new(registry: Registry, checks: Vec<Check>) -> Self {
        Self { registry, checks }
    }

    /// Runs every check; `Err` lists the failing ones.
    pub async fn ready(&self) -> Result<(), Vec<(&'static str, String)>> {
        let mut failures = Vec::new();
        for check in &self.checks {
            if let Err(reason) = check.run().await {
                failures.push((check.name, reason));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures)
        }
    }

    /// Adds `/healthz`, `/readyz` and `/metrics` to an app.
    pub fn configure(&self, cfg: &mut web::ServiceConfig) {
        cfg.app_data(web::Data::new(self.clone()))
            .service(get_only("/healthz").route(web::get().to(healthz)))
            .service(get_only("/readyz").route(web::get().to(readyz)))
            .service(get_only("/metrics").route(web::get().to(metrics)));
    }
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive: `{\"status\": \"ok\"}`", body = Object)))]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// Every dependency answers (database; Kafka where used).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready: `{\"status\": \"ready\"}`", body = Object),
        (status = 503, description = "Not ready; the message names what does not answer", body = ErrorBody),
    ))]
async fn readyz(ops: web::Data<Ops>) -> HttpResponse {
    match ops.ready().await {
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({ "status": "ready" })),
        Err(failures) => {
            let detail = failures
                .iter()
                .map(|(name, reason)| format!("{name}: {reason}"))
                .collect::<Vec<_>>()
                .join("; ");
            tracing::warn!(%detail, "not ready");
            // Names only: the causes (which may carry server messages) stay in the log.
            let names = failures.iter().map(|(name, _)| *name).collect::<Vec<_>>();
            let message = format!("not ready: {}", names.join(", "));
            error_response(StatusCode::SERVICE_UNAVAILABLE, "not_ready", &message)
        }
    }
}

/// Prometheus metrics, text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Metrics", content_type = "text/plain", body = String),
        (status = 500, description = "The metrics could not be rendered", body = ErrorBody),
    ))]
async fn metrics(ops: web::Data<Ops>) -> HttpResponse {
    let mut buffer = Vec::new();
    match TextEncoder::new().encode(&ops.registry.gather(), &mut buffer) {
        Ok(()) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4")
            .body(buffer),
        Err(error) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics_unavailable",
            &error.to_string(),
        ),
    }
}

/// `<binary> healthcheck`: asks the service's own `/readyz` (for a container `HEALTHCHECK` or
/// compose `healthcheck`, where no curl exists).
#[derive(Debug, Clone, clap::Args)]
pub struct HealthcheckArgs {
    /// The service's HTTP address (its HTTP_ADDR; a wildcard host is asked on 127.0.0.1).
    #[arg(long, env = "HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3)]
    pub timeout_secs: u64,
}

/// Runs `healthcheck`: exit 0 when `GET /readyz` answers 200, 1 otherwise (with the reason on
/// stderr). `default_addr` is the service's default HTTP_ADDR.
pub fn healthcheck(args: &HealthcheckArgs, default_addr: &str) -> std::process::ExitCode {
    let addr = args.http_addr.as_deref().unwrap_or(default_addr);
    match readyz_status(addr, Duration::from_secs(args.timeout_secs.max(1))) {
        Ok(200) => std::process::ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("not ready: GET http://{addr}/readyz answered {status}");
            std::process::ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("not ready: GET http://{addr}/readyz failed: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The status code of `GET /readyz` at `addr`, over a plain HTTP/1.0 connection.
fn readyz_status(addr: &str, timeout: Duration) -> std::io::Result<u16> {
    use std::{
        io::{Read, Write},
        net::{SocketAddr, TcpStream, ToSocketAddrs},
    };
    let mut target: SocketAddr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{addr} resolves to no address")))?;
    if target.ip().is_unspecified() {
        target.set_ip(match target {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let mut stream = TcpStream::connect_timeout(&target, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET /readyz HTTP/1.0\r\nHost: {target}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let read = stream.read(&mut head)?;
    let line = String::from_utf8_lossy(&head[..read]);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {line:?}")))
}
