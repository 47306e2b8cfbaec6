//! Logs, traces and metrics.
//!
//! Logs are JSON lines (or plain text for people). Spans go to an OTLP collector when an
//! endpoint is set. W3C trace context (`traceparent`) is taken from every incoming request and
//! put on every outgoing one whether or not spans are exported, so a trace crosses services.

use anyhow::Context as _;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer as _};

/// Keeps the tracer provider alive; dropping it flushes pending spans.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// Installs the global subscriber once per process (the all-in-one binary calls it once for all).
pub fn init(service: &str, json: bool, otlp_endpoint: Option<&str>) -> anyhow::Result<TelemetryGuard> {
    let mut builder = SdkTracerProvider::builder()
        .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service.to_owned()).build());
    if let Some(endpoint) = otlp_endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .context("building the OTLP exporter")?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());

    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,h2=warn"));
    let fmt = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed()
    };
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer(service.to_owned()));
    // A second init in one process (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry().with(filter).with(fmt).with(otel).try_init();
    Ok(TelemetryGuard { provider })
}

/// Installs the Prometheus exporter serving `/metrics` on `addr`, once per process.
pub fn init_metrics(addr: SocketAddr) -> anyhow::Result<()> {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    if INSTALLED.get().is_some() {
        return Ok(());
    }
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .context("starting the metrics endpoint")?;
    let _ = INSTALLED.set(());
    Ok(())
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// Puts the current span's trace context on an outgoing request.
pub fn inject_trace_context(metadata: &mut tonic::metadata::MetadataMap) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(metadata));
}

/// Server layer: a span per RPC continuing the caller's trace, and request metrics.
#[derive(Clone, Copy, Default)]
pub struct TraceLayer;

impl<S> tower_layer::Layer<S> for TraceLayer {
    type Service = TraceService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TraceService { inner }
    }
}

#[derive(Clone)]
pub struct TraceService<S> {
    inner: S,
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for TraceService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_owned();
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(req.headers()));
        let span = tracing::info_span!("rpc", rpc.method = %method, otel.kind = "server");
        let _ = span.set_parent(parent);
        let started = Instant::now();
        let timeout = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::deadline::parse_grpc_timeout);
        let fut = {
            let _entered = span.enter();
            crate::deadline::scope(timeout, self.inner.call(req))
        };
        Box::pin(tracing::Instrument::instrument(
            async move {
                let res = fut.await;
                // Errors before the body (auth, unknown method) carry grpc-status in the headers.
                let code = match &res {
                    Ok(r) => {
                        r.headers().get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("0").to_owned()
                    }
                    Err(_) => "transport".to_owned(),
                };
                let elapsed = started.elapsed().as_secs_f64();
                metrics::counter!("grpc_server_requests_total", "method" => method.clone(), "code" => code)
                    .increment(1);
                metrics::histogram!("grpc_server_request_duration_seconds", "method" => method)
                    .record(elapsed);
                res
            },
            span,
        ))
    }
}

/// Client interceptor: carries trace context and a bearer token on every outgoing call.
#[derive(Clone)]
pub struct ClientInterceptor {
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl ClientInterceptor {
    pub fn new(token: Option<&str>) -> Self {
        Self { authorization: token.and_then(|t| format!("Bearer {t}").parse().ok()) }
    }
}

impl tonic::service::Interceptor for ClientInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(a) = &self.authorization {
            req.metadata_mut().insert("authorization", a.clone());
        }
        inject_trace_context(req.metadata_mut());
        // What is left of the caller's deadline bounds the call it is making.
        match crate::deadline::remaining() {
            Some(left) if left.is_zero() => {
                return Err(tonic::Status::deadline_exceeded("the caller's deadline has passed"));
            }
            Some(left) => req.set_timeout(left),
            None => {}
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    #[tokio::test]
    async fn a_call_made_while_serving_a_request_continues_the_callers_trace() {
        let _guard = init("test", true, None).unwrap();
        // The handler makes an outgoing call: it returns the metadata that call would carry.
        let handler = tower::service_fn(|_req: http::Request<()>| async {
            let mut outgoing = tonic::metadata::MetadataMap::new();
            inject_trace_context(&mut outgoing);
            let traceparent = outgoing.get("traceparent").map(|v| v.to_str().unwrap().to_owned());
            Ok::<_, std::convert::Infallible>(http::Response::new(traceparent))
        });
        let mut svc = TraceLayer.layer(handler);
        let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let req = http::Request::builder()
            .uri("/contactier.ops.v1.ClockService/GetTime")
            .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
            .body(())
            .unwrap();
        let resp = svc.ready().await.unwrap().call(req).await.unwrap();
        let outgoing = resp.into_body().expect("outgoing call carries traceparent");
        assert!(outgoing.starts_with(&format!("00-{trace_id}-")), "{outgoing}");
        assert!(!outgoing.contains("00f067aa0ba902b7"), "a new span id of our own: {outgoing}");
    }

    /// The outgoing call's grpc-timeout, made while serving a request with `incoming`.
    async fn outgoing_timeout(
        incoming: Option<&str>,
        work: std::time::Duration,
    ) -> Result<Option<String>, tonic::Code> {
        let handler = tower::service_fn(move |_req: http::Request<()>| async move {
            tokio::time::sleep(work).await;
            let out =
                tonic::service::Interceptor::call(&mut ClientInterceptor::new(None), tonic::Request::new(()));
            let header =
                out.map(|r| r.metadata().get("grpc-timeout").map(|v| v.to_str().unwrap().to_owned()));
            Ok::<_, std::convert::Infallible>(http::Response::new(header.map_err(|s| s.code())))
        });
        let mut svc = TraceLayer.layer(handler);
        let mut req = http::Request::builder().uri("/contactier.ops.v1.ClockService/GetTime");
        if let Some(t) = incoming {
            req = req.header("grpc-timeout", t);
        }
        svc.ready().await.unwrap().call(req.body(()).unwrap()).await.unwrap().into_body()
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_made_while_serving_a_request_carries_what_is_left_of_its_deadline() {
        let ms = |v: Option<String>| {
            v.and_then(|t| t.strip_suffix('u').map(|n| n.parse::<u64>().unwrap() / 1_000))
        };
        let left = outgoing_timeout(Some("2S"), std::time::Duration::from_millis(500)).await.unwrap();
        assert_eq!(ms(left), Some(1_500));
        assert_eq!(
            outgoing_timeout(None, std::time::Duration::ZERO).await,
            Ok(None),
            "no deadline, none passed on"
        );
        let late = outgoing_timeout(Some("100m"), std::time::Duration::from_millis(200)).await;
        assert_eq!(late, Err(tonic::Code::DeadlineExceeded), "nothing sent once the caller gave up");
    }
}
