//! A handler that panics answers INTERNAL, logged once; the client never sees its stream reset.
//! A panic while a handler works is caught where its future is polled; one while an answer is
//! streamed ends the stream with INTERNAL in its trailers.

use futures::FutureExt;
use pin_project_lite::pin_project;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

fn report(path: &str, panic: &(dyn std::any::Any + Send)) {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    metrics::counter!("contactier_handler_panics_total").increment(1);
    tracing::error!(path, panic = %what, "a handler panicked; answered INTERNAL");
}

fn internal() -> tonic::Status {
    tonic::Status::internal("internal error")
}

#[derive(Clone, Copy, Debug, Default)]
pub struct CatchPanicLayer;

impl<S> tower_layer::Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;
    fn layer(&self, inner: S) -> CatchPanic<S> {
        CatchPanic { inner }
    }
}

#[derive(Clone, Debug)]
pub struct CatchPanic<S> {
    inner: S,
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for CatchPanic<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    RB::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_owned();
        // A panic may also come from building the future.
        let fut = match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
            Ok(fut) => fut,
            Err(panic) => {
                report(&path, &*panic);
                return Box::pin(async { Ok(internal().into_http()) });
            }
        };
        Box::pin(async move {
            match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(resp) => {
                    Ok(resp?.map(|inner| tonic::body::Body::new(Guarded { inner, path, done: false })))
                }
                Err(panic) => {
                    report(&path, &*panic);
                    Ok(internal().into_http())
                }
            }
        })
    }
}

pin_project! {
    /// An answer's body; a panic while it is polled ends it with INTERNAL trailers.
    struct Guarded<B> {
        #[pin]
        inner: B,
        path: String,
        done: bool,
    }
}

impl<B> http_body::Body for Guarded<B>
where
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Data = bytes::Bytes;
    type Error = tonic::codegen::StdError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        let inner = this.inner;
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll_frame(cx))) {
            Ok(p) => p.map(|f| f.map(|r| r.map_err(Into::into))),
            Err(panic) => {
                report(this.path, &*panic);
                *this.done = true;
                let mut trailers = http::HeaderMap::new();
                let _ = internal().add_header(&mut trailers);
                Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::{Layer, Service, ServiceExt};

    #[tokio::test]
    async fn a_panicking_handler_answers_internal() {
        let handler = tower::service_fn(|_req: http::Request<()>| async {
            let n: i64 = std::hint::black_box(i64::MAX);
            let _ = n.checked_add(1).expect("an overflow");
            Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
        });
        let mut svc = CatchPanicLayer.layer(handler);
        let req = http::Request::builder().uri("/x.v1.X/Get").body(()).unwrap();
        let resp = svc.ready().await.unwrap().call(req).await.unwrap();
        let status = tonic::Status::from_header_map(resp.headers()).expect("a gRPC status");
        assert_eq!((status.code(), status.message()), (tonic::Code::Internal, "internal error"));
    }

    #[tokio::test]
    async fn a_stream_that_panics_ends_with_internal_trailers() {
        let handler = tower::service_fn(|_req: http::Request<()>| async {
            let body = http_body_util::StreamBody::new(futures::stream::iter([Ok::<_, tonic::Status>(
                http_body::Frame::data(bytes::Bytes::from_static(b"first")),
            )]))
            .map_frame(|f| {
                if f.data_ref().is_some_and(|d| d.as_ref() == b"first") {
                    panic!("while streaming")
                }
                f
            });
            Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::new(body)))
        });
        let mut svc = CatchPanicLayer.layer(handler);
        let req = http::Request::builder().uri("/x.v1.X/Watch").body(()).unwrap();
        let resp = svc.ready().await.unwrap().call(req).await.unwrap();
        let collected = resp.into_body().collect().await.expect("the body ends cleanly");
        let trailers = collected.trailers().expect("trailers").clone();
        let status = tonic::Status::from_header_map(&trailers).expect("a gRPC status");
        assert_eq!(status.code(), tonic::Code::Internal);
    }
}
