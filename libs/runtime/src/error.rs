//! The errors of every service and their one mapping to gRPC status (the google.rpc details
//! are added on the way out by [`crate::rich`]).

use std::sync::Arc;
use tonic::Status;

/// Clone, so one failed read shared by several calls fails each of them.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{0} not found")]
    NotFound(String),
    /// Nothing of `kind` answers to a key the message must not repeat (an email).
    #[error("no {kind} has this {key}")]
    NoneWith { kind: &'static str, key: &'static str },
    #[error("{0}")]
    AlreadyExists(String),
    /// Another `kind` of the account is already there as this one would be: its id.
    #[error("{message}")]
    Exists { kind: &'static str, id: String, message: String },
    /// Another contact of the account has this email: its id, when known.
    #[error("a contact with this email exists")]
    EmailTaken(Option<String>),
    #[error("{0}")]
    FailedPrecondition(String),
    /// A precondition a client can branch on: `reason` is its stable `ErrorInfo` reason and
    /// the `PreconditionFailure` type, `subject` what it is about.
    #[error("{message}")]
    Precondition { reason: &'static str, subject: String, message: String },
    #[error("{0}")]
    Aborted(String),
    /// Refused for who the caller is; `field` names what asked for it, when something did.
    #[error("{}{reason}", if field.is_empty() { String::new() } else { format!("{field}: ") })]
    PermissionDenied { field: String, reason: String },
    /// A request id used before for a different request.
    #[error("request_id: already used for a different request")]
    RequestReused,
    /// A service this one asked could not answer; retry.
    #[error("{0}")]
    Unavailable(String),
    /// The caller's deadline passed before the answer was ready.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A message past a size the transport takes (a part of a stream over 4 MiB).
    #[error("{0}")]
    OutOfRange(String),
    #[error("storage: {0}")]
    Db(Arc<sqlx::Error>),
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument { field: field.into(), reason: reason.into() }
    }

    /// A call to another service that failed while `doing`: cut by the caller's deadline, it
    /// is said so (not a peer to retry); anything else is a peer that could not answer.
    pub fn peer(status: &Status, doing: &str) -> Self {
        tracing::warn!(code = ?status.code(), "{doing} failed");
        // The peer call carried what was left of the caller's deadline; it ran out there
        // (answered so by the peer, or cut by the client's own timer) or here.
        let cut = status.code() == tonic::Code::DeadlineExceeded
            || (status.code() == tonic::Code::Cancelled && status.message() == "Timeout expired");
        let nearly = |left: std::time::Duration| left <= std::time::Duration::from_millis(50);
        if crate::deadline::remaining().is_some_and(|left| left.is_zero() || (cut && nearly(left))) {
            Error::DeadlineExceeded(format!("the caller's deadline passed while {doing}"))
        } else {
            Error::Unavailable(format!("{doing} failed; retry"))
        }
    }

    pub fn denied(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::PermissionDenied { field: field.into(), reason: reason.into() }
    }

    /// The account lacks a feature it must turn on first.
    pub fn feature_disabled(feature: &str, message: impl Into<String>) -> Self {
        Error::Precondition {
            reason: "FEATURE_DISABLED",
            subject: feature.to_owned(),
            message: message.into(),
        }
    }

    /// The account's edition does not include this.
    pub fn edition_required(message: impl Into<String>) -> Self {
        Error::Precondition {
            reason: "EDITION_REQUIRED",
            subject: "edition".to_owned(),
            message: message.into(),
        }
    }

    /// The account has as many of `what` as it may.
    pub fn quota_reached(what: &str, max: impl std::fmt::Display) -> Self {
        Error::Precondition {
            reason: "QUOTA_REACHED",
            subject: what.to_owned(),
            message: format!("an account has at most {max} {what}; delete one first"),
        }
    }

    /// NOT_FOUND for `what` (e.g. "subscription", "contact c-1").
    pub fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound(what.into())
    }

    /// INTERNAL for a failure the caller cannot act on; the detail is logged, not answered.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Error::Internal(e.to_string())
    }

    /// NOT_FOUND for a contact the account does not have.
    pub fn no_contact(id: impl std::fmt::Display) -> Self {
        Error::NotFound(format!("contact {id}"))
    }

    /// The gRPC code name, for per-record batch results.
    pub fn code_name(&self) -> &'static str {
        match self {
            Error::InvalidArgument { .. } => "INVALID_ARGUMENT",
            Error::NotFound(_) | Error::NoneWith { .. } => "NOT_FOUND",
            Error::AlreadyExists(_) | Error::EmailTaken(_) | Error::Exists { .. } => "ALREADY_EXISTS",
            Error::FailedPrecondition(_) | Error::Precondition { .. } => "FAILED_PRECONDITION",
            Error::Aborted(_) => "ABORTED",
            Error::PermissionDenied { .. } => "PERMISSION_DENIED",
            Error::RequestReused => "ALREADY_EXISTS",
            Error::Unavailable(_) => "UNAVAILABLE",
            Error::DeadlineExceeded(_) => "DEADLINE_EXCEEDED",
            Error::OutOfRange(_) => "OUT_OF_RANGE",
            Error::Db(e) => crate::storage_failure::code_name(e),
            Error::Internal(_) => "INTERNAL",
        }
    }

    pub fn field(&self) -> &str {
        match self {
            Error::InvalidArgument { field, .. } | Error::PermissionDenied { field, .. } => field,
            _ => "",
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Db(Arc::new(e))
    }
}

impl From<contactier_proto::checks::Violation> for Error {
    fn from(v: contactier_proto::checks::Violation) -> Self {
        Error::InvalidArgument { field: v.field, reason: v.description }
    }
}

impl From<crate::coalesce::Unanswered> for Error {
    fn from(e: crate::coalesce::Unanswered) -> Self {
        Error::Internal(e.to_string())
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
            Error::NotFound(_) => Status::not_found(e.to_string()),
            Error::NoneWith { kind, .. } => {
                let details = tonic_types::ErrorDetails::with_resource_info(kind, "", "", e.to_string());
                crate::rich::status(tonic::Code::NotFound, e.to_string(), details, "NOT_FOUND")
            }
            Error::AlreadyExists(_) => Status::already_exists(e.to_string()),
            Error::EmailTaken(ref id) => {
                crate::rich::already_exists("contact", id.as_deref().unwrap_or_default(), e.to_string())
            }
            Error::Exists { kind, ref id, ref message } => {
                crate::rich::already_exists(kind, id, message.clone())
            }
            Error::FailedPrecondition(_) => Status::failed_precondition(e.to_string()),
            Error::Precondition { reason, ref subject, ref message } => {
                let details = tonic_types::ErrorDetails::with_precondition_failure_violation(
                    reason,
                    subject.clone(),
                    message.clone(),
                );
                crate::rich::status(tonic::Code::FailedPrecondition, message.clone(), details, reason)
            }
            Error::Aborted(_) => Status::aborted(e.to_string()),
            Error::PermissionDenied { .. } => Status::permission_denied(e.to_string()),
            Error::RequestReused => crate::idempotency::reused(),
            Error::Unavailable(_) => Status::unavailable(e.to_string()),
            Error::DeadlineExceeded(_) => Status::deadline_exceeded(e.to_string()),
            Error::OutOfRange(_) => Status::out_of_range(e.to_string()),
            Error::Db(db) => crate::db::storage_status(&db),
            Error::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tonic::Code;

    #[tokio::test]
    async fn a_peer_call_cut_by_the_callers_deadline_is_said_so() {
        let code = |e: Error| Status::from(e).code();
        let cut = Status::cancelled("Timeout expired");
        let late = crate::deadline::scope(Some(Duration::ZERO), async { Error::peer(&cut, "asking") });
        assert_eq!(code(late.await), Code::DeadlineExceeded);
        let in_time =
            crate::deadline::scope(Some(Duration::from_secs(30)), async { Error::peer(&cut, "asking") });
        assert_eq!(code(in_time.await), Code::Unavailable);
        assert_eq!(code(Error::peer(&Status::unavailable("refused"), "asking")), Code::Unavailable);
        // The caller's deadline, carried to the peer, ran out there a moment before here.
        let there = Status::deadline_exceeded("the caller's deadline passed");
        let early =
            crate::deadline::scope(Some(Duration::from_millis(2)), async { Error::peer(&there, "asking") });
        assert_eq!(code(early.await), Code::DeadlineExceeded);
        assert_eq!(code(Error::peer(&there, "asking")), Code::Unavailable, "no deadline of the caller's");
    }
}
