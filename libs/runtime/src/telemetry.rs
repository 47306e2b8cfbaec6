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
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{LevelFilter, Targets};
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

    // RUST_LOG picks the log lines only: quieting logs must not cut traces short. Without it,
    // sqlx is quieted for every layer at once, in front of them: sqlx asks whether an event is
    // enabled without always sending it, and a per-layer filter that said no to that question
    // then dropped the next event on the thread ("serving" at start on PostgreSQL).
    let (filter, quiet_sqlx) = match EnvFilter::try_from_default_env() {
        Ok(f) => (f, None),
        Err(_) => (
            EnvFilter::new("info,h2=warn"),
            Some(Targets::new().with_default(LevelFilter::TRACE).with_target("sqlx", LevelFilter::WARN)),
        ),
    };
    let fmt = if json {
        let format = tracing_subscriber::fmt::format().json().flatten_event(true).with_current_span(false);
        tracing_subscriber::fmt::layer()
            .json()
            .event_format(WithTraceIds(format))
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        // Colour only for a person at a terminal, never into a file or a pipe.
        use std::io::IsTerminal;
        tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed()
    };
    // Spans carry what a trace needs and no more: the busy and idle times took a clock read at
    // every poll of a call's future, and the thread and source-location attributes were
    // allocated for every span; together with the call's own log line recorded into its span
    // (its code and duration are the span's own), about a tenth of a read's CPU.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service.to_owned()))
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_filter(EnvFilter::new(
            "info,sqlx=warn,h2=warn,hyper=warn,tonic=warn,tower=warn,contactier::calls=off",
        ));
    // A second init in one process (tests) keeps the first subscriber.
    let _ =
        tracing_subscriber::registry().with(fmt.with_filter(filter)).with(otel).with(quiet_sqlx).try_init();
    Ok(TelemetryGuard { provider })
}

/// Serves Prometheus metrics at `/metrics` on `addr`, once per process.
pub async fn init_metrics(addr: SocketAddr) -> anyhow::Result<()> {
    static SERVING: OnceLock<()> = OnceLock::new();
    if SERVING.get().is_some() {
        return Ok(());
    }
    crate::prom::serve(addr).await?;
    let _ = SERVING.set(());
    Ok(())
}

/// JSON lines with the trace and span of the OpenTelemetry context they were written in, so a
/// log line can be joined to its trace.
struct WithTraceIds<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use opentelemetry::trace::TraceContextExt;
        let mut line = String::new();
        self.0.format_event(ctx, tracing_subscriber::fmt::format::Writer::new(&mut line), event)?;
        let cx = opentelemetry::Context::current();
        let span = cx.span();
        let ids = span.span_context();
        match line.strip_prefix('{') {
            Some(rest) if ids.is_valid() && ctx.lookup_current().is_some() => write!(
                writer,
                "{{\"trace_id\":\"{}\",\"span_id\":\"{}\",{rest}",
                ids.trace_id(),
                ids.span_id()
            ),
            _ => writer.write_str(&line),
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
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

/// The current span's W3C traceparent, if it is in a trace.
pub fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// The context a W3C traceparent names.
pub fn context_of(traceparent: &str) -> opentelemetry::Context {
    let carrier = std::collections::HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    TraceContextPropagator::new().extract(&carrier)
}

pub use contactier_client::wire::inject_into_headers;

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

/// What inner layers learn of a call for its log line: the account it acted on.
#[derive(Clone, Default)]
pub struct CallInfo(Arc<OnceLock<String>>);

impl CallInfo {
    pub fn set_account(&self, account: &str) {
        let _ = self.0.set(account.to_owned());
    }
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for TraceService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = http::Response<CallBody<RB>>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // Labels come from the contracts only: paths anyone can send must not make new series.
        let rpc = crate::rpc_metrics::of(req.uri().path());
        let path = if rpc.path == req.uri().path() {
            std::borrow::Cow::Borrowed(rpc.path)
        } else {
            std::borrow::Cow::Owned(req.uri().path().to_owned())
        };
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(req.headers()));
        let span = tracing::info_span!(
            "rpc",
            otel.name = rpc.name(),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = rpc.service.as_str(),
            rpc.method = rpc.method.as_str(),
            rpc.grpc.status_code = tracing::field::Empty,
        );
        let _ = span.set_parent(parent);
        let info = CallInfo::default();
        req.extensions_mut().insert(info.clone());
        let metrics = rpc.metrics();
        if let Some(m) = metrics {
            m.started.increment(1);
            m.in_flight.increment(1.0);
        }
        let timeout = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::deadline::parse_grpc_timeout);
        let started = Instant::now();
        let call = Call {
            path,
            rpc,
            metrics,
            started,
            info,
            span: span.clone(),
            deadline: timeout.and_then(|t| started.checked_add(t.saturating_sub(DEADLINE_MARGIN))),
            done: false,
        };
        let fut = {
            let _entered = span.enter();
            crate::deadline::scope(timeout, self.inner.call(req))
        };
        Box::pin(tracing::Instrument::instrument(
            async move {
                let mut call = call;
                let res = match timeout {
                    // Answered here a moment before the transport's own timer, which would
                    // answer CANCELLED ("Timeout expired") and leave the call logged and
                    // counted as a client's cancel.
                    Some(t) => tokio::time::timeout(t.saturating_sub(DEADLINE_MARGIN), fut)
                        .await
                        .unwrap_or_else(|_| {
                            Ok(tonic::Status::deadline_exceeded("the caller's deadline passed").into_http())
                        }),
                    None => fut.await,
                };
                // Errors before the body (auth, unknown method, a handler's error) carry
                // grpc-status in the headers; any other answer's status comes in the trailers
                // that end its body (a stream's after its last message), and the call is
                // finished there.
                match res {
                    Ok(r) => match status_in(r.headers()) {
                        Some((code, message)) => {
                            call.finish(Some(code), message.as_deref());
                            Ok(r.map(|inner| CallBody { inner, call: None }))
                        }
                        None => Ok(r.map(|inner| CallBody { inner, call: Some(call) })),
                    },
                    Err(e) => {
                        call.finish(None, None);
                        Err(e)
                    }
                }
            },
            span,
        ))
    }
}

/// The gRPC status and message in a response's headers or trailers, if they carry one.
fn status_in(headers: &http::HeaderMap) -> Option<(tonic::Code, Option<String>)> {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let code = header("grpc-status")?.parse::<i32>().map_or(tonic::Code::Unknown, tonic::Code::from_i32);
    let message = header("grpc-message")
        .map(|m| percent_encoding::percent_decode_str(m).decode_utf8_lossy().into_owned());
    Some((code, message))
}

pin_project_lite::pin_project! {
    /// An answer's body that finishes its call with the status its trailers carry, when the
    /// answer ends: a stream that fails after its first message (an import cut off) is
    /// counted and logged with its code, not as OK. Dropped before its end, the call counts as
    /// cancelled, or as cut by its deadline once that has passed (`gone`).
    pub struct CallBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B> CallBody<B> {
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: http_body::Body> http_body::Body for CallBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Some(call) = this.call.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some((code, message)) = frame.trailers_ref().and_then(status_in) {
                        call.finish(Some(code), message.as_deref());
                    }
                }
                Poll::Ready(Some(Err(_))) => call.finish(None, None),
                // Ended without trailers: nothing said otherwise.
                Poll::Ready(None) => call.finish(Some(tonic::Code::Ok), None),
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// How long before a caller's deadline a call still running is answered DEADLINE_EXCEEDED.
const DEADLINE_MARGIN: std::time::Duration = std::time::Duration::from_millis(2);

/// One call being served: counted, logged and its span closed once, when it ends or, should
/// the caller go away first (cancelled, its deadline passed), when it is dropped.
struct Call {
    /// As sent (an undeclared one is logged as it came).
    path: std::borrow::Cow<'static, str>,
    rpc: &'static crate::rpc_metrics::Rpc,
    metrics: Option<&'static crate::rpc_metrics::Metrics>,
    started: Instant,
    info: CallInfo,
    span: tracing::Span,
    /// When the caller's deadline passes (less the margin the answer goes out by), if it set one.
    deadline: Option<Instant>,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: Option<tonic::Code>, message: Option<&str>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let elapsed = self.started.elapsed();
        let code_name = code.map_or("Transport", crate::prom::code_name);
        self.span.record("rpc.grpc.status_code", code.map_or(-1, |c| c as i32));
        if matches!(
            code,
            None | Some(
                tonic::Code::Internal
                    | tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::DataLoss
                    | tonic::Code::DeadlineExceeded
            )
        ) {
            self.span.record("otel.status_code", "ERROR");
        }
        if let Some(m) = self.metrics {
            m.in_flight.decrement(1.0);
            self.rpc.handled(m, code).increment(1);
            m.handling.record(elapsed.as_secs_f64());
        }
        let _entered = self.span.enter();
        log_call(&self.path, code, code_name, message, elapsed, self.info.0.get().map(String::as_str));
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.done {
            let (code, message) = gone(self.deadline, Instant::now());
            self.finish(Some(code), Some(message));
        }
    }
}

/// Why a call ended before its answer did: its caller's deadline, once past (a stream cut by
/// it, the caller's reset arriving first), or else the caller went away.
fn gone(deadline: Option<Instant>, now: Instant) -> (tonic::Code, &'static str) {
    match deadline {
        Some(d) if now >= d => {
            (tonic::Code::DeadlineExceeded, "the caller's deadline passed before the answer")
        }
        _ => (tonic::Code::Cancelled, "the caller went away before the answer"),
    }
}

/// What a refusal's log line says of it: for an invalid argument the field only, since its
/// reason may quote the value (personal data); otherwise the message.
/// What a refusal's log line says of it: the field at fault of an `INVALID_ARGUMENT`, as far
/// as it is a field's path (a map key a caller chose is cut off), and nothing of any other
/// refusal, whose message may carry what the caller sent (an email given as an id, a name).
fn refusal(code: Option<tonic::Code>, message: Option<&str>) -> String {
    let message = message.unwrap_or("");
    match code {
        Some(tonic::Code::InvalidArgument) => {
            let field = message.split_once(": ").map_or("", |(f, _)| f);
            let path = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.[]".contains(c);
            field.chars().take_while(|c| path(*c)).take(200).collect()
        }
        _ => String::new(),
    }
}

/// One line per completed call: the method, its status, how long it took, the account. Health
/// probes at debug; the server's own failures at error with their cause.
fn log_call(
    path: &str,
    code: Option<tonic::Code>,
    code_name: &str,
    message: Option<&str>,
    took: Duration,
    account: Option<&str>,
) {
    use tonic::Code::*;
    let duration_ms = took.as_secs_f64() * 1e3;
    let account = account.unwrap_or("");
    match code {
        _ if path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.") => {
            tracing::debug!(target: "contactier::calls", method = path, code = code_name, duration_ms, "call");
        }
        None | Some(Internal | Unavailable | Unknown | DataLoss) => tracing::error!(
            target: "contactier::calls",
            method = path,
            code = code_name,
            duration_ms,
            account_id = account,
            error = message.unwrap_or("transport error"),
            "call failed"
        ),
        Some(Ok) => {
            tracing::info!(target: "contactier::calls", method = path, code = code_name, duration_ms, account_id = account, "call");
        }
        Some(_) => tracing::info!(
            target: "contactier::calls",
            method = path,
            code = code_name,
            duration_ms,
            account_id = account,
            reason = refusal(code, message),
            "call refused"
        ),
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

    #[test]
    fn refusals_are_logged_without_what_the_caller_sent() {
        use tonic::Code;
        let r = |code, m: &str| super::refusal(Some(code), Some(m));
        assert_eq!(
            r(Code::InvalidArgument, "contacts[3].email: at most 254 characters"),
            "contacts[3].email"
        );
        assert_eq!(
            r(Code::InvalidArgument, "property_choices.Grace Hopper: no such property"),
            "property_choices."
        );
        assert_eq!(r(Code::NotFound, "contact grace.hopper@navy.mil not found"), "");
        assert_eq!(r(Code::AlreadyExists, "name: another list is named \"Ada's\""), "");
    }

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
        let outgoing = resp.into_body().into_inner().expect("outgoing call carries traceparent");
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
            Ok::<_, std::convert::Infallible>(http::Response::new(Some(header.map_err(|s| s.code()))))
        });
        let mut svc = TraceLayer.layer(handler);
        let mut req = http::Request::builder().uri("/contactier.ops.v1.ClockService/GetTime");
        if let Some(t) = incoming {
            req = req.header("grpc-timeout", t);
        }
        let resp = svc.ready().await.unwrap().call(req.body(()).unwrap()).await.unwrap();
        resp.into_body().into_inner().expect("the handler answered")
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
        let late = crate::deadline::scope(Some(std::time::Duration::from_millis(100)), async {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            tonic::service::Interceptor::call(&mut ClientInterceptor::new(None), tonic::Request::new(()))
                .map(drop)
                .map_err(|s| s.code())
        });
        assert_eq!(late.await, Err(tonic::Code::DeadlineExceeded), "nothing sent once the caller gave up");
    }

    #[test]
    fn a_call_that_ends_before_its_answer_is_cut_by_its_deadline_once_past_it() {
        let now = Instant::now();
        let later = now + Duration::from_millis(5);
        assert_eq!(gone(Some(now), later).0, tonic::Code::DeadlineExceeded, "a stream its deadline cut");
        assert_eq!(gone(Some(later), now).0, tonic::Code::Cancelled, "the caller went away first");
        assert_eq!(gone(None, now).0, tonic::Code::Cancelled, "no deadline");
    }

    /// A call still running at its caller's deadline is answered DEADLINE_EXCEEDED by then,
    /// before the transport's own timer would answer it CANCELLED.
    #[tokio::test(start_paused = true)]
    async fn a_call_still_running_at_its_deadline_is_answered_deadline_exceeded() {
        let handler = tower::service_fn(|_req: http::Request<()>| async {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
        });
        let mut svc = TraceLayer.layer(handler);
        let call = |timeout: Option<&str>| {
            let mut req = http::Request::builder().uri("/contactier.ops.v1.ClockService/GetTime");
            if let Some(t) = timeout {
                req = req.header("grpc-timeout", t);
            }
            req.body(()).unwrap()
        };
        let started = tokio::time::Instant::now();
        let resp = svc.ready().await.unwrap().call(call(Some("50m"))).await.unwrap();
        let status = resp.headers().get("grpc-status").map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(status.as_deref(), Some("4"), "DEADLINE_EXCEEDED");
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_millis(50), "answered before the deadline: {took:?}");
        let resp = svc.ready().await.unwrap().call(call(None)).await.unwrap();
        assert!(resp.headers().get("grpc-status").is_none(), "no deadline: the handler's answer");
    }
}
