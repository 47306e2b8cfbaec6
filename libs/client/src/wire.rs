//! Names and headers of gRPC calls, shared by clients and servers.

use opentelemetry::propagation::{Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A gRPC status code as go-grpc-prometheus writes it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// `/package.Service/Method` as (service, method).
pub fn split_path(path: &str) -> (String, String) {
    match path.trim_start_matches('/').split_once('/') {
        Some((s, m)) => (s.to_owned(), m.to_owned()),
        None => ("unknown".to_owned(), path.to_owned()),
    }
}

/// Puts `span`'s trace context (W3C `traceparent`) into request headers.
pub fn inject_into_headers(span: &tracing::Span, headers: &mut http::HeaderMap) {
    struct HeaderInjector<'a>(&'a mut http::HeaderMap);
    impl Injector for HeaderInjector<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(k), Ok(v)) =
                (http::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::from_str(&value))
            {
                self.0.insert(k, v);
            }
        }
    }
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
}

/// The gRPC status of a response that carries no message (trailers only), if any.
pub fn early_status<B>(response: &http::Response<B>) -> Option<tonic::Status> {
    let headers = response.headers();
    headers.get("grpc-status")?;
    tonic::Status::from_header_map(headers)
}
