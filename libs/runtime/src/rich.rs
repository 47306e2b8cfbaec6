//! google.rpc error details on every refusal, so a client branches on values, not on message
//! text: `ErrorInfo` (a stable reason, domain `contactier.io`) always; `BadRequest` naming the
//! field on INVALID_ARGUMENT; `ResourceInfo` on NOT_FOUND and ALREADY_EXISTS; `PreconditionFailure`
//! on FAILED_PRECONDITION; `RetryInfo` on RESOURCE_EXHAUSTED and UNAVAILABLE.
//!
//! Statuses built with details keep them. For the rest, [`RichErrorLayer`] derives them at the
//! edge from the code and the message, whose shapes are the services' convention: `field:
//! reason` for invalid arguments, `<kind> <name> not found`, `retry in N ms`.

use std::collections::HashMap;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of every Contactier error.
pub const DOMAIN: &str = "contactier.io";

/// A status with `details`, and an `ErrorInfo` of `reason` unless it has one.
pub fn status(code: Code, message: impl Into<String>, mut details: ErrorDetails, reason: &str) -> Status {
    if details.error_info().is_none() {
        details.set_error_info(reason, DOMAIN, HashMap::new());
    }
    Status::with_error_details(code, message, details)
}

/// ALREADY_EXISTS naming the resource that is there (the existing contact's id).
pub fn already_exists(resource_type: &str, name: &str, message: impl Into<String>) -> Status {
    let message = message.into();
    let details = ErrorDetails::with_resource_info(resource_type, name, "", message.clone());
    status(Code::AlreadyExists, message, details, "ALREADY_EXISTS")
}

/// The stable reason of a status without one, from its code and message.
pub fn reason(code: Code, message: &str) -> &'static str {
    match code {
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists if message.starts_with("request_id") => "REQUEST_ID_REUSED",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "CONFLICT",
        Code::PermissionDenied if message.contains("may not call") || message.contains("internal access") => {
            "CALLER_NOT_ALLOWED"
        }
        Code::PermissionDenied if message.starts_with("requires ") => "SCOPE_MISSING",
        Code::PermissionDenied if message.contains("not valid for this account") => "WRONG_ACCOUNT",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::Unauthenticated if message.contains("missing") => "TOKEN_MISSING",
        Code::Unauthenticated => "TOKEN_INVALID",
        Code::ResourceExhausted if message.contains("rate limit") => "RATE_LIMITED",
        Code::ResourceExhausted => "LIMIT_REACHED",
        Code::Unavailable => "UNAVAILABLE",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Cancelled => "CANCELLED",
        Code::OutOfRange if message.contains("message length too large") => "MESSAGE_TOO_LARGE",
        Code::OutOfRange => "OUT_OF_RANGE",
        _ => "INTERNAL",
    }
}

/// `field: reason` of an invalid argument, when the message has that shape.
fn field_of(message: &str) -> Option<(&str, &str)> {
    let (field, why) = message.split_once(": ")?;
    let plain = |c: char| c.is_ascii_alphanumeric() || "_.[]-".contains(c);
    (!field.is_empty() && field.chars().all(plain)).then_some((field, why))
}

/// `retry in N ms` in a message.
fn retry_of(message: &str) -> Option<Duration> {
    let after = message.split("retry in ").nth(1)?;
    let ms: u64 = after.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_millis(ms))
}

/// The details a status without any gets.
pub fn derive(code: Code, message: &str) -> ErrorDetails {
    let mut d = ErrorDetails::new();
    let mut meta = HashMap::new();
    match code {
        Code::InvalidArgument => {
            if let Some((field, why)) = field_of(message) {
                d.add_bad_request_violation(field, why);
                meta.insert("field".to_owned(), field.to_owned());
            }
        }
        Code::NotFound => {
            let what = message.trim_end_matches(" not found");
            let (kind, name) = what.split_once(' ').unwrap_or((what, ""));
            d.set_resource_info(kind, name, "", message);
        }
        Code::FailedPrecondition => {
            d.add_precondition_failure_violation("STATE", "", message);
        }
        Code::ResourceExhausted => {
            d.set_retry_info(Some(retry_of(message).unwrap_or(Duration::from_secs(1))));
        }
        Code::Unavailable => {
            d.set_retry_info(Some(retry_of(message).unwrap_or(Duration::from_secs(1))));
        }
        _ => {}
    }
    d.set_error_info(reason(code, message), DOMAIN, meta);
    d
}

/// A refusal as the `google.rpc.Status` a batch answers among its per-entry results: the
/// status a call of its own would have been refused with, details and all.
pub fn rpc_status(status: Status) -> tonic_types::pb::Status {
    use prost::Message as _;
    let status = enrich(status);
    // The code and message the status has now: details built earlier carry the message as it
    // was then, before a batch named the entry in it.
    let details = tonic_types::pb::Status::decode(status.details()).map(|d| d.details).unwrap_or_default();
    tonic_types::pb::Status { code: status.code() as i32, message: status.message().to_owned(), details }
}

/// A `google.rpc.Status` a peer answered inside a reply (an event it refused, say), as a
/// [`Status`] with its details; none is `OK`'s, which no refusal is, so it reads as UNKNOWN.
pub fn from_rpc_status(status: Option<tonic_types::pb::Status>) -> Status {
    use prost::Message as _;
    match status {
        Some(s) => {
            let details = if s.details.is_empty() { Default::default() } else { s.encode_to_vec().into() };
            Status::with_details(tonic::Code::from(s.code), s.message, details)
        }
        None => Status::unknown("no reason given"),
    }
}

/// [`enrich`]ed, with `key: value` in its `ErrorInfo`'s metadata: what the refusal is about,
/// for a client to act on without reading the message (the import a cut stream leaves).
pub fn with_info(status: Status, key: &str, value: &str) -> Status {
    let status = enrich(status);
    let mut details = status.get_error_details();
    let Some(info) = details.error_info().cloned() else {
        return status;
    };
    let mut metadata = info.metadata;
    metadata.insert(key.to_owned(), value.to_owned());
    details.set_error_info(info.reason, info.domain, metadata);
    Status::with_error_details(status.code(), status.message(), details)
}

/// Adds derived details to a status that has none, and an `ErrorInfo` to one whose details
/// lack it (the limit checks of the codec answer with `BadRequest` only).
pub fn enrich(status: Status) -> Status {
    if status.code() == Code::Ok {
        return status;
    }
    if status.code() == Code::OutOfRange && status.message().contains("message length too large") {
        // The transport's words name its internals; say what the client can act on.
        let message = "the request is larger than the 4 MiB a message may be; send less at a time";
        let details = derive(Code::OutOfRange, status.message());
        return Status::with_error_details(Code::OutOfRange, message, details);
    }
    if status.code() == Code::Internal && status.message().starts_with("Missing request message") {
        // The transport's answer to a unary call whose stream ended before its message: a
        // client that cancelled, not a fault of the server (counted and alerted on as one).
        let message = "the call ended before its request message arrived";
        return Status::with_error_details(Code::Cancelled, message, derive(Code::Cancelled, message));
    }
    let details = if status.details().is_empty() {
        derive(status.code(), status.message())
    } else {
        let mut d = status.get_error_details();
        if d.error_info().is_some() {
            return status;
        }
        let field = d.bad_request().and_then(|b| b.field_violations.first()).map(|v| v.field.clone());
        let meta = field.map(|f| HashMap::from([("field".to_owned(), f)])).unwrap_or_default();
        d.set_error_info(reason(status.code(), status.message()), DOMAIN, meta);
        d
    };
    Status::with_error_details(status.code(), status.message().to_owned(), details)
}

/// Whether the details a response carries (base64, as in `grpc-status-details-bin`) lack an
/// `ErrorInfo`.
fn lacks_error_info(response_headers: &http::HeaderMap) -> bool {
    Status::from_header_map(response_headers).is_some_and(|s| s.get_details_error_info().is_none())
}

/// Server layer: every refusal answered before a message (the shape of every unary error)
/// leaves with details.
#[derive(Clone, Copy, Default)]
pub struct RichErrorLayer;

impl<S> tower_layer::Layer<S> for RichErrorLayer {
    type Service = RichErrorService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RichErrorService { inner }
    }
}

#[derive(Clone)]
pub struct RichErrorService<S> {
    inner: S,
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for RichErrorService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let fut = self.inner.call(req);
        Box::pin(async move {
            let response = fut.await?;
            let needs = response.headers().get("grpc-status").is_some_and(|v| v.as_bytes() != b"0")
                && (!response.headers().contains_key("grpc-status-details-bin")
                    || lacks_error_info(response.headers()));
            if !needs {
                return Ok(response);
            }
            match Status::from_header_map(response.headers()) {
                Some(status) => Ok(enrich(status).into_http()),
                None => Ok(response),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_what_it_is_about_beside_its_derived_details() {
        let s = with_info(Status::invalid_argument("end.size: the file has 3 bytes"), "import_id", "imp-1");
        assert_eq!(s.code(), Code::InvalidArgument);
        let info = s.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "INVALID_ARGUMENT");
        assert_eq!(info.metadata.get("import_id").map(String::as_str), Some("imp-1"));
        assert_eq!(info.metadata.get("field").map(String::as_str), Some("end.size"));
        let violations = s.get_details_bad_request().expect("BadRequest").field_violations;
        assert_eq!(violations[0].field, "end.size");
    }

    #[test]
    fn invalid_arguments_name_their_field() {
        let s = enrich(Status::invalid_argument("contact.email: not an email address"));
        let d = s.get_error_details();
        let v = &d.bad_request().unwrap().field_violations[0];
        assert_eq!((v.field.as_str(), v.description.as_str()), ("contact.email", "not an email address"));
        let info = d.error_info().unwrap();
        assert_eq!((info.reason.as_str(), info.domain.as_str()), ("INVALID_ARGUMENT", DOMAIN));
        assert_eq!(info.metadata["field"], "contact.email");
    }

    #[test]
    fn refusals_carry_what_a_client_branches_on() {
        let d = enrich(Status::not_found("contact c-123 not found")).get_error_details();
        let r = d.resource_info().unwrap();
        assert_eq!((r.resource_type.as_str(), r.resource_name.as_str()), ("contact", "c-123"));
        let d = enrich(Status::resource_exhausted(
            "rate limit of 100 calls a second for this account reached; retry in 37 ms",
        ))
        .get_error_details();
        assert_eq!(d.retry_info().unwrap().retry_delay, Some(Duration::from_millis(37)));
        assert_eq!(d.error_info().unwrap().reason, "RATE_LIMITED");
        let d = enrich(Status::failed_precondition("marketing contacts are not enabled")).get_error_details();
        assert_eq!(
            d.precondition_failure().unwrap().violations[0].description,
            "marketing contacts are not enabled"
        );
        let d = enrich(Status::permission_denied("requires admin access")).get_error_details();
        assert_eq!(d.error_info().unwrap().reason, "SCOPE_MISSING");
        let d = enrich(Status::permission_denied("requires internal access")).get_error_details();
        assert_eq!(d.error_info().unwrap().reason, "CALLER_NOT_ALLOWED", "a user token on an internal RPC");
        let d = enrich(Status::already_exists("request_id: already used for a different request"))
            .get_error_details();
        assert_eq!(d.error_info().unwrap().reason, "REQUEST_ID_REUSED");
    }

    /// A batch's entry refused with details of its own (an event's account held up, say) reaches
    /// its sender with both: the entry named in the message, and the reason to branch on.
    #[test]
    fn an_entrys_refusal_keeps_its_name_and_its_reason_across_the_reply() {
        let held = status(Code::Aborted, "storage held up", ErrorDetails::new(), "HELD_UP_BY_LOCK");
        let named = crate::by_account::Refusals::named("e7", held);
        let sent = from_rpc_status(Some(rpc_status(named)));
        assert_eq!((sent.code(), sent.message()), (Code::Aborted, "event e7: storage held up"));
        assert_eq!(sent.get_details_error_info().expect("ErrorInfo").reason, "HELD_UP_BY_LOCK");
        let plain = from_rpc_status(Some(rpc_status(Status::aborted("conflicted"))));
        assert_eq!(plain.get_details_error_info().expect("ErrorInfo").reason, "CONFLICT");
    }

    #[test]
    fn details_given_at_the_source_are_kept() {
        let s = enrich(already_exists("contact", "c-9", "a contact with this email exists"));
        let d = s.get_error_details();
        assert_eq!(d.resource_info().unwrap().resource_name, "c-9");
        assert_eq!(d.error_info().unwrap().reason, "ALREADY_EXISTS");
    }

    #[test]
    fn details_without_an_error_info_get_one_and_keep_theirs() {
        let limit = Status::with_error_details(
            Code::InvalidArgument,
            "contact.email: at most 254 characters",
            ErrorDetails::with_bad_request_violation("contact.email", "at most 254 characters"),
        );
        let d = enrich(limit).get_error_details();
        assert_eq!(d.bad_request().unwrap().field_violations[0].field, "contact.email");
        let info = d.error_info().unwrap();
        assert_eq!((info.reason.as_str(), info.domain.as_str()), ("INVALID_ARGUMENT", DOMAIN));
        assert_eq!(info.metadata.get("field").map(String::as_str), Some("contact.email"));
        let big =
            enrich(Status::out_of_range("Error, decoded message length too large: found 4550922 bytes"));
        assert_eq!(big.get_error_details().error_info().unwrap().reason, "MESSAGE_TOO_LARGE");
        assert!(big.message().contains("4 MiB"), "{}", big.message());
    }
}
