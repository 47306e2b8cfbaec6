//! A refused call as Rust values: the code and message, and the google.rpc details the
//! services attach (the reason to branch on, the fields that were wrong, how long to wait,
//! the resource that exists or is missing, the precondition that failed).

use std::time::Duration;
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

/// A failed call.
#[derive(Debug, Clone)]
pub struct Error(Box<Parts>);

#[derive(Debug, Clone)]
struct Parts {
    status: tonic::Status,
    details: ErrorDetails,
}

/// One field of a request that was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field, e.g. `contacts[3].email`.
    pub field: String,
    pub description: String,
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        let details = status.get_error_details();
        Self(Box::new(Parts { status, details }))
    }
}

impl Error {
    pub fn code(&self) -> Code {
        self.0.status.code()
    }

    pub fn message(&self) -> &str {
        self.0.status.message()
    }

    /// The stable reason (`google.rpc.ErrorInfo.reason`), e.g. `EMAIL_TAKEN`; see the README's
    /// table of reasons.
    pub fn reason(&self) -> Option<&str> {
        self.0.details.error_info().map(|i| i.reason.as_str())
    }

    /// Every field the request got wrong (`google.rpc.BadRequest`).
    pub fn field_violations(&self) -> Vec<FieldViolation> {
        self.0.details.bad_request().map_or_else(Vec::new, |b| {
            b.field_violations
                .iter()
                .map(|v| FieldViolation { field: v.field.clone(), description: v.description.clone() })
                .collect()
        })
    }

    /// How long to wait before trying again (`google.rpc.RetryInfo`).
    pub fn retry_after(&self) -> Option<Duration> {
        self.0.details.retry_info().and_then(|r| r.retry_delay)
    }

    /// The resource that already exists or was not found, as (type, name)
    /// (`google.rpc.ResourceInfo`); for a taken email, the contact that has it.
    pub fn resource(&self) -> Option<(&str, &str)> {
        self.0.details.resource_info().map(|r| (r.resource_type.as_str(), r.resource_name.as_str()))
    }

    /// The preconditions that failed, as (type, subject, description).
    pub fn preconditions(&self) -> Vec<(&str, &str, &str)> {
        self.0.details.precondition_failure().map_or_else(Vec::new, |p| {
            p.violations
                .iter()
                .map(|v| (v.r#type.as_str(), v.subject.as_str(), v.description.as_str()))
                .collect()
        })
    }

    /// The status as received.
    pub fn status(&self) -> &tonic::Status {
        &self.0.status
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", crate::wire::code_name(self.code()), self.message())?;
        if let Some(r) = self.reason() {
            write!(f, " ({r})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_details_a_service_attaches_come_back_as_values() {
        let mut d = ErrorDetails::with_bad_request_violation("contacts[2].email", "is not an address");
        d.set_error_info("INVALID_FIELD", "contactier.io", []);
        d.set_retry_info(Some(Duration::from_millis(1500)));
        d.set_resource_info("contact", "c-1", "", "");
        let e = Error::from(tonic::Status::with_error_details(Code::InvalidArgument, "bad", d));
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(e.reason(), Some("INVALID_FIELD"));
        assert_eq!(
            e.field_violations(),
            vec![FieldViolation {
                field: "contacts[2].email".into(),
                description: "is not an address".into()
            }]
        );
        assert_eq!(e.retry_after(), Some(Duration::from_millis(1500)));
        assert_eq!(e.resource(), Some(("contact", "c-1")));
        assert_eq!(e.to_string(), "InvalidArgument: bad (INVALID_FIELD)");
        let plain = Error::from(tonic::Status::not_found("no such list"));
        assert_eq!((plain.reason(), plain.retry_after(), plain.field_violations().len()), (None, None, 0));
    }
}
