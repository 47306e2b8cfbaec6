//! Tokens, deadlines and retries around every call of a [`crate::Client`].
//!
//! A call is sent again only when that cannot do its work twice: reads and internal RPCs
//! (see [`crate::balance::is_idempotent`]), requests that carry a `request_id` (the service
//! answers a repeat with the first answer), and calls refused with RESOURCE_EXHAUSTED and a
//! `RetryInfo` (refused before any work). Waits grow exponentially with jitter, never shorter
//! than the service's `RetryInfo`, and never past the call's deadline.

use crate::balance::Balanced;
use crate::token::TokenSource;
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::body::Body;
use tonic_types::StatusExt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How often and how patiently a call is tried.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Tries in all, the first included (1: never again).
    pub attempts: u32,
    /// The wait before the first repeat (before jitter).
    pub first_wait: Duration,
    /// The longest wait between two tries.
    pub longest_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { attempts: 4, first_wait: Duration::from_millis(100), longest_wait: Duration::from_secs(5) }
    }
}

/// The wait before repeat number `repeat` (1 for the first): the exponential step with jitter
/// (`jitter` in 0..1 picks between half and all of it), and at least what the service asked.
pub fn backoff(policy: &RetryPolicy, repeat: u32, asked: Option<Duration>, jitter: f64) -> Duration {
    let step =
        policy.first_wait.saturating_mul(1u32 << repeat.saturating_sub(1).min(16)).min(policy.longest_wait);
    let jittered = step.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
    asked.map_or(jittered, |a| a.max(jittered))
}

/// Whether a call with this answer should be sent again: a transport failure or UNAVAILABLE
/// when the call may be repeated; RESOURCE_EXHAUSTED whenever the service says when.
pub fn should_retry(answer: Option<Code>, repeatable: bool, asked: Option<Duration>) -> bool {
    match answer {
        None | Some(Code::Unavailable) => repeatable,
        Some(Code::ResourceExhausted) => asked.is_some(),
        Some(_) => false,
    }
}

/// Whether the gRPC frame of a request sets string field `field` (at its top level) to a
/// non-empty value. A compressed or malformed frame does not.
pub fn sets_field(frame: &[u8], field: u32) -> bool {
    use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
    if frame.len() < 5 || frame[0] != 0 {
        return false;
    }
    let mut buf = &frame[5..];
    while !buf.is_empty() {
        let Ok((tag, wire_type)) = decode_key(&mut buf) else { return false };
        if tag == field && wire_type == WireType::LengthDelimited {
            return decode_varint(&mut buf).is_ok_and(|len| len > 0);
        }
        if skip_field(wire_type, tag, &mut buf, DecodeContext::default()).is_err() {
            return false;
        }
    }
    false
}

/// Whether the call at `path` with this request frame cannot do its work twice.
pub fn repeatable(path: &str, frame: &[u8]) -> bool {
    crate::balance::is_idempotent(path)
        || contactier_proto::method(path).and_then(|m| m.request_id).is_some_and(|f| sets_field(frame, f))
}

/// The channel of one service: a [`Balanced`] channel with the token, the deadline and the
/// retries above. Give it to a generated client.
#[derive(Clone)]
pub struct Calls {
    inner: Balanced,
    tokens: Arc<dyn TokenSource>,
    policy: RetryPolicy,
    deadline: Duration,
}

impl Calls {
    pub fn new(
        inner: Balanced,
        tokens: Arc<dyn TokenSource>,
        policy: RetryPolicy,
        deadline: Duration,
    ) -> Self {
        Self { inner, tokens, policy, deadline }
    }
}

fn grpc_timeout(left: Duration) -> http::HeaderValue {
    // Eight digits at most; milliseconds cover 27 hours.
    http::HeaderValue::from_str(&format!("{}m", left.as_millis().clamp(1, 99_999_999))).expect("digits")
}

impl tower_service::Service<http::Request<Body>> for Calls {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            use tower::ServiceExt;
            let (mut parts, body) = request.into_parts();
            if !parts.headers.contains_key("authorization") {
                let token = this.tokens.token().map_err(tonic::Status::unauthenticated)?;
                if !token.is_empty() {
                    let value = http::HeaderValue::from_str(&format!("Bearer {token}"))
                        .map_err(|_| tonic::Status::unauthenticated("the token is not a header value"))?;
                    parts.headers.insert("authorization", value);
                }
            }
            let path = parts.uri.path().to_owned();
            let method = contactier_proto::method(&path);
            let asked_deadline = parts
                .headers
                .get("grpc-timeout")
                .and_then(|v| v.to_str().ok())
                .and_then(crate::deadline::parse_grpc_timeout);
            // A stream of alerts runs as long as its caller wants; everything else has a deadline.
            let budget =
                asked_deadline.or((!method.is_some_and(|m| m.server_streaming)).then_some(this.deadline));
            if method.is_some_and(|m| m.client_streaming) {
                if let Some(b) = budget {
                    parts.headers.insert("grpc-timeout", grpc_timeout(b));
                }
                return this.inner.clone().oneshot(http::Request::from_parts(parts, body)).await;
            }
            let frame = body.collect().await?.to_bytes();
            let repeatable = repeatable(&path, &frame);
            let started = Instant::now();
            let mut repeat = 0;
            loop {
                let left = budget.map(|b| b.saturating_sub(started.elapsed()));
                if let Some(left) = left {
                    if left.is_zero() {
                        return Err(Box::new(tonic::Status::deadline_exceeded(format!(
                            "no answer within the deadline of {budget:?}"
                        ))));
                    }
                    parts.headers.insert("grpc-timeout", grpc_timeout(left));
                }
                let result = this.inner.clone().oneshot(crate::balance::copy(&parts, frame.clone())).await;
                let (answer, asked) = match &result {
                    Ok(response) => match crate::wire::early_status(response) {
                        Some(s) => (Some(s.code()), s.get_details_retry_info().and_then(|r| r.retry_delay)),
                        None => (Some(Code::Ok), None),
                    },
                    Err(_) => (None, None),
                };
                repeat += 1;
                if repeat >= this.policy.attempts || !should_retry(answer, repeatable, asked) {
                    return result;
                }
                let wait = backoff(&this.policy, repeat, asked, rand::random());
                if budget.is_some_and(|b| started.elapsed() + wait >= b) {
                    return result;
                }
                tracing::debug!(path, repeat, ?wait, "calling again");
                tokio::time::sleep(wait).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn frame(msg: &impl Message) -> Vec<u8> {
        let body = msg.encode_to_vec();
        let mut f = vec![0];
        f.extend((body.len() as u32).to_be_bytes());
        f.extend(body);
        f
    }

    #[test]
    fn waits_double_with_jitter_up_to_the_longest_and_never_undercut_the_service() {
        let p = RetryPolicy {
            attempts: 10,
            first_wait: Duration::from_millis(100),
            longest_wait: Duration::from_secs(1),
        };
        assert_eq!(backoff(&p, 1, None, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(&p, 1, None, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(&p, 3, None, 1.0), Duration::from_millis(400));
        assert_eq!(backoff(&p, 9, None, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(&p, 40, None, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(&p, 1, Some(Duration::from_secs(2)), 0.3), Duration::from_secs(2));
        let spread: std::collections::HashSet<_> =
            (0..20).map(|i| backoff(&p, 2, None, f64::from(i) / 20.0)).collect();
        assert!(spread.len() > 10, "jitter spreads the waits");
    }

    #[test]
    fn only_calls_that_cannot_do_their_work_twice_are_repeated() {
        assert!(should_retry(None, true, None));
        assert!(!should_retry(None, false, None));
        assert!(should_retry(Some(Code::Unavailable), true, None));
        assert!(!should_retry(Some(Code::Unavailable), false, None));
        // A rate limit refuses before any work: any call may wait and try again.
        assert!(should_retry(Some(Code::ResourceExhausted), false, Some(Duration::from_secs(1))));
        assert!(!should_retry(Some(Code::ResourceExhausted), true, None));
        for code in
            [Code::Ok, Code::InvalidArgument, Code::AlreadyExists, Code::Internal, Code::DeadlineExceeded]
        {
            assert!(!should_retry(Some(code), true, None), "{code:?}");
        }
    }

    #[test]
    fn a_write_is_repeatable_only_with_its_request_id_set() {
        use contactier_proto::marketing_status::v1::{
            SetMarketingStatusRequest, set_marketing_status_request::Target,
        };
        let path = "/contactier.marketing_status.v1.MarketingStatusService/SetMarketingStatus";
        let with = SetMarketingStatusRequest {
            request_id: "r-1".into(),
            status: 1,
            target: Some(Target::ListId("list-1".into())),
            ..Default::default()
        };
        let without =
            SetMarketingStatusRequest { status: 1, target: with.target.clone(), ..Default::default() };
        assert!(repeatable(path, &frame(&with)));
        assert!(!repeatable(path, &frame(&without)));
        assert!(!repeatable(path, b"\x01\x00\x00\x00\x02ab"), "a compressed frame is not looked into");
        assert!(!repeatable(path, b"\x00\x00\x00\x00\x03\xff\xff\xff"), "nor a malformed one");
        assert!(repeatable("/contactier.billing.v1.BillingService/GetUsage", &[]));
        assert!(!repeatable("/contactier.billing.v1.BillingService/CreateSubscription", &frame(&with)));
    }
}
