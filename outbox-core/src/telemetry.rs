//! JSON log lines on stdout, filtered by `RUST_LOG` (default `info`), and, opt-in by the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, OpenTelemetry traces exported over OTLP/HTTP.
//!
//! One trace per order across the three processes: order-api's request span continues the
//! caller's `traceparent` (or starts a trace), the outbox row carries that span's context, the
//! relay's publish span of the row is its child and puts its own context on the message, and the
//! consumer's apply span of the event is the child of that. The W3C trace-context propagator
//! reads and writes `traceparent` and `tracestate` (kept as the caller sent it; the sampled flag
//! too). Without the endpoint nothing is exported and no OpenTelemetry span is made: the
//! contexts are still propagated ([`child_context`] makes the row's).

use std::sync::OnceLock;

use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider,
    },
    Context,
};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider, Resource};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};

/// The exporting provider, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Flushes and stops the exporter when dropped (at the end of `main`).
#[must_use = "dropping it stops the trace exporter"]
pub struct Telemetry(());

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = PROVIDER.get() {
            if let Err(error) = provider.shutdown() {
                eprintln!("cannot flush the trace exporter: {error}");
            }
        }
    }
}

/// Whether spans are exported (`OTEL_EXPORTER_OTLP_ENDPOINT` was set at start-up). Code that
/// would make a span per message asks first, so nothing is spent when tracing is off.
pub fn exporting() -> bool {
    PROVIDER.get().is_some()
}

/// Installs the global subscriber: one JSON object per line on stdout, with the current span's
/// fields (`trace_id` and `span_id` among them inside traced spans), filtered by `RUST_LOG`;
/// and the OTLP exporter when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (`OTEL_SERVICE_NAME`, else
/// `service`, names the process; `OTEL_EXPORTER_OTLP_PROTOCOL` picks `http/protobuf`, the
/// default, or `http/json`). Calling it twice is harmless (tests build several apps).
pub fn init(service: &str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,sqlx=warn"));
    match otlp_provider(service) {
        // Without an exporter, exactly the logging subscriber: RUST_LOG filters globally, so a
        // disabled span or event costs nothing at its call site.
        None => {
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(log_lines())
                .try_init();
        }
        // With one, the filters are per layer: RUST_LOG for log lines, INFO for exported spans
        // whatever RUST_LOG says.
        Some(provider) => {
            let tracer = provider.tracer(service.to_owned());
            let _ = PROVIDER.set(provider);
            let traces = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
            let _ = tracing_subscriber::registry()
                .with(log_lines().with_filter(filter))
                .with(traces)
                .try_init();
        }
    }
    Telemetry(())
}

/// One JSON object per line on stdout, with the current span's fields.
fn log_lines<S>() -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(std::io::stdout)
}

fn otlp_provider(service: &str) -> Option<SdkTracerProvider> {
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok()?;
    if endpoint.trim().is_empty() {
        return None;
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(exporter) => exporter,
        Err(error) => {
            eprintln!("OTEL_EXPORTER_OTLP_ENDPOINT={endpoint}: cannot create the exporter ({error}); no traces are exported");
            return None;
        }
    };
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_owned());
    }
    Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    )
}

/// W3C trace context as carried by an outbox row and a Kafka message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceHeaders {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl TraceHeaders {
    fn context(&self) -> Context {
        TraceContextPropagator::new().extract(self)
    }

    fn of(context: &Context) -> Self {
        let mut headers = TraceHeaders::default();
        TraceContextPropagator::new().inject_context(context, &mut headers);
        headers
    }
}

impl Extractor for TraceHeaders {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.traceparent.as_deref(),
            "tracestate" => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

impl Injector for TraceHeaders {
    fn set(&mut self, key: &str, value: String) {
        let value = (!value.is_empty()).then_some(value);
        match key {
            "traceparent" => self.traceparent = value,
            "tracestate" => self.tracestate = value,
            _ => {}
        }
    }
}

/// Makes `span` a child of the context in `incoming` (when it holds a valid one), records the
/// span's `trace_id` and `span_id` fields (declared `Empty` by the caller) for the log lines
/// inside it, and returns the context to pass on: the span's own when spans are exported, else
/// a new child of `incoming` (or a new trace), keeping its `tracestate` and sampled flag.
pub fn child_context(span: &tracing::Span, incoming: &TraceHeaders) -> TraceHeaders {
    let parent = incoming.context();
    let context = if exporting() {
        let _ = span.set_parent(parent);
        span.context()
    } else {
        let remote = parent.span().span_context().clone();
        let child = if remote.is_valid() {
            SpanContext::new(
                remote.trace_id(),
                random_span_id(),
                remote.trace_flags(),
                false,
                remote.trace_state().clone(),
            )
        } else {
            SpanContext::new(
                random_trace_id(),
                random_span_id(),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            )
        };
        Context::new().with_remote_span_context(child)
    };
    let span_context = context.span().span_context().clone();
    span.record("trace_id", tracing::field::display(span_context.trace_id()));
    span.record("span_id", tracing::field::display(span_context.span_id()));
    TraceHeaders::of(&context)
}

/// Makes `span` (when spans are exported) a child of the context carried by `incoming`, and
/// returns the headers to carry on: the span's own context when exported, else `incoming`
/// unchanged.
pub fn continue_context(span: &tracing::Span, incoming: &TraceHeaders) -> TraceHeaders {
    if !exporting() || incoming.traceparent.is_none() {
        return incoming.clone();
    }
    let _ = span.set_parent(incoming.context());
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span.record("trace_id", tracing::field::display(span_context.trace_id()));
    span.record("span_id", tracing::field::display(span_context.span_id()));
    TraceHeaders::of(&context)
}

fn random_trace_id() -> TraceId {
    loop {
        let id = TraceId::from_bytes(uuid::Uuid::new_v4().into_bytes());
        if id != TraceId::INVALID {
            return id;
        }
    }
}

fn random_span_id() -> SpanId {
    loop {
        let bytes = uuid::Uuid::new_v4().into_bytes();
        let id = SpanId::from_bytes(bytes[..8].try_into().expect("8 bytes"));
        if id != SpanId::INVALID {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_continued_with_its_state_and_flags_and_an_invalid_one_replaced() {
        let span = tracing::Span::none();
        let incoming = TraceHeaders {
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".into()),
            tracestate: Some("vendor=abc,other=1".into()),
        };
        let child = child_context(&span, &incoming);
        let traceparent = child.traceparent.expect("a traceparent");
        assert!(traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(!traceparent.contains("00f067aa0ba902b7"), "a new span id");
        assert!(
            traceparent.ends_with("-00"),
            "the sampled flag is kept: {traceparent}"
        );
        assert_eq!(child.tracestate.as_deref(), Some("vendor=abc,other=1"));

        let fresh = child_context(
            &span,
            &TraceHeaders {
                traceparent: Some("garbage".into()),
                tracestate: None,
            },
        );
        let fresh = fresh.traceparent.expect("a new trace");
        assert_eq!(fresh.len(), 55);
        assert!(fresh.ends_with("-01"));
    }
}
